"""Operating it like MOSN: Prometheus metrics, the admin API, and a
reload that picks up new filter code with no failed request."""

import json
import os
import re
import textwrap
import time
import urllib.request

from gateway import (
    ROUTED_UPSTREAMS,
    FILTERS,
    example_mosn,
    free_port,
    listener,
    sites,
)
from load import Load

ROUTED = (
    ROUTED_UPSTREAMS
    + """
    server {
        listen 127.0.0.1:%PORT%;
        location / {
            mosn_filter_chain serverListener;
            add_header X-Version $http_x_version always;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://$site;
        }
        location /echo {
            mosn_filter_chain echoListener;
            proxy_pass http://s1;
        }
    }
"""
    + sites([("s1", 3450), ("s2", 3452), ("s3", 3453)])
)


def operated_mosn(admin, metrics, matcher=None, extra=()):
    mosn = example_mosn(
        extra_listeners=[
            listener(
                "echoListener",
                {
                    "type": "echo",
                    "config": {
                        "status": 200,
                        "body": "hi",
                        "password": "hunter2",
                    },
                },
            ),
            *extra,
        ]
    )
    mosn["admin"] = {
        "address": {
            "socket_address": {"address": "0.0.0.0", "port_value": admin}
        }
    }
    mosn["metrics"] = {
        "sinks": [{"type": "prometheus", "config": {"port": metrics}}]
    }
    if matcher:
        mosn["metrics"]["stats_matcher"] = matcher
    return mosn


def fetch(port, path):
    with urllib.request.urlopen(
        "http://127.0.0.1:%d%s" % (port, path), timeout=5
    ) as r:
        return r.status, r.read().decode()


def metric(text, name, **labels):
    """The value of one sample of the exposition text, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.match(r"(\w+)(?:\{(.*)\})? (\S+)$", line)
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if m.group(1) == name and got == {
            k: str(v) for k, v in labels.items()
        }:
            return float(m.group(3))
    return None


def wait_until(fn, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fn()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    return fn()


def test_metrics_add_up_over_workers_and_the_module(gateway):
    admin, prom = free_port(), free_port()
    gw = gateway(ROUTED, mosn=operated_mosn(admin, prom), workers=2).start()
    for i in range(30):
        gw.get("/", {"uid": str(i * 10)})
    for i in range(10):
        gw.get("/", {"uid": "abc"})
    for i in range(5):
        gw.get("/echo")

    def scraped():
        _, text = fetch(prom, "/metrics")
        n = metric(
            text,
            "pyworker_requests_total",
            chain="serverListener",
            outcome="continue",
        )
        return text if n == 40 else None

    text = wait_until(scraped)
    assert text, "the workers' counts did not add up to 40"
    assert (
        metric(
            text,
            "pyworker_requests_total",
            chain="echoListener",
            outcome="hijack",
        )
        == 5
    )
    assert (
        metric(
            text,
            "pyworker_filter_requests_total",
            chain="serverListener",
            filter="metadata",
            outcome="continue",
        )
        == 40
    )
    # timing is sampled: one request in 8, in each worker
    timed = metric(
        text,
        "pyworker_filter_duration_seconds_count",
        chain="serverListener",
        filter="metadata",
    )
    assert 40 // 8 - 2 <= timed <= 40 // 8 + 2
    # no uid (10) and uid 0 (s3, no error): "abc" raised ten times
    assert (
        metric(
            text,
            "pyworker_driver_errors_total",
            chain="serverListener",
            filter="metadata",
        )
        == 10
    )
    submitted = sum(
        float(v)
        for v in re.findall(
            r'^mosn_ring_submitted_total\{producer="\d+"\} (\S+)', text, re.M
        )
    )
    assert submitted == 45
    assert metric(text, "pyworker_workers") == 2
    assert metric(text, "mosn_ring_slots_in_use", producer=0) == 0
    # honest workers: nothing forged, nothing refused, and both counted
    assert metric(text, "mosn_ring_forged_total", producer=0) == 0
    assert metric(text, "mosn_ring_refused_total", producer=0) == 0
    # both workers took part, and the view is one
    taken = [
        c["completed"]
        for c in gw.region().stats()["consumers"]
        if c["state"] == "live"
    ]
    assert len(taken) == 2 and sum(taken) == 45


def test_stats_matcher_exclusions(gateway):
    admin, prom = free_port(), free_port()
    mosn = operated_mosn(
        admin,
        prom,
        matcher={
            "exclusion_labels": ["outcome"],
            "exclusion_keys": ["filter_requests"],
        },
    )
    gw = gateway(ROUTED, mosn=mosn).start()
    for i in range(4):
        gw.get("/", {"uid": str(i)})

    def scraped():
        _, text = fetch(prom, "/metrics")
        n = metric(text, "pyworker_requests_total", chain="serverListener")
        return text if n == 4 else None

    text = wait_until(scraped)
    assert text, "requests_total without its outcome label did not add up"
    assert "pyworker_filter_requests_total" not in text
    assert 'outcome="' not in text


def test_admin_api(gateway):
    admin, prom = free_port(), free_port()
    gw = gateway(ROUTED, mosn=operated_mosn(admin, prom), workers=2).start()
    status, body = wait_until(lambda: fetch(admin, "/api/v1/states"))
    assert status == 200 and json.loads(body)["ready"] is True
    _, body = fetch(admin, "/api/v1/config_dump")
    dump = json.loads(body)
    echo = dump["servers"][0]["listeners"][1]["stream_filters"][0]
    assert echo["config"]["password"] != "hunter2"
    assert echo["config"]["body"] == "hi"
    _, body = fetch(admin, "/api/v1/workers")
    workers = json.loads(body)
    assert sorted(w["pid"] for w in workers) == sorted(gw.python_pids())
    assert all(
        w["state"] == "live"
        and w["uptime_seconds"] >= 0
        and w["in_flight"] == 0
        for w in workers
    )
    _, body = fetch(admin, "/api/v1/stats")
    stats = json.loads(body)
    assert stats["slots_in_use"] == 0 and "ring" in stats
    # loopback only, although the config says 0.0.0.0
    listening = open("/proc/net/tcp").read()
    port_hex = ":%04X" % admin
    lines = [l for l in listening.splitlines()[1:] if port_hex in l.split()[1]]
    assert lines and all(l.split()[1].startswith("0100007F") for l in lines)


def test_reload_picks_up_new_filter_code_under_load(gateway, tmp_path):
    code = textwrap.dedent("""
        from pyworker import CONTINUE, StreamReceiverFilter, register_filter

        @register_filter("versioned")
        class Versioned(StreamReceiverFilter):
            def __init__(self, config):
                pass

            def on_receive(self, ctx, headers, buf, trailers):
                headers.set("x-version", "VERSION")
                return CONTINUE
    """)
    pkg = tmp_path / "mine"
    pkg.mkdir()
    os.chmod(tmp_path, 0o755)
    (pkg / "versioned_filter.py").write_text(code.replace("VERSION", "1"))
    mosn = example_mosn(
        extra_listeners=[
            listener(
                "echoListener", {"type": "echo", "config": {"body": "hi"}}
            )
        ]
    )
    mosn["servers"][0]["listeners"][0]["stream_filters"].insert(
        0, {"type": "versioned", "module": "versioned_filter", "config": {}}
    )
    gw = gateway(
        ROUTED,
        mosn=mosn,
        workers=2,
        env={"PYTHONPATH": "%s:%s" % (pkg, FILTERS)},
    ).start()
    assert gw.get("/", {"uid": "1"}).header("X-Version") == "1"
    old = set(gw.python_pids())
    with Load(gw.port, threads=4) as load:
        time.sleep(0.5)
        (pkg / "versioned_filter.py").write_text(code.replace("VERSION", "2"))
        gw.reload()
        # rolled one worker at a time, until none of the old ones is left
        assert wait_until(
            lambda: (
                not set(gw.python_pids()) & old and len(gw.live_workers()) == 2
            ),
            20,
        )
        time.sleep(0.5)
    assert {
        gw.get("/", {"uid": "1"}).header("X-Version") for _ in range(6)
    } == {"2"}
    assert not load.errors, load.errors[:3]
    assert all(status == 200 for status, _ in load.statuses())
    # a broken edit is refused by the reload and the old code serves on
    (pkg / "versioned_filter.py").write_text("this is not python")
    gw.reload()
    time.sleep(1.5)
    assert gw.get("/", {"uid": "1"}).header("X-Version") == "2"
    assert "versioned_filter" in gw.error_log()
