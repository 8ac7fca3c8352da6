"""shm_ring.h in Python: the ring's ABI for the pure-Python side.

Every number here is a #define or a struct layout of shm_ring.h, under
the header's name without its MOSN_ prefix (tests/ring/test_ring_abi.py
compiles the header and holds each one against it).  The Cython binding
takes the same numbers from the header itself, through shm_ring.pxd.
"""

import struct

RING_MAGIC = 0x474E4952534F4D21  # "!MOSRING"
RING_ABI_VERSION = 4

CACHELINE = 64
MAX_PRODUCERS = 256
WAKE_WORDS = MAX_PRODUCERS // 64
MAX_CONSUMERS = 64
MAX_SLOTS = 65536
MIN_SLOT_SIZE = 1024
MAX_SLOT_SIZE = 16 * 1024 * 1024
NAME_MAX = 64
PATH_MAX = 512

SLOT_FREE, SLOT_SUBMITTED, SLOT_TAKEN, SLOT_DONE = 0, 1, 2, 3
CHAN_FREE, CHAN_CLAIMING, CHAN_OWNED, CHAN_DRAINING, CHAN_REAPING = range(5)
CONS_EMPTY, CONS_STARTING, CONS_LIVE, CONS_DRAINING, CONS_DEAD = range(5)
POOL_STARTING, POOL_RUNNING, POOL_FAILED, POOL_STOPPED = range(4)
SLEEP_NONE, SLEEP_FUTEX, SLEEP_FD = 0, 1, 2

U32 = 0xFFFFFFFF


def sw(gen, inc, c, st):
    """MOSN_SW: gen:32 | inc:16 | consumer:8 | state:8."""
    return (
        ((gen & U32) << 32)
        | ((inc & 0xFFFF) << 16)
        | ((c & 0xFF) << 8)
        | (st & 0xFF)
    )


def sw_state(w):
    return w & 0xFF


def sw_consumer(w):
    return (w >> 8) & 0xFF


def sw_inc(w):
    return (w >> 16) & 0xFFFF


def sw_gen(w):
    return w >> 32


def entry(slot, gen):
    """MOSN_ENTRY: gen:32 | slot:32."""
    return ((gen & U32) << 32) | (slot & U32)


def owner(pid, st):
    """MOSN_OWNER: pid:32 | state:8."""
    return ((pid & U32) << 32) | (st & 0xFF)


# mosn_shm_header_t, whole, and its fields' offsets
HEADER = struct.Struct("<QIIQ IIII QQQQQ IIQ IIII 64s512s QII")
H_MAGIC, H_ABI, H_REGION_SIZE = 0, 8, 16
H_SUPERVISOR_PID, H_CONSUMER_EPOCH = 84, 96
H_DESIRED_WORKERS, H_POOL_STATE = 104, 108
H_NAME, H_CONFIG_PATH = 112, 176
H_ENDPOINTS_OFF, H_EP_APPS, H_EP_APP_SIZE = 688, 696, 700

# mosn_producer_t
PRODUCER_SIZE = 144
P_OWNER, P_STARTTIME, P_EPOCH, P_NEED_WAKEUP, P_IN_USE = 0, 8, 16, 20, 24
P_WAITING = 28
P_SUBMITTED, P_COMPLETED, P_STALE, P_REQUEUED, P_TIMEOUTS = 32, 40, 48, 56, 64
P_FALLBACKS, P_FUTEX_WAKES, P_DOORBELLS, P_COST_NS = 72, 80, 88, 96
P_QUEUED, P_QUEUE_FULL, P_NOTIFY_FD = 104, 112, 120
P_FORGED, P_REFUSED = 128, 136

# mosn_consumer_t
CONSUMER_SIZE = 88
C_STATE, C_INCARNATION, C_PID, C_SLEEPING, C_STARTTIME = 0, 4, 8, 12, 16
C_FUTEX, C_LEFT, C_TAKEN, C_COMPLETED = 24, 28, 32, 40
C_BATCHES, C_SLEEPS = 48, 56
C_DOORBELLS, C_ERRORS, C_ABANDONS = 64, 72, 80

# mosn_ring_t: head and tail on lines of their own, then the entries
R_HEAD, R_TAIL, R_ENTRIES = 0, 64, 128

# mosn_slot_t
SLOT_HEADER_SIZE = 64
S_STATE, S_REQUEST_ID, S_SUBMIT_NS = 0, 8, 16
S_REQ_LEN, S_VERDICT_OFF, S_VERDICT_LEN = 24, 28, 32
S_ABANDONED, S_DEADLINE_NS = 36, 40
S_DATA = SLOT_HEADER_SIZE

# the request record: mosn_req_t, its fields, mosn_header_entry_t
REQ_CHAIN, REQ_METHOD, REQ_PATH, REQ_QUERY, REQ_ADDR = range(5)
REQ_PROTOCOL, REQ_BODY, REQ_HEADERS, REQ_META = 5, 6, 7, 8
REQ_NFIELDS = 9
REQ_F_BODY = 0x1  # the body field holds the (response's) body
REQ_F_RESPONSE = 0x2  # a response record (the response phase)
REQ_F_META = 0x4  # its meta field: the request's metadata
REQ = struct.Struct("<IIQII" + "II" * REQ_NFIELDS)
HEADER_ENTRY = struct.Struct("<III")

# the verdict: mosn_verdict_t, then records of mosn_record_t
ACTION_CONTINUE = 0  # proxy on, with edits
ACTION_REPLY = 1  # direct (hijack) reply
ACTION_ERROR = 2  # filter failed: fallback
REC_UPSTREAM, REC_META, REC_REQ_SET, REC_REQ_DEL = 1, 2, 3, 4
REC_RESP_ADD, REC_REPLY_HEADER, REC_REPLY_BODY, REC_LOG = 5, 6, 7, 8
REC_RESP_SET, REC_RESP_DEL, REC_RESP_BODY = 9, 10, 11
VERDICT_F_SENDERS = 0x1  # run the response phase
VERDICT_F_DECODE = 0x2  # hold compressed bodies too
VERDICT_MAX_RECORDS = 256
META_KEY_MAX = 64
VERDICT = struct.Struct("<IHHII")
RECORD = struct.Struct("<B3xII")

# the endpoint table: mosn_ep_app_t, mosn_ep_site_t, mosn_endpoint_t
EP_APPS = 16
EP_MAX = 256
EP_SITES = 32
EP_APP_NAME_MAX = 64  # bytes, the NUL included
EP_SITE_MAX = 32
EP_RR_ANY = EP_SITES
EP_INET, EP_INET6 = 4, 6
EP_NONE, EP_SITE, EP_ANY, EP_BUSY = 0, 1, 2, -1  # mosn_endpoints_pick()
EPA_SEQ, EPA_GENERATION, EPA_NENDPOINTS, EPA_NAME_LEN = 0, 4, 8, 12
EPA_NAME, EPA_RR, EPA_SITES, EPA_ENDPOINTS = 16, 128, 320, 1600
EP_APP_SIZE = 7744
EPA_HEAD = struct.Struct("<IIII64s")  # seq .. name
EP_SITE_ENTRY = struct.Struct("<HHI32s")  # first, count, name_len, name
ENDPOINT = struct.Struct("<BBHI16s")  # family, site, port, flags, addr

WAKE_DIR_SUFFIX = ".wake"
