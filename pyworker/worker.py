"""One Python worker: loads the filter chains, drops privileges, attaches
to the ring as a consumer and serves batches until told to stop."""

import logging
import os
import signal

from shm_ring import Region

from pyworker import config as config_mod
from pyworker.dispatch import Dispatcher
from pyworker.logs import setup_logging
from pyworker.privileges import die_with_parent, drop_privileges

log = logging.getLogger("pyworker.worker")

# a draining worker leaves once its rings stay empty this long
DRAIN_QUIET_MS = 50


class Worker:
    """Serves one consumer index of the region."""

    def __init__(self, shm, index, config_path, uid=None, gid=None):
        self.shm = shm
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

        # the config and the filters' code are read with the rights nginx
        # had; requests are served with those of nginx's workers
        gateway = config_mod.load(self.config_path)
        setup_logging(gateway, role="worker")
        drop_privileges(self.uid, self.gid)

        region = Region.attach(self.shm)
        consumer = region.consumer(self.index)
        dispatch = Dispatcher(gateway.chains)
        log.info("worker %d (pid %d) serves %s as consumer %d",
                 self.index, os.getpid(), ", ".join(sorted(gateway.chains)),
                 consumer.index)
        try:
            self._serve(consumer, dispatch)
        finally:
            region.close()
        return 0

    def _serve(self, consumer, dispatch):
        serve = consumer.serve_batch
        wait = consumer.wait
        while not self.stopping:
            if serve(dispatch, 64):
                continue
            if consumer.state == "draining":
                # nginx stopped sending here: finish what is queued, then go
                if not wait(DRAIN_QUIET_MS) and not serve(dispatch, 64):
                    break
                continue
            # the timeout only bounds how late a stop is noticed
            wait(1000)
        # answer what was taken, so no request waits for its timeout
        while serve(dispatch, 64):
            pass
