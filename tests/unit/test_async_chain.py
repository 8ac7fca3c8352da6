"""Filters and drivers that await: chains that mix them with plain ones,
many requests of one chain in flight at once, cancellation, the filters'
start() and stop() hooks, and the dispatcher's hand-off to a task."""

import asyncio
import logging

import pytest

from pyworker import (
    CONTINUE,
    STOP,
    MetadataDriver,
    StreamReceiverFilter,
    StreamSenderFilter,
    register_driver,
    register_filter,
)
from pyworker.api import Context
from pyworker.chain import Chain
from pyworker.dispatch import Dispatcher
from pyworker.headers import RequestHeaders
from pyworker.metrics import WorkerStats
from pyworker.testing import arun_chain, run_chain, run_response
from pyworker.verdict import ACTION_ERROR, ACTION_REPLY
from shm_ring import PENDING, codec, fallback


def slot_request(**fields):
    buf = codec.encode_request(**fields)
    return fallback.parse_request(buf)


@register_filter("test_async_tag")
class AsyncTag(StreamReceiverFilter):
    """Awaits a while, then tags the request with what it saw."""

    def __init__(self, config):
        self.delay = config.get("delay", 0.0)

    async def on_receive(self, ctx, headers, buf, trailers):
        seen = headers.get("x-id")
        await asyncio.sleep(self.delay)
        ctx.metadata["seen"] = seen
        headers.set("X-Tagged", seen or "-")
        return CONTINUE


@register_filter("test_sync_count")
class SyncCount(StreamReceiverFilter):
    def __init__(self, config):
        self.calls = 0

    def on_receive(self, ctx, headers, buf, trailers):
        self.calls += 1
        ctx.vars["sync"] = True
        return CONTINUE


@register_filter("test_async_deny")
class AsyncDeny(StreamReceiverFilter):
    """Answers 403 to requests whose x-id is odd, after a delay that makes
    the answers come in another order than the requests."""

    def __init__(self, config):
        pass

    async def on_receive(self, ctx, headers, buf, trailers):
        n = int(headers.get("x-id"))
        await asyncio.sleep(0.001 * (20 - n % 20))
        if n % 2:
            self.handler.send_hijack_reply(
                403, [("X-Denied", str(n))], "no %d" % n
            )
            return STOP
        return CONTINUE


@register_filter("test_async_forever")
class Forever(StreamReceiverFilter):
    def __init__(self, config):
        self.cancelled = 0

    async def on_receive(self, ctx, headers, buf, trailers):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return CONTINUE


@register_filter("test_async_raise")
class AsyncRaise(StreamReceiverFilter):
    def __init__(self, config):
        pass

    async def on_receive(self, ctx, headers, buf, trailers):
        await asyncio.sleep(0)
        raise ValueError("no luck")


@register_filter("test_async_sender")
class AsyncSender(StreamSenderFilter):
    def __init__(self, config):
        pass

    async def append(self, ctx, headers, buf, trailers):
        await asyncio.sleep(0.001 * (self.send_handler.status % 7))
        ctx.add_response_header("X-Status-Seen", str(self.send_handler.status))
        return CONTINUE


@register_driver("TEST_UNIT_AWAITS")
class AsyncUnit(MetadataDriver):
    def init(self, config):
        self.key = config.get("key", "uid")
        self.started = self.stopped = 0

    async def start(self):
        self.started += 1

    def stop(self):
        self.stopped += 1

    async def build_metadata(self, ctx, headers, buf, trailers):
        await asyncio.sleep(0)
        value = headers.get(self.key)
        if value is None:
            raise LookupError("no " + self.key)
        return "S" + value


HOOKS = []


@register_filter("test_hooks")
class Hooks(StreamReceiverFilter):
    def __init__(self, config):
        self.name = config["name"]
        self.fail = config.get("fail")

    async def start(self):
        await asyncio.sleep(0)
        HOOKS.append(("start", self.name))
        if self.fail == "start":
            raise OSError("cannot connect")

    async def stop(self):
        HOOKS.append(("stop", self.name))
        if self.fail == "stop":
            raise OSError("cannot close")
        if self.fail == "hang":
            await asyncio.sleep(3600)

    def on_receive(self, ctx, headers, buf, trailers):
        return CONTINUE


def chain_of(*filters, name="l"):
    return Chain.from_stream_filters(name, list(filters))


def request(n):
    ctx = Context(n, listener="l")
    return ctx, RequestHeaders([("X-Id", str(n))])


def test_a_chain_of_plain_filters_stays_inline():
    chain = chain_of(
        {"type": "test_sync_count"},
        {"type": "echo", "config": {"status": 200}},
    )
    assert not chain.is_async and not chain.sends_async
    assert run_chain(chain).action == ACTION_REPLY


def test_plain_and_awaiting_filters_mix_in_one_chain():
    chain = chain_of(
        {"type": "test_sync_count"},
        {"type": "test_async_tag"},
        {
            "type": "metadata",
            "config": {
                "metadataers": [
                    {"meta_data_key": "UNIT", "config": {"unit_key": "uid"}}
                ]
            },
        },
    )
    assert chain.is_async and not chain.sends_async
    verdict = run_chain(chain, {"X-Id": "7", "uid": "150"})
    assert verdict.metadata == {"seen": "7", "unit": "s2"}
    assert verdict.request_set == [("X-Tagged", "7")]
    assert chain.filters[0][1].calls == 1
    with pytest.raises(TypeError, match="run_async"):
        chain.run(*request(1))


def test_many_requests_of_one_chain_in_flight_keep_apart():
    """Each task has its own handler: the replies of 40 requests in flight
    together, ending in another order, go to the requests they belong
    to."""
    chain = chain_of({"type": "test_async_deny"}, {"type": "test_async_tag"})

    async def main():
        requests = [request(n) for n in range(40)]
        verdicts = await asyncio.gather(
            *(
                asyncio.ensure_future(chain.run_async(ctx, headers))
                for ctx, headers in requests
            )
        )
        return verdicts

    verdicts = asyncio.run(main())
    for n, verdict in enumerate(verdicts):
        if n % 2:
            assert verdict.action == ACTION_REPLY
            assert verdict.status == 403
            assert verdict.reply_headers == [("X-Denied", str(n))]
            assert verdict.reply_body == b"no %d" % n
        else:
            assert verdict.action != ACTION_REPLY
            assert verdict.metadata == {"seen": str(n)}
    assert chain.counts == [[20, 0, 20, 0, 0], [20, 0, 0, 0, 0]]


def test_a_cancelled_request_is_counted_and_cancels_its_filter():
    chain = chain_of(
        {"type": "test_sync_count"}, {"type": "test_async_forever"}
    )
    forever = chain.filters[1][1]

    async def main():
        task = asyncio.ensure_future(chain.decide_async(*request(1)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert forever.cancelled == 1
    assert chain.counts == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
    assert ("test_async_forever", "cancelled") in dict(chain.outcome_counts())


def test_a_filter_that_raises_after_awaiting_is_an_error_verdict(caplog):
    chain = chain_of({"type": "test_async_raise"})
    with caplog.at_level(logging.ERROR, logger="pyworker.filter"):
        verdict = run_chain(chain, {"X-Id": "1"})
    assert verdict.action == ACTION_ERROR
    assert "test_async_raise raised ValueError: no luck" in verdict.log
    assert chain.counts == [[0, 0, 0, 1, 0]]


def test_requests_in_flight_are_not_counted_before_they_end():
    """A scrape while a request awaits must not count it as passed: it
    may stop later, and counters never go down."""
    chain = chain_of({"type": "test_async_deny"})

    async def main():
        task = asyncio.ensure_future(chain.decide_async(*request(1)))
        await asyncio.sleep(0)
        assert chain.counts == [[0, 0, 0, 0, 0]]
        await task
        assert chain.counts == [[0, 0, 1, 0, 0]]

    asyncio.run(main())


def test_timing_of_a_filter_that_awaits_spans_its_await():
    seen = []
    chain = Chain.from_stream_filters(
        "l", [{"type": "test_async_tag", "config": {"delay": 0.02}}]
    )
    chain.set_observer(lambda *args: seen.append(args), 1)
    run_chain(chain, {"X-Id": "1"})
    ((name, outcome, seconds),) = seen
    assert (name, outcome) == ("test_async_tag", "continue")
    assert seconds >= 0.02


def test_a_driver_that_awaits_makes_the_metadata_filter_await():
    config = {
        "type": "metadata",
        "config": {
            "metadataers": [
                {
                    "meta_data_key": "TEST_UNIT_AWAITS",
                    "config": {"key": "uid"},
                },
                {"meta_data_key": "UNIT", "config": {"unit_key": "uid"}},
            ]
        },
    }
    chain = chain_of(config)
    assert chain.is_async
    driver = chain.filters[0][1].drivers["test_unit_awaits"]
    assert run_chain(chain, {"uid": "5"}).metadata == {
        "test_unit_awaits": "s5",
        "unit": "s1",
    }
    # its start() and stop() ran with the filter's (one loop per call)
    assert (driver.started, driver.stopped) == (1, 1)
    # a driver that raises leaves its key unset, the others still run
    assert run_chain(chain, {}).metadata == {}
    assert chain.filters[0][1].driver_errors == 2
    # a metadata filter of plain drivers stays plain
    assert not chain_of(
        {
            "type": "metadata",
            "config": {
                "metadataers": [{"meta_data_key": "UNIT", "config": {}}]
            },
        }
    ).is_async


def test_sender_filters_that_await_see_their_own_status():
    chain = chain_of({"type": "test_async_sender"})
    assert chain.sends_async and not chain.is_async
    verdict = run_response(chain, 503, {"Server": "up"})
    assert verdict.response_add == [("X-Status-Seen", "503")]

    async def main():
        headers = [RequestHeaders() for _ in range(20)]
        return await asyncio.gather(
            *(
                asyncio.ensure_future(
                    chain.run_send_async(Context(i), 200 + i, headers[i])
                )
                for i in range(20)
            )
        )

    for i, verdict in enumerate(asyncio.run(main())):
        assert verdict.response_add == [("X-Status-Seen", str(200 + i))]


def test_start_and_stop_hooks_run_once_in_order():
    HOOKS.clear()
    chain = chain_of(
        {"type": "test_hooks", "config": {"name": "a"}},
        {"type": "test_async_tag"},
        {"type": "test_hooks", "config": {"name": "b"}},
    )
    run_chain(chain, {"X-Id": "1"})
    assert HOOKS == [
        ("start", "a"),
        ("start", "b"),
        ("stop", "b"),
        ("stop", "a"),
    ]


def test_a_start_hook_that_fails_is_reported_by_name():
    chain = chain_of(
        {"type": "test_hooks", "config": {"name": "a", "fail": "start"}}
    )
    with pytest.raises(
        RuntimeError,
        match="filter test_hooks of chain l: "
        "start\\(\\) raised OSError: cannot connect",
    ):
        asyncio.run(chain.start())


def test_stop_hooks_that_fail_or_hang_do_not_stop_the_others(
    monkeypatch, caplog
):
    monkeypatch.setattr("pyworker.chain.STOP_HOOK_TIMEOUT", 0.05)
    HOOKS.clear()
    chain = chain_of(
        {"type": "test_hooks", "config": {"name": "a"}},
        {"type": "test_hooks", "config": {"name": "b", "fail": "hang"}},
        {"type": "test_hooks", "config": {"name": "c", "fail": "stop"}},
    )
    with caplog.at_level(logging.ERROR, logger="pyworker.filter"):
        asyncio.run(chain.stop())
    assert HOOKS == [("stop", "c"), ("stop", "b"), ("stop", "a")]
    assert "stop() raised OSError: cannot close" in caplog.text
    # b took the whole budget; a, after it, still ran in its moment
    assert "filter test_hooks of chain l: stop() was cut short" in caplog.text


def test_arun_chain_runs_in_a_running_loop():
    chain = chain_of({"type": "test_async_tag"})

    async def main():
        return await arun_chain(chain, {"X-Id": "3"})

    assert asyncio.run(main()).metadata == {"seen": "3"}


def test_the_dispatcher_hands_a_chain_that_awaits_to_a_task():
    chains = {
        "a": chain_of({"type": "test_async_tag"}, name="a"),
        "s": chain_of({"type": "test_sync_count"}, name="s"),
    }
    spawned = []
    stats = WorkerStats(None, "t")
    dispatch = Dispatcher(
        chains,
        stats,
        spawn=lambda req, work, listener: spawned.append(
            (req, work, listener)
        ),
    )
    first = slot_request(chain="a", request_id=1, headers=[("X-Id", "1")])
    second = slot_request(chain="a", request_id=2, headers=[("X-Id", "2")])
    assert dispatch(first) is PENDING
    assert dispatch(second) is PENDING
    # the plain chain is answered inline, as ever
    assert dispatch(slot_request(chain="s", request_id=3)) == {}
    (r1, w1, l1), (r2, w2, l2) = spawned
    assert (r1, l1, r2, l2) == (first, "a", second, "a")

    async def main():
        # each request has its own context and headers, even in flight
        return await asyncio.gather(w2, w1)

    v2, v1 = asyncio.run(main())
    assert v1.metadata == {"seen": "1"} and v2.metadata == {"seen": "2"}
    assert v1.request_set == [("X-Tagged", "1")]


def test_a_dispatcher_with_no_loop_refuses_a_chain_that_awaits():
    dispatch = Dispatcher(
        {"a": chain_of({"type": "test_async_tag"}, name="a")}
    )
    verdict = dispatch(slot_request(chain="a"))
    assert verdict.action == ACTION_ERROR
    assert "awaits" in verdict.log


def test_a_chain_whose_senders_await_answers_requests_inline():
    chain = chain_of(
        {"type": "test_sync_count"}, {"type": "test_async_sender"}, name="r"
    )
    spawned = []
    dispatch = Dispatcher({"r": chain}, spawn=lambda *a: spawned.append(a))
    verdict = dispatch(slot_request(chain="r"))
    assert verdict is not PENDING and verdict.run_senders
    assert not spawned
    response = slot_request(chain="r", status=502)
    assert dispatch(response) is PENDING
    ((req, work, listener),) = spawned
    assert asyncio.run(work).response_add == [("X-Status-Seen", "502")]
