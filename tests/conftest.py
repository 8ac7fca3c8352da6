import os

import pytest

from gateway import Gateway, MODULE


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
    assert not errors, errors
