"""What the filters decide reaches the client and the upstream: hijack
replies, header edits, response headers, upstream choice, and the
fallbacks when filters fail, are slow, or the request does not fit."""

import re
import socket
import subprocess
import time

from gateway import example_mosn, listener

# an upstream that shows what it received
ECHO_UPSTREAM = """
    server {
        listen 127.0.0.1:%UP%;
        return 200 "added=$http_x_added removed=$http_x_removed keep=$http_x_keep uid=$http_uid\\n";
    }
"""  # noqa: E501  (nginx's one-line answer)


def mosn_with(*filters, name="l"):
    return example_mosn(extra_listeners=[listener(name, *filters)])


def filt(type_, **config):
    return {"type": type_, "config": config, "module": "testfilters"}


def test_echo_filter_hijack_reply(gateway):
    mosn = mosn_with(
        {
            "type": "echo",
            "config": {
                "status": 203,
                "body": "hello from echo\n",
                "header_list": [{"key": "x-mosn-echo", "value": "1"}],
            },
        }
    )
    gw = gateway(
        """
        server {
            listen 127.0.0.1:%PORT%;
            location / { mosn_filter_chain l; proxy_pass http://127.0.0.1:1; }
        }
    """,
        mosn=mosn,
    ).start()
    r = gw.get("/anything")
    assert r.status == 203
    assert r.text == "hello from echo\n"
    assert r.header("x-mosn-echo") == "1"
    # HEAD gets the headers, no body
    r = gw.get("/anything", method="HEAD")
    assert r.status == 203 and r.body == b""


def test_request_headers_set_and_removed_before_proxying(gateway):
    from gateway import free_port

    up = free_port()
    mosn = mosn_with(
        filt(
            "edit_headers",
            set={"x-added": "yes", "x-keep": "new"},
            remove=["x-removed"],
        )
    )
    gw = gateway(
        """
        server {
            listen 127.0.0.1:%PORT%;
            location / { mosn_filter_chain l; proxy_pass http://127.0.0.1:UP; }
        }
    """.replace("UP", str(up))
        + ECHO_UPSTREAM.replace("%UP%", str(up)),
        mosn=mosn,
    ).start()
    r = gw.get("/", {"x-removed": "gone?", "x-keep": "old", "uid": "7"})
    assert r.text == "added=yes removed= keep=new uid=7\n"


def test_response_header_added_and_upstream_chosen(gateway):
    from gateway import free_port

    a, b = free_port(), free_port()
    mosn = mosn_with(
        filt("edit_headers", response={"x-filtered-by": "py"}, upstream="b")
    )
    gw = gateway(
        """
        upstream a { server 127.0.0.1:A; }
        upstream b { server 127.0.0.1:B; }
        server {
            listen 127.0.0.1:%PORT%;
            location / {
                mosn_filter_chain l;
                proxy_pass http://$mosn_upstream;
            }
        }
        server { listen 127.0.0.1:A; return 200 "from a"; }
        server { listen 127.0.0.1:B; return 200 "from b"; }
    """.replace("A", str(a)).replace("B", str(b)),
        mosn=mosn,
    ).start()
    r = gw.get("/")
    assert r.text == "from b"
    assert r.header("x-filtered-by") == "py"


# "return" runs in the rewrite phase, before the filters: the locations
# under test proxy to a backend instead
STATUS_SERVER = """
    server {
        listen 127.0.0.1:%PORT%;
        mosn_timeout 200ms;
        location / {
            mosn_filter_chain l;
            add_header X-Mosn-Status $mosn_status always;
            add_header X-Mosn-Cost $mosn_cost_us always;
            proxy_pass http://127.0.0.1:%PORT%/backend;
        }
        location /strict {
            mosn_filter_chain l;
            mosn_fallback 503;
            add_header X-Mosn-Status $mosn_status always;
            proxy_pass http://127.0.0.1:%PORT%/backend;
        }
        location /backend {
            return 200 "through\\n";
        }
    }
"""


def test_slow_filter_times_out_to_the_fallback(gateway):
    gw = gateway(STATUS_SERVER, mosn=mosn_with(filt("slow", seconds=1.0)))
    gw.start()
    t0 = time.monotonic()
    r = gw.get("/")
    took = time.monotonic() - t0
    assert r.status == 200 and r.text == "through\n"
    assert r.header("X-Mosn-Status") == "timeout"
    assert 0.18 < took < 0.6, took
    assert int(r.header("X-Mosn-Cost")) >= 190000
    r = gw.get("/strict")
    assert r.status == 503 and r.header("X-Mosn-Status") == "timeout"
    assert "no verdict for request" in gw.error_log()
    # the late verdicts come back and free their slots
    time.sleep(2.2)
    gw.wait_idle()
    # and a quick request is filtered again
    r = gw.get("/", {"x-slow": "no"})
    assert r.header("X-Mosn-Status") == "filtered"


def test_raising_filter_takes_the_fallback_and_is_logged(gateway):
    gw = gateway(STATUS_SERVER, mosn=mosn_with(filt("boom"))).start()
    r = gw.get("/")
    assert r.status == 200 and r.header("X-Mosn-Status") == "error"
    r = gw.get("/strict")
    assert r.status == 503
    log = open(gw.prefix + "/logs/mosn.log").read()
    line = [l for l in log.splitlines() if "the filter failed on purpose" in l]
    assert line and "boom" in line[0] and "request" in line[0]
    assert "Traceback" in line[0]  # folded into the same line
    # the worker lived on
    assert gw.get("/", {"x": "1"}).header("X-Mosn-Status") == "error"
    assert len(gw.live_workers()) == 1


def test_crlf_from_a_filter_is_refused(gateway):
    gw = gateway(STATUS_SERVER, mosn=mosn_with(filt("bad_header"))).start()
    r = gw.get("/")
    assert r.header("X-Mosn-Status") == "error"
    assert "X-Injected" not in str(r.headers)
    log = open(gw.prefix + "/logs/mosn.log").read()
    assert "bad_header" in log


def test_headers_too_large_for_a_slot_get_431(gateway):
    gw = gateway("""
        mosn_slot_size 2k;
        server {
            listen 127.0.0.1:%PORT%;
            listen 127.0.0.1:%P8443% http2;
            location / {
                mosn_filter_chain serverListener;
                proxy_pass http://127.0.0.1:%PORT%/ok;
            }
            location /fb {
                mosn_filter_chain serverListener;
                mosn_oversize fallback;
                add_header X-Mosn-Status $mosn_status always;
                proxy_pass http://127.0.0.1:%PORT%/ok;
            }
            location /count {
                mosn_filter_chain serverListener;
                mosn_max_headers 5;
                proxy_pass http://127.0.0.1:%PORT%/ok;
            }
            location /ok { return 200 "ok"; }
        }
    """).start()
    assert gw.get("/", {"uid": "1"}).status == 200
    big = {"x-big": "a" * 3000}
    r = gw.get("/", big)
    assert r.status == 431 and b"too large" in r.body
    r = gw.get("/fb", big)
    assert r.status == 200 and r.header("X-Mosn-Status") == "fallback"
    many = {"x-h%d" % i: "1" for i in range(6)}
    assert gw.get("/count", many).status == 431
    assert "do not fit in a slot" in gw.error_log()
    # HTTP/2 sends the number alone: 431 too, not nginx's own 494
    h2 = "http://127.0.0.1:%d" % gw.site_port(8443)
    for path, headers in (("/", big), ("/count", many)):
        cmd = ["curl", "-sS", "-o", "/dev/null", "--http2-prior-knowledge"]
        cmd += ["-w", "%{http_version} %{http_code}"]
        for name, value in headers.items():
            cmd += ["-H", "%s: %s" % (name, value)]
        out = subprocess.run(
            cmd + [h2 + path], capture_output=True, text=True, timeout=20
        )
        assert out.stdout == "2 431", (path, out.stdout, out.stderr)
    # and the access log says what the clients got
    log = open(gw.prefix + "/logs/access.log").read()
    statuses = re.findall(r'" (\d{3}) ', log)
    assert statuses.count("431") == 4 and "494" not in statuses, log


def test_subrequests_are_not_filtered_twice(gateway):
    gw = gateway("""
        server {
            listen 127.0.0.1:%PORT%;
            location / {
                mosn_filter_chain serverListener;
                auth_request /auth;
                proxy_pass http://127.0.0.1:%PORT%/main;
            }
            location = /auth {
                mosn_filter_chain serverListener;
                proxy_pass http://127.0.0.1:%PORT%/yes;
            }
            location = /main { return 200 "main"; }
            location = /yes { return 204; }
        }
    """).start()
    assert gw.get("/", {"uid": "3"}).text == "main"
    taken = sum(c["taken"] for c in gw.region().stats()["consumers"])
    assert taken == 1


def test_client_abort_while_parked_frees_the_slot(gateway):
    gw = gateway(STATUS_SERVER, mosn=mosn_with(filt("slow", seconds=0.15)))
    gw.start()
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.02)
        s.close()
    time.sleep(1.0)
    access = open(gw.prefix + "/logs/access.log").read()
    assert access.count('" 499 ') == 3, access
    gw.wait_idle()


def test_no_mosn_config_is_an_error(gateway):
    gw = gateway("""
        server { listen 127.0.0.1:%PORT%; location / { mosn_filter_chain l; } }
    """)
    conf = open(gw.conf_path).read().replace("mosn_config mosn.json;", "")
    open(gw.conf_path, "w").write(conf)
    code, out = gw.nginx("-t", check=False)
    assert code != 0
    assert 'no "mosn_config"' in out


def test_broken_mosn_json_fails_nginx_t_with_file_key_reason(gateway):
    gw = gateway(
        """
        server { listen 127.0.0.1:%PORT%;
                 location / { mosn_filter_chain serverListener; } }
    """,
        mosn=example_mosn(),
    )
    bad = example_mosn()
    bad["servers"][0]["listeners"][0]["stream_filters"][0]["type"] = "nope"
    gw.write_mosn(bad)
    code, out = gw.nginx("-t", check=False)
    assert code != 0
    assert re.search(
        r"mosn\.json: servers\[0\]\.listeners\[0\]\."
        r"stream_filters\[0\]\.type: .*nope",
        out,
    ), out
    gw.write_mosn("{ not json")
    code, out = gw.nginx("-t", check=False)
    assert code != 0 and "mosn.json" in out and "line 1" in out, out
    # a listener nginx names but the config lacks
    gw.write_mosn(example_mosn())
    conf = (
        open(gw.conf_path)
        .read()
        .replace(
            "mosn_filter_chain serverListener", "mosn_filter_chain missing"
        )
    )
    open(gw.conf_path, "w").write(conf)
    code, out = gw.nginx("-t", check=False)
    assert code != 0 and "missing" in out, out
