"""The accepted config's copy: what a respawned supervisor starts on is
the copy of its own nginx generation and order, never another's, and a
refused config never becomes it."""

import json
import os
import shutil
import uuid

import pytest

from pyworker.accepted import AcceptedConfig


@pytest.fixture
def shm():
    name = "/mosn_test_accepted_" + uuid.uuid4().hex[:8]
    yield name
    shutil.rmtree("/dev/shm%s.config" % name, ignore_errors=True)


def write(path, doc):
    path.write_text(json.dumps(doc))
    return str(path)


def never(path, shown):
    return False


def test_a_copy_is_restored_for_its_generation_and_order_only(shm, tmp_path):
    src = write(tmp_path / "mosn.json", {"v": 1})
    first = AcceptedConfig(shm, (100, 1, 2))
    copy = first.accept(src, 3)
    assert copy.startswith("/dev/shm/") and json.load(open(copy)) == {"v": 1}
    assert os.stat(os.path.dirname(copy)).st_mode & 0o777 == 0o700
    # the file changes on disk; a respawn at the same order keeps the copy
    write(tmp_path / "mosn.json", {"v": 2})
    again = AcceptedConfig(shm, (100, 1, 2))
    assert again.restore(3) == copy and again.source == src
    assert json.load(open(copy)) == {"v": 1}
    # another order, another master or another region: not this copy
    assert AcceptedConfig(shm, (100, 1, 2)).restore(4) is None
    assert AcceptedConfig(shm, (101, 1, 2)).restore(3) is None
    assert AcceptedConfig(shm, (100, 1, 9)).restore(3) is None


def test_a_refused_config_leaves_the_copy_before_for_its_order(shm, tmp_path):
    src = write(tmp_path / "mosn.json", {"v": 1})
    kept = AcceptedConfig(shm, (100, 1, 2))
    copy = kept.accept(src, 1)
    write(tmp_path / "mosn.json", {"v": "broken"})
    checked = []

    def check(path, shown):
        checked.append((json.load(open(path)), shown))
        return False

    assert kept.accept(src, 2, check) is None
    # the check saw the bytes that would have been loaded, named by src
    assert checked == [({"v": "broken"}, src)]
    # order 2 was answered with the copy before
    respawned = AcceptedConfig(shm, (100, 1, 2))
    assert respawned.restore(2) == copy
    assert json.load(open(copy)) == {"v": 1}


def test_a_copy_of_another_generation_is_not_kept_by_a_refusal(shm, tmp_path):
    src = write(tmp_path / "mosn.json", {"v": 1})
    AcceptedConfig(shm, (100, 1, 2)).accept(src, 1)
    # a new nginx whose first config cannot be read or is refused
    fresh = AcceptedConfig(shm, (200, 1, 2))
    assert fresh.accept(str(tmp_path / "missing.json"), 1) is None
    assert fresh.accept(src, 2, never) is None
    assert AcceptedConfig(shm, (200, 1, 2)).restore(2) is None


def test_everything_is_removed(shm, tmp_path):
    src = write(tmp_path / "mosn.json", {"v": 1})
    accepted = AcceptedConfig(shm, (100, 1, 2))
    directory = os.path.dirname(accepted.accept(src, 1))
    accepted.remove()
    assert not os.path.exists(directory)
