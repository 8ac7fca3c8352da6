"""Service discovery: MOE's service file, watched by the supervisor and
written into the region's endpoint table, where the module's balancer
(``mosn_subset`` in an nginx ``upstream`` block) reads it.  Endpoints
change without a reload.

The file is MOE's (``pkg/networkextention``'s file-system discovery)::

    {"apps": [{"app_name": "test",
               "server_list": [{"ip": "127.0.0.1", "port": 3450,
                                "site": "s1"}, ...]}]}

and the MOSN config names it::

    "pyworker": {"service_file": "conf/service.json"}

(relative to the nginx prefix, like every path of the MOSN config).

The supervisor looks at the file's size, modification time and inode
every POLL_INTERVAL seconds (a stat, no read, while it does not change).
A file that changed is read and checked whole: if it is good, every app
whose endpoints differ is rewritten (one seqlocked write per app) and
apps gone from the file are emptied; if it is not, the table keeps the
last good endpoints and the supervisor logs why, in one line naming the
file, the key and the reason.
"""

import json
import logging
import os
import socket
import time

from shm_ring.codec import RingError

from pyworker.api import ConfigError, json_type

__all__ = ["ServiceFileError", "load", "loads", "service_file_option",
           "service_file_of", "Watcher", "POLL_INTERVAL", "MAX_APPS",
           "MAX_ENDPOINTS", "MAX_SITES"]

POLL_INTERVAL = 0.5     # seconds between looks at the file
# the endpoint table's bounds (shm_ring.h: MOSN_EP_*)
MAX_APPS = 16
MAX_ENDPOINTS = 256     # per app
MAX_SITES = 32          # distinct sites per app
APP_NAME_MAX = 63       # bytes of UTF-8
SITE_MAX = 31

log = logging.getLogger("pyworker.discovery")


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
        raise ServiceFileError(f"cannot read the service file: "
                               f"{exc.strerror or exc}", file=file) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ServiceFileError(f"not UTF-8 (bad byte at offset {exc.start})",
                               file=file) from None
    return loads(text, file)


def loads(text, source="<string>"):
    """Like ``load``, from the JSON text; ``source`` names it in errors."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServiceFileError(f"invalid JSON: {exc.msg}",
                               f"line {exc.lineno} column {exc.colno}",
                               source) from None
    try:
        return parse(raw)
    except ServiceFileError as exc:
        raise ServiceFileError(exc.reason, exc.path, source) from None


def parse(raw):
    """Checks a parsed service file; returns what ``load`` returns."""
    _expect(raw, dict, "", "the service file must be a JSON object")
    apps = raw.get("apps")
    if apps is None:
        raise ServiceFileError('missing: the endpoints are listed under '
                               '"apps": [{"app_name", "server_list"}]',
                               "apps")
    _expect(apps, list, "apps")
    if len(apps) > MAX_APPS:
        raise ServiceFileError(f"{len(apps)} apps; the endpoint table holds "
                               f"{MAX_APPS}", "apps")
    out = {}
    first_seen = {}
    for i, app in enumerate(apps):
        here = f"apps[{i}]"
        _expect(app, dict, here)
        name = app.get("app_name")
        if not isinstance(name, str) or not name:
            raise ServiceFileError(f"an app needs a non-empty string "
                                   f"app_name, not {_shown(name)}",
                                   f"{here}.app_name")
        _name_ok(name, APP_NAME_MAX, f"{here}.app_name", "an app name")
        if name in out:
            raise ServiceFileError(f"duplicate app_name {name!r} (first at "
                                   f"{first_seen[name]})", f"{here}.app_name")
        servers = app.get("server_list")
        if servers is None:
            servers = []
        _expect(servers, list, f"{here}.server_list")
        if len(servers) > MAX_ENDPOINTS:
            raise ServiceFileError(f"{len(servers)} servers; at most "
                                   f"{MAX_ENDPOINTS} per app fit",
                                   f"{here}.server_list")
        endpoints = []
        seen = {}
        sites = set()
        for j, server in enumerate(servers):
            where = f"{here}.server_list[{j}]"
            endpoint = _server(server, where)
            key = endpoint[:2]
            if key in seen:
                raise ServiceFileError(
                    f"duplicate endpoint {_hostport(*key)} (first at "
                    f"{seen[key]})", where)
            seen[key] = where
            sites.add(endpoint[2])
            if len(sites) > MAX_SITES:
                raise ServiceFileError(f"more than {MAX_SITES} sites in one "
                                       f"app", f"{where}.site")
            endpoints.append(endpoint)
        out[name] = endpoints
        first_seen[name] = here
    return out


def _server(server, here):
    _expect(server, dict, here)
    ip = server.get("ip")
    if not isinstance(ip, str):
        raise ServiceFileError(f"an IPv4 or IPv6 address is needed, not "
                               f"{_shown(ip)}", f"{here}.ip")
    host = _address(ip)
    if host is None:
        raise ServiceFileError(f"{ip!r} is not an IPv4 or IPv6 address "
                               f"(host names are not resolved)", f"{here}.ip")
    port = server.get("port")
    if isinstance(port, bool) or not isinstance(port, int):
        raise ServiceFileError(f"a port number is needed, not "
                               f"{_shown(port)}", f"{here}.port")
    if not 1 <= port <= 65535:
        raise ServiceFileError(f"port {port} is not in 1..65535",
                               f"{here}.port")
    site = server.get("site")
    if not isinstance(site, str) or not site:
        raise ServiceFileError(f"a non-empty string site is needed, not "
                               f"{_shown(site)}", f"{here}.site")
    _name_ok(site, SITE_MAX, f"{here}.site", "a site name")
    return host, port, site


def _address(text):
    """The canonical text of an IPv4 or IPv6 address, or None."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") \
        else text
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(family, socket.inet_pton(family, bare))
        except (OSError, ValueError):
            continue
    return None


def _name_ok(name, limit, path, what):
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ServiceFileError(f"{what} is not valid Unicode: {name!r}",
                               path) from None
    if len(raw) > limit:
        raise ServiceFileError(f"{what} is at most {limit} bytes, not "
                               f"{len(raw)}", path)
    if any(c < 0x21 or c == 0x7f for c in raw):
        raise ServiceFileError(f"{what} may not hold spaces or control "
                               f"characters: {name!r}", path)


def _hostport(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_KINDS = {dict: "an object", list: "an array"}


def _expect(value, kind, path, message=None):
    if not isinstance(value, kind):
        raise ServiceFileError(message or f"must be {_KINDS[kind]}, not "
                               f"{json_type(value)}", path)


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
        raise ConfigError(f"must be a non-empty string (a path), not "
                          f"{json_type(value)}", where)
    if "\0" in value:
        raise ConfigError("a path may not hold a NUL character", where)
    return os.path.abspath(value)


def service_file_of(config_path):
    """The service file the MOSN config at ``config_path`` names, or None.
    Reads only that key: the supervisor does not import filters.  Raises
    ConfigError."""
    config_path = os.fspath(config_path)
    try:
        with open(config_path, "rb") as f:
            raw = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the config: {exc}",
                          file=config_path) from None
    options = raw.get("pyworker") if isinstance(raw, dict) else None
    if options is None:
        return None
    if not isinstance(options, dict):
        raise ConfigError(f"must be an object, not {json_type(options)}",
                          "pyworker", config_path)
    try:
        return service_file_option(options)
    except ConfigError as exc:
        raise exc.located(file=config_path) from None


# -- the watcher --------------------------------------------------------------

class Watcher:
    """Keeps the region's endpoint table in step with one service file.
    ``poll()`` is cheap: call it as often as you like."""

    def __init__(self, path, region, interval=POLL_INTERVAL, clock=None):
        self.path = path
        self.region = region
        self.interval = interval
        self.clock = clock or time.monotonic
        self.signature = False      # never looked
        self.next_look = 0.0
        self.good = None            # the last good endpoints, as applied
        self.error = None           # why the file is not used, if it is not
        self.applied = 0            # good versions applied

    def _stat(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return ("error", str(exc))
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def poll(self, force=False):
        """Looks at the file if it is time to; applies a change.  Returns
        True if the table was written."""
        now = self.clock()
        if not force and now < self.next_look:
            return False
        self.next_look = now + self.interval
        signature = self._stat()
        if signature == self.signature and not force:
            return False
        self.signature = signature
        try:
            apps = load(self.path)
        except ServiceFileError as exc:
            self._refuse(str(exc))
            return False
        try:
            changed = self.apply(apps)
        except Exception as exc:        # the table refused it: say why
            self._refuse(f"{self.path}: {exc}")
            return False
        if self.error is not None:
            log.warning("service file %s is good again", self.path)
        self.error = None
        self.good = apps
        self.applied += 1
        return changed

    def _refuse(self, why):
        if why != self.error:
            kept = ("the last good endpoints" if self.good is not None
                    else "no endpoints (none was good yet)")
            log.error("service discovery: %s; keeping %s", why, kept)
        self.error = why

    def apply(self, apps):
        """Writes the apps whose endpoints differ from the table's, and
        empties apps of the table that the file no longer lists."""
        region = self.region
        changed = False
        for app, endpoints in apps.items():
            if _current(region, app) != _table_order(endpoints):
                gen = region.set_endpoints(app, endpoints)
                log.info("service discovery: app %s: %d endpoint(s), "
                         "generation %d", app, len(endpoints), gen)
                changed = True
        for app in region.endpoint_apps():
            if app not in apps and region.endpoints(app):
                region.set_endpoints(app, [])
                log.info("service discovery: app %s is gone from %s: no "
                         "endpoint", app, self.path)
                changed = True
        return changed


def _current(region, app):
    """The app's endpoints in the table; None if the entry cannot be read
    (a writer died in the middle of a write): it is rewritten then."""
    try:
        return region.endpoints(app)
    except RingError:
        return None


def _table_order(endpoints):
    """Endpoints as the table returns them: grouped by site, sites in the
    order they first appear, file order within a site."""
    order = []
    for _, _, site in endpoints:
        if site not in order:
            order.append(site)
    return [e for site in order for e in endpoints if e[2] == site]
