"""The README's curl session, read from README.md and checked answer for
answer: the tests of `make run` and of the Debian image run it against
their gateways."""

import os
import re
import shlex
import subprocess

from gateway import ROOT


def readme_session():
    """The README's curl session: [(command, expected output)], read from
    the code block that follows "With `make run` going:"."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    m = re.search(r"With `make run` going:\s*```\n(.*?)```", text, re.S)
    assert m, "README.md has no curl session after 'With `make run` going:'"
    session = []
    for line in m.group(1).splitlines():
        if line.startswith("$ "):
            session.append((line[2:], []))
        else:
            assert session, "output before the first command: %r" % line
            session[-1][1].append(line)
    assert len(session) >= 4, session
    return [(cmd, "\n".join(out)) for cmd, out in session]


def curl(command):
    args = shlex.split(command)
    assert args[0] == "curl", command
    proc = subprocess.run(
        args + ["--silent", "--show-error"], capture_output=True, timeout=10
    )
    return proc.stdout.decode().replace("\r\n", "\n").rstrip("\n")


def same(expected, actual):
    """Line for line; a Date header is whatever time it is."""
    exp, act = expected.split("\n"), actual.split("\n")
    if len(exp) != len(act):
        return False
    for e, a in zip(exp, act):
        if e.startswith("Date: ") and a.startswith("Date: "):
            continue
        if e != a:
            return False
    return True
