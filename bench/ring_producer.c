
/*
 * The C side of the ring benchmark (bench/ring_bench.py).  The producer
 * takes one channel of a region and drives it as an nginx worker does: a
 * request record written into the slot, submit, then drain completions,
 * arm, and sleep in poll() on the doorbell; every verdict is checked by
 * the C decoder as the module checks it.
 *
 *   ring_producer REGION latency COUNT GAP_US
 *       one request at a time, GAP_US apart; prints the round trips
 *   ring_producer REGION throughput COUNT INFLIGHT
 *       keeps INFLIGHT requests in flight until COUNT are done
 *
 * Two references to read those figures against:
 *
 *   ring_producer REGION consume INDEX
 *       a consumer in C, answering "continue" to everything, until its
 *       state is no longer live: the ring without Python
 *   ring_producer - floor COUNT GAP_US
 *       two processes waking each other with a bare futex, GAP_US apart:
 *       the least any round trip between two sleeping processes costs
 *       on this machine, with no ring at all
 *
 * The measuring modes print one JSON object on stdout.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm_core.h"


#define BENCH_BATCH  256


typedef struct {
    mosn_region_t           rg;
    uint32_t                p;
    uint32_t                rr;
    int                     fd;
    int                     nfd;            /* eventfd, or -1 */
    uint32_t                nfree;
    uint32_t               *free;
    uint8_t                 record[512];
    uint32_t                record_len;
    uint64_t                polls;          /* sleeps in poll() */
    uint64_t                bad;            /* verdicts refused */
    uint64_t                next_id;
} bench_t;


static uint8_t *
bench_put(uint8_t *base, uint8_t *p, mosn_field_t *f, const char *s)
{
    size_t  len;

    len = strlen(s);
    f->off = (uint32_t) (p - base);
    f->len = (uint32_t) len;
    memcpy(p, s, len);

    return p + len;
}


/* the request of the worked example: GET / with a uid header */

static void
bench_make_record(bench_t *b)
{
    size_t                i, n;
    uint8_t              *base, *pos, *table;
    mosn_req_t           *req;
    mosn_header_entry_t   e[4];

    static const char  *headers[4][2] = {
        { "Host", "localhost:2990" },
        { "User-Agent", "curl/7.88.1" },
        { "Accept", "*/*" },
        { "uid", "2" },
    };

    base = b->record;
    req = (mosn_req_t *) base;
    memset(base, 0, sizeof(b->record));
    req->nheaders = 4;

    pos = base + sizeof(mosn_req_t);
    pos = bench_put(base, pos, &req->field[MOSN_REQ_CHAIN], "ingress");
    pos = bench_put(base, pos, &req->field[MOSN_REQ_METHOD], "GET");
    pos = bench_put(base, pos, &req->field[MOSN_REQ_PATH], "/");
    pos = bench_put(base, pos, &req->field[MOSN_REQ_QUERY], "");
    pos = bench_put(base, pos, &req->field[MOSN_REQ_ADDR], "127.0.0.1");
    pos = bench_put(base, pos, &req->field[MOSN_REQ_PROTOCOL], "HTTP/1.1");
    pos = bench_put(base, pos, &req->field[MOSN_REQ_BODY], "");

    /* the header table is 4-byte aligned, as the module writes it */
    pos = base + ((pos - base + 3) & ~(size_t) 3);

    req->field[MOSN_REQ_HEADERS].off = (uint32_t) (pos - base);
    req->field[MOSN_REQ_HEADERS].len = sizeof(e);
    table = pos;
    pos += sizeof(e);

    for (i = 0; i < 4; i++) {
        e[i].off = (uint32_t) (pos - base);
        n = strlen(headers[i][0]);
        e[i].name_len = (uint32_t) n;
        memcpy(pos, headers[i][0], n);
        pos += n;
        n = strlen(headers[i][1]);
        e[i].value_len = (uint32_t) n;
        memcpy(pos, headers[i][1], n);
        pos += n;
    }

    memcpy(table, e, sizeof(e));
    req->len = (uint32_t) (pos - base);
    b->record_len = req->len;
}


static int
bench_submit(bench_t *b)
{
    int           c;
    uint32_t      s, inc, gen;
    mosn_slot_t  *slot;
    mosn_req_t   *req;

    if (b->nfree == 0) {
        return -1;
    }

    c = mosn_producer_pick(&b->rg, b->p, &b->rr, &inc);
    if (c < 0) {
        return -1;
    }

    s = b->free[b->nfree - 1];
    slot = mosn_slot(&b->rg, b->p, s);

    memcpy(slot->data, b->record, b->record_len);
    req = (mosn_req_t *) slot->data;
    req->request_id = b->next_id;
    slot->request_id = b->next_id++;
    slot->req_len = b->record_len;
    slot->verdict_off = 0;
    slot->verdict_len = 0;

    if (mosn_producer_submit(&b->rg, b->p, s, (uint32_t) c, inc, &gen) != 0) {
        return -1;
    }

    b->nfree--;

    return 0;
}


/* a completion: the verdict checked as the module checks it, then freed */

static void
bench_complete(bench_t *b, uint64_t e)
{
    uint32_t      s, room;
    const char   *why;
    mosn_slot_t  *slot;
    uint8_t       copy[1024];

    s = MOSN_ENTRY_SLOT(e);
    slot = mosn_slot(&b->rg, b->p, s);
    room = MOSN_SLOT_DATA_SIZE(b->rg.slot_size);

    if (slot->verdict_off > room
        || slot->verdict_len > room - slot->verdict_off
        || slot->verdict_len > sizeof(copy))
    {
        b->bad++;

    } else {
        memcpy(copy, slot->data + slot->verdict_off, slot->verdict_len);

        if (mosn_verdict_validate(copy, slot->verdict_len, &why) != 0) {
            b->bad++;
        }
    }

    mosn_producer_free(&b->rg, b->p, s);
    b->free[b->nfree++] = s;
}


/* sleeps on the doorbell unless a completion is already there */

static void
bench_sleep(bench_t *b)
{
    struct pollfd  pfd[2];

    if (mosn_producer_arm(&b->rg, b->p)) {
        return;
    }

    /* as nginx does: the doorbell and the eventfd consumers may write */
    pfd[0].fd = b->fd;
    pfd[0].events = POLLIN;
    pfd[0].revents = 0;
    pfd[1].fd = b->nfd;
    pfd[1].events = POLLIN;
    pfd[1].revents = 0;

    b->polls++;
    (void) poll(pfd, b->nfd >= 0 ? 2 : 1, 1000);
    mosn_producer(&b->rg, b->p)->doorbells += mosn_doorbell_drain(b->fd);

    if (b->nfd >= 0) {
        mosn_producer(&b->rg, b->p)->doorbells += mosn_notify_drain(b->nfd);
    }
}


static int
bench_cmp(const void *a, const void *b)
{
    uint64_t  x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : x > y;
}


static int
bench_latency(bench_t *b, uint32_t count, uint32_t gap_us)
{
    int              n, i;
    uint32_t         k, warm;
    uint64_t         t0, t, *rtt, out[BENCH_BATCH];
    struct timespec  ts;

    warm = count / 10 + 10;
    rtt = calloc(count, sizeof(uint64_t));
    if (rtt == NULL) {
        return -1;
    }

    ts.tv_sec = gap_us / 1000000;
    ts.tv_nsec = (long) (gap_us % 1000000) * 1000;

    for (k = 0; k < warm + count; k++) {
        (void) nanosleep(&ts, NULL);

        t0 = mosn_now_ns();

        if (bench_submit(b) != 0) {
            fprintf(stderr, "ring_producer: submit failed\n");
            return -1;
        }

        for ( ;; ) {
            n = mosn_producer_poll(&b->rg, b->p, out, BENCH_BATCH);

            if (n) {
                break;
            }

            bench_sleep(b);
        }

        t = mosn_now_ns() - t0;

        for (i = 0; i < n; i++) {
            bench_complete(b, out[i]);
        }

        if (k >= warm) {
            rtt[k - warm] = t;
        }
    }

    qsort(rtt, count, sizeof(uint64_t), bench_cmp);

    printf("{\"mode\": \"latency\", \"count\": %u, \"gap_us\": %u, "
           "\"p50_ns\": %llu, \"p90_ns\": %llu, \"p99_ns\": %llu, "
           "\"min_ns\": %llu, \"max_ns\": %llu, \"producer_polls\": %llu, "
           "\"bad_verdicts\": %llu, \"channel\": %u}\n", count, gap_us,
           (unsigned long long) rtt[count / 2],
           (unsigned long long) rtt[(uint64_t) count * 90 / 100],
           (unsigned long long) rtt[(uint64_t) count * 99 / 100],
           (unsigned long long) rtt[0],
           (unsigned long long) rtt[count - 1],
           (unsigned long long) b->polls, (unsigned long long) b->bad,
           b->p);

    return 0;
}


static int
bench_throughput(bench_t *b, uint32_t count, uint32_t inflight)
{
    int       n, i, busy;
    uint32_t  sent, done, slots;
    uint64_t  t0, t, out[BENCH_BATCH];

    slots = b->rg.slots;

    if (inflight > slots) {
        inflight = slots;
    }

    sent = 0;
    done = 0;
    t0 = mosn_now_ns();

    while (done < count) {
        busy = 0;

        while (sent < count && slots - b->nfree < inflight) {
            if (bench_submit(b) != 0) {
                break;
            }

            sent++;
            busy = 1;
        }

        n = mosn_producer_poll(&b->rg, b->p, out, BENCH_BATCH);

        for (i = 0; i < n; i++) {
            bench_complete(b, out[i]);
        }

        done += (uint32_t) n;

        if (!busy && n == 0) {
            bench_sleep(b);
        }
    }

    t = mosn_now_ns() - t0;

    printf("{\"mode\": \"throughput\", \"count\": %u, \"inflight\": %u, "
           "\"ns\": %llu, \"per_s\": %.0f, \"producer_polls\": %llu, "
           "\"bad_verdicts\": %llu, \"channel\": %u}\n", count, inflight,
           (unsigned long long) t, (double) count * 1e9 / (double) t,
           (unsigned long long) b->polls, (unsigned long long) b->bad,
           b->p);

    return 0;
}


static int
bench_consume(mosn_region_t *rg, uint32_t c)
{
    int             n, i, sock;
    uint32_t        p, s, off, room;
    uint64_t        batch[BENCH_BATCH], mask[MOSN_WAKE_WORDS];
    mosn_slot_t    *slot;
    mosn_verdict_t  v;

    sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (sock < 0 || mosn_consumer_start(rg, c, getpid()) < 0) {
        return -1;
    }

    memset(&v, 0, sizeof(v));
    v.len = sizeof(v);
    v.action = MOSN_ACTION_CONTINUE;
    room = MOSN_SLOT_DATA_SIZE(rg->slot_size);
    memset(mask, 0, sizeof(mask));

    for ( ;; ) {
        n = mosn_consumer_take(rg, c, batch, 128);

        for (i = 0; i < n; i++) {
            p = MOSN_PS_P(batch[i]);
            s = MOSN_PS_S(batch[i]);
            slot = mosn_slot(rg, p, s);

            off = (slot->req_len + 7) & ~7u;
            if (slot->req_len > room || off > room - sizeof(v)) {
                off = 0;
                v.action = MOSN_ACTION_ERROR;
            }

            memcpy(slot->data + off, &v, sizeof(v));
            slot->verdict_off = off;
            slot->verdict_len = sizeof(v);
            v.action = MOSN_ACTION_CONTINUE;

            (void) mosn_consumer_complete(rg, c, p, s, mask);
        }

        if (n) {
            (void) mosn_consumer_flush(rg, c, sock, mask);
            continue;
        }

        if (__atomic_load_n(&mosn_consumer(rg, c)->state, __ATOMIC_ACQUIRE)
            != MOSN_CONS_LIVE)
        {
            break;
        }

        (void) mosn_consumer_wait(rg, c, 100);
    }

    close(sock);

    return 0;
}


/* the child of the floor: a futex in shared memory, odd while it has work */

static void
bench_futex_child(uint32_t *f)
{
    uint32_t  v;

    for ( ;; ) {
        v = __atomic_load_n(f, __ATOMIC_ACQUIRE);

        if (v == UINT32_MAX) {
            _exit(0);
        }

        if (v % 2 == 0) {
            (void) syscall(SYS_futex, f, FUTEX_WAIT, v, NULL, NULL, 0);
            continue;
        }

        __atomic_store_n(f, v + 1, __ATOMIC_RELEASE);
        (void) syscall(SYS_futex, f, FUTEX_WAKE, 1, NULL, NULL, 0);
    }
}


static int
bench_floor(uint32_t count, uint32_t gap_us)
{
    pid_t            pid;
    uint32_t         k, v, warm, *f;
    uint64_t         t0, *rtt;
    struct timespec  ts;

    warm = count / 10 + 10;
    rtt = calloc(count, sizeof(uint64_t));
    f = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
             -1, 0);

    if (rtt == NULL || f == MAP_FAILED) {
        return -1;
    }

    *f = 0;

    pid = fork();
    if (pid < 0) {
        return -1;
    }

    if (pid == 0) {
        bench_futex_child(f);
    }

    ts.tv_sec = gap_us / 1000000;
    ts.tv_nsec = (long) (gap_us % 1000000) * 1000;

    for (k = 0; k < warm + count; k++) {
        (void) nanosleep(&ts, NULL);

        t0 = mosn_now_ns();

        v = __atomic_add_fetch(f, 1, __ATOMIC_ACQ_REL);
        (void) syscall(SYS_futex, f, FUTEX_WAKE, 1, NULL, NULL, 0);

        while (__atomic_load_n(f, __ATOMIC_ACQUIRE) == v) {
            (void) syscall(SYS_futex, f, FUTEX_WAIT, v, NULL, NULL, 0);
        }

        if (k >= warm) {
            rtt[k - warm] = mosn_now_ns() - t0;
        }
    }

    __atomic_store_n(f, UINT32_MAX, __ATOMIC_RELEASE);
    (void) syscall(SYS_futex, f, FUTEX_WAKE, 1, NULL, NULL, 0);
    (void) waitpid(pid, NULL, 0);

    qsort(rtt, count, sizeof(uint64_t), bench_cmp);

    printf("{\"mode\": \"floor\", \"count\": %u, \"gap_us\": %u, "
           "\"p50_ns\": %llu, \"p90_ns\": %llu, \"p99_ns\": %llu, "
           "\"min_ns\": %llu, \"max_ns\": %llu}\n", count, gap_us,
           (unsigned long long) rtt[count / 2],
           (unsigned long long) rtt[(uint64_t) count * 90 / 100],
           (unsigned long long) rtt[(uint64_t) count * 99 / 100],
           (unsigned long long) rtt[0],
           (unsigned long long) rtt[count - 1]);

    return 0;
}


int
main(int argc, char **argv)
{
    int       p, rc;
    char      err[256];
    uint32_t  s, count, arg;
    bench_t   b;

    if (argc != 5 && !(argc == 4 && strcmp(argv[2], "consume") == 0)) {
        fprintf(stderr, "usage: ring_producer REGION latency COUNT GAP_US\n"
                "       ring_producer REGION throughput COUNT INFLIGHT\n"
                "       ring_producer REGION consume INDEX\n"
                "       ring_producer - floor COUNT GAP_US\n");
        return 2;
    }

    count = (uint32_t) strtoul(argv[3], NULL, 10);
    arg = (uint32_t) (argc > 4 ? strtoul(argv[4], NULL, 10) : 0);

    if (strcmp(argv[2], "floor") == 0) {
        return bench_floor(count ? count : 1, arg) == 0 ? 0 : 1;
    }

    memset(&b, 0, sizeof(b));

    if (mosn_region_attach(&b.rg, argv[1], err, sizeof(err)) != 0) {
        fprintf(stderr, "ring_producer: %s\n", err);
        return 1;
    }

    if (strcmp(argv[2], "consume") == 0) {
        rc = bench_consume(&b.rg, count);
        mosn_region_detach(&b.rg);
        return rc == 0 ? 0 : 1;
    }

    if (count == 0) {
        fprintf(stderr, "ring_producer: COUNT must be positive\n");
        return 2;
    }

    p = mosn_producer_claim(&b.rg, getpid());
    if (p < 0) {
        fprintf(stderr, "ring_producer: no free producer channel\n");
        return 1;
    }

    b.p = (uint32_t) p;
    b.fd = mosn_doorbell_open(&b.rg, b.p, err, sizeof(err));
    if (b.fd < 0) {
        fprintf(stderr, "ring_producer: %s\n", err);
        return 1;
    }

    b.nfd = getenv("RING_BENCH_NO_EVENTFD") ? -1
            : mosn_producer_notify_open(&b.rg, b.p);

    b.free = calloc(b.rg.slots, sizeof(uint32_t));
    if (b.free == NULL) {
        return 1;
    }

    for (s = 0; s < b.rg.slots; s++) {
        b.free[b.nfree++] = b.rg.slots - 1 - s;
    }

    b.next_id = 1;
    bench_make_record(&b);

    if (strcmp(argv[2], "latency") == 0) {
        rc = bench_latency(&b, count, arg);

    } else if (strcmp(argv[2], "throughput") == 0) {
        rc = bench_throughput(&b, count, arg ? arg : 1);

    } else {
        fprintf(stderr, "ring_producer: unknown mode \"%s\"\n", argv[2]);
        rc = -1;
    }

    close(b.fd);
    mosn_producer_release(&b.rg, b.p);
    mosn_region_detach(&b.rg);

    return rc == 0 ? 0 : 1;
}
