"""A fleet: three gateways (nginx + pool each, on their own ports) fed
from a real etcd on loopback.  Endpoints change in etcd: every gateway
routes to the new ones; etcd stops: every gateway keeps routing; etcd
comes back: they follow again; a gateway cut off while etcd compacts
past its revision reads the prefix whole again."""

import os
import socket

import pytest

from fleet import (
    PREFIX,
    Cut,
    Etcd,
    FLEET_HTTP,
    Sites,
    app_value,
    discovery_stats,
    etcd_mosn,
    routed,
)
from gateway import wait_for

pytestmark = pytest.mark.slow

APP_KEY = PREFIX + "test"


@pytest.fixture
def sites():
    s = Sites(
        [("s1", "a"), ("s1", "b"), ("s1", "c"), ("s1", "d"), ("s2", "e")]
    ).start()
    yield s
    s.stop()


@pytest.fixture
def etcd():
    e = Etcd(1).start()
    yield e
    e.close()


@pytest.fixture
def cluster():
    e = Etcd(3).start()
    yield e
    e.close()


def test_an_etcd_that_cannot_start_leaves_nothing():
    """Its client port is taken: the start fails, and neither its data
    directory nor its log is left in /dev/shm."""
    e = Etcd(1)
    m = e.members[0]
    with socket.socket() as taken:
        taken.bind((m.host, m.client_port))
        taken.listen()
        with pytest.raises(AssertionError, match="address already in use"):
            e.start(timeout=5)
    assert not os.path.exists(m.data_dir)
    assert not os.path.exists(m.log_path)


def put_app(etcd, sites, *labels, site="s1"):
    """The app's endpoints: the sites of these labels (all in ``site``)."""
    return etcd.put(
        APP_KEY, app_value("test", [(sites.ports[l], site) for l in labels])
    )


def fleet(gateway, endpoints_for, n=3):
    gws = [
        gateway(FLEET_HTTP, mosn=etcd_mosn(endpoints_for(i))) for i in range(n)
    ]
    for gw in gws:
        gw.start()
    return gws


def all_route_to(gws, label, uid="2", timeout=10):
    """Every gateway routes uid to the site of ``label``, twice running."""

    def ok():
        return all(
            routed(gw, uid) == label and routed(gw, uid) == label for gw in gws
        )

    return wait_for(ok, timeout, step=0.05)


def test_three_gateways_follow_etcd_and_survive_its_outage(
    gateway, etcd, sites
):
    put_app(etcd, sites, "a")
    gws = fleet(gateway, lambda i: etcd.endpoints)
    assert all_route_to(gws, "a"), [routed(gw) for gw in gws]
    # a change in etcd: every gateway moves, no reload
    masters = [gw.master_pid() for gw in gws]
    rev = put_app(etcd, sites, "b")
    assert all_route_to(gws, "b"), [routed(gw) for gw in gws]
    assert wait_for(
        lambda: all(
            discovery_stats(gw).get("revision_number") == rev for gw in gws
        )
    )
    # etcd gone: every gateway keeps routing on the last endpoints
    etcd.stop()
    assert wait_for(
        lambda: all(
            discovery_stats(gw).get("connected") is False for gw in gws
        ),
        10,
    )
    for _ in range(3):
        assert [routed(gw) for gw in gws] == ["b"] * 3
    for gw in gws:
        assert "service discovery: etcd" in gw.error_log()
    # back, and changed again: all follow
    etcd.start()
    put_app(etcd, sites, "c", "d")
    assert wait_for(
        lambda: all(
            {routed(gw) for _ in range(4)} == {"c", "d"} for gw in gws
        ),
        15,
    ), [gw.error_log()[-1500:] for gw in gws]
    assert [gw.master_pid() for gw in gws] == masters
    for gw in gws:
        stats = discovery_stats(gw)
        assert stats["source"] == "etcd" and stats["connected"]
        assert (
            stats["errors"].get("stream", 0)
            + stats["errors"].get("connect", 0)
            >= 1
        ), stats


def test_a_deleted_app_is_emptied_and_a_bad_value_keeps_the_last_good(
    gateway, etcd, sites
):
    put_app(etcd, sites, "a")
    gws = fleet(gateway, lambda i: etcd.endpoints, n=1)
    gw = gws[0]
    assert all_route_to(gws, "a")
    # a value that is not good: refused, said once, the last good serves
    etcd.put(
        APP_KEY,
        {
            "app_name": "test",
            "server_list": [{"ip": "127.0.0.1", "port": 0, "site": "s1"}],
        },
    )
    assert wait_for(
        lambda: (
            "server_list[0].port: port 0 is not in "
            "1..65535; keeping the last good endpoints" in gw.error_log()
        ),
        10,
    ), gw.error_log()
    assert wait_for(lambda: discovery_stats(gw)["errors"].get("value") == 1)
    assert [routed(gw) for _ in range(3)] == ["a"] * 3
    etcd.put(APP_KEY, "{not json")
    assert wait_for(lambda: "invalid JSON" in gw.error_log(), 10)
    assert routed(gw) == "a"
    # another app's key does not change this one
    etcd.put(PREFIX + "other", app_value("other", [(sites.ports["e"], "s2")]))
    # the app's key gone: no endpoint, a 502 with the reason
    etcd.delete(APP_KEY)
    assert wait_for(lambda: gw.get("/", {"uid": "2"}).status == 502, 10)
    assert 'app "test" has no endpoint' in gw.error_log()
    put_app(etcd, sites, "b")
    assert all_route_to(gws, "b")


def test_a_cut_gateway_resumes_without_missing_or_replaying(
    gateway, etcd, sites
):
    """Cut off, it resumes from the revision after the last one it
    applied: the changes made meanwhile are applied once each, in order;
    when etcd compacted past that revision it reads the prefix whole."""
    put_app(etcd, sites, "a")
    cut = Cut(etcd.endpoints[0])
    try:
        gws = fleet(
            gateway, lambda i: [cut.endpoint] if i == 0 else etcd.endpoints
        )
        cutgw = gws[0]
        assert all_route_to(gws, "a")
        before = discovery_stats(cutgw)
        cut.cut()
        assert wait_for(
            lambda: discovery_stats(cutgw).get("connected") is False, 10
        )
        # three changes while it is away; the others follow each
        put_app(etcd, sites, "b")
        put_app(etcd, sites, "c")
        rev = put_app(etcd, sites, "d")
        assert all_route_to(gws[1:], "d")
        assert routed(cutgw) == "a"  # the last good, meanwhile
        cut.restore()
        assert all_route_to([cutgw], "d", timeout=15), cutgw.error_log()
        assert wait_for(
            lambda: discovery_stats(cutgw)["revision_number"] == rev
        )
        after = discovery_stats(cutgw)
        # each change applied once: no replay, none missed
        assert after["updates"] == before["updates"] + 3, (before, after)
        assert after["revision_number"] == rev
        assert "compacted" not in after["errors"]
        assert "replay" not in after["errors"]

        # cut again; changes, and a compaction past its revision
        cut.cut()
        assert wait_for(
            lambda: discovery_stats(cutgw).get("connected") is False, 10
        )
        put_app(etcd, sites, "e", site="s2")  # s1 has no endpoint now
        etcd.put(
            PREFIX + "other", app_value("other", [(sites.ports["a"], "s1")])
        )
        rev = put_app(etcd, sites, "b", "c")
        etcd.compact(rev)
        assert wait_for(
            lambda: (
                {routed(gw) for gw in gws[1:] for _ in range(2)} == {"b", "c"}
            ),
            10,
        )
        cut.restore()
        assert wait_for(
            lambda: {routed(cutgw) for _ in range(4)} == {"b", "c"}, 15
        ), cutgw.error_log()
        assert wait_for(
            lambda: discovery_stats(cutgw)["revision_number"] >= rev
        )
        stats = discovery_stats(cutgw)
        assert stats["errors"].get("compacted") == 1, stats
        assert "compacted past revision" in cutgw.error_log()
        region = cutgw.region()
        try:
            assert region.endpoints("other") == [
                ("127.0.0.1", sites.ports["a"], "s1")
            ]
        finally:
            region.close()
    finally:
        cut.close()


def test_a_three_member_cluster_loses_a_member_then_its_leader(
    gateway, cluster, sites
):
    put_app(cluster, sites, "a")
    # each gateway starts on a different member
    gws = fleet(
        gateway, lambda i: cluster.endpoints[i:] + cluster.endpoints[:i]
    )
    assert all_route_to(gws, "a")
    # a member that is not the leader dies: the one gateway on it moves
    leader = cluster.leader()
    follower = next(m for m in cluster.members if m is not leader)
    follower.stop()
    put_app(cluster, sites, "b")
    assert all_route_to(gws, "b", timeout=15), [
        gw.error_log()[-1000:] for gw in gws
    ]
    cluster.start_member(follower)
    # the leader dies: the others elect one, the gateways follow
    leader = cluster.leader()
    leader.stop()
    assert wait_for(lambda: _try_put(cluster, sites, "c"), 20)
    assert all_route_to(gws, "c", timeout=15), [
        gw.error_log()[-1000:] for gw in gws
    ]
    assert cluster.leader() is not leader


def _try_put(cluster, sites, label):
    try:
        put_app(cluster, sites, label)
        return True
    except AssertionError:
        return False


def test_a_dead_discovery_process_is_replaced_and_the_table_kept(
    gateway, etcd, sites
):
    from gateway import pids_of

    put_app(etcd, sites, "a")
    gw = fleet(gateway, lambda i: etcd.endpoints, n=1)[0]
    assert all_route_to([gw], "a")
    find = lambda: pids_of("pyworker discover --shm /" + gw.shm)  # noqa
    (victim,) = find()
    import os
    import signal

    os.kill(victim, signal.SIGKILL)
    # routing goes on from the table while it is away
    assert [routed(gw) for _ in range(3)] == ["a"] * 3
    assert wait_for(lambda: find() and find() != [victim], 10), gw.error_log()
    said = "the discovery process %d exited" % victim
    assert wait_for(lambda: said in gw.error_log(), 5), [
        line
        for line in gw.error_log().splitlines()
        if "discovery" in line or "pool" in line or "alert" in line
    ]
    put_app(etcd, sites, "b")
    assert all_route_to([gw], "b")


def test_etcd_with_authentication(gateway, etcd, sites):
    put_app(etcd, sites, "a")
    etcd.ctl("user", "add", "root:rootpw")
    etcd.ctl("user", "add", "gw:gwpw")
    etcd.ctl("role", "add", "gateway")
    etcd.ctl(
        "role", "grant-permission", "gateway", "--prefix=true", "read", PREFIX
    )
    etcd.ctl("user", "grant-role", "gw", "gateway")
    etcd.ctl("auth", "enable")
    etcd.auth = ["--user", "root:rootpw"]
    try:
        good = etcd_mosn(etcd.endpoints)
        good["pyworker"]["discovery"]["etcd"].update(
            username="gw", password="gwpw"
        )
        bad = etcd_mosn(etcd.endpoints)
        bad["pyworker"]["discovery"]["etcd"].update(
            username="gw", password="wrong"
        )
        gws = [gateway(FLEET_HTTP, mosn=m).start() for m in (good, bad)]
        assert all_route_to(gws[:1], "a")
        assert wait_for(
            lambda: "authentication failed" in gws[1].error_log(), 10
        ), gws[1].error_log()
        assert gws[1].get("/", {"uid": "2"}).status == 502
        put_app(etcd, sites, "b")
        assert all_route_to(gws[:1], "b")
    finally:
        etcd.ctl("auth", "disable")
        etcd.auth = []
