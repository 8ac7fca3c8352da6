"""What the gateway costs when nothing happens: CPU and wake-ups at idle.

    python -m bench.idle_bench [--seconds 10] [--runs 3] [--out DIR]

Starts, side by side on loopback, the demo sites, plain nginx `map` (the
baseline of bench/peers_bench.py) and this project's gateway ("mosn": the
config of bench/gateways.py, the module from output/, Python workers from
the venv), checks that both route the worked example (a few routed requests
each), lets them settle, then measures over windows of --seconds with no
traffic:

- CPU (utime + stime from /proc/PID/stat, and the scheduler's ns from
  /proc/PID/task/*/schedstat) of nginx master + workers and of the Python
  supervisor, workers and admin process (found as nginx's descendants and by
  the region name on their command line);
- wake-ups: context switches of every process (/proc/PID/task/*/status), and
  the region's own counters (producers' futex_wakes and doorbells, consumers'
  sleeps) from `Region.attach("/NAME").stats()`.

Target: the whole gateway below 1% of one core. Writes DIR/idle.md and
DIR/idle.json; see bench/README.md. bench/scale_bench.py reuses the helpers
here.
"""

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import gateways, procs, report

# probe, wait_routing, machine, wrk helpers
from bench import peers_bench as peers

BENCH = gateways.BENCH
REPO = gateways.REPO
VENV_PYTHON = "/opt/mosn-gateway/bin/python"
TARGET_PCT = 1.0  # the whole gateway, in % of one core
SETTLE = 3.0  # seconds after the probe before measuring


# --- ports, names, configs (shared with bench/scale_bench.py) ----------------


def settings_for(args, workdir, sites):
    """What the configs share: args' nginx and workers, no dynamic module
    (map and mosn need none), the sites' ports."""
    return gateways.Settings(
        workdir=workdir,
        nginx=args.nginx,
        modules="",
        workers=args.workers,
        site_ports=sites,
    )


def site_ports(first):
    """peers_bench's --site-port mechanism: four ports from first; 0 = any
    free."""
    ports = list(range(first, first + 4)) if first else procs.free_ports(4)
    return dict(zip(("s1a", "s1b", "s2", "s3"), ports))


def python_for_workers():
    """The Python the module starts (mosn_python): the one running this
    script when it is a virtualenv's (it has the package of this tree),
    else the default venv's, as in conf/."""
    if sys.prefix != sys.base_prefix or not os.access(VENV_PYTHON, os.X_OK):
        return sys.executable
    return VENV_PYTHON


def _replace_once(text, old, new, what):
    if text.count(old) != 1:
        raise gateways.GatewayError(
            f"{what}: expected one {old!r} in the template"
        )
    return text.replace(old, new)


def tune(text, edits, what):
    for old, new in edits:
        text = _replace_once(text, old, new, what)
    return text


def mosn_json_copy(workdir, name):
    """conf/mosn.json with the admin and metrics ports moved to free ones (the
    shipped ones are fixed and may be taken by a running example gateway)."""
    config = json.loads((REPO / "conf" / "mosn.json").read_text())
    admin, metrics = procs.free_ports(2)
    with contextlib.suppress(KeyError, TypeError):
        config["admin"]["address"]["socket_address"]["port_value"] = admin
    for sink in config.get("metrics", {}).get("sinks", []):
        if isinstance(sink.get("config"), dict) and "port" in sink["config"]:
            sink["config"]["port"] = metrics
    path = Path(workdir) / f"{name}.mosn.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def workers_say(code):
    """What code prints in the workers' Python (its installed package, not
    this checkout's sources), stripped; None if it could not run."""
    try:
        done = subprocess.run(
            [python_for_workers(), "-P", "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def abi_mismatch():
    """A text if output/'s module and the workers' shm_ring disagree on the
    ring ABI (the workers would refuse to attach and every request would take
    the fallback), else None."""
    header = REPO / "output" / "shm_ring.h"
    match = re.search(
        r"#define\s+MOSN_RING_ABI_VERSION\s+(\d+)", procs.read(header) or ""
    )
    if not match:
        return None
    try:
        theirs = int(
            workers_say("import shm_ring; print(shm_ring.ABI_VERSION)")
        )
    except (TypeError, ValueError):
        return None
    if theirs != int(match.group(1)):
        return (
            f"output/ngx_http_mosn_module.so speaks ring ABI "
            f"{match.group(1)}, the "
            f"Python workers' shm_ring ({python_for_workers()}) ABI {theirs}: "
            "rebuild the module (make build-l7) or reinstall the package"
        )
    return None


def build_info():
    """Which gateway was measured: commit, local changes to its sources, the
    module file and the ring ABI (the tree may move between runs)."""
    import hashlib

    def git(*argv):
        try:
            return subprocess.run(
                ["git", *argv],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    module = REPO / "output" / "ngx_http_mosn_module.so"
    info = {
        "commit": git("rev-parse", "--short", "HEAD"),
        "changed_sources": git(
            "status",
            "--porcelain",
            "--",
            "nginx_module",
            "shm_ring",
            "pyworker",
        ).splitlines(),
    }
    if module.is_file():
        info["module_sha256"] = hashlib.sha256(
            module.read_bytes()
        ).hexdigest()[:16]
        info["module_mtime"] = datetime.datetime.fromtimestamp(
            module.stat().st_mtime, datetime.timezone.utc
        ).strftime("%Y-%m-%d %H:%M:%S UTC")
    match = re.search(
        r"#define\s+MOSN_RING_ABI_VERSION\s+(\d+)",
        procs.read(REPO / "output" / "shm_ring.h") or "",
    )
    info["ring_abi"] = int(match.group(1)) if match else None
    return info


def build_line(b):
    changed = (
        f", {len(b['changed_sources'])} uncommitted change(s) under "
        "nginx_module/, shm_ring/, pyworker/"
        if b["changed_sources"]
        else ""
    )
    return (
        f"Build: commit {b['commit']}{changed}; module sha256 "
        f"{b.get('module_sha256', '-')} ({b.get('module_mtime', '-')}), ring "
        f"ABI "
        f"{b['ring_abi']}  "
    )


def bench_gateways(workdir, map_port, mosn_port, shm, mosn_workers, edits=()):
    """(map, mosn or None): bench/gateways.py's two configs on our own ports,
    region name and MOSN config copy, with `edits` (old, new) applied to both
    (bench/scale_bench.py raises the connection limits that way)."""
    peer = {g.name: g for g in gateways.peer_gateways(workdir)}["map"]
    plain = dataclasses.replace(
        peer, ports=[map_port], template=tune(peer.template, edits, "map")
    )
    base = gateways.mosn_gateway(workdir)
    if base is None:
        return plain, None
    mismatch = abi_mismatch()
    if mismatch:
        raise gateways.GatewayError(mismatch)
    template = tune(
        base.template,
        [("mosn_workers 1;", f"mosn_workers {mosn_workers};"), *edits],
        "mosn",
    )
    mosn = dataclasses.replace(
        base,
        ports=[mosn_port],
        template=template,
        extra={
            **base.extra,
            "python": python_for_workers(),
            "shm": shm,
            "mosn_config": str(mosn_json_copy(workdir, shm)),
        },
    )
    # relative log paths of the MOSN config are relative to nginx's prefix
    (Path(workdir) / mosn.name / "logs").mkdir(parents=True, exist_ok=True)
    return plain, mosn


def wait_routing(port, site_ports, workers):
    """peers_bench's wait, but for every nginx worker: with reuseport (or just
    luck) six good answers can all come from workers whose Python side is
    up while another still takes the fallback, so ask for more in a row."""
    deadline = time.monotonic() + 2 * gateways.START_TIMEOUT
    streak, wanted = 0, max(6, 4 * workers)
    while time.monotonic() < deadline and streak < wanted:
        try:
            streak = (
                streak + 1
                if peers.fetch(port, "150") == ("s2", site_ports["s2"])
                else 0
            )
        except peers.RoutingError:
            streak = 0
            time.sleep(0.1)
    # not routing yet: the probe that follows says how it is wrong


# --- processes --------------------------------------------------------------


def cleanup_region(shm, timeout=5.0):
    """After a gateway stopped: its Python processes gone (SIGKILL what is
    left, by pid: they were ours), and no /dev/shm/NAME or NAME.stats left.
    bench/gateways.py kills nginx's stragglers at once, before the supervisor
    has removed its stats directory."""
    import shutil

    needle = f"--shm /{shm}"
    deadline = time.monotonic() + timeout
    while True:
        left = [
            int(e)
            for e in os.listdir("/proc")
            if e.isdigit() and needle in procs.cmdline(int(e))
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"/dev/shm/{shm}")
    shutil.rmtree(f"/dev/shm/{shm}.stats", ignore_errors=True)
    shutil.rmtree(f"/dev/shm/{shm}.wake", ignore_errors=True)
    return left


def region_stats(shm):
    """The region's counters, or None (no shm_ring here, or not attachable)."""
    try:
        from shm_ring import Region
    except ImportError:
        return None
    try:
        region = Region.attach("/" + shm)
    except Exception:  # noqa: BLE001  (RingError and friends: report, go on)
        return None
    try:
        return region.stats()
    finally:
        region.close()


PRODUCER_COUNTERS = (
    "submitted",
    "completed",
    "futex_wakes",
    "doorbells",
    "fallbacks",
    "timeouts",
    "stale",
)
CONSUMER_COUNTERS = (
    "taken",
    "completed",
    "batches",
    "sleeps",
    "doorbells",
    "errors",
)


def counter_totals(stats):
    if stats is None:
        return None
    totals = {
        f"producers.{k}": sum(p[k] for p in stats["producers"])
        for k in PRODUCER_COUNTERS
    }
    totals.update(
        {
            f"consumers.{k}": sum(c[k] for c in stats["consumers"])
            for k in CONSUMER_COUNTERS
        }
    )
    return totals


# --- one idle window ---------------------------------------------------------


def measure_window(groups, seconds):
    """groups: name -> (pid -> role, shm or None). Samples every process and
    region counter, sleeps, samples again. Returns name -> result."""
    before = {
        name: {pid: procs.proc_sample(pid) for pid in found}
        for name, (found, _) in groups.items()
    }
    counters_before = {
        name: counter_totals(region_stats(shm))
        for name, (_, shm) in groups.items()
        if shm
    }
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    after = {
        name: {pid: procs.proc_sample(pid) for pid in found}
        for name, (found, _) in groups.items()
    }
    counters_after = {
        name: counter_totals(region_stats(shm))
        for name, (_, shm) in groups.items()
        if shm
    }
    results = {}
    for name, (found, shm) in groups.items():
        rows, changed = [], []
        for pid, role in sorted(found.items(), key=lambda kv: (kv[1], kv[0])):
            a, b = before[name][pid], after[name][pid]
            if a is None or b is None or a["start"] != b["start"]:
                changed.append(pid)
                continue
            rows.append(
                {
                    "pid": pid,
                    "role": role,
                    "cpu_pct": 100
                    * (b["ticks"] - a["ticks"])
                    / procs.CLOCK_TICKS
                    / elapsed,
                    "sched_pct": 100 * (b["ns"] - a["ns"]) / 1e9 / elapsed,
                    "wakeups_per_s": (
                        (b["vcsw"] + b["ivcsw"]) - (a["vcsw"] + a["ivcsw"])
                    )
                    / elapsed,
                    "threads": b["threads"],
                }
            )
        counters = None
        if shm and counters_before.get(name) and counters_after.get(name):
            counters = {
                k: counters_after[name][k] - counters_before[name][k]
                for k in counters_before[name]
            }
        results[name] = {
            "elapsed_s": elapsed,
            "processes": rows,
            "gone_or_restarted": changed,
            "ring": counters,
        }
    return results


def by_role(rows):
    roles = {}
    for row in rows:
        r = roles.setdefault(
            row["role"],
            {
                "count": 0,
                "cpu_pct": 0.0,
                "sched_pct": 0.0,
                "wakeups_per_s": 0.0,
            },
        )
        r["count"] += 1
        for k in ("cpu_pct", "sched_pct", "wakeups_per_s"):
            r[k] += row[k]
    return roles


def summarise(windows, name):
    """Medians over the windows of one gateway, per role and in total."""
    per_window = []
    for w in windows:
        res = w[name]
        roles = by_role(res["processes"])
        nginx = [r for r in res["processes"] if r["role"].startswith("nginx")]
        python = [
            r for r in res["processes"] if not r["role"].startswith("nginx")
        ]
        per_window.append(
            {
                "roles": roles,
                "nginx_pct": sum(r["cpu_pct"] for r in nginx),
                "python_pct": sum(r["cpu_pct"] for r in python),
                "total_pct": sum(r["cpu_pct"] for r in res["processes"]),
                "total_sched_pct": sum(
                    r["sched_pct"] for r in res["processes"]
                ),
                "nginx_wakeups_per_s": sum(r["wakeups_per_s"] for r in nginx),
                "python_wakeups_per_s": sum(
                    r["wakeups_per_s"] for r in python
                ),
                "ring": res["ring"],
                "elapsed_s": res["elapsed_s"],
                "gone_or_restarted": res["gone_or_restarted"],
            }
        )
    med = report.medians(
        per_window,
        (
            "nginx_pct",
            "python_pct",
            "total_pct",
            "total_sched_pct",
            "nginx_wakeups_per_s",
            "python_wakeups_per_s",
        ),
    )
    role_names = sorted({r for p in per_window for r in p["roles"]})
    med["roles"] = {}
    for role in role_names:
        present = [p["roles"][role] for p in per_window if role in p["roles"]]
        med["roles"][role] = {
            "count": max(r["count"] for r in present),
            **report.medians(
                present, ("cpu_pct", "sched_pct", "wakeups_per_s")
            ),
        }
    rings = [p["ring"] for p in per_window if p["ring"]]
    if rings:
        med["ring_per_s"] = {
            k: statistics.median(
                r[k] / p["elapsed_s"]
                for r, p in zip(rings, per_window)
                if p["ring"]
            )
            for k in rings[0]
        }
        med["ring_totals"] = {k: sum(r[k] for r in rings) for k in rings[0]}
    med["restarts"] = sorted(
        {pid for p in per_window for pid in p["gone_or_restarted"]}
    )
    med["windows"] = per_window
    return med


# --- report ------------------------------------------------------------------

ROLE_ORDER = (
    "nginx-master",
    "nginx-worker",
    "py-supervisor",
    "py-worker",
    "py-admin",
    "python",
    "nginx-cache",
    "nginx-other",
    "py-check",
)


def _fmt_pct(x):
    return f"{x:.3f}"


def report_md(result):
    s = result["summary"]
    a = result["settings"]
    lines = [
        "# Idle cost: the gateway beside plain nginx, no traffic",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']['nproc']} CPUs "
        f"({result['machine']['cpu']}), "
        f"Linux {result['machine']['kernel']}, {result['machine']['nginx']}, "
        f"Python {result['machine']['python']}; load average before: "
        f"{' '.join(map(str, result['load_before']))}  ",
        build_line(result["build"]),
        f"Setup: nginx worker_processes {a['workers']} for both; mosn_workers "
        f"{a['mosn_workers']}; {a['runs']} window(s) of {a['seconds']} s with "
        f"no "
        f"traffic, {SETTLE:.0f} s after bench/peers_bench.py's routing probe "
        f"of each gateway "
        f"(on mosn {result['probe_requests']} requests went over the ring, "
        f"per its "
        "submitted counter); medians over the windows.",
        "",
    ]
    verdict = result.get("target")
    if verdict:
        lines += [
            f"**Target: the whole gateway (nginx + Python) below "
            f"{TARGET_PCT:g}% "
            f"of one core: {verdict['status']}** (median "
            f"{verdict['total_pct']:.3f}%, "
            f"worst window {verdict['worst_pct']:.3f}%; the larger of the "
            "utime+stime and schedstat figures).",
            "",
        ]
    head = [
        "gateway",
        "nginx CPU %",
        "Python CPU %",
        "total CPU %",
        "total (schedstat) %",
        "nginx wake-ups/s",
        "Python wake-ups/s",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, m in s.items():
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    _fmt_pct(m["nginx_pct"]),
                    _fmt_pct(m["python_pct"]),
                    _fmt_pct(m["total_pct"]),
                    _fmt_pct(m["total_sched_pct"]),
                    f"{m['nginx_wakeups_per_s']:.1f}",
                    f"{m['python_wakeups_per_s']:.1f}",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "CPU in % of one core over the window: utime + stime from "
        "/proc/PID/stat "
        f"(resolution 1/{procs.CLOCK_TICKS} s, so one tick in a "
        f"{a['seconds']} s "
        f"window is {100 / procs.CLOCK_TICKS / a['seconds']:.2f}%) and, "
        f"finer, "
        "the scheduler's run time from /proc/PID/task/*/schedstat. Wake-ups "
        "are "
        "context switches (voluntary + involuntary) of all threads.",
        "",
        "## Per process kind (medians)",
        "",
        "| gateway | process | count | CPU % | schedstat % | wake-ups/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in s.items():
        for role in sorted(
            m["roles"],
            key=lambda r: ROLE_ORDER.index(r) if r in ROLE_ORDER else 99,
        ):
            r = m["roles"][role]
            lines.append(
                f"| {name} | {role} | {r['count']} | {_fmt_pct(r['cpu_pct'])} "
                f"| "
                f"{_fmt_pct(r['sched_pct'])} | {r['wakeups_per_s']:.1f} |"
            )
    mosn = s.get("mosn")
    if mosn and mosn.get("ring_per_s"):
        rp, rt = mosn["ring_per_s"], mosn["ring_totals"]
        lines += [
            "",
            "## The ring at idle (region counters, "
            '`Region.attach("/NAME").stats()`)',
            "",
            f"Over all {a['runs']} window(s) ({a['runs'] * a['seconds']} s):",
            "",
            "| counter | total | per s (median) | meaning |",
            "| --- | --- | --- | --- |",
        ]
        meaning = {
            "producers.submitted": "requests put on the ring by nginx",
            "producers.completed": "verdicts nginx took back",
            "producers.futex_wakes": "nginx woke a sleeping Python worker",
            "producers.doorbells": "nginx was woken by a Python worker",
            "producers.fallbacks": "requests that took the fallback",
            "producers.timeouts": "requests past mosn_timeout",
            "producers.stale": "late verdicts dropped",
            "consumers.taken": "requests Python took",
            "consumers.completed": "verdicts Python wrote",
            "consumers.batches": "batches Python served",
            "consumers.sleeps": "times a Python worker went to sleep (futex "
            "wait)",
            "consumers.doorbells": "doorbells Python rang",
            "consumers.errors": "filter errors",
        }
        for k in meaning:
            if k in rt:
                lines.append(f"| {k} | {rt[k]} | {rp[k]:.2f} | {meaning[k]} |")
    lines += ["", "## Reading it", ""] + result["notes"] + [""]
    return "\n".join(lines)


def pool_constants():
    """The timers of the installed Python side, read from its source (the
    package may change between runs; the notes must say what ran)."""
    found = {"tick_s": None, "worker_wait_ms": None, "package": None}
    where = workers_say(
        "import os, pyworker; print(os.path.dirname(pyworker.__file__))"
    )
    if where is None:
        return found
    package = Path(where)
    found["package"] = str(package)
    tick = re.search(
        r"^TICK\s*=\s*([\d.]+)",
        procs.read(package / "supervisor.py") or "",
        re.M,
    )
    worker = procs.read(package / "worker.py") or ""
    wait = re.search(r"^IDLE_WAIT_MS\s*=\s*(\d+)", worker, re.M) or re.search(
        r"^\s+timeout\s*=\s*(\d+)\s*$", worker, re.M
    )
    admin = procs.read(package / "admin.py") or ""
    poll = re.search(r"serve_forever,\s*args=\(([\d.]+),?\)", admin)
    found["tick_s"] = float(tick.group(1)) if tick else None
    found["worker_wait_ms"] = int(wait.group(1)) if wait else None
    # socketserver's default poll interval is 0.5 s
    found["admin_poll_s"] = (
        float(poll.group(1))
        if poll
        else (0.5 if "serve_forever" in admin else None)
    )
    return found


def notes_for(summary, settings, constants):
    """Plain-language reading of the figures (computed, not typed)."""
    notes = []
    wait_ms = constants.get("worker_wait_ms")
    tick = constants.get("tick_s")
    mosn = summary.get("mosn")
    plain = summary.get("map")
    if mosn:
        r = mosn["roles"]
        ng = sum(
            v["wakeups_per_s"] for k, v in r.items() if k.startswith("nginx")
        )
        notes.append(
            f"- nginx side of the gateway: {ng:.1f} wake-ups/s and "
            f"{mosn['nginx_pct']:.3f}% CPU"
            + (
                f" (plain nginx map: {plain['nginx_wakeups_per_s']:.1f} "
                f"wake-ups/s, "
                f"{plain['nginx_pct']:.3f}%)"
                if plain
                else ""
            )
            + (
                ": the module adds no timer and no polling to nginx's event "
                "loop."
                if ng == 0
                else ": nginx wakes at idle, look at the per-process table."
            )
        )
        ring = mosn.get("ring_totals")
        if ring:
            traffic = ring["producers.submitted"] + ring["consumers.taken"]
            wakes = (
                ring["producers.futex_wakes"]
                + ring["producers.doorbells"]
                + ring["consumers.doorbells"]
            )
            notes.append(
                f"- The ring carried {traffic} requests and {wakes} "
                f"cross-process "
                "wake-ups (futex wakes + doorbells) over the idle windows"
                + (
                    ": nobody rings anybody at idle."
                    if traffic + wakes == 0
                    else ": something talks at idle, see the counters."
                )
            )
            per_worker = mosn["ring_per_s"]["consumers.sleeps"] / max(
                1, r.get("py-worker", {}).get("count", 1)
            )
            notes.append(
                f"- consumers.sleeps = "
                f"{mosn['ring_per_s']['consumers.sleeps']:.2f}/s "
                f"({per_worker:.2f}/s per Python worker): each worker sleeps "
                f"in a "
                f"futex wait with a {wait_ms if wait_ms else '?'} ms timeout "
                "(pyworker/worker.py), wakes when it expires, finds nothing, "
                "sleeps "
                "again: a timed sleep, not a poll loop, and the ring's "
                "producers "
                f"rang it {ring['producers.futex_wakes']} times (futex_wakes)."
            )
        for role, why in (
            (
                "py-supervisor",
                f"the supervisor's housekeeping tick (TICK = "
                f"{tick if tick else '?'} s in pyworker/supervisor.py: reap "
                f"dead "
                "workers and stale slots, check that nginx lives)",
            ),
            (
                "py-admin",
                "the admin/metrics HTTP servers (socketserver's "
                "serve_forever looks at its shutdown flag every "
                f"{constants.get('admin_poll_s') or '?'} s, per server "
                f"thread)",
            ),
        ):
            if role in r:
                notes.append(
                    f"- {role}: {r[role]['wakeups_per_s']:.1f} wake-ups/s, "
                    f"{r[role]['sched_pct']:.3f}% CPU (schedstat): {why}."
                )
    if mosn and mosn["restarts"]:
        notes.append(
            f"- Processes that left or restarted during a window: "
            f"{mosn['restarts']} (a crash loop would show here)."
        )
    return notes


# --- main --------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="CPU and wake-ups of the gateway at idle."
    )
    p.add_argument(
        "--seconds", type=float, default=10, help="length of one idle window"
    )
    p.add_argument(
        "--runs",
        type=int,
        default=3,
        help="idle windows (medians are reported)",
    )
    gateways.add_options(p, workers=2)
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="gateway ports: map on PORT, mosn on PORT+1 (default: free ones)",
    )
    p.add_argument("--only", default="map,mosn", help="map, mosn or both")
    p.add_argument(
        "--out",
        default=str(BENCH / "results"),
        help="directory for the report",
    )
    return p.parse_args(argv)


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    wanted = args.only.split(",")
    started = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    info = peers.machine(argparse.Namespace(nginx=args.nginx, wrk="wrk"))
    command = report.command(__spec__.name)
    load_before = procs.loadavg()
    print(f"load average {load_before}; {os.cpu_count()} CPUs")

    build = build_info()  # before the run: the tree may move meanwhile
    workdir = Path(tempfile.mkdtemp(prefix="gateway-idle-"))
    workdir.chmod(0o755)
    shm = f"mosn_idle_{os.getpid()}"
    sites = site_ports(args.site_port)
    ports = (
        [args.port, args.port + 1]
        if args.port
        else procs.free_ports(2, sites.values())
    )
    settings = settings_for(args, workdir, sites)
    try:
        plain, mosn = bench_gateways(
            workdir, ports[0], ports[1], shm, args.mosn_workers
        )
    except gateways.GatewayError as e:
        sys.exit(f"*** FAIL: {e}")
    chosen = [g for g in (plain, mosn) if g is not None and g.name in wanted]
    if "mosn" in wanted and mosn is None:
        sys.exit("output/ngx_http_mosn_module.so is missing: make build-l7")

    windows, probe_requests = [], 0
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                gateways.running(
                    gateways.sites_gateway(settings), settings, workers=1
                )
            )
            groups = {}
            for gw in chosen:
                live = stack.enter_context(gateways.running(gw, settings))
                wait_routing(gw.port, settings.site_ports, args.workers)
                peers.probe(gw.port, args.workers, settings.site_ports)
                print(
                    f"{gw.name}: routes the worked example on port {gw.port}"
                )
                groups[gw.name] = (
                    None,
                    shm if gw.name == "mosn" else None,
                    live,
                )
            time.sleep(SETTLE)
            if "mosn" in groups:
                # exact: what nginx put on the ring during the probe
                totals = counter_totals(region_stats(shm))
                probe_requests = (
                    totals["producers.submitted"] if totals else None
                )
            for name, (_, region, live) in groups.items():
                groups[name] = (
                    procs.gateway_processes(live.nginx.pgid, region),
                    region,
                )
                kinds = sorted(groups[name][0].values())
                print(f"{name}: {len(kinds)} processes: {', '.join(kinds)}")
            for n in range(1, args.runs + 1):
                w = measure_window(groups, args.seconds)
                windows.append(w)
                print(
                    f"window {n}/{args.runs}: "
                    + "; ".join(
                        f"{name} "
                        f"{sum(r['cpu_pct'] for r in res['processes']):.3f}% "
                        "CPU (schedstat "
                        f"{sum(r['sched_pct'] for r in res['processes']):.3f}"
                        "%)"
                        for name, res in w.items()
                    )
                )
            processes = {
                name: {str(pid): role for pid, role in found.items()}
                for name, (found, _) in groups.items()
            }
    except (gateways.GatewayError, peers.RoutingError) as e:
        sys.exit(f"*** FAIL: {e}")
    finally:
        cleanup_region(shm)
        if not os.environ.get("BENCH_KEEP"):
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)

    summary = {g.name: summarise(windows, g.name) for g in chosen}
    result = {
        "command": command,
        "date": started,
        "machine": info,
        "build": build,
        "load_before": load_before,
        "load_after": procs.loadavg(),
        "settings": {
            "seconds": args.seconds,
            "runs": args.runs,
            "workers": args.workers,
            "mosn_workers": args.mosn_workers,
            "ports": {"map": ports[0], "mosn": ports[1], **sites},
        },
        "probe_requests": probe_requests,
        "processes": processes,
        "summary": summary,
    }
    if "mosn" in summary:
        m = summary["mosn"]
        # the coarser of the two clocks must not hide anything: judge by the
        # larger of ticks and schedstat, in the median and in the worst window
        total = max(m["total_pct"], m["total_sched_pct"])
        worst = max(
            max(w["total_pct"], w["total_sched_pct"]) for w in m["windows"]
        )
        result["target"] = {
            "target_pct": TARGET_PCT,
            "total_pct": total,
            "worst_pct": worst,
            "status": "met" if total < TARGET_PCT else "MISSED",
        }
    result["pool_constants"] = pool_constants()
    result["notes"] = notes_for(
        summary, result["settings"], result["pool_constants"]
    )
    out = Path(args.out)
    report.write(out, "idle", report_md(result), result)
    print()
    for name, m in summary.items():
        print(
            f"{name}: nginx {m['nginx_pct']:.3f}% + Python "
            f"{m['python_pct']:.3f}% = "
            f"{m['total_pct']:.3f}% of one core (schedstat "
            f"{m['total_sched_pct']:.3f}%); "
            "wake-ups/s nginx "
            f"{m['nginx_wakeups_per_s']:.1f}, Python "
            f"{m['python_wakeups_per_s']:.1f}"
        )
    if "target" in result:
        t = result["target"]
        print(f"target < {TARGET_PCT:g}% of one core: {t['status']}")
    print(f"wrote {out / 'idle.md'}, idle.json")


if __name__ == "__main__":
    main()
