"""A fleet on loopback for the tests and the benchmark: real etcd-server
members (one, or three on 127.0.0.1-3), demo sites in a plain nginx, and
gateways fed from etcd.  etcd is driven with the real etcdctl."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from gateway import NGINX, free_port, wait_for

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
PREFIX = "/mosn/apps/"
CONFIG_KEY = "/mosn/config"


def _scratch(prefix):
    # etcd fsyncs every write: on tmpfs that costs nothing
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return tempfile.mkdtemp(prefix=prefix, dir=base)


class Member:
    """One etcd-server process."""

    def __init__(self, name, host, cluster_token):
        self.name = name
        self.host = host
        self.client_port = free_port(host)
        self.peer_port = free_port(host)
        self.data_dir = _scratch("etcd-%s-" % name)
        self.token = cluster_token
        self.proc = None
        self.log_path = os.path.join(self.data_dir + ".log")

    @property
    def client_url(self):
        return "http://%s:%d" % (self.host, self.client_port)

    @property
    def endpoint(self):
        return "%s:%d" % (self.host, self.client_port)

    @property
    def peer_url(self):
        return "http://%s:%d" % (self.host, self.peer_port)

    def start(self, initial_cluster):
        state = "existing" if os.listdir(self.data_dir) else "new"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                ETCD,
                "--name",
                self.name,
                "--data-dir",
                self.data_dir,
                "--listen-client-urls",
                self.client_url,
                "--advertise-client-urls",
                self.client_url,
                "--listen-peer-urls",
                self.peer_url,
                "--initial-advertise-peer-urls",
                self.peer_url,
                "--initial-cluster",
                initial_cluster,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                self.token,
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--log-level",
                "warn",
                "--logger",
                "zap",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def stop(self, sig=signal.SIGTERM):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def remove(self):
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        try:
            os.unlink(self.log_path)
        except OSError:
            pass


class Etcd:
    """A single member (hosts=1) or a cluster on 127.0.0.1..N."""

    def __init__(self, members=1):
        token = "mosn-test-%d-%d" % (os.getpid(), time.monotonic_ns())
        self.members = [
            Member("m%d" % i, "127.0.0.%d" % (i + 1), token)
            for i in range(members)
        ]
        self.initial = ",".join(
            "%s=%s" % (m.name, m.peer_url) for m in self.members
        )
        self.auth = []  # etcdctl's --user, once auth is on

    @property
    def endpoints(self):
        return [m.endpoint for m in self.members]

    def start(self, timeout=30):
        try:
            for m in self.members:
                m.start(self.initial)
            self.wait_healthy(timeout)
        except BaseException:
            # the caller gets no Etcd to close: leave nothing behind
            self.close()
            raise
        return self

    def start_member(self, member, timeout=30):
        member.start(self.initial)
        assert wait_for(lambda: self.healthy(member), timeout), self.log_tail(
            member
        )

    def healthy(self, member):
        proc = self.ctl(
            "endpoint",
            "health",
            endpoints=[member.endpoint],
            check=False,
            timeout=5,
        )
        return proc.returncode == 0

    def wait_healthy(self, timeout=30):
        live = [m for m in self.members if m.alive()]
        ok = wait_for(
            lambda: all(self.healthy(m) for m in live), timeout, step=0.1
        )
        assert ok, "etcd not healthy:\n" + "\n".join(
            self.log_tail(m) for m in self.members
        )

    def log_tail(self, member, n=3000):
        try:
            with open(member.log_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def stop(self):
        for m in self.members:
            m.stop()

    def close(self):
        for m in self.members:
            m.remove()

    def live_endpoints(self):
        return [m.endpoint for m in self.members if m.alive()]

    def ctl(self, *args, endpoints=None, check=True, timeout=15):
        env = dict(os.environ, ETCDCTL_API="3")
        proc = subprocess.run(
            [
                ETCDCTL,
                "--endpoints",
                ",".join(endpoints or self.live_endpoints()),
                "--command-timeout",
                "%ds" % max(1, timeout - 1),
                *self.auth,
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                "etcdctl %s: %s%s" % (" ".join(args), proc.stdout, proc.stderr)
            )
        return proc

    def put(self, key, value):
        """Writes key; returns the revision it was written at."""
        if not isinstance(value, str):
            value = json.dumps(value)
        self.ctl("put", key, value)
        return self.revision()

    def delete(self, key):
        self.ctl("del", key)
        return self.revision()

    def revision(self):
        out = self.ctl("get", "--write-out=json", "/", "--limit=1").stdout
        return int(json.loads(out)["header"]["revision"])

    def compact(self, revision):
        self.ctl("compact", str(revision), "--physical")

    def status(self):
        """{endpoint: is_leader} of the live members."""
        out = self.ctl("endpoint", "status", "--write-out=json").stdout
        result = {}
        for entry in json.loads(out):
            st = entry["Status"]
            result[entry["Endpoint"]] = (
                st["leader"] == st["header"]["member_id"]
            )
        return result

    def leader(self):
        for endpoint, leads in self.status().items():
            if leads:
                return next(m for m in self.members if m.endpoint == endpoint)
        return None


def app_value(app, endpoints):
    """MOE's service.json entry of one app: endpoints as (port, site)."""
    return {
        "app_name": app,
        "server_list": [
            {"ip": "127.0.0.1", "port": port, "site": site}
            for port, site in endpoints
        ],
    }


class Sites:
    """Plain nginx (no module) answering "site S from PORT" on each port,
    as the example's demo sites do."""

    def __init__(self, labels):
        """labels: [(site, label)]; each gets a free port."""
        self.prefix = tempfile.mkdtemp(prefix="mosn-sites-")
        os.makedirs(os.path.join(self.prefix, "logs"))
        self.ports = {}
        servers = []
        for site, label in labels:
            port = free_port()
            self.ports[label] = port
            servers.append(
                "server { listen 127.0.0.1:%d; access_log off; "
                'return 200 "site %s from %s"; }' % (port, site, label)
            )
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(
                "worker_processes 1;\nerror_log logs/error.log;\n"
                "pid logs/nginx.pid;\n"
                "events { worker_connections 4096; }\n"
                "http { keepalive_requests 100000;\n%s\n}\n"
                % "\n".join(servers)
            )

    def start(self):
        subprocess.run(
            [NGINX, "-p", self.prefix + "/", "-c", self.conf],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return self

    def master_pid(self):
        with open(os.path.join(self.prefix, "logs", "nginx.pid")) as f:
            return int(f.read())

    def stop(self):
        try:
            pid = self.master_pid()
        except (OSError, ValueError):
            pid = None
        subprocess.run(
            [NGINX, "-p", self.prefix + "/", "-c", self.conf, "-s", "quit"],
            capture_output=True,
            timeout=30,
        )
        if pid is not None and not wait_for(lambda: not _alive(pid), 10):
            # a graceful quit waits for open connections: close them
            os.kill(pid, signal.SIGTERM)
            assert wait_for(lambda: not _alive(pid), 10), (
                "the sites' nginx %d does not stop" % pid
            )
        shutil.rmtree(self.prefix, ignore_errors=True)


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


FLEET_HTTP = """
    upstream test {
        mosn_subset test key=$mosn_meta_UNIT;
        server 0.0.0.1;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:%PORT%;
        location / {
            mosn_filter_chain serverListener;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://test;
        }
    }
"""


def etcd_mosn(endpoints, config_key=None, base=None, prefix=PREFIX, **options):
    """The example's MOSN config, its endpoints from etcd (``options``
    are more keys of the etcd block)."""
    from gateway import example_mosn

    mosn = base or example_mosn()
    etcd = {
        "endpoints": list(endpoints),
        "prefix": prefix,
        "timeout": 2,
        **options,
    }
    if config_key:
        etcd["config_key"] = config_key
    mosn["pyworker"] = {"discovery": {"etcd": etcd}}
    return mosn


def routed(gw, uid="2"):
    """The label of the site that answered, or None if it failed."""
    try:
        r = gw.get("/", {"uid": uid}, timeout=5)
    except OSError:
        return None
    if r.status != 200:
        return None
    return r.text.rsplit(" ", 1)[-1]


class Cut:
    """A TCP forwarder to one etcd member that the test can cut (every
    connection closed, new ones refused) and restore: a gateway's own
    network cut, etcd untouched."""

    def __init__(self, target):
        import threading

        self.target = target  # "host:port"
        self.port = free_port()
        self.endpoint = "127.0.0.1:%d" % self.port
        self.lock = threading.Lock()
        self.conns = []
        self.listener = None
        self.restore()

    def restore(self):
        import threading

        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener):
        import threading

        host, port = self.target.rsplit(":", 1)
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((host, int(port)), 5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pipe, args=(a, b), daemon=True
                ).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        # a thread blocked in accept() keeps a closed socket listening:
        # shutdown() wakes it first
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.cut()


def discovery_stats(gw):
    """What the gateway's discovery process last wrote for the metrics."""
    path = "/dev/shm/%s.stats/discovery.json" % gw.shm
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
