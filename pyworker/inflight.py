"""Requests a worker serves as tasks: those of chains whose filters await.

The dispatcher hands each such request here (``spawn``) with its chain's
coroutine, whose first step runs at once: a check that sends its question
to a service sends it before the worker takes the next request, and a
chain that ends without waiting is answered with no task at all.  A chain
that waits goes on in a task, which writes its verdict into the request's
slot in the step that ends the chain (no callback a loop turn later),
in whatever order tasks end.

Each request has a deadline, the one nginx gave it (``mosn_timeout``): a
task still running then is cancelled (within DEADLINE_TICK: the deadlines
of every task are looked at by one timer, not a timer each), as is one
whose client went away (nginx marks the slot abandoned and bumps this
consumer's ``abandons``, looked at every ABANDON_POLL while tasks run).
A cancelled task's request gets an error verdict, which nginx drops as
late (or, if it is not late yet, answers with the fallback); either way
the slot is handed back, so nothing leaks.

Every verdict is written with the request's generation: a slot that holds
another request by then is left alone.  A task that ignores its
cancellation for GRACE seconds has its slot answered and handed back
without it; it stays counted against ``limit`` until it ends, so a filter
that never ends cannot make the worker take more than ``limit`` requests.

How each request ended is counted per chain (``WorkerStats.task``):
``answered`` in time, ``late`` (answered after its deadline, when nginx
no longer waited), ``deadline`` and ``client_gone`` (cancelled), and
``stopped`` (handed back to the ring when the worker stopped: nginx gives
it to another worker).
"""

import asyncio
import contextvars
import logging
import time

try:
    # how a task's step makes it asyncio.current_task() (asyncio's eager
    # start, since Python 3.12, uses it the same way)
    from asyncio.tasks import _enter_task, _leave_task
except ImportError:  # a Python without them: every first step in the loop
    _enter_task = _leave_task = None

from pyworker.deadlines import Deadlines
from pyworker.dispatch import verdict_action
from pyworker.verdict import Verdict

log = logging.getLogger("pyworker.worker")

ABANDON_POLL = 0.01  # seconds between looks for requests nginx dropped
# nginx abandons a request at its timeout too: one abandoned this close to
# its deadline (nginx's timers have a millisecond's grain) timed out
DEADLINE_SLACK_NS = 20 * 10**6
GRACE = 1.0  # for a cancelled task to end before it is left
DEADLINE_TICK = 0.01  # seconds a task may run past its deadline

_WHY = {
    "deadline": "no verdict within mosn_timeout: the filters were cancelled",
    "client_gone": "the client went away: the filters were cancelled",
}
_WHY_CANCELLED = "the filters were cancelled"
# a request's first step: not run yet; ran and ended the chain; its
# task runs the chain now (what a first step awaits may be None: a bare
# yield)
_UNSTARTED = object()
_ENDED = object()
_RUNNING = object()


class _Primed:
    """Awaited first by a task's coroutine, which spawn() steps up to it:
    a task cancelled before it first runs (asyncio.timeout() in the first
    step, with uvloop's timers run before its ready callbacks) throws the
    cancellation there, inside the coroutine, not into one not begun (which
    would end it before it could answer its request)."""

    __slots__ = ()

    def __await__(self):
        return iter(_ONE_YIELD)


_ONE_YIELD = (None,)
_PRIMED = _Primed()


def _into_chain(waiting, exc):
    """What a task throws into its coroutine when an await of ``waiting``
    raised ``exc`` in the task's own step: nothing of the future's own
    outcome (the chain reads that when resumed), but the task's
    cancellation, or asyncio's complaint about a yield not awaitable."""
    if asyncio.isfuture(waiting):
        if waiting.done() and (
            waiting.cancelled() or waiting.exception() is exc
        ):
            return None
        return exc
    if waiting is None or isinstance(exc, asyncio.CancelledError):
        return exc
    return RuntimeError("Task got bad yield: %r" % (waiting,))


class _Request:
    """One request in flight as a task."""

    __slots__ = (
        "ps",
        "gen",
        "listener",
        "req",
        "task",
        "timer",
        "why",
        "answered",
        "deadline_ns",
        "due",
        "waiting",
    )

    def __init__(self, req, listener):
        self.ps = req.ps
        self.gen = req.gen
        self.listener = listener
        self.req = req
        self.task = None
        self.timer = None  # the GRACE of a cancelled task
        self.due = None  # its key in InFlight.deadlines
        self.why = None  # set when cancelled: deadline, client_gone
        self.answered = False  # its slot was answered without the task
        self.deadline_ns = req.deadline_ns
        self.waiting = _UNSTARTED  # what the chain's first step awaits


class InFlight:
    """The requests of one consumer served as tasks, at most ``limit``.

    ``on_room()`` is called when a task ends while the table was full, so
    the worker takes requests again; ``on_answer()`` after a verdict is
    written (the stats changed).
    """

    def __init__(
        self, consumer, loop, limit, stats=None, on_room=None, on_answer=None
    ):
        self.consumer = consumer
        self.loop = loop
        self.limit = limit
        self.stats = stats
        self.on_room = on_room
        self.on_answer = on_answer
        self.requests = {}  # ps -> _Request
        self.left = set()  # answered without their task, still running
        self._abandons = consumer.abandons
        self.deadlines = Deadlines(loop, self._expired, DEADLINE_TICK)
        self._watching = None

    def __len__(self):
        """Requests in flight, with the tasks left running."""
        return len(self.requests) + len(self.left)

    @property
    def room(self):
        return self.limit - len(self.requests) - len(self.left)

    # -- from the dispatcher --------------------------------------------------

    def spawn(self, req, work, listener):
        """Runs ``work`` (the chain's coroutine for ``req``): its first
        step now, the rest, if it waits, as a task."""
        entry = _Request(req, listener)
        why = None
        if req.abandoned:
            why = "client_gone"
        elif entry.deadline_ns and time.monotonic_ns() >= entry.deadline_ns:
            why = "deadline"
        if why is not None:
            # nginx stopped waiting before the request was taken
            work.close()
            self._answer(entry, Verdict.error(_WHY[why]), why)
            return
        # the task's context from the first step on: what a filter sets
        # in it (the chain's handler) is there when the task resumes
        context = contextvars.copy_context()
        rest = self._rest(entry, work)
        rest.send(None)  # to _PRIMED
        task = entry.task = self.loop.create_task(rest, context=context)
        if self._enter(task):
            try:
                context.run(self._first_step, entry, work)
            finally:
                _leave_task(self.loop, task)
            if entry.waiting is _ENDED:
                return
        self.requests[entry.ps] = entry
        if entry.deadline_ns:
            delay = (entry.deadline_ns - time.monotonic_ns()) / 1e9
            entry.due = self.deadlines.add(entry, self.loop.time() + delay)
        if self._watching is None:
            self._watching = self.loop.call_later(ABANDON_POLL, self._watch)

    def _enter(self, task):
        """Makes ``task`` the current one, for its first step now; False
        in another task's step (a stopping worker answers what is
        queued), where its first step waits its turn in the loop."""
        if _enter_task is None:
            return False
        try:
            _enter_task(self.loop, task)
        except RuntimeError:
            return False
        return True

    def _first_step(self, entry, work):
        """Runs the chain up to what it first awaits, as its task, before
        the worker takes the next request (asyncio's eager start): a
        chain that ends without waiting is answered now."""
        try:
            entry.waiting = work.send(None)
            return
        except StopIteration as end:
            verdict, why = end.value, None
        except Exception as exc:
            verdict, why = self._broken(entry, exc), None
        except asyncio.CancelledError:
            verdict, why = Verdict.error(_WHY_CANCELLED), "stopped"
        entry.waiting = _ENDED
        entry.answered = True
        self._answer(entry, verdict, why)

    async def _rest(self, entry, work):
        """The task of a chain that waits: steps ``work`` as asyncio's
        task would, from what its first step awaits, and answers the
        request in the step that ends the chain."""
        early = None
        try:
            await _PRIMED
        except asyncio.CancelledError as exc:
            early = exc  # its task was cancelled before it first ran
        waiting = entry.waiting
        if waiting is _ENDED:
            return
        entry.waiting = _RUNNING  # cancelled as a task from now on
        verdict = None
        cancelled = False
        try:
            if entry.why is not None:
                # cancelled by InFlight before this first step (which it
                # leaves to the task): its chain is cancelled now
                waiting = self._cancel_unstarted(
                    work, waiting, _WHY[entry.why]
                )
            elif early is not None:
                # by someone else (a timeout the first step began)
                waiting = self._cancel_unstarted(
                    work, waiting, early.args[0] if early.args else None
                )
            elif waiting is _UNSTARTED:
                waiting = work.send(None)
            while True:
                try:
                    if waiting is None:
                        await asyncio.sleep(0)  # a bare yield
                    else:
                        # yielded to no task: ours to await, as a task
                        # takes a future its coroutine yields
                        waiting._asyncio_future_blocking = False
                        await waiting
                except BaseException as exc:
                    thrown = _into_chain(waiting, exc)
                    if thrown is None:
                        waiting = work.send(None)
                    else:
                        waiting = work.throw(thrown)
                else:
                    waiting = work.send(None)
        except StopIteration as end:
            verdict = end.value
        except asyncio.CancelledError:
            cancelled = True
        except Exception as exc:
            verdict = self._broken(entry, exc)
        finally:
            self._ended(entry)
        if cancelled:
            if not entry.answered:
                why = entry.why or "stopped"
                verdict = Verdict.error(_WHY.get(why, _WHY_CANCELLED))
                self._answer(entry, verdict, why)
            raise asyncio.CancelledError  # the task ends as it was told
        if not entry.answered:  # (or answered without it, or stopping)
            self._answer(entry, verdict, None)

    def _cancel_unstarted(self, work, waiting, why):
        """Cancels the chain of a task cancelled before its first step, as
        asyncio's task would have: through the future it awaits."""
        if waiting is _UNSTARTED:
            work.close()
            raise asyncio.CancelledError(why)
        if asyncio.isfuture(waiting) and waiting.cancel(why):
            return waiting
        # (a future that is done already: the chain's next step is)
        return work.throw(asyncio.CancelledError(why))

    def _broken(self, entry, exc):
        # the chain turns a filter's exception into its verdict: this is a
        # bug of the chain itself
        log.error(
            "request %d (chain %s): %s: %s",
            entry.req.request_id,
            entry.listener,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return Verdict.error("the chain failed: %s" % type(exc).__name__)

    # -- cancellation ---------------------------------------------------------

    def _expired(self, entry):
        entry.due = None
        self._cancel(entry, "deadline")

    def _cancel(self, entry, why):
        if entry.why is not None or entry.task.done():
            return
        entry.why = why
        entry.timer = self.loop.call_later(GRACE, self._leave, entry)
        if entry.waiting is not _RUNNING:
            # its task has not taken its first step: it cancels its chain
            # when it does (cancelled now, the task would never run it)
            return
        entry.task.cancel(_WHY[why])

    def _leave(self, entry):
        """A cancelled task still runs: answer its slot without it."""
        entry.timer = None
        if entry.task.done() or entry.answered:
            return
        log.warning(
            "request %d (chain %s): a filter went on for %.1f s "
            "after its task was cancelled (%s); the request is "
            "answered without it",
            entry.req.request_id,
            entry.listener,
            GRACE,
            entry.why,
        )
        del self.requests[entry.ps]
        self.left.add(entry)
        entry.answered = True
        self._answer(entry, Verdict.error(_WHY[entry.why]), entry.why)

    def _watch(self):
        """Cancels the tasks of requests nginx gave up on."""
        self._watching = None
        if not self.requests:
            return
        self.check_abandoned()
        self._watching = self.loop.call_later(ABANDON_POLL, self._watch)

    def check_abandoned(self):
        abandons = self.consumer.abandons
        if abandons == self._abandons:
            return
        self._abandons = abandons
        now = time.monotonic_ns()
        for entry in list(self.requests.values()):
            if entry.why is None and entry.req.abandoned:
                timed_out = (
                    entry.deadline_ns
                    and now >= entry.deadline_ns - DEADLINE_SLACK_NS
                )
                self._cancel(entry, "deadline" if timed_out else "client_gone")

    def cancel_all(self):
        """The worker stops: cancels every task and leaves its request to
        the ring, which re-queues it to a live worker once this one has
        left (or, with none, lets nginx take the fallback)."""
        self.deadlines.close()
        for entry in list(self.requests.values()) + list(self.left):
            entry.answered = True
            if entry.timer is not None:
                entry.timer.cancel()
            entry.task.cancel("the worker stopped")
            if entry in self.left:
                continue
            if self.stats is not None:
                self.stats.task(entry.listener, "stopped")
        self.requests.clear()
        self.left.clear()

    # -- the end of a task --------------------------------------------------

    def _ended(self, entry):
        if entry.due is not None:
            self.deadlines.discard(entry, entry.due)
            entry.due = None
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry.answered:
            self.left.discard(entry)
            self._room_made()
            return
        full = self.room <= 0
        del self.requests[entry.ps]
        if full:
            self._room_made()

    def _answer(self, entry, verdict, why):
        if why is None:
            late = (
                entry.deadline_ns and time.monotonic_ns() >= entry.deadline_ns
            )
            why = "late" if late else "answered"
            if self.stats is not None:
                self.stats.request(entry.listener, verdict_action(verdict))
        if self.stats is not None:
            self.stats.task(entry.listener, why)
        self.consumer.complete(entry.ps, verdict, entry.gen)
        if self.on_answer is not None:
            self.on_answer()
        # at once: a producer that sleeps is woken for this verdict now,
        # not a loop turn later (one that is awake costs a load and a fence)
        self.consumer.flush()

    def _room_made(self):
        if self.on_room is not None and self.room > 0:
            self.on_room()
