"""Bad input gets a clear answer: from clients (sizes, counts, bytes) and
from filters (what a verdict may not carry).  Never a crash, never a 5xx
from the module itself."""

import pytest

from gateway import ROUTED_UPSTREAMS, SITE_BODY, example_mosn, listener, sites

ROUTED = (
    ROUTED_UPSTREAMS
    + """
    server {
        listen 127.0.0.1:%PORT%;
        large_client_header_buffers 8 16k;
        location / {
            mosn_filter_chain CHAIN;
            add_header X-Mosn-Status $mosn_status always;
            proxy_pass http://$site;
        }
    }
"""
    + sites([("s1", 3450), ("s2", 3452), ("s3", 3453)])
)


def routed(gateway, chain="serverListener", mosn=None):
    return gateway(ROUTED.replace("CHAIN", chain), mosn=mosn).start()


def test_client_bad_input(gateway):
    gw = routed(gateway)
    # 500 headers: more than mosn_max_headers (100)
    r = gw.raw(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"".join(b"x-h%d: 1\r\n" % i for i in range(500))
        + b"\r\n"
    )
    assert r.startswith(b"HTTP/1.1 431 ")
    # headers larger than a slot (16k, three quarters for the record)
    r = gw.get("/", {"x-a": "a" * 7000, "x-b": "b" * 7000})
    assert r.status == 431
    # bytes that are not UTF-8, in names and values
    r = gw.raw(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"x-\xff\xfe: \xc3\x28\x80\r\nuid: \xff7\r\n\r\n"
    )
    assert r.startswith(b"HTTP/1.1 200 ") and b"site s1" in r
    assert b"X-Mosn-Status: filtered" in r
    # empty, huge and negative uids
    for uid, site in (
        ("", "s1"),
        ("9" * 5000, "s1"),
        ("-1", "s3"),
        ("1" * 60, "s3"),
    ):
        r = gw.get("/", {"uid": uid})
        assert r.status == 200, (uid[:10], r)
        assert SITE_BODY.match(r.text).group(1) == site, uid[:10]
    assert len(gw.live_workers()) == 1
    gw.wait_idle()


@pytest.mark.parametrize(
    "kind, why",
    [
        ("status", "status"),
        ("big_body", "body"),
        ("meta_type", "metadata"),
        ("nul", "x-a"),
        ("name", "bad name"),
        ("host", "Host"),
    ],
)
def test_filter_verdicts_refused(gateway, kind, why):
    mosn = example_mosn(
        extra_listeners=[
            listener(
                "l",
                {
                    "type": "bad_verdict",
                    "module": "testfilters",
                    "config": {"kind": kind},
                },
            )
        ]
    )
    gw = routed(gateway, "l", mosn)
    r = gw.get("/", {"uid": "150"})
    # refused whole: the fallback (continue) proxies it unfiltered
    assert r.status == 200 and r.header("X-Mosn-Status") == "error"
    log = open(gw.prefix + "/logs/mosn.log").read()
    refusal = [l for l in log.splitlines() if "bad_verdict" in l]
    assert refusal and why.lower() in refusal[0].lower(), log[-2000:]
    assert len(gw.live_workers()) == 1


def test_broken_configs_are_refused_by_nginx_and_the_pool(gateway, tmp_path):
    import subprocess
    from gateway import PYTHON

    gw = gateway(ROUTED.replace("CHAIN", "serverListener"))
    cases = {
        "malformed": ('{"servers": [', "line 1"),
        "unknown filter": (example_mosn(), "nope"),
        "unknown driver": (example_mosn(), "NOSUCH"),
        "driver init": (
            example_mosn(unit_key=["not", "a", "name"]),
            "unit_key",
        ),
        "wrong type": ({"servers": {"listeners": []}}, "servers"),
        "nested too deeply": (
            "[" * 100000 + "]" * 100000,
            "invalid JSON: nested too deeply",
        ),
    }
    cases["unknown filter"][0]["servers"][0]["listeners"][0]["stream_filters"][
        0
    ]["type"] = "nope"
    cases["unknown driver"][0]["servers"][0]["listeners"][0]["stream_filters"][
        0
    ]["config"]["metadataers"][0]["meta_data_key"] = "NOSUCH"
    for name, (mosn, expect) in cases.items():
        gw.write_mosn(mosn)
        code, out = gw.nginx("-t", check=False)
        assert code != 0, name
        assert "mosn.json" in out and expect in out, (name, out)
        assert "Traceback" not in out, (name, out)
        pool = subprocess.run(
            [PYTHON, "-m", "pyworker", "check", gw.mosn_path],
            capture_output=True,
            text=True,
        )
        assert pool.returncode != 0, name
        assert "mosn.json" in pool.stdout + pool.stderr, name
        # nothing half-started
        code, out = gw.nginx(check=False)
        assert code != 0 and not gw.processes(), name
    # a missing file
    import os

    os.unlink(gw.mosn_path)
    code, out = gw.nginx("-t", check=False)
    assert code != 0 and "No such file" in out


@pytest.mark.parametrize("value", ["0", "0s", "0ms"])
def test_a_timeout_of_nothing_is_refused(gateway, value):
    """mosn_timeout 0 would send every request to the fallback unfiltered:
    nginx -t refuses it and says why."""
    http = ROUTED.replace("CHAIN", "serverListener").replace(
        "large_client_header_buffers",
        "mosn_timeout %s;\n" % value + "        large_client_header_buffers",
    )
    gw = gateway(http)
    code, out = gw.nginx("-t", check=False)
    assert code != 0
    assert (
        '"mosn_timeout" directive must be more than 0: no request would '
        "wait for its verdict" in out
    ), out
    gw.http = http.replace("mosn_timeout %s;" % value, "mosn_timeout 1ms;")
    gw.write_conf()
    code, out = gw.nginx("-t", check=False)
    assert code == 0, out
