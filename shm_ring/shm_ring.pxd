# shm_ring.h for Cython: the one ABI, declared once; then shm_core.h, the
# C core the binding calls.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "shm_ring.h" nogil:
    uint64_t MOSN_RING_MAGIC
    int MOSN_RING_ABI_VERSION
    int MOSN_MAX_PRODUCERS
    int MOSN_WAKE_WORDS
    int MOSN_MAX_CONSUMERS
    int MOSN_SLOT_HEADER_SIZE
    int MOSN_NAME_MAX
    int MOSN_PATH_MAX

    int MOSN_SLOT_FREE
    int MOSN_SLOT_SUBMITTED
    int MOSN_SLOT_TAKEN
    int MOSN_SLOT_DONE

    int MOSN_CHAN_FREE
    int MOSN_CHAN_CLAIMING
    int MOSN_CHAN_OWNED
    int MOSN_CHAN_DRAINING
    int MOSN_CHAN_REAPING

    int MOSN_CONS_EMPTY
    int MOSN_CONS_STARTING
    int MOSN_CONS_LIVE
    int MOSN_CONS_DRAINING
    int MOSN_CONS_DEAD

    int MOSN_POOL_STARTING
    int MOSN_POOL_RUNNING
    int MOSN_POOL_FAILED
    int MOSN_POOL_STOPPED

    int MOSN_SLEEP_NONE
    int MOSN_SLEEP_FUTEX
    int MOSN_SLEEP_FD

    int MOSN_REQ_CHAIN
    int MOSN_REQ_METHOD
    int MOSN_REQ_PATH
    int MOSN_REQ_QUERY
    int MOSN_REQ_ADDR
    int MOSN_REQ_PROTOCOL
    int MOSN_REQ_BODY
    int MOSN_REQ_HEADERS
    int MOSN_REQ_META
    int MOSN_REQ_NFIELDS
    int MOSN_REQ_F_BODY
    int MOSN_REQ_F_RESPONSE
    int MOSN_REQ_F_META

    int MOSN_ACTION_CONTINUE
    int MOSN_ACTION_REPLY
    int MOSN_ACTION_ERROR

    int MOSN_REC_UPSTREAM
    int MOSN_REC_META
    int MOSN_REC_REQ_SET
    int MOSN_REC_REQ_DEL
    int MOSN_REC_RESP_ADD
    int MOSN_REC_REPLY_HEADER
    int MOSN_REC_REPLY_BODY
    int MOSN_REC_LOG
    int MOSN_REC_RESP_SET
    int MOSN_REC_RESP_DEL
    int MOSN_REC_RESP_BODY
    int MOSN_VERDICT_F_SENDERS
    int MOSN_VERDICT_F_DECODE
    int MOSN_VERDICT_MAX_RECORDS

    int MOSN_EP_APPS
    int MOSN_EP_MAX
    int MOSN_EP_SITES
    int MOSN_EP_APP_NAME_MAX
    int MOSN_EP_SITE_MAX
    int MOSN_EP_INET
    int MOSN_EP_INET6
    int MOSN_EP_NONE
    int MOSN_EP_SITE
    int MOSN_EP_ANY
    int MOSN_EP_BUSY

    uint32_t MOSN_SW_STATE(uint64_t w)
    uint32_t MOSN_SW_CONSUMER(uint64_t w)
    uint32_t MOSN_SW_INC(uint64_t w)
    uint32_t MOSN_SW_GEN(uint64_t w)
    uint32_t MOSN_ENTRY_SLOT(uint64_t e)
    uint32_t MOSN_ENTRY_GEN(uint64_t e)
    uint32_t MOSN_OWNER_STATE(uint64_t w)
    int MOSN_OWNER_PID(uint64_t w)

    ctypedef struct mosn_shm_header_t:
        uint64_t magic
        uint32_t abi_version
        uint32_t header_size
        uint64_t region_size
        uint32_t nproducers
        uint32_t nconsumers
        uint32_t slots
        uint32_t slot_size
        uint64_t producers_off
        uint64_t consumers_off
        uint64_t rings_off
        uint64_t ring_bytes
        uint64_t slots_off
        uint32_t master_pid
        uint32_t supervisor_pid
        uint64_t created_ns
        uint32_t consumer_epoch
        uint32_t reload_seq
        uint32_t desired_workers
        uint32_t pool_state
        char name[64]
        char config_path[512]
        uint64_t endpoints_off
        uint32_t ep_apps
        uint32_t ep_app_size

    ctypedef struct mosn_producer_t:
        uint64_t owner
        uint64_t starttime
        uint32_t epoch
        uint32_t need_wakeup
        uint32_t in_use
        uint32_t waiting
        uint64_t submitted
        uint64_t completed
        uint64_t stale
        uint64_t requeued
        uint64_t timeouts
        uint64_t fallbacks
        uint64_t futex_wakes
        uint64_t doorbells
        uint64_t cost_ns
        uint64_t queued
        uint64_t queue_full
        int notify_fd
        uint64_t forged
        uint64_t refused

    ctypedef struct mosn_consumer_t:
        uint32_t state
        uint32_t incarnation
        uint32_t pid
        uint32_t sleeping
        uint64_t starttime
        uint32_t futex
        uint64_t taken
        uint64_t completed
        uint64_t batches
        uint64_t sleeps
        uint64_t doorbells
        uint64_t errors
        uint64_t abandons

    ctypedef struct mosn_slot_t:
        uint64_t state
        uint64_t request_id
        uint64_t submit_ns
        uint32_t req_len
        uint32_t verdict_off
        uint32_t verdict_len
        uint32_t abandoned
        uint64_t deadline_ns
        uint8_t data[1]

    ctypedef struct mosn_field_t:
        uint32_t off
        uint32_t len

    ctypedef struct mosn_header_entry_t:
        uint32_t off
        uint32_t name_len
        uint32_t value_len

    ctypedef struct mosn_req_t:
        uint32_t len
        uint32_t nheaders
        uint64_t request_id
        uint32_t flags
        uint32_t status
        mosn_field_t field[9]

    ctypedef struct mosn_verdict_t:
        uint32_t len
        uint16_t action
        uint16_t status
        uint32_t nrecords
        uint32_t flags

    ctypedef struct mosn_record_t:
        uint8_t type
        uint32_t key_len
        uint32_t value_len

    ctypedef struct mosn_endpoint_t:
        uint8_t family
        uint8_t site
        uint16_t port
        uint32_t flags
        uint8_t addr[16]

    ctypedef struct mosn_ep_site_t:
        uint16_t first
        uint16_t count
        uint32_t name_len
        char name[32]

    ctypedef struct mosn_ep_app_t:
        uint32_t seq
        uint32_t generation
        uint32_t nendpoints
        uint32_t name_len
        char name[64]
        uint32_t rr[33]
        mosn_ep_site_t sites[32]
        mosn_endpoint_t endpoints[256]


cdef extern from "shm_core.h" nogil:
    uint32_t MOSN_RESCUE_FAILED
    uint64_t mosn_load_after(const uint64_t *p)

    uint32_t MOSN_PS_P(uint64_t v)
    uint32_t MOSN_PS_S(uint64_t v)
    uint64_t MOSN_PS(uint32_t p, uint32_t s)

    ctypedef struct mosn_ep_spec_t:
        mosn_endpoint_t ep
        const char *site
        size_t site_len

    ctypedef struct mosn_region_t:
        mosn_shm_header_t *hdr
        size_t size
        uint32_t nproducers
        uint32_t nconsumers
        uint32_t slots
        uint32_t slot_size
        char name[64]
        char wake_dir[80]

    ctypedef struct mosn_region_conf_t:
        uint32_t nproducers
        uint32_t nconsumers
        uint32_t slots
        uint32_t slot_size

    ctypedef struct mosn_rec_view_t:
        const uint8_t *key
        const uint8_t *value
        uint32_t key_len
        uint32_t value_len
        unsigned type

    ctypedef struct mosn_verdict_iter_t:
        unsigned action
        unsigned status
        unsigned flags

    size_t mosn_region_size(const mosn_region_conf_t *conf)
    int mosn_region_create(mosn_region_t *rg, const char *name,
                           const mosn_region_conf_t *conf, int uid, int gid,
                           char *err, size_t errlen)
    int mosn_region_attach(mosn_region_t *rg, const char *name,
                           char *err, size_t errlen)
    int mosn_region_check(const void *base, size_t size, char *err,
                          size_t errlen)
    void mosn_region_detach(mosn_region_t *rg)
    int mosn_region_unlink(const char *name)

    mosn_producer_t *mosn_producer(mosn_region_t *rg, uint32_t p)
    mosn_consumer_t *mosn_consumer(mosn_region_t *rg, uint32_t c)
    mosn_slot_t *mosn_slot(mosn_region_t *rg, uint32_t p, uint32_t s)

    int mosn_proc_alive(int pid, uint64_t starttime)
    uint64_t mosn_now_ns()

    int mosn_producer_claim(mosn_region_t *rg, int pid)
    void mosn_producer_release(mosn_region_t *rg, uint32_t p)
    int mosn_producer_pick(mosn_region_t *rg, uint32_t p, uint32_t *rr,
                           uint32_t *inc)
    int mosn_producer_submit(mosn_region_t *rg, uint32_t p, uint32_t s,
                             uint32_t c, uint32_t inc, uint32_t *gen)
    void mosn_producer_free(mosn_region_t *rg, uint32_t p, uint32_t s)
    void mosn_producer_abandon(mosn_region_t *rg, uint32_t p, uint32_t s,
                               uint32_t gen)
    int mosn_producer_poll(mosn_region_t *rg, uint32_t p, uint64_t *out,
                           int max)
    int mosn_producer_arm(mosn_region_t *rg, uint32_t p)
    int mosn_producer_rescue(mosn_region_t *rg, uint32_t p, uint32_t *rr,
                             uint64_t *out, int max)
    int mosn_doorbell_open(mosn_region_t *rg, uint32_t p, char *err,
                           size_t errlen)
    void mosn_doorbell_unlink(mosn_region_t *rg, uint32_t p)
    int mosn_doorbell_drain(int fd)
    int mosn_producer_notify_open(mosn_region_t *rg, uint32_t p)
    int mosn_notify_drain(int fd)

    int mosn_consumer_start(mosn_region_t *rg, uint32_t c, int pid)
    int mosn_consumer_take(mosn_region_t *rg, uint32_t c, uint64_t *out,
                           int max)
    int mosn_consumer_complete(mosn_region_t *rg, uint32_t c, uint32_t p,
                               uint32_t s, uint64_t *wake_mask)
    int mosn_consumer_flush(mosn_region_t *rg, uint32_t c, int sock,
                            uint64_t *wake_mask)
    void mosn_consumer_spin(uint64_t ns)
    int mosn_consumer_wait(mosn_region_t *rg, uint32_t c, int timeout_ms)
    int mosn_consumer_pending(mosn_region_t *rg, uint32_t c)
    int mosn_consumer_doorbell_open(mosn_region_t *rg, uint32_t c)
    int mosn_consumer_arm(mosn_region_t *rg, uint32_t c)
    int mosn_consumer_disarm(mosn_region_t *rg, uint32_t c, int fd)
    int mosn_doorbell_ring(mosn_region_t *rg, int sock, uint32_t p)

    int mosn_consumer_alloc(mosn_region_t *rg)
    void mosn_consumer_retire(mosn_region_t *rg, uint32_t c, int sock)
    int mosn_reap(mosn_region_t *rg, int sock)
    uint32_t mosn_slots_in_use(mosn_region_t *rg)

    mosn_ep_app_t *mosn_ep_app(mosn_region_t *rg, uint32_t app)
    int mosn_endpoints_set(mosn_region_t *rg, const char *app, size_t app_len,
                           const mosn_ep_spec_t *spec, uint32_t n, char *err,
                           size_t errlen)
    int mosn_endpoints_find(mosn_region_t *rg, const char *app,
                            size_t app_len)
    int mosn_endpoints_read(mosn_region_t *rg, uint32_t app,
                            mosn_ep_app_t *copy)
    int mosn_endpoints_count(mosn_region_t *rg, const char *app,
                             size_t app_len, uint32_t *gen)
    int mosn_endpoints_pick(mosn_region_t *rg, const char *app,
                            size_t app_len, const char *site,
                            size_t site_len, const mosn_endpoint_t *tried,
                            uint32_t ntried, mosn_endpoint_t *out)
    int mosn_endpoint_same(const mosn_endpoint_t *a,
                           const mosn_endpoint_t *b)

    int mosn_verdict_begin(mosn_verdict_iter_t *it, const uint8_t *buf,
                           size_t len)
    int mosn_verdict_next(mosn_verdict_iter_t *it, mosn_rec_view_t *rec)
    int mosn_verdict_validate(const uint8_t *buf, size_t len,
                              const char **why)
