"""The pool's life with nginx: started by it, replaced when it dies,
reloaded with it, gone with it."""

import os
import signal
import threading
import time

from gateway import (
    ROUTED_UPSTREAMS,
    SITE_BODY,
    boot_clock,
    example_mosn,
    listener,
    process_start,
    sites,
    wait_for,
)

ROUTED = (
    ROUTED_UPSTREAMS
    + """
    server {
        listen 127.0.0.1:%PORT%;
        mosn_timeout 2s;
        location / {
            mosn_filter_chain serverListener;
            add_header X-Mosn-Status $mosn_status always;
            proxy_pass http://$site;
        }
        location /slow {
            mosn_filter_chain slowListener;
            add_header X-Mosn-Status $mosn_status always;
            proxy_pass http://s1;
        }
    }
"""
    + sites([("s1", 3450), ("s2", 3452), ("s3", 3453)])
)


def slow_mosn(seconds=0.4, unit_key="uid"):
    return example_mosn(
        unit_key=unit_key,
        extra_listeners=[
            listener(
                "slowListener",
                {
                    "type": "slow",
                    "module": "testfilters",
                    "config": {"seconds": seconds},
                },
            )
        ],
    )


def site(gw, headers):
    return SITE_BODY.match(gw.get("/", headers).text).group(1)


def test_python_workers_run_as_the_nginx_user(gateway):
    gw = gateway(ROUTED, mosn=slow_mosn(), workers=2).start()
    master_uid = os.stat("/proc/%d" % gw.master_pid()).st_uid
    nginx_uids = {
        os.stat("/proc/%d" % p).st_uid for p in gw.nginx_worker_pids()
    }
    python_uids = {os.stat("/proc/%d" % p).st_uid for p in gw.python_pids()}
    assert len(gw.python_pids()) == 2
    assert python_uids == nginx_uids
    if master_uid == 0:
        assert 0 not in python_uids
    st = os.stat("/dev/shm/" + gw.shm)
    assert st.st_mode & 0o777 == 0o600
    assert st.st_uid in nginx_uids


def test_killed_python_worker_is_replaced_within_a_second(gateway):
    gw = gateway(ROUTED, mosn=slow_mosn(), workers=2).start()
    before = set(gw.python_pids())
    victim = sorted(before)[0]
    killed = boot_clock()
    os.kill(victim, signal.SIGKILL)
    # the supervisor starts the replacement within a second of the kill,
    # by the kernel's record of its start (not by when this test looks)
    new = wait_for(lambda: set(gw.python_pids()) - before, 15)
    assert new and len(new) == 1, new
    took = process_start(new.pop()) - killed
    assert took < 1.0, "replacement started %.2fs after the kill" % took
    # and it serves, as soon as this machine has loaded it
    assert wait_for(lambda: len(gw.live_workers()) == 2, 15), gw.error_log()
    assert site(gw, {"uid": "150"}) == "s2"


def test_request_in_flight_on_a_killed_worker_is_requeued(gateway):
    gw = gateway(ROUTED, mosn=slow_mosn(seconds=0.5), workers=2).start()
    result = {}

    def call():
        t0 = time.monotonic()
        r = gw.get("/slow")
        result.update(resp=r, took=time.monotonic() - t0)

    t = threading.Thread(target=call)
    t.start()
    # find the worker holding it: its consumer has taken one, none done
    busy = wait_for(
        lambda: [
            c
            for c in gw.region().stats()["consumers"]
            if c["state"] == "live" and c["taken"] > c["completed"]
        ],
        1.0,
    )
    assert busy, "the request was never taken"
    os.kill(busy[0]["pid"], signal.SIGKILL)
    t.join(5)
    r = result["resp"]
    assert r.status == 200 and r.header("X-Mosn-Status") == "filtered"
    # within mosn_timeout: re-queued, not timed out
    assert result["took"] < 2.0
    requeued = sum(p["requeued"] for p in gw.region().stats()["producers"])
    assert requeued >= 1
    gw.wait_idle()


def test_reload_applies_a_new_mosn_config(gateway):
    gw = gateway(ROUTED, mosn=slow_mosn(), workers=2).start()
    assert site(gw, {"uid": "150"}) == "s2"
    old = set(gw.python_pids())
    gw.write_mosn(slow_mosn(unit_key="userid"))
    gw.reload()
    assert wait_for(
        lambda: (
            not (set(gw.python_pids()) & old) and len(gw.live_workers()) == 2
        ),
        15,
    ), gw.error_log()
    assert site(gw, {"userid": "150"}) == "s2"
    assert site(gw, {"userid": "250"}) == "s3"


def test_reload_with_a_broken_config_keeps_the_old_one(gateway):
    gw = gateway(ROUTED, mosn=slow_mosn(), workers=1).start()
    old = set(gw.python_pids())
    gw.write_mosn("{ broken")
    gw.reload()
    time.sleep(1.5)
    assert "mosn.json" in gw.error_log()
    assert set(gw.python_pids()) == old
    assert site(gw, {"uid": "150"}) == "s2"


def test_quit_leaves_no_process_and_no_region(gateway):
    gw = gateway(ROUTED, mosn=slow_mosn(), workers=2).start()
    assert gw.python_pids() and gw.supervisor_pid()
    gw.stop()
    assert not gw.processes()
    assert not os.path.exists("/dev/shm/" + gw.shm)


def test_killed_nginx_worker_is_replaced_and_its_slots_reclaimed(gateway):
    gw = gateway(ROUTED, mosn=slow_mosn(seconds=0.3), workers=1).start()

    def call():
        try:
            gw.get("/slow")
        except ConnectionError:
            pass  # its nginx worker is the one killed

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    assert wait_for(lambda: gw.slots_in_use() >= 1, 1.0)
    worker = gw.nginx_worker_pids()[0]
    os.kill(worker, signal.SIGKILL)
    for t in threads:
        t.join(5)
    assert wait_for(
        lambda: gw.nginx_worker_pids() and gw.nginx_worker_pids()[0] != worker,
        5,
    )
    gw.wait_ready()
    assert site(gw, {"uid": "50"}) == "s1"
    gw.wait_idle(timeout=5)
    owned = [
        p for p in gw.region().stats()["producers"] if p["state"] == "owned"
    ]
    assert [p["pid"] for p in owned] == gw.nginx_worker_pids()
