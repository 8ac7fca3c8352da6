"""The API of _ring.pyx in pure Python: Region, Consumer and Producer over
the functions of region.py, producer.py, consumer.py, reaper.py and
endpoints.py, and requests and verdicts read and written in slots.
"""

import ctypes
import errno
import mmap
import os
import socket
import time

from shm_ring import codec
from shm_ring.abi import (
    ACTION_ERROR,
    CACHELINE,
    CHAN_CLAIMING,
    CHAN_DRAINING,
    CHAN_FREE,
    CHAN_OWNED,
    CHAN_REAPING,
    CONSUMER_SIZE,
    CONS_DEAD,
    CONS_DRAINING,
    CONS_EMPTY,
    CONS_LIVE,
    CONS_STARTING,
    C_ABANDONS,
    C_BATCHES,
    C_COMPLETED,
    C_DOORBELLS,
    C_ERRORS,
    C_INCARNATION,
    C_PID,
    C_SLEEPS,
    C_STATE,
    C_TAKEN,
    EPA_GENERATION,
    EP_ANY,
    EP_APPS,
    EP_APP_SIZE,
    EP_BUSY,
    EP_MAX,
    EP_NONE,
    HEADER,
    HEADER_ENTRY,
    H_CONSUMER_EPOCH,
    H_MAGIC,
    H_POOL_STATE,
    H_SUPERVISOR_PID,
    POOL_FAILED,
    POOL_RUNNING,
    POOL_STARTING,
    POOL_STOPPED,
    PRODUCER_SIZE,
    P_COMPLETED,
    P_COST_NS,
    P_DOORBELLS,
    P_FALLBACKS,
    P_FORGED,
    P_FUTEX_WAKES,
    P_IN_USE,
    P_NOTIFY_FD,
    P_OWNER,
    P_QUEUED,
    P_QUEUE_FULL,
    P_REFUSED,
    P_REQUEUED,
    P_STALE,
    P_SUBMITTED,
    P_TIMEOUTS,
    P_WAITING,
    RECORD,
    REC_RESP_BODY,
    REQ,
    REQ_ADDR,
    REQ_BODY,
    REQ_CHAIN,
    REQ_F_BODY,
    REQ_F_META,
    REQ_F_RESPONSE,
    REQ_HEADERS,
    REQ_META,
    REQ_METHOD,
    REQ_PATH,
    REQ_PROTOCOL,
    REQ_QUERY,
    RING_ABI_VERSION,
    RING_MAGIC,
    R_ENTRIES,
    SLOT_FREE,
    SLOT_HEADER_SIZE,
    SLOT_TAKEN,
    S_ABANDONED,
    S_DATA,
    S_DEADLINE_NS,
    S_REQ_LEN,
    S_STATE,
    S_VERDICT_LEN,
    S_VERDICT_OFF,
    U32,
    VERDICT,
    VERDICT_MAX_RECORDS,
    sw_consumer,
    sw_gen,
    sw_inc,
    sw_state,
)
from shm_ring.codec import RingError
from shm_ring.fallback.consumer import (
    _consumer_arm,
    _consumer_complete,
    _consumer_disarm,
    _consumer_doorbell_open,
    _consumer_flush,
    _consumer_pending,
    _consumer_start,
    _consumer_take,
    _consumer_wait,
)
from shm_ring.fallback.endpoints import (
    _endpoints_count,
    _endpoints_find,
    _endpoints_pick,
    _endpoints_read,
    _endpoints_set,
)
from shm_ring.fallback.producer import (
    _doorbell_addr,
    _producer_abandon,
    _producer_arm,
    _producer_claim,
    _producer_free,
    _producer_pick,
    _producer_poll,
    _producer_release,
    _producer_rescue,
    _producer_submit,
)
from shm_ring.fallback.reaper import _consumer_alloc, _consumer_retire, _reap
from shm_ring.fallback.region import (
    _align,
    _conf_check,
    _layout,
    _region_check,
    _shm_path,
    _unpack_header,
    _wake_dir,
    _wake_dir_check,
    _wake_dir_make,
    region_unlink,
)


ABI_VERSION = RING_ABI_VERSION
IMPLEMENTATION = "python"

BATCH_MAX = 256  # as _ring.pyx

_POOL_STATES = {
    POOL_STARTING: "starting",
    POOL_RUNNING: "running",
    POOL_FAILED: "failed",
    POOL_STOPPED: "stopped",
}
_POOL_STATE_CODES = {v: k for k, v in _POOL_STATES.items()}

_CONSUMER_STATES = {
    CONS_EMPTY: "empty",
    CONS_STARTING: "starting",
    CONS_LIVE: "live",
    CONS_DRAINING: "draining",
    CONS_DEAD: "dead",
}
_CHANNEL_STATES = {
    CHAN_FREE: "free",
    CHAN_CLAIMING: "claiming",
    CHAN_OWNED: "owned",
    CHAN_DRAINING: "draining",
    CHAN_REAPING: "reaping",
}


class Region:
    """An attached shared-memory region."""

    def __init__(self, name, fd, size, checked):
        self.name = name
        self._size = size
        self._mm = mmap.mmap(
            fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._u32 = memoryview(self._mm).cast("I")
        self._u64 = memoryview(self._mm).cast("Q")
        # the mapping's address, for the futex system call
        self._anchor = ctypes.c_char.from_buffer(self._mm)
        self._base = ctypes.addressof(self._anchor)
        self._sock = None
        self._wake_dir = _wake_dir(name)
        self._take_layout(checked)

    def _take_layout(self, h):
        """The layout of the header copy _region_check() passed; the live
        header is not read for it again."""
        self._np = h["nproducers"]
        self._nc = h["nconsumers"]
        self._slots = h["slots"]
        self._slot_size = h["slot_size"]
        self._producers_off = h["producers_off"]
        self._consumers_off = h["consumers_off"]
        self._rings_off = h["rings_off"]
        self._ring_bytes = h["ring_bytes"]
        self._slots_off = h["slots_off"]
        self._endpoints_off = h["endpoints_off"]

    @staticmethod
    def attach(name):
        wake_dir = _wake_dir(name)
        try:
            fd = os.open(_shm_path(name), os.O_RDWR | os.O_NOFOLLOW)
        except OSError as e:
            raise RingError(
                'shm_open("%s") failed: %s' % (name, os.strerror(e.errno))
            ) from None
        try:
            st = os.fstat(fd)
            if st.st_size <= 0:
                raise RingError('region "%s" is empty' % name)
            _wake_dir_check(wake_dir, st.st_uid)
            with mmap.mmap(
                fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ
            ) as image:
                # one copy of the header, checked, is all the layout used
                checked = _region_check(
                    bytes(image[: HEADER.size]), st.st_size
                )
            return Region(name, fd, st.st_size, checked)
        finally:
            os.close(fd)

    @staticmethod
    def create(name, nproducers=4, nconsumers=4, slots=64, slot_size=4096):
        why = _conf_check(nproducers, nconsumers, slots, slot_size)
        if why:
            raise RingError(why)
        wake_dir = _wake_dir(name)
        layout = _layout(nproducers, nconsumers, slots, slot_size)
        path = _shm_path(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # another user's: O_EXCL below says so
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
            )
        except OSError as e:
            raise RingError(
                'shm_open("%s") failed: %s%s'
                % (
                    name,
                    os.strerror(e.errno),
                    " (it belongs to another user: remove it)"
                    if e.errno == errno.EEXIST
                    else "",
                )
            ) from None
        try:
            _wake_dir_make(wake_dir)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        try:
            os.ftruncate(fd, layout["region_size"])
            image = HEADER.pack(
                0,
                ABI_VERSION,
                layout["header_size"],
                layout["region_size"],
                nproducers,
                nconsumers,
                slots,
                slot_size,
                layout["producers_off"],
                layout["consumers_off"],
                layout["rings_off"],
                layout["ring_bytes"],
                layout["slots_off"],
                0,
                0,
                int(time.time()) * 10**9,
                0,
                0,
                0,
                0,
                name.encode(),
                b"",
                layout["endpoints_off"],
                EP_APPS,
                EP_APP_SIZE,
            )
            os.pwrite(fd, image, 0)
            r = Region(name, fd, layout["region_size"], _unpack_header(image))
        except BaseException:
            region_unlink(name)
            raise
        finally:
            os.close(fd)
        # the magic goes last: a reader that sees it sees the layout
        r._u64[H_MAGIC >> 3] = RING_MAGIC
        return r

    @staticmethod
    def check_bytes(image):
        """Checks a region image as attach does; raises RingError."""
        _region_check(image, len(image))

    def close(self):
        if self._mm is None:
            return
        # every export of the mapping must go before it can be unmapped
        self._u32.release()
        self._u64.release()
        self._anchor = None
        self._mm.close()
        self._mm = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def unlink(self):
        """Removes the region's name and its wake-up directory."""
        region_unlink(self.name)

    def _live(self):
        if self._mm is None:
            raise RingError("region is closed")

    # shared words

    def ld32(self, off):
        return self._u32[off >> 2]

    def st32(self, off, v):
        self._u32[off >> 2] = v & U32

    def ld64(self, off):
        return self._u64[off >> 3]

    def st64(self, off, v):
        self._u64[off >> 3] = v

    def add64(self, off, n=1):
        """A counter bumped by its one writer."""
        self._u64[off >> 3] = (self._u64[off >> 3] + n) & 0xFFFFFFFFFFFFFFFF

    # mosn_producer(), mosn_consumer(), mosn_*_ring(), mosn_slot()

    def prod(self, p):
        return self._producers_off + _align(PRODUCER_SIZE, CACHELINE) * p

    def cons(self, c):
        return self._consumers_off + _align(CONSUMER_SIZE, CACHELINE) * c

    def submit_ring(self, p, c):
        return self._rings_off + self._ring_bytes * (2 * (p * self._nc + c))

    def completion_ring(self, p, c):
        return self._rings_off + self._ring_bytes * (
            2 * (p * self._nc + c) + 1
        )

    def slot(self, p, s):
        return self._slots_off + self._slot_size * (p * self._slots + s)

    def ring_entry(self, ring, i):
        return self.ld64(ring + R_ENTRIES + 8 * (i & (self._slots - 1)))

    # properties as _ring.pyx

    @property
    def nproducers(self):
        self._live()
        return self._np

    @property
    def nconsumers(self):
        self._live()
        return self._nc

    @property
    def slots(self):
        self._live()
        return self._slots

    @property
    def slot_size(self):
        self._live()
        return self._slot_size

    @property
    def size(self):
        return self._size

    @property
    def master_pid(self):
        self._live()
        return _unpack_header(self._mm)["master_pid"]

    @property
    def supervisor_pid(self):
        self._live()
        return self.ld32(H_SUPERVISOR_PID)

    @supervisor_pid.setter
    def supervisor_pid(self, pid):
        self._live()
        self.st32(H_SUPERVISOR_PID, pid)

    @property
    def consumer_epoch(self):
        self._live()
        return self.ld32(H_CONSUMER_EPOCH)

    @property
    def reload_seq(self):
        self._live()
        return _unpack_header(self._mm)["reload_seq"]

    @property
    def desired_workers(self):
        self._live()
        return _unpack_header(self._mm)["desired_workers"]

    @property
    def config_path(self):
        self._live()
        raw = _unpack_header(self._mm)["config_path"]
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    @property
    def pool_state(self):
        """starting, running, failed or stopped: whether nginx waits for
        a Python worker when none is live."""
        self._live()
        return _POOL_STATES.get(self.ld32(H_POOL_STATE), "?")

    @pool_state.setter
    def pool_state(self, state):
        self._live()
        self.st32(H_POOL_STATE, _POOL_STATE_CODES[state])

    # supervisor side

    def _sockfd(self):
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        return self._sock

    def alloc_consumer(self):
        self._live()
        return _consumer_alloc(self)

    def drain_consumer(self, c):
        """Stops new work for consumer c; it finishes what it holds."""
        self._live()
        if 0 <= c < self._nc:
            self.st32(self.cons(c) + C_STATE, CONS_DRAINING)

    def consumer_state(self, c):
        self._live()
        if not 0 <= c < self._nc:
            raise IndexError(c)
        return _CONSUMER_STATES.get(self.ld32(self.cons(c) + C_STATE), "?")

    def retire_consumer(self, c):
        self._live()
        _consumer_retire(self, c, self._sockfd())

    def reap(self):
        self._live()
        return _reap(self, self._sockfd())

    def slots_in_use(self):
        self._live()
        return sum(
            1
            for p in range(self._np)
            for s in range(self._slots)
            if sw_state(self.ld64(self.slot(p, s) + S_STATE)) != SLOT_FREE
        )

    def stats(self):
        """Counters of every producer channel and consumer, as dicts."""
        self._live()
        producers = []
        for i in range(self._np):
            o = self.prod(i)
            w = self.ld64(o + P_OWNER)
            producers.append(
                {
                    "index": i,
                    "pid": w >> 32,
                    "state": _CHANNEL_STATES.get(w & 0xFF, "?"),
                    "in_use": self.ld32(o + P_IN_USE),
                    "waiting": self.ld32(o + P_WAITING),
                    "submitted": self.ld64(o + P_SUBMITTED),
                    "completed": self.ld64(o + P_COMPLETED),
                    "stale": self.ld64(o + P_STALE),
                    "requeued": self.ld64(o + P_REQUEUED),
                    "timeouts": self.ld64(o + P_TIMEOUTS),
                    "fallbacks": self.ld64(o + P_FALLBACKS),
                    "futex_wakes": self.ld64(o + P_FUTEX_WAKES),
                    "doorbells": self.ld64(o + P_DOORBELLS),
                    "cost_ns": self.ld64(o + P_COST_NS),
                    "queued": self.ld64(o + P_QUEUED),
                    "queue_full": self.ld64(o + P_QUEUE_FULL),
                    "forged": self.ld64(o + P_FORGED),
                    "refused": self.ld64(o + P_REFUSED),
                }
            )
        consumers = []
        for i in range(self._nc):
            o = self.cons(i)
            consumers.append(
                {
                    "index": i,
                    "pid": self.ld32(o + C_PID),
                    "state": _CONSUMER_STATES.get(self.ld32(o + C_STATE), "?"),
                    "incarnation": self.ld32(o + C_INCARNATION),
                    "taken": self.ld64(o + C_TAKEN),
                    "completed": self.ld64(o + C_COMPLETED),
                    "batches": self.ld64(o + C_BATCHES),
                    "sleeps": self.ld64(o + C_SLEEPS),
                    "doorbells": self.ld64(o + C_DOORBELLS),
                    "errors": self.ld64(o + C_ERRORS),
                    "abandons": self.ld64(o + C_ABANDONS),
                }
            )
        return {
            "producers": producers,
            "consumers": consumers,
            "consumer_epoch": self.ld32(H_CONSUMER_EPOCH),
        }

    # the endpoint table (service discovery), see shm_ring.h

    def ep_app(self, i):
        """mosn_ep_app(): the offset of app entry i."""
        return self._endpoints_off + EP_APP_SIZE * i

    def set_endpoints(self, app, endpoints):
        """Writes the endpoints of app, [(host, port, site), ...], in one
        seqlocked write; [] empties it.  Only the supervisor writes.
        Returns the app's new generation."""
        name = codec.endpoint_app(app)
        specs = [codec.endpoint_spec(*e) for e in endpoints]
        self._live()
        if len(specs) > EP_MAX:
            raise RingError(
                "app %r: %d endpoints, at most %d fit"
                % (app, len(specs), EP_MAX)
            )
        idx = _endpoints_set(self, name, specs)
        return self.ld32(self.ep_app(idx) + EPA_GENERATION)

    def _ep_copy(self, name):
        """A checked snapshot of app name's entry, or None if no such app."""
        for _ in range(3):
            idx = _endpoints_find(self, name)
            if idx == -1:
                return None
            if idx < 0:
                raise RingError(
                    "the endpoint table is being written or "
                    "corrupt: app %r not found" % name.decode()
                )
            snap = _endpoints_read(self, idx)
            if snap is None:
                raise RingError(
                    "the endpoint table of app %r is being "
                    "written or corrupt" % name.decode()
                )
            if snap["name"] == name:
                return snap
        return None

    def endpoints(self, app):
        """[(host, port, site), ...] of app, in table order (by site)."""
        name = codec.endpoint_app(app)
        self._live()
        snap = self._ep_copy(name)
        if snap is None:
            return []
        return [
            (
                codec.endpoint_host(family, addr),
                port,
                snap["sites"][site][3].decode("utf-8", "replace"),
            )
            for family, site, port, _, addr in snap["endpoints"]
        ]

    def endpoint_generation(self, app):
        """How many times app's endpoints were written; 0 if never."""
        name = codec.endpoint_app(app)
        self._live()
        n, gen = _endpoints_count(self, name)
        if n < 0:
            raise RingError(
                "the endpoint table of app %r is being written "
                "or corrupt" % app
            )
        return gen

    def endpoint_apps(self):
        """Names of the apps in the endpoint table (empty ones included)."""
        self._live()
        out = []
        for i in range(EP_APPS):
            snap = _endpoints_read(self, i)
            if snap is not None and snap["name"]:
                out.append(snap["name"].decode("utf-8", "replace"))
        return out

    def pick_endpoint(self, app, site="", tried=()):
        """The module's choice, as nginx makes it: (host, port, fallback)
        from site's endpoints round robin, else from any endpoint of app
        (fallback True), skipping the (host, port) pairs tried; None if
        none is left."""
        name = codec.endpoint_app(app)
        self._live()
        seen = [
            codec.endpoint_spec(host, port, "-")[:3]
            for host, port in list(tried)[:EP_MAX]
        ]
        rc, ep = _endpoints_pick(self, name, site.encode("utf-8"), seen)
        if rc == EP_BUSY:
            raise RingError(
                "the endpoint table of app %r is being written "
                "or corrupt" % app
            )
        if rc == EP_NONE:
            return None
        return codec.endpoint_host(ep[0], ep[1]), ep[2], rc == EP_ANY

    def consumer(self, index):
        """Registers this process as consumer `index` (from alloc)."""
        return Consumer(self, index)

    def producer(self):
        """Claims a producer channel for this process (tests, tools)."""
        return Producer(self)


# requests and verdicts in slots


class SlotRequest:
    """A request record, copied out of its slot and checked.  ``ps``,
    ``gen``, ``deadline_ns`` and ``abandoned`` as in _ring.pyx."""

    __slots__ = (
        "_rec",
        "_fields",
        "_flags",
        "_table",
        "nheaders",
        "request_id",
        "_status",
        "_rg",
        "_slot",
        "ps",
        "gen",
    )

    @property
    def deadline_ns(self):
        if self._rg is None:
            return 0
        return self._rg.ld64(self._slot + S_DEADLINE_NS)

    @property
    def abandoned(self):
        return (
            self._rg is not None
            and self._rg.ld32(self._slot + S_ABANDONED) == self.gen
        )

    def _field(self, i):
        off, n = self._fields[i]
        return self._rec[off : off + n].decode("latin-1")

    @property
    def chain(self):
        return self._field(REQ_CHAIN)

    @property
    def method(self):
        return self._field(REQ_METHOD)

    @property
    def path(self):
        return self._field(REQ_PATH)

    @property
    def query(self):
        return self._field(REQ_QUERY)

    @property
    def remote_addr(self):
        return self._field(REQ_ADDR)

    @property
    def protocol(self):
        return self._field(REQ_PROTOCOL)

    @property
    def is_response(self):
        """A response record: the headers are the upstream's response."""
        return bool(self._flags & REQ_F_RESPONSE)

    @property
    def status(self):
        """The response status of a response record, else 0."""
        return self._status if self._flags & REQ_F_RESPONSE else 0

    @property
    def metadata(self):
        """The request's metadata, on a response record; else {}."""
        if not self._flags & REQ_F_META:
            return {}
        off, n = self._fields[REQ_META]
        return codec.decode_metadata(self._rec[off : off + n])

    @property
    def body(self):
        if not self._flags & REQ_F_BODY:
            return None
        off, n = self._fields[REQ_BODY]
        return self._rec[off : off + n]

    def _entries(self):
        """(name, value) byte pairs whose lengths fit the record."""
        for i in range(self.nheaders):
            off, nlen, vlen = HEADER_ENTRY.unpack_from(
                self._rec, self._table + i * HEADER_ENTRY.size
            )
            if off + nlen + vlen <= len(self._rec):
                yield (
                    self._rec[off : off + nlen],
                    self._rec[off + nlen : off + nlen + vlen],
                )

    def header_get(self, name, default=None):
        """The first value of one header, name matched without case, or
        default."""
        values = self.header_get_all(name.lower())
        return values[0] if values else default

    def header_get_all(self, lname):
        """Values of one header, name matched without case."""
        key = lname.encode("latin-1").lower()
        return [
            v.decode("latin-1")
            for n, v in self._entries()
            if len(n) == len(key) and n.lower() == key
        ]

    def header_items(self):
        return [
            (n.decode("latin-1"), v.decode("latin-1"))
            for n, v in self._entries()
        ]


def _slot_request(mm, data, data_size):
    """_slot_request() of _ring.pyx: checks the record at mm[data:] against
    the slot's data_size; None if malformed."""
    if data_size < REQ.size:
        return None
    vals = REQ.unpack_from(mm, data)
    rec_len, nheaders, request_id, flags = vals[:4]
    if rec_len < REQ.size or rec_len > data_size:
        return None
    fields = list(zip(vals[5::2], vals[6::2]))
    if any(off + n > rec_len for off, n in fields):
        return None
    if (
        fields[REQ_HEADERS][1] != nheaders * HEADER_ENTRY.size
        or fields[REQ_HEADERS][0] % 4
    ):
        return None
    r = SlotRequest()
    r._rec = mm[data : data + rec_len]
    r._fields = fields
    r._flags = flags
    r._status = vals[4]
    r._table = fields[REQ_HEADERS][0]
    r.nheaders = nheaders
    r.request_id = request_id
    r._rg = None
    r._slot = 0
    r.ps = 0
    r.gen = 0
    return r


def _encode_verdict(v, cap):
    """_write_verdict() of _ring.pyx: a Verdict (or None, or a metadata
    dict: the CONTINUE verdict with that metadata only) as bytes."""
    if cap < VERDICT.size:
        raise RingError("no room for a verdict in the slot")
    if type(v) is dict:
        v = codec.Verdict(metadata=v)
    buf = codec.encode_verdict(v)
    nrecords = VERDICT.unpack_from(buf)[3]
    if len(buf) > cap and v.response_body is not None:
        # the body is written after these records: what they left
        pos = VERDICT.size
        for t, key, value in codec.verdict_records(v)[3]:
            if t == REC_RESP_BODY:
                break
            pos += RECORD.size + len(key) + len(value)
        left = max(cap - pos - RECORD.size, 0)
        if len(v.response_body) > left:
            raise RingError(
                "the new response body of %d bytes does not "
                "fit in the slot (%d bytes left; see "
                "mosn_slot_size)" % (len(v.response_body), left)
            )
    if len(buf) > cap or nrecords > VERDICT_MAX_RECORDS:
        raise RingError("verdict does not fit in the slot")
    return buf


def _error_verdict(cap, why):
    """_write_error() of _ring.pyx: fallback, with the reason logged."""
    if cap < VERDICT.size:
        # not even a header fits: nothing is written past the slot, and
        # the module refuses the empty verdict and takes the fallback
        return b""
    msg = why.encode("utf-8", "replace")[:200]
    need = VERDICT.size + RECORD.size + len(msg)
    if need > cap:
        return VERDICT.pack(VERDICT.size, ACTION_ERROR, 0, 0, 0)
    return (
        VERDICT.pack(need, ACTION_ERROR, 0, 1, 0)
        + RECORD.pack(codec.REC_LOG, 0, len(msg))
        + msg
    )


class Consumer:
    """This process as one consumer of the region (a Python worker)."""

    def __init__(self, region, index):
        region._live()
        if not 0 <= index < region._nc:
            raise RingError(
                "consumer index %d is not in 0..%d" % (index, region._nc - 1)
            )
        self.region = region
        self.index = index
        self._wake_mask = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.incarnation = _consumer_start(region, index, os.getpid())

    def take(self, max=64):
        return _consumer_take(self.region, self.index, min(max, BATCH_MAX))

    def _slot(self, ps):
        p, s = ps >> 32, ps & U32
        if p >= self.region._np or s >= self.region._slots:
            raise RingError("no slot %d/%d" % (p, s))
        return self.region.slot(p, s)

    def request(self, ps):
        slot = self._slot(ps)
        req = _slot_request(
            self.region._mm,
            slot + S_DATA,
            self.region._slot_size - SLOT_HEADER_SIZE,
        )
        if req is not None:
            req._rg = self.region
            req._slot = slot
            req.ps = ps
            req.gen = sw_gen(self.region.ld64(slot + S_STATE))
        return req

    @property
    def abandons(self):
        """How many times producers gave up on a slot this consumer held."""
        return self.region.ld64(self.region.cons(self.index) + C_ABANDONS)

    def complete(self, ps, verdict=None, gen=None):
        """Writes the verdict (a Verdict, None, a metadata dict, or encoded
        bytes).  With gen, only into the request of that generation."""
        rg = self.region
        slot = self._slot(ps)
        w = rg.ld64(slot + S_STATE)
        if gen is not None and sw_gen(w) != gen:
            return False
        if (
            sw_state(w) != SLOT_TAKEN
            or sw_consumer(w) != self.index
            or sw_inc(w)
            != self.region.ld32(self.region.cons(self.index) + C_INCARNATION)
            & 0xFFFF
        ):
            # taken back: someone else's slot now; refused and counted
            _consumer_complete(rg, self.index, ps >> 32, ps & U32)
            return False
        data_size = rg._slot_size - SLOT_HEADER_SIZE
        req_len = min(rg.ld32(slot + S_REQ_LEN), data_size)
        off = min((req_len + 7) & ~7, data_size)
        cap = data_size - off
        if type(verdict) is bytes:
            buf = verdict
            if len(buf) > cap:
                buf = _error_verdict(cap, "verdict does not fit in the slot")
        else:
            try:
                buf = _encode_verdict(verdict, cap)
            except (
                RingError,
                UnicodeEncodeError,
                TypeError,
                AttributeError,
            ) as e:
                buf = _error_verdict(cap, "verdict not encodable: %s" % (e,))
        start = slot + S_DATA + off
        rg._mm[start : start + len(buf)] = buf
        rg.st32(slot + S_VERDICT_OFF, off)
        rg.st32(slot + S_VERDICT_LEN, len(buf))
        p = _consumer_complete(rg, self.index, ps >> 32, ps & U32)
        if p < 0:
            return False
        self._wake_mask |= 1 << p
        return True

    def flush(self):
        """Rings the doorbells of producers that sleep; returns how many."""
        n = _consumer_flush(
            self.region, self.index, self._sock, self._wake_mask
        )
        self._wake_mask = 0
        return n

    _spin = 0.0

    def set_spin(self, microseconds):
        """How long wait() looks for work before it sleeps."""
        self._spin = microseconds / 1e6

    def wait(self, timeout_ms=-1):
        """Sleeps until work arrives or the timeout; True if work waits."""
        if self._spin:
            until = time.perf_counter() + self._spin
            while time.perf_counter() < until:
                if _consumer_pending(self.region, self.index):
                    return True
        return _consumer_wait(self.region, self.index, timeout_ms)

    def pending(self):
        return _consumer_pending(self.region, self.index)

    _wake = None

    def fileno(self):
        """The consumer's wake descriptor, for an event loop: it becomes
        readable when a producer submits work while the consumer is armed.
        Opened on first use; closed with the Consumer."""
        if self._wake is None:
            self.region._live()
            self._wake = _consumer_doorbell_open(self.region, self.index)
        return self._wake.fileno()

    def arm(self):
        """Says the consumer is about to sleep in its event loop: from now
        on a producer that submits work rings fileno().  True if work is
        already waiting (serve it instead of sleeping), False if armed."""
        self.fileno()
        return _consumer_arm(self.region, self.index)

    def disarm(self):
        """Called when fileno() is readable (or before serving for any
        other reason): drains the descriptor and stops producers ringing
        it.  True if work waits."""
        return _consumer_disarm(self.region, self.index, self._wake)

    def close(self):
        """Closes the wake descriptor; the consumer can still wait()."""
        if self._wake is not None:
            _consumer_disarm(self.region, self.index, None)
            self._wake.close()
            self._wake = None

    @property
    def state(self):
        return _CONSUMER_STATES.get(
            self.region.ld32(self.region.cons(self.index) + C_STATE)
        )

    def serve_batch(self, dispatch, max=64):
        """Takes a batch, runs dispatch(request) on each, writes verdicts,
        rings the producers once.  Returns how many were taken.  A dispatch
        that returns PENDING answers later, with complete().  A dispatch
        that raises answers its request with an error verdict that names
        the exception, and the rest of the batch is served."""
        batch = self.take(max)
        for ps in batch:
            req = self.request(ps)
            if req is None:
                self.complete(ps, codec.Verdict.error("malformed request"))
                continue
            try:
                verdict = dispatch(req)
            except Exception as e:
                verdict = codec.Verdict.error(
                    "the dispatch failed: %s: %s" % (type(e).__name__, e)
                )
            if verdict is not codec.PENDING:
                self.complete(ps, verdict)
        if batch:
            self.flush()
        return len(batch)


class Producer:
    """A producer channel driven from Python: for tests and tools.
    The nginx module is the real producer."""

    def __init__(self, region):
        region._live()
        self.region = region
        self._rr = 0
        self.index = _producer_claim(region, os.getpid())
        if self.index < 0:
            raise RingError("no free producer channel")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        addr = _doorbell_addr(region, self.index)
        try:
            # left by an earlier owner of the channel that crashed
            os.unlink(addr)
        except OSError:
            pass
        try:
            self._sock.bind(addr)
        except OSError as e:
            self._sock.close()
            _producer_release(region, self.index)
            raise RingError(
                'cannot bind the doorbell "%s": %s'
                % (addr, os.strerror(e.errno))
            ) from None
        self._sock.setblocking(False)

    def fileno(self):
        return self._sock.fileno() if self._sock is not None else -1

    _notify = -1

    def notify_fileno(self):
        """The channel's eventfd, opened on first use (as nginx does):
        consumers that can copy it wake this producer through it."""
        if self._notify < 0:
            self._notify = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.region.st32(
                self.region.prod(self.index) + P_NOTIFY_FD, self._notify
            )
        return self._notify

    def drain_notify(self):
        try:
            return os.eventfd_read(self._notify)
        except OSError:
            return 0

    def release(self):
        if self._sock is not None:
            try:
                os.unlink(_doorbell_addr(self.region, self.index))
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._notify >= 0:
            self.region.st32(self.region.prod(self.index) + P_NOTIFY_FD, U32)
            os.close(self._notify)
            self._notify = -1
        _producer_release(self.region, self.index)

    def _check_slot(self, slot):
        if not 0 <= slot < self.region._slots:
            raise RingError("no slot %d" % slot)

    def submit(self, slot, record, consumer=-1, deadline_ns=0):
        """Copies a request record into the slot and publishes it, with
        its deadline (CLOCK_MONOTONIC ns, 0: none).
        Returns (consumer, gen), or None if no consumer or no room."""
        rg = self.region
        self._check_slot(slot)
        if len(record) > rg._slot_size - SLOT_HEADER_SIZE:
            raise RingError("record does not fit in a slot")
        if consumer < 0:
            picked = _producer_pick(rg, self.index, self._rr)
            if picked is None:
                return None
            c, inc, self._rr = picked
        else:
            if consumer >= rg._nc:
                raise RingError("no consumer %d" % consumer)
            c = consumer
            inc = rg.ld32(rg.cons(c) + C_INCARNATION) & 0xFFFF
        sl = rg.slot(self.index, slot)
        rg._mm[sl + S_DATA : sl + S_DATA + len(record)] = record
        rg.st32(sl + S_REQ_LEN, len(record))
        rg.st32(sl + S_VERDICT_LEN, 0)
        rg.st64(sl + S_DEADLINE_NS, deadline_ns)
        gen = _producer_submit(rg, self.index, slot, c, inc)
        if gen is None:
            return None
        return (c, gen)

    def poll(self, max=64):
        return _producer_poll(self.region, self.index, min(max, BATCH_MAX))

    def verdict(self, slot):
        """The verdict bytes, checked against the slot as nginx does."""
        rg = self.region
        self._check_slot(slot)
        sl = rg.slot(self.index, slot)
        data_size = rg._slot_size - SLOT_HEADER_SIZE
        off = rg.ld32(sl + S_VERDICT_OFF)
        n = rg.ld32(sl + S_VERDICT_LEN)
        if off > data_size or n > data_size - off:
            raise RingError("verdict overruns the slot")
        start = sl + S_DATA + off
        return bytes(rg._mm[start : start + n])

    def free(self, slot):
        self._check_slot(slot)
        _producer_free(self.region, self.index, slot)

    def arm(self):
        return _producer_arm(self.region, self.index)

    def abandon(self, slot, gen):
        """Gives up on the request of generation gen in the slot, as nginx
        does when its client goes away."""
        self._check_slot(slot)
        _producer_abandon(self.region, self.index, slot, gen)

    def drain_doorbell(self):
        n = 0
        while self._sock is not None:
            try:
                self._sock.recv(64)
            except OSError:
                break
            n += 1
        return n

    def rescue(self):
        out, self._rr = _producer_rescue(
            self.region, self.index, self._rr, BATCH_MAX
        )
        return out

    def slot_state(self, slot):
        self._check_slot(slot)
        w = self.region.ld64(self.region.slot(self.index, slot) + S_STATE)
        return (sw_state(w), sw_consumer(w), sw_inc(w), sw_gen(w))


def validate_verdict(buf):
    """The decoder's verdict: None if valid, else the reason."""
    return codec.validate_verdict(buf)


def parse_request(record):
    """The Python workers' record parser on a record held in bytes: a
    SlotRequest, or None if malformed."""
    return _slot_request(record, 0, len(record))
