"""The response phase in Python: which verdicts ask for it, what sender
filters see of a response record, and how their edits are written."""

import gzip
import os
import zlib

import pytest

from pyworker import (
    CONTINUE,
    StreamReceiverFilter,
    StreamSenderFilter,
    register_filter,
)
from pyworker.api import StreamSenderFilterHandler
from pyworker.chain import Chain
from pyworker.dispatch import Dispatcher
from pyworker.headers import RequestHeaders
from pyworker.testing import run_chain, run_response
from pyworker.verdict import (
    ACTION_CONTINUE,
    ACTION_ERROR,
    Limits,
    Verdict,
    VerdictError,
    check,
)
from shm_ring import abi, codec, fallback


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
    flags = abi.VERDICT.unpack_from
    assert (
        flags(codec.encode_verdict(run_chain(SENDERS)))[4]
        == abi.VERDICT_F_SENDERS
    )
    assert flags(codec.encode_verdict(run_chain(NO_SENDERS)))[4] == 0
    assert (
        flags(codec.encode_verdict(run_chain(SENDERS, {"x-reply": "1"})))[4]
        == 0
    )


def test_run_response_gives_the_edits():
    verdict = run_response(
        SENDERS,
        503,
        [("X-Internal-Trace", "abc"), ("Content-Type", "text/html")],
    )
    assert verdict.response_remove == ["X-Internal-Trace"]
    assert verdict.response_set == []
    assert verdict.response_add == [("Retry-After", "1")]
    assert run_response(SENDERS, 200, [("X-Other", "1")]).response_add == []


def test_set_cookie_lines_are_not_joined_in_a_response():
    headers = RequestHeaders([("Set-Cookie", "a=1")])
    headers.add("Set-Cookie", "b=2")
    assert headers.to_records(join=False) == (
        [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
        [],
    )
    # a request header with several lines is still one line upstream
    assert headers.to_records() == ([("Set-Cookie", "a=1, b=2")], [])


def slot_request(**fields):
    """A record as the module writes it, read as a worker reads it."""
    buf = codec.encode_request(**fields)
    return fallback.parse_request(buf)


def test_the_dispatcher_runs_the_senders_on_a_response_record():
    chains = {
        "l": Chain.from_stream_filters("l", SENDERS),
        "plain": Chain.from_stream_filters("plain", NO_SENDERS),
    }
    dispatch = Dispatcher(chains)
    response = dict(
        chain="l",
        status=502,
        request_id=9,
        headers=[("X-Internal-Host", "db1"), ("X-Up", "1")],
    )
    verdict = dispatch(slot_request(**response))
    assert verdict.response_remove == ["X-Internal-Host"]
    assert verdict.response_add == [("Retry-After", "1")]
    assert verdict.run_senders is False
    # the request record of the same chain gets the request phase
    assert dispatch(slot_request(chain="l")).run_senders is True
    # a chain that lost its senders (a reload between the phases)
    assert dispatch(slot_request(**dict(response, chain="plain"))) is None


# -- the response body ------------------------------------------------------


@register_filter("test_redact")
class Redact(StreamSenderFilter):
    """Replaces one word of the body; says what it was given."""

    def __init__(self, config):
        self.word = config.get("word", "secret").encode()
        self.decode_body = config.get("decode_body", False)

    def append(self, ctx, headers, buf, trailers):
        ctx.add_response_header(
            "x-given", "none" if buf is None else str(len(buf))
        )
        if buf is not None and self.word in buf:
            self.send_handler.set_body(buf.replace(self.word, b"***"))
        return CONTINUE


@register_filter("test_body_as")
class BodyAs(StreamSenderFilter):
    """Sets whatever its config says, as it says it."""

    def __init__(self, config):
        self.value = config["value"]

    def append(self, ctx, headers, buf, trailers):
        self.send_handler.set_body(self.value)
        return CONTINUE


REDACT = [{"type": "test_redact"}]


def test_a_sender_filter_reads_and_replaces_the_body():
    verdict = run_response(
        REDACT,
        200,
        [("Content-Type", "text/plain")],
        body=b"the secret is out",
    )
    assert verdict.response_body == b"the *** is out"
    assert verdict.response_add == [("x-given", "17")]
    # left alone, the body is not in the verdict: nginx sends the old one
    assert run_response(REDACT, 200, body=b"nothing").response_body is None
    # without body access the filters get None
    assert run_response(REDACT, 200).response_add == [("x-given", "none")]
    # the new body reaches the wire, and comes back as it went
    wire = codec.encode_verdict(verdict)
    assert codec.decode_verdict(wire).response_body == b"the *** is out"


def test_the_next_filter_sees_the_new_body():
    chain = [
        {"type": "test_redact", "config": {"word": "one"}},
        {"type": "test_redact", "config": {"word": "two"}},
    ]
    verdict = run_response(chain, 200, body="one two three")
    assert verdict.response_body == b"*** *** three"


def test_set_body_takes_str_and_bytes_only():
    for value, want in [
        ("h\u00e9", "h\u00e9".encode()),
        (b"", b""),
        (bytearray(b"ab"), b"ab"),
    ]:
        handler = StreamSenderFilterHandler()
        handler.set_body(value)
        assert handler.body == want
    verdict = run_response(
        [{"type": "test_body_as", "config": {"value": ["no"]}}], 200, body=b"x"
    )
    assert verdict.action == ACTION_ERROR
    assert "must be str or bytes, not list" in verdict.log


def test_compressed_bodies_decoded_for_filters_that_ask():
    raw = b"the secret of gzip " * 50
    asks = [{"type": "test_redact", "config": {"decode_body": True}}]
    assert run_chain(asks).decode_body is True
    assert run_chain(REDACT).decode_body is False
    flags = abi.VERDICT.unpack_from(codec.encode_verdict(run_chain(asks)))[4]
    assert flags == abi.VERDICT_F_SENDERS | abi.VERDICT_F_DECODE
    deflated = zlib.compress(raw)
    raw_deflate = zlib.compressobj(wbits=-15)
    raw_deflate = raw_deflate.compress(raw) + raw_deflate.flush()
    for coding, data in [
        ("gzip", gzip.compress(raw)),
        ("x-gzip", gzip.compress(raw)),
        ("deflate", deflated),
        ("deflate", raw_deflate),
    ]:
        verdict = run_response(
            asks, 200, [("Content-Encoding", coding)], body=data
        )
        assert verdict.response_body == raw.replace(b"secret", b"***")
        # the new body is sent as it is, not as the upstream's coding
        assert verdict.response_remove == ["Content-Encoding"]
    # a filter that did not ask gets the compressed bytes as they came
    verdict = run_response(
        REDACT, 200, [("Content-Encoding", "gzip")], body=gzip.compress(raw)
    )
    assert verdict.response_add == [("x-given", str(len(gzip.compress(raw))))]


def test_bodies_that_cannot_be_decoded_are_not_given(caplog):
    asks = Chain.from_stream_filters(
        "l",
        [{"type": "test_redact", "config": {"decode_body": True}}],
        limits=Limits(max_decoded_body=1000),
    )
    bomb = gzip.compress(b"\0" * 100000)
    for coding, data, why in [
        ("gzip", bomb, "decodes past 1000 bytes"),
        ("gzip", b"not gzip", "Error -3"),
        (
            "gzip",
            gzip.compress(b"x" * 500)[:-12],
            "ends before its compressed stream",
        ),
        ("br", b"?", None),
    ]:
        caplog.clear()
        verdict = run_response(
            asks, 200, [("Content-Encoding", coding)], body=data
        )
        assert verdict.action == ACTION_CONTINUE
        assert verdict.response_add == [("x-given", "none")]
        assert verdict.response_body is None
        if why:
            assert why in caplog.text


def test_the_dispatcher_hands_over_the_response_body():
    dispatch = Dispatcher({"l": Chain.from_stream_filters("l", REDACT)})
    verdict = dispatch(
        slot_request(
            chain="l",
            status=200,
            request_id=3,
            metadata={"UNIT": "s1"},
            body=b"a secret",
        )
    )
    assert verdict.response_body == b"a ***"
    assert verdict.response_add == [("x-given", "8")]


def test_check_refuses_a_body_that_is_not_bytes():
    with pytest.raises(VerdictError, match="response body must be bytes"):
        check(Verdict(response_body="text"))
    check(Verdict(response_body=b""))


def test_the_readme_body_filter_works_as_shown():
    readme = os.path.join(
        os.path.dirname(__file__), os.pardir, os.pardir, "README.md"
    )
    with open(readme) as f:
        text = f.read()
    section = text[text.index("## Response bodies") :]
    code = section[section.index("```python") + 9 :]
    exec(code[: code.index("```")], {})
    page = b'{"user": "ada", "card" : "4111-1111-1111-1111"}'
    verdict = run_response([{"type": "redact_card"}], 200, body=page)
    assert verdict.response_body == b'{"user": "ada", "card" : "****"}'
    raw = run_response(
        [{"type": "redact_card", "config": {"decode_body": True}}],
        200,
        [("Content-Encoding", "gzip")],
        body=gzip.compress(page),
    )
    assert raw.response_body == b'{"user": "ada", "card" : "****"}'
    assert raw.response_remove == ["Content-Encoding"]


@register_filter("test_redact_async")
class RedactAsync(StreamSenderFilter):
    """An async sender filter: each response a task, its body its own."""

    def __init__(self, config):
        pass

    async def append(self, ctx, headers, buf, trailers):
        import asyncio

        await asyncio.sleep(0)
        if buf is not None:
            self.send_handler.set_body(buf.replace(b"secret", b"***"))
            ctx.add_response_header("x-new", str(len(self.send_handler.body)))
        return CONTINUE


def test_an_async_sender_filter_replaces_the_body():
    chain = [
        {"type": "test_redact_async"},
        {"type": "test_redact", "config": {"word": "a "}},
    ]
    verdict = run_response(chain, 200, body=b"a secret")
    # the plain filter after it got the new body, and replaced it again
    assert verdict.response_body == b"******"
    assert ("x-new", "5") in verdict.response_add
    assert ("x-given", "5") in verdict.response_add
    assert run_response(chain, 200).response_body is None
