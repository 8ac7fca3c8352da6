"""Real services the tests start on free loopback ports and stop after:
redis-server (Debian's) and the aiohttp authorization service of
tests/authservice.py."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request

from gateway import free_port, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


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
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: self.command("PING") == "+PONG", 10), \
            "redis-server did not start on port %d" % self.port
        return self

    def command(self, *args):
        """One command in RESP; its first reply line, or None."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                out = b"*%d\r\n" % len(args)
                for arg in args:
                    arg = str(arg).encode()
                    out += b"$%d\r\n%s\r\n" % (len(arg), arg)
                s.sendall(out)
                return s.makefile("rb").readline().decode().rstrip("\r\n")
        except OSError:
            return None

    def info(self, section):
        """INFO section as a dict."""
        with socket.create_connection(("127.0.0.1", self.port), 1) as s:
            s.sendall(b"*2\r\n$4\r\nINFO\r\n$%d\r\n%s\r\n"
                      % (len(section), section.encode()))
            f = s.makefile("rb")
            n = int(f.readline()[1:])
            text = f.read(n + 2).decode()
        out = {}
        for line in text.splitlines():
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

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class AuthService:
    """tests/authservice.py in a process of its own."""

    def __init__(self, delay_ms=0, port=None):
        self.port = port or free_port()
        self.delay_ms = delay_ms
        self.proc = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "authservice.py"),
             "--port", str(self.port), "--delay-ms", str(self.delay_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout.readline().strip() == "ready", \
            "the authorization service did not start"
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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def started(service):
    """A pytest fixture body: start, yield, stop."""
    service.start()
    try:
        yield service
    finally:
        service.stop()


def until(cond, timeout=10):
    value = wait_for(cond, timeout)
    assert value, "condition not met within %s s" % timeout
    return value

