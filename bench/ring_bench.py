"""The ring alone: a C producer (bench/ring_producer.c, driving its channel
as an nginx worker does) against one Python worker serving with
shm_ring._ring.Consumer.serve_batch and a dispatch that returns None.

    python -m bench.ring_bench [--reps 5] [--profile] [--out bench/results]

Measures, in every repetition, then reports the medians:

  latency     round trips one at a time, --gap-us apart so that the
              consumer sleeps: futex wake, Python serves, doorbell, poll();
              and the consumer's CPU per round trip (its schedstat)
  throughput  round trips per second with --inflight requests in flight
  wake-ups    futex wakes rung by the producer, doorbells rung by the
              consumer and consumer sleeps, per 1000 round trips, from
              the region's counters, during the throughput runs

and two references to read them against: the same runs with a consumer
written in C (the ring without Python), and the floor, two processes
waking each other with a bare futex at the same pace (no ring at all).
With --profile, one more latency run of each side is sampled with perf.

Needs the Cython binding, installed (make setup) or built in place
(python3 setup.py build_ext --inplace), and a C compiler. Writes ring.md and
ring.json into --out.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import bench.report
from bench import CHECKOUT as ROOT

BUILD = os.path.join(ROOT, "build", "bench")
TARGETS = {
    "latency_p50_us": 10.0,
    "throughput_per_s": 500000.0,
    "wakeups_per_1000": 50.0,
}


def build_producer():
    os.makedirs(BUILD, exist_ok=True)
    exe = os.path.join(BUILD, "ring_producer")
    # the ring's C core: every shm_*.c (not Cython's output)
    src = [
        os.path.join(ROOT, "bench", "ring_producer.c"),
        *sorted(glob.glob(os.path.join(ROOT, "shm_ring", "shm_*.c"))),
    ]
    subprocess.run(
        [
            os.environ.get("CC", "cc"),
            "-O2",
            "-std=gnu11",
            "-Wall",
            "-I",
            os.path.join(ROOT, "shm_ring"),
            *src,
            "-o",
            exe,
        ],
        check=True,
    )
    return exe


def serve(name, index, batch):
    """The Python worker: serve batches, sleep when there is nothing."""
    from shm_ring._ring import Region

    region = Region.attach(name)
    consumer = region.consumer(index)
    serve_batch, wait = consumer.serve_batch, consumer.wait

    def dispatch(request):
        return None

    while True:
        if serve_batch(dispatch, batch) == 0:
            if consumer.state != "live":
                break
            wait(100)


class Worker:
    """A region with one consumer process, Python or C."""

    def __init__(self, kind, exe, opts):
        from shm_ring._ring import Region

        self.kind = kind
        self.exe = exe
        self.region = Region.create(
            "/mosn_bench_%s.%d" % (kind, os.getpid()),
            nproducers=1,
            nconsumers=1,
            slots=max(256, opts.inflight),
            slot_size=4096,
        )
        self.index = self.region.alloc_consumer()
        if kind == "python":
            cmd = [
                sys.executable,
                "-m",
                __spec__.name,
                "--serve",
                self.region.name,
                str(self.index),
                str(opts.batch),
            ]
        else:
            cmd = [exe, self.region.name, "consume", str(self.index)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT)
        deadline = time.monotonic() + 10
        while self.region.consumer_state(self.index) != "live":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit("the %s worker did not start" % kind)
            time.sleep(0.01)

    def counters(self):
        st = self.region.stats()
        p, c = st["producers"], st["consumers"]
        return {
            "futex_wakes": sum(x["futex_wakes"] for x in p),
            "doorbells": sum(x["doorbells"] for x in c),
            "sleeps": sum(x["sleeps"] for x in c),
            "batches": sum(x["batches"] for x in c),
            "completed": sum(x["completed"] for x in c),
        }

    def cpu_ns(self):
        """CPU the consumer process has run for, in ns (the scheduler's
        own count: clock ticks are too coarse for a run of round trips
        one at a time)."""
        with open("/proc/%d/schedstat" % self.proc.pid) as f:
            return int(f.read().split()[0])

    def produce(self, args, wrap=(), env=None):
        before = self.counters()
        cpu = self.cpu_ns()
        out = subprocess.run(
            list(wrap) + [self.exe, self.region.name] + [str(a) for a in args],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        after = self.counters()
        cpu = self.cpu_ns() - cpu
        self.region.reap()  # hands the released channel back
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res["consumer_cpu_ns"] = cpu
        res["counters"] = {k: after[k] - before[k] for k in after}
        if res["bad_verdicts"]:
            raise SystemExit(
                "the C decoder refused %d verdicts" % res["bad_verdicts"]
            )
        return res

    def close(self):
        self.region.drain_consumer(self.index)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.region.unlink()


def floor(exe, opts):
    out = subprocess.run(
        [exe, "-", "floor", str(opts.latency_count), str(opts.gap_us)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return json.loads(out.stdout)


def per_1000(res):
    c, n = res["counters"], res["count"]
    out = {
        k: 1000.0 * c[k] / n for k in ("futex_wakes", "doorbells", "sleeps")
    }
    out["total"] = sum(out.values())
    out["producer_polls"] = 1000.0 * res["producer_polls"] / n
    out["batch_mean"] = n / c["batches"] if c["batches"] else 0.0
    return out


def measure(opts, exe):
    runs = {
        "floor": [],
        "c_latency": [],
        "c_throughput": [],
        "latency": [],
        "throughput": [],
        "latency_doorbell": [],
    }
    # the producer without its eventfd: woken by doorbell datagrams only
    doorbell = dict(os.environ, RING_BENCH_NO_EVENTFD="1")
    lat = ["latency", opts.latency_count, opts.gap_us]
    thr = ["throughput", opts.count, opts.inflight]
    py = cw = None
    try:
        py = Worker("python", exe, opts)
        cw = Worker("c", exe, opts)
        for rep in range(opts.reps):
            runs["floor"].append(floor(exe, opts))
            runs["c_latency"].append(cw.produce(lat))
            runs["c_throughput"].append(cw.produce(thr))
            runs["latency"].append(py.produce(lat))
            runs["latency_doorbell"].append(py.produce(lat, env=doorbell))
            runs["throughput"].append(py.produce(thr))
            print(
                "rep %d: p50 %.1f us (C consumer %.1f, floor %.1f), "
                "%.0f round trips/s, %.1f wake-ups per 1000"
                % (
                    rep + 1,
                    runs["latency"][-1]["p50_ns"] / 1e3,
                    runs["c_latency"][-1]["p50_ns"] / 1e3,
                    runs["floor"][-1]["p50_ns"] / 1e3,
                    runs["throughput"][-1]["per_s"],
                    per_1000(runs["throughput"][-1])["total"],
                ),
                flush=True,
            )
        prof = profile(opts, py, lat) if opts.profile else None
    finally:
        for w in (py, cw):
            if w is not None:
                w.close()
    return runs, prof


def perf_top(data, limit):
    out = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            data,
            "--no-children",
            "--sort",
            "dso,sym",
            "--stdio",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    rows = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].endswith("%"):
            continue
        rows.append(
            {
                "share": float(parts[0][:-1]),
                "dso": parts[1],
                "symbol": " ".join(parts[3:]),
            }
        )
    groups = {}
    for r in rows:
        groups[r["dso"]] = groups.get(r["dso"], 0.0) + r["share"]
    return {
        "top": rows[:limit],
        "by_dso": sorted(
            ({"dso": k, "share": v} for k, v in groups.items()),
            key=lambda g: -g["share"],
        ),
    }


def profile(opts, py, lat):
    """Samples the Python worker, then the producer, over a latency run."""
    if shutil.which("perf") is None:
        return {"error": "perf is not installed"}
    cdata = os.path.join(BUILD, "perf.consumer.data")
    pdata = os.path.join(BUILD, "perf.producer.data")
    rec = ["perf", "record", "-q", "-F", "5000", "-e", "cpu-clock"]
    sampler = subprocess.Popen(
        rec + ["-o", cdata, "-p", str(py.proc.pid)], stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    consumer_run = py.produce(lat)
    sampler.send_signal(2)
    sampler.wait()
    producer_run = py.produce(lat, wrap=rec + ["-o", pdata, "--"])
    return {
        "command": " ".join(rec) + " -p PID / -- ring_producer",
        "consumer": perf_top(cdata, 15),
        "producer": perf_top(pdata, 10),
        "consumer_run_p50_us": consumer_run["p50_ns"] / 1e3,
        "producer_run_p50_us": producer_run["p50_ns"] / 1e3,
    }


def med(xs):
    return statistics.median(xs)


def summarize(runs):
    wake = [per_1000(r) for r in runs["throughput"]]
    lat_wake = [per_1000(r) for r in runs["latency"]]
    c_wake = [per_1000(r) for r in runs["c_latency"]]
    us = lambda k, key: med([r[key] / 1e3 for r in runs[k]])  # noqa: E731
    return {
        "latency_p50_us": us("latency", "p50_ns"),
        "latency_p90_us": us("latency", "p90_ns"),
        "latency_p99_us": us("latency", "p99_ns"),
        "latency_doorbell_p50_us": us("latency_doorbell", "p50_ns"),
        "floor_ratio": med(
            [
                a["p50_ns"] / b["p50_ns"]
                for a, b in zip(runs["latency"], runs["floor"])
            ]
        ),
        "floor_ratio_doorbell": med(
            [
                a["p50_ns"] / b["p50_ns"]
                for a, b in zip(runs["latency_doorbell"], runs["floor"])
            ]
        ),
        # the consumer's CPU per round trip, one at a time: its wake-up,
        # take, verdict, doorbell and sleep
        "consumer_cpu_us": med(
            [r["consumer_cpu_ns"] / r["count"] / 1e3 for r in runs["latency"]]
        ),
        "c_consumer_cpu_us": med(
            [
                r["consumer_cpu_ns"] / r["count"] / 1e3
                for r in runs["c_latency"]
            ]
        ),
        "c_latency_p50_us": us("c_latency", "p50_ns"),
        "c_latency_p99_us": us("c_latency", "p99_ns"),
        "floor_p50_us": us("floor", "p50_ns"),
        "floor_p99_us": us("floor", "p99_ns"),
        "throughput_per_s": med([r["per_s"] for r in runs["throughput"]]),
        "c_throughput_per_s": med([r["per_s"] for r in runs["c_throughput"]]),
        "wakeups_per_1000": med([w["total"] for w in wake]),
        "futex_wakes_per_1000": med([w["futex_wakes"] for w in wake]),
        "doorbells_per_1000": med([w["doorbells"] for w in wake]),
        "sleeps_per_1000": med([w["sleeps"] for w in wake]),
        "producer_polls_per_1000": med([w["producer_polls"] for w in wake]),
        "batch_mean": med([w["batch_mean"] for w in wake]),
        "latency_run_sleeps_per_request": med(
            [w["sleeps"] / 1000 for w in lat_wake]
        ),
        "latency_run_wakeups_per_request": med(
            [(w["futex_wakes"] + w["doorbells"]) / 1000 for w in lat_wake]
        ),
        "c_latency_run_sleeps_per_request": med(
            [w["sleeps"] / 1000 for w in c_wake]
        ),
        "c_latency_run_wakeups_per_request": med(
            [(w["futex_wakes"] + w["doorbells"]) / 1000 for w in c_wake]
        ),
    }


def machine():
    info = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu": "?",
        "virtualized": False,
        "cpuidle": None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and info["cpu"] == "?":
                    info["cpu"] = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    info["virtualized"] = " hypervisor" in line
    except OSError:
        pass
    try:
        with open("/sys/devices/system/cpu/cpuidle/current_driver") as f:
            info["cpuidle"] = f.read().strip()
    except OSError:
        pass
    info["loadavg_at_start"] = os.getloadavg()[0]
    return info


def conclusions(m, prof):
    """What the figures say, worded from the figures themselves."""
    out = []
    t = TARGETS["latency_p50_us"]
    if m["latency_p50_us"] > t:
        out.append(
            "Latency target missed: the round trip p50 with the Python "
            "worker asleep is %.1f us, %.1fx the %.0f us target. The floor "
            "measured in the same run, two processes waking each other "
            "with a bare futex at the same pace and no ring at all, is "
            "already %.1f us (%s the target): on this machine two "
            "wake-ups of sleeping processes cost that much by themselves."
            % (
                m["latency_p50_us"],
                m["latency_p50_us"] / t,
                t,
                m["floor_p50_us"],
                "above" if m["floor_p50_us"] > t else "below",
            )
        )
        out.append(
            "Of the rest, the ring itself (consumer in C: futex wake, take, "
            "complete, eventfd write, poll() and drain) adds %.1f us "
            "over the floor, and the Python worker adds %.1f us over the C "
            "consumer."
            % (
                m["c_latency_p50_us"] - m["floor_p50_us"],
                m["latency_p50_us"] - m["c_latency_p50_us"],
            )
        )
        c_ratio = m["c_latency_p50_us"] / m["floor_p50_us"]
        out.append(
            "The floor ratio: with a consumer in C the ring's round trip "
            "is %.2fx the floor, %s the 1.5x target. The floor wakes "
            "both sides with a futex; the ring wakes the producer with "
            "its eventfd and poll(), as it must to wake an nginx worker "
            "asleep in epoll_wait(). With no Python at all the round "
            "trip is %.1f us over the floor, where the target leaves "
            "%.1f us; a Python worker adds its %.1f us to that."
            % (
                c_ratio,
                "over" if c_ratio > 1.5 else "within",
                m["c_latency_p50_us"] - m["floor_p50_us"],
                0.5 * m["floor_p50_us"],
                m["latency_p50_us"] - m["c_latency_p50_us"],
            )
        )
        out.append(
            "CPU per round trip, one at a time: the consumer spends %.1f "
            "us (Python worker) and %.1f us (C) to wake, take, answer, "
            "ring the doorbell and sleep again: what a second process "
            "costs per request at low load, before any filter runs."
            % (m["consumer_cpu_us"], m["c_consumer_cpu_us"])
        )
    else:
        out.append(
            "Latency target met: p50 %.1f us (floor %.1f us)."
            % (m["latency_p50_us"], m["floor_p50_us"])
        )
    extra = (
        m["latency_run_wakeups_per_request"]
        - m["c_latency_run_wakeups_per_request"]
    )
    out.append(
        "Per request of the latency runs the Python worker sleeps %.2f "
        "times and %.2f wake-ups are rung (futex wakes and doorbells); "
        "with the C consumer %.2f and %.2f. %s"
        % (
            m["latency_run_sleeps_per_request"],
            m["latency_run_wakeups_per_request"],
            m["c_latency_run_sleeps_per_request"],
            m["c_latency_run_wakeups_per_request"],
            "Both make the same system calls per request; the difference "
            "is time in user space, on a path that runs cold after every "
            "sleep."
            if abs(extra) < 0.1
            else "The C consumer often answers before the producer has armed "
            "its doorbell, so no doorbell is needed; the Python worker, "
            "slower in user space on a path that runs cold after every "
            "sleep, more often finds the producer asleep in poll() and "
            "must wake it: %.2f more wake-ups per request." % extra,
        )
    )
    if prof and "consumer" in prof:
        share = lambda side, f: sum(  # noqa: E731
            g["share"] for g in prof[side]["by_dso"] if f(g["dso"])
        )
        kern = share("consumer", lambda d: d.startswith("[kernel"))
        interp = share("consumer", lambda d: "python" in d or "_ring" in d)
        pk = share("producer", lambda d: d.startswith("[kernel"))
        top = prof["consumer"]["top"][0] if prof["consumer"]["top"] else None
        if top:
            out.append(
                "Profile (perf, cpu-clock, one latency run per side): "
                "%.0f%% of the Python worker's samples are in the kernel, "
                "the largest symbol being %s (%.0f%%), and %.0f%% in the "
                "interpreter and the binding; %.0f%% of the producer's are "
                "in the kernel. The wake path is bound by context switches "
                "and wake-ups, then by the interpreter; the ring's own "
                "functions are a few per cent. Spinning before sleeping "
                "cannot help a consumer that must sleep between requests "
                "%d us apart, and would cost CPU on shared vCPUs."
                % (
                    kern,
                    top["symbol"],
                    top["share"],
                    interp,
                    pk,
                    prof.get("gap_us", 0),
                )
            )
    return out


def table(rows):
    return ["| " + " | ".join(r) + " |" for r in rows]


def report(doc):
    m, t, ok, o, mc = (
        doc["medians"],
        doc["targets"],
        doc["met"],
        doc["options"],
        doc["machine"],
    )

    def state(key, higher):
        if ok[key]:
            return "met"
        v = m[key] / t[key]
        return "MISSED, %s" % (
            "%.0f%% of the target" % (100 * v)
            if higher
            else "%.1fx the target" % v
        )

    rows = [
        ["measure", "median of %d" % o["reps"], "target", ""],
        ["---"] * 4,
        [
            "round trip p50, Python worker asleep",
            "%.1f us" % m["latency_p50_us"],
            "<= 10 us",
            state("latency_p50_us", False),
        ],
        [
            "... over the floor measured in the same repetition "
            "(median of the ratios)",
            "%.2fx" % m["floor_ratio"],
            "<= 1.5x",
            "met"
            if m["floor_ratio"] <= 1.5
            else "MISSED, %.2fx" % m["floor_ratio"],
        ],
        [
            "... the same, the producer woken by doorbell datagrams "
            "instead of its eventfd",
            "%.1f us, %.2fx the floor"
            % (m["latency_doorbell_p50_us"], m["floor_ratio_doorbell"]),
            "",
            "",
        ],
        [
            "consumer CPU per round trip, one at a time: Python worker "
            "/ C consumer",
            "%.1f / %.1f us" % (m["consumer_cpu_us"], m["c_consumer_cpu_us"]),
            "",
            "",
        ],
        [
            "round trip p90 / p99, Python worker asleep",
            "%.1f / %.1f us" % (m["latency_p90_us"], m["latency_p99_us"]),
            "",
            "",
        ],
        [
            "round trips/s, %d in flight, one Python worker" % o["inflight"],
            "{:,.0f}".format(m["throughput_per_s"]),
            ">= 500,000",
            state("throughput_per_s", True),
        ],
        [
            "wake-up system calls per 1000 round trips, saturated",
            "%.1f" % m["wakeups_per_1000"],
            "< 50",
            state("wakeups_per_1000", False),
        ],
        [
            "... futex wakes (producer) / doorbells (consumer) / "
            "consumer sleeps",
            "%.1f / %.1f / %.1f"
            % (
                m["futex_wakes_per_1000"],
                m["doorbells_per_1000"],
                m["sleeps_per_1000"],
            ),
            "",
            "",
        ],
        [
            "producer sleeps in poll() per 1000, saturated",
            "%.1f" % m["producer_polls_per_1000"],
            "",
            "",
        ],
        [
            "mean batch taken by the Python worker, saturated",
            "%.1f" % m["batch_mean"],
            "",
            "",
        ],
        [
            "latency runs: consumer sleeps / wake-ups rung, per request",
            "%.2f / %.2f"
            % (
                m["latency_run_sleeps_per_request"],
                m["latency_run_wakeups_per_request"],
            ),
            "",
            "",
        ],
    ]
    refs = [
        ["reference", "median of %d" % o["reps"]],
        ["---"] * 2,
        [
            "floor: bare futex round trip between two sleeping processes, "
            "p50 / p99",
            "%.1f / %.1f us" % (m["floor_p50_us"], m["floor_p99_us"]),
        ],
        [
            "ring with a C consumer: round trip p50 / p99",
            "%.1f / %.1f us" % (m["c_latency_p50_us"], m["c_latency_p99_us"]),
        ],
        [
            "ring with a C consumer: round trips/s",
            "{:,.0f}".format(m["c_throughput_per_s"]),
        ],
    ]
    per_rep = [
        [
            "rep",
            "p50 us",
            "p99 us",
            "C consumer p50 us",
            "floor p50 us",
            "round trips/s",
            "wake-ups per 1000",
        ],
        ["---"] * 7,
    ]
    r = doc["runs"]
    for i in range(len(r["latency"])):
        per_rep.append(
            [
                str(i + 1),
                "%.1f" % (r["latency"][i]["p50_ns"] / 1e3),
                "%.1f" % (r["latency"][i]["p99_ns"] / 1e3),
                "%.1f" % (r["c_latency"][i]["p50_ns"] / 1e3),
                "%.1f" % (r["floor"][i]["p50_ns"] / 1e3),
                "{:,.0f}".format(r["throughput"][i]["per_s"]),
                "%.1f" % per_1000(r["throughput"][i])["total"],
            ]
        )
    text = (
        [
            "# Ring benchmark: C producer, one Python worker",
            "",
            "Written by `bench/ring_bench.py` from the run below; `ring.json` "
            "holds every figure, every repetition included.",
            "",
            "- command: `%s`" % doc["command"],
            "- date: %s" % doc["date"],
            "- machine: nproc %d (%s), kernel %s, %s, cpuidle %s, Python %s, "
            "load average %.2f at start"
            % (
                mc["nproc"],
                mc["cpu"],
                mc["kernel"],
                "virtual machine" if mc["virtualized"] else "bare metal",
                mc["cpuidle"],
                mc["python"],
                mc["loadavg_at_start"],
            ),
            "- latency: %d round trips per run, %d us apart, after %d "
            "unmeasured; throughput: %d round trips per run, up to %d in "
            "flight, batches of up to %d; the dispatch returns None"
            % (
                o["latency_count"],
                o["gap_us"],
                o["latency_count"] // 10 + 10,
                o["count"],
                o["inflight"],
                o["batch"],
            ),
            "",
        ]
        + table(rows)
        + ["", "References, measured in the same repetitions:", ""]
        + table(refs)
        + ["", "Per repetition:", ""]
        + table(per_rep)
    )
    prof = doc.get("profile")
    if prof and "consumer" in prof:
        text += [
            "",
            "## Profile of one latency run",
            "",
            "`%s`; shares of samples." % prof["command"],
            "",
        ]
        for side in ("consumer", "producer"):
            text += [
                "%s:"
                % ("Python worker" if side == "consumer" else "C producer"),
                "",
            ]
            text += table(
                [["share", "object", "symbol"], ["---"] * 3]
                + [
                    [
                        "%.1f%%" % x["share"],
                        x["dso"].replace("|", "/"),
                        "`%s`" % x["symbol"],
                    ]
                    for x in prof[side]["top"]
                ]
            )
            text += [""]
    elif prof:
        text += ["", "Profile: %s." % prof["error"]]
    if doc["conclusions"]:
        text += ["", "## Conclusions", ""]
        text += ["- " + c for c in doc["conclusions"]]
    return "\n".join(text) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--latency-count", type=int, default=2000)
    ap.add_argument("--gap-us", type=int, default=1000)
    ap.add_argument("--count", type=int, default=500000)
    ap.add_argument("--inflight", type=int, default=128)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample one more latency run of each side with perf",
    )
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument(
        "--render",
        metavar="JSON",
        help="only write ring.md again from a ring.json",
    )
    ap.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    opts = ap.parse_args()

    if opts.serve:
        serve(opts.serve[0], int(opts.serve[1]), int(opts.serve[2]))
        return

    if opts.render:
        with open(opts.render) as f:
            doc = json.load(f)
        doc["conclusions"] = conclusions(doc["medians"], doc["profile"])
        write(doc, opts.out)
        return

    started = datetime.datetime.now(datetime.timezone.utc)
    info = machine()
    exe = build_producer()
    runs, prof = measure(opts, exe)
    if prof is not None:
        prof["gap_us"] = opts.gap_us
    m = summarize(runs)
    options = {
        k: v
        for k, v in vars(opts).items()
        if k not in ("serve", "out", "render")
    }
    doc = {
        "command": bench.report.command(__spec__.name),
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": info,
        "options": options,
        "medians": m,
        "targets": TARGETS,
        "met": {
            "latency_p50_us": m["latency_p50_us"] <= TARGETS["latency_p50_us"],
            "throughput_per_s": m["throughput_per_s"]
            >= TARGETS["throughput_per_s"],
            "wakeups_per_1000": m["wakeups_per_1000"]
            < TARGETS["wakeups_per_1000"],
        },
        "profile": prof,
        "conclusions": conclusions(m, prof),
        "runs": runs,
    }
    write(doc, opts.out)


def write(doc, out):
    text = report(doc)
    bench.report.write(out, "ring", text, doc, indent=1)
    print(text)


if __name__ == "__main__":
    main()
