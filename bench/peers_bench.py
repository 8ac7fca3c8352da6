"""Benchmark the project's gateway against its peers on the same routing job.

    python -m bench.peers_bench [--duration 10] [--runs 3] [--only map,lua]
        [--out DIR]

For every round, for every gateway: start it (and its helper), check that it
routes the worked example correctly, warm up, run wrk with bench/uid.lua, and
check from the sites' own hit counts that the traffic went where the uids
say. Rounds are interleaved so a slow minute on the machine hits every gateway
alike. Medians over the rounds go to DIR/peers.md, peers.json and peers.png.
See bench/README.md.
"""

import argparse
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import gateways, procs, report
from bench.gateways import GatewayError

BENCH = gateways.BENCH
BASELINE = "map"
FLUSH_WAIT = 0.6  # sites flush their hit logs every 200 ms
MIX_TOLERANCE = 0.02  # largest gap between expected and seen site share


class RoutingError(RuntimeError):
    """A gateway sent a request to the wrong site."""


# --- correctness probe ----------------------------------------------------

BODY = re.compile(r"site (s[123]) from (\d+)")


def fetch(port, uid):
    """One request on a fresh connection; returns (site, port) from the
    body."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/")
    if uid is not None:
        request.add_header("uid", uid)
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            body = response.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as e:
        raise RoutingError(f"uid={uid!r}: HTTP {e.code}") from None
    except OSError as e:
        raise RoutingError(f"uid={uid!r}: {e}") from None
    match = BODY.fullmatch(body)
    if not match:
        raise RoutingError(f"uid={uid!r}: unexpected body {body!r}")
    return match.group(1), int(match.group(2))


def wait_routing(port, site_ports):
    """Give a gateway whose filters attach after it listens time to route."""
    deadline = time.monotonic() + gateways.START_TIMEOUT
    streak = 0
    while time.monotonic() < deadline:
        try:
            # several in a row: the round robin of "any" can hit s2 by chance
            if fetch(port, "150") == ("s2", site_ports["s2"]):
                streak += 1
                if streak == 6:
                    return
                continue
            streak = 0
        except RoutingError:
            pass
        time.sleep(0.1)
    # Not routing yet: the probe that follows says how it is wrong.


def probe(port, workers, site_ports):
    """Check the worked example; raise RoutingError on the first wrong
    answer."""
    ports_of = {
        "s1": {site_ports["s1a"], site_ports["s1b"]},
        "s2": {site_ports["s2"]},
        "s3": {site_ports["s3"]},
    }

    def expect(uid, site, times=1):
        seen = set()
        for _ in range(times):
            got, from_port = fetch(port, uid)
            if got != site or from_port not in ports_of[site]:
                raise RoutingError(
                    f"uid={uid!r} went to 'site {got} from {from_port}', "
                    f"expected {site}"
                )
            seen.add(from_port)
        return seen

    # With N workers, 2N requests put two on one worker: both s1 servers show.
    if expect("2", "s1", 2 * workers) != ports_of["s1"]:
        raise RoutingError("uid='2' never reached both s1 servers")
    for uid, site in (
        ("100", "s1"),
        ("007", "s1"),
        ("101", "s2"),
        ("150", "s2"),
        ("200", "s2"),
        ("201", "s3"),
        ("500", "s3"),
        ("0", "s3"),
        ("-5", "s3"),
    ):
        expect(uid, site)
    # Round robin may be per worker: 3N requests give some worker three in
    # a row.
    for uid in (None, "abc"):
        sites = {fetch(port, uid)[0] for _ in range(3 * workers)}
        if sites != {"s1", "s2", "s3"}:
            raise RoutingError(
                f"uid={uid!r} is not round robin: only {sorted(sites)}"
            )


# --- wrk ------------------------------------------------------------------

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value, unit):
    return float(value) * UNITS[unit]


def parse_wrk(text, uid_mix=True):
    """Requests/s, p50/p99 (ms), counts and the uid mix (bench/uid.lua's,
    unless uid_mix is false) from wrk's output."""

    def find(pattern):
        return re.search(pattern, text, re.MULTILINE)

    rps = find(r"^Requests/sec:\s+([\d.]+)")
    p50 = find(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\b")
    p99 = find(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\b")
    total = find(r"^\s+(\d+) requests in")
    mix = find(r"^uid-mix: s1=(\d+) s2=(\d+) s3=(\d+) rr=(\d+)")
    if not (rps and p50 and p99 and total and (mix or not uid_mix)):
        raise RuntimeError(f"cannot parse wrk output:\n{text}")
    non2xx = find(r"Non-2xx or 3xx responses: (\d+)")
    socket = find(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
    )
    return {
        "rps": float(rps.group(1)),
        "p50_ms": _ms(*p50.groups()),
        "p99_ms": _ms(*p99.groups()),
        "requests": int(total.group(1)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, socket.groups())) if socket else 0,
        # the uid mix of bench/uid.lua, if it drove the load
        "sent": dict(zip(("s1", "s2", "s3", "rr"), map(int, mix.groups())))
        if mix
        else None,
    }


def run_wrk(args, port, seconds):
    argv = [
        args.wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(BENCH / "uid.lua"),
        f"http://127.0.0.1:{port}/",
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 30, cwd=BENCH
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"wrk failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


# --- where the traffic went -----------------------------------------------


def site_hits(settings):
    """Requests each site has served so far (two bytes per line in its log)."""
    hits = {"s1": 0, "s2": 0, "s3": 0}
    for key, port in settings.site_ports.items():
        log = settings.workdir / "sites" / f"hits-{port}.log"
        hits[key[:2]] += log.stat().st_size // 2 if log.exists() else 0
    return hits


def check_mix(name, sent, hits):
    """Compare the sites' share of the load with what the uids asked for."""
    rr = sent["rr"] / 3
    wanted = {s: sent[s] + rr for s in ("s1", "s2", "s3")}
    total_wanted, total_seen = sum(wanted.values()), sum(hits.values())
    if total_seen == 0:
        raise RoutingError(f"{name}: no request reached a site under load")
    shares = {s: hits[s] / total_seen for s in hits}
    expected = {s: wanted[s] / total_wanted for s in wanted}
    for s in shares:
        if abs(shares[s] - expected[s]) > MIX_TOLERANCE:
            raise RoutingError(
                f"{name}: under load {s} got {shares[s]:.1%} of the traffic, "
                f"the uids "
                f"ask for {expected[s]:.1%} (fallback route or wrong routing?)"
            )
    return shares, expected, total_seen / total_wanted


# --- one measurement ------------------------------------------------------


def measure(args, gateway, settings):
    with gateways.running(gateway, settings) as live:
        wait_routing(gateway.port, settings.site_ports)
        probe(gateway.port, args.workers, settings.site_ports)
        if args.warmup > 0:
            parse_wrk(run_wrk(args, gateway.port, args.warmup))
        time.sleep(FLUSH_WAIT)
        hits_before = site_hits(settings)
        nginx_groups = {live.nginx.pgid}
        helper_groups = {h.pgid for h in live.helpers}
        cpu_before = (
            procs.cpu_seconds(nginx_groups),
            procs.cpu_seconds(helper_groups),
        )
        started = time.monotonic()
        result = parse_wrk(run_wrk(args, gateway.port, args.duration))
        elapsed = time.monotonic() - started
        cpu_after = (
            procs.cpu_seconds(nginx_groups),
            procs.cpu_seconds(helper_groups),
        )
        time.sleep(FLUSH_WAIT)
        hits_after = site_hits(settings)
    hits = {s: hits_after[s] - hits_before[s] for s in hits_after}
    shares, expected, delivered = check_mix(gateway.name, result["sent"], hits)
    result.update(
        cpu_nginx_pct=100 * (cpu_after[0] - cpu_before[0]) / elapsed,
        cpu_helper_pct=100 * (cpu_after[1] - cpu_before[1]) / elapsed,
        site_hits=hits,
        site_share=shares,
        expected_share=expected,
        delivered=delivered,
    )
    return result


# --- summary and report ---------------------------------------------------


def summarise(runs, names):
    summary = {}
    for name in names:
        mine = [r for r in runs if r["gateway"] == name]
        if not mine:
            continue
        med = report.medians(
            mine,
            ("rps", "p50_ms", "p99_ms", "cpu_nginx_pct", "cpu_helper_pct"),
        )
        cpu = med["cpu_nginx_pct"] + med["cpu_helper_pct"]
        summary[name] = dict(
            med,
            runs=len(mine),
            rps_min=min(r["rps"] for r in mine),
            rps_max=max(r["rps"] for r in mine),
            requests=sum(r["requests"] for r in mine),
            non_2xx=sum(r["non_2xx"] for r in mine),
            socket_errors=sum(r["socket_errors"] for r in mine),
            rps_per_cpu=med["rps"] / (cpu / 100) if cpu > 0 else None,
        )
    base = summary.get(BASELINE)
    for row in summary.values():
        row["vs_map"] = row["rps"] / base["rps"] if base else None
    return summary


def table(summary):
    head = [
        "gateway",
        "req/s",
        "vs map",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "sock err",
        "nginx CPU %",
        "helper CPU %",
        "req per CPU-s",
        "runs",
    ]
    rows = [head, ["---"] * len(head)]
    for name, s in summary.items():
        rows.append(
            [
                name,
                f"{s['rps']:.0f}",
                f"{s['vs_map']:.2f}" if s["vs_map"] is not None else "-",
                f"{s['p50_ms']:.2f}",
                f"{s['p99_ms']:.2f}",
                str(s["non_2xx"]),
                str(s["socket_errors"]),
                f"{s['cpu_nginx_pct']:.0f}",
                f"{s['cpu_helper_pct']:.0f}",
                f"{s['rps_per_cpu']:.0f}" if s["rps_per_cpu"] else "-",
                str(s["runs"]),
            ]
        )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def machine(args):
    return report.machine(nginx=args.nginx, wrk=args.wrk)


def write_chart(summary, path, subtitle):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    rps = [summary[n]["rps"] for n in names]
    low = [summary[n]["rps"] - summary[n]["rps_min"] for n in names]
    high = [summary[n]["rps_max"] - summary[n]["rps"] for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4.5))
    bars = ax.bar(
        names,
        rps,
        yerr=[low, high],
        capsize=4,
        color=["#888888" if n == BASELINE else "#1f77b4" for n in names],
    )
    for bar, name in zip(bars, names):
        s = summary[name]
        ax.annotate(
            f"p99 {s['p99_ms']:.1f} ms",
            (bar.get_x() + bar.get_width() / 2, s["rps_max"]),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.set_ylabel("requests/s (median, bar = min..max)")
    ax.set_title(f"Routing by uid through nginx\n{subtitle}", fontsize=9)
    ax.set_ylim(0, max(summary[n]["rps_max"] for n in names) * 1.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(args, out, summary, runs, skipped, failed, info, started):
    out.mkdir(parents=True, exist_ok=True)
    command = report.command(__spec__.name)
    load = (
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"--latency "
        f"-s bench/uid.lua; {args.runs} interleaved run(s) per gateway after "
        f"a "
        f"{args.warmup}s warm-up; nginx worker_processes {args.workers}; "
        f"sites: one nginx instance, {args.site_workers} worker(s)"
    )
    notes = [f"- {name}: {why}" for name, why in {**skipped, **failed}.items()]
    md = [
        "# Peer benchmark: routing by uid through nginx",
        "",
        f"Command: `{command}`  ",
        f"Date: {started}  ",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux "
        f"{info['kernel']}, "
        f"{info['nginx']}, {info['wrk']}, Python {info['python']}  ",
        f"Load: {load}",
        "",
        table(summary) if summary else "(no gateway measured)",
        "",
        "req/s, p50, p99 and CPU are medians over the runs; non-2xx and "
        "socket "
        "errors are totals. CPU is in % of one core: nginx (master, workers "
        "and "
        'their children) and the helper service of the peer. "vs map" is the '
        "ratio to the plain-nginx map, the ceiling.",
    ]
    if notes:
        md += ["", "Not measured:", "", *notes]
    md += ["", "![requests per second](peers.png)", ""]
    report.write(
        out,
        "peers",
        "\n".join(md),
        {
            "command": command,
            "date": started,
            "machine": info,
            "load": load,
            "settings": {
                k: getattr(args, k)
                for k in (
                    "duration",
                    "runs",
                    "warmup",
                    "threads",
                    "connections",
                    "workers",
                    "site_workers",
                )
            },
            "summary": summary,
            "runs": runs,
            "skipped": skipped,
            "failed": failed,
        },
    )
    chart = out / "peers.png"
    if summary:
        write_chart(
            summary,
            chart,
            f"{info['nproc']} CPUs, wrk -c{args.connections}, "
            f"{args.workers} nginx worker(s), {args.runs} run(s) x "
            f"{args.duration}s",
        )
    elif chart.exists():
        # never leave a chart of an earlier run next to this report
        chart.unlink()


# --- main -----------------------------------------------------------------


def modules_dir(nginx):
    """Where this nginx looks for dynamic modules (from its configure line)."""
    done = subprocess.run(
        [nginx, "-V"], capture_output=True, text=True, timeout=10
    )
    match = re.search(r"--modules-path=(\S+)", done.stderr + done.stdout)
    if not match:
        sys.exit("cannot find nginx's --modules-path; pass --modules-dir")
    return match.group(1)


def parse_args():
    p = argparse.ArgumentParser(
        description="Benchmark the gateway against its peers."
    )
    p.add_argument(
        "--duration", type=int, default=10, help="seconds of load per run"
    )
    p.add_argument("--runs", type=int, default=3, help="interleaved rounds")
    p.add_argument(
        "--warmup", type=int, default=2, help="seconds of load before each run"
    )
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="nginx worker_processes of gateways",
    )
    p.add_argument(
        "--site-workers",
        type=int,
        default=1,
        help="nginx workers of the sites",
    )
    p.add_argument(
        "--site-port",
        type=int,
        default=3450,
        help="first of the four site ports (s1, s1, s2, s3)",
    )
    p.add_argument("--only", help="comma-separated gateway names")
    p.add_argument(
        "--out",
        default=str(BENCH / "results"),
        help="directory for the report",
    )
    p.add_argument("--nginx", default="nginx")
    p.add_argument("--wrk", default="wrk")
    p.add_argument(
        "--modules-dir", help="nginx dynamic modules (default: from nginx -V)"
    )
    return p.parse_args()


def main():
    args = parse_args()
    for tool in (args.nginx, args.wrk):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found")
    # A plain kill should still run the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    started = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    info = machine(args)

    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    try:
        summary, runs, skipped, failed = bench(args, workdir)
    except GatewayError as e:
        sys.exit(f"*** FAIL: {e}")
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.out)
    write_report(args, out, summary, runs, skipped, failed, info, started)
    print(
        f"\nwrote {out / 'peers.md'}, peers.json"
        + (", peers.png" if summary else "")
    )
    if failed:
        sys.exit(
            f"FAILED: {', '.join(failed)} routed wrongly or did not start "
            f"(see above)"
        )


def bench(args, workdir, chosen=None):
    """Every round over every gateway (or the (name, gateway) pairs chosen);
    returns summary, runs, skipped, failed."""
    workdir.chmod(0o755)  # nginx workers and helpers may run as other users
    base = args.site_port
    settings = gateways.Settings(
        workdir=workdir,
        nginx=args.nginx,
        modules=args.modules_dir or modules_dir(args.nginx),
        workers=args.workers,
        site_ports={
            "s1a": base,
            "s1b": base + 1,
            "s2": base + 2,
            "s3": base + 3,
        },
    )

    if chosen is None:
        chosen = gateways.all_gateways(workdir)
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - {name for name, _ in chosen}
        if unknown:
            sys.exit(f"unknown gateway(s): {', '.join(sorted(unknown))}")
        chosen = [(n, g) for n, g in chosen if n in wanted]
    skipped = {}
    for name, gateway in chosen:
        if gateway is None:
            skipped[name] = "not built, skipped"
            print(f"{name}: not built, skipped")
    active = [g for _, g in chosen if g is not None]

    runs, failed = [], {}
    with gateways.running(
        gateways.sites_gateway(settings), settings, workers=args.site_workers
    ):
        for round_no in range(1, args.runs + 1):
            for gateway in list(active):
                print(
                    f"round {round_no}/{args.runs}: {gateway.name} ...",
                    end=" ",
                    flush=True,
                )
                try:
                    result = measure(args, gateway, settings)
                except (RoutingError, GatewayError) as e:
                    print(
                        f"\n\n*** FAIL: {gateway.name}: {e}\n",
                        file=sys.stderr,
                        flush=True,
                    )
                    lines = [
                        line for line in str(e).splitlines() if line.strip()
                    ]
                    failed[gateway.name] = "FAILED: " + " ".join(
                        lines[:1] + lines[1:][-1:]
                    )
                    active.remove(gateway)
                    continue
                result.update(gateway=gateway.name, round=round_no)
                runs.append(result)
                print(
                    f"{result['rps']:.0f} req/s, p99 {result['p99_ms']:.2f} ms"
                )

    order = [
        g.name for _, g in chosen if g is not None and g.name not in failed
    ]
    summary = summarise(runs, order)
    print()
    print(table(summary) if summary else "(no gateway measured)")
    for name, why in {**skipped, **failed}.items():
        print(f"{name}: {why}")
    return summary, runs, skipped, failed


def bench_these(args, chosen_for, check=None):
    """peers_bench's rounds over the (name, gateway) pairs chosen_for(workdir)
    gives, in a work directory of their own; check(args, workdir) runs
    first.  For the scripts that compare variants of one gateway.
    Returns (summary, runs, machine info, start time)."""
    args.only = None
    started = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    info = machine(args)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    workdir.chmod(0o755)  # nginx workers may run as another user
    try:
        chosen = chosen_for(workdir)
        if any(g is None for _, g in chosen):
            sys.exit("build the module first: make build-l7")
        if check is not None:
            check(args, workdir)
        summary, runs, _, failed = bench(args, workdir, chosen)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        sys.exit(f"FAILED: {failed}")
    return summary, runs, info, started


def report_head(title, command, args, info, started):
    """The first lines of a comparison's report: what ran, when, where."""
    return [
        f"# {title}",
        "",
        f"Command: `{command}`  ",
        f"Date: {started}  ",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux "
        f"{info['kernel']}, "
        f"{info['nginx']}, {info['wrk']}  ",
        f"Load: wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"-s bench/uid.lua, {args.runs} interleaved run(s) after "
        f"{args.warmup}s "
        f"of warm-up, {args.workers} nginx worker(s), 1 Python worker",
        "",
    ]


if __name__ == "__main__":
    main()
