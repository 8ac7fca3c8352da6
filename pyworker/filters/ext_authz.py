"""The ``ext_authz`` filter: asks an HTTP authorization service about each
request, with the semantics of Envoy's HTTP ext_authz filter
(https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/ext_authz_filter).

Config (Envoy's field names)::

    {"type": "ext_authz",
     "config": {
       "http_service": {
         "server_uri": {"uri": "http://127.0.0.1:9000", "timeout": "200ms"},
         "path_prefix": "/auth",
         "authorization_request": {
           "allowed_headers": {"patterns": [{"exact": "cookie"},
                                            {"prefix": "x-auth-"}]},
           "headers_to_add": [{"key": "x-gateway", "value": "edge"}]},
         "authorization_response": {
           "allowed_upstream_headers": {"patterns": [{"exact": "x-user"}]},
           "allowed_upstream_headers_to_append": [...],
           "allowed_client_headers": [...],
           "allowed_client_headers_on_success": [...]}},
       "failure_mode_allow": false,
       "failure_mode_allow_header_add": false,
       "status_on_error": 403,
       "max_connections": 100}}

The service gets the request's method and its path (with the query) after
``path_prefix``, no body, its ``Host`` and ``Authorization`` headers, the
headers ``allowed_headers`` matches (but framing and hop-by-hop ones such
as ``Expect``) and ``headers_to_add``.  The path is nginx's, normalized
and decoded; it is sent escaped again (RFC 3986), so that what a client
encoded (a space, CR or LF) stays one path in one request; bytes of the
query past ASCII are escaped too.

- A 2xx answer lets the request go on (Envoy takes 200 only): the
  service's headers that ``allowed_upstream_headers`` matches replace the
  request's of that name, those ``allowed_upstream_headers_to_append``
  matches are added, and those ``allowed_client_headers_on_success``
  matches go to the client's response.
- Any other status is the client's answer, with the service's body and
  its headers (those ``allowed_client_headers`` matches, or all of them
  when it is not set, framing and hop-by-hop headers left out).
- No answer within ``server_uri.timeout``, or no connection, is a
  failure: with ``failure_mode_allow`` the request goes on (and, with
  ``failure_mode_allow_header_add``, upstream gets
  ``x-envoy-auth-failure-mode-allowed: true``); without, the client gets
  ``status_on_error`` (403).
- A check that cannot be sent as an HTTP request (a header an earlier
  filter set with a control character in it) is denied with
  ``status_on_error`` whatever ``failure_mode_allow`` says: a client must
  not choose to fail open.

Connections to the service are kept alive and pooled per worker
(pyworker.httpclient, at most ``max_connections`` per filter), closed by
the filter's stop().  Each outcome is counted in ``events``: allowed,
denied, failure_allowed, failure_denied.
"""

import logging
import re
import ssl
import time
from urllib.parse import quote, urlsplit

from pyworker.api import CONTINUE, STOP, ConfigError, StreamReceiverFilter
from pyworker.filters import options
from pyworker.registry import register_filter

# framing and hop-by-hop headers: the client's are not the check's, nor
# the service's the request's (nginx refuses verdicts that set them)
_HOP_BY_HOP = frozenset(
    (
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
    )
)
# never copied from the service's answer to the client or upstream
_NOT_COPIED = _HOP_BY_HOP | {"host", "date", "server"}
# never sent to the service
_NOT_SENT = _HOP_BY_HOP | {"expect"}
# what a path may hold as it is (RFC 3986's pchar and "/"); anything else
# is escaped again
_PATH_SAFE = "/-._~!$&'()*+,;=:@"
_UNSAFE_IN_PATH = re.compile(r"[^A-Za-z0-9/\-._~!$&'()*+,;=:@]")
# a query is nginx's as it came, which may hold bytes past ASCII: those
# are escaped, every visible ASCII character kept
_QUERY_SAFE = "".join(map(chr, range(0x21, 0x7F)))
_UNSAFE_IN_QUERY = re.compile(r"[^\x21-\x7e]")
# what the config may put into a check's request line and headers
_VISIBLE = re.compile(r"[\x21-\x7e]*\Z")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")
# a denial's body goes into the slot with the verdict
MAX_DENIED_BODY = 8192
# what a 2xx answer's header does: replaces the request's, is added to
# it, goes to the client's response (ExtAuthzFilter._plan)
_UPSTREAM_SET = 1
_UPSTREAM_ADD = 2
_CLIENT = 4
MAX_PLANS = 256  # header names whose plan is kept
FAILURE_HEADER = "x-envoy-auth-failure-mode-allowed"

log = logging.getLogger("pyworker.filter.ext_authz")
# what a failed check raises (HttpError is a ConnectionError)
_FAILURES = (OSError, TimeoutError)


def _escaped(text, safe):
    """``text`` %-escaped but for ``safe``: bytes as nginx gave them (read
    as Latin-1), or UTF-8 for text that is more (a test's, a tryout's)."""
    try:
        return quote(text, safe=safe, encoding="latin-1")
    except UnicodeEncodeError:
        return quote(text, safe=safe, encoding="utf-8")


@register_filter("ext_authz")
class ExtAuthzFilter(StreamReceiverFilter):
    __slots__ = (
        "url",
        "origin",
        "base_path",
        "timeout",
        "path_prefix",
        "allowed_headers",
        "headers_to_add",
        "upstream_headers",
        "upstream_append",
        "client_headers",
        "client_on_success",
        "failure_mode_allow",
        "failure_header",
        "status_on_error",
        "max_connections",
        "session",
        "events",
        "handler",
        "_logged",
        "_unlogged",
        "_plans",
    )

    def __init__(self, config):
        http = options.obj(config, "http_service")
        try:
            self._service(http)
        except ConfigError as exc:
            raise exc.located("http_service") from None
        self.failure_mode_allow = options.flag(config, "failure_mode_allow")
        self.failure_header = options.flag(
            config, "failure_mode_allow_header_add"
        )
        self.status_on_error = options.status(config, "status_on_error", 403)
        self.max_connections = options.integer(
            config, "max_connections", 100, 1, 100000
        )
        self.session = None
        self.events = {
            "allowed": 0,
            "denied": 0,
            "failure_allowed": 0,
            "failure_denied": 0,
        }
        self._logged = 0.0  # failures are logged once a second at most
        self._unlogged = 0
        self._plans = {}  # answer header name -> ExtAuthzFilter._plan

    def _service(self, http):
        server = options.obj(http, "server_uri")
        try:
            uri = options.string(server, "uri")
            parts = urlsplit(uri)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"{uri!r} is not an http:// or https:// URI", "uri"
                )
            try:
                parts.port
            except ValueError as exc:
                raise ConfigError(f"{uri!r}: {exc}", "uri") from None
            if parts.query or parts.fragment:
                raise ConfigError(f"{uri!r}: no query or fragment here", "uri")
            if not _VISIBLE.match(parts.path):
                raise ConfigError(
                    f"{uri!r}: a path is visible ASCII (escape the rest as "
                    "%XX)",
                    "uri",
                )
            self.timeout = options.duration(
                server, "timeout", 0.2, low=0.001, high=60.0
            )
        except ConfigError as exc:
            raise exc.located("server_uri") from None
        self.url = uri.rstrip("/")
        self.origin = (
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
            parts.scheme == "https",
        )
        self.base_path = parts.path.rstrip("/")
        prefix = http.get("path_prefix", "")
        if not isinstance(prefix, str) or (
            prefix and not prefix.startswith("/")
        ):
            raise ConfigError("must be a path starting with /", "path_prefix")
        if not _VISIBLE.match(prefix):
            raise ConfigError(
                "a path is visible ASCII (escape the rest as %XX)",
                "path_prefix",
            )
        self.path_prefix = prefix.rstrip("/")
        request = options.obj(http, "authorization_request")
        response = options.obj(http, "authorization_response")
        try:
            self.allowed_headers = options.header_matcher(
                request, "allowed_headers"
            )
            self.headers_to_add = options.header_pairs(
                request, "headers_to_add"
            )
            for name, value in self.headers_to_add:
                if not _TOKEN.match(name) or not _FIELD_VALUE.match(value):
                    raise ConfigError(
                        f"{name!r}: {value!r} is no HTTP header (a name is "
                        "a token, a value Latin-1 text with no control "
                        "character)",
                        "headers_to_add",
                    )
                if name.lower() in _NOT_SENT or name.lower() == "host":
                    raise ConfigError(
                        f"{name!r} is the check's own framing (or Host, "
                        "the request's): not a header to add",
                        "headers_to_add",
                    )
        except ConfigError as exc:
            raise exc.located("authorization_request") from None
        try:
            self.upstream_headers = options.header_matcher(
                response, "allowed_upstream_headers"
            )
            self.upstream_append = options.header_matcher(
                response, "allowed_upstream_headers_to_append"
            )
            self.client_headers = options.header_matcher(
                response, "allowed_client_headers"
            )
            self.client_on_success = options.header_matcher(
                response, "allowed_client_headers_on_success"
            )
        except ConfigError as exc:
            raise exc.located("authorization_response") from None

    # -- the worker's life ---------------------------------------------------

    async def start(self):
        from pyworker.httpclient import HttpPool

        host, port, tls = self.origin
        self.session = HttpPool(
            host,
            port,
            max_connections=self.max_connections,
            ssl=ssl.create_default_context() if tls else None,
        )

    async def stop(self):
        session, self.session = self.session, None
        if session is not None:
            await session.close()

    # -- a request -----------------------------------------------------------

    async def on_receive(self, ctx, headers, buf, trailers):
        if self.session is None:
            await self.start()
        path = ctx.path
        if _UNSAFE_IN_PATH.search(path) is not None:
            path = _escaped(path, _PATH_SAFE)
        path = self.base_path + self.path_prefix + path
        query = ctx.query
        if query:
            if _UNSAFE_IN_QUERY.search(query) is not None:
                query = _escaped(query, _QUERY_SAFE)
            path += "?" + query
        try:
            status, answer_headers, body = await self.session.request(
                ctx.method,
                path,
                self._check_headers(headers),
                limit=MAX_DENIED_BODY,
                timeout=self.timeout,
            )
        except _FAILURES as exc:
            return self._failed(ctx, headers, exc)
        except ValueError as exc:
            return self._unsendable(ctx, exc)
        if 200 <= status < 300:
            self.events["allowed"] += 1
            plans = self._plans
            for name, value in answer_headers:
                plan = plans.get(name)
                if plan is None:
                    plan = self._plan(name)
                if not plan:
                    continue
                if plan & _UPSTREAM_SET:
                    headers.set(name, value)
                elif plan & _UPSTREAM_ADD:
                    headers.add(name, value)
                if plan & _CLIENT:
                    ctx.add_response_header(name, value)
            return CONTINUE
        self.events["denied"] += 1
        reply = [
            (name, value)
            for name, value in answer_headers
            if name.lower() not in _NOT_COPIED
            and (self.client_headers is None or self.client_headers(name))
        ]
        self.handler.send_hijack_reply(status, reply, body)
        return STOP

    def _plan(self, name):
        """Where a 2xx answer's header ``name`` goes (_UPSTREAM_SET,
        _UPSTREAM_ADD, _CLIENT bits), worked out once per name: a service
        sends the same few names on every answer."""
        lname = name.lower()
        plan = 0
        if lname not in _NOT_COPIED:
            if self.upstream_headers and self.upstream_headers(lname):
                plan = _UPSTREAM_SET
            elif self.upstream_append and self.upstream_append(lname):
                plan = _UPSTREAM_ADD
            if self.client_on_success and self.client_on_success(lname):
                plan |= _CLIENT
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()  # a service that makes up names: bounded
        self._plans[name] = plan
        return plan

    def _check_headers(self, headers):
        """What the service is sent: Host and Authorization always, the
        headers allowed_headers matches, then headers_to_add."""
        allowed = self.allowed_headers
        if allowed is None:
            # the usual case: two lookups, not a walk over every header
            out = [("Host", value) for value in headers.get_all("host")]
            out.extend(
                ("Authorization", value)
                for value in headers.get_all("authorization")
            )
            out.extend(self.headers_to_add)
            return out
        out = []
        for name, value in headers.items():
            lname = name.lower()
            if lname in ("host", "authorization") or (
                allowed and allowed(lname)
            ):
                if lname not in _NOT_SENT:
                    out.append((name, value))
        out.extend(self.headers_to_add)
        return out

    def _failed(self, ctx, headers, exc):
        now = time.monotonic()
        if now - self._logged >= 1.0:
            log.warning(
                "ext_authz: %s did not answer request %s: %s%s; %s",
                self.url,
                ctx.request_id,
                type(exc).__name__ if not str(exc) else exc,
                " (and %d more since the last such line)" % self._unlogged
                if self._unlogged
                else "",
                "allowed (failure_mode_allow)"
                if self.failure_mode_allow
                else "denied with %d" % self.status_on_error,
            )
            self._logged, self._unlogged = now, 0
        else:
            self._unlogged += 1
        if self.failure_mode_allow:
            self.events["failure_allowed"] += 1
            if self.failure_header:
                headers.set(FAILURE_HEADER, "true")
            return CONTINUE
        self.events["failure_denied"] += 1
        self.handler.send_hijack_reply(self.status_on_error)
        return STOP

    def _unsendable(self, ctx, exc):
        log.warning(
            "ext_authz: request %s denied with %d: its check cannot be "
            "sent: %s",
            ctx.request_id,
            self.status_on_error,
            exc,
        )
        self.events["failure_denied"] += 1
        self.handler.send_hijack_reply(self.status_on_error)
        return STOP
