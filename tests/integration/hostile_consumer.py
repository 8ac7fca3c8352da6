"""A hostile consumer: a process with the worker user's rights attached to
a gateway's region as one more Python worker, doing everything a consumer
can do to nginx through shared memory.  For test_hostile.py.

    python hostile_consumer.py /SHM SECONDS

It takes requests like a worker and answers them with verdicts that carry
CR/LF and fields past their ends, flips the lengths of verdicts it marked
done, asks for the response phase and does the same there, completes
slots it never took, scribbles ring heads, slot states and the consumer
epoch, and rewrites the region's layout in the header.  At the end it puts
the layout back (so the test can read the counters) and prints what it did
as one JSON line.
"""

import json
import random
import struct
import sys
import time

from shm_ring import abi, codec
from shm_ring.fallback import Consumer, Region
from shm_ring.fallback.producer import _doorbell_ring
from shm_ring.fallback.region import _ring_push

CR_LF = codec.encode_verdict(
    codec.Verdict(request_set=[("X-Ok", "1")])
).replace(b"X-Ok", b"X\r\nY")
LAYOUT = struct.Struct("<IIII QQQQQ")  # nproducers .. slots_off
LAYOUT_OFF = 24


def verdict(**kw):
    return codec.encode_verdict(codec.Verdict(**kw))


def oversized(kind):
    good = bytearray(verdict(upstream="s1", metadata={"UNIT": "s1"}))
    if kind == 0:  # the header claims more than there is
        struct.pack_into("<I", good, 0, len(good) + 4096)
    elif kind == 1:  # a record whose key runs past the verdict
        struct.pack_into("<I", good, abi.VERDICT.size + 4, 0xFFFFFF00)
    else:  # more records than the verdict holds
        struct.pack_into("<I", good, 8, 200)
    return bytes(good)


def main():
    shm, seconds = sys.argv[1], float(sys.argv[2])
    rg = Region.attach(shm)
    idx = rg.alloc_consumer()
    cons = Consumer(rg, idx)
    sock = rg._sockfd()
    layout = bytes(rg._mm[LAYOUT_OFF : LAYOUT_OFF + LAYOUT.size])
    rnd = random.Random(7)
    did = dict.fromkeys(
        (
            "taken",
            "crlf",
            "oversized",
            "flipped",
            "forged",
            "rings",
            "states",
            "layouts",
            "epochs",
            "senders",
            "responses",
            "counters",
        ),
        0,
    )
    data_size = rg._slot_size - abi.SLOT_HEADER_SIZE
    deadline = time.monotonic() + seconds
    n = 0

    while time.monotonic() < deadline:
        batch = cons.take(64)
        if not batch:
            cons.wait(5)
        for ps in batch:
            n += 1
            did["taken"] += 1
            p, s = ps >> 32, ps & abi.U32
            slot = rg.slot(p, s)
            req = cons.request(ps)
            mode = n % 5
            if req is not None and req.is_response:
                did["responses"] += 1
                mode = 2 if n % 2 else 0
            if mode == 0:
                cons.complete(ps, CR_LF)
                did["crlf"] += 1
            elif mode == 1:
                cons.complete(ps, oversized(n % 3))
                did["oversized"] += 1
            elif mode == 2:
                # done, pushed, then the lengths flipped under nginx
                cons.complete(ps, verdict(upstream="s1"))
                off = rg.ld32(slot + abi.S_VERDICT_OFF)
                good = rg.ld32(slot + abi.S_VERDICT_LEN)
                for i in range(400):
                    rg.st32(
                        slot + abi.S_VERDICT_LEN,
                        0xFFFFFFF0 if i % 2 == 0 else data_size - off,
                    )
                    rg.st32(
                        slot + abi.S_VERDICT_OFF,
                        0xFFFF0000 if i % 3 == 0 else off,
                    )
                rg.st32(slot + abi.S_VERDICT_LEN, good)
                rg.st32(slot + abi.S_VERDICT_OFF, off)
                did["flipped"] += 1
            elif mode == 3:
                # ask for the response phase, to be hostile there too
                cons.complete(
                    ps, verdict(metadata={"UNIT": "s1"}, run_senders=True)
                )
                did["senders"] += 1
            else:
                cons.complete(ps, verdict(metadata={"UNIT": "s2"}))
        cons.flush()

        # completions of slots this consumer never took
        for _ in range(8):
            p = rnd.randrange(rg._np)
            s = rnd.randrange(rg._slots)
            slot = rg.slot(p, s)
            w = rg.ld64(slot + abi.S_STATE)
            if abi.sw_state(w) == abi.SLOT_FREE:
                rg.st64(
                    slot + abi.S_STATE,
                    abi.sw(abi.sw_gen(w), 0, idx, abi.SLOT_DONE),
                )
                _ring_push(
                    rg, rg.completion_ring(p, idx), abi.entry(s, abi.sw_gen(w))
                )
                did["forged"] += 1
            _doorbell_ring(rg, sock, p)

        # its own counters: claims to hold nothing, or more than there is
        me = rg.cons(idx)
        for off in (abi.C_TAKEN, abi.C_COMPLETED):
            rg.st64(me + off, rnd.choice((0, (1 << 64) - 1, 1 << 63)))
        rg.st32(me + abi.C_LEFT, rnd.getrandbits(32))
        did["counters"] += 1

        r = rnd.random()
        if r < 0.05:
            # a completion ring whose head ran far ahead
            ring = rg.completion_ring(rnd.randrange(rg._np), idx)
            rg.st32(ring + abi.R_HEAD, rg.ld32(ring + abi.R_TAIL) + (1 << 20))
            did["rings"] += 1
        elif r < 0.10:
            # states of slots in flight, then a rescue
            owned = [
                p
                for p in range(rg._np)
                if rg.ld64(rg.prod(p) + abi.P_OWNER) & 0xFF == abi.CHAN_OWNED
            ]
            p = rnd.choice(owned or [0])
            for s in range(rg._slots):
                slot = rg.slot(p, s)
                w = rg.ld64(slot + abi.S_STATE)
                if abi.sw_state(w) != abi.SLOT_FREE and rnd.random() < 0.5:
                    rg.st64(
                        slot + abi.S_STATE,
                        abi.sw(
                            rnd.getrandbits(32), 0, 250, rnd.randrange(256)
                        ),
                    )
                    did["states"] += 1
            rg.st32(abi.H_CONSUMER_EPOCH, rg.ld32(abi.H_CONSUMER_EPOCH) + 1)
            did["epochs"] += 1
        elif r < 0.15:
            # the layout: counts and offsets that point anywhere
            rg._mm[LAYOUT_OFF : LAYOUT_OFF + LAYOUT.size] = LAYOUT.pack(
                64,
                64,
                65536,
                16 << 20,
                1 << 40,
                1 << 41,
                8,
                1 << 62,
                rnd.getrandbits(63),
            )
            did["layouts"] += 1

    rg._mm[LAYOUT_OFF : LAYOUT_OFF + LAYOUT.size] = layout
    print(json.dumps(did))


if __name__ == "__main__":
    main()
