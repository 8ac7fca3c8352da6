"""The filter API, which stream filters and metadata drivers are written to.

The shape and the names are MOSN's (``mosn.io/api``), in snake_case:
receiver filters with ``on_receive(ctx, headers, buf, trailers)`` and
``set_receive_filter_handler(handler)`` (the handler sends hijack replies),
sender filters with ``append(...)`` and ``set_sender_filter_handler``, an
``on_destroy()`` hook on both, one ``HeaderMap`` for the request's and the
response's headers, metadata drivers with ``init(config)`` and
``build_metadata(...)``.  Earlier names stay as aliases of these:
``set_receive_handler``, ``set_send_handler``, ``RequestHeaders`` and
``ResponseHeaders``.

``on_receive``, ``append`` and ``build_metadata`` may be coroutines
(``async def``).  A chain whose filters are all plain functions runs inline,
one request at a time; a chain with one that awaits runs each request as a
task of its own, so many requests of it are in flight in one worker.

A filter instance is built once per chain in each worker and then serves
every request of that chain: keep per-request state in ``ctx.vars``, never
on the filter.  A filter may define ``start()`` and ``stop()`` (plain or
``async def``), run once per worker before its first request and after its
last: open a connection pool there, and close it.  ``on_destroy()`` (plain)
runs after ``stop()``, when the worker is done with the filter: MOSN calls
it at the end of each stream because its filters are made per stream;
here a filter serves every request of its chain, so it is destroyed once.
"""

import contextvars
import inspect

CONTINUE = 0
STOP = 1


def handler_setter(filt, name, alias):
    """The filter's method ``name`` (MOSN's) that takes its chain's handler,
    or ``alias`` (the earlier name) where that is the one the filter's own
    class defines; None if it has neither."""
    method = getattr(filt, name, None)
    older = getattr(filt, alias, None)
    if older is None:
        return method
    # a class that overrides only the earlier name inherits the new one
    # from the base classes: its own method is the one to call
    own = type(filt).__dict__
    if method is None or (alias in own and name not in own):
        return older
    return method


def awaits(method):
    """True if ``method`` is a coroutine function (``async def``, compiled
    or not): what it returns must be awaited."""
    return inspect.iscoroutinefunction(method)


class ConfigError(Exception):
    """A configuration that cannot run; raise it from a filter factory or a
    driver's ``init`` to reject a config with a readable reason.

    ``str()`` is ``"<file>: <key path>: <reason>"``, leaving out the parts
    not known yet; the config loader fills in the file and the key path.
    """

    def __init__(self, reason, path="", file=""):
        super().__init__(reason)
        self.reason = reason
        self.path = path
        self.file = file

    def __str__(self):
        parts = (self.file, self.path, self.reason)
        return ": ".join(part for part in parts if part)

    def located(self, path="", file=""):
        """This error with ``path`` put before its key path, in ``file``."""
        return ConfigError(
            self.reason, join_path(path, self.path), file or self.file
        )


def join_path(outer, inner):
    """Joins key paths: ("a[0]", "b") -> "a[0].b", ("a", "[1]") -> "a[1]"."""
    if not outer:
        return inner
    if not inner:
        return outer
    return outer + inner if inner.startswith("[") else outer + "." + inner


def json_type(value):
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Context:
    """One request as the filters see it, besides its headers and body.

    ``metadata`` is filled by metadata drivers and exposed by nginx as
    ``$mosn_meta_<key>``; ``upstream`` (if a filter sets it) as
    ``$mosn_upstream``; ``response_headers`` are added to the response.
    """

    __slots__ = (
        "request_id",
        "method",
        "path",
        "query",
        "remote_addr",
        "protocol",
        "listener",
        "metadata",
        "upstream",
        "response_headers",
        "vars",
    )

    def __init__(
        self,
        request_id=0,
        method="GET",
        path="/",
        query="",
        remote_addr="",
        protocol="HTTP/1.1",
        listener="",
    ):
        self.request_id = request_id
        self.method = method
        self.path = path
        self.query = query
        self.remote_addr = remote_addr
        self.protocol = protocol
        self.listener = listener
        self.metadata = {}
        self.upstream = None
        self.response_headers = []
        self.vars = {}

    def add_response_header(self, name, value):
        """Adds a header line to the response sent to the client."""
        self.response_headers.append((name, value))

    def __repr__(self):
        return (
            f"Context(request_id={self.request_id!r}, "
            f"method={self.method!r}, path={self.path!r}, "
            f"listener={self.listener!r}, metadata={self.metadata!r}, "
            f"upstream={self.upstream!r})"
        )


class StreamReceiverFilterHandler:
    """What a receiver filter can ask of the chain: a direct (hijack) reply.

    One handler serves a chain for its whole life; the chain resets
    ``hijacked`` before each request.
    """

    __slots__ = ("hijacked", "status", "headers", "body")

    def __init__(self):
        self.hijacked = False
        self.status = 0
        self.headers = []
        self.body = b""

    def send_hijack_reply(self, status, headers=None, body=None):
        """Answers the request directly and ends the chain.

        ``headers``: a dict or an iterable of (name, value) pairs;
        ``body``: str (sent as UTF-8) or bytes.
        """
        if headers is None:
            pairs = []
        elif isinstance(headers, dict):
            pairs = list(headers.items())
        else:
            pairs = [tuple(pair) for pair in headers]
        self.status = status
        self.headers = pairs
        self.body = b"" if body is None else _as_body(body, "hijack reply")
        self.hijacked = True


def _as_body(data, whose):
    """A body as bytes: str is sent as UTF-8."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(
        f"{whose} body must be str or bytes, not {type(data).__name__}"
    )


class StreamSenderFilterHandler:
    """What a sender filter can see of the response besides its headers,
    and the body it may put in its place.

    ``status`` is the response's status; ``body`` is None, or the new body
    a sender filter gave with ``set_body`` (the filters after it get that
    as ``buf``).
    """

    __slots__ = ("status", "body")

    def __init__(self):
        self.status = 0
        self.body = None

    def set_body(self, data):
        """Replaces the response body: ``data`` is bytes, or str (sent as
        UTF-8). nginx frames the new body itself and drops the upstream's.
        """
        self.body = _as_body(data, "a response")


# The handlers of the request a task serves.  A chain that awaits has many
# requests in flight, each a task with a context of its own, while its
# filters hold one handler for their whole life: that handler forwards to
# the request of the task that calls it.
_receive_handler = contextvars.ContextVar("pyworker_receive_handler")
_send_handler = contextvars.ContextVar("pyworker_send_handler")


def _handler_of(var, outside):
    """The handler of the request the calling task serves."""
    try:
        return var.get()
    except LookupError:
        raise RuntimeError(outside) from None


def _forward(field):
    return property(
        lambda self: getattr(self._current(), field),
        doc="the %s of the request this task serves" % field,
    )


class TaskReceiverFilterHandler:
    """The receiver handler of a chain that awaits: the hijack reply goes
    to the request of the task that calls it."""

    __slots__ = ()

    hijacked = _forward("hijacked")
    status = _forward("status")
    headers = _forward("headers")
    body = _forward("body")

    @staticmethod
    def _current():
        return _handler_of(
            _receive_handler,
            "send_hijack_reply outside a request of its chain",
        )

    def send_hijack_reply(self, status, headers=None, body=None):
        """Answers the request directly and ends the chain."""
        self._current().send_hijack_reply(status, headers, body)


class TaskSenderFilterHandler:
    """The sender handler of a chain that awaits: the status and the body
    are those of the response of the task that uses it."""

    __slots__ = ()

    @staticmethod
    def _current():
        return _handler_of(
            _send_handler,
            "the sender handler used outside a response of its chain",
        )

    @property
    def status(self):
        return self._current().status

    @property
    def body(self):
        return self._current().body

    def set_body(self, data):
        """Replaces the body of the response this task serves."""
        self._current().set_body(data)


class StreamReceiverFilter:
    """Base of request-phase filters (MOSN's StreamReceiverFilter)."""

    __slots__ = ()
    handler = None

    def set_receive_filter_handler(self, handler):
        """Called once with the handler of the filter's chain."""
        self.handler = handler

    set_receive_handler = set_receive_filter_handler  # the earlier name

    def on_receive(self, ctx, headers, buf, trailers):
        """Reads or edits the request; returns CONTINUE or STOP.  May be
        ``async def``."""
        return CONTINUE

    def on_destroy(self):
        """Called once when the worker is done with the filter, after
        ``stop()``."""


class StreamSenderFilter:
    """Base of response-phase filters (MOSN's StreamSenderFilter).

    ``buf`` is the response body (bytes) where nginx hands it over
    (``mosn_response_body on``), else None. Compressed bodies come only if
    a sender filter of the chain sets ``decode_body`` (from its config,
    say): then gzip and deflate bodies come decoded.
    """

    __slots__ = ()
    send_handler = None
    decode_body = False

    def set_sender_filter_handler(self, handler):
        """Called once with the sender handler of the filter's chain."""
        self.send_handler = handler

    set_send_handler = set_sender_filter_handler  # the earlier name

    def append(self, ctx, headers, buf, trailers):
        """Reads or edits the response headers, reads ``buf`` and may
        replace it (``self.send_handler.set_body``); returns CONTINUE or
        STOP.  May be ``async def``."""
        return CONTINUE

    def on_destroy(self):
        """Called once when the worker is done with the filter, after
        ``stop()``."""


class MetadataDriver:
    """Computes one metadata value per request for the ``metadata`` filter.

    ``init(config)`` runs once when the config is loaded (raise to reject
    it); ``build_metadata(...)`` returns the value as a str, or raises (the
    key is then left unset and the request goes on), or returns None to
    leave the key unset without counting an error.  ``build_metadata`` may
    be ``async def``, and a driver may have ``start()`` and ``stop()`` as
    a filter may.
    """

    def init(self, config):
        pass

    def build_metadata(self, ctx, headers, buf, trailers):
        raise NotImplementedError
