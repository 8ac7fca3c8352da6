"""The house style, checked: ruff's linter and formatter, with the
settings of pyproject.toml, over every Python file of the tree."""

import os
import subprocess
import sys

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def ruff(*args):
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ruff_finds_nothing():
    proc = ruff("check", "--no-cache", "--output-format", "concise", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_would_change_nothing():
    proc = ruff("format", "--no-cache", "--check", ".")
    assert proc.returncode == 0, (
        "run `ruff format .`:\n" + proc.stdout + proc.stderr
    )
