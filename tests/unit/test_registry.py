"""The built-in filters and drivers are found as third-party ones are,
through this package's entry points: the registry imports none of them,
so the imports run one way (built-ins -> registry)."""

import ast
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pyworker.registry

BUILTIN_FILTERS = {"echo", "metadata", "ext_authz", "ratelimit"}
BUILTIN_DRIVERS = {"UNIT", "IDC", "ZONE"}


def test_the_registry_imports_no_filter_or_driver():
    with open(pyworker.registry.__file__.replace(".pyc", ".py")) as f:
        tree = ast.parse(f.read())
    names = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    names += [
        node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    ]
    strings = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    for name in names:
        assert not name.startswith(("pyworker.filters", "pyworker.drivers")), (
            name
        )
    # "pyworker.filters" is also the entry point group's name; a module of
    # the group would be named with a dot after it
    for name in strings:
        assert not name.startswith(
            ("pyworker.filters.", "pyworker.drivers.")
        ), name


def test_the_builtins_are_entry_points_of_this_package():
    modules = {
        ep.value
        for group in ("pyworker.filters", "pyworker.drivers")
        for ep in entry_points(group=group)
    }
    assert {
        "pyworker.filters.echo",
        "pyworker.filters.metadata",
        "pyworker.filters.ext_authz",
        "pyworker.filters.ratelimit",
        "pyworker.drivers.unit",
        "pyworker.drivers.env",
    } <= modules


def test_a_fresh_process_finds_the_builtins_through_them():
    code = (
        "import sys\n"
        "from pyworker import registry\n"
        "builtins = ('pyworker.filters.', 'pyworker.drivers.')\n"
        "loaded = [m for m in sys.modules if m.startswith(builtins)]\n"
        "assert not loaded, loaded\n"
        "print(' '.join(registry.filter_types()))\n"
        "print(' '.join(registry.driver_names()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(__file__),
    )
    assert out.returncode == 0, out.stderr
    filters, drivers = out.stdout.splitlines()
    assert BUILTIN_FILTERS <= set(filters.split())
    assert BUILTIN_DRIVERS <= set(drivers.split())
