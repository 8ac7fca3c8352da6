"""A pipelined Redis connection for filters that send a command or two per
request, from many requests in flight at once.

Commands sent during one turn of the event loop leave in one write, and
their replies, which Redis sends in order, are read with hiredis's parser
(the C parser redis-py uses where installed).  Many requests in flight
thus share each round trip instead of queueing for pooled connections: a
pool has to hand a connection to every command in turn, and redis-py's
asyncio pool and client cost about half a millisecond of CPU per command
(bench/results/async.md), more than the rest of a request.

One connection per client, opened on first use and again after it broke
or after it reached a replica (a READONLY or MASTERDOWN reply, on a
connection open for RETIRE_AFTER: after a failover the name may now point
at the new primary).
A command with no reply within ``timeout`` fails with TimeoutError, and
so do all those behind it on the connection (their replies would come
after the late one), which is closed.  A caller cancelled while it waits
leaves its place in the queue, so the replies still match.

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS)
and ``unix://[[user]:password@]/path[?db=N]``.
"""

import asyncio
import collections
import re
import ssl as ssl_mod
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

__all__ = ["RedisClient", "RedisError", "parse_url"]


class RedisError(Exception):
    """Redis answered with an error (``str()`` is its message)."""


# error replies of a replica (also as a script's error, which Redis
# before 7 wraps in "ERR Error running script ... -READONLY ..."): this
# connection does not reach the primary
_REPLICA_ERROR = re.compile(r"(?:^|-)(?:READONLY|MASTERDOWN) ")
# a connection that reaches a replica is closed no sooner than this after
# it opened: while the name still points at the replica, one connection a
# second, not one a request
RETIRE_AFTER = 1.0


def parse_url(url):
    """{"host", "port", "path", "db", "username", "password", "tls"} of a
    redis://, rediss:// or unix:// URL; ValueError if it is none."""
    parts = urlsplit(url)
    out = {
        "host": None,
        "port": None,
        "path": None,
        "db": 0,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "tls": parts.scheme == "rediss",
    }
    query = parse_qs(parts.query)
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError("%r names no host" % url)
        out["host"] = parts.hostname
        out["port"] = parts.port or 6379
        db = parts.path.strip("/")
    elif parts.scheme == "unix":
        if not parts.path:
            raise ValueError("%r names no socket path" % url)
        out["path"] = parts.path
        db = ""
    else:
        raise ValueError(
            "%r is not a redis://, rediss:// or unix:// URL" % url
        )
    if "db" in query:
        db = query["db"][0]
    if db:
        if not db.isdigit():
            raise ValueError("%r: the database must be a number" % url)
        out["db"] = int(db)
    return out


def pack(args):
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is not bytes:
            arg = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    """One connection: commands written together, replies matched in
    order."""

    def __init__(self, client):
        self.client = client
        self.loop = client.loop
        self.transport = None
        self.reader = hiredis.Reader()
        self.waiting = collections.deque()  # (future, deadline)
        self.out = []
        self.closed = False
        self.retired = False  # a replica answered: no new command
        self.opened = self.loop.time()
        self.error = None

    def connection_made(self, transport):
        self.transport = transport

    def send(self, command, deadline):
        if not self.out:
            # every command of this turn of the loop in one write
            self.loop.call_soon(self._write)
        self.out.append(command)
        future = self.loop.create_future()
        self.waiting.append((future, deadline))
        if len(self.waiting) == 1:
            self.client._watch(self)
        return future

    def _write(self):
        out, self.out = self.out, []
        if not self.closed:
            self.transport.write(b"".join(out))

    def data_received(self, data):
        reader = self.reader
        waiting = self.waiting
        try:
            reader.feed(data)
            while True:
                reply = reader.gets()
                if reply is False:
                    break
                future = waiting.popleft()[0]
                if isinstance(reply, hiredis.ReplyError):
                    message = str(reply)
                    reply = RedisError(message)
                    if (
                        _REPLICA_ERROR.search(message) is not None
                        and self.loop.time() - self.opened >= RETIRE_AFTER
                    ):
                        self.retired = True
                if future.done():
                    continue  # its caller was cancelled
                if isinstance(reply, RedisError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.fail(ConnectionError("not a Redis reply: %s" % exc))
            return
        if self.retired and not waiting:
            # its last reply read: closed, the next command connects again
            self.fail(ConnectionError("Redis answered as a replica"))

    def connection_lost(self, exc):
        self.closed = True
        self._fail_all(
            ConnectionError(
                "the connection to Redis closed%s"
                % (": %s" % exc if exc else "")
            )
        )

    def fail(self, exc):
        """Fails every command waiting and closes the connection."""
        self.closed = True
        self._fail_all(exc)
        if self.transport is not None:
            self.transport.close()

    def _fail_all(self, exc):
        waiting, self.waiting = self.waiting, collections.deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(exc)


class RedisClient:
    """Commands to one Redis, pipelined over one connection."""

    def __init__(self, url, timeout):
        self.url = url
        self.where = parse_url(url)
        self.timeout = timeout
        # a command is late by at most this much before it fails
        self.tick = min(0.01, max(0.001, timeout / 10))
        self.loop = None
        self.conn = None
        self.connecting = None
        self.watched = set()
        self.timer = None
        self.closing = False

    async def call(self, *args):
        """The reply to one command (RedisError if it is an error)."""
        conn = self.conn
        if conn is None or conn.closed or conn.retired:
            conn = await self._connected()
        return await conn.send(pack(args), self.loop.time() + self.timeout)

    async def _connected(self):
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        if self.closing:
            raise ConnectionError("the client is closed")
        if self.connecting is None:
            self.connecting = self.loop.create_task(self._connect())
        try:
            # shielded: one caller's cancellation must not fail the others
            return await asyncio.shield(self.connecting)
        finally:
            if self.connecting is not None and self.connecting.done():
                self.connecting = None

    async def _connect(self):
        where = self.where
        async with asyncio.timeout(self.timeout):
            if where["path"]:
                _, conn = await self.loop.create_unix_connection(
                    lambda: _Connection(self), where["path"]
                )
            else:
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self),
                    where["host"],
                    where["port"],
                    ssl=ssl_mod.create_default_context()
                    if where["tls"]
                    else None,
                )
            try:
                hello = []
                if where["password"] is not None:
                    hello.append(
                        ("AUTH", where["password"])
                        if where["username"] is None
                        else ("AUTH", where["username"], where["password"])
                    )
                if where["db"]:
                    hello.append(("SELECT", where["db"]))
                deadline = self.loop.time() + self.timeout
                # an error reply (a wrong password) raises RedisError
                await asyncio.gather(
                    *(conn.send(pack(c), deadline) for c in hello)
                )
            except BaseException:
                conn.fail(ConnectionError("closed"))
                raise
        if self.closing:
            # closed while this connected: no one would close it
            conn.fail(ConnectionError("the client is closed"))
            raise ConnectionError("the client is closed")
        self.conn = conn
        return conn

    # -- timeouts: the oldest command of a connection is the first late --

    def _watch(self, conn):
        self.watched.add(conn)
        if self.timer is None:
            self.timer = self.loop.call_later(self.tick, self._look)

    def _look(self):
        self.timer = None
        now = self.loop.time()
        for conn in list(self.watched):
            if not conn.waiting:
                self.watched.discard(conn)
            elif conn.waiting[0][1] <= now:
                self.watched.discard(conn)
                conn.fail(
                    TimeoutError(
                        "no reply from Redis within %gs" % self.timeout
                    )
                )
        if self.watched:
            self.timer = self.loop.call_later(self.tick, self._look)

    async def close(self):
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn, self.conn = self.conn, None
        # (and those retired with replies still to come)
        for conn in {conn, *self.watched} - {None}:
            conn.fail(ConnectionError("the client is closed"))
        self.watched.clear()
