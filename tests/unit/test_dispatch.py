"""The Dispatcher: one context and one header map per listener, reset for
every request, and the metadata-only verdict handed back as a dict."""

import os

from pyworker import (
    CONTINUE,
    STOP,
    StreamReceiverFilter,
    config,
    register_filter,
)
from pyworker.api import Context
from pyworker.chain import Chain
from pyworker.dispatch import Dispatcher
from pyworker.headers import RequestHeaders
from pyworker.metrics import WorkerStats
from pyworker.verdict import Verdict
from shm_ring import codec, fallback

EXAMPLE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    os.pardir,
    os.pardir,
    "conf",
    "mosn.json",
)


def slot_request(**fields):
    """A record as the module writes it, read as a worker reads it."""
    buf = codec.encode_request(**fields)
    return fallback.parse_request(buf)


@register_filter("test_dirty")
class Dirty(StreamReceiverFilter):
    """Leaves a mark everywhere it can, and records what it found."""

    def __init__(self, config):
        self.seen = []

    def on_receive(self, ctx, headers, buf, trailers):
        self.seen.append(
            (
                dict(ctx.vars),
                dict(ctx.metadata),
                ctx.upstream,
                list(ctx.response_headers),
                headers.get("x-tag"),
                headers.items(),
                ctx.path,
                ctx.request_id,
            )
        )
        ctx.vars["mark"] = ctx.request_id
        ctx.metadata["mark"] = "m%d" % ctx.request_id
        ctx.upstream = "u%d" % ctx.request_id
        ctx.add_response_header("X-Mark", str(ctx.request_id))
        headers.set("X-Tag", "edited")
        headers.add("X-Added", "1")
        return CONTINUE


def test_nothing_leaks_from_one_request_to_the_next():
    chain = Chain.from_stream_filters("l", [{"type": "test_dirty"}])
    dispatch = Dispatcher({"l": chain})
    first = dispatch(
        slot_request(
            chain="l", path="/a", request_id=1, headers=[("X-Tag", "one")]
        )
    )
    second = dispatch(
        slot_request(
            chain="l", path="/b", request_id=2, headers=[("X-Tag", "two")]
        )
    )
    seen = chain.filters[0][1].seen
    assert seen[0] == ({}, {}, None, [], "one", [("X-Tag", "one")], "/a", 1)
    assert seen[1] == ({}, {}, None, [], "two", [("X-Tag", "two")], "/b", 2)
    assert first.metadata == {"mark": "m1"} and first.upstream == "u1"
    assert second.metadata == {"mark": "m2"}
    assert second.response_add == [("X-Mark", "2")]
    assert second.request_set == [("X-Tag", "edited"), ("X-Added", "1")]


def test_the_common_verdict_is_the_metadata_dict():
    gateway = config.load(EXAMPLE, log_warnings=False)
    chain = gateway.chains["serverListener"]
    stats = WorkerStats(None, "test")
    dispatch = Dispatcher({"in": chain}, stats)
    answers = [
        dispatch(slot_request(chain="in", headers=[("uid", uid)]))
        for uid in ("2", "150", "300", " 7\t", "abc", "2")
    ]
    # until check() has passed the key once, a Verdict; then plain dicts
    assert answers[0] in (Verdict(metadata={"unit": "s1"}), {"unit": "s1"})
    assert answers[1:] == [
        {"unit": "s2"},
        {"unit": "s3"},
        {"unit": "s1"},
        {},
        {"unit": "s1"},
    ]
    # the dicts are counted here, in the stats once folded, once
    assert stats.requests.get(("in", "continue"), 0) <= 1
    dispatch.fold_counts()
    dispatch.fold_counts()
    assert stats.requests == {("in", "continue"): 6}
    assert chain.counts == [[6, 0, 0, 0, 0]]
    # the chain's own answer is still a Verdict
    verdict = chain.run(Context(), RequestHeaders([("uid", "2")]))
    assert verdict == Verdict(metadata={"unit": "s1"})


@register_filter("test_stop_odd")
class StopOdd(StreamReceiverFilter):
    def __init__(self, config):
        pass

    def on_receive(self, ctx, headers, buf, trailers):
        return STOP if ctx.request_id % 2 else CONTINUE


def test_counts_add_up_with_passes_folded_in():
    chain = Chain.from_stream_filters(
        "l", [{"type": "test_stop_odd"}, {"type": "test_stop_odd"}]
    )
    dispatch = Dispatcher({"l": chain})
    for rid in range(5):
        dispatch(slot_request(chain="l", request_id=rid))
    # 0, 2, 4 pass both filters; 1 and 3 stop at the first
    assert chain.counts == [[3, 2, 0, 0, 0], [3, 0, 0, 0, 0]]
    assert list(chain.outcome_counts()) == [
        (("test_stop_odd", "continue"), 3),
        (("test_stop_odd", "stop"), 2),
        (("test_stop_odd", "continue"), 3),
    ]
    # read again: the passes are added once
    assert chain.counts == [[3, 2, 0, 0, 0], [3, 0, 0, 0, 0]]
