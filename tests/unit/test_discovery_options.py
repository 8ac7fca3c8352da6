"""The ``discovery`` key of the pyworker block: one source per gateway,
each checked with the key and the reason; ``pyworker check`` reports it;
the store's filter config value is the listeners and nothing else."""

import json

import pytest

from pyworker.api import ConfigError
from pyworker.config import load
from pyworker.discovery import (
    EtcdSource,
    FileSource,
    XdsSource,
    discovery_option,
)
from pyworker.discovery.etcd import check_config_value
from pyworker.discovery.table import EndpointTable
from pyworker.tryout import check

LISTENERS = [{"listeners": [{"name": "l", "stream_filters": []}]}]


def option(block):
    return discovery_option({"discovery": block})


def test_each_source():
    assert option({"service_file": "s.json"}).path.endswith("/s.json")
    etcd = option({"etcd": {"prefix": "/apps/"}})
    assert etcd == EtcdSource((("127.0.0.1", 2379),), "/apps/", None)
    etcd = option(
        {
            "etcd": {
                "endpoints": [
                    "http://127.0.0.2:2389",
                    "[::1]:2379",
                    "127.0.0.3",
                ],
                "prefix": "/a/",
                "config_key": "/cfg",
                "username": "u",
                "password": "p",
                "timeout": 1,
            }
        }
    )
    assert etcd.endpoints == (
        ("127.0.0.2", 2389),
        ("::1", 2379),
        ("127.0.0.3", 2379),
    )
    assert (etcd.config_key, etcd.username, etcd.timeout) == ("/cfg", "u", 1.0)
    assert etcd.coalesce == 0.05
    assert option({"etcd": {"prefix": "/a/", "coalesce": 0}}).coalesce == 0
    xds = option({"xds": {"server": "127.0.0.1:15010", "node_id": "n"}})
    assert xds == XdsSource(("127.0.0.1", 15010), "n", "mosn-gateway")
    # the older spelling
    assert isinstance(discovery_option({"service_file": "s.json"}), FileSource)
    assert discovery_option({}) is None


@pytest.mark.parametrize(
    "block, where, reason",
    [
        (
            {"etcd": {}, "xds": {}},
            "pyworker.discovery",
            "one source per gateway, not 2",
        ),
        ({}, "pyworker.discovery", "one source per gateway, not 0"),
        ({"consul": {}}, "pyworker.discovery.consul", "unknown source"),
        (
            {"etcd": {"endpoints": ["etcd.example:2379"], "prefix": "/a/"}},
            "pyworker.discovery.etcd.endpoints[0]",
            "host names are not resolved",
        ),
        (
            {
                "etcd": {
                    "endpoints": ["https://127.0.0.1:2379"],
                    "prefix": "/a/",
                }
            },
            "pyworker.discovery.etcd.endpoints[0]",
            "etcd grpc-proxy",
        ),
        (
            {"etcd": {"endpoints": ["127.0.0.1:0"], "prefix": "/a/"}},
            "pyworker.discovery.etcd.endpoints[0]",
            "port '0' is not in",
        ),
        (
            {"etcd": {"endpoints": [], "prefix": "/a/"}},
            "pyworker.discovery.etcd.endpoints",
            "non-empty array",
        ),
        ({"etcd": {}}, "pyworker.discovery.etcd.prefix", "missing"),
        (
            {"etcd": {"prefix": "/a/", "config_key": "/a/config"}},
            "pyworker.discovery.etcd.config_key",
            "may not be under the prefix",
        ),
        (
            {"etcd": {"prefix": "/a/", "username": "u"}},
            "pyworker.discovery.etcd.username",
            "go together",
        ),
        (
            {"etcd": {"prefix": "/a/", "timeout": 0}},
            "pyworker.discovery.etcd.timeout",
            "0.1..300",
        ),
        (
            {"etcd": {"prefix": "/a/", "coalesce": 2}},
            "pyworker.discovery.etcd.coalesce",
            "0..1",
        ),
        (
            {"etcd": {"prefix": "/a/", "coalesce": True}},
            "pyworker.discovery.etcd.coalesce",
            "0..1",
        ),
        (
            {"etcd": {"prefix": "/a/", "prefx": 1}},
            "pyworker.discovery.etcd.prefx",
            "unknown key",
        ),
        (
            {"xds": {"node_id": "n"}},
            "pyworker.discovery.xds.server",
            "missing",
        ),
        (
            {"xds": {"server": "127.0.0.1"}},
            "pyworker.discovery.xds.server",
            "has no port",
        ),
        (
            {"xds": {"server": "127.0.0.1:1"}},
            "pyworker.discovery.xds.node_id",
            "missing",
        ),
    ],
)
def test_bad_blocks_name_the_key(block, where, reason):
    with pytest.raises(ConfigError) as err:
        option(block)
    assert err.value.path == where
    assert reason in err.value.reason


def test_the_service_file_named_twice_is_an_error():
    with pytest.raises(ConfigError) as err:
        discovery_option(
            {"service_file": "a.json", "discovery": {"service_file": "b.json"}}
        )
    assert err.value.path == "pyworker.service_file"


def test_check_validates_and_reports_the_source(tmp_path, capsys):
    path = tmp_path / "mosn.json"
    doc = {
        "servers": LISTENERS,
        "pyworker": {
            "discovery": {
                "etcd": {
                    "endpoints": ["127.0.0.1:2379"],
                    "prefix": "/mosn/apps/",
                }
            }
        },
    }
    path.write_text(json.dumps(doc))
    assert check(str(path)) == 0
    out, _ = capsys.readouterr()
    assert "discovery: etcd 127.0.0.1:2379 prefix /mosn/apps/" in out
    assert load(str(path)).discovery.prefix == "/mosn/apps/"
    doc["pyworker"]["discovery"]["etcd"]["endpoints"] = ["localhost"]
    path.write_text(json.dumps(doc))
    assert check(str(path)) == 1
    _, err = capsys.readouterr()
    assert (
        "pyworker.discovery.etcd.endpoints[0]: 'localhost' is not an "
        "IPv4 or IPv6 address" in err
    )


def test_the_store_config_is_the_listeners_only():
    assert check_config_value(json.dumps({"servers": LISTENERS})) == LISTENERS
    for value, reason in [
        ("{", "invalid JSON"),
        ("[]", 'listeners under "servers"'),
        (
            json.dumps({"servers": LISTENERS, "pyworker": {}}),
            "pyworker: only the listeners",
        ),
        (
            json.dumps({"servers": LISTENERS, "admin": {}}),
            "admin: only the listeners",
        ),
    ]:
        with pytest.raises(ConfigError) as err:
            check_config_value(value)
        assert reason in str(err.value)


class Region:
    def __init__(self, apps=()):
        self.apps = {a: [("10.0.0.1", 1, "s")] for a in apps}
        self.writes = []

    def set_endpoints(self, app, endpoints):
        self.apps[app] = list(endpoints)
        self.writes.append(app)
        return len(self.writes)

    def endpoint_apps(self):
        return list(self.apps)


def test_the_table_writes_changes_only_and_empties_what_is_gone():
    region = Region(apps=["left"])  # a writer before this one's app
    table = EndpointTable(region, "test")
    a = [
        ("10.0.0.1", 80, "s1"),
        ("10.0.0.2", 80, "s2"),
        ("10.0.0.3", 80, "s1"),
    ]
    assert table.sync({"x": a}) is True
    assert region.writes == ["x", "left"] and region.apps["left"] == []
    # the same, in another order within the sites' grouping: no write
    assert table.sync({"x": [a[0], a[2], a[1]]}) is False
    # an app whose update is on the way is kept as it is
    assert table.sync({}, keep={"x"}) is False
    assert table.sync({}) is True and region.apps["x"] == []
