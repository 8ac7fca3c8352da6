"""gRPC over one plain HTTP/2 connection, as much of it as the etcd
source needs: unary calls, and streams that send one request and read
answers until the server ends them.

Why not grpcio: its Python side costs about 0.6 ms of CPU for each
streamed message (a completion queue, a thread hand-off and an asyncio
callback per message), and a gateway's discovery process reads one per
endpoint change.  Here a read from the socket is cut into frames with
``int.from_bytes``, header blocks go through ``hpack`` (the HPACK codec
of the Python HTTP/2 stack) and messages through protobuf's C decoder;
every message a read brought is handed over in one call, so whoever
reads a stream can apply a burst of them at once.

What it does of HTTP/2 (RFC 9113): the connection preface and
settings, HPACK, flow control both ways (its own windows opened wide and
topped up, the server's respected), PING answered, keepalive pings sent
on a silent connection, RST_STREAM and GOAWAY; no server push, no TLS
(the README says how to reach etcd over TLS).  Of gRPC: length-prefixed
uncompressed messages, the status in trailers (or a trailers-only
answer), metadata as headers, ``grpc-timeout`` on unary calls.
"""

import asyncio
import collections
import urllib.parse

import hpack

__all__ = ["Channel", "Call", "ChannelError", "GrpcError"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
(
    DATA,
    HEADERS,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    PUSH_PROMISE,
    PING,
    GOAWAY,
    WINDOW_UPDATE,
    CONTINUATION,
) = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
SETTINGS_HEADER_TABLE_SIZE = 1
SETTINGS_ENABLE_PUSH = 2
SETTINGS_INITIAL_WINDOW_SIZE = 4
SETTINGS_MAX_FRAME_SIZE = 5
CANCEL = 0x8  # RST_STREAM code
WINDOW_MAX = (1 << 31) - 1
TOP_UP = 1 << 30  # consumed bytes that earn a WINDOW_UPDATE
FRAME_MAX = 16384  # the largest frame accepted (the default)
HEADER_BLOCK_MAX = 1 << 16
MESSAGE_MAX = 32 << 20  # the largest gRPC message accepted
KEEPALIVE_TIME = 10.0  # a ping after this many silent seconds
KEEPALIVE_TIMEOUT = 5.0  # and the connection given up after this many

STATUS_NAMES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    16: "UNAUTHENTICATED",
}


class ChannelError(ConnectionError):
    """The connection failed, or the server broke the protocol."""


class GrpcError(Exception):
    """A call ended with a gRPC status other than OK."""

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self):
        name = STATUS_NAMES.get(self.code, str(self.code))
        return f"{self.message or 'no message'} (gRPC {name})"


def _frame(kind, flags, sid, payload=b""):
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + sid.to_bytes(4, "big")
        + payload
    )


class Call:
    """One stream: the request went out; answers come to
    ``on_messages(list of bytes)`` (a stream) or are kept (a unary
    call).  ``done`` is a future: None when the server ended it with OK,
    else the exception that ended it."""

    __slots__ = (
        "channel",
        "sid",
        "on_messages",
        "messages",
        "buf",
        "got_headers",
        "done",
        "consumed",
        "send_window",
    )

    def __init__(self, channel, sid, on_messages):
        self.channel = channel
        self.sid = sid
        self.on_messages = on_messages
        self.messages = []  # read and not yet handed over
        self.buf = bytearray()  # a message not whole yet
        self.got_headers = False
        self.done = channel.loop.create_future()
        self.consumed = 0
        self.send_window = channel.peer_window

    def cancel(self, exc=None):
        """Ends the stream from this side; ``done`` says ``exc``."""
        if self.channel.calls.pop(self.sid, None) is not None:
            self.channel.write(
                _frame(RST_STREAM, 0, self.sid, CANCEL.to_bytes(4, "big"))
            )
        self._end(exc or asyncio.CancelledError())

    def _end(self, exc):
        if not self.done.done():
            self.done.set_result(exc)


class Channel(asyncio.Protocol):
    """One HTTP/2 connection to a gRPC server."""

    def __init__(self, authority, coalesce=0.0):
        self.authority = authority
        self.coalesce = coalesce  # seconds to let a stream's burst gather
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder(max_header_list_size=HEADER_BLOCK_MAX)
        self.buf = bytearray()
        self.calls = {}
        self.next_sid = 1
        self.continuing = None  # (sid, flags, block) of a HEADERS
        self.peer_window = 65535  # the server's initial stream window
        self.peer_frame = 16384
        self.send_window = 65535  # the server's connection window
        self.outbox = collections.deque()
        self.consumed = 0
        self.error = None  # why the connection is over
        self.last_read = self.loop.time()
        self.ping_sent = None
        self.timer = None
        self.paused = False

    @classmethod
    async def open(cls, host, port, timeout, coalesce=0.0):
        loop = asyncio.get_running_loop()
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            _, channel = await asyncio.wait_for(
                loop.create_connection(
                    lambda: cls(authority, coalesce), host, port
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise ChannelError(f"no connection in {timeout:g} s") from None
        except OSError as exc:
            raise ChannelError(exc.strerror or str(exc)) from None
        return channel

    # -- asyncio's side -------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        settings = b"".join(
            k.to_bytes(2, "big") + v.to_bytes(4, "big")
            for k, v in (
                (SETTINGS_ENABLE_PUSH, 0),
                (SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_MAX),
            )
        )
        transport.write(
            PREFACE
            + _frame(SETTINGS, 0, 0, settings)
            + _frame(
                WINDOW_UPDATE, 0, 0, (WINDOW_MAX - 65535).to_bytes(4, "big")
            )
        )
        self._arm(KEEPALIVE_TIME)

    def connection_lost(self, exc):
        self._fail(
            ChannelError("the connection closed" + (f": {exc}" if exc else ""))
        )

    def data_received(self, data):
        if self.error is not None:
            return
        self.last_read = self.loop.time()
        buf = self.buf
        buf += data
        touched = []
        at, size = 0, len(buf)
        try:
            while size - at >= 9:
                length = int.from_bytes(buf[at : at + 3], "big")
                if length > FRAME_MAX:
                    raise ChannelError(
                        f"a frame of {length} bytes (at most "
                        f"{FRAME_MAX} were allowed)"
                    )
                end = at + 9 + length
                if end > size:
                    break
                kind, flags = buf[at + 3], buf[at + 4]
                sid = int.from_bytes(buf[at + 5 : at + 9], "big") & WINDOW_MAX
                payload = bytes(buf[at + 9 : end])
                at = end
                if self.continuing is not None and kind != CONTINUATION:
                    raise ChannelError("a header block was interrupted")
                if kind == DATA:
                    call = self._data(sid, flags, payload)
                    if (
                        call is not None
                        and call.messages
                        and call not in touched
                    ):
                        touched.append(call)
                elif kind in (HEADERS, CONTINUATION):
                    self._header_frame(kind, sid, flags, payload)
                elif kind == SETTINGS:
                    self._settings(flags, payload)
                elif kind == PING:
                    if flags & ACK:
                        self.ping_sent = None
                    else:
                        self.write(_frame(PING, ACK, 0, payload))
                elif kind == WINDOW_UPDATE:
                    self._window_update(sid, payload)
                elif kind == RST_STREAM:
                    call = self.calls.pop(sid, None)
                    if call is not None:
                        code = int.from_bytes(payload[:4], "big")
                        call._end(
                            ChannelError(
                                f"the server reset the stream "
                                f"(HTTP/2 error {code})"
                            )
                        )
                elif kind == GOAWAY:
                    code = int.from_bytes(payload[4:8], "big")
                    why = payload[8:].decode("utf-8", "replace")[:200]
                    raise ChannelError(
                        f"the server is going away (HTTP/2 "
                        f"error {code}{': ' if why else ''}"
                        f"{why})"
                    )
                elif kind == PUSH_PROMISE:
                    raise ChannelError("a push the client had refused")
                # PRIORITY and frame types this client does not know: skipped
        except ChannelError as exc:
            self.abort(exc)
            return
        finally:
            del buf[:at]
        for call in touched:
            messages, call.messages = call.messages, []
            if call.on_messages is not None:
                call.on_messages(messages)
            else:
                call.messages = messages
        if (
            touched
            and self.coalesce > 0
            and not self.paused
            and any(c.on_messages is not None for c in touched)
        ):
            # a stream is busy: let what follows gather for a while, then
            # take it in one read
            self.paused = True
            self.transport.pause_reading()
            self.loop.call_later(self.coalesce, self._resume)

    def _resume(self):
        self.paused = False
        if self.error is None:
            self.transport.resume_reading()

    # -- frames ---------------------------------------------------------------

    def _data(self, sid, flags, payload):
        length = len(payload)
        self.consumed += length
        if self.consumed >= TOP_UP:
            self.write(
                _frame(WINDOW_UPDATE, 0, 0, self.consumed.to_bytes(4, "big"))
            )
            self.consumed = 0
        if flags & PADDED:
            if not payload or payload[0] >= length:
                raise ChannelError("bad padding in a DATA frame")
            payload = payload[1 : length - payload[0]]
        call = self.calls.get(sid)
        if call is None:
            return None
        call.consumed += length
        if call.consumed >= TOP_UP:
            self.write(
                _frame(WINDOW_UPDATE, 0, sid, call.consumed.to_bytes(4, "big"))
            )
            call.consumed = 0
        if not call.got_headers:
            raise ChannelError("data before headers")
        buf = call.buf
        buf += payload
        while len(buf) >= 5:
            size = int.from_bytes(buf[1:5], "big")
            if buf[0]:
                self._finish(
                    call,
                    GrpcError(12, "a compressed message (none was asked for)"),
                )
                return call
            if size > MESSAGE_MAX:
                self._finish(
                    call,
                    GrpcError(
                        8, f"a message of {size} bytes (at most {MESSAGE_MAX})"
                    ),
                )
                return call
            if len(buf) < 5 + size:
                break
            call.messages.append(bytes(buf[5 : 5 + size]))
            del buf[: 5 + size]
        if flags & END_STREAM:
            self._finish(
                call, GrpcError(13, "the stream ended with no status")
            )
        return call

    def _header_frame(self, kind, sid, flags, payload):
        if kind == HEADERS:
            if self.continuing is not None:
                raise ChannelError("a header block was interrupted")
            if flags & PADDED:
                if not payload or payload[0] >= len(payload):
                    raise ChannelError("bad padding in a HEADERS frame")
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self.continuing = (sid, flags, payload)
        else:
            if self.continuing is None or self.continuing[0] != sid:
                raise ChannelError("a CONTINUATION out of place")
            start_sid, start_flags, block = self.continuing
            if len(block) + len(payload) > HEADER_BLOCK_MAX:
                raise ChannelError(
                    "a header block over %d bytes" % HEADER_BLOCK_MAX
                )
            self.continuing = (sid, start_flags, block + payload)
        if not flags & END_HEADERS:
            return
        sid, flags, block = self.continuing
        self.continuing = None
        try:
            headers = self.decoder.decode(block)
        except hpack.HPACKError as exc:
            raise ChannelError(
                f"a header block HPACK cannot read: {exc}"
            ) from None
        call = self.calls.get(sid)
        if call is not None:
            self._headers(call, flags, dict(headers))

    def _headers(self, call, flags, headers):
        if not call.got_headers:
            call.got_headers = True
            status = headers.get(":status")
            if status != "200":
                self._finish(call, GrpcError(2, f"HTTP status {status}"))
                return
            if not headers.get("content-type", "").startswith(
                "application/grpc"
            ):
                self._finish(
                    call,
                    GrpcError(
                        2,
                        "not a gRPC answer "
                        "(content-type %r)" % headers.get("content-type"),
                    ),
                )
                return
            if not flags & END_STREAM:
                return
        elif not flags & END_STREAM:
            raise ChannelError("trailers that do not end the stream")
        try:
            code = int(headers.get("grpc-status", ""))
        except ValueError:
            self._finish(call, GrpcError(2, "no grpc-status"))
            return
        message = urllib.parse.unquote(headers.get("grpc-message", ""))
        self._finish(call, None if code == 0 else GrpcError(code, message))

    def _finish(self, call, exc):
        self.calls.pop(call.sid, None)
        if exc is not None and call.messages and call.on_messages is not None:
            # what came before the error is handed over first
            messages, call.messages = call.messages, []
            call.on_messages(messages)
        call._end(exc)

    def _settings(self, flags, payload):
        if flags & ACK:
            return
        if len(payload) % 6:
            raise ChannelError("a SETTINGS frame of a bad length")
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i : i + 2], "big")
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == SETTINGS_HEADER_TABLE_SIZE:
                self.encoder.header_table_size = min(value, 4096)
            elif key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > WINDOW_MAX:
                    raise ChannelError("a stream window over 2^31-1")
                for call in self.calls.values():
                    call.send_window += value - self.peer_window
                self.peer_window = value
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self.peer_frame = value
        self.write(_frame(SETTINGS, ACK, 0))
        self._pump()

    def _window_update(self, sid, payload):
        step = int.from_bytes(payload[:4], "big") & WINDOW_MAX
        if sid == 0:
            self.send_window += step
        elif sid in self.calls:
            self.calls[sid].send_window += step
        self._pump()

    # -- keepalive ------------------------------------------------------------

    def _arm(self, delay):
        self.timer = self.loop.call_later(delay, self._tick)

    def _tick(self):
        if self.error is not None:
            return
        now = self.loop.time()
        if self.ping_sent is not None:
            if now - self.ping_sent >= KEEPALIVE_TIMEOUT:
                self.abort(
                    ChannelError(
                        f"no answer to a keepalive ping in "
                        f"{KEEPALIVE_TIMEOUT:g} s"
                    )
                )
                return
            self._arm(self.ping_sent + KEEPALIVE_TIMEOUT - now)
        elif now - self.last_read >= KEEPALIVE_TIME:
            self.ping_sent = now
            self.write(_frame(PING, 0, 0, b"keepaliv"))
            self._arm(KEEPALIVE_TIMEOUT)
        else:
            self._arm(self.last_read + KEEPALIVE_TIME - now)

    # -- calls ----------------------------------------------------------------

    def start(
        self,
        path,
        request,
        metadata=(),
        on_messages=None,
        timeout=None,
        half_close=True,
    ):
        """Sends a request on a new stream; returns its Call.
        ``half_close=False`` keeps the request side open (a watch)."""
        if self.error is not None:
            raise self.error
        sid = self.next_sid
        if sid > WINDOW_MAX:
            raise ChannelError("no stream id left on this connection")
        self.next_sid += 2
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if timeout is not None:
            headers.append(("grpc-timeout", "%dm" % max(1, timeout * 1000)))
        headers += metadata
        block = self.encoder.encode(headers)
        call = Call(self, sid, on_messages)
        self.calls[sid] = call
        first, rest = block[: self.peer_frame], block[self.peer_frame :]
        frames = [_frame(HEADERS, 0 if rest else END_HEADERS, sid, first)]
        while rest:
            part, rest = rest[: self.peer_frame], rest[self.peer_frame :]
            frames.append(
                _frame(CONTINUATION, 0 if rest else END_HEADERS, sid, part)
            )
        self.write(b"".join(frames))
        body = len(request).to_bytes(5, "big") + request
        self.outbox.append((call, memoryview(body), half_close))
        self._pump()
        return call

    async def unary(
        self, path, request, answer_type, metadata=(), timeout=5.0
    ):
        """The answer to one request, or raises GrpcError, ChannelError
        or TimeoutError."""
        call = self.start(
            path, request.SerializeToString(), metadata, timeout=timeout
        )
        timer = self.loop.call_later(
            timeout, call.cancel, TimeoutError(f"no answer in {timeout:g} s")
        )
        try:
            exc = await call.done
        except asyncio.CancelledError:
            call.cancel()
            raise
        finally:
            timer.cancel()
        if exc is not None:
            raise exc
        if len(call.messages) != 1:
            raise GrpcError(
                13, f"{len(call.messages)} answers to a unary call"
            )
        return answer_type.FromString(call.messages[0])

    def _pump(self):
        """Sends what the server's windows allow of the queued bodies."""
        out = self.outbox
        while out:
            call, data, half_close = out[0]
            if call.sid not in self.calls:
                out.popleft()
                continue
            room = min(self.send_window, call.send_window, self.peer_frame)
            if room <= 0:
                return
            chunk, data = data[:room], data[room:]
            last = not data
            self.send_window -= len(chunk)
            call.send_window -= len(chunk)
            self.write(
                _frame(
                    DATA,
                    END_STREAM if last and half_close else 0,
                    call.sid,
                    bytes(chunk),
                )
            )
            if last:
                out.popleft()
            else:
                out[0] = (call, data, half_close)

    def write(self, data):
        if self.error is None and self.transport is not None:
            self.transport.write(data)

    def abort(self, exc):
        """Closes the connection; every call ends with ``exc``."""
        self._fail(exc)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc):
        if self.error is not None:
            return
        self.error = exc
        if self.timer is not None:
            self.timer.cancel()
        calls, self.calls = self.calls, {}
        for call in calls.values():
            if call.messages and call.on_messages is not None:
                messages, call.messages = call.messages, []
                call.on_messages(messages)
            call._end(exc)

    def close(self):
        self.abort(ChannelError("closed by the client"))
