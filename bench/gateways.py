"""The gateways the benchmark compares, and how to bring one up and down.

A gateway is an nginx config template plus the helper processes it needs (a
Python service for some peers) and a readiness check (its ports accept). The
runner (bench/peers_bench.py) renders, starts, measures and stops them one
at a time.

Templates use `@name` placeholders (nginx configs are full of `$`):
common ones filled here for every gateway are @prefix, @workers, @port,
@modules, @user_line and the site ports @s1a, @s1b, @s2, @s3; a gateway adds
its own (a socket path, the repository root) in `Gateway.extra`.
"""

import contextlib
import dataclasses
import grp
import json
import os
import pwd
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

from bench import CHECKOUT
from bench.procs import accepts, descendants, start_time

REPO = Path(CHECKOUT)
BENCH = REPO / "bench"
PEERS = BENCH / "peers"

START_TIMEOUT = 10.0  # seconds for a gateway or helper to accept connections
STOP_TIMEOUT = 5.0  # seconds for a graceful exit before SIGKILL


class GatewayError(RuntimeError):
    """A gateway or one of its helpers did not start."""


class NginxTemplate(string.Template):
    delimiter = "@"


@dataclasses.dataclass
class Helper:
    """A process the gateway needs, ready once its unix socket accepts."""

    name: str
    argv: list
    socket: str


@dataclasses.dataclass
class Gateway:
    name: str
    about: str
    ports: list  # the first one is where clients connect
    template: str  # nginx config text with @placeholders
    extra: dict = dataclasses.field(default_factory=dict)
    helpers: list = dataclasses.field(default_factory=list)
    env: dict = dataclasses.field(default_factory=dict)

    @property
    def port(self):
        return self.ports[0]


@dataclasses.dataclass
class Settings:
    """What every rendered config shares."""

    workdir: Path
    nginx: str
    modules: str
    workers: int
    site_ports: dict  # s1a, s1b, s2, s3 -> port


# --- the registry ---------------------------------------------------------

PEER_PORT = 2991  # 2990 is the project's own gateway in conf/nginx.conf


def _peer(index, name, about, template, helpers=(), **extra):
    return Gateway(
        name=name,
        about=about,
        ports=[PEER_PORT + index],
        template=(PEERS / template).read_text(),
        extra=extra,
        helpers=list(helpers),
    )


def _service(workdir, name):
    """A Python peer's service (bench/peers/NAME.py) on a unix socket."""
    sock = str(Path(workdir) / f"{name}.sock")
    return Helper(
        name,
        [sys.executable, "-m", f"bench.peers.{name}", "--socket", sock],
        sock,
    )


def peer_gateways(workdir):
    """The five peers, cheapest first."""
    auth = _service(workdir, "auth_service")
    plugin = _service(workdir, "plugin_server")
    return [
        _peer(
            0, "map", "nginx regex map, no script (the C ceiling)", "map.conf"
        ),
        _peer(1, "njs", "njs js_set", "njs.conf", peers=str(PEERS)),
        _peer(2, "lua", "LuaJIT set_by_lua_block", "lua.conf"),
        _peer(
            3,
            "auth_request",
            "auth_request subrequest to aiohttp/uvloop over a unix socket",
            "auth_request.conf",
            helpers=[auth],
            socket=auth.socket,
        ),
        _peer(
            4,
            "plugin",
            "Lua cosocket to a Python plugin server (Kong/APISIX style)",
            "plugin.conf",
            helpers=[plugin],
            socket=plugin.socket,
        ),
    ]


# The project's own gateway: the example's config with the module from
# output/.  @mosn_config and @shm name the MOSN config and the region; `env
# PYTHONPATH` lets a variant's workers import bench modules.  The module
# starts its own Python workers, so there is no helper; their CPU is
# counted with nginx's because they are nginx's descendants.

MOSN_TEMPLATE = """\
# Gateway "mosn": this project, ngx_http_mosn_module + Python filter chain.
load_module @repo/output/ngx_http_mosn_module.so;

@user_line
worker_processes @workers;
env PYTHONPATH;
daemon off;
master_process on;
pid @prefix/nginx.pid;
error_log @prefix/error.log warn;

events { worker_connections 4096; }

http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path @prefix/client_body;
    proxy_temp_path @prefix/proxy;
    fastcgi_temp_path @prefix/fastcgi;
    uwsgi_temp_path @prefix/uwsgi;
    scgi_temp_path @prefix/scgi;

    mosn_config @mosn_config;
    mosn_workers 1;
    mosn_python @python;
    mosn_shm_name @shm;

    upstream s1 {
        server 127.0.0.1:@s1a; server 127.0.0.1:@s1b;
        keepalive 64; keepalive_requests 1000000;
    }
    upstream s2 {
        server 127.0.0.1:@s2; keepalive 64; keepalive_requests 1000000;
    }
    upstream s3 {
        server 127.0.0.1:@s3; keepalive 64; keepalive_requests 1000000;
    }
    # Only if UNIT gives no site; the runner's routing check under load flags
    # a gateway whose traffic lands here instead of where uid says.
    upstream any {
        zone any 64k;
        server 127.0.0.1:@s1a;
        server 127.0.0.1:@s2;
        server 127.0.0.1:@s3;
        keepalive 64;
        keepalive_requests 1000000;
    }

    map $mosn_meta_UNIT $site {
        s1      s1;
        s2      s2;
        s3      s3;
        default any;
    }

    server {
        listen 127.0.0.1:@port;
        location / {
            mosn_filter_chain serverListener;
            proxy_pass http://$site;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
"""


def mosn_gateway(workdir):
    """The project's gateway, or None while output/ has no module to load."""
    if not (REPO / "output" / "ngx_http_mosn_module.so").is_file():
        return None
    return Gateway(
        name="mosn",
        about="this project: ngx_http_mosn_module + Python workers over "
        "shared memory",
        ports=[PEER_PORT + 5],
        template=MOSN_TEMPLATE,
        # the Python that runs this script has the package installed
        extra={
            "repo": str(REPO),
            "python": sys.executable,
            "mosn_config": str(REPO / "conf" / "mosn.json"),
            "shm": "mosn_bench",
        },
    )


def mosn_senders_gateway(workdir):
    """The project's gateway with a sender filter after the UNIT driver:
    every response makes a second round trip (bench/senders.py)."""
    base = mosn_gateway(workdir)
    if base is None:
        return None
    config = json.loads((REPO / "conf" / "mosn.json").read_text())
    for server in config["servers"]:
        for listener in server["listeners"]:
            if listener["name"] == "serverListener":
                listener["stream_filters"].append(
                    {"type": "bench_stamp", "module": "senders"}
                )
    path = Path(workdir) / "mosn_senders.json"
    path.write_text(json.dumps(config, indent=2))
    return dataclasses.replace(
        base,
        name="mosn_senders",
        about="this project, the same chain plus one sender filter "
        "(response phase)",
        ports=[PEER_PORT + 6],
        extra=dict(
            base.extra, mosn_config=str(path), shm="mosn_bench_senders"
        ),
        env={"PYTHONPATH": str(BENCH)},
    )


def all_gateways(workdir):
    """Ordered (name, gateway or None if not available) pairs."""
    pairs = [(g.name, g) for g in peer_gateways(workdir)]
    pairs.append(("mosn", mosn_gateway(workdir)))
    return pairs


def sites_gateway(settings):
    """The four demo sites as one nginx instance, shared by every gateway."""
    return Gateway(
        name="sites",
        about="demo sites s1 (two servers), s2, s3",
        ports=list(settings.site_ports.values()),
        template=(BENCH / "sites.conf").read_text(),
    )


# --- bringing one up and down ---------------------------------------------


def _user_line():
    """As root, run workers as ourselves so they can reach the helper
    sockets."""
    if os.geteuid() != 0:
        return "# not root: workers run as the invoking user"
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"user {user} {group};"


def render(gateway, settings, workers=None):
    prefix = settings.workdir / gateway.name
    values = dict(
        prefix=str(prefix),
        workers=str(workers or settings.workers),
        port=str(gateway.port),
        modules=settings.modules,
        user_line=_user_line(),
        **{k: str(v) for k, v in settings.site_ports.items()},
        **gateway.extra,
    )
    return NginxTemplate(gateway.template).substitute(values)


def _tail(path, lines=15):
    try:
        return "\n".join(
            Path(path).read_text(errors="replace").splitlines()[-lines:]
        )
    except OSError:
        return "(no log)"


class Process:
    """A child in its own process group, stopped with the whole group."""

    def __init__(self, name, argv, log, env=None):
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
                env={**os.environ, **(env or {})},
            )
        self.pgid = self.popen.pid

    def wait_ready(self, addresses, log_hint):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise GatewayError(
                    f"{self.name} exited with {self.popen.returncode}:\n"
                    f"{_tail(log_hint)}"
                )
            if all(accepts(a) for a in addresses):
                return
            time.sleep(0.05)
        raise GatewayError(
            f"{self.name} not ready after "
            f"{START_TIMEOUT:.0f}s:\n{_tail(log_hint)}"
        )

    def stop(self):
        """SIGTERM the group, then SIGKILL whatever is left of it."""
        stragglers = descendants({self.pgid})
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.popen.wait(STOP_TIMEOUT)
        # Children that left the group (setsid) but were ours a moment ago.
        for pid, started in stragglers.items():
            if start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class Running:
    """A started gateway: its nginx and helper processes."""

    def __init__(self, gateway, nginx, helpers):
        self.gateway = gateway
        self.nginx = nginx
        self.helpers = helpers


def _check_free(gateway):
    for port in gateway.ports:
        if accepts(("127.0.0.1", port)):
            raise GatewayError(
                f"{gateway.name}: port {port} is already in use"
            )
    for helper in gateway.helpers:
        if accepts(helper.socket):
            raise GatewayError(
                f"{gateway.name}: {helper.socket} is already served"
            )


@contextlib.contextmanager
def running(gateway, settings, workers=None):
    """Start helpers then nginx, wait until all accept, stop all on exit."""
    _check_free(gateway)
    prefix = settings.workdir / gateway.name
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render(gateway, settings, workers))
    started = []
    try:
        helpers = []
        for helper in gateway.helpers:
            log = prefix / f"{helper.name}.log"
            proc = Process(helper.name, helper.argv, log)
            started.append(proc)
            proc.wait_ready([helper.socket], log)
            helpers.append(proc)
        error_log = prefix / "error.log"
        nginx = Process(
            f"{gateway.name} nginx",
            [
                settings.nginx,
                "-p",
                f"{prefix}/",
                "-c",
                str(conf),
                "-e",
                str(error_log),
            ],
            prefix / "stdout.log",
            env=gateway.env,
        )
        started.append(nginx)
        nginx.wait_ready([("127.0.0.1", p) for p in gateway.ports], error_log)
        yield Running(gateway, nginx, helpers)
    finally:
        for proc in reversed(started):
            proc.stop()


def add_options(parser, workers):
    """The options of a benchmark that starts the demo sites and this
    gateway beside plain nginx on free ports (idle_bench, scale_bench)."""
    parser.add_argument(
        "--workers", type=int, default=workers, help="nginx worker_processes"
    )
    parser.add_argument(
        "--mosn-workers",
        type=int,
        default=2,
        help="Python workers (mosn_workers)",
    )
    parser.add_argument(
        "--site-port",
        type=int,
        default=0,
        help="first of the four site ports (default: free ones)",
    )
    parser.add_argument("--nginx", default="nginx")
