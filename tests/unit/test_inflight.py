"""Requests served as tasks, on a real ring in one process: verdicts in
any order, the in-flight bound, deadlines, clients that went away, tasks
that ignore their cancellation, and a worker that stops with tasks in
flight.  A Python producer plays nginx."""

import asyncio
import os
import time
import uuid

import pytest
import uvloop

from pyworker import CONTINUE, StreamReceiverFilter, register_filter
from pyworker import inflight as inflight_mod
from pyworker.chain import Chain
from pyworker.dispatch import Dispatcher
from pyworker.inflight import InFlight
from pyworker.metrics import WorkerStats
from shm_ring import Region, codec

FREE, SUBMITTED, TAKEN, DONE = 0, 1, 2, 3
GATES = {}


@register_filter("test_gate")
class Gate(StreamReceiverFilter):
    """Waits until the test opens the gate named by the x-gate header (a
    request with none passes at once), at most x-timeout seconds (then it
    lets the request go on as "timed out"); x-stubborn ignores
    cancellation."""

    def __init__(self, config):
        self.cancelled = []
        self.tasks = []  # asyncio.current_task() as each request began

    async def on_receive(self, ctx, headers, buf, trailers):
        self.tasks.append(asyncio.current_task())
        if headers.get("x-yield") is not None:
            try:
                await asyncio.sleep(0)  # a bare yield: no future awaited
            except asyncio.CancelledError:
                self.cancelled.append("yield")
                raise
        name = headers.get("x-gate")
        if name is not None:
            gate = GATES.setdefault(name, asyncio.Event())
            try:
                # asyncio.timeout() needs a task: the request's own
                async with asyncio.timeout(
                    float(headers.get("x-timeout", 30))
                ):
                    await gate.wait()
            except TimeoutError:
                self.cancelled.append(name + " timed out")
                name = "timed out"
            except asyncio.CancelledError:
                self.cancelled.append(name)
                if headers.get("x-stubborn") is None:
                    raise
                await GATES.setdefault(name + "-late", asyncio.Event()).wait()
        ctx.metadata["gate"] = name or "open"
        return CONTINUE


class Rig:
    """A region, a producer (nginx), the consumer's dispatcher and its
    table of tasks, in one loop."""

    def __init__(self, loop, limit=8, slots=16):
        self.loop = loop
        self.name = "/mosn-inflight-%d-%s" % (
            os.getpid(),
            uuid.uuid4().hex[:8],
        )
        self.region = Region.create(
            self.name, nproducers=1, nconsumers=1, slots=slots, slot_size=4096
        )
        try:
            self._attach(loop, limit)
        except BaseException:
            self.close()  # nothing left in /dev/shm by a rig that failed
            raise

    def _attach(self, loop, limit):
        self.consumer = self.region.consumer(self.region.alloc_consumer())
        self.producer = self.region.producer()
        self.stats = WorkerStats(None, "t")
        self.chain = Chain.from_stream_filters("g", [{"type": "test_gate"}])
        self.gate = self.chain.filters[0][1]
        self.rooms = 0
        self.inflight = InFlight(
            self.consumer, loop, limit, self.stats, on_room=self._room
        )
        self.dispatch = Dispatcher(
            {"g": self.chain}, self.stats, spawn=self.inflight.spawn
        )
        self.gens = {}

    def _room(self):
        self.rooms += 1

    def submit(
        self,
        slot,
        gate=None,
        deadline_ms=None,
        stubborn=False,
        yields=False,
        timeout=None,
    ):
        headers = [("X-Gate", gate)] if gate else []
        if timeout is not None:
            headers.append(("X-Timeout", str(timeout)))
        if stubborn:
            headers.append(("X-Stubborn", "1"))
        if yields:
            headers.append(("X-Yield", "1"))
        deadline = (
            time.monotonic_ns() + deadline_ms * 10**6
            if deadline_ms is not None
            else 0
        )
        c, gen = self.producer.submit(
            slot,
            codec.encode_request(
                chain="g", headers=headers, request_id=100 + slot
            ),
            deadline_ns=deadline,
        )
        self.gens[slot] = gen
        return gen

    def serve(self, n=64):
        return self.consumer.serve_batch(self.dispatch, n)

    def answers(self):
        """{slot: metadata or the error's log} of the verdicts nginx
        would see now."""
        out = {}
        for slot, gen in self.producer.poll():
            v = codec.decode_verdict(self.producer.verdict(slot))
            out[slot] = v.metadata.get("gate") if v.action == 0 else v.log
            self.producer.free(slot)
        return out

    def close(self):
        self.region.close()
        self.region.unlink()  # its wake-up directory too


@pytest.fixture
def rig():
    GATES.clear()
    made = []

    def make(loop, **kw):
        r = Rig(loop, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


async def until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def open_gate(name):
    GATES.setdefault(name, asyncio.Event()).set()


def serve_as_the_worker(r):
    """Serves a batch as the worker does: from a loop callback, in no
    task (a chain's first step then runs at once, as its task)."""
    served = r.loop.create_future()
    r.loop.call_soon(lambda: served.set_result(r.serve()))
    return served


def test_a_chain_that_ends_without_waiting_is_answered_at_once(rig):
    async def main():
        r = rig(asyncio.get_running_loop())
        r.submit(0, "a")
        r.submit(1)
        assert await serve_as_the_worker(r) == 2
        # answered within the batch: no task, no loop turn
        assert r.producer.slot_state(1)[0] == DONE
        assert r.producer.slot_state(0)[0] == TAKEN
        assert len(r.inflight) == 1 and list(r.inflight.requests) != []
        assert r.answers() == {1: "open"}
        open_gate("a")
        await until(lambda: r.producer.slot_state(0)[0] == DONE)
        assert r.answers() == {0: "a"}
        assert r.stats.tasks == {("g", "answered"): 2}

    asyncio.run(main())


def test_the_first_step_runs_as_the_requests_own_task(rig):
    async def main():
        r = rig(asyncio.get_running_loop())
        r.submit(0, "a")
        assert await serve_as_the_worker(r) == 1
        # it ran before the loop turned, as its task: asyncio.timeout()
        # worked, and current_task() is the task that goes on with it
        (entry,) = r.inflight.requests.values()
        assert r.gate.tasks == [entry.task]
        assert not entry.task.done()
        open_gate("a")
        await until(lambda: r.producer.slot_state(0)[0] == DONE)
        assert r.answers() == {0: "a"}

    asyncio.run(main())


def test_a_verdict_is_written_in_the_step_that_ends_the_chain(rig):
    async def main():
        r = rig(asyncio.get_running_loop())
        r.submit(0, "a")
        await serve_as_the_worker(r)
        # nginx goes to sleep: the verdict must ring its doorbell
        r.producer.drain_doorbell()
        assert not r.producer.arm()
        open_gate("a")
        # the task's wake-up was scheduled before this one's: by the time
        # this resumes, the chain has ended, its verdict is in the slot
        # and the producer was woken for it
        await asyncio.sleep(0)
        assert r.producer.slot_state(0)[0] == DONE
        assert r.producer.drain_doorbell() >= 1
        assert r.answers() == {0: "a"}
        assert len(r.inflight) == 0

    asyncio.run(main())


def test_verdicts_are_written_as_tasks_end_in_any_order(rig):
    async def main():
        r = rig(asyncio.get_running_loop())
        for slot, gate in enumerate(["a", "b", None, "c"]):
            r.submit(slot, gate)
        assert r.serve() == 4
        assert len(r.inflight) == 4
        await until(lambda: r.producer.slot_state(2)[0] == DONE)
        assert r.answers() == {2: "open"}
        for gate, slot in (("c", 3), ("a", 0), ("b", 1)):
            open_gate(gate)
            await until(lambda: r.producer.slot_state(slot)[0] == DONE)
            assert r.answers() == {slot: gate}
        assert len(r.inflight) == 0
        assert r.stats.tasks == {("g", "answered"): 4}
        assert r.stats.requests == {("g", "continue"): 4}

    asyncio.run(main())


def test_the_worker_takes_no_more_than_max_in_flight(rig):
    async def main():
        r = rig(asyncio.get_running_loop(), limit=3)
        for slot in range(5):
            r.submit(slot, "g%d" % slot)
        assert r.serve(r.inflight.room) == 3
        assert r.inflight.room == 0
        # the two others wait in the ring, not in Python
        assert [r.producer.slot_state(s)[0] for s in range(5)] == [
            TAKEN,
            TAKEN,
            TAKEN,
            SUBMITTED,
            SUBMITTED,
        ]
        open_gate("g1")
        await until(lambda: r.rooms == 1)
        assert r.inflight.room == 1
        assert r.serve(r.inflight.room) == 1
        assert r.producer.slot_state(4)[0] == SUBMITTED

    asyncio.run(main())


def test_a_task_past_its_deadline_is_cancelled_and_its_slot_answered(rig):
    async def main():
        r = rig(asyncio.get_running_loop())
        r.submit(0, "slow", deadline_ms=50)
        r.submit(1, "fast", deadline_ms=5000)
        r.serve()
        started = time.monotonic()
        await until(lambda: r.producer.slot_state(0)[0] == DONE)
        assert time.monotonic() - started >= 0.03
        assert r.answers() == {
            0: "no verdict within mosn_timeout: the filters were cancelled"
        }
        assert r.gate.cancelled == ["slow"]
        open_gate("fast")
        await until(lambda: r.producer.slot_state(1)[0] == DONE)
        assert r.answers() == {1: "fast"}
        assert r.stats.tasks == {("g", "deadline"): 1, ("g", "answered"): 1}
        assert r.chain.counts == [[1, 0, 0, 0, 1]]
        assert len(r.inflight) == 0

    asyncio.run(main())


def test_a_request_whose_client_went_away_is_cancelled(rig):
    async def main():
        r = rig(asyncio.get_running_loop())
        r.submit(0, "x", deadline_ms=5000)
        r.submit(1, "y", deadline_ms=5000)
        r.serve()
        r.producer.abandon(0, r.gens[0])  # nginx: the client is gone
        await until(lambda: r.producer.slot_state(0)[0] == DONE)
        assert r.answers() == {
            0: "the client went away: the filters were cancelled"
        }
        assert r.gate.cancelled == ["x"]
        assert r.producer.slot_state(1)[0] == TAKEN
        assert r.stats.tasks == {("g", "client_gone"): 1}

    asyncio.run(main())


@pytest.mark.parametrize(
    "first_step", ["at once", "in the loop", "at once, to a bare yield"]
)
def test_a_request_cancelled_before_its_task_first_ran_is_answered(
    rig, first_step
):
    """The client goes away in the very turn its request was taken: the
    task, not yet stepped, still cancels the chain and answers the slot
    (also when its first step awaited no future: a bare yield)."""

    async def main():
        loop = asyncio.get_running_loop()
        r = rig(loop)
        r.submit(0, "x", deadline_ms=5000, yields="bare yield" in first_step)

        def serve_and_abandon():
            r.serve()
            r.producer.abandon(0, r.gens[0])
            r.inflight.check_abandoned()

        if first_step.startswith("at once"):
            loop.call_soon(serve_and_abandon)
        else:
            serve_and_abandon()  # in this task: the first step waits
        await until(lambda: r.producer.slot_state(0)[0] == DONE)
        assert r.answers() == {
            0: "the client went away: the filters were cancelled"
        }
        # a chain that had begun was cancelled at its await
        cancelled = {
            "at once": ["x"],
            "in the loop": [],
            "at once, to a bare yield": ["yield"],
        }
        assert r.gate.cancelled == cancelled[first_step]
        assert r.stats.tasks == {("g", "client_gone"): 1}
        assert len(r.inflight) == 0

    asyncio.run(main())


def test_a_task_cancelled_by_another_before_it_first_ran_is_answered(rig):
    """Something else cancels the request's task in the very turn its
    first step ran: the cancellation reaches the chain at its await, the
    request is answered, and the task ends cancelled."""

    async def main():
        loop = asyncio.get_running_loop()
        r = rig(loop)
        r.submit(0, "x", deadline_ms=5000)

        def serve_and_cancel():
            r.serve()
            r.gate.tasks[-1].cancel()

        loop.call_soon(serve_and_cancel)
        await until(lambda: r.producer.slot_state(0)[0] == DONE)
        assert r.answers() == {0: "the filters were cancelled"}
        assert r.gate.cancelled == ["x"]
        assert r.gate.tasks[-1].cancelled()
        assert len(r.inflight) == 0

    asyncio.run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_timeout_the_first_step_began_reaches_the_chain(rig, loop):
    """The first step awaits under asyncio.timeout(1 ms) and the worker
    goes on with its batch for longer than that; uvloop runs the timer
    before the task's first turn.  The filter still sees its timeout
    (TimeoutError) and the request is answered by its chain."""

    async def main():
        loop = asyncio.get_running_loop()
        r = rig(loop)
        r.submit(0, "slow", deadline_ms=5000, timeout=0.001)

        def serve_a_long_batch():
            r.serve()
            time.sleep(0.01)

        loop.call_soon(serve_a_long_batch)
        await until(lambda: r.producer.slot_state(0)[0] == DONE)
        assert r.answers() == {0: "timed out"}
        assert r.gate.cancelled == ["slow timed out"]
        assert r.stats.tasks == {("g", "answered"): 1}
        assert len(r.inflight) == 0

    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def test_requests_nginx_gave_up_on_before_they_were_taken_never_run(rig):
    async def main():
        r = rig(asyncio.get_running_loop())
        r.submit(0, "late", deadline_ms=-1)
        r.submit(1, "gone", deadline_ms=5000)
        r.producer.abandon(1, r.gens[1])
        r.serve()
        assert len(r.inflight) == 0
        await until(lambda: r.producer.slot_state(1)[0] == DONE)
        assert sorted(r.answers()) == [0, 1]
        assert r.chain.counts == [[0, 0, 0, 0, 0]]
        assert r.gate.cancelled == [] and not GATES
        assert r.stats.tasks == {("g", "deadline"): 1, ("g", "client_gone"): 1}

    asyncio.run(main())


def test_a_task_that_ignores_its_cancellation_is_left_bounded(
    rig, monkeypatch
):
    monkeypatch.setattr(inflight_mod, "GRACE", 0.05)

    async def main():
        r = rig(asyncio.get_running_loop(), limit=2)
        r.submit(0, "stuck", deadline_ms=20, stubborn=True)
        r.serve()
        await until(lambda: r.producer.slot_state(0)[0] == DONE)
        assert "cancelled" in r.answers()[0]
        # answered without the task, which still counts against the bound
        assert len(r.inflight) == 1 and r.inflight.room == 1
        # the slot is reused by a new request: the old task's end must
        # not write into it
        r.submit(0, "new", deadline_ms=5000)
        r.serve()
        open_gate("stuck-late")
        await until(lambda: len(r.inflight) == 1 and not r.inflight.left)
        assert r.producer.slot_state(0)[0] == TAKEN
        open_gate("new")
        await until(lambda: r.producer.slot_state(0)[0] == DONE)
        assert r.answers() == {0: "new"}
        assert len(r.inflight) == 0

    asyncio.run(main())


def test_a_stopping_worker_leaves_its_requests_to_the_ring(rig):
    async def main():
        r = rig(asyncio.get_running_loop())
        r.submit(0, "a", deadline_ms=5000)
        r.serve()
        task = next(iter(r.inflight.requests.values())).task
        r.inflight.cancel_all()
        await asyncio.sleep(0.01)
        assert task.cancelled()
        # no verdict: the slot is still the consumer's, for the ring to
        # re-queue to a live worker once this one is gone
        assert r.producer.slot_state(0)[0] == TAKEN
        assert r.producer.poll() == []
        assert r.stats.tasks == {("g", "stopped"): 1}
        assert len(r.inflight) == 0

    asyncio.run(main())
