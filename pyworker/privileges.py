"""Who a Python worker runs as, and that it dies with its supervisor."""

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2

# the supervisor names itself to its children: a child that finds another
# parent was orphaned before it could ask to die with it
PARENT_ENV = "PYWORKER_SUPERVISOR_PID"

_libc = ctypes.CDLL(None, use_errno=True)


def drop_privileges(uid, gid):
    """Becomes the nginx workers' user; a no-op unless running as root.

    The kernel forgets a parent-death signal when the user changes: it is
    asked for again, so the process still dies with its parent."""
    if uid is None or os.geteuid() != 0:
        return
    sig = _death_signal()
    parent = os.getppid()
    os.setgroups([])
    os.setgid(gid if gid is not None else uid)
    os.setuid(uid)
    if os.geteuid() == 0 and uid != 0:
        raise RuntimeError("could not drop root privileges")
    if sig:
        _arm(sig, parent)


def die_with_parent(sig=signal.SIGKILL):
    """Asks the kernel to end this process when its parent ends."""
    expected = os.environ.get(PARENT_ENV)
    _arm(int(sig), int(expected) if expected else os.getppid())


def _arm(sig, parent):
    _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:
        # the parent died before the signal was asked for
        os.kill(os.getpid(), sig)


def _death_signal():
    value = ctypes.c_int(0)
    _libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0)
    return value.value
