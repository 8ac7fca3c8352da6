"""RequestHeaders: case-insensitive, lazy over its source, edits in order."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyworker import Context
from pyworker.headers import RequestHeaders
from pyworker.testing import run_chain


class CountingHeaders(RequestHeaders):
    """A source that counts how it is read, like the shared-memory one."""

    __slots__ = ("lookups", "scans")

    def __init__(self, pairs=()):
        super().__init__(pairs)
        self.lookups = []
        self.scans = 0

    def _source_get_all(self, lname):
        self.lookups.append(lname)
        return super()._source_get_all(lname)

    def _source_items(self):
        self.scans += 1
        return super()._source_items()


def test_lookup_ignores_case():
    h = RequestHeaders([("Content-Type", "text/plain"), ("UID", "7")])
    assert h.get("content-type") == "text/plain"
    assert h.get("CONTENT-TYPE") == "text/plain"
    assert h.get("uid") == "7"
    assert "Uid" in h
    assert "missing" not in h
    assert h.get("missing") is None
    assert h.get("missing", "d") == "d"
    assert h.get_all("missing") == []


def test_duplicates_keep_arrival_order():
    h = RequestHeaders([("A", "1"), ("b", "2"), ("a", "3")])
    assert h.get("a") == "1"
    assert h.get_all("A") == ["1", "3"]
    assert h.items() == [("A", "1"), ("b", "2"), ("a", "3")]
    assert list(h) == h.items()
    assert len(h) == 3


def test_constructor_takes_a_dict():
    assert RequestHeaders({"uid": "2"}).get("UID") == "2"


def test_get_all_returns_a_copy():
    h = RequestHeaders([("a", "1")])
    h.get_all("a").append("x")
    assert h.get_all("a") == ["1"]


def test_get_does_one_lookup_and_never_scans():
    h = CountingHeaders(
        [("Host", "example.com"), ("uid", "7"), ("Accept", "*/*")]
    )
    assert h.get("uid") == "7"
    assert h.lookups == ["uid"]
    assert h.scans == 0


def test_a_filter_reading_one_header_pays_for_one_lookup(unit_filter):
    h = CountingHeaders([("Host", "example.com"), ("UID", "150")])
    verdict = run_chain([unit_filter("uid")], h)
    assert verdict.metadata == {"unit": "s2"}
    assert h.lookups == ["uid"]
    assert h.scans == 0


def test_contains_and_get_all_do_not_scan():
    h = CountingHeaders([("uid", "7")])
    assert "UID" in h
    assert h.get_all("uid") == ["7"]
    assert h.lookups == ["uid", "uid"]
    assert h.scans == 0


def test_edits_do_not_read_the_source():
    h = CountingHeaders([("a", "1")])
    h.set("x-new", "v")
    h.delete("b")
    assert h.lookups == [] and h.scans == 0
    assert h.get("x-new") == "v"
    assert h.scans == 0


def test_set_replaces_every_line_at_the_first_position():
    h = RequestHeaders([("A", "1"), ("b", "2"), ("a", "3")])
    h.set("a", "9")
    assert h.get_all("A") == ["9"]
    assert h.items() == [("a", "9"), ("b", "2")]


def test_add_keeps_existing_lines_and_appends():
    h = RequestHeaders([("a", "1"), ("b", "2")])
    h.add("A", "3")
    assert h.get("a") == "1"
    assert h.get_all("a") == ["1", "3"]
    assert h.items() == [("a", "1"), ("b", "2"), ("A", "3")]


def test_delete_removes_every_line():
    h = RequestHeaders([("a", "1"), ("b", "2"), ("A", "3")])
    h.delete("a")
    assert "a" not in h
    assert h.get("a") is None
    assert h.get_all("a") == []
    assert h.items() == [("b", "2")]
    h.add("a", "4")
    assert h.get_all("a") == ["4"]


def test_edits_are_recorded_in_order():
    h = RequestHeaders([("a", "1")])
    h.set("X-One", "1")
    h.add("x-two", "2")
    h.delete("a")
    h.add("X-One", "again")
    assert h.edits == [
        ("set", "X-One", "1"),
        ("add", "x-two", "2"),
        ("del", "a", None),
        ("add", "X-One", "again"),
    ]
    assert h.items() == [("X-One", "1"), ("x-two", "2"), ("X-One", "again")]


def test_edits_only_accept_str():
    h = RequestHeaders()
    with pytest.raises(TypeError):
        h.set("a", 1)
    with pytest.raises(TypeError):
        h.add(b"a", "1")
    with pytest.raises(TypeError):
        h.delete(None)
    assert h.edits == []


def test_latin1_values_survive():
    raw = "caf\xe9 \xff\xfe"  # bytes that are not UTF-8, decoded as latin-1
    h = RequestHeaders([("x-raw", raw)])
    assert h.get("x-raw").encode("latin-1") == b"caf\xe9 \xff\xfe"


def test_records_of_a_set_replace_without_a_remove():
    h = RequestHeaders([("a", "1"), ("a", "2")])
    h.set("a", "9")
    assert h.to_records() == ([("a", "9")], [])


def test_records_of_a_delete_are_a_remove():
    h = RequestHeaders([("a", "1")])
    h.delete("A")
    assert h.to_records() == ([], ["A"])


def test_records_of_an_add_join_the_lines_into_one():
    h = RequestHeaders([("a", "1"), ("b", "2"), ("A", "2")])
    h.add("a", "3")
    h.add("new", "4")
    assert h.to_records() == ([("a", "1, 2, 3"), ("new", "4")], [])


def test_records_join_cookies_with_semicolons():
    h = RequestHeaders([("Cookie", "a=1")])
    h.add("cookie", "b=2")
    assert h.to_records() == ([("cookie", "a=1; b=2")], [])


def test_records_of_a_set_to_empty_keep_the_header():
    h = RequestHeaders()
    h.set("x-empty", "")
    assert h.to_records() == ([("x-empty", "")], [])


def test_records_of_delete_then_add_replace():
    h = RequestHeaders([("a", "1")])
    h.delete("a")
    h.add("a", "2")
    assert h.to_records() == ([("a", "2")], [])


def test_no_edits_no_records():
    assert RequestHeaders([("a", "1")]).to_records() == ([], [])


def test_reset_forgets_edits():
    h = RequestHeaders([("a", "1")])
    h.set("a", "2")
    h._reset()
    assert h.edits == [] and h.get("a") == "1"


def test_chain_turns_edits_into_request_records():
    class Edit:
        def on_receive(self, ctx, headers, buf, trailers):
            headers.set("x-set", "1")
            headers.delete("x-gone")
            headers.add("x-multi", "b")
            return 0

    from pyworker.chain import Chain

    chain = Chain("t", [("edit", Edit())])
    verdict = chain.run(
        Context(1), RequestHeaders([("x-gone", "1"), ("x-multi", "a")])
    )
    assert verdict.request_set == [("x-set", "1"), ("x-multi", "a, b")]
    assert verdict.request_remove == ["x-gone"]


# -- a model check: any sequence of edits over any source ---------------------

names = st.sampled_from(["a", "A", "b", "B", "c"])
values = st.text(alphabet="xyz", max_size=2)
ops = st.lists(
    st.tuples(st.sampled_from(["set", "add", "del"]), names, values),
    max_size=8,
)


def apply_records(source, set_lines, removed):
    """What the nginx module does with the records, in any order: the last
    record naming a header wins; a set leaves one line, a remove none."""
    last = {}
    for kind, name, value in [("set", n, v) for n, v in set_lines] + [
        ("del", n, None) for n in removed
    ]:
        last[name.lower()] = (kind, name, value)
    result = [p for p in source if p[0].lower() not in last]
    return result + [
        (name, value) for kind, name, value in last.values() if kind == "set"
    ]


def by_name(pairs):
    """Each header's value as one line (how RFC 9110 lets lines combine)."""
    out = {}
    for name, value in pairs:
        out.setdefault(name.lower(), []).append(value)
    return {name: ", ".join(values) for name, values in out.items()}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, values), max_size=5), ops)
def test_model(source, edits):
    h = RequestHeaders(source)
    model = list(source)
    for op, name, value in edits:
        lname = name.lower()
        if op == "set":
            h.set(name, value)
            at = next(
                (i for i, p in enumerate(model) if p[0].lower() == lname),
                len(model),
            )
            model = [p for p in model if p[0].lower() != lname]
            model.insert(at, (name, value))
        elif op == "add":
            h.add(name, value)
            model.append((name, value))
        else:
            h.delete(name)
            model = [p for p in model if p[0].lower() != lname]
    assert h.items() == model
    for name in ["a", "b", "c"]:
        expected = [v for n, v in model if n.lower() == name]
        assert h.get_all(name) == expected
        assert h.get(name) == (expected[0] if expected else None)
    set_lines, removed = h.to_records()
    set_names = [n.lower() for n, _ in set_lines]
    assert len(set_names) == len(set(set_names))  # one line per header
    assert not set(set_names) & {n.lower() for n in removed}
    assert by_name(apply_records(source, set_lines, removed)) == by_name(model)
