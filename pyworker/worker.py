"""One Python worker: loads the filter chains, drops privileges, starts the
filters, attaches to the ring as a consumer and serves until told to stop.

The worker runs an event loop (uvloop where installed, asyncio otherwise)
with the consumer's wake descriptor as a reader.  When work arrives it
takes requests in batches: chains of plain filters run inline, as they
always did; a request of a chain that awaits becomes a task
(pyworker.inflight), whose verdict is written when it ends.  At
``pyworker.max_in_flight`` tasks the worker stops taking, so requests wait
in the ring and in nginx, never in Python.
"""

import asyncio
import gc
import logging
import os
import signal
import time

from shm_ring import Region

from pyworker import config as config_mod
from pyworker.chain import STOP_HOOK_TIMEOUT
from pyworker.dispatch import Dispatcher
from pyworker.inflight import InFlight
from pyworker.logs import setup_logging
from pyworker.metrics import TIMING_SAMPLE, WorkerStats
from pyworker.privileges import die_with_parent, drop_privileges

log = logging.getLogger("pyworker.worker")

BATCH = 64
# a draining worker leaves once its rings stay empty this long (and its
# tasks are done)
DRAIN_QUIET_MS = 50
# at idle a worker looks at its state this rarely (signals wake it at once)
IDLE_WAIT_MS = 10000
# on stop, how long tasks in flight have to finish before they are left
# to the ring (which re-queues them to a live worker); the stop() hooks
# have their own time after it, and the supervisor kills a worker that has
# not left when both are over
STOP_GRACE = 2.0
# the cyclic collector runs after this many new objects (the young
# generation; CPython's default is 700), the older ones after 10 of the
# younger's collections: garbage in cycles waits a few milliseconds longer
GC_THRESHOLD = (10000, 10, 10)


def new_event_loop():
    """uvloop's loop where it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Worker:
    """Serves one consumer index of the region."""

    def __init__(
        self, shm, index, config_path, uid=None, gid=None, stats_dir=None
    ):
        self.shm = shm
        self.stats_dir = stats_dir
        self.index = index
        self.config_path = config_path
        self.uid = uid
        self.gid = gid
        self.stopping = False

    def run(self):
        die_with_parent()
        # until the loop handles them: a stop before it runs still stops
        signal.signal(signal.SIGTERM, self._stop_early)
        signal.signal(signal.SIGINT, self._stop_early)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)

        # the config and the filters' code are read with the rights nginx
        # had; requests are served with those of nginx's workers
        gateway = config_mod.load(self.config_path)
        setup_logging(gateway, role="worker")
        drop_privileges(self.uid, self.gid)
        self.gateway = gateway
        self.chains = gateway.chains
        self.stats = WorkerStats(self.stats_dir, "worker-%d" % os.getpid())
        for name, chain in gateway.chains.items():
            chain.set_observer(self.stats.observer(name), TIMING_SAMPLE)

        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(self._main(loop))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _stop_early(self, signum, frame):
        self.stopping = True

    async def _main(self, loop):
        # the filters are started before the worker takes its first
        # request: a pool opened here is there for it
        started = []
        try:
            if self.stopping or not await self._start(loop, started):
                return 0
            region = Region.attach(self.shm)
            try:
                consumer = region.consumer(self.index)
                serving = Serving(self, loop, consumer)
                # what is loaded by now lives as long as the worker: the
                # collector need not walk it again; and requests in flight
                # allocate fast: at CPython's default threshold the
                # collector took a quarter of the worker's CPU under load
                gc.collect()
                gc.freeze()
                gc.set_threshold(*GC_THRESHOLD)
                log.info(
                    "worker %d (pid %d, %s) serves %s as consumer %d",
                    self.index,
                    os.getpid(),
                    type(loop).__module__,
                    ", ".join(sorted(self.chains)),
                    consumer.index,
                )
                try:
                    await serving.run()
                finally:
                    serving.close()
            finally:
                region.close()
        finally:
            # the stop() hooks of every chain share one budget: the
            # supervisor kills a worker that has not left by then
            deadline = loop.time() + STOP_HOOK_TIMEOUT
            for chain in reversed(started):
                await chain.stop(deadline)
            self.stats.flush(self.chains)
        return 0

    async def _start(self, loop, started):
        """Runs the chains' start() hooks, appending each chain started to
        ``started``; False if a stop came first: it cancels a hook that
        awaits (a service that does not answer must not keep the worker
        from leaving)."""
        starting = asyncio.ensure_future(self._start_chains(started))
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop_starting, starting)
        try:
            await starting
        except asyncio.CancelledError:
            log.info("worker pid %d stopped while starting", os.getpid())
            return False
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
                signal.signal(signum, self._stop_early)
        return not self.stopping

    async def _start_chains(self, started):
        for chain in self.chains.values():
            await chain.start()
            started.append(chain)

    def _stop_starting(self, starting):
        self.stopping = True
        starting.cancel()


class Serving:
    """The event loop's side of the consumer: wake-ups, batches, tasks,
    drain and stop."""

    def __init__(self, worker, loop, consumer):
        self.worker = worker
        self.loop = loop
        self.consumer = consumer
        self.stats = worker.stats
        self.chains = worker.chains
        self.inflight = InFlight(
            consumer,
            loop,
            worker.gateway.max_in_flight,
            self.stats,
            on_room=self._room,
            on_answer=self._dirty,
        )
        self.dispatch = Dispatcher(
            worker.chains, self.stats, spawn=self.inflight.spawn
        )
        self.spin_s = worker.gateway.spin_us / 1e6
        self.done = loop.create_future()
        self.full = False  # at max_in_flight: not taking
        self.draining = False
        self.quiet_since = None
        self.taking = False
        self.dirty = False
        self.flush_timer = None
        self.tick = None
        self.stop_at = None  # when tasks still running are left

    async def run(self):
        loop = self.loop
        fd = self.consumer.fileno()
        loop.add_reader(fd, self._readable)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop)
        # the supervisor's nudge: look at the state now (drain)
        loop.add_signal_handler(signal.SIGUSR1, self._look)
        if self.worker.stopping:
            self._stop()
        else:
            self._take()
            self._tick()
        try:
            await self.done
            loop.remove_reader(fd)
            await self._finish()
        finally:
            loop.remove_reader(fd)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                loop.remove_signal_handler(signum)
            # the stop() hooks still run: a stop asked now changes nothing
            # (the loop's removal left the default, which would kill)
            signal.signal(signal.SIGTERM, self.worker._stop_early)
            signal.signal(signal.SIGINT, self.worker._stop_early)
            signal.signal(signal.SIGUSR1, lambda signum, frame: None)

    def close(self):
        for timer in (self.flush_timer, self.tick):
            if timer is not None:
                timer.cancel()
        self.dispatch.fold_counts()
        self.consumer.close()

    # -- taking requests ------------------------------------------------------

    def _readable(self):
        self.consumer.disarm()
        self._take()

    def _take(self):
        """Takes batches until the rings are empty or the tasks are at
        their bound; then sleeps in the loop (armed: a producer that
        submits rings the wake descriptor)."""
        if self.taking or self.done.done():
            return
        self.taking = True
        try:
            self._take_batches()
        finally:
            self.taking = False

    def _take_batches(self):
        serve = self.consumer.serve_batch
        dispatch = self.dispatch
        inflight = self.inflight
        took = False
        while True:
            room = inflight.room
            if room <= 0:
                # no arm: producers queue in the ring and nginx until a
                # task ends (on_room)
                self.full = True
                break
            want = BATCH if room > BATCH else room
            n = serve(dispatch, want)
            if n:
                took = True
                if n == want:
                    continue
            if self.spin_s and not inflight.requests:
                # look a while before sleeping (pyworker.spin_us)
                until = time.perf_counter() + self.spin_s
                while time.perf_counter() < until:
                    if self.consumer.pending():
                        break
                else:
                    if not self.consumer.arm():
                        break
                continue
            if not self.consumer.arm():
                break
        if took:
            self.quiet_since = None
            inflight.check_abandoned()
            self._dirty()

    def _room(self):
        if self.full:
            self.full = False
            self.loop.call_soon(self._take)

    # -- stats ---------------------------------------------------------------

    def _dirty(self):
        # written once a second at most, and not at all when idle
        self.dirty = True
        if self.flush_timer is None and not self.done.done():
            delay = max(0.0, self.stats.next_flush - time.monotonic())
            self.flush_timer = self.loop.call_later(delay, self._flush)

    def _flush(self):
        self.flush_timer = None
        if not self.dirty:
            return
        self.dispatch.fold_counts()
        if self.stats.maybe_flush(self.chains):
            self.dirty = False
        else:
            self._dirty()

    # -- drain and stop ------------------------------------------------------

    def _tick(self):
        """Looks at the state now and then, as a signal may be missed."""
        self.tick = None
        self._look()
        if not self.done.done():
            wait = DRAIN_QUIET_MS if self.draining else IDLE_WAIT_MS
            self.tick = self.loop.call_later(wait / 1000, self._tick)

    def _look(self):
        if self.done.done():
            return
        if not self.draining and self.consumer.state == "draining":
            # nginx sends no more here: finish what is queued, then go
            self.draining = True
            log.info(
                "worker pid %d drains (%d request(s) in flight)",
                os.getpid(),
                len(self.inflight),
            )
            if self.tick is not None:
                self.tick.cancel()
            self.tick = self.loop.call_later(DRAIN_QUIET_MS / 1000, self._tick)
        if not self.draining:
            return
        self._take()
        if self.consumer.pending() or self.inflight.requests:
            self.quiet_since = None
            return
        now = time.monotonic()
        if self.quiet_since is None:
            self.quiet_since = now
        elif now - self.quiet_since >= DRAIN_QUIET_MS / 1000:
            self.done.set_result(None)

    def _stop(self):
        self.worker.stopping = True
        if self.stop_at is None:
            self.stop_at = time.monotonic() + STOP_GRACE
        if not self.done.done():
            self.done.set_result(None)

    async def _finish(self):
        """Answers what is queued, so no request waits for its timeout,
        and lets the tasks in flight end: a drain waits for their
        deadlines, a stop at most STOP_GRACE."""
        if self.worker.stopping:
            # what is queued now is answered, or left to the ring below
            deadline = time.monotonic() + 1.0
            while (
                self.inflight.room > 0
                and self.consumer.serve_batch(
                    self.dispatch, min(BATCH, self.inflight.room)
                )
                and time.monotonic() < deadline
            ):
                pass
        while self.inflight.requests and (
            self.stop_at is None or time.monotonic() < self.stop_at
        ):
            self.inflight.check_abandoned()
            await asyncio.sleep(0.01)
        if self.inflight.requests:
            log.warning(
                "worker pid %d stops with %d request(s) in flight; "
                "they go back to the ring",
                os.getpid(),
                len(self.inflight.requests),
            )
        self.inflight.cancel_all()
        # let the cancelled tasks unwind before the filters stop
        await asyncio.sleep(0)
        self.consumer.flush()
