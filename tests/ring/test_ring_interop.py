"""The two implementations on one region: each side of a request, and
the supervisor's housekeeping, done by one implementation while the
other does the rest."""

import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ringload import load_impl
from shm_ring.codec import Verdict, decode_verdict, encode_request

MIXED = [("cython", "python"), ("python", "cython")]
FREE, SUBMITTED, TAKEN, DONE = 0, 1, 2, 3


@pytest.mark.parametrize("producer_impl, consumer_impl", MIXED)
def test_request_round_trip_across(producer_impl, consumer_impl, region_name):
    P, C = load_impl(producer_impl), load_impl(consumer_impl)
    rp = P.Region.create(region_name, nproducers=2, nconsumers=2, slots=8)
    rc = C.Region.attach(region_name)
    cons = rc.consumer(rc.alloc_consumer())
    prod = rp.producer()

    headers = [
        ("Host", "a.example"),
        ("uid", "150"),
        ("X-Dup", "1"),
        ("x-dup", "2"),
    ]
    rec = encode_request(
        chain="l1",
        method="PUT",
        path="/p\xe9",
        query="q",
        remote_addr="::1",
        headers=headers,
        body=b"\0b",
        request_id=2**63 + 5,
    )
    assert prod.submit(6, rec) == (0, 1)
    assert prod.slot_state(6) == (SUBMITTED, 0, 1, 1)
    (p,) = cons.take()
    req = cons.request(p)
    assert (
        req.chain,
        req.method,
        req.path,
        req.query,
        req.remote_addr,
        req.protocol,
        req.body,
        req.request_id,
    ) == ("l1", "PUT", "/p\xe9", "q", "::1", "HTTP/1.1", b"\0b", 2**63 + 5)
    assert req.header_items() == headers
    assert req.header_get_all("X-DUP") == ["1", "2"]

    v = Verdict(
        upstream="s2",
        metadata={"UNIT": "s2"},
        response_add=[("X-Unit", "s2")],
        log="routed",
    )
    assert cons.complete(p, v)
    assert prod.slot_state(6) == (DONE, 0, 1, 1)
    assert prod.poll() == [(6, 1)]
    assert decode_verdict(prod.verdict(6)) == v
    prod.free(6)
    assert rp.stats() == rc.stats()
    assert rp.slots_in_use() == rc.slots_in_use() == 0
    rc.close()
    rp.close()


def fork_and_hold(work):
    """Runs work() in a child that then waits to be killed."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            work()
            os.write(wfd, b"k")
            time.sleep(60)
        finally:
            os._exit(1)
    assert select.select([rfd], [], [], 20)[0], "the child did not get ready"
    os.close(rfd)
    os.close(wfd)
    return pid


def kill(pid):
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("supervisor_impl, worker_impl", MIXED)
def test_supervision_across(supervisor_impl, worker_impl, region_name):
    """One implementation reaps, retires and re-queues after workers of
    the other one die."""
    S, W = load_impl(supervisor_impl), load_impl(worker_impl)
    sup = S.Region.create(region_name, nproducers=2, nconsumers=2, slots=8)
    c0, c1 = sup.alloc_consumer(), sup.alloc_consumer()

    # consumer 0 dies holding one request taken and one queued
    def consumer_work():
        cons = W.Region.attach(region_name).consumer(c0)
        while not cons.pending():
            time.sleep(0.001)
        assert len(cons.take(max=1)) == 1

    wr = W.Region.attach(region_name)
    prod = wr.producer()
    victim = os.fork()
    if victim == 0:
        try:
            consumer_work()
            time.sleep(60)
        finally:
            os._exit(1)
    deadline = time.monotonic() + 20
    while sup.consumer_state(c0) != "live":
        assert time.monotonic() < deadline
        time.sleep(0.001)
    prod.submit(0, encode_request(request_id=1), consumer=c0)
    prod.submit(1, encode_request(request_id=2), consumer=c0)
    while prod.slot_state(0)[0] != TAKEN:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    kill(victim)

    assert sup.reap() == 1
    assert sup.consumer_state(c0) == "dead" and wr.consumer_epoch == 1
    survivor = wr.consumer(c1)
    assert prod.rescue() == []
    assert wr.stats()["producers"][prod.index]["requeued"] == 2
    assert (
        survivor.serve_batch(
            lambda req: Verdict(metadata={"id": str(req.request_id)})
        )
        == 2
    )
    got = sorted(prod.poll())
    assert got == [(0, 1), (1, 1)]
    for s, _ in got:
        assert decode_verdict(prod.verdict(s)).metadata == {"id": str(s + 1)}
        prod.free(s)

    # a producer dies with a request queued: the supervisor frees its
    # channel once the consumer has answered
    def producer_work():
        p = W.Region.attach(region_name).producer()
        p.submit(2, encode_request(request_id=3))

    pid = fork_and_hold(producer_work)
    kill(pid)
    assert sup.reap() == 1
    assert sup.slots_in_use() == 1
    assert survivor.serve_batch(lambda req: None) == 1
    sup.reap()
    assert sup.slots_in_use() == 0
    assert [p["state"] for p in sup.stats()["producers"]] == ["owned", "free"]
    wr.close()
    sup.close()


def public(cls):
    return {n for n in dir(cls) if not n.startswith("_")}


def test_fallback_has_the_cython_api(cython_impl, python_impl):
    for name in ("Region", "SlotRequest", "Consumer", "Producer"):
        missing = public(getattr(cython_impl, name)) - public(
            getattr(python_impl, name)
        )
        # attributes of instances are set in __init__ in Python
        missing -= {"index", "incarnation", "name", "nheaders", "request_id"}
        assert not missing, (name, missing)
    for name in ("validate_verdict", "proc_alive", "ABI_VERSION"):
        assert hasattr(python_impl, name)
    assert python_impl.ABI_VERSION == cython_impl.ABI_VERSION
    assert (cython_impl.IMPLEMENTATION, python_impl.IMPLEMENTATION) == (
        "cython",
        "python",
    )


def test_pure_python_forced_by_environment(cython_impl):
    root = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
    for env, want in (("1", "python"), ("0", "cython")):
        out = subprocess.run(
            # -P: the installed package, not the source tree in cwd
            [
                sys.executable,
                "-P",
                "-c",
                "import shm_ring; print(shm_ring.IMPLEMENTATION)",
            ],
            cwd=root,
            env=dict(os.environ, SHM_RING_PURE=env),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.strip() == want


def test_a_binding_beside_an_uncompiled_codec_leaves_it_to_the_pure_ring(
    cython_impl, tmp_path
):
    """The binding reads verdicts as the compiled Verdict's fields; next to
    a codec.py that serves uncompiled (its fields laid out otherwise) it
    refuses to load, and the pure ring serves, rather than misread."""
    installed = os.path.dirname(cython_impl.__file__)
    copy = tmp_path / "shm_ring"
    shutil.copytree(installed, copy)
    for built in copy.glob("codec.*.so"):
        built.unlink()
    root = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
    shutil.copy(os.path.join(root, "shm_ring", "codec.py"), copy)
    out = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            "import shm_ring, shm_ring.codec as c\n"
            "print(shm_ring.IMPLEMENTATION, c.__file__.endswith('.py'))\n"
            "try:\n"
            "    import shm_ring._ring\n"
            "except ImportError as e:\n"
            "    print(e)\n",
        ],
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "python True"
    assert "shm_ring.codec is not compiled" in out[1]
