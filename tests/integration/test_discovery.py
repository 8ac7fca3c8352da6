"""Service discovery (MOE's service file) and the subset balancer: the
example routed through `mosn_subset`, endpoints that change under load
without a reload, the fallback to any endpoint, a malformed file, and a
dead endpoint retried on another one."""

import json
import os
import re
import time

from gateway import SITE_BODY, example_mosn, sites, wait_for
from load import Load

APP = "test"

DISCOVERY = """
    log_format disc '$status|$upstream_addr|$upstream_status';
    upstream test {
        mosn_subset test key=$mosn_meta_UNIT;
        server 0.0.0.1;    # a placeholder: the endpoints are the table's
        keepalive 8;       # connections cached by endpoint address
    }
    upstream nokey {
        mosn_subset test;
        server 0.0.0.1;
    }
    upstream other {
        mosn_subset other key=$mosn_meta_UNIT;
        server 0.0.0.1;
    }
    server {
        listen 127.0.0.1:%PORT%;
        access_log logs/disc.log disc;
        location / {
            mosn_filter_chain serverListener;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://test;
        }
        location /nokey {
            mosn_filter_chain serverListener;
            proxy_pass http://nokey;
        }
        location /other {
            mosn_filter_chain serverListener;
            proxy_pass http://other;
        }
    }
""" + sites(
    [
        ("s1", 3450),
        ("s1", 3451),
        ("s2", 3452),
        ("s3", 3453),
        ("s1", 3454),
        ("s1", 3455),
    ]
)

# MOE's service.json: site s1 on 3450 and 3451, s2 on 3452, s3 on 3453
MOE_SERVERS = [(3450, "s1"), (3451, "s1"), (3452, "s2"), (3453, "s3")]


def discovery_mosn():
    mosn = example_mosn()
    mosn["pyworker"] = {"service_file": "conf/service.json"}
    return mosn


def write_service(gw, servers, app=APP):
    """The service file, servers given as (label port, site); written
    whole and renamed into place, as a deploy tool does."""
    doc = {
        "apps": [
            {
                "app_name": app,
                "server_list": [
                    {
                        "ip": "127.0.0.1",
                        "port": gw.site_port(label),
                        "site": site,
                    }
                    for label, site in servers
                ],
            }
        ]
    }
    write_raw(gw, json.dumps(doc, indent=2))


def write_raw(gw, text):
    path = os.path.join(gw.prefix, "conf", "service.json")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def start(gateway, servers=MOE_SERVERS, **kw):
    gw = gateway(DISCOVERY, mosn=discovery_mosn(), **kw)
    write_service(gw, servers)
    return gw.start()


def label(body):
    """'site s1 from 3450' -> ('s1', 3450): the site and its label port."""
    m = SITE_BODY.match(body)
    assert m, body
    return m.group(1), int(m.group(2))


def send(gw, uid=None, path="/"):
    r = gw.get(path, {"uid": uid} if uid is not None else {})
    assert r.status == 200, (r.status, r.text, gw.error_log()[-2000:])
    return label(r.text)


def generation(gw):
    region = gw.region()
    try:
        return region.endpoint_generation(APP)
    finally:
        region.close()


def access(gw):
    """The access log: [(status, [upstream ports], [upstream statuses])],
    ports as the labels the test knows them by."""
    by_port = {v: int(k) for k, v in gw.site_ports.items()}
    out = []
    with open(os.path.join(gw.prefix, "logs", "disc.log")) as f:
        for line in f:
            status, addrs, statuses = line.rstrip("\n").split("|")
            ports = [
                by_port.get(int(a.rsplit(":", 1)[1]), a)
                if re.match(r"[\d.]+:\d+$", a)
                else a
                for a in addrs.split(", ")
            ]
            out.append((int(status), ports, statuses.split(", ")))
    return out


# -- the worked example, balanced by the module -------------------------------


def test_example_through_mosn_subset(gateway):
    gw = start(gateway)
    assert send(gw, "2") == ("s1", 3450)
    assert send(gw, "2") == ("s1", 3451)
    assert send(gw, "200") == ("s2", 3452)
    assert send(gw, "201") == ("s3", 3453)
    assert send(gw, "2") == ("s1", 3450)
    # no usable uid: any endpoint of the app, in turn
    got = [send(gw, uid)[1] for uid in (None, "abc", None, "abc")]
    assert sorted(got) == [3450, 3451, 3452, 3453]
    # no key configured: any endpoint as well
    got = [send(gw, "2", "/nokey")[1] for _ in range(4)]
    assert sorted(got) == [3450, 3451, 3452, 3453]
    assert gw.error_log().count("[error]") == 0, gw.error_log()


def test_round_robin_is_shared_by_nginx_workers(gateway):
    gw = start(gateway, workers=2, nginx_workers=2)
    # a new connection each time: the requests land on both nginx workers
    got = [send(gw, "2")[1] for _ in range(20)]
    assert got == [3450, 3451] * 10
    assert [send(gw, "150") for _ in range(3)] == [("s2", 3452)] * 3


# -- the file changes, nginx stays --------------------------------------------


def test_service_file_edit_under_load_moves_requests(gateway):
    gw = start(gateway, workers=2, nginx_workers=2)
    master, workers = gw.master_pid(), sorted(gw.nginx_worker_pids())
    gen = generation(gw)
    with Load(gw.port, threads=4) as load:
        assert wait_for(lambda: len(load.results) > 200, 10)
        # site s1 moves from 3450/3451 to 3454/3455
        write_service(
            gw, [(3454, "s1"), (3455, "s1"), (3452, "s2"), (3453, "s3")]
        )
        assert wait_for(
            lambda: any(3454 in ports for _, ports, _ in access(gw)), 5
        ), "no request reached the new endpoints"
        time.sleep(0.3)  # requests picked before, finish
        moved = len(access(gw))
        n = len(load.results)
        assert wait_for(lambda: len(load.results) > n + 300, 10)
    assert not load.errors, load.errors[:5]
    assert set(s for s, _, _ in load.results) == {200}, load.statuses()
    after = [ports for _, ports, _ in access(gw)[moved:]]
    used = {p for ports in after for p in ports}
    assert used == {3452, 3453, 3454, 3455}, used
    assert all(status == 200 for status, _, _ in access(gw))
    # no reload: the same nginx processes, the table rewritten once
    assert gw.master_pid() == master
    assert sorted(gw.nginx_worker_pids()) == workers
    assert generation(gw) == gen + 1
    assert "reconfiguring" not in gw.error_log()


def test_site_without_endpoints_falls_back_to_any(gateway):
    gw = start(gateway)
    assert send(gw, "2") == ("s1", 3450)
    gen = generation(gw)
    write_service(gw, [(3452, "s2"), (3453, "s3")])
    assert wait_for(lambda: generation(gw) > gen)
    # uid 2 is site s1, which has no endpoint now: any endpoint serves
    got = [send(gw, "2") for _ in range(4)]
    assert sorted(p for _, p in got) == [3452, 3452, 3453, 3453]
    assert send(gw, "150") == ("s2", 3452)
    # s1 back, on other ports
    write_service(gw, [(3454, "s1"), (3452, "s2"), (3453, "s3")])
    assert wait_for(lambda: generation(gw) > gen + 1)
    assert [send(gw, "2") for _ in range(2)] == [("s1", 3454)] * 2


def test_malformed_service_file_keeps_the_last_good_endpoints(gateway):
    gw = start(gateway)
    gen = generation(gw)
    write_raw(gw, '{"apps": [{"app_name": "test", "server_list": [')
    assert wait_for(lambda: "invalid JSON" in gw.error_log()), gw.error_log()
    assert [send(gw, "2")[1] for _ in range(2)] == [3450, 3451]
    # a file that parses but is wrong: the key and the reason
    write_raw(
        gw,
        json.dumps(
            {
                "apps": [
                    {
                        "app_name": "test",
                        "server_list": [
                            {
                                "ip": "127.0.0.1",
                                "port": gw.site_port(3454),
                                "site": "s1",
                            },
                            {"ip": "127.0.0.1", "port": 0, "site": "s1"},
                        ],
                    }
                ]
            }
        ),
    )
    why = wait_for(
        lambda: [
            line
            for line in gw.error_log().splitlines()
            if "apps[0].server_list[1].port" in line
        ]
    )
    assert why and len(why) == 1, gw.error_log()
    assert (
        "service.json: apps[0].server_list[1].port: port 0 is not in "
        "1..65535; keeping the last good endpoints" in why[0]
    )
    assert [send(gw, "2")[1] for _ in range(2)] == [3450, 3451]
    assert generation(gw) == gen
    # said once, not every half second
    time.sleep(1.2)
    assert (
        len(
            [
                line
                for line in gw.error_log().splitlines()
                if "server_list[1].port" in line
            ]
        )
        == 1
    )
    # good again: applied
    write_service(gw, [(3454, "s1"), (3452, "s2"), (3453, "s3")])
    assert wait_for(lambda: generation(gw) > gen)
    assert send(gw, "2") == ("s1", 3454)


# -- failures -----------------------------------------------------------------


def test_dead_endpoint_is_retried_on_another(gateway):
    # 3999 stands for a port nothing listens on
    gw = start(gateway, servers=[(3999, "s1"), (3450, "s1"), (3452, "s2")])
    with Load(gw.port, threads=3, headers_for=lambda i: {"uid": "2"}) as load:
        assert wait_for(lambda: len(load.results) > 100, 10)
    assert not load.errors, load.errors[:5]
    assert set(s for s, _, _ in load.results) == {200}, load.statuses()
    log = access(gw)
    retried = [(ports, st) for _, ports, st in log if len(ports) > 1]
    assert retried, "the dead endpoint was never picked"
    assert all(
        ports == [3999, 3450] and st == ["502", "200"] for ports, st in retried
    ), retried[:5]
    assert all(ports[-1] == 3450 for _, ports, _ in log)
    # with every s1 endpoint dead, the retry goes to any other endpoint
    write_service(gw, [(3999, "s1"), (3998, "s1"), (3452, "s2")])
    assert wait_for(lambda: generation(gw) >= 2)
    assert send(gw, "2") == ("s2", 3452)


def test_app_without_endpoints_is_a_502_with_a_reason(gateway):
    gw = start(gateway)
    r = gw.get("/other", {"uid": "2"})
    assert r.status == 502
    assert (
        'mosn_subset: app "other" has no endpoint in the service '
        "discovery table" in gw.error_log()
    )
    # every endpoint dead: 502 once all are tried
    write_service(gw, [(3999, "s1"), (3998, "s2")])
    assert wait_for(lambda: generation(gw) >= 2)
    r = gw.get("/", {"uid": "2"})
    assert r.status == 502
    # nginx logs a request after its response has gone
    assert wait_for(lambda: len(access(gw)) == 2)
    assert access(gw)[-1][:2] == (502, [3999, 3998])


def test_endpoints_survive_a_reload(gateway):
    gw = start(gateway)
    gen = generation(gw)
    gw.reload()
    time.sleep(1.0)
    assert send(gw, "150") == ("s2", 3452)
    assert generation(gw) == gen  # the same file: nothing rewritten


def test_mosn_subset_config_errors(gateway):
    gw = gateway(
        """
        upstream test { mosn_subset test foo=$host; server 0.0.0.1; }
        server { listen 127.0.0.1:%PORT%;
                 location / { proxy_pass http://test; } }
    """,
        mosn=discovery_mosn(),
    )
    code, out = gw.nginx("-t", check=False)
    assert code != 0 and 'invalid parameter "foo=$host"' in out, out
    gw.http = """
        upstream test { mosn_subset test; server 0.0.0.1 weight=2; }
        server { listen 127.0.0.1:%PORT%;
                 location / { proxy_pass http://test; } }
    """
    gw.write_conf()
    code, out = gw.nginx("-t", check=False)
    assert code != 0 and "weight" in out, out
