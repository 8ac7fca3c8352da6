"""Header edits are what every later part of nginx sees: the variables
($proxy_add_x_forwarded_for, $cookie_*, $http_*, $remote_user), the
modules that push request headers after the filters (Lua,
headers-more), and the response's own shortcuts (expires after a
Cache-Control edit), on Debian's nginx and on a newer one."""

import json
import os
import subprocess
import tempfile

from gateway import debian_modules, example_mosn, free_port, listener, wait_for


def receiver():
    return {"type": "edits_from_header", "config": {}, "module": "testfilters"}


def sender():
    return {
        "type": "response_edits_from_header",
        "config": {},
        "module": "testfilters",
    }


def mosn():
    return example_mosn(
        extra_listeners=[
            listener("edits", receiver()),
            listener("both", receiver(), sender()),
        ]
    )


# the upstream says what it received, one header a line; its response
# carries two Cache-Control lines and whatever response edits the
# request asked for, for the sender filter
UPSTREAM = """
    server {
        listen 127.0.0.1:UP;
        location / {
            add_header Cache-Control no-store;
            add_header Cache-Control no-transform;
            add_header X-Response-Edits $http_x_response_edits;
            return 200 "xff=[$http_x_forwarded_for]
cookie=[$http_cookie]
ua=[$http_user_agent]
referer=[$http_referer]
authorization=[$http_authorization]
added=[$http_x_added]
lua=[$http_x_lua]
more=[$http_x_more]
";
        }
    }
"""

# what the gateway's own variables say, after the filters
SEEN = """
    add_header X-Seen-Cookie-A "[$cookie_a]" always;
    add_header X-Seen-Http-Cookie "[$http_cookie]" always;
    add_header X-Seen-Xff "[$http_x_forwarded_for]" always;
    add_header X-Seen-Ua "[$http_user_agent]" always;
    add_header X-Seen-Referer "[$http_referer]" always;
    add_header X-Seen-User "[$remote_user]" always;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
"""


def start(gateway, location, main="", http=""):
    up = free_port()
    conf = (
        """
        %s
        server {
            listen 127.0.0.1:%%PORT%%;
            %s
        }
    """
        % (http, location)
        + UPSTREAM
    )
    conf = conf.replace("SEEN", SEEN).replace("UP", str(up))
    return gateway(conf, mosn=mosn(), main=main).start()


def received(r):
    """The upstream's lines as a dict."""
    out = {}
    for line in r.text.splitlines():
        name, _, value = line.strip().partition("=")
        out[name] = value
    return out


def edits(**what):
    return {"x-edits": json.dumps(what)}


def test_removed_and_set_headers_are_what_the_variables_see(gateway):
    gw = start(
        gateway,
        """
        location / {
            mosn_filter_chain edits;
            SEEN
            proxy_pass http://127.0.0.1:UP;
        }
    """,
    )

    # X-Forwarded-For removed: $proxy_add_x_forwarded_for starts afresh
    r = gw.get(
        "/",
        {"X-Forwarded-For": "1.2.3.4", **edits(remove=["X-Forwarded-For"])},
    )
    assert received(r)["xff"] == "[127.0.0.1]"
    assert r.header("X-Seen-Xff") == "[]"

    # set, and set where the client sent none
    for sent in ({"X-Forwarded-For": "1.2.3.4"}, {}):
        r = gw.get("/", {**sent, **edits(set={"X-Forwarded-For": "9.9.9.9"})})
        assert received(r)["xff"] == "[9.9.9.9, 127.0.0.1]", sent
        assert r.header("X-Seen-Xff") == "[9.9.9.9]"

    # untouched, it is the client's still
    r = gw.get("/", {"X-Forwarded-For": "1.2.3.4", **edits()})
    assert received(r)["xff"] == "[1.2.3.4, 127.0.0.1]"

    # Cookie removed: no $cookie_*, no $http_cookie, none upstream
    r = gw.get("/", {"Cookie": "a=1; b=2", **edits(remove=["Cookie"])})
    assert r.header("X-Seen-Cookie-A") == "[]"
    assert r.header("X-Seen-Http-Cookie") == "[]"
    assert received(r)["cookie"] == "[]"

    for sent in ({"Cookie": "a=1; b=2"}, {}):
        r = gw.get("/", {**sent, **edits(set={"Cookie": "a=7; c=3"})})
        assert r.header("X-Seen-Cookie-A") == "[7]", sent
        assert r.header("X-Seen-Http-Cookie") == "[a=7; c=3]"
        assert received(r)["cookie"] == "[a=7; c=3]"

    # the headers nginx keeps one pointer for
    r = gw.get(
        "/",
        {
            "User-Agent": "client/1",
            **edits(
                set={"User-Agent": "filter/2", "Referer": "http://filter/"}
            ),
        },
    )
    assert r.header("X-Seen-Ua") == "[filter/2]"
    assert r.header("X-Seen-Referer") == "[http://filter/]"
    assert received(r)["ua"] == "[filter/2]"
    assert received(r)["referer"] == "[http://filter/]"

    r = gw.get(
        "/",
        {
            "User-Agent": "client/1",
            "Referer": "http://c/",
            **edits(remove=["User-Agent", "Referer"]),
        },
    )
    assert r.header("X-Seen-Ua") == "[]"
    assert r.header("X-Seen-Referer") == "[]"
    assert received(r)["ua"] == "[]" and received(r)["referer"] == "[]"

    # Authorization: $remote_user follows it ("bob:pw", "eve:pw")
    r = gw.get("/", edits(set={"Authorization": "Basic Ym9iOnB3"}))
    assert r.header("X-Seen-User") == "[bob]"
    r = gw.get(
        "/",
        {
            "Authorization": "Basic Ym9iOnB3",
            **edits(set={"Authorization": "Basic ZXZlOnB3"}),
        },
    )
    assert r.header("X-Seen-User") == "[eve]"
    r = gw.get(
        "/",
        {"Authorization": "Basic Ym9iOnB3", **edits(remove=["Authorization"])},
    )
    assert r.header("X-Seen-User") == "[]"
    assert received(r)["authorization"] == "[]"


def test_many_lines_of_one_header_after_an_edit(gateway):
    """Lines the filters leave alone stay as the client sent them, all of
    them, next to edited ones."""
    gw = start(
        gateway,
        """
        location / {
            mosn_filter_chain edits;
            SEEN
            proxy_pass http://127.0.0.1:UP;
        }
    """,
    )
    r = gw.raw(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        b"Cookie: a=1\r\nCookie: b=2\r\n"
        b"X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n"
        b"x-edits: "
        + json.dumps({"set": {"X-Added": "yes"}}).encode()
        + b"\r\n\r\n"
    )
    head, _, body = r.partition(b"\r\n\r\n")
    assert b"X-Seen-Cookie-A: [1]" in head
    assert b"X-Seen-Http-Cookie: [a=1; b=2]" in head
    assert b"X-Seen-Xff: [1.1.1.1, 2.2.2.2]" in head
    assert b"xff=[1.1.1.1, 2.2.2.2, 127.0.0.1]" in body
    assert b"added=[yes]" in body


def test_lua_pushes_request_headers_after_edits(gateway):
    main = debian_modules("ndk_http_module", "ngx_http_lua_module")
    gw = start(
        gateway,
        """
        location / {
            mosn_filter_chain edits;
            access_by_lua_block {
                ngx.req.set_header("X-Lua", "yes")
                if ngx.var.http_x_lua_clear then
                    ngx.req.clear_header("Cookie")
                    ngx.req.set_header("X-Forwarded-For", "5.5.5.5")
                end
            }
            SEEN
            proxy_pass http://127.0.0.1:UP;
        }
    """,
        main=main,
    )
    for i in range(20):
        r = gw.get(
            "/",
            {
                "Cookie": "a=1",
                **edits(set={"X-Added": str(i)}, remove=["User-Agent"]),
            },
        )
        got = received(r)
        assert got["lua"] == "[yes]" and got["added"] == "[%d]" % i, got
        assert got["cookie"] == "[a=1]"
    # the Lua module's own edits of the shortcuts, after ours
    r = gw.get(
        "/",
        {
            "Cookie": "a=1",
            "X-Lua-Clear": "1",
            **edits(set={"Cookie": "a=2", "X-Forwarded-For": "9.9.9.9"}),
        },
    )
    got = received(r)
    assert got["cookie"] == "[]" and got["xff"] == "[5.5.5.5, 127.0.0.1]"
    assert got["lua"] == "[yes]"
    assert r.header("X-Seen-Cookie-A") == "[]"
    assert "exited on signal" not in gw.error_log()


def test_headers_more_pushes_request_headers_after_edits(gateway):
    """more_set_input_headers runs in the rewrite phase: after the filters
    it runs in the location an internal redirect leads to."""
    main = debian_modules("ngx_http_headers_more_filter_module")
    gw = start(
        gateway,
        """
        location / {
            mosn_filter_chain edits;
            try_files /nonexistent @up;
        }
        location @up {
            more_set_input_headers "X-More: yes";
            more_clear_input_headers "Cookie";
            SEEN
            proxy_pass http://127.0.0.1:UP;
        }
    """,
        main=main,
    )
    for i in range(20):
        r = gw.get(
            "/",
            {
                "Cookie": "a=1",
                **edits(set={"X-Added": str(i), "Cookie": "a=2"}),
            },
        )
        got = received(r)
        assert got["more"] == "[yes]" and got["added"] == "[%d]" % i, got
        assert got["cookie"] == "[]"
        assert r.header("X-Seen-Cookie-A") == "[]"
    assert "exited on signal" not in gw.error_log()


def test_expires_after_a_cache_control_edit(gateway):
    """The response's Cache-Control edited by a sender filter, then
    nginx's expires: one Cache-Control line, expires' own."""
    gw = start(
        gateway,
        """
        location / {
            mosn_filter_chain both;
            expires 1h;
            add_header X-Seen-Cc "[$sent_http_cache_control]";
            proxy_pass http://127.0.0.1:UP;
        }
        location /no-expires {
            mosn_filter_chain both;
            add_header X-Seen-Cc "[$sent_http_cache_control]";
            proxy_pass http://127.0.0.1:UP;
        }
    """,
    )

    def cache_control(r):
        return [v for k, v in r.headers if k.lower() == "cache-control"]

    for what in (
        {"set": {"Cache-Control": "private"}},
        {"remove": ["Cache-Control"]},
        {"add": [["Cache-Control", "public"]]},
        {},
    ):
        r = gw.get("/", {"X-Response-Edits": json.dumps(what)})
        assert r.status == 200, what
        assert cache_control(r) == ["max-age=3600"], what
        assert r.header("X-Seen-Cc") == "[max-age=3600]", what
        assert r.header("Expires"), what

    # without expires, the edits are what the client and nginx see
    r = gw.get(
        "/no-expires",
        {
            "X-Response-Edits": json.dumps(
                {"set": {"Cache-Control": "private"}}
            )
        },
    )
    assert cache_control(r) == ["private"]
    assert r.header("X-Seen-Cc") == "[private]"
    r = gw.get(
        "/no-expires",
        {"X-Response-Edits": json.dumps({"remove": ["Cache-Control"]})},
    )
    assert cache_control(r) == [] and r.header("X-Seen-Cc") == "[]"
    r = gw.get(
        "/no-expires",
        {
            "X-Response-Edits": json.dumps(
                {"add": [["Cache-Control", "public"]]}
            )
        },
    )
    assert cache_control(r) == ["no-store", "no-transform", "public"]
    assert r.header("X-Seen-Cc") in (
        "[no-store, no-transform, public]",
        "[no-store; no-transform; public]",
    )
    assert "exited on signal" not in gw.error_log()


def test_log_records_cannot_forge_error_log_lines(gateway):
    """A filter's failure reaches nginx's error_log (the verdict's log
    record, and the Python side's own warning): CR, LF and other control
    bytes in it are escaped, so it cannot start a line of its own."""
    gw = start(
        gateway,
        """
        location / {
            mosn_filter_chain edits;
            add_header X-Mosn-Status $mosn_status always;
            proxy_pass http://127.0.0.1:UP;
        }
    """,
    )
    forged = "2030/01/01 00:00:00 [emerg] 1#1: forged"
    r = gw.get("/", edits(log="bad\r\n%s\n%s\x1b[2J\x07" % (forged, forged)))
    assert r.status == 200 and r.header("X-Mosn-Status") == "error"

    def logged():
        return [
            line for line in gw.error_log().split("\n") if "forged" in line
        ]

    lines = wait_for(lambda: len(logged()) >= 2 and logged())
    assert lines, gw.error_log()
    text = gw.error_log() + open(gw.prefix + "/logs/mosn.log").read()
    assert forged + "\n" not in text
    assert not any(line.startswith(forged) for line in text.split("\n"))
    assert "\r" not in text and "\x1b" not in text and "\x07" not in text
    # the module's line and Python's both say it, escaped
    module = [l for l in lines if "mosn: request" in l]
    assert module and "bad\\x0d\\x0a2030/01/01" in module[0], lines
    assert "\\x1b[2J\\x07" in module[0]
    python = [l for l in lines if "mosn: request" not in l]
    assert python and "\\x1b[2J\\x07" in python[0], lines


def static_dir():
    """A folder with one file that nginx's workers can read."""
    folder = tempfile.mkdtemp(prefix="mosn-static-")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "file.txt")
    with open(path, "w") as f:
        f.write("hello, static world\n")
    os.chmod(path, 0o644)
    return folder


def test_later_modules_act_on_edited_request_headers(gateway):
    """nginx's own modules read the request headers through the same
    shortcuts: range requests, conditional requests."""
    gw = start(
        gateway,
        """
        location /static/ {
            mosn_filter_chain edits;
            alias %s/;
        }
    """
        % static_dir(),
    )
    r = gw.get("/static/file.txt")
    assert r.status == 200 and r.text == "hello, static world\n"
    etag = r.header("ETag")

    # Range set by a filter, or removed
    r = gw.get("/static/file.txt", edits(set={"Range": "bytes=0-4"}))
    assert r.status == 206 and r.text == "hello"
    r = gw.get(
        "/static/file.txt", {"Range": "bytes=0-4", **edits(remove=["Range"])}
    )
    assert r.status == 200 and r.text == "hello, static world\n"
    r = gw.get(
        "/static/file.txt",
        {"Range": "bytes=0-4", **edits(set={"Range": "bytes=7-12"})},
    )
    assert r.status == 206 and r.text == "static"

    # If-None-Match set by a filter, or removed
    r = gw.get("/static/file.txt", edits(set={"If-None-Match": etag}))
    assert r.status == 304
    r = gw.get(
        "/static/file.txt",
        {"If-None-Match": etag, **edits(remove=["If-None-Match"])},
    )
    assert r.status == 200
    r = gw.get(
        "/static/file.txt",
        {"If-None-Match": etag, **edits(set={"If-None-Match": '"x"'})},
    )
    assert r.status == 200


def test_later_modules_act_on_edited_response_headers(gateway):
    """A Content-Encoding a sender filter sets stops gzip from encoding
    again; a Location it sets is made absolute as nginx's own are."""
    gw = start(
        gateway,
        """
        location / {
            mosn_filter_chain both;
            gzip on;
            gzip_types text/plain;
            gzip_min_length 1;
            gzip_proxied any;
            add_header X-Seen-Location "[$sent_http_location]";
            proxy_pass http://127.0.0.1:UP;
        }
    """,
    )
    r = gw.get("/", {"Accept-Encoding": "gzip"})
    assert r.header("Content-Encoding") == "gzip"  # gzip does work

    r = gw.get(
        "/",
        {
            "Accept-Encoding": "gzip",
            "X-Response-Edits": json.dumps(
                {"set": {"Content-Encoding": "br"}}
            ),
        },
    )
    assert [v for k, v in r.headers if k.lower() == "content-encoding"] == [
        "br"
    ]
    assert r.body.startswith(b"xff=")  # not gzipped

    r = gw.get(
        "/", {"X-Response-Edits": json.dumps({"set": {"Location": "/moved"}})}
    )
    assert r.header("Location") == "http://127.0.0.1:%d/moved" % gw.port
    # as nginx's own: the variable has it before the header filter
    assert r.header("X-Seen-Location") == "[/moved]"


def test_edits_of_an_http2_request(gateway):
    """HTTP/2 builds the request's header list its own way (its cookie
    lines joined into one): the edits are seen the same."""
    h2_port = free_port()
    start(
        gateway,
        """
        listen 127.0.0.1:%d http2;
        location / {
            mosn_filter_chain edits;
            SEEN
            proxy_pass http://127.0.0.1:UP;
        }
    """
        % h2_port,
    )

    def curl(*headers):
        cmd = [
            "curl",
            "-s",
            "-i",
            "--http2-prior-knowledge",
            "http://127.0.0.1:%d/" % h2_port,
        ]
        for h in headers:
            cmd += ["-H", h]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=20, check=True
        ).stdout

    out = curl(
        "Cookie: a=1",
        "Cookie: b=2",
        "X-Forwarded-For: 1.1.1.1",
        "x-edits: "
        + json.dumps(
            {"set": {"X-Added": "h2"}, "remove": ["X-Forwarded-For"]}
        ),
    )
    assert out.startswith("HTTP/2 200"), out
    assert "x-seen-cookie-a: [1]" in out and "cookie=[a=1; b=2]" in out
    assert "xff=[127.0.0.1]" in out and "added=[h2]" in out

    out = curl(
        "Cookie: a=1",
        "Cookie: b=2",
        "x-edits: " + json.dumps({"set": {"Cookie": "a=5"}}),
    )
    assert "x-seen-cookie-a: [5]" in out and "cookie=[a=5]" in out
