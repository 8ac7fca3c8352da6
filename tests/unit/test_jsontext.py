"""Texts that are not JSON documents, from every place JSON is read: the
MOSN config, service files and etcd values each say so in one line,
deep nesting included (the json module raises RecursionError there)."""

import pytest

from pyworker import config, jsontext
from pyworker.api import ConfigError
from pyworker.discovery import ServiceFileError, servicefile
from pyworker.discovery.etcd import check_config_value

DEEP = "[" * 100000 + "]" * 100000


@pytest.mark.parametrize(
    "text, msg, where",
    [
        (DEEP, "nested too deeply", ""),
        ('{"a": }', "Expecting value", "line 1 column 7"),
        ("", "Expecting value", "line 1 column 1"),
    ],
)
def test_what_is_not_json_is_said_in_one_line(text, msg, where):
    with pytest.raises(jsontext.NotJSON) as caught:
        jsontext.parse(text)
    assert (caught.value.msg, caught.value.where) == (msg, where)
    assert "\n" not in str(caught.value)
    assert jsontext.parse('{"a": [1]}') == {"a": [1]}


def test_every_reader_of_json_refuses_deep_nesting_by_name():
    with pytest.raises(ConfigError, match="invalid JSON: nested too deeply"):
        config.loads(DEEP, "mosn.json")
    with pytest.raises(
        ServiceFileError, match="invalid JSON: nested too deeply"
    ):
        servicefile.loads(DEEP, "service.json")
    with pytest.raises(ConfigError, match="invalid JSON: nested too deeply"):
        check_config_value(DEEP)
