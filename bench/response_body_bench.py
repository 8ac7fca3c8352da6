"""What reading and rewriting a response body costs, beside the peers.

A 4 KiB JSON document whose "card" field a filter masks, through six
gateways: this project's sender filter with the body
(`mosn_response_body on`), the same chain without body access (it sees the
headers only and changes nothing), njs `js_body_filter` and Lua
`body_filter_by_lua_block` doing the same redaction, nginx proxying the
document untouched (the ceiling), and this project's filter once more with
a plain search instead of a regular expression (what the filter's own scan
costs).  wrk on "/", interleaved rounds, medians;
the report is the "Response bodies" section of bench/results/response.md
(the rest of that file is bench/response_bench.py's) and response_body.json.

    python -m bench.response_body_bench [--runs 5] [--duration 10]
"""

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import bench.report
from bench import gateways, procs
from bench import peers_bench as run

BENCH = Path(__file__).resolve().parent
PORT = 3001  # the gateways listen on --port, + 1, ...
SECTION = "## Response bodies"
CARD = "4111-1111-1111-1111"
SIZE = 4096

ABOUT = {
    "plain": "nginx proxies the document untouched: the ceiling",
    "mosn_headers": "this project, a chain of one sender filter, "
    "mosn_response_body off: headers only, body unchanged",
    "mosn_body": "the same chain with mosn_response_body on: the filter "
    "masks the card in Python (re.sub)",
    "mosn_body_only": "as mosn_body, with mosn_request_phase off: the "
    "response alone goes to Python, one round trip "
    "instead of two",
    "njs_body": "njs js_body_filter gathers the body, masks the card "
    "(String.replace)",
    "lua_body": "body_filter_by_lua_block gathers the body, masks the card "
    "(ngx.re.sub, PCRE JIT)",
    "mosn_body_find": "as mosn_body, the card found with bytes.find "
    "instead of a regular expression: what the filter's "
    "own scan costs",
}
REDACTS = {
    "mosn_body",
    "mosn_body_only",
    "njs_body",
    "lua_body",
    "mosn_body_find",
}


def document():
    """SIZE bytes of compact JSON with one "card" field."""
    items = []
    doc = {
        "id": 7,
        "user": {"name": "Ada Lovelace", "email": "ada@example.com"},
        "card": CARD,
        "items": items,
        "pad": "",
    }
    n = 0
    while len(json.dumps(doc, separators=(",", ":"))) < SIZE - 100:
        n += 1
        items.append(
            {
                "sku": "sku-%04d" % n,
                "name": "item number %d" % n,
                "qty": n % 7 + 1,
                "price": "%d.%02d" % (n * 3, n % 100),
            }
        )
    doc["pad"] = "x" * (SIZE - len(json.dumps(doc, separators=(",", ":"))))
    text = json.dumps(doc, separators=(",", ":"))
    assert len(text) == SIZE
    return text


def redacted(text):
    return text.replace('"card":"%s"' % CARD, '"card":"****"', 1)


def chosen(workdir, port=PORT):
    """(name, Gateway) of the seven, in the report's order, on port, port +
    1, ..."""
    # no admin or metrics ports: nothing here may collide with a gateway
    # running beside the benchmark
    config = {
        "servers": [
            {
                "default_log_path": "logs/mosn-err.log",
                "default_log_level": "WARN",
                "listeners": [
                    {
                        "name": "bodyListener",
                        "stream_filters": [
                            {"type": "bench_redact", "module": "senders"}
                        ],
                    },
                    {
                        "name": "findListener",
                        "stream_filters": [
                            {"type": "bench_redact_find", "module": "senders"}
                        ],
                    },
                ],
            }
        ]
    }
    mosn_config = Path(workdir) / "mosn_body.json"
    mosn_config.write_text(json.dumps(config, indent=2))
    peers = str(gateways.PEERS)
    out = []
    for i, (name, template, extra) in enumerate(
        [
            ("plain", "body_plain.conf", {}),
            ("mosn_headers", "body_mosn.conf", {"response_body": "off"}),
            ("mosn_body", "body_mosn.conf", {"response_body": "on"}),
            (
                "mosn_body_only",
                "body_mosn.conf",
                {"response_body": "on", "request_phase": "off"},
            ),
            ("njs_body", "body_njs.conf", {"peers": peers}),
            ("lua_body", "body_lua.conf", {}),
            (
                "mosn_body_find",
                "body_mosn.conf",
                {"response_body": "on", "chain": "findListener"},
            ),
        ]
    ):
        env = {}
        if template == "body_mosn.conf":
            extra = dict(
                {"chain": "bodyListener", "request_phase": "on"},
                **extra,
                repo=str(gateways.REPO),
                python=sys.executable,
                mosn_config=str(mosn_config),
                shm="mosn_bench_" + name,
            )
            env = {"PYTHONPATH": str(BENCH)}
        out.append(
            (
                name,
                gateways.Gateway(
                    name=name,
                    about=ABOUT[name],
                    ports=[port + i],
                    template=(gateways.PEERS / template).read_text(),
                    extra=extra,
                    env=env,
                ),
            )
        )
    return out


def site(settings, text):
    path = settings.workdir / "document.json"
    path.write_text(text)
    path.chmod(0o644)
    return gateways.Gateway(
        name="json_site",
        about="the 4 KiB document",
        ports=[settings.site_ports["json"]],
        template=(gateways.PEERS / "body_site.conf").read_text(),
        extra={"root": str(settings.workdir)},
    )


def check(name, port, text, prefix):
    """The gateway answers with the document, masked where it should be,
    and this project's filters ran: no fallback in its error log."""
    want = redacted(text) if name in REDACTS else text
    log = prefix / "error.log"
    deadline = time.monotonic() + 3 * gateways.START_TIMEOUT
    got = None
    while time.monotonic() < deadline:
        seen = log.stat().st_size if log.exists() else 0
        try:
            with urllib.request.urlopen(
                "http://127.0.0.1:%d/" % port, timeout=3
            ) as resp:
                got = resp.read().decode()
        except OSError:
            got = None
        # right, and not by a fallback (the pool may still be starting)
        said = log.read_bytes()[seen:] if log.exists() else b""
        if got == want and b"mosn:" not in said:
            return
        time.sleep(0.2)
    sys.exit(
        f"{name}: wrong answer or no filters: {got!r:.200}\n"
        f"{log.read_text(errors='replace')[-2000:]}"
    )


def wrk(args, port, seconds):
    done = subprocess.run(
        [
            args.wrk,
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{seconds}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr.strip()}")
    return run.parse_wrk(done.stdout, uid_mix=False)


def measure(args, gateway, settings, text):
    prefix = settings.workdir / gateway.name
    with gateways.running(gateway, settings) as live:
        check(gateway.name, gateway.port, text, prefix)
        if args.warmup > 0:
            wrk(args, gateway.port, args.warmup)
        groups = {live.nginx.pgid}
        before = procs.gateway_cpu(groups)
        started = time.monotonic()
        result = wrk(args, gateway.port, args.duration)
        elapsed = time.monotonic() - started
        after = procs.gateway_cpu(groups)
        used = {k: after[k] - before[k] for k in after}
        result["cpu_pct"] = 100 * sum(used.values()) / elapsed
        # CPU microseconds per request, nginx's and Python's
        for role, seconds in used.items():
            result[f"{role}_us"] = 1e6 * seconds / max(result["requests"], 1)
        # still right after the load
        check(gateway.name, gateway.port, text, prefix)
    return result


def summarise(runs, names):
    summary = {}
    for name in names:
        mine = [r for r in runs if r["gateway"] == name]
        med = bench.report.medians(
            mine,
            ("rps", "p50_ms", "p99_ms", "cpu_pct", "nginx_us", "python_us"),
        )
        summary[name] = dict(
            med,
            runs=len(mine),
            rps_min=min(r["rps"] for r in mine),
            rps_max=max(r["rps"] for r in mine),
            non_2xx=sum(r["non_2xx"] for r in mine),
            socket_errors=sum(r["socket_errors"] for r in mine),
            rps_per_cpu=med["rps"] / (med["cpu_pct"] / 100)
            if med["cpu_pct"] > 0
            else None,
        )
    return summary


def table(summary):
    lua = summary["lua_body"]["rps"]
    rows = [
        [
            "gateway",
            "req/s (min-max)",
            "vs lua_body",
            "p50 ms",
            "p99 ms",
            "non-2xx",
            "sock err",
            "gateway CPU %",
            "nginx CPU us/req",
            "Python CPU us/req",
            "runs",
        ]
    ]
    rows.append(["---"] * len(rows[0]))
    for name, s in summary.items():
        rows.append(
            [
                name,
                "%.0f (%.0f-%.0f)" % (s["rps"], s["rps_min"], s["rps_max"]),
                "%.2f" % (s["rps"] / lua),
                "%.2f" % s["p50_ms"],
                "%.2f" % s["p99_ms"],
                str(s["non_2xx"]),
                str(s["socket_errors"]),
                "%.0f" % s["cpu_pct"],
                "%.1f" % s["nginx_us"],
                "%.1f" % s["python_us"] if s["python_us"] else "-",
                str(s["runs"]),
            ]
        )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def report(args, summary, runs, info, started, load):
    command = bench.report.command(__spec__.name)
    body, heads, lua, only = (
        summary[n]
        for n in ("mosn_body", "mosn_headers", "lua_body", "mosn_body_only")
    )
    target = only["rps"] / lua["rps"]
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Date: {started}  ",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux "
        f"{info['kernel']}, {info['nginx']}, {info['wrk']}, Python "
        f"{info['python']}; load average before: {load[0]}, after: "
        f"{load[1]}  ",
        f"Load: wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"on one 4 KiB JSON document, {args.runs} interleaved run(s) after "
        f"{args.warmup}s of warm-up, {args.workers} nginx worker(s), 1 "
        f"Python worker",
        "",
        table(summary),
        "",
    ]
    lines += ["| gateway | what it does |", "| --- | --- |"]
    lines += [f"| `{name}` | {ABOUT[name]} |" for name in summary]
    lines += [
        "",
        "Every gateway's answer is checked before and after its load: the "
        "document, with the card masked by those that redact. Gateway CPU "
        "is that of its nginx and, for this project, its Python processes "
        "(not the upstream's, not wrk's); per request, the two apart. On a "
        "machine whose cores wrk and the upstream share, CPU per request is "
        "the figure that decides req/s.",
        "",
        "| body access | value |",
        "| --- | --- |",
        f"| req/s, `mosn_body_only` / `lua_body` (target >= 0.90) | "
        f"{target:.2f}x: {'met' if target >= 0.9 else 'NOT met'} |",
        f"| req/s, `mosn_body` / `lua_body` (both phases) | "
        f"{body['rps'] / lua['rps']:.2f}x |",
        f"| req/s, `mosn_body_only` / `mosn_body` (one round trip / two) | "
        f"{only['rps'] / body['rps']:.2f}x |",
        f"| req/s, `mosn_body_find` / `lua_body` | "
        f"{summary['mosn_body_find']['rps'] / lua['rps']:.2f}x |",
        f"| req/s, `mosn_body` / `njs_body` | "
        f"{body['rps'] / summary['njs_body']['rps']:.2f}x |",
        f"| req/s, with / without body access | "
        f"{body['rps'] / heads['rps']:.2f}x |",
        f"| p99 added by body access | "
        f"{(body['p99_ms'] - heads['p99_ms']) * 1000:.0f} us |",
        f"| p99, `mosn_body` - `lua_body` | "
        f"{(body['p99_ms'] - lua['p99_ms']) * 1000:.0f} us |",
    ]
    if body["rps_per_cpu"] and lua["rps_per_cpu"] and only["rps_per_cpu"]:
        lines.append(
            f"| CPU per request, `mosn_body` / `lua_body` | "
            f"{lua['rps_per_cpu'] / body['rps_per_cpu']:.2f}x |"
        )
        lines.append(
            f"| CPU per request, `mosn_body_only` / `lua_body` | "
            f"{lua['rps_per_cpu'] / only['rps_per_cpu']:.2f}x |"
        )
    find = summary["mosn_body_find"]
    lines += [
        f"| CPU per request, `mosn_body` - `lua_body` | nginx "
        f"{body['nginx_us'] - lua['nginx_us']:+.1f} us, Python "
        f"{body['python_us']:+.1f} us |",
        f"| Python CPU per request, the filter's `re.sub` (`mosn_body` - "
        f"`mosn_body_find`) | {body['python_us'] - find['python_us']:.1f} "
        f"us |",
        f"| Python CPU per request, body access (`mosn_body_find` - "
        f"`mosn_headers`) | {find['python_us'] - heads['python_us']:.1f} "
        f"us |",
        "",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "response.md"
    head = path.read_text() if path.exists() else ""
    if SECTION in head:
        head = head[: head.index(SECTION)]
    path.write_text(
        head.rstrip("\n") + "\n\n" + "\n".join(lines)
        if head.strip()
        else "\n".join(lines)
    )
    (out / "response_body.json").write_text(
        json.dumps(
            {
                "command": command,
                "date": started,
                "machine": info,
                "load_before": load[0],
                "load_after": load[1],
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print("\n".join(lines))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="nginx worker_processes of each gateway",
    )
    p.add_argument(
        "--port",
        type=int,
        default=PORT,
        help="the first gateway's port (five in a row)",
    )
    p.add_argument("--site-port", type=int, default=3460)
    p.add_argument("--only", help="comma-separated gateway names")
    p.add_argument("--out", default=str(BENCH / "results"))
    p.add_argument("--nginx", default="nginx")
    p.add_argument("--wrk", default="wrk")
    p.add_argument("--modules-dir")
    return p.parse_args()


def main():
    args = parse_args()
    if not (gateways.REPO / "output" / "ngx_http_mosn_module.so").is_file():
        sys.exit("build the module first: make build-l7")
    started = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    load = Path("/proc/loadavg").read_text().split()[:3]
    info = run.machine(args)
    text = document()
    workdir = Path(tempfile.mkdtemp(prefix="body-bench-"))
    workdir.chmod(0o755)
    try:
        settings = gateways.Settings(
            workdir=workdir,
            nginx=args.nginx,
            modules=args.modules_dir or run.modules_dir(args.nginx),
            workers=args.workers,
            site_ports={"json": args.site_port},
        )
        pairs = chosen(workdir, args.port)
        if args.only:
            pairs = [(n, g) for n, g in pairs if n in args.only.split(",")]
        runs = []
        with gateways.running(site(settings, text), settings):
            for round_no in range(1, args.runs + 1):
                for name, gateway in pairs:
                    print(
                        f"round {round_no}/{args.runs}: {name} ...",
                        end=" ",
                        flush=True,
                    )
                    result = measure(args, gateway, settings, text)
                    result.update(gateway=name, round=round_no)
                    runs.append(result)
                    print(
                        f"{result['rps']:.0f} req/s, p99 "
                        f"{result['p99_ms']:.2f} ms"
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(runs, [n for n, _ in pairs])
    if args.only:
        print(table(summary) if "lua_body" in summary else summary)
        return
    after = Path("/proc/loadavg").read_text().split()[:3]
    report(
        args, summary, runs, info, started, (" ".join(load), " ".join(after))
    )


if __name__ == "__main__":
    main()
