"""Any concurrency, no wrong answer: this gateway beside plain nginx `map`
under HTTP/1.1 (wrk, 1, 64 and 512 connections) and HTTP/2 (h2load, 64
connections of 10 streams and 8 of 100), at 1, 2 and 4 nginx workers
(with as many Python workers).

    python -m bench.concurrency_bench [--runs 3] [--duration 10] [--out DIR]
        [--configs 1,2,4] [--loads c1,c64,c512,h2_64x10,h2_8x100]
        [--port 3020] [--site-port 3450] [--keepalive 1024]

Every round starts each gateway once per config and runs every load on
it, map and mosn back to back, so a noisy minute hurts both alike; the
report gives medians over the rounds.  For each run: req/s, p50 and p99,
CPU per request (nginx and its Python workers together, from /proc),
where the sites say the traffic went, and from the region's counters the
requests that took the fallback, waited in nginx (queued), and the
wake-ups per request.  Every row shows its target and whether it is met.
Writes concurrency.md and concurrency.json into --out (bench/results).
"""

import argparse
import dataclasses
import datetime
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import gateways, procs, report
from bench import peers_bench as run

H2_PORT_OFFSET = 100

# (name, tool, connections, streams per connection, wrk threads)
LOADS = {
    "c1": ("wrk", 1, 1, 1),
    "c64": ("wrk", 64, 1, 2),
    "c512": ("wrk", 512, 1, 2),
    "h2_64x10": ("h2load", 64, 10, 2),
    "h2_8x100": ("h2load", 8, 100, 2),
}
LOAD_TEXT = {
    "c1": "HTTP/1.1, wrk, 1 connection",
    "c64": "HTTP/1.1, wrk, 64 connections",
    "c512": "HTTP/1.1, wrk, 512 connections",
    "h2_64x10": "HTTP/2, h2load -c 64 -m 10 (640 streams)",
    "h2_8x100": "HTTP/2, h2load -c 8 -m 100 (800 streams)",
}

RING_COUNTERS = (
    "submitted",
    "fallbacks",
    "queued",
    "queue_full",
    "timeouts",
    "futex_wakes",
    "doorbells",
)


def with_h2(gateway, workers, port, keepalive):
    """The gateway on port with an HTTP/2 listener beside its HTTP/1.1
    one, as many Python workers as nginx workers, and ``keepalive``
    idle connections kept per upstream."""
    template = re.sub(
        r"\bkeepalive \d+;", f"keepalive {keepalive};", gateway.template
    )
    template = template.replace(
        "listen 127.0.0.1:@port;",
        "listen 127.0.0.1:@port;\n        listen 127.0.0.1:@h2port http2;"
        "\n        http2_max_concurrent_streams 128;",
    )
    template = template.replace("mosn_workers 1;", f"mosn_workers {workers};")
    extra = dict(gateway.extra, h2port=str(port + H2_PORT_OFFSET))
    if "shm" in extra:
        extra["shm"] = f"mosn_conc{port}_{workers}"
    return dataclasses.replace(
        gateway, template=template, extra=extra, ports=[port]
    )


def ring_counters(shm):
    from shm_ring import Region

    region = Region.attach("/" + shm)
    try:
        stats = region.stats()
    finally:
        region.close()
    return {k: sum(p[k] for p in stats["producers"]) for k in RING_COUNTERS}


def parse_h2load(text, log_path):
    def grab(pattern):
        import re

        m = re.search(pattern, text, re.MULTILINE)
        if not m:
            raise RuntimeError(f"cannot parse h2load output:\n{text}")
        return m

    rps = float(grab(r"finished in [\d.]+\w+, ([\d.]+) req/s").group(1))
    m = grab(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) "
        r"succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
    )
    done, ok, failed, errored, timeout = map(int, m.groups()[1:])
    codes = grab(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
    lat = []
    with open(log_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                lat.append(int(parts[2]))
    lat.sort()
    pick = (
        (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0)
        if lat
        else (lambda q: float("nan"))
    )
    return {
        "rps": rps,
        "requests": done,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        # not done - 2xx: with -D the two counts differ by the
        # requests in flight at the end
        "non_2xx": sum(map(int, codes.groups())),
        "codes_counted": True,
        "socket_errors": failed + errored + timeout,
    }


def run_load(args, load, gateway, workdir):
    tool, conns, streams, threads = LOADS[load]
    if tool == "wrk":
        argv = [
            args.wrk,
            f"-t{threads}",
            f"-c{conns}",
            f"-d{args.duration}s",
            "--latency",
            "-s",
            str(gateways.BENCH / "uid.lua"),
            f"http://127.0.0.1:{gateway.port}/",
        ]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=args.duration + 60,
            cwd=gateways.BENCH,
        )
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed: {done.stderr}")
        return run.parse_wrk(done.stdout)
    log = workdir / "h2load.log"
    argv = [
        args.h2load,
        "-c",
        str(conns),
        "-m",
        str(streams),
        "-t",
        str(threads),
        "-D",
        str(args.duration),
        "--warm-up-time",
        "1",
        "-H",
        "uid: 150",
        "--log-file",
        str(log),
        f"http://127.0.0.1:{gateway.port + H2_PORT_OFFSET}/",
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=args.duration + 60
    )
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed: {done.stdout}{done.stderr}")
    result = parse_h2load(done.stdout, log)
    result["sent"] = {"s1": 0, "s2": result["requests"], "s3": 0, "rr": 0}
    return result


def measure(args, gateway, loads, settings, workers):
    """Starts the gateway once and runs every load on it."""
    out = {}
    with gateways.running(gateway, settings, workers=workers) as live:
        run.wait_routing(gateway.port, settings.site_ports)
        run.probe(gateway.port, workers, settings.site_ports)
        shm = gateway.extra.get("shm")
        for load in loads:
            if LOADS[load][0] == "wrk" and args.warmup:
                saved = args.duration
                args.duration = args.warmup
                run_load(args, load, gateway, settings.workdir)
                args.duration = saved
            time.sleep(run.FLUSH_WAIT)
            hits0 = run.site_hits(settings)
            ring0 = ring_counters(shm) if shm else None
            cpu0 = procs.cpu_seconds({live.nginx.pgid})
            t0 = time.monotonic()
            result = run_load(args, load, gateway, settings.workdir)
            elapsed = time.monotonic() - t0
            cpu = procs.cpu_seconds({live.nginx.pgid}) - cpu0
            time.sleep(run.FLUSH_WAIT)
            hits = {
                s: v - hits0[s] for s, v in run.site_hits(settings).items()
            }
            if shm:
                ring1 = ring_counters(shm)
                result["ring"] = {k: ring1[k] - ring0[k] for k in ring1}
            # h2load's -D counts the warm-up's requests out; CPU covers it
            served = sum(hits.values())
            result.update(
                cpu_pct=100 * cpu / elapsed,
                cpu_us_per_req=1e6 * cpu / max(1, served),
                site_hits=hits,
            )
            try:
                run.check_mix(gateway.name, result["sent"], hits)
                result["routed_ok"] = True
            except run.RoutingError as e:
                result["routed_ok"] = False
                result["routing_error"] = str(e)
            out[load] = result
            print(
                f"  {load}: {gateway.name} {result['rps']:.0f} req/s, "
                f"p99 {result['p99_ms']:.2f} ms, "
                f"{result['cpu_us_per_req']:.0f} us CPU/req"
                + (f", ring {result['ring']}" if shm else ""),
                flush=True,
            )
    return out


def target(load, workers, row, base):
    """(what the row must show, met?) for this gateway's row."""
    ring = row["ring"]
    clean = ring["fallbacks"] == 0 and not row["non_2xx"] and row["routed_ok"]
    text = "0 fallbacks"
    met = clean
    if load == "h2_64x10":
        text = ">= 0.90x map req/s, 0 fallbacks"
        met = clean and row["vs_map"] >= 0.90
    elif load == "c1":
        text = "CPU/req <= 1.30x map, 0 fallbacks"
        met = clean and row["cpu_vs_map"] <= 1.30
    return text, met


def summarise(runs):
    """Medians per (config, load, gateway)."""
    keys = sorted(
        {(r["workers"], r["load"], r["gateway"]) for r in runs},
        key=lambda k: (k[0], list(LOADS).index(k[1]), k[2]),
    )
    rows = {}
    for key in keys:
        mine = [
            r for r in runs if (r["workers"], r["load"], r["gateway"]) == key
        ]
        med = report.medians(
            mine, ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "cpu_pct")
        )
        med.update(
            runs=len(mine),
            non_2xx=(
                None
                if any(r["non_2xx"] is None for r in mine)
                else sum(r["non_2xx"] for r in mine)
            ),
            socket_errors=sum(r["socket_errors"] for r in mine),
            routed_ok=all(r["routed_ok"] for r in mine),
        )
        if "ring" in mine[0]:
            med["ring"] = {
                k: sum(r["ring"][k] for r in mine) for k in RING_COUNTERS
            }
            med["wakeups_per_req"] = statistics.median(
                (r["ring"]["futex_wakes"] + r["ring"]["doorbells"])
                / max(1, r["ring"]["submitted"])
                for r in mine
            )
        # the ratio of medians and, per round, the median of ratios
        rows[key] = med
    for (workers, load, gw), row in rows.items():
        base = rows.get((workers, load, "map"))
        if base and gw != "map":
            row["vs_map"] = row["rps"] / base["rps"]
            row["cpu_vs_map"] = row["cpu_us_per_req"] / base["cpu_us_per_req"]
            row["target"], row["met"] = target(load, workers, row, base)
    return rows


def table(rows):
    head = [
        "nginx + Python workers",
        "load",
        "gateway",
        "req/s",
        "vs map",
        "p50 ms",
        "p99 ms",
        "CPU us/req",
        "CPU vs map",
        "non-2xx",
        "fallbacks",
        "queued",
        "wake-ups/req",
        "target",
        "met",
    ]
    out = [head, ["---"] * len(head)]
    for (workers, load, gw), r in rows.items():
        ring = r.get("ring")
        out.append(
            [
                f"{workers} + {workers}" if gw != "map" else f"{workers} + -",
                LOAD_TEXT[load],
                gw,
                f"{r['rps']:.0f}",
                f"{r['vs_map']:.2f}" if "vs_map" in r else "1.00",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['cpu_us_per_req']:.0f}",
                f"{r['cpu_vs_map']:.2f}" if "cpu_vs_map" in r else "1.00",
                "?" if r["non_2xx"] is None else str(r["non_2xx"]),
                str(ring["fallbacks"]) if ring else "-",
                str(ring["queued"]) if ring else "-",
                f"{r['wakeups_per_req']:.2f}" if ring else "-",
                r.get("target", "-"),
                ("yes" if r["met"] else "**no**") if "met" in r else "-",
            ]
        )
    return "\n".join("| " + " | ".join(c) + " |" for c in out)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--configs",
        default="1,2,4",
        help="nginx workers (as many Python workers)",
    )
    p.add_argument("--loads", default=",".join(LOADS))
    p.add_argument("--out", default=str(gateways.BENCH / "results"))
    p.add_argument(
        "--port",
        type=int,
        default=3020,
        help="map listens here, this gateway one above; HTTP/2 100 above each",
    )
    p.add_argument(
        "--keepalive",
        type=int,
        default=1024,
        help="idle connections each gateway keeps per upstream (nginx's "
        "keepalive): at least the requests in flight, else both close and "
        "reopen connections under load",
    )
    p.add_argument("--site-port", type=int, default=3450)
    p.add_argument("--site-workers", type=int, default=1)
    p.add_argument("--nginx", default="/usr/sbin/nginx")
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    p.add_argument("--h2load", default=shutil.which("h2load") or "h2load")
    p.add_argument("--modules-dir", default=None)
    p.add_argument(
        "--render",
        metavar="JSON",
        help="write the report again from a concurrency.json",
    )
    return p.parse_args()


def render(args):
    """The report again from a run's JSON.  Runs of h2load recorded before
    its status codes were counted have no non-2xx count."""
    doc = json.loads(Path(args.render).read_text())
    for r in doc["runs"]:
        if LOADS[r["load"]][0] == "h2load" and not r.get("codes_counted"):
            r["non_2xx"] = None
    rows = summarise(doc["runs"])
    # runs recorded before --keepalive had nginx's 64 of bench/peers
    args.keepalive = doc.get("keepalive", 64)
    write_report(
        args,
        doc["command"],
        doc["date"],
        doc["machine"],
        doc["load_average"],
        rows,
        doc["runs"],
        doc.get("duration", 8),
        doc.get("warmup", 2),
        doc.get("rounds", 3),
    )


def main():
    args = parse_args()
    if args.render:
        return render(args)
    configs = [int(c) for c in args.configs.split(",")]
    loads = args.loads.split(",")
    started = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    args.threads, args.connections = 2, 64  # for run.machine()
    info = run.machine(args)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-conc-"))
    workdir.chmod(0o755)
    runs = []
    try:
        settings = gateways.Settings(
            workdir=workdir,
            nginx=args.nginx,
            modules=args.modules_dir or run.modules_dir(args.nginx),
            workers=1,
            site_ports={
                "s1a": args.site_port,
                "s1b": args.site_port + 1,
                "s2": args.site_port + 2,
                "s3": args.site_port + 3,
            },
        )
        mosn = gateways.mosn_gateway(workdir)
        if mosn is None:
            sys.exit("build the module first: make build-l7")
        plain = [
            g
            for g in gateways.peer_gateways(workdir)
            if g.name == run.BASELINE
        ][0]
        with gateways.running(
            gateways.sites_gateway(settings),
            settings,
            workers=args.site_workers,
        ):
            for round_no in range(1, args.runs + 1):
                for workers in configs:
                    order = [plain, mosn] if round_no % 2 else [mosn, plain]
                    for base in order:
                        gw = with_h2(
                            base,
                            workers,
                            args.port + (base is mosn),
                            args.keepalive,
                        )
                        print(
                            f"round {round_no}/{args.runs}, {workers} "
                            f"worker(s): {gw.name}",
                            flush=True,
                        )
                        for load, res in measure(
                            args, gw, loads, settings, workers
                        ).items():
                            res.update(
                                gateway=gw.name,
                                load=load,
                                workers=workers,
                                round=round_no,
                            )
                            runs.append(res)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    rows = summarise(runs)
    command = report.command(__spec__.name)
    write_report(
        args,
        command,
        started,
        info,
        [load_before, load_after],
        rows,
        runs,
        args.duration,
        args.warmup,
        args.runs,
    )


def write_report(
    args, command, started, info, loadavg, rows, runs, duration, warmup, rounds
):
    load_before, load_after = loadavg
    h2 = subprocess.run(
        [args.h2load, "--version"], capture_output=True, text=True
    ).stdout.split()[-1]
    lines = [
        "# Any concurrency, no wrong answer",
        "",
        f"Command: `{command.strip()}`  ",
        f"Date: {started}  ",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux "
        f"{info['kernel']}, {info['nginx']}, {info['wrk']}, "
        f"h2load {h2}, "
        f"Python {info['python']}  ",
        f"Load average: {' '.join(load_before)} before, "
        f"{' '.join(load_after)} after (the machine is shared)  ",
        f"Each run: {duration} s measured ({warmup} s wrk warm-up, "
        f"1 s h2load warm-up), {rounds} round(s); map and mosn back to "
        "back in each round, in alternating order; medians.",
        "",
        table(rows),
        "",
        "- The routing is the example's (UNIT on `uid`): wrk sends "
        "`bench/uid.lua`'s mix, h2load `uid: 150` (site s2); the sites' own "
        "hit counts must match what was sent, so a request that took the "
        "fallback (routed to `any`) shows.",
        "- CPU us/req: user + system CPU of nginx and its descendants (the "
        "Python workers) over the measured window, per request the sites "
        "served. wrk, h2load and the sites run on the same cores and are "
        "not counted.",
        "- fallbacks, queued: the region's counters over the measured "
        "windows of all rounds: requests that took `mosn_fallback`, and "
        "requests that waited in nginx for a slot (`mosn_slots` 256).",
        f"- Upstreams: both gateways keep `keepalive {args.keepalive}` "
        "idle connections per upstream (--keepalive). A pool smaller than "
        "the requests in flight closes connections as load ebbs and opens "
        "them again as it flows, and this gateway's load flows in batches "
        "(a batch of verdicts resumes its requests together): at 640 "
        "HTTP/2 streams and `keepalive 64` it paid for that with about 40 "
        "us of CPU per request more than map.",
        "- wake-ups/req: futex wake-ups of sleeping Python workers plus "
        "doorbells to sleeping nginx workers, per request.",
        "- non-2xx: responses other than 2xx over all rounds; `?` where "
        "the run did not count them (h2load rows of runs made before the "
        "script read h2load's status codes).",
        "",
    ]
    report.write(
        args.out,
        "concurrency",
        "\n".join(lines),
        {
            "command": command,
            "date": started,
            "machine": info,
            "load_average": [load_before, load_after],
            "duration": duration,
            "warmup": warmup,
            "rounds": rounds,
            "keepalive": args.keepalive,
            "rows": [
                dict(workers=k[0], load=k[1], gateway=k[2], **v)
                for k, v in rows.items()
            ],
            "runs": runs,
        },
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
