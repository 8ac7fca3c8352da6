"""A fleet on one machine: etcd (one member) and six gateways (nginx + a
Python worker each) on loopback, fed from it: three (set A) follow one
prefix, three (set B) another, each holding app ``test``.

1. Propagation: A's app has its endpoint moved, 200 times; for each
   change, the time from the write (just before the put is sent) to the
   first request routed to the new endpoint, on every gateway of A (each
   probed by its own thread over a keep-alive connection).  p50 and p99
   per gateway, and of the slowest of the three per change.
2. Throughput while endpoints change, side by side: wrk on all six
   gateways at once, each wrk in a session of its own (a client machine
   of its own, for the scheduler).  Each round has three runs in turn:
   quiet (no writes), A's app changed 100 times a second, and B's.  The
   set whose endpoints change is measured against the other set at the
   same moment (no change to its endpoints, etcd as busy, the machine's
   other load the same); and, second, against itself in the round's
   quiet run.  Each change is a different set of live endpoints.
3. What a change costs, the gateways idle: the CPU per change of each
   gateway's discovery process, of its nginx and Python worker, of etcd
   and of the writer; A with its coalescing window as configured, B with
   it off (``coalesce`` 0).

Writes bench/results/fleet.md and fleet.json.

    python -m bench.fleet_bench [--changes 200] [--rounds 5] [--duration 8]
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
import http.client
from pathlib import Path

import bench.report
from bench import CHECKOUT
from bench.procs import children, pids_of, process_cpu, wait_for
from fleet import FLEET_HTTP, PREFIX, Etcd, Sites, app_value, etcd_mosn
from gateway import Gateway, MODULE
from pyworker.discovery.etcdwire import PUT, PutRequest, PutResponse
from pyworker.discovery.grpcchannel import Channel

BENCH = Path(CHECKOUT) / "bench"
REPO = Path(CHECKOUT)

APP_KEY = PREFIX + "test"
PREFIX_B = "/bench/apps-b/"
# room for a connection to every endpoint the app may have, times the
# load's concurrency: with less, the keepalive cache evicts connections
# each time the set changes, and endpoint churn becomes connection churn
HTTP = FLEET_HTTP.replace("keepalive 16", "keepalive 64")
LABELS = ["a", "b", "c", "d"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=8)
    p.add_argument(
        "--rate",
        type=int,
        default=100,
        help="endpoint changes per second in part 2",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=16,
        help="wrk connections per gateway",
    )
    p.add_argument(
        "--cost-changes",
        type=int,
        default=500,
        help="changes per measurement in part 3",
    )
    p.add_argument(
        "--coalesce",
        type=float,
        default=0.05,
        help="the gateways' etcd coalesce window, seconds",
    )
    p.add_argument(
        "--parts",
        default="propagation,throughput,cost",
        help="which parts to run, comma-separated",
    )
    p.add_argument("--out", default=str(BENCH / "results" / "fleet"))
    return p.parse_args()


# -- the writer -------------------------------------------------------------


class Writer:
    """An etcd client in its own thread and event loop: the gateways' own
    gRPC channel (pyworker.discovery.grpcchannel), one Put per change."""

    def __init__(self, endpoint):
        host, port = endpoint.rsplit(":", 1)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def connect():
            return await Channel.open(host, int(port), 5.0)

        self.channel = self.call(connect())

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(
            timeout
        )

    async def _put(self, key, value):
        return await self.channel.unary(
            PUT, PutRequest(key=key, value=value), PutResponse
        )

    def put(self, key, value):
        return self.call(self._put(key.encode(), value.encode()))

    def start_stream(self, key, values, rate, stop):
        """Puts values[i % n] to key at ``rate`` a second until stop."""
        key = key.encode()
        values = [v.encode() for v in values]

        async def stream():
            period = 1.0 / rate
            next_at = time.monotonic()
            i = 0
            while not stop.is_set():
                await self._put(key, values[i % len(values)])
                i += 1
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            return i

        return asyncio.run_coroutine_threadsafe(stream(), self.loop)

    def close(self):
        self.loop.call_soon_threadsafe(self.channel.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


# -- part 1: propagation ----------------------------------------------------


class Prober(threading.Thread):
    """Asks one gateway over and over; notes when each wanted label first
    answers."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.want = None  # (label, since)
        self.seen = None  # seconds from since to the first hit
        self.cond = threading.Condition()
        self.stopping = False
        self.errors = 0

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.stopping:
            with self.cond:
                while self.want is None and not self.stopping:
                    self.cond.wait()
                want = self.want
            if want is None:
                break
            try:
                conn.request("GET", "/", headers={"uid": "2"})
                resp = conn.getresponse()
                body = resp.read().decode()
                now = time.monotonic()
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=5
                )
                continue
            if resp.status == 200 and body.endswith(" " + want[0]):
                with self.cond:
                    if self.want is want:
                        self.seen = now - want[1]
                        self.want = None
                        self.cond.notify_all()

    def expect(self, label, since):
        with self.cond:
            self.seen = None
            self.want = (label, since)
            self.cond.notify_all()

    def result(self, timeout=10):
        with self.cond:
            self.cond.wait_for(lambda: self.want is None, timeout)
            return self.seen

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


def propagation(writer, sites, gateways, changes, gap):
    """``changes`` changes, each written ``gap`` seconds after the one
    before was seen by every gateway."""
    probers = [Prober(gw.port) for gw in gateways]
    for p in probers:
        p.start()
    per_gateway = [[] for _ in gateways]
    slowest, missed = [], 0
    for i in range(changes):
        label = LABELS[i % 2]  # a and b in turn
        value = json.dumps(app_value("test", [(sites.ports[label], "s1")]))
        since = time.monotonic()
        for p in probers:
            p.expect(label, since)
        writer.put(APP_KEY, value)
        got = [p.result() for p in probers]
        if any(g is None for g in got):
            missed += 1
            continue
        for k, g in enumerate(got):
            per_gateway[k].append(g * 1000)
        slowest.append(max(got) * 1000)
        time.sleep(gap)
    for p in probers:
        p.stop()
    return {
        "per_gateway": per_gateway,
        "slowest": slowest,
        "missed": missed,
        "probe_errors": sum(p.errors for p in probers),
    }


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# -- part 2: throughput ------------------------------------------------------


def wrk(port, seconds, connections):
    # a session of its own: with the kernel's autogroup scheduling, a
    # client sharing this script's session would share its CPU with etcd
    # and the writer, and their work would slow the load, not the gateways
    return subprocess.Popen(
        [
            "wrk",
            "-t1",
            "-c%d" % connections,
            "-d%ds" % seconds,
            "-H",
            "uid: 2",
            "http://127.0.0.1:%d/" % port,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def parse(text):
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s+(\d+) requests in", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), "
        r"write (\d+), timeout (\d+)",
        text,
    )
    if not (rps and total):
        raise RuntimeError("cannot parse wrk output:\n" + text)
    return {
        "rps": float(rps.group(1)),
        "requests": int(total.group(1)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, sock.groups())) if sock else 0,
    }


def discovery_pids(gw):
    return pids_of("pyworker discover --shm /" + gw.shm)


def roles(fleet, clients=()):
    """{role: pids} of the fleet's processes."""
    out = {}
    for name, gws in fleet.sets.items():
        out["nginx " + name] = [
            p for gw in gws for p in gw.nginx_worker_pids()
        ]
        out["workers " + name] = [p for gw in gws for p in gw.python_pids()]
        out["discovery " + name] = [
            p for gw in gws for p in discovery_pids(gw)
        ]
    out["etcd"] = [m.proc.pid for m in fleet.etcd.members if m.proc]
    out["writer"] = [os.getpid()]
    out["wrk"] = [p.pid for p in clients]
    out["sites"] = children(fleet.sites.master_pid())
    return out


def cpu_by_role(role_pids):
    return {role: process_cpu(pids) for role, pids in role_pids.items()}


def generations(gws):
    out = []
    for gw in gws:
        region = gw.region()
        try:
            out.append(region.endpoint_generation("test"))
        finally:
            region.close()
    return out


def throughput(fleet, args):
    conditions = ["quiet", "A changes", "B changes"]
    runs = []
    for r in range(args.rounds):
        for condition in conditions:
            stop = threading.Event()
            stream = None
            if condition != "quiet":
                stream = fleet.writer.start_stream(
                    fleet.keys[condition[0]], fleet.values, args.rate, stop
                )
            time.sleep(0.5)
            gens = {name: generations(gws) for name, gws in fleet.sets.items()}
            pids = roles(fleet)
            procs = [
                wrk(gw.port, args.duration, args.connections)
                for gw in fleet.gateways
            ]
            pids["wrk"] = [p.pid for p in procs]
            cpu0 = cpu_by_role(pids)
            time.sleep(args.duration - 0.5)
            cpu1 = cpu_by_role(pids)
            outs = [
                p.communicate(timeout=args.duration + 60)[0] for p in procs
            ]
            after = {
                name: generations(gws) for name, gws in fleet.sets.items()
            }
            stop.set()
            writes = stream.result(30) if stream else 0
            results = [parse(o) for o in outs]
            by_set = {}
            for name, gws in fleet.sets.items():
                mine = [results[fleet.gateways.index(gw)] for gw in gws]
                by_set[name] = {
                    "rps": sum(x["rps"] for x in mine),
                    "per_gateway_rps": [x["rps"] for x in mine],
                    "bad": sum(
                        x["non_2xx"] + x["socket_errors"] for x in mine
                    ),
                    "table_writes": [
                        a - b for a, b in zip(after[name], gens[name])
                    ],
                }
            run = {
                "round": r,
                "condition": condition,
                "changing": condition[0] if stream else None,
                "sets": by_set,
                "etcd_writes": writes,
                "cpu_seconds": {k: round(cpu1[k] - cpu0[k], 2) for k in cpu1},
                "seconds": args.duration - 0.5,
            }
            runs.append(run)
            print(
                "round %d %-10s A %6.0f req/s  B %6.0f req/s  bad %d  "
                "table writes A %s B %s"
                % (
                    r,
                    condition,
                    by_set["A"]["rps"],
                    by_set["B"]["rps"],
                    by_set["A"]["bad"] + by_set["B"]["bad"],
                    by_set["A"]["table_writes"],
                    by_set["B"]["table_writes"],
                ),
                flush=True,
            )
    return runs


def request_cpu(run, name):
    """CPU-seconds of a set's nginx and Python workers per request."""
    cpu = (
        run["cpu_seconds"]["nginx " + name]
        + run["cpu_seconds"]["workers " + name]
    )
    return cpu / (run["sets"][name]["rps"] * run["seconds"])


def one_core(run, changing, control):
    """The changing set over the control set, were each gateway alone on
    a core of its own: what its discovery process leaves of the core
    (1 - its CPU-seconds per second), over the CPU a request costs its
    nginx and worker, against the same for the control set."""
    busy = run["cpu_seconds"]["discovery " + changing] / (
        len(run["sets"][changing]["per_gateway_rps"]) * run["seconds"]
    )
    return (1 - busy) * request_cpu(run, control) / request_cpu(run, changing)


def ratios(runs):
    """Per changing run: the changing set over the control set, over
    itself in the round's quiet run, and each changing gateway over the
    control set's mean gateway; and the same two for requests per
    CPU-second of the set's own processes."""
    quiet = {run["round"]: run for run in runs if run["condition"] == "quiet"}
    out = []
    for run in runs:
        if run["changing"] is None:
            continue
        mine = run["sets"][run["changing"]]
        other_name = "B" if run["changing"] == "A" else "A"
        other = run["sets"][other_name]
        control_gw = other["rps"] / len(other["per_gateway_rps"])
        before = quiet.get(run["round"])
        out.append(
            {
                "one_core": one_core(run, run["changing"], other_name),
                "round": run["round"],
                "changing": run["changing"],
                "side_by_side": mine["rps"] / other["rps"],
                "per_gateway": [
                    x / control_gw for x in mine["per_gateway_rps"]
                ],
                "own_quiet": (
                    mine["rps"] / before["sets"][run["changing"]]["rps"]
                )
                if before
                else None,
                "bad": mine["bad"] + other["bad"],
            }
        )
    return out


# -- part 3: the cost of a change -----------------------------------------


def cost(fleet, args):
    """CPU per change with the gateways idle; A as configured, B with
    coalescing off."""
    rows = []
    for r in range(2):
        for name in ("A", "B"):
            stop = threading.Event()
            pids = roles(fleet)
            gens = generations(fleet.sets[name])
            cpu0 = cpu_by_role(pids)
            stream = fleet.writer.start_stream(
                fleet.keys[name], fleet.values, args.rate, stop
            )
            time.sleep(args.cost_changes / args.rate)
            stop.set()
            n = stream.result(30)
            time.sleep(1.0)  # every change read and applied
            cpu1 = cpu_by_role(pids)
            writes = [
                a - b for a, b in zip(generations(fleet.sets[name]), gens)
            ]
            used = {k: cpu1[k] - cpu0[k] for k in cpu1}
            rows.append(
                {
                    "round": r,
                    "set": name,
                    "changes": n,
                    "coalesce": fleet.coalesce[name],
                    "cpu_seconds": {k: round(v, 3) for k, v in used.items()},
                    "table_writes": writes,
                }
            )
            print(
                "cost %s (coalesce %g): %d changes, discovery %.3f ms "
                "CPU per change per gateway, etcd %.3f ms, writer %.3f "
                "ms; table writes %s"
                % (
                    name,
                    fleet.coalesce[name],
                    n,
                    used["discovery " + name] * 1000 / n / 3,
                    used["etcd"] * 1000 / n,
                    used["writer"] * 1000 / n,
                    writes,
                ),
                flush=True,
            )
    return rows


# -- the report ---------------------------------------------------------------


def machine():
    return dict(
        bench.report.machine(etcd=["etcd", "--version"]),
        loadavg=Path("/proc/loadavg").read_text().strip(),
    )


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def report(args, info, started, prop, runs, costs, elapsed, load_after):
    """fleet.md: the setup, then a section per part that ran."""
    lines = _report_head(args, info, started, elapsed, load_after)
    if prop is not None:
        lines += _propagation_section(args, prop)
    if runs is not None:
        lines += _throughput_section(args, runs)
    if costs is not None:
        lines += _cost_section(args, costs)
    return "\n".join(lines) + "\n"


def _report_head(args, info, started, elapsed, load_after):
    return [
        "# A fleet on one machine: etcd and six gateways",
        "",
        "Command: `%s`  " % bench.report.command(__spec__.name),
        "Date: %s, %.0f s  " % (started, elapsed),
        "Machine: %s CPUs (%s), Linux %s, %s, %s, %s, Python %s  "
        % (
            info["nproc"],
            info["cpu"],
            info["kernel"],
            info["nginx"],
            info["etcd"],
            info["wrk"],
            info["python"],
        ),
        "Load average before the run: %s; after: %s"
        % (info["loadavg"], load_after),
        "",
        "Everything on this machine, on loopback: one etcd member (data on "
        "tmpfs), six gateways (1 nginx worker + 1 Python worker each, "
        "endpoints from etcd through `mosn_subset`, `keepalive 64` to the "
        "endpoints, etcd `coalesce` %s s): set A follows prefix `%s`, set "
        "B `%s`; the demo sites in one plain nginx; the writer is this "
        "script (the gateways' own gRPC channel, one Put per change)."
        % (args.coalesce, PREFIX, PREFIX_B),
        "",
    ]


def _propagation_section(args, prop):
    lines = [
        "## 1. From an etcd write to the first request routed to the "
        "new endpoint",
        "",
        "%d changes of A's app `test`, its only s1 endpoint a and b in "
        "turn; each gateway of A is asked `uid: 2` over and over by its "
        "own thread until the new endpoint answers. Time from just "
        "before the put is sent. Each change is written a while after "
        "every gateway saw the one before: %g s (*apart*: longer than "
        "the %g s window in which a change that follows another waits "
        "for the window's end) or %g s (*close*: most changes fall in "
        "that window)."
        % (
            args.changes,
            prop["apart"]["gap"],
            args.coalesce,
            prop["close"]["gap"],
        ),
        "",
        "| changes | gateway | changes seen | p50 ms | p99 ms | max ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, one in prop.items():
        for k, values in enumerate(one["per_gateway"]):
            lines.append(
                "| %s | A%d | %d | %.1f | %.1f | %.1f |"
                % (
                    name,
                    k + 1,
                    len(values),
                    pct(values, 0.5),
                    pct(values, 0.99),
                    max(values) if values else float("nan"),
                )
            )
        s = one["slowest"]
        lines.append(
            "| %s | **all three** (the slowest per change) | "
            "%d | %.1f | %.1f | %.1f |"
            % (
                name,
                len(s),
                pct(s, 0.5),
                pct(s, 0.99),
                max(s) if s else float("nan"),
            )
        )
    missed = sum(one["missed"] for one in prop.values())
    worst = max(pct(one["slowest"], 0.99) for one in prop.values())
    lines += [
        "",
        "Changes not seen by every gateway within 10 s: %d. "
        "Target p99 <= 100 ms: **%s**."
        % (missed, "met" if worst <= 100 and not missed else "not met"),
        "",
    ]
    return lines


def _throughput_section(args, runs):
    lines = []
    rs = ratios(runs)
    lines += [
        "## 2. Throughput while endpoints change %d times a second"
        % args.rate,
        "",
        "wrk -t1 -c%d -d%ds -H 'uid: 2' on each of the six gateways at "
        "once (each wrk in its own session); %d rounds of three runs: "
        "quiet, A's app changing, B's app changing (each change a "
        "different set of three of four live endpoints). Requests/s "
        "summed over each set."
        % (args.connections, args.duration, args.rounds),
        "",
        "| round | run | A req/s | B req/s | changing / control | "
        "changing / itself quiet | non-2xx | etcd writes | table writes "
        "(changing set) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_run = {(x["round"], x["changing"]): x for x in rs}
    for run in runs:
        x = by_run.get((run["round"], run["changing"]))
        sets = run["sets"]
        lines.append(
            "| %d | %s | %.0f | %.0f | %s | %s | %d | %d | %s |"
            % (
                run["round"],
                run["condition"],
                sets["A"]["rps"],
                sets["B"]["rps"],
                "%.3f" % x["side_by_side"] if x else "",
                "%.3f" % x["own_quiet"] if x else "",
                sets["A"]["bad"] + sets["B"]["bad"],
                run["etcd_writes"],
                sets[run["changing"]]["table_writes"]
                if run["changing"]
                else "",
            )
        )
    side = med(x["side_by_side"] for x in rs)
    own = med(x["own_quiet"] for x in rs)
    per_gw = {}
    for x in rs:
        for k, v in enumerate(x["per_gateway"]):
            per_gw.setdefault("%s%d" % (x["changing"], k + 1), []).append(v)
    gw_meds = {k: med(v) for k, v in sorted(per_gw.items())}
    quiet_ab = med(
        r["sets"]["A"]["rps"] / r["sets"]["B"]["rps"]
        for r in runs
        if r["condition"] == "quiet"
    )
    bad = sum(x["bad"] for x in rs)
    lines += [
        "",
        "Changing set / control set at the same moment (median of "
        "the %d changing runs): **%.3f**; each changing gateway / the "
        "control set's mean gateway (median over its runs): %s. In the "
        "quiet runs, A / B: %.3f (how alike the two sets are)."
        % (
            len(rs),
            side,
            ", ".join("%s %.3f" % kv for kv in gw_meds.items()),
            quiet_ab,
        ),
        "",
        "Changing set / itself in the round's quiet run (median): "
        "**%.3f**: etcd and the writer busy, besides the gateways' own "
        "work, and the machine's load moving between runs." % own,
        "",
        "Were each gateway alone on a core (what its discovery process "
        "leaves of the core, over the CPU its nginx and worker spend "
        "per request; against the control set in the same run): "
        "**%.3f** (median; per run: %s)."
        % (
            med(x["one_core"] for x in rs),
            " / ".join("%.3f" % x["one_core"] for x in rs),
        ),
        "",
        "Non-2xx or socket errors while endpoints change: **%d**. "
        "Target >= 0.95x (each gateway, against gateways whose "
        "endpoints do not change) and 0 non-2xx: **%s**."
        % (
            bad,
            "met"
            if min(gw_meds.values()) >= 0.95 and side >= 0.95 and bad == 0
            else "not met",
        ),
        "",
        "CPU seconds per run (median over the runs of each kind) of the "
        "fleet's processes:",
        "",
    ]
    role_names = list(runs[0]["cpu_seconds"])
    lines += [
        "| run | " + " | ".join(role_names) + " |",
        "| --- |" + " --- |" * len(role_names),
    ]
    for condition in ("quiet", "A changes", "B changes"):
        mine = [r for r in runs if r["condition"] == condition]
        lines.append(
            "| %s | %s |"
            % (
                condition,
                " | ".join(
                    "%.2f" % med(r["cpu_seconds"][role] for r in mine)
                    for role in role_names
                ),
            )
        )
    lines.append("")
    return lines


def _cost_section(args, costs):
    lines = [
        "## 3. What a change costs, the gateways idle",
        "",
        "%d changes at %d a second to one set's app, no requests; CPU "
        "milliseconds per change (median of 2 runs each; discovery per "
        "gateway)." % (args.cost_changes, args.rate),
        "",
        "| set | coalesce s | discovery | nginx + Python worker (3 "
        "gateways) | etcd | writer | table writes per change per "
        "gateway |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("A", "B"):
        mine = [c for c in costs if c["set"] == name]

        def per(role, share=1):
            return med(
                c["cpu_seconds"][role] * 1000 / c["changes"] / share
                for c in mine
            )

        lines.append(
            "| %s | %g | %.3f | %.3f | %.3f | %.3f | %.2f |"
            % (
                name,
                mine[0]["coalesce"],
                per("discovery " + name, 3),
                med(
                    (
                        c["cpu_seconds"]["nginx " + name]
                        + c["cpu_seconds"]["workers " + name]
                    )
                    * 1000
                    / c["changes"]
                    for c in mine
                ),
                per("etcd"),
                per("writer"),
                med(sum(c["table_writes"]) / 3 / c["changes"] for c in mine),
            )
        )
    lines.append("")
    return lines


# -- the fleet ----------------------------------------------------------------


class Fleet:
    def __init__(self, args):
        self.etcd = Etcd(1).start()
        self.sites = Sites([("s1", label) for label in LABELS]).start()
        self.sets = {"A": [], "B": []}
        self.gateways = []
        self.writer = None
        self.keys = {"A": APP_KEY, "B": PREFIX_B + "test"}
        self.coalesce = {"A": args.coalesce, "B": args.coalesce}
        self.values = [
            json.dumps(
                app_value(
                    "test",
                    [(self.sites.ports[x], "s1") for x in LABELS if x != skip],
                )
            )
            for skip in LABELS
        ]

    def start(self):
        self.writer = Writer(self.etcd.endpoints[0])
        first = json.dumps(app_value("test", [(self.sites.ports["b"], "s1")]))
        for name, prefix in (("A", PREFIX), ("B", PREFIX_B)):
            self.writer.put(self.keys[name], first)
            for _ in range(3):
                gw = Gateway(HTTP, mosn=self.mosn(name))
                self.sets[name].append(gw)
                self.gateways.append(gw)
                gw.start()
        for gw in self.gateways:
            assert wait_for(
                lambda: gw.get("/", {"uid": "2"}).status == 200, 15
            ), gw.error_log()
        return self

    def mosn(self, name):
        return etcd_mosn(
            self.etcd.endpoints,
            prefix=PREFIX if name == "A" else PREFIX_B,
            coalesce=self.coalesce[name],
        )

    def set_coalesce(self, name, seconds):
        """Reloads a set's gateways with another coalescing window."""
        self.coalesce[name] = seconds
        for gw in self.sets[name]:
            before = discovery_pids(gw)
            gw.write_mosn(self.mosn(name))
            gw.reload()
            assert wait_for(
                lambda: discovery_pids(gw) and discovery_pids(gw) != before, 15
            ), gw.error_log()
            assert wait_for(
                lambda: gw.get("/", {"uid": "2"}).status == 200, 15
            ), gw.error_log()

    def close(self):
        if self.writer:
            self.writer.close()
        for gw in self.gateways:
            try:
                gw.stop()
            except AssertionError as exc:
                print(exc, "(its directory is kept: %s)" % gw.prefix)
            else:
                shutil.rmtree(gw.prefix, ignore_errors=True)
        self.sites.stop()
        self.etcd.close()


def main():
    args = parse_args()
    assert os.path.exists(MODULE), "build the module first: make build-l7"
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    info = machine()
    t0 = time.monotonic()
    fleet = Fleet(args)
    parts = args.parts.split(",")
    prop = runs = costs = None
    try:
        fleet.start()
        if "propagation" in parts:
            prop = {}
            for name, gap in (
                ("apart", max(0.1, 2 * args.coalesce)),
                ("close", 0.02),
            ):
                prop[name] = propagation(
                    fleet.writer,
                    fleet.sites,
                    fleet.sets["A"],
                    args.changes,
                    gap,
                )
                prop[name]["gap"] = gap
                print(
                    "propagation, changes %s (%g s): p50 %.1f ms p99 "
                    "%.1f ms (slowest of three)"
                    % (
                        name,
                        gap,
                        pct(prop[name]["slowest"], 0.5),
                        pct(prop[name]["slowest"], 0.99),
                    ),
                    flush=True,
                )
        if "throughput" in parts:
            runs = throughput(fleet, args)
        if "cost" in parts:
            fleet.set_coalesce("B", 0)
            costs = cost(fleet, args)
    finally:
        fleet.close()
    text = report(
        args,
        info,
        started,
        prop,
        runs,
        costs,
        time.monotonic() - t0,
        Path("/proc/loadavg").read_text().strip(),
    )
    out = Path(args.out)
    bench.report.write(
        out.parent,
        out.name,
        text,
        {
            "machine": info,
            "args": vars(args),
            "propagation": prop,
            "throughput": runs,
            "ratios": ratios(runs) if runs else None,
            "cost": costs,
        },
        indent=1,
    )
    print(text)


if __name__ == "__main__":
    main()
