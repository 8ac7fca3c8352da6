"""Files replaced whole: the stats, the accepted config and the merged
filter config are written through pyworker.atomic."""

import json
import os

import pytest

from pyworker import atomic


def test_a_file_is_replaced_whole_with_its_mode(tmp_path):
    path = str(tmp_path / "stats.json")
    atomic.write_json(path, {"a": 1})
    atomic.write_json(path, {"a": 2, "b": [1, 2]})
    assert json.load(open(path)) == {"a": 2, "b": [1, 2]}
    assert os.stat(path).st_mode & 0o777 == 0o644
    atomic.replace(path, b"secret", mode=0o600)
    assert open(path, "rb").read() == b"secret"
    assert os.stat(path).st_mode & 0o777 == 0o600
    # no temporary file is left beside it
    assert os.listdir(tmp_path) == ["stats.json"]


def test_a_symlink_at_the_path_is_replaced_not_written_through(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    path = tmp_path / "config.json"
    path.symlink_to(target)
    # the names a writer that appends .tmp would use, planted too
    (tmp_path / "config.json.tmp").symlink_to(target)
    atomic.write_json(str(path), {"v": 1}, mode=0o600)
    assert target.read_text() == "keep"
    assert not path.is_symlink() and json.load(open(path)) == {"v": 1}


def test_a_failed_rename_leaves_what_was_there_and_no_temporary(tmp_path):
    # a directory with something in it cannot be renamed over
    path = tmp_path / "stats.json"
    path.mkdir()
    (path / "inside").write_text("x")
    with pytest.raises(OSError):
        atomic.write_json(str(path), {"v": 1})
    assert (path / "inside").read_text() == "x"
    assert os.listdir(tmp_path) == ["stats.json"]
