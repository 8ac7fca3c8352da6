
/*
 * The supervisor side: allocating and retiring consumers, and the reaper,
 * which hands back the channels and slots of processes that died.
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
mosn_consumer_alloc(mosn_region_t *rg)
{
    uint32_t          c, st;
    mosn_consumer_t  *cons;

    for (c = 0; c < rg->nconsumers; c++) {
        cons = mosn_consumer(rg, c);
        st = mosn_load(&cons->state);

        if (st == MOSN_CONS_EMPTY || st == MOSN_CONS_DEAD) {
            mosn_store(&cons->state, MOSN_CONS_STARTING);
            return (int) c;
        }
    }

    return -1;
}


void
mosn_ring_producers(mosn_region_t *rg, int sock)
{
    uint32_t  p;

    for (p = 0; p < rg->nproducers; p++) {
        if (MOSN_OWNER_STATE(mosn_load(&mosn_producer(rg, p)->owner))
            == MOSN_CHAN_OWNED)
        {
            (void) mosn_doorbell_ring(rg, sock, p);
        }
    }
}


void
mosn_consumer_retire(mosn_region_t *rg, uint32_t c, int sock)
{
    if (c >= rg->nconsumers) {
        return;
    }

    mosn_store(&mosn_consumer(rg, c)->state, MOSN_CONS_DEAD);
    __atomic_add_fetch(&rg->hdr->consumer_epoch, 1, __ATOMIC_ACQ_REL);

    /* producers re-queue what the consumer held */
    mosn_ring_producers(rg, sock);
}


/*
 * Hands the channel of a dead producer back once nothing is in flight:
 * completions are drained, slots of dead consumers and slots never
 * published are freed, slots with live consumers are waited for.
 */

int
mosn_reap_channel(mosn_region_t *rg, uint32_t p)
{
    int               busy;
    uint32_t          s, c, st, gen;
    uint64_t          w, expect, owner;
    mosn_slot_t      *slot;
    mosn_ring_t      *ring;
    mosn_producer_t  *prod;

    prod = mosn_producer(rg, p);
    busy = 0;

    /* one reaper at a time: the supervisor, or an nginx worker claiming */
    expect = mosn_load(&prod->owner);
    owner = expect;

    if (MOSN_OWNER_STATE(expect) != MOSN_CHAN_DRAINING
        || !__atomic_compare_exchange_n(&prod->owner, &expect,
                                        MOSN_OWNER(getpid(),
                                                   MOSN_CHAN_REAPING),
                                        0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
    {
        return 1;
    }

    for (c = 0; c < rg->nconsumers; c++) {
        ring = mosn_completion_ring(rg, p, c);
        mosn_store(&ring->tail, mosn_load(&ring->head));
    }

    for (s = 0; s < rg->slots; s++) {
        slot = mosn_slot(rg, p, s);
        w = mosn_load(&slot->state);
        st = MOSN_SW_STATE(w);
        c = MOSN_SW_CONSUMER(w);
        gen = MOSN_SW_GEN(w);

        if (st == MOSN_SLOT_FREE) {
            continue;
        }

        if (st == MOSN_SLOT_DONE
            || !mosn_consumer_alive(rg, c, MOSN_SW_INC(w)))
        {
            mosn_store(&slot->state, MOSN_SW(gen, 0, 0, MOSN_SLOT_FREE));
            continue;
        }

        /*
         * Never published, or the entry left the ring: a live consumer
         * may have taken it after w was read (it marks the slot before it
         * moves the tail), so free it only if the state is still w.
         */
        if (st == MOSN_SLOT_SUBMITTED
            && !mosn_ring_holds(rg, mosn_submit_ring(rg, p, c), s, gen)
            && __atomic_compare_exchange_n(&slot->state, &w,
                                           MOSN_SW(gen, 0, 0, MOSN_SLOT_FREE),
                                           0, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE))
        {
            continue;
        }

        busy++;
    }

    if (busy) {
        /* a live consumer holds some: another pass, later */
        mosn_store(&prod->owner, owner);
        return busy;
    }

    for (c = 0; c < rg->nconsumers; c++) {
        ring = mosn_completion_ring(rg, p, c);
        mosn_store(&ring->tail, mosn_load(&ring->head));
    }

    prod->in_use = 0;
    prod->waiting = 0;
    prod->notify_fd = -1;
    prod->need_wakeup = 0;

    mosn_store(&prod->owner, MOSN_OWNER(0, MOSN_CHAN_FREE));

    return 0;
}


/*
 * Channels whose owner died (or whose reaper did) are drained and handed
 * back: by the supervisor, and by an nginx worker that finds no free
 * channel, so that crashed workers' channels come back with no
 * supervisor running.  Returns how many dead owners it found; *freed
 * counts the channels that came free.
 */

int
mosn_reap_producers(mosn_region_t *rg, uint32_t *freed)
{
    int               reaped;
    uint32_t          p;
    uint64_t          w;
    mosn_producer_t  *prod;

    reaped = 0;
    *freed = 0;

    for (p = 0; p < rg->nproducers; p++) {
        prod = mosn_producer(rg, p);
        w = mosn_load(&prod->owner);

        switch (MOSN_OWNER_STATE(w)) {

        case MOSN_CHAN_OWNED:
            if (mosn_proc_alive(MOSN_OWNER_PID(w),
                                MOSN_READ_ONCE(prod->starttime)))
            {
                continue;
            }

            break;

        case MOSN_CHAN_CLAIMING:
        case MOSN_CHAN_REAPING:
            if (mosn_proc_alive(MOSN_OWNER_PID(w), 0)) {
                continue;
            }

            break;

        case MOSN_CHAN_DRAINING:
            *freed += (mosn_reap_channel(rg, p) == 0);
            continue;

        default:
            continue;
        }

        if (__atomic_compare_exchange_n(&prod->owner, &w,
                                        MOSN_OWNER(MOSN_OWNER_PID(w),
                                                   MOSN_CHAN_DRAINING),
                                        0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
        {
            reaped++;
            *freed += (mosn_reap_channel(rg, p) == 0);
        }
    }

    return reaped;
}


int
mosn_reap(mosn_region_t *rg, int sock)
{
    int               reaped;
    uint32_t          c, st, freed;
    mosn_consumer_t  *cons;

    reaped = 0;

    for (c = 0; c < rg->nconsumers; c++) {
        cons = mosn_consumer(rg, c);
        st = mosn_load(&cons->state);

        if ((st == MOSN_CONS_LIVE || st == MOSN_CONS_DRAINING)
            && !mosn_proc_alive((pid_t) cons->pid, cons->starttime))
        {
            mosn_consumer_retire(rg, c, sock);
            reaped++;
        }
    }

    return reaped + mosn_reap_producers(rg, &freed);
}


uint32_t
mosn_slots_in_use(mosn_region_t *rg)
{
    uint32_t  p, s, n;

    n = 0;

    for (p = 0; p < rg->nproducers; p++) {
        for (s = 0; s < rg->slots; s++) {
            if (MOSN_SW_STATE(mosn_load(&mosn_slot(rg, p, s)->state))
                != MOSN_SLOT_FREE)
            {
                n++;
            }
        }
    }

    return n;
}
