"""The ``discovery`` key of the MOSN config's ``pyworker`` block: which
one source feeds this gateway's endpoint table.

    "pyworker": {"discovery": {"service_file": "conf/service.json"}}
    "pyworker": {"discovery": {"etcd": {"endpoints": ["127.0.0.1:2379"],
                                        "prefix": "/mosn/apps/",
                                        "config_key": "/mosn/config"}}}
    "pyworker": {"discovery": {"xds": {"server": "127.0.0.1:15010",
                                       "node_id": "gateway-1"}}}

``"pyworker": {"service_file": ...}`` (the older spelling) still names
the service file; naming it both ways is an error.
"""

from dataclasses import dataclass

from pyworker.api import ConfigError, json_type
from pyworker.discovery.servicefile import (
    _address,
    option_of,
    service_file_option,
)

__all__ = [
    "FileSource",
    "EtcdSource",
    "XdsSource",
    "discovery_option",
    "discovery_of",
]

ETCD_PORT = 2379


@dataclass(frozen=True)
class FileSource:
    path: str
    kind = "file"

    def describe(self):
        return f"the service file {self.path}"


@dataclass(frozen=True)
class EtcdSource:
    endpoints: tuple  # ((host, port), ...) tried in turn
    prefix: str  # one key per app under it
    config_key: str | None  # the listeners' MOSN JSON, if any
    username: str | None = None
    password: str | None = None
    timeout: float = 5.0  # for a connect and a read
    coalesce: float = 0.05  # seconds a busy watch lets changes gather
    kind = "etcd"

    def describe(self):
        where = ", ".join(_hostport(*e) for e in self.endpoints)
        return f"etcd {where} prefix {self.prefix}"


@dataclass(frozen=True)
class XdsSource:
    server: tuple  # (host, port) of the ADS server
    node_id: str
    node_cluster: str
    site_key: str = "site"  # the envoy.lb metadata key naming a site
    timeout: float = 5.0
    kind = "xds"

    def describe(self):
        return f"xDS (ADS) at {_hostport(*self.server)} as node {self.node_id}"


ETCD_KEYS = {
    "endpoints",
    "prefix",
    "config_key",
    "username",
    "password",
    "timeout",
    "coalesce",
}
XDS_KEYS = {"server", "node_id", "node_cluster", "site_key", "timeout"}


def discovery_option(options, where="pyworker"):
    """The source the ``pyworker`` block names, or None.  Raises
    ConfigError naming the key."""
    legacy = service_file_option(options, f"{where}.service_file")
    block = options.get("discovery")
    if block is None:
        return FileSource(legacy) if legacy else None
    here = f"{where}.discovery"
    if not isinstance(block, dict):
        raise ConfigError(f"must be an object, not {json_type(block)}", here)
    if legacy:
        raise ConfigError(
            "the service file is named twice: keep "
            "discovery.service_file and drop service_file",
            f"{where}.service_file",
        )
    kinds = [k for k in block if k in ("service_file", "etcd", "xds")]
    unknown = [k for k in block if k not in ("service_file", "etcd", "xds")]
    if unknown:
        raise ConfigError(
            f"unknown source {unknown[0]!r}; one of service_file, etcd, xds",
            f"{here}.{unknown[0]}",
        )
    if len(kinds) != 1:
        raise ConfigError(
            f"one source per gateway, not {len(kinds)}: "
            f"service_file, etcd or xds",
            here,
        )
    kind = kinds[0]
    if kind == "service_file":
        return FileSource(service_file_option(block, f"{here}.service_file"))
    if kind == "etcd":
        return _etcd(block["etcd"], f"{here}.etcd")
    return _xds(block["xds"], f"{here}.xds")


def _etcd(raw, here):
    _object(raw, here, ETCD_KEYS)
    endpoints = raw.get("endpoints", [f"127.0.0.1:{ETCD_PORT}"])
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    if not isinstance(endpoints, list) or not endpoints:
        raise ConfigError(
            'must be a non-empty array of "host:port"', f"{here}.endpoints"
        )
    parsed = tuple(
        _endpoint(e, f"{here}.endpoints[{i}]", ETCD_PORT, etcd=True)
        for i, e in enumerate(endpoints)
    )
    prefix = _string(raw.get("prefix"), f"{here}.prefix", required=True)
    config_key = _string(raw.get("config_key"), f"{here}.config_key")
    if config_key is not None and config_key.startswith(prefix):
        raise ConfigError(
            f"the config key may not be under the prefix of "
            f"the apps ({prefix!r})",
            f"{here}.config_key",
        )
    username = _string(raw.get("username"), f"{here}.username")
    password = _string(raw.get("password"), f"{here}.password")
    if (username is None) != (password is None):
        raise ConfigError(
            "username and password go together", f"{here}.username"
        )
    coalesce = raw.get("coalesce", EtcdSource.coalesce)
    if (
        isinstance(coalesce, bool)
        or not isinstance(coalesce, (int, float))
        or not 0 <= coalesce <= 1
    ):
        raise ConfigError(
            f"must be a number of seconds in 0..1 (0: every "
            f"change read on its own), not {coalesce!r}",
            f"{here}.coalesce",
        )
    return EtcdSource(
        parsed,
        prefix,
        config_key,
        username,
        password,
        _seconds(raw.get("timeout"), f"{here}.timeout"),
        float(coalesce),
    )


def _xds(raw, here):
    _object(raw, here, XDS_KEYS)
    if raw.get("server") is None:
        raise ConfigError(
            'missing: the ADS server, "host:port"', f"{here}.server"
        )
    server = _endpoint(raw["server"], f"{here}.server", None)
    node_id = _string(raw.get("node_id"), f"{here}.node_id", required=True)
    cluster = (
        _string(raw.get("node_cluster"), f"{here}.node_cluster")
        or "mosn-gateway"
    )
    site_key = _string(raw.get("site_key"), f"{here}.site_key") or "site"
    return XdsSource(
        server,
        node_id,
        cluster,
        site_key,
        _seconds(raw.get("timeout"), f"{here}.timeout"),
    )


def _object(raw, here, known):
    if not isinstance(raw, dict):
        raise ConfigError(f"must be an object, not {json_type(raw)}", here)
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"unknown key; known: {', '.join(sorted(known))}",
                f"{here}.{key}",
            )


def _string(value, here, required=False):
    if value is None:
        if required:
            raise ConfigError("missing: a non-empty string", here)
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError(
            f"must be a non-empty string, not {json_type(value)}", here
        )
    return value


def _seconds(value, here, default=5.0):
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.1 <= value <= 300
    ):
        raise ConfigError(
            f"must be a number of seconds in 0.1..300, not {value!r}", here
        )
    return float(value)


def _endpoint(text, here, default_port, etcd=False):
    """ "host:port" (an IP address: no name is resolved, and a scheme of
    http:// is allowed) -> (host, port)."""
    if not isinstance(text, str) or not text:
        raise ConfigError(f'must be "host:port", not {json_type(text)}', here)
    rest = text
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme == "https" and etcd:
            raise ConfigError(
                "TLS is not spoken by the etcd client: run "
                "`etcd grpc-proxy` on this machine (TLS to "
                "the cluster, plain on 127.0.0.1) and name "
                "it here",
                here,
            )
        if scheme != "http":
            raise ConfigError(f"scheme {scheme}:// is not supported", here)
    rest = rest.rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or (host and host.count(":") and not host.startswith("[")):
        host, port = rest, None
    if port is None:
        if default_port is None:
            raise ConfigError(f"{text!r} has no port", here)
        port = default_port
    else:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"port {port!r} is not in 1..65535", here)
        port = int(port)
    addr = _address(host)
    if addr is None:
        raise ConfigError(
            f"{host!r} is not an IPv4 or IPv6 address (host "
            f"names are not resolved)",
            here,
        )
    return addr, port


def _hostport(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def discovery_of(config_path):
    """The source the MOSN config at ``config_path`` names, or None.
    Reads only the ``pyworker`` block: the supervisor imports no filter.
    Raises ConfigError."""
    return option_of(config_path, discovery_option)
