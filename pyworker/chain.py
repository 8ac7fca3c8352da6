"""Runs a listener's stream filters over one request and makes its verdict.

This is the per-request hot path: no closures or logging on the success
path, one try around the loop, the handler reused from request to request.
A chain of plain filters serves one request at a time, inline; a chain
with a filter that awaits (``async def``) runs each request as a task
(``decide_async``), many in flight at once, each with a handler of its
own.
"""

import asyncio
import copy
import inspect
import logging
import time
import zlib

from pyworker import registry
from pyworker.api import (
    STOP,
    ConfigError,
    StreamReceiverFilter,
    StreamReceiverFilterHandler,
    StreamSenderFilter,
    StreamSenderFilterHandler,
    TaskReceiverFilterHandler,
    TaskSenderFilterHandler,
    _receive_handler,
    _send_handler,
    awaits,
    handler_setter,
    join_path,
    json_type,
)
from pyworker.verdict import (
    ACTION_CONTINUE,
    ACTION_ERROR,
    ACTION_REPLY,
    metadata_is_plain,
    DEFAULT_LIMITS,
    Verdict,
    VerdictError,
    check,
)

_filter_log = logging.getLogger("pyworker.filter")

# how a receiver filter ended, as counted in Chain.counts; CANCELLED: its
# request's task was cancelled (deadline, client gone, worker stopping)
CONTINUED, STOPPED, HIJACKED, FAILED, CANCELLED = range(5)
OUTCOME_NAMES = ("continue", "stop", "hijack", "error", "cancelled")
_MAX_LOG = 1024  # the verdict's log record stays well inside a slot
# how long the stop() hooks of a worker may take in all before it goes
# on without them; once that is spent each hook left still gets a moment,
# so that one that hangs does not keep the others from closing
STOP_HOOK_TIMEOUT = 5.0
STOP_HOOK_FLOOR = 0.25
STOP_HOOK_OVERRUN = 0.5  # those moments in all, past the budget


class Chain:
    """The filters of one listener, built once, run for every request.

    ``filters`` are (name, filter) pairs in order; the name is the filter's
    type and appears in logs and metrics. A filter with ``on_receive`` runs
    in the request phase, one with ``append`` in the response phase.
    ``is_async`` says the request phase awaits (run it with
    ``decide_async``), ``sends_async`` the response phase
    (``run_send_async``).  ``counts`` holds, per receiver filter, how
    often it ended in each outcome (CONTINUED, STOPPED, HIJACKED, FAILED,
    CANCELLED), exactly.  Timing costs two clock reads per filter, so it
    is sampled: ``observe(filter_name, outcome, seconds)``, if given, is
    called after every filter of one request in ``sample`` (a power of
    two; 1 times every request); a filter that awaits is timed from its
    call to its answer.
    """

    __slots__ = (
        "name",
        "filters",
        "limits",
        "has_senders",
        "decode_body",
        "is_async",
        "sends_async",
        "_receivers",
        "_receiver_names",
        "_receiver_awaits",
        "_senders",
        "_sender_names",
        "_sender_awaits",
        "_handler",
        "_send_handler",
        "_observe",
        "_counts",
        "_seen",
        "_ended",
        "_folded",
        "_sample_mask",
    )

    def __init__(
        self, name, filters=(), *, observe=None, limits=DEFAULT_LIMITS
    ):
        self.name = name
        self.filters = tuple(filters)
        self.limits = limits
        self._observe = observe
        # requests seen, those that did not pass every receiver, and the
        # passes already added to _counts: a pass costs no count of its own
        self._seen = self._ended = self._folded = 0
        # -1: no request is timed
        self._sample_mask = 0 if observe is not None else -1
        receivers, senders = [], []
        for filter_name, filt in self.filters:
            if not (is_receiver(filt) or is_sender(filt)):
                raise TypeError(
                    f"filter {filter_name!r}: {filt!r} has neither "
                    f"on_receive nor append"
                )
            if is_receiver(filt):
                receivers.append((filter_name, filt))
            if is_sender(filt):
                senders.append((filter_name, filt))
        self._receivers = tuple(filt for _, filt in receivers)
        self._receiver_names = tuple(name for name, _ in receivers)
        self._receiver_awaits = tuple(
            awaits(filt.on_receive) for filt in self._receivers
        )
        self._senders = tuple(filt for _, filt in senders)
        self._sender_names = tuple(name for name, _ in senders)
        self._sender_awaits = tuple(
            awaits(filt.append) for filt in self._senders
        )
        self.has_senders = bool(senders)
        # one sender filter that wants compressed bodies decoded asks
        # nginx to hold them for the chain
        self.decode_body = any(
            getattr(filt, "decode_body", False) is True
            for filt in self._senders
        )
        self.is_async = any(self._receiver_awaits)
        self.sends_async = any(self._sender_awaits)
        # one handler for a chain served inline; for one whose requests
        # are tasks, one that finds the handler of the task's request
        self._handler = StreamReceiverFilterHandler()
        self._send_handler = StreamSenderFilterHandler()
        receive_handler = (
            TaskReceiverFilterHandler() if self.is_async else self._handler
        )
        send_handler = (
            TaskSenderFilterHandler()
            if self.sends_async
            else self._send_handler
        )
        for filt in self._receivers:
            setter = handler_setter(
                filt, "set_receive_filter_handler", "set_receive_handler"
            )
            if setter is not None:
                setter(receive_handler)
        for filt in self._senders:
            setter = handler_setter(
                filt, "set_sender_filter_handler", "set_send_handler"
            )
            if setter is not None:
                setter(send_handler)
        self._counts = [[0, 0, 0, 0, 0] for _ in self._receivers]

    @classmethod
    def from_stream_filters(
        cls,
        name,
        stream_filters,
        *,
        path="stream_filters",
        observe=None,
        limits=DEFAULT_LIMITS,
    ):
        """Builds the chain of a listener's MOSN ``stream_filters`` list.

        Raises ConfigError naming the key path (``path`` is its prefix).
        """
        if not isinstance(stream_filters, list):
            raise ConfigError(
                f"must be an array of stream filters, not "
                f"{json_type(stream_filters)}",
                path,
            )
        built = [
            build_filter(entry, f"{path}[{i}]")
            for i, entry in enumerate(stream_filters)
        ]
        try:
            return cls(name, built, observe=observe, limits=limits)
        except Exception as exc:
            raise ConfigError(
                f"cannot attach the filters: {type(exc).__name__}: {exc}", path
            ) from exc

    def set_observer(self, observe, sample=1):
        """Calls observe(filter_name, outcome, seconds) after each filter
        of one request in `sample` from now on (None: no timing)."""
        if sample < 1 or sample & (sample - 1):
            raise ValueError("sample must be a power of two")
        self._observe = observe
        self._sample_mask = sample - 1 if observe is not None else -1

    @property
    def counts(self):
        """[continued, stopped, hijacked, failed] of each receiver filter."""
        passed = self._seen - self._ended
        if passed != self._folded:
            for row in self._counts:
                row[CONTINUED] += passed - self._folded
            self._folded = passed
        return self._counts

    def outcome_counts(self):
        """((filter name, outcome name), count) of every receiver filter."""
        for name, row in zip(self._receiver_names, self.counts):
            for outcome, n in zip(OUTCOME_NAMES, row):
                if n:
                    yield (name, outcome), n

    def _count(self, last, outcome):
        """A request that did not pass: the filters before `last` continued,
        `last` ended with outcome."""
        self._ended += 1
        counts = self._counts
        for i in range(last):
            counts[i][CONTINUED] += 1
        counts[last][outcome] += 1

    def __repr__(self):
        return f"Chain({self.name!r}, {[name for name, _ in self.filters]!r})"

    # -- request phase -------------------------------------------------

    def run(self, ctx, headers, buf=None, trailers=None):
        """Runs the receiver filters over one request; returns its Verdict.
        A chain that awaits is run with ``run_async``."""
        if self.is_async:
            raise TypeError(
                f"chain {self.name!r} has filters that await: "
                f"run it with run_async()"
            )
        verdict = self.decide(ctx, headers, buf, trailers)
        if type(verdict) is dict:
            return Verdict(ACTION_CONTINUE, 0, None, verdict, [], [], [])
        return verdict

    def decide(self, ctx, headers, buf=None, trailers=None):
        """run() as the ring needs it: the common verdict, metadata only
        and no response phase, comes back as the metadata dict itself,
        which the ring encodes as that CONTINUE verdict; any other as a
        Verdict."""
        seen = self._seen = self._seen + 1
        if not seen & self._sample_mask:
            return self._run_observed(ctx, headers, buf, trailers)
        handler = self._handler
        handler.hijacked = False
        receivers = self._receivers
        filt = None
        i = 0
        try:
            for filt in receivers:
                if (
                    filt.on_receive(ctx, headers, buf, trailers) == STOP
                    or handler.hijacked
                ):
                    break
                i += 1
        except Exception as exc:
            self._count(i, FAILED)
            return self._failed(ctx, filt, exc)
        if i != len(receivers):
            if handler.hijacked:
                self._count(i, HIJACKED)
                return self._finish(ctx, headers, filt)
            self._count(i, STOPPED)
        if not headers.edits and not self.has_senders:
            metadata = ctx.metadata
            if (
                ctx.upstream is None
                and not ctx.response_headers
                and type(metadata) is dict
                and metadata_is_plain(metadata)
            ):
                # the common verdict, metadata only: nothing to refuse
                return metadata
        return self._finish(ctx, headers, filt)

    def _run_observed(self, ctx, headers, buf, trailers):
        observe = self._observe
        clock = time.perf_counter
        handler = self._handler
        handler.hijacked = False
        filt = None
        i = 0
        for filt, name in zip(self._receivers, self._receiver_names):
            start = clock()
            try:
                status = filt.on_receive(ctx, headers, buf, trailers)
            except Exception as exc:
                observe(name, "error", clock() - start)
                self._count(i, FAILED)
                return self._failed(ctx, filt, exc)
            if handler.hijacked:
                observe(name, "hijack", clock() - start)
                break
            if status == STOP:
                observe(name, "stop", clock() - start)
                break
            observe(name, "continue", clock() - start)
            i += 1
        if i != len(self._receivers):
            self._count(i, HIJACKED if handler.hijacked else STOPPED)
        return self._finish(ctx, headers, filt)

    def _finish(self, ctx, headers, last):
        return self._finish_with(ctx, headers, last, self._handler)

    def _finish_with(self, ctx, headers, last, handler):
        if handler.hijacked:
            reply_headers = handler.headers
            if ctx.response_headers:
                reply_headers = reply_headers + ctx.response_headers
            verdict = Verdict(
                ACTION_REPLY,
                handler.status,
                ctx.upstream,
                ctx.metadata,
                [],
                [],
                [],
                reply_headers,
                handler.body,
            )
        else:
            if headers.edits:
                request_set, request_remove = headers.to_records()
            else:
                metadata = ctx.metadata
                if (
                    ctx.upstream is None
                    and not ctx.response_headers
                    and type(metadata) is dict
                    and metadata_is_plain(metadata)
                ):
                    # the common verdict, metadata only: nothing to refuse
                    if not self.has_senders:
                        return metadata
                    return Verdict(
                        ACTION_CONTINUE,
                        0,
                        None,
                        metadata,
                        [],
                        [],
                        [],
                        run_senders=True,
                        decode_body=self.decode_body,
                    )
                request_set, request_remove = [], []
            verdict = Verdict(
                ACTION_CONTINUE,
                0,
                ctx.upstream,
                ctx.metadata,
                request_set,
                request_remove,
                ctx.response_headers,
                run_senders=self.has_senders,
                decode_body=self.decode_body,
            )
        try:
            check(verdict, self.limits)
        except VerdictError as exc:
            return self._refused(
                ctx, last, exc, self._receivers, self._receiver_names
            )
        return verdict

    # -- a chain that awaits ---------------------------------------------

    async def run_async(self, ctx, headers, buf=None, trailers=None):
        """run() for any chain, from a coroutine: awaits what awaits."""
        if self.is_async:
            verdict = await self.decide_async(ctx, headers, buf, trailers)
        else:
            verdict = self.decide(ctx, headers, buf, trailers)
        if type(verdict) is dict:
            return Verdict(ACTION_CONTINUE, 0, None, verdict, [], [], [])
        return verdict

    async def decide_async(self, ctx, headers, buf=None, trailers=None):
        """decide() for a chain with a filter that awaits.

        Many requests of the chain are in flight at once, so each gets a
        handler of its own, found by the filters through the task's
        context; run each call as a task of its own.  Cancelling the task
        (a deadline, a client gone) cancels the filter that awaits, counts
        it as cancelled and raises CancelledError.
        """
        handler = StreamReceiverFilterHandler()
        token = _receive_handler.set(handler)
        observe = (
            self._observe
            if not ((self._seen + 1) & self._sample_mask)
            else None
        )
        clock = time.perf_counter
        filt = None
        i = 0
        try:
            for filt, name, waits in zip(
                self._receivers, self._receiver_names, self._receiver_awaits
            ):
                if observe is None:
                    # most requests: no timing, so no coroutine of its own
                    start = 0.0
                    status = filt.on_receive(ctx, headers, buf, trailers)
                    if waits:
                        status = await status
                else:
                    start = clock()
                    status = await _call_filter(
                        filt.on_receive,
                        (ctx, headers, buf, trailers),
                        waits,
                        observe,
                        name,
                        start,
                    )
                if handler.hijacked:
                    if observe is not None:
                        observe(name, "hijack", clock() - start)
                    break
                if status == STOP:
                    if observe is not None:
                        observe(name, "stop", clock() - start)
                    break
                if observe is not None:
                    observe(name, "continue", clock() - start)
                i += 1
        except Exception as exc:
            self._seen += 1
            self._count(i, FAILED)
            return self._failed(ctx, filt, exc)
        except BaseException:
            # cancelled: counted, and the task ends cancelled
            self._seen += 1
            self._count(i, CANCELLED)
            raise
        finally:
            _receive_handler.reset(token)
        # counted once the outcome is known, so a scrape of a chain with
        # requests in flight never counts one as passed that later stops
        self._seen += 1
        if i != len(self._receivers):
            self._count(i, HIJACKED if handler.hijacked else STOPPED)
        return self._finish_with(ctx, headers, filt, handler)

    async def run_send_async(self, ctx, status, headers, buf=None):
        """run_send() for a chain whose sender filters await; run each
        call as a task of its own."""
        handler = StreamSenderFilterHandler()
        handler.status = status
        token = _send_handler.set(handler)
        try:
            return await self._send_async(ctx, headers, buf, handler)
        finally:
            _send_handler.reset(token)

    async def _send_async(self, ctx, headers, buf, handler):
        decoded = False
        if buf is not None and self.decode_body:
            buf, decoded = self._decode(ctx, headers, buf)
        added_before = len(ctx.response_headers)
        observe = self._observe
        clock = time.perf_counter
        filt = None
        try:
            for filt, name, waits in zip(
                self._senders, self._sender_names, self._sender_awaits
            ):
                start = clock()
                outcome = await _call_filter(
                    filt.append,
                    (ctx, headers, buf, None),
                    waits,
                    observe,
                    name,
                    start,
                )
                if observe is not None:
                    observe(
                        name,
                        "stop" if outcome == STOP else "continue",
                        clock() - start,
                    )
                if outcome == STOP:
                    break
                if handler.body is not None:
                    buf = handler.body
        except Exception as exc:
            return self._failed(ctx, filt, exc)
        return self._send_verdict(
            ctx, headers, filt, added_before, handler.body, decoded
        )

    # -- the filters' life in a worker ----------------------------------

    async def start(self):
        """Runs the filters' start() hooks, in order; a hook that raises
        stops the worker from serving (it is reported by name)."""
        for name, filt in self.filters:
            hook = getattr(filt, "start", None)
            if not callable(hook):
                continue
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                raise RuntimeError(
                    f"filter {name} of chain {self.name}: start() raised "
                    f"{type(exc).__name__}: {exc}"
                ) from exc

    async def stop(self, deadline=None):
        """Runs the filters' stop() hooks in reverse order, then each one's
        on_destroy(); those that await get what is left until
        ``deadline`` (the loop's time; STOP_HOOK_TIMEOUT from now if
        None), STOP_HOOK_FLOOR at least while STOP_HOOK_OVERRUN lasts.
        Failures and hooks cut short are logged, not raised."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + STOP_HOOK_TIMEOUT
        last = deadline + STOP_HOOK_OVERRUN
        for name, filt in reversed(self.filters):
            for what in ("stop", "on_destroy"):
                hook = getattr(filt, what, None)
                if not callable(hook):
                    continue
                scope = None
                try:
                    result = hook()
                    if not inspect.isawaitable(result):
                        continue
                    now = loop.time()
                    left = min(
                        max(deadline - now, STOP_HOOK_FLOOR), last - now
                    )
                    if left <= 0:
                        if inspect.iscoroutine(result):
                            result.close()
                        self._cut_short(name, what)
                        continue
                    async with asyncio.timeout(left) as scope:
                        await result
                except Exception as exc:
                    if isinstance(exc, TimeoutError) and (
                        scope is not None and scope.expired()
                    ):
                        self._cut_short(name, what)
                        continue
                    _filter_log.error(
                        "filter %s of chain %s: %s() raised %s: %s",
                        name,
                        self.name,
                        what,
                        type(exc).__name__,
                        exc,
                        exc_info=exc,
                        extra={"filter_name": name, "chain": self.name},
                    )

    def _cut_short(self, name, what):
        _filter_log.error(
            "filter %s of chain %s: %s() was cut short: the stop() hooks "
            "of a worker have %g s in all",
            name,
            self.name,
            what,
            STOP_HOOK_TIMEOUT,
            extra={"filter_name": name, "chain": self.name},
        )

    # -- response phase ------------------------------------------------

    def run_send(self, ctx, status, headers, buf=None):
        """Runs the sender filters over the upstream's response.

        Edits of ``headers`` become ``response_set``/``response_remove``
        (a name keeps its lines apart: Set-Cookie cannot be joined), lines
        added with ``ctx.add_response_header`` in this phase become
        ``response_add``. ``buf`` is the body (bytes) or None; a body a
        filter sets with ``send_handler.set_body`` is the next filters'
        ``buf`` and becomes ``response_body``.
        """
        handler = self._send_handler
        handler.status = status
        handler.body = None
        decoded = False
        if buf is not None and self.decode_body:
            buf, decoded = self._decode(ctx, headers, buf)
        added_before = len(ctx.response_headers)
        observe = self._observe
        filt = None
        try:
            if observe is None:
                for filt in self._senders:
                    if filt.append(ctx, headers, buf, None) == STOP:
                        break
                    if handler.body is not None:
                        buf = handler.body
            else:
                clock = time.perf_counter
                for filt, name in zip(self._senders, self._sender_names):
                    start = clock()
                    try:
                        outcome = filt.append(ctx, headers, buf, None)
                    except Exception:
                        observe(name, "error", clock() - start)
                        raise
                    observe(
                        name,
                        "stop" if outcome == STOP else "continue",
                        clock() - start,
                    )
                    if outcome == STOP:
                        break
                    if handler.body is not None:
                        buf = handler.body
        except Exception as exc:
            return self._failed(ctx, filt, exc)
        return self._send_verdict(
            ctx, headers, filt, added_before, handler.body, decoded
        )

    def _send_verdict(
        self, ctx, headers, filt, added_before, body=None, decoded=False
    ):
        response_set, response_remove = (
            headers.to_records(join=False) if headers.edits else ([], [])
        )
        if (
            decoded
            and body is not None
            and not any(
                name.lower() == "content-encoding"
                for _, name, _ in headers.edits
            )
        ):
            # the filters replaced a body they got decoded: the new one is
            # sent as it is
            response_remove.append("Content-Encoding")
        verdict = Verdict(
            ACTION_CONTINUE,
            response_add=ctx.response_headers[added_before:],
            response_set=response_set,
            response_remove=response_remove,
            response_body=body,
        )
        try:
            check(verdict, self.limits)
        except VerdictError as exc:
            return self._refused(
                ctx, filt, exc, self._senders, self._sender_names
            )
        return verdict

    def _decode(self, ctx, headers, buf):
        """(body, decoded) for filters that asked for compressed bodies
        decoded: gzip and deflate, bounded by ``limits.max_decoded_body``;
        a body that cannot be decoded within it is not given (None)."""
        coding = (headers.get("content-encoding") or "").strip().lower()
        if coding in ("", "identity"):
            return buf, False
        if coding in ("gzip", "x-gzip"):
            wbits = 16 + zlib.MAX_WBITS
        elif coding == "deflate":
            # RFC 9110's deflate is zlib-wrapped; some send it raw
            wbits = zlib.MAX_WBITS if buf[:1] == b"\x78" else -zlib.MAX_WBITS
        else:
            return None, False
        limit = self.limits.max_decoded_body
        try:
            decoder = zlib.decompressobj(wbits)
            out = decoder.decompress(buf, limit + 1)
            if len(out) > limit:
                raise ValueError(f"it decodes past {limit} bytes")
            if not decoder.eof:
                raise ValueError("it ends before its compressed stream")
        except (zlib.error, ValueError) as exc:
            _filter_log.warning(
                "request %s (chain %s): the %s response body cannot be "
                "decoded for the filters, which get none: %s",
                getattr(ctx, "request_id", None),
                self.name,
                coding,
                exc,
                extra={
                    "request_id": getattr(ctx, "request_id", None),
                    "chain": self.name,
                },
            )
            return None, False
        return out, True

    # -- failures (off the hot path) ------------------------------------

    def _name_of(self, filt):
        for candidate, name in zip(
            self._receivers + self._senders,
            self._receiver_names + self._sender_names,
        ):
            if candidate is filt:
                return name
        return "-"

    def _failed(self, ctx, filt, exc):
        name = self._name_of(filt)
        request_id = getattr(ctx, "request_id", None)
        _filter_log.error(
            "filter %s raised on request %s (chain %s): %s: %s",
            name,
            request_id,
            self.name,
            type(exc).__name__,
            exc,
            exc_info=exc,
            extra={
                "filter_name": name,
                "request_id": request_id,
                "chain": self.name,
            },
        )
        return Verdict(
            ACTION_ERROR,
            log=_clip(f"filter {name} raised {type(exc).__name__}: {exc}"),
        )

    def _refused(self, ctx, last, exc, filters, names):
        # which filter made the bad edit is not tracked (that would cost every
        # request); name the filters that ran, the last one first
        ran = names[: filters.index(last) + 1] if last in filters else ()
        last_name = ran[-1] if ran else "-"
        request_id = getattr(ctx, "request_id", None)
        _filter_log.error(
            "verdict refused on request %s (chain %s, last filter %s, "
            "filters run: %s): %s",
            request_id,
            self.name,
            last_name,
            ", ".join(ran) or "-",
            exc.reason,
            extra={
                "filter_name": last_name,
                "request_id": request_id,
                "chain": self.name,
            },
        )
        return Verdict(
            ACTION_ERROR,
            log=_clip(
                f"verdict refused (chain {self.name}, last filter "
                f"{last_name}): {exc.reason}"
            ),
        )


async def _call_filter(method, args, waits, observe, name, start):
    """One filter's call in a chain that awaits: its result, awaited if the
    filter awaits; an exception, or the task's cancellation, is timed
    (when the chain is observed) before it goes on."""
    try:
        result = method(*args)
        if waits:
            result = await result
        return result
    except Exception:
        if observe is not None:
            observe(name, "error", time.perf_counter() - start)
        raise
    except BaseException:
        if observe is not None:
            observe(name, "cancelled", time.perf_counter() - start)
        raise


def build_filter(entry, path=""):
    """(type name, filter) from one ``stream_filters`` entry:
    ``{"type": ..., "config": {...}, "module": "optional.module.to.import"}``.
    """
    if not isinstance(entry, dict):
        raise ConfigError(
            f'a stream filter must be an object with a "type", not '
            f"{json_type(entry)}",
            path,
        )
    module = entry.get("module")
    if module is not None:
        try:
            registry.import_module(module)
        except Exception as exc:
            raise ConfigError(
                f"cannot import module {module!r}: "
                f"{type(exc).__name__}: {exc}",
                join_path(path, "module"),
            ) from exc
    type_name = entry.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise ConfigError(
            f"the filter type must be a non-empty string, not "
            f"{json_type(type_name)}",
            join_path(path, "type"),
        )
    try:
        factory = registry.get_filter(type_name)
    except registry.NotRegisteredError as exc:
        raise ConfigError(str(exc), join_path(path, "type")) from None
    config = entry.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"must be an object, not {json_type(config)}",
            join_path(path, "config"),
        )
    try:
        # a copy: a factory editing its config must not change config_dump
        filt = factory(copy.deepcopy(config))
    except ConfigError as exc:
        raise exc.located(join_path(path, "config")) from None
    except Exception as exc:
        raise ConfigError(
            f"filter {type_name!r} rejected its config: "
            f"{type(exc).__name__}: {exc}",
            join_path(path, "config"),
        ) from exc
    if not (is_receiver(filt) or is_sender(filt)):
        raise ConfigError(
            f"filter {type_name!r}: its factory returned {filt!r}, which "
            f"has neither on_receive nor append",
            join_path(path, "type"),
        )
    return type_name, filt


def is_receiver(filt):
    """Has a request-phase method of its own (not just the base's no-op)."""
    method = getattr(type(filt), "on_receive", None)
    return callable(method) and method is not StreamReceiverFilter.on_receive


def is_sender(filt):
    """Has a response-phase method of its own (not just the base's no-op)."""
    method = getattr(type(filt), "append", None)
    return (
        callable(method)
        and method is not StreamSenderFilter.append
        and not isinstance(filt, list)
    )


def _clip(text):
    return text if len(text) <= _MAX_LOG else text[: _MAX_LOG - 3] + "..."
