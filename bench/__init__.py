"""The benchmarks, run from the checkout as `python -m bench.<name>_bench`
(bench/README.md), and what they share with the tests: processes read
from /proc, ports and waits (procs), gateways started and stopped
(gateways), demo services (services), reports (report).

The benchmarks measure the installed package (`make python`). `python -m`
puts the checkout first on the module path, where shm_ring/ and pyworker/
are sources without their compiled parts; it goes last instead, so it
only serves what is not installed (this package itself), and after it
the tests' harness (tests/gateway.py, tests/fleet.py), with which the
fleet benchmarks start their gateways and etcd.
"""

import os
import sys

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(CHECKOUT, "tests")


def _checkout_last():
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    sys.path[:] = [p for p, a in zip(sys.path, paths) if a != CHECKOUT]
    sys.path.append(CHECKOUT)
    if TESTS not in paths:
        sys.path.append(TESTS)


_checkout_last()
