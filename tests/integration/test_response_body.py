"""Response bodies for sender filters (mosn_response_body on): the filters
read the upstream's body and may replace it; nginx frames the new one;
bodies past the bound, streams and compressed bodies pass as they came;
client aborts and stalled upstreams end cleanly."""

import gzip
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import time
import urllib.parse

import pytest

from gateway import example_mosn, listener, wait_for
from services import upstream_server


def digest(data):
    return "%d:%s" % (len(data), hashlib.sha256(data).hexdigest()[:16])


def pattern(n):
    """n bytes of text a test can tell apart from any other length."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyz\n"
    return (line * (n // len(line) + 1))[:n]


JSON = b'{"user": "ada", "card": "4111-1111-1111-1111", "n": 1}'


class Upstream(http.server.BaseHTTPRequestHandler):
    """The upstream: what it sends is chosen by the path and the query
    (n: body length); it counts the connections it served requests on."""

    protocol_version = "HTTP/1.1"

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        n = int(q.get("n", 100))
        self.server.peers.add(self.client_address)
        self.server.requests += 1
        route = url.path
        if route == "/cl":
            self.send_body(pattern(n))
        elif route == "/chunked":
            self.send_chunked(pattern(n), int(q.get("chunk", 1000)))
        elif route == "/gzip":
            self.send_body(
                gzip.compress(JSON),
                [
                    ("Content-Encoding", "gzip"),
                    ("Content-Type", "application/json"),
                ],
            )
        elif route == "/brotli":
            self.send_body(b"not really brotli", [("Content-Encoding", "br")])
        elif route == "/empty":
            self.send_body(b"")
        elif route == "/code":
            self.send_response(int(q["code"]))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/stall":
            # promises n bytes, sends ten, then says nothing
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(pattern(10))
            self.wfile.flush()
            time.sleep(float(q.get("for", 5)))
            self.close_connection = True
        elif route == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(b"data: first\n\n")
            self.wfile.flush()
            time.sleep(float(q.get("for", 3)))
            self.close_connection = True
        elif route == "/ws":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            # an echo of one line, as the upgraded protocol
            line = self.rfile.readline()
            self.wfile.write(b"echo " + line)
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_body(b"no such route\n", code=404)

    def send_body(self, data, headers=(), code=200):
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"upstream-etag"')
        self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_chunked(self, data, size):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(data), size):
            part = data[i : i + size]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    with upstream_server(Upstream) as server:
        server.peers = set()
        server.requests = 0
        yield server


def mosn(**config):
    return example_mosn(
        extra_listeners=[
            listener(
                "l",
                {"type": "body_mode", "module": "testfilters"},
                {
                    "type": "rewrite_body",
                    "module": "testfilters",
                    "config": config,
                },
            )
        ]
    )


def start(
    gateway, upstream, extra="", config=None, slot="160k", main="", listen=""
):
    return gateway(
        """
        mosn_slot_size SLOT;
        upstream up {
            server 127.0.0.1:UP;
            keepalive 4;
        }
        server {
            listen 127.0.0.1:%PORT% LISTEN;
            mosn_filter_chain l;
            mosn_response_body on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            add_header X-Mosn-Status $mosn_status always;
            location / {
                proxy_pass http://up;
            }
            location /small/ {
                mosn_max_response_body 1k;
                proxy_pass http://up/;
            }
            location /status/ {
                mosn_max_response_body 1k;
                mosn_response_oversize 502;
                proxy_pass http://up/;
            }
            location /off/ {
                mosn_response_body off;
                proxy_pass http://up/;
            }
            location /stall {
                proxy_read_timeout 1s;
                proxy_pass http://up;
            }
            location /down {
                proxy_pass http://127.0.0.1:1;
            }
            location /events {
                proxy_buffering off;
                proxy_pass http://up;
            }
            EXTRA
        }
    """.replace("UP", str(upstream.server_address[1]))
        .replace("SLOT", slot)
        .replace("LISTEN", listen)
        .replace("EXTRA", extra),
        mosn=mosn(**(config or {})),
        main=main,
    ).start()


def mode(name):
    return {"x-body-mode": name}


# -- reading and replacing ------------------------------------------------


@pytest.mark.parametrize("route", ["/cl?n=5000", "/chunked?n=5000&chunk=700"])
def test_filters_read_the_body_and_replace_it(gateway, upstream, route):
    gw = start(gateway, upstream)
    body = pattern(5000)

    r = gw.get(route)
    assert r.status == 200
    assert r.body == body
    assert r.header("x-seen-body") == digest(body)
    assert r.header("X-Mosn-Status") == "filtered"

    for name, want in [
        ("upper", body.upper()),
        ("grow", body * 3 + b"!"),
        ("shrink", body[:2500]),
        ("empty", b""),
        ("text", "h\u00e9llo \u2603\n".encode()),
    ]:
        r = gw.get(route, headers=mode(name))
        assert r.status == 200, name
        assert r.body == want, name
        assert r.header("Content-Length") == str(len(want)), name
        assert r.header("Transfer-Encoding") is None, name
        # the validators of the upstream's body do not describe the new one
        assert r.header("ETag") is None, name
        assert r.header("Last-Modified") is None, name
        assert r.header("x-seen-body") == digest(body), name


def test_unchanged_body_keeps_its_framing_and_validators(gateway, upstream):
    gw = start(gateway, upstream)
    r = gw.get("/cl?n=300")
    assert r.body == pattern(300)
    assert r.header("Content-Length") == "300"
    assert r.header("ETag") == '"upstream-etag"'
    # a chunked upstream's body, held whole, goes out chunked to HTTP/1.1
    out = gw.raw(
        b"GET /chunked?n=3000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head, _, rest = out.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert b"x-seen-body: " + digest(pattern(3000)).encode() in head
    assert rest.endswith(b"0\r\n\r\n")


def test_empty_upstream_body(gateway, upstream):
    gw = start(gateway, upstream)
    r = gw.get("/empty")
    assert r.status == 200 and r.body == b""
    assert r.header("x-seen-body") == digest(b"")
    r = gw.get("/empty", headers=mode("text"))
    assert r.body == "h\u00e9llo \u2603\n".encode()


def test_an_http_10_client_gets_the_new_body_whole(gateway, upstream):
    gw = start(gateway, upstream)
    out = gw.raw(
        b"GET /chunked?n=2000 HTTP/1.0\r\nx-body-mode: shrink\r\n\r\n"
    )
    head, _, rest = out.partition(b"\r\n\r\n")
    assert b"Content-Length: 1000" in head
    assert rest == pattern(2000)[:1000]


# -- bounds -----------------------------------------------------------------


@pytest.mark.parametrize("route", ["cl", "chunked"])
def test_one_byte_over_the_bound_passes_unchanged(gateway, upstream, route):
    gw = start(gateway, upstream)
    at = gw.get("/small/%s?n=1024&chunk=100" % route, headers=mode("upper"))
    assert at.header("x-seen-body") == digest(pattern(1024))
    assert at.body == pattern(1024).upper()

    over = gw.get("/small/%s?n=1025&chunk=100" % route, headers=mode("upper"))
    assert over.status == 200
    # the filters had the headers, not the body, which passed as it came
    assert over.header("x-seen-body") == "none"
    assert over.header("X-Mosn-Status") == "filtered"
    assert over.body == pattern(1025)
    assert (
        "passes unchanged, the filters see the headers only" in gw.error_log()
    )


@pytest.mark.parametrize("route", ["cl", "chunked"])
def test_over_the_bound_takes_the_configured_status(gateway, upstream, route):
    gw = start(gateway, upstream)
    r = gw.get("/status/%s?n=1025&chunk=100" % route)
    assert r.status == 502
    assert r.header("x-seen-body") is None
    assert "takes status 502 (mosn_response_oversize)" in gw.error_log()
    r = gw.get("/status/%s?n=1000&chunk=100" % route)
    assert r.status == 200 and r.body == pattern(1000)
    gw.wait_idle()


def test_a_new_body_too_big_for_the_slot_takes_the_fallback(gateway, upstream):
    gw = start(gateway, upstream)
    r = gw.get("/cl?n=100", headers=mode("huge"))
    # mosn_fallback continue: the response as the upstream sent it
    assert r.status == 200 and r.body == pattern(100)
    assert r.header("x-seen-body") is None
    assert wait_for(
        lambda: (
            "the new response body of 1048576 bytes does "
            "not fit in the slot" in gw.error_log()
        )
    )


def test_a_failing_body_filter_takes_the_fallback(gateway, upstream):
    gw = start(
        gateway,
        upstream,
        extra="""
        location /strict/ {
            mosn_fallback 503;
            proxy_pass http://up/;
        }
    """,
    )
    r = gw.get("/cl?n=2000", headers=mode("boom"))
    assert r.status == 200 and r.body == pattern(2000)
    r = gw.get("/strict/cl?n=2000", headers=mode("boom"))
    assert r.status == 503 and r.body == b""
    assert "the body filter failed on purpose" in gw.error_log()
    gw.wait_idle()


def test_the_bound_must_fit_the_slot(gateway, upstream):
    gw = gateway(
        """
        server {
            listen 127.0.0.1:%PORT%;
            location / {
                mosn_filter_chain l;
                mosn_response_body on;
                proxy_pass http://127.0.0.1:1;
            }
        }
    """,
        mosn=mosn(),
    )
    rc, out = gw.nginx("-t", check=False)
    assert rc != 0
    assert (
        '"mosn_max_response_body" 64k does not fit in a slot of '
        '"mosn_slot_size" 16k'
    ) in out
    assert (
        'raise "mosn_slot_size" to 133k or lower '
        '"mosn_max_response_body" to 6112' in out
    )


# -- what is never held ---------------------------------------------------


def test_compressed_bodies_pass_unchanged_unless_asked(gateway, upstream):
    gw = start(
        gateway,
        upstream,
        extra="""
        location /gz/ {
            error_log logs/debug.log debug;
            proxy_pass http://up/;
        }
    """,
    )
    r = gw.get("/gz/gzip", headers=mode("upper"))
    assert r.status == 200
    assert r.header("x-seen-body") == "none"
    assert r.header("Content-Encoding") == "gzip"
    assert gzip.decompress(r.body) == JSON
    with open(os.path.join(gw.prefix, "logs", "debug.log")) as f:
        assert '"gzip"-encoded and passes unchanged' in f.read()


def test_a_filter_may_ask_for_compressed_bodies_decoded(gateway, upstream):
    gw = start(gateway, upstream, config={"decode_body": True})
    r = gw.get("/gzip")
    # read, not replaced: the compressed body goes on as it came
    assert r.header("x-seen-body") == digest(JSON)
    assert r.header("Content-Encoding") == "gzip"
    assert gzip.decompress(r.body) == JSON
    # replaced: the new body is sent as it is, not claimed compressed
    r = gw.get("/gzip", headers=mode("upper"))
    assert r.header("Content-Encoding") is None
    assert r.body == JSON.upper()
    # a coding the worker cannot decode passes, the filters get no body
    r = gw.get("/brotli", headers=mode("upper"))
    assert r.header("x-seen-body") == "none"
    assert r.header("Content-Encoding") == "br"


def test_streams_are_never_held(gateway, upstream):
    gw = start(gateway, upstream)
    # server-sent events: the first event arrives while the stream is open
    with socket.create_connection(("127.0.0.1", gw.port), timeout=2) as s:
        s.sendall(b"GET /events?for=3 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"data: first" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
    assert b"x-seen-body: none" in got
    # HEAD, 204 and 304 have no body to hold
    r = gw.get("/cl?n=500", method="HEAD")
    assert r.status == 200 and r.header("x-seen-body") == "none"
    assert r.header("Content-Length") == "500"
    for code in (204, 304):
        r = gw.get("/code?code=%d" % code)
        assert r.status == code and r.header("x-seen-body") == "none"


def test_an_upgrade_is_not_held(gateway, upstream):
    gw = start(
        gateway,
        upstream,
        extra="""
        location /ws {
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_pass http://up;
        }
    """,
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\n"
        )
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 101")
        s.sendall(b"ping\n")
        while b"echo ping\n" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
    # the header came before the upgraded bytes, not after
    assert got.index(b"HTTP/1.1 101") < got.index(b"echo ping")


def test_nginx_error_pages_are_bodies_too(gateway, upstream):
    gw = start(gateway, upstream)
    r = gw.get("/down")
    assert r.status == 502 and b"502 Bad Gateway" in r.body
    assert r.header("x-seen-body") == digest(r.body)
    r = gw.get("/down", headers=mode("json"))
    assert r.status == 502
    assert r.body == b'{"error": 502}'
    assert r.header("Content-Type") == "application/json"
    assert r.header("Content-Length") == str(len(r.body))


def test_without_body_access_the_body_streams(gateway, upstream):
    gw = start(gateway, upstream)
    r = gw.get("/off/cl?n=5000")
    assert r.body == pattern(5000)
    assert r.header("x-seen-body") == "none"
    # turning an upstream error page into JSON needs no body access: the
    # new body replaces the upstream's, which is thrown away
    r = gw.get("/off/missing", headers=mode("json"))
    assert r.status == 404
    assert r.body == b'{"error": 404}'
    assert r.header("Content-Type") == "application/json"
    r = gw.get("/off/chunked?n=200000&chunk=4096", headers=mode("json"))
    assert r.body == b'{"error": 200}'
    gw.wait_idle()


# -- mosn_request_phase off: the response alone, one round trip ----------


ONLY = """
    location /only/ {
        mosn_request_phase off;
        mosn_request_body on;
        mosn_timeout 300ms;
        proxy_pass http://up/;
    }
"""


def test_the_response_alone_goes_to_the_filters(gateway, upstream):
    gw = start(gateway, upstream, extra=ONLY, config={"mode": "upper"})
    # said at start, where the configuration is read
    with open(os.path.join(gw.prefix, "logs", "nginx.out")) as f:
        assert (
            '"mosn_request_body on" has no effect where '
            '"mosn_request_phase" is off'
        ) in f.read()
    # the receiver filter, which carries x-body-mode over, does not run
    r = gw.get("/only/cl?n=3000", headers=mode("shrink"))
    assert r.status == 200
    assert r.body == pattern(3000).upper()
    assert r.header("x-seen-body") == digest(pattern(3000))
    assert r.header("X-Mosn-Status") == "filtered"
    r = gw.get("/only/chunked?n=3000&chunk=500")
    assert r.body == pattern(3000).upper()
    # where the request phase is on, it does
    r = gw.get("/cl?n=3000", headers=mode("shrink"))
    assert r.body == pattern(1500)
    gw.wait_idle()


def test_the_response_alone_keeps_its_deadline(gateway, upstream):
    gw = start(gateway, upstream, extra=ONLY, config={"mode": "slow"})
    began = time.monotonic()
    r = gw.get("/only/cl?n=100")
    # mosn_timeout 300ms, the filter takes a second: the body as it came
    assert time.monotonic() - began < 0.9
    assert r.status == 200 and r.body == pattern(100)
    assert wait_for(
        lambda: (
            "no verdict on the response within mosn_timeout" in gw.error_log()
        )
    )
    gw.wait_idle(timeout=10)


# -- faults ---------------------------------------------------------------


def test_client_abort_while_the_body_is_held(gateway, upstream):
    gw = start(gateway, upstream)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.sendall(
                b"GET /cl?n=3000 HTTP/1.1\r\nHost: x\r\n"
                b"x-body-mode: slow\r\n\r\n"
            )
            time.sleep(0.3)
    # the late verdicts free their slots; the gateway serves on
    gw.wait_idle(timeout=10)
    r = gw.get("/cl?n=3000", headers=mode("upper"))
    assert r.body == pattern(3000).upper()
    assert "499" in open(os.path.join(gw.prefix, "logs", "access.log")).read()


def test_an_upstream_that_stalls_mid_body(gateway, upstream):
    gw = start(gateway, upstream)
    start_time = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"GET /stall?n=100&for=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    # proxy_read_timeout ends it: no response was begun, none is finished
    assert time.monotonic() - start_time < 4
    assert b"200 OK" not in got
    assert wait_for(lambda: "upstream timed out" in gw.error_log())
    gw.wait_idle()
    r = gw.get("/cl?n=100", headers=mode("upper"))
    assert r.body == pattern(100).upper()


def test_upstream_keepalive_is_still_reused(gateway, upstream):
    gw = start(gateway, upstream)
    for name in ["upper", "none", "grow", "empty", "upper", "shrink"] * 3:
        r = gw.get("/cl?n=4000", headers=mode(name))
        assert r.status == 200
        r = gw.get("/chunked?n=4000", headers=mode(name))
        assert r.status == 200
    assert upstream.requests == 36
    assert len(upstream.peers) == 1, upstream.peers


# -- HTTP/2 ---------------------------------------------------------------


def curl(*args, data=None):
    out = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-D", "-", *args],
        input=data,
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_http2_clients_get_the_new_body(gateway, upstream):
    gw = start(gateway, upstream, listen="http2")
    url = "http://127.0.0.1:%d" % gw.port
    head, body = curl(url + "/chunked?n=6000", "-H", "x-body-mode: grow")
    assert head.startswith("HTTP/2 200")
    assert body == pattern(6000) * 3 + b"!"
    assert "content-length: %d" % len(body) in head.lower()
    head, body = curl(url + "/cl?n=6000")
    assert body == pattern(6000)
    assert "x-seen-body: " + digest(pattern(6000)) in head
    head, body = curl(url + "/small/cl?n=1025", "-H", "x-body-mode: upper")
    assert body == pattern(1025) and "x-seen-body: none" in head


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load")
def test_http2_many_streams_at_once(gateway, upstream):
    gw = start(gateway, upstream, listen="http2")
    out = subprocess.run(
        [
            "h2load",
            "-n",
            "400",
            "-c",
            "4",
            "-m",
            "16",
            "-H",
            "x-body-mode: shrink",
            "http://127.0.0.1:%d/cl?n=4000" % gw.port,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "400 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
    assert "status codes: 400 2xx" in out.stdout, out.stdout
    # each response carried the shrunk body, 2000 bytes
    assert "(800000) data" in out.stdout, out.stdout
    gw.wait_idle()
