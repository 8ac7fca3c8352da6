"""The region's endpoint table (ABI version 2), on both implementations:
the writer's layout, the readers' round robin with its fallback and its
tried endpoints, the checks a reader makes of what it reads, and the
seqlock against a writer in another process."""

import multiprocessing
import struct
import time

import pytest

from shm_ring.codec import RingError

MOE = [
    ("127.0.0.1", 3450, "s1"),
    ("127.0.0.1", 3452, "s2"),
    ("127.0.0.1", 3451, "s1"),
    ("::1", 3453, "s3"),
]
# the table groups endpoints by site, sites in the order they first appear
MOE_TABLE = [
    ("127.0.0.1", 3450, "s1"),
    ("127.0.0.1", 3451, "s1"),
    ("127.0.0.1", 3452, "s2"),
    ("::1", 3453, "s3"),
]

H_ENDPOINTS_OFF = 688
EP_APP_SIZE = 7744


def app_off(name, i):
    with open("/dev/shm" + name, "rb") as f:
        f.seek(H_ENDPOINTS_OFF)
        (off,) = struct.unpack("<Q", f.read(8))
    return off + EP_APP_SIZE * i


def poke(name, off, fmt, value):
    with open("/dev/shm" + name, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, value))


def entry_bytes(name, i):
    off = app_off(name, i)
    with open("/dev/shm" + name, "rb") as f:
        f.seek(off)
        raw = f.read(EP_APP_SIZE)
    # the round-robin counters are the readers': not the writer's layout
    return raw[:128] + raw[320:]


def test_write_and_read(impl, make_region):
    r = make_region()
    assert r.endpoint_apps() == [] and r.endpoints("test") == []
    assert r.endpoint_generation("test") == 0
    assert r.set_endpoints("test", MOE) == 1
    assert r.endpoints("test") == MOE_TABLE
    assert r.endpoint_apps() == ["test"]
    assert r.endpoint_generation("test") == 1
    assert r.set_endpoints("other", [("10.0.0.1", 80, "x")]) == 1
    assert r.set_endpoints("test", MOE[:1]) == 2
    assert r.endpoints("test") == MOE_TABLE[:1]
    assert r.endpoint_apps() == ["test", "other"]
    assert r.set_endpoints("test", []) == 3
    assert r.endpoints("test") == [] and r.endpoint_apps() == ["test", "other"]
    # host text is normalised; brackets are accepted
    r.set_endpoints("v6", [("[0:0::1]", 1, "a")])
    assert r.endpoints("v6") == [("::1", 1, "a")]


def test_round_robin_fallback_and_tried(impl, make_region):
    r = make_region()
    r.set_endpoints("test", MOE)
    pick = r.pick_endpoint
    assert [pick("test", "s1")[:2] for _ in range(4)] == [
        ("127.0.0.1", 3450),
        ("127.0.0.1", 3451),
    ] * 2
    assert pick("test", "s2") == ("127.0.0.1", 3452, False)
    # no key, or a site with no endpoint: any endpoint, in turn
    got = [pick("test") for _ in range(4)] + [pick("test", "s9")]
    assert [g[1] for g in got] == [3450, 3451, 3452, 3453, 3450]
    assert all(g[2] for g in got)
    # tried endpoints are skipped: the site's first, then any other
    assert pick("test", "s1", [("127.0.0.1", 3450)])[:2] == ("127.0.0.1", 3451)
    assert (
        pick("test", "s1", [("127.0.0.1", 3450), ("127.0.0.1", 3451)])[2]
        is True
    )
    assert pick("test", "s3", [("::1", 3453)])[2] is True
    assert pick("test", "s1", [e[:2] for e in MOE]) is None
    # no such app, or none left
    assert pick("nope", "s1") is None
    r.set_endpoints("test", [])
    assert pick("test", "s1") is None and pick("test") is None


def test_sites_keep_their_counters_across_writes(impl, make_region):
    r = make_region()
    r.set_endpoints("test", MOE)
    assert r.pick_endpoint("test", "s1")[1] == 3450
    # a new site first, s2 gone: s1 keeps its entry and its turn
    r.set_endpoints("test", [("127.0.0.1", 4000, "s0")] + MOE[:1] + MOE[2:3])
    assert r.endpoints("test")[0] == ("127.0.0.1", 4000, "s0")
    assert r.pick_endpoint("test", "s1")[1] == 3451
    assert r.pick_endpoint("test", "s0")[1] == 4000
    assert r.pick_endpoint("test", "s2")[2] is True


@pytest.mark.parametrize(
    "endpoints, why",
    [
        ([("localhost", 80, "s")], "not an IPv4 or IPv6 address"),
        ([("1.2.3.4", 0, "s")], "port 0 is not in 1..65535"),
        ([("1.2.3.4", 70000, "s")], "port 70000"),
        ([("1.2.3.4", 80, "")], "site name '' must be 1..31 bytes"),
        ([("1.2.3.4", 80, "s" * 32)], "must be 1..31 bytes"),
        (
            [("1.2.3.4", 80 + i, "s") for i in range(257)],
            "257 endpoints, at most 256 fit",
        ),
        (
            [("1.2.3.4", 80 + i, "s%d" % i) for i in range(33)],
            "more than 32 sites",
        ),
    ],
)
def test_refused_writes(impl, make_region, endpoints, why):
    r = make_region()
    r.set_endpoints("test", MOE)
    with pytest.raises(RingError, match=why):
        r.set_endpoints("test", endpoints)
    assert r.endpoints("test") == MOE_TABLE
    assert r.endpoint_generation("test") == 1


def test_app_names_and_a_full_table(impl, make_region):
    r = make_region()
    for bad in ("", "x" * 64, "a\0b"):
        with pytest.raises(RingError, match="app name"):
            r.set_endpoints(bad, MOE)
    for i in range(16):
        r.set_endpoints("app%d" % i, [("10.0.0.1", 80, "s")])
    with pytest.raises(RingError, match="the endpoint table is full"):
        r.set_endpoints("app16", MOE)
    # an app emptied gives its entry up to a new one
    r.set_endpoints("app3", [])
    r.set_endpoints("app16", MOE)
    assert r.endpoints("app16") == MOE_TABLE
    assert "app3" not in r.endpoint_apps() and r.endpoints("app3") == []
    assert r.pick_endpoint("app3") is None


def test_both_writers_lay_the_table_out_alike(
    cython_impl, python_impl, region_name
):
    """The same writes through C and through Python give the same bytes,
    and each side reads what the other wrote."""
    names = [region_name, region_name + "-py"]
    regions = [
        cython_impl.Region.create(names[0], 2, 2, 8, 4096),
        python_impl.Region.create(names[1], 2, 2, 8, 4096),
    ]
    try:
        writes = [
            ("test", MOE),
            ("other", [("::2", 9, "z")]),
            ("test", [("127.0.0.1", 4000, "s0")] + MOE[:1]),
            (
                "test",
                [("127.0.0.1", 1 + i, "s%d" % (i % 32)) for i in range(256)],
            ),
            ("test", [("127.0.0.1", 1, "new")] + MOE),
            ("other", []),
        ]
        for app, endpoints in writes:
            gens = [r.set_endpoints(app, endpoints) for r in regions]
            assert gens[0] == gens[1]
            assert entry_bytes(names[0], 0) == entry_bytes(names[1], 0)
            assert entry_bytes(names[0], 1) == entry_bytes(names[1], 1)
        other = [
            python_impl.Region.attach(names[0]),
            cython_impl.Region.attach(names[1]),
        ]
        for a, b in zip(regions, other):
            assert a.endpoints("test") == b.endpoints("test")
            assert a.endpoint_apps() == b.endpoint_apps()
            b.close()
    finally:
        for r, n in zip(regions, names):
            r.close()
            r.unlink()


def test_readers_check_what_they_read(impl, make_region, region_name):
    r = make_region()
    r.set_endpoints("test", MOE)
    off = app_off(region_name, 0)
    # a count past the table
    poke(region_name, off + 8, "<I", 1000)
    with pytest.raises(RingError, match="being written or corrupt"):
        r.endpoints("test")
    with pytest.raises(RingError, match="being written or corrupt"):
        r.pick_endpoint("test", "s1")
    # a site whose endpoints run past the count
    poke(region_name, off + 8, "<I", 2)
    with pytest.raises(RingError):
        r.endpoints("test")
    # an endpoint with no address family
    poke(region_name, off + 8, "<I", 4)
    poke(region_name, off + 1600 + 24 * 3, "<B", 9)
    with pytest.raises(RingError):
        r.endpoints("test")
    # a site name longer than its field: refused, then repaired by a write
    r.set_endpoints("test", MOE)
    poke(region_name, off + 320 + 4, "<I", 200)
    with pytest.raises(RingError):
        r.endpoints("test")
    r.set_endpoints("test", MOE)
    assert r.endpoints("test") == MOE_TABLE
    # a writer that died in the middle of a write: seq stays odd
    poke(region_name, off, "<I", 7)
    t0 = time.monotonic()
    with pytest.raises(RingError):
        r.pick_endpoint("test", "s1")
    assert time.monotonic() - t0 < 1.0
    assert r.endpoint_apps() == []
    # the next write repairs it all
    r.set_endpoints("test", MOE)
    assert r.endpoints("test") == MOE_TABLE
    assert r.pick_endpoint("test", "s2")[1] == 3452


A = [("10.0.0.%d" % i, 1000 + i, "s%d" % (i % 3)) for i in range(1, 50)]
B = [("10.1.0.%d" % i, 2000 + i, "t%d" % (i % 5)) for i in range(1, 200)]


def _writer(impl_name, name, seconds, done):
    from ringload import impl_module

    region = impl_module(impl_name).Region.attach(name)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        region.set_endpoints("test", A if n % 2 else B)
        n += 1
        if n % 16 == 0:
            time.sleep(0)
    done.value = n
    region.close()


def _table(endpoints):
    order = []
    for e in endpoints:
        if e[2] not in order:
            order.append(e[2])
    return [e for s in order for e in endpoints if e[2] == s]


@pytest.mark.parametrize("writer", ["cython", "python"])
def test_seqlock_readers_never_see_a_torn_table(
    cython_impl, region_name, writer
):
    """A writer in another process flips the app between two tables as
    fast as it can; every read is one table or the other, whole."""
    from ringload import load_impl

    load_impl(writer)
    r = cython_impl.Region.create(region_name, 2, 2, 8, 4096)
    r.set_endpoints("test", A)
    tables = {tuple(_table(A)), tuple(_table(B))}
    hosts = {e[:2] for e in A + B}
    ctx = multiprocessing.get_context("fork")
    done = ctx.Value("q", 0)
    proc = ctx.Process(target=_writer, args=(writer, region_name, 1.5, done))
    proc.start()
    reads = busy = 0
    try:
        while proc.is_alive():
            # a seqlock does not promise a stable read to a reader racing
            # a writer that never rests: it promises no torn one
            try:
                got = r.endpoints("test")
                p = r.pick_endpoint("test", "s1")
            except RingError:
                busy += 1
                continue
            assert tuple(got) in tables, got[:3]
            assert p is not None and p[:2] in hosts
            reads += 1
    finally:
        proc.join(10)
        r.close()
    assert proc.exitcode == 0
    assert done.value > 100 and reads > 100, (done.value, reads)
    assert busy < reads, (busy, reads)
