
/*
 * The producer side (an nginx worker): claiming a channel, submitting
 * slots to consumers and waking them, taking completions, rescuing the
 * slots of a consumer that left; its doorbell and eventfd, and how a
 * consumer wakes it through them.
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


static int mosn_producer_claim_free(mosn_region_t *rg, pid_t pid);


int
mosn_producer_claim(mosn_region_t *rg, pid_t pid)
{
    int       p;
    uint32_t  freed;

    p = mosn_producer_claim_free(rg, pid);

    /* none free: take back those of dead owners (no supervisor may run) */
    if (p < 0) {
        (void) mosn_reap_producers(rg, &freed);

        if (freed) {
            p = mosn_producer_claim_free(rg, pid);
        }
    }

    return p;
}


static int
mosn_producer_claim_free(mosn_region_t *rg, pid_t pid)
{
    uint32_t          p;
    uint64_t          expect, starttime;
    mosn_producer_t  *prod;

    if (mosn_proc_starttime(pid, &starttime) != 0) {
        starttime = 0;
    }

    for (p = 0; p < rg->nproducers; p++) {
        prod = mosn_producer(rg, p);
        expect = MOSN_OWNER(0, MOSN_CHAN_FREE);

        if (!__atomic_compare_exchange_n(&prod->owner, &expect,
                                         MOSN_OWNER(pid, MOSN_CHAN_CLAIMING),
                                         0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
        {
            continue;
        }

        prod->starttime = starttime;
        prod->epoch++;
        prod->need_wakeup = 0;
        prod->in_use = 0;
        prod->waiting = 0;
        prod->notify_fd = -1;

        mosn_store(&prod->owner, MOSN_OWNER(pid, MOSN_CHAN_OWNED));

        return (int) p;
    }

    return -1;
}


void
mosn_producer_release(mosn_region_t *rg, uint32_t p)
{
    mosn_producer_t  *prod;

    prod = mosn_producer(rg, p);

    /* the reaper hands the channel on once every slot is back */
    mosn_store(&prod->owner,
               MOSN_OWNER(MOSN_OWNER_PID(prod->owner), MOSN_CHAN_DRAINING));
}


/*
 * The live consumer with the least work: entries queued from this
 * producer and requests it holds from any (a worker stuck in a filter
 * that blocks holds one and has nothing queued).
 */

int
mosn_producer_pick(mosn_region_t *rg, uint32_t p, uint32_t *rr,
    uint32_t *inc)
{
    int               best;
    uint32_t          i, c, n, st;
    uint64_t          load, best_load;
    mosn_ring_t      *ring;
    mosn_consumer_t  *cons;

    n = rg->nconsumers;
    best = -1;
    best_load = UINT64_MAX;

    for (i = 0; i < n; i++) {
        c = (*rr + i) % n;
        cons = mosn_consumer(rg, c);
        st = mosn_load(&cons->state);

        if (st != MOSN_CONS_LIVE) {
            continue;
        }

        ring = mosn_submit_ring(rg, p, c);
        load = (uint64_t) (ring->head - mosn_load(&ring->tail))
               + mosn_consumer_held(rg, cons);

        if (load < best_load) {
            best = (int) c;
            best_load = load;
            *inc = mosn_load(&cons->incarnation) & 0xffff;

            if (load == 0) {
                break;
            }
        }
    }

    if (best >= 0) {
        *rr = (uint32_t) best + 1;
    }

    return best;
}


void
mosn_wake_consumer(mosn_region_t *rg, uint32_t p, uint32_t c)
{
    uint32_t          how;
    mosn_consumer_t  *cons;

    cons = mosn_consumer(rg, c);

    /* pairs with the fence in mosn_consumer_wait() and _arm() */
    mosn_full_fence();

    if (mosn_load_relaxed(&cons->sleeping) == MOSN_SLEEP_NONE) {
        return;
    }

    how = __atomic_exchange_n(&cons->sleeping, MOSN_SLEEP_NONE,
                              __ATOMIC_ACQ_REL);

    if (how == MOSN_SLEEP_NONE) {
        return;
    }

    if (how == MOSN_SLEEP_FD) {
        mosn_consumer_doorbell_ring(rg, c);

    } else {
        __atomic_add_fetch(&cons->futex, 1, __ATOMIC_RELEASE);
        mosn_futex_wake(&cons->futex);
    }

    mosn_producer(rg, p)->futex_wakes++;
}


/*
 * Publishes a filled slot to consumer c without waking it: an nginx worker
 * publishes every request of one event loop iteration, then wakes each
 * consumer once with mosn_producer_wake().
 */

int
mosn_producer_publish(mosn_region_t *rg, uint32_t p, uint32_t s, uint32_t c,
    uint32_t inc, uint32_t *gen)
{
    uint32_t          g;
    uint64_t          w;
    mosn_slot_t      *slot;
    mosn_ring_t      *ring;
    mosn_producer_t  *prod;

    slot = mosn_slot(rg, p, s);
    ring = mosn_submit_ring(rg, p, c);

    if (ring->head - mosn_load(&ring->tail) >= rg->slots) {
        return -1;
    }

    w = slot->state;
    g = MOSN_SW_GEN(w) + 1;

    slot->submit_ns = mosn_now_ns();
    mosn_store(&slot->state, MOSN_SW(g, inc, c, MOSN_SLOT_SUBMITTED));

    (void) mosn_ring_push(rg, ring, MOSN_ENTRY(s, g));

    prod = mosn_producer(rg, p);
    prod->submitted++;
    prod->in_use++;

    *gen = g;

    return 0;
}


void
mosn_producer_wake(mosn_region_t *rg, uint32_t p, uint32_t c)
{
    mosn_wake_consumer(rg, p, c);
}


int
mosn_producer_submit(mosn_region_t *rg, uint32_t p, uint32_t s, uint32_t c,
    uint32_t inc, uint32_t *gen)
{
    if (mosn_producer_publish(rg, p, s, c, inc, gen) != 0) {
        return -1;
    }

    mosn_wake_consumer(rg, p, c);

    return 0;
}


void
mosn_producer_free(mosn_region_t *rg, uint32_t p, uint32_t s)
{
    uint64_t          w;
    mosn_slot_t      *slot;
    mosn_producer_t  *prod;

    slot = mosn_slot(rg, p, s);
    w = mosn_load(&slot->state);

    mosn_store(&slot->state, MOSN_SW(MOSN_SW_GEN(w), 0, 0, MOSN_SLOT_FREE));

    /*
     * the next request's record is written after FREE is seen: a worker
     * that still reads this one in place (SlotRequest) looks at the state
     * after its read, and must not see the new record with the old state
     */
    __atomic_thread_fence(__ATOMIC_RELEASE);

    prod = mosn_producer(rg, p);
    prod->in_use--;
}


/*
 * The producer gave up on slot s of generation gen (a timeout, a client
 * gone): the consumer that holds it is told, so that it can stop work
 * nobody waits for.  The slot stays the consumer's until it completes it.
 */

void
mosn_producer_abandon(mosn_region_t *rg, uint32_t p, uint32_t s,
    uint32_t gen)
{
    uint32_t      c, st;
    uint64_t      w;
    mosn_slot_t  *slot;

    slot = mosn_slot(rg, p, s);
    w = mosn_load(&slot->state);
    st = MOSN_SW_STATE(w);
    c = MOSN_SW_CONSUMER(w);

    if (MOSN_SW_GEN(w) != gen
        || (st != MOSN_SLOT_SUBMITTED && st != MOSN_SLOT_TAKEN)
        || c >= rg->nconsumers)
    {
        return;
    }

    mosn_store(&slot->abandoned, gen);
    __atomic_add_fetch(&mosn_consumer(rg, c)->abandons, 1, __ATOMIC_RELEASE);
}


int
mosn_producer_poll(mosn_region_t *rg, uint32_t p, uint64_t *out, int max)
{
    int               n;
    uint32_t          c, s, tail, head, mask;
    uint64_t          e, w;
    mosn_ring_t      *ring;
    mosn_producer_t  *prod;

    n = 0;
    mask = rg->slots - 1;
    prod = mosn_producer(rg, p);

    for (c = 0; c < rg->nconsumers && n < max; c++) {
        ring = mosn_completion_ring(rg, p, c);
        tail = MOSN_READ_ONCE(ring->tail);
        head = mosn_load(&ring->head);

        if (head - tail > rg->slots) {
            /* no ring holds more than a channel's slots: a scribble */
            prod->forged++;
            mosn_store(&ring->tail, head);
            continue;
        }

        while (tail != head && n < max) {
            e = MOSN_READ_ONCE(ring->entries[tail & mask]);
            tail++;

            s = MOSN_ENTRY_SLOT(e);

            if (s >= rg->slots) {
                prod->forged++;
                continue;
            }

            w = mosn_load(&mosn_slot(rg, p, s)->state);

            if (MOSN_SW_STATE(w) != MOSN_SLOT_DONE
                || MOSN_SW_GEN(w) != MOSN_ENTRY_GEN(e))
            {
                prod->stale++;
                continue;
            }

            out[n++] = e;
        }

        mosn_store(&ring->tail, tail);
    }

    prod->completed += (uint64_t) n;

    return n;
}


int
mosn_producer_arm(mosn_region_t *rg, uint32_t p)
{
    uint32_t          c;
    mosn_ring_t      *ring;
    mosn_producer_t  *prod;

    prod = mosn_producer(rg, p);
    mosn_store(&prod->need_wakeup, 1);

    /* pairs with the fence in mosn_consumer_flush() */
    mosn_full_fence();

    for (c = 0; c < rg->nconsumers; c++) {
        ring = mosn_completion_ring(rg, p, c);

        if (mosn_load(&ring->head) != ring->tail) {
            return 1;
        }
    }

    return 0;
}


int
mosn_ring_holds(mosn_region_t *rg, mosn_ring_t *ring, uint32_t s,
    uint32_t gen)
{
    uint32_t  tail, head, mask;

    mask = rg->slots - 1;
    head = mosn_load(&ring->head);
    tail = mosn_load(&ring->tail);

    if (head - tail > rg->slots) {
        return 0;
    }

    for ( /* void */ ; tail != head; tail++) {
        if (ring->entries[tail & mask] == MOSN_ENTRY(s, gen)) {
            return 1;
        }
    }

    return 0;
}


/*
 * Called by a producer when a consumer has left, for a slot it holds in
 * flight at generation gen: a slot that a dead consumer incarnation held
 * goes to a live consumer; a verdict written but never published is
 * MOSN_RESCUE_DONE; a slot that cannot be re-queued, or whose state is
 * not the producer's (another generation, or FREE: a scribble), is
 * MOSN_RESCUE_LOST, and the request takes the fallback.
 */

int
mosn_producer_rescue_slot(mosn_region_t *rg, uint32_t p, uint32_t s,
    uint32_t gen, uint32_t *rr)
{
    int               c2;
    uint32_t          c, inc, inc2, st;
    uint64_t          w;
    mosn_slot_t      *slot;
    mosn_producer_t  *prod;

    if (s >= rg->slots) {
        return MOSN_RESCUE_NONE;
    }

    prod = mosn_producer(rg, p);
    slot = mosn_slot(rg, p, s);
    w = mosn_load(&slot->state);
    st = MOSN_SW_STATE(w);
    c = MOSN_SW_CONSUMER(w);
    inc = MOSN_SW_INC(w);

    if (MOSN_SW_GEN(w) != gen || st == MOSN_SLOT_FREE) {
        prod->forged++;
        return MOSN_RESCUE_LOST;
    }

    if (mosn_consumer_alive(rg, c, inc)) {
        return MOSN_RESCUE_NONE;
    }

    if (st == MOSN_SLOT_DONE) {
        if (c < rg->nconsumers
            && mosn_ring_holds(rg, mosn_completion_ring(rg, p, c), s, gen))
        {
            /* poll will see it */
            return MOSN_RESCUE_NONE;
        }

        return MOSN_RESCUE_DONE;
    }

    c2 = mosn_producer_pick(rg, p, rr, &inc2);

    /*
     * Room is checked before the slot names c2: c2's ring may still hold
     * an entry for this very (slot, gen) from an incarnation that died,
     * so c2 can take the slot as soon as the state names it, and the
     * state must not be taken back after that.  Only this producer pushes
     * to the ring, so the room cannot vanish before the push.
     */
    if (c2 >= 0 && mosn_ring_room(rg, mosn_submit_ring(rg, p, (uint32_t) c2)))
    {
        mosn_store(&slot->state, MOSN_SW(gen, inc2, c2, MOSN_SLOT_SUBMITTED));
        (void) mosn_ring_push(rg, mosn_submit_ring(rg, p, (uint32_t) c2),
                              MOSN_ENTRY(s, gen));
        prod->requeued++;
        mosn_wake_consumer(rg, p, (uint32_t) c2);
        return MOSN_RESCUE_REQUEUED;
    }

    /* no consumer or no room: mark it done by nobody, it is lost */
    mosn_store(&slot->state, MOSN_SW(gen, 0, 0, MOSN_SLOT_TAKEN));

    return MOSN_RESCUE_LOST;
}


/*
 * The rescue of every slot of the channel, taking each slot's own
 * generation as the producer's: for a producer that keeps no account of
 * its slots (tools, tests).  Verdicts to collect come back as entries,
 * lost slots flagged MOSN_RESCUE_FAILED.
 */

int
mosn_producer_rescue(mosn_region_t *rg, uint32_t p, uint32_t *rr,
    uint64_t *out, int max)
{
    int       n;
    uint32_t  s, gen;
    uint64_t  w;

    n = 0;

    for (s = 0; s < rg->slots && n < max; s++) {
        w = mosn_load(&mosn_slot(rg, p, s)->state);

        if (MOSN_SW_STATE(w) == MOSN_SLOT_FREE) {
            continue;
        }

        gen = MOSN_SW_GEN(w);

        switch (mosn_producer_rescue_slot(rg, p, s, gen, rr)) {

        case MOSN_RESCUE_DONE:
            out[n++] = MOSN_ENTRY(s, gen);
            break;

        case MOSN_RESCUE_LOST:
            out[n++] = MOSN_ENTRY(s | MOSN_RESCUE_FAILED, gen);
            break;

        default:
            break;
        }
    }

    return n;
}


/*
 * The doorbell of channel p: the datagram socket WAKE_DIR "/p" P, in the
 * region's wake-up directory, which only the region's owner may enter;
 * consumer c's is WAKE_DIR "/c" C.  Built by hand: a consumer builds it
 * on every ring, and snprintf() showed in profiles.
 */

_Static_assert(MOSN_WAKE_DIR_MAX + sizeof("/p4294967295")
               <= sizeof(((struct sockaddr_un *) 0)->sun_path),
               "a doorbell's path fits in sun_path");

socklen_t
mosn_doorbell_name_of(mosn_region_t *rg, char kind, uint32_t n,
    struct sockaddr_un *sa)
{
    char    *d, digits[10];
    size_t   i;

    sa->sun_family = AF_UNIX;

    /* the name was checked to fit with room to spare at create/attach */
    d = sa->sun_path;
    memcpy(d, rg->wake_dir, rg->wake_dir_len);
    d += rg->wake_dir_len;
    *d++ = '/';
    *d++ = kind;

    i = 0;

    do {
        digits[i++] = (char) ('0' + n % 10);
        n /= 10;
    } while (n);

    while (i) {
        *d++ = digits[--i];
    }

    *d = '\0';

    return (socklen_t) (offsetof(struct sockaddr_un, sun_path)
                        + (size_t) (d - sa->sun_path) + 1);
}


static socklen_t
mosn_doorbell_name(mosn_region_t *rg, uint32_t p, struct sockaddr_un *sa)
{
    return mosn_doorbell_name_of(rg, 'p', p, sa);
}


/* binds a doorbell, taking over the name a crashed owner left */

int
mosn_doorbell_bind(struct sockaddr_un *sa, socklen_t len, char *err,
    size_t errlen)
{
    int  fd;

    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        mosn_err(err, errlen, "socket() failed: %s", strerror(errno));
        return -1;
    }

    /* the directory is the owner's alone: what is there is a leftover */
    (void) unlink(sa->sun_path);

    if (bind(fd, (struct sockaddr *) sa, len) == -1) {
        mosn_err(err, errlen, "cannot bind the doorbell \"%s\": %s",
                 sa->sun_path, strerror(errno));
        close(fd);
        return -1;
    }

    return fd;
}


int
mosn_doorbell_open(mosn_region_t *rg, uint32_t p, char *err, size_t errlen)
{
    socklen_t           len;
    struct sockaddr_un  sa;

    len = mosn_doorbell_name(rg, p, &sa);

    return mosn_doorbell_bind(&sa, len, err, errlen);
}


void
mosn_doorbell_unlink(mosn_region_t *rg, uint32_t p)
{
    struct sockaddr_un  sa;

    (void) mosn_doorbell_name(rg, p, &sa);
    (void) unlink(sa.sun_path);
}


#define MOSN_DRAIN_BATCH  16

int
mosn_doorbell_drain(int fd)
{
    int             n, i, got;
    char            buf[MOSN_DRAIN_BATCH];
    struct iovec    iov[MOSN_DRAIN_BATCH];
    struct mmsghdr  msg[MOSN_DRAIN_BATCH];

    /* one system call for the usual single wake-up, not two */
    memset(msg, 0, sizeof(msg));

    for (i = 0; i < MOSN_DRAIN_BATCH; i++) {
        iov[i].iov_base = &buf[i];
        iov[i].iov_len = 1;
        msg[i].msg_hdr.msg_iov = &iov[i];
        msg[i].msg_hdr.msg_iovlen = 1;
    }

    n = 0;

    do {
        got = recvmmsg(fd, msg, MOSN_DRAIN_BATCH, MSG_DONTWAIT, NULL);

        if (got <= 0) {
            break;
        }

        n += got;

    } while (got == MOSN_DRAIN_BATCH);

    return n;
}


/*
 * A producer's eventfd: what a consumer writes to wake it when it has a
 * copy of it (a doorbell datagram costs about 7 us more per round trip).
 * Its number is published in the channel; a consumer copies it with
 * pidfd_getfd(), which the kernel allows a process of the owner's user
 * only (nginx workers stay dumpable after setuid), once per owner.
 */

int
mosn_producer_notify_open(mosn_region_t *rg, uint32_t p)
{
    int  fd;

    fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd == -1) {
        return -1;
    }

    mosn_store(&mosn_producer(rg, p)->notify_fd, fd);

    return fd;
}


int
mosn_notify_drain(int fd)
{
    uint64_t  n;

    if (read(fd, &n, sizeof(n)) != (ssize_t) sizeof(n)) {
        return 0;
    }

    return n > INT_MAX ? INT_MAX : (int) n;
}


typedef struct {
    mosn_shm_header_t      *hdr;            /* NULL: no copy taken */
    uint64_t                owner;          /* the owner it was taken of */
    uint32_t                epoch;
    int                     fd;             /* the copy, or -1 */
} mosn_notify_copy_t;

static mosn_notify_copy_t  mosn_notify_copies[MOSN_MAX_PRODUCERS];


static int
mosn_notify_take(mosn_producer_t *prod, uint64_t owner)
{
#if defined(SYS_pidfd_open) && defined(SYS_pidfd_getfd)
    int      pidfd, fd, target;
    char     path[64], link[32];
    pid_t    pid;
    ssize_t  n;

    pid = MOSN_OWNER_PID(owner);
    target = mosn_load(&prod->notify_fd);

    if (MOSN_OWNER_STATE(owner) != MOSN_CHAN_OWNED || pid <= 0
        || target < 0)
    {
        return -1;
    }

    pidfd = (int) syscall(SYS_pidfd_open, pid, 0);
    if (pidfd == -1) {
        return -1;
    }

    /* the pidfd names whoever had the pid: the owner, if it started then */
    if (!mosn_proc_alive(pid, prod->starttime)) {
        close(pidfd);
        return -1;
    }

    fd = (int) syscall(SYS_pidfd_getfd, pidfd, target, 0);
    close(pidfd);

    if (fd == -1) {
        return -1;
    }

    /* the number comes from the region: write to nothing but an eventfd */
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    n = readlink(path, link, sizeof(link));

    if (n != sizeof("anon_inode:[eventfd]") - 1
        || memcmp(link, "anon_inode:[eventfd]", n) != 0)
    {
        close(fd);
        return -1;
    }

    return fd;
#else
    (void) prod;
    (void) owner;
    return -1;
#endif
}


static int
mosn_notify_fd(mosn_region_t *rg, uint32_t p)
{
    uint32_t             epoch;
    uint64_t             owner;
    mosn_producer_t     *prod;
    mosn_notify_copy_t  *copy;

    if (p >= MOSN_MAX_PRODUCERS) {
        return -1;
    }

    copy = &mosn_notify_copies[p];
    prod = mosn_producer(rg, p);
    owner = mosn_load(&prod->owner);
    epoch = mosn_load(&prod->epoch);

    if (copy->hdr == rg->hdr && copy->owner == owner
        && copy->epoch == epoch)
    {
        return copy->fd;
    }

    if (copy->hdr != NULL && copy->fd >= 0) {
        close(copy->fd);
    }

    copy->hdr = rg->hdr;
    copy->owner = owner;
    copy->epoch = epoch;
    copy->fd = mosn_notify_take(prod, owner);

    return copy->fd;
}


/* wakes producer p: through its eventfd if we can, else its doorbell */

int
mosn_producer_notify(mosn_region_t *rg, int sock, uint32_t p)
{
    int       fd;
    uint64_t  one;

    fd = mosn_notify_fd(rg, p);

    if (fd >= 0) {
        one = 1;

        if (write(fd, &one, sizeof(one)) == (ssize_t) sizeof(one)) {
            return 0;
        }
    }

    return mosn_doorbell_ring(rg, sock, p);
}


int
mosn_doorbell_ring(mosn_region_t *rg, int sock, uint32_t p)
{
    char                b;
    socklen_t           len;
    struct sockaddr_un  sa;

    len = mosn_doorbell_name(rg, p, &sa);
    b = 1;

    /* a full socket buffer already holds a wake-up */
    if (sendto(sock, &b, 1, MSG_DONTWAIT, (struct sockaddr *) &sa, len)
        == -1 && errno != EAGAIN)
    {
        return -1;
    }

    return 0;
}
