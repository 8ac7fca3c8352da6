"""The filter API in MOSN's words (set_receive_filter_handler,
set_sender_filter_handler, on_destroy, one HeaderMap), with the earlier
names kept as aliases that still work."""

import asyncio
import logging

from pyworker import (
    CONTINUE,
    HeaderMap,
    RequestHeaders,
    StreamReceiverFilter,
    StreamSenderFilter,
)
from pyworker.chain import Chain
from pyworker.headers import ResponseHeaders
from pyworker.testing import run_chain, run_response


def test_one_header_map_for_requests_and_responses():
    assert RequestHeaders is HeaderMap and ResponseHeaders is HeaderMap
    h = HeaderMap([("Uid", "2")])
    h.delete("uid")
    h.set("X-A", "1")
    assert h.get("uid") is None and h.get("x-a") == "1"


class Replies(StreamReceiverFilter):
    """Answers through the handler it was given, by MOSN's name."""

    def __init__(self, config=None):
        self.given = []

    def set_receive_filter_handler(self, handler):
        self.given.append(handler)
        super().set_receive_filter_handler(handler)

    def on_receive(self, ctx, headers, buf, trailers):
        self.handler.send_hijack_reply(403, body="no")
        return CONTINUE


class RepliesByTheEarlierName(StreamReceiverFilter):
    """Overrides only the earlier name: that one is called."""

    def __init__(self):
        self.given = []

    def set_receive_handler(self, handler):
        self.given.append(handler)
        self.handler = handler

    on_receive = Replies.on_receive


class DuckReplies:
    """No base class, the earlier name only."""

    def __init__(self):
        self.handler = None

    def set_receive_handler(self, handler):
        self.handler = handler

    def on_receive(self, ctx, headers, buf, trailers):
        self.handler.send_hijack_reply(403, body="no")
        return CONTINUE


def test_receive_handler_by_mosn_name_and_by_the_alias():
    assert (
        StreamReceiverFilter.set_receive_handler
        is StreamReceiverFilter.set_receive_filter_handler
    )
    for filt in (Replies(), RepliesByTheEarlierName(), DuckReplies()):
        verdict = run_chain(Chain("l", [("f", filt)]))
        assert verdict.status == 403 and verdict.reply_body == b"no", filt
        if hasattr(filt, "given"):
            assert len(filt.given) == 1


class Stamps(StreamSenderFilter):
    def set_sender_filter_handler(self, handler):
        super().set_sender_filter_handler(handler)
        self.seen = handler

    def append(self, ctx, headers, buf, trailers):
        headers.set("x-status", str(self.send_handler.status))
        return CONTINUE


class StampsByTheEarlierName(StreamSenderFilter):
    def set_send_handler(self, handler):
        self.send_handler = handler
        self.seen = handler

    def append(self, ctx, headers, buf, trailers):
        headers.set("x-status", str(self.send_handler.status))
        return CONTINUE


def test_sender_handler_by_mosn_name_and_by_the_alias():
    assert (
        StreamSenderFilter.set_send_handler
        is StreamSenderFilter.set_sender_filter_handler
    )
    for filt in (Stamps(), StampsByTheEarlierName()):
        verdict = run_response(Chain("l", [("f", filt)]), status=502)
        assert ("x-status", "502") in [
            (n.lower(), v) for n, v in verdict.response_set
        ], filt
        assert filt.seen is filt.send_handler


class Lifecycle(StreamReceiverFilter):
    def __init__(self, name, notes, fail=False):
        self.name, self.notes, self.fail = name, notes, fail

    async def stop(self):
        self.notes.append("stop " + self.name)

    def on_receive(self, ctx, headers, buf, trailers):
        return CONTINUE

    def on_destroy(self):
        self.notes.append("destroy " + self.name)
        if self.fail:
            raise RuntimeError("destroy failed")


def test_on_destroy_runs_once_after_stop_in_reverse_order(caplog):
    notes = []
    chain = Chain(
        "l",
        [
            ("a", Lifecycle("a", notes)),
            ("b", Lifecycle("b", notes, fail=True)),
        ],
    )
    with caplog.at_level(logging.ERROR, logger="pyworker.filter"):
        asyncio.run(chain.stop())
    assert notes == ["stop b", "destroy b", "stop a", "destroy a"]
    assert "on_destroy() raised RuntimeError" in caplog.text


def test_the_base_classes_on_destroy_does_nothing():
    StreamReceiverFilter().on_destroy()
    StreamSenderFilter().on_destroy()
