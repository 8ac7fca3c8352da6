"""The ring in pure Python: a reference implementation of the API of
_ring.pyx over the same shared memory, for machines without the compiled
extension, for tools, and for tests that check one side against the other.

It reads the layout of shm_ring.h with `struct` at the offsets the header
records, and checks them as mosn_region_check() does.  Each function below
mirrors the C function of the same name in shm_ring.c, step by step; read
them side by side.

Memory model.  Shared words are read and written through memoryview casts
of the mapping, so an aligned 32- or 64-bit word is one load or one store,
never torn.  On x86-64 plain loads and stores are ordered enough for the
single-producer/single-consumer rings, which only need the C code's
release stores and acquire loads.  The sleep/wake handshakes (consumer
wait against producer submit, producer arm against consumer flush) also
need the full fences of the C code; `_full_fence()` gets one from a lock
round trip, whose lock-prefixed instructions are a full barrier on x86-64.
On weakly ordered CPUs this module is for single-process use only.

What pure Python cannot do is an atomic read-modify-write.  Where the C
code uses compare-and-swap, exchange or atomic add, this module reads,
checks and stores, and says so at each place:

- channel claim: fallback claimers serialise on an flock of the region
  file, but a C claimer (an nginx worker) does not take that lock, so a
  fallback Producer must not claim while nginx workers may claim on the
  same region.  A fallback Producer is for tests and tools;
- the wake-up exchanges may let two wakers ring where one would do, which
  costs a spare system call and loses nothing;
- the reaper and consumer_retire assume one supervisor, as the C code's
  callers do; a slot the reaper frees is re-read just before the store,
  which narrows but does not close the window the C code's CAS closes.
"""

import ctypes
import errno
import fcntl
import mmap
import os
import platform
import socket
import stat
import threading
import time

from shm_ring import codec
from shm_ring.codec import RingError
from shm_ring.abi import (ACTION_ERROR, CACHELINE, CHAN_CLAIMING,
                          CHAN_DRAINING, CHAN_FREE, CHAN_OWNED, CHAN_REAPING,
                          CONSUMER_SIZE, CONS_DEAD, CONS_DRAINING, CONS_EMPTY,
                          CONS_LIVE, CONS_STARTING, C_ABANDONS, C_BATCHES,
                          C_COMPLETED, C_DOORBELLS, C_ERRORS, C_FUTEX,
                          C_INCARNATION, C_PID, C_SLEEPING, C_SLEEPS,
                          C_STARTTIME, C_STATE, C_TAKEN, ENDPOINT,
                          EPA_ENDPOINTS, EPA_GENERATION, EPA_HEAD, EPA_NAME,
                          EPA_NAME_LEN, EPA_NENDPOINTS, EPA_RR, EPA_SEQ,
                          EPA_SITES, EP_ANY, EP_APPS, EP_APP_NAME_MAX,
                          EP_APP_SIZE, EP_BUSY, EP_INET, EP_INET6, EP_MAX,
                          EP_NONE, EP_RR_ANY, EP_SITE, EP_SITES, EP_SITE_ENTRY,
                          EP_SITE_MAX, HEADER, HEADER_ENTRY, H_CONSUMER_EPOCH,
                          H_MAGIC, H_POOL_STATE, H_SUPERVISOR_PID,
                          MAX_CONSUMERS, MAX_PRODUCERS, MAX_SLOTS,
                          MAX_SLOT_SIZE, MIN_SLOT_SIZE, NAME_MAX, POOL_FAILED,
                          POOL_RUNNING, POOL_STARTING, POOL_STOPPED,
                          PRODUCER_SIZE, P_COMPLETED, P_COST_NS, P_DOORBELLS,
                          P_EPOCH, P_FALLBACKS, P_FORGED, P_FUTEX_WAKES,
                          P_IN_USE, P_NEED_WAKEUP, P_NOTIFY_FD, P_OWNER,
                          P_QUEUED, P_QUEUE_FULL, P_REFUSED, P_REQUEUED,
                          P_STALE, P_STARTTIME, P_SUBMITTED, P_TIMEOUTS,
                          P_WAITING, RECORD, REC_RESP_BODY, REQ, REQ_ADDR,
                          REQ_BODY, REQ_CHAIN, REQ_F_BODY, REQ_F_META,
                          REQ_F_RESPONSE, REQ_HEADERS, REQ_META, REQ_METHOD,
                          REQ_PATH, REQ_PROTOCOL, REQ_QUERY, RING_ABI_VERSION,
                          RING_MAGIC, R_ENTRIES, R_HEAD, R_TAIL, SLEEP_FD,
                          SLEEP_FUTEX, SLEEP_NONE, SLOT_DONE, SLOT_FREE,
                          SLOT_HEADER_SIZE, SLOT_SUBMITTED, SLOT_TAKEN,
                          S_ABANDONED, S_DATA, S_DEADLINE_NS, S_REQ_LEN,
                          S_STATE, S_SUBMIT_NS, S_VERDICT_LEN, S_VERDICT_OFF,
                          U32, VERDICT, VERDICT_MAX_RECORDS, WAKE_DIR_SUFFIX,
                          entry, owner, sw, sw_consumer, sw_gen, sw_inc,
                          sw_state)

ABI_VERSION = RING_ABI_VERSION
IMPLEMENTATION = "python"

# the C core's
RESCUE_FAILED = 0x80000000
RESCUE_NONE, RESCUE_REQUEUED, RESCUE_DONE, RESCUE_LOST = range(4)
BATCH_MAX = 256            # as _ring.pyx

_POOL_STATES = {POOL_STARTING: "starting", POOL_RUNNING: "running",
                POOL_FAILED: "failed", POOL_STOPPED: "stopped"}
_POOL_STATE_CODES = {v: k for k, v in _POOL_STATES.items()}

_CONSUMER_STATES = {CONS_EMPTY: "empty", CONS_STARTING: "starting",
                    CONS_LIVE: "live", CONS_DRAINING: "draining",
                    CONS_DEAD: "dead"}
_CHANNEL_STATES = {CHAN_FREE: "free", CHAN_CLAIMING: "claiming",
                   CHAN_OWNED: "owned", CHAN_DRAINING: "draining",
                   CHAN_REAPING: "reaping"}

EP_SPINS = 1000


def _align(n, a):
    return (n + a - 1) & ~(a - 1)


# processes, futexes, fences

def proc_starttime(pid):
    """Field 22 of /proc/PID/stat, or None if gone or a zombie."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            buf = f.read(1023)
    except OSError:
        return None
    # the command name may hold spaces and parentheses
    end = buf.rfind(b")")
    if end < 0 or buf[end + 1:end + 2] != b" ":
        return None
    fields = buf[end + 2:].split(b" ")
    if fields[0] in (b"Z", b"X", b"x") or len(fields) < 20:
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def proc_alive(pid, starttime=0):
    if pid <= 0:
        return False
    now = proc_starttime(pid)
    if now is None:
        return False
    return starttime == 0 or now == starttime


_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1      # not FUTEX_PRIVATE: shared memory
_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _futex_wait(addr, val, timeout_ms):
    ts = None
    if timeout_ms >= 0:
        ts = ctypes.byref(_Timespec(timeout_ms // 1000,
                                    (timeout_ms % 1000) * 1000000))
    # ctypes releases the GIL around the call
    _libc.syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr),
                  ctypes.c_int(_FUTEX_WAIT), ctypes.c_uint32(val), ts,
                  None, ctypes.c_int(0))


def _futex_wake(addr):
    _libc.syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr),
                  ctypes.c_int(_FUTEX_WAKE), ctypes.c_int(1), None, None,
                  ctypes.c_int(0))


_FENCE_LOCK = threading.Lock()


def _new_fence_lock():
    global _FENCE_LOCK
    _FENCE_LOCK = threading.Lock()


# a fork while another thread held the lock must not leave it held
os.register_at_fork(after_in_child=_new_fence_lock)


def _full_fence():
    """mosn_full_fence(): a lock round trip runs lock-prefixed
    instructions, which order every earlier store before every later
    load on x86-64."""
    _FENCE_LOCK.acquire()
    _FENCE_LOCK.release()


def _now_ns():
    return time.monotonic_ns()


# the region

def _conf_check(nproducers, nconsumers, slots, slot_size):
    """mosn_conf_check(): the message, or None if the sizes are usable."""
    if not 1 <= nproducers <= MAX_PRODUCERS:
        return "producer count %d is not in 1..%d" % (nproducers,
                                                      MAX_PRODUCERS)
    if not 1 <= nconsumers <= MAX_CONSUMERS:
        return "consumer count %d is not in 1..%d" % (nconsumers,
                                                      MAX_CONSUMERS)
    if not 2 <= slots <= MAX_SLOTS or slots & (slots - 1):
        return "slot count %d is not a power of two in 2..%d" % (slots,
                                                                 MAX_SLOTS)
    if (not MIN_SLOT_SIZE <= slot_size <= MAX_SLOT_SIZE
            or slot_size % CACHELINE):
        return "slot size %d is not a multiple of %d in %d..%d" % (
            slot_size, CACHELINE, MIN_SLOT_SIZE, MAX_SLOT_SIZE)
    return None


def _layout(nproducers, nconsumers, slots, slot_size):
    """mosn_layout(): the header's size and offset fields."""
    header_size = _align(HEADER.size, CACHELINE)
    off = header_size
    producers_off = off
    off += _align(PRODUCER_SIZE, CACHELINE) * nproducers
    consumers_off = off
    off += _align(CONSUMER_SIZE, CACHELINE) * nconsumers
    rings_off = off
    ring_bytes = _align(R_ENTRIES + slots * 8, CACHELINE)
    off += ring_bytes * 2 * nproducers * nconsumers
    off = _align(off, 4096)
    slots_off = off
    off += slot_size * slots * nproducers
    off = _align(off, 4096)
    endpoints_off = off
    off += EP_APP_SIZE * EP_APPS
    return {"header_size": header_size, "region_size": _align(off, 4096),
            "producers_off": producers_off, "consumers_off": consumers_off,
            "rings_off": rings_off, "ring_bytes": ring_bytes,
            "slots_off": slots_off, "endpoints_off": endpoints_off,
            "ep_apps": EP_APPS, "ep_app_size": EP_APP_SIZE}


HEADER_FIELDS = (
    "magic", "abi", "header_size", "region_size", "nproducers",
    "nconsumers", "slots", "slot_size", "producers_off", "consumers_off",
    "rings_off", "ring_bytes", "slots_off", "master_pid", "supervisor_pid",
    "created_ns", "consumer_epoch", "reload_seq", "desired_workers",
    "pool_state", "name", "config_path", "endpoints_off", "ep_apps",
    "ep_app_size")


_RING_LAYOUT = ("region_size", "producers_off", "consumers_off", "rings_off",
                "ring_bytes", "slots_off")
_EP_LAYOUT = ("ep_apps", "ep_app_size", "endpoints_off")


def _unpack_header(buf):
    return dict(zip(HEADER_FIELDS, HEADER.unpack_from(buf)))


def _region_check(buf, size):
    """mosn_region_check(): the header, unpacked once and checked; raises
    RingError if the image is unusable.  Only this copy's layout is used
    afterwards: the live header is never read for an address again."""
    if size < HEADER.size:
        raise RingError("region is %d bytes, smaller than its header "
                        "(%d bytes)" % (size, HEADER.size))
    h = _unpack_header(buf)
    if h["magic"] != RING_MAGIC:
        raise RingError("region has no ring magic (found 0x%x)"
                        % h["magic"])
    if h["abi"] != ABI_VERSION:
        raise RingError("region speaks ring ABI version %d, this build "
                        "speaks version %d: rebuild the nginx module and "
                        "the Python extension from the same source"
                        % (h["abi"], ABI_VERSION))
    if h["region_size"] != size:
        raise RingError("region is %d bytes but its header says %d bytes"
                        % (size, h["region_size"]))
    conf = (h["nproducers"], h["nconsumers"], h["slots"], h["slot_size"])
    why = _conf_check(*conf)
    if why:
        raise RingError(why)
    layout = _layout(*conf)
    if any(layout[k] != h[k] for k in _RING_LAYOUT + ("header_size",)):
        raise RingError("region layout does not match its sizes")
    if any(layout[k] != h[k] for k in _EP_LAYOUT):
        raise RingError(
            "region endpoint table (%d apps of %d bytes at %d) is not this "
            "build's (%d apps of %d bytes at %d): rebuild the nginx module "
            "and the Python extension from the same source"
            % (h["ep_apps"], h["ep_app_size"], h["endpoints_off"],
               layout["ep_apps"], layout["ep_app_size"],
               layout["endpoints_off"]))
    return h


def _shm_path(name):
    # glibc's shm_open() maps "/name" to /dev/shm/name
    return "/dev/shm/" + name.lstrip("/")


def _wake_dir(name):
    """The region's wake-up directory, as mosn_wake_dir_name()."""
    n = len(name.encode())
    if not 0 < n < NAME_MAX:
        raise RingError('region name "%s" is %s (1..%d bytes)'
                        % (name[:128], "too long" if n else "empty",
                           NAME_MAX - 1))
    return _shm_path(name) + WAKE_DIR_SUFFIX


def _in_the_way(err):
    return {errno.ELOOP: "it is a symbolic link",
            errno.ENOTDIR: "it is not a directory"}.get(err,
                                                        os.strerror(err))


def _wake_dir_clear(fd):
    """Removes what the directory holds (wake-up sockets), no deeper."""
    for name in os.listdir(fd):
        try:
            os.unlink(name, dir_fd=fd)
        except IsADirectoryError:
            os.rmdir(entry, dir_fd=fd)
        except OSError:
            pass


def _wake_dir_make(path):
    """mosn_wake_dir_make(): the directory, ours and closed to others; or
    RingError naming what is in the way."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise RingError('mkdir("%s") failed: %s'
                        % (path, os.strerror(e.errno))) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise RingError('"%s" is in the way: %s; remove it'
                        % (path, _in_the_way(e.errno))) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise RingError('"%s" is in the way: it belongs to uid %d; '
                            'remove it' % (path, st.st_uid))
        os.fchmod(fd, 0o700)
        _wake_dir_clear(fd)
    finally:
        os.close(fd)


def _wake_dir_check(path, owner):
    """mosn_wake_dir_check(): the region owner's, mode 0700."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise RingError('the wake-up directory "%s" of the region is '
                        'missing: %s' % (path, os.strerror(e.errno))) \
            from None
    if not stat.S_ISDIR(st.st_mode):
        raise RingError('"%s" is in the way: %s' % (
            path, "it is a symbolic link" if stat.S_ISLNK(st.st_mode)
            else "it is not a directory"))
    if st.st_uid != owner or st.st_mode & 0o077:
        raise RingError('"%s" is in the way: uid %d mode %04o, not uid %d '
                        "mode 0700 as the region's owner would make it"
                        % (path, st.st_uid, stat.S_IMODE(st.st_mode),
                           owner))


def region_unlink(name):
    """mosn_region_unlink(): the region's name and its wake-up directory."""
    try:
        os.unlink(_shm_path(name))
    except FileNotFoundError:
        pass
    try:
        path = _wake_dir(name)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except (OSError, RingError):
        return
    try:
        _wake_dir_clear(fd)
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        pass


class Region:
    """An attached shared-memory region."""

    def __init__(self, name, fd, size, checked):
        self.name = name
        self._size = size
        self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
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
            raise RingError('shm_open("%s") failed: %s'
                            % (name, os.strerror(e.errno))) from None
        try:
            st = os.fstat(fd)
            if st.st_size <= 0:
                raise RingError('region "%s" is empty' % name)
            _wake_dir_check(wake_dir, st.st_uid)
            with mmap.mmap(fd, st.st_size, mmap.MAP_SHARED,
                           mmap.PROT_READ) as image:
                # one copy of the header, checked, is all the layout used
                checked = _region_check(bytes(image[:HEADER.size]),
                                        st.st_size)
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
            pass            # another user's: O_EXCL below says so
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL
                         | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise RingError('shm_open("%s") failed: %s%s' % (
                name, os.strerror(e.errno),
                " (it belongs to another user: remove it)"
                if e.errno == errno.EEXIST else "")) from None
        try:
            _wake_dir_make(wake_dir)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        try:
            os.ftruncate(fd, layout["region_size"])
            image = HEADER.pack(
                0, ABI_VERSION, layout["header_size"],
                layout["region_size"], nproducers, nconsumers, slots,
                slot_size, layout["producers_off"], layout["consumers_off"],
                layout["rings_off"], layout["ring_bytes"],
                layout["slots_off"], 0, 0, int(time.time()) * 10 ** 9,
                0, 0, 0, 0, name.encode(), b"", layout["endpoints_off"],
                EP_APPS, EP_APP_SIZE)
            os.pwrite(fd, image, 0)
            r = Region(name, fd, layout["region_size"],
                       _unpack_header(image))
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
        return self._rings_off + self._ring_bytes * (2 * (p * self._nc + c)
                                                     + 1)

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
        return sum(1 for p in range(self._np) for s in range(self._slots)
                   if sw_state(self.ld64(self.slot(p, s) + S_STATE))
                   != SLOT_FREE)

    def stats(self):
        """Counters of every producer channel and consumer, as dicts."""
        self._live()
        producers = []
        for i in range(self._np):
            o = self.prod(i)
            w = self.ld64(o + P_OWNER)
            producers.append({
                "index": i, "pid": w >> 32,
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
            })
        consumers = []
        for i in range(self._nc):
            o = self.cons(i)
            consumers.append({
                "index": i, "pid": self.ld32(o + C_PID),
                "state": _CONSUMER_STATES.get(self.ld32(o + C_STATE), "?"),
                "incarnation": self.ld32(o + C_INCARNATION),
                "taken": self.ld64(o + C_TAKEN),
                "completed": self.ld64(o + C_COMPLETED),
                "batches": self.ld64(o + C_BATCHES),
                "sleeps": self.ld64(o + C_SLEEPS),
                "doorbells": self.ld64(o + C_DOORBELLS),
                "errors": self.ld64(o + C_ERRORS),
                "abandons": self.ld64(o + C_ABANDONS),
            })
        return {"producers": producers, "consumers": consumers,
                "consumer_epoch": self.ld32(H_CONSUMER_EPOCH)}

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
            raise RingError("app %r: %d endpoints, at most %d fit"
                            % (app, len(specs), EP_MAX))
        idx = _endpoints_set(self, name, specs)
        return self.ld32(self.ep_app(idx) + EPA_GENERATION)

    def _ep_copy(self, name):
        """A checked snapshot of app name's entry, or None if no such app."""
        for _ in range(3):
            idx = _endpoints_find(self, name)
            if idx == -1:
                return None
            if idx < 0:
                raise RingError("the endpoint table is being written or "
                                "corrupt: app %r not found" % name.decode())
            snap = _endpoints_read(self, idx)
            if snap is None:
                raise RingError("the endpoint table of app %r is being "
                                "written or corrupt" % name.decode())
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
        return [(codec.endpoint_host(family, addr), port,
                 snap["sites"][site][3].decode("utf-8", "replace"))
                for family, site, port, _, addr in snap["endpoints"]]

    def endpoint_generation(self, app):
        """How many times app's endpoints were written; 0 if never."""
        name = codec.endpoint_app(app)
        self._live()
        n, gen = _endpoints_count(self, name)
        if n < 0:
            raise RingError("the endpoint table of app %r is being written "
                            "or corrupt" % app)
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
        seen = [codec.endpoint_spec(host, port, "-")[:3]
                for host, port in list(tried)[:EP_MAX]]
        rc, ep = _endpoints_pick(self, name, site.encode("utf-8"), seen)
        if rc == EP_BUSY:
            raise RingError("the endpoint table of app %r is being written "
                            "or corrupt" % app)
        if rc == EP_NONE:
            return None
        return codec.endpoint_host(ep[0], ep[1]), ep[2], rc == EP_ANY

    def consumer(self, index):
        """Registers this process as consumer `index` (from alloc)."""
        return Consumer(self, index)

    def producer(self):
        """Claims a producer channel for this process (tests, tools)."""
        return Producer(self)


# the C core, function by function

def _consumer_alive(rg, c, inc):
    if c >= rg._nc:
        return False
    o = rg.cons(c)
    st = rg.ld32(o + C_STATE)
    return (st in (CONS_LIVE, CONS_DRAINING)
            and rg.ld32(o + C_INCARNATION) & 0xFFFF == inc)


def _ring_room(rg, ring):
    return (rg.ld32(ring + R_HEAD) - rg.ld32(ring + R_TAIL)) & U32 \
        < rg._slots


def _ring_push(rg, ring, e):
    """Only one process pushes to a ring: head is ours, tail theirs."""
    head = rg.ld32(ring + R_HEAD)
    if (head - rg.ld32(ring + R_TAIL)) & U32 >= rg._slots:
        return -1
    rg.st64(ring + R_ENTRIES + 8 * (head & (rg._slots - 1)), e)
    # the entry is stored before head makes it visible (x86-64 TSO)
    rg.st32(ring + R_HEAD, head + 1)
    return 0


def _ring_holds(rg, ring, s, gen):
    head = rg.ld32(ring + R_HEAD)
    tail = rg.ld32(ring + R_TAIL)
    if (head - tail) & U32 > rg._slots:
        return False
    want = entry(s, gen)
    while tail != head:
        if rg.ring_entry(ring, tail) == want:
            return True
        tail = (tail + 1) & U32
    return False


def _doorbell_addr(rg, p):
    # a socket in the region's wake-up directory, as mosn_doorbell_name()
    return "%s/p%d" % (rg._wake_dir, p)


# a producer's eventfd, copied from its process (mosn_notify_take())
_SYS_PIDFD_GETFD = 438
_notify_copies = {}     # p -> (region, owner, epoch, fd or -1)


def _notify_take(rg, o, owner_word):
    pid, target = owner_word >> 32, rg.ld32(o + P_NOTIFY_FD)
    if owner_word & 0xFF != CHAN_OWNED or pid <= 0 or target >= 0x80000000:
        return -1
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return -1
    try:
        # the pidfd names whoever had the pid: the owner, if it started then
        if not proc_alive(pid, rg.ld64(o + P_STARTTIME)):
            return -1
        fd = _libc.syscall(ctypes.c_long(_SYS_PIDFD_GETFD),
                           ctypes.c_int(pidfd), ctypes.c_int(target),
                           ctypes.c_uint(0))
    finally:
        os.close(pidfd)
    if fd < 0:
        return -1
    try:
        # the number comes from the region: write to nothing but an eventfd
        if os.readlink("/proc/self/fd/%d" % fd) == "anon_inode:[eventfd]":
            return fd
    except OSError:
        pass
    os.close(fd)
    return -1


def _notify_fd(rg, p):
    o = rg.prod(p)
    owner_word, epoch = rg.ld64(o + P_OWNER), rg.ld32(o + P_EPOCH)
    copy = _notify_copies.get(p)
    if copy and copy[0] is rg and copy[1:3] == (owner_word, epoch):
        return copy[3]
    if copy and copy[3] >= 0:
        os.close(copy[3])
    fd = _notify_take(rg, o, owner_word)
    _notify_copies[p] = (rg, owner_word, epoch, fd)
    return fd


def _producer_notify(rg, sock, p):
    fd = _notify_fd(rg, p)
    if fd >= 0:
        try:
            os.write(fd, (1).to_bytes(8, "little"))
            return 0
        except OSError:
            pass
    return _doorbell_ring(rg, sock, p)


def _doorbell_ring(rg, sock, p):
    try:
        sock.sendto(b"\1", socket.MSG_DONTWAIT, _doorbell_addr(rg, p))
    except BlockingIOError:
        pass        # a full socket buffer already holds a wake-up
    except OSError:
        return -1
    return 0


def _consumer_doorbell_addr(rg, c):
    # as mosn_doorbell_name_of(rg, 'c', c)
    return "%s/c%d" % (rg._wake_dir, c)


_ring_sock = None       # mosn_ring_sock: made when first needed


def _ring_socket():
    global _ring_sock
    if _ring_sock is None:
        _ring_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _ring_sock.setblocking(False)
    return _ring_sock


def _consumer_doorbell_ring(rg, c):
    try:
        _ring_socket().sendto(b"\1", socket.MSG_DONTWAIT,
                          _consumer_doorbell_addr(rg, c))
    except OSError:
        pass        # full: a wake-up is already there; unbound: nobody


def _wake_consumer(rg, p, c):
    o = rg.cons(c)
    _full_fence()       # pairs with the fence in _consumer_wait(), _arm()
    # C: atomic exchange; here two wakers may both ring, which is harmless
    how = rg.ld32(o + C_SLEEPING)
    if how != SLEEP_NONE:
        rg.st32(o + C_SLEEPING, SLEEP_NONE)
        if how == SLEEP_FD:
            _consumer_doorbell_ring(rg, c)
        else:
            rg.st32(o + C_FUTEX, (rg.ld32(o + C_FUTEX) + 1) & U32)
            _futex_wake(rg._base + o + C_FUTEX)
        rg.add64(rg.prod(p) + P_FUTEX_WAKES)


# producer side

def _producer_claim(rg, pid):
    p = _producer_claim_free(rg, pid)
    # none free: take back those of dead owners (no supervisor may run)
    if p < 0 and _reap_producers(rg)[1]:
        p = _producer_claim_free(rg, pid)
    return p


def _producer_claim_free(rg, pid):
    starttime = proc_starttime(pid) or 0
    # C: compare-and-swap.  The flock keeps fallback claimers apart; it
    # does not keep out a C claimer (see the module docstring).
    fd = os.open(_shm_path(rg.name), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for p in range(rg._np):
            o = rg.prod(p)
            if rg.ld64(o + P_OWNER) != owner(0, CHAN_FREE):
                continue
            rg.st64(o + P_OWNER, owner(pid, CHAN_CLAIMING))
            rg.st64(o + P_STARTTIME, starttime)
            rg.st32(o + P_EPOCH, rg.ld32(o + P_EPOCH) + 1)
            rg.st32(o + P_NEED_WAKEUP, 0)
            rg.st32(o + P_IN_USE, 0)
            rg.st32(o + P_WAITING, 0)
            rg.st32(o + P_NOTIFY_FD, U32)       # -1
            rg.st64(o + P_OWNER, owner(pid, CHAN_OWNED))
            return p
        return -1
    finally:
        os.close(fd)


def _producer_release(rg, p):
    o = rg.prod(p)
    # the reaper hands the channel on once every slot is back
    rg.st64(o + P_OWNER, owner(rg.ld64(o + P_OWNER) >> 32, CHAN_DRAINING))


def _producer_pick(rg, p, rr):
    """The live consumer with the shortest submit ring from p, from the
    round-robin position rr: (consumer, incarnation, new rr) or None."""
    n = rg._nc
    best = None
    best_pending = U32 + 1
    for i in range(n):
        c = (rr + i) % n
        o = rg.cons(c)
        if rg.ld32(o + C_STATE) != CONS_LIVE:
            continue
        ring = rg.submit_ring(p, c)
        pending = (rg.ld32(ring + R_HEAD) - rg.ld32(ring + R_TAIL)) & U32
        if pending < best_pending:
            best = c
            best_pending = pending
            inc = rg.ld32(o + C_INCARNATION) & 0xFFFF
            if pending == 0:
                break
    if best is None:
        return None
    return best, inc, best + 1


def _producer_submit(rg, p, s, c, inc):
    slot = rg.slot(p, s)
    ring = rg.submit_ring(p, c)
    if not _ring_room(rg, ring):
        return None
    g = (sw_gen(rg.ld64(slot + S_STATE)) + 1) & U32
    rg.st64(slot + S_SUBMIT_NS, _now_ns())
    rg.st64(slot + S_STATE, sw(g, inc, c, SLOT_SUBMITTED))
    _ring_push(rg, ring, entry(s, g))
    o = rg.prod(p)
    rg.add64(o + P_SUBMITTED)
    rg.st32(o + P_IN_USE, rg.ld32(o + P_IN_USE) + 1)
    _wake_consumer(rg, p, c)
    return g


def _producer_abandon(rg, p, s, gen):
    slot = rg.slot(p, s)
    w = rg.ld64(slot + S_STATE)
    c = sw_consumer(w)
    if (sw_gen(w) != gen or sw_state(w) not in (SLOT_SUBMITTED, SLOT_TAKEN)
            or c >= rg._nc):
        return
    rg.st32(slot + S_ABANDONED, gen)
    # not atomic (see the module's docstring): two producers abandoning at
    # once may count one; the consumer still finds both slots abandoned
    rg.add64(rg.cons(c) + C_ABANDONS)


def _producer_free(rg, p, s):
    slot = rg.slot(p, s)
    w = rg.ld64(slot + S_STATE)
    rg.st64(slot + S_STATE, sw(sw_gen(w), 0, 0, SLOT_FREE))
    o = rg.prod(p)
    rg.st32(o + P_IN_USE, rg.ld32(o + P_IN_USE) - 1)


def _producer_poll(rg, p, max_):
    out = []
    o = rg.prod(p)
    for c in range(rg._nc):
        if len(out) >= max_:
            break
        ring = rg.completion_ring(p, c)
        tail = rg.ld32(ring + R_TAIL)
        head = rg.ld32(ring + R_HEAD)
        if (head - tail) & U32 > rg._slots:
            # no ring holds more than a channel's slots: a scribble
            rg.add64(o + P_FORGED)
            rg.st32(ring + R_TAIL, head)
            continue
        while tail != head and len(out) < max_:
            e = rg.ring_entry(ring, tail)
            tail = (tail + 1) & U32
            s, gen = e & U32, e >> 32
            if s >= rg._slots:
                rg.add64(o + P_FORGED)
                continue
            w = rg.ld64(rg.slot(p, s) + S_STATE)
            if sw_state(w) != SLOT_DONE or sw_gen(w) != gen:
                rg.add64(o + P_STALE)
                continue
            out.append((s, gen))
        rg.st32(ring + R_TAIL, tail)
    rg.add64(o + P_COMPLETED, len(out))
    return out


def _producer_arm(rg, p):
    rg.st32(rg.prod(p) + P_NEED_WAKEUP, 1)
    _full_fence()       # pairs with the fence in _consumer_flush()
    for c in range(rg._nc):
        ring = rg.completion_ring(p, c)
        if rg.ld32(ring + R_HEAD) != rg.ld32(ring + R_TAIL):
            return True
    return False


def _producer_rescue_slot(rg, p, s, gen, rr):
    """mosn_producer_rescue_slot(): (RESCUE_*, rr) for slot s held in
    flight at generation gen."""
    if not 0 <= s < rg._slots:
        return RESCUE_NONE, rr
    o = rg.prod(p)
    slot = rg.slot(p, s)
    w = rg.ld64(slot + S_STATE)
    st, c, inc = sw_state(w), sw_consumer(w), sw_inc(w)
    if sw_gen(w) != gen or st == SLOT_FREE:
        rg.add64(o + P_FORGED)
        return RESCUE_LOST, rr
    if _consumer_alive(rg, c, inc):
        return RESCUE_NONE, rr
    if st == SLOT_DONE:
        if c < rg._nc and _ring_holds(rg, rg.completion_ring(p, c), s, gen):
            return RESCUE_NONE, rr      # poll will see it
        return RESCUE_DONE, rr
    picked = _producer_pick(rg, p, rr)
    # room first: the new consumer may take the slot once named
    if picked and _ring_room(rg, rg.submit_ring(p, picked[0])):
        c2, inc2, rr = picked
        rg.st64(slot + S_STATE, sw(gen, inc2, c2, SLOT_SUBMITTED))
        _ring_push(rg, rg.submit_ring(p, c2), entry(s, gen))
        rg.add64(o + P_REQUEUED)
        _wake_consumer(rg, p, c2)
        return RESCUE_REQUEUED, rr
    if picked:
        rr = picked[2]
    # no consumer or no room: done by nobody, so lost
    rg.st64(slot + S_STATE, sw(gen, 0, 0, SLOT_TAKEN))
    return RESCUE_LOST, rr


def _producer_rescue(rg, p, rr, max_):
    """Every slot's rescue, each slot's generation taken as the
    producer's.  Returns ([(slot, gen, failed)], rr)."""
    out = []
    for s in range(rg._slots):
        if len(out) >= max_:
            break
        w = rg.ld64(rg.slot(p, s) + S_STATE)
        if sw_state(w) == SLOT_FREE:
            continue
        gen = sw_gen(w)
        got, rr = _producer_rescue_slot(rg, p, s, gen, rr)
        if got == RESCUE_DONE:
            out.append((s, gen, False))
        elif got == RESCUE_LOST:
            out.append((s, gen, True))
    return out, rr


# consumer side

def _consumer_start(rg, c, pid):
    if c >= rg._nc:
        return -1
    o = rg.cons(c)
    rg.st32(o + C_PID, pid)
    rg.st64(o + C_STARTTIME, proc_starttime(pid) or 0)
    rg.st32(o + C_SLEEPING, 0)
    rg.st32(o + C_INCARNATION, rg.ld32(o + C_INCARNATION) + 1)
    rg.st32(o + C_STATE, CONS_LIVE)
    # producers holding requests for a worker submit them now
    _ring_producers(rg, _ring_socket())
    return rg.ld32(o + C_INCARNATION) & 0xFFFF


def _consumer_take(rg, c, max_):
    out = []
    o = rg.cons(c)
    inc = rg.ld32(o + C_INCARNATION) & 0xFFFF
    for p in range(rg._np):
        if len(out) >= max_:
            break
        ring = rg.submit_ring(p, c)
        tail = rg.ld32(ring + R_TAIL)
        head = rg.ld32(ring + R_HEAD)
        if (head - tail) & U32 > rg._slots:
            tail = head     # a producer scribbled: skip what cannot be real
        while tail != head and len(out) < max_:
            e = rg.ring_entry(ring, tail)
            tail = (tail + 1) & U32
            s, gen = e & U32, e >> 32
            if s >= rg._slots:
                continue
            slot = rg.slot(p, s)
            w = rg.ld64(slot + S_STATE)
            if (sw_state(w) != SLOT_SUBMITTED or sw_consumer(w) != c
                    or sw_inc(w) != inc or sw_gen(w) != gen):
                continue
            rg.st64(slot + S_STATE, sw(gen, inc, c, SLOT_TAKEN))
            out.append((p << 32) | s)
        # the slot is marked taken before the entry leaves the ring
        rg.st32(ring + R_TAIL, tail)
    if out:
        rg.add64(o + C_TAKEN, len(out))
        rg.add64(o + C_BATCHES)
    return out


def _consumer_complete(rg, c, p, s):
    """Returns the producer to wake, or -1."""
    if p >= rg._np or s >= rg._slots:
        return -1
    o = rg.cons(c)
    slot = rg.slot(p, s)
    w = rg.ld64(slot + S_STATE)
    if (sw_state(w) != SLOT_TAKEN or sw_consumer(w) != c
            or sw_inc(w) != rg.ld32(o + C_INCARNATION) & 0xFFFF):
        rg.add64(o + C_ERRORS)
        return -1
    rg.st64(slot + S_STATE, sw(sw_gen(w), sw_inc(w), c, SLOT_DONE))
    if _ring_push(rg, rg.completion_ring(p, c), entry(s, sw_gen(w))) != 0:
        rg.add64(o + C_ERRORS)
        return -1
    rg.add64(o + C_COMPLETED)
    return p


def _consumer_flush(rg, c, sock, wake_mask):
    if not wake_mask:
        return 0
    _full_fence()       # pairs with the fence in _producer_arm()
    n = 0
    for p in range(rg._np):
        if not wake_mask & (1 << p):
            continue
        o = rg.prod(p)
        # C: atomic exchange; a spare doorbell is harmless
        if rg.ld32(o + P_NEED_WAKEUP):
            rg.st32(o + P_NEED_WAKEUP, 0)
            _producer_notify(rg, sock, p)
            n += 1
    rg.add64(rg.cons(c) + C_DOORBELLS, n)
    return n


def _consumer_pending(rg, c):
    for p in range(rg._np):
        ring = rg.submit_ring(p, c)
        if rg.ld32(ring + R_HEAD) != rg.ld32(ring + R_TAIL):
            return True
    return False


def _consumer_wait(rg, c, timeout_ms):
    o = rg.cons(c)
    rg.st32(o + C_SLEEPING, SLEEP_FUTEX)
    _full_fence()       # pairs with the fence in _wake_consumer()
    seq = rg.ld32(o + C_FUTEX)
    if _consumer_pending(rg, c):
        rg.st32(o + C_SLEEPING, SLEEP_NONE)
        return True
    rg.add64(o + C_SLEEPS)
    _futex_wait(rg._base + o + C_FUTEX, seq, timeout_ms)
    rg.st32(o + C_SLEEPING, SLEEP_NONE)
    return _consumer_pending(rg, c)


def _consumer_doorbell_open(rg, c):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        # the directory is the owner's alone: what is there is a leftover
        os.unlink(_consumer_doorbell_addr(rg, c))
    except OSError:
        pass
    try:
        sock.bind(_consumer_doorbell_addr(rg, c))
    except OSError as e:
        sock.close()
        raise RingError("cannot bind the doorbell of consumer %d: %s"
                        % (c, e.strerror)) from None
    sock.setblocking(False)
    return sock


def _consumer_arm(rg, c):
    o = rg.cons(c)
    rg.st32(o + C_SLEEPING, SLEEP_FD)
    _full_fence()       # pairs with the fence in _wake_consumer()
    if _consumer_pending(rg, c):
        rg.st32(o + C_SLEEPING, SLEEP_NONE)
        return True
    rg.add64(o + C_SLEEPS)
    return False


def _consumer_disarm(rg, c, sock):
    rg.st32(rg.cons(c) + C_SLEEPING, SLEEP_NONE)
    while sock is not None:
        try:
            sock.recv(16)
        except OSError:
            break
    return _consumer_pending(rg, c)


# supervisor side

def _consumer_alloc(rg):
    for c in range(rg._nc):
        o = rg.cons(c)
        if rg.ld32(o + C_STATE) in (CONS_EMPTY, CONS_DEAD):
            rg.st32(o + C_STATE, CONS_STARTING)
            return c
    return -1


def _ring_producers(rg, sock):
    for p in range(rg._np):
        if rg.ld64(rg.prod(p) + P_OWNER) & 0xFF == CHAN_OWNED:
            _doorbell_ring(rg, sock, p)


def _consumer_retire(rg, c, sock):
    if not 0 <= c < rg._nc:
        return
    rg.st32(rg.cons(c) + C_STATE, CONS_DEAD)
    # C: atomic add; one supervisor retires
    rg.st32(H_CONSUMER_EPOCH, rg.ld32(H_CONSUMER_EPOCH) + 1)
    # producers re-queue what the consumer held
    _ring_producers(rg, sock)


def _drain_completions(rg, p):
    for c in range(rg._nc):
        ring = rg.completion_ring(p, c)
        rg.st32(ring + R_TAIL, rg.ld32(ring + R_HEAD))


def _reap_channel(rg, p):
    """Hands a dead producer's channel back once nothing is in flight."""
    o = rg.prod(p)
    busy = 0
    # one reaper at a time; C: compare-and-swap
    held = rg.ld64(o + P_OWNER)
    if held & 0xFF != CHAN_DRAINING:
        return 1
    rg.st64(o + P_OWNER, owner(os.getpid(), CHAN_REAPING))
    _drain_completions(rg, p)
    for s in range(rg._slots):
        slot = rg.slot(p, s)
        w = rg.ld64(slot + S_STATE)
        st, c, gen = sw_state(w), sw_consumer(w), sw_gen(w)
        if st == SLOT_FREE:
            continue
        if st == SLOT_DONE or not _consumer_alive(rg, c, sw_inc(w)):
            rg.st64(slot + S_STATE, sw(gen, 0, 0, SLOT_FREE))
            continue
        # C: compare-and-swap, as a live consumer may take it meanwhile
        if (st == SLOT_SUBMITTED
                and not _ring_holds(rg, rg.submit_ring(p, c), s, gen)
                and rg.ld64(slot + S_STATE) == w):
            rg.st64(slot + S_STATE, sw(gen, 0, 0, SLOT_FREE))
            continue
        busy += 1
    if busy:
        rg.st64(o + P_OWNER, held)      # another pass, later
        return busy
    _drain_completions(rg, p)
    rg.st32(o + P_IN_USE, 0)
    rg.st32(o + P_WAITING, 0)
    rg.st32(o + P_NOTIFY_FD, U32)
    rg.st32(o + P_NEED_WAKEUP, 0)
    rg.st64(o + P_OWNER, owner(0, CHAN_FREE))
    return 0


def _reap_producers(rg):
    """mosn_reap_producers(): (dead owners found, channels freed)."""
    reaped = freed = 0
    for p in range(rg._np):
        o = rg.prod(p)
        w = rg.ld64(o + P_OWNER)
        st, pid = w & 0xFF, w >> 32
        if st == CHAN_OWNED:
            if proc_alive(pid, rg.ld64(o + P_STARTTIME)):
                continue
        elif st in (CHAN_CLAIMING, CHAN_REAPING):
            if proc_alive(pid, 0):
                continue
        elif st == CHAN_DRAINING:
            freed += _reap_channel(rg, p) == 0
            continue
        else:
            continue
        # C: compare-and-swap
        if rg.ld64(o + P_OWNER) == w:
            rg.st64(o + P_OWNER, owner(pid, CHAN_DRAINING))
            reaped += 1
            freed += _reap_channel(rg, p) == 0
    return reaped, freed


def _reap(rg, sock):
    reaped = 0
    for c in range(rg._nc):
        o = rg.cons(c)
        if (rg.ld32(o + C_STATE) in (CONS_LIVE, CONS_DRAINING)
                and not proc_alive(rg.ld32(o + C_PID),
                                   rg.ld64(o + C_STARTTIME))):
            _consumer_retire(rg, c, sock)
            reaped += 1
    return reaped + _reap_producers(rg)[0]


# the endpoint table: shm_endpoints.c, function by function.  The
# seqlock needs only ordered loads and stores (x86-64 TSO, see above); the
# round-robin counters' atomic add is a load and a store here, so a
# fallback reader racing a C reader may repeat or skip a turn.

def _ep_read_begin(rg, a):
    for _ in range(EP_SPINS):
        seq = rg.ld32(a + EPA_SEQ)
        if not seq & 1:
            return seq
    return None


def _ep_read_end(rg, a, seq):
    return rg.ld32(a + EPA_SEQ) == seq


def _ep_snapshot(rg, i):
    """A stable copy of entry i's bytes, or None (a writer died in the
    middle of a write)."""
    a = rg.ep_app(i)
    for _ in range(EP_SPINS):
        seq = _ep_read_begin(rg, a)
        if seq is None:
            return None
        raw = bytes(rg._mm[a:a + EP_APP_SIZE])
        if _ep_read_end(rg, a, seq):
            return raw
    return None


def _ep_parse(raw):
    """mosn_endpoints_read()'s checks on a copy: a dict, or None if it is
    not a valid table."""
    _, generation, n, name_len, name = EPA_HEAD.unpack_from(raw)
    if n > EP_MAX or name_len >= EP_APP_NAME_MAX:
        return None
    sites = []
    for i in range(EP_SITES):
        first, count, nlen, sname = EP_SITE_ENTRY.unpack_from(
            raw, EPA_SITES + EP_SITE_ENTRY.size * i)
        if nlen >= EP_SITE_MAX or first + count > n:
            return None
        sites.append((first, count, nlen, sname[:nlen]))
    endpoints = []
    for i in range(n):
        family, site, port, flags, addr = ENDPOINT.unpack_from(
            raw, EPA_ENDPOINTS + ENDPOINT.size * i)
        if family not in (EP_INET, EP_INET6) or port == 0 \
                or site >= EP_SITES:
            return None
        endpoints.append((family, site, port, flags, addr))
    return {"generation": generation, "name": name[:name_len],
            "sites": sites, "endpoints": endpoints}


def _endpoints_read(rg, i):
    raw = _ep_snapshot(rg, i)
    return None if raw is None else _ep_parse(raw)


def _endpoints_find(rg, name):
    """mosn_endpoints_find(): the index, -1 if no entry has the name, -2
    if none has and an entry could not be read."""
    if not 0 < len(name) < EP_APP_NAME_MAX:
        return -1
    unread = False
    for i in range(EP_APPS):
        a = rg.ep_app(i)
        for _ in range(EP_SPINS):
            seq = _ep_read_begin(rg, a)
            if seq is None:
                unread = True
                break
            found = (rg.ld32(a + EPA_NAME_LEN) == len(name)
                     and bytes(rg._mm[a + EPA_NAME:a + EPA_NAME + len(name)])
                     == name)
            if _ep_read_end(rg, a, seq):
                if found:
                    return i
                break
        else:
            unread = True
    return -2 if unread else -1


def _endpoints_count(rg, name):
    """(endpoints, generation); (0, 0) for no such app, (-1, 0) if busy."""
    idx = _endpoints_find(rg, name)
    for _ in range(EP_SPINS):
        if idx == -1:
            return 0, 0
        if idx < 0:
            return -1, 0
        raw = _ep_snapshot(rg, idx)
        if raw is None:
            return -1, 0
        _, gen, n, name_len, got = EPA_HEAD.unpack_from(raw)
        if got[:name_len] != name or name_len != len(name):
            idx = _endpoints_find(rg, name)
            continue
        return (n, gen) if n <= EP_MAX else (-1, 0)
    return -1, 0


def _ep_fetch_add(rg, off):
    v = rg.ld32(off)
    rg.st32(off, v + 1)
    return v


def _ep_same(a, b):
    """mosn_endpoint_same() on (family, 16 address bytes, port)."""
    n = 4 if a[0] == EP_INET else 16
    return a[0] == b[0] and a[2] == b[2] and a[1][:n] == b[1][:n]


def _ep_round(rg, a, eps, first, count, rr, tried):
    if count == 0:
        return None
    start = _ep_fetch_add(rg, a + EPA_RR + 4 * rr)
    for k in range(count):
        family, _, port, _, addr = eps[first + (start + k) % count]
        ep = (family, addr, port)
        if not any(_ep_same(ep, t) for t in tried):
            return ep
    return None


def _endpoints_pick(rg, name, site, tried):
    """(MOSN_EP_* result, (family, addr, port) or None)."""
    idx = _endpoints_find(rg, name)
    for _ in range(EP_SPINS):
        if idx == -1:
            return EP_NONE, None
        if idx < 0:
            return EP_BUSY, None
        snap = _endpoints_read(rg, idx)
        if snap is None:
            return EP_BUSY, None
        if snap["name"] != name:
            idx = _endpoints_find(rg, name)
            continue
        a = rg.ep_app(idx)
        eps = snap["endpoints"]
        if 0 < len(site) < EP_SITE_MAX:
            for i, (first, count, _, sname) in enumerate(snap["sites"]):
                if sname == site and len(sname) == len(site):
                    ep = _ep_round(rg, a, eps, first, count, i, tried)
                    if ep is not None:
                        return EP_SITE, ep
                    break
        ep = _ep_round(rg, a, eps, 0, len(eps), EP_RR_ANY, tried)
        return (EP_ANY, ep) if ep is not None else (EP_NONE, None)
    return EP_BUSY, None


def _endpoints_set(rg, name, specs):
    """mosn_endpoints_set(): specs are codec.endpoint_spec() tuples;
    returns the app's entry index."""
    idx = free_app = empty_app = -1
    for i in range(EP_APPS):
        a = rg.ep_app(i)
        name_len = rg.ld32(a + EPA_NAME_LEN)
        if (name_len == len(name) and
                bytes(rg._mm[a + EPA_NAME:a + EPA_NAME + name_len]) == name):
            idx = i
            break
        if name_len == 0 and free_app < 0:
            free_app = i
        if rg.ld32(a + EPA_NENDPOINTS) == 0 and empty_app < 0:
            empty_app = i
    if idx < 0:
        if free_app < 0:
            free_app = empty_app
        if free_app < 0:
            raise RingError('app "%s": the endpoint table is full (%d apps)'
                            % (name.decode("utf-8", "replace"), EP_APPS))
        idx = free_app
    a = rg.ep_app(idx)
    same_app = (rg.ld32(a + EPA_NAME_LEN) == len(name) and
                bytes(rg._mm[a + EPA_NAME:a + EPA_NAME + len(name)]) == name)
    # sites keep their entries (and so their round-robin counters)
    sites = []
    for i in range(EP_SITES):
        first, count, nlen, sname = EP_SITE_ENTRY.unpack_from(
            rg._mm, a + EPA_SITES + EP_SITE_ENTRY.size * i)
        # a scribbled entry is made unused again, as in C
        sites.append(sname[:nlen] if same_app and 0 < nlen < EP_SITE_MAX
                     else b"")
    used = [False] * EP_SITES
    order = []
    for k, (_, _, _, site) in enumerate(specs):
        s = sites.index(site) if site in sites else -1
        if s >= 0 and used[s]:
            continue
        if s < 0:
            if b"" in sites:
                s = sites.index(b"")
            else:
                later = {spec[3] for spec in specs[k:]}
                s = next((i for i in range(EP_SITES)
                          if not used[i] and sites[i] not in later), -1)
            if s < 0:
                raise RingError('app "%s": more than %d sites'
                                % (name.decode("utf-8", "replace"),
                                   EP_SITES))
            sites[s] = site
        used[s] = True
        order.append(s)
    table = bytearray(EP_SITE_ENTRY.size * EP_SITES)
    eps = bytearray(ENDPOINT.size * EP_MAX)
    placed = {}
    pos = 0
    for s in order:
        first = pos
        for family, addr, port, site in specs:
            if site == sites[s]:
                ENDPOINT.pack_into(eps, ENDPOINT.size * pos, family, s, port,
                                   0, addr)
                pos += 1
        placed[s] = (first, pos - first)
    for i in range(EP_SITES):
        first, count = placed.get(i, (0, 0))
        EP_SITE_ENTRY.pack_into(table, EP_SITE_ENTRY.size * i, first, count,
                          len(sites[i]), sites[i])
    # the write: seq odd, the entry, generation, seq even
    seq = rg.ld32(a + EPA_SEQ) | 1
    rg.st32(a + EPA_SEQ, seq)
    rg.st32(a + EPA_NENDPOINTS, len(specs))
    rg._mm[a + EPA_SITES:a + EPA_SITES + len(table)] = table
    rg._mm[a + EPA_ENDPOINTS:a + EPA_ENDPOINTS + len(eps)] = eps
    if not same_app:
        rg._mm[a + EPA_NAME:a + EPA_NAME + EP_APP_NAME_MAX] = \
            name.ljust(EP_APP_NAME_MAX, b"\0")
        rg.st32(a + EPA_NAME_LEN, len(name))
    rg.st32(a + EPA_GENERATION, rg.ld32(a + EPA_GENERATION) + 1)
    rg.st32(a + EPA_SEQ, seq + 1)
    return idx


# requests and verdicts in slots

class SlotRequest:
    """A request record, copied out of its slot and checked.  ``ps``,
    ``gen``, ``deadline_ns`` and ``abandoned`` as in _ring.pyx."""

    __slots__ = ("_rec", "_fields", "_flags", "_table", "nheaders",
                 "request_id", "_status", "_rg", "_slot", "ps", "gen")

    @property
    def deadline_ns(self):
        if self._rg is None:
            return 0
        return self._rg.ld64(self._slot + S_DEADLINE_NS)

    @property
    def abandoned(self):
        return (self._rg is not None
                and self._rg.ld32(self._slot + S_ABANDONED) == self.gen)

    def _field(self, i):
        off, n = self._fields[i]
        return self._rec[off:off + n].decode("latin-1")

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
        return codec.decode_metadata(self._rec[off:off + n])

    @property
    def body(self):
        if not self._flags & REQ_F_BODY:
            return None
        off, n = self._fields[REQ_BODY]
        return self._rec[off:off + n]

    def _entries(self):
        """(name, value) byte pairs whose lengths fit the record."""
        for i in range(self.nheaders):
            off, nlen, vlen = HEADER_ENTRY.unpack_from(
                self._rec, self._table + i * HEADER_ENTRY.size)
            if off + nlen + vlen <= len(self._rec):
                yield (self._rec[off:off + nlen],
                       self._rec[off + nlen:off + nlen + vlen])

    def header_get(self, name, default=None):
        """The first value of one header, name matched without case, or
        default."""
        values = self.header_get_all(name.lower())
        return values[0] if values else default

    def header_get_all(self, lname):
        """Values of one header, name matched without case."""
        key = lname.encode("latin-1").lower()
        return [v.decode("latin-1") for n, v in self._entries()
                if len(n) == len(key) and n.lower() == key]

    def header_items(self):
        return [(n.decode("latin-1"), v.decode("latin-1"))
                for n, v in self._entries()]


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
    if (fields[REQ_HEADERS][1] != nheaders * HEADER_ENTRY.size
            or fields[REQ_HEADERS][0] % 4):
        return None
    r = SlotRequest()
    r._rec = mm[data:data + rec_len]
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
            raise RingError("the new response body of %d bytes does not "
                            "fit in the slot (%d bytes left; see "
                            "mosn_slot_size)" % (len(v.response_body), left))
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
        return VERDICT.pack(VERDICT.size,
                                         ACTION_ERROR, 0, 0, 0)
    return (VERDICT.pack(need, ACTION_ERROR, 0, 1, 0)
            + RECORD.pack(codec.REC_LOG, 0, len(msg)) + msg)


class Consumer:
    """This process as one consumer of the region (a Python worker)."""

    def __init__(self, region, index):
        region._live()
        if not 0 <= index < region._nc:
            raise RingError("consumer index %d is not in 0..%d"
                            % (index, region._nc - 1))
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
        req = _slot_request(self.region._mm, slot + S_DATA,
                            self.region._slot_size - SLOT_HEADER_SIZE)
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
        if (sw_state(w) != SLOT_TAKEN or sw_consumer(w) != self.index
                or sw_inc(w) != self.region.ld32(
                    self.region.cons(self.index) + C_INCARNATION) & 0xFFFF):
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
            except (RingError, UnicodeEncodeError, TypeError,
                    AttributeError) as e:
                buf = _error_verdict(cap, "verdict not encodable: %s" % (e,))
        start = slot + S_DATA + off
        rg._mm[start:start + len(buf)] = buf
        rg.st32(slot + S_VERDICT_OFF, off)
        rg.st32(slot + S_VERDICT_LEN, len(buf))
        p = _consumer_complete(rg, self.index, ps >> 32, ps & U32)
        if p < 0:
            return False
        self._wake_mask |= 1 << p
        return True

    def flush(self):
        """Rings the doorbells of producers that sleep; returns how many."""
        n = _consumer_flush(self.region, self.index, self._sock,
                            self._wake_mask)
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
            self.region.ld32(self.region.cons(self.index) + C_STATE))

    def serve_batch(self, dispatch, max=64):
        """Takes a batch, runs dispatch(request) on each, writes verdicts,
        rings the producers once.  Returns how many were taken.  A dispatch
        that returns PENDING answers later, with complete()."""
        batch = self.take(max)
        for ps in batch:
            req = self.request(ps)
            if req is None:
                self.complete(ps, codec.Verdict.error("malformed request"))
                continue
            verdict = dispatch(req)
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
            raise RingError('cannot bind the doorbell "%s": %s'
                            % (addr, os.strerror(e.errno))) from None
        self._sock.setblocking(False)

    def fileno(self):
        return self._sock.fileno() if self._sock is not None else -1

    _notify = -1

    def notify_fileno(self):
        """The channel's eventfd, opened on first use (as nginx does):
        consumers that can copy it wake this producer through it."""
        if self._notify < 0:
            self._notify = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.region.st32(self.region.prod(self.index) + P_NOTIFY_FD,
                             self._notify)
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
        rg._mm[sl + S_DATA:sl + S_DATA + len(record)] = record
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
        return bytes(rg._mm[start:start + n])

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
        out, self._rr = _producer_rescue(self.region, self.index, self._rr,
                                         BATCH_MAX)
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
