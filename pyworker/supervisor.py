"""The supervisor of the Python worker pool: starts the workers, replaces
one that dies, rolls them one at a time on reload, reaps what dead peers
left in the ring, keeps the endpoint table in step with its discovery
source (pyworker.discovery), and leaves with nginx.

Spawned by nginx, it is one of the master's processes: the master
respawns it if it dies, tells it to quit or reload (pyworker.master), and
its death ends its workers and admin process at once (the kernel's
parent-death signal), so a new one starts from a clean slate."""

import logging
import os
import select
import signal
import subprocess
import sys
import time

from shm_ring import Region, RingError, proc_alive

from pyworker import statsdir
from pyworker.accepted import AcceptedConfig
from pyworker.atomic import write_json
from pyworker.chain import STOP_HOOK_OVERRUN, STOP_HOOK_TIMEOUT
from pyworker.discovery.supervised import Discovery
from pyworker.logs import setup_logging
from pyworker.privileges import PARENT_ENV
from pyworker.worker import STOP_GRACE

log = logging.getLogger("pyworker.supervisor")

TICK = 0.5  # seconds between housekeeping rounds at idle
START_TIMEOUT = 15.0  # for a new worker to load its config and attach
DRAIN_TIMEOUT = 10.0  # for a draining worker to finish and leave
# for workers to leave on stop, before SIGKILL: their tasks' grace, then
# their stop() hooks (and the moments of those past the budget), and half
# a second to spare
STOP_TIMEOUT = STOP_GRACE + STOP_HOOK_TIMEOUT + STOP_HOOK_OVERRUN + 0.5
ADMIN_STOP_TIMEOUT = 3.0  # for the admin process to leave, before SIGKILL
TERMINATE_TIMEOUT = 0.5  # the same when nginx terminates (it waits 1 s)
QUIT_TIMEOUT = 60.0  # on quit, for nginx's workers to finish first
ADMIN_BACKOFF = 5.0  # between restarts of an admin process that fails
# workers that fail to start this many times in a row: the pool is marked
# failed, and nginx stops holding requests for a worker until one serves
FAIL_LIMIT = 3


class Supervisor:
    def __init__(
        self,
        shm,
        config_path,
        workers=1,
        uid=None,
        gid=None,
        python=None,
        channel=None,
        orders=None,
    ):
        self.shm = shm
        self.config_path = config_path  # what the workers load
        self.source_config = config_path  # the file nginx names
        self.base_config = config_path  # its copy accepted last
        self.accepted = None  # pyworker.accepted.AcceptedConfig
        self.workers = workers
        self.uid = uid
        self.gid = gid
        self.python = python or sys.executable
        self.region = None
        self.procs = {}  # pid -> (consumer index, Popen)
        self.retiring = set()  # pids drained on purpose
        self.outgoing = []  # workers on the config before, while a roll
        # replaces them one at a time
        self.restarts = 0
        self.reloads = 0
        self.started = {}  # pid -> start time
        self.started_at = {}  # pid -> start time, for crash loops
        self._backoff = 0.0  # grows while workers fail to start
        self._failures = 0  # workers in a row that never served
        self._respawn_at = []  # when to start replacements
        self.stats_dir = None
        self.admin = None  # the admin process
        self.admin_next = 0.0
        self.stopping = False
        self.quitting = False  # nginx quits: its workers finish first
        self.terminating = False
        self.reload_asked = None  # (workers, config) to roll onto
        self.channel = channel  # pyworker.master.NginxChannel, from nginx
        self.orders = orders  # pyworker.master.Orders, from nginx
        self.parent = os.getppid()
        self.region_id = None
        self.discovery = None  # the endpoints' source (and config's)
        self._reaped_at = 0.0  # the region's reaper, last run (0: not
        # before the workers of a start serve)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- signals ------------------------------------------------------------

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            # run by hand: the config and workers it was started with
            self.reload_asked = (self.workers, self.source_config)
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True

    def _install_signals(self):
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda s, f: None)

    def _sleep(self, seconds):
        fds = [self._wake_r] + [
            f for f in (self.channel, self.orders) if f is not None
        ]
        if self.channel is not None and self.channel.closed:
            fds.remove(self.channel)
        try:
            ready = select.select(fds, [], [], seconds)[0]
        except InterruptedError:
            ready = []
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass
        if self.channel is not None and self.channel in ready:
            self._on_nginx(self.channel.read())
        if self.orders is not None and self.orders in ready:
            order = self.orders.read()
            if order is not None:
                self.reload_asked = order
        # every wait of the supervisor, rolls and drains included, keeps
        # the service file watched; a look is a stat, twice a second
        self._discover()
        # and hands back what dead peers held: nginx workers started by a
        # reload need the channels of those it retired, even mid-roll
        now = time.monotonic()
        if self._reaped_at and now >= self._reaped_at + TICK:
            self._reaped_at = now
            self.region.reap()

    def _on_nginx(self, commands):
        for command in commands:
            if command == "quit":
                log.info("nginx quits: serving until its workers have left")
                self.quitting = self.stopping = True
            elif command == "terminate":
                self.terminating = self.stopping = True
            elif command == "reopen":
                log.info("nginx reopens its logs")

    # -- service discovery ----------------------------------------------------

    def _discovery_setup(self):
        """Follows the source the MOSN config names (at start and on every
        reload); returns the config the workers should load: the file, or
        the file with the store's listeners (checked)."""
        if self.discovery is None:
            self.discovery = Discovery(
                self.region,
                self.shm,
                self.stats_dir,
                self.python,
                self._user_args(),
            )
        self.discovery.source = self.source_config
        self.discovery.setup(self.base_config)
        return self.discovery.choose_config(
            self.base_config, self._check_config
        )

    def _discover(self, force=False):
        if self.discovery is None:
            return
        try:
            if self.discovery.poll(force=force) and not self.reload_asked:
                self.reload_asked = "store"  # a new filter config
        except Exception:
            # the pool must not go down with the endpoints
            log.exception("service discovery failed")

    # -- workers --------------------------------------------------------------

    def _spawn(self):
        index = self.region.alloc_consumer()
        if index < 0:
            log.error("no free consumer entry in the region for a new worker")
            return None
        cmd = (
            [
                self.python,
                "-P",
                "-m",
                "pyworker",
                "worker",
                "--shm",
                self.shm,
                "--index",
                str(index),
                "--config",
                self.config_path,
            ]
            + self._stats_args()
            + self._user_args()
        )
        proc = subprocess.Popen(cmd, close_fds=True, env=self._child_env())
        self.procs[proc.pid] = (index, proc)
        self.started[proc.pid] = time.time()
        self.started_at[proc.pid] = time.time()
        log.info("started worker pid %d as consumer %d", proc.pid, index)
        self._write_stats()
        return proc.pid

    def _user_args(self):
        if self.uid is None:
            return []
        return ["--uid", str(self.uid), "--gid", str(self.gid)]

    def _stats_args(self):
        return ["--stats-dir", self.stats_dir] if self.stats_dir else []

    def _child_env(self):
        # children die with the supervisor; this lets them check it is
        # still the parent they asked the kernel about
        return dict(os.environ, **{PARENT_ENV: str(os.getpid())})

    def _write_stats(self):
        """What only the supervisor knows, for the admin API."""
        if self.stats_dir is None:
            return
        try:
            write_json(
                os.path.join(self.stats_dir, "supervisor.json"),
                {
                    "pid": os.getpid(),
                    "restarts": self.restarts,
                    "reloads": self.reloads,
                    "config": self.config_path,
                    "source": self.source_config,
                    "workers": [
                        {
                            "pid": pid,
                            "index": index,
                            "started": self.started.get(pid),
                        }
                        for pid, (index, _) in self.procs.items()
                        if pid not in self.retiring
                    ],
                },
            )
        except OSError as exc:
            log.warning("cannot write the supervisor's stats: %s", exc)

    def _stats_dir_make(self):
        statsdir.clean_stale(self.uid)
        self.stats_dir = statsdir.make(self.shm, self.uid, self.gid)

    # -- the admin process ---------------------------------------------------

    def _admin_check(self):
        """Keeps the admin process up; it leaves at once (code 0) when the
        config has no admin or metrics block."""
        if self.admin is not None:
            code = self.admin.poll()
            if code is None:
                return
            if code != 0:
                log.warning(
                    "admin process %d exited with %d; restarting it in %.0f s",
                    self.admin.pid,
                    code,
                    ADMIN_BACKOFF,
                )
                self.admin_next = time.monotonic() + ADMIN_BACKOFF
            else:
                self.admin_next = float("inf")
            self.admin = None
        if time.monotonic() < self.admin_next or self.stopping:
            return
        cmd = [
            self.python,
            "-P",
            "-m",
            "pyworker",
            "admin",
            "--shm",
            self.shm,
            "--config",
            self.config_path,
            "--stats-dir",
            self.stats_dir,
        ] + self._user_args()
        self.admin = subprocess.Popen(
            cmd, close_fds=True, env=self._child_env()
        )

    def _admin_stop(self):
        if self.admin is not None:
            self.admin.terminate()
            try:
                self.admin.wait(ADMIN_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.admin.kill()
                self.admin.wait()
            self.admin = None

    def _reap(self):
        """Collects dead workers; replaces those that were not retired."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.admin is not None and pid == self.admin.pid:
                # Popen.poll() would find it reaped: keep its code there
                self.admin.returncode = (
                    os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1
                )
                continue
            entry = self.procs.pop(pid, None)
            self.started.pop(pid, None)
            if entry is None:
                continue
            index = entry[0]
            # a worker that never served failed to start: a crash loop
            served = self.region.consumer_state(index) in ("live", "draining")
            self.region.retire_consumer(index)
            if pid in self.retiring:
                self.retiring.discard(pid)
                log.info(
                    "worker pid %d (consumer %d) left after draining",
                    pid,
                    index,
                )
                continue
            if self.stopping:
                continue
            self.restarts += 1
            self._failures = 0 if served else self._failures + 1
            lived = time.time() - self.started_at.pop(pid, 0.0)
            self._backoff = (
                0.0 if served else min(5.0, max(0.1, self._backoff * 2))
            )
            log.warning(
                "worker pid %d (consumer %d) died (%s) after %.1fs; "
                "replacing it%s",
                pid,
                index,
                _status_text(status),
                lived,
                " in %.1fs" % self._backoff if self._backoff else "",
            )
            self._respawn_at.append(time.monotonic() + self._backoff)
            self._write_stats()

    def _pool_state(self):
        """Tells nginx whether to hold requests for a worker while none is
        live: yes while workers start, no once they keep failing."""
        live = any(
            self.region.consumer_state(index) == "live"
            for index, _ in self.procs.values()
        )
        if live:
            state = "running"
        elif self._failures >= FAIL_LIMIT:
            state = "failed"
        else:
            state = "starting"
        if self.region.pool_state != state:
            if state == "failed":
                log.error(
                    "%d workers in a row failed to start: requests "
                    "take the fallback at once until one serves",
                    self._failures,
                )
            self.region.pool_state = state

    def _respawn(self):
        """Starts the replacements that are due (at once, unless workers
        keep failing to start: then with a growing delay)."""
        now = time.monotonic()
        due = [t for t in self._respawn_at if t <= now]
        self._respawn_at = [t for t in self._respawn_at if t > now]
        for _ in due:
            self._spawn()

    def _tick(self):
        if self._respawn_at:
            return max(
                0.01, min(TICK, min(self._respawn_at) - time.monotonic())
            )
        return TICK

    def _live_pids(self):
        return [pid for pid in self.procs if pid not in self.retiring]

    def _wait_live(self, pid):
        """Waits until worker pid serves; False if it died or took too
        long, or if a stop or a newer reload came meanwhile."""
        deadline = time.monotonic() + START_TIMEOUT
        while (
            time.monotonic() < deadline
            and not self.stopping
            and not self.reload_asked
        ):
            entry = self.procs.get(pid)
            if entry is None:
                return False
            if self.region.consumer_state(entry[0]) == "live":
                return True
            self._sleep(0.02)
            # a worker that dies meanwhile is replaced as at any time
            self._reap()
            self._respawn()
            self._pool_state()
        return False

    def _wait_all_live(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            self._reap()
            self._respawn()
            self._pool_state()
            if all(
                self.region.consumer_state(index) == "live"
                for index, _ in self.procs.values()
            ):
                return
            self._sleep(0.02)

    def _drain(self, pid):
        entry = self.procs.get(pid)
        if entry is None:
            return
        self.retiring.add(pid)
        self.region.drain_consumer(entry[0])
        try:
            os.kill(pid, signal.SIGUSR1)  # it may sleep: look now
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while pid in self.procs and time.monotonic() < deadline:
            self._sleep(0.02)
            self._reap()
        if pid in self.procs:
            log.warning(
                "worker pid %d did not drain in %.0f s; stopping it",
                pid,
                DRAIN_TIMEOUT,
            )
            os.kill(pid, signal.SIGTERM)

    # -- reload ---------------------------------------------------------------

    def _check_config(self, path, shown=None):
        """Runs `pyworker check` on path; its complaints name shown, the
        file the copy at path was taken from."""
        proc = subprocess.run(
            [self.python, "-P", "-m", "pyworker", "check", path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            for line in (proc.stdout + proc.stderr).splitlines():
                log.error(
                    "reload refused: %s", line.replace(path, shown or path)
                )
            return False
        return True

    def _accepted_at_start(self):
        """The config to start on: the copy accepted last when nginx
        respawns this supervisor with no reload in between (the file may
        have been refused since), else a copy of the file, which nginx
        checked when it read its own config."""
        seq = self.orders.seq if self.orders is not None else 0
        self.accepted = AcceptedConfig(
            self.shm, (self.parent,) + self.region_id
        )
        if self.orders is not None:
            kept = self.accepted.restore(seq)
            if kept is not None:
                log.warning(
                    "starting on the config accepted last (kept in %s), "
                    "not %s as it is now",
                    kept,
                    self.source_config,
                )
                self.source_config = self.accepted.source or self.source_config
                return kept
        return (
            self.accepted.accept(self.source_config, seq) or self.source_config
        )

    def reload(self):
        """Rolls the workers one at a time onto the config nginx names (on
        nginx's reload, or the one it was started with on SIGHUP), or,
        asked by the store, onto its new filter config."""
        asked, self.reload_asked = self.reload_asked, None
        if asked == "store":
            path = self.discovery.choose_config(
                self.base_config, self._check_config
            )
            if path == self.config_path:
                return  # refused: the live config serves on
        else:
            desired, source = asked
            seq = self.orders.seq if self.orders is not None else 0
            base = self.accepted.accept(source, seq, self._check_config)
            if base is None:
                log.error(
                    "keeping the running workers on %s", self.config_path
                )
                return
            self.source_config = source
            self.base_config = base
            self.workers = desired
            path = self._discovery_setup()
        self.config_path = path
        self.reloads += 1
        # the admin API serves the new config (and its new ports)
        self._admin_stop()
        self.admin_next = 0.0
        # every worker of the config before, and those of a roll before
        # this one that did not end, is replaced
        self.outgoing = self._live_pids()
        log.info(
            "reload: rolling %d worker(s) onto %s", len(self.outgoing), path
        )
        self._roll(wait=True)

    def _serves(self, pid):
        return self.region.consumer_state(self.procs[pid][0]) == "live"

    def _roll(self, wait):
        """Replaces the outgoing workers one at a time: one is drained
        once a worker on the new config serves in its stead.  A new
        worker that does not serve within START_TIMEOUT (a slow or
        failing start() hook) does not end the roll: the outgoing ones
        serve meanwhile, it is replaced as any worker is if it dies, and
        the main loop (``wait`` False) goes on with the roll once it
        serves, so that one config serves in the end, with ``workers``
        workers."""
        while not self.stopping:
            # an outgoing worker that never served (a roll before this one
            # that had not ended) holds no request: it goes at once
            for pid in self.outgoing:
                if pid in self._live_pids() and not self._serves(pid):
                    self._retire_unserved(pid)
            self.outgoing = [
                pid for pid in self.outgoing if pid in self._live_pids()
            ]
            if not self.outgoing:
                break
            fresh = [p for p in self._live_pids() if p not in self.outgoing]
            starting = [pid for pid in fresh if not self._serves(pid)]
            if starting or self._respawn_at:
                if wait and starting and self._wait_live(starting[0]):
                    continue
                if wait and not (self.stopping or self.reload_asked):
                    log.error(
                        "reload: a worker on the new config does not "
                        "serve yet (see above); the %d worker(s) before "
                        "serve until one does",
                        len(self.outgoing),
                    )
                return
            if len(fresh) + len(self.outgoing) <= self.workers:
                if self._spawn() is None:
                    return
            else:
                # every outgoing worker serves: one of them, or a new one,
                # is left serving after this one goes
                self._drain(self.outgoing.pop(0))
        if self.stopping:
            return
        self._settle()
        log.info("reload done: %d worker(s)", len(self._live_pids()))
        self._write_stats()

    def _retire_unserved(self, pid, why="never served its config"):
        log.info("reload: worker pid %d %s; stopping it", pid, why)
        self.retiring.add(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _settle(self):
        """After a roll: ``workers`` workers, counting those due to be
        replaced (an outgoing worker that died mid-roll was replaced on
        the new config besides the roll's own).  One too many goes: one
        that does not serve yet at once, else one drained."""
        live = self._live_pids()
        extra = len(live) + len(self._respawn_at) - self.workers
        unserved = [pid for pid in live if not self._serves(pid)]
        serving = [pid for pid in live if self._serves(pid)]
        while extra > 0 and unserved:
            self._retire_unserved(unserved.pop(), "is one worker too many")
            extra -= 1
        while extra > 0 and len(serving) > 1:
            self._drain(serving.pop())
            extra -= 1
        while len(self._live_pids()) + len(self._respawn_at) < self.workers:
            new = self._spawn()
            if new is None or not self._wait_live(new):
                break

    # -- life -----------------------------------------------------------------

    def _attach(self):
        deadline = time.monotonic() + 10
        while True:
            try:
                return Region.attach(self.shm)
            except RingError as exc:
                if time.monotonic() > deadline or "ABI" in str(exc):
                    raise
                time.sleep(0.05)

    def _region_identity(self):
        st = os.stat(os.path.join(statsdir.SHM, self.shm.lstrip("/")))
        return st.st_dev, st.st_ino

    def _nginx_gone(self):
        if self.channel is not None:
            # spawned by nginx: the kernel's parent-death signal stops it,
            # this is the check for a master that died before it was set
            if os.getppid() != self.parent:
                return "the nginx master %d is gone" % self.parent
            return None
        try:
            if self._region_identity() != self.region_id:
                return "the region was replaced"
        except OSError:
            return "the region was removed"
        return None

    def _take_over(self):
        """What a supervisor that died left in the region: entries of
        workers that died with it are retired (nginx re-queues what they
        held), and any that outlived it are asked to drain and leave by
        themselves.  No pid read from the region is ever signalled."""
        ours = {index for index, _ in self.procs.values()}
        for c in self.region.stats()["consumers"]:
            if c["state"] in ("empty", "dead") or c["index"] in ours:
                continue
            if c["pid"] and proc_alive(c["pid"]):
                log.warning(
                    "worker pid %d (consumer %d) of an earlier "
                    "supervisor is alive: draining it",
                    c["pid"],
                    c["index"],
                )
                self.region.drain_consumer(c["index"])
            else:
                self.region.retire_consumer(c["index"])

    def run(self):
        setup_logging(None, role="supervisor", level=logging.INFO)
        self._install_signals()
        try:
            self.region = self._attach()
            self.region_id = self._region_identity()
            self._stats_dir_make()
        except (RingError, OSError) as exc:
            log.error("the supervisor cannot start on %s: %s", self.shm, exc)
            return 2
        self.region.supervisor_pid = os.getpid()
        log.info(
            "supervisor pid %d for region %s, %d worker(s)",
            os.getpid(),
            self.shm,
            self.workers,
        )
        self.base_config = self._accepted_at_start()
        self.config_path = self._discovery_setup()
        for _ in range(self.workers):
            self._spawn()
        self._pool_state()
        # What a supervisor before left is retired once these serve: nginx
        # then re-queues the requests its dead workers held onto them, and
        # meanwhile queues new ones behind those instead of giving up.
        self._wait_all_live(START_TIMEOUT)
        self._take_over()
        self._reaped_at = time.monotonic()
        try:
            while not self.stopping:
                self._reap()
                self._respawn()
                self._pool_state()
                if self.reload_asked:
                    self.reload()
                elif self.outgoing:
                    self._roll(wait=False)
                self._admin_check()
                self.region.reap()
                gone = self._nginx_gone()
                if gone:
                    log.warning("%s; stopping the workers", gone)
                    break
                self._sleep(self._tick())
            if self.quitting and not self.terminating:
                self._serve_nginx_out()
        finally:
            self.stop()
        return 0

    def _serve_nginx_out(self):
        """On nginx's quit its workers finish their requests, some of
        them at the filters: the pool serves until the last has left."""
        deadline = time.monotonic() + QUIT_TIMEOUT
        while time.monotonic() < deadline and not self.terminating:
            self._reap()
            self.region.reap()
            if not any(
                p["state"] in ("owned", "claiming")
                for p in self.region.stats()["producers"]
            ):
                return
            self._sleep(0.05)

    def stop(self):
        self.stopping = True
        if self.region is not None:
            # nginx holds no request for a worker that will not come
            self.region.pool_state = "stopped"
        self._admin_stop()
        if self.discovery is not None:
            self.discovery.stop()
        for pid in list(self.procs):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (
            TERMINATE_TIMEOUT if self.terminating else STOP_TIMEOUT
        )
        while self.procs and time.monotonic() < deadline:
            self._sleep(0.02)
            self._reap()
        for pid in list(self.procs):
            proc = self.procs[pid][1]
            if proc.poll() is None:
                log.warning(
                    "worker pid %d had not left %.1f s after it was told "
                    "to stop; killed (its tasks and stop() hooks cut "
                    "short)",
                    pid,
                    TERMINATE_TIMEOUT if self.terminating else STOP_TIMEOUT,
                )
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
            self.region.retire_consumer(self.procs.pop(pid)[0])
        statsdir.remove(self.stats_dir, self.uid)
        if self.accepted is not None:
            self.accepted.remove()


def _status_text(status):
    if os.WIFSIGNALED(status):
        return "signal %d" % os.WTERMSIG(status)
    return "exit code %d" % os.WEXITSTATUS(status)
