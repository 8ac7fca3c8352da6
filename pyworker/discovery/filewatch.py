"""The service file, watched by the supervisor.

The supervisor looks at the file's size, modification time and inode
every POLL_INTERVAL seconds (a stat, no read, while it does not change).
A file that changed is read and checked whole: if it is good, every app
whose endpoints differ is rewritten (one seqlocked write per app) and
apps gone from the file are emptied; if it is not, the table keeps the
last good endpoints and the supervisor logs why, in one line naming the
file, the key and the reason.
"""

import logging
import os
import time

from pyworker.discovery.servicefile import ServiceFileError, load
from pyworker.discovery.table import EndpointTable

log = logging.getLogger("pyworker.discovery")

POLL_INTERVAL = 0.5  # seconds between looks at the file


class Watcher:
    """Keeps the region's endpoint table in step with one service file.
    ``poll()`` is cheap: call it as often as you like."""

    kind = "file"

    def __init__(self, path, region, interval=POLL_INTERVAL, clock=None):
        self.path = path
        self.table = EndpointTable(region, path)
        self.interval = interval
        self.clock = clock or time.monotonic
        self.signature = False  # never looked
        self.next_look = 0.0
        self.good = None  # the last good endpoints, as applied
        self.error = None  # why the file is not used, if it is not
        self.applied = 0  # good versions applied
        self.updated = None  # time.time() of the last one
        self.errors = {}  # kind -> count

    def _stat(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return ("error", str(exc))
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def poll(self, force=False):
        """Looks at the file if it is time to; applies a change.  Returns
        True if the table was written."""
        now = self.clock()
        if not force and now < self.next_look:
            return False
        self.next_look = now + self.interval
        signature = self._stat()
        if signature == self.signature and not force:
            return False
        self.signature = signature
        try:
            apps = load(self.path)
        except ServiceFileError as exc:
            self._refuse("value", str(exc))
            return False
        try:
            changed = self.table.sync(apps)
        except Exception as exc:  # the table refused it: say why
            self._refuse("table", f"{self.path}: {exc}")
            return False
        if self.error is not None:
            log.warning("service file %s is good again", self.path)
        self.error = None
        self.good = apps
        self.applied += 1
        self.updated = time.time()
        return changed

    def _refuse(self, kind, why):
        if why != self.error:
            kept = (
                "the last good endpoints"
                if self.good is not None
                else "no endpoints (none was good yet)"
            )
            log.error("service discovery: %s; keeping %s", why, kept)
            self.errors[kind] = self.errors.get(kind, 0) + 1
        self.error = why

    def stats(self):
        """What the metrics say of this source."""
        return {
            "source": "file",
            "revision": str(self.applied),
            "updated": self.updated,
            "updates": self.applied,
            "errors": dict(self.errors),
            "connected": True,
            "error": self.error,
        }
