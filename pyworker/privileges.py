"""Who a Python worker runs as, and that it dies with its supervisor."""

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def drop_privileges(uid, gid):
    """Becomes the nginx workers' user; a no-op unless running as root."""
    if uid is None or os.geteuid() != 0:
        return
    os.setgroups([])
    os.setgid(gid if gid is not None else uid)
    os.setuid(uid)
    if os.geteuid() == 0 and uid != 0:
        raise RuntimeError("could not drop root privileges")


def die_with_parent(sig=signal.SIGKILL):
    """Asks the kernel to end this process when its parent ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
