"""Connection storms and scale: many keep-alive connections opened at once,
each with one routed request, then held idle while load runs beside them.

    python -m bench.scale_bench [--connections 100000] [--runs 3] [--out DIR]
    python -m bench.scale_bench --quick    # 10k connections, one round: smoke
    python -m bench.scale_bench --from-json DIR/scale.json [--out DIR2]
        # report again

This project's gateway ("mosn") and plain nginx `map` run side by side (the
configs of bench/gateways.py with the connection limits raised, `reuseport`
over --workers nginx workers, a long keepalive_timeout). Every round visits
both gateways (ABBA: even rounds take them, and their steps, in reverse):

1. wrk, 64 connections, bench/uid.lua, --duration s: WITHOUT idle connections;
2. the storm: --connections connections from client processes (`scale_bench
   --hold`) and source addresses 127.0.0.x, --open-concurrency of them
   opening at a time, each with one routed request whose answer must come
   from the site its uid names; then held idle: memory before and after, the
   same wrk run WITH them held, a check that none was closed, a reset of all;
3. control (not with --quick): the same connections held by another nginx
   while wrk loads the gateway: the machine's cost of that many sockets.

A connection that could not even be attempted (socket, bind or connect
failing at once: ephemeral ports, file limits) is the machine's and is
reported as such, apart from the gateway's errors (refused, reset, closed,
no or a wrong answer). The kernel's listen-queue counters and the CPU that
other processes took during each opening are reported beside its time.
Writes DIR/scale.md and DIR/scale.json. See bench/README.md.
"""

import argparse
import contextlib
import dataclasses
import datetime
import errno
import json
import math
import os
import re
import resource
import select
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import CHECKOUT, report


RATIO_TARGET = 0.95  # req/s with idle connections / without
OPEN_TARGET = 1.5  # opening time, mosn / map in the same round
WRK_CONNECTIONS = 64
PER_CLIENT_MAX = 15000  # connections one client process holds (< 20k fds)
WORKER_CONNECTIONS_MAX = 19000
SOURCE_BASE = 101  # source addresses 127.0.0.101, .102, ...
HOLD_TIMEOUT = 300.0  # seconds for the clients to open everything
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
BODY = re.compile(rb"site (s[123]) from (\d+)\s*")
CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")
# a connection that fails before its first packet left: this machine's limits
MACHINE_ERRNOS = {
    errno.EADDRNOTAVAIL: "no free local port for the source address: the "
    "ephemeral ports (ip_local_port_range) are taken on "
    "this machine",
    errno.EMFILE: "the client process's open file limit (ulimit -n)",
    errno.ENFILE: "the system's open file limit (fs.file-max)",
    errno.ENOBUFS: "kernel memory for sockets",
    errno.ENOMEM: "kernel memory for sockets",
}
# the kernel's counters of connection attempts it dropped or refused
TCP_COUNTERS = (
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "AttemptFails",
    "EstabResets",
)


def expected_site(uid):
    return "s1" if uid <= 100 else "s2" if uid <= 200 else "s3"


# ==========================================================================
# The client: a child process that opens and holds its share of connections.
# Runs as `scale_bench --hold '{json}'`; talks to the parent over stdin/stdout.
# ==========================================================================


class _Conn:
    __slots__ = ("uid", "started", "sent", "data")

    def __init__(self, uid):
        self.uid, self.started, self.sent, self.data = (
            uid,
            time.monotonic(),
            False,
            b"",
        )


def hold(spec):
    """Opens spec["count"] connections, one routed request each, checks the
    answers, reports, then holds them until told (or stdin closes)."""
    raise_nofile(spec.get("nofile") or spec["count"] + 256)
    port, sources, count = spec["port"], spec["sources"], spec["count"]
    site_of_port = {int(p): k[:2] for k, p in spec["site_ports"].items()}
    sel = selectors.EpollSelector()
    held, latencies, first_errors, slow = [], [], [], []
    machine, gateway = {}, 0
    started = time.monotonic()
    deadline = started + spec["timeout"]
    next_index = 0

    def note(text):
        if len(first_errors) < 5:
            first_errors.append(text)

    def fail(sock, conn, what):
        """The gateway's: it refused, reset, closed or answered wrongly."""
        nonlocal gateway
        gateway += 1
        note(
            f"uid {conn.uid}: {what}, {'after' if conn.sent else 'before'} "
            f"the request "
            f"was sent, {1000 * (time.monotonic() - conn.started):.0f} ms "
            f"after connect()"
        )
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(sock)
        sock.close()

    while (
        next_index < count or sel.get_map()
    ) and time.monotonic() < deadline:
        while len(sel.get_map()) < spec["inflight"] and next_index < count:
            uid = (spec["first"] + next_index) % 250 + 1
            src = sources[next_index % len(sources)]
            next_index += 1
            s = None
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((src, 0))
                s.setblocking(False)
                rc = s.connect_ex(("127.0.0.1", port))
                if rc not in (0, errno.EINPROGRESS):
                    raise OSError(rc, os.strerror(rc))
            except OSError as e:
                # nothing reached the server: a limit of this machine
                name = errno.errorcode.get(e.errno, str(e.errno))
                if name not in machine:
                    note(
                        f"machine: {name} from {src}: "
                        f"{MACHINE_ERRNOS.get(e.errno, e.strerror)}"
                    )
                machine[name] = machine.get(name, 0) + 1
                if s is not None:
                    s.close()
                continue
            sel.register(s, selectors.EVENT_WRITE, _Conn(uid))
        for key, _ in sel.select(timeout=1.0):
            s, conn = key.fileobj, key.data
            if not conn.sent:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(s, conn, f"connect: {errno.errorcode.get(err, err)}")
                    continue
                try:
                    s.send(
                        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nuid: %d\r\n\r\n"
                        % conn.uid
                    )
                except OSError as e:
                    fail(s, conn, f"send: {errno.errorcode.get(e.errno, e)}")
                    continue
                conn.sent = True
                sel.modify(s, selectors.EVENT_READ, conn)
                continue
            try:
                chunk = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError as e:
                fail(s, conn, f"recv: {errno.errorcode.get(e.errno, e)}")
                continue
            if not chunk:
                fail(s, conn, "closed by the server before the answer")
                continue
            conn.data += chunk
            head, sep, body = conn.data.partition(b"\r\n\r\n")
            length = CONTENT_LENGTH.search(head)
            if not sep or (length and len(body) < int(length.group(1))):
                continue
            got = BODY.fullmatch(body)
            want = expected_site(conn.uid)
            if (
                not head.startswith(b"HTTP/1.1 200")
                or not got
                or got.group(1).decode() != want
                or site_of_port.get(int(got.group(2))) != want
            ):
                status = head.split(b"\r\n", 1)[0]
                fail(
                    s, conn, f"answered {status!r} {body[:40]!r}, want {want}"
                )
                continue
            sel.unregister(s)
            took = time.monotonic() - conn.started
            latencies.append(round(1000 * took, 1))
            if took > 1.0 and len(slow) < 5:
                slow.append(
                    f"uid {conn.uid}: {1000 * took:.0f} ms, from "
                    f"{conn.started - started:.1f} s into the storm"
                )
            held.append(s)
    for key in list(sel.get_map().values()):
        fail(
            key.fileobj, key.data, f"no answer within {spec['timeout']:.0f} s"
        )
    sel.close()
    print(
        json.dumps(
            {
                "opened": len(held),
                "machine_errors": machine,
                "gateway_errors": gateway,
                "seconds": time.monotonic() - started,
                "first_errors": first_errors,
                "slow": slow,
                "latency_ms": latencies,
            }
        ),
        flush=True,
    )

    for line in sys.stdin:  # blocks: the client costs nothing while held
        command = line.strip()
        if command == "check":
            ep = select.epoll(sizehint=len(held) or 1)
            for s in held:
                ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            ready = ep.poll(0, maxevents=len(held) or 1)
            ep.close()
            # an idle keep-alive connection has nothing to read: readable
            # means nginx closed it (or sent something it should not have)
            print(
                json.dumps(
                    {"held": len(held), "closed_or_readable": len(ready)}
                ),
                flush=True,
            )
        elif command == "close":
            break
    for s in held:  # RST: no TIME_WAIT left behind
        with contextlib.suppress(OSError):
            s.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0"
            )
        s.close()
    print(json.dumps({"closed": len(held)}), flush=True)


def raise_nofile(want):
    """The soft file limit to `want`; a privileged process (CI runs as root)
    raises the hard limit too when it is lower, as nginx does for
    worker_rlimit_nofile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if want > hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


class Clients:
    """The client processes that open and hold the connections of one storm."""

    def __init__(self, port, count, plan, site_ports, inflight, nofile=None):
        self.procs = []
        n, spc = plan["clients"], plan["sources_per_client"]
        first = 0
        for i in range(n):
            share = count // n + (1 if i < count % n else 0)
            spec = {
                "port": port,
                "count": share,
                "first": first,
                "sources": plan["sources"][i * spc : (i + 1) * spc],
                "site_ports": site_ports,
                "timeout": HOLD_TIMEOUT,
                "inflight": max(1, inflight // n),
            }
            if nofile:
                spec["nofile"] = nofile
            first += share
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        __spec__.name,
                        "--hold",
                        json.dumps(spec),
                    ],
                    cwd=CHECKOUT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )

    def _read_all(self, timeout):
        out = []
        deadline = time.monotonic() + timeout
        for p in self.procs:
            left = max(0.1, deadline - time.monotonic())
            ready, _, _ = select.select([p.stdout], [], [], left)
            line = p.stdout.readline() if ready else ""
            if not line:
                raise RuntimeError(
                    f"client {p.pid} said nothing within {timeout:.0f}s "
                    f"(exit {p.poll()})"
                )
            out.append(json.loads(line))
        return out

    def wait_open(self):
        reports = self._read_all(HOLD_TIMEOUT + 30)
        machine = {}
        for r in reports:
            for name, k in r["machine_errors"].items():
                machine[name] = machine.get(name, 0) + k
        latencies = sorted(x for r in reports for x in r["latency_ms"])
        return {
            "opened": sum(r["opened"] for r in reports),
            "gateway_errors": sum(r["gateway_errors"] for r in reports),
            "machine_errors": machine,
            "slowest_client_s": max(r["seconds"] for r in reports),
            "first_errors": [e for r in reports for e in r["first_errors"]][
                :5
            ],
            "slow": [e for r in reports for e in r["slow"]][:5],
            "per_client": [r["opened"] for r in reports],
            "latency_ms": {
                q: percentile(latencies, p)
                for q, p in (("p50", 50), ("p99", 99), ("max", 100))
            },
            "over_1s": sum(x > 1000 for x in latencies),
        }

    def _tell(self, command):
        for p in self.procs:
            p.stdin.write(command + "\n")
            p.stdin.flush()

    def check(self):
        self._tell("check")
        reports = self._read_all(60)
        return {
            "held": sum(r["held"] for r in reports),
            "closed_or_readable": sum(
                r["closed_or_readable"] for r in reports
            ),
        }

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


def percentile(values, p):
    """values sorted; None if empty."""
    if not values:
        return None
    return values[
        min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))
    ]


# ==========================================================================
# The machine: limits, kernel counters, what others use of it.
# ==========================================================================


def _import_bench():
    """The rest of the benchmark, which the clients (--hold) do not need."""
    global gateways, idle, peers, procs
    from bench import gateways, procs  # noqa: F401
    from bench import idle_bench as idle  # noqa: F401  (configs, /proc)
    from bench import peers_bench as peers  # noqa: F401  (probe, wrk)


def sysctl(name):
    try:
        return Path("/proc/sys/" + name.replace(".", "/")).read_text().split()
    except OSError:
        return None


def limits():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    eph = sysctl("net.ipv4.ip_local_port_range")
    return {
        "nofile_soft": soft,
        "nofile_hard": hard,
        "ip_local_port_range": [int(x) for x in eph] if eph else None,
        "fs.file-max": int(sysctl("fs.file-max")[0]),
        "fs.nr_open": int(sysctl("fs.nr_open")[0]),
        "net.core.somaxconn": int(sysctl("net.core.somaxconn")[0]),
        "net.ipv4.tcp_max_syn_backlog": int(
            (sysctl("net.ipv4.tcp_max_syn_backlog") or [0])[0]
        ),
        "fs.file-nr": [int(x) for x in sysctl("fs.file-nr")],
    }


def tcp_counters():
    """The machine's TCP counters of TCP_COUNTERS (/proc/net/netstat, snmp)."""
    out = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        with contextlib.suppress(OSError):
            lines = Path(path).read_text().splitlines()
            for names, values in zip(lines[::2], lines[1::2]):
                for k, v in zip(names.split()[1:], values.split()[1:]):
                    if k in TCP_COUNTERS:
                        out[k] = int(v)
    return out


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
    return {
        "slab_kb": meminfo.get("Slab", 0),
        "mem_available_kb": meminfo["MemAvailable"],
        "tcp_inuse": tcp.get("inuse"),
        "tcp_tw": tcp.get("tw"),
        "tcp_orphan": tcp.get("orphan"),
        "tcp_mem_pages": tcp.get("mem"),
    }


def machine_cpu():
    """/proc/stat's first line in ticks: busy (user, nice, system, irq,
    softirq: this kernel has no IRQ_TIME_ACCOUNTING, so a process's schedstat
    includes the softirq work done on its watch), softirq, steal."""
    f = [
        int(x)
        for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ]
    return {
        "busy": f[0] + f[1] + f[2] + f[5] + f[6],
        "softirq": f[6],
        "steal": f[7],
    }


class Window:
    """CPU over a stretch of time: the machine's, ours (by pid) and what is
    left for everybody else ("foreign"), in % of one core."""

    def __init__(self, ours):
        self.ours = set(ours)
        self.before = {pid: procs.proc_sample(pid) for pid in self.ours}
        self.m0, self.t0 = machine_cpu(), time.monotonic()

    def close(self, late=()):
        """late: pids that started during the window (all their CPU counts)."""
        elapsed = time.monotonic() - self.t0
        m1 = machine_cpu()
        ns = {}
        for pid in self.ours | set(late):
            a, b = self.before.get(pid), procs.proc_sample(pid)
            if b and (not a or a["start"] == b["start"]):
                ns[pid] = b["ns"] - (a["ns"] if a else 0)
        tick = 100 / os.sysconf("SC_CLK_TCK") / elapsed
        busy = (m1["busy"] - self.m0["busy"]) * tick
        pct = {pid: 100 * v / 1e9 / elapsed for pid, v in ns.items()}
        return {
            "seconds": elapsed,
            "busy_pct": busy,
            "pct": pct,
            "foreign_pct": busy - sum(pct.values()),
            "softirq_pct": (m1["softirq"] - self.m0["softirq"]) * tick,
            "steal_pct": (m1["steal"] - self.m0["steal"]) * tick,
        }


def wait_quiet(ours, limit, max_wait):
    """Waits (at most max_wait s) until others use < limit % of a core; a
    shared machine: other people's tests would land in one run, not the
    other, and make the comparison say nothing. Returns (seconds waited, %)."""
    started = time.monotonic()
    while True:
        w = Window(ours)
        time.sleep(1.0)
        pct = w.close()["foreign_pct"]
        waited = time.monotonic() - started
        if pct < limit or waited >= max_wait:
            return waited, pct


def _task_times():
    """pid -> (command name, scheduler ns) of every process on the machine."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ns = sum(
                int(
                    Path(f"/proc/{pid}/task/{tid}/schedstat")
                    .read_text()
                    .split()[0]
                )
                for tid in os.listdir(f"/proc/{pid}/task")
            )
            out[int(pid)] = (Path(f"/proc/{pid}/comm").read_text().strip(), ns)
    return out


def rest_sample(found, holders, seconds=5.0):
    """No load: CPU of the gateway, of the clients holding the connections,
    and the busiest other processes on the machine, over `seconds`."""
    before, m0 = _task_times(), machine_cpu()
    time.sleep(seconds)
    after, m1 = _task_times(), machine_cpu()
    pct = {
        pid: 100 * (ns - before[pid][1]) / 1e9 / seconds
        for pid, (comm, ns) in after.items()
        if pid in before
    }
    mine = set(found) | set(SITES) | set(holders) | {os.getpid()}
    others = sorted(
        ((pid, after[pid][0], p) for pid, p in pct.items() if pid not in mine),
        key=lambda row: -row[2],
    )
    return {
        "seconds": seconds,
        "busy_pct": (m1["busy"] - m0["busy"])
        * 100
        / os.sysconf("SC_CLK_TCK")
        / seconds,
        "gateway_pct": sum(pct.get(pid, 0.0) for pid in found),
        "clients_pct": sum(pct.get(pid, 0.0) for pid in holders),
        "others_pct": sum(p for _, _, p in others),
        "top_others": [
            {"pid": pid, "comm": comm, "pct": p} for pid, comm, p in others[:3]
        ],
    }


# ==========================================================================
# The gateways and what is measured on them.
# ==========================================================================

SITES = {}  # pid -> role of the demo sites' nginx, set by main()


@dataclasses.dataclass
class Target:
    """A running gateway under test and everything measured on it."""

    name: str
    gw: object
    procs: dict
    region: str
    base_fds: int = 0
    others: set = dataclasses.field(default_factory=set)  # pids of the rest
    data: dict = dataclasses.field(default_factory=lambda: {"runs": []})


def snapshot(found):
    """Memory and fds of a gateway's processes, by kind."""
    out = {"nginx_workers": [], "python": []}
    for pid, role in sorted(found.items()):
        mem = procs.memory(pid)
        if mem is None:
            continue
        row = {"pid": pid, "role": role, **mem}
        if role == "nginx-worker":
            row["fds"] = procs.fd_count(pid)
            out["nginx_workers"].append(row)
        elif role.startswith("py"):
            out["python"].append(row)
    for key in ("nginx_workers", "python"):
        rows = out[key]
        out[key + "_rss_kb"] = sum(r["rss_kb"] for r in rows)
        out[key + "_pss_kb"] = sum(r["pss_kb"] or 0 for r in rows)
    return out


def ring_totals(region):
    return idle.counter_totals(idle.region_stats(region)) if region else None


def ring_delta(before, after):
    return (
        {k: after[k] - before[k] for k in before} if before and after else None
    )


def wrk_run(args, t, settings, holders=()):
    """wrk_once, again (up to --retries times) while other people's work took
    more than 2 x --quiet-limit of a core during the run; keeps the least
    disturbed attempt, and the others' figures in the result."""
    attempts = []
    while True:
        result = wrk_once(args, t, settings, holders)
        attempts.append(result)
        if (
            result["machine"]["foreign_pct"] < 2 * args.quiet_limit
            or len(attempts) > args.retries
        ):
            break
        print(
            f"    (others used {result['machine']['foreign_pct']:.0f}% of a "
            f"core "
            f"during the run: {result['rps']:.0f} req/s set aside, measuring "
            f"again)",
            flush=True,
        )
    best = min(attempts, key=lambda r: r["machine"]["foreign_pct"])
    best["disturbed_attempts"] = [
        {k: r[k] for k in ("rps", "p99_ms", "machine")}
        for r in attempts
        if r is not best
    ]
    return best


def wrk_once(args, t, settings, holders=()):
    """One measured wrk run; also CPU, ring counters and the sites' mix, and
    how much CPU went to processes outside the benchmark (other people's
    work on a shared machine) or was stolen by the hypervisor."""
    wrk_args = argparse.Namespace(
        wrk=args.wrk, threads=2, connections=WRK_CONNECTIONS
    )
    ours = set(t.procs) | set(SITES) | set(holders) | t.others | {os.getpid()}
    waited, foreign_before = wait_quiet(
        ours, args.quiet_limit, args.quiet_wait
    )
    time.sleep(peers.FLUSH_WAIT)
    hits_before = peers.site_hits(settings)
    ring_before = ring_totals(t.region)
    window = Window(ours)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = peers.parse_wrk(peers.run_wrk(wrk_args, t.gw.port, args.duration))
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    w = window.close()
    wrk_pct = (
        100
        * (
            (children_after.ru_utime + children_after.ru_stime)
            - (children_before.ru_utime + children_before.ru_stime)
        )
        / w["seconds"]
    )
    result["machine"] = {
        "busy_pct": w["busy_pct"],
        "wrk_pct": wrk_pct,
        "softirq_pct": w["softirq_pct"],
        "steal_pct": w["steal_pct"],
        "foreign_pct": w["foreign_pct"] - wrk_pct,
        "quiet_waited_s": waited,
        "foreign_before_pct": foreign_before,
    }
    result["ring"] = ring_delta(ring_before, ring_totals(t.region))
    time.sleep(peers.FLUSH_WAIT)
    hits_after = peers.site_hits(settings)
    try:
        peers.check_mix(
            t.name,
            result["sent"],
            {s: hits_after[s] - hits_before[s] for s in hits_after},
        )
        result["mix_ok"] = True
    except peers.RoutingError as e:
        result["mix_ok"], result["mix_error"] = False, str(e)
    result["cpu_nginx_pct"] = sum(
        p
        for pid, p in w["pct"].items()
        if t.procs.get(pid, "").startswith("nginx")
    )
    result["cpu_python_pct"] = sum(
        p
        for pid, p in w["pct"].items()
        if t.procs.get(pid, "").startswith("py")
    )
    result["load"] = procs.loadavg()
    return result


def storm(args, port, t, plan, settings):
    """Opens the connections (each with one routed request) against port;
    returns the clients holding them and what the opening took: time, the
    answers' latency, errors by origin, the kernel's dropped or refused
    attempts, and the CPU of the gateway, the clients and everybody else."""
    ours = set(t.procs) | set(SITES) | t.others | {os.getpid()}
    waited, _ = wait_quiet(ours, args.quiet_limit, args.quiet_wait)
    ring0, tcp0 = ring_totals(t.region), tcp_counters()
    window = Window(ours)
    clients = Clients(
        port,
        args.connections,
        plan,
        settings.site_ports,
        args.open_concurrency,
    )
    try:
        out = clients.wait_open()
    except BaseException:
        clients.close()
        raise
    w = window.close(late=[p.pid for p in clients.procs])
    out["seconds"] = w["seconds"]
    out["ring"] = ring_delta(ring0, ring_totals(t.region))
    tcp1 = tcp_counters()
    out["tcp"] = {k: tcp1[k] - tcp0[k] for k in tcp0 if k in tcp1}
    out["machine"] = {
        "foreign_pct": w["foreign_pct"],
        "steal_pct": w["steal_pct"],
        "quiet_waited_s": waited,
        "clients_pct": sum(w["pct"].get(p.pid, 0.0) for p in clients.procs),
        "gateway_pct": sum(w["pct"].get(pid, 0.0) for pid in t.procs),
    }
    out["disturbed"] = w["foreign_pct"] >= 2 * args.quiet_limit
    return clients, out


def wait_fds_back(found, baseline, timeout=30.0):
    """After the clients reset their connections: nginx's fds back to
    normal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = sum(
            procs.fd_count(pid) or 0
            for pid, r in found.items()
            if r == "nginx-worker"
        )
        if now <= baseline + 64 * 4 + WRK_CONNECTIONS:
            return now
        time.sleep(0.2)
    return now


def error_log_findings(prefix):
    text = ""
    with contextlib.suppress(OSError):
        text = (prefix / "error.log").read_text(errors="replace")
    bad = [
        line
        for line in text.splitlines()
        if "[alert]" in line or "[crit]" in line or "[emerg]" in line
    ]
    return {"alerts": len(bad), "first": bad[:3]}


def scale_edits(worker_connections, rlimit):
    return [
        (
            "worker_processes @workers;\n",
            f"worker_processes @workers;\nworker_rlimit_nofile {rlimit};\n",
        ),
        (
            "events { worker_connections 4096; }",
            f"events {{ worker_connections {worker_connections}; }}",
        ),
        (
            "\n    keepalive_requests 1000000;\n",
            "\n    keepalive_requests 1000000;\n    keepalive_timeout "
            "3600s;\n",
        ),
        (
            "listen 127.0.0.1:@port;",
            "listen 127.0.0.1:@port reuseport backlog=4096;",
        ),
    ]


def preallocation(args, settings, t, plan, workdir):
    """Worker RSS with worker_connections 1024 beside the full-size one: what
    one connection slot costs before any connection comes (nginx allocates
    and initialises its connection and event arrays at start)."""
    shm = (
        t.region + "_small" if t.region else f"mosn_scale_{os.getpid()}_small"
    )
    plain, mosn = idle.bench_gateways(
        workdir,
        *procs.free_ports(2, settings.site_ports.values()),
        shm,
        args.mosn_workers,
        scale_edits(1024, 2048),
    )
    small = dataclasses.replace(
        mosn if t.name == "mosn" else plain, name=t.name + "-small"
    )
    (workdir / small.name / "logs").mkdir(parents=True, exist_ok=True)
    try:
        with gateways.running(small, settings) as live:
            idle.wait_routing(small.port, settings.site_ports, args.workers)
            peers.probe(small.port, args.workers, settings.site_ports)
            rss = snapshot(procs.gateway_processes(live.nginx.pgid))[
                "nginx_workers_rss_kb"
            ]
    finally:
        idle.cleanup_region(shm)
    full = t.data["fresh"]["nginx_workers_rss_kb"]
    slots = args.workers * (plan["worker_connections"] - 1024)
    return {
        "rss_kb_small": rss,
        "rss_kb_full": full,
        "per_slot_bytes": 1024 * (full - rss) / slots,
    }


def start(stack, args, name, gw, settings, region=None):
    live = stack.enter_context(gateways.running(gw, settings))
    idle.wait_routing(gw.port, settings.site_ports, args.workers)
    peers.probe(gw.port, args.workers, settings.site_ports)
    return Target(
        name, gw, procs.gateway_processes(live.nginx.pgid, region), region
    )


def one_round(args, t, n, plan, settings, sink):
    """Without, with (the storm) and control for one gateway, in ABBA order."""
    run = {"round": n}

    def without():
        run["without"] = wrk_run(args, t, settings)
        print(
            f"  {t.name} round {n}: without idle {run['without']['rps']:.0f} "
            f"req/s",
            flush=True,
        )

    def with_():
        if n == 1:
            run["rest_before"] = rest_sample(t.procs, ())
        run["mem_before"] = snapshot(t.procs)
        run["kernel_before"] = kernel_memory()
        clients, run["open"] = storm(args, t.gw.port, t, plan, settings)
        o = run["open"]
        try:
            print(
                f"  {t.name} round {n}: {o['opened']} connections opened in "
                f"{o['seconds']:.1f} s, {o['gateway_errors']} gateway errors, "
                f"machine errors {o['machine_errors'] or 0}, others used "
                f"{o['machine']['foreign_pct']:.0f}% of a core",
                flush=True,
            )
            for e in o["first_errors"]:
                print(f"    {e}", flush=True)
            time.sleep(1.0)
            run["mem_after"] = snapshot(t.procs)
            run["kernel_after"] = kernel_memory()
            holders = [p.pid for p in clients.procs]
            if n == 1:
                run["rest_with"] = rest_sample(t.procs, holders)
            run["with"] = wrk_run(args, t, settings, holders)
            run["mem_after_load"] = snapshot(t.procs)
            run["still_open"] = clients.check()
            print(
                f"  {t.name} round {n}: with them held "
                f"{run['with']['rps']:.0f} req/s; "
                f"closed by the server "
                f"{run['still_open']['closed_or_readable']}",
                flush=True,
            )
        finally:
            run["closed"] = clients.close()
        run["fds_after_close"] = wait_fds_back(t.procs, t.base_fds)

    def control():
        clients, run["control_open"] = storm(
            args, sink.gw.port, sink, plan, settings
        )
        try:
            time.sleep(1.0)
            run["control"] = wrk_run(
                args,
                t,
                settings,
                [p.pid for p in clients.procs] + list(sink.procs),
            )
            print(
                f"  {t.name} round {n}: with them held by another nginx "
                f"{run['control']['rps']:.0f} req/s",
                flush=True,
            )
        finally:
            clients.close()
        wait_fds_back(sink.procs, sink.base_fds)

    steps = [("without", without), ("with", with_)] + (
        [("control", control)] if sink else []
    )
    if not n % 2:
        steps.reverse()
    run["order"] = ",".join(name for name, _ in steps)
    for _, step in steps:
        step()
    t.data["runs"].append(run)


TARGETS = []


def measure(args, plan, settings, workdir):
    """Starts every gateway (and the control's sink) once, then the rounds."""
    shm = f"mosn_scale_{os.getpid()}"
    ports = procs.free_ports(3, settings.site_ports.values())
    plain, mosn = idle.bench_gateways(
        workdir,
        ports[0],
        ports[1],
        shm,
        args.mosn_workers,
        scale_edits(plan["worker_connections"], plan["worker_rlimit_nofile"]),
    )
    names = args.only.split(",")
    if "mosn" in names and mosn is None:
        raise gateways.GatewayError("mosn: not built (make build-l7)")
    try:
        with contextlib.ExitStack() as stack:
            sink = None
            if args.control:
                sink = start(
                    stack,
                    args,
                    "sink",
                    dataclasses.replace(plain, name="sink", ports=[ports[2]]),
                    settings,
                )
            for name in names:
                t = start(
                    stack,
                    args,
                    name,
                    mosn if name == "mosn" else plain,
                    settings,
                    shm if name == "mosn" else None,
                )
                t.data["processes"] = sorted(t.procs.values())
                t.data["fresh"] = snapshot(t.procs)
                print(
                    f"{name}: {len(t.procs)} processes, nginx workers RSS "
                    f"{t.data['fresh']['nginx_workers_rss_kb'] / 1024:.1f} MB "
                    f"at start",
                    flush=True,
                )
                TARGETS.append(t)
            for t in TARGETS:
                if args.warmup:
                    peers.run_wrk(
                        argparse.Namespace(
                            wrk=args.wrk,
                            threads=2,
                            connections=WRK_CONNECTIONS,
                        ),
                        t.gw.port,
                        args.warmup,
                    )
                t.base_fds = sum(
                    r["fds"] for r in snapshot(t.procs)["nginx_workers"]
                )
            everyone = [*TARGETS, *([sink] if sink else [])]
            for t in everyone:
                t.others = {
                    pid for o in everyone if o is not t for pid in o.procs
                }
            if sink:
                sink.base_fds = sum(
                    r["fds"] for r in snapshot(sink.procs)["nginx_workers"]
                )
            for n in range(1, args.runs + 1):
                for t in TARGETS if n % 2 else TARGETS[::-1]:
                    one_round(args, t, n, plan, settings, sink)
            for t in TARGETS:
                t.data["error_log"] = error_log_findings(workdir / t.gw.name)
    finally:
        idle.cleanup_region(shm)
    for t in TARGETS:
        if not args.no_prealloc:
            try:
                t.data["prealloc"] = preallocation(
                    args, settings, t, plan, workdir
                )
            except (gateways.GatewayError, peers.RoutingError) as e:
                # a side figure: say why it is missing, keep the main ones
                t.data["prealloc_error"] = str(e)
                print(f"{t.name}: preallocation not measured: {e}", flush=True)
    return {t.name: t.data for t in TARGETS}


# ==========================================================================
# Summary, checks, report.
# ==========================================================================


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(data, disturbed_pct):
    runs = data["runs"]
    r0 = runs[0]
    kinds = [k for k in ("without", "with", "control") if k in r0]

    def rps(kind, clean=False):
        return med(
            r[kind]["rps"]
            for r in runs
            if kind in r
            and not (
                clean and r[kind]["machine"]["foreign_pct"] >= disturbed_pct
            )
        )

    s = {k: rps(k) for k in kinds}
    s["undisturbed"] = {k: rps(k, clean=True) for k in kinds}
    for d in (s, s["undisturbed"]):
        d["ratio"] = (
            d["with"] / d["without"]
            if d.get("with") and d.get("without")
            else None
        )
        d["ratio_control"] = (
            d["with"] / d["control"]
            if d.get("with") and d.get("control")
            else None
        )
    s["ratio_per_run"] = [r["with"]["rps"] / r["without"]["rps"] for r in runs]
    s["p99_ms"] = {
        k: med(r[k]["p99_ms"] for r in runs) for k in ("without", "with")
    }
    s["cpu"] = {
        k: [
            med(r[k][c] for r in runs)
            for c in ("cpu_nginx_pct", "cpu_python_pct")
        ]
        for k in ("without", "with")
    }
    opens = [r["open"] for r in runs]
    machine = {}
    for o in opens + [r["control_open"] for r in runs if "control_open" in r]:
        for name, k in o["machine_errors"].items():
            machine[name] = machine.get(name, 0) + k
    s["errors"] = {
        "open_errors": sum(o["gateway_errors"] for o in opens),
        "control_open_errors": sum(
            r["control_open"]["gateway_errors"]
            for r in runs
            if "control_open" in r
        ),
        "machine_errors": machine,
        "first_errors": [e for o in opens for e in o["first_errors"]][:5],
        "wrk_non_2xx": sum(r[k]["non_2xx"] for r in runs for k in kinds),
        "wrk_socket_errors": sum(
            r[k]["socket_errors"] for r in runs for k in kinds
        ),
        "mix_failures": sum(not r[k]["mix_ok"] for r in runs for k in kinds),
        "closed_by_server": sum(
            r["still_open"]["closed_or_readable"] for r in runs
        ),
        "ring_fallbacks": sum(
            (o["ring"] or {}).get("producers.fallbacks", 0)
            + (o["ring"] or {}).get("producers.timeouts", 0)
            for o in opens
        ),
    }
    s["opened"] = med(o["opened"] for o in opens)
    s["opened_min"] = min(o["opened"] for o in opens)
    s["open_seconds"] = med(o["seconds"] for o in opens)
    s["open_seconds_undisturbed"] = med(
        o["seconds"] for o in opens if not o["disturbed"]
    )
    # memory per connection from the first opening: nginx keeps what it
    # freed when the connections closed (malloc does not return it), so later
    # rounds reuse it and show almost nothing; they are kept per round
    for key in ("rss", "pss"):
        per = [
            1024
            * (
                r["mem_after"][f"nginx_workers_{key}_kb"]
                - r["mem_before"][f"nginx_workers_{key}_kb"]
            )
            / max(1, r["open"]["opened"])
            for r in runs
        ]
        (
            s[f"nginx_bytes_per_conn_{key}"],
            s[f"nginx_bytes_per_conn_{key}_per_round"],
        ) = per[0], per
    s["kernel_slab_bytes_per_socket"] = (
        1024
        * (r0["kernel_after"]["slab_kb"] - r0["kernel_before"]["slab_kb"])
        / max(1, 2 * r0["open"]["opened"])
    )
    s["nginx_kb"] = {
        k: [
            r0["mem_before"][f"nginx_workers_{k}_kb"],
            r0["mem_after"][f"nginx_workers_{k}_kb"],
        ]
        for k in ("rss", "pss")
    }
    s["conns_per_worker"] = [
        w["fds"] for w in r0["mem_after"]["nginx_workers"]
    ]
    s["python_rss_kb"] = {
        "start": data["fresh"]["python_rss_kb"],
        "before": r0["mem_before"]["python_rss_kb"],
        "after_open": r0["mem_after"]["python_rss_kb"],
        "after_load": r0["mem_after_load"]["python_rss_kb"],
        "last_after_load": runs[-1]["mem_after_load"]["python_rss_kb"],
    }
    if data.get("prealloc"):
        s["prealloc_bytes_per_slot"] = data["prealloc"]["per_slot_bytes"]
    s["rest"] = {"without": r0.get("rest_before"), "with": r0.get("rest_with")}
    s["error_log"] = data["error_log"]
    return s


def open_ratios(data):
    """mosn's opening time over map's, round by round (both in each round)."""
    if not {"mosn", "map"} <= set(data):
        return None
    pairs = list(zip(data["mosn"]["runs"], data["map"]["runs"]))
    per = [a["open"]["seconds"] / b["open"]["seconds"] for a, b in pairs]
    clean = [
        x
        for x, (a, b) in zip(per, pairs)
        if not a["open"]["disturbed"] and not b["open"]["disturbed"]
    ]
    return {
        "per_round": per,
        "median": med(per),
        "undisturbed": med(clean),
        "undisturbed_rounds": len(clean),
    }


def million(summary, lim):
    """What 1M idle connections need, from the measured figures."""
    m = 1_000_000
    out = {}
    for name, s in summary.items():
        per_conn = max(
            s["nginx_bytes_per_conn_rss"], s["nginx_bytes_per_conn_pss"]
        )
        slots = (
            m * 1.2 * (s.get("prealloc_bytes_per_slot") or 0.0)
        )  # 20% headroom
        kernel = m * s["kernel_slab_bytes_per_socket"]
        out[name] = {
            "nginx_conn_memory_mb": m * per_conn / 2**20,
            "nginx_slot_memory_mb": slots / 2**20,
            "kernel_memory_mb": kernel / 2**20,
            "total_mb": (m * per_conn + slots + kernel) / 2**20,
        }
    per_worker = min(WORKER_CONNECTIONS_MAX, lim["nofile_hard"] - 1000)
    port_range = lim["ip_local_port_range"] or [32768, 60999]
    ports = port_range[1] - port_range[0] + 1
    return {
        "per_gateway": out,
        "fds": m + 1000,
        "workers_at_this_nofile": math.ceil(m / per_worker),
        "nofile_per_worker_at_this_limit": per_worker,
        "nofile_per_worker_if_raised": math.ceil(m / 16 * 1.2),
        "client_source_addresses": math.ceil(m / ports),
        "ports_per_address": ports,
    }


def checks(summary, ratios, connections):
    """Report lines and the worst status: FAILED (the gateway's), MACHINE (a
    limit of this machine cut the run short) or ok. Targets on ratios are
    reported, not failed: a shared machine moves them."""
    out, worst = [], "ok"
    for name, s in summary.items():
        e = s["errors"]
        lost = sum(e["machine_errors"].values())
        rows = [
            (
                "connections opened and answered by the right site, fewest in "
                "a round",
                f"{s.get('opened_min', s['opened']):.0f} of {connections}",
                "ok"
                if s.get("opened_min", s["opened"]) == connections
                else "MACHINE"
                if lost and not e["open_errors"]
                else "FAILED",
            ),
            (
                "gateway errors while opening (refused, reset, closed, no or "
                "a wrong answer)",
                str(e["open_errors"])
                + (f": {e['first_errors'][0]}" if e["open_errors"] else ""),
                "ok" if e["open_errors"] == 0 else "FAILED",
            ),
            (
                "connections this machine could not attempt (not the "
                "gateway's)",
                ", ".join(f"{k} {v}" for k, v in e["machine_errors"].items())
                or "0",
                "ok" if not lost else "MACHINE",
            ),
            (
                "connections closed by the server while held",
                str(e["closed_by_server"]),
                "ok" if e["closed_by_server"] == 0 else "FAILED",
            ),
            (
                "wrk non-2xx / socket errors",
                f"{e['wrk_non_2xx']} / {e['wrk_socket_errors']}",
                "ok"
                if e["wrk_non_2xx"] == 0 and e["wrk_socket_errors"] == 0
                else "FAILED",
            ),
            (
                "wrk runs whose site mix did not match the uids",
                str(e["mix_failures"]),
                "ok" if e["mix_failures"] == 0 else "FAILED",
            ),
            (
                "alerts in nginx's error.log",
                str(s["error_log"]["alerts"]),
                "ok" if s["error_log"]["alerts"] == 0 else "FAILED",
            ),
            (
                "with/without idle >= 0.95",
                f"{s['ratio']:.3f}",
                "ok" if s["ratio"] >= RATIO_TARGET else "missed",
            ),
        ]
        if name == "mosn":
            rows.insert(
                2,
                (
                    "requests that took the fallback while opening (ring)",
                    str(e["ring_fallbacks"]),
                    "ok" if e["ring_fallbacks"] == 0 else "FAILED",
                ),
            )
        for label, value, status in rows:
            out.append(f"- {name}: {label}: {value}: {status}")
            if status == "FAILED" or (status == "MACHINE" and worst == "ok"):
                worst = status
    if ratios:
        ok = ratios["median"] <= OPEN_TARGET
        out.append(
            f"- opening time mosn / map <= {OPEN_TARGET}: "
            f"{ratios['median']:.2f}: "
            f"{'ok' if ok else 'missed'}"
        )
    return out, worst


def report_md(res):
    """scale.md: the setup, then a section per part of the measurement."""
    parts = (
        _report_head,
        _storm_section,
        _throughput_section,
        _rest_section,
        _memory_section,
        _python_section,
        _million_section,
    )
    return "\n".join(line for part in parts for line in part(res))


def _report_head(res):
    a, lim, plan = res["settings"], res["limits"], res["plan"]
    m = res["machine"]
    rendered = res.get("rendered")
    control = (
        "; control: the same connections held by another nginx, "
        "load on the gateway"
        if a["control"]
        else ""
    )
    return [
        "# Connection storms and scale: opened at once, then held idle "
        "beside load",
        "",
        f"Command: `{res['command']}`  ",
        *(
            [f"Report re-rendered from that run's raw data: `{rendered}`  "]
            if rendered
            else []
        ),
        f"Date: {res['date']}  ",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, "
        f"{m['nginx']}, {m['wrk']}, Python {m['python']}; load average "
        f"before: {' '.join(map(str, res['load_before']))}, after: "
        f"{' '.join(map(str, res['load_after']))}  ",
        idle.build_line(res["build"]),
        f"Limits: nofile {lim['nofile_soft']}/{lim['nofile_hard']} "
        f"(soft/hard) per process, fs.nr_open {lim['fs.nr_open']}, "
        f"fs.file-max {lim['fs.file-max']}, ip_local_port_range "
        f"{lim['ip_local_port_range']}, somaxconn "
        f"{lim['net.core.somaxconn']}, tcp_max_syn_backlog "
        f"{lim.get('net.ipv4.tcp_max_syn_backlog')}  ",
        f"Setup: {a['connections']} connections from {plan['clients']} "
        "client processes (Python, non-blocking sockets, epoll) over "
        f"{len(plan['sources'])} source addresses ({plan['sources'][0]}.."
        f"{plan['sources'][-1]}, bind before connect), "
        f"{a['open_concurrency']} opening at a time, each with one routed "
        f"request, then held idle; nginx worker_processes {a['workers']} "
        "with `listen ... reuseport backlog=4096`, worker_connections "
        f"{plan['worker_connections']}, worker_rlimit_nofile "
        f"{plan['worker_rlimit_nofile']}, keepalive_timeout 3600s; "
        f"mosn_workers {a['mosn_workers']}; load: wrk -t2 "
        f"-c{WRK_CONNECTIONS} -d{a['duration']}s -s bench/uid.lua on other "
        f"connections. {a['runs']} round(s); each round visits every "
        "gateway (without idle; the storm, with idle, close"
        + control
        + "), gateways and steps in ABBA order (even rounds reversed). "
        "Before each opening and each wrk run the script waits, up to "
        f"{a['quiet_wait']:.0f} s, until processes outside the benchmark "
        f"use < {a['quiet_limit']:.0f}% of a core; a run during which they "
        f"used >= {2 * a['quiet_limit']:.0f}% is marked disturbed.",
        "",
    ]


def _storm_row(name, r):
    o = r["open"]
    lat, tcp, cpu = o["latency_ms"], o["tcp"], o["machine"]
    answer = " / ".join(
        f"{lat[q]:.0f}" if lat[q] is not None else "-"
        for q in ("p50", "p99", "max")
    )
    machine_errors = (
        ", ".join(f"{k} {v}" for k, v in o["machine_errors"].items()) or "0"
    )
    disturbed = " (disturbed)" if o["disturbed"] else ""
    return (
        f"| {name} | {r['round']} | {o['opened']} | "
        f"{o['seconds']:.1f} s | {o['opened'] / o['seconds']:.0f} | "
        f"{answer} | {o['gateway_errors']} | {machine_errors} | "
        f"{tcp.get('ListenDrops', 0)} | "
        f"{cpu['foreign_pct']:.0f}%{disturbed} | "
        f"{cpu['gateway_pct']:.0f}% / {cpu['clients_pct']:.0f}% |"
    )


STORM_COLUMNS = (
    "gateway",
    "round",
    "opened",
    "took",
    "per s",
    "answer p50 / p99 / max ms",
    "gateway errors",
    "machine errors",
    "dropped by the kernel",
    "others' CPU",
    "gateway / clients CPU",
)
THROUGHPUT_COLUMNS = (
    "gateway",
    "idle conns",
    "req/s without",
    "req/s with",
    "with/without",
    "per round",
    "undisturbed runs only",
    "p99 ms without / with",
    "nginx+Python CPU % without / with",
    "req/s control",
    "with/control",
)
MEMORY_COLUMNS = (
    "gateway",
    "nginx workers RSS before -> after",
    "per conn (RSS)",
    "Pss before -> after",
    "per conn (Pss)",
    "preallocated per worker_connections slot",
    "kernel slab per socket",
)
ROUND_COLUMNS = (
    "gateway",
    "round",
    "order",
    "req/s without",
    "req/s with",
    "ratio",
    "req/s control",
    "others' CPU % without / with",
    "steal %",
    "waited for quiet s",
    "set aside",
)


def _storm_section(res):
    lines = [
        "## The storm: opening the connections",
        "",
        *report.table(
            STORM_COLUMNS,
            [
                _storm_row(name, r)
                for name, d in res["data"].items()
                for r in d["runs"]
            ],
        ),
    ]
    ratios = res.get("open_ratios")
    if ratios:
        undisturbed = (
            f"{ratios['undisturbed']:.2f}x"
            if ratios["undisturbed"]
            else "none"
        )
        lines += [
            "",
            "Opening time, mosn / map in the same round: "
            + ", ".join(f"{x:.2f}" for x in ratios["per_round"])
            + f"; median **{ratios['median']:.2f}x** (target <= "
            f"{OPEN_TARGET}); over the "
            f"{ratios['undisturbed_rounds']} round(s) in which "
            "neither opening was disturbed: " + undisturbed,
        ]
    lines += [
        "",
        "Answer: from connect() to the whole answer of the routed request. "
        "Gateway errors: the server refused, reset or closed a connection, "
        "or gave no or a wrong answer (first ones below). Machine errors: "
        "socket(), bind() or connect() failed at once, before any packet "
        "left (EADDRNOTAVAIL: no free ephemeral port for the source "
        "address; EMFILE/ENFILE: file limits): this machine's, not counted "
        "against the gateway. Dropped by the kernel: the machine's "
        "ListenDrops during the opening (handshakes dropped at a full "
        "listen queue; the client retries them, so they cost time, not "
        "errors; other work on the machine counts there too). CPU in % of "
        "one core over the opening.",
        "",
    ]
    lines += [
        f"- {name}: {e}"
        for name, s in res["summary"].items()
        for e in s["errors"]["first_errors"]
    ]
    lines.append("")
    return lines


def _throughput_row(name, s):
    u, cpu = s["undisturbed"], s["cpu"]
    undisturbed = f"{u['ratio']:.3f}x" if u["ratio"] else "-"
    control = (
        f"{s['control']:.0f} | {s['ratio_control']:.3f}x |"
        if s.get("control")
        else "- | - |"
    )
    per_run = ", ".join(f"{x:.3f}" for x in s["ratio_per_run"])
    return (
        f"| {name} | {s['opened']:.0f} | {s['without']:.0f} | "
        f"{s['with']:.0f} | **{s['ratio']:.3f}x** | {per_run} | "
        f"{undisturbed} | {s['p99_ms']['without']:.2f} / "
        f"{s['p99_ms']['with']:.2f} | "
        f"{cpu['without'][0]:.0f}+{cpu['without'][1]:.0f} / "
        f"{cpu['with'][0]:.0f}+{cpu['with'][1]:.0f} | {control}"
    )


def _round_row(name, r):
    w, x = r["without"]["machine"], r["with"]["machine"]
    control = f"{r['control']['rps']:.0f}" if "control" in r else "-"
    return (
        f"| {name} | {r['round']} | {r['order']} | "
        f"{r['without']['rps']:.0f} | {r['with']['rps']:.0f} | "
        f"{r['with']['rps'] / r['without']['rps']:.3f} | {control} | "
        f"{w['foreign_pct']:.0f} / {x['foreign_pct']:.0f} | "
        f"{w['steal_pct']:.0f} / {x['steal_pct']:.0f} | "
        f"{w['quiet_waited_s']:.0f} / {x['quiet_waited_s']:.0f} | "
        f"{len(r['without']['disturbed_attempts'])} / "
        f"{len(r['with']['disturbed_attempts'])} |"
    )


def _throughput_section(res):
    quiet = 2 * res["settings"]["quiet_limit"]
    lines = [
        "## Throughput beside the idle connections",
        "",
        *report.table(
            THROUGHPUT_COLUMNS,
            [_throughput_row(name, s) for name, s in res["summary"].items()],
        ),
        "",
        "req/s and p99 are medians over the rounds (target with/without >= "
        f'{RATIO_TARGET}); "undisturbed" is the same over the runs during '
        f"which others used < {quiet:.0f}% of a core. Control: the same "
        "connections held by ANOTHER nginx (a plain map instance) while wrk "
        "loads the gateway: what holding that many sockets costs the "
        "machine; with/control is the gateway's own share.",
        "",
        *report.table(
            ROUND_COLUMNS,
            [
                _round_row(name, r)
                for name, d in res["data"].items()
                for r in d["runs"]
            ],
        ),
    ]
    lines.append("")
    return lines


def _rest_section(res):
    rows = []
    for name, s in res["summary"].items():
        a0, b0 = s["rest"]["without"], s["rest"]["with"]
        if a0 and b0:
            rows.append(
                [
                    name,
                    f"{a0['gateway_pct']:.3f} / {b0['gateway_pct']:.3f}",
                    f"{b0['clients_pct']:.3f}",
                    f"{a0['others_pct']:.1f} / {b0['others_pct']:.1f}",
                ]
            )
    return [
        "## At rest with the connections held",
        "",
        "No load, 5 s, first round, % of one core:",
        "",
        *report.table(
            (
                "gateway",
                "gateway CPU without / with",
                "clients holding them",
                "rest of the machine without / with",
            ),
            rows,
        ),
        "",
    ]


def _memory_row(name, s):
    slot = s.get("prealloc_bytes_per_slot")
    rss, pss = s["nginx_kb"]["rss"], s["nginx_kb"]["pss"]
    slot = f"{slot:.0f} B" if slot is not None else "-"
    return (
        f"| {name} | {fmt_kb(rss[0])} -> {fmt_kb(rss[1])} | "
        f"{s['nginx_bytes_per_conn_rss'] / 1024:.2f} KB | "
        f"{fmt_kb(pss[0])} -> {fmt_kb(pss[1])} | "
        f"{s['nginx_bytes_per_conn_pss'] / 1024:.2f} KB | {slot} | "
        f"{s['kernel_slab_bytes_per_socket'] / 1024:.2f} KB |"
    )


def _memory_section(res):
    summary, plan = res["summary"], res["plan"]
    later = "; ".join(
        f"{name} "
        + ", ".join(
            f"{x:.0f}" for x in s["nginx_bytes_per_conn_rss_per_round"]
        )
        + " B"
        for name, s in summary.items()
    )
    per_worker = "; ".join(
        f"{name} {min(s['conns_per_worker'])}..{max(s['conns_per_worker'])}"
        for name, s in summary.items()
    )
    return [
        "## Memory per idle connection",
        "",
        *report.table(
            MEMORY_COLUMNS,
            [_memory_row(name, s) for name, s in summary.items()],
        ),
        "",
        "Per conn = (sum over the nginx workers after opening - before) / "
        "connections opened, first round (later rounds reuse what nginx "
        f"kept: {later}). nginx allocates its connection and event arrays "
        "for all worker_connections at start; the preallocated column "
        "prices them (workers' RSS at worker_connections "
        f"{plan['worker_connections']} minus at 1024, per slot). Kernel "
        "slab: /proc/meminfo Slab after - before over both ends of each "
        "loopback connection; other work on the machine moves it too. "
        f"Connections per nginx worker (fds, first round): {per_worker}.",
        "",
    ]


def _python_section(res):
    mosn = res["summary"].get("mosn")
    if not mosn:
        return []
    py = mosn["python_rss_kb"]
    return [
        "## Python does not grow with connections",
        "",
        "Python processes (supervisor, workers, admin), RSS sum: "
        f"{fmt_kb(py['start'])} at start, {fmt_kb(py['before'])} before "
        f"opening, {fmt_kb(py['after_open'])} with {mosn['opened']:.0f} "
        f"connections held, {fmt_kb(py['after_load'])} after the wrk run "
        f"beside them, {fmt_kb(py['last_after_load'])} after the last "
        "round.",
        "",
    ]


def _million_section(res):
    mil, lim = res["million"], res["limits"]
    lines = [
        "## One million connections, extrapolated",
        "",
        "Assumptions: the figures above scale linearly; each connection "
        "idle after a small request; worker_connections with 20% headroom; "
        "clients on other machines (only the server's socket counted in "
        "the kernel).",
        "",
        *report.table(
            (
                "gateway",
                "nginx per-connection memory",
                "preallocated slots (1.2M)",
                "kernel sockets",
                "total",
            ),
            [
                [
                    name,
                    f"{g['nginx_conn_memory_mb']:.0f} MB",
                    f"{g['nginx_slot_memory_mb']:.0f} MB",
                    f"{g['kernel_memory_mb']:.0f} MB",
                    f"**{g['total_mb'] / 1024:.2f} GB**",
                ]
                for name, g in mil["per_gateway"].items()
            ],
        ),
    ]
    return lines + [
        "",
        f"- File descriptors: about {mil['fds']} on the server. At this "
        f"machine's per-process limit ({lim['nofile_hard']}) that is at "
        f"least {mil['workers_at_this_nofile']} nginx workers; with the "
        f"hard limit raised (fs.nr_open {lim['fs.nr_open']}), e.g. 16 "
        "workers with worker_rlimit_nofile "
        f"{mil['nofile_per_worker_if_raised']}.",
        "- Idle connections cost the gateway no CPU (above; "
        "bench/results/idle.md), so nginx workers follow the fd limit and "
        "the request rate, and Python workers the request rate only.",
        "- Clients: one source address carries at most "
        f"{mil['ports_per_address']} connections to one ip:port (fewer "
        "while other processes on the machine hold ephemeral ports), so a "
        f"million need >= {mil['client_source_addresses']} source addresses "
        "(or several listen addresses or ports).",
        "",
        "## Checks",
        "",
        *res["checks"],
        "",
    ]


def fmt_kb(kb):
    return f"{kb / 1024:.1f} MB"


def plan_for(args, lim):
    """Clients, source addresses and nginx limits for the run, or exit with
    the limit of this machine that does not allow it."""
    hard = lim["nofile_hard"]
    per_client = min(PER_CLIENT_MAX, hard - 200)
    clients = args.clients or max(
        1, math.ceil(args.connections / min(per_client, 12500))
    )
    if math.ceil(args.connections / clients) > per_client:
        sys.exit(
            f"{args.connections} connections over {clients} clients is more "
            f"than "
            f"{per_client} per process (nofile hard limit {hard}): add "
            f"--clients"
        )
    rlimit = min(hard, WORKER_CONNECTIONS_MAX + 900)
    worker_connections = min(WORKER_CONNECTIONS_MAX, rlimit - 500)
    need = math.ceil(args.connections / args.workers * 1.1) + 600
    if need > worker_connections:
        sys.exit(
            f"{args.connections} connections over {args.workers} nginx "
            f"workers need "
            f"~{need} per worker, more than {worker_connections} (nofile hard "
            f"limit "
            f"{hard}): raise --workers"
        )
    eph = lim["ip_local_port_range"]
    ports = eph[1] - eph[0] + 1
    # a source address to one ip:port has the ephemeral ports less those
    # other processes hold: use at most a quarter of them
    spc = max(
        2, math.ceil(math.ceil(args.connections / clients) / (ports * 0.25))
    )
    if clients * spc > 150:
        sys.exit(
            f"{args.connections} connections need {clients * spc} source "
            f"addresses "
            f"with {ports} ephemeral ports each: more than 150"
        )
    return {
        "clients": clients,
        "sources_per_client": spc,
        "sources": [
            f"127.0.0.{SOURCE_BASE + k}" for k in range(clients * spc)
        ],
        "worker_connections": worker_connections,
        "worker_rlimit_nofile": rlimit,
    }


def parse_args():
    p = argparse.ArgumentParser(
        description="Connection storms and idle scale."
    )
    p.add_argument(
        "--connections", type=int, default=100000, help="connections per storm"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 10k connections, 1 round, 3 s of load, "
        "waits of 5 s at most for a quiet machine, no retries",
    )
    p.add_argument("--runs", type=int, default=3, help="rounds")
    p.add_argument(
        "--duration", type=int, default=10, help="seconds of wrk load per run"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="seconds of load before the rounds",
    )
    gateways.add_options(p, workers=8)
    p.add_argument(
        "--clients",
        type=int,
        default=0,
        help="client processes (default: auto)",
    )
    p.add_argument(
        "--open-concurrency",
        type=int,
        default=192,
        help="connections opening at a time, over all clients",
    )
    p.add_argument(
        "--quiet-limit",
        type=float,
        default=15.0,
        help="before each opening and wrk run, wait until other "
        "processes use less than this %% of a core",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="but wait at most this many seconds",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="measure a wrk run again if others took > 2 x quiet-limit",
    )
    p.add_argument("--only", default="mosn,map", help="mosn, map or both")
    p.add_argument(
        "--control",
        dest="control",
        action="store_true",
        default=None,
        help="also load the gateway while another nginx holds "
        "the connections (default on, off with --quick)",
    )
    p.add_argument("--no-control", dest="control", action="store_false")
    p.add_argument(
        "--no-prealloc",
        action="store_true",
        help="skip the worker_connections 1024 start that prices a slot",
    )
    p.add_argument(
        "--out", default=None, help="directory for the report (bench/results)"
    )
    p.add_argument("--wrk", default="wrk")
    args = p.parse_args()
    if args.control is None:
        args.control = not args.quick
    if args.quick:
        for key, default, quick in (
            ("connections", 100000, 10000),
            ("runs", 3, 1),
            ("duration", 10, 3),
            ("quiet_wait", 60.0, 5.0),
            ("retries", 2, 0),
        ):
            if getattr(args, key) == default:
                setattr(args, key, quick)
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
    started = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    info = peers.machine(args)
    # where the report goes is no part of how it was measured
    argv = sys.argv[1:]
    if "--out" in argv:
        del argv[argv.index("--out") : argv.index("--out") + 2]
    command = report.command(__spec__.name, argv)
    load_before = procs.loadavg()
    print(f"load average {load_before}; limits {lim}")
    print(
        f"plan: {plan['clients']} clients x {plan['sources_per_client']} "
        f"source addresses, "
        f"worker_connections {plan['worker_connections']}",
        flush=True,
    )
    build = idle.build_info()  # before the runs: the tree may move meanwhile
    workdir = Path(tempfile.mkdtemp(prefix="gateway-scale-"))
    workdir.chmod(0o755)
    sites = idle.site_ports(args.site_port)
    settings = idle.settings_for(args, workdir, sites)
    try:
        with gateways.running(
            gateways.sites_gateway(settings), settings, workers=1
        ) as sites_live:
            SITES.update(procs.gateway_processes(sites_live.nginx.pgid))
            data = measure(args, plan, settings, workdir)
    except (gateways.GatewayError, peers.RoutingError, RuntimeError) as e:
        sys.exit(f"*** FAIL: {e}")
    finally:
        if not os.environ.get("BENCH_KEEP"):
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    res = {
        "command": command,
        "date": started,
        "machine": info,
        "limits": lim,
        "build": build,
        "plan": plan,
        "load_before": load_before,
        "load_after": procs.loadavg(),
        "settings": {
            k: getattr(args, k)
            for k in (
                "connections",
                "quick",
                "runs",
                "duration",
                "warmup",
                "workers",
                "mosn_workers",
                "open_concurrency",
                "quiet_limit",
                "quiet_wait",
                "retries",
                "control",
            )
        },
        "data": data,
    }
    finish(res, Path(args.out) if args.out else gateways.BENCH / "results")


def finish(res, out):
    """Summary, checks, extrapolation and report from the raw data of a run."""
    a = res["settings"]
    summary = {
        name: summarise(d, 2 * a["quiet_limit"])
        for name, d in res["data"].items()
    }
    ratios = open_ratios(res["data"])
    check_lines, worst = checks(summary, ratios, a["connections"])
    res.update(
        summary=summary,
        open_ratios=ratios,
        checks=check_lines,
        million=million(summary, res["limits"]),
    )
    report.write(out, "scale", report_md(res), res, indent=1)
    print()
    for name, s in summary.items():
        print(
            f"{name}: {s['opened']:.0f} opened in {s['open_seconds']:.1f} s "
            f"(median); "
            f"{s['without']:.0f} -> {s['with']:.0f} req/s = "
            f"{s['ratio']:.3f}x; nginx "
            f"{s['nginx_bytes_per_conn_rss']:.0f} B/conn RSS"
        )
    if ratios:
        print(f"opening time mosn/map: {ratios['median']:.2f}x")
    print("\n".join(check_lines))
    print(f"wrote {out / 'scale.md'}, scale.json")
    if worst == "FAILED":
        sys.exit("scale: a check of the gateway FAILED (see above)")
    if worst == "MACHINE":
        print(
            "scale: the gateway had no error, but this machine's limits "
            "(MACHINE, "
            "above) kept connections from being attempted",
            file=sys.stderr,
        )
        sys.exit(2)


def rerender(path, out):
    """--from-json: the report again from a run's scale.json (its raw "data"),
    with this version of the summary; no measurement is made."""
    _import_bench()
    res = json.loads(Path(path).read_text())
    for key in ("summary", "open_ratios", "checks", "million"):
        res.pop(key, None)
    res["rendered"] = (
        "python -m bench.scale_bench --from-json "
        + str(path)
        + (f" --out {out}" if out else "")
    )
    finish(res, Path(out) if out else Path(path).parent)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--hold":
        hold(json.loads(sys.argv[2]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "--from-json":
        rerender(
            sys.argv[2], sys.argv[4] if sys.argv[3:4] == ["--out"] else None
        )
    else:
        main()
