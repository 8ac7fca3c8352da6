"""What the response phase costs, and who pays it.

The example's UNIT routing through this gateway twice: the chain as
shipped (receiver filters only: one round trip per request) and the same
chain plus one sender filter that edits every response (a second round
trip, the response held meanwhile), beside plain nginx `map`.  Same load
(wrk, bench/uid.lua), interleaved rounds, medians; the report is
bench/results/response.md and response.json.

    python -m bench.response_bench [--runs 5] [--duration 10]
        (peers_bench's options)
"""

import http.client
import json
import sys
from pathlib import Path

import bench.report
from bench import gateways
from bench import peers_bench as run

PAIR = ("mosn", "mosn_senders")
BODY_SECTION = "## Response bodies"


def chosen(workdir):
    pairs = [
        (g.name, g)
        for g in gateways.peer_gateways(workdir)
        if g.name == run.BASELINE
    ]
    pairs.append(("mosn", gateways.mosn_gateway(workdir)))
    pairs.append(("mosn_senders", gateways.mosn_senders_gateway(workdir)))
    return pairs


def check_stamp(args, workdir):
    """The sender filter runs: its header is on the response; the chain
    without one leaves no such header."""
    settings = settings_for(args, workdir)
    with gateways.running(gateways.sites_gateway(settings), settings):
        for name, gateway in chosen(workdir)[1:]:
            with gateways.running(gateway, settings):
                run.wait_routing(gateway.port, settings.site_ports)
                conn = http.client.HTTPConnection(
                    "127.0.0.1", gateway.port, timeout=5
                )
                conn.request("GET", "/", headers={"uid": "7"})
                resp = conn.getresponse()
                resp.read()
                conn.close()
                stamped = resp.getheader("x-bench-stamp") == "1"
                if stamped != (name == "mosn_senders"):
                    sys.exit(
                        f"{name}: x-bench-stamp is "
                        f"{resp.getheader('x-bench-stamp')!r}"
                    )


def settings_for(args, workdir):
    base = args.site_port
    return gateways.Settings(
        workdir=workdir,
        nginx=args.nginx,
        modules=args.modules_dir or run.modules_dir(args.nginx),
        workers=args.workers,
        site_ports={
            "s1a": base,
            "s1b": base + 1,
            "s2": base + 2,
            "s3": base + 3,
        },
    )


def report(args, summary, runs, info, started):
    command = bench.report.command(__spec__.name)
    one, two = (summary.get(name) for name in PAIR)
    lines = run.report_head(
        "The response phase: what a sender filter costs",
        command,
        args,
        info,
        started,
    ) + [
        run.table(summary),
        "",
        "`mosn` runs the example's chain (the metadata filter with the UNIT "
        "driver): one round trip through the ring per request. "
        "`mosn_senders` is the same chain plus one sender filter that sets a "
        "response header (bench/senders.py): each response is held, goes "
        "to Python as a response record and comes back edited, a second "
        "round trip. Chains without sender filters never make it: nginx "
        "learns from the request's verdict whether the chain has any.",
    ]
    if one and two:
        cost_ms = two["p50_ms"] - one["p50_ms"]
        lines += [
            "",
            "| second pass | value |",
            "| --- | --- |",
            f"| throughput, with / without | {two['rps'] / one['rps']:.2f}x |",
            f"| p50 latency added | {cost_ms * 1000:.0f} us |",
            f"| p99 latency added | "
            f"{(two['p99_ms'] - one['p99_ms']) * 1000:.0f} us |",
        ]
        if one["rps_per_cpu"] and two["rps_per_cpu"]:
            lines.append(
                f"| CPU per request, with / without | "
                f"{one['rps_per_cpu'] / two['rps_per_cpu']:.2f}x |"
            )
    lines.append("")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "response.md"
    # the body comparison's section (bench/response_body_bench.py) stays
    old = path.read_text() if path.exists() else ""
    if BODY_SECTION in old:
        lines += [old[old.index(BODY_SECTION) :].rstrip("\n"), ""]
    path.write_text("\n".join(lines))
    (out / "response.json").write_text(
        json.dumps(
            {
                "command": command,
                "date": started,
                "machine": info,
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print("\n".join(lines))


def main():
    args = run.parse_args()
    summary, runs, info, started = run.bench_these(args, chosen, check_stamp)
    report(args, summary, runs, info, started)


if __name__ == "__main__":
    main()
