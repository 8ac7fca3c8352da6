"""Service discovery from etcd v3: one key per app under a prefix, each
holding one app of MOE's service.json::

    /mosn/apps/test -> {"app_name": "test",
                        "server_list": [{"ip": "10.0.0.1", "port": 80,
                                         "site": "s1"}, ...]}

and, optionally, one key holding the listeners' MOSN JSON (the filter
config, ``{"servers": [...]}``).

It reads the prefix whole at the revision etcd answers with, then watches
from the next revision: every change is applied once, in order.  When
the stream breaks (etcd down, a member gone) it tries the next endpoint
and resumes at the revision after the last one it applied, so no change
is missed or applied twice; if etcd compacted past that revision, it
reads the prefix whole again and applies the difference.  Meanwhile the
endpoint table keeps what it has.  A bad value for an app is refused
(logged once, counted) and the app keeps its last good endpoints.

The client is aetcd (etcd's gRPC API on grpcio, asyncio); it speaks
plain gRPC, so TLS to a remote cluster goes through ``etcd grpc-proxy``
on the gateway's machine.
"""

import asyncio
import json
import logging

from pyworker.api import ConfigError
from pyworker.discovery.servicefile import (APP_NAME_MAX, ServiceFileError,
                                            _name_ok, parse_app)

log = logging.getLogger("pyworker.discovery")

BACKOFF_MIN = 0.05      # seconds before trying the next endpoint
BACKOFF_MAX = 2.0
# keepalive pings find a silent, dead connection (etcd's default
# enforcement allows one every 5 s)
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 10000,
                "grpc.keepalive_timeout_ms": 5000,
                "grpc.keepalive_permit_without_calls": 1,
                "grpc.initial_reconnect_backoff_ms": 50,
                "grpc.max_reconnect_backoff_ms": 1000,
                "grpc.max_receive_message_length": 32 << 20}


class Compacted(Exception):
    pass


class AppsRange:
    """The apps under the prefix, as far as they were applied."""

    def __init__(self, prefix, table, stats):
        self.key = prefix.encode()
        self.prefix = prefix
        self.table = table
        self.stats = stats
        self.revision = None        # the last revision applied; None: resync
        self.good = {}              # app -> endpoints last applied
        self.refused = {}           # key -> why its value is not used

    def app_of(self, key):
        """The app a key names, or raises ServiceFileError."""
        name = key.decode("utf-8", "replace")[len(self.prefix):]
        if not name:
            raise ServiceFileError("the key names no app (it is the prefix "
                                   "itself)")
        _name_ok(name, APP_NAME_MAX, "", "the app name the key ends with")
        return name

    def parse(self, key, value):
        """(app, endpoints) of one key's value; raises ServiceFileError."""
        app = self.app_of(key)
        try:
            doc = json.loads(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise ServiceFileError("not UTF-8") from None
        except json.JSONDecodeError as exc:
            raise ServiceFileError(f"invalid JSON: {exc.msg}",
                                   f"line {exc.lineno} column "
                                   f"{exc.colno}") from None
        return parse_app(doc, "", name=app)

    def refuse(self, key, revision, exc):
        name = key.decode("utf-8", "replace")
        why = str(exc)
        if self.refused.get(name) != why:
            log.error("service discovery: etcd key %s (revision %d): %s; "
                      "keeping the last good endpoints", name, revision, why)
            self.stats.error("value")
        self.refused[name] = why

    def resync(self, kvs, revision):
        """The whole prefix, read at ``revision``."""
        apps = {}
        for kv in kvs:
            try:
                app, endpoints = self.parse(kv.key, kv.value)
            except ServiceFileError as exc:
                self.refuse(kv.key, kv.mod_revision, exc)
                try:
                    app = self.app_of(kv.key)
                except ServiceFileError:
                    continue
                if app in self.good:
                    apps[app] = self.good[app]
                continue
            self.refused.pop(kv.key.decode("utf-8", "replace"), None)
            apps[app] = endpoints
        try:
            self.table.sync(apps)
        except Exception as exc:
            log.error("service discovery: the endpoint table refused the "
                      "apps of etcd prefix %s: %s", self.prefix, exc)
            self.stats.error("table")
        self.good = apps
        self.revision = revision
        self.stats.applied(revision, revision)

    def event(self, event):
        kv = event.kv
        revision = kv.mod_revision
        if self.revision is not None and revision < self.revision:
            # etcd never sends these after a resume at the next revision
            log.error("service discovery: etcd replayed revision %d (at "
                      "%d); ignored", revision, self.revision)
            self.stats.error("replay")
            return
        if event.kind == "PUT":
            try:
                app, endpoints = self.parse(kv.key, kv.value)
            except ServiceFileError as exc:
                self.refuse(kv.key, revision, exc)
            else:
                self.refused.pop(kv.key.decode("utf-8", "replace"), None)
                self._write(app, endpoints)
        else:
            self.refused.pop(kv.key.decode("utf-8", "replace"), None)
            try:
                app = self.app_of(kv.key)
            except ServiceFileError:
                pass
            else:
                self.good.pop(app, None)
                self._write(app, None)
        self.revision = revision
        self.stats.applied(revision, revision)

    def _write(self, app, endpoints):
        try:
            if endpoints is None:
                self.table.empty(app)
            else:
                self.table.write(app, endpoints)
                self.good[app] = endpoints
        except Exception as exc:
            log.error("service discovery: the endpoint table refused app "
                      "%s from etcd: %s", app, exc)
            self.stats.error("table")


class ConfigKey:
    """The key holding the listeners' MOSN JSON: each new value is handed
    to ``deliver(value, revision)``; the supervisor checks it and rolls
    the workers onto it."""

    def __init__(self, key, deliver, stats):
        self.key = key.encode()
        self.name = key
        self.deliver = deliver
        self.stats = stats
        self.revision = None
        self.sent = None            # mod revision of the value handed over
        self.missing_said = False

    def resync(self, kvs, revision):
        kvs = list(kvs)
        if kvs:
            self._value(kvs[0].value, kvs[0].mod_revision)
        elif not self.missing_said:
            log.warning("filter config: etcd key %s holds nothing; the "
                        "listeners stay as they are", self.name)
            self.missing_said = True
        self.revision = revision

    def event(self, event):
        kv = event.kv
        if event.kind == "PUT":
            self._value(kv.value, kv.mod_revision)
        else:
            log.warning("filter config: etcd key %s was deleted (revision "
                        "%d); the listeners stay as they are", self.name,
                        kv.mod_revision)
        self.revision = kv.mod_revision

    def _value(self, value, mod_revision):
        if mod_revision == self.sent:
            return
        self.sent = mod_revision
        self.missing_said = False
        self.deliver(value.decode("utf-8", "replace"), mod_revision)


class EtcdFollower:
    """Follows the apps (and the config key) on etcd for ever."""

    def __init__(self, spec, table, stats, deliver_config=None):
        self.spec = spec
        self.stats = stats
        self.watches = [AppsRange(spec.prefix, table, stats)]
        if spec.config_key and deliver_config is not None:
            self.watches.append(ConfigKey(spec.config_key, deliver_config,
                                          stats))
        self.endpoint = 0           # which of spec.endpoints is tried next
        self.said = None            # the last error logged

    async def run(self):
        import aetcd

        backoff = BACKOFF_MIN
        while True:
            host, port = self.spec.endpoints[self.endpoint]
            where = f"{host}:{port}"
            client = aetcd.Client(host, port, self.spec.username,
                                  self.spec.password,
                                  timeout=self.spec.timeout,
                                  options=GRPC_OPTIONS)
            up = False
            try:
                up = await self._session(client, where)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind = "stream" if self.stats.connected else "connect"
                why = f"{kind}: {where}: {_reason(exc)}"
                if why != self.said:
                    log.error("service discovery: etcd %s; keeping the "
                              "endpoints the table has", why)
                    self.said = why
                self.stats.error(kind)
            finally:
                self.stats.set_connected(False)
                self.stats.flush(force=True)
                try:
                    await asyncio.wait_for(client.close(), 1.0)
                except Exception:
                    pass
            self.endpoint = (self.endpoint + 1) % len(self.spec.endpoints)
            backoff = BACKOFF_MIN if up else min(BACKOFF_MAX, backoff * 2)
            await asyncio.sleep(backoff)

    async def _session(self, client, where):
        tasks = [asyncio.create_task(self._follow(client, w, where))
                 for w in self.watches]
        try:
            done, _ = await asyncio.wait(
                tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()       # raises what ended it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return True

    async def _follow(self, client, w, where):
        from aetcd.exceptions import RevisionCompactedError

        prefix = isinstance(w, AppsRange)
        while True:
            if w.revision is None:
                if prefix:
                    got = await client.get_prefix(w.key)
                else:
                    got = await client.get_range(w.key, w.key + b"\0")
                w.resync(got, got.header.revision)
                self.stats.flush(force=True)
            try:
                if prefix:
                    watch = await client.watch_prefix(
                        w.key, start_revision=w.revision + 1)
                else:
                    watch = await client.watch(
                        w.key, start_revision=w.revision + 1)
                if not self.stats.connected:
                    # after an error the error log says it is over
                    (log.warning if self.said else log.info)(
                        "service discovery: following etcd at %s from "
                        "revision %d", where, w.revision + 1)
                    self.said = None
                self.stats.set_connected(True)
                self.stats.flush(force=True)
                async for event in watch:
                    w.event(event)
                    self.stats.flush()
            except RevisionCompactedError as exc:
                log.warning("service discovery: etcd compacted past "
                            "revision %d (%s); reading %s whole again",
                            w.revision, exc, w.key.decode(errors="replace"))
                self.stats.error("compacted")
                w.revision = None
                continue
            raise ConnectionError("the watch stream ended")


def _reason(exc):
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def check_config_value(text):
    """The ``servers`` of a filter config value from the store: a JSON
    object with ``servers`` and nothing else.  Raises ConfigError."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc.msg}",
                          f"line {exc.lineno} column {exc.colno}") from None
    if not isinstance(doc, dict) or "servers" not in doc:
        raise ConfigError('must be a JSON object with the listeners under '
                          '"servers": [{"listeners": [...]}]')
    for key in doc:
        if key != "servers":
            raise ConfigError("only the listeners (\"servers\") come from "
                              "the store; set this in the gateway's own "
                              "file", key)
    return doc["servers"]
