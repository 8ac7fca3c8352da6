"""The chain: order, STOP, hijack replies, failures, checks, observe."""

import logging

import pytest

from pyworker import (
    CONTINUE,
    STOP,
    ConfigError,
    Context,
    RequestHeaders,
    StreamReceiverFilter,
)
from pyworker.api import StreamSenderFilter
from pyworker.chain import Chain
from pyworker.verdict import (
    ACTION_CONTINUE,
    ACTION_ERROR,
    ACTION_REPLY,
    Limits,
    Verdict,
    VerdictError,
    check,
)


class Record(StreamReceiverFilter):
    """Notes that it ran, then does what it was told."""

    def __init__(self, log, name, result=CONTINUE):
        self.log, self.name, self.result = log, name, result

    def on_receive(self, ctx, headers, buf, trailers):
        self.log.append(self.name)
        return self.result


class Hijack(StreamReceiverFilter):
    def __init__(self, status=403, headers=None, body=None, result=STOP):
        self.args, self.result = (status, headers, body), result

    def on_receive(self, ctx, headers, buf, trailers):
        self.handler.send_hijack_reply(*self.args)
        return self.result


class Raise(StreamReceiverFilter):
    def on_receive(self, ctx, headers, buf, trailers):
        raise KeyError("no such thing")


class Do(StreamReceiverFilter):
    """Runs a function of (ctx, headers)."""

    def __init__(self, action):
        self.action = action

    def on_receive(self, ctx, headers, buf, trailers):
        self.action(ctx, headers)
        return CONTINUE


def run(chain, headers=(), request_id=1):
    return chain.run(
        Context(request_id, listener=chain.name), RequestHeaders(headers)
    )


def test_filters_run_in_order_and_make_a_continue_verdict():
    log = []

    def decide(ctx, headers):
        ctx.metadata["unit"] = "s1"
        ctx.upstream = "site_s1"
        ctx.add_response_header("x-served-by", "pyworker")

    chain = Chain(
        "c",
        [
            ("one", Record(log, 1)),
            ("two", Do(decide)),
            ("three", Record(log, 3)),
        ],
    )
    verdict = run(chain)
    assert log == [1, 3]
    assert verdict.action == ACTION_CONTINUE
    assert verdict.metadata == {"unit": "s1"}
    assert verdict.upstream == "site_s1"
    assert verdict.response_add == [("x-served-by", "pyworker")]
    assert verdict.request_set == [] and verdict.request_remove == []


def test_stop_ends_the_chain_and_the_request_goes_on():
    log = []
    chain = Chain(
        "c", [("one", Record(log, 1, STOP)), ("two", Record(log, 2))]
    )
    verdict = run(chain)
    assert log == [1]
    assert verdict.action == ACTION_CONTINUE


def test_returning_none_continues():
    log = []
    chain = Chain(
        "c", [("one", Record(log, 1, None)), ("two", Record(log, 2))]
    )
    run(chain)
    assert log == [1, 2]


def test_hijack_reply_ends_the_chain():
    log = []
    chain = Chain(
        "c",
        [
            ("deny", Hijack(403, {"x-why": "no"}, "go away\n")),
            ("never", Record(log, 2)),
        ],
    )
    verdict = run(chain)
    assert log == []
    assert verdict.action == ACTION_REPLY
    assert verdict.status == 403
    assert verdict.reply_headers == [("x-why", "no")]
    assert verdict.reply_body == b"go away\n"


def test_hijack_ends_the_chain_even_if_the_filter_returns_continue():
    log = []
    chain = Chain(
        "c", [("deny", Hijack(result=CONTINUE)), ("never", Record(log, 2))]
    )
    assert run(chain).action == ACTION_REPLY
    assert log == []


def test_hijack_reply_takes_pairs_bytes_and_response_headers():
    def add(ctx, headers):
        ctx.add_response_header("x-trace", "1")

    chain = Chain(
        "c",
        [
            ("add", Do(add)),
            ("reply", Hijack(200, [("x-a", "1"), ("x-a", "2")], b"\xff")),
        ],
    )
    verdict = run(chain)
    assert verdict.reply_headers == [
        ("x-a", "1"),
        ("x-a", "2"),
        ("x-trace", "1"),
    ]
    assert verdict.reply_body == b"\xff"


def test_hijack_body_str_is_utf8():
    verdict = run(Chain("c", [("r", Hijack(200, None, "h\xe9"))]))
    assert verdict.reply_body == "h\xe9".encode("utf-8")


def test_a_hijack_does_not_leak_into_the_next_request():
    class DenyBad(StreamReceiverFilter):
        def on_receive(self, ctx, headers, buf, trailers):
            if headers.get("bad"):
                self.handler.send_hijack_reply(400)
            return CONTINUE

    chain = Chain("c", [("deny", DenyBad())])
    assert run(chain, [("bad", "1")]).action == ACTION_REPLY
    assert run(chain).action == ACTION_CONTINUE


def test_a_raising_filter_gives_an_error_verdict_and_a_log_with_traceback(
    caplog,
):
    log = []
    chain = Chain(
        "c",
        [
            ("first", Record(log, 1)),
            ("auth", Raise()),
            ("never", Record(log, 3)),
        ],
    )
    with caplog.at_level(logging.ERROR, logger="pyworker.filter"):
        verdict = run(chain, request_id=4242)
    assert verdict.action == ACTION_ERROR
    assert (
        "auth" in verdict.log
        and "KeyError" in verdict.log
        and "no such thing" in verdict.log
    )
    assert log == [1]
    [record] = [r for r in caplog.records if r.name == "pyworker.filter"]
    message = record.getMessage()
    assert "auth" in message and "4242" in message
    assert record.filter_name == "auth" and record.request_id == 4242
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert "Traceback" in caplog.text


def test_the_worker_lives_on_after_a_failure():
    class FailOnce(StreamReceiverFilter):
        calls = 0

        def on_receive(self, ctx, headers, buf, trailers):
            FailOnce.calls += 1
            if FailOnce.calls == 1:
                raise ValueError("first request only")
            ctx.metadata["ok"] = "yes"
            return CONTINUE

    chain = Chain("c", [("flaky", FailOnce())])
    assert run(chain).action == ACTION_ERROR
    assert run(chain).metadata == {"ok": "yes"}


def test_a_refused_verdict_becomes_an_error_naming_chain_and_filter(caplog):
    def inject(ctx, headers):
        headers.set("x-evil", "a\r\nInjected: 1")

    chain = Chain("edge", [("injector", Do(inject))])
    with caplog.at_level(logging.ERROR, logger="pyworker.filter"):
        verdict = run(chain, request_id=77)
    assert verdict.action == ACTION_ERROR
    assert (
        "CR" in verdict.log
        and "edge" in verdict.log
        and "injector" in verdict.log
    )
    [record] = [r for r in caplog.records if r.name == "pyworker.filter"]
    assert "injector" in record.getMessage() and "77" in record.getMessage()


def test_a_bad_hijack_status_is_refused():
    verdict = run(Chain("c", [("r", Hijack(99))]))
    assert verdict.action == ACTION_ERROR and "99" in verdict.log


def test_observe_gets_every_filter_and_its_outcome():
    seen = []
    log = []
    chain = Chain(
        "c",
        [
            ("one", Record(log, 1)),
            ("two", Record(log, 2, STOP)),
            ("three", Record(log, 3)),
        ],
        observe=lambda name, outcome, seconds: seen.append(
            (name, outcome, seconds)
        ),
    )
    run(chain)
    assert [(n, o) for n, o, _ in seen] == [
        ("one", "continue"),
        ("two", "stop"),
    ]
    assert all(isinstance(s, float) and s >= 0 for _, _, s in seen)

    seen.clear()
    chain = Chain(
        "c", [("r", Hijack())], observe=lambda *a: seen.append(a[:2])
    )
    assert run(chain).action == ACTION_REPLY
    assert seen == [("r", "hijack")]

    seen.clear()
    chain = Chain(
        "c", [("bad", Raise())], observe=lambda *a: seen.append(a[:2])
    )
    assert run(chain).action == ACTION_ERROR
    assert seen == [("bad", "error")]


def test_sender_filters_edit_the_response():
    class Strip(StreamSenderFilter):
        def append(self, ctx, headers, buf, trailers):
            assert self.send_handler.status == 200
            headers.delete("server")
            headers.set("cache-control", "no-store")
            ctx.add_response_header("x-filtered", "1")
            return CONTINUE

    log = []
    chain = Chain("c", [("only_request", Record(log, 1)), ("strip", Strip())])
    assert chain.has_senders
    ctx = Context(1)
    ctx.add_response_header("x-from-request-phase", "1")
    verdict = chain.run_send(
        ctx, 200, RequestHeaders([("Server", "up"), ("Cache-Control", "max")])
    )
    assert log == []
    assert verdict.action == ACTION_CONTINUE
    assert verdict.response_remove == ["server"]
    assert verdict.response_set == [("cache-control", "no-store")]
    assert verdict.response_add == [("x-filtered", "1")]


def test_a_chain_without_senders_says_so():
    assert not Chain("c", [("r", Record([], 1))]).has_senders


def test_a_raising_sender_gives_an_error_verdict():
    class Bad(StreamSenderFilter):
        def append(self, ctx, headers, buf, trailers):
            raise RuntimeError("nope")

    verdict = Chain("c", [("bad", Bad())]).run_send(
        Context(1), 200, RequestHeaders()
    )
    assert verdict.action == ACTION_ERROR and "bad" in verdict.log


def test_a_sender_cannot_remove_the_framing():
    class Bad(StreamSenderFilter):
        def append(self, ctx, headers, buf, trailers):
            headers.delete("Content-Length")

    verdict = Chain("c", [("bad", Bad())]).run_send(
        Context(1), 200, RequestHeaders()
    )
    assert verdict.action == ACTION_ERROR and "Content-Length" in verdict.log


def test_an_object_without_filter_methods_is_refused():
    with pytest.raises(TypeError, match="neither on_receive nor append"):
        Chain("c", [("nothing", object())])


def test_from_stream_filters_reports_key_paths():
    with pytest.raises(ConfigError) as err:
        Chain.from_stream_filters("c", {"type": "echo"})
    assert str(err.value).startswith("stream_filters: must be an array")
    with pytest.raises(ConfigError) as err:
        Chain.from_stream_filters(
            "c", [{"type": "echo"}, "metadata"], path="x.stream_filters"
        )
    assert str(err.value).startswith("x.stream_filters[1]: ")
    with pytest.raises(ConfigError) as err:
        Chain.from_stream_filters("c", [{"config": {}}])
    assert str(err.value).startswith("stream_filters[0].type: ")


# -- verdict.check: every refusal ---------------------------------------


def refused(verdict, limits=Limits()):
    with pytest.raises(VerdictError) as err:
        check(verdict, limits)
    return err.value.reason


@pytest.mark.parametrize(
    "bad, why",
    [
        ("a\rb", "CR"),
        ("a\nb", "LF"),
        ("a\x00b", "NUL"),
        ("\u0100", "U+0100"),
        ("\U0001f600", "latin-1"),
    ],
)
@pytest.mark.parametrize("field", ["request_set", "response_add"])
def test_refuses_bad_header_values(field, bad, why):
    assert why in refused(Verdict(**{field: [("x-a", bad)]}))


def test_refuses_bad_reply_header_values():
    assert "LF" in refused(
        Verdict(ACTION_REPLY, 200, reply_headers=[("x-a", "1\n2")])
    )


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x a",
        "x:a",
        "x\r",
        "x\na",
        "x\x00",
        "caf\xe9",
        "\u0100",
        "(x)",
        "x" * 256,
    ],
)
def test_refuses_header_names_that_are_not_tokens(name):
    assert repr(name) in refused(Verdict(request_set=[(name, "v")]))
    assert repr(name) in refused(Verdict(request_remove=[name]))
    assert repr(name) in refused(
        Verdict(ACTION_REPLY, 200, reply_headers=[(name, "v")])
    )


def test_accepts_every_token_character():
    check(Verdict(request_set=[("!#$%&'*+-.^_`|~09AZaz", "v\t \xff")]))


def test_refuses_non_str_headers():
    assert "str" in refused(Verdict(request_set=[("x-a", 1)]))
    assert "str" in refused(Verdict(request_remove=[b"x-a"]))


@pytest.mark.parametrize(
    "status", [0, 100, 199, 600, 1000, -1, "200", 200.0, True]
)
def test_refuses_reply_status_out_of_range(status):
    assert "200..599" in refused(Verdict(ACTION_REPLY, status))


@pytest.mark.parametrize("status", [200, 302, 599])
def test_accepts_reply_status_in_range(status):
    check(Verdict(ACTION_REPLY, status))


def test_reply_body_limit():
    check(Verdict(ACTION_REPLY, 200, reply_body=b"x" * 65536))
    assert "65537" in refused(
        Verdict(ACTION_REPLY, 200, reply_body=b"x" * 65537)
    )
    assert "over the limit" in refused(
        Verdict(ACTION_REPLY, 200, reply_body=b"xy"), Limits(max_reply_body=1)
    )


def test_refuses_non_str_metadata():
    assert "str" in refused(Verdict(metadata={"unit": 1}))
    assert "str" in refused(Verdict(metadata={1: "s1"}))
    assert "str" in refused(Verdict(metadata={"unit": None}))


@pytest.mark.parametrize("key", ["", "a-b", "a.b", "a b", "\xe9", "k" * 65])
def test_refuses_bad_metadata_keys(key):
    assert "metadata key" in refused(Verdict(metadata={key: "v"}))


def test_accepts_metadata_keys_up_to_64():
    check(Verdict(metadata={"k" * 64: "v", "Unit_2": "s1"}))


def test_refuses_bad_metadata_values():
    assert "LF" in refused(Verdict(metadata={"unit": "s1\nx"}))


@pytest.mark.parametrize("upstream", ["", "a b", "a/b", "a\nb", "u" * 256, 5])
def test_refuses_bad_upstream_names(upstream):
    assert "upstream" in refused(Verdict(upstream=upstream))


@pytest.mark.parametrize(
    "upstream", ["site_s1", "10.0.0.1:8080", "[::1]:80", "a-b.c"]
)
def test_accepts_upstream_names(upstream):
    check(Verdict(upstream=upstream))


@pytest.mark.parametrize(
    "name", ["Host", "content-length", "Transfer-Encoding", "CONNECTION"]
)
def test_refuses_editing_the_headers_nginx_owns(name):
    for verdict in (
        Verdict(request_set=[(name, "x")]),
        Verdict(request_remove=[name]),
    ):
        reason = refused(verdict)
        assert name in reason and "nginx owns it" in reason


def test_refuses_framing_in_replies_but_allows_host_there():
    assert "nginx owns it" in refused(
        Verdict(ACTION_REPLY, 200, reply_headers=[("Content-Length", "5")])
    )
    check(Verdict(response_add=[("Host", "x")]))


def test_refuses_too_many_records():
    lines = [(f"x-{i}", "v") for i in range(256)]
    check(Verdict(request_set=lines))
    assert "257 records" in refused(Verdict(request_set=lines, upstream="u"))
    assert "over the limit of 3" in refused(
        Verdict(metadata={"a": "1", "b": "2"}, request_remove=["c", "d"]),
        Limits(max_records=3),
    )


def test_refuses_unknown_actions():
    assert "action" in refused(Verdict(7))


def test_verdict_to_dict_is_json_friendly():
    verdict = Verdict(
        ACTION_REPLY,
        200,
        metadata={"unit": "s1"},
        reply_headers=[("a", "b")],
        reply_body=b"hi",
    )
    assert verdict.to_dict() == {
        "action": "REPLY",
        "status": 200,
        "metadata": {"unit": "s1"},
        "reply_headers": [["a", "b"]],
        "reply_body": "hi",
    }
