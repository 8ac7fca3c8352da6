
/*
 * The consumer side (a Python worker): starting, taking submitted slots,
 * completing them and waking their producers, sleeping on its futex or
 * in an event loop on its doorbell.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "shm_core.h"


int
mosn_consumer_start(mosn_region_t *rg, uint32_t c, pid_t pid)
{
    uint64_t          starttime;
    mosn_consumer_t  *cons;

    if (c >= rg->nconsumers) {
        return -1;
    }

    cons = mosn_consumer(rg, c);

    if (mosn_proc_starttime(pid, &starttime) != 0) {
        starttime = 0;
    }

    cons->pid = (uint32_t) pid;
    cons->starttime = starttime;
    cons->sleeping = MOSN_SLEEP_NONE;

    /* what the incarnation before left unanswered is not held by this one */
    cons->left += (uint32_t) mosn_consumer_held(rg, cons);

    __atomic_add_fetch(&cons->incarnation, 1, __ATOMIC_ACQ_REL);
    mosn_store(&cons->state, MOSN_CONS_LIVE);

    /* producers holding requests for a worker submit them now */
    mosn_ring_producers(rg, mosn_ring_socket());

    return (int) (cons->incarnation & 0xffff);
}


int
mosn_consumer_take(mosn_region_t *rg, uint32_t c, uint64_t *out, int max)
{
    int               n;
    uint32_t          p, s, inc, tail, head, mask, np;
    uint64_t          e, w;
    mosn_slot_t      *slot;
    mosn_ring_t      *ring;
    mosn_consumer_t  *cons;

    n = 0;
    np = rg->nproducers;
    mask = rg->slots - 1;
    cons = mosn_consumer(rg, c);
    inc = cons->incarnation & 0xffff;

    for (p = 0; p < np && n < max; p++) {
        ring = mosn_submit_ring(rg, p, c);
        tail = ring->tail;
        head = mosn_load(&ring->head);

        if (head - tail > rg->slots) {
            /* a producer scribbled: skip what cannot be real */
            tail = head;
        }

        while (tail != head && n < max) {
            e = ring->entries[tail & mask];
            tail++;

            s = MOSN_ENTRY_SLOT(e);

            if (s >= rg->slots) {
                continue;
            }

            slot = mosn_slot(rg, p, s);
            w = mosn_load(&slot->state);

            if (MOSN_SW_STATE(w) != MOSN_SLOT_SUBMITTED
                || MOSN_SW_CONSUMER(w) != c || MOSN_SW_INC(w) != inc
                || MOSN_SW_GEN(w) != MOSN_ENTRY_GEN(e))
            {
                continue;
            }

            mosn_store(&slot->state,
                       MOSN_SW(MOSN_ENTRY_GEN(e), inc, c, MOSN_SLOT_TAKEN));
            out[n++] = MOSN_PS(p, s);
        }

        /* the slot is marked taken before the entry leaves the ring */
        mosn_store(&ring->tail, tail);
    }

    if (n) {
        cons->taken += (uint64_t) n;
        cons->batches++;
    }

    return n;
}


int
mosn_consumer_complete(mosn_region_t *rg, uint32_t c, uint32_t p,
    uint32_t s, uint64_t *wake_mask)
{
    uint64_t          w;
    mosn_slot_t      *slot;
    mosn_consumer_t  *cons;

    if (p >= rg->nproducers || s >= rg->slots) {
        return -1;
    }

    cons = mosn_consumer(rg, c);
    slot = mosn_slot(rg, p, s);
    w = slot->state;

    if (MOSN_SW_STATE(w) != MOSN_SLOT_TAKEN || MOSN_SW_CONSUMER(w) != c
        || MOSN_SW_INC(w) != (cons->incarnation & 0xffff))
    {
        cons->errors++;
        return -1;
    }

    mosn_store(&slot->state, MOSN_SW(MOSN_SW_GEN(w), MOSN_SW_INC(w), c,
                                     MOSN_SLOT_DONE));

    if (mosn_ring_push(rg, mosn_completion_ring(rg, p, c),
                       MOSN_ENTRY(s, MOSN_SW_GEN(w)))
        != 0)
    {
        cons->errors++;
        return -1;
    }

    cons->completed++;
    wake_mask[p / 64] |= 1ULL << (p % 64);

    return 0;
}


int
mosn_consumer_flush(mosn_region_t *rg, uint32_t c, int sock,
    uint64_t *wake_mask)
{
    int               n;
    uint32_t          p, i;
    uint64_t          bits;
    mosn_producer_t  *prod;

    bits = 0;

    for (i = 0; i < MOSN_WAKE_WORDS; i++) {
        bits |= wake_mask[i];
    }

    if (bits == 0) {
        return 0;
    }

    /* pairs with the fence in mosn_producer_arm() */
    mosn_full_fence();

    n = 0;

    for (p = 0; p < rg->nproducers; p++) {
        if (!(wake_mask[p / 64] & (1ULL << (p % 64)))) {
            continue;
        }

        prod = mosn_producer(rg, p);

        if (mosn_load_relaxed(&prod->need_wakeup)
            && __atomic_exchange_n(&prod->need_wakeup, 0, __ATOMIC_ACQ_REL))
        {
            (void) mosn_producer_notify(rg, sock, p);
            n++;
        }
    }

    for (i = 0; i < MOSN_WAKE_WORDS; i++) {
        wake_mask[i] = 0;
    }

    mosn_consumer(rg, c)->doorbells += (uint64_t) n;

    return n;
}


int
mosn_consumer_pending(mosn_region_t *rg, uint32_t c)
{
    uint32_t      p;
    mosn_ring_t  *ring;

    for (p = 0; p < rg->nproducers; p++) {
        ring = mosn_submit_ring(rg, p, c);

        if (mosn_load(&ring->head) != ring->tail) {
            return 1;
        }
    }

    return 0;
}


static uint64_t  mosn_spin_ns;


void
mosn_consumer_spin(uint64_t ns)
{
    mosn_spin_ns = ns;
}


int
mosn_consumer_wait(mosn_region_t *rg, uint32_t c, int timeout_ms)
{
    uint32_t          seq;
    uint64_t          until;
    mosn_consumer_t  *cons;

    cons = mosn_consumer(rg, c);

    /* under load the next request comes soon: look again before sleeping */
    if (mosn_spin_ns > 0) {
        until = mosn_now_ns() + mosn_spin_ns;

        do {
            if (mosn_consumer_pending(rg, c)) {
                return 1;
            }

#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif

        } while (mosn_now_ns() < until);
    }

    mosn_store(&cons->sleeping, MOSN_SLEEP_FUTEX);

    /* pairs with the fence in mosn_wake_consumer() */
    mosn_full_fence();

    seq = mosn_load(&cons->futex);

    if (mosn_consumer_pending(rg, c)) {
        mosn_store(&cons->sleeping, MOSN_SLEEP_NONE);
        return 1;
    }

    cons->sleeps++;
    (void) mosn_futex_wait(&cons->futex, seq, timeout_ms);
    mosn_store(&cons->sleeping, MOSN_SLEEP_NONE);

    return mosn_consumer_pending(rg, c);
}


/*
 * A consumer that runs an event loop sleeps in that loop, not on its
 * futex: it polls its doorbell socket, and producers ring it as they
 * would wake the futex, only when the consumer said it sleeps (arm).
 *
 *     fd = mosn_consumer_doorbell_open(rg, c);     once, into the loop
 *     ...
 *     serve until nothing is left;
 *     if (mosn_consumer_arm(rg, c)) serve again;   else back to the loop
 *     ...
 *     fd readable: mosn_consumer_disarm(rg, c, fd); serve
 */

int
mosn_consumer_doorbell_open(mosn_region_t *rg, uint32_t c)
{
    int                 fd;
    socklen_t           len;
    struct sockaddr_un  sa;

    if (c >= rg->nconsumers) {
        errno = EINVAL;
        return -1;
    }

    len = mosn_doorbell_name_of(rg, 'c', c, &sa);
    fd = mosn_doorbell_bind(&sa, len, NULL, 0);

    return fd;
}


int
mosn_consumer_arm(mosn_region_t *rg, uint32_t c)
{
    mosn_consumer_t  *cons;

    cons = mosn_consumer(rg, c);

    mosn_store(&cons->sleeping, MOSN_SLEEP_FD);

    /* pairs with the fence in mosn_wake_consumer() */
    mosn_full_fence();

    if (mosn_consumer_pending(rg, c)) {
        mosn_store(&cons->sleeping, MOSN_SLEEP_NONE);
        return 1;
    }

    cons->sleeps++;

    return 0;
}


int
mosn_consumer_disarm(mosn_region_t *rg, uint32_t c, int fd)
{
    mosn_consumer_t  *cons;

    cons = mosn_consumer(rg, c);

    /* awake: producers need not ring while it serves */
    mosn_store(&cons->sleeping, MOSN_SLEEP_NONE);

    if (fd >= 0) {
        (void) mosn_doorbell_drain(fd);
    }

    return mosn_consumer_pending(rg, c);
}


/*
 * Producers ring consumers' doorbells from one unbound socket of their
 * own, made when first needed: the nginx module's callers keep their
 * signatures, and a process that never wakes an event-loop consumer
 * never makes it.
 */

static int  mosn_ring_sock = -1;


int
mosn_ring_socket(void)
{
    if (mosn_ring_sock == -1) {
        mosn_ring_sock = socket(AF_UNIX,
                                SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    }

    return mosn_ring_sock;
}


void
mosn_consumer_doorbell_ring(mosn_region_t *rg, uint32_t c)
{
    char                b;
    socklen_t           len;
    struct sockaddr_un  sa;

    if (mosn_ring_socket() == -1) {
        return;
    }

    len = mosn_doorbell_name_of(rg, 'c', c, &sa);
    b = 1;

    /* a full socket buffer already holds a wake-up */
    (void) sendto(mosn_ring_sock, &b, 1, MSG_DONTWAIT,
                  (struct sockaddr *) &sa, len);
}
