import os
import shutil
import sys

import pytest

# The checkout's bench package (the helpers tests and benchmarks share),
# found after the installed packages: its shm_ring/ and pyworker/ sources
# must not stand in for them.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway import Gateway, MODULE  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: fault and load tests")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # each phase's report on the test, for fixtures to read at teardown
    report = (yield).get_result()
    setattr(item, "report_" + report.when, report)


@pytest.fixture
def gateway(request):
    """Makes gateways: gateway(http_body, mosn=..., workers=...).start().
    Their directories (config, logs) are kept when the test fails."""
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
    call = getattr(request.node, "report_call", None)
    if call is not None and call.passed:
        for gw in made:
            shutil.rmtree(gw.prefix, ignore_errors=True)
