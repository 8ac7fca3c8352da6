"""MOE's service file: the parser and its errors, the `service_file` key
of the MOSN config, and the watcher that keeps the endpoint table in step
(against a stand-in region, then a real one)."""

import json
import logging
import os
import struct
import uuid

import pytest

from pyworker import discovery
from pyworker.api import ConfigError
from pyworker.config import load
from pyworker.discovery import ServiceFileError, Watcher, loads, parse
from pyworker.tryout import check
from shm_ring.codec import RingError

MOE = {
    "apps": [
        {
            "app_name": "test",
            "server_list": [
                {"ip": "127.0.0.1", "port": 3450, "site": "s1"},
                {"ip": "127.0.0.1", "port": 3451, "site": "s1"},
                {"ip": "127.0.0.1", "port": 3452, "site": "s2"},
                {"ip": "127.0.0.1", "port": 3453, "site": "s3"},
            ],
        }
    ]
}

MOE_ENDPOINTS = [
    ("127.0.0.1", 3450, "s1"),
    ("127.0.0.1", 3451, "s1"),
    ("127.0.0.1", 3452, "s2"),
    ("127.0.0.1", 3453, "s3"),
]


def server(ip="127.0.0.1", port=3450, site="s1", **extra):
    return dict(ip=ip, port=port, site=site, **extra)


def one_app(*servers, name="test"):
    return {"apps": [{"app_name": name, "server_list": list(servers)}]}


def error(doc, source="service.json"):
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(ServiceFileError) as err:
        loads(text, source)
    return str(err.value)


# -- the parser ---------------------------------------------------------------


def test_moe_service_file_parses():
    assert parse(MOE) == {"test": MOE_ENDPOINTS}


def test_moe_reference_file(tmp_path):
    path = os.path.join(os.path.dirname(__file__), "..", "moe", "service.json")
    assert discovery.load(path) == {"test": MOE_ENDPOINTS}


def test_several_apps_ipv6_and_empty_lists():
    doc = {
        "apps": [
            {
                "app_name": "a",
                "server_list": [
                    server("::1", 80, "x"),
                    server("[0:0::2]", 81, "x"),
                ],
            },
            {"app_name": "b", "server_list": []},
            {"app_name": "c"},
        ]
    }
    assert parse(doc) == {
        "a": [("::1", 80, "x"), ("::2", 81, "x")],
        "b": [],
        "c": [],
    }


def test_unknown_keys_are_ignored():
    doc = one_app(server(weight=3, zone="z"))
    doc["version"] = 7
    assert parse(doc) == {"test": [("127.0.0.1", 3450, "s1")]}


@pytest.mark.parametrize(
    "doc, where, reason",
    [
        ("{ broken", "line 1 column 3", "invalid JSON"),
        ("[]", "", "the service file must be a JSON object"),
        ({}, "apps", "missing"),
        ({"apps": {}}, "apps", "must be an array, not object"),
        ({"apps": [7]}, "apps[0]", "must be an object, not number"),
        (
            {"apps": [{"server_list": []}]},
            "apps[0].app_name",
            "non-empty string app_name, not null",
        ),
        ({"apps": [{"app_name": "a b"}]}, "apps[0].app_name", "spaces"),
        (
            {"apps": [{"app_name": "x" * 64}]},
            "apps[0].app_name",
            "at most 63 bytes",
        ),
        (
            {"apps": [{"app_name": "a"}, {"app_name": "a"}]},
            "apps[1].app_name",
            "duplicate app_name 'a' (first at apps[0])",
        ),
        (
            {"apps": [{"app_name": "a", "server_list": {}}]},
            "apps[0].server_list",
            "must be an array",
        ),
        (
            one_app(server(ip="example.com")),
            "apps[0].server_list[0].ip",
            "'example.com' is not an IPv4 or IPv6 address",
        ),
        (
            one_app(server(ip=None)),
            "apps[0].server_list[0].ip",
            "an IPv4 or IPv6 address is needed, not null",
        ),
        (
            one_app(server(ip="1.2.3.4.5")),
            "apps[0].server_list[0].ip",
            "not an IPv4 or IPv6 address",
        ),
        (
            one_app(server(port=0)),
            "apps[0].server_list[0].port",
            "port 0 is not in 1..65535",
        ),
        (
            one_app(server(port=65536)),
            "apps[0].server_list[0].port",
            "port 65536 is not in 1..65535",
        ),
        (
            one_app(server(port="3450")),
            "apps[0].server_list[0].port",
            "a port number is needed, not '3450'",
        ),
        (
            one_app(server(port=True)),
            "apps[0].server_list[0].port",
            "a port number is needed, not boolean",
        ),
        (
            one_app(server(port=3450.5)),
            "apps[0].server_list[0].port",
            "a port number is needed",
        ),
        (
            one_app(server(site="")),
            "apps[0].server_list[0].site",
            "a non-empty string site is needed",
        ),
        (
            one_app(server(site=None)),
            "apps[0].server_list[0].site",
            "a non-empty string site is needed, not null",
        ),
        (
            one_app(server(site="s" * 32)),
            "apps[0].server_list[0].site",
            "at most 31 bytes",
        ),
        (
            one_app(server(), server(port=3451), server()),
            "apps[0].server_list[2]",
            "duplicate endpoint 127.0.0.1:3450 "
            "(first at apps[0].server_list[0])",
        ),
        (
            one_app(server("::1"), server("0::1")),
            "apps[0].server_list[1]",
            "duplicate endpoint [::1]:3450",
        ),
    ],
)
def test_errors_name_file_key_and_reason(doc, where, reason):
    message = error(doc)
    prefix = "service.json: " + (where + ": " if where else "")
    assert message.startswith(prefix), message
    assert reason in message, message


def test_bounds_of_the_table():
    too_many_apps = {"apps": [{"app_name": "a%d" % i} for i in range(17)]}
    assert "17 apps; the endpoint table holds 16" in error(too_many_apps)
    big = one_app(*[server(port=1000 + i) for i in range(257)])
    assert "257 servers; at most 256 per app fit" in error(big)
    sites = one_app(
        *[server(port=1000 + i, site="s%d" % i) for i in range(33)]
    )
    assert error(sites).startswith(
        "service.json: apps[0].server_list[32].site: more than 32 sites"
    )
    # the bounds themselves are fine
    assert (
        len(
            parse(
                one_app(
                    *[
                        server(port=1000 + i, site="s%d" % (i % 32))
                        for i in range(256)
                    ]
                )
            )["test"]
        )
        == 256
    )


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(ServiceFileError) as err:
        discovery.load(missing)
    assert str(err.value).startswith(
        f"{missing}: cannot read the service file: No such file"
    )
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"apps": [{"app_name": "\xff"}]}')
    with pytest.raises(ServiceFileError, match="not UTF-8"):
        discovery.load(bad)


# -- the key of the MOSN config ----------------------------------------------


def mosn(**pyworker):
    return {
        "servers": [{"listeners": [{"name": "l", "stream_filters": []}]}],
        "pyworker": pyworker,
    }


def test_service_file_key_relative_to_the_working_directory(
    tmp_path, monkeypatch, write_config
):
    monkeypatch.chdir(tmp_path)
    path = write_config(mosn(service_file="conf/service.json"))
    assert load(path).service_file == str(tmp_path / "conf" / "service.json")
    assert discovery.service_file_of(path) == str(
        tmp_path / "conf" / "service.json"
    )
    path = write_config(mosn(service_file="/etc/s.json"), "abs.json")
    assert load(path).service_file == "/etc/s.json"
    path = write_config(mosn(), "none.json")
    assert load(path).service_file is None
    assert discovery.service_file_of(path) is None


@pytest.mark.parametrize(
    "value, reason",
    [
        (7, "must be a non-empty string (a path), not number"),
        ("", "must be a non-empty string (a path), not string"),
        (["a"], "must be a non-empty string (a path), not array"),
    ],
)
def test_service_file_key_is_checked(write_config, value, reason):
    path = write_config(mosn(service_file=value))
    for get in (load, discovery.service_file_of):
        with pytest.raises(ConfigError) as err:
            get(path)
        assert str(err.value) == f"{path}: pyworker.service_file: {reason}"


def test_check_reports_the_service_file(
    tmp_path, monkeypatch, write_config, capsys
):
    monkeypatch.chdir(tmp_path)
    path = write_config(mosn(service_file="service.json"))
    assert check(path) == 0
    out, err = capsys.readouterr()
    assert "warning: " in err and "cannot read the service file" in err
    (tmp_path / "service.json").write_text(json.dumps(MOE))
    assert check(path) == 0
    out, err = capsys.readouterr()
    assert (
        f"service file: {tmp_path}/service.json (1 apps, 4 endpoints)" in out
    )


# -- the watcher --------------------------------------------------------------


class FakeRegion:
    """The endpoint table's API, as the region keeps it."""

    def __init__(self):
        self.apps = {}
        self.writes = []

    def set_endpoints(self, app, endpoints):
        order = []
        for _, _, site in endpoints:
            if site not in order:
                order.append(site)
        self.apps[app] = [e for s in order for e in endpoints if e[2] == s]
        self.writes.append(app)
        return len(self.writes)

    def endpoints(self, app):
        return list(self.apps.get(app, []))

    def endpoint_apps(self):
        return list(self.apps)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def write(path, doc):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))
    os.rename(tmp, path)


def test_watcher_applies_changes_only(tmp_path):
    path = tmp_path / "service.json"
    write(path, MOE)
    region, clock = FakeRegion(), Clock()
    w = Watcher(str(path), region, clock=clock)
    assert w.poll() is True
    assert region.apps == {"test": MOE_ENDPOINTS}
    # not time yet, then nothing changed: no read, no write
    assert w.poll() is False
    clock.now += 0.5
    assert w.poll() is False and region.writes == ["test"]
    # a new app and a changed one; the same test app is not rewritten
    doc = json.loads(json.dumps(MOE))
    doc["apps"].append(
        {"app_name": "other", "server_list": [server(port=9000, site="x")]}
    )
    write(path, doc)
    clock.now += 0.5
    assert w.poll() is True
    assert region.writes == ["test", "other"]
    # an app gone from the file is emptied
    write(
        path,
        {
            "apps": [
                {
                    "app_name": "other",
                    "server_list": [server(port=9001, site="x")],
                }
            ]
        },
    )
    clock.now += 0.5
    assert w.poll() is True
    assert region.apps == {"test": [], "other": [("127.0.0.1", 9001, "x")]}


def test_watcher_keeps_the_last_good_and_says_why_once(tmp_path, caplog):
    path = tmp_path / "service.json"
    write(path, MOE)
    region, clock = FakeRegion(), Clock()
    w = Watcher(str(path), region, clock=clock)
    w.poll()
    caplog.set_level(logging.INFO, logger="pyworker.discovery")
    write(path, one_app(server(port=0)))
    clock.now += 0.5
    assert w.poll() is False
    assert region.apps == {"test": MOE_ENDPOINTS}
    errors = [
        r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
    ]
    assert errors == [
        f"service discovery: {path}: "
        f"apps[0].server_list[0].port: port 0 is not in "
        f"1..65535; keeping the last good endpoints"
    ]
    # the same error again (the file touched): not logged again
    write(path, one_app(server(port=0)))
    clock.now += 0.5
    w.poll()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    # gone: the table keeps its endpoints too
    os.unlink(path)
    clock.now += 0.5
    w.poll()
    assert region.apps == {"test": MOE_ENDPOINTS}
    assert "cannot read the service file" in caplog.records[-1].getMessage()
    # good again
    write(path, one_app(server(port=3460)))
    clock.now += 0.5
    assert w.poll() is True
    assert region.apps == {"test": [("127.0.0.1", 3460, "s1")]}
    assert w.error is None


def test_watcher_without_a_good_file_yet(tmp_path, caplog):
    path = tmp_path / "service.json"
    region = FakeRegion()
    w = Watcher(str(path), region, clock=Clock())
    assert w.poll() is False
    assert region.apps == {}
    assert "keeping no endpoints (none was good yet)" in caplog.text


def test_watcher_writes_a_real_region(tmp_path):
    from shm_ring import Region

    name = "/mosn-disc-test-%s" % uuid.uuid4().hex[:10]
    region = Region.create(
        name, nproducers=1, nconsumers=1, slots=2, slot_size=1024
    )
    try:
        path = tmp_path / "service.json"
        write(path, MOE)
        clock = Clock()
        w = Watcher(str(path), region, clock=clock)
        assert w.poll() is True
        assert region.endpoints("test") == MOE_ENDPOINTS
        assert region.endpoint_generation("test") == 1
        assert region.pick_endpoint("test", "s1")[:2] == ("127.0.0.1", 3450)
        # the same content again: not rewritten
        write(path, MOE)
        clock.now += 1
        assert w.poll() is False
        assert region.endpoint_generation("test") == 1
        # a site emptied: its requests fall back to any endpoint
        write(path, one_app(server(port=3452, site="s2")))
        clock.now += 1
        assert w.poll() is True
        assert region.pick_endpoint("test", "s1") == ("127.0.0.1", 3452, True)
        assert region.endpoint_generation("test") == 2
        # a writer killed in the middle of a write left the seqlock odd:
        # the next look at the file (a new supervisor's) repairs it
        with open("/dev/shm" + name, "r+b") as f:
            f.seek(688)
            (off,) = struct.unpack("<Q", f.read(8))
            f.seek(off)
            f.write(struct.pack("<I", 5))
        with pytest.raises(RingError):
            region.endpoints("test")
        Watcher(str(path), region, clock=clock).poll()
        assert region.endpoints("test") == [("127.0.0.1", 3452, "s2")]
    finally:
        region.close()
        region.unlink()
