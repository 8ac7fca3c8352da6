"""The filter config from etcd: the listeners' MOSN JSON under one key,
checked like a reload checks the file, rolled out to the workers one by
one with no failed request; a bad one refused with the reason in the
error log and the metrics, the last good serving on; config_dump shows
the live revision."""

import glob
import json
import os
import tempfile

import pytest

from fleet import (
    CONFIG_KEY,
    PREFIX,
    Etcd,
    FLEET_HTTP,
    Sites,
    app_value,
    etcd_mosn,
)
from gateway import example_mosn, free_port, listener, wait_for
from load import Load

pytestmark = pytest.mark.slow

HTTP = FLEET_HTTP.replace(
    """        location / {""",
    """\
        location /echo {
            mosn_filter_chain echoListener;
        }
        location / {""",
)


def echo(body):
    return listener(
        "echoListener",
        {"type": "echo", "config": {"status": 200, "body": body}},
    )


def servers(body, unit_key="uid"):
    mosn = example_mosn(unit_key, extra_listeners=[echo(body)])
    return {"servers": mosn["servers"]}


@pytest.fixture
def etcd():
    e = Etcd(1).start()
    yield e
    e.close()


@pytest.fixture
def sites():
    s = Sites([("s1", "a"), ("s2", "b")]).start()
    yield s
    s.stop()


def start(gateway, etcd, sites, workers=2):
    etcd.put(
        PREFIX + "test",
        app_value(
            "test", [(sites.ports["a"], "s1"), (sites.ports["b"], "s2")]
        ),
    )
    base = example_mosn(extra_listeners=[echo("from the file")])
    admin = free_port()
    base["admin"] = {
        "address": {
            "socket_address": {"address": "127.0.0.1", "port_value": admin}
        }
    }
    metrics = free_port()
    base["metrics"] = {
        "sinks": [{"type": "prometheus", "config": {"port": metrics}}]
    }
    gw = gateway(
        HTTP, mosn=etcd_mosn(etcd.endpoints, CONFIG_KEY, base), workers=workers
    )
    gw.admin_port = admin
    gw.metrics_port = metrics
    return gw


def metrics(gw):
    """{(name, labels): value} of the Prometheus endpoint."""
    r = gw.get("/metrics", port=gw.metrics_port)
    assert r.status == 200
    out = {}
    for line in r.text.splitlines():
        if line.startswith("pyworker_discovery"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def admin(gw, path):
    """An admin API answer (the admin process restarts on each roll)."""

    def get():
        try:
            r = gw.get(path, port=gw.admin_port)
        except OSError:
            return None
        return r if r.status == 200 else None

    r = wait_for(get, 15)
    assert r, "no admin answer for %s" % path
    return json.loads(r.body)


def test_the_store_config_is_rolled_out_with_no_failed_request(
    gateway, etcd, sites
):
    rev1 = etcd.put(CONFIG_KEY, servers("v1"))
    gw = start(gateway, etcd, sites)
    # what a supervisor of this region that died left is cleared
    merged = os.path.join(
        tempfile.gettempdir(), "pyworker-config-%s-" % gw.shm
    )
    os.mkdir(merged + "stale", 0o700)
    gw.start()
    assert not os.path.exists(merged + "stale")
    # the workers start on the store's listeners, not the file's
    assert gw.get("/echo").text == "v1"
    assert gw.get("/", {"uid": "150"}).text.endswith("b")
    live = admin(gw, "/api/v1/config_dump")["pyworker"]["config_from"]
    assert live["etcd_key"] == CONFIG_KEY and live["revision"] == rev1
    old = set(gw.python_pids())
    with Load(gw.port, threads=4, path="/echo") as load:
        assert wait_for(lambda: len(load.results) > 100, 10)
        rev2 = etcd.put(CONFIG_KEY, servers("v2", unit_key="user"))
        assert wait_for(lambda: gw.get("/echo").text == "v2", 30), (
            gw.error_log()[-2000:]
        )
        # rolled one by one: every worker replaced, two serving
        assert wait_for(
            lambda: (
                set(gw.python_pids()).isdisjoint(old)
                and len(gw.live_workers()) == 2
            ),
            30,
        )
        n = len(load.results)
        assert wait_for(lambda: len(load.results) > n + 100, 10)
    assert not load.errors, load.errors[:5]
    assert {s for s, _, _ in load.results} == {200}, load.statuses()
    # the new chain's config is live: its unit_key is "user"
    assert gw.get("/", {"user": "150"}).text.endswith("b")
    assert wait_for(
        lambda: (
            admin(gw, "/api/v1/config_dump")["pyworker"]["config_from"][
                "revision"
            ]
            == rev2
        ),
        15,
    )
    assert "etcd key /mosn/config revision %d is live" % rev2 in gw.error_log()
    # the merged configs live in one private directory, gone at the end
    (live_dir,) = glob.glob(merged + "*")
    assert os.stat(live_dir).st_mode & 0o777 == 0o700
    gw.stop()
    assert not glob.glob(merged + "*")


def test_a_bad_store_config_is_refused_and_the_last_good_serves(
    gateway, etcd, sites
):
    etcd.put(CONFIG_KEY, servers("v1"))
    gw = start(gateway, etcd, sites, workers=1).start()
    assert gw.get("/echo").text == "v1"
    workers = gw.python_pids()
    # a filter type nobody registered: the check refuses it
    bad = servers("v2")
    bad["servers"][0]["listeners"][1]["stream_filters"][0]["type"] = "nope"
    rev = etcd.put(CONFIG_KEY, bad)
    why = "filter config: etcd key /mosn/config revision %d refused" % rev
    assert wait_for(lambda: why in gw.error_log(), 30), gw.error_log()
    assert "reload refused" in gw.error_log() and "nope" in gw.error_log()
    # not JSON, and keys that are each gateway's own: refused at once
    rev_json = etcd.put(CONFIG_KEY, "{oops")
    refused = "revision %d refused: line 1 column 2: invalid JSON" % rev_json
    assert wait_for(lambda: refused in gw.error_log(), 10), gw.error_log()[
        -3000:
    ]
    rev_admin = etcd.put(CONFIG_KEY, dict(servers("v3"), admin={}))
    assert wait_for(
        lambda: (
            "revision %d refused: admin: only the "
            "listeners" % rev_admin in gw.error_log()
        ),
        10,
    )
    # the last good serves on, the workers untouched
    assert gw.get("/echo").text == "v1"
    assert gw.python_pids() == workers
    stats = admin(gw, "/api/v1/stats")["discovery"]
    assert stats["config"]["errors"] == 3, stats
    assert stats["config"]["revision"] < rev
    # the metrics say the same: source, revisions, errors by kind
    m = metrics(gw)
    assert (
        m['pyworker_discovery_errors_total{kind="config",source="etcd"}'] == 3
    ), m
    assert (
        m['pyworker_discovery_config_revision{key="/mosn/config"}']
        == stats["config"]["revision"]
    )
    assert m['pyworker_discovery_connected{source="etcd"}'] == 1
    assert m['pyworker_discovery_revision{source="etcd"}'] >= 1
    assert (
        'pyworker_discovery_info{revision="%s",source="etcd"}'
        % stats["revision"]
    ) in m
    assert (
        0 <= m['pyworker_discovery_seconds_since_update{source="etcd"}'] < 600
    )
    # a reload keeps the store's listeners, merged with the file
    gw.reload()
    assert wait_for(lambda: set(gw.python_pids()).isdisjoint(workers), 30)
    assert gw.get("/echo").text == "v1"
    # good again: live
    etcd.put(CONFIG_KEY, servers("v4"))
    assert wait_for(lambda: gw.get("/echo").text == "v4", 30)


def test_etcd_down_at_start_the_file_serves_until_it_answers(
    gateway, etcd, sites
):
    etcd.put(CONFIG_KEY, servers("v1"))
    gw = start(gateway, etcd, sites, workers=1)
    etcd.stop()
    gw.start()
    # no answer within the wait: the file's own listeners serve
    assert gw.get("/echo").text == "from the file"
    assert "service discovery: etcd connect" in gw.error_log()
    etcd.start()
    assert wait_for(lambda: gw.get("/echo").text == "v1", 30), gw.error_log()[
        -2000:
    ]
    # the endpoints came with it
    assert gw.get("/", {"uid": "150"}).text.endswith("b")
