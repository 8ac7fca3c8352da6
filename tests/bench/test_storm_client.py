"""bench/scale_bench.py's storm clients tell this machine's limits from the
gateway's errors. A connection that could not even be attempted (the
client's file limit, no free ephemeral port) is the machine's and says
which limit; one the server closes or answers wrongly is the gateway's.
(An unconnected socket's first send fails with EPIPE: counted as the
gateway closing the connection, that once made a machine limit look like
a broken gateway.)"""

import argparse
import json
import os
import subprocess
import sys

import pytest

from storm_sites import SITE_PORTS, Sites

from bench import CHECKOUT, scale_bench as scale

HERE = os.path.dirname(os.path.abspath(__file__))

ONE_CLIENT = {
    "clients": 1,
    "sources_per_client": 2,
    "sources": ["127.0.0.101", "127.0.0.102"],
}


def storm(port, count, inflight=50, plan=ONE_CLIENT, nofile=None):
    clients = scale.Clients(
        port, count, plan, SITE_PORTS, inflight, nofile=nofile
    )
    try:
        return clients.wait_open()
    finally:
        clients.close()


def test_answered_by_the_right_site():
    sites = Sites()
    opened = storm(sites.port, 500)
    assert opened["opened"] == 500
    assert opened["gateway_errors"] == 0 and opened["machine_errors"] == {}
    assert opened["latency_ms"]["max"] is not None


def test_file_limit_is_the_machines():
    sites = Sites()
    opened = storm(sites.port, 300, nofile=100)
    lost = 300 - opened["opened"]
    assert 50 <= opened["opened"] < 100
    assert opened["machine_errors"] == {"EMFILE": lost}
    assert opened["gateway_errors"] == 0
    assert "open file limit" in opened["first_errors"][0]


def test_server_closing_is_the_gateways():
    sites = Sites(close_every=50)  # uids 50, 100, ..., 250
    opened = storm(sites.port, 500)
    assert opened["gateway_errors"] == 10
    assert opened["opened"] == 490 and opened["machine_errors"] == {}
    assert (
        "closed by the server before the answer, after the request "
        "was sent" in opened["first_errors"][0]
    )


NETNS_CHILD = """
import fcntl, json, socket, struct, sys
sys.path[:0] = [%(here)r]
sys.path.append(%(checkout)r)
from bench import scale_bench as scale
from storm_sites import SITE_PORTS, Sites
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # lo up
    ifreq = fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0))
    flags = struct.unpack("16sH", ifreq[:18])[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("40000 40099")
sites = Sites(port=5000)
plan = {"clients": 1, "sources_per_client": 1, "sources": ["127.0.0.101"]}
clients = scale.Clients(5000, 150, plan, SITE_PORTS, 50)
print(json.dumps(clients.wait_open()))
clients.close()
"""


def test_no_free_port_is_the_machines():
    """In a network namespace of its own whose ephemeral range has 100
    ports, 150 connections from one source address to one ip:port."""
    probe = subprocess.run(
        ["unshare", "-n", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(
            "no network namespace here (unshare -n: %s)" % probe.stderr.strip()
        )
    code = NETNS_CHILD % {"here": HERE, "checkout": CHECKOUT}
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    opened = json.loads(done.stdout.splitlines()[0])
    assert opened["opened"] == 100
    assert opened["machine_errors"] == {"EADDRNOTAVAIL": 50}
    assert opened["gateway_errors"] == 0
    assert "ephemeral ports" in opened["first_errors"][0]


def summary(open_errors=0, machine=None):
    return {
        "opened": 1000 - sum((machine or {}).values()) - open_errors,
        "ratio": 1.0,
        "error_log": {"alerts": 0},
        "errors": {
            "open_errors": open_errors,
            "machine_errors": machine or {},
            "first_errors": ["uid 7: closed by the server"]
            * bool(open_errors),
            "closed_by_server": 0,
            "wrk_non_2xx": 0,
            "wrk_socket_errors": 0,
            "mix_failures": 0,
            "ring_fallbacks": 0,
        },
    }


def test_checks_count_the_machine_apart():
    lines, worst = scale.checks(
        {"mosn": summary(machine={"EADDRNOTAVAIL": 7})}, None, 1000
    )
    assert worst == "MACHINE"
    assert (
        "- mosn: connections this machine could not attempt (not the "
        "gateway's): EADDRNOTAVAIL 7: MACHINE" in lines
    )
    assert not [line for line in lines if line.endswith("FAILED")]
    lines, worst = scale.checks(
        {"mosn": summary(open_errors=3, machine={"EMFILE": 1})}, None, 1000
    )
    assert worst == "FAILED"


def test_plan_refuses_what_the_limits_do_not_allow():
    lim = {"nofile_hard": 1024, "ip_local_port_range": [32768, 60999]}
    with pytest.raises(SystemExit, match="nofile hard limit 1024"):
        scale.plan_for(
            argparse.Namespace(connections=100000, workers=8, clients=8), lim
        )
