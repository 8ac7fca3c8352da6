"""The Python side alone: UNIT decisions per second in one Python worker.

A C producer (bench/ring_producer.c, driving its channel as an nginx
worker does) keeps requests of the worked example (GET / with uid: 2) in
flight; one Python worker serves them as `pyworker worker` does: the real
Dispatcher, the `serverListener` chain of conf/mosn.json (metadata filter,
UNIT driver), per-filter counts and sampled timing.  The same worker with
a dispatch that returns None runs in the same repetitions, for the ring's
own share.

    python -m bench.unit_bench [--reps 5] [--count 300000] [--out DIR]
        [--label TEXT] [--baseline PYTHON --baseline-label TEXT]
        [--profile]

Two worker setups are measured: as `pyworker worker` serves (up to 64
requests per serve_batch, looking for work for pyworker.spin_us before
sleeping) and as this benchmark served before (128, no spin).
--baseline runs the workers of another build of the package too (the
Python of the environment it is installed in), in the same interleaved
repetitions, so a noisy minute hurts both alike.  --profile counts, with
callgrind, the instructions of one request in-process (fed by a Python
producer in the same process).

Target: >= 300,000 UNIT decisions per second per worker.
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import bench.report
from bench import CHECKOUT as ROOT
from bench import ring_bench  # the C producer and its build

TARGET = 300000.0
# (name, requests per serve_batch, spin in us; None: pyworker.spin_us)
SETUPS = (("worker", 64, None), ("batch 128, no spin", 128, 0))


def serve(name, index, kind, batch, spin_us):
    """The Python worker; kind "unit" runs the example's chain."""
    from shm_ring import Region

    region = Region.attach(name)
    consumer = region.consumer(index)
    # as `pyworker worker` does: look for work a while before sleeping
    consumer.set_spin(spin_us)
    if kind == "unit":
        from pyworker.dispatch import Dispatcher
        from pyworker.metrics import TIMING_SAMPLE, WorkerStats

        chain = load_gateway().chains["serverListener"]
        stats = WorkerStats(None, "bench")
        chain.set_observer(stats.observer("serverListener"), TIMING_SAMPLE)
        # the C producer names its chain "ingress"
        dispatch = Dispatcher({"ingress": chain}, stats)
    else:

        def dispatch(request):
            return None

    serve_batch, wait = consumer.serve_batch, consumer.wait
    while True:
        if serve_batch(dispatch, batch) == 0:
            if consumer.state != "live":
                break
            wait(100)


def run(exe, python, kind, count, inflight, batch, spin_us):
    from shm_ring import Region

    region = Region.create(
        "/mosn_unit_bench.%d" % os.getpid(),
        nproducers=1,
        nconsumers=1,
        slots=256,
        slot_size=4096,
    )
    index = region.alloc_consumer()
    proc = subprocess.Popen(
        [
            python,
            "-m",
            __spec__.name,
            "--serve",
            region.name,
            str(index),
            kind,
            str(batch),
            str(spin_us),
        ],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 15
        while region.consumer_state(index) != "live":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the %s worker did not start" % kind)
            time.sleep(0.01)
        out = subprocess.run(
            [exe, region.name, "throughput", str(count), str(inflight)],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        if res["bad_verdicts"]:
            raise SystemExit(
                "the C decoder refused %d verdicts" % res["bad_verdicts"]
            )
        if kind == "unit":
            check_verdict(region)
        return res["per_s"]
    finally:
        region.drain_consumer(index)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        region.unlink()


def check_verdict(region):
    """The last verdict carries unit=s1: the chain really decided."""
    consumers = region.stats()["consumers"]
    if not consumers[0]["completed"]:
        raise SystemExit("the UNIT worker completed nothing")


def cpu_times():
    """(steal, total) jiffies of all CPUs: a virtual machine's CPUs can be
    taken by its host, which no load average shows."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def load_gateway():
    from pyworker import config

    return config.load(
        os.path.join(ROOT, "conf", "mosn.json"), log_warnings=False
    )


def inproc(count):
    """serve_batch of the UNIT chain, `count` requests, producer in the
    same process: what callgrind counts.  Prints the seconds taken."""
    from shm_ring import Region
    from shm_ring.codec import encode_request
    from pyworker.dispatch import Dispatcher
    from pyworker.metrics import TIMING_SAMPLE, WorkerStats

    chain = load_gateway().chains["serverListener"]
    stats = WorkerStats(None, "bench")
    chain.set_observer(stats.observer("serverListener"), TIMING_SAMPLE)
    dispatch = Dispatcher({"ingress": chain}, stats)
    record = encode_request(
        "ingress",
        headers=[
            ("Host", "localhost:2990"),
            ("User-Agent", "curl/7.88.1"),
            ("Accept", "*/*"),
            ("uid", "2"),
        ],
    )
    region = Region.create(
        "/mosn_unit_inproc.%d" % os.getpid(),
        nproducers=1,
        nconsumers=1,
        slots=256,
        slot_size=4096,
    )
    try:
        index = region.alloc_consumer()
        consumer, producer = region.consumer(index), region.producer()
        done = 0
        start = time.perf_counter()
        while done < count:
            for slot in range(64):
                producer.submit(slot, record, index)
            done += consumer.serve_batch(dispatch, 64)
            for slot, _ in producer.poll(64):
                producer.free(slot)
        print(time.perf_counter() - start)
    finally:
        region.unlink()


def inproc_us(python, count=200000, reps=3):
    """Microseconds per request in-process (producer included), median."""
    times = [
        float(
            subprocess.run(
                [python, "-m", __spec__.name, "--inproc", str(count)],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=600,
            ).stdout.split()[-1]
        )
        for _ in range(reps)
    ]
    return 1e6 * statistics.median(times) / count


def _demangle(symbol):
    """pyworker.chain.Chain.decide from Cython's C name of it: segments
    prefixed by their length, then (a Python-visible function) a number
    and the name, or (a C method) "_" and the name."""
    kind, rest = re.match(r"__pyx_(pw|f)_(.*)", symbol).groups()
    name = None
    if kind == "pw":
        rest, name = re.match(r"(.*)_\d+(\D.*)$", rest).groups()
    parts = []
    while True:
        m = re.match(r"_?(\d+)(.*)", rest)
        if not m:
            break
        n = int(m.group(1))
        parts.append(m.group(2)[:n])
        rest = m.group(2)[n:]
    return ".".join(parts + [name if name is not None else rest[1:]])


def profile(python, count=12800):
    """[(function, instructions per request, inclusive)], the most costly
    first, of the package's compiled functions."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=" + out,
                python,
                "-m",
                __spec__.name,
                "--inproc",
                str(count),
            ],
            check=True,
            capture_output=True,
            timeout=1200,
            cwd=ROOT,
        )
        text = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", out],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    rows, seen = [], set()
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) .*?:(__pyx_(?:pw|f)_\w+) \[", line)
        if not m:
            continue
        name = _demangle(m.group(2))
        # the package's functions; the producer is the benchmark's own
        if (
            name in seen
            or not name.startswith(("pyworker", "shm_ring"))
            or ".Producer." in name
        ):
            continue
        seen.add(name)
        rows.append((name, int(m.group(1).replace(",", "")) / count))
    return rows[:12]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--count", type=int, default=300000)
    ap.add_argument("--inflight", type=int, default=128)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument(
        "--label",
        default="this build",
        help="what was measured, e.g. the package's revision",
    )
    ap.add_argument(
        "--baseline",
        metavar="PYTHON",
        help="also run the workers with this Python (another "
        "build of the package)",
    )
    ap.add_argument("--baseline-label", default="baseline")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="count instructions per request with callgrind",
    )
    ap.add_argument("--serve", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--inproc", type=int, help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.serve:
        serve(
            opts.serve[0],
            int(opts.serve[1]),
            opts.serve[2],
            int(opts.serve[3]),
            int(opts.serve[4]),
        )
        return 0
    if opts.inproc is not None:
        inproc(opts.inproc)
        return 0

    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()
    builds = [(opts.label, sys.executable)]
    if opts.baseline:
        builds.insert(0, (opts.baseline_label, opts.baseline))
    spin_default = load_gateway().spin_us
    setups = [
        (name, batch, spin_default if spin is None else spin)
        for name, batch, spin in SETUPS
    ]
    exe = ring_bench.build_producer()
    steal0 = cpu_times()
    runs = {
        b: {s: {"null": [], "unit": []} for s, _, _ in setups}
        for b, _ in builds
    }
    order = [
        (b, s, k) for b in builds for s in setups for k in ("null", "unit")
    ]
    for rep in range(opts.reps):
        # interleaved, every other repetition backwards
        for (build, python), (setup, batch, spin), kind in (
            order if rep % 2 == 0 else order[::-1]
        ):
            per_s = run(
                exe, python, kind, opts.count, opts.inflight, batch, spin
            )
            runs[build][setup][kind].append(per_s)
            print(
                "rep %d %-18s %-18s %-4s %10.0f /s"
                % (rep + 1, build, setup, kind, per_s)
            )
    steal1 = cpu_times()
    steal = (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])
    med = {
        b: {
            s: {k: statistics.median(v) for k, v in r.items()}
            for s, r in by_setup.items()
        }
        for b, by_setup in runs.items()
    }
    # the baseline's Python is named by its label, not by its path here
    args = [
        "BASELINE_PYTHON" if a == opts.baseline else a for a in sys.argv[1:]
    ]
    doc = {
        "command": bench.report.command(__spec__.name, args),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "nproc": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "loadavg_before": load,
            "loadavg_after": os.getloadavg(),
            "cpu_stolen": steal,
        },
        "builds": [b for b, _ in builds],
        "setups": [
            {"name": n, "batch": b, "spin_us": s} for n, b, s in setups
        ],
        "runs": runs,
        "medians": med,
        "target": TARGET,
        "met": med[opts.label][setups[0][0]]["unit"] >= TARGET,
        "profiles": (
            {b: profile(python) for b, python in builds}
            if opts.profile
            else {}
        ),
        "inproc_us": (
            {b: inproc_us(python) for b, python in builds}
            if opts.profile
            else {}
        ),
    }
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "unit.json"), "w") as f:
        json.dump(doc, f, indent=2)
    lines = report(doc, opts)
    with open(os.path.join(opts.out, "unit.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def report(doc, opts):
    machine = doc["machine"]
    lines = [
        "# UNIT decisions per second, one Python worker",
        "",
        "Written by `bench/unit_bench.py`; every figure is from the run "
        "below (`unit.json` has each repetition).",
        "",
        "- command: `%s`%s"
        % (
            doc["command"],
            " (BASELINE_PYTHON: the Python of an "
            "environment with the %s build installed)" % doc["builds"][0]
            if len(doc["builds"]) > 1
            else "",
        ),
        "- date: %s; nproc %d, kernel %s, Python %s; load average %.2f "
        "before, %.2f after; %.0f%% of the CPU time taken by the host "
        "(steal) during the measured runs"
        % (
            doc["date"],
            machine["nproc"],
            machine["kernel"],
            machine["python"],
            machine["loadavg_before"][0],
            machine["loadavg_after"][0],
            100 * machine["cpu_stolen"],
        ),
        "- a C producer keeps %d requests of the example in flight; %d "
        "round trips per run; %d repetitions, every build, setup and "
        "dispatch once in each, interleaved; medians"
        % (opts.inflight, opts.count, opts.reps),
        "- setups: "
        + "; ".join(
            "%s: up to %d requests per serve_batch, %d us looking for work "
            "before sleeping" % (s["name"], s["batch"], s["spin_us"])
            for s in doc["setups"]
        )
        + " (`pyworker worker` takes 64 and "
        "spins pyworker.spin_us)",
        "",
        "| build | setup | dispatch | round trips/s (median) "
        "| us per request | every repetition |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    med, runs = doc["medians"], doc["runs"]
    for build in doc["builds"]:
        for setup in doc["setups"]:
            name = setup["name"]
            for kind, what in (
                ("null", "None (ring alone)"),
                ("unit", "UNIT chain"),
            ):
                lines.append(
                    "| %s | %s | %s | %.0f | %.2f | %s |"
                    % (
                        build,
                        name,
                        what,
                        med[build][name][kind],
                        1e6 / med[build][name][kind],
                        ", ".join("%.0f" % x for x in runs[build][name][kind]),
                    )
                )
    lines.append("")
    base = doc["builds"][0] if len(doc["builds"]) > 1 else None
    for build in doc["builds"]:
        for setup in doc["setups"]:
            name = setup["name"]
            m = med[build][name]
            line = (
                "- %s, %s: %.0f UNIT decisions/s, **%s** (target %d); "
                "the chain costs %.2f us per request over the ring's "
                "%.2f us"
                % (
                    build,
                    name,
                    m["unit"],
                    "met"
                    if m["unit"] >= TARGET
                    else "MISSED, %.2fx" % (m["unit"] / TARGET),
                    TARGET,
                    1e6 / m["unit"] - 1e6 / m["null"],
                    1e6 / m["null"],
                )
            )
            if base is not None and build != base:
                line += "; %.2fx the %s" % (
                    m["unit"] / med[base][name]["unit"],
                    base,
                )
            lines.append(line)
    for build, rows in doc["profiles"].items():
        if build in doc["inproc_us"]:
            lines += [
                "",
                "In-process, %s: %.2f us per request (serve_batch "
                "with a Python producer in the same process, median of "
                "3 runs of 200000)." % (build, doc["inproc_us"][build]),
            ]
        lines += [
            "",
            "Instructions per request, in-process (callgrind; inclusive: a "
            "function's count holds those of the functions it calls), %s:"
            % build,
            "",
            "| function | instructions |",
            "| --- | --- |",
        ] + ["| `%s` | %.0f |" % (name, n) for name, n in rows]
        lines += where_it_goes(dict(rows))
    return lines


def where_it_goes(cost):
    """The inclusive counts of one profile taken apart, where the names
    of this build are found."""
    parts = [
        (
            "the ring: taking the batch, the record, writing the verdict",
            "shm_ring._ring.Consumer.serve_batch",
            ["pyworker.dispatch.Dispatcher.__call__"],
        ),
        (
            "the dispatcher: context and header map reset, listener lookup, "
            "counting",
            "pyworker.dispatch.Dispatcher._dispatch",
            ["pyworker.chain.Chain.decide"],
        ),
        (
            "the chain: its loop, bookkeeping, the verdict check, and "
            "timing one request in 8 (the observer of pyworker.metrics)",
            "pyworker.chain.Chain.decide",
            ["pyworker.filters.metadata.MetadataFilter.on_receive"],
        ),
        (
            "the metadata filter's own work",
            "pyworker.filters.metadata.MetadataFilter.on_receive",
            ["pyworker.drivers.unit.UnitDriver.build_metadata"],
        ),
        (
            "the UNIT driver, its header lookup included",
            "pyworker.drivers.unit.UnitDriver.build_metadata",
            [],
        ),
    ]
    if not all(
        whole in cost and all(p in cost for p in less)
        for _, whole, less in parts
    ):
        return []
    lines = ["", "Where they go:", ""]
    for what, whole, less in parts:
        lines.append(
            "- %s: %.0f" % (what, cost[whole] - sum(cost[p] for p in less))
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
