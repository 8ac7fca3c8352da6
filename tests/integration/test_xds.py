"""Endpoints from an xDS control plane (ADS, CDS + EDS, state of the
world) that speaks the real protocol over grpcio: each cluster an app,
each endpoint's envoy.lb "site" its site, so mosn_subset routes the
worked example unchanged; ACK and NACK by version and nonce; a control
plane that goes away and comes back."""

import pytest

from fleet import FLEET_HTTP, Sites, discovery_stats, routed
from gateway import example_mosn, wait_for
from xds_server import (
    CDS,
    EDS,
    ControlPlane,
    assignment,
    dns_cluster,
    eds_cluster,
    static_cluster,
)

pytestmark = pytest.mark.slow

HTTP = (
    FLEET_HTTP
    + """
    upstream statics {
        mosn_subset statics key=$mosn_meta_UNIT;
        server 0.0.0.1;
    }
    server {
        listen 127.0.0.1:%P9000%;
        location / {
            mosn_filter_chain serverListener;
            proxy_pass http://statics;
        }
    }
"""
)


@pytest.fixture
def sites():
    s = Sites(
        [("s1", "a"), ("s1", "b"), ("s2", "c"), ("s3", "d"), ("s1", "e")]
    ).start()
    yield s
    s.stop()


@pytest.fixture
def plane():
    cp = ControlPlane().start()
    yield cp
    cp.stop()


def xds_mosn(port, **extra):
    mosn = example_mosn()
    mosn["pyworker"] = {
        "discovery": {
            "xds": dict(
                server="127.0.0.1:%d" % port, node_id="gateway-1", **extra
            )
        }
    }
    return mosn


def eps(sites, *items):
    return [
        ("127.0.0.1", sites.ports[label], site) + tuple(rest)
        for label, site, *rest in items
    ]


def acks(plane, type_url):
    """(version_info, nonce, error message) of each request of a type."""
    return [
        (r.version_info, r.response_nonce, r.error_detail.message)
        for r in plane.recorded(type_url)
    ]


def test_cds_and_eds_route_the_worked_example(gateway, plane, sites):
    plane.set_clusters(
        "1",
        [
            eds_cluster("test"),
            static_cluster("statics", eps(sites, ("d", "s3"))),
        ],
    )
    plane.set_endpoints(
        "1",
        [
            assignment(
                "test", eps(sites, ("a", "s1"), ("b", "s1"), ("c", "s2"))
            )
        ],
    )
    gw = gateway(HTTP, mosn=xds_mosn(plane.port)).start()
    assert wait_for(lambda: routed(gw, "2") in ("a", "b"), 10), gw.error_log()
    # the site of the UNIT metadata, round robin within it
    assert sorted(routed(gw, "2") for _ in range(2)) == ["a", "b"]
    assert routed(gw, "150") == "c"
    r = gw.get("/", {"uid": "2"}, port=gw.site_port(9000))
    assert r.status == 200 and r.text.endswith("d"), r
    # ACKs name the version and the nonce of what they accept
    assert wait_for(lambda: ("1", "1", "") in acks(plane, CDS))
    assert acks(plane, CDS)[0] == ("", "", "")
    eds = plane.recorded(EDS)
    assert list(eds[0].resource_names) == ["test"]
    assert wait_for(
        lambda: any(v == "1" and n and not e for v, n, e in acks(plane, EDS))
    )
    assert eds[0].node.id == "gateway-1"

    # a new EDS version: followed, no reload
    master = gw.master_pid()
    plane.set_endpoints(
        "2",
        [
            assignment(
                "test", eps(sites, ("e", "s1"), ("c", "s2"), ("b", "s2", 2))
            )
        ],
    )  # b unhealthy
    assert wait_for(
        lambda: routed(gw, "2") == "e" and routed(gw, "2") == "e", 10
    )
    assert {routed(gw, "150") for _ in range(3)} == {"c"}
    assert wait_for(
        lambda: discovery_stats(gw).get("revision") == "cds:1 eds:2"
    )
    assert gw.master_pid() == master


def test_a_bad_response_is_nacked_and_the_last_good_serves(
    gateway, plane, sites
):
    plane.set_clusters("1", [eds_cluster("test")])
    plane.set_endpoints("1", [assignment("test", eps(sites, ("a", "s1")))])
    gw = gateway(HTTP, mosn=xds_mosn(plane.port)).start()
    assert wait_for(lambda: routed(gw) == "a", 10), gw.error_log()
    assert wait_for(lambda: ("1", "2", "") in acks(plane, EDS))
    # an endpoint with no site: the whole response is refused
    plane.set_endpoints(
        "2",
        [
            assignment(
                "test",
                eps(sites, ("b", "s1"))
                + [("127.0.0.1", sites.ports["c"], None)],
            )
        ],
    )
    nack = wait_for(lambda: [a for a in acks(plane, EDS) if a[2]], 10)
    assert nack, acks(plane, EDS)
    version, nonce, why = nack[0]
    assert version == "1" and nonce == "3"
    assert "no envoy.lb metadata 'site'" in why
    assert "xDS EDS version '2' refused (NACK)" in gw.error_log()
    assert [routed(gw) for _ in range(3)] == ["a"] * 3
    assert wait_for(lambda: discovery_stats(gw)["errors"].get("nack") == 1)
    # a cluster of a type that resolves names: the CDS response refused
    plane.set_clusters("2", [eds_cluster("test"), dns_cluster("dns")])
    assert wait_for(
        lambda: any(
            "STRICT_DNS is not supported" in e for _, _, e in acks(plane, CDS)
        ),
        10,
    )
    assert acks(plane, CDS)[-1][0] == "1"
    assert routed(gw) == "a"
    # good again: taken
    plane.set_endpoints("3", [assignment("test", eps(sites, ("b", "s1")))])
    assert wait_for(lambda: routed(gw) == "b", 10)
    # acked once applied, so perhaps just after the routing changed; the
    # nonce depends on how many responses the plane sent meanwhile
    assert wait_for(
        lambda: any(
            version == "3" and not error
            for version, _, error in acks(plane, EDS)
        ),
        10,
    ), acks(plane, EDS)
    # a cluster gone from CDS: its app has no endpoint
    plane.set_clusters("3", [eds_cluster("other")])
    assert wait_for(lambda: gw.get("/", {"uid": "2"}).status == 502, 10)


def test_the_control_plane_goes_away_and_comes_back(gateway, plane, sites):
    plane.set_clusters("1", [eds_cluster("test")])
    plane.set_endpoints("7", [assignment("test", eps(sites, ("a", "s1")))])
    gw = gateway(HTTP, mosn=xds_mosn(plane.port)).start()
    assert wait_for(lambda: routed(gw) == "a", 10), gw.error_log()
    port = plane.port
    plane.stop()
    assert wait_for(lambda: discovery_stats(gw).get("connected") is False, 10)
    assert [routed(gw) for _ in range(3)] == ["a"] * 3
    back = ControlPlane(port)
    back.set_clusters("1", [eds_cluster("test")])
    back.set_endpoints("8", [assignment("test", eps(sites, ("b", "s1")))])
    back.start()
    try:
        assert wait_for(lambda: routed(gw) == "b", 15), gw.error_log()
        # a new stream says which versions it has, with no nonce
        first = back.recorded(CDS)[0]
        assert (first.version_info, first.response_nonce) == ("1", "")
        eds = back.recorded(EDS)[0]
        assert (eds.version_info, list(eds.resource_names)) == ("7", ["test"])
        assert "xDS stream up" in gw.error_log()
    finally:
        back.stop()
