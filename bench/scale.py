"""Connection scale: many idle keep-alive connections, and load beside them.

    python bench/scale.py [--connections 100000] [--runs 3] [--out DIR]
    python bench/scale.py --quick          # 10k connections, one round: CI smoke
    python bench/scale.py --from-json DIR/scale.json [--out DIR2]   # report again

For each gateway (this project's "mosn" and plain nginx `map`, the configs of
bench/gateways.py with the connection limits raised, `reuseport` so the
kernel spreads connections evenly over --workers nginx workers, and a long
keepalive_timeout so idle connections stay), in interleaved rounds (ABBA:
even rounds run the steps in reverse order):

1. wrk with 64 connections, bench/uid.lua, --duration s: WITHOUT idle
   connections;
2. open --connections keep-alive connections from several client processes
   (`scale.py --hold`) and source addresses 127.0.0.x (bind before connect),
   each doing one routed request (GET / with a uid header; the body
   `site sN from PORT` must match the uid), then holding it idle; measure
   nginx workers' RSS / Pss (smaps_rollup), Python processes' RSS, kernel
   slab and fds per worker before and after; the same wrk run WITH the idle
   connections held; check they are all still open; close them (RST, so no
   TIME_WAIT is left);
3. control (not with --quick): the same connections held by another nginx
   while wrk loads the gateway, to tell the machine's cost of that many
   sockets from the gateway's.

This machine is shared: before each wrk run the script waits (bounded) until
other processes are quiet, measures how much CPU they took during the run,
and measures again (bounded) when they took much. Reports the throughput
ratio with/without idle (target >= 0.95), memory per idle connection, and
what one million connections would need, in DIR/scale.md and
DIR/scale.json. See bench/README.md.
"""
import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import re
import resource
import select
import selectors
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__

RATIO_TARGET = 0.95
WRK_CONNECTIONS = 64
PER_CLIENT_MAX = 15000        # connections one client process holds (< 20k fds)
WORKER_CONNECTIONS_MAX = 19000
SOURCE_BASE = 101             # source addresses 127.0.0.101, .102, ...
HOLD_TIMEOUT = 300.0          # seconds for the clients to open everything
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
BODY = re.compile(rb"site (s[123]) from (\d+)\s*")


def expected_site(uid):
    return "s1" if uid <= 100 else "s2" if uid <= 200 else "s3"


# ==========================================================================
# The client: a child process that opens and holds its share of connections.
# Runs as `scale.py --hold '{json}'`; talks to the parent over stdin/stdout.
# ==========================================================================

def hold(spec):
    """Opens spec["count"] connections, one routed request each, checks the
    answers, reports, then holds them until told (or stdin closes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port, sources, count = spec["port"], spec["sources"], spec["count"]
    site_of_port = {int(p): k[:2] for k, p in spec["site_ports"].items()}
    inflight_max = spec["inflight"]
    first_uid = spec["first"]
    sel = selectors.EpollSelector()
    held, errors, first_errors = [], 0, []
    mismatches = 0
    pending = 0
    started = time.monotonic()
    deadline = started + spec["timeout"]
    next_index = 0

    def fail(sock, why):
        nonlocal errors, pending
        errors += 1
        pending -= 1
        if len(first_errors) < 5:
            first_errors.append(why)
        with contextlib.suppress(Exception):
            sel.unregister(sock)
        sock.close()

    while (next_index < count or pending) and time.monotonic() < deadline:
        while pending < inflight_max and next_index < count:
            uid = (first_uid + next_index) % 250 + 1
            src = sources[next_index % len(sources)]
            next_index += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((src, 0))
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
            except OSError as e:
                s.close()
                errors += 1
                if len(first_errors) < 5:
                    first_errors.append(f"connect from {src}: {e}")
                continue
            request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nuid: %d\r\n\r\n" % uid
            sel.register(s, selectors.EVENT_WRITE, [uid, request, b""])
            pending += 1
        for key, events in sel.select(timeout=1.0):
            s, state = key.fileobj, key.data
            if events & selectors.EVENT_WRITE:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(s, f"connect: {os.strerror(err)}")
                    continue
                try:
                    s.send(state[1])
                except OSError as e:
                    fail(s, f"send: {e}")
                    continue
                sel.modify(s, selectors.EVENT_READ, state)
                continue
            try:
                chunk = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError as e:
                fail(s, f"recv: {e}")
                continue
            if not chunk:
                fail(s, "closed before the answer")
                continue
            state[2] += chunk
            data = state[2]
            head_end = data.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            head = data[:head_end].decode("latin-1")
            match = re.search(r"(?im)^content-length:\s*(\d+)", head)
            if not match:
                fail(s, f"no content-length: {head[:80]!r}")
                continue
            body = data[head_end + 4:]
            if len(body) < int(match.group(1)):
                continue
            sel.unregister(s)
            pending -= 1
            status_ok = head.startswith("HTTP/1.1 200")
            got = BODY.fullmatch(body)
            want = expected_site(state[0])
            if not status_ok or not got or got.group(1).decode() != want \
                    or site_of_port.get(int(got.group(2))) != want:
                mismatches += 1
                errors += 1
                if len(first_errors) < 5:
                    first_errors.append(f"uid {state[0]}: {head.splitlines()[0]!r} "
                                        f"{body[:40]!r}, want {want}")
                s.close()
                continue
            held.append(s)
    for key in list(sel.get_map().values()):
        fail(key.fileobj, "timed out")
    sel.close()
    report = {"opened": len(held), "errors": errors, "mismatches": mismatches,
              "seconds": time.monotonic() - started, "first_errors": first_errors}
    print(json.dumps(report), flush=True)

    for line in sys.stdin:           # blocks: the client costs nothing while held
        command = line.strip()
        if command == "check":
            ep = select.epoll(sizehint=len(held) or 1)
            for s in held:
                ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            ready = ep.poll(0, maxevents=len(held) or 1)
            ep.close()
            # an idle keep-alive connection has nothing to read: readable
            # means nginx closed it (or sent something it should not have)
            print(json.dumps({"held": len(held), "closed_or_readable": len(ready)}),
                  flush=True)
        elif command == "close":
            break
    linger = socket.SO_LINGER
    for s in held:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, linger, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    print(json.dumps({"closed": len(held)}), flush=True)


class Clients:
    """The client processes that hold the idle connections of one run."""

    def __init__(self, port, count, nclients, sources_per_client, site_ports,
                 inflight_total):
        self.procs = []
        share = [count // nclients + (1 if i < count % nclients else 0)
                 for i in range(nclients)]
        first = 0
        for i, n in enumerate(share):
            sources = [f"127.0.0.{SOURCE_BASE + i * sources_per_client + j}"
                       for j in range(sources_per_client)]
            spec = {"port": port, "count": n, "sources": sources, "first": first,
                    "site_ports": site_ports, "timeout": HOLD_TIMEOUT,
                    "inflight": max(1, inflight_total // nclients)}
            first += n
            self.procs.append(subprocess.Popen(
                [sys.executable, __file__, "--hold", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        self.sources = [f"127.0.0.{SOURCE_BASE + k}"
                        for k in range(nclients * sources_per_client)]

    def _read_all(self, timeout):
        out = []
        deadline = time.monotonic() + timeout
        for p in self.procs:
            left = max(0.1, deadline - time.monotonic())
            ready, _, _ = select.select([p.stdout], [], [], left)
            line = p.stdout.readline() if ready else ""
            if not line:
                raise RuntimeError(f"client {p.pid} said nothing within {timeout:.0f}s "
                                   f"(exit {p.poll()})")
            out.append(json.loads(line))
        return out

    def wait_open(self):
        reports = self._read_all(HOLD_TIMEOUT + 30)
        return {
            "opened": sum(r["opened"] for r in reports),
            "errors": sum(r["errors"] for r in reports),
            "mismatches": sum(r["mismatches"] for r in reports),
            "slowest_client_s": max(r["seconds"] for r in reports),
            "first_errors": [e for r in reports for e in r["first_errors"]][:5],
            "per_client": [r["opened"] for r in reports],
        }

    def _tell(self, command):
        for p in self.procs:
            p.stdin.write(command + "\n")
            p.stdin.flush()

    def check(self):
        self._tell("check")
        reports = self._read_all(60)
        return {"held": sum(r["held"] for r in reports),
                "closed_or_readable": sum(r["closed_or_readable"] for r in reports)}

    def close(self):
        """RST every connection (no TIME_WAIT), then make sure all exited."""
        closed = 0
        with contextlib.suppress(Exception):
            self._tell("close")
            closed = sum(r["closed"] for r in self._read_all(60))
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.stdin.close()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            with contextlib.suppress(Exception):
                p.stdout.close()
        self.procs = []
        return closed


# ==========================================================================
# The parent: gateways, runs, measurements, report.
# ==========================================================================

def _import_bench():
    global gateways, idle, peers
    import gateways  # noqa: F401
    import idle  # noqa: F401  (config rendering, /proc helpers)
    import run as peers  # noqa: F401  (probe, wrk, machine)


def sysctl(name):
    try:
        return Path("/proc/sys/" + name.replace(".", "/")).read_text().split()
    except OSError:
        return None


def limits():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    eph = sysctl("net.ipv4.ip_local_port_range")
    return {
        "nofile_soft": soft, "nofile_hard": hard,
        "ip_local_port_range": [int(x) for x in eph] if eph else None,
        "fs.file-max": int(sysctl("fs.file-max")[0]),
        "fs.nr_open": int(sysctl("fs.nr_open")[0]),
        "net.core.somaxconn": int(sysctl("net.core.somaxconn")[0]),
        "fs.file-nr": [int(x) for x in sysctl("fs.file-nr")],
    }


def kernel_memory():
    meminfo = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        meminfo[key] = int(value.split()[0])
    tcp = {}
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            parts = line.split()[1:]
            tcp = dict(zip(parts[::2], map(int, parts[1::2])))
    return {"slab_kb": meminfo.get("Slab", 0), "mem_available_kb": meminfo["MemAvailable"],
            "tcp_inuse": tcp.get("inuse"), "tcp_tw": tcp.get("tw"),
            "tcp_mem_pages": tcp.get("mem")}


def snapshot(procs):
    """Memory and fds of a gateway's processes, by kind."""
    out = {"nginx_workers": [], "python": []}
    for pid, role in sorted(procs.items()):
        mem = idle.memory(pid)
        if mem is None:
            continue
        row = {"pid": pid, "role": role, **mem}
        if role == "nginx-worker":
            row["fds"] = idle.fd_count(pid)
            out["nginx_workers"].append(row)
        elif role.startswith("py"):
            out["python"].append(row)
    for key in ("nginx_workers", "python"):
        rows = out[key]
        out[key + "_rss_kb"] = sum(r["rss_kb"] for r in rows)
        out[key + "_pss_kb"] = sum(r["pss_kb"] or 0 for r in rows)
    return out


def cpu_by_kind(procs, before, after, elapsed):
    nginx = python = 0.0
    for pid, role in procs.items():
        a, b = before.get(pid), after.get(pid)
        if not a or not b or a["start"] != b["start"]:
            continue
        pct = 100 * (b["ns"] - a["ns"]) / 1e9 / elapsed
        if role.startswith("nginx"):
            nginx += pct
        else:
            python += pct
    return nginx, python


SITES = {}   # pid -> role of the demo sites' nginx, set by main()


def machine_cpu():
    """/proc/stat's first line in ticks: busy (user, nice, system, irq,
    softirq: this kernel has no IRQ_TIME_ACCOUNTING, so a process's schedstat
    includes the softirq work done on its watch), softirq, steal."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return {"busy": f[0] + f[1] + f[2] + f[5] + f[6], "softirq": f[6], "steal": f[7]}


def foreign_cpu(ours, seconds=1.0):
    """% of one core used over `seconds` by everything but the pids `ours`."""
    before = {pid: idle.proc_sample(pid) for pid in ours}
    m0 = machine_cpu()
    time.sleep(seconds)
    m1 = machine_cpu()
    after = {pid: idle.proc_sample(pid) for pid in ours}
    mine = sum(b["ns"] - a["ns"] for pid, a in before.items()
               if a and (b := after.get(pid)) and a["start"] == b["start"]) / 1e9
    busy = (m1["busy"] - m0["busy"]) / os.sysconf("SC_CLK_TCK")
    return 100 * (busy - mine) / seconds


def wait_quiet(ours, limit, max_wait):
    """Waits (at most max_wait s) until others use < limit % of a core; a
    shared machine: other people's tests would land in one run, not the
    other, and make the ratio say nothing. Returns (seconds waited, last %)."""
    started = time.monotonic()
    while True:
        pct = foreign_cpu(ours)
        waited = time.monotonic() - started
        if pct < limit or waited >= max_wait:
            return waited, pct


def _task_times():
    """(pid, tid) -> (command name, scheduler ns) of every task on the machine."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                out[(int(pid), int(tid))] = (comm, ns)
        except (OSError, ValueError, IndexError):
            continue
    return out


def rest_sample(procs, holders, seconds=5.0):
    """No load: CPU of the gateway, of the clients holding the connections,
    and the busiest other tasks on the machine, over `seconds`."""
    before, m0 = _task_times(), machine_cpu()
    time.sleep(seconds)
    after, m1 = _task_times(), machine_cpu()
    per_pid = {}
    for key, (comm, ns) in after.items():
        if key in before:
            entry = per_pid.setdefault(key[0], [comm, 0])
            entry[1] += ns - before[key][1]
    pct = {pid: 100 * ns / 1e9 / seconds for pid, (_, ns) in per_pid.items()}
    mine = set(procs) | set(SITES) | set(holders) | {os.getpid()}
    others = sorted(((pid, per_pid[pid][0], p) for pid, p in pct.items() if pid not in mine),
                    key=lambda row: -row[2])
    return {
        "seconds": seconds,
        "busy_pct": (m1["busy"] - m0["busy"]) * 100 / os.sysconf("SC_CLK_TCK") / seconds,
        "gateway_pct": sum(pct.get(pid, 0.0) for pid in procs),
        "clients_pct": sum(pct.get(pid, 0.0) for pid in holders),
        "others_pct": sum(p for _, _, p in others),
        "top_others": [{"pid": pid, "comm": comm, "pct": p} for pid, comm, p in others[:5]],
        "others": {str(pid): [comm, p] for pid, comm, p in others if p >= 0.05},
    }


def wrk_run(args, gw, procs, settings, shm, holders=()):
    """wrk_once, again (up to --retries times) while other people's work took
    more than 2 x --quiet-limit of a core during the run; keeps the least
    disturbed attempt, and the others' figures in the result."""
    attempts = []
    while True:
        result = wrk_once(args, gw, procs, settings, shm, holders)
        attempts.append(result)
        if result["machine"]["foreign_pct"] < 2 * args.quiet_limit \
                or len(attempts) > args.retries:
            break
        print(f"    (others used {result['machine']['foreign_pct']:.0f}% of a core "
              f"during the run: {result['rps']:.0f} req/s set aside, measuring again)",
              flush=True)
    best = min(attempts, key=lambda r: r["machine"]["foreign_pct"])
    best["disturbed_attempts"] = [{k: r[k] for k in ("rps", "p99_ms", "machine")}
                                  for r in attempts if r is not best]
    return best


def wrk_once(args, gw, procs, settings, shm, holders=()):
    """One measured wrk run; also CPU, ring counters and the sites' mix, and
    how much CPU went to processes outside the benchmark (other people's
    work on a shared machine) or was stolen by the hypervisor."""
    wrk_args = argparse.Namespace(wrk=args.wrk, threads=2, connections=WRK_CONNECTIONS)
    everyone = {**procs, **SITES}
    ours = set(everyone) | set(holders) | {os.getpid()}
    waited, foreign_before = wait_quiet(ours, args.quiet_limit, args.quiet_wait)
    time.sleep(peers.FLUSH_WAIT)
    hits_before = peers.site_hits(settings)
    ring_before = idle.counter_totals(idle.region_stats(shm)) if shm else None
    cpu_before = {pid: idle.proc_sample(pid) for pid in everyone}
    machine_before = machine_cpu()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = peers.parse_wrk(peers.run_wrk(wrk_args, gw.port, args.duration))
    elapsed = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine_after = machine_cpu()
    cpu_after = {pid: idle.proc_sample(pid) for pid in everyone}
    tick = 100 / os.sysconf("SC_CLK_TCK") / elapsed          # ticks -> % of a core
    wrk_pct = 100 * ((children_after.ru_utime + children_after.ru_stime)
                     - (children_before.ru_utime + children_before.ru_stime)) / elapsed
    sites_pct = sum(cpu_by_kind(SITES, cpu_before, cpu_after, elapsed))
    gateway_pct = sum(cpu_by_kind(procs, cpu_before, cpu_after, elapsed))
    busy = (machine_after["busy"] - machine_before["busy"]) * tick
    result["machine"] = {
        "busy_pct": busy, "wrk_pct": wrk_pct, "sites_pct": sites_pct,
        "softirq_pct": (machine_after["softirq"] - machine_before["softirq"]) * tick,
        "steal_pct": (machine_after["steal"] - machine_before["steal"]) * tick,
        # what ran that is none of ours (user+nice+system ticks are coarse:
        # a few % either way is rounding)
        "foreign_pct": busy - wrk_pct - sites_pct - gateway_pct,
        "quiet_waited_s": waited, "foreign_before_pct": foreign_before}
    ring_after = idle.counter_totals(idle.region_stats(shm)) if shm else None
    time.sleep(peers.FLUSH_WAIT)
    hits_after = peers.site_hits(settings)
    hits = {s: hits_after[s] - hits_before[s] for s in hits_after}
    try:
        peers.check_mix(gw.name, result["sent"], hits)
        result["mix_ok"] = True
    except peers.RoutingError as e:
        result["mix_ok"] = False
        result["mix_error"] = str(e)
    result["cpu_nginx_pct"], result["cpu_python_pct"] = cpu_by_kind(
        procs, cpu_before, cpu_after, elapsed)
    if ring_before and ring_after:
        result["ring"] = {k: ring_after[k] - ring_before[k] for k in ring_before}
    result["load"] = idle.loadavg()
    return result


def wait_fds_back(procs, baseline, timeout=30.0):
    """After the clients reset their connections: nginx's fds back to normal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = sum(idle.fd_count(pid) or 0 for pid, r in procs.items() if r == "nginx-worker")
        if now <= baseline + 64 * 4 + WRK_CONNECTIONS:
            return now
        time.sleep(0.2)
    return now


def error_log_findings(prefix):
    text = ""
    with contextlib.suppress(OSError):
        text = (prefix / "error.log").read_text(errors="replace")
    bad = [line for line in text.splitlines()
           if "[alert]" in line or "[crit]" in line or "[emerg]" in line]
    return {"alerts": len(bad), "first": bad[:3],
            "worker_connections_not_enough": text.count("worker_connections are not enough")}


def scale_edits(worker_connections, rlimit):
    return [
        ("worker_processes @workers;\n",
         f"worker_processes @workers;\nworker_rlimit_nofile {rlimit};\n"),
        ("events { worker_connections 4096; }",
         f"events {{ worker_connections {worker_connections}; }}"),
        ("\n    keepalive_requests 1000000;\n",
         "\n    keepalive_requests 1000000;\n    keepalive_timeout 3600s;\n"),
        ("listen 127.0.0.1:@port;", "listen 127.0.0.1:@port reuseport backlog=4096;"),
    ]


def preallocation(args, settings, gw_small, small_shm, fresh_rss_kb, worker_connections):
    """Worker RSS with worker_connections 1024 beside the full-size one: what
    one connection slot costs before any connection comes (nginx allocates
    and initialises its connection and event arrays at start)."""
    try:
        with gateways.running(gw_small, settings) as live:
            idle.wait_routing(gw_small.port, settings.site_ports, args.workers)
            peers.probe(gw_small.port, args.workers, settings.site_ports)
            procs = idle.gateway_processes(live)
            small = snapshot(procs)["nginx_workers_rss_kb"]
    finally:
        idle.cleanup_region(small_shm)
    slots = args.workers * (worker_connections - 1024)
    return {"rss_kb_small": small, "rss_kb_full": fresh_rss_kb,
            "per_slot_bytes": 1024 * (fresh_rss_kb - small) / slots}


def without_run(args, gw, procs, settings, region, run, n):
    run["without"] = wrk_run(args, gw, procs, settings, region)
    print(f"  round {n}/{args.runs}: without idle {run['without']['rps']:.0f} req/s",
          flush=True)


def with_run(args, gw, procs, settings, region, run, n, plan, base_fds):
    """Open the idle connections, measure memory, load beside them, close."""
    if n == 1:
        run["rest_before"] = rest_sample(procs, ())
    run["mem_before"] = snapshot(procs)
    run["kernel_before"] = kernel_memory()
    ring0 = idle.counter_totals(idle.region_stats(region)) if region else None
    t0 = time.monotonic()
    clients = Clients(gw.port, args.connections, plan["clients"],
                      plan["sources_per_client"], settings.site_ports,
                      args.open_concurrency)
    try:
        run["open"] = clients.wait_open()
        run["open"]["seconds"] = time.monotonic() - t0
        ring1 = idle.counter_totals(idle.region_stats(region)) if region else None
        if ring0 and ring1:
            run["open"]["ring"] = {k: ring1[k] - ring0[k] for k in ring0}
        print(f"  round {n}/{args.runs}: {run['open']['opened']} idle connections "
              f"in {run['open']['seconds']:.1f}s, {run['open']['errors']} errors",
              flush=True)
        time.sleep(1.0)
        run["mem_after"] = snapshot(procs)
        run["kernel_after"] = kernel_memory()
        if n == 1:
            run["rest_with"] = rest_sample(procs, [p.pid for p in clients.procs])
        run["with"] = wrk_run(args, gw, procs, settings, region,
                              [p.pid for p in clients.procs])
        run["mem_after_load"] = snapshot(procs)
        run["still_open"] = clients.check()
        print(f"  round {n}/{args.runs}: with {run['open']['opened']} idle "
              f"{run['with']['rps']:.0f} req/s; still open "
              f"{run['still_open']['held'] - run['still_open']['closed_or_readable']}",
              flush=True)
    finally:
        run["closed"] = clients.close()
    run["fds_after_close"] = wait_fds_back(procs, base_fds)


def control_run(args, gw, procs, settings, region, run, n, plan, sink, sink_procs):
    """The same number of idle connections, but held by another nginx (the
    sink, a plain map instance) while wrk loads the gateway: what holding
    that many sockets costs the machine (kernel, anything else that walks
    them) without the gateway holding any. Separates the gateway's own cost
    from the machine's."""
    sink_fds = sum(idle.fd_count(pid) or 0 for pid, r in sink_procs.items()
                   if r == "nginx-worker")
    clients = Clients(sink.port, args.connections, plan["clients"],
                      plan["sources_per_client"], settings.site_ports,
                      args.open_concurrency)
    try:
        run["control_open"] = clients.wait_open()
        time.sleep(1.0)
        holders = [p.pid for p in clients.procs] + list(sink_procs)
        run["control"] = wrk_run(args, gw, procs, settings, region, holders)
        run["control_still_open"] = clients.check()
        print(f"  round {n}/{args.runs}: with {run['control_open']['opened']} idle held "
              f"by another nginx {run['control']['rps']:.0f} req/s", flush=True)
    finally:
        clients.close()
    wait_fds_back(sink_procs, sink_fds)


def measure_gateway(args, name, settings, plan, workdir):
    shm = f"mosn_scale_{os.getpid()}_{name}"
    ports = idle.free_ports(2, settings.site_ports.values())
    plain, mosn = idle.bench_gateways(
        workdir, ports[0], ports[1], shm, args.mosn_workers,
        scale_edits(plan["worker_connections"], plan["worker_rlimit_nofile"]))
    gw = mosn if name == "mosn" else plain
    if gw is None:
        raise gateways.GatewayError(f"{name}: not built (make build-l7)")
    region = shm if name == "mosn" else None
    out = {"runs": [], "port": gw.port}
    sink = sink_procs = None
    try:
        with contextlib.ExitStack() as stack:
            if args.control:
                sink_port = idle.free_ports(1, [*settings.site_ports.values(), *ports])[0]
                sink = dataclasses.replace(plain, name="sink", ports=[sink_port])
                sink_live = stack.enter_context(gateways.running(sink, settings))
                idle.wait_routing(sink.port, settings.site_ports, args.workers)
                sink_procs = idle.gateway_processes(sink_live)
            live = stack.enter_context(gateways.running(gw, settings))
            idle.wait_routing(gw.port, settings.site_ports, args.workers)
            peers.probe(gw.port, args.workers, settings.site_ports)
            procs = idle.gateway_processes(live, region)
            out["processes"] = sorted(procs.values())
            fresh = snapshot(procs)
            out["fresh"] = fresh
            print(f"{name}: {len(procs)} processes, nginx workers RSS "
                  f"{fresh['nginx_workers_rss_kb'] / 1024:.1f} MB at start", flush=True)
            if args.warmup:
                peers.run_wrk(argparse.Namespace(wrk=args.wrk, threads=2,
                                                 connections=WRK_CONNECTIONS),
                              gw.port, args.warmup)
            base_fds = sum(r["fds"] for r in snapshot(procs)["nginx_workers"])
            for n in range(1, args.runs + 1):
                # ABBA: odd rounds measure without then with (then the
                # control), even rounds the other way round, so a drift of
                # the machine favours none of them
                steps = [lambda: without_run(args, gw, procs, settings, region, run, n),
                         lambda: with_run(args, gw, procs, settings, region, run, n,
                                          plan, base_fds)]
                names = ["without", "with"]
                if sink is not None:
                    steps.append(lambda: control_run(args, gw, procs, settings, region,
                                                     run, n, plan, sink, sink_procs))
                    names.append("control")
                if not n % 2:
                    steps.reverse()
                    names.reverse()
                run = {"round": n, "order": ",".join(names)}
                for step in steps:
                    step()
                out["runs"].append(run)
            out["error_log"] = error_log_findings(workdir / gw.name)
    finally:
        idle.cleanup_region(shm)
    if not args.no_prealloc:
        small_plain, small_mosn = idle.bench_gateways(
            workdir, *idle.free_ports(2, settings.site_ports.values()),
            shm + "_small", args.mosn_workers, scale_edits(1024, 2048))
        small = small_mosn if name == "mosn" else small_plain
        small = dataclasses.replace(small, name=small.name + "-small")
        (workdir / small.name / "logs").mkdir(parents=True, exist_ok=True)
        try:
            out["prealloc"] = preallocation(args, settings, small, shm + "_small",
                                            fresh["nginx_workers_rss_kb"],
                                            plan["worker_connections"])
        except (gateways.GatewayError, peers.RoutingError) as e:
            # a side figure: report why it is missing, keep the main ones
            out["prealloc_error"] = str(e)
            print(f"{name}: preallocation not measured: {e}", flush=True)
    return out


def summarise(name, data, connections, disturbed_pct):
    runs = data["runs"]
    s = {}
    # the same medians over the runs that others left alone (< disturbed_pct
    # of a core used by processes outside the benchmark during the run)
    def clean(kind):
        return [r[kind]["rps"] for r in runs if kind in r
                and r[kind]["machine"]["foreign_pct"] < disturbed_pct]
    c_without, c_with, c_control = clean("without"), clean("with"), clean("control")
    s["undisturbed"] = {
        "limit_pct": disturbed_pct,
        "rounds": [len(c_without), len(c_with), len(c_control)],
        "rps_without": statistics.median(c_without) if c_without else None,
        "rps_with": statistics.median(c_with) if c_with else None,
        "rps_control": statistics.median(c_control) if c_control else None,
    }
    u = s["undisturbed"]
    u["ratio"] = u["rps_with"] / u["rps_without"] if c_with and c_without else None
    u["ratio_with_vs_control"] = (u["rps_with"] / u["rps_control"]
                                  if c_with and c_control else None)
    without = [r["without"]["rps"] for r in runs]
    with_ = [r["with"]["rps"] for r in runs if "with" in r]
    s["rps_without"] = statistics.median(without)
    s["rps_with"] = statistics.median(with_) if with_ else None
    s["ratio"] = s["rps_with"] / s["rps_without"] if with_ else None
    s["ratio_per_run"] = [r["with"]["rps"] / r["without"]["rps"] for r in runs if "with" in r]
    controls = [r["control"]["rps"] for r in runs if "control" in r]
    s["rps_control"] = statistics.median(controls) if controls else None
    s["ratio_control"] = s["rps_control"] / s["rps_without"] if controls else None
    s["ratio_with_vs_control"] = s["rps_with"] / s["rps_control"] if controls else None
    s["p99_without_ms"] = statistics.median(r["without"]["p99_ms"] for r in runs)
    s["p99_with_ms"] = statistics.median(r["with"]["p99_ms"] for r in runs if "with" in r)
    s["cpu_without"] = [statistics.median(r["without"][k] for r in runs)
                        for k in ("cpu_nginx_pct", "cpu_python_pct")]
    s["cpu_with"] = [statistics.median(r["with"][k] for r in runs if "with" in r)
                     for k in ("cpu_nginx_pct", "cpu_python_pct")]
    s["errors"] = {
        "open_errors": sum(r["open"]["errors"] for r in runs)
        + sum(r["control_open"]["errors"] for r in runs if "control_open" in r),
        "mismatches": sum(r["open"]["mismatches"] for r in runs),
        "wrk_non_2xx": sum(r[k]["non_2xx"] for r in runs
                           for k in ("without", "with", "control") if k in r),
        "wrk_socket_errors": sum(r[k]["socket_errors"] for r in runs
                                 for k in ("without", "with", "control") if k in r),
        "mix_failures": sum(not r[k]["mix_ok"] for r in runs
                            for k in ("without", "with", "control") if k in r),
        "closed_by_server": sum(r["still_open"]["closed_or_readable"] for r in runs
                                if "still_open" in r),
    }
    s["opened"] = statistics.median(r["open"]["opened"] for r in runs)
    s["open_seconds"] = statistics.median(r["open"]["seconds"] for r in runs)
    # memory per connection from the first opening: nginx keeps what it
    # freed when the connections closed (malloc does not return it), so later
    # rounds reuse it and show almost nothing; they are kept per round
    r0 = runs[0]
    for key in ("rss", "pss"):
        s[f"nginx_bytes_per_conn_{key}"] = 1024 * (
            r0["mem_after"][f"nginx_workers_{key}_kb"]
            - r0["mem_before"][f"nginx_workers_{key}_kb"]) / max(1, r0["open"]["opened"])
        s[f"nginx_bytes_per_conn_{key}_per_round"] = [
            1024 * (r["mem_after"][f"nginx_workers_{key}_kb"]
                    - r["mem_before"][f"nginx_workers_{key}_kb"]) / max(1, r["open"]["opened"])
            for r in runs]
    s["kernel_slab_bytes_per_socket"] = 1024 * (
        r0["kernel_after"]["slab_kb"] - r0["kernel_before"]["slab_kb"]) / max(
        1, 2 * r0["open"]["opened"])
    s["rounds"] = [{
        "order": r["order"], "without": r["without"]["rps"], "with": r["with"]["rps"],
        "ratio": r["with"]["rps"] / r["without"]["rps"],
        "foreign_pct": [r["without"]["machine"]["foreign_pct"],
                        r["with"]["machine"]["foreign_pct"]],
        "steal_pct": [r["without"]["machine"]["steal_pct"],
                      r["with"]["machine"]["steal_pct"]],
        "quiet_waited_s": [r["without"]["machine"]["quiet_waited_s"],
                           r["with"]["machine"]["quiet_waited_s"]],
        "set_aside": [len(r["without"]["disturbed_attempts"]),
                      len(r["with"]["disturbed_attempts"])],
        "open_seconds": r["open"]["seconds"],
        "control": r["control"]["rps"] if "control" in r else None,
        "control_foreign_pct": r["control"]["machine"]["foreign_pct"] if "control" in r else None,
        } for r in runs]
    s["nginx_workers_before_kb"] = r0["mem_before"]["nginx_workers_rss_kb"]
    s["nginx_workers_after_kb"] = r0["mem_after"]["nginx_workers_rss_kb"]
    s["nginx_workers_pss_before_kb"] = r0["mem_before"]["nginx_workers_pss_kb"]
    s["nginx_workers_pss_after_kb"] = r0["mem_after"]["nginx_workers_pss_kb"]
    s["conns_per_worker"] = [w["fds"] for w in r0["mem_after"]["nginx_workers"]]
    s["python_rss_kb"] = {
        "start": data["fresh"]["python_rss_kb"],
        "before": r0["mem_before"]["python_rss_kb"],
        "after_open": r0["mem_after"]["python_rss_kb"],
        "after_load": r0["mem_after_load"]["python_rss_kb"],
        "last_after_load": runs[-1]["mem_after_load"]["python_rss_kb"],
        "per_process_before": {str(p["pid"]) + " " + p["role"]: p["rss_kb"]
                               for p in r0["mem_before"]["python"]},
        "per_process_after": {str(p["pid"]) + " " + p["role"]: p["rss_kb"]
                              for p in r0["mem_after"]["python"]},
    }
    if data.get("prealloc"):
        s["prealloc_bytes_per_slot"] = data["prealloc"]["per_slot_bytes"]
    s["ring_during_open"] = r0["open"].get("ring")
    s["rest"] = {"without": r0.get("rest_before"), "with": r0.get("rest_with")}
    s["error_log"] = data["error_log"]
    return s


def million(summary, plan, lim, connections):
    """What 1M idle connections need, from the measured figures."""
    m = 1_000_000
    out = {}
    for name, s in summary.items():
        per_conn = max(s["nginx_bytes_per_conn_rss"], s["nginx_bytes_per_conn_pss"])
        slot = s.get("prealloc_bytes_per_slot") or 0.0
        slots = m * 1.2                         # worker_connections with 20% headroom
        kernel = s["kernel_slab_bytes_per_socket"]
        out[name] = {
            "nginx_conn_memory_mb": m * per_conn / 2**20,
            "nginx_slot_memory_mb": slots * slot / 2**20,
            "kernel_memory_mb": m * kernel / 2**20,
            "total_mb": (m * per_conn + slots * slot + m * kernel) / 2**20,
        }
    hard = lim["nofile_hard"]
    per_worker = min(WORKER_CONNECTIONS_MAX, hard - 1000)
    port_range = lim["ip_local_port_range"]
    ports = port_range[1] - port_range[0] + 1 if port_range else 28232
    return {
        "per_gateway": out,
        "fds": m + 1000,
        "workers_at_this_nofile": math.ceil(m / per_worker),
        "nofile_per_worker_at_this_limit": per_worker,
        "workers_if_nofile_raised": 16,
        "nofile_per_worker_if_raised": math.ceil(m / 16 * 1.2),
        "fs_nr_open": lim["fs.nr_open"],
        "fs_file_max": lim["fs.file-max"],
        "client_source_addresses": math.ceil(m / ports),
        "ports_per_address": ports,
    }


# --- report -------------------------------------------------------------------

def fmt_kb(kb):
    return f"{kb / 1024:.1f} MB"


def report_md(res):
    a, lim, plan = res["settings"], res["limits"], res["plan"]
    lines = [
        "# Connection scale: idle keep-alive connections, and load beside them",
        "",
        f"Command: `{res['command']}`  ",
        *([f"Report re-rendered from that run's raw data: `{res['rendered']}`  "]
          if res.get("rendered") else []),
        f"Date: {res['date']}  ",
        f"Machine: {res['machine']['nproc']} CPUs ({res['machine']['cpu']}), "
        f"Linux {res['machine']['kernel']}, {res['machine']['nginx']}, "
        f"{res['machine']['wrk']}, Python {res['machine']['python']}; load average "
        f"before: {' '.join(map(str, res['load_before']))}  ",
        idle.build_line(res["build"]),
        f"Limits: nofile {lim['nofile_soft']}/{lim['nofile_hard']} (soft/hard) per "
        f"process, fs.nr_open {lim['fs.nr_open']}, fs.file-max {lim['fs.file-max']}, "
        f"ip_local_port_range {lim['ip_local_port_range']}, somaxconn "
        f"{lim['net.core.somaxconn']}  ",
        f"Setup: {a['connections']} idle connections from {plan['clients']} client "
        f"processes (Python, non-blocking sockets, epoll) over "
        f"{plan['clients'] * plan['sources_per_client']} source addresses "
        f"({plan['sources'][0]}..{plan['sources'][-1]}, bind before connect), each "
        f"after one routed request; nginx worker_processes {a['workers']} with "
        f"`listen ... reuseport`, worker_connections {plan['worker_connections']}, "
        f"worker_rlimit_nofile {plan['worker_rlimit_nofile']}, keepalive_timeout 3600s; "
        f"mosn_workers {a['mosn_workers']}; load: wrk -t2 -c{WRK_CONNECTIONS} "
        f"-d{a['duration']}s -s bench/uid.lua on other connections; {a['runs']} "
        "interleaved round(s) of (without idle; open idle, with idle, close"
        + ("; control: the same idle connections held by another nginx, load on "
           "the gateway" if a["control"] else "")
        + "), in ABBA order (even rounds reversed).",
        "",
        "## Throughput beside the idle connections",
        "",
        "| gateway | idle conns | req/s without | req/s with | with/without | "
        "per round | undisturbed runs only | p99 ms without / with | "
        "nginx+Python CPU % without / with | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in res["summary"].items():
        ok = s["ratio"] is not None and s["ratio"] >= RATIO_TARGET
        lines.append(
            f"| {name} | {s['opened']:.0f} | {s['rps_without']:.0f} | {s['rps_with']:.0f} | "
            f"**{s['ratio']:.3f}x** | {', '.join(f'{x:.3f}' for x in s['ratio_per_run'])} | "
            + (f"{s['undisturbed']['ratio']:.3f}x ({s['undisturbed']['rounds'][0]} without, "
               f"{s['undisturbed']['rounds'][1]} with)" if s["undisturbed"]["ratio"] else "-")
            + " | "
            f"{s['p99_without_ms']:.2f} / {s['p99_with_ms']:.2f} | "
            f"{s['cpu_without'][0]:.0f}+{s['cpu_without'][1]:.0f} / "
            f"{s['cpu_with'][0]:.0f}+{s['cpu_with'][1]:.0f} | "
            f"{'met' if ok else 'MISSED'} (>= {RATIO_TARGET}) |")
    if any(s.get("rps_control") for s in res["summary"].values()):
        lines += [
            "",
            "Control: the same number of idle connections held by ANOTHER nginx "
            "(a plain map instance) while wrk loads the gateway. It costs the "
            "gateway nothing itself, so it measures what holding that many "
            "sockets costs the machine; with/control is what is left for the "
            "gateway's own share.",
            "",
            "| gateway | req/s without | req/s control | control/without | req/s with | "
            "with/control (the gateway's own share) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, s in res["summary"].items():
            if s.get("rps_control"):
                lines.append(
                    f"| {name} | {s['rps_without']:.0f} | {s['rps_control']:.0f} | "
                    f"{s['ratio_control']:.3f}x | {s['rps_with']:.0f} | "
                    f"**{s['ratio_with_vs_control']:.3f}x** |")
    lines += [
        "",
        "req/s and p99 are medians over the rounds; with/without is the ratio of "
        "the medians, \"per round\" each round's own ratio; \"undisturbed runs "
        "only\" is the same ratio over the runs during which processes outside "
        f"the benchmark used < {2 * res['settings']['quiet_limit']:.0f}% of a core. "
        "CPU from /proc/PID/task/*/schedstat during the wrk run, % of one core.",
        "",
        "Each round, and what else the machine did meanwhile (\"foreign\": CPU "
        "of processes that are not this benchmark's, from /proc/stat minus the "
        "gateway, the sites and wrk; \"steal\": time the hypervisor gave to "
        "others; both in % of one core, without / with; before each wrk run the "
        f"script waits, up to {res['settings']['quiet_wait']:.0f} s, until others use "
        f"< {res['settings']['quiet_limit']:.0f}% of a core):",
        "",
        "| gateway | round | order | req/s without | req/s with | ratio | req/s control | "
        "foreign % | steal % | waited for quiet | disturbed runs set aside | "
        "opening took |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in res["summary"].items():
        for i, r in enumerate(s["rounds"], 1):
            lines.append(
                f"| {name} | {i} | {r['order']} | {r['without']:.0f} | {r['with']:.0f} | "
                f"{r['ratio']:.3f} | "
                + (f"{r['control']:.0f} ({r['control_foreign_pct']:.0f}% foreign)"
                   if r.get("control") else "-")
                + f" | {r['foreign_pct'][0]:.0f} / {r['foreign_pct'][1]:.0f} | "
                f"{r['steal_pct'][0]:.0f} / {r['steal_pct'][1]:.0f} | "
                f"{r['quiet_waited_s'][0]:.0f} / {r['quiet_waited_s'][1]:.0f} s | "
                f"{r['set_aside'][0]} / {r['set_aside'][1]} | "
                f"{r['open_seconds']:.1f} s |")
    lines += [
        "",
        "At rest (no load, 5 s, first round), without and with the idle "
        "connections held, in % of one core:",
        "",
        "| gateway | gateway CPU without / with | clients holding them | rest of the "
        "machine without / with |",
        "| --- | --- | --- | --- |",
    ]
    for name, s in res["summary"].items():
        rest = s.get("rest") or {}
        a, b = rest.get("without"), rest.get("with")
        if not a or not b:
            continue
        lines.append(
            f"| {name} | {a['gateway_pct']:.3f} / {b['gateway_pct']:.3f} | "
            f"{b['clients_pct']:.3f} | {a['others_pct']:.1f} / {b['others_pct']:.1f} |")
    lines += [
        "",
        "## Memory per idle connection",
        "",
        "| gateway | nginx workers RSS before -> after | per conn (RSS) | "
        "Pss before -> after | per conn (Pss) | preallocated per worker_connections slot | "
        "kernel slab per socket |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in res["summary"].items():
        slot = s.get("prealloc_bytes_per_slot")
        lines.append(
            f"| {name} | {fmt_kb(s['nginx_workers_before_kb'])} -> "
            f"{fmt_kb(s['nginx_workers_after_kb'])} | "
            f"{s['nginx_bytes_per_conn_rss'] / 1024:.2f} KB | "
            f"{fmt_kb(s['nginx_workers_pss_before_kb'])} -> "
            f"{fmt_kb(s['nginx_workers_pss_after_kb'])} | "
            f"{s['nginx_bytes_per_conn_pss'] / 1024:.2f} KB | "
            f"{(f'{slot:.0f} B' if slot is not None else '-')} | "
            f"{s['kernel_slab_bytes_per_socket'] / 1024:.2f} KB |")
    lines += [
        "",
        "Per conn = (sum over the nginx workers after opening - before) / "
        "connections opened, first round (later rounds reuse the memory nginx "
        "kept from the first: "
        + "; ".join(f"{name} " + ", ".join(f"{x:.0f}" for x in
                                          s["nginx_bytes_per_conn_rss_per_round"])
                    + " B" for name, s in res["summary"].items())
        + " per round) (RSS from /proc/PID/status, "
        "Pss from /proc/PID/smaps_rollup). nginx allocates and touches its "
        "connection and event arrays for all worker_connections at start, so "
        "that part is not in the before/after difference; the preallocated "
        "column measures it (workers' RSS at worker_connections "
        f"{plan['worker_connections']} minus at 1024, per slot). Kernel slab is "
        "/proc/meminfo Slab after - before over both ends of each loopback "
        "connection (2 sockets per connection); other work on the machine "
        "moves it too, so it is approximate.",
        "",
        "Connections per nginx worker (fds, first round): "
        + "; ".join(f"{name}: {min(s['conns_per_worker'])}..{max(s['conns_per_worker'])}"
                    for name, s in res["summary"].items()),
        "",
    ]
    mosn = res["summary"].get("mosn")
    if mosn:
        py = mosn["python_rss_kb"]
        lines += [
            "## Python does not grow with connections",
            "",
            "| Python processes (supervisor, workers, admin), RSS sum | |",
            "| --- | --- |",
            f"| at start | {fmt_kb(py['start'])} |",
            f"| before opening (after warm-up and a wrk run) | {fmt_kb(py['before'])} |",
            f"| with {mosn['opened']:.0f} idle connections held | {fmt_kb(py['after_open'])} |",
            f"| after the wrk run beside them | {fmt_kb(py['after_load'])} |",
            f"| after the last round | {fmt_kb(py['last_after_load'])} |",
            "",
            "Per process, before -> with the idle connections: "
            + "; ".join(f"{k}: {py['per_process_before'][k]} -> "
                        f"{py['per_process_after'].get(k, '-')} KB"
                        for k in py["per_process_before"]),
            "",
        ]
        ring = mosn.get("ring_during_open")
        if ring:
            lines += [
                f"While opening, the ring carried {ring['producers.submitted']} requests "
                f"(one per connection) with {ring['producers.fallbacks']} fallbacks and "
                f"{ring['producers.timeouts']} timeouts; afterwards nothing per "
                "connection stays in Python.",
                "",
            ]
    mil = res["million"]
    lines += [
        "## One million connections, extrapolated",
        "",
        "Assumptions: the figures above scale linearly; each connection is idle "
        "after a small request (nginx keeps no request buffers on an idle "
        "keep-alive connection); worker_connections sized with 20% headroom; "
        "clients on other machines (only the server's socket counted in the "
        "kernel); same nginx build and config.",
        "",
        "| gateway | nginx per-connection memory | preallocated slots (1.2M) | "
        "kernel sockets | total |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, g in mil["per_gateway"].items():
        lines.append(f"| {name} | {g['nginx_conn_memory_mb']:.0f} MB | "
                     f"{g['nginx_slot_memory_mb']:.0f} MB | {g['kernel_memory_mb']:.0f} MB | "
                     f"**{g['total_mb'] / 1024:.2f} GB** |")
    lines += [
        "",
        f"- File descriptors: about {mil['fds']} on the server (one per connection plus "
        f"upstream keep-alive, listeners, logs). With this machine's per-process "
        f"limit ({lim['nofile_hard']}) that is at least "
        f"{mil['workers_at_this_nofile']} nginx workers of "
        f"{mil['nofile_per_worker_at_this_limit']} connections; with the hard "
        f"limit raised (fs.nr_open is {mil['fs_nr_open']}), e.g. "
        f"{mil['workers_if_nofile_raised']} workers with worker_rlimit_nofile "
        f"{mil['nofile_per_worker_if_raised']}. fs.file-max {mil['fs_file_max']} "
        "is enough for the server side.",
        "- Workers: idle connections cost the gateway no CPU (at rest with them "
        "held: " + "; ".join(
            f"{name} {s['rest']['with']['gateway_pct']:.3f}% of a core"
            for name, s in res["summary"].items() if (s.get("rest") or {}).get("with"))
        + "; bench/results/idle.md for the gateway alone), so the nginx worker "
        "count follows the fd limit and the request rate, not the connection "
        "count; Python workers stay as many as the request rate needs (their "
        "memory does not follow connections, above).",
        f"- Clients: one source address carries at most {mil['ports_per_address']} "
        f"connections to one ip:port, so a million need >= "
        f"{mil['client_source_addresses']} source addresses (or several listen "
        "addresses/ports).",
        "",
    ]
    lines += ["## Checks", ""] + res["checks"] + [""]
    return "\n".join(lines)


def checks(summary, args):
    out, ok = [], True
    for name, s in summary.items():
        e = s["errors"]
        for label, value, good in (
                ("idle connections opened", f"{s['opened']:.0f} of {args.connections}",
                 s["opened"] == args.connections),
                ("routed requests answered by the wrong site or failed",
                 f"{e['open_errors']} (mismatches {e['mismatches']})", e["open_errors"] == 0),
                ("idle connections closed by the server while held",
                 str(e["closed_by_server"]), e["closed_by_server"] == 0),
                ("wrk non-2xx / socket errors", f"{e['wrk_non_2xx']} / {e['wrk_socket_errors']}",
                 e["wrk_non_2xx"] == 0 and e["wrk_socket_errors"] == 0),
                ("wrk runs whose site mix did not match the uids", str(e["mix_failures"]),
                 e["mix_failures"] == 0),
                ("alerts in nginx's error.log", str(s["error_log"]["alerts"]),
                 s["error_log"]["alerts"] == 0),
                ("with/without idle >= 0.95", f"{s['ratio']:.3f}",
                 s["ratio"] >= RATIO_TARGET)):
            out.append(f"- {name}: {label}: {value}: {'ok' if good else 'FAILED'}")
            if not good and "0.95" not in label:
                ok = False
    return out, ok


def plan_for(args, lim):
    hard = lim["nofile_hard"]
    per_client = min(PER_CLIENT_MAX, hard - 200)
    clients = args.clients or max(1, math.ceil(args.connections / min(per_client, 12500)))
    if math.ceil(args.connections / clients) > per_client:
        sys.exit(f"{args.connections} connections over {clients} clients is more than "
                 f"{per_client} per process (nofile hard limit {hard}); add --clients")
    rlimit = min(hard, WORKER_CONNECTIONS_MAX + 900)
    worker_connections = min(WORKER_CONNECTIONS_MAX, rlimit - 500)
    need = math.ceil(args.connections / args.workers * 1.1) + 600
    if need > worker_connections:
        sys.exit(f"{args.connections} connections over {args.workers} nginx workers need "
                 f"~{need} per worker, more than {worker_connections} (nofile hard limit "
                 f"{hard}): raise --workers")
    eph = lim["ip_local_port_range"]
    ports = eph[1] - eph[0] + 1
    per_client_conns = math.ceil(args.connections / clients)
    sources_per_client = max(2, math.ceil(per_client_conns / (ports * 0.5)))
    if clients * sources_per_client > 150:
        sys.exit("too many source addresses needed")
    return {"clients": clients, "sources_per_client": sources_per_client,
            "sources": [f"127.0.0.{SOURCE_BASE + k}"
                        for k in range(clients * sources_per_client)],
            "worker_connections": worker_connections, "worker_rlimit_nofile": rlimit}


def parse_args():
    p = argparse.ArgumentParser(description="Idle connection scale of the gateway.")
    p.add_argument("--connections", type=int, default=100000, help="idle connections")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 10k connections, 1 round, 3 s of load")
    p.add_argument("--runs", type=int, default=3, help="interleaved rounds")
    p.add_argument("--duration", type=int, default=10, help="seconds of wrk load per run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of load before the rounds")
    p.add_argument("--workers", type=int, default=8, help="nginx worker_processes")
    p.add_argument("--mosn-workers", type=int, default=2, help="Python workers")
    p.add_argument("--clients", type=int, default=0, help="client processes (default: auto)")
    p.add_argument("--open-concurrency", type=int, default=192,
                   help="requests in flight while opening (all clients; the ring has 256 slots)")
    p.add_argument("--quiet-limit", type=float, default=15.0,
                   help="before each wrk run, wait until other processes use less "
                        "than this %% of a core")
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="but wait at most this many seconds")
    p.add_argument("--retries", type=int, default=2,
                   help="measure a wrk run again if others took > 2 x quiet-limit")
    p.add_argument("--only", default="mosn,map", help="mosn, map or both (in this order)")
    p.add_argument("--control", dest="control", action="store_true", default=None,
                   help="also load the gateway while another nginx holds the idle "
                        "connections (the machine's share of the cost; default on, "
                        "off with --quick)")
    p.add_argument("--no-control", dest="control", action="store_false")
    p.add_argument("--no-prealloc", action="store_true",
                   help="skip the worker_connections 1024 start that prices a slot")
    p.add_argument("--site-port", type=int, default=0,
                   help="first of the four site ports (default: free ones)")
    p.add_argument("--out", default=None, help="directory for the report (bench/results)")
    p.add_argument("--nginx", default="nginx")
    p.add_argument("--wrk", default="wrk")
    args = p.parse_args()
    if args.control is None:
        args.control = not args.quick
    if args.quick:
        defaults = {"connections": 100000, "runs": 3, "duration": 10}
        for key, value in (("connections", 10000), ("runs", 1), ("duration", 3)):
            if getattr(args, key) == defaults[key]:
                setattr(args, key, value)
    return args


def main():
    _import_bench()
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    lim = limits()
    lim["nofile_soft"] = soft
    plan = plan_for(args, lim)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = peers.machine(args)
    command = "python bench/scale.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    load_before = idle.loadavg()
    print(f"load average {load_before}; limits {lim}")
    print(f"plan: {plan['clients']} clients x {plan['sources_per_client']} source addresses, "
          f"worker_connections {plan['worker_connections']}", flush=True)

    build = idle.build_info()     # before the runs: the tree may move meanwhile
    workdir = Path(tempfile.mkdtemp(prefix="gateway-scale-"))
    workdir.chmod(0o755)
    sites = idle.site_ports(args.site_port)
    settings = gateways.Settings(workdir=workdir, nginx=args.nginx, modules="",
                                 workers=args.workers, site_ports=sites)
    data = {}
    try:
        with gateways.running(gateways.sites_gateway(settings), settings,
                              workers=1) as sites_live:
            SITES.update(idle.gateway_processes(sites_live))
            for name in args.only.split(","):
                data[name] = measure_gateway(args, name, settings, plan, workdir)
    except (gateways.GatewayError, peers.RoutingError, RuntimeError) as e:
        sys.exit(f"*** FAIL: {e}")
    finally:
        if not os.environ.get("BENCH_KEEP"):
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)

    res = {
        "command": command, "date": started, "machine": info, "limits": lim,
        "build": build,
        "plan": plan, "load_before": load_before, "load_after": idle.loadavg(),
        "settings": {k: getattr(args, k) for k in
                     ("connections", "quick", "runs", "duration", "warmup", "workers",
                      "mosn_workers", "open_concurrency", "quiet_limit", "quiet_wait",
                      "retries", "control")},
        "data": data,
    }
    finish(res, Path(args.out) if args.out else gateways.BENCH / "results")


def finish(res, out):
    """Summary, checks, extrapolation and report from the raw data of a run."""
    a = res["settings"]
    summary = {name: summarise(name, d, a["connections"], 2 * a["quiet_limit"])
               for name, d in res["data"].items()}
    check_lines, ok = checks(summary, argparse.Namespace(connections=a["connections"]))
    res.update(summary=summary, checks=check_lines,
               million=million(summary, res["plan"], res["limits"], a["connections"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "scale.md").write_text(report_md(res))
    print()
    for name, s in summary.items():
        print(f"{name}: {s['opened']:.0f} idle; {s['rps_without']:.0f} -> {s['rps_with']:.0f} "
              f"req/s = {s['ratio']:.3f}x; nginx {s['nginx_bytes_per_conn_rss']:.0f} B/conn RSS, "
              f"{s['nginx_bytes_per_conn_pss']:.0f} B/conn Pss")
    print("\n".join(check_lines))
    print(f"wrote {out / 'scale.md'}, scale.json")
    if not ok:
        sys.exit("scale: a check FAILED (see above)")


def rerender(path, out):
    """--from-json: the report again from a run's scale.json (its raw "data"),
    with this version of the summary; no measurement is made."""
    _import_bench()
    res = json.loads(Path(path).read_text())
    for key in ("summary", "checks", "million"):
        res.pop(key, None)
    res["rendered"] = ("python bench/scale.py --from-json " + str(path)
                       + (f" --out {out}" if out else ""))
    finish(res, Path(out) if out else Path(path).parent)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--hold":
        hold(json.loads(sys.argv[2]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "--from-json":
        rerender(sys.argv[2], sys.argv[4] if sys.argv[3:4] == ["--out"] else None)
    else:
        main()
