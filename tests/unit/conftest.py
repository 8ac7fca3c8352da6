"""Shared fixtures of the unit tests of the filter layer."""

import json
import pathlib

import pytest

# the fixture, registered by its import
from pyworker.testing import chain_runner  # noqa: F401

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
# MOSN MOE's own mosn.json (with unit_key "uid"), kept with the tests
MOE_REFERENCE = HERE.parent / "moe" / "mosn.json"


@pytest.fixture
def moe_reference():
    """The path of MOE's reference mosn.json."""
    return MOE_REFERENCE


@pytest.fixture
def project_config():
    """The path of this project's conf/mosn.json."""
    return REPO / "conf" / "mosn.json"


@pytest.fixture
def user_modules(monkeypatch):
    """Makes the sample user filter modules next to this file importable."""
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture
def write_config(tmp_path):
    """Writes a config (a dict, or text as is) to a file; its path."""

    def write(config, name="mosn.json"):
        path = tmp_path / name
        path.write_text(
            config if isinstance(config, str) else json.dumps(config, indent=2)
        )
        return path

    return write


def _mosn_config(*stream_filters, name="serverListener", **top_level):
    config = {
        "servers": [
            {
                "listeners": [
                    {"name": name, "stream_filters": list(stream_filters)}
                ]
            }
        ]
    }
    config.update(top_level)
    return config


@pytest.fixture
def mosn_config():
    """``mosn_config(*stream_filters, name=..., **top_level)``: a minimal MOSN
    config with one listener running ``stream_filters``."""
    return _mosn_config


@pytest.fixture
def unit_filter():
    """``unit_filter(unit_key="uid")``: the worked example's metadata
    filter."""

    def build(unit_key="uid"):
        return {
            "type": "metadata",
            "config": {
                "metadataers": [
                    {"meta_data_key": "UNIT", "config": {"unit_key": unit_key}}
                ]
            },
        }

    return build
