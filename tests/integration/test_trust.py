"""The trust boundary against other local users: nothing the gateway
creates can be taken first, redirected or reached by them.

An "other user" here is a process that switched to a uid that is neither
root nor nginx's worker user before doing what it does.
"""

import fcntl
import json
import os
import re
import signal
import socket

import pytest

from gateway import (
    ROUTED_UPSTREAMS,
    SITE_BODY,
    example_mosn,
    evil_module,
    sites,
    wait_for,
)

OTHER_UID = 23456

ROUTED = (
    ROUTED_UPSTREAMS
    + """
    server {
        listen 127.0.0.1:%PORT%;
        mosn_fallback continue;
        location / {
            mosn_filter_chain serverListener;
            add_header X-Mosn-Status $mosn_status always;
            proxy_pass http://$site;
        }
    }
"""
    + sites([("s1", 3450), ("s2", 3452), ("s3", 3453)])
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching users needs root"
)


class OtherUser:
    """A child process running as OTHER_UID; run(fn) runs fn there and
    hands back what it returned (or raised), keep(fn) runs fn and holds
    what it made until close()."""

    def __init__(self):
        self.pid = None

    def _fork(self, fn, hold):
        r, w = os.pipe()
        back_r, back_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.close(back_w)
            try:
                os.setgroups([])
                os.setgid(OTHER_UID)
                os.setuid(OTHER_UID)
                made = fn()
                out = repr(made)
            except Exception as e:  # reported to the parent
                out = "%s: %s" % (type(e).__name__, e)
            os.write(w, out.encode()[:4000])
            os.close(w)
            if hold:
                os.read(back_r, 1)  # until the parent closes its end
            os._exit(0)
        os.close(w)
        os.close(back_r)
        out = b""
        while True:  # the child closes its end once it answered
            chunk = os.read(r, 4096)
            if not chunk:
                break
            out += chunk
        os.close(r)
        return pid, back_w, out.decode()

    def run(self, fn):
        pid, back_w, out = self._fork(fn, False)
        os.close(back_w)
        os.waitpid(pid, 0)
        return out

    def keep(self, fn):
        self.pid, self._back_w, out = self._fork(fn, True)
        return out

    def close(self):
        if self.pid is not None:
            os.close(self._back_w)
            os.waitpid(self.pid, 0)
            self.pid = None


@pytest.fixture
def other_user():
    made = []

    def make():
        u = OtherUser()
        made.append(u)
        return u

    yield make
    for u in made:
        u.close()


def routed(gw, uid):
    resp = gw.get("/", {"uid": str(uid)})
    m = SITE_BODY.match(resp.text)
    return (m.group(1) if m else None), resp.header("X-Mosn-Status")


def test_doorbell_names_taken_first_do_not_switch_the_filters_off(
    gateway, other_user
):
    """Binding the doorbell names before nginx starts used to leave every
    nginx worker without a channel, so every request took the fallback
    (here: no filtering at all)."""
    gw = gateway(ROUTED, nginx_workers=2)
    # every name the abstract doorbells of this region could have had
    names = [
        b"\0ngx_mosn/" + gw.shm.encode() + b"." + str(p).encode()
        for p in range(64)
    ]

    def squat():
        socks = []
        for name in names:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind(name)
            socks.append(s)
        squat.socks = socks  # held until the process ends
        return len(socks)

    assert other_user().keep(squat) == "64"
    gw.start()
    for uid, want in ((2, "s1"), (150, "s2"), (201, "s3")):
        assert routed(gw, uid) == (want, "filtered")
    assert "doorbell" not in gw.error_log()


def test_other_users_cannot_reach_the_doorbells(gateway, other_user):
    gw = gateway(ROUTED, nginx_workers=2).start()
    wake_dir = "/dev/shm/%s.wake" % gw.shm
    st = os.lstat(wake_dir)
    assert st.st_mode & 0o7777 == 0o700
    assert st.st_uid not in (0, OTHER_UID)
    # a doorbell for each nginx worker, and one for each Python worker
    # that sleeps on one: all of them out of the other user's reach
    bells = sorted(os.listdir(wake_dir))
    assert {"p0", "p1"} <= set(bells), bells
    assert all(b[0] in "pc" for b in bells), bells

    def ring():
        outcomes = []
        for b in bells:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                s.sendto(b"\1", os.path.join(wake_dir, b))
                outcomes.append("sent")
            except OSError as e:
                outcomes.append(type(e).__name__)
        return outcomes

    assert other_user().run(ring) == repr(["PermissionError"] * len(bells))
    assert routed(gw, 2) == ("s1", "filtered")


@pytest.mark.parametrize("planted", ["directory", "symlink", "file"])
def test_something_in_the_way_of_the_wake_directory_stops_the_start(
    gateway, other_user, tmp_path, planted
):
    """Another user's directory, link or file at the wake-up directory's
    name is neither used nor followed: nginx refuses to start and says
    which path is in the way."""
    gw = gateway(ROUTED)
    wake_dir = "/dev/shm/%s.wake" % gw.shm
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    os.chown(target, OTHER_UID, OTHER_UID)

    def plant():
        if planted == "directory":
            os.mkdir(wake_dir, 0o777)
        elif planted == "symlink":
            os.symlink(str(target), wake_dir)
        else:
            with open(wake_dir, "w"):
                pass
        return "planted"

    assert other_user().run(plant) == repr("planted")
    try:
        rc, out = gw.nginx(check=False)
        gw.started = rc == 0  # stopped by the fixture if it started
        assert rc != 0, out
        assert '"%s" is in the way' % wake_dir in out + gw.error_log()
        assert "belongs to uid %d" % OTHER_UID in out + gw.error_log()
        # nothing was made through the link, nothing changed hands
        assert os.listdir(target) == []
        assert os.stat(target).st_uid == OTHER_UID
        assert os.lstat(wake_dir).st_uid == OTHER_UID
        assert not os.path.exists("/dev/shm/" + gw.shm)
    finally:
        if os.path.isdir(wake_dir) and not os.path.islink(wake_dir):
            os.rmdir(wake_dir)
        else:
            os.unlink(wake_dir)


def squat(names):
    """For the other user: each name in /dev/shm made its own file, with
    a shared lock held on it, as a running nginx holds its region's."""

    def make():
        for name in names:
            fd = os.open(
                "/dev/shm/" + name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600
            )
            fcntl.flock(fd, fcntl.LOCK_SH)
        return len(names)

    return make


def test_a_region_name_another_user_took_first_stops_the_start(
    gateway, other_user
):
    """A fixed mosn_shm_name another user made first (and locks): nginx
    refuses to start and names the path and its owner, not "another
    running nginx"; the file is left as it was."""
    gw = gateway(ROUTED)
    path = "/dev/shm/" + gw.shm
    try:
        assert other_user().keep(squat([gw.shm])) == "1"
        rc, out = gw.nginx(check=False)
        gw.started = rc == 0  # stopped by the fixture if it started
        assert rc != 0, out
        said = out + gw.error_log()
        assert (
            '"%s" is in the way: it belongs to uid %d (another user took '
            "the name first): remove it, or give this nginx another "
            "mosn_shm_name" % (path, OTHER_UID) in said
        ), said
        assert "another running nginx" not in said
        assert os.lstat(path).st_uid == OTHER_UID
    finally:
        os.unlink(path)


def test_default_region_names_another_user_took_first_are_passed_over(
    gateway, other_user
):
    """With no mosn_shm_name the region is named after the master's pid:
    another user who made the next thousand such names first neither
    stops the start nor loses a file; the region takes a name that cannot
    be guessed ahead, and nothing of it is left after quit."""
    gw = gateway(ROUTED, workers=1)
    conf = open(gw.conf_path).read()
    open(gw.conf_path, "w").write(
        conf.replace("mosn_shm_name %s;" % gw.shm, "")
    )
    with open("/proc/sys/kernel/ns_last_pid") as f:
        first = int(f.read()) + 1
    names = ["ngx_mosn.%d" % pid for pid in range(first, first + 1000)]
    try:
        assert other_user().keep(squat(names)) == "1000"
        gw.start(wait=False)
        made = wait_for(
            lambda: re.search(
                r'mosn: region "/(ngx_mosn\.[0-9a-f.]+)"', gw.error_log()
            ),
            10,
        )
        assert made, gw.error_log()
        gw.shm = made.group(1)
        gw.wait_ready()
        master = gw.master_pid()
        assert "ngx_mosn.%d" % master in names
        assert re.fullmatch(r"ngx_mosn\.%d\.[0-9a-f]{8}" % master, gw.shm)
        assert (
            '"/dev/shm/ngx_mosn.%d" is in the way: it belongs to uid %d '
            "(another user took the name first); the region takes another "
            "name" % (master, OTHER_UID) in gw.error_log()
        )
        assert routed(gw, 150) == ("s2", "filtered")
        gw.stop()
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(gw.shm)]
        assert all(
            os.lstat("/dev/shm/" + name).st_uid == OTHER_UID for name in names
        )
    finally:
        for name in names:
            try:
                os.unlink("/dev/shm/" + name)
            except FileNotFoundError:
                pass


def test_an_accepted_config_planted_by_another_user_is_never_loaded(
    gateway, other_user, tmp_path
):
    """Another user makes the directory of the accepted config first and,
    once nginx runs, writes there a config naming their own module, with
    the generation a respawned supervisor looks for.  It is neither used
    nor loaded: the gateway keeps its copy elsewhere, and starts again on
    it after a kill -9 of the supervisor."""
    env, marker = evil_module(tmp_path)
    os.chmod(tmp_path, 0o755)
    gw = gateway(
        ROUTED,
        workers=1,
        env=env,
    )
    planted = "/dev/shm/%s.config" % gw.shm
    assert other_user().run(lambda: os.mkdir(planted, 0o755)) == "None"
    try:
        gw.start()
        assert planted in gw.error_log()
        assert routed(gw, 150) == ("s2", "filtered")
        sup = gw.supervisor_pid()
        with open("/proc/%d/cmdline" % sup, "rb") as f:
            argv = f.read().split(b"\0")
        seq = int(argv[argv.index(b"--orders-seq") + 1])
        region = os.stat("/dev/shm/" + gw.shm)
        evil = example_mosn()
        evil["pyworker"] = {"modules": ["evil_filters"]}
        generation = {
            "generation": [gw.master_pid(), region.st_dev, region.st_ino],
            "seq": seq,
            "source": gw.mosn_path,
        }

        def plant():
            for name, doc in (
                ("mosn.json", evil),
                ("generation.json", generation),
            ):
                with open(os.path.join(planted, name), "w") as f:
                    json.dump(doc, f)
            return "planted"

        assert other_user().run(plant) == repr("planted")
        os.kill(sup, signal.SIGKILL)
        assert wait_for(
            lambda: (
                gw.supervisor_pid() not in (None, sup)
                and len(gw.live_workers()) == 1
                and gw.live_workers()[0]["pid"] in gw.python_pids()
            ),
            15,
        ), gw.error_log()[-2000:]
        assert routed(gw, 150) == ("s2", "filtered")
        assert not marker.exists(), (
            "a planted config was loaded, as uid " + marker.read_text()
        )
        gw.stop()
        # theirs is left as it was; nothing of the gateway's is left
        assert sorted(os.listdir(planted)) == [
            "generation.json",
            "mosn.json",
        ]
        assert os.lstat(planted).st_uid == OTHER_UID
        assert not [
            n
            for n in os.listdir("/dev/shm")
            if n.startswith(gw.shm) and n != gw.shm + ".config"
        ]
    finally:
        for name in os.listdir(planted):
            os.unlink(os.path.join(planted, name))
        os.rmdir(planted)
