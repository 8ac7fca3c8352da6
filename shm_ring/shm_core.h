
/*
 * The C core of the ring: the functions the nginx module and the Cython
 * binding call on a region laid out as shm_ring.h says.  One file a side:
 * shm_region.c, shm_producer.c, shm_consumer.c, shm_reaper.c, and the
 * verdict decoder (shm_verdict.c) and the endpoint table
 * (shm_endpoints.c).
 */

#ifndef _SHM_CORE_H_INCLUDED_
#define _SHM_CORE_H_INCLUDED_


#include <sys/socket.h>
#include <sys/un.h>

#include "shm_ring.h"


#define MOSN_WAKE_DIR_MAX           (sizeof("/dev/shm/") + MOSN_NAME_MAX      \
                                     + sizeof(MOSN_WAKE_DIR_SUFFIX))


/* mosn_producer_rescue_slot() results */
#define MOSN_RESCUE_NONE            0       /* in flight, or poll sees it */
#define MOSN_RESCUE_REQUEUED        1       /* handed to a live consumer */
#define MOSN_RESCUE_DONE            2       /* its verdict waits: take it */
#define MOSN_RESCUE_LOST            3       /* take the fallback */

/* rescue entries: the slot could not be re-queued, take the fallback */
#define MOSN_RESCUE_FAILED          0x80000000u

/*
 * A read of a word another process may change at any time, done once:
 * the compiler may neither repeat it nor tear it.  Whatever is read from
 * the region goes through a local read so, is checked, and only the local
 * is used.
 */
#define MOSN_READ_ONCE(x)           __atomic_load_n(&(x), __ATOMIC_RELAXED)

/* "(p, slot)" pairs handed between the two sides */
#define MOSN_PS(p, s)               (((uint64_t) (p) << 32) | (uint32_t) (s))
#define MOSN_PS_P(v)                ((uint32_t) ((v) >> 32))
#define MOSN_PS_S(v)                ((uint32_t) (v))


/* alignment and the atomics of the core's own files */
#define mosn_align(n, a)    (((n) + (a) - 1) & ~((uint64_t) (a) - 1))

#define mosn_load(p)        __atomic_load_n(p, __ATOMIC_ACQUIRE)
#define mosn_load_relaxed(p) __atomic_load_n(p, __ATOMIC_RELAXED)
#define mosn_store(p, v)    __atomic_store_n(p, v, __ATOMIC_RELEASE)
#define mosn_full_fence()   __atomic_thread_fence(__ATOMIC_SEQ_CST)
/* a load ordered after every read before it (a seqlock's second look) */
#define mosn_load_after(p)                                                    \
    (__atomic_thread_fence(__ATOMIC_ACQUIRE),                                 \
     __atomic_load_n(p, __ATOMIC_RELAXED))


typedef struct {
    mosn_shm_header_t      *hdr;            /* shared words only */
    size_t                  size;

    /*
     * The layout, copied out of the header and checked once, at create
     * or attach: every address is computed from these, and a process
     * that rewrites the live header later changes none of them.
     */
    uint32_t                nproducers;
    uint32_t                nconsumers;
    uint32_t                slots;
    uint32_t                slot_size;
    uint64_t                producers_off;
    uint64_t                consumers_off;
    uint64_t                rings_off;
    uint64_t                ring_bytes;
    uint64_t                slots_off;
    uint64_t                endpoints_off;

    /* the name it was opened by, and its wake-up directory */
    char                    name[MOSN_NAME_MAX];
    char                    wake_dir[MOSN_WAKE_DIR_MAX];
    size_t                  wake_dir_len;
} mosn_region_t;

typedef struct {
    uint32_t                nproducers;
    uint32_t                nconsumers;
    uint32_t                slots;
    uint32_t                slot_size;
} mosn_region_conf_t;

typedef struct {
    const uint8_t          *key;
    const uint8_t          *value;
    uint32_t                key_len;
    uint32_t                value_len;
    unsigned                type;
} mosn_rec_view_t;

typedef struct {
    const uint8_t          *pos;
    const uint8_t          *end;
    uint32_t                left;
    unsigned                action;
    unsigned                status;
    unsigned                flags;
} mosn_verdict_iter_t;


/* what the writer is given: an endpoint and the name of its site */
typedef struct {
    mosn_endpoint_t         ep;             /* ep.site is ignored */
    const char             *site;
    size_t                  site_len;
} mosn_ep_spec_t;


/* formats a reason into err (the core's error messages) */
void mosn_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

size_t mosn_region_size(const mosn_region_conf_t *conf);
int mosn_region_create(mosn_region_t *rg, const char *name,
    const mosn_region_conf_t *conf, uid_t uid, gid_t gid,
    char *err, size_t errlen);
int mosn_region_attach(mosn_region_t *rg, const char *name,
    char *err, size_t errlen);
int mosn_region_check(const void *base, size_t size, char *err,
    size_t errlen);
int mosn_region_load(mosn_region_t *rg, void *base, size_t size, char *err,
    size_t errlen);
int mosn_region_format(void *base, size_t size,
    const mosn_region_conf_t *conf, char *err, size_t errlen);
void mosn_region_detach(mosn_region_t *rg);
int mosn_region_unlink(const char *name);
int mosn_region_foreign(const char *name, uid_t owner, char *err,
    size_t errlen);

int mosn_proc_starttime(pid_t pid, uint64_t *starttime);
int mosn_proc_alive(pid_t pid, uint64_t starttime);
uint64_t mosn_now_ns(void);


/* producer side */

int mosn_producer_claim(mosn_region_t *rg, pid_t pid);
void mosn_producer_release(mosn_region_t *rg, uint32_t p);
int mosn_producer_pick(mosn_region_t *rg, uint32_t p, uint32_t *rr,
    uint32_t *inc);
int mosn_producer_submit(mosn_region_t *rg, uint32_t p, uint32_t s,
    uint32_t c, uint32_t inc, uint32_t *gen);
int mosn_producer_publish(mosn_region_t *rg, uint32_t p, uint32_t s,
    uint32_t c, uint32_t inc, uint32_t *gen);
void mosn_producer_wake(mosn_region_t *rg, uint32_t p, uint32_t c);
void mosn_producer_free(mosn_region_t *rg, uint32_t p, uint32_t s);
void mosn_producer_abandon(mosn_region_t *rg, uint32_t p, uint32_t s,
    uint32_t gen);
int mosn_producer_poll(mosn_region_t *rg, uint32_t p, uint64_t *out,
    int max);
int mosn_producer_arm(mosn_region_t *rg, uint32_t p);
int mosn_producer_rescue(mosn_region_t *rg, uint32_t p, uint32_t *rr,
    uint64_t *done, int max);
int mosn_producer_rescue_slot(mosn_region_t *rg, uint32_t p, uint32_t s,
    uint32_t gen, uint32_t *rr);
int mosn_doorbell_open(mosn_region_t *rg, uint32_t p, char *err,
    size_t errlen);
void mosn_doorbell_unlink(mosn_region_t *rg, uint32_t p);
int mosn_doorbell_drain(int fd);
int mosn_producer_notify_open(mosn_region_t *rg, uint32_t p);
int mosn_notify_drain(int fd);

/* consumer side */
int mosn_consumer_start(mosn_region_t *rg, uint32_t c, pid_t pid);
int mosn_consumer_take(mosn_region_t *rg, uint32_t c, uint64_t *out,
    int max);
/* wake_mask: MOSN_WAKE_WORDS words, a bit per producer; flush clears it */
int mosn_consumer_complete(mosn_region_t *rg, uint32_t c, uint32_t p,
    uint32_t s, uint64_t *wake_mask);
int mosn_consumer_flush(mosn_region_t *rg, uint32_t c, int sock,
    uint64_t *wake_mask);
void mosn_consumer_spin(uint64_t ns);
int mosn_consumer_wait(mosn_region_t *rg, uint32_t c, int timeout_ms);
int mosn_consumer_pending(mosn_region_t *rg, uint32_t c);
int mosn_consumer_doorbell_open(mosn_region_t *rg, uint32_t c);
int mosn_consumer_arm(mosn_region_t *rg, uint32_t c);
int mosn_consumer_disarm(mosn_region_t *rg, uint32_t c, int fd);
int mosn_doorbell_ring(mosn_region_t *rg, int sock, uint32_t p);

/* supervisor side */
int mosn_consumer_alloc(mosn_region_t *rg);
void mosn_consumer_retire(mosn_region_t *rg, uint32_t c, int sock);
int mosn_reap(mosn_region_t *rg, int sock);
int mosn_reap_producers(mosn_region_t *rg, uint32_t *freed);
uint32_t mosn_slots_in_use(mosn_region_t *rg);

/* verdicts: validated in full before anything is applied */
int mosn_verdict_begin(mosn_verdict_iter_t *it, const uint8_t *buf,
    size_t len);
int mosn_verdict_next(mosn_verdict_iter_t *it, mosn_rec_view_t *rec);
int mosn_verdict_validate(const uint8_t *buf, size_t len,
    const char **why);
int mosn_header_name_valid(const uint8_t *p, size_t len);
int mosn_header_value_valid(const uint8_t *p, size_t len);

/* the endpoint table (shm_endpoints.c) */
mosn_ep_app_t *mosn_ep_app(mosn_region_t *rg, uint32_t app);
int mosn_endpoints_set(mosn_region_t *rg, const char *app, size_t app_len,
    const mosn_ep_spec_t *spec, uint32_t n, char *err, size_t errlen);
int mosn_endpoints_find(mosn_region_t *rg, const char *app, size_t app_len);
int mosn_endpoints_read(mosn_region_t *rg, uint32_t app, mosn_ep_app_t *copy);
int mosn_endpoints_count(mosn_region_t *rg, const char *app, size_t app_len,
    uint32_t *gen);
int mosn_endpoints_pick(mosn_region_t *rg, const char *app, size_t app_len,
    const char *site, size_t site_len, const mosn_endpoint_t *tried,
    uint32_t ntried, mosn_endpoint_t *out);
int mosn_endpoint_same(const mosn_endpoint_t *a, const mosn_endpoint_t *b);



/* the parts of a region, from its checked layout */

static inline mosn_producer_t *
mosn_producer(mosn_region_t *rg, uint32_t p)
{
    return (mosn_producer_t *) ((uint8_t *) rg->hdr + rg->producers_off
           + mosn_align(sizeof(mosn_producer_t), MOSN_CACHELINE) * p);
}


static inline mosn_consumer_t *
mosn_consumer(mosn_region_t *rg, uint32_t c)
{
    return (mosn_consumer_t *) ((uint8_t *) rg->hdr + rg->consumers_off
           + mosn_align(sizeof(mosn_consumer_t), MOSN_CACHELINE) * c);
}


static inline mosn_ring_t *
mosn_submit_ring(mosn_region_t *rg, uint32_t p, uint32_t c)
{
    return (mosn_ring_t *) ((uint8_t *) rg->hdr + rg->rings_off
           + rg->ring_bytes * (2 * ((uint64_t) p * rg->nconsumers + c)));
}


static inline mosn_ring_t *
mosn_completion_ring(mosn_region_t *rg, uint32_t p, uint32_t c)
{
    return (mosn_ring_t *) ((uint8_t *) rg->hdr + rg->rings_off
           + rg->ring_bytes * (2 * ((uint64_t) p * rg->nconsumers + c) + 1));
}


static inline mosn_slot_t *
mosn_slot(mosn_region_t *rg, uint32_t p, uint32_t s)
{
    return (mosn_slot_t *) ((uint8_t *) rg->hdr + rg->slots_off
           + (uint64_t) rg->slot_size * ((uint64_t) p * rg->slots + s));
}


/* shared by the core's own files, not called from outside */

void mosn_consumer_doorbell_ring(mosn_region_t *rg, uint32_t c);
int mosn_doorbell_bind(struct sockaddr_un *sa, socklen_t len, char *err,
    size_t errlen);
socklen_t mosn_doorbell_name_of(mosn_region_t *rg, char kind, uint32_t n,
    struct sockaddr_un *sa);
int mosn_futex_wait(uint32_t *addr, uint32_t val, int timeout_ms);
void mosn_futex_wake(uint32_t *addr);
int mosn_producer_notify(mosn_region_t *rg, int sock, uint32_t p);
int mosn_reap_channel(mosn_region_t *rg, uint32_t p);
int mosn_ring_holds(mosn_region_t *rg, mosn_ring_t *ring, uint32_t s,
    uint32_t gen);
void mosn_ring_producers(mosn_region_t *rg, int sock);
int mosn_ring_socket(void);
void mosn_wake_consumer(mosn_region_t *rg, uint32_t p, uint32_t c);


static inline int
mosn_consumer_alive(mosn_region_t *rg, uint32_t c, uint32_t inc)
{
    uint32_t          st;
    mosn_consumer_t  *cons;

    if (c >= rg->nconsumers) {
        return 0;
    }

    cons = mosn_consumer(rg, c);
    st = mosn_load(&cons->state);

    return (st == MOSN_CONS_LIVE || st == MOSN_CONS_DRAINING)
           && (mosn_load(&cons->incarnation) & 0xffff) == inc;
}


/*
 * Requests a consumer took and has not answered yet (the incarnations
 * before it count as answered what they left).  The counters only grow,
 * so reading the answered ones first never puts taken below them; a
 * consumer that lies about them only misleads the choice of consumer,
 * and never past the slots there are.
 */

static inline uint64_t
mosn_consumer_held(mosn_region_t *rg, mosn_consumer_t *cons)
{
    uint64_t  answered, taken, most;

    answered = __atomic_load_n(&cons->completed, __ATOMIC_ACQUIRE)
               + __atomic_load_n(&cons->errors, __ATOMIC_ACQUIRE)
               + __atomic_load_n(&cons->left, __ATOMIC_ACQUIRE);
    taken = __atomic_load_n(&cons->taken, __ATOMIC_ACQUIRE);

    if (taken <= answered) {
        return 0;
    }

    most = (uint64_t) rg->slots * rg->nproducers;

    return (taken - answered < most) ? taken - answered : most;
}


static inline int
mosn_ring_room(mosn_region_t *rg, mosn_ring_t *ring)
{
    return ring->head - mosn_load(&ring->tail) < rg->slots;
}


static inline int
mosn_ring_push(mosn_region_t *rg, mosn_ring_t *ring, uint64_t entry)
{
    uint32_t  head;

    head = ring->head;

    if (head - mosn_load(&ring->tail) >= rg->slots) {
        return -1;
    }

    ring->entries[head & (rg->slots - 1)] = entry;
    mosn_store(&ring->head, head + 1);

    return 0;
}


#endif /* _SHM_CORE_H_INCLUDED_ */
