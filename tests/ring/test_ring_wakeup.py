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


def _link(fd):
    try:
        return os.readlink("/proc/self/fd/%s" % fd)
    except OSError:
        return None


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


@pytest.mark.parametrize("sleeper, waker", PAIRS)
def test_armed_consumer_woken_through_its_descriptor(
    sleeper, waker, region_name
):
    """An event-loop consumer sleeps on fileno(), not on its futex: a
    producer in another process that submits while it is armed makes the
    descriptor readable, and rings once for one sleep."""
    S, W = load_impl(sleeper), load_impl(waker)
    r = S.Region.create(region_name, nproducers=2, nconsumers=2, slots=8)
    cons = r.consumer(r.alloc_consumer())
    fd = cons.fileno()
    assert cons.arm() is False
    rfd, wfd = os.pipe()

    def child():
        prod = W.Region.attach(region_name).producer()
        prod.submit(0, encode_request(request_id=41))
        prod.submit(1, encode_request(request_id=42))
        os.write(wfd, b"s")

    wait_child(fork(child))
    assert readable(rfd, 20)
    assert readable(fd, 20)
    assert cons.disarm() is True
    assert not readable(fd, 0)  # drained
    assert sorted(cons.request(p).request_id for p in cons.take()) == [41, 42]

    st = r.stats()
    assert st["consumers"][0]["sleeps"] == 1
    # two submits, one sleep: one wake-up
    assert st["producers"][0]["futex_wakes"] == 1
    cons.close()
    r.close()


@pytest.mark.parametrize("impl_name", ["cython", "python"])
def test_awake_consumer_is_not_rung(impl_name, region_name):
    """Wake only if it sleeps: a consumer that has not armed (it is busy
    serving) gets no datagram, and arm() with work already waiting says
    so instead of sleeping."""
    M = load_impl(impl_name)
    r = M.Region.create(region_name, nproducers=2, nconsumers=2, slots=8)
    cons = r.consumer(r.alloc_consumer())
    fd = cons.fileno()
    prod = r.producer()
    prod.submit(0, encode_request(request_id=1))
    assert not readable(fd, 0.05)
    assert r.stats()["producers"][0]["futex_wakes"] == 0
    assert cons.arm() is True  # work waits: do not sleep
    assert r.stats()["consumers"][0]["sleeps"] == 0
    assert len(cons.take()) == 1
    # armed, then disarmed before any submit: still nothing rung
    assert cons.arm() is False
    assert cons.disarm() is False
    prod.submit(1, encode_request(request_id=2))
    assert not readable(fd, 0.05)
    assert r.stats()["producers"][0]["futex_wakes"] == 0
    cons.close()
    r.close()


@pytest.mark.parametrize("impl_name", ["cython", "python"])
def test_consumer_descriptor_in_asyncio(impl_name, region_name):
    """The descriptor as the asyncio worker uses it: add_reader, serve,
    arm; requests submitted from another process are served while the
    loop sleeps in epoll."""
    import asyncio

    M = load_impl(impl_name)
    r = M.Region.create(region_name, nproducers=2, nconsumers=2, slots=8)
    cons = r.consumer(r.alloc_consumer())
    served = []

    def child():
        prod = M.Region.attach(region_name).producer()
        for i in range(20):
            prod.submit(i % 8, encode_request(request_id=100 + i))
            deadline = time.monotonic() + 20
            while not prod.poll():
                assert time.monotonic() < deadline
                if not prod.arm():
                    readable(prod.fileno(), 1)
            prod.drain_doorbell()
            prod.free(i % 8)
            time.sleep(0.002)  # let the consumer fall asleep

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_wake():
            cons.disarm()
            while cons.serve_batch(
                lambda req: served.append(req.request_id) or None
            ):
                pass
            if len(served) == 20:
                done.set_result(None)
            elif cons.arm():
                loop.call_soon(on_wake)

        loop.add_reader(cons.fileno(), on_wake)
        assert cons.arm() is False
        pid = fork(child)
        await asyncio.wait_for(done, 20)
        loop.remove_reader(cons.fileno())
        return pid

    wait_child(asyncio.run(main()))
    assert served == list(range(100, 120))
    st = r.stats()
    assert st["producers"][0]["futex_wakes"] >= 1
    assert st["producers"][0]["futex_wakes"] <= st["consumers"][0]["sleeps"]
    cons.close()
    r.close()


@pytest.mark.parametrize("starter, producer_impl", PAIRS)
def test_consumer_start_rings_the_producers(
    starter, producer_impl, region_name
):
    """A producer holding requests for a worker while none is live learns
    at once that one started: consumer start rings every producer."""
    S, P = load_impl(starter), load_impl(producer_impl)
    r = P.Region.create(region_name, nproducers=2, nconsumers=2, slots=8)
    prod = r.producer()
    assert prod.submit(0, encode_request(request_id=1)) is None  # nobody
    c = r.alloc_consumer()

    def child():
        S.Region.attach(region_name).consumer(c)

    wait_child(fork(child))
    assert readable(prod.fileno(), 20)
    assert prod.drain_doorbell() >= 1
    assert prod.submit(0, encode_request(request_id=1)) is not None
    r.close()


@pytest.mark.parametrize("sleeper, waker", PAIRS)
def test_sleeping_producer_woken_through_its_eventfd(
    sleeper, waker, region_name
):
    """A producer that publishes an eventfd (as nginx does) is woken
    through it: the consumer copies it once from the producer's process
    and writes to it instead of sending a datagram."""
    S, W = load_impl(sleeper), load_impl(waker)
    r = S.Region.create(region_name, nproducers=2, nconsumers=2, slots=8)
    c = r.alloc_consumer()
    prod = r.producer()
    nfd = prod.notify_fileno()
    rfd, wfd = os.pipe()

    def child():
        cons = W.Region.attach(region_name).consumer(c)
        os.write(wfd, b"r")
        deadline = time.monotonic() + 20
        served = 0
        while served < 2:
            assert time.monotonic() < deadline
            served += cons.serve_batch(lambda req: Verdict(upstream="s2"))
            if not served or served == 1:
                cons.wait(100)
        # the copy stays open: one pidfd_getfd per producer, not per wake
        # (the other eventfd is the producer's own, inherited by the fork)
        assert (
            sum(
                _link(f) == "anon_inode:[eventfd]"
                for f in os.listdir("/proc/self/fd")
            )
            == 2
        )

    pid = fork(child)
    assert readable(rfd, 20) and os.read(rfd, 1) == b"r"
    prod.drain_doorbell()  # a consumer's start rings producers
    for slot in (3, 4):
        assert prod.arm() is False
        prod.submit(slot, encode_request(request_id=slot))
        assert readable(nfd, 20)
        assert prod.drain_notify() == 1
        assert not readable(prod.fileno(), 0)  # no datagram
        assert prod.poll() == [(slot, 1)]
        prod.free(slot)
    wait_child(pid)
    assert r.stats()["consumers"][c]["doorbells"] == 2
    prod.release()
    r.close()


@pytest.mark.parametrize("impl_name", ["cython", "python"])
def test_forged_notify_fd_is_not_written(impl_name, region_name):
    """The eventfd's number comes from the region: a forged one that names
    another kind of descriptor in the producer's process is not written
    to; the consumer rings the doorbell instead."""
    M = load_impl(impl_name)
    r = M.Region.create(region_name, nproducers=2, nconsumers=2, slots=8)
    c = r.alloc_consumer()
    prod = r.producer()
    rfd, wfd = os.pipe()
    # what a hostile process could write: the producer's pipe, not its
    # eventfd
    from shm_ring import abi, fallback

    raw = fallback.Region.attach(region_name)
    raw.st32(raw.prod(prod.index) + abi.P_NOTIFY_FD, wfd)

    ready_r, ready_w = os.pipe()

    def child():
        cons = M.Region.attach(region_name).consumer(c)
        os.write(ready_w, b"r")
        deadline = time.monotonic() + 20
        while not cons.serve_batch(lambda req: None):
            assert time.monotonic() < deadline
            cons.wait(100)

    pid = fork(child)
    assert readable(ready_r, 20)
    prod.drain_doorbell()  # a consumer's start rings producers
    assert prod.arm() is False
    prod.submit(0, encode_request(request_id=9))
    assert readable(prod.fileno(), 20)  # the doorbell rang
    assert not readable(rfd, 0)  # nothing went to the pipe
    wait_child(pid)
    raw.close()
    r.close()
