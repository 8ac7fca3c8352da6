"""make clean removes every file a build, a run or a test wrote into the
tree: a copy of the tree is given the files git ignores in this checkout
(as a build and a test run left them), and after make clean git ignores
none of its files."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def git(*args, cwd=ROOT):
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def ignored(cwd):
    """The paths git ignores, a directory as one entry."""
    out = git(
        "status",
        "--porcelain",
        "--ignored",
        "--untracked-files=normal",
        cwd=cwd,
    )
    return sorted(
        line[3:] for line in out.splitlines() if line.startswith("!! ")
    )


def test_make_clean_removes_every_generated_file(tmp_path):
    try:
        files = git("ls-files", "-z").split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    made = ignored(ROOT)
    assert made, "nothing generated in this checkout: build it first"
    # the tree as committed (this checkout's Makefile and .gitignore)...
    copy = tmp_path / "tree"
    for name in filter(None, files):
        if os.path.isfile(os.path.join(ROOT, name)):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), copy / name)
    git("init", "--quiet", cwd=copy)
    git("add", "--all", cwd=copy)
    # ...with a stand-in of each generated path: its name is what counts
    for path in made:
        target = copy / path.rstrip("/")
        if path.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            (target / "generated").write_text("x")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("x")
    # (a directory that ignores itself, as .ruff_cache/ does, is not
    # copied as such)
    assert ignored(copy) and set(ignored(copy)) <= set(made)
    subprocess.run(
        ["make", "clean"],
        cwd=copy,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert ignored(copy) == []
