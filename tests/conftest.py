import os
import sys

import pytest

# The checkout's bench package (the helpers tests and benchmarks share),
# found after the installed packages: its shm_ring/ and pyworker/ sources
# must not stand in for them.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway import Gateway, MODULE  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: fault and load tests")


@pytest.fixture
def gateway():
    """Makes gateways: gateway(http_body, mosn=..., workers=...).start()."""
    made = []

    def make(*args, **kwargs):
        assert os.path.exists(MODULE), "build the module first: make build-l7"
        gw = Gateway(*args, **kwargs)
        made.append(gw)
        return gw

    yield make

    errors = []
    for gw in made:
        try:
            gw.stop()
        except AssertionError as exc:
            errors.append(str(exc))
        # nginx's own word on leaks and crashes, besides the kills we made
        for line in gw.error_log().splitlines():
            if (
                "[alert]" in line or "[crit]" in line
            ) and "exited on signal 9" not in line:
                errors.append(line)
    assert not errors, errors
