"""The worked example's fixed ports (2990, the demo sites 3450-3453, the
admin ports 34901 and 34903), for one test at a time.

Tests that run the example as shipped (`make run`, the image) cannot take
free ports like the others: they hold an exclusive flock on EXAMPLE_LOCK
(/tmp/port2990.lock unless $MOSN_EXAMPLE_LOCK says otherwise) while they
run, and anything else that binds those ports on the same machine can wait
its turn the same way (`flock /tmp/port2990.lock make run`).
"""

import contextlib
import fcntl
import os
import time

import pytest

from bench.procs import taken_ports

EXAMPLE_LOCK = os.environ.get("MOSN_EXAMPLE_LOCK", "/tmp/port2990.lock")


@contextlib.contextmanager
def the_example_ports(wait=900, free_wait=60):
    """Holds EXAMPLE_LOCK (waiting up to wait seconds for another holder),
    then waits up to free_wait seconds for the ports to be free: the test
    fails, naming them, if they are not."""
    fd = os.open(EXAMPLE_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        "%s held for over %d s: something else runs "
                        "the example" % (EXAMPLE_LOCK, wait)
                    )
                time.sleep(0.5)
        # a run of the example that did not take the lock may be ending
        deadline = time.monotonic() + free_wait
        while taken_ports() and time.monotonic() < deadline:
            time.sleep(0.5)
        taken = taken_ports()
        assert not taken, (
            "the example's ports are taken: %s; stop what "
            "holds them" % ", ".join("%d (%s)" % kv for kv in taken.items())
        )
        yield
    finally:
        os.close(fd)  # releases the lock
