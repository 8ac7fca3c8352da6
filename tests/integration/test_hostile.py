"""A hostile consumer on the ring (hostile_consumer.py), attached with
`mosn_spawn off` beside an honest pool, under wrk load for 30 s: no nginx
worker dies, every request is answered, honest requests are filtered,
and the module's counters show what it refused."""

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from gateway import (
    FILTERS,
    PYTHON,
    ROUTED_UPSTREAMS,
    SITE_BODY,
    sites,
    wait_for,
)

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
SECONDS = 30
NOBODY = 65534

HOSTILE = (
    ROUTED_UPSTREAMS
    + """
    mosn_spawn off;
    server {
        listen 127.0.0.1:%PORT%;
        mosn_timeout 300ms;
        mosn_fallback continue;
        location / {
            mosn_filter_chain serverListener;
            add_header X-Mosn-Status $mosn_status always;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://$site;
        }
    }
"""
    + sites([("s1", 3450), ("s2", 3452), ("s3", 3453)])
)

WRK_LUA = """
counter = 0
request = function()
    counter = counter + 1
    return wrk.format(nil, nil, {["uid"] = tostring(counter % 250)})
end
"""


def as_nobody():
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def wrk_summary(text):
    requests = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), "
        r"write (\d+), timeout (\d+)",
        text,
    )
    return {
        "requests": int(requests.group(1)) if requests else 0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": sum(map(int, errors.groups())) if errors else 0,
    }


@pytest.mark.skipif(shutil.which("wrk") is None, reason="no wrk")
def test_a_hostile_consumer_under_load(gateway):
    gw = gateway(HOSTILE, workers=1, nginx_workers=2).start(wait=False)
    env = dict(os.environ, PYTHONPATH=FILTERS)
    pool = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "pyworker",
            "serve",
            "--shm",
            "/" + gw.shm,
            "--config",
            gw.mosn_path,
            "--workers",
            "1",
        ]
        + (
            ["--uid", str(NOBODY), "--gid", str(NOBODY)]
            if os.geteuid() == 0
            else []
        ),
        cwd=gw.prefix,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    hostile = None
    try:
        gw.wait_ready()
        nginx_pids = sorted(gw.nginx_worker_pids())
        script = os.path.join(gw.prefix, "hostile_consumer.py")
        shutil.copy(os.path.join(HERE, "hostile_consumer.py"), script)
        hostile = subprocess.Popen(
            [PYTHON, script, "/" + gw.shm, str(SECONDS)],
            cwd=gw.prefix,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=as_nobody,
            text=True,
        )
        lua = os.path.join(gw.prefix, "uid.lua")
        with open(lua, "w") as f:
            f.write(WRK_LUA)
        load = subprocess.Popen(
            [
                "wrk",
                "-t2",
                "-c16",
                "-d%ds" % SECONDS,
                "-s",
                lua,
                "http://127.0.0.1:%d/" % gw.port,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        # honest probes meanwhile: each answered, some by the honest pool
        probes = []
        deadline = time.monotonic() + SECONDS - 2
        while time.monotonic() < deadline:
            resp = gw.get("/", {"uid": "150"})
            probes.append(
                (
                    resp.status,
                    resp.header("X-Mosn-Status"),
                    SITE_BODY.match(resp.text).group(1),
                )
            )
            time.sleep(0.2)

        out, _ = load.communicate(timeout=SECONDS + 30)
        did, err = hostile.communicate(timeout=60)
        assert hostile.returncode == 0, err
        did = json.loads(did.strip().splitlines()[-1])
    finally:
        if hostile is not None and hostile.poll() is None:
            hostile.kill()

    try:
        print("wrk:", out)
        print("hostile:", did)
        wrk = wrk_summary(out)
        assert wrk["requests"] > 1000, out
        assert wrk["non2xx"] == 0 and wrk["errors"] == 0, out
        for key in (
            "crlf",
            "oversized",
            "flipped",
            "forged",
            "rings",
            "states",
            "layouts",
            "epochs",
            "responses",
            "counters",
        ):
            assert did[key] > 0, (key, did)

        # every probe answered; the honest pool's answers are right
        assert all(status == 200 for status, _, _ in probes), probes
        honest = [site for _, how, site in probes if how == "filtered"]
        assert honest and set(honest) <= {"s2", "s1"}, probes

        # no nginx worker died, and none was replaced
        log = gw.error_log()
        assert "exited on signal" not in log
        assert sorted(gw.nginx_worker_pids()) == nginx_pids

        # what was refused is counted
        region = gw.region()
        try:
            producers = region.stats()["producers"]
        finally:
            region.close()
        counted = {
            k: sum(p[k] for p in producers)
            for k in ("forged", "refused", "stale", "completed")
        }
        print("counters:", counted)
        assert counted["forged"] > 0 and counted["refused"] > 0, counted
        assert "refused the verdict" in log

        # with the hostile consumer gone, the honest pool filters all
        def all_filtered():
            got = [gw.get("/", {"uid": "2"}) for _ in range(5)]
            return all(
                r.header("X-Mosn-Status") == "filtered"
                and SITE_BODY.match(r.text).group(1) == "s1"
                for r in got
            )

        assert wait_for(all_filtered, 15, 0.5)
    finally:
        pool.terminate()
        pool.wait(timeout=15)
