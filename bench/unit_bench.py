"""The Python side alone: UNIT decisions per second in one Python worker.

A C producer (bench/ring_producer.c, driving its channel as an nginx
worker does) keeps requests of the worked example (GET / with uid: 2) in
flight; one Python worker serves them as `pyworker worker` does: the real
Dispatcher, the `serverListener` chain of conf/mosn.json (metadata filter,
UNIT driver), per-filter counts and sampled timing.  The same worker with
a dispatch that returns None runs in the same repetitions, for the ring's
own share.

    python bench/unit_bench.py [--reps 5] [--count 300000] [--out DIR]

Target: >= 300,000 UNIT decisions per second per worker.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import ring_bench  # noqa: E402  (the C producer and its build)

# ring_bench reads the source tree; this one measures the installed package
while ROOT in sys.path:
    sys.path.remove(ROOT)

TARGET = 300000.0


def serve(name, index, kind):
    """The Python worker; kind "unit" runs the example's chain."""
    from shm_ring import Region
    region = Region.attach(name)
    consumer = region.consumer(index)
    if kind == "unit":
        from pyworker import config
        from pyworker.dispatch import Dispatcher
        from pyworker.metrics import TIMING_SAMPLE, WorkerStats
        gateway = config.load(os.path.join(ROOT, "conf", "mosn.json"),
                              log_warnings=False)
        chain = gateway.chains["serverListener"]
        stats = WorkerStats(None, "bench")
        chain.set_observer(stats.observer("serverListener"), TIMING_SAMPLE)
        # the C producer names its chain "ingress"
        dispatch = Dispatcher({"ingress": chain}, stats)
    else:
        def dispatch(request):
            return None
    serve_batch, wait = consumer.serve_batch, consumer.wait
    while True:
        if serve_batch(dispatch, 128) == 0:
            if consumer.state != "live":
                break
            wait(100)


def run(exe, kind, count, inflight):
    from shm_ring import Region
    region = Region.create("/mosn_unit_bench.%d" % os.getpid(),
                           nproducers=1, nconsumers=1, slots=256,
                           slot_size=4096)
    index = region.alloc_consumer()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__),
                             "--serve", region.name, str(index), kind])
    try:
        deadline = time.monotonic() + 15
        while region.consumer_state(index) != "live":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the %s worker did not start" % kind)
            time.sleep(0.01)
        out = subprocess.run([exe, region.name, "throughput", str(count),
                              str(inflight)], check=True,
                             capture_output=True, text=True, timeout=600)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        if res["bad_verdicts"]:
            raise SystemExit("the C decoder refused %d verdicts"
                             % res["bad_verdicts"])
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--count", type=int, default=300000)
    ap.add_argument("--inflight", type=int, default=128)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.serve:
        serve(opts.serve[0], int(opts.serve[1]), opts.serve[2])
        return 0

    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()
    exe = ring_bench.build_producer()
    runs = {"null": [], "unit": []}
    for rep in range(opts.reps):
        for kind in ("null", "unit") if rep % 2 == 0 else ("unit", "null"):
            per_s = run(exe, kind, opts.count, opts.inflight)
            runs[kind].append(per_s)
            print("rep %d %-4s %10.0f /s" % (rep + 1, kind, per_s))
    med = {k: statistics.median(v) for k, v in runs.items()}
    unit_us = 1e6 / med["unit"]
    ring_us = 1e6 / med["null"]
    doc = {
        "command": "python bench/unit_bench.py " + " ".join(sys.argv[1:]),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"nproc": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(),
                    "loadavg_before": load},
        "runs": runs, "medians": med, "target": TARGET,
        "met": med["unit"] >= TARGET,
        "us_per_decision": unit_us, "us_ring_only": ring_us,
    }
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "unit.json"), "w") as f:
        json.dump(doc, f, indent=2)
    verdict = "met" if doc["met"] else "MISSED, %.2fx the target" % (
        med["unit"] / TARGET)
    lines = [
        "# UNIT decisions per second, one Python worker",
        "",
        "Written by `bench/unit_bench.py`; every figure is from the run "
        "below (`unit.json` has each repetition).",
        "",
        "- command: `%s`" % doc["command"],
        "- date: %s; nproc %d, kernel %s, Python %s; load average before "
        "%.2f" % (doc["date"], os.cpu_count(), platform.release(),
                  platform.python_version(), load[0]),
        "- a C producer keeps %d requests of the example in flight; %d "
        "round trips per run, %d repetitions interleaved, medians"
        % (opts.inflight, opts.count, opts.reps),
        "",
        "| dispatch | round trips/s (median) | us per request |",
        "| --- | --- | --- |",
        "| None (the ring and the binding alone) | %.0f | %.2f |"
        % (med["null"], ring_us),
        "| UNIT chain (metadata filter, UNIT driver, counts, sampled "
        "timing) | %.0f | %.2f |" % (med["unit"], unit_us),
        "",
        "Target >= %d UNIT decisions/s per worker: **%s**. The chain "
        "itself costs %.2f us per request over the ring's %.2f us."
        % (TARGET, verdict, unit_us - ring_us, ring_us),
    ]
    with open(os.path.join(opts.out, "unit.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
