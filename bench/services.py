"""Real services on loopback that the benchmarks and the tests start and
stop: redis-server (Debian's), the ext_authz tests' authorization service
(bench/peers/ext_authz_service.py), and the way every demo service of
bench/peers/ serves its aiohttp app."""

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request

from bench import CHECKOUT
from bench.procs import free_port, wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def stop_process(proc, timeout=10):
    """SIGTERM, then SIGKILL after timeout seconds; reaped either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def started(service):
    """A pytest fixture body: start, yield, stop."""
    service.start()
    try:
        yield service
    finally:
        service.stop()


class RedisServer:
    """A redis-server of its own: no persistence, loopback only."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="mosn-redis-")
        self.proc = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self):
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_for(lambda: self.command("PING") == "+PONG", 10):
            self.stop()
            raise RuntimeError(
                "redis-server did not start on port %d" % self.port
            )
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def command(self, *args):
        """One command in RESP: its reply's first line (a bulk string's
        value), or None if the server does not answer."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                out = b"*%d\r\n" % len(args)
                for arg in args:
                    arg = str(arg).encode()
                    out += b"$%d\r\n%s\r\n" % (len(arg), arg)
                s.sendall(out)
                f = s.makefile("rb")
                first = f.readline().decode().rstrip("\r\n")
                if first.startswith("$") and first != "$-1":
                    return f.read(int(first[1:]) + 2).decode()[:-2]
                return first
        except OSError:
            return None

    def info(self, section):
        """INFO section as a dict."""
        out = {}
        for line in (self.command("INFO", section) or "").splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out

    def calls(self, command):
        """How many times a command ran (INFO commandstats)."""
        stat = self.info("commandstats").get("cmdstat_" + command.lower())
        if stat is None:
            return 0
        return int(dict(kv.split("=") for kv in stat.split(","))["calls"])

    def client_calls(self):
        """command -> how many times clients sent it: EVALSHA and any
        other, not a script's own INCRBY, EXPIRE and TIME, nor INFO."""
        calls = {}
        for key, stat in self.info("commandstats").items():
            name = key[len("cmdstat_") :]
            if name not in ("incrby", "expire", "time", "info"):
                calls[name] = int(re.search(r"calls=(\d+)", stat)[1])
        return calls

    def stop(self):
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class AuthService:
    """bench/peers/ext_authz_service.py in a process of its own."""

    def __init__(self, delay_ms=0, port=None):
        self.port = port or free_port()
        self.delay_ms = delay_ms
        self.proc = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.peers.ext_authz_service",
                "--port",
                str(self.port),
                "--delay-ms",
                str(self.delay_ms),
            ],
            cwd=CHECKOUT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the authorization service did not start")
        return self

    def _get(self, path, method="GET"):
        req = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def seen(self):
        """What each check carried: [{method, path, headers}]."""
        return self._get("/_seen")

    def forget(self):
        self._get("/_seen", "DELETE")

    def in_flight(self):
        """(checks being answered now, most at once since forget())."""
        return tuple(self._get("/_in_flight"))

    def stop(self):
        stop_process(self.proc)


async def serve_app(app, listen):
    """Serves an aiohttp app until SIGTERM or SIGINT: listen(runner) is a
    coroutine that makes the runner's site and starts it."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await listen(runner)
    await until_stopped()
    await runner.cleanup()


async def until_stopped():
    """Returns on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def serve_on_socket(serve, description):
    """A peer service's command line, `--socket PATH`: serve(PATH) on
    uvloop."""
    import argparse

    import uvloop

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--socket", required=True, help="unix socket to listen on"
    )
    uvloop.run(serve(parser.parse_args().socket))
