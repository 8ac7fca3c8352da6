"""The supervisor of the Python worker pool: starts the workers, replaces
one that dies, rolls them one at a time on reload, reaps what dead peers
left in the ring, keeps the endpoint table in step with its discovery
source (pyworker.discovery), and leaves with nginx."""

import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time

from shm_ring import Region, RingError, proc_alive

from pyworker.discovery.supervised import Discovery
from pyworker.logs import setup_logging
from pyworker.metrics import write_json

log = logging.getLogger("pyworker.supervisor")

TICK = 0.5              # seconds between housekeeping rounds at idle
START_TIMEOUT = 15.0    # for a new worker to load its config and attach
DRAIN_TIMEOUT = 10.0    # for a draining worker to finish and leave
STOP_TIMEOUT = 3.0      # for workers to leave on stop, before SIGKILL
ADMIN_BACKOFF = 5.0     # between restarts of an admin process that fails
# workers that fail to start this many times in a row: the pool is marked
# failed, and nginx stops holding requests for a worker until one serves
FAIL_LIMIT = 3


class Supervisor:
    def __init__(self, shm, config_path, workers=1, uid=None, gid=None,
                 python=None):
        self.shm = shm
        self.config_path = config_path  # what the workers load
        self.base_config = config_path  # the file nginx names
        self.workers = workers
        self.uid = uid
        self.gid = gid
        self.python = python or sys.executable
        self.region = None
        self.procs = {}          # pid -> (consumer index, Popen)
        self.retiring = set()    # pids drained on purpose
        self.restarts = 0
        self.reloads = 0
        self.started = {}        # pid -> start time
        self.started_at = {}     # pid -> start time, for crash loops
        self._backoff = 0.0      # grows while workers fail to start
        self._failures = 0       # workers in a row that never served
        self._respawn_at = []    # when to start replacements
        self.stats_dir = "/dev/shm/%s.stats" % shm.lstrip("/")
        self.admin = None        # the admin process
        self.admin_next = 0.0
        self.stopping = False
        self.reload_asked = False
        self.discovery = None    # the endpoints' source (and config's)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- signals ------------------------------------------------------------

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self.reload_asked = True
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True

    def _install_signals(self):
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda s, f: None)

    def _sleep(self, seconds):
        try:
            select.select([self._wake_r], [], [], seconds)
            os.read(self._wake_r, 512)
        except (BlockingIOError, InterruptedError):
            pass
        # every wait of the supervisor, rolls and drains included, keeps
        # the service file watched; a look is a stat, twice a second
        self._discover()

    # -- service discovery ----------------------------------------------------

    def _discovery_setup(self):
        """Follows the source the MOSN config names (at start and on every
        reload); returns the config the workers should load: the file, or
        the file with the store's listeners (checked)."""
        if self.discovery is None:
            self.discovery = Discovery(self.region, self.shm,
                                       self.stats_dir, self.python,
                                       self._user_args())
        self.discovery.setup(self.base_config)
        return self.discovery.choose_config(self.base_config,
                                            self._check_config)

    def _discover(self, force=False):
        if self.discovery is None:
            return
        try:
            if self.discovery.poll(force=force) and not self.reload_asked:
                self.reload_asked = "store"     # a new filter config
        except Exception:
            # the pool must not go down with the endpoints
            log.exception("service discovery failed")

    # -- workers --------------------------------------------------------------

    def _spawn(self):
        index = self.region.alloc_consumer()
        if index < 0:
            log.error("no free consumer entry in the region for a new worker")
            return None
        cmd = [self.python, "-P", "-m", "pyworker", "worker", "--shm", self.shm,
               "--index", str(index), "--config", self.config_path,
               "--stats-dir", self.stats_dir] + self._user_args()
        proc = subprocess.Popen(cmd, close_fds=True)
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

    def _write_stats(self):
        """What only the supervisor knows, for the admin API."""
        try:
            write_json(os.path.join(self.stats_dir, "supervisor.json"), {
                "pid": os.getpid(), "restarts": self.restarts,
                "reloads": self.reloads, "config": self.config_path,
                "workers": [{"pid": pid, "index": index,
                             "started": self.started.get(pid)}
                            for pid, (index, _) in self.procs.items()
                            if pid not in self.retiring],
            })
        except OSError as exc:
            log.warning("cannot write the supervisor's stats: %s", exc)

    def _stats_dir_make(self):
        shutil.rmtree(self.stats_dir, ignore_errors=True)
        os.makedirs(self.stats_dir, mode=0o700)
        if self.uid is not None and os.geteuid() == 0:
            os.chown(self.stats_dir, self.uid, self.gid)

    # -- the admin process ------------------------------------------------------

    def _admin_check(self):
        """Keeps the admin process up; it leaves at once (code 0) when the
        config has no admin or metrics block."""
        if self.admin is not None:
            code = self.admin.poll()
            if code is None:
                return
            if code != 0:
                log.warning("admin process %d exited with %d; restarting it "
                            "in %.0f s", self.admin.pid, code, ADMIN_BACKOFF)
                self.admin_next = time.monotonic() + ADMIN_BACKOFF
            else:
                self.admin_next = float("inf")
            self.admin = None
        if time.monotonic() < self.admin_next or self.stopping:
            return
        cmd = [self.python, "-P", "-m", "pyworker", "admin", "--shm", self.shm,
               "--config", self.config_path, "--stats-dir",
               self.stats_dir] + self._user_args()
        self.admin = subprocess.Popen(cmd, close_fds=True)

    def _admin_stop(self):
        if self.admin is not None:
            self.admin.terminate()
            try:
                self.admin.wait(STOP_TIMEOUT)
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
                self.admin.returncode = (os.WEXITSTATUS(status)
                                         if os.WIFEXITED(status) else 1)
                continue
            entry = self.procs.pop(pid, None)
            self.started.pop(pid, None)
            if entry is None:
                continue
            index = entry[0]
            # a worker that never served failed to start: a crash loop
            served = self.region.consumer_state(index) in ("live",
                                                            "draining")
            self.region.retire_consumer(index)
            if pid in self.retiring:
                self.retiring.discard(pid)
                log.info("worker pid %d (consumer %d) left after draining",
                         pid, index)
                continue
            if self.stopping:
                continue
            self.restarts += 1
            self._failures = 0 if served else self._failures + 1
            lived = time.time() - self.started_at.pop(pid, 0.0)
            self._backoff = 0.0 if served else min(
                5.0, max(0.1, self._backoff * 2))
            log.warning("worker pid %d (consumer %d) died (%s) after %.1fs; "
                        "replacing it%s", pid, index, _status_text(status),
                        lived, " in %.1fs" % self._backoff
                        if self._backoff else "")
            self._respawn_at.append(time.monotonic() + self._backoff)
            self._write_stats()

    def _pool_state(self):
        """Tells nginx whether to hold requests for a worker while none is
        live: yes while workers start, no once they keep failing."""
        live = any(self.region.consumer_state(index) == "live"
                   for index, _ in self.procs.values())
        if live:
            state = "running"
        elif self._failures >= FAIL_LIMIT:
            state = "failed"
        else:
            state = "starting"
        if self.region.pool_state != state:
            if state == "failed":
                log.error("%d workers in a row failed to start: requests "
                          "take the fallback at once until one serves",
                          self._failures)
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
            return max(0.01, min(TICK, min(self._respawn_at) -
                                 time.monotonic()))
        return TICK

    def _live_pids(self):
        return [pid for pid in self.procs if pid not in self.retiring]

    def _wait_live(self, pid):
        """Waits until worker pid serves; False if it died or took too long."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and not self.stopping:
            entry = self.procs.get(pid)
            if entry is None:
                return False
            if self.region.consumer_state(entry[0]) == "live":
                return True
            self._sleep(0.02)
            self._reap_quietly()
        return False

    def _reap_quietly(self):
        """Reaps during a roll without respawning what the roll replaces."""
        self._reap()

    def _drain(self, pid):
        entry = self.procs.get(pid)
        if entry is None:
            return
        self.retiring.add(pid)
        self.region.drain_consumer(entry[0])
        try:
            os.kill(pid, signal.SIGUSR1)     # it may sleep: look now
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while pid in self.procs and time.monotonic() < deadline:
            self._sleep(0.02)
            self._reap()
        if pid in self.procs:
            log.warning("worker pid %d did not drain in %.0f s; stopping it",
                        pid, DRAIN_TIMEOUT)
            os.kill(pid, signal.SIGTERM)

    # -- reload ---------------------------------------------------------------

    def _check_config(self, path):
        proc = subprocess.run([self.python, "-P", "-m", "pyworker", "check", path],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            for line in (proc.stdout + proc.stderr).splitlines():
                log.error("reload refused: %s", line)
            return False
        return True

    def reload(self):
        """Rolls the workers one at a time onto the config nginx names
        (or, asked by the store, onto its new filter config)."""
        by_store = self.reload_asked == "store"
        self.reload_asked = False
        if by_store:
            path = self.discovery.choose_config(self.base_config,
                                                self._check_config)
            if path == self.config_path:
                return              # refused: the live config serves on
        else:
            base = self.region.config_path or self.base_config
            desired = self.region.desired_workers or self.workers
            if not self._check_config(base):
                log.error("keeping the running workers on %s",
                          self.config_path)
                return
            self.base_config = base
            self.workers = desired
            path = self._discovery_setup()
        self.config_path = path
        self.reloads += 1
        # the admin API serves the new config (and its new ports)
        self._admin_stop()
        self.admin_next = 0.0
        old = self._live_pids()
        log.info("reload: rolling %d worker(s) onto %s", len(old), path)
        for pid in old:
            if self.stopping:
                return
            if len(self._live_pids()) <= self.workers:
                new = self._spawn()
                if new is None or not self._wait_live(new):
                    log.error("reload: a new worker did not start; the old "
                              "ones keep serving")
                    return
            self._drain(pid)
        while len(self._live_pids()) < self.workers:
            new = self._spawn()
            if new is None or not self._wait_live(new):
                break
        log.info("reload done: %d worker(s)", len(self._live_pids()))
        self._write_stats()

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

    def _nginx_gone(self):
        if not os.path.exists("/dev/shm/" + self.shm.lstrip("/")):
            return "the region was removed"
        master = self.region.master_pid
        if master and not proc_alive(master):
            return "the nginx master %d is gone" % master
        return None

    def run(self):
        setup_logging(None, role="supervisor", level=logging.INFO)
        self._install_signals()
        self.region = self._attach()
        self.region.supervisor_pid = os.getpid()
        log.info("supervisor pid %d for region %s, %d worker(s)",
                 os.getpid(), self.shm, self.workers)
        self._stats_dir_make()
        self.config_path = self._discovery_setup()
        for _ in range(self.workers):
            self._spawn()
        try:
            while not self.stopping:
                self._reap()
                self._respawn()
                self._pool_state()
                if self.reload_asked:
                    self.reload()
                self._admin_check()
                self.region.reap()
                gone = self._nginx_gone()
                if gone:
                    log.warning("%s; stopping the workers", gone)
                    break
                self._sleep(self._tick())
        finally:
            self.stop()
        return 0

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
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.procs and time.monotonic() < deadline:
            self._sleep(0.02)
            self._reap()
        for pid in list(self.procs):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.procs[pid][1].wait()
            self.region.retire_consumer(self.procs.pop(pid)[0])
        shutil.rmtree(self.stats_dir, ignore_errors=True)


def _status_text(status):
    if os.WIFSIGNALED(status):
        return "signal %d" % os.WTERMSIG(status)
    return "exit code %d" % os.WEXITSTATUS(status)
