"""The producer side in pure Python: shm_producer.c, function by function
(an nginx worker's side: claiming a channel, submitting slots and waking
consumers, taking completions, rescuing slots; its doorbell and eventfd).
"""

import ctypes
import fcntl
import os
import socket

from shm_ring.abi import (
    CHAN_CLAIMING,
    CHAN_DRAINING,
    CHAN_FREE,
    CHAN_OWNED,
    CONS_LIVE,
    C_ABANDONS,
    C_FUTEX,
    C_INCARNATION,
    C_SLEEPING,
    C_STATE,
    P_COMPLETED,
    P_EPOCH,
    P_FORGED,
    P_FUTEX_WAKES,
    P_IN_USE,
    P_NEED_WAKEUP,
    P_NOTIFY_FD,
    P_OWNER,
    P_REQUEUED,
    P_STALE,
    P_STARTTIME,
    P_SUBMITTED,
    P_WAITING,
    R_HEAD,
    R_TAIL,
    SLEEP_FD,
    SLEEP_NONE,
    SLOT_DONE,
    SLOT_FREE,
    SLOT_SUBMITTED,
    SLOT_TAKEN,
    S_ABANDONED,
    S_STATE,
    S_SUBMIT_NS,
    U32,
    entry,
    owner,
    sw,
    sw_consumer,
    sw_gen,
    sw_inc,
    sw_state,
)
from shm_ring.fallback import consumer, reaper
from shm_ring.fallback.region import (
    _consumer_alive,
    _full_fence,
    _futex_wake,
    _libc,
    _now_ns,
    _ring_push,
    _ring_room,
    _shm_path,
    proc_alive,
    proc_starttime,
)


# mosn_producer_rescue_slot() results (shm_core.h)
RESCUE_FAILED = 0x80000000
RESCUE_NONE, RESCUE_REQUEUED, RESCUE_DONE, RESCUE_LOST = range(4)


def _ring_holds(rg, ring, s, gen):
    head = rg.ld32(ring + R_HEAD)
    tail = rg.ld32(ring + R_TAIL)
    if (head - tail) & U32 > rg._slots:
        return False
    want = entry(s, gen)
    while tail != head:
        if rg.ring_entry(ring, tail) == want:
            return True
        tail = (tail + 1) & U32
    return False


def _doorbell_addr(rg, p):
    # a socket in the region's wake-up directory, as mosn_doorbell_name()
    return "%s/p%d" % (rg._wake_dir, p)


# a producer's eventfd, copied from its process (mosn_notify_take())
_SYS_PIDFD_GETFD = 438
_notify_copies = {}  # p -> (region, owner, epoch, fd or -1)


def _notify_take(rg, o, owner_word):
    pid, target = owner_word >> 32, rg.ld32(o + P_NOTIFY_FD)
    if owner_word & 0xFF != CHAN_OWNED or pid <= 0 or target >= 0x80000000:
        return -1
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return -1
    try:
        # the pidfd names whoever had the pid: the owner, if it started then
        if not proc_alive(pid, rg.ld64(o + P_STARTTIME)):
            return -1
        fd = _libc.syscall(
            ctypes.c_long(_SYS_PIDFD_GETFD),
            ctypes.c_int(pidfd),
            ctypes.c_int(target),
            ctypes.c_uint(0),
        )
    finally:
        os.close(pidfd)
    if fd < 0:
        return -1
    try:
        # the number comes from the region: write to nothing but an eventfd
        if os.readlink("/proc/self/fd/%d" % fd) == "anon_inode:[eventfd]":
            return fd
    except OSError:
        pass
    os.close(fd)
    return -1


def _notify_fd(rg, p):
    o = rg.prod(p)
    owner_word, epoch = rg.ld64(o + P_OWNER), rg.ld32(o + P_EPOCH)
    copy = _notify_copies.get(p)
    if copy and copy[0] is rg and copy[1:3] == (owner_word, epoch):
        return copy[3]
    if copy and copy[3] >= 0:
        os.close(copy[3])
    fd = _notify_take(rg, o, owner_word)
    _notify_copies[p] = (rg, owner_word, epoch, fd)
    return fd


def _producer_notify(rg, sock, p):
    fd = _notify_fd(rg, p)
    if fd >= 0:
        try:
            os.write(fd, (1).to_bytes(8, "little"))
            return 0
        except OSError:
            pass
    return _doorbell_ring(rg, sock, p)


def _doorbell_ring(rg, sock, p):
    try:
        sock.sendto(b"\1", socket.MSG_DONTWAIT, _doorbell_addr(rg, p))
    except BlockingIOError:
        pass  # a full socket buffer already holds a wake-up
    except OSError:
        return -1
    return 0


def _wake_consumer(rg, p, c):
    o = rg.cons(c)
    _full_fence()  # pairs with the fence in _consumer_wait(), _arm()
    # C: atomic exchange; here two wakers may both ring, which is harmless
    how = rg.ld32(o + C_SLEEPING)
    if how != SLEEP_NONE:
        rg.st32(o + C_SLEEPING, SLEEP_NONE)
        if how == SLEEP_FD:
            consumer._consumer_doorbell_ring(rg, c)
        else:
            rg.st32(o + C_FUTEX, (rg.ld32(o + C_FUTEX) + 1) & U32)
            _futex_wake(rg._base + o + C_FUTEX)
        rg.add64(rg.prod(p) + P_FUTEX_WAKES)


def _producer_claim(rg, pid):
    p = _producer_claim_free(rg, pid)
    # none free: take back those of dead owners (no supervisor may run)
    if p < 0 and reaper._reap_producers(rg)[1]:
        p = _producer_claim_free(rg, pid)
    return p


def _producer_claim_free(rg, pid):
    starttime = proc_starttime(pid) or 0
    # C: compare-and-swap.  The flock keeps fallback claimers apart; it
    # does not keep out a C claimer (see the module docstring).
    fd = os.open(_shm_path(rg.name), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for p in range(rg._np):
            o = rg.prod(p)
            if rg.ld64(o + P_OWNER) != owner(0, CHAN_FREE):
                continue
            rg.st64(o + P_OWNER, owner(pid, CHAN_CLAIMING))
            rg.st64(o + P_STARTTIME, starttime)
            rg.st32(o + P_EPOCH, rg.ld32(o + P_EPOCH) + 1)
            rg.st32(o + P_NEED_WAKEUP, 0)
            rg.st32(o + P_IN_USE, 0)
            rg.st32(o + P_WAITING, 0)
            rg.st32(o + P_NOTIFY_FD, U32)  # -1
            rg.st64(o + P_OWNER, owner(pid, CHAN_OWNED))
            return p
        return -1
    finally:
        os.close(fd)


def _producer_release(rg, p):
    o = rg.prod(p)
    # the reaper hands the channel on once every slot is back
    rg.st64(o + P_OWNER, owner(rg.ld64(o + P_OWNER) >> 32, CHAN_DRAINING))


def _producer_pick(rg, p, rr):
    """The live consumer with the least work (queued from p, and held),
    from the round-robin position rr: (consumer, incarnation, new rr) or
    None."""
    n = rg._nc
    best = None
    best_pending = None
    for i in range(n):
        c = (rr + i) % n
        o = rg.cons(c)
        if rg.ld32(o + C_STATE) != CONS_LIVE:
            continue
        ring = rg.submit_ring(p, c)
        queued = (rg.ld32(ring + R_HEAD) - rg.ld32(ring + R_TAIL)) & U32
        pending = queued + consumer.consumer_held(rg, c)
        if best_pending is None or pending < best_pending:
            best = c
            best_pending = pending
            inc = rg.ld32(o + C_INCARNATION) & 0xFFFF
            if pending == 0:
                break
    if best is None:
        return None
    return best, inc, best + 1


def _producer_submit(rg, p, s, c, inc):
    slot = rg.slot(p, s)
    ring = rg.submit_ring(p, c)
    if not _ring_room(rg, ring):
        return None
    g = (sw_gen(rg.ld64(slot + S_STATE)) + 1) & U32
    rg.st64(slot + S_SUBMIT_NS, _now_ns())
    rg.st64(slot + S_STATE, sw(g, inc, c, SLOT_SUBMITTED))
    _ring_push(rg, ring, entry(s, g))
    o = rg.prod(p)
    rg.add64(o + P_SUBMITTED)
    rg.st32(o + P_IN_USE, rg.ld32(o + P_IN_USE) + 1)
    _wake_consumer(rg, p, c)
    return g


def _producer_abandon(rg, p, s, gen):
    slot = rg.slot(p, s)
    w = rg.ld64(slot + S_STATE)
    c = sw_consumer(w)
    if (
        sw_gen(w) != gen
        or sw_state(w) not in (SLOT_SUBMITTED, SLOT_TAKEN)
        or c >= rg._nc
    ):
        return
    rg.st32(slot + S_ABANDONED, gen)
    # not atomic (see the module's docstring): two producers abandoning at
    # once may count one; the consumer still finds both slots abandoned
    rg.add64(rg.cons(c) + C_ABANDONS)


def _producer_free(rg, p, s):
    slot = rg.slot(p, s)
    w = rg.ld64(slot + S_STATE)
    rg.st64(slot + S_STATE, sw(sw_gen(w), 0, 0, SLOT_FREE))
    o = rg.prod(p)
    rg.st32(o + P_IN_USE, rg.ld32(o + P_IN_USE) - 1)


def _producer_poll(rg, p, max_):
    out = []
    o = rg.prod(p)
    for c in range(rg._nc):
        if len(out) >= max_:
            break
        ring = rg.completion_ring(p, c)
        tail = rg.ld32(ring + R_TAIL)
        head = rg.ld32(ring + R_HEAD)
        if (head - tail) & U32 > rg._slots:
            # no ring holds more than a channel's slots: a scribble
            rg.add64(o + P_FORGED)
            rg.st32(ring + R_TAIL, head)
            continue
        while tail != head and len(out) < max_:
            e = rg.ring_entry(ring, tail)
            tail = (tail + 1) & U32
            s, gen = e & U32, e >> 32
            if s >= rg._slots:
                rg.add64(o + P_FORGED)
                continue
            w = rg.ld64(rg.slot(p, s) + S_STATE)
            if sw_state(w) != SLOT_DONE or sw_gen(w) != gen:
                rg.add64(o + P_STALE)
                continue
            out.append((s, gen))
        rg.st32(ring + R_TAIL, tail)
    rg.add64(o + P_COMPLETED, len(out))
    return out


def _producer_arm(rg, p):
    rg.st32(rg.prod(p) + P_NEED_WAKEUP, 1)
    _full_fence()  # pairs with the fence in _consumer_flush()
    for c in range(rg._nc):
        ring = rg.completion_ring(p, c)
        if rg.ld32(ring + R_HEAD) != rg.ld32(ring + R_TAIL):
            return True
    return False


def _producer_rescue_slot(rg, p, s, gen, rr):
    """mosn_producer_rescue_slot(): (RESCUE_*, rr) for slot s held in
    flight at generation gen."""
    if not 0 <= s < rg._slots:
        return RESCUE_NONE, rr
    o = rg.prod(p)
    slot = rg.slot(p, s)
    w = rg.ld64(slot + S_STATE)
    st, c, inc = sw_state(w), sw_consumer(w), sw_inc(w)
    if sw_gen(w) != gen or st == SLOT_FREE:
        rg.add64(o + P_FORGED)
        return RESCUE_LOST, rr
    if _consumer_alive(rg, c, inc):
        return RESCUE_NONE, rr
    if st == SLOT_DONE:
        if c < rg._nc and _ring_holds(rg, rg.completion_ring(p, c), s, gen):
            return RESCUE_NONE, rr  # poll will see it
        return RESCUE_DONE, rr
    picked = _producer_pick(rg, p, rr)
    # room first: the new consumer may take the slot once named
    if picked and _ring_room(rg, rg.submit_ring(p, picked[0])):
        c2, inc2, rr = picked
        rg.st64(slot + S_STATE, sw(gen, inc2, c2, SLOT_SUBMITTED))
        _ring_push(rg, rg.submit_ring(p, c2), entry(s, gen))
        rg.add64(o + P_REQUEUED)
        _wake_consumer(rg, p, c2)
        return RESCUE_REQUEUED, rr
    if picked:
        rr = picked[2]
    # no consumer or no room: done by nobody, so lost
    rg.st64(slot + S_STATE, sw(gen, 0, 0, SLOT_TAKEN))
    return RESCUE_LOST, rr


def _producer_rescue(rg, p, rr, max_):
    """Every slot's rescue, each slot's generation taken as the
    producer's.  Returns ([(slot, gen, failed)], rr)."""
    out = []
    for s in range(rg._slots):
        if len(out) >= max_:
            break
        w = rg.ld64(rg.slot(p, s) + S_STATE)
        if sw_state(w) == SLOT_FREE:
            continue
        gen = sw_gen(w)
        got, rr = _producer_rescue_slot(rg, p, s, gen, rr)
        if got == RESCUE_DONE:
            out.append((s, gen, False))
        elif got == RESCUE_LOST:
            out.append((s, gen, True))
    return out, rr
