"""Soak test: locust against the worked example for a bounded time.

    python -m bench.soak_bench [--time 10m] [--users 20] [--spawn-rate 5]
                         [--pacing 0.05] [--out bench/results]

Uses the example gateway on 127.0.0.1:2990 if one is running; otherwise
starts its own from a temporary copy of conf/ (the repository's module, the
same ports, plus a /slow location proxying to a loopback server in this
process that answers after --slow-ms) and stops it with `nginx -s quit` at
the end. bench/locustfile.py sends uids of every range, no uid, uids that
are not numbers, /echo and /slow, and checks every answer.

Every --interval seconds it records locust's request and failure counts,
the RSS of nginx (master and workers) and of the Python pool (supervisor,
its workers and admin process), the slots in use and the fallback and timeout
counters of the region.

Checks, each printed with its figures; the exit status is 1 if any fails:
  - locust counted no failure and no exception, and made requests; every
    interval after the warm-up had requests answered (no stall);
  - nginx RSS and Python RSS are flat: the last sample under load is within
    --tolerance of the first sample after the warm-up (--warmup of the time);
  - no nginx or Python worker was replaced during the run;
  - no slot is in use once the load stops;
  - a gateway it started logged no alert and no crash before the quit
    (alerts logged on the way out are printed as notes, not judged), and
    left no process behind after `nginx -s quit`.

Writes soak.md (table, command, date), soak.json and soak.png to --out.
"""

import argparse
import csv
import datetime
import http.client
import http.server
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import CHECKOUT, procs, report
from bench.procs import accepts, alive, children

ROOT = Path(CHECKOUT)
BENCH = ROOT / "bench"
LOCUSTFILE = BENCH / "locustfile.py"
HOST = "127.0.0.1"
PORT = 2990
SITE_PORTS = (3450, 3451, 3452, 3453)
REGION = "/mosn_example"  # mosn_shm_name of conf/nginx.conf
START_TIMEOUT = 20
QUIT_TIMEOUT = 15
MIB = 1024 * 1024


class SoakError(RuntimeError):
    """The soak could not run (as opposed to a check that failed)."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT: stop the load and the gateway, then exit."""


def parse_time(text):
    """Locust's time format: 30s, 10m, 1h30m, or plain seconds."""
    if re.fullmatch(r"\d+", text):
        return int(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not parts:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (30s, 10m)")
    h, m, s = (int(p or 0) for p in parts.groups())
    return h * 3600 + m * 60 + s


# --- processes ---------------------------------------------------------------


def rss_bytes(pids):
    """Sum of VmRSS of the live processes among pids."""
    total = 0
    for pid in pids:
        status = procs.status(pid)
        if status and "VmRSS" in status:
            total += int(status["VmRSS"].split()[0]) * 1024
    return total


def get(path, headers=None, port=PORT, timeout=3):
    """(status, body text) of one request on a fresh connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


# --- the slow upstream -------------------------------------------------------


class SlowUpstream:
    """A loopback HTTP server answering after a delay, in a thread.

    It answers `slow unit=<X-Mosn-Unit>`, so the soak also checks that the
    metadata the filters set reaches a proxied request's headers.
    """

    def __init__(self, delay):
        delay_s = delay / 1000.0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                time.sleep(delay_s)
                body = (
                    "slow unit=" + self.headers.get("X-Mosn-Unit", "")
                ).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except ConnectionError:
                    pass  # nginx gave up on it: its own log says why

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="slow-upstream", daemon=True
        )

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# --- the gateway -------------------------------------------------------------

SLOW_LOCATION = """\
        # soak: the filters, then an upstream that answers after a delay
        location /slow {{
            mosn_filter_chain  serverListener;
            mosn_timeout       500ms;
            mosn_fallback      continue;
            proxy_set_header   X-Mosn-Unit $mosn_meta_UNIT;
            proxy_pass         http://{host}:{port};
        }}
"""


def rewrite_conf(text, slow_port):
    """The example's nginx.conf for a temporary prefix: the repository's
    module by absolute path, and the /slow location in the 2990 server."""

    def module(match):
        path = Path(match.group(1))
        return f"load_module {path if path.is_absolute() else ROOT / path};"

    text, n = re.subn(
        r"^load_module\s+(\S*ngx_http_mosn_module\.so);",
        module,
        text,
        flags=re.M,
    )
    if n != 1:
        raise SoakError("conf/nginx.conf: no load_module of the mosn module")
    listen = re.compile(rf"^(\s*listen\s+{re.escape(HOST)}:{PORT};\n)", re.M)
    text, n = listen.subn(
        lambda m: (
            m.group(1) + "\n" + SLOW_LOCATION.format(host=HOST, port=slow_port)
        ),
        text,
    )
    if n != 1:
        raise SoakError(f"conf/nginx.conf: no server on {HOST}:{PORT}")
    return text


class Gateway:
    """The example gateway: attached to a running one, or started here."""

    def __init__(self, nginx, slow_port=None):
        self.nginx = nginx
        self.slow_port = slow_port
        self.prefix = None  # set when this process started it
        self.master = None
        self.seen = set()  # every pid of it seen during the run
        self.quit_offset = None  # error.log's size when quit was sent

    @property
    def started_here(self):
        return self.prefix is not None

    def _nginx(self, *args):
        out = self.prefix / "logs" / "nginx.out"
        with open(out, "a+") as f:  # daemons keep stdout: a file, no pipe
            proc = subprocess.run(
                [
                    self.nginx,
                    "-p",
                    f"{self.prefix}/",
                    "-c",
                    "conf/nginx.conf",
                    *args,
                ],
                cwd=self.prefix,
                stdout=f,
                stderr=f,
                timeout=60,
            )
        if proc.returncode != 0:
            raise SoakError(
                f"nginx {' '.join(args)} failed:\n"
                f"{out.read_text()}{self.log_tail()}"
            )

    def start(self):
        busy = [p for p in SITE_PORTS if accepts(p)]
        if busy:
            raise SoakError(
                f"ports {busy} are in use, but nothing serves "
                f"the example on {PORT}"
            )
        self.prefix = Path(tempfile.mkdtemp(prefix="mosn-soak-"))
        # the Python workers drop to nginx's worker user and read from here
        self.prefix.chmod(0o755)
        shutil.copytree(ROOT / "conf", self.prefix / "conf")
        (self.prefix / "logs").mkdir()
        conf = self.prefix / "conf" / "nginx.conf"
        conf.write_text(rewrite_conf(conf.read_text(), self.slow_port))
        self._nginx("-t", "-q")
        self._nginx()
        self.master = int((self.prefix / "logs" / "nginx.pid").read_text())

    def attach(self):
        from shm_ring import Region

        return Region.attach(REGION)

    def wait_ready(self):
        """Until the filters route (uid 150 -> s2) and /echo answers."""
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            try:
                routed = get("/", {"uid": "150"})
                echo = get("/echo")
                if routed == (200, "site s2 from 3452") and echo[0] == 200:
                    region = self.attach()
                    self.master = self.master or region.master_pid
                    region.close()
                    return
                last = (routed, echo)
            except Exception as e:  # not listening or no region yet
                last = e
            time.sleep(0.2)
        raise SoakError(
            f"gateway not ready in {START_TIMEOUT}s: {last!r}{self.log_tail()}"
        )

    def module_file(self):
        """(inode, mtime) of the mosn module file the master has mapped.

        Rewriting that file in place (cp onto it) crashes every process that
        has it loaded; a rename over it is harmless. Sampled to tell such a
        crash from a bug of the module itself.
        """
        try:
            with open(f"/proc/{self.master}/maps") as f:
                for line in f:
                    path = line.split(None, 5)[-1].strip()
                    if path.endswith("/ngx_http_mosn_module.so"):
                        st = os.stat(path)
                        return st.st_ino, st.st_mtime_ns
        except OSError:
            pass
        return None

    def pids(self, region):
        """{"nginx": [...], "python": [...]} of the live gateway."""
        nginx = [self.master] + children(self.master, "nginx")
        # the supervisor, the workers on the ring and any other process of
        # the pool (the admin/metrics one)
        supervisor = region.supervisor_pid
        python = {supervisor, *children(supervisor)} if supervisor else set()
        python.update(
            c["pid"]
            for c in region.stats()["consumers"]
            if c["state"] == "live"
        )
        python = sorted(python)
        pids = {
            "nginx": [p for p in nginx if p and alive(p)],
            "python": [p for p in python if p and alive(p)],
        }
        self.seen.update(pids["nginx"] + pids["python"])
        return pids

    def stop(self):
        """nginx -s quit; the pids left after QUIT_TIMEOUT (killed then)."""
        if not self.started_here:
            return []
        self.quit_offset = len(self.error_log())
        try:
            self._nginx("-s", "quit")
        except SoakError as e:
            print(e, file=sys.stderr)
        deadline = time.monotonic() + QUIT_TIMEOUT
        while time.monotonic() < deadline:
            left = self.leftovers()
            if not left:
                return []
            time.sleep(0.1)
        left = self.leftovers()
        for pid in left:  # only processes of this gateway, by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    def leftovers(self):
        """Live processes of the gateway this process started."""
        pids = {p for p in self.seen | {self.master} if p and alive(p)}
        pids.update(procs.pids_of(f"{self.prefix}/"))
        pids.update(procs.pids_of(f"--shm {REGION} "))
        return sorted(pids)

    def error_log(self):
        if not self.started_here:
            return ""
        try:
            return (self.prefix / "logs" / "error.log").read_text(
                errors="replace"
            )
        except OSError:
            return ""

    def log_tail(self, lines=20):
        tail = self.error_log().splitlines()[-lines:]
        return ("\n--- error.log ---\n" + "\n".join(tail)) if tail else ""

    def cleanup(self):
        if self.started_here:
            shutil.rmtree(self.prefix, ignore_errors=True)


CRASH = re.compile(r"\[(alert|crit|emerg)\]|exited on signal")


def alerts(log):
    return [line for line in log.splitlines() if CRASH.search(line)][:20]


# --- locust ------------------------------------------------------------------


class Locust:
    """locust headless in a child process; its CSV files are read live."""

    def __init__(self, workdir, args, seconds, slow):
        self.csv = workdir / "locust"
        self.log = workdir / "locust.log"
        self.argv = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            f"http://{HOST}:{PORT}",
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate),
            "-t",
            f"{seconds}s",
            "--stop-timeout",
            "5",
            "--csv",
            str(self.csv),
            "--csv-full-history",
            "--only-summary",
            "--soak-pacing",
            str(args.pacing),
            "--soak-slow-path",
            "/slow" if slow else "",
        ]
        self.proc = None

    def start(self):
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=BENCH,
                start_new_session=True,  # stop() signals its whole group
                env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
            )

    def running(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def _rows(self, suffix):
        try:
            with open(f"{self.csv}_{suffix}.csv", newline="") as f:
                return list(csv.DictReader(f))
        except OSError:
            return []

    def totals(self):
        """(requests, failures) so far, from the stats history."""
        rows = [
            r
            for r in self._rows("stats_history")
            if r.get("Name") == "Aggregated"
        ]
        if not rows:
            return 0, 0
        return (
            int(rows[-1]["Total Request Count"]),
            int(rows[-1]["Total Failure Count"]),
        )

    def final(self):
        """Final figures: totals, failures by kind, exceptions."""
        aggregated = [
            r for r in self._rows("stats") if r.get("Name") == "Aggregated"
        ]
        row = aggregated[0] if aggregated else {}
        return {
            "requests": int(row.get("Request Count", 0)),
            "failures": int(row.get("Failure Count", 0)),
            "median_ms": float(row.get("50%", 0) or 0),
            "p99_ms": float(row.get("99%", 0) or 0),
            "rps": float(row.get("Requests/s", 0) or 0),
            "failure_kinds": [
                {
                    "name": r["Name"],
                    "error": r["Error"],
                    "count": int(r["Occurrences"]),
                }
                for r in self._rows("failures")
            ],
            "exceptions": [
                {"error": r.get("Message", ""), "count": int(r["Count"])}
                for r in self._rows("exceptions")
            ],
            "by_name": [
                {
                    "name": r["Name"],
                    "requests": int(r["Request Count"]),
                    "failures": int(r["Failure Count"]),
                    "median_ms": float(r["50%"] or 0),
                    "p99_ms": float(r["99%"] or 0),
                }
                for r in self._rows("stats")
                if r["Name"] != "Aggregated"
            ],
        }

    def tail(self, lines=15):
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return ""


# --- sampling ----------------------------------------------------------------

COUNTERS = (
    "submitted",
    "completed",
    "fallbacks",
    "timeouts",
    "stale",
    "requeued",
)


def region_counters(region):
    stats = region.stats()
    out = {k: sum(p[k] for p in stats["producers"]) for k in COUNTERS}
    out["filter_errors"] = sum(c["errors"] for c in stats["consumers"])
    out["slots_in_use"] = region.slots_in_use()
    return out


def sample(t, gateway, locust, base):
    region = gateway.attach()
    try:
        pids = gateway.pids(region)
        counters = region_counters(region)
    finally:
        region.close()
    requests, errors = locust.totals()
    row = {
        "t": round(t, 1),
        "requests": requests,
        "errors": errors,
        "module_file": gateway.module_file(),
        "nginx_rss": rss_bytes(pids["nginx"]),
        "python_rss": rss_bytes(pids["python"]),
        "nginx_pids": pids["nginx"],
        "python_pids": pids["python"],
        "slots_in_use": counters["slots_in_use"],
    }
    for k in COUNTERS + ("filter_errors",):
        row[k] = counters[k] - base[k]
    return row


def wait_idle(gateway, timeout=5):
    """Slots in use once the load has stopped (0 unless one leaked)."""
    deadline = time.monotonic() + timeout
    while True:
        region = gateway.attach()
        try:
            n = region.slots_in_use()
        finally:
            region.close()
        if n == 0 or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


# --- checks and report -------------------------------------------------------


def flat(name, samples, key, warmup_t, tolerance):
    under_load = [s for s in samples if s["t"] >= warmup_t]
    if len(under_load) < 2:
        return {
            "name": name,
            "ok": False,
            "detail": f"fewer than 2 samples after the {warmup_t:.0f}s "
            f"warm-up: run longer or sample more often",
        }
    first, last = under_load[0], under_load[-1]
    change = (last[key] - first[key]) / first[key] if first[key] else 1.0
    return {
        "name": name,
        "ok": abs(change) <= tolerance,
        "first": first[key],
        "last": last[key],
        "change": change,
        "detail": f"{first[key] / MIB:.1f} MiB at {first['t']:.0f}s -> "
        f"{last[key] / MIB:.1f} MiB at {last['t']:.0f}s "
        f"({change:+.1%}, limit ±{tolerance:.0%})",
    }


def steady(samples, warmup_t):
    """Requests were answered in every interval after the warm-up: a
    gateway that stalls shows here even if no request failed."""
    rates, previous = [], None
    for s in samples:
        if previous is not None and s["t"] >= warmup_t:
            rates.append(
                (s["requests"] - previous["requests"])
                / (s["t"] - previous["t"])
            )
        previous = s
    if not rates:
        return {
            "name": "throughput",
            "ok": False,
            "detail": "no interval after the warm-up to judge",
        }
    return {
        "name": "throughput",
        "ok": min(rates) > 0,
        "detail": f"{min(rates):.0f} to {max(rates):.0f} requests/s in "
        f"the {len(rates)} intervals after the warm-up "
        f"(want > 0)",
    }


def replaced(samples, key):
    """Pids that appeared after the first sample (a worker was replaced)."""
    first = set(samples[0][key]) if samples else set()
    later = set().union(*(set(s[key]) for s in samples)) if samples else set()
    return sorted(later - first)


def run_checks(result, args):
    samples = result["samples"]
    final = result["locust"]
    warmup_t = args.warmup * result["seconds"]
    errors = final["failures"] + sum(e["count"] for e in final["exceptions"])
    checks = [
        {
            "name": "errors",
            "ok": errors == 0 and result["locust_exit"] == 0,
            "detail": f"{final['failures']} failures, "
            f"{len(final['exceptions'])} exception kinds, "
            f"locust exit {result['locust_exit']} (want 0)",
        },
        {
            "name": "requests",
            "ok": final["requests"] > 0,
            "detail": f"{final['requests']} requests, {final['rps']:.0f}/s",
        },
        steady(samples, warmup_t),
        flat("nginx RSS", samples, "nginx_rss", warmup_t, args.tolerance),
        flat("Python RSS", samples, "python_rss", warmup_t, args.tolerance),
    ]
    for key, what in (("nginx_pids", "nginx"), ("python_pids", "Python")):
        new = replaced(samples, key)
        checks.append(
            {
                "name": f"{what} processes stable",
                "ok": not new,
                "detail": f"new pids during the run: {new or 'none'}",
            }
        )
    module = [s["module_file"] for s in samples if s["module_file"]]
    rewritten = [
        s["t"]
        for s in samples[1:]
        if s["module_file"] and s["module_file"] != module[0]
    ]
    checks.append(
        {
            "name": "module file",
            "ok": bool(module) and not rewritten,
            "detail": "unchanged"
            if module and not rewritten
            else "not found in the master's maps"
            if not module
            else f"rewritten in place during the run (seen at "
            f"{rewritten[0]:.0f}s): nginx processes that loaded it "
            f"crash, the figures are void",
        }
    )
    checks.append(
        {
            "name": "slots at idle",
            "ok": result["idle_slots_in_use"] == 0,
            "detail": f"{result['idle_slots_in_use']} in use after "
            f"the load stopped",
        }
    )
    if result["started_here"]:
        checks.append(
            {
                "name": "error.log",
                "ok": not result["crash_lines"],
                "detail": f"{len(result['crash_lines'])} alert/crit/"
                f"emerg or signal lines before the quit",
            }
        )
        checks.append(
            {
                "name": "quit",
                "ok": not result["leftovers"],
                "detail": f"processes left after nginx -s quit: "
                f"{result['leftovers'] or 'none'}",
            }
        )
    return checks


def display_command(argv):
    """The command line as run, less --out: the report sits in that dir."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            out.append(arg)
    return report.command(__spec__.name, out)


def version(argv, pattern):
    """The version a command prints, as pattern finds it."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        match = re.search(pattern, proc.stdout + proc.stderr)
        return match.group(0) if match else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def write_markdown(path, result):
    s = result["settings"]
    where = (
        "started by the soak in a temporary prefix"
        if result["started_here"]
        else f"the one already on {PORT}"
    )
    lines = [
        "# Soak: locust against the worked example",
        "",
        f"- date: {result['date']}",
        f"- command: `{result['command']}`",
        f"- load: {s['users']} users (spawn rate {s['spawn_rate']}/s), one "
        f"request per user every {s['pacing'] * 1000:.0f} ms at most, for "
        f"{result['seconds']} s; /slow answers after {s['slow_ms']} ms"
        + (
            ""
            if result["slow"]
            else " (not sent: the running gateway has no /slow location)"
        ),
        f"- gateway: {where}; {result['nginx']}, Python "
        f"{result['python']}, {result['locust_version']}, "
        f"{os.cpu_count()} CPUs",
        f"- locust: {result['locust']['requests']} requests, "
        f"{result['locust']['failures']} failures, "
        f"{result['locust']['rps']:.0f} req/s, median "
        f"{result['locust']['median_ms']:.0f} ms, p99 "
        f"{result['locust']['p99_ms']:.0f} ms",
        "",
        "Counters are since the start of the soak. RSS (VmRSS): nginx is the "
        "master and its workers, Python the supervisor and every process it "
        "runs (the workers and the admin process).",
        "",
        "| t (s) | requests | errors | nginx RSS (MiB) | Python RSS (MiB) "
        "| slots in use | fallbacks | timeouts |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["samples"]:
        lines.append(
            f"| {r['t']:.0f} | {r['requests']} | {r['errors']} "
            f"| {r['nginx_rss'] / MIB:.1f} | {r['python_rss'] / MIB:.1f} "
            f"| {r['slots_in_use']} | {r['fallbacks']} | {r['timeouts']} |"
        )
    lines += [
        "",
        "| request | count | failures | median (ms) | p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["locust"]["by_name"]:
        lines.append(
            f"| {r['name']} | {r['requests']} | {r['failures']} "
            f"| {r['median_ms']:.0f} | {r['p99_ms']:.0f} |"
        )
    lines += ["", "## Checks", ""]
    for c in result["checks"]:
        lines.append(
            f"- {'ok' if c['ok'] else 'FAILED'}: {c['name']}: {c['detail']}"
        )
    if result["quit_alerts"]:
        lines += [
            "",
            "Noted, not judged: error.log lines after "
            "`nginx -s quit` (timestamps and pids removed):",
            "",
        ]
        # without time and pids, the same line of each worker once
        seen = dict.fromkeys(
            re.sub(r"^\S+ \S+ (\[\w+\]) \d+#\d+: (\*\d+ )?", r"\1 ", line)
            for line in result["quit_alerts"]
        )
        lines += [f"- `{line}`" for line in seen]
    lines += [
        "",
        f"Warm-up: the first {result['settings']['warmup']:.0%} of "
        f"the time. Plot: `soak.png`; raw figures: `soak.json`.",
        "",
    ]
    path.write_text("\n".join(lines))


def write_plot(path, result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    samples = result["samples"]
    t = [s["t"] for s in samples]
    rate, previous = [], (0.0, 0)
    for s in samples:  # requests per second over each interval
        dt = s["t"] - previous[0]
        rate.append((s["requests"] - previous[1]) / dt if dt > 0 else 0)
        previous = (s["t"], s["requests"])
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, sharex=True, figsize=(8, 8))
    warmup = result["settings"]["warmup"] * result["seconds"]
    for ax in (ax1, ax2, ax3):
        ax.axvspan(0, warmup, color="0.92", label="_warm-up")
        ax.grid(alpha=0.3)
    ax1.plot(t, [s["nginx_rss"] / MIB for s in samples], "o-", label="nginx")
    ax1.plot(
        t, [s["python_rss"] / MIB for s in samples], "s-", label="Python pool"
    )
    ax1.set_ylabel("RSS (MiB)")
    ax1.set_ylim(bottom=0)
    ax1.legend(loc="lower right")
    ax2.plot(t, rate, "o-", label="requests/s")
    ax2.plot(
        t,
        [s["errors"] for s in samples],
        "x-",
        color="red",
        label="locust errors (total)",
    )
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="lower right")
    ax3.plot(
        t, [s["slots_in_use"] for s in samples], "o-", label="slots in use"
    )
    ax3.plot(t, [s["fallbacks"] for s in samples], "^-", label="fallbacks")
    ax3.plot(t, [s["timeouts"] for s in samples], "v-", label="timeouts")
    ax3.set_ylim(bottom=0)
    ax3.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax3.set_xlabel("seconds (grey: warm-up)")
    ax3.legend(loc="upper right")
    fig.suptitle(
        f"soak: {result['settings']['users']} users, "
        f"{result['seconds']} s, {result['date'][:10]}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- main --------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--time",
        type=parse_time,
        default="10m",
        help="how long the load runs: 30s, 10m, 1h (10m)",
    )
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--spawn-rate", type=float, default=5)
    p.add_argument(
        "--pacing",
        type=float,
        default=0.05,
        help="seconds between one user's requests, at most (0.05)",
    )
    p.add_argument(
        "--slow-ms",
        type=int,
        default=100,
        help="delay of the /slow upstream (100)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=10,
        help="seconds between samples (10)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.2,
        help="fraction of the time not judged for RSS (0.2)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="largest RSS change after the warm-up (0.05)",
    )
    p.add_argument("--out", type=Path, default=BENCH / "results")
    p.add_argument(
        "--nginx", default=os.environ.get("NGINX", "/usr/sbin/nginx")
    )
    args = p.parse_args(argv)
    if args.time <= 0 or args.users <= 0 or args.interval <= 0:
        p.error("--time, --users and --interval must be positive")
    return args


def on_signal(signum, frame):
    # once: a second Ctrl-C must not cut the clean-up short
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


def soak(args, workdir):
    seconds = args.time
    slow = gateway = locust = None
    result = {
        "seconds": seconds,
        "samples": [],
        "leftovers": [],
        "crash_lines": [],
        "quit_alerts": [],
        "started_here": False,
    }
    try:
        if accepts(PORT):
            print(
                f"using the gateway already on {HOST}:{PORT} "
                f"(no /slow requests)"
            )
            gateway = Gateway(args.nginx)
        else:
            slow = SlowUpstream(args.slow_ms).start()
            gateway = Gateway(args.nginx, slow.port)
            gateway.start()
            print(
                f"started the example gateway (nginx master "
                f"{gateway.master}) in a temporary prefix"
            )
        gateway.wait_ready()
        region = gateway.attach()
        base = region_counters(region)
        region.close()

        locust = Locust(workdir, args, seconds, slow is not None)
        locust.start()
        t0 = time.monotonic()
        print(
            f"locust: {args.users} users for {seconds}s; a sample every "
            f"{args.interval:.0f}s"
        )
        print(
            f"{'t':>5} {'requests':>9} {'errors':>6} {'nginx MiB':>9} "
            f"{'py MiB':>7} {'slots':>5} {'fallbk':>6} {'timeout':>7}"
        )
        next_t = args.interval
        while locust.running():
            now = time.monotonic() - t0
            if now >= next_t:
                try:
                    row = sample(now, gateway, locust, base)
                except Exception as e:  # RingError, OSError: region gone
                    raise SoakError(
                        f"the gateway went away: {e!r}{gateway.log_tail()}"
                    ) from None
                result["samples"].append(row)
                print(
                    f"{row['t']:5.0f} {row['requests']:9d} "
                    f"{row['errors']:6d} {row['nginx_rss'] / MIB:9.1f} "
                    f"{row['python_rss'] / MIB:7.1f} "
                    f"{row['slots_in_use']:5d} {row['fallbacks']:6d} "
                    f"{row['timeouts']:7d}",
                    flush=True,
                )
                next_t += args.interval
            if now > seconds + 60:
                raise SoakError(
                    "locust did not stop on time\n" + locust.tail()
                )
            time.sleep(0.2)
        result["locust_exit"] = locust.proc.returncode
        result["locust"] = locust.final()
        if result["locust"]["requests"] == 0:
            print(locust.tail(), file=sys.stderr)
        result["idle_slots_in_use"] = wait_idle(gateway)
        region = gateway.attach()
        result["region_totals"] = {
            k: v - base[k]
            for k, v in region_counters(region).items()
            if k != "slots_in_use"
        }
        region.close()
    finally:
        if locust:
            locust.stop()
        if gateway:
            result["leftovers"] = gateway.stop()
            log = gateway.error_log()
            cut = gateway.quit_offset or len(log)
            # under load, and on the way out after nginx -s quit
            result["crash_lines"] = alerts(log[:cut])
            result["quit_alerts"] = alerts(log[cut:])
            result["started_here"] = gateway.started_here
            gateway.cleanup()
        if slow:
            slow.stop()
        result["slow"] = slow is not None
    return result


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="mosn-soak-locust-"))
    try:
        result = soak(args, workdir)
    except SoakError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"soak: interrupted ({e})", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    result.update(
        {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "command": display_command(
                argv if argv is not None else sys.argv[1:]
            ),
            "settings": {
                k: getattr(args, k)
                for k in (
                    "users",
                    "spawn_rate",
                    "pacing",
                    "slow_ms",
                    "interval",
                    "warmup",
                    "tolerance",
                )
            },
            "nginx": version([args.nginx, "-v"], r"nginx/\S+"),
            "python": platform.python_version(),
            "locust_version": version(
                [sys.executable, "-m", "locust", "--version"], r"locust \S+"
            ),
        }
    )
    result["checks"] = run_checks(result, args)

    print()
    for c in result["checks"]:
        print(
            f"check {c['name']}: {c['detail']}: "
            f"{'ok' if c['ok'] else 'FAILED'}"
        )
    for kind in result["locust"]["failure_kinds"][:10]:
        print(f"  failure {kind['count']}x {kind['name']}: {kind['error']}")
    for exc in result["locust"]["exceptions"][:5]:
        print(f"  exception {exc['count']}x: {exc['error'][:200]}")
    for line in result["crash_lines"][:5]:
        print(f"  error.log: {line}")
    for line in result["quit_alerts"][:5]:
        print(f"note: error.log after nginx -s quit: {line}")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(args.out / "soak.md", result)
    write_plot(args.out / "soak.png", result)
    ok = all(c["ok"] for c in result["checks"])
    print(
        f"soak {'passed' if ok else 'FAILED'}; report: {args.out / 'soak.md'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
