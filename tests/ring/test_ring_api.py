"""The ring's API, run against both implementations: one process plays
producer, consumer and supervisor, so every step can be looked at."""

import os
import select
import signal
import time

import pytest

from shm_ring.codec import (
    ACTION_ERROR,
    ACTION_REPLY,
    PENDING,
    RingError,
    Verdict,
    decode_verdict,
    encode_request,
    encode_verdict,
)

FREE, SUBMITTED, TAKEN, DONE = 0, 1, 2, 3


def ps(p, s):
    return (p << 32) | s


def request(rid, **kw):
    return encode_request(
        chain="c", headers=[("X-Id", str(rid))], request_id=rid, **kw
    )


def test_module_identity(impl):
    assert impl.ABI_VERSION == 4
    assert impl.IMPLEMENTATION in ("cython", "python")
    assert impl.IMPLEMENTATION == (
        "python" if "fallback" in impl.__name__ else "cython"
    )


def test_create_and_attach(impl, make_region, region_name):
    r = make_region(nproducers=3, nconsumers=2, slots=16, slot_size=2048)
    assert (r.nproducers, r.nconsumers, r.slots, r.slot_size) == (
        3,
        2,
        16,
        2048,
    )
    assert r.size == os.stat("/dev/shm" + region_name).st_size
    assert r.size % 4096 == 0 and r.name == region_name

    a = impl.Region.attach(region_name)
    assert (a.nproducers, a.nconsumers, a.slots, a.slot_size, a.size) == (
        3,
        2,
        16,
        2048,
        r.size,
    )
    assert (
        a.consumer_epoch,
        a.reload_seq,
        a.desired_workers,
        a.master_pid,
        a.config_path,
    ) == (0, 0, 0, 0, "")
    r.supervisor_pid = 4321
    assert a.supervisor_pid == 4321

    assert [a.consumer_state(c) for c in range(2)] == ["empty", "empty"]
    with pytest.raises(IndexError):
        a.consumer_state(2)
    st = a.stats()
    assert [p["state"] for p in st["producers"]] == ["free"] * 3
    assert st["consumer_epoch"] == 0 and len(st["consumers"]) == 2

    a.close()
    with pytest.raises(RingError, match="closed"):
        a.slots
    a.close()  # twice is harmless


@pytest.mark.parametrize(
    "sizes, message",
    [
        (dict(nproducers=0), "producer count 0 is not in 1..256"),
        (dict(nconsumers=65), "consumer count 65 is not in 1..64"),
        (dict(slots=12), "slot count 12 is not a power of two"),
        (dict(slots=1), "slot count 1 is not a power of two"),
        (dict(slot_size=1000), "slot size 1000 is not a multiple of 64"),
        (dict(slot_size=512), "slot size 512 is not a multiple of 64"),
    ],
)
def test_create_refuses_bad_sizes(impl, region_name, sizes, message):
    with pytest.raises(RingError, match=message):
        impl.Region.create(region_name, **sizes)
    assert not os.path.exists("/dev/shm" + region_name)


def test_create_refuses_long_name(impl):
    with pytest.raises(RingError, match="too long"):
        impl.Region.create("/" + "n" * 70)


def test_attach_to_nothing(impl, region_name):
    with pytest.raises(RingError, match='shm_open\\(".*"\\) failed'):
        impl.Region.attach(region_name)


def test_round_trip_every_field(impl, make_region):
    r = make_region()
    c = r.alloc_consumer()
    assert c == 0 and r.consumer_state(0) == "starting"
    cons = r.consumer(c)
    assert (cons.index, cons.incarnation, cons.state) == (0, 1, "live")
    prod = r.producer()
    assert prod.index == 0 and prod.fileno() >= 0

    headers = [
        ("Host", "example.org"),
        ("uid", "42"),
        ("X-Multi", "a"),
        ("x-multi", "b"),
        ("Empty", ""),
    ]
    rec = encode_request(
        chain="serverListener",
        method="POST",
        path="/a/b",
        query="x=1&y=\xe9",
        protocol="HTTP/2.0",
        remote_addr="10.1.2.3",
        headers=headers,
        body=b"\0pay\xffload",
        request_id=0xDEADBEEF01,
    )
    assert prod.submit(5, rec) == (0, 1)
    assert prod.slot_state(5) == (SUBMITTED, 0, 1, 1)
    assert cons.pending()

    batch = cons.take()
    assert batch == [ps(0, 5)]
    assert prod.slot_state(5) == (TAKEN, 0, 1, 1)
    assert not cons.pending() and cons.take() == []

    req = cons.request(batch[0])
    assert (
        req.chain,
        req.method,
        req.path,
        req.query,
        req.remote_addr,
        req.protocol,
    ) == (
        "serverListener",
        "POST",
        "/a/b",
        "x=1&y=\xe9",
        "10.1.2.3",
        "HTTP/2.0",
    )
    assert req.body == b"\0pay\xffload"
    assert (req.request_id, req.nheaders) == (0xDEADBEEF01, 5)
    assert req.header_items() == headers

    verdict = Verdict(
        upstream="s2",
        metadata={"UNIT": "s2"},
        request_set=[("X-Unit", "s2")],
        request_remove=["Cookie"],
        response_add=[("X-Served-By", "py")],
    )
    assert cons.complete(batch[0], verdict)
    assert prod.slot_state(5) == (DONE, 0, 1, 1)
    assert cons.flush() == 0  # the producer did not arm

    assert prod.poll() == [(5, 1)]
    assert decode_verdict(prod.verdict(5)) == verdict
    prod.free(5)
    assert prod.slot_state(5) == (FREE, 0, 0, 1)

    # the next use of the slot has the next generation; no body is None
    assert prod.submit(5, encode_request(request_id=2)) == (0, 2)
    (p,) = cons.take()
    assert cons.request(p).body is None and cons.request(p).request_id == 2


def test_header_lookup_ignores_case(impl, make_region):
    r = make_region()
    cons = r.consumer(r.alloc_consumer())
    prod = r.producer()
    prod.submit(
        0,
        encode_request(
            headers=[
                ("Content-Type", "text/plain"),
                ("X-Forwarded-For", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
                ("X-FORWARDED-FOR", "3.3.3.3"),
                ("X-Forwarded", "no"),
            ]
        ),
    )
    req = cons.request(cons.take()[0])
    for name in ("x-forwarded-for", "X-Forwarded-For", "X-FORWARDED-FOR"):
        assert req.header_get_all(name) == ["1.1.1.1", "2.2.2.2", "3.3.3.3"]
    assert req.header_get_all("CONTENT-type") == ["text/plain"]
    assert req.header_get_all("content-typ") == []
    assert req.header_get_all("nothing") == []


VERDICTS = [
    None,
    Verdict(),
    Verdict(
        upstream="backend-1.example:8080", metadata={"UNIT": "s1", "IDC": "hz"}
    ),
    Verdict(
        action=ACTION_REPLY,
        status=403,
        reply_headers=[("Content-Type", "text/plain")],
        reply_body=b"denied\n",
        response_add=[("X-A", "1")],
        log="blocked by rule 7",
    ),
    Verdict(action=ACTION_ERROR, log="filter raised: ValueError('\u2603')"),
    Verdict(request_set=[("X-Set", "v\xe9")], request_remove=["A", "B"]),
    Verdict(run_senders=True, decode_body=True),
    Verdict(
        response_set=[("Content-Type", "application/json")],
        response_body=b'{"card": "****"}\0\xff',
    ),
    Verdict(response_body=b""),
]


@pytest.mark.parametrize("verdict", VERDICTS, ids=range(len(VERDICTS)))
def test_verdict_round_trip(impl, make_region, verdict):
    r = make_region()
    cons = r.consumer(r.alloc_consumer())
    prod = r.producer()
    prod.submit(1, request(1))
    (p,) = cons.take()
    assert cons.complete(p, verdict)
    assert prod.poll() == [(1, 1)]
    buf = prod.verdict(1)
    assert buf == encode_verdict(verdict)
    assert impl.validate_verdict(buf) is None
    assert decode_verdict(buf) == (verdict or Verdict())


def complete_and_read(r, cons, prod, verdict):
    prod.submit(0, request(9))
    (p,) = cons.take()
    done = cons.complete(p, verdict)
    prod.poll()
    buf = prod.verdict(0)
    prod.free(0)
    return done, buf


def test_verdict_bytes_pass_through(impl, make_region):
    r = make_region()
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    raw = encode_verdict(Verdict(upstream="s3"))
    assert complete_and_read(r, cons, prod, raw) == (True, raw)
    # not checked on the way in: the producer's decoder judges it
    junk = b"\x07" * 40
    assert complete_and_read(r, cons, prod, junk) == (True, junk)
    assert impl.validate_verdict(junk) is not None


@pytest.mark.parametrize(
    "verdict, why",
    [
        (
            Verdict(action=ACTION_REPLY, status=200, reply_body=b"x" * 9000),
            "verdict not encodable: verdict does not fit in the slot",
        ),
        (b"\0" * 9000, "verdict does not fit in the slot"),
        (
            Verdict(metadata={"k%d" % i: "v" for i in range(300)}),
            "verdict not encodable: verdict does not fit in the slot",
        ),
        (Verdict(upstream="\u20ac"), "verdict not encodable: "),
        (
            Verdict(response_remove=["ETag"], response_body=b"b" * 9000),
            "verdict not encodable: the new response body of 9000 bytes "
            "does not fit in the slot (7940 bytes left; see "
            "mosn_slot_size)",
        ),
        (Verdict(request_set=[("X", 5)]), "verdict not encodable: "),
    ],
)
def test_unwritable_verdict_becomes_error(impl, make_region, verdict, why):
    r = make_region(slot_size=8192)  # room for 300 small records
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    done, buf = complete_and_read(r, cons, prod, verdict)
    assert done
    v = decode_verdict(buf)
    assert v.action == ACTION_ERROR and v.log.startswith(why)


@pytest.mark.parametrize("record_len, verdict_len", [(4032, 0), (4012, 16)])
def test_full_slot_leaves_little_room(
    impl, make_region, record_len, verdict_len
):
    """A record that fills the slot leaves room for no verdict (empty,
    which the producer's decoder refuses) or for a bare error header."""
    r = make_region()
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    prod.submit(0, b"\0" * record_len)
    (p,) = cons.take()
    assert cons.complete(p, Verdict(upstream="s1"))
    assert prod.poll() == [(0, 1)]
    buf = prod.verdict(0)
    assert len(buf) == verdict_len
    if verdict_len:
        assert decode_verdict(buf).action == ACTION_ERROR
    else:
        assert impl.validate_verdict(buf) is not None


def test_malformed_request_gets_error_verdict(impl, make_region):
    r = make_region()
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    good = encode_request(request_id=3)
    # a record length beyond the slot, then a field beyond the record
    bad_len = b"\xff\xff\x00\x00" + good[4:]
    bad_field = bytearray(good)
    bad_field[24:28] = (len(good) + 1).to_bytes(4, "little")
    prod.submit(0, bad_len)
    prod.submit(1, bytes(bad_field))
    seen = []
    assert cons.serve_batch(seen.append) == 2
    assert seen == []  # dispatch never sees them
    got = sorted(prod.poll())
    assert got == [(0, 1), (1, 1)]
    for s, _ in got:
        v = decode_verdict(prod.verdict(s))
        assert (v.action, v.log) == (ACTION_ERROR, "malformed request")


def test_serve_batch_runs_dispatch(impl, make_region):
    r = make_region(slots=16)
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    for s in range(10):
        prod.submit(s, request(100 + s))

    def dispatch(req):
        return Verdict(metadata={"id": req.header_get_all("x-id")[0]})

    assert cons.serve_batch(dispatch, max=4) == 4
    assert cons.serve_batch(dispatch) == 6
    assert cons.serve_batch(dispatch) == 0
    got = prod.poll()
    assert sorted(s for s, _ in got) == list(range(10))
    for s, _ in got:
        assert decode_verdict(prod.verdict(s)).metadata == {"id": str(100 + s)}


def test_a_dispatch_that_raises_answers_its_request_and_no_other(
    impl, make_region
):
    r = make_region()
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    for s in range(3):
        prod.submit(s, request(s))

    def dispatch(req):
        if req.request_id == 1:
            raise KeyError("x-id")
        return Verdict(metadata={"id": str(req.request_id)})

    assert cons.serve_batch(dispatch) == 3
    assert sorted(s for s, _ in prod.poll()) == [0, 1, 2]
    failed = decode_verdict(prod.verdict(1))
    assert failed.action == ACTION_ERROR
    assert failed.log == "the dispatch failed: KeyError: 'x-id'"
    assert decode_verdict(prod.verdict(2)).metadata == {"id": "2"}


def test_ring_full_refuses(impl, make_region):
    r = make_region(slots=4)
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    for s in range(4):
        assert prod.submit(s, request(s)) == (0, 1)
    # slot 0 times out before it was taken and is used again: its old
    # entry still fills the ring, so there is no room
    prod.free(0)
    assert prod.submit(0, request(10)) is None
    assert prod.submit(0, request(10), consumer=0) is None
    assert prod.slot_state(0) == (FREE, 0, 0, 1)
    assert sorted(cons.take()) == [ps(0, 1), ps(0, 2), ps(0, 3)]
    assert prod.submit(0, request(10)) == (0, 2)
    with pytest.raises(RingError):
        prod.submit(4, request(11))
    with pytest.raises(RingError):
        prod.submit(1, b"x" * 4096)
    with pytest.raises(RingError):
        prod.submit(1, request(11), consumer=2)


def test_no_live_consumer_refuses(impl, make_region):
    r = make_region()
    prod = r.producer()
    assert prod.submit(0, request(1)) is None  # none at all
    c0 = r.alloc_consumer()
    assert prod.submit(0, request(1)) is None  # allocated only
    r.consumer(c0)
    r.retire_consumer(c0)
    assert r.consumer_state(c0) == "dead"
    assert prod.submit(0, request(1)) is None  # retired
    c1 = r.alloc_consumer()
    assert c1 == c0  # a dead index is reused
    cons = r.consumer(c1)
    assert cons.incarnation == 2
    r.drain_consumer(c1)
    assert cons.state == "draining"
    assert prod.submit(0, request(1)) is None  # draining: no new work
    assert r.slots_in_use() == 0


def test_stale_completion_dropped(impl, make_region):
    """A verdict that arrives after its slot was given to a new request
    carries the old generation: poll drops it."""
    r = make_region()
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    prod.submit(3, request(1))
    (p,) = cons.take()
    assert cons.complete(p, Verdict(metadata={"for": "1"}))
    # the request timed out: the slot is freed and reused before the poll
    prod.free(3)
    assert prod.submit(3, request(2)) == (0, 2)
    assert prod.poll() == []
    assert r.stats()["producers"][0]["stale"] == 1
    (p,) = cons.take()
    assert cons.request(p).request_id == 2
    assert cons.complete(p, Verdict(metadata={"for": "2"}))
    assert prod.poll() == [(3, 2)]
    assert decode_verdict(prod.verdict(3)).metadata == {"for": "2"}


def test_stale_submission_skipped(impl, make_region):
    r = make_region()
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    prod.submit(2, request(1))
    prod.free(2)  # abandoned before any consumer saw it
    assert prod.submit(2, request(2)) == (0, 2)
    batch = cons.take()
    assert len(batch) == 1 and cons.request(batch[0]).request_id == 2
    assert prod.slot_state(2) == (TAKEN, 0, 1, 2)


def test_completion_of_slot_taken_back_refused(impl, make_region):
    r = make_region()
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    prod.submit(1, request(1))
    (p,) = cons.take()
    prod.free(1)
    prod.submit(1, request(2))
    assert not cons.complete(p, Verdict())
    assert prod.slot_state(1) == (SUBMITTED, 0, 1, 2)
    assert r.stats()["consumers"][0]["errors"] == 1
    assert prod.poll() == []


def test_slots_in_use(impl, make_region):
    r = make_region(nproducers=2, slots=8)
    cons = r.consumer(r.alloc_consumer())
    p0, p1 = r.producer(), r.producer()
    assert (p0.index, p1.index) == (0, 1)
    assert r.slots_in_use() == 0
    for s in range(3):
        p0.submit(s, request(s))
    p1.submit(7, request(7))
    assert r.slots_in_use() == 4
    batch = cons.take()
    assert r.slots_in_use() == 4
    for p in batch:
        cons.complete(p)
    assert r.slots_in_use() == 4  # done, not yet freed by the producer
    for s, _ in p0.poll():
        p0.free(s)
    assert r.slots_in_use() == 1
    for s, _ in p1.poll():
        p1.free(s)
    assert r.slots_in_use() == 0
    assert [p["in_use"] for p in r.stats()["producers"]] == [0, 0]


def test_stats_counters(impl, make_region):
    r = make_region(slots=8)
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    for s in range(5):
        prod.submit(s, request(s))
    assert cons.serve_batch(lambda req: None, max=3) == 3
    assert cons.serve_batch(lambda req: None) == 2
    prod.free(0)  # abandoned: its completion goes stale
    assert len(prod.poll()) == 4
    assert not cons.complete(ps(0, 0), None)
    st = r.stats()
    p = st["producers"][0]
    assert (
        p["pid"],
        p["state"],
        p["submitted"],
        p["completed"],
        p["stale"],
        p["in_use"],
    ) == (os.getpid(), "owned", 5, 4, 1, 4)
    c = st["consumers"][0]
    assert (
        c["pid"],
        c["state"],
        c["incarnation"],
        c["taken"],
        c["completed"],
        c["batches"],
        c["errors"],
    ) == (os.getpid(), "live", 1, 5, 5, 2, 1)
    r.retire_consumer(0)
    assert r.stats()["consumer_epoch"] == r.consumer_epoch == 1


def test_wait_times_out_when_idle(impl, make_region):
    r = make_region()
    cons = r.consumer(r.alloc_consumer())
    t = time.monotonic()
    assert cons.wait(60) is False
    assert 0.04 < time.monotonic() - t < 2
    assert r.stats()["consumers"][0]["sleeps"] == 1
    r.producer().submit(0, request(1))
    assert cons.wait(5000) is True  # work already waits: no sleep
    assert r.stats()["consumers"][0]["sleeps"] == 1


def test_rescue_moves_work_of_a_dead_consumer(impl, make_region):
    r = make_region(nconsumers=2, slots=8)
    c0 = r.consumer(r.alloc_consumer())
    c1 = r.consumer(r.alloc_consumer())
    prod = r.producer()
    for s in range(4):
        assert prod.submit(s, request(s), consumer=0) == (0, 1)
    held = c0.take(max=2)  # slots 0, 1 taken
    assert c0.complete(held[1], Verdict(metadata={"by": "c0"}))
    # consumer 0 dies holding slot 0 taken, slot 1 done, slots 2, 3 queued
    r.retire_consumer(0)
    assert r.consumer_epoch == 1
    assert prod.rescue() == []  # all re-queued or pollable
    assert r.stats()["producers"][0]["requeued"] == 3
    for s in (0, 2, 3):
        assert prod.slot_state(s) == (SUBMITTED, 1, 1, 1)
    assert sorted(c1.take()) == [ps(0, 0), ps(0, 2), ps(0, 3)]
    for p in (ps(0, 0), ps(0, 2), ps(0, 3)):
        assert c1.complete(p, Verdict(metadata={"by": "c1"}))
    assert not c0.complete(held[0])  # the dead one is refused
    got = sorted(prod.poll())
    assert got == [(s, 1) for s in range(4)]
    for s, _ in got:
        by = decode_verdict(prod.verdict(s)).metadata["by"]
        assert by == ("c0" if s == 1 else "c1")


def test_rescue_fails_without_live_consumer(impl, make_region):
    r = make_region()
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    prod.submit(0, request(1))
    prod.submit(1, request(2))
    cons.take(max=1)
    r.retire_consumer(cons.index)
    out = sorted(prod.rescue())
    assert out == [(0, 1, True), (1, 1, True)]
    # done by nobody until the producer frees them
    assert prod.slot_state(0)[0] == TAKEN and prod.slot_state(0)[1:3] == (0, 0)
    for s, _, _ in out:
        prod.free(s)
    assert r.slots_in_use() == 0


def test_rescue_fails_without_room(impl, make_region):
    """The only live consumer's ring is full (of a stale entry too): the
    rescued slot fails and is never handed to that consumer."""
    r = make_region(slots=4)
    c0 = r.consumer(r.alloc_consumer())
    c1 = r.consumer(r.alloc_consumer())
    prod = r.producer()
    prod.submit(0, request(0), consumer=0)
    for s in (1, 2, 3):
        prod.submit(s, request(s), consumer=1)
    prod.free(3)
    assert prod.submit(3, request(33), consumer=1) == (1, 2)  # ring now full
    c0.take()
    r.retire_consumer(0)
    assert prod.rescue() == [(0, 1, True)]
    assert prod.slot_state(0) == (TAKEN, 0, 0, 1)
    assert sorted(c1.take()) == [ps(0, 1), ps(0, 2), ps(0, 3)]


def test_restarted_consumer_takes_a_rescued_slot_once(impl, make_region):
    """The new incarnation of the same index finds the slot's old entry and
    the re-queued one in its ring: it takes the slot once."""
    r = make_region(nconsumers=1)
    old = r.consumer(r.alloc_consumer())
    prod = r.producer()
    prod.submit(4, request(4))
    r.retire_consumer(old.index)
    new = r.consumer(r.alloc_consumer())
    assert (new.index, new.incarnation) == (0, 2)
    assert prod.rescue() == []
    assert prod.slot_state(4) == (SUBMITTED, 0, 2, 1)
    assert new.take() == [ps(0, 4)]
    assert new.take() == []
    assert new.complete(ps(0, 4))
    assert prod.poll() == [(4, 1)] and prod.poll() == []


def test_no_free_channel(impl, make_region):
    r = make_region(nproducers=1)
    first = r.producer()
    with pytest.raises(RingError, match="no free producer channel"):
        r.producer()
    first.release()
    assert r.stats()["producers"][0]["state"] == "draining"
    assert r.reap() == 0
    assert r.stats()["producers"][0]["state"] == "free"
    assert r.producer().index == 0


def wait_readable(fd, seconds=20):
    ready, _, _ = select.select([fd], [], [], seconds)
    assert ready, "the child process did not get ready"
    return os.read(fd, 1)


def fork(child):
    """Runs child() in a forked process that never returns here."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(0)
    return pid


def test_reap_dead_producer(impl, make_region, region_name):
    r = make_region(slots=4)
    cons = r.consumer(r.alloc_consumer())
    rfd, wfd = os.pipe()

    def child():
        prod = impl.Region.attach(region_name).producer()
        prod.submit(0, request(1))
        prod.submit(1, request(2))
        os.write(wfd, b"k")
        time.sleep(60)

    pid = fork(child)
    assert wait_readable(rfd) == b"k"
    (p,) = cons.take(max=1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)

    assert r.reap() == 1
    st = r.stats()["producers"][0]
    assert (st["state"], st["pid"]) == ("draining", pid)
    assert r.slots_in_use() == 2  # held by a live consumer
    assert cons.complete(p, Verdict())
    assert cons.flush() == 0  # the dead producer did not arm
    assert r.reap() == 0 and r.slots_in_use() == 1
    assert cons.serve_batch(lambda req: None) == 1
    assert r.reap() == 0
    assert r.slots_in_use() == 0
    assert r.stats()["producers"][0]["state"] == "free"
    assert r.producer().index == 0


def test_reap_dead_consumer(impl, make_region, region_name):
    r = make_region()
    c = r.alloc_consumer()
    rfd, wfd = os.pipe()

    def child():
        impl.Region.attach(region_name).consumer(c)
        os.write(wfd, b"k")
        time.sleep(60)

    pid = fork(child)
    assert wait_readable(rfd) == b"k"
    prod = r.producer()
    assert prod.submit(0, request(1)) == (c, 1)
    assert r.reap() == 0  # alive: nothing to do
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert r.reap() == 1
    assert r.consumer_state(c) == "dead" and r.consumer_epoch == 1
    # the retirement rang this producer's doorbell
    assert prod.drain_doorbell() == 1
    assert prod.rescue() == [(0, 1, True)]
    prod.free(0)
    assert r.slots_in_use() == 0


def starttime(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def test_proc_alive(impl):
    me = os.getpid()
    assert impl.proc_alive(me)
    assert impl.proc_alive(me, starttime(me))
    assert not impl.proc_alive(me, starttime(me) + 1)  # a recycled pid
    assert not impl.proc_alive(0) and not impl.proc_alive(-1)
    pid = fork(lambda: None)
    deadline = time.monotonic() + 10
    while impl.proc_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not impl.proc_alive(pid)  # a zombie
    os.waitpid(pid, 0)
    assert not impl.proc_alive(pid)  # gone


def test_pending_requests_are_answered_later(impl, make_region):
    """A dispatch that answers later (a filter that awaits) hands back
    PENDING: serve_batch writes nothing for it, complete() does, in any
    order."""
    r = make_region(slots=16)
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    for s in range(6):
        prod.submit(s, request(s))
    later = []

    def dispatch(req):
        if req.request_id % 2:
            later.append(req)
            return PENDING
        return Verdict(metadata={"now": str(req.request_id)})

    assert cons.serve_batch(dispatch) == 6
    assert sorted(s for s, _ in prod.poll()) == [0, 2, 4]
    assert [prod.slot_state(req.ps & 0xFFFFFFFF)[0] for req in later] == [
        TAKEN
    ] * 3
    for req in reversed(later):
        assert req.gen == 1
        assert cons.complete(
            req.ps, Verdict(metadata={"later": "1"}), gen=req.gen
        )
    assert [s for s, _ in prod.poll()] == [5, 3, 1]
    assert decode_verdict(prod.verdict(3)).metadata == {"later": "1"}


def test_deadline_and_abandon_reach_the_consumer(impl, make_region):
    r = make_region()
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    deadline = time.monotonic_ns() + 10**9
    assert prod.submit(2, request(1), deadline_ns=deadline) == (0, 1)
    prod.submit(3, request(2))
    a, b = (cons.request(p) for p in sorted(cons.take()))
    assert a.deadline_ns == deadline and b.deadline_ns == 0
    assert not a.abandoned and cons.abandons == 0
    prod.abandon(2, 7)  # another generation: nothing
    assert not a.abandoned and cons.abandons == 0
    prod.abandon(2, a.gen)  # its client went away
    assert a.abandoned and not b.abandoned
    assert cons.abandons == 1
    assert r.stats()["consumers"][0]["abandons"] == 1
    # the slot stays the consumer's until it answers; the late verdict is
    # taken back by the producer, which then frees the slot
    assert prod.slot_state(2)[0] == TAKEN
    assert cons.complete(a.ps, Verdict.error("cancelled"), gen=a.gen)
    assert prod.poll() == [(2, 1)]
    prod.abandon(2, a.gen)  # done: no longer the consumer's
    assert cons.abandons == 1


def test_complete_with_gen_spares_a_newer_request(impl, make_region):
    r = make_region()
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    prod.submit(1, request(1))
    (p,) = cons.take()
    old = cons.request(p)
    # the slot was taken back and holds a new request for this consumer
    prod.free(1)
    prod.submit(1, request(2))
    (p2,) = cons.take()
    assert p2 == p
    assert not cons.complete(p, Verdict(metadata={"old": "1"}), gen=old.gen)
    assert prod.slot_state(1) == (TAKEN, 0, 1, 2)
    assert prod.poll() == []
    assert cons.complete(p, Verdict(metadata={"new": "1"}), gen=2)
    assert decode_verdict(prod.verdict(1)).metadata == {"new": "1"}


def test_a_request_kept_past_its_verdict_never_reads_the_next_one(
    impl, make_region
):
    """A filter that keeps its request after the verdict (a task left
    running, a callback) reads it while nginx has not taken the verdict
    back; once the slot holds another request, the compiled ring refuses
    the read and the pure one, which copied the record, still shows the
    old request: neither shows the new one."""
    r = make_region()
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    prod.submit(1, request(1, method="POST", path="/one", body=b"1"))
    (p,) = cons.take()
    old = cons.request(p)
    assert cons.complete(p, Verdict(metadata={"a": "1"}), gen=old.gen)
    # answered, not yet taken back: still its own
    assert old.header_items() == [("X-Id", "1")] and old.path == "/one"
    assert prod.poll() == [(1, 1)]
    prod.free(1)
    prod.submit(1, request(2, method="GET", path="/two", body=b"2"))
    (p2,) = cons.take()
    assert p2 == p and cons.request(p2).path == "/two"
    reads = {
        "path": lambda: old.path,
        "method": lambda: old.method,
        "chain": lambda: old.chain,
        "body": lambda: old.body,
        "header_get": lambda: old.header_get("x-id"),
        "header_get_all": lambda: old.header_get_all("x-id"),
        "header_items": lambda: old.header_items(),
    }
    for what, read in reads.items():
        if impl.IMPLEMENTATION == "cython":
            with pytest.raises(RingError, match="after its verdict"):
                read()
        else:
            assert read() in (
                "/one",
                "POST",
                "c",
                b"1",
                "1",
                ["1"],
                [("X-Id", "1")],
            ), what


def test_response_record_carries_body_and_metadata(impl, make_region):
    """A response record holds the upstream's body and, apart, the
    request's metadata; the verdict's new body comes back whole."""
    r = make_region(slot_size=8192)
    cons, prod = r.consumer(r.alloc_consumer()), r.producer()
    body = bytes(range(256)) * 8
    prod.submit(
        2,
        encode_request(
            chain="l",
            headers=[("Content-Type", "application/json")],
            body=body,
            status=502,
            metadata={"UNIT": "s2", "mode": "x=y"},
            request_id=7,
        ),
    )
    (p,) = cons.take()
    req = cons.request(p)
    assert req.is_response and req.status == 502
    assert req.body == body
    assert req.metadata == {"UNIT": "s2", "mode": "x=y"}
    assert req.header_items() == [("Content-Type", "application/json")]
    verdict = Verdict(response_body=body[::-1])
    assert cons.complete(p, verdict)
    assert prod.poll() == [(2, 1)]
    assert decode_verdict(prod.verdict(2)) == verdict
    # a response record without a body says so
    prod.free(2)
    prod.submit(2, encode_request(status=204, metadata={"UNIT": "s1"}))
    (p,) = cons.take()
    req = cons.request(p)
    assert req.body is None and req.metadata == {"UNIT": "s1"}
