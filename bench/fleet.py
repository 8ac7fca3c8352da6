"""A fleet on one machine: etcd (one member) and three gateways (nginx + a
Python worker each) on loopback, fed from it.

1. Propagation: an app's endpoint is moved in etcd, 200 times; for each
   change, the time from the write (just before the put is sent) to the
   first request routed to the new endpoint, on every gateway (each is
   probed by its own thread over a keep-alive connection).  p50 and p99
   per gateway, and of the slowest of the three per change.
2. Throughput while endpoints change: wrk on the three gateways at once,
   interleaved runs of three conditions: quiet (no etcd writes), writes
   elsewhere (100 writes/s to a key no gateway watches: etcd and the
   writer busy, the gateways untouched) and endpoint changes (100
   writes/s to the app's key, each a different set of endpoints, all
   live).  Requests/s summed over the gateways, and non-2xx.

Writes bench/results/fleet.md and fleet.json.

    python3 bench/fleet.py [--changes 200] [--rounds 3] [--duration 10]
"""

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
import http.client
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))

from fleet import (FLEET_HTTP, PREFIX, Etcd, Sites, app_value,  # noqa: E402
                   etcd_mosn)
from gateway import Gateway, MODULE, pids_of, wait_for  # noqa: E402

APP_KEY = PREFIX + "test"
# room for a connection to every endpoint the app may have, times the
# load's concurrency: with less, the keepalive cache evicts connections
# each time the set changes, and endpoint churn becomes connection churn
HTTP = FLEET_HTTP.replace("keepalive 16", "keepalive 64")
LABELS = ["a", "b", "c", "d"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rate", type=int, default=100,
                   help="endpoint changes per second in part 2")
    p.add_argument("--connections", type=int, default=16,
                   help="wrk connections per gateway")
    p.add_argument("--out", default=str(BENCH / "results" / "fleet"))
    return p.parse_args()


# -- the writer -------------------------------------------------------------


class Writer:
    """An etcd client in its own thread and event loop (aetcd)."""

    def __init__(self, endpoint):
        import aetcd
        host, port = endpoint.rsplit(":", 1)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.client = aetcd.Client(host, int(port))
        self.call(self.client.connect())

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(
            timeout)

    def put(self, key, value):
        return self.call(self.client.put(key.encode(), value.encode()))

    def start_stream(self, key, values, rate, stop):
        """Puts values[i % n] to key at ``rate`` a second until stop."""
        async def stream():
            period = 1.0 / rate
            next_at = time.monotonic()
            i = 0
            while not stop.is_set():
                await self.client.put(key.encode(),
                                      values[i % len(values)].encode())
                i += 1
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            return i
        return asyncio.run_coroutine_threadsafe(stream(), self.loop)

    def close(self):
        try:
            self.call(self.client.close(), 5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)


# -- part 1: propagation ----------------------------------------------------


class Prober(threading.Thread):
    """Asks one gateway over and over; notes when each wanted label first
    answers."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.want = None        # (label, since)
        self.seen = None        # seconds from since to the first hit
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
                conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                  timeout=5)
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


def propagation(writer, sites, gateways, changes):
    probers = [Prober(gw.port) for gw in gateways]
    for p in probers:
        p.start()
    per_gateway = [[] for _ in gateways]
    slowest, missed = [], 0
    for i in range(changes):
        label = LABELS[i % 2]        # a and b in turn
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
        time.sleep(0.02)
    for p in probers:
        p.stop()
    return {"per_gateway": per_gateway, "slowest": slowest,
            "missed": missed, "probe_errors": sum(p.errors for p in probers)}


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# -- part 2: throughput ------------------------------------------------------


def wrk(port, seconds, connections):
    return subprocess.Popen(
        ["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds,
         "-H", "uid: 2", "http://127.0.0.1:%d/" % port],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def parse(text):
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s+(\d+) requests in", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), "
                     r"write (\d+), timeout (\d+)", text)
    if not (rps and total):
        raise RuntimeError("cannot parse wrk output:\n" + text)
    return {"rps": float(rps.group(1)), "requests": int(total.group(1)),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, sock.groups())) if sock else 0}


def cpu_by_role(gateways, etcd):
    """CPU seconds used so far by each kind of process of the fleet."""
    def used(pids):
        total = 0.0
        for pid in pids:
            try:
                with open("/proc/%d/stat" % pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return total / os.sysconf("SC_CLK_TCK")
    roles = {"nginx": [], "python workers": [], "discovery": []}
    for gw in gateways:
        roles["nginx"] += gw.nginx_worker_pids()
        roles["python workers"] += gw.python_pids()
        roles["discovery"] += pids_of("pyworker discover --shm /" + gw.shm)
    roles["etcd"] = [m.proc.pid for m in etcd.members if m.proc]
    roles["writer (this process)"] = [os.getpid()]
    return {role: used(pids) for role, pids in roles.items()}


def throughput(writer, sites, gateways, etcd, args):
    sets = [json.dumps(app_value("test", [(sites.ports[l], "s1")
                                          for l in LABELS if l != skip]))
            for skip in LABELS]
    writer.put(APP_KEY, sets[0])
    conditions = ["quiet", "writes elsewhere", "endpoint changes"]
    runs = {c: [] for c in conditions}
    for r in range(args.rounds):
        for condition in conditions:
            stop = threading.Event()
            stream = None
            if condition == "endpoint changes":
                stream = writer.start_stream(APP_KEY, sets, args.rate, stop)
            elif condition == "writes elsewhere":
                stream = writer.start_stream("/bench/elsewhere", sets,
                                             args.rate, stop)
            time.sleep(0.5)
            gens = [generation(gw) for gw in gateways]
            cpu0 = cpu_by_role(gateways, etcd)
            procs = [wrk(gw.port, args.duration, args.connections)
                     for gw in gateways]
            outs = [p.communicate(timeout=args.duration + 60)[0]
                    for p in procs]
            cpu1 = cpu_by_role(gateways, etcd)
            after = [generation(gw) for gw in gateways]
            stop.set()
            writes = stream.result(30) if stream else 0
            results = [parse(o) for o in outs]
            runs[condition].append({
                "round": r, "rps": sum(x["rps"] for x in results),
                "per_gateway_rps": [x["rps"] for x in results],
                "non_2xx": sum(x["non_2xx"] for x in results),
                "socket_errors": sum(x["socket_errors"] for x in results),
                "requests": sum(x["requests"] for x in results),
                "etcd_writes": writes,
                "cpu_seconds": {k: round(cpu1[k] - cpu0[k], 2)
                                for k in cpu1},
                "table_writes": [a - b for a, b in zip(after, gens)]})
            print("round %d %-17s %8.0f req/s  non-2xx %d  table writes %s"
                  % (r, condition, runs[condition][-1]["rps"],
                     runs[condition][-1]["non_2xx"],
                     runs[condition][-1]["table_writes"]), flush=True)
    return runs


def generation(gw):
    region = gw.region()
    try:
        return region.endpoint_generation("test")
    finally:
        region.close()


# -- the report ---------------------------------------------------------------


def machine():
    def first(argv):
        try:
            done = subprocess.run(argv, capture_output=True, text=True,
                                  timeout=10)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown")
    return {"nproc": first(["nproc"]), "cpu": model,
            "kernel": platform.release(), "nginx": first(["nginx", "-v"]),
            "etcd": first(["etcd", "--version"]),
            "wrk": first(["wrk", "-v"]).split(" [")[0],
            "python": platform.python_version(),
            "loadavg": Path("/proc/loadavg").read_text().strip()}


def report(args, info, started, prop, runs, elapsed):
    lines = [
        "# A fleet on one machine: etcd and three gateways",
        "",
        "Command: `%s`  " % ("python3 bench/fleet.py" + (
            " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")),
        "Date: %s, %.0f s  " % (started, elapsed),
        "Machine: %s CPUs (%s), Linux %s, %s, %s, %s, Python %s  "
        % (info["nproc"], info["cpu"], info["kernel"], info["nginx"],
           info["etcd"], info["wrk"], info["python"]),
        "Load average before the run: %s" % info["loadavg"],
        "",
        "Everything on this machine, on loopback: one etcd member (data on "
        "tmpfs), three gateways (1 nginx worker + 1 Python worker each, "
        "endpoints from etcd through `mosn_subset`, `keepalive 64` to the "
        "endpoints), the demo sites in one plain nginx, the probes or wrk.",
        "",
        "## 1. From an etcd write to the first request routed to the new "
        "endpoint",
        "",
        "%d changes of app `test`'s only s1 endpoint (a and b in turn); each "
        "gateway is asked `uid: 2` over and over by its own thread until "
        "the new endpoint answers. Time from just before the put is sent."
        % args.changes,
        "",
        "| gateway | changes seen | p50 ms | p99 ms | max ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k, values in enumerate(prop["per_gateway"]):
        lines.append("| %d | %d | %.1f | %.1f | %.1f |" % (
            k + 1, len(values), pct(values, .5), pct(values, .99),
            max(values) if values else float("nan")))
    s = prop["slowest"]
    lines += ["| all three (the slowest per change) | %d | %.1f | %.1f | "
              "%.1f |" % (len(s), pct(s, .5), pct(s, .99),
                          max(s) if s else float("nan")), "",
              "Changes not seen by every gateway within 10 s: %d. "
              "Target p99 <= 100 ms: **%s**." % (
                  prop["missed"], "met" if s and pct(s, .99) <= 100
                  and not prop["missed"] else "not met"), ""]
    lines += [
        "## 2. Throughput while endpoints change %d times a second"
        % args.rate, "",
        "wrk -t1 -c%d -d%ds -H 'uid: 2' on each of the three gateways at "
        "once; %d interleaved rounds of each condition; requests/s summed "
        "over the three gateways. Endpoint changes rotate app `test` over "
        "four sets of three live endpoints." % (
            args.connections, args.duration, args.rounds), "",
        "| condition | req/s (median) | runs | non-2xx | etcd writes | "
        "table writes per gateway (last run) |",
        "| --- | --- | --- | --- | --- | --- |"]
    med = {}
    for condition, items in runs.items():
        med[condition] = statistics.median(x["rps"] for x in items)
        lines.append("| %s | %.0f | %s | %d | %d | %s |" % (
            condition, med[condition],
            " / ".join("%.0f" % x["rps"] for x in items),
            sum(x["non_2xx"] + x["socket_errors"] for x in items),
            sum(x["etcd_writes"] for x in items),
            items[-1]["table_writes"]))
    lines += ["", "CPU seconds per run (median over the runs) by the fleet's "
              "processes; the writer is this script's etcd client (wrk, the "
              "sites and everything else on the machine are not counted):",
              "", "| condition | " + " | ".join(
                  runs["quiet"][0]["cpu_seconds"]) + " |",
              "| --- |" + " --- |" * len(runs["quiet"][0]["cpu_seconds"])]
    for condition, items in runs.items():
        lines.append("| %s | %s |" % (condition, " | ".join(
            "%.2f" % statistics.median(x["cpu_seconds"][role] for x in items)
            for role in items[0]["cpu_seconds"])))
    changes = runs["endpoint changes"]
    ratio = med["endpoint changes"] / med["quiet"]
    own = med["endpoint changes"] / med["writes elsewhere"]
    bad = sum(x["non_2xx"] + x["socket_errors"] for x in changes)
    lines += ["",
              "Endpoint changes / quiet: **%.3f**; endpoint changes / "
              "writes elsewhere (the gateways' own cost, etcd equally busy): "
              "**%.3f**. Non-2xx or socket errors while endpoints change: "
              "**%d**. Target >= 0.95x and 0 non-2xx: **%s**." % (
                  ratio, own, bad,
                  "met" if ratio >= 0.95 and bad == 0 else "not met"), ""]
    return "\n".join(lines) + "\n"


def main():
    args = parse_args()
    assert os.path.exists(MODULE), "build the module first: make build-l7"
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    info = machine()
    t0 = time.monotonic()
    etcd = Etcd(1).start()
    sites = Sites([("s1", label) for label in LABELS]).start()
    gateways = []
    writer = None
    try:
        writer = Writer(etcd.endpoints[0])
        writer.put(APP_KEY, json.dumps(app_value(
            "test", [(sites.ports["b"], "s1")])))
        for _ in range(3):
            gw = Gateway(HTTP, mosn=etcd_mosn(etcd.endpoints))
            gateways.append(gw)
            gw.start()
        for gw in gateways:
            assert wait_for(lambda: gw.get("/", {"uid": "2"}).status == 200,
                            15), gw.error_log()
        prop = propagation(writer, sites, gateways, args.changes)
        print("propagation p50 %.1f ms p99 %.1f ms (slowest of three)" % (
            pct(prop["slowest"], .5), pct(prop["slowest"], .99)))
        runs = throughput(writer, sites, gateways, etcd, args)
    finally:
        if writer:
            writer.close()
        for gw in gateways:
            try:
                gw.stop()
            except AssertionError as exc:
                print(exc)
        sites.stop()
        etcd.close()
    text = report(args, info, started, prop, runs, time.monotonic() - t0)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(
        {"machine": info, "args": vars(args), "propagation": prop,
         "throughput": runs}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
