"""Properties of the wire formats: request records and verdicts survive
a round trip through the pure-Python codec and through a slot, and the C
verdict decoder (the one nginx runs) agrees with the Python one on every
buffer, valid, random or mutated."""

import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ringload import load_impl
from shm_ring import abi, codec
from shm_ring.codec import (
    ACTION_CONTINUE,
    ACTION_ERROR,
    ACTION_REPLY,
    Verdict,
    decode_request,
    decode_verdict,
    encode_request,
    encode_verdict,
)

SETTINGS = settings(
    deadline=None,
    max_examples=200,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
    ],
)
# a region round trip per example costs more: fewer of them
SLOT_SETTINGS = settings(SETTINGS, max_examples=100)

latin1 = st.text(alphabet=st.characters(max_codepoint=255), max_size=40)
latin1_or_bytes = latin1 | st.binary(max_size=40)
TCHARS = (
    "!#$%&'*+-.^_`|~0123456789"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
token = st.text(alphabet=TCHARS, min_size=1, max_size=24)
field_value = st.text(
    alphabet=st.characters(max_codepoint=255, blacklist_characters="\r\n\0"),
    max_size=40,
)
meta_key = st.text(alphabet="ABCxyz019_", min_size=1, max_size=64)
upstream = st.text(alphabet="abcXYZ0129_-.:[]", min_size=1, max_size=60)
log_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60
)


def _b(s):
    return s if isinstance(s, bytes) else s.encode("latin-1")


requests = st.fixed_dictionaries(
    {
        "chain": latin1_or_bytes,
        "method": latin1,
        "path": latin1_or_bytes,
        "query": latin1,
        "remote_addr": latin1,
        "protocol": latin1,
        "headers": st.lists(
            st.tuples(latin1_or_bytes, latin1_or_bytes), max_size=12
        ),
        "body": st.none() | st.binary(max_size=200),
        "request_id": st.integers(0, 2**64 - 1),
        # a status makes it the response record of the response phase,
        # which carries the request's metadata instead of a body
        "status": st.none() | st.integers(100, 999),
        "metadata": st.none()
        | st.dictionaries(
            st.text(alphabet="ABCxyz019_", min_size=1, max_size=64),
            st.text(
                alphabet=st.characters(
                    max_codepoint=255, blacklist_characters="\r\n\0"
                ),
                max_size=40,
            ),
            max_size=4,
        ),
    }
)


def response_fields(fields):
    """As the module writes them: metadata only on a response record,
    which may carry the response's body beside it."""
    fields = dict(fields)
    if fields["status"] is None:
        fields["metadata"] = None
    return fields


@SETTINGS
@given(requests)
def test_request_round_trip(fields):
    fields = response_fields(fields)
    got = decode_request(encode_request(**fields))
    assert got["request_id"] == fields["request_id"]
    for name in (
        "chain",
        "method",
        "path",
        "query",
        "remote_addr",
        "protocol",
    ):
        assert got[name] == _b(fields[name])
    assert got["body"] == fields["body"]
    assert got["headers"] == [(_b(n), _b(v)) for n, v in fields["headers"]]
    assert got["status"] == fields["status"]
    assert got["metadata"] == (fields["metadata"] or None)


@st.composite
def verdicts(draw):
    action = draw(
        st.sampled_from([ACTION_CONTINUE, ACTION_REPLY, ACTION_ERROR])
    )
    reply = action == ACTION_REPLY
    return Verdict(
        action=action,
        status=draw(st.integers(200, 599) if reply else st.integers(0, 65535)),
        upstream=draw(st.none() | upstream),
        metadata=draw(st.dictionaries(meta_key, field_value, max_size=5)),
        request_set=draw(st.lists(st.tuples(token, field_value), max_size=4)),
        request_remove=draw(st.lists(token, max_size=4)),
        response_add=draw(st.lists(st.tuples(token, field_value), max_size=4)),
        reply_headers=draw(st.lists(st.tuples(token, field_value), max_size=4))
        if reply
        else [],
        reply_body=draw(st.binary(max_size=100)) if reply else b"",
        log=draw(log_text),
        response_set=draw(st.lists(st.tuples(token, field_value), max_size=4)),
        response_remove=draw(st.lists(token, max_size=4)),
        response_body=draw(st.none() | st.binary(max_size=100)),
        **draw(
            st.sampled_from(
                [
                    {},
                    {"run_senders": True},
                    {"run_senders": True, "decode_body": True},
                ]
            )
            if action == ACTION_CONTINUE
            else st.just({})
        ),
    )


@SETTINGS
@given(verdicts())
def test_verdict_round_trip(v):
    buf = encode_verdict(v)
    assert decode_verdict(buf) == v
    assert codec.validate_verdict(buf) is None


@SETTINGS
@given(v=verdicts())
def test_c_decoder_accepts_what_python_encodes(v):
    ring = load_impl("cython")
    assert ring.validate_verdict(encode_verdict(v)) is None


def mutate(buf, data):
    """One of the edits a buggy or hostile worker could make."""
    buf = bytearray(buf)
    kind = data.draw(
        st.sampled_from(["flip", "byte", "u32", "truncate", "extend", "type"])
    )
    if kind == "truncate":
        return bytes(buf[: data.draw(st.integers(0, len(buf)))])
    if kind == "extend":
        return bytes(buf) + data.draw(st.binary(min_size=1, max_size=16))
    i = data.draw(st.integers(0, len(buf) - 1))
    if kind == "flip":
        buf[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "byte":
        buf[i] = data.draw(st.sampled_from([0, 10, 13, 32, 0x7F, 0xFF]))
    elif kind == "type":
        # a record's type byte, if one starts here (after the header)
        buf[i] = data.draw(st.integers(0, 12))
    elif i + 4 <= len(buf):
        struct.pack_into(
            "<I",
            buf,
            i,
            data.draw(
                st.sampled_from(
                    [
                        0,
                        1,
                        199,
                        200,
                        599,
                        600,
                        256,
                        257,
                        len(buf),
                        len(buf) + 1,
                        2**31,
                        2**32 - 1,
                    ]
                )
            ),
        )
    return bytes(buf)


@st.composite
def raw_verdicts(draw):
    """Verdict-shaped buffers: a header that matches the length, records
    of any type with keys and values that may break the rules."""
    recs = draw(
        st.lists(
            st.tuples(
                st.integers(0, 12),
                st.binary(max_size=8) | token.map(str.encode),
                st.binary(max_size=8)
                | field_value.map(lambda s: s.encode("latin-1")),
            ),
            max_size=6,
        )
    )
    body = b"".join(
        abi.RECORD.pack(t, len(k), len(v)) + k + v for t, k, v in recs
    )
    nrec = draw(
        st.sampled_from([len(recs), len(recs) + 1, max(len(recs) - 1, 0)])
    )
    return (
        abi.VERDICT.pack(
            16 + len(body),
            draw(st.integers(0, 3)),
            draw(st.sampled_from([0, 199, 200, 404, 599, 600])),
            nrec,
            draw(st.sampled_from([0, 1, 2, 2**32 - 1])),
        )
        + body
    )


def agree(buf):
    c = load_impl("cython").validate_verdict(buf)
    assert c == codec.validate_verdict(buf), buf


@SETTINGS
@given(st.binary(max_size=64))
@example(b"")
@example(b"\x10" + b"\0" * 15)
def test_decoders_agree_on_random_bytes(buf):
    agree(buf)


@SETTINGS
@given(verdicts(), st.data())
def test_decoders_agree_on_mutated_verdicts(v, data):
    agree(mutate(encode_verdict(v), data))


@SETTINGS
@given(raw_verdicts())
def test_decoders_agree_on_verdict_shaped_buffers(buf):
    agree(buf)


@pytest.fixture
def round_trip(impl, region_name):
    """A region with one consumer and one producer of `impl`."""
    r = impl.Region.create(
        region_name, nproducers=1, nconsumers=1, slots=2, slot_size=8192
    )
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    yield cons, prod
    r.close()


@SLOT_SETTINGS
@given(fields=requests, v=verdicts())
def test_slot_round_trip(round_trip, fields, v):
    """A record read in place from a slot has the fields it was encoded
    with, and the verdict written in place is encode_verdict()'s bytes."""
    cons, prod = round_trip
    fields = response_fields(fields)
    _, gen = prod.submit(0, encode_request(**fields))
    (p,) = cons.take()
    req = cons.request(p)
    assert req.request_id == fields["request_id"]
    for name in (
        "chain",
        "method",
        "path",
        "query",
        "remote_addr",
        "protocol",
    ):
        assert getattr(req, name) == _b(fields[name]).decode("latin-1")
    assert req.body == fields["body"]
    assert req.is_response == (fields["status"] is not None)
    assert req.status == (fields["status"] or 0)
    assert req.metadata == (fields["metadata"] or {})
    assert req.header_items() == [
        (_b(n).decode("latin-1"), _b(val).decode("latin-1"))
        for n, val in fields["headers"]
    ]
    assert cons.complete(p, v)
    assert prod.poll() == [(0, gen)]
    assert prod.verdict(0) == encode_verdict(v)
    prod.free(0)
