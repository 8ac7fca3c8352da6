"""A real nginx with the real module and real Python workers, on loopback,
for one test: a small config in a fresh prefix, started, probed, stopped.

Each test writes the `http {}` body it needs; the harness adds the module,
the MOSN config, the region name and the logs, and checks on the way out
that no Python process and no slot in use is left behind.
"""

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

from bench.procs import free_port, pids_of, wait_for  # noqa: F401
from shm_ring import Region, RingError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# another nginx and the module built for it (make test-newer-nginx).
# nginx itself reads $NGINX as sockets inherited from an old binary, and
# then stays in the foreground: no nginx the tests start may inherit it.
MODULE = os.environ.get("MOSN_MODULE") or os.path.join(
    ROOT, "output", "ngx_http_mosn_module.so"
)
NGINX = os.environ.pop("NGINX", None) or "/usr/sbin/nginx"
PYTHON = sys.executable
FILTERS = os.path.join(ROOT, "tests", "filters")


_readable_dir = []


def readable_file(name, data):
    """A file of ``data`` that nginx's workers (another user) can read,
    made once per test process and removed when it exits."""
    if not _readable_dir:
        folder = tempfile.mkdtemp(prefix="mosn-big-")
        os.chmod(folder, 0o755)
        atexit.register(shutil.rmtree, folder, True)
        _readable_dir.append(folder)
    path = os.path.join(_readable_dir[0], name)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
    return path


def boot_clock():
    """Now, on the clock the kernel's process start times count on."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start(pid):
    """When the kernel started process pid, on boot_clock() (to the
    clock tick); None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    except OSError:
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("latin-1")

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self):
        return "Response(%d, %r)" % (self.status, self.body[:80])


class Gateway:
    """One nginx instance under test."""

    def __init__(
        self,
        http,
        mosn=None,
        workers=1,
        nginx_workers=1,
        main="",
        env=None,
        worker_connections=1024,
    ):
        self.prefix = tempfile.mkdtemp(prefix="mosn-gw-")
        os.chmod(self.prefix, 0o755)
        os.makedirs(os.path.join(self.prefix, "logs"))
        os.makedirs(os.path.join(self.prefix, "conf"))
        self.shm = "mosn_test_" + uuid.uuid4().hex[:12]
        self.port = free_port()
        self.workers = workers
        self.env = dict(os.environ, PYTHONPATH=FILTERS)
        self.env.update(env or {})
        self.mosn = mosn if mosn is not None else example_mosn()
        self.mosn_path = os.path.join(self.prefix, "conf", "mosn.json")
        self.write_mosn(self.mosn)
        self.conf_path = os.path.join(self.prefix, "conf", "nginx.conf")
        self.http = http
        self.site_ports = {}
        self.main = main
        self.nginx_workers = nginx_workers
        self.worker_connections = worker_connections
        self.write_conf()
        self.started = False

    def site_port(self, label):
        label = str(label)
        if label not in self.site_ports:
            self.site_ports[label] = free_port()
        return self.site_ports[label]

    # -- configuration -----------------------------------------------------

    def write_mosn(self, mosn):
        with open(self.mosn_path, "w") as f:
            if isinstance(mosn, str):
                f.write(mosn)
            else:
                json.dump(mosn, f, indent=2)

    def write_conf(self):
        body = self.http.replace("%PORT%", str(self.port))
        # %P3450% is "the port that stands for 3450 in this test"
        body = re.sub(
            r"%P(\d+)%", lambda m: str(self.site_port(m.group(1))), body
        )
        conf = textwrap.dedent("""\
            load_module %(module)s;
            worker_processes %(nworkers)d;
            error_log logs/error.log info;
            pid logs/nginx.pid;
            %(main)s
            events { worker_connections %(connections)d; }
            http {
                access_log logs/access.log;
                client_body_temp_path logs/body;
                proxy_temp_path logs/proxy;
                fastcgi_temp_path logs/fastcgi;
                uwsgi_temp_path logs/uwsgi;
                scgi_temp_path logs/scgi;
                mosn_config mosn.json;
                mosn_python %(python)s;
                mosn_shm_name %(shm)s;
                mosn_workers %(workers)d;
            %(body)s
            }
            """) % {
            "module": MODULE,
            "nworkers": self.nginx_workers,
            "main": self.main,
            "python": PYTHON,
            "shm": self.shm,
            "connections": self.worker_connections,
            "workers": self.workers,
            "body": textwrap.indent(textwrap.dedent(body), "    "),
        }
        with open(self.conf_path, "w") as f:
            f.write(conf)

    def nginx(self, *args, check=True):
        """Runs the nginx command; (exit code, what it printed)."""
        # daemons keep stdout open: a file, not a pipe, takes the output
        out_path = os.path.join(self.prefix, "logs", "nginx.out")
        with open(out_path, "w+") as out:
            proc = subprocess.run(
                [
                    NGINX,
                    "-p",
                    self.prefix + "/",
                    "-c",
                    "conf/nginx.conf",
                    *args,
                ],
                env=self.env,
                stdout=out,
                stderr=out,
                timeout=60,
            )
            out.seek(0)
            text = out.read()
        if check and proc.returncode != 0:
            raise AssertionError(
                "nginx %s failed:\n%s\n%s"
                % (" ".join(args), text, self.error_log())
            )
        return proc.returncode, text

    # -- life ----------------------------------------------------------------

    def start(self, wait=True):
        self.nginx()
        self.started = True
        if wait:
            self.wait_ready()
        return self

    def master_pid(self):
        with open(os.path.join(self.prefix, "logs", "nginx.pid")) as f:
            return int(f.read())

    def region(self):
        return Region.attach("/" + self.shm)

    def live_workers(self, region=None):
        region = region or self.region()
        return [c for c in region.stats()["consumers"] if c["state"] == "live"]

    def wait_ready(self, workers=None, timeout=15):
        """Until the Python workers serve and every nginx worker is on."""
        want = self.workers if workers is None else workers
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                region = self.region()
            except (RingError, OSError):
                time.sleep(0.05)
                continue
            try:
                live = self.live_workers(region)
                owned = [
                    p
                    for p in region.stats()["producers"]
                    if p["state"] == "owned"
                ]
                if len(live) >= want and len(owned) >= self.nginx_workers:
                    return region
            finally:
                region.close()
            time.sleep(0.05)
        raise AssertionError(
            "gateway not ready in %ds:\n%s" % (timeout, self.error_log())
        )

    def reload(self):
        self.nginx("-s", "reload")

    def stop(self, timeout=10):
        """nginx -s quit; then every process of this gateway must be gone."""
        if not self.started:
            return
        self.started = False
        try:
            master = self.master_pid()
        except (OSError, ValueError):
            master = None
        self.nginx("-s", "quit", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.processes():
                return
            time.sleep(0.05)
        left = self.processes()
        for pid in left + ([master] if master else []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise AssertionError("processes left after quit: %r" % left)

    def processes(self):
        """nginx and Python processes of this gateway still alive."""
        return pids_of(self.prefix + "/") + pids_of("/" + self.shm)

    def python_pids(self):
        return pids_of("pyworker worker --shm /" + self.shm)

    def supervisor_pid(self):
        pids = pids_of("pyworker serve --shm /" + self.shm)
        return pids[0] if pids else None

    def nginx_worker_pids(self):
        master = self.master_pid()
        out = []
        for pid in pids_of("nginx: worker process"):
            try:
                with open("/proc/%d/stat" % pid) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == master:
                        out.append(pid)
            except OSError:
                pass
        return out

    def error_log(self):
        try:
            with open(
                os.path.join(self.prefix, "logs", "error.log"),
                errors="replace",
            ) as f:
                return f.read()
        except OSError:
            return ""

    def slots_in_use(self):
        region = self.region()
        try:
            return region.slots_in_use()
        finally:
            region.close()

    def wait_idle(self, timeout=5):
        """Until no slot is in use (after faults, at idle)."""
        deadline = time.monotonic() + timeout
        n = None
        while time.monotonic() < deadline:
            n = self.slots_in_use()
            if n == 0:
                return
            time.sleep(0.05)
        raise AssertionError("%d slot(s) still in use at idle" % n)

    # -- HTTP ----------------------------------------------------------------

    def get(
        self,
        path="/",
        headers=None,
        method="GET",
        body=None,
        timeout=10,
        port=None,
    ):
        conn = http.client.HTTPConnection(
            "127.0.0.1", port or self.port, timeout=timeout
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Response(resp.status, resp.getheaders(), resp.read())
        finally:
            conn.close()

    def raw(self, data, timeout=10, port=None):
        """Sends raw bytes; returns all bytes until the server closes."""
        with socket.create_connection(
            ("127.0.0.1", port or self.port), timeout=timeout
        ) as s:
            s.sendall(data)
            chunks = []
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)


def nginx_version(nginx=None):
    """(major, minor, patch) of an nginx binary, NGINX by default."""
    out = subprocess.run(
        [nginx or NGINX, "-v"], capture_output=True, text=True, timeout=10
    ).stderr
    return tuple(
        int(n) for n in re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out).groups()
    )


DEBIAN_NGINX = "/usr/sbin/nginx"
DEBIAN_MODULES = "/usr/lib/nginx/modules"


def debian_modules(*names):
    """load_module lines for Debian's dynamic modules (Lua, headers-more,
    njs), which are built for Debian's nginx: the test is skipped on any
    other nginx, which would refuse them."""
    import pytest

    mine, theirs = nginx_version(), nginx_version(DEBIAN_NGINX)
    if mine != theirs:
        pytest.skip(
            "Debian's %s is built for nginx %s, not %s"
            % (
                ", ".join(names),
                ".".join(map(str, theirs)),
                ".".join(map(str, mine)),
            )
        )
    lines = []
    for name in names:
        path = os.path.join(DEBIAN_MODULES, name + ".so")
        assert os.path.exists(path), "%s is not installed (make apt)" % path
        lines.append("load_module %s;" % path)
    return "\n".join(lines)


def evil_module(directory):
    """A filter module, evil_filters, that writes the euid it was imported
    as into a marker file: the env that puts it on the workers' path, and
    the marker's path."""
    marker = directory / "ran-as"
    (directory / "evil_filters.py").write_text(
        "import os\nopen(%r, 'w').write(str(os.geteuid()))\n" % str(marker)
    )
    return {"PYTHONPATH": os.pathsep.join([FILTERS, str(directory)])}, marker


def example_mosn(unit_key="uid", extra_listeners=()):
    """The MOSN config of the worked example (MOE's mosn.json)."""
    return {
        "servers": [
            {
                "default_log_path": "logs/mosn.log",
                "default_log_level": "INFO",
                "listeners": [
                    {
                        "name": "serverListener",
                        "stream_filters": [
                            {
                                "type": "metadata",
                                "config": {
                                    "metadataers": [
                                        {
                                            "meta_data_key": "UNIT",
                                            "config": {"unit_key": unit_key},
                                        }
                                    ]
                                },
                            }
                        ],
                    },
                    *extra_listeners,
                ],
            }
        ],
    }


def listener(name, *filters):
    return {"name": name, "stream_filters": list(filters)}


def sites(ports):
    """nginx servers answering like the example's demo sites; each listens
    on the free port standing for its label (%P3450% in upstreams)."""
    out = []
    for site, port in ports:
        out.append(
            "server { listen 127.0.0.1:%%P%d%%; "
            'return 200 "site %s from %d"; }' % (port, site, port)
        )
    return "\n".join(out)


# the sites of the example as upstreams, and $site from the UNIT metadata
ROUTED_UPSTREAMS = """
    upstream s1 { server 127.0.0.1:%P3450%; keepalive 16; }
    upstream s2 { server 127.0.0.1:%P3452%; keepalive 16; }
    upstream s3 { server 127.0.0.1:%P3453%; keepalive 16; }
    upstream any_site { server 127.0.0.1:%P3450%; keepalive 16; }
    map $mosn_meta_UNIT $site { s1 s1; s2 s2; s3 s3; default any_site; }
"""


SITE_BODY = re.compile(r"site (s\d) from (\d+)")
