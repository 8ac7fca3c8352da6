"""The supervisor's side of service discovery: the one source the MOSN
config names, kept running.

- ``service_file``: the supervisor stats the file itself (filewatch).
- ``etcd``, ``xds``: a child process, ``pyworker discover``, holds the
  connection and writes the endpoint table; it is restarted if it dies
  (the table keeps its endpoints meanwhile).  It gives up root unless it
  also fetches the filter config (etcd ``config_key``): that config is
  loaded with the rights nginx started with, so the process fetching it
  must not be one the workers' user can touch.

The filter config from etcd reaches the supervisor as lines on the
child's stdout.  The store's ``servers`` replace the file's, in a copy of
the file written to a private directory; the copy is checked as a reload
checks the file, and the workers roll onto it one by one.  A copy that
fails the check is refused: the error log says why, the metric counts
it, and the last good one serves on.
"""

import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time

from pyworker.api import ConfigError
from pyworker.discovery.etcd import check_config_value
from pyworker.discovery.filewatch import Watcher
from pyworker.discovery.options import discovery_of
from pyworker.atomic import write_json

log = logging.getLogger("pyworker.discovery")

CONFIG_WAIT = 3.0  # at start, for the store's filter config
RESTART_MIN = 0.5  # before restarting a discovery process that died
RESTART_MAX = 10.0
SOURCE_STATS = "discovery.json"
CONFIG_STATS = "discovery-config.json"
LINE_MAX = 4 << 20  # a filter config value larger than this is refused


class Discovery:
    def __init__(self, region, shm, stats_dir, python, user_args=()):
        self.region = region
        self.shm = shm
        self.stats_dir = stats_dir
        self.python = python
        self.user_args = list(user_args)
        self.spec = None
        self.watcher = None  # the service file's
        self.file_stats = None
        self.child = None  # the discovery process
        self.child_config = None  # the config it was started with
        self.restart_at = 0.0
        self.backoff = RESTART_MIN
        self.started_at = 0.0
        self.buffer = b""
        self.candidate = None  # (servers, revision) not checked yet
        self.good = None  # (servers, revision) live
        self.dir = None  # where the merged configs are written
        self.source = None  # the file nginx names, for config_dump
        self.config_errors = 0
        self.config_error = None

    # -- the source -----------------------------------------------------------

    def setup(self, base):
        """Follows the source the config at ``base`` names (at start and on
        every reload)."""
        try:
            spec = discovery_of(base)
        except ConfigError as exc:
            log.error(
                "service discovery: %s; keeping the current endpoints", exc
            )
            return
        if spec == self.spec and spec is not None:
            if self.watcher is not None:
                self._poll_file(force=True)
            elif self.child_config != base:
                self._stop_child()  # it reads the new file's block
                self._start_child(base)
            return
        self._stop_child()
        if self.spec is not None and spec is None:
            log.warning(
                "service discovery: the config names no source any "
                "more; the endpoint table keeps what it has"
            )
        if getattr(spec, "config_key", None) != getattr(
            self.spec, "config_key", None
        ):
            self.candidate = self.good = None
        self.spec = spec
        self.watcher = None
        if spec is None:
            return
        log.info("service discovery: following %s", spec.describe())
        if spec.kind == "file":
            self.watcher = Watcher(spec.path, self.region)
            self._poll_file(force=True)
            return
        self._start_child(base)
        if self.fetches_config() and self.good is None:
            # the workers should start on the store's listeners
            deadline = time.monotonic() + CONFIG_WAIT
            while (
                self.candidate is None
                and time.monotonic() < deadline
                and self.child.poll() is None
            ):
                self._read(timeout=0.05)

    def fetches_config(self):
        return getattr(self.spec, "config_key", None) is not None

    def poll(self, force=False):
        """Keeps the source going; True when the store handed over a new
        filter config (the supervisor then rolls the workers)."""
        if self.watcher is not None:
            self._poll_file(force)
            return False
        if self.spec is None or self.spec.kind == "file":
            return False
        if self.child is not None and self.child.poll() is not None:
            lived = time.monotonic() - self.started_at
            self.backoff = (
                RESTART_MIN
                if lived > 30
                else min(RESTART_MAX, self.backoff * 2)
            )
            log.error(
                "service discovery: the discovery process %d exited "
                "(code %s); restarting it in %.1f s, the endpoint "
                "table keeps what it has",
                self.child.pid,
                self.child.returncode,
                self.backoff,
            )
            self._close_child()
            self.restart_at = time.monotonic() + self.backoff
        if (
            self.child is None
            and self.child_config is not None
            and time.monotonic() >= self.restart_at
        ):
            self._start_child(self.child_config)
        before = self.candidate
        self._read()
        return self.candidate is not None and self.candidate is not before

    def _poll_file(self, force=False):
        self.watcher.poll(force=force)
        stats = self.watcher.stats()
        if stats != self.file_stats:
            self.file_stats = stats
            try:
                write_json(os.path.join(self.stats_dir, SOURCE_STATS), stats)
            except OSError as exc:
                log.warning("cannot write the discovery stats: %s", exc)

    def _start_child(self, base):
        cmd = [
            self.python,
            "-P",
            "-m",
            "pyworker",
            "discover",
            "--shm",
            self.shm,
            "--config",
            base,
            "--stats-dir",
            self.stats_dir,
        ] + self.user_args
        self.child = subprocess.Popen(
            cmd,
            close_fds=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE
            if self.fetches_config()
            else subprocess.DEVNULL,
        )
        if self.child.stdout is not None:
            fd = self.child.stdout.fileno()
            fcntl.fcntl(
                fd,
                fcntl.F_SETFL,
                fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK,
            )
        self.child_config = base
        self.started_at = time.monotonic()
        self.buffer = b""
        log.info(
            "service discovery: process %d follows %s",
            self.child.pid,
            self.spec.describe(),
        )

    def _close_child(self):
        if self.child is not None and self.child.stdout is not None:
            self.child.stdout.close()
        self.child = None

    def _stop_child(self):
        if self.child is None:
            self.child_config = None
            return
        self.child.terminate()
        try:
            self.child.wait(3)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()
        except ChildProcessError:
            pass
        self._close_child()
        self.child_config = None

    def _read(self, timeout=0.0):
        """Takes the lines the child wrote: each a new filter config."""
        if self.child is None or self.child.stdout is None:
            return
        if timeout:
            import select

            select.select([self.child.stdout], [], [], timeout)
        while True:
            try:
                data = os.read(self.child.stdout.fileno(), 1 << 16)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                raise
            if not data:
                break
            self.buffer += data
            if len(self.buffer) > LINE_MAX and b"\n" not in self.buffer:
                log.error(
                    "filter config: a value over %d bytes; refused", LINE_MAX
                )
                self.buffer = b""
                self._count_error("too large")
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self._message(line)

    def _message(self, line):
        try:
            msg = json.loads(line)
            value, revision = msg["config"], int(msg["revision"])
        except (ValueError, KeyError, TypeError):
            log.error(
                "filter config: a message the discovery process "
                "should not have sent: %.100r",
                line,
            )
            return
        key = self.spec.config_key
        try:
            servers = check_config_value(value)
        except ConfigError as exc:
            self._refused_value(revision, str(exc))
            return
        if self.good is not None and self.good[1] == revision:
            return
        log.info(
            "filter config: etcd key %s revision %d: rolling the "
            "workers onto it",
            key,
            revision,
        )
        self.candidate = (servers, revision)

    # -- the filter config -------------------------------------------------

    def choose_config(self, base, check):
        """The config the workers should load: ``base`` with the store's
        listeners (the new ones if they pass ``check(path)``, else the
        last good ones), or ``base`` itself."""
        if not self.fetches_config():
            return base
        for which in ("candidate", "good"):
            chosen = getattr(self, which)
            if chosen is None:
                continue
            path = self._merge(base, *chosen)
            if path is not None and check(path):
                if which == "candidate":
                    log.warning(
                        "filter config: etcd key %s revision %d is live",
                        self.spec.config_key,
                        chosen[1],
                    )
                self.good, self.candidate = chosen, None
                self.config_error = None
                self._write_stats()
                return path
            if which == "candidate":
                kept = (
                    f"revision {self.good[1]} serves on"
                    if self.good
                    else "the file's listeners serve on"
                )
                self._refused_value(
                    chosen[1],
                    "it fails the check (the "
                    "reload refused lines say why); " + kept,
                    logged=False,
                )
                self.candidate = None
            else:
                log.error(
                    "filter config: etcd revision %d fails the check "
                    "with this file; the file's listeners serve",
                    chosen[1],
                )
        return base

    def _refused_value(self, revision, why, logged=True):
        key = self.spec.config_key
        if logged:
            kept = (
                f"revision {self.good[1]} serves on"
                if self.good
                else "the listeners stay as they are"
            )
            why = f"{why}; {kept}"
        log.error(
            "filter config: etcd key %s revision %d refused: %s",
            key,
            revision,
            why,
        )
        self._count_error(f"revision {revision}: {why}")

    def _count_error(self, why):
        self.config_errors += 1
        self.config_error = why
        self._write_stats()

    def _merge(self, base, servers, revision):
        """A copy of ``base`` with the store's servers; its path."""
        try:
            with open(base, "rb") as f:
                doc = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError) as exc:
            log.error("filter config: cannot read %s: %s", base, exc)
            return None
        if not isinstance(doc, dict):
            return None
        doc["servers"] = servers
        options = doc.get("pyworker")
        if not isinstance(options, dict):
            options = doc["pyworker"] = {}
        # the admin API's config_dump shows which revision is live
        options["config_from"] = {
            "etcd_key": self.spec.config_key,
            "revision": revision,
            "file": self.source or base,
        }
        if self.dir is None:
            self._remove_stale_dirs()
            self.dir = tempfile.mkdtemp(prefix=self._dir_prefix())
        path = os.path.join(self.dir, f"mosn-r{revision}.json")
        write_json(path, doc, mode=0o600, indent=1)
        self._prune(keep=path)
        return path

    def _dir_prefix(self):
        return "pyworker-config-%s-" % self.shm.strip("/")

    def _remove_stale_dirs(self):
        """Removes what a supervisor of this region that died left: its
        directories, ours (owner, mode 0700), no link followed."""
        import stat

        base = tempfile.gettempdir()
        prefix = self._dir_prefix()
        try:
            names = os.listdir(base)
        except OSError:
            return
        for name in names:
            if not name.startswith(prefix):
                continue
            path = os.path.join(base, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if (
                stat.S_ISDIR(st.st_mode)
                and st.st_uid == os.geteuid()
                and stat.S_IMODE(st.st_mode) == 0o700
            ):
                shutil.rmtree(path, ignore_errors=True)

    def _prune(self, keep):
        live = {keep}
        if self.good is not None:
            live.add(os.path.join(self.dir, f"mosn-r{self.good[1]}.json"))
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if path not in live:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _write_stats(self):
        try:
            write_json(
                os.path.join(self.stats_dir, CONFIG_STATS),
                {
                    "key": getattr(self.spec, "config_key", None),
                    "revision": self.good[1] if self.good else None,
                    "errors": self.config_errors,
                    "error": self.config_error,
                },
            )
        except OSError as exc:
            log.warning("cannot write the discovery stats: %s", exc)

    def stop(self):
        self._stop_child()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
