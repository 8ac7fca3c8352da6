"""nginx's debug log follows a request through the module, as it does
through nginx's own (an nginx built --with-debug, as Debian's is): the
handler, the slot, the verdict, the resumption and what was applied, each
line with the request's id."""

import re
import subprocess

import pytest

from gateway import (
    NGINX,
    ROUTED_UPSTREAMS,
    SITE_BODY,
    example_mosn,
    listener,
    sites,
)

HTTP = (
    ROUTED_UPSTREAMS
    + """
    server {
        listen 127.0.0.1:%PORT%;
        location / {
            mosn_filter_chain serverListener;
            proxy_pass http://$site;
        }
        location /echo {
            mosn_filter_chain echoListener;
        }
    }
"""
    + sites([("s1", 3450), ("s2", 3452), ("s3", 3453)])
)


def built_with_debug():
    out = subprocess.run(
        [NGINX, "-V"], capture_output=True, text=True, timeout=10
    ).stderr
    return "--with-debug" in out


@pytest.mark.skipif(
    not built_with_debug(), reason="this nginx has no debug log (--with-debug)"
)
def test_the_debug_log_traces_each_request(gateway):
    mosn = example_mosn(
        extra_listeners=[
            listener(
                "echoListener",
                {"type": "echo", "config": {"status": 200, "body": "hi"}},
            )
        ]
    )
    gw = gateway(HTTP, mosn=mosn, main="error_log logs/debug.log debug;")
    gw.start()
    assert SITE_BODY.match(gw.get("/", {"uid": "150"}).text).group(1) == "s2"
    assert gw.get("/echo").text == "hi"
    with open(gw.prefix + "/logs/debug.log", errors="replace") as f:
        log = f.read()
    parked = re.findall(r"mosn request (\d+) parked for \d+ ms", log)
    assert len(parked) == 2, log[-5000:]
    routed, echoed = parked
    assert 'mosn handler, chain "serverListener"' in log
    assert 'mosn handler, chain "echoListener"' in log
    for rid in parked:
        slot = re.search(
            r"mosn request %s in slot (\d+) gen (\d+) to "
            r"consumer \d+" % rid,
            log,
        )
        assert slot, rid
        assert "mosn verdict in slot %s gen %s" % slot.groups() in log
        assert "mosn request %s resumes: filtered" % rid in log
    assert "mosn request %s: continue, 0 header edit(s)" % routed in log
    assert "mosn request %s: hijack reply" % echoed in log
