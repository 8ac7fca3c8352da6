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

It speaks etcd's gRPC API over one HTTP/2 connection of its own
(grpcchannel.py): a unary Range, a Watch stream per key range, and
Authenticate when a user is named.  (aetcd on grpcio, grpcio's own
stubs and grpclib each cost 0.55-0.75 ms of CPU per watched change,
the channel 0.25-0.3 ms, mostly the wake-up itself.)  The events of one
read are applied together, one table write per app; after a read the
watch is left to gather for ``coalesce`` seconds, so a busy prefix costs
a wake-up per window rather than per change, and a change after a quiet
spell is applied at once.  The connection is plain, so TLS to a remote
cluster goes through ``etcd grpc-proxy`` on the gateway's machine.
"""

import asyncio
import logging

from pyworker import jsontext
from pyworker.api import ConfigError
from pyworker.discovery.etcdwire import (
    AUTHENTICATE,
    DELETE,
    RANGE,
    WATCH,
    AuthenticateRequest,
    AuthenticateResponse,
    RangeRequest,
    RangeResponse,
    WatchCreateRequest,
    WatchRequest,
    WatchResponse,
)
from pyworker.discovery.grpcchannel import Channel
from pyworker.discovery.servicefile import (
    APP_NAME_MAX,
    ServiceFileError,
    _name_ok,
    parse_app,
)

log = logging.getLogger("pyworker.discovery")

BACKOFF_MIN = 0.05  # seconds before trying the next endpoint
BACKOFF_MAX = 2.0


class Compacted(Exception):
    pass


class AppsRange:
    """The apps under the prefix, as far as they were applied."""

    def __init__(self, prefix, table, stats):
        self.key = prefix.encode()
        self.range_end = range_end(self.key)
        self.name = prefix
        self.prefix = prefix
        self.table = table
        self.stats = stats
        self.revision = None  # the last revision applied; None: resync
        self.good = {}  # app -> endpoints last applied
        self.refused = {}  # key -> why its value is not used

    def app_of(self, key):
        """The app a key names, or raises ServiceFileError."""
        name = key.decode("utf-8", "replace")[len(self.prefix) :]
        if not name:
            raise ServiceFileError(
                "the key names no app (it is the prefix itself)"
            )
        _name_ok(name, APP_NAME_MAX, "", "the app name the key ends with")
        return name

    def parse(self, key, value):
        """(app, endpoints) of one key's value; raises ServiceFileError."""
        app = self.app_of(key)
        try:
            doc = jsontext.parse(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise ServiceFileError("not UTF-8") from None
        except jsontext.NotJSON as exc:
            raise ServiceFileError(
                f"invalid JSON: {exc.msg}", exc.where
            ) from None
        return parse_app(doc, "", name=app)

    def refuse(self, key, revision, exc):
        name = key.decode("utf-8", "replace")
        why = str(exc)
        if self.refused.get(name) != why:
            log.error(
                "service discovery: etcd key %s (revision %d): %s; "
                "keeping the last good endpoints",
                name,
                revision,
                why,
            )
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
            log.error(
                "service discovery: the endpoint table refused the "
                "apps of etcd prefix %s: %s",
                self.prefix,
                exc,
            )
            self.stats.error("table")
        self.good = apps
        self.revision = revision
        self.stats.applied(revision, revision)

    def events(self, events):
        """The events of one read (a burst of changes), in order.  Each
        key's newest value is checked and written, one table write per
        app; if it is refused, the one before it in the burst is tried,
        and so on: the app ends up with the last good value, as if each
        had been applied in turn.  Values a burst superseded are neither
        checked nor written."""
        latest = {}  # key -> its events in the burst
        applied = 0
        for event in events:
            kv = event.kv
            revision = kv.mod_revision
            if self.revision is not None and revision < self.revision:
                # etcd never sends these after a resume at the next revision
                log.error(
                    "service discovery: etcd replayed revision %d (at "
                    "%d); ignored",
                    revision,
                    self.revision,
                )
                self.stats.error("replay")
                continue
            latest.setdefault(kv.key, []).append(event)
            self.revision = revision
            applied += 1
        if applied:
            self.stats.applied(self.revision, self.revision, applied)
        for key, burst in latest.items():
            name = key.decode("utf-8", "replace")
            for event in reversed(burst):
                kv = event.kv
                if event.type == DELETE:
                    self.refused.pop(name, None)
                    try:
                        app = self.app_of(key)
                    except ServiceFileError:
                        break
                    self.good.pop(app, None)
                    self._write(app, None)
                    break
                try:
                    app, endpoints = self.parse(key, kv.value)
                except ServiceFileError as exc:
                    self.refuse(key, kv.mod_revision, exc)
                    continue
                self.refused.pop(name, None)
                self._write(app, endpoints)
                break

    def _write(self, app, endpoints):
        try:
            if endpoints is None:
                self.table.empty(app)
            else:
                self.table.write(app, endpoints)
                self.good[app] = endpoints
        except Exception as exc:
            log.error(
                "service discovery: the endpoint table refused app "
                "%s from etcd: %s",
                app,
                exc,
            )
            self.stats.error("table")


class ConfigKey:
    """The key holding the listeners' MOSN JSON: each new value is handed
    to ``deliver(value, revision)``; the supervisor checks it and rolls
    the workers onto it."""

    def __init__(self, key, deliver, stats):
        self.key = key.encode()
        self.range_end = self.key + b"\0"  # the key alone
        self.name = key
        self.deliver = deliver
        self.stats = stats
        self.revision = None
        self.sent = None  # mod revision of the value handed over
        self.missing_said = False

    def resync(self, kvs, revision):
        kvs = list(kvs)
        if kvs:
            self._value(kvs[0].value, kvs[0].mod_revision)
        elif not self.missing_said:
            log.warning(
                "filter config: etcd key %s holds nothing; the "
                "listeners stay as they are",
                self.name,
            )
            self.missing_said = True
        self.revision = revision

    def events(self, events):
        """The events of one read: only the last value is handed over."""
        last = None
        for event in events:
            kv = event.kv
            if event.type != DELETE:
                last = kv
            else:
                log.warning(
                    "filter config: etcd key %s was deleted "
                    "(revision %d); the listeners stay as they are",
                    self.name,
                    kv.mod_revision,
                )
            self.revision = kv.mod_revision
        if last is not None:
            self._value(last.value, last.mod_revision)

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
            self.watches.append(
                ConfigKey(spec.config_key, deliver_config, stats)
            )
        self.endpoint = 0  # which of spec.endpoints is tried next
        self.said = None  # the last error logged

    async def run(self):
        backoff = BACKOFF_MIN
        while True:
            host, port = self.spec.endpoints[self.endpoint]
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            channel = None
            up = False
            try:
                channel = await Channel.open(
                    host, port, self.spec.timeout, self.spec.coalesce
                )
                up = await self._session(channel, where)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind = "stream" if self.stats.connected else "connect"
                why = f"{kind}: {where}: {_reason(exc)}"
                if why != self.said:
                    log.error(
                        "service discovery: etcd %s; keeping the "
                        "endpoints the table has",
                        why,
                    )
                    self.said = why
                self.stats.error(kind)
            finally:
                self.stats.set_connected(False)
                self.stats.flush(force=True)
                if channel is not None:
                    channel.close()
            self.endpoint = (self.endpoint + 1) % len(self.spec.endpoints)
            backoff = BACKOFF_MIN if up else min(BACKOFF_MAX, backoff * 2)
            await asyncio.sleep(backoff)

    async def _session(self, channel, where):
        metadata = []
        if self.spec.username is not None:
            answer = await channel.unary(
                AUTHENTICATE,
                AuthenticateRequest(
                    name=self.spec.username, password=self.spec.password
                ),
                AuthenticateResponse,
                timeout=self.spec.timeout,
            )
            metadata.append(("token", answer.token))
        tasks = [
            asyncio.create_task(self._follow(channel, w, where, metadata))
            for w in self.watches
        ]
        try:
            done, _ = await asyncio.wait(
                tasks, return_when=asyncio.FIRST_EXCEPTION
            )
            for task in done:
                task.result()  # raises what ended it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return True

    async def _follow(self, channel, w, where, metadata):
        while True:
            if w.revision is None:
                got = await channel.unary(
                    RANGE,
                    RangeRequest(key=w.key, range_end=w.range_end),
                    RangeResponse,
                    metadata,
                    self.spec.timeout,
                )
                w.resync(got.kvs, got.header.revision)
                self.stats.flush(force=True)
            start = w.revision + 1
            call = None

            def answers(messages):
                events = []
                for raw in messages:
                    answer = WatchResponse.FromString(raw)
                    if answer.created:
                        self._following(where, start)
                    if answer.canceled:
                        events.extend(answer.events)
                        call.cancel(
                            Compacted(answer.compact_revision)
                            if answer.compact_revision
                            else ConnectionError(
                                "etcd ended the watch: "
                                + (answer.cancel_reason or "no reason given")
                            )
                        )
                        break
                    events.extend(answer.events)
                if events:
                    w.events(events)
                    self.stats.flush()

            request = WatchRequest(
                create_request=WatchCreateRequest(
                    key=w.key, range_end=w.range_end, start_revision=start
                )
            )
            # a member cut off from its cluster's leader ends the watch
            # (after a few election timeouts), and the next one is tried
            call = channel.start(
                WATCH,
                request.SerializeToString(),
                metadata + [("hasleader", "true")],
                answers,
                half_close=False,
            )
            exc = await call.done
            if isinstance(exc, Compacted):
                log.warning(
                    "service discovery: etcd compacted past "
                    "revision %d (to %d); reading %s whole again",
                    w.revision,
                    exc.args[0],
                    w.name,
                )
                self.stats.error("compacted")
                w.revision = None
                continue
            raise exc or ConnectionError("etcd ended the watch stream")

    def _following(self, where, start):
        if not self.stats.connected:
            # after an error the error log says it is over
            (log.warning if self.said else log.info)(
                "service discovery: following etcd at %s from revision %d",
                where,
                start,
            )
            self.said = None
        self.stats.set_connected(True)
        self.stats.flush(force=True)


def range_end(key):
    """The end of the range of keys that start with ``key``."""
    end = bytearray(key)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"  # every key
    end[-1] += 1
    return bytes(end)


def _reason(exc):
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def check_config_value(text):
    """The ``servers`` of a filter config value from the store: a JSON
    object with ``servers`` and nothing else.  Raises ConfigError."""
    try:
        doc = jsontext.parse(text)
    except jsontext.NotJSON as exc:
        raise ConfigError(f"invalid JSON: {exc.msg}", exc.where) from None
    if not isinstance(doc, dict) or "servers" not in doc:
        raise ConfigError(
            "must be a JSON object with the listeners under "
            '"servers": [{"listeners": [...]}]'
        )
    for key in doc:
        if key != "servers":
            raise ConfigError(
                'only the listeners ("servers") come from '
                "the store; set this in the gateway's own "
                "file",
                key,
            )
    return doc["servers"]
