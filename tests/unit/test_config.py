"""Loading the MOSN-style JSON: what it builds, and every error it reports."""

import json
import logging
import os

import pytest

from pyworker import Chain, ConfigError
from pyworker.config import REDACTED, from_dict, load, loads
from pyworker.testing import run_chain
from pyworker.verdict import ACTION_REPLY


def error_of(write_config, config):
    path = write_config(config)
    with pytest.raises(ConfigError) as err:
        load(path)
    return str(path), str(err.value)


def assert_error(write_config, config, key_path, reason):
    path, message = error_of(write_config, config)
    assert message.startswith(f"{path}: {key_path}: "), message
    assert reason in message, message
    return message


# -- what a good config builds ------------------------------------------


def test_project_config_builds_both_listeners(
    monkeypatch, tmp_path, project_config
):
    monkeypatch.chdir(
        tmp_path
    )  # relative paths are resolved against the working directory
    config = load(project_config)
    assert list(config.chains) == ["serverListener", "echoListener"]
    assert all(isinstance(chain, Chain) for chain in config.chains.values())
    assert config.listeners["serverListener"].address == "127.0.0.1:2990"
    assert config.log_path == str(tmp_path / "logs" / "mosn-err.log")
    assert config.listeners["serverListener"].log_path == str(
        tmp_path / "logs" / "mosn-err.log"
    )
    assert (config.log_level, config.log_level_name) == (
        logging.WARNING,
        "WARN",
    )
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 34901)
    assert (
        config.metrics.prometheus.host,
        config.metrics.prometheus.port,
    ) == ("127.0.0.1", 34903)
    assert config.metrics.exclusion_labels == ("host",)
    assert config.metrics.exclusion_keys == (
        "request_duration_time",
        "request_time",
        "process_time",
    )
    assert config.warnings == []
    assert run_chain(config, {"uid": "2"}, "serverListener").metadata == {
        "unit": "s1"
    }
    echo = run_chain(config, {}, "echoListener")
    assert (
        echo.action == ACTION_REPLY and echo.reply_body == b"hello from echo\n"
    )
    assert echo.reply_headers == [("x-mosn-echo", "1")]


def test_moe_reference_loads_with_admin_on_loopback(moe_reference):
    config = load(moe_reference)
    assert list(config.chains) == ["serverListener"]
    assert config.admin.host == "127.0.0.1" and config.admin.port == 34901
    assert config.metrics.prometheus.host == "127.0.0.1"
    assert any(
        "admin.address.socket_address.address: 0.0.0.0 is bound as 127.0.0.1"
        in w
        for w in config.warnings
    )
    assert run_chain(config, {"uid": "150"}).metadata == {"unit": "s2"}


def test_bind_any_keeps_every_interface(mosn_config):
    raw = mosn_config(
        admin={
            "address": {
                "socket_address": {"address": "0.0.0.0", "port_value": 1}
            }
        },
        metrics={"sinks": [{"type": "prometheus", "config": {"port": 2}}]},
        pyworker={"bind_any": True},
    )
    config = from_dict(raw)
    assert config.bind_any
    assert str(config.admin) == "0.0.0.0:1"
    assert config.metrics.prometheus.host == "0.0.0.0"
    assert config.warnings == []


def test_ipv6_any_becomes_ipv6_loopback(mosn_config):
    raw = mosn_config(
        admin={
            "address": {"socket_address": {"address": "::", "port_value": 1}}
        }
    )
    assert str(from_dict(raw).admin) == "[::1]:1"


@pytest.mark.parametrize(
    "mosn, level",
    [
        ("FATAL", logging.CRITICAL),
        ("ERROR", logging.ERROR),
        ("WARN", logging.WARNING),
        ("INFO", logging.INFO),
        ("DEBUG", logging.DEBUG),
        ("TRACE", 5),
        ("warn", 30),
    ],
)
def test_mosn_log_levels(mosn_config, mosn, level):
    raw = mosn_config()
    raw["servers"][0]["default_log_level"] = mosn
    assert from_dict(raw).log_level == level


def test_defaults_without_logs_admin_or_metrics(mosn_config):
    config = from_dict(mosn_config())
    assert config.log_path is None and config.log_level == logging.INFO
    assert config.admin is None and config.metrics.prometheus is None


def test_pprof_is_accepted_and_unknown_keys_warn(mosn_config, caplog):
    raw = mosn_config(
        pprof={"debug": True, "port_value": 34902},
        cluster_manager={},
        surprise=1,
    )
    with caplog.at_level(logging.WARNING, logger="pyworker.config"):
        config = from_dict(raw, "x.json")
    assert config.warnings == ["x.json: surprise: unknown key, ignored"]
    assert "surprise" in caplog.text
    assert from_dict(raw, log_warnings=False).warnings  # reported, not logged


def test_unknown_keys_of_a_stream_filter_warn(mosn_config):
    config = from_dict(mosn_config({"type": "echo", "confg": {}}))
    assert config.warnings == [
        "<dict>: servers[0].listeners[0].stream_filters[0].confg: "
        "unknown key, ignored"
    ]


def test_other_sinks_are_ignored_with_a_warning(mosn_config):
    config = from_dict(
        mosn_config(metrics={"sinks": [{"type": "statsd", "config": {}}]})
    )
    assert config.metrics.prometheus is None
    assert "metrics.sinks[0].type" in config.warnings[0]


def test_every_chain_is_built_at_load(mosn_config):
    built = []

    from pyworker import StreamReceiverFilter, register_filter

    @register_filter("test_counts_builds")
    class Counted(StreamReceiverFilter):
        def __init__(self, config):
            built.append(config)

        def on_receive(self, ctx, headers, buf, trailers):
            pass

    raw = mosn_config({"type": "test_counts_builds", "config": {"n": 1}})
    raw["servers"][0]["listeners"].append(
        {
            "name": "other",
            "stream_filters": [
                {"type": "test_counts_builds", "config": {"n": 2}}
            ],
        }
    )
    from_dict(raw)
    assert built == [{"n": 1}, {"n": 2}]


def test_the_pyworker_modules_block_is_imported_before_the_chains(
    mosn_config, user_modules
):
    raw = mosn_config(
        {"type": "route_to", "config": {"upstream": "site_s3"}},
        pyworker={"modules": ["userfilters_block"]},
    )
    config = from_dict(raw)
    assert config.modules == ("userfilters_block",)
    assert run_chain(config).upstream == "site_s3"


def test_config_dump_redacts_secrets_only(mosn_config):
    raw = mosn_config(
        {
            "type": "metadata",
            "config": {
                "metadataers": [
                    {
                        "meta_data_key": "UNIT",
                        "config": {
                            "unit_key": "uid",
                            "api_key": "k1",
                            "db_password": "p",
                            "AuthToken": "t",
                            "client_secret": {"nested": "s"},
                            "private_key": "pk",
                            "credentials": ["c"],
                        },
                    }
                ]
            },
        }
    )
    config = from_dict(raw)
    dump = config.config_dump()
    driver_config = dump["servers"][0]["listeners"][0]["stream_filters"][0][
        "config"
    ]["metadataers"][0]["config"]
    assert driver_config == {
        "unit_key": "uid",
        "api_key": REDACTED,
        "db_password": REDACTED,
        "AuthToken": REDACTED,
        "client_secret": REDACTED,
        "private_key": REDACTED,
        "credentials": REDACTED,
    }
    assert (
        dump["servers"][0]["listeners"][0]["stream_filters"][0]["config"][
            "metadataers"
        ][0]["meta_data_key"]
        == "UNIT"
    )
    assert json.dumps(dump)  # JSON-ready
    # the config itself is untouched
    assert (
        config.raw["servers"][0]["listeners"][0]["stream_filters"][0][
            "config"
        ]["metadataers"][0]["config"]["api_key"]
        == "k1"
    )


def test_from_dict_does_not_share_the_callers_dict(mosn_config):
    raw = mosn_config()
    config = from_dict(raw)
    raw["servers"].clear()
    assert config.raw["servers"]


# -- errors: file, key path, reason -------------------------------------


def test_malformed_json_names_line_and_column(write_config):
    path, message = error_of(
        write_config, '{\n  "servers": [\n    {"listeners": [}\n  ]\n}'
    )
    assert message.startswith(f"{path}: line 3 column 20: invalid JSON: ")


def test_missing_file(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigError) as err:
        load(path)
    assert (
        str(err.value)
        == f"{path}: cannot read the config: No such file or directory"
    )


def test_a_directory_is_not_a_config(tmp_path):
    with pytest.raises(
        ConfigError, match=f"^{tmp_path}: cannot read the config"
    ):
        load(tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.json"
    path.write_bytes(b'{"servers": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(path)


def test_loads_names_its_source():
    with pytest.raises(
        ConfigError, match="^inline: line 1 column 1: invalid JSON"
    ):
        loads("", "inline")


@pytest.mark.parametrize(
    "config, key_path, reason",
    [
        ([], "", "the config must be a JSON object, not array"),
        ({"servers": {}}, "servers", "must be an array, not object"),
        ({"servers": ["x"]}, "servers[0]", "must be an object, not string"),
        (
            {"servers": [{"listeners": {}}]},
            "servers[0].listeners",
            "must be an array",
        ),
        (
            {"servers": [{"listeners": [7]}]},
            "servers[0].listeners[0]",
            "must be an object, not number",
        ),
        (
            {"servers": [{"listeners": [{"name": ""}]}]},
            "servers[0].listeners[0].name",
            "non-empty",
        ),
        (
            {"servers": [{"listeners": [{"stream_filters": []}]}]},
            "servers[0].listeners[0].name",
            "non-empty string name, not null",
        ),
        (
            {
                "servers": [
                    {"listeners": [{"name": "a", "stream_filters": {}}]}
                ]
            },
            "servers[0].listeners[0].stream_filters",
            "must be an array of stream filters, not object",
        ),
        (
            {
                "servers": [
                    {"listeners": [{"name": "a", "stream_filters": ["echo"]}]}
                ]
            },
            "servers[0].listeners[0].stream_filters[0]",
            'must be an object with a "type"',
        ),
        (
            {
                "servers": [
                    {
                        "listeners": [
                            {"name": "a", "stream_filters": [{"type": 5}]}
                        ]
                    }
                ]
            },
            "servers[0].listeners[0].stream_filters[0].type",
            "must be a non-empty string, not number",
        ),
        (
            {
                "servers": [
                    {
                        "listeners": [
                            {
                                "name": "a",
                                "stream_filters": [
                                    {"type": "echo", "config": "x"}
                                ],
                            }
                        ]
                    }
                ]
            },
            "servers[0].listeners[0].stream_filters[0].config",
            "must be an object, not string",
        ),
        (
            {"servers": [{"listeners": [{"name": "a", "address": 2990}]}]},
            "servers[0].listeners[0].address",
            "must be a string, not number",
        ),
        (
            {
                "servers": [
                    {"default_log_level": "LOUD", "listeners": [{"name": "a"}]}
                ]
            },
            "servers[0].default_log_level",
            "unknown log level 'LOUD'; levels: FATAL ERROR WARN INFO",
        ),
        (
            {"servers": [{"listeners": [{"name": "a", "log_level": 3}]}]},
            "servers[0].listeners[0].log_level",
            "unknown log level 3",
        ),
        (
            {
                "servers": [
                    {"default_log_path": ["x"], "listeners": [{"name": "a"}]}
                ]
            },
            "servers[0].default_log_path",
            "must be a string, not array",
        ),
        (
            {"servers": [{"listeners": [{"name": "a"}]}], "admin": []},
            "admin",
            "must be an object",
        ),
        (
            {"servers": [{"listeners": [{"name": "a"}]}], "admin": {}},
            "admin.address",
            "missing",
        ),
        (
            {
                "servers": [{"listeners": [{"name": "a"}]}],
                "admin": {
                    "address": {
                        "socket_address": {
                            "address": "127.0.0.1",
                            "port_value": "34901",
                        }
                    }
                },
            },
            "admin.address.socket_address.port_value",
            "must be an integer, not string",
        ),
        (
            {
                "servers": [{"listeners": [{"name": "a"}]}],
                "admin": {
                    "address": {
                        "socket_address": {
                            "address": "127.0.0.1",
                            "port_value": 70000,
                        }
                    }
                },
            },
            "admin.address.socket_address.port_value",
            "port 70000 is not in 1..65535",
        ),
        (
            {
                "servers": [{"listeners": [{"name": "a"}]}],
                "admin": {"address": {"socket_address": {"port_value": True}}},
            },
            "admin.address.socket_address.port_value",
            "must be an integer, not boolean",
        ),
        (
            {
                "servers": [{"listeners": [{"name": "a"}]}],
                "metrics": {"sinks": [{"type": "prometheus", "config": {}}]},
            },
            "metrics.sinks[0].config.port",
            "missing port",
        ),
        (
            {
                "servers": [{"listeners": [{"name": "a"}]}],
                "metrics": {
                    "sinks": [
                        {"type": "prometheus", "config": {"port": 1}},
                        {"type": "prometheus", "config": {"port": 2}},
                    ]
                },
            },
            "metrics.sinks[1]",
            "a second prometheus sink",
        ),
        (
            {
                "servers": [{"listeners": [{"name": "a"}]}],
                "metrics": {"stats_matcher": {"exclusion_keys": [1]}},
            },
            "metrics.stats_matcher.exclusion_keys[0]",
            "must be a string",
        ),
        (
            {
                "servers": [{"listeners": [{"name": "a"}]}],
                "pyworker": {"bind_any": "yes"},
            },
            "pyworker.bind_any",
            "must be true or false, not string",
        ),
        (
            {
                "servers": [{"listeners": [{"name": "a"}]}],
                "pyworker": {"modules": "x"},
            },
            "pyworker.modules",
            "must be an array",
        ),
    ],
)
def test_wrong_types_and_values(write_config, config, key_path, reason):
    path, message = error_of(write_config, config)
    prefix = f"{path}: {key_path}: " if key_path else f"{path}: "
    assert message.startswith(prefix), message
    assert reason in message, message


def test_unknown_filter_type_lists_the_known_ones(write_config, mosn_config):
    message = assert_error(
        write_config,
        mosn_config({"type": "echo"}, {"type": "metadta"}),
        "servers[0].listeners[0].stream_filters[1].type",
        "unknown filter type 'metadta'; known types: ",
    )
    assert "echo" in message and "metadata" in message


def test_unknown_driver_lists_the_known_ones(write_config, mosn_config):
    message = assert_error(
        write_config,
        mosn_config(
            {
                "type": "metadata",
                "config": {
                    "metadataers": [
                        {"meta_data_key": "UNIT"},
                        {"meta_data_key": "REGION"},
                    ]
                },
            }
        ),
        "servers[0].listeners[0].stream_filters[0].config.metadataers[1]"
        ".meta_data_key",
        "unknown metadata driver 'REGION'; known drivers: ",
    )
    assert "IDC" in message and "UNIT" in message and "ZONE" in message


def test_driver_init_failure(write_config, mosn_config, monkeypatch):
    monkeypatch.delenv("NO_SUCH_IDC", raising=False)
    assert_error(
        write_config,
        mosn_config(
            {
                "type": "metadata",
                "config": {
                    "metadataers": [
                        {
                            "meta_data_key": "IDC",
                            "config": {"idc_env_name_list": ["NO_SUCH_IDC"]},
                        }
                    ]
                },
            }
        ),
        "servers[0].listeners[0].stream_filters[0].config.metadataers[0]"
        ".config",
        "metadata driver 'IDC' failed to initialise: LookupError: none of "
        "the environment variables NO_SUCH_IDC is set",
    )


def test_duplicate_listener_names(write_config):
    config = {
        "servers": [
            {"listeners": [{"name": "a"}, {"name": "b"}]},
            {"listeners": [{"name": "a"}]},
        ]
    }
    assert_error(
        write_config,
        config,
        "servers[1].listeners[0].name",
        "duplicate listener name 'a' (first at servers[0].listeners[0])",
    )


@pytest.mark.parametrize(
    "config, key_path",
    [
        ({"servers": []}, "servers"),
        ({"servers": [{"listeners": []}]}, "servers"),
        ({"servers": [{}]}, "servers"),
        ({"admin": {}}, "servers"),
    ],
)
def test_no_listeners(write_config, config, key_path):
    path, message = error_of(write_config, config)
    assert message.startswith(f"{path}: {key_path}: ")
    assert "listeners" in message


def test_module_import_failure(write_config, mosn_config, user_modules):
    assert_error(
        write_config,
        mosn_config(pyworker={"modules": ["userfilters_block", "nope_nope"]}),
        "pyworker.modules[1]",
        "cannot import module 'nope_nope': ModuleNotFoundError",
    )
    assert_error(
        write_config,
        mosn_config({"type": "tag_request", "module": "nope_nope"}),
        "servers[0].listeners[0].stream_filters[0].module",
        "cannot import module 'nope_nope'",
    )


def test_a_filter_config_error_gets_the_file_and_full_path(
    write_config, mosn_config
):
    assert_error(
        write_config,
        mosn_config(
            {"type": "echo"}, {"type": "echo", "config": {"status": 700}}
        ),
        "servers[0].listeners[0].stream_filters[1].config.status",
        "must be 0 (off) or an HTTP status in 200..599, not 700",
    )


def test_the_error_is_a_single_line_for_a_relative_path(
    write_config, mosn_config, monkeypatch, tmp_path
):
    write_config(mosn_config({"type": "nope"}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load("mosn.json")
    assert str(err.value).startswith(
        "mosn.json: servers[0].listeners[0].stream_filters[0].type: "
    )
    assert "\n" not in str(err.value)
    assert os.path.basename(err.value.file) == "mosn.json"


def test_spin_us_option():
    import json as json_
    from pyworker import config as config_

    def load(options):
        return config_.loads(
            json_.dumps(
                {
                    "servers": [
                        {"listeners": [{"name": "l", "stream_filters": []}]}
                    ],
                    "pyworker": options,
                }
            ),
            "m.json",
        )

    assert load({}).spin_us == 0
    assert load({"spin_us": 50}).spin_us == 50
    for bad in (-1, 10001, "50", True):
        with pytest.raises(config_.ConfigError) as e:
            load({"spin_us": bad})
        assert "m.json: pyworker.spin_us" in str(e.value)
