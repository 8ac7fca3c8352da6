"""The benchmarks, short: each `python -m bench.<name>_bench` below runs
for real on loopback, exits 0 and writes its report."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
MODULE = os.path.join(ROOT, "output", "ngx_http_mosn_module.so")


def run(name, *args, timeout):
    """python -m bench.NAME ARGS from the checkout; its output."""
    assert os.path.exists(MODULE), "build the module first: make build-l7"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench." + name, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        # SIGTERM first: the benchmark stops the nginx it started (SIGKILL,
        # subprocess.run's way, would leave them running and holding ports)
        proc.terminate()
        try:
            proc.communicate(timeout=25)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    assert proc.returncode == 0, out + err
    return out


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_idle_smoke(tmp_path):
    out = run(
        "idle_bench", "--seconds", "3", "--out", str(tmp_path), timeout=150
    )
    assert "wrote" in out
    result = json.loads((tmp_path / "idle.json").read_text())
    mosn = result["summary"]["mosn"]
    assert "map" in result["summary"]
    roles = mosn["roles"]
    # nginx and the whole Python pool were found and measured
    assert {
        "nginx-master",
        "nginx-worker",
        "py-supervisor",
        "py-worker",
    } <= set(roles)
    assert len(mosn["windows"]) == result["settings"]["runs"]
    # at idle nothing goes over the ring
    assert mosn["ring_totals"]["producers.submitted"] == 0
    assert mosn["ring_totals"]["producers.futex_wakes"] == 0
    assert result["target"]["status"] in ("met", "MISSED")
    report = (tmp_path / "idle.md").read_text()
    assert "python -m bench.idle_bench --seconds 3" in report
    assert "| gateway | nginx CPU % |" in report


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scale_quick_smoke(tmp_path):
    # two storms of 10,000 and their waits for a quiet machine: minutes
    # when other work shares the two cores
    out = run("scale_bench", "--quick", "--out", str(tmp_path), timeout=540)
    assert "wrote" in out
    result = json.loads((tmp_path / "scale.json").read_text())
    assert result["settings"]["connections"] == 10000
    for name in ("mosn", "map"):
        s = result["summary"][name]
        assert s["opened"] == 10000
        assert s["errors"]["open_errors"] == 0
        assert s["errors"]["machine_errors"] == {}
        assert s["errors"]["closed_by_server"] == 0
        assert s["without"] > 0 and s["with"] > 0
        assert s["nginx_bytes_per_conn_rss"] > 0
    assert result["summary"]["mosn"]["errors"]["ring_fallbacks"] == 0
    # both gateways opened in the same round: their times compare
    assert result["open_ratios"]["median"] > 0
    report = (tmp_path / "scale.md").read_text()
    assert "python -m bench.scale_bench --quick" in report
    assert "## The storm: opening the connections" in report
    assert "One million connections" in report


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_response_phase_bench_smoke(tmp_path):
    """bench/response_bench.py checks that only the chain with a sender filter
    stamps responses, then measures both beside map."""
    run(
        "response_bench",
        "--runs",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--out",
        str(tmp_path),
        timeout=210,
    )
    result = json.loads((tmp_path / "response.json").read_text())
    assert set(result["summary"]) == {"map", "mosn", "mosn_senders"}
    for row in result["summary"].values():
        assert row["rps"] > 0 and row["non_2xx"] == 0
    report = (tmp_path / "response.md").read_text()
    assert "| throughput, with / without |" in report


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_response_body_bench_smoke(tmp_path):
    """bench/response_body_bench.py checks that the five body filters mask
    the card and the other two do not, then measures all seven and writes its
    section of response.md after what is there."""
    (tmp_path / "response.md").write_text("# The response phase\n\nkept\n")
    out = run(
        "response_body_bench",
        "--runs",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--port",
        "23101",
        "--site-port",
        "23160",
        "--out",
        str(tmp_path),
        timeout=210,
    )
    result = json.loads((tmp_path / "response_body.json").read_text())
    assert list(result["summary"]) == [
        "plain",
        "mosn_headers",
        "mosn_body",
        "mosn_body_only",
        "njs_body",
        "lua_body",
        "mosn_body_find",
    ]
    for name, row in result["summary"].items():
        assert row["rps"] > 0 and row["non_2xx"] == 0, (name, row)
    report = (tmp_path / "response.md").read_text()
    assert report.startswith("# The response phase\n\nkept\n")
    assert "## Response bodies" in report
    assert (
        "| req/s, `mosn_body_only` / `lua_body` (target >= 0.90) |" in report
    )
    assert "--port 23101" in out


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_spin_bench_smoke(tmp_path):
    """bench/spin_bench.py measures the gateway once per spin value beside
    map."""
    run(
        "spin_bench",
        "--spins",
        "0,20",
        "--runs",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--out",
        str(tmp_path),
        timeout=210,
    )
    result = json.loads((tmp_path / "spin.json").read_text())
    assert result["spins"] == [0, 20]
    assert set(result["summary"]) == {"map", "spin_0us", "spin_20us"}
    for row in result["summary"].values():
        assert row["rps"] > 0 and row["non_2xx"] == 0
    assert "--spins 0,20" in (tmp_path / "spin.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fleet_smoke(tmp_path):
    out = tmp_path / "fleet"
    run(
        "fleet_bench",
        "--changes",
        "5",
        "--rounds",
        "1",
        "--duration",
        "2",
        "--rate",
        "20",
        "--cost-changes",
        "20",
        "--out",
        str(out),
        timeout=280,
    )
    result = json.loads(out.with_suffix(".json").read_text())
    # every change reached every gateway, and was timed
    for spacing in ("apart", "close"):
        prop = result["propagation"][spacing]
        assert prop["missed"] == 0
        assert [len(v) for v in prop["per_gateway"]] == [5] * 3
    runs = {r["condition"]: r for r in result["throughput"]}
    assert set(runs) == {"quiet", "A changes", "B changes"}
    for name in ("A", "B"):
        changing = runs[name + " changes"]
        other = "B" if name == "A" else "A"
        assert changing["etcd_writes"] > 0
        assert min(changing["sets"][name]["table_writes"]) > 0
        # the control set's endpoints did not move
        assert changing["sets"][other]["table_writes"] == [0, 0, 0]
    assert runs["quiet"]["sets"]["A"]["table_writes"] == [0, 0, 0]
    assert len(result["ratios"]) == 2
    # the cost part: coalescing on (A) and off (B), every change applied
    assert {c["coalesce"] for c in result["cost"]} == {0.05, 0.0}
    assert all(
        c["changes"] > 0 and min(c["table_writes"]) > 0 for c in result["cost"]
    )
    text = out.with_suffix(".md").read_text()
    assert "Target p99 <= 100 ms" in text
    assert "Were each gateway alone on a core" in text


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_etcd_watch_smoke():
    out = run(
        "etcd_watch_bench",
        "--clients",
        "channel,channel:0.05",
        "--changes",
        "20",
        "--runs",
        "1",
        timeout=110,
    )
    rows = {
        line.split("|")[1].strip(): line
        for line in out.splitlines()
        if line.startswith("| channel")
    }
    # every change reached each client, which timed its own CPU
    assert set(rows) == {"channel", "channel:0.05"}
    assert out.count(" 20 changes ") == 2


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_concurrency_bench_smoke(tmp_path):
    """bench/concurrency_bench.py runs wrk and h2load against map and this
    gateway and gives every row of this gateway a target and a verdict."""
    run(
        "concurrency_bench",
        "--runs",
        "1",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--configs",
        "1",
        "--loads",
        "c1,h2_8x100",
        "--site-port",
        "23450",
        "--port",
        "23020",
        "--out",
        str(tmp_path),
        timeout=270,
    )
    result = json.loads((tmp_path / "concurrency.json").read_text())
    rows = {(r["load"], r["gateway"]): r for r in result["rows"]}
    assert set(rows) == {
        ("c1", "map"),
        ("c1", "mosn"),
        ("h2_8x100", "map"),
        ("h2_8x100", "mosn"),
    }
    for (load, gw), row in rows.items():
        assert row["rps"] > 0 and row["non_2xx"] == 0 and row["routed_ok"]
        if gw == "mosn":
            assert row["target"] and row["met"] in (True, False)
            assert row["ring"]["submitted"] > 0
    # 800 streams on 256 slots: some waited, none fell back
    assert rows[("h2_8x100", "mosn")]["ring"]["queued"] > 0
    assert rows[("h2_8x100", "mosn")]["ring"]["fallbacks"] == 0
    md = (tmp_path / "concurrency.md").read_text()
    assert "| target | met |" in md


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_async_bench_smoke(tmp_path):
    run(
        "async_bench",
        "--runs",
        "1",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--blocking-duration",
        "2",
        "--connections",
        "32",
        "--out",
        str(tmp_path),
        timeout=280,
    )
    result = json.loads((tmp_path / "async.json").read_text())
    summary = result["summary"]
    assert set(summary) == {
        "service",
        "upstream",
        "mosn_ext_authz",
        "auth_request",
        "lua",
        "mosn_blocking",
        "mosn_await",
        "mosn_unit",
        "mosn_limited",
        "mosn_limited_redispy",
    }
    for name, row in summary.items():
        assert row["rps"] > 0 and row["non_2xx"] == 0, (name, row)
    # the rate limit asked Redis once per request
    assert 0.95 <= summary["mosn_limited"]["redis_per_request"] <= 1.05
    text = (tmp_path / "async.md").read_text()
    assert "## Targets" in text
    assert "## Where the Python worker's time goes" in text
