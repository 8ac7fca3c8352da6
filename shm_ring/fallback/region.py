"""The region in pure Python: shm_region.c, function by function (its
create, check and attach), what every side needs of a process, a futex and
a fence, and the helpers shm_core.h inlines for every side.
"""

import ctypes
import errno
import os
import platform
import stat
import threading
import time

from shm_ring.abi import (
    CACHELINE,
    CONSUMER_SIZE,
    CONS_DRAINING,
    CONS_LIVE,
    C_INCARNATION,
    C_STATE,
    EP_APPS,
    EP_APP_SIZE,
    HEADER,
    MAX_CONSUMERS,
    MAX_PRODUCERS,
    MAX_SLOTS,
    MAX_SLOT_SIZE,
    MIN_SLOT_SIZE,
    NAME_MAX,
    PRODUCER_SIZE,
    RING_ABI_VERSION,
    RING_MAGIC,
    R_ENTRIES,
    R_HEAD,
    R_TAIL,
    U32,
    WAKE_DIR_SUFFIX,
    entry,
)
from shm_ring.codec import RingError


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
    if end < 0 or buf[end + 1 : end + 2] != b" ":
        return None
    fields = buf[end + 2 :].split(b" ")
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
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # not FUTEX_PRIVATE: shared memory
_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _futex_wait(addr, val, timeout_ms):
    ts = None
    if timeout_ms >= 0:
        ts = ctypes.byref(
            _Timespec(timeout_ms // 1000, (timeout_ms % 1000) * 1000000)
        )
    # ctypes releases the GIL around the call
    _libc.syscall(
        ctypes.c_long(_SYS_FUTEX),
        ctypes.c_void_p(addr),
        ctypes.c_int(_FUTEX_WAIT),
        ctypes.c_uint32(val),
        ts,
        None,
        ctypes.c_int(0),
    )


def _futex_wake(addr):
    _libc.syscall(
        ctypes.c_long(_SYS_FUTEX),
        ctypes.c_void_p(addr),
        ctypes.c_int(_FUTEX_WAKE),
        ctypes.c_int(1),
        None,
        None,
        ctypes.c_int(0),
    )


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
        return "producer count %d is not in 1..%d" % (
            nproducers,
            MAX_PRODUCERS,
        )
    if not 1 <= nconsumers <= MAX_CONSUMERS:
        return "consumer count %d is not in 1..%d" % (
            nconsumers,
            MAX_CONSUMERS,
        )
    if not 2 <= slots <= MAX_SLOTS or slots & (slots - 1):
        return "slot count %d is not a power of two in 2..%d" % (
            slots,
            MAX_SLOTS,
        )
    if (
        not MIN_SLOT_SIZE <= slot_size <= MAX_SLOT_SIZE
        or slot_size % CACHELINE
    ):
        return "slot size %d is not a multiple of %d in %d..%d" % (
            slot_size,
            CACHELINE,
            MIN_SLOT_SIZE,
            MAX_SLOT_SIZE,
        )
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
    return {
        "header_size": header_size,
        "region_size": _align(off, 4096),
        "producers_off": producers_off,
        "consumers_off": consumers_off,
        "rings_off": rings_off,
        "ring_bytes": ring_bytes,
        "slots_off": slots_off,
        "endpoints_off": endpoints_off,
        "ep_apps": EP_APPS,
        "ep_app_size": EP_APP_SIZE,
    }


HEADER_FIELDS = (
    "magic",
    "abi",
    "header_size",
    "region_size",
    "nproducers",
    "nconsumers",
    "slots",
    "slot_size",
    "producers_off",
    "consumers_off",
    "rings_off",
    "ring_bytes",
    "slots_off",
    "master_pid",
    "supervisor_pid",
    "created_ns",
    "consumer_epoch",
    "reload_seq",
    "desired_workers",
    "pool_state",
    "name",
    "config_path",
    "endpoints_off",
    "ep_apps",
    "ep_app_size",
)


_RING_LAYOUT = (
    "region_size",
    "producers_off",
    "consumers_off",
    "rings_off",
    "ring_bytes",
    "slots_off",
)
_EP_LAYOUT = ("ep_apps", "ep_app_size", "endpoints_off")


def _unpack_header(buf):
    return dict(zip(HEADER_FIELDS, HEADER.unpack_from(buf)))


def _region_check(buf, size):
    """mosn_region_check(): the header, unpacked once and checked; raises
    RingError if the image is unusable.  Only this copy's layout is used
    afterwards: the live header is never read for an address again."""
    if size < HEADER.size:
        raise RingError(
            "region is %d bytes, smaller than its header "
            "(%d bytes)" % (size, HEADER.size)
        )
    h = _unpack_header(buf)
    if h["magic"] != RING_MAGIC:
        raise RingError("region has no ring magic (found 0x%x)" % h["magic"])
    if h["abi"] != RING_ABI_VERSION:
        raise RingError(
            "region speaks ring ABI version %d, this build "
            "speaks version %d: rebuild the nginx module and "
            "the Python extension from the same source"
            % (h["abi"], RING_ABI_VERSION)
        )
    if h["region_size"] != size:
        raise RingError(
            "region is %d bytes but its header says %d bytes"
            % (size, h["region_size"])
        )
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
            % (
                h["ep_apps"],
                h["ep_app_size"],
                h["endpoints_off"],
                layout["ep_apps"],
                layout["ep_app_size"],
                layout["endpoints_off"],
            )
        )
    return h


def _shm_path(name):
    # glibc's shm_open() maps "/name" to /dev/shm/name
    return "/dev/shm/" + name.lstrip("/")


def _wake_dir(name):
    """The region's wake-up directory, as mosn_wake_dir_name()."""
    n = len(name.encode())
    if not 0 < n < NAME_MAX:
        raise RingError(
            'region name "%s" is %s (1..%d bytes)'
            % (name[:128], "too long" if n else "empty", NAME_MAX - 1)
        )
    return _shm_path(name) + WAKE_DIR_SUFFIX


def _in_the_way(err):
    return {
        errno.ELOOP: "it is a symbolic link",
        errno.ENOTDIR: "it is not a directory",
    }.get(err, os.strerror(err))


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
        raise RingError(
            'mkdir("%s") failed: %s' % (path, os.strerror(e.errno))
        ) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise RingError(
            '"%s" is in the way: %s; remove it' % (path, _in_the_way(e.errno))
        ) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise RingError(
                '"%s" is in the way: it belongs to uid %d; '
                "remove it" % (path, st.st_uid)
            )
        os.fchmod(fd, 0o700)
        _wake_dir_clear(fd)
    finally:
        os.close(fd)


def _wake_dir_check(path, uid):
    """mosn_wake_dir_check(): the region owner's, mode 0700."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise RingError(
            'the wake-up directory "%s" of the region is '
            "missing: %s" % (path, os.strerror(e.errno))
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise RingError(
            '"%s" is in the way: %s'
            % (
                path,
                "it is a symbolic link"
                if stat.S_ISLNK(st.st_mode)
                else "it is not a directory",
            )
        )
    if st.st_uid != uid or st.st_mode & 0o077:
        raise RingError(
            '"%s" is in the way: uid %d mode %04o, not uid %d '
            "mode 0700 as the region's owner would make it"
            % (path, st.st_uid, stat.S_IMODE(st.st_mode), uid)
        )


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


# what shm_core.h inlines for every side


def _consumer_alive(rg, c, inc):
    if c >= rg._nc:
        return False
    o = rg.cons(c)
    st = rg.ld32(o + C_STATE)
    return (
        st in (CONS_LIVE, CONS_DRAINING)
        and rg.ld32(o + C_INCARNATION) & 0xFFFF == inc
    )


def _ring_room(rg, ring):
    return (rg.ld32(ring + R_HEAD) - rg.ld32(ring + R_TAIL)) & U32 < rg._slots


def _ring_push(rg, ring, e):
    """Only one process pushes to a ring: head is ours, tail theirs."""
    head = rg.ld32(ring + R_HEAD)
    if (head - rg.ld32(ring + R_TAIL)) & U32 >= rg._slots:
        return -1
    rg.st64(ring + R_ENTRIES + 8 * (head & (rg._slots - 1)), e)
    # the entry is stored before head makes it visible (x86-64 TSO)
    rg.st32(ring + R_HEAD, head + 1)
    return 0
