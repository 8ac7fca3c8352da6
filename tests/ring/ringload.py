"""Load for the ring tests: producer and consumer loops meant to run in
processes of their own, and the check that ties each verdict to its
request.

Every request carries a random nonce header; the consumer answers with a
checksum of the nonce and the request id in the verdict's metadata; the
producer knows which request each slot and generation holds and checks
the checksum, so a lost, duplicated, stale or crossed verdict shows.
"""

import importlib
import os
import random
import select
import time
import zlib

from shm_ring import codec

IMPLS = {"cython": "shm_ring._ring", "python": "shm_ring.fallback"}
BATCH = 256  # the most poll() and rescue() hand back at once


def impl_module(name):
    return importlib.import_module(IMPLS[name])


def load_impl(name):
    """impl_module() for a test: skips it if the module cannot load."""
    import pytest

    try:
        return impl_module(name)
    except ImportError as e:
        pytest.skip("%s implementation unavailable: %s" % (name, e))


def checksum(nonce, request_id):
    return "%08x" % zlib.crc32(b"%s/%d" % (nonce.encode(), request_id))


def answer(req):
    """The consumers' filter: a verdict that proves what it read."""
    nonce = req.header_get_all("X-Nonce")
    if len(nonce) != 1:
        return codec.Verdict.error("no nonce")
    return codec.Verdict(
        upstream="s1", metadata={"sum": checksum(nonce[0], req.request_id)}
    )


def run_consumer(impl, name, index, stop):
    """Serves until stop.value is set and nothing waits."""
    region = impl_module(impl).Region.attach(name)
    cons = region.consumer(index)
    while True:
        if cons.serve_batch(answer, 64):
            continue
        if stop.value and not cons.pending():
            break
        cons.wait(50)
    region.close()


class ProducerLoop:
    """One producer channel driven like the nginx module drives it:
    submit while slots are free, drain completions, re-queue after a
    consumer leaves, sleep on the doorbell when idle."""

    def __init__(self, impl, name, seed):
        self.region = impl_module(impl).Region.attach(name)
        self.prod = self.region.producer()
        self.rnd = random.Random(seed)
        self.free = list(range(self.region.slots))
        self.inflight = {}  # slot -> (gen, request id, checksum)
        self.epoch = self.region.consumer_epoch
        self.next_id = (os.getpid() & 0xFFFFFF) << 32
        self.submitted = self.ok = self.failed = self.refused = 0
        self.errors = []
        self.doorbell = select.poll()
        self.doorbell.register(self.prod.fileno(), select.POLLIN)

    def error(self, what):
        if len(self.errors) < 20:
            self.errors.append(what)

    def submit_some(self, budget):
        n = 0
        while self.free and n < budget:
            s = self.free.pop()
            rid = self.next_id
            nonce = "%016x" % self.rnd.getrandbits(64)
            record = codec.encode_request(
                chain="ring-test",
                path="/r/%d" % rid,
                headers=[("X-Nonce", nonce), ("uid", str(rid % 300))],
                request_id=rid,
            )
            got = self.prod.submit(s, record)
            if got is None:  # no live consumer or no room: later
                self.free.append(s)
                self.refused += 1
                break
            self.inflight[s] = (got[1], rid, checksum(nonce, rid))
            self.next_id += 1
            self.submitted += 1
            n += 1
        return n

    def settle(self, s, gen, failed):
        """A completion (or a failed rescue) for slot s at generation gen:
        it must be the one request in flight there, once."""
        held = self.inflight.get(s)
        if held is None or held[0] != gen:
            self.error(
                "completion for slot %d gen %d, holding %r" % (s, gen, held)
            )
            return
        del self.inflight[s]
        if failed:
            self.failed += 1
        else:
            try:
                v = codec.decode_verdict(self.prod.verdict(s))
            except codec.RingError as e:
                v = None
                self.error("slot %d: %s" % (s, e))
            if v is not None and v.metadata.get("sum") == held[2]:
                self.ok += 1
            elif v is not None:
                self.error(
                    "slot %d gen %d: verdict %r is not for request "
                    "%x" % (s, gen, v, held[1])
                )
        self.prod.free(s)
        self.free.append(s)

    def drain(self):
        n = 0
        while True:
            done = self.prod.poll(BATCH)
            for s, gen in done:
                self.settle(s, gen, False)
            n += len(done)
            if len(done) < BATCH:
                return n

    def rescue_if_needed(self):
        """After a consumer left: what it held goes elsewhere or fails.
        Completions already polled are settled first, as nginx does."""
        epoch = self.region.consumer_epoch
        if epoch == self.epoch:
            return 0
        self.epoch = epoch  # before the scan: a later change rescans
        n = 0
        while True:
            out = self.prod.rescue()
            for s, gen, failed in out:
                self.settle(s, gen, failed)
            n += len(out)
            if len(out) < BATCH:
                return n

    def step(self, budget):
        """One turn of the loop: up to `budget` new requests, completions,
        rescues; sleeps up to 50 ms when nothing moved."""
        n = self.submit_some(min(budget, BATCH))
        n += self.drain()
        n += self.rescue_if_needed()
        if n == 0 and not self.prod.arm():
            self.doorbell.poll(50)
            self.prod.drain_doorbell()
        return n

    def report(self):
        return {
            "submitted": self.submitted,
            "ok": self.ok,
            "failed": self.failed,
            "refused": self.refused,
            "inflight": len(self.inflight),
            "errors": self.errors,
            "index": self.prod.index,
        }

    def close(self):
        self.prod.release()
        self.region.close()


def run_producer(impl, name, seed, total, stop, progress, me, pipe, deadline):
    """Submits `total` requests (or until stop.value), drains what is in
    flight, reports on `pipe`.  progress[me] counts settled requests."""
    loop = ProducerLoop(impl, name, seed)
    started = time.monotonic()
    while time.monotonic() < deadline:
        budget = 0 if stop.value else total - loop.submitted
        if budget == 0 and not loop.inflight:
            break
        loop.step(budget)
        progress[me] = loop.ok + loop.failed
    result = loop.report()
    result["seconds"] = time.monotonic() - started
    loop.close()
    pipe.send(result)
    pipe.close()
