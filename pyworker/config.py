"""Loads the MOSN-style JSON config into listeners, filter chains and settings.

What is read (MOSN's shape)::

    servers[].listeners[].name            the chain name, as in nginx's
                                          mosn_filter_chain NAME
    servers[].listeners[].stream_filters  the chain: [{"type", "config",
                                          "module"?}]
    servers[].listeners[].log_path, .log_level
    servers[0].default_log_path
    servers[0].default_log_level          FATAL ERROR WARN INFO DEBUG TRACE
    admin.address.socket_address.{address, port_value}
    metrics.sinks[] {"type": "prometheus", "config": {"port", "endpoint"?}}
    metrics.stats_matcher.{exclusion_labels, exclusion_keys}
    pyworker.{modules, bind_any}          this project's own block
    pyworker.spin_us                      how long a worker looks for more
                                          work before it sleeps (default 0)
    pyworker.max_in_flight                requests one worker serves as
                                          tasks at once (filters that await)
    pyworker.service_file                 MOE's service file, watched for
                                          the endpoints of mosn_subset
                                          (see pyworker.discovery)
    pyworker.discovery                    the one source of those
                                          endpoints: {"service_file"},
                                          {"etcd": {...}} or {"xds": {...}}

``pprof`` and MOSN's other top-level keys are accepted; keys this loader
does not know are reported in ``GatewayConfig.warnings`` and logged at
WARNING on logger ``pyworker.config`` (``log_warnings=False`` leaves the
reporting to the caller).

Relative paths (the log paths, the service file) are resolved against the
current working directory of the process loading the config and stored
absolute; start the gateway from the directory the paths are relative
to.

Admin and metrics listen on loopback: an address of 0.0.0.0 (or ::) is
bound as 127.0.0.1 (or ::1) unless ``"pyworker": {"bind_any": true}``.

Loading builds every chain, so a config that loads will run; anything
wrong raises ConfigError as ``"<file>: <key path>: <what is wrong>"``.
"""

import copy
import logging
import os
import re
from dataclasses import dataclass, field

from pyworker import jsontext, registry
from pyworker.api import ConfigError, json_type
from pyworker.chain import Chain
from pyworker.discovery import FileSource, discovery_option
from pyworker.verdict import DEFAULT_LIMITS

# a worker that just served may look for more this long before it sleeps,
# saving a futex sleep and wake when requests come close together; off by
# default, as the CPU it burns is nginx's when no core is spare
# (bench/results/spin.md)
SPIN_US_DEFAULT = 0
MAX_IN_FLIGHT_DEFAULT = 1024
MAX_IN_FLIGHT_LIMIT = 65536

__all__ = [
    "ConfigError",
    "GatewayConfig",
    "Listener",
    "Endpoint",
    "Metrics",
    "load",
    "loads",
    "from_dict",
    "MOSN_LOG_LEVELS",
    "redact",
]

TRACE = 5  # MOSN's TRACE, below logging.DEBUG
MOSN_LOG_LEVELS = {
    "FATAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARN": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
    "TRACE": TRACE,
}
DEFAULT_LOG_LEVEL = "INFO"  # MOSN's default

KNOWN_TOP_LEVEL = {"servers", "admin", "metrics", "pprof", "pyworker"}
# MOSN keys that mean nothing here (nginx does the networking and routing)
IGNORED_TOP_LEVEL = {
    "pprof",
    "cluster_manager",
    "tracing",
    "dynamic_resources",
    "static_resources",
    "raw_dynamic_resources",
    "raw_static_resources",
    "close_graceful",
    "inherit_old_mosnconfig",
    "plugin",
    "third_part_codec",
    "extends",
    "wasm_global_plugins",
    "debug",
}
STREAM_FILTER_KEYS = {"type", "config", "module"}

_LOOPBACK = {
    "0.0.0.0": "127.0.0.1",
    "": "127.0.0.1",
    "::": "::1",
    "[::]": "::1",
}
_SECRET_KEY = re.compile(
    r"password|passwd|secret|token|credential|api[_-]?key|private", re.I
)
REDACTED = "<redacted>"

_log = logging.getLogger("pyworker.config")


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self):
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(slots=True)
class Listener:
    name: str
    address: str | None
    log_path: str | None
    log_level: int | None
    chain: Chain


@dataclass(slots=True)
class Metrics:
    prometheus: Endpoint | None = None
    prometheus_path: str = "/metrics"
    exclusion_labels: tuple = ()
    exclusion_keys: tuple = ()


@dataclass(slots=True)
class GatewayConfig:
    path: str
    raw: dict
    listeners: dict  # name -> Listener
    chains: dict  # name -> Chain
    log_path: str | None
    log_level: int
    log_level_name: str
    admin: Endpoint | None
    metrics: Metrics
    bind_any: bool = False
    modules: tuple = ()
    service_file: str | None = None
    discovery: object = None  # FileSource, EtcdSource, XdsSource or None
    spin_us: int = SPIN_US_DEFAULT
    max_in_flight: int = MAX_IN_FLIGHT_DEFAULT
    # the "pyworker" block as written (other parts read their own keys)
    options: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def config_dump(self):
        """The config as written, with secrets redacted (for the admin API)."""
        return redact(self.raw)


def load(path, *, observe=None, limits=DEFAULT_LIMITS, log_warnings=True):
    """Reads, checks and builds the config file at ``path``."""
    file = os.fspath(path)
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the config: {exc.strerror or exc}", file=file
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 (bad byte at offset {exc.start})", file=file
        ) from None
    return loads(
        text, file, observe=observe, limits=limits, log_warnings=log_warnings
    )


def loads(
    text,
    source="<string>",
    *,
    observe=None,
    limits=DEFAULT_LIMITS,
    log_warnings=True,
):
    """Like ``load``, from the JSON text; ``source`` names it in errors."""
    try:
        raw = jsontext.parse(text)
    except jsontext.NotJSON as exc:
        raise ConfigError(
            f"invalid JSON: {exc.msg}", exc.where, source
        ) from None
    return _build(raw, source, observe, limits, log_warnings)


def from_dict(
    raw,
    source="<dict>",
    *,
    observe=None,
    limits=DEFAULT_LIMITS,
    log_warnings=True,
):
    """Like ``load``, from an already parsed config."""
    return _build(copy.deepcopy(raw), source, observe, limits, log_warnings)


def _build(raw, source, observe, limits, log_warnings):
    try:
        config = _Loader(source, observe, limits).load(raw)
    except ConfigError as exc:
        raise exc.located(file=source) from None
    if log_warnings:
        for warning in config.warnings:
            _log.warning("%s", warning)
    return config


class _Loader:
    def __init__(self, source, observe, limits):
        self.source = source
        self.observe = observe
        self.limits = limits
        self.warnings = []

    def warn(self, path, message):
        self.warnings.append(f"{self.source}: {path}: {message}")

    def load(self, raw):
        if not isinstance(raw, dict):
            raise ConfigError(
                f"the config must be a JSON object, not {json_type(raw)}"
            )
        for key in raw:
            if key not in KNOWN_TOP_LEVEL and key not in IGNORED_TOP_LEVEL:
                self.warn(key, "unknown key, ignored")
        options = _get(raw, "pyworker", dict, {}, "pyworker")
        bind_any = _get(options, "bind_any", bool, False, "pyworker.bind_any")
        modules = _get(options, "modules", list, [], "pyworker.modules")
        discovery = discovery_option(options)
        service_file = (
            discovery.path if isinstance(discovery, FileSource) else None
        )
        spin_us = _get(
            options, "spin_us", int, SPIN_US_DEFAULT, "pyworker.spin_us"
        )
        if isinstance(spin_us, bool) or not 0 <= spin_us <= 10000:
            raise ConfigError(
                "must be an integer in 0..10000 (microseconds)",
                "pyworker.spin_us",
                self.source,
            )
        max_in_flight = _get(
            options,
            "max_in_flight",
            int,
            MAX_IN_FLIGHT_DEFAULT,
            "pyworker.max_in_flight",
        )
        if (
            isinstance(max_in_flight, bool)
            or not 1 <= max_in_flight <= MAX_IN_FLIGHT_LIMIT
        ):
            raise ConfigError(
                f"must be an integer in 1..{MAX_IN_FLIGHT_LIMIT} (requests)",
                "pyworker.max_in_flight",
                self.source,
            )

        registry.load_plugins()
        for i, module in enumerate(modules):
            try:
                registry.import_module(module)
            except Exception as exc:
                raise ConfigError(
                    f"cannot import module {module!r}: "
                    f"{type(exc).__name__}: {exc}",
                    f"pyworker.modules[{i}]",
                ) from exc

        servers = raw.get("servers")
        if servers is None:
            raise ConfigError(
                "missing: the listeners (filter chains) are "
                "configured under servers[].listeners[]",
                "servers",
            )
        _expect(servers, list, "servers")
        log_path, level_name = None, DEFAULT_LOG_LEVEL
        listeners = {}
        first_seen = {}
        for i, server in enumerate(servers):
            here = f"servers[{i}]"
            _expect(server, dict, here)
            if i == 0:
                log_path = _path(
                    _get(
                        server,
                        "default_log_path",
                        str,
                        None,
                        f"{here}.default_log_path",
                    )
                )
                level_name = _level_name(
                    server.get("default_log_level", DEFAULT_LOG_LEVEL),
                    f"{here}.default_log_level",
                )
            entries = _get(server, "listeners", list, [], f"{here}.listeners")
            for j, entry in enumerate(entries):
                where = f"{here}.listeners[{j}]"
                listener = self.listener(entry, where)
                if listener.name in listeners:
                    raise ConfigError(
                        f"duplicate listener name {listener.name!r} (first "
                        f"at {first_seen[listener.name]})",
                        f"{where}.name",
                    )
                listeners[listener.name] = listener
                first_seen[listener.name] = where
        if not listeners:
            raise ConfigError(
                "no listeners configured: every filter chain "
                "is a listener under servers[].listeners[]",
                "servers",
            )

        return GatewayConfig(
            path=self.source,
            raw=raw,
            listeners=listeners,
            chains={name: item.chain for name, item in listeners.items()},
            log_path=log_path,
            log_level=MOSN_LOG_LEVELS[level_name],
            log_level_name=level_name,
            admin=self.admin(raw.get("admin"), bind_any),
            metrics=self.metrics(raw.get("metrics"), bind_any),
            bind_any=bind_any,
            modules=tuple(modules),
            service_file=service_file,
            discovery=discovery,
            spin_us=spin_us,
            max_in_flight=max_in_flight,
            options=options,
            warnings=self.warnings,
        )

    def listener(self, entry, here):
        _expect(entry, dict, here)
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"a listener needs a non-empty string name, "
                f"not {json_type(name)}",
                f"{here}.name",
            )
        address = _get(entry, "address", str, None, f"{here}.address")
        log_path = _path(
            _get(entry, "log_path", str, None, f"{here}.log_path")
        )
        level = entry.get("log_level")
        log_level = None
        if level is not None:
            log_level = MOSN_LOG_LEVELS[
                _level_name(level, f"{here}.log_level")
            ]
        stream_filters = entry.get("stream_filters")
        if stream_filters is None:
            stream_filters = []
        path = f"{here}.stream_filters"
        if isinstance(stream_filters, list):
            for k, item in enumerate(stream_filters):
                if isinstance(item, dict):
                    for key in item.keys() - STREAM_FILTER_KEYS:
                        self.warn(f"{path}[{k}].{key}", "unknown key, ignored")
        chain = Chain.from_stream_filters(
            name,
            stream_filters,
            path=path,
            observe=self.observe,
            limits=self.limits,
        )
        return Listener(name, address, log_path, log_level, chain)

    def admin(self, admin, bind_any):
        if admin is None:
            return None
        _expect(admin, dict, "admin")
        address = _get(admin, "address", dict, None, "admin.address")
        if address is None:
            raise ConfigError(
                'missing: expected {"socket_address": '
                '{"address": ..., "port_value": ...}}',
                "admin.address",
            )
        here = "admin.address.socket_address"
        socket = _get(address, "socket_address", dict, None, here)
        if socket is None:
            raise ConfigError("missing", here)
        host = _get(socket, "address", str, "0.0.0.0", f"{here}.address")
        port = _port(socket.get("port_value"), f"{here}.port_value")
        return Endpoint(
            self.bind_host(host, bind_any, f"{here}.address"), port
        )

    def metrics(self, metrics, bind_any):
        result = Metrics()
        if metrics is None:
            return result
        _expect(metrics, dict, "metrics")
        sinks = _get(metrics, "sinks", list, [], "metrics.sinks")
        for i, sink in enumerate(sinks):
            here = f"metrics.sinks[{i}]"
            _expect(sink, dict, here)
            kind = sink.get("type")
            if kind != "prometheus":
                self.warn(
                    f"{here}.type",
                    f"sink type {kind!r} is not "
                    f"supported, ignored (supported: "
                    f"prometheus)",
                )
                continue
            if result.prometheus is not None:
                raise ConfigError(
                    "a second prometheus sink; configure one", here
                )
            config = _get(sink, "config", dict, {}, f"{here}.config")
            port = _port(config.get("port"), f"{here}.config.port")
            # MOSN's sink has no address (it listens on all); ours is loopback
            host = _get(
                config, "address", str, "0.0.0.0", f"{here}.config.address"
            )
            host = self.bind_host(
                host,
                bind_any,
                f"{here}.config.address",
                quiet="address" not in config,
            )
            result.prometheus = Endpoint(host, port)
            result.prometheus_path = _get(
                config, "endpoint", str, "/metrics", f"{here}.config.endpoint"
            )
        here = "metrics.stats_matcher"
        matcher = _get(metrics, "stats_matcher", dict, {}, here)
        result.exclusion_labels = _strings(
            matcher, "exclusion_labels", f"{here}.exclusion_labels"
        )
        result.exclusion_keys = _strings(
            matcher, "exclusion_keys", f"{here}.exclusion_keys"
        )
        return result

    def bind_host(self, host, bind_any, path, quiet=False):
        if bind_any or host not in _LOOPBACK:
            return host
        if not quiet:
            self.warn(
                path,
                f"{host or '(any)'} is bound as "
                f'{_LOOPBACK[host]}; set "pyworker": '
                f'{{"bind_any": true}} to listen on every '
                f"interface",
            )
        return _LOOPBACK[host]


def redact(value):
    """A deep copy of parsed JSON, values of secret-looking keys replaced."""
    if isinstance(value, dict):
        return {
            key: REDACTED
            if isinstance(key, str) and _SECRET_KEY.search(key)
            else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


_KIND_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "true or false",
    int: "an integer",
}


def _expect(value, kind, path):
    # JSON true/false are Python ints: never accept them as numbers
    if not isinstance(value, kind) or (
        kind is int and isinstance(value, bool)
    ):
        raise ConfigError(
            f"must be {_KIND_NAMES[kind]}, not {json_type(value)}", path
        )
    return value


def _get(obj, key, kind, default, path):
    value = obj.get(key)
    if value is None:
        return default
    return _expect(value, kind, path)


def _strings(obj, key, path):
    values = _get(obj, key, list, [], path)
    for i, value in enumerate(values):
        _expect(value, str, f"{path}[{i}]")
    return tuple(values)


def _port(value, path):
    if value is None:
        raise ConfigError("missing port", path)
    _expect(value, int, path)
    if not 1 <= value <= 65535:
        raise ConfigError(f"port {value} is not in 1..65535", path)
    return value


def _level_name(value, path):
    if not isinstance(value, str) or value.upper() not in MOSN_LOG_LEVELS:
        raise ConfigError(
            f"unknown log level {value!r}; levels: "
            f"{' '.join(MOSN_LOG_LEVELS)}",
            path,
        )
    return value.upper()


def _path(value):
    # MOSN's stdout/stderr are streams, not files; other relative paths
    # are relative to the working directory
    if value is None or value == "" or value in ("stdout", "stderr"):
        return value or None
    return os.path.abspath(value)
