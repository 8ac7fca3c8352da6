"""The supervisor side in pure Python: shm_reaper.c, function by function
(consumers allocated and retired, the channels and slots of dead
processes handed back).
"""

import os

from shm_ring.abi import (
    CHAN_CLAIMING,
    CHAN_DRAINING,
    CHAN_FREE,
    CHAN_OWNED,
    CHAN_REAPING,
    CONS_DEAD,
    CONS_DRAINING,
    CONS_EMPTY,
    CONS_LIVE,
    CONS_STARTING,
    C_PID,
    C_STARTTIME,
    C_STATE,
    H_CONSUMER_EPOCH,
    P_IN_USE,
    P_NEED_WAKEUP,
    P_NOTIFY_FD,
    P_OWNER,
    P_STARTTIME,
    P_WAITING,
    R_HEAD,
    R_TAIL,
    SLOT_DONE,
    SLOT_FREE,
    SLOT_SUBMITTED,
    S_STATE,
    U32,
    owner,
    sw,
    sw_consumer,
    sw_gen,
    sw_inc,
    sw_state,
)
from shm_ring.fallback import producer
from shm_ring.fallback.region import _consumer_alive, proc_alive


def _consumer_alloc(rg):
    for c in range(rg._nc):
        o = rg.cons(c)
        if rg.ld32(o + C_STATE) in (CONS_EMPTY, CONS_DEAD):
            rg.st32(o + C_STATE, CONS_STARTING)
            return c
    return -1


def _ring_producers(rg, sock):
    for p in range(rg._np):
        if rg.ld64(rg.prod(p) + P_OWNER) & 0xFF == CHAN_OWNED:
            producer._doorbell_ring(rg, sock, p)


def _consumer_retire(rg, c, sock):
    if not 0 <= c < rg._nc:
        return
    rg.st32(rg.cons(c) + C_STATE, CONS_DEAD)
    # C: atomic add; one supervisor retires
    rg.st32(H_CONSUMER_EPOCH, rg.ld32(H_CONSUMER_EPOCH) + 1)
    # producers re-queue what the consumer held
    _ring_producers(rg, sock)


def _drain_completions(rg, p):
    for c in range(rg._nc):
        ring = rg.completion_ring(p, c)
        rg.st32(ring + R_TAIL, rg.ld32(ring + R_HEAD))


def _reap_channel(rg, p):
    """Hands a dead producer's channel back once nothing is in flight."""
    o = rg.prod(p)
    busy = 0
    # one reaper at a time; C: compare-and-swap
    held = rg.ld64(o + P_OWNER)
    if held & 0xFF != CHAN_DRAINING:
        return 1
    rg.st64(o + P_OWNER, owner(os.getpid(), CHAN_REAPING))
    _drain_completions(rg, p)
    for s in range(rg._slots):
        slot = rg.slot(p, s)
        w = rg.ld64(slot + S_STATE)
        st, c, gen = sw_state(w), sw_consumer(w), sw_gen(w)
        if st == SLOT_FREE:
            continue
        if st == SLOT_DONE or not _consumer_alive(rg, c, sw_inc(w)):
            rg.st64(slot + S_STATE, sw(gen, 0, 0, SLOT_FREE))
            continue
        # C: compare-and-swap, as a live consumer may take it meanwhile
        if (
            st == SLOT_SUBMITTED
            and not producer._ring_holds(rg, rg.submit_ring(p, c), s, gen)
            and rg.ld64(slot + S_STATE) == w
        ):
            rg.st64(slot + S_STATE, sw(gen, 0, 0, SLOT_FREE))
            continue
        busy += 1
    if busy:
        rg.st64(o + P_OWNER, held)  # another pass, later
        return busy
    _drain_completions(rg, p)
    rg.st32(o + P_IN_USE, 0)
    rg.st32(o + P_WAITING, 0)
    rg.st32(o + P_NOTIFY_FD, U32)
    rg.st32(o + P_NEED_WAKEUP, 0)
    rg.st64(o + P_OWNER, owner(0, CHAN_FREE))
    return 0


def _reap_producers(rg):
    """mosn_reap_producers(): (dead owners found, channels freed)."""
    reaped = freed = 0
    for p in range(rg._np):
        o = rg.prod(p)
        w = rg.ld64(o + P_OWNER)
        st, pid = w & 0xFF, w >> 32
        if st == CHAN_OWNED:
            if proc_alive(pid, rg.ld64(o + P_STARTTIME)):
                continue
        elif st in (CHAN_CLAIMING, CHAN_REAPING):
            if proc_alive(pid, 0):
                continue
        elif st == CHAN_DRAINING:
            freed += _reap_channel(rg, p) == 0
            continue
        else:
            continue
        # C: compare-and-swap
        if rg.ld64(o + P_OWNER) == w:
            rg.st64(o + P_OWNER, owner(pid, CHAN_DRAINING))
            reaped += 1
            freed += _reap_channel(rg, p) == 0
    return reaped, freed


def _reap(rg, sock):
    reaped = 0
    for c in range(rg._nc):
        o = rg.cons(c)
        if rg.ld32(o + C_STATE) in (
            CONS_LIVE,
            CONS_DRAINING,
        ) and not proc_alive(rg.ld32(o + C_PID), rg.ld64(o + C_STARTTIME)):
            _consumer_retire(rg, c, sock)
            reaped += 1
    return reaped + _reap_producers(rg)[0]
