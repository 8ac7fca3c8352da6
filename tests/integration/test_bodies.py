"""Request bodies for chains that ask for them: bounded, seen by the
filters, passed on to the upstream unchanged."""

import hashlib
import http.server
import os
import shutil
import subprocess

import pytest

from gateway import example_mosn, listener
from services import upstream_server


class EchoUpstream(http.server.BaseHTTPRequestHandler):
    """Answers with what it got: the filter's header and the body digest."""

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        body = self.rfile.read(n)
        out = "filter=%s upstream=%d:%s" % (
            self.headers.get("x-filter-body"),
            len(body),
            hashlib.sha256(body).hexdigest()[:16],
        )
        data = out.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    with upstream_server(EchoUpstream) as server:
        yield server.server_address[1]


def body_gateway(gateway, upstream, extra="", listen=""):
    mosn = example_mosn(
        extra_listeners=[
            listener(
                "l",
                {"type": "body_digest", "module": "testfilters", "config": {}},
            )
        ]
    )
    return gateway(
        """
        mosn_slot_size 128k;
        server {
            listen 127.0.0.1:%PORT% LISTEN;
            mosn_filter_chain l;
            add_header X-Mosn-Status $mosn_status always;
            location / {
                mosn_request_body on;
                mosn_max_body 100k;
                client_body_buffer_size 16k;
                proxy_pass http://127.0.0.1:UP;
            }
            location /nobody { proxy_pass http://127.0.0.1:UP; }
            location /fb {
                mosn_request_body on;
                mosn_max_body 1k;
                mosn_oversize fallback;
                proxy_pass http://127.0.0.1:UP;
            }
            EXTRA
        }
    """.replace("UP", str(upstream))
        .replace("EXTRA", extra)
        .replace("LISTEN", listen),
        mosn=mosn,
        env=None,
    ).start()


def digest(body):
    return "%d:%s" % (len(body), hashlib.sha256(body).hexdigest()[:16])


def test_plain_body_seen_by_the_filter_and_passed_on(gateway, upstream):
    gw = body_gateway(gateway, upstream)
    body = bytes(range(256)) * 40  # 10 KB, binary
    r = gw.get("/", method="POST", body=body)
    assert r.text == "filter=%s upstream=%s" % (digest(body), digest(body))
    assert r.header("X-Mosn-Status") == "filtered"


def test_body_kept_in_a_temp_file_is_read_too(gateway, upstream):
    gw = body_gateway(gateway, upstream)
    body = b"x" * (60 * 1024)  # beyond client_body_buffer_size
    r = gw.get("/", method="POST", body=body)
    assert r.text == "filter=%s upstream=%s" % (digest(body), digest(body))


def test_chunked_body(gateway, upstream):
    gw = body_gateway(gateway, upstream)
    chunks = [b"hello ", b"chunked ", b"world"]
    raw = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
        + b"0\r\n\r\n"
    )
    out = gw.raw(raw).decode()
    body = b"".join(chunks)
    assert "filter=%s upstream=%s" % (digest(body), digest(body)) in out


def test_chains_without_the_body_get_none(gateway, upstream):
    gw = body_gateway(gateway, upstream)
    r = gw.get("/nobody", method="POST", body=b"abc")
    assert r.text == "filter=none upstream=%s" % digest(b"abc")


def test_body_over_the_bound(gateway, upstream):
    gw = body_gateway(gateway, upstream)
    r = gw.get("/", method="POST", body=b"y" * (101 * 1024))
    assert r.status == 413
    # within mosn_max_body but not within the slot
    r = gw.get("/", method="POST", body=b"y" * (99 * 1024))
    assert r.status == 413
    r = gw.get("/fb", method="POST", body=b"y" * 2048)
    assert r.status == 200 and r.header("X-Mosn-Status") == "fallback"
    assert r.text == "filter=None upstream=%s" % digest(b"y" * 2048)
    assert "larger than mosn_max_body" in gw.error_log()


def curl_h2(url, *args, data=None):
    out = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-D", "-", *args, url],
        input=data,
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body.decode()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_http2_request_bodies(gateway, upstream):
    """Over HTTP/2 the filters get the body as over HTTP/1.1: with a
    Content-Length, streamed without one, kept in a temp file, and over
    the bound."""
    gw = body_gateway(gateway, upstream, listen="http2")
    url = "http://127.0.0.1:%d/" % gw.port
    small = bytes(range(256)) * 40
    head, text = curl_h2(url, "--data-binary", "@-", data=small)
    assert head.startswith("HTTP/2 200")
    assert text == "filter=%s upstream=%s" % (digest(small), digest(small))
    # no Content-Length: the body comes in DATA frames until END_STREAM
    streamed = b"z" * (101 * 1024)  # over mosn_max_body
    head, text = curl_h2(url, "-T", "-", "-X", "POST", data=streamed[:1000])
    assert "filter=%s" % digest(streamed[:1000]) in text
    big = b"x" * (60 * 1024)  # beyond client_body_buffer_size
    head, text = curl_h2(url, "-T", "-", "-X", "POST", data=big)
    assert text == "filter=%s upstream=%s" % (digest(big), digest(big))
    head, text = curl_h2(url, "-T", "-", "-X", "POST", data=streamed)
    assert head.startswith("HTTP/2 413")
    head, text = curl_h2(url + "nobody", "--data-binary", "@-", data=b"abc")
    assert text == "filter=none upstream=%s" % digest(b"abc")


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load")
def test_http2_request_bodies_on_many_streams(gateway, upstream, tmp_path):
    gw = body_gateway(gateway, upstream, listen="http2")
    body = os.urandom(20000)
    path = tmp_path / "body"
    path.write_bytes(body)
    out = subprocess.run(
        [
            "h2load",
            "-n",
            "200",
            "-c",
            "2",
            "-m",
            "16",
            "-d",
            str(path),
            "http://127.0.0.1:%d/" % gw.port,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "200 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
    assert "status codes: 200 2xx" in out.stdout, out.stdout
    # every answer was the same digest, seen by the filter and upstream
    answer = "filter=%s upstream=%s" % (digest(body), digest(body))
    assert "(%d) data" % (200 * len(answer)) in out.stdout, out.stdout
