"""The ``metadata`` filter (after MOSN's): drivers fill ``ctx.metadata``.

Config, in MOSN's shape::

    {"type": "metadata",
     "config": {"disable": false, "case_sensitive": false,
                "metadataers": [{"meta_data_key": "UNIT",
                                 "config": {"unit_key": "uid"}}]}}

Each ``meta_data_key`` names both the driver (matched in any case) and the
metadata key its value is stored under. nginx exposes the key as
``$mosn_meta_<key>``.

``case_sensitive`` means what it means in MOSN: it is about the metadata
written, not about matching. When false (the default) the key and the value
are lower-cased (MOSN wrote them as the header ``x-mosn-on-envoy-unit: s1``),
so ``UNIT`` is stored as ``unit``; when true both are kept as written.
Header lookups by the drivers are case-insensitive either way, as HTTP
header names are.

A driver that raises leaves its key unset and the request goes on (as in
MOSN); the failures are counted in ``driver_errors``. ``disable: true``
makes the filter a no-op (its drivers are still built, so a bad config is
still reported at load).

A driver whose ``build_metadata`` is ``async def`` makes the filter one
that awaits (its chain then runs each request as a task); drivers run in
order either way.  Drivers' ``start()`` and ``stop()`` hooks run with the
filter's.
"""

import inspect

from pyworker.api import (
    CONTINUE,
    ConfigError,
    StreamReceiverFilter,
    awaits,
    json_type,
)
from pyworker.registry import NotRegisteredError, get_driver, register_filter
from pyworker.verdict import is_metadata_key


@register_filter("metadata")
class MetadataFilter(StreamReceiverFilter):
    __slots__ = (
        "disable",
        "case_sensitive",
        "drivers",
        "driver_errors",
        "handler",
        "_builders",
    )

    def __init__(self, config):
        self.disable = _flag(config, "disable")
        self.case_sensitive = _flag(config, "case_sensitive")
        self.drivers = {}  # metadata key -> driver
        self.driver_errors = 0
        entries = config.get("metadataers")
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise ConfigError(
                f"must be an array, not {json_type(entries)}", "metadataers"
            )
        for i, entry in enumerate(entries):
            key, driver = _build_driver(entry, f"metadataers[{i}]")
            if not self.case_sensitive:
                key = key.lower()
            if key in self.drivers:
                raise ConfigError(
                    f"metadata key {key!r} is configured twice",
                    f"metadataers[{i}].meta_data_key",
                )
            self.drivers[key] = driver
        # (key, bound method) pairs: the per-request loop does no lookups
        self._builders = (
            ()
            if self.disable
            else tuple(
                (key, driver.build_metadata)
                for key, driver in self.drivers.items()
            )
        )
        if any(awaits(build) for _, build in self._builders):
            # the same filter, with an on_receive that awaits its drivers
            self.__class__ = AsyncMetadataFilter

    async def start(self):
        for driver in self.drivers.values():
            await _hook(driver, "start")

    async def stop(self):
        for driver in reversed(list(self.drivers.values())):
            await _hook(driver, "stop")

    def on_receive(self, ctx, headers, buf, trailers):
        metadata = ctx.metadata
        lower = not self.case_sensitive
        for key, build in self._builders:
            try:
                value = build(ctx, headers, buf, trailers)
            except Exception:
                self.driver_errors += 1
                continue
            if value is not None:
                # a non-str value fails here, loudly, as a bug in the driver
                if lower:
                    value = value.lower()
                metadata[key] = value
        return CONTINUE


class AsyncMetadataFilter(MetadataFilter):
    """The metadata filter when a driver awaits."""

    __slots__ = ()

    async def on_receive(self, ctx, headers, buf, trailers):
        metadata = ctx.metadata
        lower = not self.case_sensitive
        for key, build in self._builders:
            try:
                value = build(ctx, headers, buf, trailers)
                if inspect.isawaitable(value):
                    value = await value
            except Exception:
                self.driver_errors += 1
                continue
            if value is not None:
                if lower:
                    value = value.lower()
                metadata[key] = value
        return CONTINUE


async def _hook(driver, name):
    hook = getattr(driver, name, None)
    if callable(hook):
        result = hook()
        if inspect.isawaitable(result):
            await result


def _flag(config, name):
    value = config.get(name, False)
    if not isinstance(value, bool):
        raise ConfigError(
            f"must be true or false, not {json_type(value)}", name
        )
    return value


def _build_driver(entry, path):
    if not isinstance(entry, dict):
        raise ConfigError(
            f'must be an object with a "meta_data_key", not '
            f"{json_type(entry)}",
            path,
        )
    key = entry.get("meta_data_key")
    if not is_metadata_key(key):
        raise ConfigError(
            f"must be a string of 1..64 characters A-Z a-z 0-9 _, not {key!r}",
            f"{path}.meta_data_key",
        )
    try:
        factory = get_driver(key)
    except NotRegisteredError as exc:
        raise ConfigError(str(exc), f"{path}.meta_data_key") from None
    config = entry.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"must be an object, not {json_type(config)}", f"{path}.config"
        )
    try:
        driver = factory()
        driver.init(config)
    except ConfigError as exc:
        raise exc.located(f"{path}.config") from None
    except Exception as exc:
        raise ConfigError(
            f"metadata driver {key!r} failed to initialise: "
            f"{type(exc).__name__}: {exc}",
            f"{path}.config",
        ) from exc
    return key, driver
