"""The built-in filters (metadata, echo), the registry, users' filters."""

import pytest

from pyworker import (
    CONTINUE,
    ConfigError,
    MetadataDriver,
    StreamReceiverFilter,
    registry,
)
from pyworker.testing import run_chain
from pyworker.verdict import ACTION_CONTINUE, ACTION_ERROR, ACTION_REPLY


def metadata(*metadataers, **options):
    return {
        "type": "metadata",
        "config": {"metadataers": list(metadataers), **options},
    }


def unit(unit_key="uid", key="UNIT"):
    return {"meta_data_key": key, "config": {"unit_key": unit_key}}


def build_error(stream_filters):
    with pytest.raises(ConfigError) as err:
        run_chain(stream_filters)
    return str(err.value)


@registry.register_driver("TEST_RAISES")
class RaisingDriver(MetadataDriver):
    def build_metadata(self, ctx, headers, buf, trailers):
        raise RuntimeError("cannot say")


@registry.register_driver("TEST_NONE")
class NoneDriver(MetadataDriver):
    def build_metadata(self, ctx, headers, buf, trailers):
        return None


@registry.register_driver("TEST_INT")
class IntDriver(MetadataDriver):
    def build_metadata(self, ctx, headers, buf, trailers):
        return 42


@registry.register_driver("TEST_MIXED_CASE")
class MixedCaseDriver(MetadataDriver):
    def build_metadata(self, ctx, headers, buf, trailers):
        return "Site-A"


# -- metadata -----------------------------------------------------------------


def test_metadata_runs_the_unit_driver(chain_runner):
    filters = [metadata(unit())]
    assert chain_runner(filters, {"uid": "2"}).metadata == {"unit": "s1"}
    assert chain_runner(filters, {"uid": "200"}).metadata == {"unit": "s2"}
    assert chain_runner(filters, {"uid": "201"}).metadata == {"unit": "s3"}
    assert chain_runner.context.metadata == {"unit": "s3"}


def test_metadata_leaves_the_key_unset_and_counts_when_a_driver_raises(
    chain_runner,
):
    from pyworker.chain import Chain

    chain = Chain.from_stream_filters(
        "c", [metadata(unit(), {"meta_data_key": "TEST_RAISES"})]
    )
    filt = chain.filters[0][1]
    for headers, expected in [
        ({"uid": "7"}, {"unit": "s1"}),
        ({}, {}),
        ({"uid": "x"}, {}),
    ]:
        verdict = chain_runner(chain, headers)
        assert verdict.action == ACTION_CONTINUE
        assert verdict.metadata == expected
    assert filt.driver_errors == 3 + 2  # TEST_RAISES every time, UNIT twice


def test_metadata_none_leaves_the_key_unset_without_an_error():
    from pyworker.chain import Chain

    chain = Chain.from_stream_filters(
        "c", [metadata({"meta_data_key": "TEST_NONE"})]
    )
    assert run_chain(chain).metadata == {}
    assert chain.filters[0][1].driver_errors == 0


def test_metadata_driver_returning_a_non_str_is_an_error():
    verdict = run_chain([metadata({"meta_data_key": "TEST_INT"})])
    assert verdict.action == ACTION_ERROR and "metadata" in verdict.log


def test_metadata_disable_makes_it_a_no_op():
    verdict = run_chain([metadata(unit(), disable=True)], {"uid": "2"})
    assert verdict.action == ACTION_CONTINUE and verdict.metadata == {}


def test_metadata_lowercases_key_and_value_by_default_as_mosn_does():
    verdict = run_chain([metadata({"meta_data_key": "TEST_MIXED_CASE"})])
    assert verdict.metadata == {"test_mixed_case": "site-a"}


def test_metadata_case_sensitive_keeps_key_and_value():
    verdict = run_chain(
        [metadata({"meta_data_key": "TEST_MIXED_CASE"}, case_sensitive=True)]
    )
    assert verdict.metadata == {"TEST_MIXED_CASE": "Site-A"}
    verdict = run_chain([metadata(unit(), case_sensitive=True)], {"uid": "2"})
    assert verdict.metadata == {"UNIT": "s1"}


def test_metadata_finds_drivers_in_any_case():
    assert run_chain([metadata(unit(key="unit"))], {"uid": "2"}).metadata == {
        "unit": "s1"
    }


def test_metadata_config_errors_name_the_key():
    assert build_error([metadata({"meta_data_key": "NOPE"})]).startswith(
        "stream_filters[0].config.metadataers[0].meta_data_key: unknown "
        "metadata driver 'NOPE'"
    )
    assert "IDC, TEST_INT" in build_error(
        [metadata({"meta_data_key": "NOPE"})]
    )
    assert build_error([metadata(unit(), unit(key="unit"))]).startswith(
        "stream_filters[0].config.metadataers[1].meta_data_key: metadata "
        "key 'unit' is configured twice"
    )
    assert build_error([metadata({"meta_data_key": "bad-key"})]).startswith(
        "stream_filters[0].config.metadataers[0].meta_data_key: "
    )
    assert build_error([metadata("UNIT")]).startswith(
        "stream_filters[0].config.metadataers[0]: "
    )
    assert build_error(
        [metadata({"meta_data_key": "UNIT", "config": []})]
    ).startswith(
        "stream_filters[0].config.metadataers[0].config: must be an object"
    )
    assert build_error([metadata(unit(unit_key=5))]).startswith(
        "stream_filters[0].config.metadataers[0].config: metadata driver "
        "'UNIT' failed to initialise: ValueError"
    )
    assert build_error([metadata(disable="yes")]).startswith(
        "stream_filters[0].config.disable: must be true or false"
    )
    assert build_error(
        [{"type": "metadata", "config": {"metadataers": {}}}]
    ).startswith("stream_filters[0].config.metadataers: must be an array")


def test_metadata_without_drivers_does_nothing():
    assert run_chain([{"type": "metadata"}]).metadata == {}


# -- echo ---------------------------------------------------------------


def test_echo_replies_with_status_body_and_header_list():
    verdict = run_chain(
        [
            {
                "type": "echo",
                "config": {
                    "status": 201,
                    "body": "hello from echo\n",
                    "header_list": [{"key": "x-mosn-echo", "value": "1"}],
                },
            }
        ]
    )
    assert verdict.action == ACTION_REPLY
    assert verdict.status == 201
    assert verdict.reply_body == b"hello from echo\n"
    assert verdict.reply_headers == [("x-mosn-echo", "1")]


def test_echo_takes_mosns_header_object_and_defaults_to_200():
    verdict = run_chain(
        [{"type": "echo", "config": {"header_list": {"test1": "test1"}}}]
    )
    assert (verdict.status, verdict.reply_headers, verdict.reply_body) == (
        200,
        [("test1", "test1")],
        b"",
    )


def test_echo_status_zero_lets_the_request_pass():
    log = []

    class After(StreamReceiverFilter):
        def __init__(self, config):
            pass

        def on_receive(self, ctx, headers, buf, trailers):
            log.append("ran")
            return CONTINUE

    registry.register_filter("test_after_echo")(After)
    verdict = run_chain(
        [
            {"type": "echo", "config": {"status": 0}},
            {"type": "test_after_echo"},
        ]
    )
    assert verdict.action == ACTION_CONTINUE and log == ["ran"]


def test_echo_stops_the_chain():
    verdict = run_chain([{"type": "echo"}, metadata(unit())], {"uid": "2"})
    assert verdict.action == ACTION_REPLY and verdict.metadata == {}


@pytest.mark.parametrize(
    "config, where, why",
    [
        ({"status": 99}, "config.status", "200..599"),
        ({"status": "200"}, "config.status", "200..599"),
        ({"body": 5}, "config.body", "must be a string"),
        ({"header_list": "x"}, "config.header_list", "array or an object"),
        ({"header_list": [{"key": "a"}]}, "config.header_list[0]", "key"),
        ({"header_list": {"a": 1}}, "config.header_list", "must be a string"),
        ({"header_list": {"x-a": "1\r\n2"}}, "config", "CR"),
        ({"header_list": {"bad name": "1"}}, "config", "not an HTTP token"),
        ({"header_list": {"Content-Length": "1"}}, "config", "nginx owns it"),
        ({"body": "x" * 65537}, "config", "over the limit"),
    ],
)
def test_echo_config_errors(config, where, why):
    message = build_error([{"type": "echo", "config": config}])
    assert message.startswith(f"stream_filters[0].{where}: ")
    assert why in message


# -- the registry and users' own filters ---------------------------------


def test_builtins_are_registered():
    assert {"echo", "metadata"} <= set(registry.filter_types())
    assert {"IDC", "UNIT", "ZONE"} <= set(registry.driver_names())
    assert registry.get_driver("unit") is registry.get_driver("UNIT")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(registry.NotRegisteredError) as err:
        registry.get_filter("nope")
    assert "echo" in str(err.value) and "metadata" in str(err.value)
    assert "echo" in err.value.known
    with pytest.raises(LookupError, match="UNIT"):
        registry.get_driver("nope")


def test_a_name_cannot_be_taken_twice_unless_replaced():
    def first(config):
        return None

    def second(config):
        return None

    registry.register_filter("test_taken")(first)
    registry.register_filter("test_taken")(
        first
    )  # the same definition again is fine
    with pytest.raises(ValueError, match="already registered"):
        registry.register_filter("test_taken")(second)
    registry.register_filter("test_taken", replace=True)(second)
    assert registry.get_filter("test_taken") is second
    with pytest.raises(ValueError, match="already registered"):
        registry.register_filter("echo")(second)


def test_a_factory_function_can_return_the_filter():
    class Upstream(StreamReceiverFilter):
        def __init__(self, name):
            self.name = name

        def on_receive(self, ctx, headers, buf, trailers):
            ctx.upstream = self.name

    registry.register_filter("test_upstream_factory")(
        lambda config: Upstream(config["to"])
    )
    verdict = run_chain(
        [{"type": "test_upstream_factory", "config": {"to": "site_s2"}}]
    )
    assert verdict.upstream == "site_s2"


def test_a_user_filter_is_loaded_by_the_module_key(user_modules):
    verdict = run_chain(
        [
            {
                "type": "tag_request",
                "module": "userfilters_sample",
                "config": {"header": "x-tag", "value": "on"},
            },
            metadata({"meta_data_key": "TENANT"}),
        ],
        {"x-tenant": "acme"},
    )
    assert verdict.request_set == [("x-tag", "on")]
    assert verdict.metadata == {"tenant": "acme"}


def test_a_module_that_does_not_import_is_a_config_error(user_modules):
    message = build_error(
        [{"type": "tag_request", "module": "no_such_module_here"}]
    )
    assert message.startswith(
        "stream_filters[0].module: cannot import module "
        "'no_such_module_here': ModuleNotFoundError"
    )


def test_a_factory_that_raises_is_a_config_error():
    def picky(config):
        raise ValueError("needs a colour")

    registry.register_filter("test_picky")(picky)
    message = build_error([{"type": "test_picky"}])
    assert message == (
        "stream_filters[0].config: filter 'test_picky' rejected its config: "
        "ValueError: needs a colour"
    )


def test_a_factory_returning_no_filter_is_a_config_error():
    registry.register_filter("test_returns_nothing")(lambda config: None)
    assert "neither on_receive nor append" in build_error(
        [{"type": "test_returns_nothing"}]
    )


class FakeEntryPoint:
    def __init__(self, name, value, target):
        self.name, self.value, self.target = name, value, target

    def load(self):
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


def test_entry_points_register_filters_and_drivers(monkeypatch):
    class FromPlugin(StreamReceiverFilter):
        def __init__(self, config):
            pass

        def on_receive(self, ctx, headers, buf, trailers):
            ctx.metadata["plugin"] = "yes"

    class PluginDriver(MetadataDriver):
        def build_metadata(self, ctx, headers, buf, trailers):
            return "p"

    import types

    groups = {
        registry.FILTER_GROUP: [
            FakeEntryPoint("test_from_plugin", "pkg:FromPlugin", FromPlugin),
            FakeEntryPoint(
                "test_module_plugin", "pkg.mod", types.ModuleType("pkg.mod")
            ),
            FakeEntryPoint("test_broken", "broken:X", ImportError("gone")),
        ],
        registry.DRIVER_GROUP: [
            FakeEntryPoint("TEST_PLUGIN_DRIVER", "pkg:D", PluginDriver)
        ],
    }
    monkeypatch.setattr(registry, "entry_points", lambda group: groups[group])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_plugin_errors", [])
    verdict = run_chain(
        [
            {"type": "test_from_plugin"},
            metadata({"meta_data_key": "test_plugin_driver"}),
        ]
    )
    assert verdict.metadata == {"plugin": "yes", "test_plugin_driver": "p"}
    with pytest.raises(LookupError) as err:
        registry.get_filter("test_broken")
    assert "test_broken" in str(err.value) and "ImportError: gone" in str(
        err.value
    )
