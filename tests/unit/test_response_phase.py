"""The response phase in Python: which verdicts ask for it, what sender
filters see of a response record, and how their edits are written."""

from pyworker import (CONTINUE, StreamReceiverFilter, StreamSenderFilter,
                      register_filter)
from pyworker.chain import Chain
from pyworker.dispatch import Dispatcher
from pyworker.headers import RequestHeaders
from pyworker.testing import run_chain, run_response
from shm_ring import codec, fallback


@register_filter("test_strip_internal")
class StripInternal(StreamSenderFilter):
    def __init__(self, config):
        self.prefix = config.get("prefix", "x-internal-")

    def append(self, ctx, headers, buf, trailers):
        for name, _ in headers.items():
            if name.lower().startswith(self.prefix):
                headers.delete(name)
        if self.send_handler.status >= 500:
            ctx.add_response_header("Retry-After", "1")
        return CONTINUE


@register_filter("test_reply_early")
class ReplyEarly(StreamReceiverFilter):
    def __init__(self, config):
        pass

    def on_receive(self, ctx, headers, buf, trailers):
        if headers.get("x-reply"):
            self.handler.send_hijack_reply(204)
        return CONTINUE


SENDERS = [{"type": "test_reply_early"}, {"type": "test_strip_internal"}]
NO_SENDERS = [{"type": "test_reply_early"}]


def test_only_chains_with_sender_filters_ask_for_the_response():
    assert run_chain(SENDERS).run_senders is True
    assert run_chain(NO_SENDERS).run_senders is False
    # a direct reply has no upstream response to filter
    assert run_chain(SENDERS, {"x-reply": "1"}).run_senders is False


def test_the_flag_reaches_the_wire_only_on_continue():
    flags = codec.VERDICT_HEADER.unpack_from
    assert flags(codec.encode_verdict(run_chain(SENDERS)))[4] == \
        codec.F_SENDERS
    assert flags(codec.encode_verdict(run_chain(NO_SENDERS)))[4] == 0
    assert flags(codec.encode_verdict(
        run_chain(SENDERS, {"x-reply": "1"})))[4] == 0


def test_run_response_gives_the_edits():
    verdict = run_response(SENDERS, 503, [("X-Internal-Trace", "abc"),
                                          ("Content-Type", "text/html")])
    assert verdict.response_remove == ["X-Internal-Trace"]
    assert verdict.response_set == []
    assert verdict.response_add == [("Retry-After", "1")]
    assert run_response(SENDERS, 200, [("X-Other", "1")]).response_add == []


def test_set_cookie_lines_are_not_joined_in_a_response():
    headers = RequestHeaders([("Set-Cookie", "a=1")])
    headers.add("Set-Cookie", "b=2")
    assert headers.to_records(join=False) == (
        [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], [])
    # a request header with several lines is still one line upstream
    assert headers.to_records() == ([("Set-Cookie", "a=1, b=2")], [])


def slot_request(**fields):
    """A record as the module writes it, read as a worker reads it."""
    buf = codec.encode_request(**fields)
    return fallback._slot_request(buf, 0, len(buf))


def test_the_dispatcher_runs_the_senders_on_a_response_record():
    chains = {"l": Chain.from_stream_filters("l", SENDERS),
              "plain": Chain.from_stream_filters("plain", NO_SENDERS)}
    dispatch = Dispatcher(chains)
    response = dict(chain="l", status=502, request_id=9,
                    headers=[("X-Internal-Host", "db1"), ("X-Up", "1")])
    verdict = dispatch(slot_request(**response))
    assert verdict.response_remove == ["X-Internal-Host"]
    assert verdict.response_add == [("Retry-After", "1")]
    assert verdict.run_senders is False
    # the request record of the same chain gets the request phase
    assert dispatch(slot_request(chain="l")).run_senders is True
    # a chain that lost its senders (a reload between the phases)
    assert dispatch(slot_request(**dict(response, chain="plain"))) is None
