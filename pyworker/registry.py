"""Names of stream filter factories and metadata drivers.

A filter factory is called with the filter's JSON ``config`` dict and
returns the filter (a class taking the config is such a factory). A driver
factory is called with no argument and returns a driver, whose ``init``
gets the config. Registering is done by the decorators; filters and
drivers are found through

- the entry point groups ``pyworker.filters`` and ``pyworker.drivers``
  (an entry point naming a module is imported, so its decorators register;
  one naming a factory is registered under the entry point's name): the
  built-in ones are found there too, declared by this package's own
  metadata (setup.py), so this module imports none of them, and
- modules named in the config (``"module"`` in a stream filter entry, or
  ``"pyworker": {"modules": [...]}``), imported by the config loader.

Filter types are case-sensitive, as in MOSN; driver names are not.
"""

import importlib
import logging
import types

FILTER_GROUP = "pyworker.filters"
DRIVER_GROUP = "pyworker.drivers"

_log = logging.getLogger("pyworker.registry")

_filters = {}  # type name -> (name, factory)
_drivers = {}  # casefolded name -> (name, factory)
_plugin_errors = []  # entry points that failed to load, for messages
_entry_points_loaded = False


class NotRegisteredError(LookupError):
    """No filter type or driver of that name; ``known`` lists the names."""

    def __init__(self, message, known):
        super().__init__(message)
        self.known = known


def register_filter(type_name, *, replace=False):
    """Decorator registering a stream filter factory under ``type_name``."""

    def decorate(factory):
        _add(_filters, type_name, type_name, factory, replace, "filter type")
        return factory

    return decorate


def register_driver(name, *, replace=False):
    """Decorator registering a metadata driver class under ``name``."""

    def decorate(factory):
        key = name.casefold() if isinstance(name, str) else name
        _add(_drivers, key, name, factory, replace, "metadata driver")
        return factory

    return decorate


def _add(table, key, name, factory, replace, what):
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"a {what} name must be a non-empty str, not {name!r}"
        )
    if not callable(factory):
        raise TypeError(f"{what} {name!r}: {factory!r} is not callable")
    load_plugins()  # so that a user's name taking a built-in's is caught
    existing = table.get(key)
    # the same definition seen again (a module imported twice) is no conflict
    if (
        existing is not None
        and not replace
        and _qualname(existing[1]) != _qualname(factory)
    ):
        raise ValueError(
            f"{what} {name!r} is already registered by "
            f"{_qualname(existing[1])}; pass replace=True to "
            f"override it"
        )
    table[key] = (name, factory)


def _qualname(obj):
    module = getattr(obj, "__module__", "?")
    return f"{module}.{getattr(obj, '__qualname__', repr(obj))}"


def get_filter(type_name):
    """The factory of filter type ``type_name``; raises NotRegisteredError."""
    entry = _filters.get(type_name)
    if entry is None:
        load_plugins()
        entry = _filters.get(type_name)
        if entry is None:
            known = filter_types()
            raise NotRegisteredError(
                f"unknown filter type {type_name!r}; known types: "
                f"{', '.join(known)}{_plugin_note()}",
                known,
            )
    return entry[1]


def get_driver(name):
    """The factory of metadata driver ``name`` (in any case); raises
    NotRegisteredError."""
    entry = _drivers.get(name.casefold())
    if entry is None:
        load_plugins()
        entry = _drivers.get(name.casefold())
        if entry is None:
            known = driver_names()
            raise NotRegisteredError(
                f"unknown metadata driver {name!r}; known drivers: "
                f"{', '.join(known)}{_plugin_note()}",
                known,
            )
    return entry[1]


def filter_types():
    load_plugins()
    return sorted(_filters)  # type names are the keys


def driver_names():
    load_plugins()
    return sorted(name for name, _ in _drivers.values())


def import_module(name):
    """Imports a user module: its decorators register what it defines."""
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"a module name must be a non-empty str, not {name!r}"
        )
    return importlib.import_module(name)


def entry_points(group):
    """importlib.metadata's, imported when first needed: the import is
    slow, and a supervisor that only starts workers never needs it."""
    from importlib.metadata import entry_points as installed

    return installed(group=group)


def load_plugins():
    """Loads, once, the entry points of packages, the built-ins' first."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for group, register in (
        (FILTER_GROUP, register_filter),
        (DRIVER_GROUP, register_driver),
    ):
        # the built-ins first: a plugin's name that takes one of theirs is
        # the plugin's error, whatever order the packages are found in
        for ep in sorted(
            entry_points(group=group),
            key=lambda ep: not ep.value.startswith("pyworker."),
        ):
            try:
                target = ep.load()
                if not isinstance(target, types.ModuleType):
                    register(ep.name)(target)
            # one broken plugin must not stop the others
            except Exception as exc:
                _plugin_errors.append(
                    f"entry point {ep.name!r} ({ep.value}) in {group}: "
                    f"{type(exc).__name__}: {exc}"
                )
                _log.warning("cannot load %s", _plugin_errors[-1])


def _plugin_note():
    if not _plugin_errors:
        return ""
    return " (some plugins failed to load: " + "; ".join(_plugin_errors) + ")"
