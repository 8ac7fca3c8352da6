"""A small HTTP/1.1 client for filters that call a service per request:
kept-alive connections to one origin, at most ``max_connections``, with
responses parsed by httptools (llhttp, Node.js's parser).

It does one thing, fast: a request per call, no redirects, cookies or
decompression.  aiohttp's ClientSession does much more, and costs about
ten times the CPU per request on the same loop (bench/results/async.md),
which alone would hold a worker far below the rate a gateway needs.

A request's ``timeout`` covers waiting for a connection, connecting,
and the exchange.  It is kept without a timer per request
(pyworker.deadlines: one timer looks every tick, a tenth of the timeout
or 10 ms at most): a request fails with TimeoutError after its timeout,
late by at most that tick.  A request that times out, is cancelled or
fails mid-way closes its connection: a connection goes back to the pool
only after a whole response.  A request on a kept-alive connection that
the server had closed meanwhile is sent again once on a new one (RFC 9112,
9.3.1).

Requests past ``max_connections`` wait in turn: a connection given back
goes to the longest waiting one, not to whoever asks next.  An answer is
framed as RFC 9112 says: interim (1xx) answers are skipped, an answer to
HEAD ends with its head, and one with neither Content-Length nor chunked
coding ends where the server closes.  A request whose method, target or
headers would not make one well-formed request (a CR or LF, a space in
the target) is refused with ValueError before anything is sent.
"""

import asyncio
import collections
import re

import httptools

from pyworker.deadlines import Deadlines

__all__ = ["HttpPool", "HttpError"]


class HttpError(ConnectionError):
    """The connection failed or the answer was not HTTP."""


# a request target is visible ASCII (RFC 9112, 3.2), a method a token
_BAD_TARGET = re.compile(r"[^\x21-\x7e]")
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"))
# where an answer's body ends, by its headers (RFC 9112, 6.3): at the
# server's close (no header says, or a transfer coding that is not chunked
# last), after Content-Length bytes, or after the last chunk
_TO_CLOSE, _LENGTH, _CHUNKED, _CODED = 0, 1, 2, 3


class _Answer:
    __slots__ = ("status", "headers", "body", "size", "limit")

    def __init__(self, limit):
        self.status = 0
        self.headers = []
        self.body = []
        self.size = 0
        self.limit = limit


class _Connection:
    """One connection; one request at a time.  An asyncio protocol (its
    methods, not its base class: compiled, this is an extension type)."""

    def __init__(self, pool):
        self.pool = pool
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter = None
        self.answer = None
        self.got_bytes = False
        self.closed = False
        self.head_only = False  # the request was HEAD: no body follows
        self.framing = _TO_CLOSE  # what the answer's headers said so far
        self.until_eof = False  # its body ends where the server closes

    # asyncio's side
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(HttpError("not an HTTP answer: %s" % exc))
            self.transport.close()

    def eof_received(self):
        return None  # the transport closes, and connection_lost follows

    def pause_writing(self):
        pass  # a request is a few hundred bytes: nothing to hold back

    def resume_writing(self):
        pass

    def connection_lost(self, exc):
        self.closed = True
        if self.until_eof and exc is None:
            self._done(False)  # the close ends the body
            return
        self._fail(
            HttpError(
                "the connection closed%s" % (": %s" % exc if exc else "")
            )
        )

    # httptools' side
    def on_header(self, name, value):
        if len(name) == 14 and name.lower() == b"content-length":
            if self.framing == _TO_CLOSE:
                self.framing = _LENGTH
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            last = value.rsplit(b",", 1)[-1].strip().lower()
            self.framing = _CHUNKED if last == b"chunked" else _CODED
        self.answer.headers.append(
            (name.decode("latin-1"), value.decode("latin-1"))
        )

    def on_headers_complete(self):
        status = self.answer.status = self.parser.get_status_code()
        if status < 200:
            return  # interim: on_message_complete skips it
        if self.head_only:
            # the parser, which does not know the method, would wait for
            # a body the answer to HEAD has not; the connection is not
            # used again
            self._done(False)
        elif (
            (self.framing == _TO_CLOSE or self.framing == _CODED)
            and status != 204
            and status != 304
        ):
            self.until_eof = True

    def on_body(self, body):
        answer = self.answer
        if answer.size < answer.limit:
            answer.body.append(body[: answer.limit - answer.size])
        answer.size += len(body)

    def on_message_complete(self):
        answer = self.answer
        if answer.status < 200:
            if answer.status == 101:
                self._fail(HttpError("the server switched protocols"))
                self.transport.close()
                return
            # 100 Continue and the like: the answer comes next
            answer.status = 0
            answer.headers = []
            self.framing = _TO_CLOSE
            return
        self.until_eof = False
        self._done(self.parser.should_keep_alive())

    def _done(self, keep):
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(keep)

    def _fail(self, exc):
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self):
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpPool:
    """Connections to one origin (``host``, ``port``, TLS with ``ssl``)."""

    def __init__(
        self, host, port, *, ssl=None, max_connections=100, host_header=None
    ):
        self.host = host
        self.port = port
        self.ssl = ssl
        self.max_connections = max_connections
        self.host_header = host_header or (
            host if port in (80, 443) else "%s:%d" % (host, port)
        )
        self.loop = None
        self.idle = collections.deque()  # most recently used on the right
        self.open = 0
        self.waiters = collections.deque()
        self.closing = False
        self.deadlines = None

    def _expire(self, waiter):
        """A request's timeout: it fails, and a connection it was
        exchanging on is closed (its answer, if one comes, is no one's)."""
        if waiter.done():
            return
        waiter.set_exception(
            TimeoutError(
                "no answer from %s:%d in time" % (self.host, self.port)
            )
        )

    async def _connect(self, deadline):
        connecting = self.loop.create_connection(
            lambda: _Connection(self), self.host, self.port, ssl=self.ssl
        )
        if deadline is None:
            _, conn = await connecting
        else:
            # rare (the pool keeps connections): a timer of its own
            async with asyncio.timeout_at(deadline):
                _, conn = await connecting
        return conn

    def _idle_connection(self):
        """The connection used last that is still open, or None."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
            self.open -= 1
        return None

    async def _acquire(self, deadline):
        """(a connection, whether it was kept alive), waiting its turn."""
        conn = self._idle_connection()
        if conn is not None:
            return conn, True
        if self.open < self.max_connections and not self._queued():
            self.open += 1
            return await self._connect_counted(deadline), False
        # a waiter is given a connection, or None: room to open one (and
        # counted in ``open`` already)
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        key = (
            None if deadline is None else self.deadlines.add(waiter, deadline)
        )
        try:
            conn = await waiter
        except BaseException:
            if (
                waiter.done()
                and not waiter.cancelled()
                and waiter.exception() is None
            ):
                # given its turn, and cancelled before it took it: the
                # next waiter takes it
                self._pass_on(waiter.result())
            raise
        finally:
            if key is not None:
                self.deadlines.discard(waiter, key)
            if waiter in self.waiters:
                self.waiters.remove(waiter)
        if conn is None or conn.closed:
            # room to open one, or one the server closed since it was
            # handed over (counted: its room is this request's)
            return await self._connect_counted(deadline), False
        return conn, True

    async def _connect_counted(self, deadline):
        """A new connection, already counted in ``open``."""
        try:
            return await self._connect(deadline)
        except BaseException:
            self._pass_on(None)
            raise

    def _queued(self):
        """Whether a request waits its turn (one that gave up is not)."""
        waiters = self.waiters
        while waiters and waiters[0].done():
            waiters.popleft()
        return len(waiters) > 0

    def _next_waiter(self):
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    def _pass_on(self, conn):
        """Gives back what a request took and did not use: a connection,
        or (None) the room to open one."""
        if conn is not None:
            self._release(conn, True)
            return
        waiter = self._next_waiter()
        if waiter is None:
            self.open -= 1
        else:
            waiter.set_result(None)

    def _release(self, conn, keep):
        if keep and not conn.closed and not self.closing:
            waiter = self._next_waiter()
            if waiter is None:
                self.idle.append(conn)
            else:
                waiter.set_result(conn)
        else:
            conn.close()
            self._pass_on(None)

    async def request(
        self, method, target, headers=(), *, limit=65536, timeout=None
    ):
        """(status, [(name, value)], body) of one request; the body is cut
        at ``limit`` bytes.  ``headers`` are (name, value) pairs; Host is
        the origin's unless given.  TimeoutError past ``timeout`` seconds,
        HttpError (a ConnectionError) if the connection fails, ValueError
        for a request that could not be sent as it is."""
        if type(limit) is not int or limit < 0:
            raise TypeError(f"limit is a number of bytes, not {limit!r}")
        if method not in _METHODS and _METHOD.match(method) is None:
            raise ValueError(f"not an HTTP method: {method!r}")
        if _BAD_TARGET.search(target) is not None:
            raise ValueError(
                f"a request target is visible ASCII, not {target!r}"
            )
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        deadline = None
        if timeout is not None:
            if self.deadlines is None:
                self.deadlines = Deadlines(
                    self.loop,
                    self._expire,
                    tick=max(0.001, min(0.01, timeout / 10)),
                )
            deadline = self.loop.time() + timeout
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        has_host = False
        for name, value in headers:
            if len(name) == 4 and name.lower() == "host":
                has_host = True
            lines.append(f"{name}: {value}\r\n")
        if not has_host:
            lines.append(f"Host: {self.host_header}\r\n")
        lines.append("\r\n")
        head = "".join(lines)
        if (
            head.count("\n") != len(lines)
            or head.count("\r") != len(lines)
            or "\0" in head
        ):
            # a header that would end its line early, or another request
            raise ValueError("a header name or value holds CR, LF or NUL")
        head = head.encode("latin-1")
        head_only = method == "HEAD"
        for attempt in (0, 1):
            # the usual case, a connection kept alive, with no coroutine
            # of its own
            conn = self._idle_connection()
            reused = conn is not None
            if not reused:
                conn, reused = await self._acquire(deadline)
            keep = False
            key = None
            try:
                # from here on, whatever fails gives the connection back
                answer = conn.answer = _Answer(limit)
                conn.got_bytes = False
                conn.head_only = head_only
                conn.framing = _TO_CLOSE
                conn.until_eof = False
                waiter = conn.waiter = self.loop.create_future()
                conn.transport.write(head)
                if deadline is not None:
                    key = self.deadlines.add(waiter, deadline)
                keep = await waiter
            except HttpError:
                # a kept-alive connection the server had closed: once more
                # on a new one, if nothing of an answer came
                if attempt == 0 and reused and not conn.got_bytes:
                    continue
                raise
            finally:
                if key is not None:
                    self.deadlines.discard(waiter, key)
                self._release(conn, keep)
            return answer.status, answer.headers, b"".join(answer.body)

    async def close(self):
        self.closing = True
        if self.deadlines is not None:
            self.deadlines.close()
        while self.idle:
            self.idle.pop().close()
            self.open -= 1
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(HttpError("the pool was closed"))
