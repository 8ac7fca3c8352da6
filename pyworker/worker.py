"""One Python worker: loads the filter chains, drops privileges, attaches
to the ring as a consumer and serves batches until told to stop."""

import logging
import os
import signal
import time

from shm_ring import Region

from pyworker import config as config_mod
from pyworker.dispatch import Dispatcher
from pyworker.logs import setup_logging
from pyworker.metrics import TIMING_SAMPLE, WorkerStats
from pyworker.privileges import die_with_parent, drop_privileges

log = logging.getLogger("pyworker.worker")

# a draining worker leaves once its rings stay empty this long
DRAIN_QUIET_MS = 50
# at idle a worker wakes up this rarely (a stop signal wakes it at once)
IDLE_WAIT_MS = 10000


class Worker:
    """Serves one consumer index of the region."""

    def __init__(self, shm, index, config_path, uid=None, gid=None,
                 stats_dir=None):
        self.shm = shm
        self.stats_dir = stats_dir
        self.index = index
        self.config_path = config_path
        self.uid = uid
        self.gid = gid
        self.stopping = False

    def _stop(self, signum, frame):
        self.stopping = True

    def run(self):
        die_with_parent()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # the supervisor's nudge to look at the state now (drain)
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)

        # the config and the filters' code are read with the rights nginx
        # had; requests are served with those of nginx's workers
        gateway = config_mod.load(self.config_path)
        setup_logging(gateway, role="worker")
        drop_privileges(self.uid, self.gid)

        region = Region.attach(self.shm)
        consumer = region.consumer(self.index)
        consumer.set_spin(gateway.spin_us)
        self.stats = WorkerStats(self.stats_dir, "worker-%d" % os.getpid())
        for name, chain in gateway.chains.items():
            chain.set_observer(self.stats.observer(name), TIMING_SAMPLE)
        self.chains = gateway.chains
        dispatch = Dispatcher(gateway.chains, self.stats)
        log.info("worker %d (pid %d) serves %s as consumer %d",
                 self.index, os.getpid(), ", ".join(sorted(gateway.chains)),
                 consumer.index)
        try:
            self._serve(consumer, dispatch)
        finally:
            dispatch.fold_counts()
            self.stats.flush(self.chains)
            region.close()
        return 0

    def _serve(self, consumer, dispatch):
        serve = consumer.serve_batch
        wait = consumer.wait
        maybe_flush = self.stats.maybe_flush
        fold = dispatch.fold_counts

        def flush(chains):
            # the dispatcher's counts go in once a batch, not per request
            fold()
            return maybe_flush(chains)

        chains = self.chains
        dirty = False
        while not self.stopping:
            if serve(dispatch, 64):
                dirty = True
                flush(chains)
                continue
            # signals end the wait; the timeout only bounds a late flush
            timeout = IDLE_WAIT_MS
            if dirty:
                # written once a second at most, and not at all when idle
                if flush(chains):
                    dirty = False
                else:
                    timeout = 1 + int(1000 * max(
                        0.0, self.stats.next_flush - time.monotonic()))
            if consumer.state == "draining":
                # nginx stopped sending here: finish what is queued, then go
                if not wait(DRAIN_QUIET_MS) and not serve(dispatch, 64):
                    break
                continue
            wait(timeout)
        # answer what is queued, so no request waits for its timeout
        deadline = time.monotonic() + 1.0
        while serve(dispatch, 64) and time.monotonic() < deadline:
            pass
