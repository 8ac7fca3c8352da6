"""The worked example of MOSN's MOE: routing by uid with the UNIT driver."""

import http.client
import subprocess

import pytest

from example_ports import the_example_ports
from gateway import SITE_BODY, free_port, sites

EXAMPLE = """
    upstream s1 { zone s1 64k; server 127.0.0.1:%P3450%;
                  server 127.0.0.1:%P3451%; }
    upstream s2 { zone s2 64k; server 127.0.0.1:%P3452%; }
    upstream s3 { zone s3 64k; server 127.0.0.1:%P3453%; }
    upstream any_site { zone any_site 64k; server 127.0.0.1:%P3450%;
                        server 127.0.0.1:%P3452%; server 127.0.0.1:%P3453%; }
    map $mosn_meta_UNIT $site { s1 s1; s2 s2; s3 s3; default any_site; }
    server {
        listen 127.0.0.1:%PORT%;
        %LISTEN2%
        location / {
            mosn_filter_chain serverListener;
            proxy_pass http://$site;
        }
    }
""" + sites([("s1", 3450), ("s1", 3451), ("s2", 3452), ("s3", 3453)])


def example(gateway, workers=1, nginx_workers=1, listen2=""):
    return gateway(
        EXAMPLE.replace("%LISTEN2%", listen2),
        workers=workers,
        nginx_workers=nginx_workers,
    ).start()


def session(gw, send):
    """The curl session of the MOE docs, through send(headers) -> body."""
    assert send({"uid": "2"}) == "site s1 from 3450"
    assert send({"uid": "2"}) == "site s1 from 3451"
    assert send({"uid": "200"}) == "site s2 from 3452"
    assert send({"uid": "201"}) == "site s3 from 3453"
    # no usable uid: s1, s2, s3 in turn
    got = [
        SITE_BODY.match(send(h)).group(1)
        for h in ({}, {"uid": "abc"}, {}, {"uid": "abc"}, {}, {})
    ]
    assert got == ["s1", "s2", "s3", "s1", "s2", "s3"]


def test_example_session(gateway):
    gw = example(gateway)
    session(gw, lambda h: gw.get("/", h).text)


def test_example_two_nginx_two_python_workers(gateway):
    gw = example(gateway, workers=2, nginx_workers=2)
    session(gw, lambda h: gw.get("/", h).text)
    # both Python workers took part
    stats = gw.region().stats()["consumers"]
    assert sum(1 for c in stats if c["state"] == "live") == 2


def test_example_keepalive(gateway):
    gw = example(gateway, workers=2, nginx_workers=2)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)

    def send(h):
        conn.request("GET", "/", headers=h)
        return conn.getresponse().read().decode()

    session(gw, send)
    conn.close()


def test_example_pipelined(gateway):
    gw = example(gateway)
    reqs = b"".join(
        b"GET / HTTP/1.1\r\nHost: x\r\n" + h + b"\r\n"
        for h in (
            b"uid: 2\r\n",
            b"uid: 2\r\n",
            b"uid: 200\r\n",
            b"uid: 201\r\nConnection: close\r\n",
        )
    )
    out = gw.raw(reqs).decode()
    assert SITE_BODY.findall(out) == [
        ("s1", "3450"),
        ("s1", "3451"),
        ("s2", "3452"),
        ("s3", "3453"),
    ]


def test_example_http2_cleartext(gateway):
    port = free_port()
    gw = example(
        gateway,
        workers=2,
        nginx_workers=2,
        listen2="listen 127.0.0.1:%d http2;" % port,
    )

    def send(h):
        cmd = [
            "curl",
            "-s",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version}",
            "http://127.0.0.1:%d/" % port,
        ]
        for k, v in h.items():
            cmd += ["-H", "%s: %s" % (k, v)]
        body, version = subprocess.run(
            cmd, capture_output=True, text=True, timeout=10
        ).stdout.rsplit("\n", 1)
        assert version == "2"
        return body

    session(gw, send)


def test_uid_edges(gateway):
    gw = example(gateway)
    for uid, site in (
        ("1", "s1"),
        ("100", "s1"),
        ("101", "s2"),
        ("200", "s2"),
        ("0", "s3"),
        ("-5", "s3"),
        ("9" * 40, "s3"),
        (" 7 ", "s1"),
    ):
        body = gw.get("/", {"uid": uid}).text
        assert SITE_BODY.match(body).group(1) == site, (uid, body)


@pytest.fixture
def example_ports():
    """Set up before the gateway, so held until it has stopped."""
    with the_example_ports():
        yield


def test_the_shipped_example_config(example_ports, gateway):
    """conf/nginx.conf and conf/mosn.json as shipped, on their own ports."""
    import os
    import re as re_
    from gateway import MODULE, PYTHON, ROOT

    gw = gateway("")
    conf = open(os.path.join(ROOT, "conf", "nginx.conf")).read()
    conf = re_.sub(
        r"load_module\s+output/",
        "load_module %s/" % os.path.dirname(MODULE),
        conf,
    )
    conf = re_.sub(r"mosn_python\s+\S+;", "mosn_python %s;" % PYTHON, conf)
    conf = re_.sub(r"mosn_shm_name\s+\S+;", "mosn_shm_name %s;" % gw.shm, conf)
    open(gw.conf_path, "w").write(conf)
    mosn = open(os.path.join(ROOT, "conf", "mosn.json")).read()
    gw.write_mosn(mosn)
    gw.port = 2990
    gw.workers, gw.nginx_workers = 2, 2
    gw.start()
    session(gw, lambda h: gw.get("/", h).text)
    r = gw.get("/echo")
    assert r.text == "hello from echo\n" and r.header("x-mosn-echo") == "1"
    access = open(gw.prefix + "/logs/access.log").read()
    assert re_.search(r"mosn=filtered cost=\d+us unit=s1 id=\d+", access)
    # the sites' connections stay open for the next requests (keepalive)
    for _ in range(20):
        gw.get("/", {"uid": "2"})
    assert kept_alive_to({3450, 3451, 3452, 3453}) >= 1


def kept_alive_to(ports):
    """Established connections to any of ports, from their client side."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if fields[3] == "01" and remote_port in ports:
                n += 1
    return n
