# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True
"""The ring's Cython binding: the consumer side for Python workers, the
supervisor's housekeeping, and a producer side for tests and benchmarks.

Blocking waits release the GIL.  Records are read in place from the slot
and verdicts are written in place, so a request costs no copy beyond the
strings a filter asks for.
"""

import os
import socket

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.errno cimport errno
from libc.string cimport memcmp, memcpy, memset, strncasecmp

cdef extern from "string.h":
    size_t strnlen(const char *s, size_t maxlen)

cdef extern from "Python.h":
    # an ASCII str is its own latin-1 (and UTF-8) encoding, read in place
    bint PyUnicode_IS_COMPACT_ASCII(object)
    const char *PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)

from shm_ring.shm_ring cimport *
from shm_ring.codec cimport Verdict as _Verdict

from shm_ring.codec import (PENDING, RingError, Verdict, decode_metadata,
                            endpoint_app as _ep_app,
                            endpoint_host as _ep_host,
                            endpoint_spec as _ep_spec)

# verdicts are read as the compiled Verdict's fields: a codec.py left
# uncompiled lays its __slots__ out otherwise (and in the same size), so
# this binding refuses to load and the pure ring serves instead
if type(Verdict.__dict__["action"]).__name__ != "getset_descriptor":
    raise ImportError("shm_ring.codec is not compiled: shm_ring._ring "
                      "reads its Verdict as the compiled type")

ABI_VERSION = MOSN_RING_ABI_VERSION
assert MOSN_WAKE_WORDS == 4, "Consumer.wake_mask is 4 words"
IMPLEMENTATION = "cython"

cdef object _PENDING = PENDING

DEF BATCH_MAX = 256

cdef dict _CONSUMER_STATES = {
    MOSN_CONS_EMPTY: "empty", MOSN_CONS_STARTING: "starting",
    MOSN_CONS_LIVE: "live", MOSN_CONS_DRAINING: "draining",
    MOSN_CONS_DEAD: "dead",
}
cdef dict _POOL_STATES = {
    MOSN_POOL_STARTING: "starting", MOSN_POOL_RUNNING: "running",
    MOSN_POOL_FAILED: "failed", MOSN_POOL_STOPPED: "stopped",
}
cdef dict _POOL_STATE_CODES = {v: k for k, v in _POOL_STATES.items()}

cdef dict _CHANNEL_STATES = {
    MOSN_CHAN_FREE: "free", MOSN_CHAN_CLAIMING: "claiming",
    MOSN_CHAN_OWNED: "owned", MOSN_CHAN_DRAINING: "draining",
    MOSN_CHAN_REAPING: "reaping",
}


cdef class Region:
    """An attached shared-memory region."""

    cdef mosn_region_t rg
    cdef readonly str name
    cdef object _sock

    def __cinit__(self):
        self.rg.hdr = NULL

    @staticmethod
    def attach(str name):
        cdef Region r = Region.__new__(Region)
        cdef char err[256]
        if mosn_region_attach(&r.rg, name.encode(), err, sizeof(err)) != 0:
            raise RingError(err.decode(errors="replace"))
        r.name = name
        return r

    @staticmethod
    def create(str name, int nproducers=4, int nconsumers=4, int slots=64,
               int slot_size=4096):
        cdef Region r = Region.__new__(Region)
        cdef char err[256]
        cdef mosn_region_conf_t conf
        conf.nproducers = nproducers
        conf.nconsumers = nconsumers
        conf.slots = slots
        conf.slot_size = slot_size
        if mosn_region_create(&r.rg, name.encode(), &conf, -1, -1, err,
                              sizeof(err)) != 0:
            raise RingError(err.decode(errors="replace"))
        r.name = name
        return r

    @staticmethod
    def check_bytes(bytes image):
        """Checks a region image as attach does; raises RingError."""
        cdef char err[256]
        if mosn_region_check(PyBytes_AS_STRING(image), len(image), err,
                             sizeof(err)) != 0:
            raise RingError(err.decode(errors="replace"))

    def close(self):
        mosn_region_detach(&self.rg)

    def unlink(self):
        """Removes the region's name and its wake-up directory."""
        mosn_region_unlink(self.name.encode())

    def __dealloc__(self):
        mosn_region_detach(&self.rg)

    cdef inline void _live(self) except *:
        if self.rg.hdr == NULL:
            raise RingError("region is closed")

    @property
    def nproducers(self):
        self._live()
        return self.rg.nproducers

    @property
    def nconsumers(self):
        self._live()
        return self.rg.nconsumers

    @property
    def slots(self):
        self._live()
        return self.rg.slots

    @property
    def slot_size(self):
        self._live()
        return self.rg.slot_size

    @property
    def size(self):
        return self.rg.size

    @property
    def master_pid(self):
        self._live()
        return self.rg.hdr.master_pid

    @property
    def supervisor_pid(self):
        self._live()
        return self.rg.hdr.supervisor_pid

    @supervisor_pid.setter
    def supervisor_pid(self, int pid):
        self._live()
        self.rg.hdr.supervisor_pid = pid

    @property
    def consumer_epoch(self):
        self._live()
        return self.rg.hdr.consumer_epoch

    @property
    def reload_seq(self):
        self._live()
        return self.rg.hdr.reload_seq

    @property
    def desired_workers(self):
        self._live()
        return self.rg.hdr.desired_workers

    @property
    def config_path(self):
        cdef const char *raw
        self._live()
        # a writer may have left it unterminated: read within its bounds
        raw = self.rg.hdr.config_path
        return PyBytes_FromStringAndSize(raw, strnlen(raw, MOSN_PATH_MAX)) \
            .decode(errors="replace")

    @property
    def pool_state(self):
        """starting, running, failed or stopped: whether nginx waits for
        a Python worker when none is live."""
        self._live()
        return _POOL_STATES.get(self.rg.hdr.pool_state, "?")

    @pool_state.setter
    def pool_state(self, str state):
        self._live()
        self.rg.hdr.pool_state = _POOL_STATE_CODES[state]

    cdef int _sockfd(self) except -1:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        return self._sock.fileno()

    def alloc_consumer(self):
        self._live()
        return mosn_consumer_alloc(&self.rg)

    def drain_consumer(self, int c):
        """Stops new work for consumer c; it finishes what it holds."""
        self._live()
        if 0 <= c < <int> self.rg.nconsumers:
            mosn_consumer(&self.rg, c).state = MOSN_CONS_DRAINING

    def consumer_state(self, int c):
        self._live()
        if not 0 <= c < <int> self.rg.nconsumers:
            raise IndexError(c)
        return _CONSUMER_STATES.get(mosn_consumer(&self.rg, c).state, "?")

    def retire_consumer(self, int c):
        self._live()
        mosn_consumer_retire(&self.rg, c, self._sockfd())

    def reap(self):
        self._live()
        return mosn_reap(&self.rg, self._sockfd())

    def slots_in_use(self):
        self._live()
        return mosn_slots_in_use(&self.rg)

    def stats(self):
        """Counters of every producer channel and consumer, as dicts."""
        cdef uint32_t i
        cdef mosn_producer_t *p
        cdef mosn_consumer_t *c
        self._live()
        producers = []
        for i in range(self.rg.nproducers):
            p = mosn_producer(&self.rg, i)
            producers.append({
                "index": i, "pid": MOSN_OWNER_PID(p.owner),
                "state": _CHANNEL_STATES.get(MOSN_OWNER_STATE(p.owner), "?"),
                "in_use": p.in_use, "waiting": p.waiting,
                "submitted": p.submitted,
                "completed": p.completed, "stale": p.stale,
                "requeued": p.requeued, "timeouts": p.timeouts,
                "fallbacks": p.fallbacks, "futex_wakes": p.futex_wakes,
                "doorbells": p.doorbells, "cost_ns": p.cost_ns,
                "queued": p.queued, "queue_full": p.queue_full,
                "forged": p.forged, "refused": p.refused,
            })
        consumers = []
        for i in range(self.rg.nconsumers):
            c = mosn_consumer(&self.rg, i)
            consumers.append({
                "index": i, "pid": c.pid,
                "state": _CONSUMER_STATES.get(c.state, "?"),
                "incarnation": c.incarnation, "taken": c.taken,
                "completed": c.completed, "batches": c.batches,
                "sleeps": c.sleeps, "doorbells": c.doorbells,
                "errors": c.errors, "abandons": c.abandons,
            })
        return {"producers": producers, "consumers": consumers,
                "consumer_epoch": self.rg.hdr.consumer_epoch}

    # the endpoint table (service discovery), see shm_ring.h

    def set_endpoints(self, str app, endpoints):
        """Writes the endpoints of app, [(host, port, site), ...], in one
        seqlocked write; [] empties it.  Only the supervisor writes.
        Returns the app's new generation."""
        cdef bytes name = _ep_app(app)
        cdef list specs = [_ep_spec(*e) for e in endpoints]
        cdef uint32_t n = len(specs), i
        cdef mosn_ep_spec_t spec[256]
        cdef char err[256]
        cdef int idx
        cdef bytes addr
        self._live()
        if n > MOSN_EP_MAX:
            raise RingError("app %r: %d endpoints, at most %d fit"
                            % (app, n, MOSN_EP_MAX))
        memset(spec, 0, sizeof(spec))
        for i in range(n):
            family, addr, port, site = specs[i]
            spec[i].ep.family = family
            spec[i].ep.port = port
            memcpy(spec[i].ep.addr, PyBytes_AS_STRING(addr), 16)
            spec[i].site = PyBytes_AS_STRING(site)
            spec[i].site_len = len(site)
        idx = mosn_endpoints_set(&self.rg, PyBytes_AS_STRING(name),
                                 len(name), spec, n, err, sizeof(err))
        if idx < 0:
            raise RingError(err.decode(errors="replace"))
        return mosn_ep_app(&self.rg, idx).generation

    cdef int _ep_copy(self, bytes name, mosn_ep_app_t *copy) except -2:
        """A checked copy of app name's entry: 0, or -1 if no such app."""
        cdef int idx, tries
        for tries in range(3):
            idx = mosn_endpoints_find(&self.rg, PyBytes_AS_STRING(name),
                                      len(name))
            if idx == -1:
                return -1
            if idx < 0:
                raise RingError("the endpoint table is being written or "
                                "corrupt: app %r not found" % name.decode())
            if mosn_endpoints_read(&self.rg, idx, copy) != 0:
                raise RingError("the endpoint table of app %r is being "
                                "written or corrupt" % name.decode())
            if (copy.name_len == <uint32_t> len(name)
                    and copy.name[:copy.name_len] == name):
                return 0
        return -1

    def endpoints(self, str app):
        """[(host, port, site), ...] of app, in table order (by site)."""
        cdef bytes name = _ep_app(app)
        cdef mosn_ep_app_t copy
        cdef mosn_endpoint_t *e
        cdef uint32_t i
        self._live()
        if self._ep_copy(name, &copy) < 0:
            return []
        out = []
        for i in range(copy.nendpoints):
            e = &copy.endpoints[i]
            out.append((_ep_host(e.family, e.addr[:16]), e.port,
                        copy.sites[e.site].name[:copy.sites[e.site].name_len]
                        .decode("utf-8", "replace")))
        return out

    def endpoint_generation(self, str app):
        """How many times app's endpoints were written; 0 if never."""
        cdef bytes name = _ep_app(app)
        cdef uint32_t gen = 0
        self._live()
        if mosn_endpoints_count(&self.rg, PyBytes_AS_STRING(name),
                                len(name), &gen) < 0:
            raise RingError("the endpoint table of app %r is being written "
                            "or corrupt" % app)
        return gen

    def endpoint_apps(self):
        """Names of the apps in the endpoint table (empty ones included)."""
        cdef uint32_t i
        cdef mosn_ep_app_t copy
        self._live()
        out = []
        for i in range(MOSN_EP_APPS):
            if mosn_endpoints_read(&self.rg, i, &copy) == 0 \
                    and copy.name_len:
                out.append(copy.name[:copy.name_len].decode("utf-8",
                                                            "replace"))
        return out

    def pick_endpoint(self, str app, str site="", tried=()):
        """The module's choice, as nginx makes it: (host, port, fallback)
        from site's endpoints round robin, else from any endpoint of app
        (fallback True), skipping the (host, port) pairs tried; None if
        none is left."""
        cdef bytes name = _ep_app(app)
        cdef bytes key = site.encode("utf-8")
        cdef mosn_endpoint_t out
        cdef mosn_endpoint_t seen[256]
        cdef uint32_t n = 0
        cdef int rc
        cdef bytes addr
        self._live()
        for host, port in tried:
            if n == 256:
                break
            family, addr, port, _ = _ep_spec(host, port, "-")
            memset(&seen[n], 0, sizeof(mosn_endpoint_t))
            seen[n].family = family
            seen[n].port = port
            memcpy(seen[n].addr, PyBytes_AS_STRING(addr), 16)
            n += 1
        rc = mosn_endpoints_pick(&self.rg, PyBytes_AS_STRING(name),
                                 len(name), PyBytes_AS_STRING(key), len(key),
                                 seen, n, &out)
        if rc == MOSN_EP_BUSY:
            raise RingError("the endpoint table of app %r is being written "
                            "or corrupt" % app)
        if rc == MOSN_EP_NONE:
            return None
        return (_ep_host(out.family, out.addr[:16]), out.port,
                rc == MOSN_EP_ANY)

    def consumer(self, int index):
        """Registers this process as consumer `index` (from alloc)."""
        return Consumer(self, index)

    def producer(self):
        """Claims a producer channel for this process (tests, benches)."""
        return Producer(self)


cdef str _last_chain = ""


cdef class SlotRequest:
    """A request record, read in place, while its slot holds it: a read
    after nginx took the verdict back and reused the slot (a filter that
    kept the request past its verdict) raises RingError rather than show
    another request's data.

    ``ps`` and ``gen`` name the slot and the request in it (hand them to
    Consumer.complete() to answer later); ``deadline_ns`` is when nginx
    stops waiting (CLOCK_MONOTONIC, 0 for none) and ``abandoned`` is true
    once nginx gave up on the request before that (its client went away).
    """

    cdef const uint8_t *rec
    cdef uint32_t rec_len
    cdef mosn_req_t req                 # the record's head, copied once
    cdef const mosn_header_entry_t *table
    cdef object _owner                  # what rec points into, if not a slot
    cdef const mosn_slot_t *slot
    cdef readonly uint32_t nheaders
    cdef readonly uint64_t request_id
    cdef readonly uint64_t ps
    cdef readonly uint32_t gen

    @property
    def deadline_ns(self):
        return self.slot.deadline_ns if self.slot != NULL else 0

    @property
    def abandoned(self):
        # a fresh read each call: another process writes it
        return self.slot != NULL and self.slot.abandoned == self.gen

    cdef int _still_held(self) except -1:
        """After a read: RingError unless the slot held this request all
        along (this generation, taken or answered, neither freed nor
        reused), so that a read of another request's data is thrown
        away."""
        cdef uint64_t w
        if self.slot == NULL:
            return 0
        w = mosn_load_after(&self.slot.state)
        if MOSN_SW_GEN(w) == self.gen and (
                MOSN_SW_STATE(w) == MOSN_SLOT_TAKEN
                or MOSN_SW_STATE(w) == MOSN_SLOT_DONE):
            return 0
        raise RingError("request %d was read after its verdict, from a "
                        "slot that holds another request now"
                        % self.request_id)

    cdef str _field(self, int i):
        cdef mosn_field_t f = self.req.field[i]
        cdef str value = PyUnicode_DecodeLatin1(
            <const char *> self.rec + f.off, f.len, NULL)
        self._still_held()
        return value

    @property
    def chain(self):
        # records name few chains: the last name read is handed back as
        # it is, so the listener lookup finds its hash already computed
        global _last_chain
        cdef mosn_field_t f = self.req.field[MOSN_REQ_CHAIN]
        cdef str name = _last_chain
        if (PyUnicode_GET_LENGTH(name) == f.len
                and memcmp(PyUnicode_DATA(name), self.rec + f.off,
                           f.len) == 0):
            self._still_held()
            return name
        name = self._field(MOSN_REQ_CHAIN)
        if PyUnicode_IS_COMPACT_ASCII(name):
            _last_chain = name
        return name

    @property
    def method(self):
        return self._field(MOSN_REQ_METHOD)

    @property
    def path(self):
        return self._field(MOSN_REQ_PATH)

    @property
    def query(self):
        return self._field(MOSN_REQ_QUERY)

    @property
    def remote_addr(self):
        return self._field(MOSN_REQ_ADDR)

    @property
    def protocol(self):
        return self._field(MOSN_REQ_PROTOCOL)

    @property
    def is_response(self):
        """A response record: the headers are the upstream's response."""
        return (self.req.flags & MOSN_REQ_F_RESPONSE) != 0

    @property
    def status(self):
        """The response status of a response record, else 0."""
        if self.req.flags & MOSN_REQ_F_RESPONSE:
            return self.req.status
        return 0

    @property
    def metadata(self):
        """The request's metadata, on a response record; else {}."""
        cdef mosn_field_t f = self.req.field[MOSN_REQ_META]
        if not (self.req.flags & MOSN_REQ_F_META):
            return {}
        cdef bytes meta = PyBytes_FromStringAndSize(
            <const char *> self.rec + f.off, f.len)
        self._still_held()
        return decode_metadata(meta)

    @property
    def body(self):
        cdef mosn_field_t f = self.req.field[MOSN_REQ_BODY]
        if not (self.req.flags & MOSN_REQ_F_BODY):
            return None
        cdef bytes body = PyBytes_FromStringAndSize(
            <const char *> self.rec + f.off, f.len)
        self._still_held()
        return body

    cdef inline bint _entry(self, uint32_t i, mosn_header_entry_t *e):
        """Copies entry i out of the record (another process can write the
        record: only the copy is checked and used); false if it overruns
        the record."""
        e[0] = self.table[i]
        return (<uint64_t> e.off + e.name_len + e.value_len
                <= self.rec_len)

    cdef inline bint _find(self, const char *k, uint32_t klen,
                           mosn_header_entry_t *e):
        """The first entry whose name is k without case, into e."""
        cdef uint32_t i
        for i in range(self.nheaders):
            if (self._entry(i, e) and e.name_len == klen
                    and strncasecmp(<const char *> self.rec + e.off, k,
                                    klen) == 0):
                return True
        return False

    def header_get(self, name, default=None):
        """The first value of one header, name matched without case (as
        str.lower() does), or default."""
        cdef mosn_header_entry_t e
        if type(name) is str and PyUnicode_IS_COMPACT_ASCII(name):
            if not self._find(PyUnicode_DATA(name),
                              PyUnicode_GET_LENGTH(name), &e):
                self._still_held()
                return default
            value = PyUnicode_DecodeLatin1(
                <const char *> self.rec + e.off + e.name_len, e.value_len,
                NULL)
            self._still_held()
            return value
        values = self.header_get_all(name.lower())
        return values[0] if values else default

    def header_get_all(self, str lname):
        """Values of one header, name matched without case."""
        cdef bytes key = lname.encode("latin-1")
        cdef const char *k = PyBytes_AS_STRING(key)
        cdef uint32_t klen = len(key), i
        cdef mosn_header_entry_t e
        cdef list out = []
        for i in range(self.nheaders):
            if not self._entry(i, &e) or e.name_len != klen:
                continue
            if strncasecmp(<const char *> self.rec + e.off, k, klen) == 0:
                out.append(PyUnicode_DecodeLatin1(
                    <const char *> self.rec + e.off + klen, e.value_len,
                    NULL))
        self._still_held()
        return out

    def header_items(self):
        cdef uint32_t i
        cdef mosn_header_entry_t e
        cdef list out = []
        for i in range(self.nheaders):
            if not self._entry(i, &e):
                continue
            out.append((
                PyUnicode_DecodeLatin1(<const char *> self.rec + e.off,
                                       e.name_len, NULL),
                PyUnicode_DecodeLatin1(
                    <const char *> self.rec + e.off + e.name_len,
                    e.value_len, NULL)))
        self._still_held()
        return out


cdef SlotRequest _slot_request(const uint8_t *data, uint32_t data_size):
    """Checks the record's lengths against the slot; None if malformed.
    The record's head is copied and checked once: the fields read later
    are the copy's."""
    cdef mosn_req_t req
    cdef uint32_t i
    cdef mosn_field_t f
    cdef SlotRequest r
    if data_size < sizeof(mosn_req_t):
        return None
    memcpy(&req, data, sizeof(mosn_req_t))
    if req.len < sizeof(mosn_req_t) or req.len > data_size:
        return None
    for i in range(MOSN_REQ_NFIELDS):
        f = req.field[i]
        if <uint64_t> f.off + f.len > req.len:
            return None
    f = req.field[MOSN_REQ_HEADERS]
    if (f.len != <uint64_t> req.nheaders * sizeof(mosn_header_entry_t)
            or f.off % 4 != 0):
        return None
    r = SlotRequest.__new__(SlotRequest)
    r.rec = data
    r.rec_len = req.len
    r.req = req
    r.table = <const mosn_header_entry_t *> (data + f.off)
    r.nheaders = req.nheaders
    r.request_id = req.request_id
    return r


def parse_request(bytes record):
    """The Python workers' record parser on a record held in bytes (tests,
    the fuzzer): a SlotRequest that keeps record alive, or None."""
    cdef SlotRequest r = _slot_request(
        <const uint8_t *> PyBytes_AS_STRING(record), len(record))
    if r is not None:
        r._owner = record
    return r


cdef inline void _in_slot(SlotRequest req, const mosn_slot_t *slot,
                          uint64_t ps):
    req.slot = slot
    req.ps = ps
    req.gen = MOSN_SW_GEN(slot.state)


cdef struct _writer:
    # a verdict being written into a slot's free tail
    uint8_t *base
    uint32_t cap
    uint32_t pos
    uint32_t nrecords


cdef int _put(_writer *w, int rtype, const char *k, Py_ssize_t klen,
              const char *v, Py_ssize_t vlen) except -1:
    """Appends one record; refuses what overruns the slot."""
    cdef mosn_record_t r
    if (<uint64_t> w.pos + sizeof(mosn_record_t) + <uint64_t> klen
            + <uint64_t> vlen > w.cap
            or w.nrecords >= MOSN_VERDICT_MAX_RECORDS):
        raise RingError("verdict does not fit in the slot")
    memset(&r, 0, sizeof(r))
    r.type = rtype
    r.key_len = <uint32_t> klen
    r.value_len = <uint32_t> vlen
    memcpy(w.base + w.pos, &r, sizeof(r))
    w.pos += sizeof(r)
    memcpy(w.base + w.pos, k, klen)
    w.pos += <uint32_t> klen
    memcpy(w.base + w.pos, v, vlen)
    w.pos += <uint32_t> vlen
    w.nrecords += 1
    return 0


cdef bytes _l1(object s):
    if type(s) is bytes:
        return <bytes> s
    return (<str> s).encode("latin-1")


cdef int _record(_writer *w, int rtype, object key, object value) except -1:
    """A record of str (latin-1) or bytes; ASCII str is copied in place."""
    cdef bytes kb, vb
    if type(key) is str and PyUnicode_IS_COMPACT_ASCII(key):
        if type(value) is str and PyUnicode_IS_COMPACT_ASCII(value):
            return _put(w, rtype, PyUnicode_DATA(key),
                        PyUnicode_GET_LENGTH(key), PyUnicode_DATA(value),
                        PyUnicode_GET_LENGTH(value))
    kb = _l1(key)
    vb = _l1(value)
    return _put(w, rtype, PyBytes_AS_STRING(kb), len(kb),
                PyBytes_AS_STRING(vb), len(vb))


cdef int _body(_writer *w, object body) except -1:
    """The response body record, refused with the room it lacked."""
    cdef const uint8_t[::1] view = body
    cdef Py_ssize_t n = view.shape[0]
    cdef uint64_t used = <uint64_t> w.pos + sizeof(mosn_record_t)
    cdef uint64_t left = w.cap - used if w.cap > used else 0
    if <uint64_t> n > left:
        raise RingError("the new response body of %d bytes does not fit in "
                        "the slot (%d bytes left; see mosn_slot_size)"
                        % (n, left))
    if n == 0:
        return _put(w, MOSN_REC_RESP_BODY, "", 0, "", 0)
    return _put(w, MOSN_REC_RESP_BODY, "", 0, <const char *> &view[0], n)


cdef inline void _header(uint8_t *base, _writer *w, int action, int status,
                         uint32_t flags):
    cdef mosn_verdict_t hdr
    memset(&hdr, 0, sizeof(hdr))
    hdr.len = w.pos
    hdr.action = action
    hdr.status = status
    hdr.nrecords = w.nrecords
    hdr.flags = flags
    memcpy(base, &hdr, sizeof(hdr))


cdef uint32_t _write_verdict(uint8_t *base, uint32_t cap,
                             object given) except *:
    """Encodes a pyworker Verdict at base; None is a plain CONTINUE, and a
    dict the CONTINUE verdict with that metadata and nothing else (the
    chain's common answer, handed back without a Verdict)."""
    cdef _writer w
    cdef int action = MOSN_ACTION_CONTINUE, status = 0
    cdef uint32_t flags = 0
    cdef bytes log
    cdef _Verdict v
    if cap < sizeof(mosn_verdict_t):
        raise RingError("no room for a verdict in the slot")
    w.base = base
    w.cap = cap
    w.pos = sizeof(mosn_verdict_t)
    w.nrecords = 0
    if given is None:
        pass
    elif type(given) is dict:
        for k, val in (<dict> given).items():
            _record(&w, MOSN_REC_META, k, val)
    else:
        v = <_Verdict?> given
        action = v.action
        status = v.status
        if v.upstream:
            _record(&w, MOSN_REC_UPSTREAM, b"", v.upstream)
        if v.metadata:
            for k, val in v.metadata.items():
                _record(&w, MOSN_REC_META, k, val)
        for k, val in v.request_set:
            _record(&w, MOSN_REC_REQ_SET, k, val)
        for k in v.request_remove:
            _record(&w, MOSN_REC_REQ_DEL, k, b"")
        for k, val in v.response_set:
            _record(&w, MOSN_REC_RESP_SET, k, val)
        for k in v.response_remove:
            _record(&w, MOSN_REC_RESP_DEL, k, b"")
        for k, val in v.response_add:
            _record(&w, MOSN_REC_RESP_ADD, k, val)
        if v.response_body is not None:
            _body(&w, v.response_body)
        if action == MOSN_ACTION_CONTINUE and v.run_senders:
            flags = MOSN_VERDICT_F_SENDERS
            if v.decode_body:
                flags |= MOSN_VERDICT_F_DECODE
        if action == MOSN_ACTION_REPLY:
            for k, val in v.reply_headers:
                _record(&w, MOSN_REC_REPLY_HEADER, k, val)
            if v.reply_body:
                _record(&w, MOSN_REC_REPLY_BODY, b"", v.reply_body)
        if v.log:
            log = v.log.encode("utf-8", "replace")
            _put(&w, MOSN_REC_LOG, "", 0, PyBytes_AS_STRING(log), len(log))
    _header(base, &w, action, status, flags)
    return w.pos


cdef uint32_t _write_error(uint8_t *base, uint32_t cap, str why):
    """The verdict of last resort: fallback, with the reason logged."""
    cdef mosn_verdict_t hdr
    cdef mosn_record_t r
    cdef bytes msg = why.encode("utf-8", "replace")[:200]
    cdef uint32_t need = sizeof(hdr) + sizeof(r) + len(msg)
    if cap < sizeof(hdr):
        # not even a header fits: write nothing past the slot; the empty
        # verdict is refused by the module, which takes the fallback
        return 0
    memset(&hdr, 0, sizeof(hdr))
    hdr.action = MOSN_ACTION_ERROR
    if need > cap:
        hdr.len = sizeof(hdr)
        memcpy(base, &hdr, sizeof(hdr))
        return sizeof(hdr)
    hdr.len = need
    hdr.nrecords = 1
    memcpy(base, &hdr, sizeof(hdr))
    memset(&r, 0, sizeof(r))
    r.type = MOSN_REC_LOG
    r.value_len = len(msg)
    memcpy(base + sizeof(hdr), &r, sizeof(r))
    memcpy(base + sizeof(hdr) + sizeof(r), PyBytes_AS_STRING(msg), len(msg))
    return need


cdef class Consumer:
    """This process as one consumer of the region (a Python worker)."""

    cdef Region region
    cdef mosn_region_t *rg
    cdef readonly int index
    cdef readonly int incarnation
    cdef uint64_t wake_mask[4]         # MOSN_WAKE_WORDS
    cdef uint64_t batch[BATCH_MAX]
    cdef object sock
    cdef int sockfd
    cdef int wakefd

    def __cinit__(self):
        self.wakefd = -1

    def __dealloc__(self):
        if self.wakefd >= 0:
            os.close(self.wakefd)

    def __init__(self, Region region, int index):
        region._live()
        if not 0 <= index < <int> region.rg.nconsumers:
            raise RingError("consumer index %d is not in 0..%d"
                            % (index, region.rg.nconsumers - 1))
        self.region = region
        self.rg = &region.rg
        self.index = index
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sockfd = self.sock.fileno()
        self.incarnation = mosn_consumer_start(self.rg, index, os.getpid())

    def take(self, int max=64):
        cdef int n, i
        if max > BATCH_MAX:
            max = BATCH_MAX
        n = mosn_consumer_take(self.rg, self.index, self.batch, max)
        return [self.batch[i] for i in range(n)]

    cdef mosn_slot_t *_slot(self, uint64_t ps) except NULL:
        cdef uint32_t p = MOSN_PS_P(ps), s = MOSN_PS_S(ps)
        if p >= self.rg.nproducers or s >= self.rg.slots:
            raise RingError("no slot %d/%d" % (p, s))
        return mosn_slot(self.rg, p, s)

    def request(self, uint64_t ps):
        cdef mosn_slot_t *slot = self._slot(ps)
        cdef SlotRequest req = _slot_request(
            slot.data, self.rg.slot_size - MOSN_SLOT_HEADER_SIZE)
        if req is not None:
            _in_slot(req, slot, ps)
        return req

    def complete(self, uint64_t ps, verdict=None, gen=None):
        """Writes the verdict (a Verdict, None, a metadata dict, or encoded
        bytes).  With gen (a request's SlotRequest.gen), only into the
        request of that generation: a slot that holds another one now is
        left alone and False returned."""
        cdef mosn_slot_t *slot = self._slot(ps)
        if gen is not None and MOSN_SW_GEN(slot.state) != <uint32_t> gen:
            return False
        return self._complete(slot, ps, verdict)

    @property
    def abandons(self):
        """How many times producers gave up on a slot this consumer held;
        when it moves, look at the requests in flight (abandoned)."""
        return mosn_consumer(self.rg, self.index).abandons

    cdef bint _complete(self, mosn_slot_t *slot, uint64_t ps,
                        object verdict) except *:
        cdef uint32_t data_size = self.rg.slot_size - MOSN_SLOT_HEADER_SIZE
        cdef uint32_t off, n
        cdef uint32_t req_len
        cdef uint64_t w = slot.state
        if (MOSN_SW_STATE(w) != MOSN_SLOT_TAKEN
                or MOSN_SW_CONSUMER(w) != <uint32_t> self.index
                or MOSN_SW_INC(w) != (mosn_consumer(self.rg, self.index)
                                      .incarnation & 0xffff)):
            # taken back (freed, re-queued, reaped): the slot and its
            # verdict are someone else's now; refused and counted, untouched
            return mosn_consumer_complete(self.rg, self.index, MOSN_PS_P(ps),
                                          MOSN_PS_S(ps), self.wake_mask) == 0
        req_len = slot.req_len
        if req_len > data_size:
            req_len = data_size
        off = (req_len + 7) & ~7u
        if off > data_size:
            off = data_size
        if type(verdict) is bytes:
            n = len(<bytes> verdict)
            if n > data_size - off:
                n = _write_error(slot.data + off, data_size - off,
                                 "verdict does not fit in the slot")
            else:
                memcpy(slot.data + off, PyBytes_AS_STRING(verdict), n)
        else:
            try:
                n = _write_verdict(slot.data + off, data_size - off, verdict)
            except (RingError, UnicodeEncodeError, TypeError,
                    AttributeError) as e:
                n = _write_error(slot.data + off, data_size - off,
                                 "verdict not encodable: %s" % (e,))
        slot.verdict_off = off
        slot.verdict_len = n
        return mosn_consumer_complete(self.rg, self.index, MOSN_PS_P(ps),
                                      MOSN_PS_S(ps), self.wake_mask) == 0

    def flush(self):
        """Rings the doorbells of producers that sleep; returns how many."""
        cdef int n = mosn_consumer_flush(self.rg, self.index, self.sockfd,
                                         self.wake_mask)
        return n

    def set_spin(self, double microseconds):
        """How long wait() looks for work before it sleeps."""
        mosn_consumer_spin(<uint64_t> (microseconds * 1000))

    def wait(self, int timeout_ms=-1):
        """Sleeps until work arrives or the timeout; True if work waits."""
        cdef int r
        with nogil:
            r = mosn_consumer_wait(self.rg, self.index, timeout_ms)
        return r != 0

    def pending(self):
        return mosn_consumer_pending(self.rg, self.index) != 0

    def fileno(self):
        """The consumer's wake descriptor, for an event loop: it becomes
        readable when a producer submits work while the consumer is armed.
        Opened on first use; closed with the Consumer."""
        if self.wakefd < 0:
            self.region._live()
            self.wakefd = mosn_consumer_doorbell_open(self.rg, self.index)
            if self.wakefd < 0:
                raise RingError("cannot bind the doorbell of consumer %d: %s"
                                % (self.index, os.strerror(errno)))
        return self.wakefd

    def arm(self):
        """Says the consumer is about to sleep in its event loop: from now
        on a producer that submits work rings fileno().  True if work is
        already waiting (serve it instead of sleeping), False if armed."""
        if self.wakefd < 0:
            self.fileno()
        return mosn_consumer_arm(self.rg, self.index) != 0

    def disarm(self):
        """Called when fileno() is readable (or before serving for any
        other reason): drains the descriptor and stops producers ringing
        it.  True if work waits."""
        return mosn_consumer_disarm(self.rg, self.index, self.wakefd) != 0

    def close(self):
        """Closes the wake descriptor; the consumer can still wait()."""
        if self.wakefd >= 0:
            mosn_consumer_disarm(self.rg, self.index, -1)
            os.close(self.wakefd)
            self.wakefd = -1

    @property
    def state(self):
        return _CONSUMER_STATES.get(mosn_consumer(self.rg, self.index).state)

    def serve_batch(self, dispatch, int max=64):
        """Takes a batch, runs dispatch(request) on each, writes verdicts,
        rings the producers once.  Returns how many were taken.  A dispatch
        that returns PENDING answers later, with complete().  A dispatch
        that raises answers its request with an error verdict that names
        the exception, and the rest of the batch is served."""
        cdef int n, i
        cdef uint64_t ps
        cdef mosn_slot_t *slot
        cdef SlotRequest req
        cdef uint32_t data_size = self.rg.slot_size - MOSN_SLOT_HEADER_SIZE
        if max > BATCH_MAX:
            max = BATCH_MAX
        n = mosn_consumer_take(self.rg, self.index, self.batch, max)
        for i in range(n):
            ps = self.batch[i]
            slot = mosn_slot(self.rg, MOSN_PS_P(ps), MOSN_PS_S(ps))
            req = _slot_request(slot.data, data_size)
            if req is None:
                self._complete(slot, ps,
                               Verdict.error("malformed request"))
                continue
            _in_slot(req, slot, ps)
            try:
                verdict = dispatch(req)
            except Exception as e:
                # (a RingError: the slot changed under the read; the
                # verdict is then refused as someone else's)
                verdict = _dispatch_failed(e)
            if verdict is not _PENDING:
                self._complete(slot, ps, verdict)
        if n:
            mosn_consumer_flush(self.rg, self.index, self.sockfd,
                                self.wake_mask)
        return n


def _dispatch_failed(e):
    return Verdict.error("the dispatch failed: %s: %s"
                         % (type(e).__name__, e))


cdef class Producer:
    """A producer channel driven from Python: for tests and benchmarks.
    The nginx module is the real producer."""

    cdef Region region
    cdef mosn_region_t *rg
    cdef readonly int index
    cdef uint32_t rr
    cdef int fd
    cdef int nfd
    cdef uint64_t out[BATCH_MAX]

    def __init__(self, Region region):
        region._live()
        self.region = region
        self.rg = &region.rg
        self.nfd = -1
        self.index = mosn_producer_claim(self.rg, os.getpid())
        if self.index < 0:
            raise RingError("no free producer channel")
        cdef char err[256]
        self.fd = mosn_doorbell_open(self.rg, self.index, err, sizeof(err))
        if self.fd < 0:
            # hand the channel to the reaper rather than hold it for ever
            mosn_producer_release(self.rg, self.index)
            raise RingError(err.decode(errors="replace"))

    def fileno(self):
        return self.fd

    def notify_fileno(self):
        """The channel's eventfd, opened on first use (as nginx does):
        consumers that can copy it wake this producer through it."""
        if self.nfd < 0:
            self.nfd = mosn_producer_notify_open(self.rg, self.index)
            if self.nfd < 0:
                raise RingError("eventfd: %s" % os.strerror(errno))
        return self.nfd

    def drain_notify(self):
        return mosn_notify_drain(self.nfd) if self.nfd >= 0 else 0

    def release(self):
        if self.fd >= 0:
            mosn_doorbell_unlink(self.rg, self.index)
            os.close(self.fd)
            self.fd = -1
        if self.nfd >= 0:
            mosn_producer(self.rg, self.index).notify_fd = -1
            os.close(self.nfd)
            self.nfd = -1
        mosn_producer_release(self.rg, self.index)

    def submit(self, uint32_t slot, bytes record, int consumer=-1,
               uint64_t deadline_ns=0):
        """Copies a request record into the slot and publishes it, with
        its deadline (CLOCK_MONOTONIC ns, 0: none).
        Returns (consumer, gen), or None if no consumer or no room."""
        cdef uint32_t inc = 0, gen = 0
        cdef int c
        cdef mosn_slot_t *sl
        cdef uint32_t n = len(record)
        if slot >= self.rg.slots:
            raise RingError("no slot %d" % slot)
        if n > self.rg.slot_size - MOSN_SLOT_HEADER_SIZE:
            raise RingError("record does not fit in a slot")
        if consumer < 0:
            c = mosn_producer_pick(self.rg, self.index, &self.rr, &inc)
            if c < 0:
                return None
        else:
            if consumer >= <int> self.rg.nconsumers:
                raise RingError("no consumer %d" % consumer)
            c = consumer
            inc = mosn_consumer(self.rg, c).incarnation & 0xffff
        sl = mosn_slot(self.rg, self.index, slot)
        memcpy(sl.data, PyBytes_AS_STRING(record), n)
        sl.req_len = n
        sl.verdict_len = 0
        sl.deadline_ns = deadline_ns
        if mosn_producer_submit(self.rg, self.index, slot, c, inc, &gen) != 0:
            return None
        return (c, gen)

    def poll(self, int max=64):
        cdef int n, i
        if max > BATCH_MAX:
            max = BATCH_MAX
        n = mosn_producer_poll(self.rg, self.index, self.out, max)
        return [(MOSN_ENTRY_SLOT(self.out[i]), MOSN_ENTRY_GEN(self.out[i]))
                for i in range(n)]

    def verdict(self, uint32_t slot):
        """The verdict bytes, checked against the slot as nginx does."""
        cdef mosn_slot_t *sl
        cdef uint32_t data_size = self.rg.slot_size - MOSN_SLOT_HEADER_SIZE
        if slot >= self.rg.slots:
            raise RingError("no slot %d" % slot)
        sl = mosn_slot(self.rg, self.index, slot)
        if (sl.verdict_off > data_size
                or sl.verdict_len > data_size - sl.verdict_off):
            raise RingError("verdict overruns the slot")
        return PyBytes_FromStringAndSize(<char *> sl.data + sl.verdict_off,
                                         sl.verdict_len)

    def free(self, uint32_t slot):
        if slot >= self.rg.slots:
            raise RingError("no slot %d" % slot)
        mosn_producer_free(self.rg, self.index, slot)

    def arm(self):
        return mosn_producer_arm(self.rg, self.index) != 0

    def abandon(self, uint32_t slot, uint32_t gen):
        """Gives up on the request of generation gen in the slot, as nginx
        does when its client goes away."""
        if slot >= self.rg.slots:
            raise RingError("no slot %d" % slot)
        mosn_producer_abandon(self.rg, self.index, slot, gen)

    def drain_doorbell(self):
        return mosn_doorbell_drain(self.fd)

    def rescue(self):
        cdef int n, i
        n = mosn_producer_rescue(self.rg, self.index, &self.rr, self.out,
                                 BATCH_MAX)
        return [(MOSN_ENTRY_SLOT(self.out[i]) & ~MOSN_RESCUE_FAILED,
                 MOSN_ENTRY_GEN(self.out[i]),
                 bool(MOSN_ENTRY_SLOT(self.out[i]) & MOSN_RESCUE_FAILED))
                for i in range(n)]

    def slot_state(self, uint32_t slot):
        cdef uint64_t w
        if slot >= self.rg.slots:
            raise RingError("no slot %d" % slot)
        w = mosn_slot(self.rg, self.index, slot).state
        return (MOSN_SW_STATE(w), MOSN_SW_CONSUMER(w), MOSN_SW_INC(w),
                MOSN_SW_GEN(w))


def validate_verdict(bytes buf):
    """The C decoder's verdict: None if valid, else the reason."""
    cdef const char *why = NULL
    if mosn_verdict_validate(<const uint8_t *> PyBytes_AS_STRING(buf),
                             len(buf), &why) != 0:
        return why.decode()
    return None


def proc_alive(int pid, uint64_t starttime=0):
    return mosn_proc_alive(pid, starttime) != 0
