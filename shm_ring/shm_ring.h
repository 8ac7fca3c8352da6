
/*
 * The ABI between nginx workers (producers) and Python workers (consumers).
 *
 * One POSIX shared-memory region holds:
 *
 *   header | producer table | consumer table | rings | slot arena
 *   | endpoint table
 *
 * Every producer (an nginx worker) owns a channel: a range of slots and,
 * for every consumer, one single-producer/single-consumer submit ring and
 * one completion ring.  No entry is ever shared by two writers, so a
 * process that dies at any instruction cannot wedge a ring: what it held
 * is found by scanning slot states, whose owner is named in the state word.
 *
 * Slot life: FREE -> SUBMITTED(c, inc) -> TAKEN(c, inc) -> DONE(c, inc)
 * -> FREE.  Each transition has exactly one writer, decided by the state
 * and by whether the named consumer incarnation is alive; a dead
 * incarnation's slots belong to the producer (re-queue) or, when the
 * producer is dead too, to the reaper.
 *
 * Every length in a request record or a verdict is checked by its reader
 * against the slot before use.
 *
 * A slot carries the request's deadline (ABI version 4): past it the
 * producer has given up and the consumer may stop working on it.  A
 * producer that gives up on a slot early (its client went away) writes
 * the slot's gen into abandoned and bumps the consumer's abandons.  The
 * slot stays the consumer's until it completes it either way.
 *
 * The endpoint table (ABI version 2) holds the endpoints of up to
 * MOSN_EP_APPS apps for the module's balancer (mosn_subset), written by
 * one writer, the Python supervisor, under a per-app seqlock.
 *
 * Since ABI version 4 the wake-up sockets live in the region's own
 * directory (MOSN_WAKE_DIR_SUFFIX), not in the abstract namespace.
 *
 * This header is the layout alone, what the nginx module, the C core and
 * the Cython binding all compile against (and shm_ring/abi.py mirrors for
 * pure Python); the C core's own types and functions are in shm_core.h.
 */

#ifndef _SHM_RING_H_INCLUDED_
#define _SHM_RING_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>


#define MOSN_RING_MAGIC             0x474e4952534f4d21ULL  /* "!MOSRING" */
#define MOSN_RING_ABI_VERSION       4

#define MOSN_CACHELINE              64
#define MOSN_MAX_PRODUCERS          256     /* 2 per nginx worker: reload */
#define MOSN_WAKE_WORDS             (MOSN_MAX_PRODUCERS / 64)
#define MOSN_MAX_CONSUMERS          64
#define MOSN_MAX_SLOTS              65536
#define MOSN_MIN_SLOT_SIZE          1024
#define MOSN_MAX_SLOT_SIZE          (16 * 1024 * 1024)
#define MOSN_NAME_MAX               64
#define MOSN_PATH_MAX               512

/* slot states (low byte of the slot state word) */
#define MOSN_SLOT_FREE              0
#define MOSN_SLOT_SUBMITTED         1
#define MOSN_SLOT_TAKEN             2
#define MOSN_SLOT_DONE              3

/* slot state word: gen:32 | inc:16 | consumer:8 | state:8 */
#define MOSN_SW(gen, inc, c, st)                                              \
    (((uint64_t) (uint32_t) (gen) << 32)                                      \
     | ((uint64_t) ((inc) & 0xffff) << 16)                                    \
     | ((uint64_t) ((c) & 0xff) << 8) | (uint64_t) ((st) & 0xff))
#define MOSN_SW_STATE(w)            ((unsigned) ((w) & 0xff))
#define MOSN_SW_CONSUMER(w)         ((unsigned) (((w) >> 8) & 0xff))
#define MOSN_SW_INC(w)              ((unsigned) (((w) >> 16) & 0xffff))
#define MOSN_SW_GEN(w)              ((uint32_t) ((w) >> 32))

/* ring entry: gen:32 | slot:32 */
#define MOSN_ENTRY(slot, gen)                                                 \
    (((uint64_t) (uint32_t) (gen) << 32) | (uint32_t) (slot))
#define MOSN_ENTRY_SLOT(e)          ((uint32_t) (e))
#define MOSN_ENTRY_GEN(e)           ((uint32_t) ((e) >> 32))

/* producer channel states (low byte of the owner word; pid above) */
#define MOSN_CHAN_FREE              0
#define MOSN_CHAN_CLAIMING          1
#define MOSN_CHAN_OWNED             2
#define MOSN_CHAN_DRAINING          3
#define MOSN_CHAN_REAPING           4       /* pid: the reaper's */

#define MOSN_OWNER(pid, st)                                                   \
    (((uint64_t) (uint32_t) (pid) << 32) | (uint64_t) ((st) & 0xff))
#define MOSN_OWNER_STATE(w)         ((unsigned) ((w) & 0xff))
#define MOSN_OWNER_PID(w)           ((pid_t) ((w) >> 32))

/* consumer states */
#define MOSN_CONS_EMPTY             0
#define MOSN_CONS_STARTING          1
#define MOSN_CONS_LIVE              2
#define MOSN_CONS_DRAINING          3
#define MOSN_CONS_DEAD              4

/*
 * How a sleeping consumer is to be woken (its sleeping word, ABI 4): on
 * its futex (a blocking wait), or by a datagram to its doorbell socket (a
 * consumer whose event loop polls that socket's descriptor).  The waker
 * exchanges the word for MOSN_SLEEP_NONE, so one wake-up is rung per
 * sleep whichever way it sleeps.
 */
/*
 * The pool's state (header pool_state, ABI 4), for producers that find
 * no live consumer: a request waits for one while the pool starts or
 * replaces workers, and takes the fallback at once when none can be
 * expected.  A region starts in MOSN_POOL_STARTING (zero).
 */
#define MOSN_POOL_STARTING          0       /* workers are being started */
#define MOSN_POOL_RUNNING           1       /* the supervisor runs it */
#define MOSN_POOL_FAILED            2       /* workers keep failing to
                                               start: do not wait */
#define MOSN_POOL_STOPPED           3       /* stopped: do not wait */

#define MOSN_SLEEP_NONE             0
#define MOSN_SLEEP_FUTEX            1
#define MOSN_SLEEP_FD               2


typedef struct {
    uint64_t                magic;
    uint32_t                abi_version;
    uint32_t                header_size;
    uint64_t                region_size;

    uint32_t                nproducers;
    uint32_t                nconsumers;
    uint32_t                slots;          /* per producer, power of 2 */
    uint32_t                slot_size;      /* bytes, multiple of 64 */

    uint64_t                producers_off;
    uint64_t                consumers_off;
    uint64_t                rings_off;
    uint64_t                ring_bytes;     /* one ring, entries included */
    uint64_t                slots_off;

    uint32_t                master_pid;
    uint32_t                supervisor_pid;
    uint64_t                created_ns;     /* CLOCK_REALTIME */

    /* bumped whenever a consumer leaves; producers then re-queue */
    uint32_t                consumer_epoch;
    /* bumped by the master on reload; the supervisor rolls workers */
    uint32_t                reload_seq;
    uint32_t                desired_workers;
    /* MOSN_POOL_*, written by the supervisor: may nginx wait for one? */
    uint32_t                pool_state;

    char                    name[MOSN_NAME_MAX];
    char                    config_path[MOSN_PATH_MAX];

    /* the endpoint table: ep_apps entries of ep_app_size bytes */
    uint64_t                endpoints_off;
    uint32_t                ep_apps;
    uint32_t                ep_app_size;
} mosn_shm_header_t;


typedef struct {
    uint64_t                owner;          /* MOSN_OWNER(pid, state) */
    uint64_t                starttime;      /* /proc/pid/stat field 22 */
    uint32_t                epoch;          /* bumped on every claim */
    uint32_t                need_wakeup;    /* set while it may sleep */
    uint32_t                in_use;         /* slots not FREE, by owner */
    uint32_t                waiting;        /* requests waiting in nginx
                                               for a slot or a worker */

    /* counters, written by the owner only */
    uint64_t                submitted;
    uint64_t                completed;
    uint64_t                stale;          /* completions dropped */
    uint64_t                requeued;
    uint64_t                timeouts;
    uint64_t                fallbacks;
    uint64_t                futex_wakes;    /* consumer wake-ups rung:
                                               futex or doorbell */
    uint64_t                doorbells;      /* wake-ups received */
    uint64_t                cost_ns;        /* sum of filter round trips */
    uint64_t                queued;         /* waited in nginx for a slot
                                               or a worker (ABI 4) */
    uint64_t                queue_full;     /* fallbacks: the wait queue
                                               was full (ABI 4) */

    /*
     * The owner's eventfd, a descriptor number in the owner's process, or
     * -1 (ABI 4): a consumer takes a copy (pidfd_getfd) once per owner and
     * wakes the producer by writing to it, which costs a fraction of a
     * doorbell datagram.  Without a copy it rings the doorbell.
     */
    int32_t                 notify_fd;
    uint32_t                pad2;
    uint64_t                forged;         /* completions of slots not
                                               in flight, ignored */
    uint64_t                refused;        /* verdicts that failed the
                                               checks */
} mosn_producer_t;


typedef struct {
    uint32_t                state;
    uint32_t                incarnation;
    uint32_t                pid;
    uint32_t                sleeping;       /* MOSN_SLEEP_*, set before
                                               it sleeps */
    uint64_t                starttime;
    uint32_t                futex;          /* bumped to wake */
    uint32_t                left;           /* taken, never answered by
                                               the incarnations before */

    /* counters, written by the consumer only */
    uint64_t                taken;
    uint64_t                completed;
    uint64_t                batches;
    uint64_t                sleeps;
    uint64_t                doorbells;      /* producer wake-ups rung */
    uint64_t                errors;

    /* bumped (atomically) by producers that gave up on a slot this
     * consumer holds; the consumer then looks for slots abandoned */
    uint64_t                abandons;
} mosn_consumer_t;


/* a ring: head and tail on lines of their own, then the entries */
typedef struct {
    uint32_t                head;
    uint8_t                 pad0[MOSN_CACHELINE - 4];
    uint32_t                tail;
    uint8_t                 pad1[MOSN_CACHELINE - 4];
    uint64_t                entries[];
} mosn_ring_t;


typedef struct {
    uint64_t                state;          /* MOSN_SW() */
    uint64_t                request_id;
    uint64_t                submit_ns;      /* CLOCK_MONOTONIC */
    uint32_t                req_len;
    uint32_t                verdict_off;    /* from data start */
    uint32_t                verdict_len;
    uint32_t                abandoned;      /* gen the producer gave up */
    uint64_t                deadline_ns;    /* CLOCK_MONOTONIC; 0: none */
    uint64_t                pad1[2];
    uint8_t                 data[];
} mosn_slot_t;

#define MOSN_SLOT_HEADER_SIZE       64
#define MOSN_SLOT_DATA_SIZE(ss)     ((ss) - MOSN_SLOT_HEADER_SIZE)


/*
 * The request record, written by the producer at slot data offset 0.
 * Fields are (offset, length) pairs from the record start.  The header
 * table holds nheaders entries of (offset, name length, value length),
 * the value following its name.
 *
 * A response record (MOSN_REQ_F_RESPONSE, ABI version 3) is written when
 * the request's verdict asked for the response phase: the same request
 * fields and request_id, the upstream's status in status, and the
 * response headers in the header table.  With MOSN_REQ_F_META its meta
 * field holds the metadata of the request's verdict, a "key=value\n" line
 * each (keys and values were checked: no '=' in a key, no LF anywhere).
 * With MOSN_REQ_F_BODY (ABI version 4) its body field holds the
 * response's body, whole, as the upstream sent it (still compressed if
 * it came so: the headers say).
 */

#define MOSN_REQ_CHAIN              0
#define MOSN_REQ_METHOD             1
#define MOSN_REQ_PATH               2
#define MOSN_REQ_QUERY              3
#define MOSN_REQ_ADDR               4
#define MOSN_REQ_PROTOCOL           5
#define MOSN_REQ_BODY               6
#define MOSN_REQ_HEADERS            7       /* the header table */
#define MOSN_REQ_META               8       /* response records only */
#define MOSN_REQ_NFIELDS            9

#define MOSN_REQ_F_BODY             0x1     /* body present */
#define MOSN_REQ_F_RESPONSE         0x2     /* a response record */
#define MOSN_REQ_F_META             0x4     /* metadata present */

typedef struct {
    uint32_t                off;
    uint32_t                len;
} mosn_field_t;

typedef struct {
    uint32_t                off;
    uint32_t                name_len;
    uint32_t                value_len;
} mosn_header_entry_t;

typedef struct {
    uint32_t                len;
    uint32_t                nheaders;
    uint64_t                request_id;
    uint32_t                flags;
    uint32_t                status;         /* response records only */
    mosn_field_t            field[MOSN_REQ_NFIELDS];
} mosn_req_t;


/*
 * The verdict, written by the consumer at slot data offset verdict_off:
 * a fixed header, then nrecords records of (type, key length, value
 * length, key bytes, value bytes), unpadded.
 *
 * A CONTINUE verdict with MOSN_VERDICT_F_SENDERS asks for the response
 * phase: the chain has sender filters, so the response comes back as a
 * response record before it goes to the client.  The verdict on a
 * response record is CONTINUE with RESP_SET, RESP_DEL and RESP_ADD
 * records: every line of a name that is set or removed goes, the lines
 * set for it take their place, then the added lines are appended.  A
 * RESP_BODY record (ABI version 4, at most one) replaces the response's
 * body: nginx frames the new one itself (Content-Length, or chunked) and
 * throws the upstream's away.  MOSN_VERDICT_F_DECODE asks nginx to hold
 * compressed response bodies too (gzip, deflate), which the worker
 * decodes for the filters.
 */

#define MOSN_ACTION_CONTINUE        0       /* proxy on, with edits */
#define MOSN_ACTION_REPLY           1       /* direct (hijack) reply */
#define MOSN_ACTION_ERROR           2       /* filter failed: fallback */

#define MOSN_REC_UPSTREAM           1       /* value */
#define MOSN_REC_META               2       /* key, value */
#define MOSN_REC_REQ_SET            3       /* name, value */
#define MOSN_REC_REQ_DEL            4       /* name */
#define MOSN_REC_RESP_ADD           5       /* name, value */
#define MOSN_REC_REPLY_HEADER       6       /* name, value */
#define MOSN_REC_REPLY_BODY         7       /* value */
#define MOSN_REC_LOG                8       /* value: why, for error_log */
#define MOSN_REC_RESP_SET           9       /* name, value: response phase */
#define MOSN_REC_RESP_DEL           10      /* name: response phase */
#define MOSN_REC_RESP_BODY          11      /* value: response phase */

#define MOSN_VERDICT_F_SENDERS      0x1     /* run the response phase */
#define MOSN_VERDICT_F_DECODE       0x2     /* hold compressed bodies too */

#define MOSN_VERDICT_MAX_RECORDS    256
#define MOSN_META_KEY_MAX           64

typedef struct {
    uint32_t                len;            /* whole verdict */
    uint16_t                action;
    uint16_t                status;
    uint32_t                nrecords;
    uint32_t                flags;          /* MOSN_VERDICT_F_* */
} mosn_verdict_t;

typedef struct {
    uint8_t                 type;
    uint8_t                 pad0[3];
    uint32_t                key_len;
    uint32_t                value_len;
} mosn_record_t;


/*
 * The endpoint table: service discovery for the module's balancer.
 *
 * One entry per app, found by its name.  One writer (the supervisor)
 * rewrites an app's entry whole under the entry's seqlock: seq is made
 * odd, the entry is written, generation is bumped and seq made even.  A
 * reader copies what it needs, then re-reads seq: if seq was odd or has
 * changed, it reads again (a bounded number of times).  Readers check
 * every count and index they read, as they do for slots.
 *
 * An app's endpoints are grouped by site; site s holds the endpoints
 * first .. first + count - 1.  Site entries keep their index while their
 * name stays in the app, so that rr[s], the round-robin counter of site
 * s, bumped atomically by every nginx worker, keeps its meaning across
 * writes; rr[MOSN_EP_SITES] is the counter over all the app's endpoints.
 * An entry whose name_len is 0 is unused.
 */

#define MOSN_EP_APPS                16
#define MOSN_EP_MAX                 256     /* endpoints per app */
#define MOSN_EP_SITES               32      /* distinct sites per app */
#define MOSN_EP_APP_NAME_MAX        64      /* bytes, the NUL included */
#define MOSN_EP_SITE_MAX            32      /* bytes, the NUL included */
#define MOSN_EP_RR_ANY              MOSN_EP_SITES

/* endpoint address families: not AF_*, which are the OS's */
#define MOSN_EP_INET                4
#define MOSN_EP_INET6               6

/* mosn_endpoints_pick() results */
#define MOSN_EP_NONE                0       /* no endpoint left to try */
#define MOSN_EP_SITE                1       /* one of the site's */
#define MOSN_EP_ANY                 2       /* the fallback: any endpoint */
#define MOSN_EP_BUSY                (-1)    /* no stable read, or corrupt */

typedef struct {
    uint8_t                 family;         /* MOSN_EP_INET, MOSN_EP_INET6 */
    uint8_t                 site;           /* index in the app's sites */
    uint16_t                port;           /* host byte order */
    uint32_t                flags;          /* none defined: written 0 */
    uint8_t                 addr[16];       /* network byte order */
} mosn_endpoint_t;

typedef struct {
    uint16_t                first;
    uint16_t                count;          /* 0: no endpoint now */
    uint32_t                name_len;       /* 0: entry unused */
    char                    name[MOSN_EP_SITE_MAX];
} mosn_ep_site_t;

typedef struct {
    uint32_t                seq;            /* odd while written */
    uint32_t                generation;     /* bumped on every write */
    uint32_t                nendpoints;
    uint32_t                name_len;       /* 0: entry unused */
    char                    name[MOSN_EP_APP_NAME_MAX];
    uint8_t                 pad0[MOSN_CACHELINE - 16];

    /* bumped by readers, outside the seqlock */
    uint32_t                rr[MOSN_EP_SITES + 1];
    uint8_t                 pad1[MOSN_CACHELINE
                                 - (MOSN_EP_SITES + 1) * 4 % MOSN_CACHELINE];

    mosn_ep_site_t          sites[MOSN_EP_SITES];
    mosn_endpoint_t         endpoints[MOSN_EP_MAX];
} mosn_ep_app_t;


/*
 * The wake-up sockets of a region live in a directory of their own,
 * /dev/shm/NAME.wake, of mode 0700 and owned by the region's owner: only
 * the processes that may map the region may bind or reach them.  An nginx
 * worker binds "p" CHANNEL there.
 */

#define MOSN_WAKE_DIR_SUFFIX        ".wake"


#endif /* _SHM_RING_H_INCLUDED_ */
