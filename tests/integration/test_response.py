"""The response phase: sender filters see the upstream's status and headers
and edit them before the client gets them; the body follows unchanged;
chains without sender filters pay for one round trip, not two; failures,
timeouts and oversized headers take the documented way out."""

import hashlib
import socket
import subprocess
import time

from gateway import example_mosn, free_port, listener, readable_file


def sender(**config):
    return {"type": "edit_response", "config": config, "module": "testfilters"}


def receiver(**config):
    return {"type": "edit_headers", "config": config, "module": "testfilters"}


def mosn_with(*filters):
    return example_mosn(extra_listeners=[listener("l", *filters)])


# an upstream with headers to edit; it echoes x-fault as x-response-fault
# so that a test can make the sender filter fail or stall
UPSTREAM = """
    server {
        listen 127.0.0.1:UP;
        location / {
            add_header X-Up original;
            add_header X-Drop me;
            add_header Set-Cookie "old=1";
            add_header X-Response-Fault $http_x_fault;
            return 200 "hello from upstream\\n";
        }
        location /missing { return 404 "not here\\n"; }
        location /big { alias BIGFILE; }
        location /many {
            add_header X-A 1; add_header X-B 2; add_header X-C 3;
            add_header X-D 4; add_header X-E 5; add_header X-F 6;
            return 200 "many\\n";
        }
    }
"""


BIG = bytes(range(256)) * 4096 * 3  # 3 MB


def big_file():
    """BIG in a file nginx's workers can read."""
    return readable_file("response-big.bin", BIG)


def start(gateway, tmp_path, filters, location_extra="", http_extra=""):
    up = free_port()
    big = big_file()
    http = (
        """
        HTTP_EXTRA
        server {
            listen 127.0.0.1:%PORT%;
            location / {
                mosn_filter_chain l;
                LOCATION_EXTRA
                proxy_pass http://127.0.0.1:UP;
            }
        }
    """.replace("HTTP_EXTRA", http_extra).replace(
            "LOCATION_EXTRA", location_extra
        )
        + UPSTREAM
    )
    http = http.replace("UP", str(up)).replace("BIGFILE", str(big))
    return gateway(http, mosn=mosn_with(*filters)).start()


def submitted(gw):
    region = gw.region()
    try:
        return sum(p["submitted"] for p in region.stats()["producers"])
    finally:
        region.close()


def headers_named(response, name):
    return [v for k, v in response.headers if k.lower() == name.lower()]


def test_sender_filter_edits_the_upstream_response(gateway, tmp_path):
    gw = start(
        gateway,
        tmp_path,
        [
            receiver(response={"x-from-request-phase": "yes"}),
            sender(
                set={"x-up": "edited"}, remove=["x-drop"], add={"x-added": "1"}
            ),
        ],
    )
    r = gw.get("/")
    assert r.status == 200
    assert r.text == "hello from upstream\n"
    assert r.header("x-up") == "edited"
    assert r.header("x-drop") is None
    assert r.header("x-added") == "1"
    assert r.header("x-seen-status") == "200"
    # the filter saw the upstream's headers, nginx's framing headers and
    # what the request phase added; nginx's own Server and Date come later
    seen = r.header("x-seen-headers").split(",")
    for name in (
        "content-type",
        "content-length",
        "x-up",
        "x-drop",
        "set-cookie",
        "x-from-request-phase",
    ):
        assert name in seen, (name, seen)
    assert "server" not in seen
    assert r.header("x-from-request-phase") == "yes"


def test_sender_filter_sees_the_upstream_status(gateway, tmp_path):
    gw = start(gateway, tmp_path, [sender()])
    r = gw.get("/missing")
    assert r.status == 404
    assert r.text == "not here\n"
    assert r.header("x-seen-status") == "404"


def test_set_cookie_lines_stay_apart(gateway, tmp_path):
    gw = start(
        gateway, tmp_path, [sender(cookies=["a=1; Path=/", "b=2; HttpOnly"])]
    )
    r = gw.get("/")
    assert headers_named(r, "set-cookie") == ["a=1; Path=/", "b=2; HttpOnly"]


def test_a_large_body_is_held_and_arrives_whole(gateway, tmp_path):
    """3 MB through proxy buffers, buffered and unbuffered, while the
    verdict is awaited: byte for byte what the upstream sent."""
    want = hashlib.sha256(BIG).hexdigest()
    for extra in (
        "proxy_buffering on; proxy_buffers 4 4k;",
        "proxy_buffering off; proxy_buffer_size 4k;",
    ):
        gw = start(
            gateway,
            tmp_path,
            [sender(set={"x-up": "edited"})],
            location_extra=extra,
        )
        r = gw.get("/big")
        assert r.status == 200, extra
        assert r.header("x-up") == "edited"
        assert r.header("x-seen-status") == "200"
        assert len(r.body) == 3 * 1024 * 1024, extra
        assert hashlib.sha256(r.body).hexdigest() == want, extra
        gw.wait_idle()
        gw.stop()


def test_only_chains_with_sender_filters_pay_a_second_round_trip(
    gateway, tmp_path
):
    gw = start(gateway, tmp_path, [receiver(set={"x-a": "1"})])
    before = submitted(gw)
    assert gw.get("/").status == 200
    assert submitted(gw) - before == 1
    gw.stop()

    gw = start(gateway, tmp_path, [receiver(set={"x-a": "1"}), sender()])
    before = submitted(gw)
    r = gw.get("/")
    assert r.status == 200 and r.header("x-seen-status") == "200"
    assert submitted(gw) - before == 2


def test_keepalive_head_and_http2(gateway, tmp_path):
    port2 = free_port()
    gw = start(
        gateway,
        tmp_path,
        [sender(set={"x-up": "edited"})],
        http_extra="""
        server {
            listen 127.0.0.1:%d http2;
            location / {
                mosn_filter_chain l;
                proxy_pass http://127.0.0.1:UP;
            }
        }"""
        % port2,
    )
    # three requests on one connection, the middle one HEAD
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /missing HTTP/1.1\r\nHost: a\r\nConnection: close"
            b"\r\n\r\n"
        )
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.count(b"x-up: edited") == 3
    assert data.count(b"hello from upstream") == 1
    assert b"HTTP/1.1 404" in data and data.endswith(b"not here\n")

    out = subprocess.run(
        [
            "curl",
            "-s",
            "-i",
            "--http2-prior-knowledge",
            "http://127.0.0.1:%d/" % port2,
        ],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    assert out.startswith("HTTP/2 200")
    assert "x-up: edited" in out
    assert out.endswith("hello from upstream\n")


def test_a_failing_sender_filter_leaves_the_response_as_it_was(
    gateway, tmp_path
):
    gw = start(gateway, tmp_path, [sender(set={"x-up": "edited"})])
    r = gw.get("/", {"x-fault": "boom"})
    assert r.status == 200 and r.text == "hello from upstream\n"
    assert r.header("x-up") == "original"
    assert r.header("x-seen-status") is None
    log = gw.error_log()
    assert "the sender filter failed on purpose" in log
    assert "a sender filter failed, the response goes on unfiltered" in log
    # the worker lives on
    assert gw.get("/").header("x-up") == "edited"


def test_a_failing_sender_filter_takes_the_fallback_status(gateway, tmp_path):
    gw = start(
        gateway,
        tmp_path,
        [sender(set={"x-up": "edited"})],
        location_extra="mosn_fallback 502;",
    )
    r = gw.get("/", {"x-fault": "boom"})
    assert r.status == 502
    assert r.body == b""
    assert r.header("x-up") is None and r.header("set-cookie") is None
    assert "the response goes out as the fallback status" in gw.error_log()
    # the connection and the upstream's body were dealt with: next one works
    assert gw.get("/").header("x-up") == "edited"
    gw.wait_idle()


def test_a_slow_sender_filter_times_out(gateway, tmp_path):
    gw = start(
        gateway,
        tmp_path,
        [sender(set={"x-up": "edited"})],
        location_extra="mosn_timeout 200ms;",
    )
    started = time.monotonic()
    r = gw.get("/", {"x-fault": "slow"})
    assert time.monotonic() - started < 0.9
    assert r.status == 200 and r.header("x-up") == "original"
    assert r.text == "hello from upstream\n"
    assert "no verdict on the response within mosn_timeout" in gw.error_log()
    gw.wait_idle()


def test_response_headers_over_the_bound_go_on_unfiltered(gateway, tmp_path):
    gw = start(
        gateway,
        tmp_path,
        [sender(set={"x-up": "edited"})],
        location_extra="mosn_max_headers 5;",
    )
    r = gw.get("/many")
    assert r.status == 200 and r.text == "many\n"
    assert r.header("x-seen-status") is None
    assert r.header("x-f") == "6"
    assert "response headers do not fit in a slot" in gw.error_log()


def test_a_client_that_leaves_while_the_response_is_held(gateway, tmp_path):
    gw = start(gateway, tmp_path, [sender(set={"x-up": "edited"})])
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nx-fault: slow\r\n\r\n")
        time.sleep(0.2)
    # the late verdict frees its slot; nginx and the worker serve on
    time.sleep(1.2)
    gw.wait_idle()
    assert gw.get("/").header("x-up") == "edited"


def test_sender_filters_see_the_request_metadata(gateway, tmp_path):
    """The metadata drivers' values of the request phase reach the
    response phase, whichever worker runs it."""
    unit = {
        "type": "metadata",
        "config": {
            "metadataers": [
                {"meta_data_key": "UNIT", "config": {"unit_key": "uid"}}
            ]
        },
    }
    gw = start(gateway, tmp_path, [unit, sender()])
    assert gw.get("/", {"uid": "2"}).header("x-seen-metadata") == "unit=s1"
    assert gw.get("/", {"uid": "150"}).header("x-seen-metadata") == "unit=s2"
    # no uid, no metadata: an empty line, not the last request's
    assert gw.get("/").header("x-seen-metadata") == ""
