"""The etcd source's handling of a burst of watch events (the events one
read of the watch stream brought): each app ends up as if every event had
been applied in turn, with one table write per app."""

import json
import logging

import pytest

from pyworker.discovery.etcd import AppsRange, ConfigKey, range_end
from pyworker.discovery.etcdwire import DELETE, Event, KeyValue
from pyworker.discovery.stats import SourceStats

PREFIX = "/apps/"


class Table:
    """Records what the source writes, as EndpointTable is called."""

    def __init__(self):
        self.calls = []

    def write(self, app, endpoints):
        self.calls.append((app, [tuple(e) for e in endpoints]))

    def empty(self, app):
        self.calls.append((app, None))

    def sync(self, apps, keep=()):
        for app, endpoints in apps.items():
            self.write(app, endpoints)


def put(app, port, revision, raw=None):
    value = (
        raw
        if raw is not None
        else json.dumps(
            {"server_list": [{"ip": "10.0.0.1", "port": port, "site": "s1"}]}
        )
    )
    return Event(
        kv=KeyValue(
            key=(PREFIX + app).encode(),
            value=value.encode(),
            mod_revision=revision,
        )
    )


def delete(app, revision):
    return Event(
        type=DELETE,
        kv=KeyValue(key=(PREFIX + app).encode(), mod_revision=revision),
    )


def ep(port):
    return [("10.0.0.1", port, "s1")]


@pytest.fixture
def apps():
    table = Table()
    r = AppsRange(PREFIX, table, SourceStats("etcd", None))
    r.resync([put("a", 1, 5).kv], 5)
    table.calls.clear()
    return r


def test_a_burst_writes_each_app_once_with_its_last_value(apps):
    apps.events(
        [put("a", 2, 6), put("b", 7, 7), put("a", 3, 8), put("a", 4, 9)]
    )
    assert apps.table.calls == [("a", ep(4)), ("b", ep(7))]
    assert apps.revision == 9
    assert apps.stats.updates == 1 + 4  # the resync and four changes
    assert apps.good == {"a": ep(4), "b": ep(7)}


def test_a_bad_last_value_falls_back_to_the_last_good_of_the_burst(
    apps, caplog
):
    with caplog.at_level(logging.ERROR, "pyworker.discovery"):
        apps.events([put("a", 2, 6), put("a", 0, 7, raw="{not json")])
    assert apps.table.calls == [("a", ep(2))]
    assert (
        "etcd key /apps/a (revision 7): line 1 column 2: invalid JSON"
        in caplog.text
    )
    assert apps.stats.errors == {"value": 1}


def test_a_burst_of_bad_values_keeps_what_was_there(apps):
    apps.events([put("a", 0, 6, raw="[]"), put("a", 70000, 7)])
    assert apps.table.calls == []
    assert apps.good == {"a": ep(1)}
    assert apps.revision == 7


def test_a_delete_then_a_bad_value_leaves_the_app_empty(apps):
    apps.events([delete("a", 6), put("a", 0, 7, raw="nope")])
    assert apps.table.calls == [("a", None)]
    assert "a" not in apps.good


def test_a_put_after_a_delete_in_one_burst_wins(apps):
    apps.events([delete("a", 6), put("a", 9, 7)])
    assert apps.table.calls == [("a", ep(9))]


def test_replayed_revisions_are_ignored_and_counted(apps):
    apps.events([put("a", 2, 4), put("a", 3, 6)])
    assert apps.table.calls == [("a", ep(3))]
    assert apps.stats.errors == {"replay": 1}


def test_the_config_key_hands_over_the_last_value_once():
    got = []
    key = ConfigKey(
        "/cfg",
        lambda value, rev: got.append((value, rev)),
        SourceStats("etcd", None),
    )
    events = [
        Event(kv=KeyValue(key=b"/cfg", value=b"one", mod_revision=3)),
        Event(kv=KeyValue(key=b"/cfg", value=b"two", mod_revision=4)),
        Event(type=DELETE, kv=KeyValue(key=b"/cfg", mod_revision=5)),
    ]
    key.events(events)
    key.events(events[1:2])  # the same revision again: not resent
    assert got == [("two", 4)]
    assert key.revision == 4


@pytest.mark.parametrize(
    "key, end",
    [
        (b"/apps/", b"/apps0"),
        (b"a\xff", b"b"),
        (b"a\xff\xff", b"b"),
        (b"\xff", b"\0"),
        (b"", b"\0"),
    ],
)
def test_the_range_of_a_prefix(key, end):
    assert range_end(key) == end
