
/*
 * A stress test of the ring's C core, all in C, one process per party.
 *
 * Producers (as nginx workers would) write request records carrying a
 * checksum of their body; consumers (as Python workers would) check the
 * record, recompute the checksum and write a verdict that carries back
 * the request id, the slot generation and the checksum.  Producers check
 * every verdict: none lost, none twice, none stale, every echo right.
 * Some requests are abandoned right after submission, as a timed-out
 * request is, and their late verdicts must be dropped.
 *
 * With --chaos the parent, as the supervisor, kill -9's consumers at
 * random, retires them (mosn_consumer_retire() or mosn_reap()) and
 * starts new ones, so producers go through mosn_producer_rescue(); then
 * a producer dies with slots in flight and mosn_reap() must hand its
 * channel back.  At the end every slot must be free.
 *
 *   ring_stress [--chaos] [--producers P] [--consumers C] [--requests N]
 *               [--slots S] [--seed X] [--timeout SEC]
 *
 * Prints one line per check and closes with "N passed, M failed"; the
 * exit status is 0 only if every check held.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm_core.h"


#define STRESS_BATCH        64
#define STRESS_MAX_PROCS    16
#define STRESS_BODY_MAX     600
#define STRESS_ABANDON      97      /* one request in this many */


typedef struct {
    uint64_t                verdicts;       /* applied */
    uint64_t                duplicates;
    uint64_t                bad_verdicts;   /* refused by the decoder */
    uint64_t                bad_echo;       /* id, gen or sum wrong */
    uint64_t                errors;         /* ERROR verdicts */
    uint64_t                stale;          /* for no request in flight */
    uint64_t                abandoned;
    uint64_t                late_dropped;
    uint64_t                rescued;        /* handed back by rescue */
    uint64_t                rescue_failed;
    uint64_t                retried;
    uint64_t                lost;           /* never verdicted */
    uint64_t                in_use_end;
    uint64_t                busy_end;       /* slots not free at exit */
    uint64_t                timed_out;
    uint64_t                finished;
} stress_producer_t;


typedef struct {
    volatile uint32_t       stop;
    volatile uint32_t       pad0;
    stress_producer_t       prod[STRESS_MAX_PROCS];
} stress_shared_t;


typedef struct {
    uint32_t                producers;
    uint32_t                consumers;
    uint32_t                requests;
    uint32_t                slots;
    uint32_t                timeout;
    uint64_t                seed;
    int                     chaos;
} stress_conf_t;


static stress_conf_t     conf = {
    .producers = 2,
    .consumers = 2,
    .requests = 50000,
    .slots = 64,
    .timeout = 60,
    .seed = 1,
};

static mosn_region_t     region;
static stress_shared_t  *shared;
static uint64_t          deadline_ns;
static unsigned          passed, failed;


static uint64_t
stress_rand(uint64_t *x)
{
    /* xorshift64* */
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;

    return *x * 0x2545f4914f6cdd1dULL;
}


static uint64_t
stress_fnv(const uint8_t *p, size_t len)
{
    size_t    i;
    uint64_t  h;

    h = 0xcbf29ce484222325ULL;

    for (i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }

    return h;
}


static void stress_check(int ok, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));


static void
stress_check(int ok, const char *fmt, ...)
{
    va_list  args;

    printf("%s ", ok ? "ok  " : "FAIL");

    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);

    printf("\n");
    fflush(stdout);

    if (ok) {
        passed++;

    } else {
        failed++;
    }
}


static uint8_t *
stress_put(uint8_t *base, uint8_t *p, mosn_field_t *f, const void *s,
    size_t len)
{
    f->off = (uint32_t) (p - base);
    f->len = (uint32_t) len;
    memcpy(p, s, len);

    return p + len;
}


/* a request record as the nginx module writes it; returns its length */

static uint32_t
stress_write_request(uint8_t *base, uint64_t id, uint32_t p, uint64_t *rnd,
    uint64_t *sum)
{
    int                   n;
    char                  path[64], query[32], idv[24], sumv[24];
    uint8_t              *pos, *table, body[STRESS_BODY_MAX];
    uint32_t              i, blen;
    mosn_req_t           *req;
    mosn_header_entry_t   e[2];

    blen = (uint32_t) (stress_rand(rnd) % STRESS_BODY_MAX);

    for (i = 0; i < blen; i++) {
        body[i] = (uint8_t) stress_rand(rnd);
    }

    *sum = stress_fnv(body, blen);

    req = (mosn_req_t *) base;
    memset(req, 0, sizeof(mosn_req_t));
    req->request_id = id;
    req->flags = MOSN_REQ_F_BODY;
    req->nheaders = 2;

    pos = base + sizeof(mosn_req_t);

    n = snprintf(path, sizeof(path), "/stress/%llu", (unsigned long long) id);
    pos = stress_put(base, pos, &req->field[MOSN_REQ_CHAIN], "stress", 6);
    pos = stress_put(base, pos, &req->field[MOSN_REQ_METHOD], "POST", 4);
    pos = stress_put(base, pos, &req->field[MOSN_REQ_PATH], path, n);
    n = snprintf(query, sizeof(query), "p=%u", p);
    pos = stress_put(base, pos, &req->field[MOSN_REQ_QUERY], query, n);
    pos = stress_put(base, pos, &req->field[MOSN_REQ_ADDR], "127.0.0.1", 9);
    pos = stress_put(base, pos, &req->field[MOSN_REQ_PROTOCOL], "HTTP/1.1",
                     8);
    pos = stress_put(base, pos, &req->field[MOSN_REQ_BODY], body, blen);

    /* the header table is 4-byte aligned, as the module writes it */
    pos = base + ((pos - base + 3) & ~(size_t) 3);

    req->field[MOSN_REQ_HEADERS].off = (uint32_t) (pos - base);
    req->field[MOSN_REQ_HEADERS].len = 2 * sizeof(mosn_header_entry_t);
    table = pos;
    pos += 2 * sizeof(mosn_header_entry_t);

    n = snprintf(idv, sizeof(idv), "%llu", (unsigned long long) id);
    e[0].off = (uint32_t) (pos - base);
    e[0].name_len = 4;
    e[0].value_len = (uint32_t) n;
    memcpy(pos, "x-id", 4);
    memcpy(pos + 4, idv, n);
    pos += 4 + n;

    n = snprintf(sumv, sizeof(sumv), "%016llx", (unsigned long long) *sum);
    e[1].off = (uint32_t) (pos - base);
    e[1].name_len = 5;
    e[1].value_len = (uint32_t) n;
    memcpy(pos, "x-sum", 5);
    memcpy(pos + 5, sumv, n);
    pos += 5 + n;

    memcpy(table, e, sizeof(e));
    req->len = (uint32_t) (pos - base);

    return req->len;
}


/* consumer side */

static uint8_t *
stress_record(uint8_t *p, unsigned type, const char *key, const char *value)
{
    mosn_record_t  r;

    memset(&r, 0, sizeof(r));
    r.type = (uint8_t) type;
    r.key_len = (uint32_t) strlen(key);
    r.value_len = (uint32_t) strlen(value);

    memcpy(p, &r, sizeof(r));
    p += sizeof(r);
    memcpy(p, key, r.key_len);
    p += r.key_len;
    memcpy(p, value, r.value_len);

    return p + r.value_len;
}


/*
 * Reads the record as a Python worker must: every length checked against
 * the slot.  Returns 0 and the echo fields, or -1 if anything is off.
 */

static int
stress_read_request(const uint8_t *data, uint32_t room, uint64_t *id,
    char *sum, size_t sumlen)
{
    int                   found;
    uint32_t              i, len;
    uint64_t              hid, want;
    const uint8_t        *table;
    const mosn_req_t     *req;
    const mosn_field_t   *f;
    mosn_header_entry_t   e;

    if (room < sizeof(mosn_req_t)) {
        return -1;
    }

    req = (const mosn_req_t *) data;
    len = req->len;

    if (len < sizeof(mosn_req_t) || len > room) {
        return -1;
    }

    for (i = 0; i < MOSN_REQ_NFIELDS; i++) {
        f = &req->field[i];

        if ((uint64_t) f->off + f->len > len) {
            return -1;
        }
    }

    f = &req->field[MOSN_REQ_HEADERS];

    if (f->len != (uint64_t) req->nheaders * sizeof(mosn_header_entry_t)
        || !(req->flags & MOSN_REQ_F_BODY))
    {
        return -1;
    }

    table = data + f->off;
    found = 0;
    hid = 0;
    want = 0;

    for (i = 0; i < req->nheaders; i++) {
        memcpy(&e, table + i * sizeof(mosn_header_entry_t), sizeof(e));

        if ((uint64_t) e.off + e.name_len + e.value_len > len
            || e.value_len >= 24)
        {
            return -1;
        }

        if (e.name_len == 4 && memcmp(data + e.off, "x-id", 4) == 0) {
            hid = strtoull(strndupa((const char *) data + e.off + 4,
                                    e.value_len), NULL, 10);
            found |= 1;

        } else if (e.name_len == 5 && memcmp(data + e.off, "x-sum", 5) == 0) {
            want = strtoull(strndupa((const char *) data + e.off + 5,
                                     e.value_len), NULL, 16);
            found |= 2;
        }
    }

    f = &req->field[MOSN_REQ_BODY];

    if (found != 3 || hid != req->request_id
        || stress_fnv(data + f->off, f->len) != want)
    {
        return -1;
    }

    *id = hid;
    snprintf(sum, sumlen, "%016llx", (unsigned long long) want);

    return 0;
}


static void
stress_serve(uint32_t p, uint32_t s, uint32_t gen)
{
    char            idv[24], genv[16], sum[24];
    uint8_t        *v, *pos;
    uint32_t        room, off;
    uint64_t        id;
    mosn_slot_t    *slot;
    mosn_verdict_t  hdr;

    slot = mosn_slot(&region, p, s);
    room = MOSN_SLOT_DATA_SIZE(region.slot_size);

    off = (slot->req_len + 7) & ~7u;
    if (slot->req_len > room || off + 512 > room) {
        off = room - 512;
    }

    v = slot->data + off;
    pos = v + sizeof(mosn_verdict_t);
    memset(&hdr, 0, sizeof(hdr));

    if (stress_read_request(slot->data, room, &id, sum, sizeof(sum)) != 0) {
        hdr.action = MOSN_ACTION_ERROR;
        hdr.nrecords = 1;
        pos = stress_record(pos, MOSN_REC_LOG, "", "malformed request");

    } else {
        snprintf(idv, sizeof(idv), "%llu", (unsigned long long) id);
        snprintf(genv, sizeof(genv), "%u", gen);

        hdr.action = MOSN_ACTION_CONTINUE;
        hdr.nrecords = 4;
        pos = stress_record(pos, MOSN_REC_UPSTREAM, "", "s1");
        pos = stress_record(pos, MOSN_REC_META, "id", idv);
        pos = stress_record(pos, MOSN_REC_META, "gen", genv);
        pos = stress_record(pos, MOSN_REC_META, "sum", sum);
    }

    hdr.len = (uint32_t) (pos - v);
    memcpy(v, &hdr, sizeof(hdr));

    slot->verdict_off = off;
    slot->verdict_len = hdr.len;
}


static void
stress_consumer(uint32_t c)
{
    int       n, i, sock;
    uint32_t  p, s;
    uint64_t  batch[STRESS_BATCH], mask[MOSN_WAKE_WORDS], w;

    sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (mosn_consumer_start(&region, c, getpid()) < 0) {
        _exit(2);
    }

    memset(mask, 0, sizeof(mask));

    while (!shared->stop) {
        n = mosn_consumer_take(&region, c, batch, STRESS_BATCH);

        for (i = 0; i < n; i++) {
            p = MOSN_PS_P(batch[i]);
            s = MOSN_PS_S(batch[i]);
            w = __atomic_load_n(&mosn_slot(&region, p, s)->state,
                                __ATOMIC_ACQUIRE);

            stress_serve(p, s, MOSN_SW_GEN(w));
            (void) mosn_consumer_complete(&region, c, p, s, mask);
        }

        if (n) {
            (void) mosn_consumer_flush(&region, c, sock, mask);
            continue;
        }

        (void) mosn_consumer_wait(&region, c, 20);
    }

    _exit(0);
}


/* producer side */

typedef struct {
    uint32_t                p;
    uint32_t                rr;
    uint32_t                nfree;
    uint32_t                nretry;
    uint32_t                next;           /* next new request id */
    uint32_t                done_count;
    uint32_t               *free;
    uint64_t               *retry;
    uint64_t               *id;             /* per slot, 0: none */
    uint32_t               *gen;
    uint64_t               *sum;
    uint8_t                *abandoned;
    uint8_t                *done;           /* per request id */
    uint64_t                rnd;
    stress_producer_t      *st;
} stress_prod_t;


static void
stress_free_slot(stress_prod_t *pr, uint32_t s)
{
    mosn_producer_free(&region, pr->p, s);
    pr->id[s] = 0;
    pr->abandoned[s] = 0;
    pr->free[pr->nfree++] = s;
}


static int
stress_check_verdict(stress_prod_t *pr, uint32_t s)
{
    int                  seen;
    char                 want[24], buf[24];
    uint8_t              copy[4096];
    uint32_t             room;
    const char          *why;
    mosn_slot_t         *slot;
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    slot = mosn_slot(&region, pr->p, s);
    room = MOSN_SLOT_DATA_SIZE(region.slot_size);

    if (slot->verdict_off > room
        || slot->verdict_len > room - slot->verdict_off
        || slot->verdict_len > sizeof(copy))
    {
        pr->st->bad_verdicts++;
        return -1;
    }

    memcpy(copy, slot->data + slot->verdict_off, slot->verdict_len);

    if (mosn_verdict_validate(copy, slot->verdict_len, &why) != 0) {
        pr->st->bad_verdicts++;
        return -1;
    }

    (void) mosn_verdict_begin(&it, copy, slot->verdict_len);

    if (it.action == MOSN_ACTION_ERROR) {
        pr->st->errors++;
        return -1;
    }

    seen = 0;

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type != MOSN_REC_META || rec.value_len >= sizeof(buf)) {
            continue;
        }

        memcpy(buf, rec.value, rec.value_len);
        buf[rec.value_len] = '\0';

        if (rec.key_len == 2 && memcmp(rec.key, "id", 2) == 0) {
            snprintf(want, sizeof(want), "%llu",
                     (unsigned long long) pr->id[s]);
            seen |= strcmp(buf, want) == 0 ? 1 : 0x100;

        } else if (rec.key_len == 3 && memcmp(rec.key, "gen", 3) == 0) {
            snprintf(want, sizeof(want), "%u", pr->gen[s]);
            seen |= strcmp(buf, want) == 0 ? 2 : 0x100;

        } else if (rec.key_len == 3 && memcmp(rec.key, "sum", 3) == 0) {
            snprintf(want, sizeof(want), "%016llx",
                     (unsigned long long) pr->sum[s]);
            seen |= strcmp(buf, want) == 0 ? 4 : 0x100;
        }
    }

    if (seen != 7) {
        pr->st->bad_echo++;
        return -1;
    }

    return 0;
}


/* a completion for slot s, generation gen, or a failed rescue */

static void
stress_complete(stress_prod_t *pr, uint32_t s, uint32_t gen, int rescue_failed)
{
    uint64_t  id;

    if (s >= region.slots || pr->id[s] == 0 || pr->gen[s] != gen) {
        /* the core handed back what is not in flight: never apply it */
        pr->st->stale++;
        return;
    }

    id = pr->id[s];

    if (pr->abandoned[s]) {
        pr->st->late_dropped++;
        stress_free_slot(pr, s);
        return;
    }

    if (rescue_failed) {
        pr->st->rescue_failed++;
        pr->retry[pr->nretry++] = id;
        stress_free_slot(pr, s);
        return;
    }

    if (stress_check_verdict(pr, s) != 0) {
        /* counted; the request is not done, which the loss check sees */
        stress_free_slot(pr, s);
        return;
    }

    if (pr->done[id]) {
        pr->st->duplicates++;

    } else {
        pr->done[id] = 1;
        pr->done_count++;
        pr->st->verdicts++;
    }

    stress_free_slot(pr, s);
}


static int
stress_submit(stress_prod_t *pr)
{
    int           c;
    uint32_t      s, inc, gen, len;
    uint64_t      id;
    mosn_slot_t  *slot;

    if (pr->nfree == 0 || (pr->nretry == 0 && pr->next > conf.requests)) {
        return 0;
    }

    c = mosn_producer_pick(&region, pr->p, &pr->rr, &inc);
    if (c < 0) {
        return 0;
    }

    id = pr->nretry ? pr->retry[pr->nretry - 1] : pr->next;
    s = pr->free[pr->nfree - 1];
    slot = mosn_slot(&region, pr->p, s);

    len = stress_write_request(slot->data, id, pr->p, &pr->rnd, &pr->sum[s]);
    slot->req_len = len;
    slot->request_id = id;
    slot->verdict_off = 0;
    slot->verdict_len = 0;

    if (mosn_producer_submit(&region, pr->p, s, (uint32_t) c, inc, &gen)
        != 0)
    {
        return 0;
    }

    if (pr->nretry) {
        pr->nretry--;
        pr->st->retried++;

    } else {
        pr->next++;
    }

    pr->nfree--;
    pr->id[s] = id;
    pr->gen[s] = gen;

    /* as a request whose client went away: retried, its verdict dropped */
    if (stress_rand(&pr->rnd) % STRESS_ABANDON == 0) {
        pr->abandoned[s] = 1;
        pr->st->abandoned++;
        pr->retry[pr->nretry++] = id;
    }

    return 1;
}


static void
stress_producer(uint32_t index)
{
    int              fd, n, i, busy, pc;
    uint32_t         s, epoch, slots;
    uint64_t         out[STRESS_BATCH], w;
    struct pollfd    pfd;
    stress_prod_t    pr;

    memset(&pr, 0, sizeof(pr));

    pc = mosn_producer_claim(&region, getpid());
    if (pc < 0) {
        _exit(2);
    }

    pr.p = (uint32_t) pc;
    pr.st = &shared->prod[index];
    pr.rnd = conf.seed * 0x9e3779b97f4a7c15ULL + index + 1;

    fd = mosn_doorbell_open(&region, pr.p, NULL, 0);
    if (fd < 0) {
        _exit(2);
    }

    slots = region.slots;
    pr.free = calloc(slots, sizeof(uint32_t));
    pr.id = calloc(slots, sizeof(uint64_t));
    pr.gen = calloc(slots, sizeof(uint32_t));
    pr.sum = calloc(slots, sizeof(uint64_t));
    pr.abandoned = calloc(slots, 1);
    pr.retry = calloc(conf.requests + slots + 1, sizeof(uint64_t));
    pr.done = calloc(conf.requests + 1, 1);

    if (pr.free == NULL || pr.id == NULL || pr.gen == NULL || pr.sum == NULL
        || pr.abandoned == NULL || pr.retry == NULL || pr.done == NULL)
    {
        _exit(2);
    }

    for (s = 0; s < slots; s++) {
        pr.free[pr.nfree++] = slots - 1 - s;
    }

    pr.next = 1;
    epoch = __atomic_load_n(&region.hdr->consumer_epoch, __ATOMIC_ACQUIRE);
    (void) mosn_producer_arm(&region, pr.p);

    /* until every request has its verdict and every slot is back */
    while (pr.done_count < conf.requests || pr.nfree < slots) {

        if (mosn_now_ns() > deadline_ns) {
            pr.st->timed_out = 1;
            break;
        }

        if (__atomic_load_n(&region.hdr->consumer_epoch, __ATOMIC_ACQUIRE)
            != epoch)
        {
            epoch = __atomic_load_n(&region.hdr->consumer_epoch,
                                    __ATOMIC_ACQUIRE);
            do {
                n = mosn_producer_rescue(&region, pr.p, &pr.rr, out,
                                         STRESS_BATCH);

                for (i = 0; i < n; i++) {
                    s = MOSN_ENTRY_SLOT(out[i]);
                    if (!(s & MOSN_RESCUE_FAILED)) {
                        pr.st->rescued++;
                    }

                    stress_complete(&pr, s & ~MOSN_RESCUE_FAILED,
                                    MOSN_ENTRY_GEN(out[i]),
                                    (s & MOSN_RESCUE_FAILED) != 0);
                }

            } while (n == STRESS_BATCH);
        }

        busy = 0;

        while (stress_submit(&pr)) {
            busy = 1;
        }

        n = mosn_producer_poll(&region, pr.p, out, STRESS_BATCH);

        for (i = 0; i < n; i++) {
            stress_complete(&pr, MOSN_ENTRY_SLOT(out[i]),
                            MOSN_ENTRY_GEN(out[i]), 0);
        }

        if (busy || n) {
            continue;
        }

        /* nothing to do: sleep on the doorbell, as nginx does */
        if (mosn_producer_arm(&region, pr.p)) {
            continue;
        }

        pfd.fd = fd;
        pfd.events = POLLIN;
        pfd.revents = 0;

        (void) poll(&pfd, 1, 20);
        mosn_producer(&region, pr.p)->doorbells += mosn_doorbell_drain(fd);
    }

    pr.st->lost = conf.requests - pr.done_count;
    pr.st->in_use_end = mosn_producer(&region, pr.p)->in_use;

    for (s = 0; s < slots; s++) {
        w = __atomic_load_n(&mosn_slot(&region, pr.p, s)->state,
                            __ATOMIC_ACQUIRE);
        if (MOSN_SW_STATE(w) != MOSN_SLOT_FREE) {
            pr.st->busy_end++;
        }
    }

    pr.st->finished = 1;

    close(fd);
    mosn_producer_release(&region, pr.p);

    _exit(0);
}


/*
 * A producer that dies with work in flight: submitted, taken and done
 * slots, some completions polled and never freed.
 */

static void
stress_doomed_producer(void)
{
    int           c, pc;
    uint32_t      s, rr, inc, gen, len;
    uint64_t      out[STRESS_BATCH], sum, rnd;
    mosn_slot_t  *slot;

    pc = mosn_producer_claim(&region, getpid());
    if (pc < 0) {
        _exit(2);
    }

    rnd = conf.seed + 77;
    rr = 0;

    for (s = 0; s < region.slots; s++) {
        c = mosn_producer_pick(&region, (uint32_t) pc, &rr, &inc);
        if (c < 0) {
            break;
        }

        slot = mosn_slot(&region, (uint32_t) pc, s);
        len = stress_write_request(slot->data, s + 1, (uint32_t) pc, &rnd,
                                   &sum);
        slot->req_len = len;

        (void) mosn_producer_submit(&region, (uint32_t) pc, s, (uint32_t) c,
                                    inc, &gen);

        /* let some be taken and done, and poll a few, never freed */
        if (s == region.slots / 2) {
            usleep(2000);
            (void) mosn_producer_poll(&region, (uint32_t) pc, out, 4);
        }
    }

    raise(SIGKILL);
    _exit(3);
}


/* the parent: supervisor of consumers, and the judge */

static pid_t     consumer_pid[MOSN_MAX_CONSUMERS];
static uint32_t  kills;


static pid_t
stress_fork(void (*fn)(uint32_t), uint32_t arg)
{
    pid_t  pid;

    fflush(stdout);

    pid = fork();

    if (pid == 0) {
        fn(arg);
        _exit(0);
    }

    return pid;
}


static void
stress_spawn_consumer(void)
{
    int  c;

    c = mosn_consumer_alloc(&region);
    if (c < 0) {
        return;
    }

    consumer_pid[c] = stress_fork(stress_consumer, (uint32_t) c);
}


/* how many slots consumer c holds now, over every channel */

static uint32_t
stress_held(uint32_t c)
{
    uint32_t  p, s, n;
    uint64_t  w;

    n = 0;

    for (p = 0; p < region.nproducers; p++) {
        for (s = 0; s < region.slots; s++) {
            w = __atomic_load_n(&mosn_slot(&region, p, s)->state,
                                __ATOMIC_ACQUIRE);

            if (MOSN_SW_STATE(w) != MOSN_SLOT_FREE
                && MOSN_SW_CONSUMER(w) == c)
            {
                n++;
            }
        }
    }

    return n;
}


static void
stress_kill_one(uint64_t *rnd, int sock)
{
    uint32_t  c, i, first, live, victim, held, best;

    live = 0;
    victim = UINT32_MAX;
    best = 0;
    first = (uint32_t) (stress_rand(rnd) % conf.consumers);

    /* the one holding most slots, so that rescue has work */
    for (i = 0; i < conf.consumers; i++) {
        c = (first + i) % conf.consumers;

        if (consumer_pid[c] <= 0) {
            continue;
        }

        live++;
        held = stress_held(c);

        if (victim == UINT32_MAX || held > best) {
            victim = c;
            best = held;
        }
    }

    /* never the last one: the survivors must carry on */
    if (live < 2 || victim == UINT32_MAX) {
        return;
    }

    kill(consumer_pid[victim], SIGKILL);
    (void) waitpid(consumer_pid[victim], NULL, 0);
    consumer_pid[victim] = 0;
    kills++;

    /* both ways a supervisor learns of a death */
    if (stress_rand(rnd) & 1) {
        mosn_consumer_retire(&region, victim, sock);

    } else {
        (void) mosn_reap(&region, sock);
    }
}


static int
stress_wait_producers(pid_t *pids, uint32_t n, uint64_t *rnd, int sock)
{
    int        status, bad;
    pid_t      pid;
    uint32_t   i, left;
    uint64_t   next_kill;

    left = n;
    bad = 0;
    next_kill = mosn_now_ns() + 5000000;

    while (left) {
        pid = waitpid(-1, &status, WNOHANG);

        if (pid > 0) {
            for (i = 0; i < n; i++) {
                if (pids[i] == pid) {
                    pids[i] = 0;
                    left--;
                    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                        bad++;
                    }
                }
            }

            for (i = 0; i < conf.consumers; i++) {
                if (consumer_pid[i] == pid) {
                    /* a consumer died unasked: the checks will see it */
                    consumer_pid[i] = 0;
                    bad++;
                }
            }

            continue;
        }

        if (mosn_now_ns() > deadline_ns + 5000000000ULL) {
            for (i = 0; i < n; i++) {
                if (pids[i] > 0) {
                    kill(pids[i], SIGKILL);
                }
            }

            return -1;
        }

        if (!conf.chaos) {
            usleep(2000);
            continue;
        }

        if (mosn_now_ns() >= next_kill) {
            stress_kill_one(rnd, sock);

            /* a new consumer comes now or at a later round */
            for (i = 0; i < conf.consumers; i++) {
                if (consumer_pid[i] == 0 && (stress_rand(rnd) & 1)) {
                    stress_spawn_consumer();
                }
            }

            next_kill = mosn_now_ns()
                        + 1000000 + stress_rand(rnd) % 9000000;
        }

        usleep(500);
    }

    return bad;
}


static void
stress_doomed_main(uint32_t unused)
{
    (void) unused;
    stress_doomed_producer();
}


static int
stress_channel_free(uint32_t p)
{
    uint32_t  s;

    if (MOSN_OWNER_STATE(__atomic_load_n(&mosn_producer(&region, p)->owner,
                                         __ATOMIC_ACQUIRE))
        != MOSN_CHAN_FREE)
    {
        return 0;
    }

    for (s = 0; s < region.slots; s++) {
        if (MOSN_SW_STATE(mosn_slot(&region, p, s)->state)
            != MOSN_SLOT_FREE)
        {
            return 0;
        }
    }

    return 1;
}


static void
stress_usage(void)
{
    fprintf(stderr, "usage: ring_stress [--chaos] [--producers P] "
            "[--consumers C] [--requests N] [--slots S] [--seed X] "
            "[--timeout SEC]\n");
    exit(2);
}


static void
stress_args(int argc, char **argv)
{
    int    i;
    char  *end;
    long   v;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--chaos") == 0) {
            conf.chaos = 1;
            continue;
        }

        if (i + 1 >= argc) {
            stress_usage();
        }

        v = strtol(argv[i + 1], &end, 10);
        if (*end != '\0' || v <= 0) {
            stress_usage();
        }

        if (strcmp(argv[i], "--producers") == 0) {
            conf.producers = (uint32_t) v;

        } else if (strcmp(argv[i], "--consumers") == 0) {
            conf.consumers = (uint32_t) v;

        } else if (strcmp(argv[i], "--requests") == 0) {
            conf.requests = (uint32_t) v;

        } else if (strcmp(argv[i], "--slots") == 0) {
            conf.slots = (uint32_t) v;

        } else if (strcmp(argv[i], "--seed") == 0) {
            conf.seed = (uint64_t) v;

        } else if (strcmp(argv[i], "--timeout") == 0) {
            conf.timeout = (uint32_t) v;

        } else {
            stress_usage();
        }

        i++;
    }

    if (conf.producers > STRESS_MAX_PROCS - 1
        || conf.consumers > MOSN_MAX_CONSUMERS
        || (conf.chaos && conf.consumers < 2))
    {
        fprintf(stderr, "ring_stress: at most %d producers, 1..%d consumers "
                "(2 or more with --chaos)\n", STRESS_MAX_PROCS - 1,
                MOSN_MAX_CONSUMERS);
        exit(2);
    }
}


int
main(int argc, char **argv)
{
    int                  sock, rc, status, doomed_ok;
    char                 name[64], err[256];
    pid_t                pids[STRESS_MAX_PROCS], pid;
    uint32_t             i, p, c, np;
    uint64_t             rnd, start, t, verdicts, sum_errors, requeued;
    uint64_t             stale_core, wakes, bells, sleeps;
    mosn_region_conf_t   rc_conf;
    stress_producer_t    tot;

    stress_args(argc, argv);

    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);

    shared = mmap(NULL, sizeof(stress_shared_t), PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) {
        perror("mmap");
        return 2;
    }

    memset(shared, 0, sizeof(stress_shared_t));

    snprintf(name, sizeof(name), "/mosn_stress.%d", (int) getpid());

    np = conf.producers + (conf.chaos ? 1 : 0);
    rc_conf.nproducers = np;
    rc_conf.nconsumers = conf.consumers;
    rc_conf.slots = conf.slots;
    rc_conf.slot_size = 4096;

    rc = mosn_region_create(&region, name, &rc_conf, (uid_t) -1, (gid_t) -1,
                            err, sizeof(err));

    printf("ring_stress: %s, %u producers x %u requests, %u consumers, "
           "%u slots, seed %llu\n", conf.chaos ? "chaos" : "normal",
           conf.producers, conf.requests, conf.consumers, conf.slots,
           (unsigned long long) conf.seed);

    stress_check(rc == 0, "region created%s%s", rc ? ": " : "",
                 rc ? err : "");
    if (rc != 0) {
        printf("%u passed, %u failed\n", passed, failed);
        return 1;
    }

    /* the region's name is not needed once every process has it mapped;
     * its wake-up directory is, until the end */
    (void) shm_unlink(name);

    sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    rnd = conf.seed * 0xd1b54a32d192ed03ULL + 7;
    start = mosn_now_ns();
    deadline_ns = start + (uint64_t) conf.timeout * 1000000000ULL;

    for (i = 0; i < conf.consumers; i++) {
        stress_spawn_consumer();
    }

    for (i = 0; i < conf.producers; i++) {
        pids[i] = stress_fork(stress_producer, i);
    }

    rc = stress_wait_producers(pids, conf.producers, &rnd, sock);
    t = mosn_now_ns() - start;

    stress_check(rc == 0, "producers finished in time and exited cleanly "
                 "(%.2f s)", (double) t / 1e9);

    memset(&tot, 0, sizeof(tot));

    for (i = 0; i < conf.producers; i++) {
        tot.verdicts += shared->prod[i].verdicts;
        tot.duplicates += shared->prod[i].duplicates;
        tot.bad_verdicts += shared->prod[i].bad_verdicts;
        tot.bad_echo += shared->prod[i].bad_echo;
        tot.errors += shared->prod[i].errors;
        tot.stale += shared->prod[i].stale;
        tot.abandoned += shared->prod[i].abandoned;
        tot.late_dropped += shared->prod[i].late_dropped;
        tot.rescued += shared->prod[i].rescued;
        tot.rescue_failed += shared->prod[i].rescue_failed;
        tot.retried += shared->prod[i].retried;
        tot.lost += shared->prod[i].lost;
        tot.in_use_end += shared->prod[i].in_use_end;
        tot.busy_end += shared->prod[i].busy_end;
        tot.timed_out += shared->prod[i].timed_out;
        tot.finished += shared->prod[i].finished;
    }

    verdicts = (uint64_t) conf.producers * conf.requests;

    stress_check(tot.finished == conf.producers && tot.timed_out == 0,
                 "every producer ran to its end (%llu of %u)",
                 (unsigned long long) tot.finished, conf.producers);
    stress_check(tot.verdicts == verdicts && tot.lost == 0,
                 "no loss: %llu of %llu requests got their verdict",
                 (unsigned long long) tot.verdicts,
                 (unsigned long long) verdicts);
    stress_check(tot.duplicates == 0, "no duplicate verdict (%llu)",
                 (unsigned long long) tot.duplicates);
    stress_check(tot.bad_verdicts == 0 && tot.errors == 0,
                 "every verdict valid for the C decoder (%llu refused, "
                 "%llu errors)", (unsigned long long) tot.bad_verdicts,
                 (unsigned long long) tot.errors);
    stress_check(tot.bad_echo == 0, "every verdict echoes its request id, "
                 "slot generation and checksum (%llu wrong)",
                 (unsigned long long) tot.bad_echo);
    stress_check(tot.stale == 0, "no stale completion applied (%llu handed "
                 "back for no request in flight)",
                 (unsigned long long) tot.stale);
    stress_check(tot.abandoned > 0 && tot.late_dropped == tot.abandoned,
                 "late verdicts of abandoned requests dropped (%llu of "
                 "%llu)", (unsigned long long) tot.late_dropped,
                 (unsigned long long) tot.abandoned);
    stress_check(tot.in_use_end == 0 && tot.busy_end == 0,
                 "producers left no slot in use (%llu counted, %llu "
                 "not free)", (unsigned long long) tot.in_use_end,
                 (unsigned long long) tot.busy_end);

    requeued = 0;
    stale_core = 0;
    wakes = 0;
    bells = 0;

    for (p = 0; p < np; p++) {
        requeued += mosn_producer(&region, p)->requeued;
        stale_core += mosn_producer(&region, p)->stale;
        wakes += mosn_producer(&region, p)->futex_wakes;
        bells += mosn_producer(&region, p)->doorbells;
    }

    if (conf.chaos) {
        stress_check(kills > 0, "consumers killed with -9 while loaded "
                     "(%u)", kills);
        stress_check(requeued + tot.rescue_failed + tot.rescued > 0,
                     "rescue ran: %llu re-queued to survivors, %llu "
                     "handed back done, %llu failed and retried",
                     (unsigned long long) requeued,
                     (unsigned long long) tot.rescued,
                     (unsigned long long) tot.rescue_failed);

        /* a producer dies with slots in flight; the reaper cleans up */
        for (c = 0; c < conf.consumers; c++) {
            if (consumer_pid[c] == 0) {
                stress_spawn_consumer();
            }
        }

        pid = stress_fork(stress_doomed_main, 0);
        (void) waitpid(pid, NULL, 0);

        doomed_ok = 0;
        t = mosn_now_ns() + 5000000000ULL;

        while (mosn_now_ns() < t) {
            (void) mosn_reap(&region, sock);

            if (stress_channel_free(conf.producers)) {
                doomed_ok = 1;
                break;
            }

            usleep(1000);
        }

        stress_check(doomed_ok, "a producer killed with slots in flight "
                     "was reaped: channel and slots free");
    }

    /* stop the consumers, then hand the released channels back */
    shared->stop = 1;
    sum_errors = 0;
    sleeps = 0;
    rc = 0;

    for (c = 0; c < conf.consumers; c++) {
        if (consumer_pid[c] > 0) {
            if (waitpid(consumer_pid[c], &status, 0) != consumer_pid[c]
                || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            {
                rc++;
            }

            consumer_pid[c] = 0;
        }

        mosn_consumer_retire(&region, c, sock);
        sum_errors += mosn_consumer(&region, c)->errors;
        sleeps += mosn_consumer(&region, c)->sleeps;
    }

    stress_check(rc == 0, "consumers still alive at the end exited cleanly");
    stress_check(sum_errors == 0, "no consumer completion refused (%llu)",
                 (unsigned long long) sum_errors);

    (void) mosn_reap(&region, sock);

    for (p = 0, c = 0; p < np; p++) {
        if (stress_channel_free(p)) {
            c++;
        }
    }

    stress_check(c == np, "every producer channel reaped and free (%u of %u)",
                 c, np);
    stress_check(mosn_slots_in_use(&region) == 0,
                 "every slot free at the end (%u in use)",
                 mosn_slots_in_use(&region));

    printf("ring_stress: %llu abandoned, %llu retried, %llu re-queued, "
           "%llu stale in the core, %llu futex wakes, %llu doorbells, "
           "%llu consumer sleeps\n", (unsigned long long) tot.abandoned,
           (unsigned long long) tot.retried, (unsigned long long) requeued,
           (unsigned long long) stale_core, (unsigned long long) wakes,
           (unsigned long long) bells, (unsigned long long) sleeps);

    mosn_region_detach(&region);
    (void) mosn_region_unlink(name);
    close(sock);

    printf("%u passed, %u failed\n", passed, failed);

    return failed ? 1 : 0;
}
