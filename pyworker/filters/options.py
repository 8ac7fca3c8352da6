"""Reading the options of the built-in filters: durations, header name
matchers, statuses, each checked with a ConfigError that names the key."""

import re

from pyworker.api import ConfigError, json_type

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(config, key, default, *, low=0.0, high=3600.0):
    """Seconds, from a number of seconds or a string as Envoy writes
    durations ("0.25s", "200ms")."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(
            f'must be a duration such as "200ms" or a '
            f"number of seconds, not {json_type(value)}",
            key,
        )
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ConfigError(
                f'{value!r} is not a duration such as "200ms" or "1.5s"', key
            )
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if not low <= value <= high:
        raise ConfigError(
            f"must be between {low:g} and {high:g} seconds, not {value:g}", key
        )
    return float(value)


def flag(config, key, default=False):
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(
            f"must be true or false, not {json_type(value)}", key
        )
    return value


def integer(config, key, default, low, high):
    value = config.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= high
    ):
        raise ConfigError(
            f"must be an integer in {low}..{high}, not {value!r}", key
        )
    return value


def status(config, key, default):
    return integer(config, key, default, 200, 599)


def obj(config, key):
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"must be an object, not {json_type(value)}", key)
    return value


def string(config, key, default=None):
    value = config.get(key, default)
    if value is None:
        raise ConfigError("missing", key)
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, not {json_type(value)}", key)
    return value


class HeaderMatcher:
    """Which header names a list of Envoy string matchers takes, ignoring
    case as header names are: ``{"patterns": [{"exact": "x-user"},
    {"prefix": "x-auth-"}, {"suffix": ...}, {"contains": ...}]}``, or the
    list of patterns alone, or plain names (exact)."""

    __slots__ = ("exact", "prefixes", "suffixes", "contains")

    def __init__(self, value, key):
        self.exact = set()
        self.prefixes = []
        self.suffixes = []
        self.contains = []
        if isinstance(value, dict):
            if set(value) - {"patterns"}:
                raise ConfigError('takes only "patterns"', key)
            value = value.get("patterns", [])
            key += ".patterns"
        if not isinstance(value, list):
            raise ConfigError(
                f"must be a list of header names or matchers, "
                f"not {json_type(value)}",
                key,
            )
        for i, item in enumerate(value):
            here = f"{key}[{i}]"
            if isinstance(item, str):
                item = {"exact": item}
            if not isinstance(item, dict) or len(item) != 1:
                raise ConfigError(
                    "must be a header name or an object with "
                    "one of exact, prefix, suffix, contains",
                    here,
                )
            ((kind, pattern),) = item.items()
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"{kind} must be a non-empty string", here)
            pattern = pattern.lower()
            if kind == "exact":
                self.exact.add(pattern)
            elif kind == "prefix":
                self.prefixes.append(pattern)
            elif kind == "suffix":
                self.suffixes.append(pattern)
            elif kind == "contains":
                self.contains.append(pattern)
            else:
                raise ConfigError(
                    f"unknown matcher {kind!r}: one of exact, "
                    f"prefix, suffix, contains",
                    here,
                )
        self.prefixes = tuple(self.prefixes)
        self.suffixes = tuple(self.suffixes)

    def __bool__(self):
        return bool(
            self.exact or self.prefixes or self.suffixes or self.contains
        )

    def __call__(self, name):
        name = name.lower()
        return (
            name in self.exact
            or (self.prefixes and name.startswith(self.prefixes))
            or (self.suffixes and name.endswith(self.suffixes))
            or any(part in name for part in self.contains)
        )


def header_matcher(config, key):
    """A HeaderMatcher of config[key], or None where the key is absent."""
    value = config.get(key)
    if value is None:
        return None
    return HeaderMatcher(value, key)


def header_pairs(config, key):
    """(name, value) pairs from Envoy's ``[{"key": ..., "value": ...}]``
    or an object of name -> value."""
    value = config.get(key)
    if value is None:
        return []
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or set(item) != {"key", "value"}:
                raise ConfigError(
                    'must be an object {"key": ..., "value": ...}',
                    f"{key}[{i}]",
                )
            pairs.append((item["key"], item["value"]))
    else:
        raise ConfigError(
            f"must be an array or an object, not {json_type(value)}", key
        )
    for name, header_value in pairs:
        if not isinstance(name, str) or not isinstance(header_value, str):
            raise ConfigError("header names and values must be strings", key)
    return pairs
