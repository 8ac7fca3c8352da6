"""How long a Python worker should look for work before it sleeps.

The same gateway (the example's UNIT chain, 1 nginx worker, 1 Python
worker) with several `pyworker.spin_us` values, beside plain nginx `map`,
under peers_bench's load, interleaved.  Spinning saves the worker a futex sleep
and wake when requests come close together, but the CPU it burns is taken
from nginx, wrk and the sites when the machine has no core to spare.
Writes bench/results/spin.md and spin.json.

    python -m bench.spin_bench [--spins 0,10,50] [--runs 5]
        [peers_bench's options]
"""

import dataclasses
import json
import sys
from pathlib import Path

import bench.report
from bench import gateways
from bench import peers_bench as run


def spin_gateway(workdir, spin, index):
    base = gateways.mosn_gateway(workdir)
    config = json.loads((gateways.REPO / "conf" / "mosn.json").read_text())
    config.setdefault("pyworker", {})["spin_us"] = spin
    path = Path(workdir) / f"spin{spin}.json"
    path.write_text(json.dumps(config, indent=2))
    return dataclasses.replace(
        base,
        name=f"spin_{spin}us",
        about=f"this project, pyworker.spin_us = {spin}",
        ports=[gateways.PEER_PORT + 10 + index],
        extra=dict(base.extra, mosn_config=str(path), shm=f"mosn_spin{spin}"),
    )


def main():
    spins = [0, 10, 50]
    if "--spins" in sys.argv:
        i = sys.argv.index("--spins")
        spins = [int(s) for s in sys.argv[i + 1].split(",")]
        del sys.argv[i : i + 2]
    args = run.parse_args()

    def chosen(workdir):
        if gateways.mosn_gateway(workdir) is None:
            return [("mosn", None)]
        return [
            (g.name, g)
            for g in gateways.peer_gateways(workdir)
            if g.name == run.BASELINE
        ] + [
            (g.name, g)
            for g in (spin_gateway(workdir, s, i) for i, s in enumerate(spins))
        ]

    summary, runs, info, started = run.bench_these(args, chosen)
    command = bench.report.command(__spec__.name) + (
        f" --spins {','.join(map(str, spins))}"
    )
    lines = run.report_head(
        "How long a Python worker looks for work before it sleeps",
        command,
        args,
        info,
        started,
    ) + [
        run.table(summary),
        "",
        "Each `spin_Nus` row is this gateway with `pyworker.spin_us` = N: "
        "after a batch, the worker looks for more work for N microseconds "
        "before it sleeps on its futex. wrk, the sites and the gateway "
        "share the machine's cores, as in peers_bench.",
        "",
    ]
    bench.report.write(
        args.out,
        "spin",
        "\n".join(lines),
        {
            "command": command,
            "date": started,
            "machine": info,
            "spins": spins,
            "summary": summary,
            "runs": runs,
        },
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
