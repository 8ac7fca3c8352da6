"""The layout is taken once: a process that rewrites the region's header
after the attach changes nothing for those attached (the nginx module,
the Python workers, the supervisor's reaper), and a later attach refuses
the region.  Each side runs in a child, so that a fault fails the test
instead of ending the run."""

import os
import signal
import struct

import pytest

from shm_ring.codec import RingError, encode_request

LAYOUT = struct.Struct("<IIII QQQQQ")  # nproducers .. slots_off
LAYOUT_OFF = 24

FORGED = [
    (64, 64, 1 << 16, 16 << 20, 1 << 40, 1 << 41, 8, 1 << 62, 1 << 63),
    (3, 2, 0x80000000, 1024, 0, 0, 0, 0, 0),
    (2, 2, 8, 4096, 7, 7, 7, 7, 0xFFFFFFFFFFFFF000),
]


def in_child(fn, timeout=20):
    """fn() in a forked child: its exit code (0: ran through), or the
    signal that ended it, negated."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            code = 0
        except BaseException:  # reported by the exit code
            code = 3
        os._exit(code)

    def expire(*_):
        os.kill(pid, signal.SIGKILL)

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(timeout)
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


@pytest.mark.parametrize("forged", FORGED)
def test_a_forged_layout_changes_nothing_for_those_attached(
    impl, make_region, region_name, forged
):
    r = make_region(nproducers=2, nconsumers=2, slots=8, slot_size=4096)
    cons = r.consumer(r.alloc_consumer())
    prod = impl.Region.attach(region_name).producer()
    assert prod.submit(3, encode_request("l", headers=[("uid", "2")]))
    before = (r.nproducers, r.nconsumers, r.slots, r.slot_size)

    with open("/dev/shm" + region_name, "r+b") as f:
        f.seek(LAYOUT_OFF)
        f.write(LAYOUT.pack(*forged))

    def use_it():
        assert (r.nproducers, r.nconsumers, r.slots, r.slot_size) == before
        assert r.slots_in_use() == 1
        assert [p["state"] for p in r.stats()["producers"]] == [
            "owned",
            "free",
        ]
        r.reap()
        (ps,) = cons.take()
        assert cons.request(ps).header_get("uid") == "2"
        assert cons.complete(ps, {"unit": "s1"})
        assert prod.poll() == [(3, prod.slot_state(3)[3])]
        prod.free(3)
        assert r.slots_in_use() == 0

    assert in_child(use_it) == 0
    with pytest.raises(RingError, match="layout|count|size"):
        impl.Region.attach(region_name)
