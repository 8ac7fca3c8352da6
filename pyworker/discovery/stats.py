"""What a discovery source tells the metrics: the source, the last
revision applied, when the last update was, errors by kind.  The
discovery process writes it to ``discovery.json`` in the stats directory
(at most every FLUSH_EVERY seconds, and at once after a change); the admin
process reads it at scrape time.

Error kinds:

    connect    the store or control plane could not be reached
    stream     a watch or ADS stream broke after it was up
    compacted  a watch resumed below etcd's compaction: a full resync
    value      a bad app value (kept the last good endpoints)
    config     a bad filter config (kept the last good listeners)
    nack       an xDS response refused (NACK sent)
    table      the endpoint table refused a write (a bound)
"""

import os
import time

from pyworker.atomic import write_json

FILE = "discovery.json"
FLUSH_EVERY = 0.5


class SourceStats:
    def __init__(self, source, stats_dir=None, clock=time.monotonic):
        self.source = source
        self.path = os.path.join(stats_dir, FILE) if stats_dir else None
        self.clock = clock
        self.revision = ""  # as the source says it (text)
        self.revision_number = None  # when the source has a number
        self.updated = None  # time.time() of the last update applied
        self.updates = 0
        self.errors = {}
        self.connected = False
        self.config_revision = None  # of the filter config handed over
        self._dirty = True
        self._next = 0.0

    def applied(self, revision, number=None, count=1):
        """``count`` updates applied, the last at ``revision``."""
        self.revision = str(revision)
        self.revision_number = number
        self.updated = time.time()
        self.updates += count
        self._dirty = True

    def moved(self, revision, number=None):
        """The source's revision moved with nothing to apply."""
        self.revision = str(revision)
        self.revision_number = number
        self._dirty = True

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self._dirty = True

    def set_connected(self, up):
        if up != self.connected:
            self.connected = up
            self._dirty = True

    def snapshot(self):
        return {
            "source": self.source,
            "pid": os.getpid(),
            "revision": self.revision,
            "revision_number": self.revision_number,
            "updated": self.updated,
            "updates": self.updates,
            "errors": dict(self.errors),
            "connected": self.connected,
            "config_revision": self.config_revision,
        }

    def flush(self, force=False):
        """Writes the file if something changed and it is time to."""
        if self.path is None or not self._dirty:
            return
        now = self.clock()
        if not force and now < self._next:
            return
        self._next = now + FLUSH_EVERY
        self._dirty = False
        try:
            write_json(self.path, self.snapshot())
        except OSError:
            self._dirty = True
