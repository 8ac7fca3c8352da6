"""`make soak`, short: `python -m bench.soak_bench` runs locust against
the worked example for 30 s and must pass every check it prints."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
MODULE = os.path.join(ROOT, "output", "ngx_http_mosn_module.so")

# the checks soak_bench prints whether it started the gateway or found it
CHECKS = (
    "errors",
    "requests",
    "throughput",
    "nginx RSS",
    "Python RSS",
    "nginx processes stable",
    "Python processes stable",
    "module file",
    "slots at idle",
)
# and those of a gateway it started itself
OWN_GATEWAY_CHECKS = ("error.log", "quit")


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_soak_30s(tmp_path):
    assert os.path.exists(MODULE), "build the module first: make build-l7"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak_bench",
            "--time",
            "30s",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr

    printed = dict(re.findall(r"^check ([^:]+): .*: (ok|FAILED)$", out, re.M))
    result = json.loads((tmp_path / "soak.json").read_text())
    want = CHECKS + (OWN_GATEWAY_CHECKS if result["started_here"] else ())
    for name in want:
        assert printed.get(name) == "ok", (name, out)
    assert "FAILED" not in out
    assert re.search(r"^soak passed", out, re.M)

    # the figures behind the checks
    assert result["locust"]["failures"] == 0
    assert result["locust"]["exceptions"] == []
    assert result["locust"]["requests"] > 0
    assert len(result["samples"]) >= 3  # one every 10 s
    assert all(s["errors"] == 0 for s in result["samples"])
    assert all(
        s["nginx_rss"] > 0 and s["python_rss"] > 0 for s in result["samples"]
    )
    names = {r["name"] for r in result["locust"]["by_name"]}
    assert {
        "/ uid 1..100",
        "/ uid 101..200",
        "/ uid other integer",
        "/ no uid",
        "/ uid not a number",
        "/echo",
    } <= names
    if result["started_here"]:
        assert "/slow" in names

    report = (tmp_path / "soak.md").read_text()
    assert "python -m bench.soak_bench --time 30s" in report
    assert "| t (s) |" in report
    assert (tmp_path / "soak.png").read_bytes().startswith(b"\x89PNG")
