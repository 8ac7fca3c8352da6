"""The built-in metadata drivers: UNIT (the worked example), IDC and ZONE."""

import pytest

from pyworker import ConfigError, Context, RequestHeaders
from pyworker.drivers.env import IdcDriver, ZoneDriver
from pyworker.drivers.unit import UnitDriver
from pyworker.testing import run_chain


def unit_driver(config=None):
    driver = UnitDriver()
    driver.init(config if config is not None else {"unit_key": "uid"})
    return driver


def build(driver, headers):
    return driver.build_metadata(
        Context(1), RequestHeaders(headers), None, None
    )


@pytest.mark.parametrize(
    "uid, site",
    [
        ("1", "s1"),
        ("100", "s1"),
        ("101", "s2"),
        ("200", "s2"),
        ("201", "s3"),
        ("0", "s3"),
        ("-5", "s3"),
        (str(10**30), "s3"),
        (" 7 ", "s1"),
        ("\t150\t", "s2"),
        ("+7", "s1"),
        ("007", "s1"),
        ("-0", "s3"),
    ],
)
def test_unit_maps_uids_to_sites(uid, site):
    assert build(unit_driver(), {"uid": uid}) == site


@pytest.mark.parametrize(
    "uid",
    [
        "abc",
        "1e3",
        "0x10",
        "1_000",
        "",
        " ",
        "1.0",
        "+",
        "--1",
        "1 2",
        "\u0663",
        "\xb2",
        "\xa07",
        "1" * 65,
    ],
)
def test_unit_refuses_what_is_not_a_plain_integer(uid):
    with pytest.raises(ValueError):
        build(unit_driver(), {"uid": uid})


def test_unit_raises_without_the_header():
    with pytest.raises(LookupError, match="uid"):
        build(unit_driver(), {"userid": "2"})


def test_unit_reads_the_header_in_any_case():
    assert build(unit_driver(), {"UID": "150"}) == "s2"


def test_unit_key_defaults_to_userid():
    driver = unit_driver({})
    assert driver.unit_key == "userid"
    assert build(driver, {"userid": "2"}) == "s1"


def test_unit_uses_the_first_of_several_lines():
    assert build(unit_driver(), [("uid", "2"), ("uid", "150")]) == "s1"


def test_unit_rejects_a_key_that_is_not_a_string():
    with pytest.raises(ValueError):
        unit_driver({"unit_key": ["uid"]})


def test_unit_in_a_chain_follows_the_worked_example(chain_runner):
    stream_filters = [
        {
            "type": "metadata",
            "config": {
                "metadataers": [
                    {"meta_data_key": "UNIT", "config": {"unit_key": "uid"}}
                ]
            },
        }
    ]
    for uid, site in [("2", "s1"), ("200", "s2"), ("201", "s3")]:
        assert chain_runner(stream_filters, {"uid": uid}).metadata == {
            "unit": site
        }
    assert chain_runner(stream_filters, {}).metadata == {}
    assert chain_runner(stream_filters, {"uid": "abc"}).metadata == {}


# -- IDC and ZONE -------------------------------------------------------


@pytest.mark.parametrize(
    "driver_class, list_key, default",
    [
        (IdcDriver, "idc_env_name_list", "IDC"),
        (ZoneDriver, "zone_env_name_list", "ZONE"),
    ],
)
def test_env_drivers_read_the_first_set_variable_once(
    monkeypatch, driver_class, list_key, default
):
    monkeypatch.delenv("TEST_FIRST", raising=False)
    monkeypatch.setenv("TEST_SECOND", "hz-1")
    monkeypatch.setenv("TEST_THIRD", "never")
    driver = driver_class()
    driver.init({list_key: ["TEST_FIRST", "TEST_SECOND", "TEST_THIRD"]})
    monkeypatch.setenv("TEST_SECOND", "changed")  # read once, at init
    assert build(driver, {}) == "hz-1"

    monkeypatch.setenv(default, "by-default")
    driver = driver_class()
    driver.init({})
    assert build(driver, {}) == "by-default"

    driver = driver_class()
    driver.init({"env": "TEST_THIRD"})
    assert build(driver, {}) == "never"


@pytest.mark.parametrize("driver_class", [IdcDriver, ZoneDriver])
def test_env_drivers_refuse_when_nothing_is_set(monkeypatch, driver_class):
    monkeypatch.delenv("TEST_UNSET", raising=False)
    monkeypatch.setenv("TEST_EMPTY", "")
    with pytest.raises(LookupError, match="TEST_UNSET"):
        driver_class().init({"env": ["TEST_UNSET", "TEST_EMPTY"]})
    with pytest.raises(ValueError):
        driver_class().init({driver_class.list_key: []})
    with pytest.raises(ValueError):
        driver_class().init({driver_class.list_key: [3]})


def test_env_drivers_in_a_chain(monkeypatch):
    monkeypatch.setenv("IDC", "HZ")
    monkeypatch.setenv("MY_ZONE", "GZ00A")
    verdict = run_chain(
        [
            {
                "type": "metadata",
                "config": {
                    "case_sensitive": True,
                    "metadataers": [
                        {"meta_data_key": "IDC"},
                        {
                            "meta_data_key": "ZONE",
                            "config": {"zone_env_name_list": ["MY_ZONE"]},
                        },
                    ],
                },
            }
        ]
    )
    assert verdict.metadata == {"IDC": "HZ", "ZONE": "GZ00A"}


def test_an_unset_zone_is_a_config_error_naming_the_key(monkeypatch):
    monkeypatch.delenv("ZONE", raising=False)
    with pytest.raises(ConfigError) as err:
        run_chain(
            [
                {
                    "type": "metadata",
                    "config": {"metadataers": [{"meta_data_key": "ZONE"}]},
                }
            ]
        )
    assert str(err.value).startswith(
        "stream_filters[0].config.metadataers[0].config: metadata driver "
        "'ZONE' failed to initialise: LookupError: none of the environment "
        "variables ZONE is set"
    )
