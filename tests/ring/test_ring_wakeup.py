"""Sleep and wake-up across processes: a consumer asleep on its futex is
woken by a producer in another process, and a producer asleep on its
doorbell socket is woken by a consumer in another process.  Every pairing
of the two implementations, since the futex word and the socket names are
part of the ABI."""

import os
import select
import time

import pytest

from ringload import load_impl
from shm_ring.codec import Verdict, decode_verdict, encode_request

PAIRS = [(a, b) for a in ("cython", "python") for b in ("cython", "python")]


def fork(child):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        finally:
            os._exit(code)
    return pid


def wait_child(pid):
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def readable(fd, seconds):
    return bool(select.select([fd], [], [], seconds)[0])


@pytest.mark.parametrize("sleeper, waker", PAIRS)
def test_sleeping_consumer_woken_by_producer(sleeper, waker, region_name):
    S, W = load_impl(sleeper), load_impl(waker)
    r = S.Region.create(region_name, nproducers=2, nconsumers=2, slots=8)
    cons = r.consumer(r.alloc_consumer())

    def child():
        region = W.Region.attach(region_name)
        prod = region.producer()
        # submit only once the consumer sleeps, so the wake-up is needed
        deadline = time.monotonic() + 20
        while region.stats()["consumers"][0]["sleeps"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        prod.submit(0, encode_request(request_id=77))
        while not prod.poll():
            assert time.monotonic() < deadline
            if not prod.arm():
                readable(prod.fileno(), 1)

    pid = fork(child)
    t = time.monotonic()
    assert cons.wait(20000) is True
    woke_after = time.monotonic() - t
    batch = cons.take()
    assert [cons.request(p).request_id for p in batch] == [77]
    cons.complete(batch[0])
    cons.flush()
    wait_child(pid)

    st = r.stats()
    assert woke_after < 15
    assert st["consumers"][0]["sleeps"] == 1
    assert st["producers"][0]["futex_wakes"] == 1
    r.close()


@pytest.mark.parametrize("sleeper, waker", PAIRS)
def test_sleeping_producer_woken_by_consumer(sleeper, waker, region_name):
    S, W = load_impl(sleeper), load_impl(waker)
    r = S.Region.create(region_name, nproducers=2, nconsumers=2, slots=8)
    c = r.alloc_consumer()
    rfd, wfd = os.pipe()

    def child():
        cons = W.Region.attach(region_name).consumer(c)
        os.write(wfd, b"r")
        deadline = time.monotonic() + 20
        while not cons.serve_batch(lambda req: Verdict(upstream="s2")):
            assert time.monotonic() < deadline
            cons.wait(1000)

    pid = fork(child)
    assert readable(rfd, 20) and os.read(rfd, 1) == b"r"
    prod = r.producer()
    # armed before the submit, so the consumer's flush must ring
    assert prod.arm() is False
    prod.submit(3, encode_request(request_id=5))
    assert readable(prod.fileno(), 20)
    assert prod.drain_doorbell() == 1
    assert prod.poll() == [(3, 1)]
    assert decode_verdict(prod.verdict(3)).upstream == "s2"
    wait_child(pid)

    st = r.stats()
    assert st["consumers"][c]["doorbells"] == 1
    assert st["producers"][0]["completed"] == 1
    r.close()
