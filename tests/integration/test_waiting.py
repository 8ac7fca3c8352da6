"""Requests wait in nginx for what the filters need: a free slot, or a
Python worker while the pool starts one.  They take the fallback only
past mosn_queue or mosn_timeout, or at once when no worker can be
expected; a client that leaves while it waits leaves the queue."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from gateway import (
    NGINX,
    ROUTED_UPSTREAMS,
    SITE_BODY,
    example_mosn,
    free_port,
    listener,
    sites,
    wait_for,
)
from shm_ring import RingError

ROUTED = (
    ROUTED_UPSTREAMS
    + """
    server {
        listen 127.0.0.1:%PORT%;
        mosn_timeout %TIMEOUT%;
        location / {
            mosn_filter_chain serverListener;
            add_header X-Mosn-Status $mosn_status always;
            proxy_pass http://$site;
        }
        location /slow {
            mosn_filter_chain slowListener;
            add_header X-Mosn-Status $mosn_status always;
            add_header X-Mosn-Id $mosn_request_id always;
            proxy_pass http://s1;
        }
    }
"""
    + sites([("s1", 3450), ("s2", 3452), ("s3", 3453)])
)


def routed(timeout="10s", main=""):
    return main + ROUTED.replace("%TIMEOUT%", timeout)


def slow_mosn(seconds, admin_port=None, fail_when=None):
    mosn = example_mosn(
        extra_listeners=[
            listener(
                "slowListener",
                {
                    "type": "slow",
                    "module": "testfilters",
                    "config": {"seconds": seconds},
                },
            )
        ]
    )
    if fail_when:
        mosn["servers"][0]["listeners"][0]["stream_filters"].append(
            {
                "type": "fail_start",
                "module": "testfilters",
                "config": {"when": fail_when},
            }
        )
    if admin_port:
        mosn["admin"] = {
            "address": {
                "socket_address": {
                    "address": "127.0.0.1",
                    "port_value": admin_port,
                }
            }
        }
    return mosn


def producer(gw):
    region = gw.region()
    try:
        return [
            p for p in region.stats()["producers"] if p["state"] == "owned"
        ][0]
    finally:
        region.close()


def get_all(gw, path, n, headers=None, stagger=0.0):
    """n requests at once (thread i starts stagger*i late); the responses
    with the time each was sent, in the order they were sent."""
    out = [None] * n

    def call(i):
        time.sleep(stagger * i)
        sent = time.monotonic()
        try:
            out[i] = (sent, gw.get(path, headers, timeout=30))
        except OSError as exc:
            out[i] = (sent, exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def states(port):
    try:
        with urllib.request.urlopen(
            "http://127.0.0.1:%d/api/v1/states" % port, timeout=5
        ) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return None, {}  # the admin process is not up (yet)


def test_first_request_after_start_waits_for_the_pool(gateway):
    """The first request, sent as soon as the port accepts and before any
    Python worker is up, is routed by the filters."""
    mosn = slow_mosn(0.1)
    gw = gateway(routed("20s"), mosn=mosn)
    # the workers serve once the request is on its way, whatever the
    # machine's speed: their start hooks wait for this file
    gate = os.path.join(gw.prefix, "pool-may-start")
    mosn["servers"][0]["listeners"].append(
        listener(
            "gatedListener",
            {
                "type": "start_gate",
                "module": "testfilters",
                "config": {"file": gate},
            },
        )
    )
    gw.write_mosn(mosn)
    cmd = [NGINX, "-p", gw.prefix + "/", "-c", "conf/nginx.conf"]
    proc = subprocess.Popen(
        cmd, env=gw.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    gw.started = True
    deadline = time.monotonic() + 20
    while True:
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", gw.port))
            break
        except ConnectionRefusedError:
            s.close()
            assert time.monotonic() < deadline, "nginx never listened"
    s.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nuid: 150\r\nConnection: close\r\n\r\n"
    )
    # sent while no worker serves (none can before the gate opens)
    assert not live_workers(gw)
    open(gate, "w").close()
    s.settimeout(30)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    proc.wait(30)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    assert b"X-Mosn-Status: filtered" in head, data
    assert SITE_BODY.match(body.decode()).group(1) == "s2"
    # it waited for the pool (in the listen queue: nginx starts its
    # workers once the pool serves), and never took the fallback
    assert producer(gw)["fallbacks"] == 0


def live_workers(gw):
    """The Python workers that serve; none while the region is not made."""
    try:
        region = gw.region()
    except (RingError, OSError):
        return []
    try:
        return gw.live_workers(region)
    finally:
        region.close()


def read_response(s):
    s.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
    return head.split(" ")[1], fields


def test_requests_wait_for_a_slot_in_arrival_order(gateway):
    """More requests than slots: the rest wait in nginx and are handed
    over in the order they came; none takes the fallback."""
    gw = gateway(
        "mosn_slots 2;\n" + routed("20s"), mosn=slow_mosn(0.2)
    ).start()
    n = 8
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        conns.append(s)
        # the next one is sent once nginx holds this one
        assert wait_for(
            lambda: (
                (lambda p: p["in_use"] + p["waiting"] + p["completed"])(
                    producer(gw)
                )
                >= i + 1
            ),
            10,
            step=0.002,
        )
    out = [read_response(s) for s in conns]
    for s in conns:
        s.close()
    assert [status for status, _ in out] == ["200"] * n, out
    assert [h["X-Mosn-Status"] for _, h in out] == ["filtered"] * n
    # ids are given as requests get a slot: in the order they came
    ids = [int(h["X-Mosn-Id"]) for _, h in out]
    assert ids == sorted(ids), ids
    p = producer(gw)
    assert p["queued"] >= 4
    assert p["fallbacks"] == 0 and p["queue_full"] == 0
    assert p["waiting"] == 0
    gw.wait_idle()


def test_past_mosn_queue_the_fallback_is_counted(gateway):
    gw = gateway(
        "mosn_slots 2;\nmosn_queue 2;\n" + routed("20s"), mosn=slow_mosn(0.5)
    ).start()
    out = get_all(gw, "/slow", 8, stagger=0.01)
    status = sorted(r.header("X-Mosn-Status") for _, r in out)
    # two in slots, two waiting, four past the queue
    assert status.count("filtered") == 4, status
    assert status.count("fallback") == 4, status
    p = producer(gw)
    assert p["queue_full"] == 4 and p["queued"] == 2
    assert "requests already wait (see mosn_queue)" in gw.error_log()
    gw.wait_idle()


def test_mosn_queue_0_takes_the_fallback_at_once(gateway):
    gw = gateway(
        "mosn_slots 2;\nmosn_queue 0;\n" + routed("20s"), mosn=slow_mosn(0.5)
    ).start()
    out = get_all(gw, "/slow", 4, stagger=0.01)
    fast = [r for sent, r in out if r.header("X-Mosn-Status") == "fallback"]
    assert len(fast) == 2
    assert producer(gw)["queued"] == 0
    gw.wait_idle()


def test_waiting_keeps_the_deadline_of_its_arrival(gateway):
    """A request that waits for a slot longer than mosn_timeout takes the
    fallback as a timeout, counted from its arrival, not from a slot."""
    gw = gateway("mosn_slots 2;\n" + routed("1s"), mosn=slow_mosn(3)).start()
    out = get_all(gw, "/slow", 3)
    took = []
    for sent, r in out:
        assert r.status == 200 and r.header("X-Mosn-Status") == "timeout"
    p = producer(gw)
    assert p["queued"] == 1 and p["timeouts"] == 3
    assert "waited mosn_timeout for a free slot" in gw.error_log()
    t0 = time.monotonic()
    r = gw.get("/slow", {"x-slow": "no"})
    took.append(time.monotonic() - t0)
    # the slots come back as the late verdicts do
    gw.wait_idle(timeout=10)


def test_a_worker_stuck_in_a_filter_is_passed_over(gateway):
    """Two Python workers, one stuck for 3 s in a filter that blocks: the
    requests that come meanwhile, one after the other, go to the other
    one; none waits for the stuck one."""
    gw = gateway(routed("10s"), mosn=slow_mosn(3), workers=2).start()
    stuck = []
    t = threading.Thread(
        target=lambda: stuck.append(gw.get("/slow", timeout=30))
    )
    t.start()

    def taken():
        region = gw.region()
        try:
            return sum(c["taken"] for c in region.stats()["consumers"])
        finally:
            region.close()

    # in the filter now: taken from the ring by a worker
    assert wait_for(lambda: taken() == 1, 5, step=0.002)
    took = []
    for _ in range(10):
        t0 = time.monotonic()
        r = gw.get("/slow", {"x-slow": "no"})
        took.append(round(time.monotonic() - t0, 3))
        assert r.header("X-Mosn-Status") == "filtered"
    t.join()
    assert max(took) < 1.0, took
    assert stuck[0].header("X-Mosn-Status") == "filtered"
    gw.wait_idle()


def test_client_gone_while_waiting_leaves_the_queue(gateway):
    gw = gateway("mosn_slots 2;\n" + routed("20s"), mosn=slow_mosn(2)).start()
    busy = threading.Thread(target=get_all, args=(gw, "/slow", 2))
    busy.start()
    assert wait_for(lambda: producer(gw)["in_use"] == 2, 5)
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_for(lambda: producer(gw)["waiting"] == 1, 5)
    s.close()
    t0 = time.monotonic()
    assert wait_for(lambda: producer(gw)["waiting"] == 0, 1)
    left = time.monotonic() - t0
    busy.join()
    assert left < 1
    # it was never handed to the filters
    assert producer(gw)["submitted"] == 2
    gw.wait_idle()


def test_http2_multiplexed_streams_all_filtered(gateway):
    """h2load, 4 connections of 100 streams each on 16 slots: every
    request routed by the filters, none takes the fallback."""
    h2load = shutil.which("h2load")
    assert h2load, "h2load (nghttp2-client) is missing: make setup"
    body = ROUTED.replace(
        "listen 127.0.0.1:%PORT%;", "listen 127.0.0.1:%PORT% http2;"
    )
    gw = gateway(
        "mosn_slots 16;\n" + body.replace("%TIMEOUT%", "20s"),
        mosn=slow_mosn(0.1),
    ).start()
    out = subprocess.run(
        [
            h2load,
            "-n",
            "4000",
            "-c",
            "4",
            "-m",
            "100",
            "-H",
            "uid: 150",
            "http://127.0.0.1:%d/" % gw.port,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "4000 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
    assert "status codes: 4000 2xx" in out.stdout, out.stdout
    p = producer(gw)
    assert p["fallbacks"] == 0 and p["timeouts"] == 0
    assert p["queued"] > 0  # more streams than slots did wait
    assert p["submitted"] == 4000
    gw.wait_idle()


def test_pool_that_cannot_start_workers_is_not_waited_for(gateway, tmp_path):
    """Workers that keep failing to start: the pool is marked failed, the
    readiness endpoint says requests take the fallback, and they do at
    once; once a worker serves again, requests are filtered."""
    marker = str(tmp_path / "fail")
    admin = free_port()
    gw = gateway(
        routed("5s"), mosn=slow_mosn(0.1, admin_port=admin, fail_when=marker)
    ).start()
    assert wait_for(lambda: states(admin)[0] == 200, 10)
    assert states(admin)[1]["requests"] == "filtered"
    assert wait_for(lambda: states(admin)[1]["pool"] == "running", 5)
    open(marker, "w").close()
    for pid in gw.python_pids():
        os.kill(pid, signal.SIGKILL)
    # three workers in a row die before serving
    assert wait_for(lambda: states(admin)[1]["pool"] == "failed", 20)
    code, doc = states(admin)
    assert code == 503 and doc["requests"] == "fallback"
    t0 = time.monotonic()
    r = gw.get("/", {"uid": "150"})
    assert time.monotonic() - t0 < 1
    assert r.header("X-Mosn-Status") == "fallback"
    assert "none is expected" in gw.error_log()
    os.unlink(marker)
    assert wait_for(lambda: states(admin)[1]["requests"] == "filtered", 20)
    assert gw.get("/", {"uid": "150"}).header("X-Mosn-Status") == "filtered"


def test_readiness_says_requests_wait_while_the_pool_starts(gateway):
    """With mosn_spawn off and no pool started yet, requests wait for one
    (it may start any moment) and are filtered once it does."""
    admin = free_port()
    gw = gateway(
        "mosn_spawn off;\n" + routed("20s"),
        mosn=slow_mosn(0.1, admin_port=admin),
    )
    gw.start(wait=False)
    result = {}

    def call():
        result["r"] = gw.get("/", {"uid": "150"}, timeout=30)

    t = threading.Thread(target=call)
    t.start()
    assert wait_for(
        lambda: (
            os.path.exists("/dev/shm/" + gw.shm)
            and gw.nginx_worker_pids()
            and producer(gw)["waiting"] == 1
        ),
        10,
    )
    pool = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyworker",
            "serve",
            "--shm",
            "/" + gw.shm,
            "--config",
            gw.mosn_path,
            "--workers",
            "1",
        ],
        env=gw.env,
        cwd=gw.prefix,
    )
    try:
        assert wait_for(lambda: states(admin)[0] == 200, 20)
        t.join(30)
        assert result["r"].header("X-Mosn-Status") == "filtered"
        assert states(admin)[1]["requests"] == "filtered"
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(10)


def test_python_worker_wakes_nginx_through_its_eventfd(gateway):
    """The Python worker wakes a sleeping nginx worker through the
    eventfd the nginx worker publishes (a copy taken once), not with a
    doorbell datagram per wake-up."""
    gw = gateway(routed("10s"), mosn=slow_mosn(0.1)).start()
    for _ in range(5):
        assert (
            gw.get("/", {"uid": "150"}).header("X-Mosn-Status") == "filtered"
        )
    [pid] = gw.python_pids()

    def links():
        out = []
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                out.append(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
            except OSError:
                pass
        return out

    # the nginx worker's (a copy taken once), and the event loop's own
    # (uvloop's wake-up of itself)
    before = links()
    assert before.count("anon_inode:[eventfd]") <= 2, before
    for _ in range(5):
        gw.get("/", {"uid": "150"})
    assert links().count("anon_inode:[eventfd]") == before.count(
        "anon_inode:[eventfd]"
    )
    p = producer(gw)
    assert p["doorbells"] >= 5
