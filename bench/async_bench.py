"""Filters that await, under load: ext_authz against its peers, and what a
Redis rate limit costs.

    python -m bench.async_bench [--duration 10] [--runs 3] [--warmup 2]
        [--connections 256] [--threads 2] [--delay-ms 10] [--out DIR]
        [--only NAME,...]

One authorization service (nginx + Lua, answering after --delay-ms with
ngx.sleep, so that it is never what limits a gateway) serves three
gateways, each checking every request with it before proxying to the
same upstream (bench/sites.conf):

  mosn_ext_authz  this project: the ext_authz filter, ONE Python worker
  auth_request    nginx's auth_request, a subrequest per request
  lua             access_by_lua_block with a cosocket HTTP request
  mosn_blocking   this project with the same check as a plain (blocking)
                  filter, one request at a time (the worker before
                  filters could await; its first round only, it is slow)
  mosn_await      this project with a filter that awaits a timer of the
                  service's delay instead of the service: what awaiting
                  costs the Python worker without the I/O

and, on a redis-server the benchmark starts:

  mosn_unit       the example's UNIT chain (no I/O)
  mosn_limited    the same chain with the ratelimit filter after it (two
                  descriptors per request, a limit never reached)

wrk -c256 (-H Authorization, uid, x-user) loads each in turn, rounds
interleaved; medians go to DIR/async.md and async.json with the targets:
mosn_ext_authz >= 10,000 req/s, >= auth_request, >= 0.8x lua, p99 <=
auth_request's; the ratelimit costs one Redis round trip per request
(EVALSHA calls counted by Redis / requests served).  ``--only`` measures
the gateways named and prints their medians, writing no report: for
comparing two builds of one gateway.
"""

import argparse
import contextlib
import datetime
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench.report
from bench import gateways, procs, services
from bench import peers_bench as runner

BENCH = gateways.BENCH
PEERS = gateways.PEERS
PROXY = (
    "proxy_pass http://s1; proxy_http_version 1.1; "
    'proxy_set_header Connection "";'
)

AUTHZ = ("mosn_ext_authz", "auth_request", "lua")
# where the Python worker's time goes: awaiting alone, no I/O
AWAIT = ("mosn_await",)
LIMIT = ("mosn_unit", "mosn_limited", "mosn_limited_redispy")
# what the gateways' services give with no gateway in front
DIRECT = ("service", "upstream")
# the processes on a request's path whose CPU each run records
CPU_ROLES = ("nginx", "python", "service", "upstream", "redis", "wrk")
ABOUT = {
    "service": "the authorization service alone, no gateway",
    "upstream": "the upstream alone, no gateway",
    "mosn_ext_authz": "this project: the ext_authz filter, 1 Python worker",
    "auth_request": "nginx auth_request subrequest",
    "lua": "access_by_lua_block, cosocket HTTP request",
    "mosn_blocking": "this project: the same check as a plain (blocking) "
    "filter, 1 Python worker",
    "mosn_await": "this project: a filter that awaits a timer of the "
    "service's delay instead of the service, 1 Python worker",
    "mosn_unit": "this project: the UNIT chain",
    "mosn_limited": "this project: the UNIT chain + ratelimit on Redis",
    "mosn_limited_redispy": "the same ratelimit counting through redis-py's "
    "asyncio client and a pool of 64 connections",
}


def mosn_config(workdir, authz_port, redis_port, delay_s):
    config = {
        "servers": [
            {
                "default_log_path": str(workdir / "mosn.log"),
                "default_log_level": "WARN",
                "listeners": [
                    {
                        "name": "authz",
                        "stream_filters": [
                            {
                                "type": "ext_authz",
                                "config": {
                                    "http_service": {
                                        "server_uri": {
                                            "uri": "http://127.0.0.1:%d"
                                            % authz_port,
                                            "timeout": "2s",
                                        },
                                        "path_prefix": "/auth",
                                        "authorization_response": {
                                            "allowed_upstream_headers": [
                                                "x-user"
                                            ]
                                        },
                                    },
                                    "max_connections": 512,
                                },
                            }
                        ],
                    },
                    {
                        "name": "blocking",
                        "stream_filters": [
                            {
                                "type": "bench_blocking_authz",
                                "module": "authz_filters",
                                "config": {"port": authz_port},
                            }
                        ],
                    },
                    {
                        "name": "await",
                        "stream_filters": [
                            {
                                "type": "bench_await_timer",
                                "module": "authz_filters",
                                "config": {"delay": delay_s},
                            }
                        ],
                    },
                    {"name": "unit", "stream_filters": [UNIT]},
                    {
                        "name": "limited",
                        "stream_filters": [
                            UNIT,
                            limiter("ratelimit", redis_port),
                        ],
                    },
                    {
                        "name": "limited_redispy",
                        "stream_filters": [
                            UNIT,
                            limiter("bench_ratelimit_redispy", redis_port),
                        ],
                    },
                ],
            }
        ],
        "pyworker": {"max_in_flight": 4096},
    }
    path = workdir / "mosn.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def limiter(kind, redis_port):
    """Two descriptors per request, limits never reached."""
    return {
        "type": kind,
        "module": "authz_filters",
        "config": {
            "domain": "bench",
            "redis": {
                "url": "redis://127.0.0.1:%d/0" % redis_port,
                "timeout": "1s",
            },
            "rate_limits": [
                {
                    "actions": [
                        {
                            "request_headers": {
                                "header_name": "x-user",
                                "descriptor_key": "user",
                            }
                        }
                    ],
                    "limit": {"requests_per_unit": 10**9, "unit": "second"},
                },
                {
                    "actions": [{"generic_key": {"descriptor_value": "all"}}],
                    "limit": {"requests_per_unit": 10**9, "unit": "minute"},
                },
            ],
        },
    }


UNIT = {
    "type": "metadata",
    "config": {
        "metadataers": [
            {"meta_data_key": "UNIT", "config": {"unit_key": "uid"}}
        ]
    },
}


def parse(text):
    """wrk's figures, as peers_bench reads them, less the uid mix."""
    figures = runner.parse_wrk(text, uid_mix=False)
    del figures["sent"]
    return figures


def wrk(args, url, seconds):
    argv = [
        args.wrk,
        "-t%d" % args.threads,
        "-c%d" % args.connections,
        "-d%ds" % seconds,
        "--latency",
        "--timeout",
        "10s",
        "-H",
        "Authorization: Bearer good",
        "-H",
        "uid: 2",
        "-H",
        "x-user: bench",
        url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60
    )
    if done.returncode != 0:
        raise RuntimeError("wrk failed: " + done.stderr.strip())
    return parse(done.stdout)


def get(port, path, authorization=None):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"uid": "2", "x-user": "probe"}
    if authorization:
        headers["Authorization"] = authorization
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode("latin-1")
    finally:
        conn.close()


def probe(name, port, path):
    """Each gateway checks with the service: denied without the token,
    proxied to the upstream with it."""
    deadline = time.monotonic() + 20
    while True:
        try:
            ok = get(port, path, "Bearer good")
            if ok[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise gateways.GatewayError(
                "%s does not answer 200 on %s" % (name, path)
            )
        time.sleep(0.2)
    assert ok[1].startswith("site s1"), (name, ok)
    if name in AUTHZ + ("mosn_blocking",):
        denied = get(port, path, "Bearer bad")
        assert denied[0] == 403, (name, denied)


def upstream_hits(settings):
    """Requests the upstream served so far (two bytes a line in its log,
    flushed every 200 ms)."""
    log = (
        settings.workdir
        / "sites"
        / ("hits-%d.log" % settings.site_ports["s1a"])
    )
    return log.stat().st_size // 2 if log.exists() else 0


def cpu_by_role(roles):
    """CPU seconds used so far by each role's process groups (and their
    children); in the gateway's group, Python processes count as
    "python", the rest as "nginx"."""
    stats = procs.all_stats()
    out = {}
    for role, pgids in roles.items():
        if role == "nginx":
            for kind, seconds in procs.gateway_cpu(pgids, stats).items():
                out[kind] = out.get(kind, 0.0) + seconds
        else:
            out[role] = (
                out.get(role, 0.0)
                + procs.cpu_ticks(procs.descendants(pgids, stats), stats)
                / procs.CLOCK_TICKS
            )
    return out


def wrk_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(args, name, url, roles, settings, redis=None, duration=None):
    duration = duration or args.duration
    if args.warmup and name != "mosn_blocking":
        # (one request at a time: a warm-up would only queue requests
        # that the measured run then waits for)
        wrk(args, url, args.warmup)
    if redis:
        time.sleep(0.6)
        calls, hits = redis.client_calls(), upstream_hits(settings)
    cpu, client = cpu_by_role(roles), wrk_cpu()
    started = time.monotonic()
    result = wrk(args, url, duration)
    elapsed = time.monotonic() - started
    after = cpu_by_role(roles)
    # percent of one CPU each process of the path used while wrk ran
    result["cpu"] = {
        role: 100 * (after[role] - cpu.get(role, 0.0)) / elapsed
        for role in after
    }
    result["cpu"]["wrk"] = 100 * (wrk_cpu() - client) / elapsed
    result["cpu_pct"] = result["cpu"].get("nginx", 0.0) + result["cpu"].get(
        "python", 0.0
    )
    if redis:
        # requests that reached the upstream, against the commands Redis
        # got for them
        time.sleep(0.6)
        after = redis.client_calls()
        result["served"] = upstream_hits(settings) - hits
        result["redis_calls"] = {
            k: after.get(k, 0) - calls.get(k, 0)
            for k in after
            if after.get(k, 0) != calls.get(k, 0)
        }
        # a new connection's HELLO is not the request's: EVALSHA is
        result["redis_per_request"] = result["redis_calls"].get(
            "evalsha", 0
        ) / max(1, result["served"])
    result["gateway"] = name
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--delay-ms", type=float, default=10.0)
    p.add_argument("--blocking-duration", type=int, default=5)
    p.add_argument("--out", default=str(BENCH / "results"))
    p.add_argument("--nginx", default="nginx")
    p.add_argument("--wrk", default="wrk")
    p.add_argument(
        "--only",
        type=lambda text: tuple(text.split(",")),
        help="measure only these gateways (comma-separated names); print "
        "their medians, write no report",
    )
    p.add_argument(
        "--render",
        metavar="JSON",
        help="write the report again from an async.json",
    )
    args = p.parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        for key, value in saved["args"].items():
            if key not in ("render", "out"):
                setattr(args, key, value)
        report(
            args,
            saved["runs"],
            saved.get("floors", []),
            saved["machine"],
            saved["started"],
            *saved["load"],
        )
        return
    args.workers = 1
    unknown = set(args.only or ()) - set(ABOUT)
    if unknown:
        p.error("--only: no gateway %s" % ", ".join(sorted(unknown)))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    started = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    info = runner.machine(args)
    load_before = open("/proc/loadavg").read().split()[:3]
    workdir = Path(tempfile.mkdtemp(prefix="async-bench-"))
    workdir.chmod(0o755)
    try:
        runs, floors = measure_all(args, workdir)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    if args.only:
        print_medians(runs)
        return
    load_after = open("/proc/loadavg").read().split()[:3]
    report(args, runs, floors, info, started, load_before, load_after)


def measure_all(args, workdir):
    site = procs.free_port()
    settings = gateways.Settings(
        workdir=workdir,
        nginx=args.nginx,
        modules=runner.modules_dir(args.nginx),
        workers=1,
        site_ports={
            "s1a": site,
            "s1b": procs.free_port(),
            "s2": procs.free_port(),
            "s3": procs.free_port(),
        },
    )
    authz_port = procs.free_port()
    service = gateways.Gateway(
        name="authz_service",
        about="the authorization service",
        ports=[authz_port],
        template=(PEERS / "authz_service.conf").read_text(),
        extra={"delay_s": "%g" % (args.delay_ms / 1000)},
    )
    ports = {
        name: procs.free_port() for name in ("mosn", "auth_request", "lua")
    }
    runs = []
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(services.RedisServer())
        config = mosn_config(
            workdir, authz_port, redis.port, args.delay_ms / 1000
        )
        mosn = gateways.Gateway(
            name="mosn",
            about=ABOUT["mosn_ext_authz"],
            ports=[ports["mosn"]],
            template=(PEERS / "authz_mosn.conf").read_text(),
            extra={
                "repo": str(gateways.REPO),
                "python": sys.executable,
                "mosn_config": str(config),
                "shm": "mosn_async_bench_%d" % os.getpid(),
                "proxy": PROXY,
            },
            env={"PYTHONPATH": str(BENCH)},
        )
        peers = [
            gateways.Gateway(
                name=name,
                about=ABOUT[name],
                ports=[ports[name]],
                template=(PEERS / conf).read_text(),
                extra={"authz_port": str(authz_port)},
            )
            for name, conf in (
                ("auth_request", "authz_auth_request.conf"),
                ("lua", "authz_lua.conf"),
            )
        ]
        live = {}
        for gw in [gateways.sites_gateway(settings), service, mosn] + peers:
            live[gw.name] = stack.enter_context(gateways.running(gw, settings))
        url = {
            "mosn_ext_authz": (ports["mosn"], "/authz"),
            "mosn_blocking": (ports["mosn"], "/blocking"),
            "mosn_await": (ports["mosn"], "/await"),
            "mosn_unit": (ports["mosn"], "/unit"),
            "mosn_limited": (ports["mosn"], "/limited"),
            "mosn_limited_redispy": (ports["mosn"], "/limited_redispy"),
            "auth_request": (ports["auth_request"], "/x"),
            "lua": (ports["lua"], "/x"),
            "service": (authz_port, "/auth/x"),
            "upstream": (settings.site_ports["s1a"], "/x"),
        }
        common = {
            "service": {live["authz_service"].nginx.pgid},
            "upstream": {live["sites"].nginx.pgid},
            "redis": {redis.proc.pid},
        }
        roles = {name: dict(common) for name in url}
        for name in url:
            if name not in DIRECT:
                roles[name]["nginx"] = {
                    live[
                        "mosn" if name.startswith("mosn") else name
                    ].nginx.pgid
                }
        for name, (port, path) in url.items():
            if name not in DIRECT:
                probe(name, port, path)
        for round_no in range(1, args.runs + 1):
            order = list(DIRECT) + list(AUTHZ) + list(AWAIT) + list(LIMIT)
            if round_no == 1:
                order.append("mosn_blocking")
            if args.only:
                order = [name for name in order if name in args.only]
            for name in order:
                port, path = url[name]
                print(
                    "round %d/%d: %s ..." % (round_no, args.runs, name),
                    end=" ",
                    flush=True,
                )
                result = measure(
                    args,
                    name,
                    "http://127.0.0.1:%d%s" % (port, path),
                    roles[name],
                    settings,
                    redis if name in LIMIT else None,
                    args.blocking_duration
                    if name == "mosn_blocking"
                    else None,
                )
                result["round"] = round_no
                runs.append(result)
                print(
                    "%.0f req/s, p99 %.1f ms, %d non-2xx, %d socket "
                    "errors%s"
                    % (
                        result["rps"],
                        result["p99_ms"],
                        result["non_2xx"],
                        result["socket_errors"],
                        ", %.3f Redis commands per request %s"
                        % (result["redis_per_request"], result["redis_calls"])
                        if "redis_per_request" in result
                        else "",
                    )
                )
        floors = (
            []
            if args.only
            else [await_floor(args, authz_port) for _ in range(args.runs)]
        )
    return runs, floors


def print_medians(runs):
    """--only: each gateway's medians, and the CPU its processes used."""
    for name in dict.fromkeys(run["gateway"] for run in runs):
        mine = [run for run in runs if run["gateway"] == name]
        rps = statistics.median(run["rps"] for run in mine)
        cpu = {
            role: statistics.median(run["cpu"].get(role, 0) for run in mine)
            for role in CPU_ROLES
        }
        print(
            "%s: %.0f req/s (%s), p99 %.1f ms; CPU %% %s; us of CPU per "
            "request: gateway %.0f, Python %.0f"
            % (
                name,
                rps,
                ", ".join("%.0f" % run["rps"] for run in mine),
                statistics.median(run["p99_ms"] for run in mine),
                " ".join("%s %.0f" % kv for kv in cpu.items()),
                (cpu["nginx"] + cpu["python"]) * 1e4 / max(rps, 1),
                cpu["python"] * 1e4 / max(rps, 1),
            )
        )


def await_floor(args, authz_port):
    """bench/await_floor.py against the service: what a task and the
    client cost one Python process with no gateway around it."""
    print("the await floor ...", end=" ", flush=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.await_floor",
            "--port",
            str(authz_port),
            "--connections",
            str(args.connections),
            "--seconds",
            str(min(args.duration, 5)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(gateways.REPO),
        check=True,
    )
    floor = json.loads(done.stdout)
    print(
        "task %.1f µs, client %.1f µs per exchange"
        % (floor["task_us"], floor["client_us"])
    )
    return floor


def summarise(runs):
    out = {}
    for name in DIRECT + AUTHZ + ("mosn_blocking",) + AWAIT + LIMIT:
        mine = [r for r in runs if r["gateway"] == name]
        if not mine:
            continue
        row = bench.report.medians(
            mine, ("rps", "p50_ms", "p99_ms", "cpu_pct")
        )
        row["cpu"] = {
            role: statistics.median(
                r.get("cpu", {}).get(role, 0.0) for r in mine
            )
            for role in CPU_ROLES
        }
        row.update(
            runs=len(mine),
            every=[round(r["rps"]) for r in mine],
            non_2xx=sum(r["non_2xx"] for r in mine),
            socket_errors=sum(r["socket_errors"] for r in mine),
            requests=sum(r["requests"] for r in mine),
        )
        if "redis_per_request" in mine[0]:
            row["redis_per_request"] = statistics.median(
                r["redis_per_request"] for r in mine
            )
            calls = {}
            for r in mine:
                for k, v in r["redis_calls"].items():
                    calls[k] = calls.get(k, 0) + v
            row["redis_calls"] = calls
            row["served"] = sum(r["served"] for r in mine)
        out[name] = row
    return out


def report(args, runs, floors, info, started, load_before, load_after):
    """async.md and async.json: the setup, the rates and CPU of every
    gateway, the targets, the await floor, the rate limit's cost."""
    summary = summarise(runs)
    lines = (
        _report_head(args, info, started, load_before, load_after)
        + _rate_table(summary)
        + _cpu_table(summary)
        + _targets(args, summary, info, load_after)
        + _python_costs(summary, args.delay_ms)
        + _floor(summary, floors)
        + _rate_limit(summary)
    )
    text = "\n".join(lines) + "\n"
    bench.report.write(
        args.out,
        "async",
        text,
        {
            "args": vars(args),
            "machine": info,
            "started": started,
            "load": [load_before, load_after],
            "runs": runs,
            "floors": floors,
            "summary": summary,
        },
    )
    print(text, end="")


def _report_head(args, info, started, load_before, load_after):
    command = bench.report.command(
        __spec__.name,
        [
            word
            for k, v in (
                ("duration", args.duration),
                ("runs", args.runs),
                ("warmup", args.warmup),
                ("connections", args.connections),
                ("threads", args.threads),
                ("delay_ms", "%g" % args.delay_ms),
            )
            for word in ("--" + k.replace("_", "-"), str(v))
        ],
    )
    return [
        "# Filters that await: ext_authz against its peers, and a Redis "
        "rate limit",
        "",
        "Written by `bench/async_bench.py`; every figure is from the run "
        "below (`async.json` has each run).",
        "",
        "- command: `%s`" % command,
        "- date: %s; %s CPUs (%s), Linux %s, %s, %s, Python %s"
        % (
            started,
            info["nproc"],
            info["cpu"],
            info["kernel"],
            info["nginx"],
            info["wrk"],
            info["python"],
        ),
        "- load average %s before, %s after (the machine is shared: read "
        "the ratios)" % (" ".join(load_before), " ".join(load_after)),
        "- wrk -t%d -c%d -d%ds --latency after %ds of warm-up, %d "
        "interleaved rounds, medians; every gateway has 1 nginx worker, "
        "this project's 1 Python worker"
        % (
            args.threads,
            args.connections,
            args.duration,
            args.warmup,
            args.runs,
        ),
        "- the authorization service: nginx + Lua, answering after %g ms "
        "(ngx.sleep), 1 worker; the upstream: bench/sites.conf"
        % args.delay_ms,
        "",
    ]


def _rate_table(summary):
    return bench.report.table(
        (
            "gateway",
            "what",
            "req/s (median)",
            "every run",
            "p50 ms",
            "p99 ms",
            "CPU % (nginx + Python)",
            "non-2xx",
            "socket errors",
        ),
        [
            [
                name,
                ABOUT[name],
                "%.0f" % row["rps"],
                ", ".join(map(str, row["every"])),
                "%.1f" % row["p50_ms"],
                "%.1f" % row["p99_ms"],
                "%.0f" % row["cpu_pct"],
                row["non_2xx"],
                row["socket_errors"],
            ]
            for name, row in summary.items()
        ],
    )


def _cpu_row(name, row):
    cpu = row.get("cpu", {})
    total = sum(cpu.values())
    own = cpu.get("nginx", 0.0) + cpu.get("python", 0.0)
    return [
        name,
        *("%.0f" % cpu.get(role, 0.0) for role in CPU_ROLES),
        "%.0f" % total,
        "%.0f" % (100 * row["rps"] / total if total else 0.0),
        "%.0f" % (1e4 * own / row["rps"]) if own and row["rps"] else "-",
    ]


def _cpu_table(summary):
    return [
        "",
        "CPU of each process on the path while wrk ran, % of one CPU "
        "(medians): the gateway's nginx worker, its Python worker, the "
        "authorization service, the upstream, Redis and wrk itself; "
        "req/s per CPU is the rate over the sum, so that a gateway held "
        "back by the machine's share is still compared fairly.",
        "",
        *bench.report.table(
            (
                "gateway",
                *CPU_ROLES,
                "sum",
                "req/s per CPU",
                "gateway µs of CPU per request",
            ),
            [_cpu_row(name, row) for name, row in summary.items()],
        ),
    ]


def verdict(ok):
    return "**met**" if ok else "**MISSED**"


def _targets(args, summary, info, load_after):
    a = summary.get("mosn_ext_authz")
    b = summary.get("auth_request")
    c = summary.get("lua")
    lines = ["", "## Targets", ""]
    if a:
        lines.append(
            "- mosn_ext_authz >= 10,000 req/s with one Python "
            "worker: %.0f, %s" % (a["rps"], verdict(a["rps"] >= 10000))
        )
    if a and b:
        lines.append(
            "- mosn_ext_authz >= auth_request in req/s: %.2fx, %s"
            % (a["rps"] / b["rps"], verdict(a["rps"] >= b["rps"]))
        )
        lines.append(
            "- p99 of mosn_ext_authz <= p99 of auth_request: "
            "%.1f ms vs %.1f ms, %s"
            % (a["p99_ms"], b["p99_ms"], verdict(a["p99_ms"] <= b["p99_ms"]))
        )
    if a and c:
        lines.append(
            "- mosn_ext_authz within 0.8x of lua in req/s: %.2fx, "
            "%s" % (a["rps"] / c["rps"], verdict(a["rps"] >= 0.8 * c["rps"]))
        )
    blocking = summary.get("mosn_blocking")
    if blocking:
        lines.append(
            "- the same check as a plain filter (one request at a "
            "time): %.0f req/s, %.0fx less than with ext_authz"
            % (
                blocking["rps"],
                a["rps"] / blocking["rps"]
                if a and blocking["rps"]
                else float("nan"),
            )
        )
    if a and b:
        lines.append(
            "- CPU of each gateway (nginx and its Python worker) against "
            "the machine's load: mosn_ext_authz used %.0f%% of a CPU and "
            "auth_request %.0f%%, with a load average of %s on %s CPUs: "
            "the Python worker got a share of a core, not a core.  The "
            "rates are those of this machine's share, the ratios those of "
            "gateways measured side by side."
            % (a["cpu_pct"], b["cpu_pct"], load_after[0], info["nproc"])
        )
    service = summary.get("service")
    if service and a:
        ratio = service["rps"] / max(
            summary[name]["rps"] for name in AUTHZ if name in summary
        )
        lines.append(
            "- the authorization service alone (wrk straight to it, same "
            "load): %.0f req/s, %.1fx the best gateway's rate through it: %s"
            % (
                service["rps"],
                ratio,
                "it is not what holds the gateways back"
                if ratio >= 1.25
                else "the best gateways run at the rate of the service "
                "itself, which %d connections that each wait %g ms bound at "
                "%.0f req/s: their rates (and the ratios to them) measure "
                "the latency a gateway adds more than its CPU, which the "
                "CPU table compares"
                % (
                    args.connections,
                    args.delay_ms,
                    args.connections / args.delay_ms * 1000,
                ),
            )
        )
    return lines + _path_ceilings(summary, info)


def _path_ceilings(summary, info):
    ceilings = []
    for name in AUTHZ:
        row = summary.get(name)
        if row and sum(row["cpu"].values()):
            # CPU seconds per request of every process on the path
            per_request = sum(row["cpu"].values()) / 100 / row["rps"]
            ceilings.append(
                "%s %.0f µs, %.0f req/s"
                % (name, 1e6 * per_request, int(info["nproc"]) / per_request)
            )
    if not ceilings:
        return []
    return [
        "- CPU of the whole path per request (gateway, service, "
        "upstream, wrk) and the rate it allows on %s CPUs with "
        "nothing else running: %s" % (info["nproc"], "; ".join(ceilings))
    ]


def _python_us(row):
    """The Python worker's CPU per request, in µs."""
    return 1e4 * row["cpu"].get("python", 0.0) / row["rps"]


def _python_costs(summary, delay_ms):
    """The Python worker's CPU per request along the await path: a plain
    chain, a filter that awaits a timer, a filter that awaits the
    service: what the task costs, and what the HTTP client adds."""
    unit = summary.get("mosn_unit")
    waits = summary.get("mosn_await")
    authz = summary.get("mosn_ext_authz")
    if not (unit and waits and authz and unit["rps"] and waits["rps"]):
        return []
    plain, task, check = _python_us(unit), _python_us(waits), _python_us(authz)
    return [
        "",
        "## Where the Python worker's time goes",
        "",
        "- Python CPU per request: %.0f µs for the UNIT chain (no await), "
        "%.0f µs for a filter that awaits a %g ms timer and sets a "
        "header (mosn_await), %.0f µs for ext_authz: awaiting costs "
        "%.0f µs a request over a plain chain (the task, its deadline, "
        "the verdict written when it ends), and the exchange with the "
        "service (connection pool, request, parsed answer, the socket's "
        "system calls) %.0f µs more"
        % (
            plain,
            task,
            delay_ms,
            check,
            task - plain,
            check - task,
        ),
    ]


def _floor(summary, floors):
    """What no Python filter that awaits the service can spend less on:
    a task and the client's exchange, measured with no gateway, against
    auth_request's whole request."""
    authz, peer = summary.get("mosn_ext_authz"), summary.get("auth_request")
    if not (floors and authz and peer and authz["rps"] and peer["rps"]):
        return []
    task = statistics.median(f["task_us"] for f in floors)
    timer = statistics.median(f["timer_task_us"] for f in floors)
    exchange = statistics.median(f["client_us"] for f in floors)
    rate = statistics.median(f["client_rps"] for f in floors)
    nginx = 1e4 * authz["cpu"].get("nginx", 0.0) / authz["rps"]
    python = _python_us(authz)
    whole = 1e4 * peer["cpu"].get("nginx", 0.0) / peer["rps"]
    least = nginx + task + exchange
    return [
        "",
        "## The floor under a filter that awaits",
        "",
        "`bench/await_floor.py`, %d runs after the rounds, medians: one "
        "Python process on the worker's loop (%s), no nginx, no ring."
        % (len(floors), floors[0].get("loop", "?")),
        "",
        "- a task per request (created, one step, a done callback): "
        "%.1f µs of CPU; the same task awaiting a 10 ms timer: %.1f µs"
        % (task, timer),
        "- one exchange with the authorization service through "
        "ext_authz's client, from %d coroutines and no task per request: "
        "%.1f µs of CPU (%.0f exchanges/s)"
        % (floors[0].get("connections", 256), exchange, rate),
        "- so the Python side of ext_authz costs at least %.0f µs a "
        "request, where it measured %.0f µs in the gateway; with the "
        "gateway's nginx worker (%.0f µs a request) the least the check "
        "could cost is %.0f µs, against %.0f µs for auth_request's whole "
        "request in its nginx worker: %s"
        % (
            task + exchange,
            python,
            nginx,
            least,
            whole,
            "parity with auth_request is out of reach of any Python "
            "filter on this path"
            if least > whole
            else "parity is within reach of the floor",
        ),
    ]


def _rate_limit(summary):
    unit, limited = summary.get("mosn_unit"), summary.get("mosn_limited")
    if not (unit and limited):
        return []
    lines = [
        "",
        "## The rate limit",
        "",
        "- Redis round trips per request by mosn_limited (two "
        "descriptors): %.3f EVALSHA per request that reached the "
        "upstream (all commands clients sent: %s, for %d requests; "
        "the few EVALSHA over the count are requests wrk left in "
        "flight), target 1: %s"
        % (
            limited["redis_per_request"],
            ", ".join(
                "%s %d" % kv for kv in sorted(limited["redis_calls"].items())
            ),
            limited["served"],
            verdict(abs(limited["redis_per_request"] - 1) < 0.02),
        ),
        "- req/s with the rate limit against the same chain without "
        "it: %.0f vs %.0f, %.2fx; p99 %.1f ms vs %.1f ms"
        % (
            limited["rps"],
            unit["rps"],
            limited["rps"] / unit["rps"],
            limited["p99_ms"],
            unit["p99_ms"],
        ),
    ]
    redispy = summary.get("mosn_limited_redispy")
    if redispy:
        lines.append(
            "- the same filter counting through redis-py's asyncio "
            "client and a pool of 64 connections: %.0f req/s (%.2fx the "
            "chain without it, %.2fx the filter's own client); Python "
            "CPU %.0f µs per request against %.0f µs"
            % (
                redispy["rps"],
                redispy["rps"] / unit["rps"],
                redispy["rps"] / limited["rps"],
                1e4 * redispy["cpu"]["python"] / redispy["rps"],
                1e4 * limited["cpu"]["python"] / limited["rps"],
            )
        )
    return lines


if __name__ == "__main__":
    main()
