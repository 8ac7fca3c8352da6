"""Many producer and consumer processes on one region, flat out: every
verdict reaches the request it was written for, exactly once, and every
slot is free at the end."""

import multiprocessing
import time

import pytest

from ringload import load_impl, run_consumer, run_producer

CASES = [
    # producers' and consumers' implementation, process counts, requests
    pytest.param("cython", "cython", 4, 3, 1_000_000, id="cython"),
    pytest.param("python", "python", 2, 2, 50_000, id="python"),
    pytest.param("cython", "python", 2, 2, 20_000, id="cython-to-python"),
    pytest.param("python", "cython", 2, 2, 20_000, id="python-to-cython"),
]
BUDGET = 240  # seconds for the whole run; pytest's timeout is 300


def wait_until(what, seconds, step=0.01):
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


@pytest.fixture
def processes():
    """Processes to start; none outlives the test, whatever its outcome."""
    procs = []
    yield procs
    for proc in procs:
        if proc.pid is not None:
            if proc.is_alive():
                proc.kill()
            proc.join()


@pytest.mark.slow
@pytest.mark.parametrize("pimpl, cimpl, nprod, ncons, total", CASES)
def test_stress(
    pimpl, cimpl, nprod, ncons, total, region_name, processes, capsys
):
    load_impl(pimpl)
    region = load_impl(cimpl).Region.create(
        region_name,
        nproducers=nprod,
        nconsumers=ncons,
        slots=256,
        slot_size=1024,
    )
    mp = multiprocessing.get_context("fork")
    stop_consumers = mp.Value("b", 0, lock=False)
    never = mp.Value("b", 0, lock=False)
    progress = mp.Array("q", nprod, lock=False)
    deadline = time.monotonic() + BUDGET

    consumers = [
        mp.Process(
            target=run_consumer,
            args=(cimpl, region_name, region.alloc_consumer(), stop_consumers),
            daemon=True,
        )
        for _ in range(ncons)
    ]
    processes += consumers
    for proc in consumers:
        proc.start()
    wait_until(
        lambda: all(region.consumer_state(c) == "live" for c in range(ncons)),
        30,
    )

    pipes, producers = [], []
    t0 = time.monotonic()
    for i in range(nprod):
        rx, tx = mp.Pipe(duplex=False)
        pipes.append(rx)
        producers.append(
            mp.Process(
                target=run_producer,
                args=(
                    pimpl,
                    region_name,
                    i,
                    total // nprod,
                    never,
                    progress,
                    i,
                    tx,
                    deadline,
                ),
                daemon=True,
            )
        )
        processes.append(producers[-1])
        producers[-1].start()
    reports = []
    for rx in pipes:
        assert rx.poll(max(1, deadline + 5 - time.monotonic())), (
            "a producer did not report; settled: %s" % list(progress)
        )
        reports.append(rx.recv())
    elapsed = time.monotonic() - t0
    for proc in producers:
        proc.join(10)
        assert proc.exitcode == 0

    stop_consumers.value = 1
    for proc in consumers:
        proc.join(30)
        assert proc.exitcode == 0

    # no loss, no duplicate, no stale or crossed verdict
    for rep in reports:
        assert rep["errors"] == []
        assert rep["submitted"] == rep["ok"] == total // nprod
        assert rep["failed"] == 0 and rep["inflight"] == 0

    st = region.stats()
    prods, conss = st["producers"], st["consumers"]
    assert sum(p["submitted"] for p in prods) == total
    assert sum(p["completed"] for p in prods) == total
    assert sum(p["stale"] + p["requeued"] for p in prods) == 0
    assert sum(c["taken"] for c in conss) == total
    assert sum(c["completed"] for c in conss) == total
    assert sum(c["errors"] for c in conss) == 0

    # the released channels and exited consumers are reaped: all free
    wait_until(
        lambda: (
            region.reap() >= 0
            and region.slots_in_use() == 0
            and all(p["state"] == "free" for p in region.stats()["producers"])
        ),
        10,
    )

    batches = sum(c["batches"] for c in conss)
    with capsys.disabled():
        print(
            "\nring stress %s->%s: %d requests, %d producers x %d "
            "consumers, %.1f s, %.0f requests/s; %.1f requests per "
            "batch, %d futex wakes, %d doorbells, %d refusals"
            % (
                pimpl,
                cimpl,
                total,
                nprod,
                ncons,
                elapsed,
                total / elapsed,
                total / max(batches, 1),
                sum(p["futex_wakes"] for p in prods),
                sum(c["doorbells"] for c in conss),
                sum(r["refused"] for r in reports),
            )
        )
    region.close()
