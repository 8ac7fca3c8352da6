"""The Python supervisor as one of nginx's own processes: respawned by the
master when it dies, its workers and admin process gone with it, nothing
of the gateway left in /dev/shm after quit, after a failed start or after
a crash, and nothing it does as root taken from the shared region."""

import json
import mmap
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from shm_ring import abi

from gateway import (
    ROUTED_UPSTREAMS,
    SITE_BODY,
    example_mosn,
    evil_module,
    free_port,
    pids_of,
    wait_for,
)
from load import Load

ROUTED = (
    ROUTED_UPSTREAMS
    + """
    server {
        listen 127.0.0.1:%PORT%;
        mosn_timeout 1s;
        location / {
            mosn_filter_chain serverListener;
            add_header X-Mosn-Status $mosn_status always;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://$site;
        }
    }
    server { listen 127.0.0.1:%P3450%; return 200 "site s1 from 3450"; }
    server { listen 127.0.0.1:%P3452%; return 200 "site s2 from 3452"; }
    server { listen 127.0.0.1:%P3453%; return 200 "site s3 from 3453"; }
"""
)

# a gateway's is gone "within a moment"
MOMENT = 0.5


def with_admin(port):
    mosn = example_mosn()
    mosn["admin"] = {
        "address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}
        }
    }
    return mosn


def parent_of(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port):
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                return True
    return False


def shm_entries(gw):
    """What of this gateway is in /dev/shm."""
    return sorted(
        name
        for name in os.listdir("/dev/shm")
        if name == gw.shm or name.startswith(gw.shm + ".")
    )


def write_header(gw, offset, data):
    fd = os.open("/dev/shm/" + gw.shm, os.O_RDWR)
    try:
        with mmap.mmap(fd, 4096) as m:
            m[offset : offset + len(data)] = data
    finally:
        os.close(fd)


def admin_pids(gw):
    return pids_of("pyworker admin --shm /" + gw.shm)


def wait_respawned(gw, old_supervisor, workers=1, timeout=15):
    """Until a new supervisor's own workers serve."""

    def serving():
        sup = gw.supervisor_pid()
        if sup in (None, old_supervisor):
            return False
        pids = set(gw.python_pids())
        return (
            len([c for c in gw.live_workers() if c["pid"] in pids]) >= workers
        )

    assert wait_for(serving, timeout), gw.error_log()


def test_the_supervisor_is_the_masters_child(gateway):
    gw = gateway(ROUTED).start()
    assert parent_of(gw.supervisor_pid()) == gw.master_pid()


# A new supervisor and its workers start Python and import the package: a
# second or two on a quiet machine, more on a loaded one.  The bound tells
# a pool that recovers from one that never does (every request taking the
# fallback for good), not the machine's speed.
RECOVERY = 5.0


def test_killed_supervisor_is_respawned_under_load(gateway):
    """kill -9 the supervisor, then each worker: filtered again within
    RECOVERY s each time, every request answered 2xx, nothing left after
    quit."""
    admin_port = free_port()
    gw = gateway(ROUTED, mosn=with_admin(admin_port), workers=2).start()
    assert wait_for(lambda: len(admin_pids(gw)) == 1, 10)
    load = Load(gw.port, threads=4).start()
    try:
        time.sleep(0.5)
        old_sup = gw.supervisor_pid()
        old_children = set(gw.python_pids()) | set(admin_pids(gw))
        since = time.monotonic()
        os.kill(old_sup, signal.SIGKILL)

        # its children go with it, at once
        assert wait_for(
            lambda: not any(alive(p) for p in old_children), MOMENT
        ), [p for p in old_children if alive(p)]

        # the master starts a new one, its own child
        new_sup = wait_for(
            lambda: gw.supervisor_pid() != old_sup and gw.supervisor_pid(), 5
        )
        assert new_sup and parent_of(new_sup) == gw.master_pid()
        assert wait_for(
            lambda: load.filtered_again(since, RECOVERY), RECOVERY + 1
        )
        time.sleep(0.5)  # and stays filtered
        took = load.filtered_again(since, RECOVERY)
        assert took is not None, (
            "not filtered again within %g s" % RECOVERY,
            load.describe(since),
            gw.error_log(),
        )

        # then each of the new supervisor's workers
        for victim in sorted(gw.python_pids()):
            since = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            assert wait_for(
                lambda: load.filtered_again(since, RECOVERY), RECOVERY + 1
            )
            time.sleep(0.5)
            assert load.filtered_again(since, RECOVERY) is not None, (
                "not filtered again within %g s of killing %d"
                % (RECOVERY, victim),
                load.describe(since),
            )

        # the admin API came back on its port
        assert wait_for(
            lambda: len(admin_pids(gw)) == 1 and _listening(admin_port), 10
        )
    finally:
        load.stop()
    assert not load.errors, load.errors[:5]
    statuses = load.statuses()
    assert all(200 <= status < 300 for status, _ in statuses), statuses
    assert statuses.get((200, "filtered"), 0) > 0, statuses
    gw.stop()
    assert not gw.processes()
    assert not shm_entries(gw)
    assert not _listening(admin_port)


def test_quit_and_reload_reach_a_respawned_supervisor(gateway):
    gw = gateway(ROUTED, workers=1).start()
    old = gw.supervisor_pid()
    os.kill(old, signal.SIGKILL)
    wait_respawned(gw, old)
    sup = gw.supervisor_pid()
    old = set(gw.python_pids())
    gw.reload()
    # a reload rolls the workers, and keeps the supervisor
    assert wait_for(
        lambda: (
            not (set(gw.python_pids()) & old) and len(gw.live_workers()) == 1
        ),
        15,
    ), gw.error_log()
    assert gw.supervisor_pid() == sup
    gw.stop()
    assert not shm_entries(gw)


def unit_key_served(gw, admin_port):
    """The UNIT key the workers route by, and the admin API's config
    (None while the admin process restarts)."""
    served = [
        key
        for key in ("uid", "user")
        if SITE_BODY.match(gw.get("/", {key: "150"}).text).group(1) == "s2"
    ]
    try:
        with urllib.request.urlopen(
            "http://127.0.0.1:%d/api/v1/config_dump" % admin_port, timeout=5
        ) as r:
            dump = json.load(r)
    except OSError:
        return None
    listener = dump["servers"][0]["listeners"][0]
    metadataer = listener["stream_filters"][0]["config"]["metadataers"][0]
    return served, metadataer["config"]["unit_key"]


def test_processes_started_after_a_refused_reload_load_the_accepted_config(
    gateway,
):
    """nginx refuses a reload of a broken MOSN config and the old one
    serves on, also in every process started after it: a worker that
    replaces one killed, the admin process, a respawned supervisor.  The
    next good reload is what they all load then."""
    admin_port = free_port()
    gw = gateway(ROUTED, mosn=with_admin(admin_port), workers=1).start()
    assert wait_for(lambda: _listening(admin_port), 10)
    assert unit_key_served(gw, admin_port) == (["uid"], "uid")

    gw.write_mosn('{"servers": [')
    gw.reload()
    assert wait_for(lambda: "is refused by" in gw.error_log(), 10)

    # a worker killed: its replacement loads the config accepted last
    victim = gw.python_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(
        lambda: (
            gw.python_pids()
            and victim not in gw.python_pids()
            and len(gw.live_workers()) == 1
        ),
        15,
    ), gw.error_log()[-2000:]
    # and so does the admin process, restarted after a kill
    os.kill(admin_pids(gw)[0], signal.SIGKILL)
    assert wait_for(lambda: not _listening(admin_port), 5)
    assert wait_for(lambda: _listening(admin_port), 15), gw.error_log()
    assert unit_key_served(gw, admin_port) == (["uid"], "uid")

    # a supervisor respawned by the master: the same, with its workers
    sup = gw.supervisor_pid()
    os.kill(sup, signal.SIGKILL)
    wait_respawned(gw, sup)
    assert wait_for(lambda: _listening(admin_port), 15), gw.error_log()
    assert unit_key_served(gw, admin_port) == (["uid"], "uid")
    assert "starting on the config accepted last" in gw.error_log()
    r = gw.get("/", {"uid": "150"})
    assert r.header("X-Mosn-Status") == "filtered"

    # a good reload is accepted, and is what a respawn starts on
    mosn = with_admin(admin_port)
    mosn["servers"][0]["listeners"][0]["stream_filters"][0]["config"][
        "metadataers"
    ][0]["config"]["unit_key"] = "user"
    gw.write_mosn(mosn)
    gw.reload()
    assert wait_for(
        lambda: unit_key_served(gw, admin_port) == (["user"], "user"), 20
    ), gw.error_log()[-2000:]
    sup = gw.supervisor_pid()
    os.kill(sup, signal.SIGKILL)
    wait_respawned(gw, sup)
    assert wait_for(lambda: _listening(admin_port), 15), gw.error_log()
    assert unit_key_served(gw, admin_port) == (["user"], "user")
    gw.stop()
    assert not shm_entries(gw)


def test_nothing_left_after_the_master_is_killed(gateway):
    """kill -9 of every process of the gateway, master included: the next
    start removes what the crash left and starts cleanly."""
    gw = gateway(ROUTED, workers=1).start()
    master = gw.master_pid()
    nginx_workers = gw.nginx_worker_pids()
    os.kill(master, signal.SIGKILL)
    # the supervisor and its workers leave with the master
    assert wait_for(
        lambda: not gw.python_pids() and not gw.supervisor_pid(), 5
    )
    for pid in nginx_workers:
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not gw.processes(), 5)
    # a crash of all of it at once leaves the region behind
    assert os.path.exists("/dev/shm/" + gw.shm)
    gw.start()
    assert gw.get("/", {"uid": "2"}).header("X-Mosn-Status") == "filtered"
    gw.stop()
    assert not shm_entries(gw)


def test_nothing_left_of_a_default_named_region_after_a_crash(gateway):
    gw = gateway(ROUTED, workers=1)
    conf = open(gw.conf_path).read()
    open(gw.conf_path, "w").write(
        conf.replace("mosn_shm_name %s;" % gw.shm, "")
    )
    gw.start(wait=False)
    pid_file = os.path.join(gw.prefix, "logs", "nginx.pid")
    assert wait_for(lambda: os.path.exists(pid_file), 10)
    master = gw.master_pid()
    region = "ngx_mosn.%d" % master
    assert wait_for(
        lambda: os.path.exists("/dev/shm/" + region + ".stats"), 10
    )
    everyone = [master] + pids_of("--shm /" + region) + gw.nginx_worker_pids()
    # a crash of all of it at once: frozen first, so that none sees
    # another die (the Python side leaves with the master) and cleans up
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in everyone:
            os.kill(pid, sig)
    assert wait_for(lambda: not any(alive(p) for p in everyone), 5)
    assert os.path.exists("/dev/shm/" + region + ".stats")
    os.unlink(pid_file)
    gw.start(wait=False)
    assert wait_for(lambda: os.path.exists(pid_file), 10)
    assert wait_for(
        lambda: (
            not os.path.exists("/dev/shm/" + region)
            and not os.path.exists("/dev/shm/" + region + ".stats")
        ),
        10,
    ), os.listdir("/dev/shm")
    new = "ngx_mosn.%d" % gw.master_pid()
    assert wait_for(lambda: os.path.exists("/dev/shm/" + new + ".stats"), 10)
    gw.stop()
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(new)], (
        gw.error_log()[-3000:]
    )


def test_nothing_left_after_a_failed_start(gateway):
    # nginx fails after the region is made: its pid file cannot be written
    gw = gateway(
        ROUTED,
        workers=1,
        main="pid %s/no/such/dir/nginx.pid;" % "/nonexistent",
    )
    conf = open(gw.conf_path).read()
    open(gw.conf_path, "w").write(conf.replace("pid logs/nginx.pid;\n", ""))
    gw.nginx(check=False)
    assert wait_for(lambda: not gw.processes() and not shm_entries(gw), 10), (
        gw.processes(),
        shm_entries(gw),
        gw.error_log(),
    )
    # nginx fails before: its port is taken
    other = gateway(ROUTED, workers=1).start()
    gw2 = gateway(ROUTED, workers=1)
    gw2.port = other.port
    gw2.write_conf()
    code, _ = gw2.nginx(check=False)
    assert code != 0
    assert wait_for(lambda: not gw2.processes() and not shm_entries(gw2), 10)


@pytest.mark.parametrize("suffix", [".stats", ".config"])
def test_a_symlink_at_a_private_path_neither_stops_nor_redirects(
    gateway, tmp_path, suffix
):
    """The stats directory and the accepted config's: a link planted at
    either name is not followed; the gateway keeps its own elsewhere."""
    gw = gateway(ROUTED, workers=1)
    target = tmp_path / "target"
    target.mkdir()
    planted = "/dev/shm/%s%s" % (gw.shm, suffix)
    os.symlink(target, planted)
    try:
        gw.start()
        assert gw.get("/", {"uid": "2"}).header("X-Mosn-Status") == "filtered"
        assert planted in gw.error_log()
        # a respawned supervisor does not follow it either
        sup = gw.supervisor_pid()
        os.kill(sup, signal.SIGKILL)
        wait_respawned(gw, sup)
        assert gw.get("/", {"uid": "2"}).header("X-Mosn-Status") == "filtered"
        # nothing written through the link; the link is not the gateway's
        time.sleep(1.5)
        assert list(target.iterdir()) == []
        gw.stop()
        assert os.path.islink(planted)
        assert shm_entries(gw) == [gw.shm + suffix]
    finally:
        os.unlink(planted)


def test_root_takes_no_config_path_from_the_region(gateway, tmp_path):
    """A process of the workers' user writes another config into the
    region around a reload: the supervisor, root, never reads it."""
    env, marker = evil_module(tmp_path)
    evil = example_mosn()
    evil["pyworker"] = {"modules": ["evil_filters"]}
    gw = gateway(
        ROUTED,
        workers=1,
        env=env,
    )
    evil_path = os.path.join(gw.prefix, "conf", "evil.json")
    with open(evil_path, "w") as f:
        import json

        json.dump(evil, f)
    gw.start()
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            """
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 4096)
path = sys.argv[2].encode() + b"\\0"
end = time.monotonic() + 4
while time.monotonic() < end:
    m[%d:%d + len(path)] = path
    m[%d:%d + 4] = (3).to_bytes(4, 'little')
    if sys.stdout:
        print("writing", flush=True)
        sys.stdout = None
"""
            % (abi.H_CONFIG_PATH, abi.H_CONFIG_PATH, 104, 104),
            "/dev/shm/" + gw.shm,
            evil_path,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    old = set(gw.python_pids())
    try:
        assert writer.stdout.readline() == "writing\n"
        gw.reload()
        # the reload rolls the worker onto a config
        assert wait_for(
            lambda: (
                not (set(gw.python_pids()) & old)
                and len(gw.python_pids()) == 1
                and len(gw.live_workers()) == 1
            ),
            30,
        ), gw.error_log()
    finally:
        writer.wait(10)
    assert not marker.exists(), (
        "the region's config was loaded, as uid " + marker.read_text()
    )


def test_master_takes_no_name_from_the_region(gateway):
    """A forged region name neither makes the master unlink another shm
    object on quit nor a respawned supervisor attach elsewhere."""
    decoy = "mosn_decoy_" + uuid.uuid4().hex[:8]
    open("/dev/shm/" + decoy, "w").close()
    try:
        gw = gateway(ROUTED, workers=1).start()
        write_header(gw, abi.H_NAME, ("/" + decoy).encode() + b"\0")
        old = gw.supervisor_pid()
        os.kill(old, signal.SIGKILL)
        wait_respawned(gw, old)
        assert pids_of("pyworker serve --shm /%s " % gw.shm)
        assert not pids_of("--shm /" + decoy)
        gw.stop()
        assert os.path.exists("/dev/shm/" + decoy)
        assert not shm_entries(gw)
    finally:
        os.unlink("/dev/shm/" + decoy)


def test_master_signals_no_pid_that_may_be_reused(gateway, tmp_path):
    """The supervisor dies and its pid goes to an unrelated process: a
    reload must not signal that process."""
    log = tmp_path / "signals"
    gw = gateway(ROUTED, workers=1).start()
    old = gw.supervisor_pid()
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: not alive(old), 5)
    time.sleep(0.2)  # the master reaps it (and respawns)
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGHUP, lambda *a: open(%r, 'a')"
        ".write('HUP\\n'))\n"
        "time.sleep(30)\n"
    ) % str(log)
    decoy = None
    for _ in range(2000):
        # others on the machine take pids too: fork at once after the write
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(old - 1))
        pid = os.fork()
        if pid == 0:
            os.execv(sys.executable, [sys.executable, "-c", code])
        if pid == old:
            decoy = pid
            break
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert decoy is not None, "could not get pid %d back" % old
    try:
        time.sleep(0.5)  # its handler is installed
        gw.reload()
        time.sleep(1)
        assert os.waitpid(decoy, os.WNOHANG) == (0, 0) and not log.exists(), (
            "the master signalled pid %d, no longer its supervisor" % old
        )
    finally:
        os.kill(decoy, signal.SIGKILL)
        os.waitpid(decoy, 0)
