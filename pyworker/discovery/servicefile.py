"""MOE's service file: its format, checked whole, and the
``service_file`` key of the MOSN config.

The file is MOE's (``pkg/networkextention``'s file-system discovery)::

    {"apps": [{"app_name": "test",
               "server_list": [{"ip": "127.0.0.1", "port": 3450,
                                "site": "s1"}, ...]}]}

One entry of ``apps`` is also what the etcd source keeps under each key
of its prefix (``parse_app``).
"""

import functools
import os
import re
import socket

from pyworker import jsontext
from pyworker.api import ConfigError, json_type

__all__ = [
    "ServiceFileError",
    "load",
    "loads",
    "parse",
    "parse_app",
    "service_file_option",
    "service_file_of",
    "MAX_APPS",
    "MAX_ENDPOINTS",
    "MAX_SITES",
]

# the endpoint table's bounds (shm_ring.h: MOSN_EP_*)
MAX_APPS = 16
MAX_ENDPOINTS = 256  # per app
MAX_SITES = 32  # distinct sites per app
APP_NAME_MAX = 63  # bytes of UTF-8
SITE_MAX = 31


class ServiceFileError(ConfigError):
    """A service file that cannot be used: ``"<file>: <key>: <reason>"``."""


# -- the file -----------------------------------------------------------------


def load(path):
    """The endpoints of the service file at ``path``: {app: [(ip, port,
    site), ...]} in file order, addresses in canonical form.  Raises
    ServiceFileError."""
    file = os.fspath(path)
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ServiceFileError(
            f"cannot read the service file: {exc.strerror or exc}", file=file
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ServiceFileError(
            f"not UTF-8 (bad byte at offset {exc.start})", file=file
        ) from None
    return loads(text, file)


def loads(text, source="<string>"):
    """Like ``load``, from the JSON text; ``source`` names it in errors."""
    try:
        raw = jsontext.parse(text)
    except jsontext.NotJSON as exc:
        raise ServiceFileError(
            f"invalid JSON: {exc.msg}", exc.where, source
        ) from None
    try:
        return parse(raw)
    except ServiceFileError as exc:
        raise ServiceFileError(exc.reason, exc.path, source) from None


def parse(raw):
    """Checks a parsed service file; returns what ``load`` returns."""
    _expect(raw, dict, "", "the service file must be a JSON object")
    apps = raw.get("apps")
    if apps is None:
        raise ServiceFileError(
            "missing: the endpoints are listed under "
            '"apps": [{"app_name", "server_list"}]',
            "apps",
        )
    _expect(apps, list, "apps")
    if len(apps) > MAX_APPS:
        raise ServiceFileError(
            f"{len(apps)} apps; the endpoint table holds {MAX_APPS}", "apps"
        )
    out = {}
    first_seen = {}
    for i, app in enumerate(apps):
        here = f"apps[{i}]"
        name, endpoints = parse_app(app, here)
        if name in out:
            raise ServiceFileError(
                f"duplicate app_name {name!r} (first at {first_seen[name]})",
                f"{here}.app_name",
            )
        out[name] = endpoints
        first_seen[name] = here
    return out


def parse_app(app, here="", name=None):
    """One entry of ``apps``: (app name, [(ip, port, site), ...]).  With
    ``name`` given (the etcd key names the app), ``app_name`` may be left
    out, and must be that name if it is not."""
    _expect(
        app,
        dict,
        here,
        None
        if here
        else "an app must be a JSON object, not " + json_type(app),
    )
    at = f"{here}.app_name" if here else "app_name"
    given = app.get("app_name")
    if given is None and name is not None:
        given = name
    if not isinstance(given, str) or not given:
        raise ServiceFileError(
            f"an app needs a non-empty string app_name, not {_shown(given)}",
            at,
        )
    if name is not None and given != name:
        raise ServiceFileError(
            f"app_name {given!r} is not the app the key names ({name!r})", at
        )
    _name_ok(given, APP_NAME_MAX, at, "an app name")
    where = f"{here}.server_list" if here else "server_list"
    servers = app.get("server_list")
    if servers is None:
        servers = []
    _expect(servers, list, where)
    if len(servers) > MAX_ENDPOINTS:
        raise ServiceFileError(
            f"{len(servers)} servers; at most {MAX_ENDPOINTS} per app fit",
            where,
        )
    endpoints = []
    seen = {}
    sites = set()
    for j, server in enumerate(servers):
        at = f"{where}[{j}]"
        endpoint = _server(server, at)
        key = endpoint[:2]
        if key in seen:
            raise ServiceFileError(
                f"duplicate endpoint {_hostport(*key)} (first at {seen[key]})",
                at,
            )
        seen[key] = at
        sites.add(endpoint[2])
        if len(sites) > MAX_SITES:
            raise ServiceFileError(
                f"more than {MAX_SITES} sites in one app", f"{at}.site"
            )
        endpoints.append(endpoint)
    return given, endpoints


def _server(server, here):
    _expect(server, dict, here)
    ip = server.get("ip")
    if not isinstance(ip, str):
        raise ServiceFileError(
            f"an IPv4 or IPv6 address is needed, not {_shown(ip)}",
            f"{here}.ip",
        )
    host = _address(ip)
    if host is None:
        raise ServiceFileError(
            f"{ip!r} is not an IPv4 or IPv6 address "
            f"(host names are not resolved)",
            f"{here}.ip",
        )
    port = server.get("port")
    if isinstance(port, bool) or not isinstance(port, int):
        raise ServiceFileError(
            f"a port number is needed, not {_shown(port)}", f"{here}.port"
        )
    if not 1 <= port <= 65535:
        raise ServiceFileError(
            f"port {port} is not in 1..65535", f"{here}.port"
        )
    site = server.get("site")
    if not isinstance(site, str) or not site:
        raise ServiceFileError(
            f"a non-empty string site is needed, not {_shown(site)}",
            f"{here}.site",
        )
    _name_ok(site, SITE_MAX, f"{here}.site", "a site name")
    return host, port, site


@functools.lru_cache(maxsize=4096)
def _address(text):
    """The canonical text of an IPv4 or IPv6 address, or None.  (A
    fleet's endpoints come back change after change: remembered.)"""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(family, socket.inet_pton(family, bare))
        except (OSError, ValueError):
            continue
    return None


_SPACE_OR_CONTROL = re.compile(rb"[\x00-\x20\x7f]")


def _name_ok(name, limit, path, what):
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ServiceFileError(
            f"{what} is not valid Unicode: {name!r}", path
        ) from None
    if len(raw) > limit:
        raise ServiceFileError(
            f"{what} is at most {limit} bytes, not {len(raw)}", path
        )
    if _SPACE_OR_CONTROL.search(raw):
        raise ServiceFileError(
            f"{what} may not hold spaces or control characters: {name!r}", path
        )


def _hostport(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_KINDS = {dict: "an object", list: "an array"}


def _expect(value, kind, path, message=None):
    if not isinstance(value, kind):
        raise ServiceFileError(
            message or f"must be {_KINDS[kind]}, not {json_type(value)}", path
        )


def _shown(value):
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return repr(value)
    return json_type(value)


# -- the key in the MOSN config ----------------------------------------------


def service_file_option(options, where="pyworker.service_file"):
    """The ``service_file`` of a ``pyworker`` block, absolute (relative
    paths are relative to the working directory: the nginx prefix for the
    supervisor nginx starts), or None.  Raises ConfigError."""
    value = options.get("service_file")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"must be a non-empty string (a path), not {json_type(value)}",
            where,
        )
    if "\0" in value:
        raise ConfigError("a path may not hold a NUL character", where)
    return os.path.abspath(value)


def service_file_of(config_path):
    """The service file the MOSN config at ``config_path`` names, or None.
    Reads only that key: the supervisor does not import filters.  Raises
    ConfigError."""
    return option_of(config_path, service_file_option)


def option_of(config_path, parse):
    """``parse(options)`` of the ``pyworker`` block of the MOSN config at
    ``config_path`` (None without one), errors located in the file.  Reads
    nothing else: the supervisor does not import filters."""
    config_path = os.fspath(config_path)
    try:
        with open(config_path, "rb") as f:
            raw = jsontext.parse(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, jsontext.NotJSON) as exc:
        raise ConfigError(
            f"cannot read the config: {exc}", file=config_path
        ) from None
    options = raw.get("pyworker") if isinstance(raw, dict) else None
    if options is None:
        return None
    if not isinstance(options, dict):
        raise ConfigError(
            f"must be an object, not {json_type(options)}",
            "pyworker",
            config_path,
        )
    try:
        return parse(options)
    except ConfigError as exc:
        raise exc.located(file=config_path) from None
