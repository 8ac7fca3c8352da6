"""The consumer side in pure Python: shm_consumer.c, function by function
(a Python worker's side: taking slots, completing them and waking their
producers, sleeping on its futex or in an event loop).
"""

import os
import socket

from shm_ring.abi import (
    CONS_LIVE,
    C_BATCHES,
    C_COMPLETED,
    C_DOORBELLS,
    C_ERRORS,
    C_LEFT,
    C_FUTEX,
    C_INCARNATION,
    C_PID,
    C_SLEEPING,
    C_SLEEPS,
    C_STARTTIME,
    C_STATE,
    C_TAKEN,
    P_NEED_WAKEUP,
    R_HEAD,
    R_TAIL,
    SLEEP_FD,
    SLEEP_FUTEX,
    SLEEP_NONE,
    SLOT_DONE,
    SLOT_SUBMITTED,
    SLOT_TAKEN,
    S_STATE,
    U32,
    entry,
    sw,
    sw_consumer,
    sw_gen,
    sw_inc,
    sw_state,
)
from shm_ring.codec import RingError
from shm_ring.fallback import producer, reaper
from shm_ring.fallback.region import (
    _full_fence,
    _futex_wait,
    _ring_push,
    proc_starttime,
)


def _consumer_doorbell_addr(rg, c):
    # as mosn_doorbell_name_of(rg, 'c', c)
    return "%s/c%d" % (rg._wake_dir, c)


_ring_sock = None  # mosn_ring_sock: made when first needed


def _ring_socket():
    global _ring_sock
    if _ring_sock is None:
        _ring_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _ring_sock.setblocking(False)
    return _ring_sock


def _consumer_doorbell_ring(rg, c):
    try:
        _ring_socket().sendto(
            b"\1", socket.MSG_DONTWAIT, _consumer_doorbell_addr(rg, c)
        )
    except OSError:
        pass  # full: a wake-up is already there; unbound: nobody


def _consumer_start(rg, c, pid):
    if c >= rg._nc:
        return -1
    o = rg.cons(c)
    rg.st32(o + C_PID, pid)
    rg.st64(o + C_STARTTIME, proc_starttime(pid) or 0)
    rg.st32(o + C_SLEEPING, 0)
    # what the incarnation before left unanswered is not held by this one
    rg.st32(o + C_LEFT, (rg.ld32(o + C_LEFT) + consumer_held(rg, c)) & U32)
    rg.st32(o + C_INCARNATION, rg.ld32(o + C_INCARNATION) + 1)
    rg.st32(o + C_STATE, CONS_LIVE)
    # producers holding requests for a worker submit them now
    reaper._ring_producers(rg, _ring_socket())
    return rg.ld32(o + C_INCARNATION) & 0xFFFF


def consumer_held(rg, c):
    """Requests consumer c took and has not answered (mosn_consumer_held),
    at most the slots there are."""
    o = rg.cons(c)
    answered = (
        rg.ld64(o + C_COMPLETED) + rg.ld64(o + C_ERRORS) + rg.ld32(o + C_LEFT)
    )
    taken = rg.ld64(o + C_TAKEN)
    if taken <= answered:
        return 0
    return min(taken - answered, rg._slots * rg._np)


def _consumer_take(rg, c, max_):
    out = []
    o = rg.cons(c)
    inc = rg.ld32(o + C_INCARNATION) & 0xFFFF
    for p in range(rg._np):
        if len(out) >= max_:
            break
        ring = rg.submit_ring(p, c)
        tail = rg.ld32(ring + R_TAIL)
        head = rg.ld32(ring + R_HEAD)
        if (head - tail) & U32 > rg._slots:
            tail = head  # a producer scribbled: skip what cannot be real
        while tail != head and len(out) < max_:
            e = rg.ring_entry(ring, tail)
            tail = (tail + 1) & U32
            s, gen = e & U32, e >> 32
            if s >= rg._slots:
                continue
            slot = rg.slot(p, s)
            w = rg.ld64(slot + S_STATE)
            if (
                sw_state(w) != SLOT_SUBMITTED
                or sw_consumer(w) != c
                or sw_inc(w) != inc
                or sw_gen(w) != gen
            ):
                continue
            rg.st64(slot + S_STATE, sw(gen, inc, c, SLOT_TAKEN))
            out.append((p << 32) | s)
        # the slot is marked taken before the entry leaves the ring
        rg.st32(ring + R_TAIL, tail)
    if out:
        rg.add64(o + C_TAKEN, len(out))
        rg.add64(o + C_BATCHES)
    return out


def _consumer_complete(rg, c, p, s):
    """Returns the producer to wake, or -1."""
    if p >= rg._np or s >= rg._slots:
        return -1
    o = rg.cons(c)
    slot = rg.slot(p, s)
    w = rg.ld64(slot + S_STATE)
    if (
        sw_state(w) != SLOT_TAKEN
        or sw_consumer(w) != c
        or sw_inc(w) != rg.ld32(o + C_INCARNATION) & 0xFFFF
    ):
        rg.add64(o + C_ERRORS)
        return -1
    rg.st64(slot + S_STATE, sw(sw_gen(w), sw_inc(w), c, SLOT_DONE))
    if _ring_push(rg, rg.completion_ring(p, c), entry(s, sw_gen(w))) != 0:
        rg.add64(o + C_ERRORS)
        return -1
    rg.add64(o + C_COMPLETED)
    return p


def _consumer_flush(rg, c, sock, wake_mask):
    if not wake_mask:
        return 0
    _full_fence()  # pairs with the fence in _producer_arm()
    n = 0
    for p in range(rg._np):
        if not wake_mask & (1 << p):
            continue
        o = rg.prod(p)
        # C: atomic exchange; a spare doorbell is harmless
        if rg.ld32(o + P_NEED_WAKEUP):
            rg.st32(o + P_NEED_WAKEUP, 0)
            producer._producer_notify(rg, sock, p)
            n += 1
    rg.add64(rg.cons(c) + C_DOORBELLS, n)
    return n


def _consumer_pending(rg, c):
    for p in range(rg._np):
        ring = rg.submit_ring(p, c)
        if rg.ld32(ring + R_HEAD) != rg.ld32(ring + R_TAIL):
            return True
    return False


def _consumer_wait(rg, c, timeout_ms):
    o = rg.cons(c)
    rg.st32(o + C_SLEEPING, SLEEP_FUTEX)
    _full_fence()  # pairs with the fence in _wake_consumer()
    seq = rg.ld32(o + C_FUTEX)
    if _consumer_pending(rg, c):
        rg.st32(o + C_SLEEPING, SLEEP_NONE)
        return True
    rg.add64(o + C_SLEEPS)
    _futex_wait(rg._base + o + C_FUTEX, seq, timeout_ms)
    rg.st32(o + C_SLEEPING, SLEEP_NONE)
    return _consumer_pending(rg, c)


def _consumer_doorbell_open(rg, c):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        # the directory is the owner's alone: what is there is a leftover
        os.unlink(_consumer_doorbell_addr(rg, c))
    except OSError:
        pass
    try:
        sock.bind(_consumer_doorbell_addr(rg, c))
    except OSError as e:
        sock.close()
        raise RingError(
            "cannot bind the doorbell of consumer %d: %s" % (c, e.strerror)
        ) from None
    sock.setblocking(False)
    return sock


def _consumer_arm(rg, c):
    o = rg.cons(c)
    rg.st32(o + C_SLEEPING, SLEEP_FD)
    _full_fence()  # pairs with the fence in _wake_consumer()
    if _consumer_pending(rg, c):
        rg.st32(o + C_SLEEPING, SLEEP_NONE)
        return True
    rg.add64(o + C_SLEEPS)
    return False


def _consumer_disarm(rg, c, sock):
    rg.st32(rg.cons(c) + C_SLEEPING, SLEEP_NONE)
    while sock is not None:
        try:
            sock.recv(16)
        except OSError:
            break
    return _consumer_pending(rg, c)
