"""Filters that await, through the real nginx, module and workers: many
requests in flight in one Python worker, the in-flight bound, deadlines,
clients that go away, reloads and killed workers while filters await,
start()/stop() hooks, ext_authz against a real aiohttp authorization
service and ratelimit on a real redis-server shared by two gateways."""

import os
import pathlib
import re
import signal
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway import free_port, listener, sites
from services import AuthService, RedisServer, started, until

SITE = sites([("s1", 3450)])

PLAIN = (
    """
    upstream s1 { server 127.0.0.1:%P3450%; keepalive 16; }
    server {
        listen 127.0.0.1:%PORT%;
        mosn_timeout @TIMEOUT@;
        mosn_fallback @FALLBACK@;
        location / {
            mosn_filter_chain @CHAIN@;
            add_header X-Mosn-Status $mosn_status always;
            proxy_pass http://s1;
        }
    }
"""
    + SITE
)


def http(chain="awaits", timeout="5s", fallback="503"):
    return (
        PLAIN.replace("@CHAIN@", chain)
        .replace("@TIMEOUT@", timeout)
        .replace("@FALLBACK@", fallback)
    )


def mosn(*listeners, metrics=None, **pyworker):
    config = {
        "servers": [
            {
                "default_log_path": "logs/mosn.log",
                "default_log_level": "INFO",
                "listeners": list(listeners),
            }
        ],
        "pyworker": {"modules": ["testfilters"], **pyworker},
    }
    if metrics:
        config["metrics"] = {
            "sinks": [{"type": "prometheus", "config": {"port": metrics}}]
        }
    return config


AWAITS = listener("awaits", {"type": "await_header"})


def scrape(port):
    try:
        with urllib.request.urlopen(
            "http://127.0.0.1:%d/metrics" % port, timeout=5
        ) as r:
            return r.read().decode()
    except OSError:  # the admin process is not up yet
        return ""


def metric(port, name, **labels):
    """A sample's value from the Prometheus endpoint (0 if absent)."""
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in scrape(port).splitlines():
        m = re.match(r"(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(
                sorted(re.findall(r'\w+="[^"]*"', m.group(2) or ""))
            )
            if got == want:
                return float(m.group(3))
    return 0.0


def many(gw, n, headers=None, path="/", timeout=30):
    with ThreadPoolExecutor(n) as pool:
        return list(
            pool.map(
                lambda i: gw.get(path, dict(headers or {}), timeout=timeout),
                range(n),
            )
        )


def test_one_worker_has_many_requests_in_flight(gateway):
    gw = gateway(http(), mosn=mosn(AWAITS)).start()
    answers = many(gw, 60, {"X-Await-Ms": "1000"})
    assert [r.status for r in answers] == [200] * 60
    assert {r.text for r in answers} == {"site s1 from 3450"}
    assert {r.header("X-Mosn-Status") for r in answers} == {"filtered"}
    # one worker awaited for all of them at once
    assert len({r.header("x-worker-pid") for r in answers}) == 1
    assert max(int(r.header("x-in-flight-most")) for r in answers) >= 30


def test_past_max_in_flight_requests_wait_in_nginx(gateway):
    gw = gateway(
        http(timeout="20s"), mosn=mosn(AWAITS, max_in_flight=4)
    ).start()
    answers = many(gw, 16, {"X-Await-Ms": "300"})
    assert [r.status for r in answers] == [200] * 16
    assert {r.header("X-Mosn-Status") for r in answers} == {"filtered"}
    assert max(int(r.header("x-in-flight-most")) for r in answers) == 4


def test_a_filter_past_mosn_timeout_is_cancelled(gateway):
    prom = free_port()
    gw = gateway(
        http(timeout="300ms"), mosn=mosn(AWAITS, metrics=prom)
    ).start()
    t0 = time.monotonic()
    r = gw.get("/", {"X-Await-Ms": "5000"})
    assert r.status == 503 and r.header("X-Mosn-Status") in (
        "timeout",
        "error",
    )
    assert time.monotonic() - t0 < 3
    until(
        lambda: (
            metric(
                prom,
                "pyworker_async_requests_total",
                chain="awaits",
                outcome="deadline",
            )
            == 1
        )
    )
    # its slot came back long before the filter would have ended
    gw.wait_idle(timeout=2)
    assert gw.get("/", {"X-Await-Ms": "10"}).status == 200
    assert (
        metric(
            prom,
            "pyworker_filter_requests_total",
            chain="awaits",
            filter="await_header",
            outcome="cancelled",
        )
        == 1
    )


def test_a_client_that_goes_away_cancels_its_filter(gateway):
    prom = free_port()
    gw = gateway(http(timeout="30s"), mosn=mosn(AWAITS, metrics=prom)).start()
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Await-Ms: 20000\r\n\r\n")
        until(lambda: gw.slots_in_use() == 1)
    # the connection is closed: nginx abandons the request and tells the
    # worker, which cancels the filter and hands the slot back
    t0 = time.monotonic()
    gw.wait_idle(timeout=5)
    assert time.monotonic() - t0 < 5
    until(
        lambda: (
            metric(
                prom,
                "pyworker_async_requests_total",
                chain="awaits",
                outcome="client_gone",
            )
            == 1
        )
    )
    assert (
        metric(
            prom,
            "pyworker_async_requests_total",
            chain="awaits",
            outcome="answered",
        )
        == 0
    )


def test_a_reload_loses_no_request_that_awaits(gateway):
    gw = gateway(http(timeout="10s"), mosn=mosn(AWAITS), workers=2).start()
    before = set(gw.python_pids())
    with ThreadPoolExecutor(20) as pool:
        futures = [
            pool.submit(gw.get, "/", {"X-Await-Ms": "1500"}, timeout=30)
            for _ in range(20)
        ]
        until(lambda: gw.slots_in_use() == 20)
        gw.reload()
        answers = [f.result() for f in futures]
    assert [r.status for r in answers] == [200] * 20
    assert {r.header("X-Mosn-Status") for r in answers} == {"filtered"}
    # the old workers answered what they held, then left
    assert {int(r.header("x-worker-pid")) for r in answers} <= before
    until(lambda: not set(gw.python_pids()) & before, 15)
    assert gw.get("/", {"X-Await-Ms": "0"}).status == 200


def test_a_killed_worker_loses_no_request_that_awaits(gateway):
    gw = gateway(http(timeout="10s"), mosn=mosn(AWAITS), workers=2).start()
    with ThreadPoolExecutor(20) as pool:
        futures = [
            pool.submit(gw.get, "/", {"X-Await-Ms": "1500"}, timeout=30)
            for _ in range(20)
        ]
        until(lambda: gw.slots_in_use() == 20)
        held = {
            c["pid"]: c["taken"] - c["completed"]
            for c in gw.region().stats()["consumers"]
            if c["state"] == "live"
        }
        victim = max(held, key=held.get)
        assert held[victim] > 0
        os.kill(victim, signal.SIGKILL)
        answers = [f.result() for f in futures]
    assert [r.status for r in answers] == [200] * 20
    assert {r.header("X-Mosn-Status") for r in answers} == {"filtered"}
    # what the killed worker held was served again by another
    assert victim not in {int(r.header("x-worker-pid")) for r in answers}
    gw.wait_idle()


def test_start_and_stop_hooks_run_once_per_worker(gateway):
    gw = gateway(http(), workers=2)
    # the workers run as nginx's user: a file they may write
    notes = pathlib.Path(gw.prefix, "hooks")
    notes.touch()
    os.chmod(notes, 0o666)
    gw.write_mosn(
        mosn(
            listener(
                "awaits",
                {"type": "await_header"},
                {"type": "lifecycle", "config": {"file": str(notes)}},
            )
        )
    )
    gw.start()
    pids = set(gw.python_pids())
    assert gw.get("/").status == 200
    lines = notes.read_text().split("\n")[:-1]
    assert sorted(lines) == sorted("start %d" % p for p in pids)
    gw.reload()
    until(lambda: not set(gw.python_pids()) & pids, 15)
    gw.wait_ready()
    gw.stop()
    lines = notes.read_text().split("\n")[:-1]
    started = {int(l.split()[1]) for l in lines if l.startswith("start")}
    stopped = {int(l.split()[1]) for l in lines if l.startswith("stop")}
    # every worker, old and new, started once and stopped once
    assert len(started) == 4 and started == stopped
    assert len(lines) == 8


def hooks_gateway(gateway, **hooks):
    """One worker with a chain of its own for each hook, a lifecycle
    filter noting to the file returned with it: the chains stop in
    reverse order, the last hook's first, sharing one budget."""
    gw = gateway(http(), workers=1)
    notes = pathlib.Path(gw.prefix, "hooks")
    notes.touch()
    os.chmod(notes, 0o666)
    chains = [
        listener(
            "hook_" + tag,
            {
                "type": "lifecycle",
                "config": {"file": str(notes), "tag": tag, **config},
            },
        )
        for tag, config in hooks.items()
    ]
    gw.write_mosn(mosn(listener("awaits", {"type": "await_header"}), *chains))
    gw.start()
    assert gw.get("/").status == 200
    return gw, notes


def quit_timed(gw):
    asked = time.monotonic()
    gw.stop(timeout=20)
    return time.monotonic() - asked


CUT_SHORT = (
    "filter lifecycle of chain hook_overruns: stop() was cut short: the "
    "stop() hooks of a worker have 5 s in all"
)


def test_stop_hooks_share_5_s_on_quit(gateway):
    """The stop() hooks of a worker, of every chain, run in reverse order
    with 5 s in all: one of 3.5 s ends, the one before it, in another
    chain, is cut short with what is left."""
    gw, notes = hooks_gateway(
        gateway, overruns={"stop_seconds": 60}, ends={"stop_seconds": 3.5}
    )
    (pid,) = gw.python_pids()
    took = quit_timed(gw)
    lines = set(notes.read_text().split("\n")[:-1])
    assert lines == {
        "start-overruns %d" % pid,
        "start-ends %d" % pid,
        "stop-ends %d" % pid,
    }, lines
    log = open(gw.prefix + "/logs/mosn.log").read()
    assert log.count(CUT_SHORT) == 1, log
    assert "killed" not in gw.error_log() + log
    assert 4.5 < took < 7.5, took


def test_a_worker_whose_stop_hook_blocks_is_killed_and_logged(gateway):
    """A stop() that blocks the loop cannot be cut short from inside: the
    supervisor kills the worker 8 s after it told it to stop (2 s of
    grace for tasks, 5 s of hooks, 1 s to spare), and says so."""
    gw, notes = hooks_gateway(
        gateway, blocks={"stop_seconds": 60, "blocking": True}
    )
    (pid,) = gw.python_pids()
    took = quit_timed(gw)
    assert notes.read_text() == "start-blocks %d\n" % pid
    assert (
        "worker pid %d had not left 8.0 s after it was told to stop; "
        "killed (its tasks and stop() hooks cut short)"
        % pid
        in gw.error_log() + open(gw.prefix + "/logs/mosn.log").read()
    )
    assert 7.5 < took < 12, took


def tagged(tag, *before):
    """A chain that tells the client which config served it."""
    return mosn(
        listener(
            "awaits",
            *before,
            {
                "type": "edit_headers",
                "config": {"response": {"x-config": tag}},
            },
            {"type": "await_header"},
        )
    )


def configs_served(gw, seconds):
    """{x-config: count} of the requests sent one after the other for
    ``seconds``; every one must be answered by a worker."""
    served = {}
    until_ = time.monotonic() + seconds
    while time.monotonic() < until_:
        r = gw.get("/", timeout=10)
        assert r.status == 200 and r.header("X-Mosn-Status") == "filtered"
        served[r.header("x-config")] = served.get(r.header("x-config"), 0) + 1
        time.sleep(0.02)
    return served


def ends_on(gw, tag, workers, timeout=15):
    """The roll ends: only ``tag`` serves, with ``workers`` workers."""
    until(
        lambda: (
            len(gw.python_pids()) == workers
            and configs_served(gw, 0.5).keys() == {tag}
        ),
        timeout,
    )
    assert configs_served(gw, 1).keys() == {tag}
    assert len(gw.python_pids()) == workers


def test_a_reload_whose_workers_start_late_ends_on_the_new_config(gateway):
    """A new worker whose start() outlasts the 15 s the supervisor waits
    does not end the roll: the workers before serve until it does, then
    it goes on, and one config serves with mosn_workers workers."""
    gw = gateway(http(), workers=2, mosn=tagged("A")).start()
    gate = pathlib.Path(gw.prefix, "gate")
    gw.write_mosn(
        tagged("B", {"type": "start_gate", "config": {"file": str(gate)}})
    )
    gw.reload()
    # past START_TIMEOUT (15 s), only the workers before serve
    served = configs_served(gw, 16)
    assert served.keys() == {"A"}, served
    until(lambda: "does not serve yet" in gw.error_log(), 15)
    gate.touch()
    ends_on(gw, "B", 2)


def test_a_reload_during_a_roll_that_waits_keeps_a_worker_serving(gateway):
    """A second reload while the first one's worker is still starting:
    that worker, which never served, goes at once; the worker before
    keeps serving until one on the newest config does."""
    gw = gateway(http(), workers=1, mosn=tagged("A")).start()
    (first,) = gw.python_pids()
    gates = {tag: pathlib.Path(gw.prefix, "gate-" + tag) for tag in "BC"}

    def gated(tag):
        gate = {"type": "start_gate", "config": {"file": str(gates[tag])}}
        return tagged(tag, gate)

    gw.write_mosn(gated("B"))
    gw.reload()
    until(lambda: len(gw.python_pids()) == 2, 10)
    (stuck,) = set(gw.python_pids()) - {first}
    gw.write_mosn(gated("C"))
    gw.reload()
    until(lambda: stuck not in gw.python_pids(), 10)
    # C's worker starts no sooner than its gate opens: A serves alone
    served = configs_served(gw, 3)
    assert served.keys() == {"A"}, served
    assert first in gw.python_pids()
    gates["C"].touch()
    ends_on(gw, "C", 1)


def test_workers_that_die_during_a_roll_leave_mosn_workers(gateway):
    """The workers before die while the new one is still starting: each
    is replaced on the new config besides the roll's own, and the roll
    ends with mosn_workers workers, not one more."""
    gw = gateway(http(), workers=2, mosn=tagged("A")).start()
    before = set(gw.python_pids())
    gate = pathlib.Path(gw.prefix, "gate")
    gw.write_mosn(
        tagged("B", {"type": "start_gate", "config": {"file": str(gate)}})
    )
    gw.reload()
    until(lambda: len(gw.python_pids()) == 3, 10)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    until(lambda: len(set(gw.python_pids()) - before) == 3, 10)
    gate.touch()
    ends_on(gw, "B", 2)


def test_a_quit_cancels_a_start_hook_that_waits(gateway):
    """A worker whose start() awaits a service that does not answer
    leaves at once on quit: the hook is cancelled, not waited for until
    the supervisor kills it."""
    gw = gateway(http(), workers=1, mosn=tagged("A")).start()
    gate = pathlib.Path(gw.prefix, "gate")
    waiting = pathlib.Path(gw.prefix, "waiting")
    os.chmod(gw.prefix, 0o777)  # the workers' user makes the note
    start_gate = {"file": str(gate), "note": str(waiting)}
    gw.write_mosn(tagged("B", {"type": "start_gate", "config": start_gate}))
    gw.reload()
    until(waiting.exists, 10)
    assert quit_timed(gw) < 4
    log = gw.error_log() + open(gw.prefix + "/logs/mosn.log").read()
    assert "killed" not in log
    assert "stopped while starting" in log


def test_a_reload_whose_workers_fail_to_start_ends_on_the_new_config(gateway):
    """The new config's start() fails (its service is down): the workers
    before serve alone while the new ones are retried, and the roll ends
    on the new config once they start."""
    gw = gateway(http(), workers=1, mosn=tagged("A")).start()
    gate = pathlib.Path(gw.prefix, "gate")
    gw.write_mosn(
        tagged(
            "B",
            {
                "type": "start_gate",
                "config": {"file": str(gate), "fail": True},
            },
        )
    )
    gw.reload()
    served = configs_served(gw, 4)
    assert served.keys() == {"A"}, served
    until(
        lambda: (
            "start_gate: %s is missing" % gate
            in open(gw.prefix + "/logs/mosn.log").read() + gw.error_log()
        ),
        10,
    )
    gate.touch()
    # the retries back off up to 5 s
    ends_on(gw, "B", 1, timeout=20)


# -- ext_authz ---------------------------------------------------------------


@pytest.fixture(scope="module")
def auth():
    yield from started(AuthService())


ECHO_HEADERS = """
    server {
        listen 127.0.0.1:%P3450%;
        location / {
            add_header X-Upstream-User $http_x_user always;
            add_header X-Upstream-Auth-Failed
                       $http_x_envoy_auth_failure_mode_allowed always;
            return 200 "upstream";
        }
    }
"""


def authz_http(timeout="5s"):
    return (
        PLAIN.replace("@CHAIN@", "authz")
        .replace("@TIMEOUT@", timeout)
        .replace("@FALLBACK@", "503")
        .replace(SITE, "")
        + ECHO_HEADERS
    )


def authz_listener(url, **config):
    config.setdefault(
        "http_service",
        {
            "server_uri": {"uri": url, "timeout": "2s"},
            "authorization_request": {"allowed_headers": ["x-delay-ms"]},
            "authorization_response": {
                "allowed_upstream_headers": ["x-user"],
                "allowed_client_headers_on_success": ["set-cookie"],
            },
        },
    )
    return listener("authz", {"type": "ext_authz", "config": config})


def test_ext_authz_allows_and_denies_as_the_service_says(gateway, auth):
    prom = free_port()
    gw = gateway(
        authz_http(), mosn=mosn(authz_listener(auth.url), metrics=prom)
    ).start()
    r = gw.get("/x", {"Authorization": "Bearer good", "X-User": "mallory"})
    assert r.status == 200 and r.text == "upstream"
    assert r.header("X-Upstream-User") == "alice"
    assert r.header("Set-Cookie") == "seen=1"
    r = gw.get("/x", {"Authorization": "Bearer nope"})
    assert r.status == 401 and r.text == "denied by the service"
    assert r.header("WWW-Authenticate") == "Bearer"
    assert r.header("X-Mosn-Status") == "filtered"
    until(
        lambda: (
            metric(
                prom,
                "pyworker_filter_events_total",
                chain="authz",
                filter="ext_authz",
                event="denied",
            )
            == 1
        )
    )
    assert (
        metric(
            prom,
            "pyworker_filter_events_total",
            chain="authz",
            filter="ext_authz",
            event="allowed",
        )
        == 1
    )


def test_ext_authz_checks_many_requests_at_once(gateway, auth):
    until(lambda: auth.in_flight()[0] == 0)
    auth.forget()
    gw = gateway(authz_http(), mosn=mosn(authz_listener(auth.url))).start()
    answers = many(
        gw, 50, {"Authorization": "Bearer slow", "X-Delay-Ms": "1000"}
    )
    assert [r.status for r in answers] == [200] * 50
    assert auth.in_flight()[1] >= 25


def test_ext_authz_sends_an_encoded_path_as_one_request(gateway, auth):
    # nginx decodes %0D%0A into the path it hands the filter: sent as it
    # is, the check would be two requests, and the second one's answer
    # another client's
    auth.forget()
    gw = gateway(authz_http(), mosn=mosn(authz_listener(auth.url))).start()
    smuggled = "/x%20HTTP/1.1%0D%0AHost:%20a%0D%0A%0D%0AGET%20/public"
    r = gw.get(smuggled + "?q=1", {"Authorization": "Bearer good"})
    assert r.status == 200 and r.text == "upstream"
    r = gw.get("/caf%C3%A9%2541", {"Authorization": "Bearer nope"})
    assert r.status == 401
    assert [(s["method"], s["raw_path"]) for s in auth.seen()] == [
        ("GET", smuggled + "?q=1"),
        ("GET", "/caf%C3%A9%2541"),
    ]


@pytest.mark.parametrize("allow, expect", [(False, 403), (True, 200)])
def test_ext_authz_failure_mode(gateway, auth, allow, expect):
    listener_ = authz_listener(
        auth.url,
        failure_mode_allow=allow,
        failure_mode_allow_header_add=True,
        http_service={
            "server_uri": {"uri": auth.url, "timeout": "100ms"},
            "authorization_request": {"allowed_headers": ["x-delay-ms"]},
        },
    )
    gw = gateway(authz_http(), mosn=mosn(listener_)).start()
    r = gw.get("/", {"Authorization": "Bearer slow", "X-Delay-Ms": "3000"})
    assert r.status == expect
    if allow:
        assert r.header("X-Upstream-Auth-Failed") == "true"


# -- ratelimit ---------------------------------------------------------------


@pytest.fixture
def redis_server():
    yield from started(RedisServer())


def limited_listener(url, n=5, **config):
    return listener(
        "limited",
        {
            "type": "ratelimit",
            "config": dict(
                domain="fleet",
                redis={"url": url, "timeout": "200ms"},
                rate_limits=[
                    {
                        "actions": [
                            {
                                "request_headers": {
                                    "header_name": "x-user",
                                    "descriptor_key": "user",
                                }
                            }
                        ],
                        "limit": {"requests_per_unit": n, "unit": "minute"},
                    }
                ],
                **config,
            ),
        },
    )


def test_two_gateways_share_one_limit(gateway, redis_server):
    a = gateway(
        http("limited"), mosn=mosn(limited_listener(redis_server.url))
    ).start()
    b = gateway(
        http("limited"), mosn=mosn(limited_listener(redis_server.url))
    ).start()
    answers = [
        (a if i % 2 else b).get("/", {"X-User": "ann"}) for i in range(8)
    ]
    assert [r.status for r in answers] == [200] * 5 + [429] * 3
    assert [r.header("RateLimit-Remaining") for r in answers[:5]] == [
        "4",
        "3",
        "2",
        "1",
        "0",
    ]
    over = answers[5]
    assert 1 <= int(over.header("Retry-After")) <= 60
    assert over.header("RateLimit-Limit") == "5"
    # another user is not limited by ann's requests, on either gateway
    assert a.get("/", {"X-User": "bob"}).status == 200
    assert b.get("/", {"X-User": "bob"}).status == 200


@pytest.mark.parametrize(
    "deny, expect, event",
    [(False, 200, "failure_allowed"), (True, 500, "failure_denied")],
)
def test_a_redis_outage_fails_open_or_closed(gateway, deny, expect, event):
    prom = free_port()
    server = RedisServer()
    gw = gateway(
        http("limited"),
        mosn=mosn(
            limited_listener(server.url, n=1, failure_mode_deny=deny),
            metrics=prom,
        ),
    ).start()
    server.start()
    try:
        assert gw.get("/", {"X-User": "ann"}).status == 200
        assert gw.get("/", {"X-User": "ann"}).status == 429
    finally:
        server.stop()
    assert gw.get("/", {"X-User": "ann"}).status == expect
    until(
        lambda: (
            metric(
                prom,
                "pyworker_filter_events_total",
                chain="limited",
                filter="ratelimit",
                event=event,
            )
            == 1
        )
    )
