"""The per-request fast paths of the binding, against both
implementations: the single-value header lookup and the metadata dict
written as a verdict, byte for byte what the codec encodes."""

import pytest

from shm_ring.codec import (
    ACTION_ERROR,
    Verdict,
    decode_verdict,
    encode_request,
    encode_verdict,
)


def one_request(make_region, headers):
    r = make_region()
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    prod.submit(0, encode_request(chain="c", headers=headers))
    (p,) = cons.take()
    return r, cons, prod, p


def test_header_get_is_the_first_value_without_case(impl, make_region):
    _, cons, _, p = one_request(
        make_region,
        [
            ("X-Forwarded-For", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("Uid", "2"),
            ("X-Latin", "caf\xe9"),
            ("Key", "k"),
        ],
    )
    req = cons.request(p)
    for name in ("x-forwarded-for", "X-FORWARDED-FOR"):
        assert req.header_get(name) == "1.1.1.1"
    assert req.header_get("uid") == "2"
    assert req.header_get("X-Latin") == "caf\xe9"
    assert req.header_get("ui") is None
    assert req.header_get("nothing", "-") == "-"
    # a name that is not ASCII is lowered as str.lower() does (K is the
    # Kelvin sign); the lookups of RequestHeaders.get did the same
    assert req.header_get("\u212aey") == "k"
    with pytest.raises(AttributeError):
        req.header_get(5)


METADATA = [
    {},
    {"unit": "s1"},
    {"UNIT": "s2", "IDC": "hz", "x": ""},
    {"latin": "caf\xe9"},
]


@pytest.mark.parametrize("metadata", METADATA, ids=range(len(METADATA)))
def test_metadata_dict_is_the_continue_verdict(impl, make_region, metadata):
    _, cons, prod, p = one_request(make_region, [])
    assert cons.complete(p, dict(metadata))
    assert prod.poll() == [(0, 1)]
    buf = prod.verdict(0)
    assert buf == encode_verdict(Verdict(metadata=metadata))
    assert impl.validate_verdict(buf) is None
    assert decode_verdict(buf) == Verdict(metadata=metadata)


@pytest.mark.parametrize("metadata", [{"k": 5}, {"k": "\u20ac"}])
def test_unwritable_metadata_dict_becomes_error(impl, make_region, metadata):
    _, cons, prod, p = one_request(make_region, [])
    assert cons.complete(p, metadata)
    prod.poll()
    v = decode_verdict(prod.verdict(0))
    assert v.action == ACTION_ERROR
    assert v.log.startswith("verdict not encodable: ")


def test_serve_batch_writes_a_metadata_dict(impl, make_region):
    _, cons, prod, p = one_request(make_region, [("uid", "7")])
    cons.complete(p, None)
    prod.poll()
    prod.free(0)
    prod.submit(0, encode_request(chain="c", headers=[("uid", "7")]))
    assert cons.serve_batch(lambda req: {"uid": req.header_get("uid")}) == 1
    prod.poll()
    assert prod.verdict(0) == encode_verdict(Verdict(metadata={"uid": "7"}))


def test_chain_names_read_again_are_the_same(impl, make_region):
    r = make_region(slots=8)
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    names = ["a", "b", "b", "", "caf\xe9", "caf\xe9", "a", "ab"]
    for slot, name in enumerate(names):
        prod.submit(slot, encode_request(chain=name))
    seen = [cons.request(p).chain for p in cons.take(8)]
    assert seen == names
