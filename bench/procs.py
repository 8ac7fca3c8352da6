"""Processes, ports and waits on loopback, for the benchmarks and the
tests alike: /proc read for a gateway's processes and the CPU they used,
free ports and the ports that accept, a condition waited for."""

import os
import random
import socket
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- /proc ------------------------------------------------------------------


def read(path):
    """A /proc file's text, or None if the process is gone."""
    try:
        return Path(path).read_text()
    except OSError:
        return None


def stat_fields(pid):
    """Fields of /proc/PID/stat after the command name, or None if gone:
    [0] state, [1] ppid, [2] pgrp, [11] utime, [12] stime, [19] start."""
    text = read(f"/proc/{pid}/stat")
    if text is None:
        return None
    return text[text.rfind(")") + 2 :].split()


def start_time(pid):
    fields = stat_fields(pid)
    return fields[19] if fields else None


def all_stats():
    """pid -> stat_fields of every live process."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields:
                stats[int(entry)] = fields
    return stats


def cmdline(pid):
    """A process's command line, each word followed by a space (a pattern
    may end with one to match a whole last word); "" if gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def status(pid):
    """Fields of /proc/PID/status, or None if the process is gone."""
    text = read(f"/proc/{pid}/status")
    if text is None:
        return None
    return dict(
        line.split(":\t", 1) for line in text.splitlines() if ":\t" in line
    )


def alive(pid):
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def pids_of(pattern):
    """Pids of live processes whose command line contains pattern (not
    this process)."""
    me = os.getpid()
    return [
        int(e)
        for e in os.listdir("/proc")
        if e.isdigit() and int(e) != me and pattern in cmdline(e) and alive(e)
    ]


def children(parent, name=None):
    """Pids of live children of parent (whose command name is name)."""
    found = []
    for pid, fields in all_stats().items():
        if int(fields[1]) != parent or fields[0] == "Z":
            continue
        if name is None or (status(pid) or {}).get("Name") == name:
            found.append(pid)
    return sorted(found)


def role_of(pid, master, cmd):
    """What a process of a gateway is, by its command line."""
    if "pyworker" in cmd:
        for word, role in (
            ("serve", "py-supervisor"),
            ("worker", "py-worker"),
            ("admin", "py-admin"),
            ("check", "py-check"),
        ):
            if f"pyworker {word}" in cmd:
                return role
        return "python"
    if pid == master:
        return "nginx-master"
    if "nginx: worker" in cmd:
        return "nginx-worker"
    if "nginx: cache" in cmd:
        return "nginx-cache"
    return "nginx-other"


def gateway_processes(master, shm=None):
    """pid -> role of a running gateway's processes: the process group of
    its nginx master and everything below it, and any process naming its
    region (`--shm /NAME`)."""
    stats = all_stats()
    pids = set(descendants({master}, stats))
    if shm:
        needle = f"--shm /{shm}"
        pids |= {pid for pid in stats if needle in cmdline(pid)}
    return {
        pid: role_of(pid, master, cmdline(pid))
        for pid in pids
        if stats[pid][0] != "Z"
    }


def descendants(pgids, stats=None):
    """pid -> start time of every process in the groups or below them."""
    stats = stats if stats is not None else all_stats()
    chosen = {pid for pid, f in stats.items() if int(f[2]) in pgids}
    grew = True
    while grew:
        more = {
            pid for pid, f in stats.items() if int(f[1]) in chosen
        } - chosen
        chosen |= more
        grew = bool(more)
    return {pid: stats[pid][19] for pid in chosen}


def cpu_ticks(pids, stats=None):
    """utime + stime of the live processes among pids, in clock ticks."""
    stats = stats if stats is not None else all_stats()
    return sum(
        int(stats[pid][11]) + int(stats[pid][12])
        for pid in pids
        if pid in stats
    )


def process_cpu(pids):
    """User + system CPU seconds used so far by the live processes among
    pids (not their children)."""
    stats = {pid: f for pid in pids if (f := stat_fields(pid))}
    return cpu_ticks(pids, stats) / CLOCK_TICKS


def cpu_seconds(pgids):
    """User + system CPU seconds used so far by the groups and their
    children."""
    stats = all_stats()
    return cpu_ticks(descendants(pgids, stats), stats) / CLOCK_TICKS


def gateway_cpu(pgids, stats=None):
    """CPU seconds used so far by a gateway's process groups and their
    children: {"nginx": ..., "python": ...}, its Python pool (supervisor,
    workers, admin) told from nginx by the command line."""
    stats = stats if stats is not None else all_stats()
    used = {"nginx": 0.0, "python": 0.0}
    for pid in descendants(pgids, stats):
        kind = "python" if "pyworker" in cmdline(pid) else "nginx"
        used[kind] += cpu_ticks([pid], stats) / CLOCK_TICKS
    return used


def proc_sample(pid):
    """CPU ticks, scheduler ns, context switches and start time of a
    process (all its threads), or None if it is gone."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    ns = vol = invol = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        sched = read(f"/proc/{pid}/task/{tid}/schedstat")
        if sched:
            ns += int(sched.split()[0])
        status_text = read(f"/proc/{pid}/task/{tid}/status") or ""
        for line in status_text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol += int(line.split()[1])
    return {
        "ticks": int(fields[11]) + int(fields[12]),
        "ns": ns,
        "vcsw": vol,
        "ivcsw": invol,
        "start": fields[19],
        "threads": len(tasks),
    }


def memory(pid):
    """RSS and Pss in KB (status and smaps_rollup), or None if gone."""
    fields = status(pid)
    if fields is None:
        return None
    out = {
        "rss_kb": int(fields.get("VmRSS", "0 kB").split()[0]),
        "pss_kb": None,
    }
    for line in (read(f"/proc/{pid}/smaps_rollup") or "").splitlines():
        if line.startswith("Pss:"):
            out["pss_kb"] = int(line.split()[1])
    return out


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def loadavg():
    """The 1, 5 and 15 minute load averages."""
    return [float(x) for x in (read("/proc/loadavg") or "0 0 0").split()[:3]]


# --- ports -------------------------------------------------------------------

# Servers' ports come from below the kernel's ephemeral range, so no
# outgoing connection's source port takes one between the check and the
# bind, and each is handed out once per process: two servers on one port
# would proxy a request to itself forever. The worked example's fixed
# ports are never handed out.
_PORTS_GIVEN = set()
PORT_RANGE = (10000, 32000)
EXAMPLE_PORTS = (2990, 3450, 3451, 3452, 3453, 34901, 34903)


def _bindable(port, host):
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host="127.0.0.1"):
    low, high = PORT_RANGE
    span = high - low
    start = random.randrange(span)
    for i in range(span):
        port = low + (start + i) % span
        if port in _PORTS_GIVEN or port in EXAMPLE_PORTS:
            continue
        if _bindable(port, host):
            _PORTS_GIVEN.add(port)
            return port
    raise RuntimeError("no free port in %d-%d" % PORT_RANGE)


def free_ports(count, avoid=()):
    """count distinct free_port()s, none of them in avoid."""
    ports = []
    while len(ports) < count:
        port = free_port()
        if port not in avoid:
            ports.append(port)
    return ports


def accepts(address, timeout=0.5):
    """Whether something accepts connections on address: (host, port),
    a port of 127.0.0.1, or a unix socket's path."""
    if isinstance(address, int):
        address = ("127.0.0.1", address)
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(address)
            return True
        except OSError:
            return False


def taken_ports(ports=EXAMPLE_PORTS, host="0.0.0.0"):
    """port -> why it cannot be bound, for those of ports that something
    listens on or holds (TIME_WAIT does not count)."""
    taken = {}
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                taken[port] = e.strerror
    return taken


# --- waits -------------------------------------------------------------------


def wait_for(cond, timeout=5, step=0.02):
    """cond()'s first true value within timeout seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    return None
