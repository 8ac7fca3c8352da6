"""The module among nginx's own events: an HTTP/2 stream reset and a
client that goes away while a request is parked or its response held,
error_page around both phases, and worker_shutdown_timeout with requests
parked.  Each must end the request cleanly: no worker crash, no slot
kept, the connection and the gateway go on serving."""

import socket
import threading
import time

import h2.config
import h2.connection
import h2.events

from gateway import (
    example_mosn,
    free_port,
    listener,
    readable_file,
    wait_for,
)


def slow(seconds):
    return {
        "type": "slow",
        "config": {"seconds": seconds},
        "module": "testfilters",
    }


def sender(**config):
    return {"type": "edit_response", "config": config, "module": "testfilters"}


def mosn(seconds):
    return example_mosn(
        extra_listeners=[
            listener("slow", slow(seconds)),
            listener("senders", sender(set={"x-up": "edited"})),
        ]
    )


# the upstream: x-fault: slow makes the sender filter sleep 1 s
UPSTREAM = """
    server {
        listen 127.0.0.1:UP;
        location / {
            add_header X-Up original;
            add_header X-Response-Fault $http_x_fault;
            return 200 "hello from upstream\\n";
        }
        location /big {
            alias BIGFILE;
            add_header X-Response-Fault $http_x_fault;
        }
        location /missing { return 404 "upstream's own 404\\n"; }
        location /errpage {
            add_header X-Response-Fault $http_x_fault;
            return 200 "the error page\\n";
        }
    }
"""

BIG = bytes(range(256)) * 4096 * 2  # 2 MB


def start(gateway, server, main="", seconds=1.5, workers=1):
    """A gateway on %PORT% (HTTP/1.1) and gw.h2_port (HTTP/2); the slow
    filter takes that many seconds."""
    up, h2_port = free_port(), free_port()
    big = readable_file("interplay-big.bin", BIG)
    http = (
        """
        server {
            listen 127.0.0.1:%%PORT%%;
            listen 127.0.0.1:%d http2;
            %s
        }
    """
        % (h2_port, server)
        + UPSTREAM
    )
    http = http.replace("UP", str(up)).replace("BIGFILE", str(big))
    gw = gateway(http, mosn=mosn(seconds), main=main, workers=workers)
    gw.h2_port = h2_port
    return gw.start()


def submitted(gw):
    region = gw.region()
    try:
        return sum(p["submitted"] for p in region.stats()["producers"])
    finally:
        region.close()


def no_crash(gw):
    log = gw.error_log()
    assert "exited on signal" not in log, log


class H2:
    """A small HTTP/2 client that can reset a stream when it chooses."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True, header_encoding="utf-8"
            )
        )
        self.conn.initiate_connection()
        self.streams = {}
        self.closed = False
        self.flush()

    def flush(self):
        self.sock.sendall(self.conn.data_to_send())

    def request(self, path, headers=()):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "127.0.0.1"),
                (":path", path),
                *headers,
            ],
            end_stream=True,
        )
        self.streams[sid] = {
            "status": None,
            "headers": {},
            "body": b"",
            "ended": False,
            "reset": False,
        }
        self.flush()
        return sid

    def reset(self, sid):
        self.conn.reset_stream(sid)
        self.flush()

    def pump(self, timeout=0.2):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        if not data:
            self.closed = True
            return
        for ev in self.conn.receive_data(data):
            st = self.streams.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived) and st:
                st["headers"] = dict(ev.headers)
                st["status"] = int(st["headers"][":status"])
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(
                    ev.flow_controlled_length, ev.stream_id
                )
                if st:
                    st["body"] += ev.data
            elif isinstance(ev, h2.events.StreamEnded) and st:
                st["ended"] = True
            elif isinstance(ev, h2.events.StreamReset) and st:
                st["reset"] = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True
        self.flush()

    def wait(self, sid, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            st = self.streams[sid]
            if st["ended"] or st["reset"]:
                return st
            self.pump()
        return self.streams[sid]

    def close(self):
        self.sock.close()


def test_http2_stream_reset_while_the_request_is_parked(gateway):
    gw = start(
        gateway,
        """
        mosn_timeout 5s;
        location / {
            mosn_filter_chain slow;
            proxy_pass http://127.0.0.1:UP;
        }
    """,
    )
    for round_ in range(3):
        client = H2(gw.h2_port)
        try:
            parked = client.request("/")
            assert wait_for(lambda: gw.slots_in_use() >= 1), "not parked"
            client.reset(parked)
            # the connection goes on: a quick request on another stream
            quick = client.request("/", [("x-slow", "no")])
            st = client.wait(quick)
            assert st["status"] == 200, st
            assert st["body"] == b"hello from upstream\n"
            assert client.streams[parked]["status"] is None
        finally:
            client.close()
    # the slow verdicts come back to requests that are gone: slots freed
    gw.wait_idle(timeout=10)
    assert gw.get("/", {"x-slow": "no"}).status == 200
    no_crash(gw)


def test_http2_stream_reset_while_the_response_is_held(gateway):
    gw = start(
        gateway,
        """
        mosn_timeout 5s;
        location / {
            mosn_filter_chain senders;
            proxy_pass http://127.0.0.1:UP;
        }
        location /unbuffered {
            mosn_filter_chain senders;
            proxy_buffering off;
            proxy_buffer_size 4k;
            proxy_pass http://127.0.0.1:UP/big;
        }
    """,
    )
    for path in ("/", "/big", "/unbuffered"):
        client = H2(gw.h2_port)
        try:
            before = submitted(gw)
            held = client.request(path, [("x-fault", "slow")])
            # the request's verdict, then the response's record: held
            assert wait_for(lambda: submitted(gw) - before >= 2), path
            client.reset(held)
            quick = client.request("/")
            st = client.wait(quick)
            assert st["status"] == 200 and st["headers"]["x-up"] == "edited"
            assert client.streams[held]["status"] is None, path
        finally:
            client.close()
        gw.wait_idle(timeout=10)
    assert gw.get("/").header("x-up") == "edited"
    no_crash(gw)


def abort_while_held(gw, path):
    """Sends a request whose sender filter is slow, closes the connection
    once its response is held, and says whether anything came back."""
    before = submitted(gw)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(
        b"GET %s HTTP/1.1\r\nHost: a\r\nx-fault: slow\r\n\r\n" % path.encode()
    )
    assert wait_for(lambda: submitted(gw) - before >= 2), path
    s.setblocking(False)
    try:
        early = s.recv(65536)
    except BlockingIOError:
        early = b""
    s.close()
    return early


def test_client_abort_while_the_response_is_held(gateway):
    gw = start(
        gateway,
        """
        mosn_timeout 5s;
        location / {
            mosn_filter_chain senders;
            proxy_buffering on;
            proxy_buffers 4 4k;
            proxy_pass http://127.0.0.1:UP;
        }
        location /unbuffered/ {
            mosn_filter_chain senders;
            proxy_buffering off;
            proxy_buffer_size 4k;
            proxy_pass http://127.0.0.1:UP/;
        }
    """,
    )
    for path in ("/", "/big", "/unbuffered/", "/unbuffered/big"):
        # nothing reaches the client before the verdict
        assert abort_while_held(gw, path) == b"", path
        gw.wait_idle(timeout=10)
        r = gw.get(path)
        assert r.status == 200 and r.header("x-up") == "edited", path
    # the access log has the aborted requests as 499
    access = open(gw.prefix + "/logs/access.log").read()
    assert access.count('" 499 ') == 4, access
    no_crash(gw)


def test_error_page_around_both_phases(gateway):
    gw = start(
        gateway,
        """
        mosn_timeout 5s;
        location / {
            mosn_filter_chain senders;
            proxy_pass http://127.0.0.1:1;
            error_page 502 /err;
        }
        location /intercepted {
            mosn_filter_chain senders;
            proxy_intercept_errors on;
            proxy_pass http://127.0.0.1:UP/missing;
            error_page 404 = /err;
        }
        location /returned {
            mosn_filter_chain senders;
            proxy_pass http://127.0.0.1:1;
            error_page 502 /busy;
        }
        location /fallback {
            mosn_filter_chain slow;
            mosn_timeout 200ms;
            mosn_fallback 503;
            error_page 503 /busy;
            proxy_pass http://127.0.0.1:UP;
        }
        location /err { proxy_pass http://127.0.0.1:UP/errpage; }
        location /busy { return 503 "busy page\\n"; }
    """,
    )
    # the upstream is down: the error page is the response the sender
    # filters see, once, with the status nginx gives it
    before = submitted(gw)
    r = gw.get("/")
    assert r.status == 502 and r.text == "the error page\n"
    assert r.header("x-seen-status") == "502"
    assert r.header("x-up") == "edited"
    assert submitted(gw) - before == 2

    before = submitted(gw)
    r = gw.get("/intercepted")
    assert r.status == 200 and r.text == "the error page\n"
    assert r.header("x-seen-status") == "200"
    assert submitted(gw) - before == 2

    # an error page that nginx answers in its rewrite phase
    before = submitted(gw)
    r = gw.get("/returned")
    assert r.status == 502 and r.text == "busy page\n"
    assert r.header("x-seen-status") == "502"
    assert submitted(gw) - before == 2

    # the response held, the sender filter slow: the error page's
    # response is held as any other, and the client gets it edited
    r = gw.get("/", {"x-fault": "slow"})
    assert r.status == 502 and r.header("x-up") == "edited"

    # the request phase's fallback status takes the error page
    r = gw.get("/fallback")
    assert r.status == 503 and r.text == "busy page\n"
    assert r.header("x-seen-status") is None
    gw.wait_idle(timeout=10)
    no_crash(gw)


def test_worker_shutdown_timeout_with_parked_requests(gateway):
    gw = start(
        gateway,
        """
        mosn_timeout 30s;
        location / {
            mosn_filter_chain slow;
            proxy_pass http://127.0.0.1:UP;
        }
    """,
        main="worker_shutdown_timeout 1s;",
        seconds=6,
        workers=3,
    )
    old = set(gw.nginx_worker_pids())

    results = []

    def client():
        try:
            results.append(gw.get("/", timeout=20).status)
        except Exception as exc:  # the connection is closed
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    assert wait_for(lambda: gw.slots_in_use() >= 3, 5), "not parked"

    gw.reload()
    # the old worker gives its parked requests worker_shutdown_timeout,
    # then closes them and exits, long before their verdicts (6 s) come
    assert wait_for(lambda: not old & set(gw.nginx_worker_pids()), 15), (
        "the old worker is still there"
    )
    (pid,) = old
    stamps = {}
    for line in gw.error_log().splitlines():
        for what in ("gracefully shutting down", "exit"):
            if line.endswith("%d#%d: %s" % (pid, pid, what)):
                stamps[what] = time.mktime(
                    time.strptime(line[:19], "%Y/%m/%d %H:%M:%S")
                )
    assert stamps["exit"] - stamps["gracefully shutting down"] <= 2, stamps
    for t in threads:
        t.join(10)
    assert len(results) == 3 and 200 not in results, results
    # every slot comes back, and the new worker serves
    gw.wait_idle(timeout=20)
    assert gw.get("/", {"x-slow": "no"}).status == 200
    log = gw.error_log()
    assert "open socket" not in log
    no_crash(gw)
