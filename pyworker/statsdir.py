"""The stats directory, /dev/shm/<region>.stats: the workers write their
counters there and the admin process reads them.

/dev/shm is writable by every local user, so anyone could put something
at that name first.  The supervisor (root, when nginx starts as root)
makes the directory with mkdir, which never follows a link, takes back
only a directory of its own left by a run that crashed, and otherwise
says what is in the way and uses a fresh directory of an unpredictable
name instead: nothing planted there can stop it or redirect a write.
"""

import logging
import os
import re
import shutil
import stat
import tempfile

log = logging.getLogger("pyworker.supervisor")

SHM = "/dev/shm"


class StatsDirError(Exception):
    """Something that is not this gateway's is at the stats path."""


def path_for(shm):
    return os.path.join(SHM, shm.lstrip("/") + ".stats")


def make(shm, uid=None, gid=None):
    """The stats directory of region shm, made afresh: 0700 and owned by
    the workers' user.  Never fails on what someone put in the way."""
    path = path_for(shm)
    remove_fallbacks(path, uid)
    try:
        _make_at(path, uid, gid)
        return path
    except StatsDirError as exc:
        fresh = tempfile.mkdtemp(
            prefix=os.path.basename(path) + ".", dir=os.path.dirname(path)
        )
        log.error(
            "stats directory %s: %s; using %s instead (remove it, "
            "and the next start uses %s again)",
            path,
            exc,
            fresh,
            path,
        )
        _own(fresh, uid, gid)
        return fresh


def remove(path, uid=None):
    """Removes a directory this gateway made; leaves anything else."""
    if path is None:
        return
    try:
        if ours(path, uid):
            shutil.rmtree(path)
    except (OSError, StatsDirError) as exc:
        log.warning("cannot remove %s: %s", path, exc)


def clean_stale(uid=None):
    """Removes the stats and accepted-config directories of regions that
    nginx masters killed before they could stop (regions named
    ngx_mosn.PID by default, ngx_mosn.PID.SUFFIX where another user had
    taken that name)."""
    try:
        names = os.listdir(SHM)
    except OSError:
        return
    for name in names:
        m = re.fullmatch(
            r"(ngx_mosn\.(\d+)(?:\.[0-9a-f]{8})?)\.(?:stats|config)(\.\w+)?",
            name,
        )
        if m is None or os.path.lexists(os.path.join(SHM, m.group(1))):
            continue
        if _pid_alive(int(m.group(2))):
            continue
        path = os.path.join(SHM, name)
        try:
            if ours(path, uid):
                shutil.rmtree(path)
                log.warning("removed the stale directory %s", path)
        except (OSError, StatsDirError):
            pass


def _make_at(path, uid, gid):
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        # one of ours, left by a run that crashed: emptied, then made anew
        if not ours(path, uid):
            raise StatsDirError("not made by this gateway") from None
        shutil.rmtree(path)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            raise StatsDirError(
                "made again by someone else while it was being removed"
            ) from None
    _own(path, uid, gid)


def ours(path, uid):
    """True for a real directory, owned by root or the workers' user and
    open to no one else; raises StatsDirError saying why not."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise StatsDirError("is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise StatsDirError("is not a directory")
    owners = {0, os.geteuid()} | ({uid} if uid is not None else set())
    if st.st_uid not in owners:
        raise StatsDirError("is owned by uid %d" % st.st_uid)
    if st.st_mode & 0o077:
        raise StatsDirError(
            "is open to other users (mode %o)" % stat.S_IMODE(st.st_mode)
        )
    return True


def _own(path, uid, gid):
    if uid is not None and os.geteuid() == 0:
        os.chown(
            path, uid, gid if gid is not None else uid, follow_symlinks=False
        )


def remove_fallbacks(path, uid):
    """The fresh directories earlier runs fell back to beside path."""
    base = os.path.basename(path) + "."
    try:
        names = os.listdir(SHM)
    except OSError:
        return
    for name in names:
        if name.startswith(base):
            remove(os.path.join(SHM, name), uid)


def _pid_alive(pid):
    """A killed master may wait as a zombie for its reaper: not alive."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
