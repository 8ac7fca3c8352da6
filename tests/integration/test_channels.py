"""Ring channels and names: sized from worker_processes, taken back from
crashed nginx workers with no supervisor running, and names or paths
too long for the region refused by `nginx -t`."""

import os
import signal
import time

import pytest

from gateway import ROUTED_UPSTREAMS, SITE_BODY, pids_of, sites, wait_for
from load import Load

ROUTED = (
    ROUTED_UPSTREAMS
    + """
    server {
        listen 127.0.0.1:%PORT%;
        mosn_timeout 2s;
        location / {
            mosn_filter_chain serverListener;
            add_header X-Mosn-Status $mosn_status always;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://$site;
        }
    }
"""
    + sites([("s1", 3450), ("s2", 3452), ("s3", 3453)])
)


def owned_by(gw):
    region = gw.region()
    try:
        return sorted(
            p["pid"]
            for p in region.stats()["producers"]
            if p["state"] == "owned"
        )
    finally:
        region.close()


def test_a_shm_name_too_long_is_refused(gateway):
    gw = gateway(ROUTED)
    gw.shm = "n" * 63
    gw.write_conf()
    rc, out = gw.nginx("-t", check=False)
    assert rc != 0
    assert (
        '"mosn_shm_name" "%s" is 63 bytes long, more than 62' % gw.shm in out
    )


def test_a_shm_name_with_a_slash_is_refused(gateway):
    gw = gateway(ROUTED)
    gw.shm = "a/b"
    gw.write_conf()
    rc, out = gw.nginx("-t", check=False)
    assert rc != 0 and '"mosn_shm_name" "a/b" may hold letters' in out


def test_a_config_path_too_long_is_refused(gateway):
    gw = gateway(ROUTED)
    deep = os.path.join(gw.prefix, "conf", *["d" * 60] * 8)
    os.makedirs(deep)
    path = os.path.join(deep, "mosn.json")
    os.rename(gw.mosn_path, path)
    with open(gw.conf_path) as f:
        conf = f.read().replace(
            "mosn_config mosn.json;", "mosn_config %s;" % path
        )
    with open(gw.conf_path, "w") as f:
        f.write(conf)
    assert len(path) >= 512
    rc, out = gw.nginx("-t", check=False)
    assert rc != 0
    assert (
        'the "mosn_config" path "%s" is %d bytes long, more than 511'
        % (path, len(path))
        in out
    )


def test_too_many_workers_for_the_ring_are_refused(gateway):
    gw = gateway(ROUTED, nginx_workers=128)
    rc, out = gw.nginx("-t", check=False)
    assert rc != 0
    assert (
        "worker_processes 128 needs 258 ring channels" in out
        and "use at most 127 worker processes" in out
    ), out


@pytest.mark.slow
def test_forty_workers_and_reloads_under_load(gateway):
    """Old and new workers side by side on each reload: every new worker
    gets a channel (past 31 workers some did not), every request is
    answered and filtered."""
    gw = gateway(
        ROUTED, workers=2, nginx_workers=40, main="worker_rlimit_nofile 4096;"
    ).start()
    with Load(gw.port, threads=4) as load:
        for _ in range(4):
            gw.reload()
            assert wait_for(
                lambda: (
                    len(gw.nginx_worker_pids()) == 40
                    and owned_by(gw) == sorted(gw.nginx_worker_pids())
                ),
                30,
            ), (len(owned_by(gw)), gw.error_log()[-3000:])
    assert not load.errors, load.errors[:5]
    statuses = load.statuses()
    assert statuses and all(s == 200 for s, _ in statuses)
    assert {m for _, m in statuses} == {"filtered"}, set(statuses)
    assert "no free producer channel" not in gw.error_log()
    assert SITE_BODY.match(gw.get("/", {"uid": "150"}).text).group(1) == "s2"


def test_crashed_workers_channels_come_back_with_no_supervisor(gateway):
    """mosn_spawn off and no pool at all: each nginx worker killed leaves
    its channel owned by a dead process; the worker that replaces it takes
    such channels back when none is free."""
    gw = gateway(
        ROUTED.replace("mosn_timeout 2s;", "mosn_timeout 100ms;")
        + "mosn_spawn off;"
    )
    gw.start(wait=False)
    assert wait_for(
        lambda: (
            len(gw.nginx_worker_pids()) == 1
            and owned_by(gw) == gw.nginx_worker_pids()
        ),
        10,
    )
    region = gw.region()
    nchannels = region.nproducers
    region.close()
    for _ in range(nchannels + 2):
        (victim,) = gw.nginx_worker_pids()
        os.kill(victim, signal.SIGKILL)
        assert wait_for(
            lambda: gw.nginx_worker_pids() not in ([], [victim]), 10
        )
        # the new worker owns a channel, though the dead ones kept theirs
        assert wait_for(
            lambda: set(gw.nginx_worker_pids()) <= set(owned_by(gw)), 10
        ), (owned_by(gw), gw.nginx_worker_pids(), gw.error_log()[-2000:])
        time.sleep(0.1)
    assert "no free producer channel" not in gw.error_log()
    # with no Python worker the fallback answers, within the timeout
    assert gw.get("/").header("X-Mosn-Status") in ("fallback", "timeout")


def test_a_second_nginx_does_not_take_a_running_gateways_region(gateway):
    """Two nginx started with the same mosn_shm_name: the second start is
    refused and says why; the first serves on, filtered, and keeps its
    region.  Once the first has quit, the second starts."""
    first = gateway(ROUTED).start()
    second = gateway(ROUTED)
    second.shm = first.shm
    second.write_conf()
    code, out = second.nginx(check=False)
    second.started = code == 0  # stopped by the fixture if it started
    assert code != 0, out
    assert (
        'the region "/%s" is in use by another running nginx' % first.shm
        in out + second.error_log()
    )
    # none of its processes runs (the first's share the region's name)
    assert not pids_of(second.prefix + "/")
    for uid in (150, 2, 150):
        r = first.get("/", {"uid": str(uid)})
        assert r.header("X-Mosn-Status") == "filtered"
    assert SITE_BODY.match(first.get("/", {"uid": "150"}).text).group(1) == (
        "s2"
    )
    assert len(first.live_workers()) == 1
    first.stop()
    second.start()
    r = second.get("/", {"uid": "150"})
    assert r.header("X-Mosn-Status") == "filtered"
    assert SITE_BODY.match(r.text).group(1) == "s2"
