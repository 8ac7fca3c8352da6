"""Counters of one Python worker, kept in plain Python on the hot path and
written to a small file in the stats directory once a second; the admin
process adds every worker's file up at scrape time, so a scrape costs no
call into any worker."""

import bisect
import os
import time

from pyworker.atomic import write_json
from shm_ring.codec import ACTION_CONTINUE, ACTION_ERROR, ACTION_REPLY

# filter latency buckets, seconds: from 10 us to 2.5 s
BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

# a verdict's action as the requests counter names it
OUTCOMES = {
    ACTION_CONTINUE: "continue",
    ACTION_REPLY: "hijack",
    ACTION_ERROR: "error",
}
# the counted tables of a snapshot: rows of labels then a count
COUNTED = ("requests", "filters", "driver_errors", "tasks", "events")
FLUSH_EVERY = 1.0
# filter timing: one request in this many (a power of two) is timed
TIMING_SAMPLE = 8


class WorkerStats:
    """What one worker counts; flush() writes it for the admin process."""

    def __init__(self, stats_dir, name):
        self.path = (
            os.path.join(stats_dir, name + ".json") if stats_dir else None
        )
        self.requests = {}  # (chain, outcome) -> n
        self.tasks = {}  # (chain, outcome) -> n: requests that awaited
        self.latency = {}  # (chain, filter) -> [bucket counts..., sum]
        self.started = time.time()
        self.next_flush = 0.0

    def observer(self, chain):
        """The timing hook of one chain (made once, not per request); the
        chain counts outcomes itself, exactly."""
        latency = self.latency
        buckets = BUCKETS
        nb = len(BUCKETS)

        def observe(name, outcome, seconds):
            hist = latency.get((chain, name))
            if hist is None:
                hist = latency[(chain, name)] = [0] * (nb + 1) + [0.0]
            hist[bisect.bisect_left(buckets, seconds)] += 1
            hist[-1] += seconds

        return observe

    def request(self, chain, action):
        key = (chain, OUTCOMES.get(action, "error"))
        self.requests[key] = self.requests.get(key, 0) + 1

    def task(self, chain, outcome):
        """A request served as a task ended: answered, late, deadline,
        client_gone or stopped (see pyworker.inflight)."""
        key = (chain, outcome)
        self.tasks[key] = self.tasks.get(key, 0) + 1

    def snapshot(self, chains=None):
        driver_errors = []
        filters = []
        events = []
        for name, chain in (chains or {}).items():
            for filter_name, filt in chain.filters:
                n = getattr(filt, "driver_errors", None)
                if n is not None:
                    driver_errors.append([name, filter_name, n])
                # a filter's own counts: {event name: n}
                counted = getattr(filt, "events", None)
                if isinstance(counted, dict):
                    for event, n in counted.items():
                        events.append([name, filter_name, str(event), n])
            for (filter_name, outcome), n in chain.outcome_counts():
                filters.append([name, filter_name, outcome, n])
        return {
            "pid": os.getpid(),
            "started": self.started,
            "requests": [[c, o, n] for (c, o), n in self.requests.items()],
            "filters": filters,
            "latency": [[c, f, h] for (c, f), h in self.latency.items()],
            "driver_errors": driver_errors,
            "tasks": [[c, o, n] for (c, o), n in self.tasks.items()],
            "events": events,
        }

    def maybe_flush(self, chains, now=None):
        """Writes if a second has passed since the last write; True if so."""
        now = time.monotonic() if now is None else now
        if self.path is None or now < self.next_flush:
            return False
        self.next_flush = now + FLUSH_EVERY
        self.flush(chains)
        return True

    def flush(self, chains=None):
        if self.path is None:
            return
        write_json(self.path, self.snapshot(chains))


def merge(into, data):
    """Adds one worker's snapshot to a running total (same shape)."""
    for key in COUNTED:
        table = into.setdefault(key, {})
        for row in data.get(key, ()):
            k, n = tuple(row[:-1]), row[-1]
            table[k] = table.get(k, 0) + n
    latency = into.setdefault("latency", {})
    for chain, name, hist in data.get("latency", ()):
        total = latency.get((chain, name))
        if total is None:
            latency[(chain, name)] = list(hist)
        else:
            for i, v in enumerate(hist):
                total[i] += v
    return into


def to_rows(total):
    """A merged total back in the file's row shape (for the archive)."""
    out = {}
    for key in COUNTED:
        out[key] = [list(k) + [n] for k, n in total.get(key, {}).items()]
    out["latency"] = [
        [c, f, h] for (c, f), h in total.get("latency", {}).items()
    ]
    return out
