"""Request records and verdicts as bytes, in pure Python, and the verdict
itself.

The layouts are those of shm_ring.h (their numbers: shm_ring.abi).  The
hot path reads and writes them in place (Cython); this module is the
reference used by the pure-Python fallback, by test producers and by the
round-trip tests.  ``Verdict`` is the one verdict of both sides: the filter
chain builds it (pyworker.verdict checks it), the binding writes it into a
slot, decode_verdict() reads it back as nginx does.
"""

import re
import socket

from shm_ring import abi
from shm_ring.abi import (
    ACTION_CONTINUE,
    ACTION_ERROR,
    ACTION_REPLY,
    EP_APP_NAME_MAX,
    EP_INET,
    EP_INET6,
    EP_SITE_MAX,
    HEADER_ENTRY,
    RECORD,
    REC_LOG,
    REC_META,
    REC_REPLY_BODY,
    REC_REPLY_HEADER,
    REC_REQ_DEL,
    REC_REQ_SET,
    REC_RESP_ADD,
    REC_RESP_BODY,
    REC_RESP_DEL,
    REC_RESP_SET,
    REC_UPSTREAM,
    REQ,
    REQ_F_BODY,
    REQ_F_META,
    REQ_F_RESPONSE,
    VERDICT,
    VERDICT_F_DECODE,
    VERDICT_F_SENDERS,
    VERDICT_MAX_RECORDS,
)

# the request record's fields, in the order of mosn_req_t's field[]
FIELDS = (
    "chain",
    "method",
    "path",
    "query",
    "remote_addr",
    "protocol",
    "body",
    "headers",
    "meta",
)

ACTION_NAMES = {
    ACTION_CONTINUE: "CONTINUE",
    ACTION_REPLY: "REPLY",
    ACTION_ERROR: "ERROR",
}

# Older names of the verdict actions, kept for code written against them.
# They are actions of a verdict, not the CONTINUE / STOP a filter returns
# (pyworker.api): new code says ACTION_CONTINUE, ACTION_REPLY, ACTION_ERROR.
CONTINUE, REPLY, ERROR = ACTION_CONTINUE, ACTION_REPLY, ACTION_ERROR

# What nginx accepts in a verdict, the checks of shm_verdict.c.  Both the
# chain's check (pyworker.verdict, on str) and decode_verdict() (on bytes,
# read as latin-1) use these, so the two sides cannot disagree.

# RFC 9110 token; 255 is the ring's limit on a header name
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,255}").fullmatch
# CR, LF and NUL split or truncate headers; above U+00FF latin-1 cannot encode
_BAD_CHAR = re.compile("[\r\n\x00\u0100-\U0010ffff]").search
_META_KEY = re.compile(r"[A-Za-z0-9_]{1,%d}" % abi.META_KEY_MAX).fullmatch
_UPSTREAM = re.compile(r"[A-Za-z0-9_.:\[\]-]{1,255}").fullmatch


def is_header_name(name):
    """Whether the str ``name`` is an HTTP token nginx takes as a name."""
    return _TOKEN(name) is not None


def bad_char(text):
    """The first character of the str ``text`` that no header value or
    metadata value may hold (CR, LF, NUL, above U+00FF), or None."""
    found = _BAD_CHAR(text)
    return None if found is None else found.group()


def is_metadata_key(key):
    """Whether ``key`` can be a metadata key ($mosn_meta_<key> in nginx)."""
    return isinstance(key, str) and _META_KEY(key) is not None


def is_upstream_name(name):
    """Whether the str ``name`` can name an upstream ($mosn_upstream)."""
    return _UPSTREAM(name) is not None


class _Pending:
    """What a dispatch hands back for a request it has not answered yet:
    serve_batch() writes no verdict for it; Consumer.complete() will."""

    __slots__ = ()

    def __repr__(self):
        return "PENDING"


PENDING = _Pending()


class RingError(Exception):
    """The region or a record is unusable; the message says why."""


class Verdict:
    """What to do with a request.

    Header records are declarative, one entry per edited name:
    ``request_set`` holds one (name, value) line per header, which replaces
    every line of that name (several values are joined into one line, see
    ``RequestHeaders.to_records``); ``request_remove`` the names whose lines
    are all removed; no name is in both, so the order of application does
    not matter. ``response_add`` lines are added to the response;
    ``response_set``/``response_remove`` are the response-phase (sender
    filter) counterparts of the request records; in the response phase a
    name may have several ``response_set`` lines (Set-Cookie cannot be
    joined). For a REPLY, ``reply_headers`` and ``reply_body`` are the
    direct answer. ``run_senders`` asks nginx to bring the upstream's
    response back through the chain's sender filters, ``decode_body`` to
    hand them compressed bodies too (decoded). ``response_body``, in the
    response phase, is the new body (bytes), or None to leave it.

    The lists and the dict given are kept, not copied.
    """

    __slots__ = (
        "action",
        "status",
        "upstream",
        "metadata",
        "request_set",
        "request_remove",
        "response_add",
        "reply_headers",
        "reply_body",
        "log",
        "response_set",
        "response_remove",
        "run_senders",
        "response_body",
        "decode_body",
    )

    def __init__(
        self,
        action=ACTION_CONTINUE,
        status=0,
        upstream=None,
        metadata=None,
        request_set=None,
        request_remove=None,
        response_add=None,
        reply_headers=None,
        reply_body=b"",
        log="",
        response_set=None,
        response_remove=None,
        run_senders=False,
        response_body=None,
        decode_body=False,
    ):
        self.action = action
        self.status = status
        self.upstream = upstream
        self.metadata = {} if metadata is None else metadata
        self.request_set = [] if request_set is None else request_set
        self.request_remove = [] if request_remove is None else request_remove
        self.response_add = [] if response_add is None else response_add
        self.reply_headers = [] if reply_headers is None else reply_headers
        self.reply_body = reply_body
        self.log = log
        self.response_set = [] if response_set is None else response_set
        self.response_remove = (
            [] if response_remove is None else response_remove
        )
        self.run_senders = run_senders
        self.response_body = response_body
        self.decode_body = decode_body

    @classmethod
    def error(cls, log):
        return cls(ACTION_ERROR, log=log)

    @property
    def action_name(self):
        return ACTION_NAMES.get(self.action, str(self.action))

    def to_dict(self):
        """A JSON-friendly view (for ``pyworker try`` and for tests)."""
        out = {"action": self.action_name}
        for name in self.__slots__[1:]:
            value = getattr(self, name)
            if name in ("reply_body", "response_body"):
                # an empty new body is a body; an empty reply body is none
                if value or (name == "response_body" and value is not None):
                    try:
                        out[name] = value.decode("utf-8")
                    except UnicodeDecodeError:
                        out[name] = value.decode("latin-1")
            elif value or name == "metadata":
                out[name] = (
                    [list(pair) for pair in value]
                    if name in _PAIR_FIELDS
                    else value
                )
        return out

    def __eq__(self, other):
        if not isinstance(other, Verdict):
            return NotImplemented
        return all(
            getattr(self, name) == getattr(other, name)
            for name in self.__slots__
        )

    __hash__ = None

    def __repr__(self):
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__slots__[1:]
            if getattr(self, name)
        )
        return f"Verdict({self.action_name}{', ' if fields else ''}{fields})"


_PAIR_FIELDS = {"request_set", "response_add", "reply_headers", "response_set"}


def _b(s):
    return s if isinstance(s, bytes) else s.encode("latin-1")


def encode_request(
    chain="",
    method="GET",
    path="/",
    query="",
    remote_addr="127.0.0.1",
    protocol="HTTP/1.1",
    headers=(),
    body=None,
    request_id=0,
    status=None,
    metadata=None,
):
    """A request record as the nginx module writes it; with a status, the
    response record of the response phase (headers and body: the
    response's), which carries the request's metadata."""
    strings = [
        _b(chain),
        _b(method),
        _b(path),
        _b(query),
        _b(remote_addr),
        _b(protocol),
        _b(body or b""),
    ]
    meta = encode_metadata(metadata or {})
    fields = []
    off = REQ.size
    for s in strings:
        fields.append((off, len(s)))
        off += len(s)
    pairs = [(_b(n), _b(v)) for n, v in headers]
    # the header table is read as an array: 4-byte aligned
    pad = -off % 4
    strings.append(b"\0" * pad)
    off += pad
    table_off = off
    off += HEADER_ENTRY.size * len(pairs)
    table = []
    for n, v in pairs:
        table.append(HEADER_ENTRY.pack(off, len(n), len(v)))
        off += len(n) + len(v)
    fields.append((table_off, HEADER_ENTRY.size * len(pairs)))
    fields.append((off, len(meta)))
    off += len(meta)
    flat = [x for f in fields for x in f]
    flags = (
        (REQ_F_BODY if body is not None else 0)
        | (REQ_F_RESPONSE if status is not None else 0)
        | (REQ_F_META if metadata else 0)
    )
    head = REQ.pack(off, len(pairs), request_id, flags, status or 0, *flat)
    return b"".join(
        [head] + strings + table + [n + v for n, v in pairs] + [meta]
    )


def decode_request(buf):
    """The fields of a request record, checked against its length."""
    if len(buf) < REQ.size:
        raise RingError("request record is shorter than its header")
    vals = REQ.unpack_from(buf)
    rec_len, nheaders, request_id, flags = vals[0], vals[1], vals[2], vals[3]
    if rec_len < REQ.size or rec_len > len(buf):
        raise RingError("request record length is out of bounds")
    fields = list(zip(vals[5::2], vals[6::2]))
    for off, n in fields:
        if off + n > rec_len:
            raise RingError("request field overruns the record")
    out = {
        "request_id": request_id,
        "status": vals[4] if flags & REQ_F_RESPONSE else None,
    }
    for name, (off, n) in zip(FIELDS, fields):
        if name != "headers":
            out[name] = bytes(buf[off : off + n])
    out["metadata"] = (
        decode_metadata(out.pop("meta")) if flags & REQ_F_META else None
    )
    if not flags & REQ_F_BODY:
        out["body"] = None
    table_off, table_len = fields[7]
    if table_len != nheaders * HEADER_ENTRY.size:
        raise RingError("header table length does not match its count")
    if table_off % 4:
        raise RingError("header table is not 4-byte aligned")
    headers = []
    for i in range(nheaders):
        off, nlen, vlen = HEADER_ENTRY.unpack_from(
            buf, table_off + i * HEADER_ENTRY.size
        )
        if off + nlen + vlen > rec_len:
            raise RingError("header overruns the record")
        headers.append(
            (
                bytes(buf[off : off + nlen]),
                bytes(buf[off + nlen : off + nlen + vlen]),
            )
        )
    out["headers"] = headers
    return out


def encode_metadata(metadata):
    """The metadata of a response record: a "key=value\\n" line each."""
    return b"".join(_b(k) + b"=" + _b(v) + b"\n" for k, v in metadata.items())


def decode_metadata(raw):
    """encode_metadata()'s dict again; a line without "=" is skipped."""
    out = {}
    for line in raw.decode("latin-1").split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def verdict_records(v):
    """The (type, key, value) records of a verdict, in wire order."""
    recs = []
    if v is None:
        return ACTION_CONTINUE, 0, 0, recs
    if v.upstream:
        recs.append((REC_UPSTREAM, b"", _b(v.upstream)))
    for k, val in (v.metadata or {}).items():
        recs.append((REC_META, _b(k), _b(val)))
    recs += [(REC_REQ_SET, _b(k), _b(val)) for k, val in v.request_set]
    recs += [(REC_REQ_DEL, _b(k), b"") for k in v.request_remove]
    recs += [(REC_RESP_SET, _b(k), _b(val)) for k, val in v.response_set]
    recs += [(REC_RESP_DEL, _b(k), b"") for k in v.response_remove]
    recs += [(REC_RESP_ADD, _b(k), _b(val)) for k, val in v.response_add]
    if v.response_body is not None:
        recs.append((REC_RESP_BODY, b"", _b(v.response_body)))
    if v.action == ACTION_REPLY:
        recs += [
            (REC_REPLY_HEADER, _b(k), _b(val)) for k, val in v.reply_headers
        ]
        if v.reply_body:
            recs.append((REC_REPLY_BODY, b"", _b(v.reply_body)))
    if v.log:
        recs.append((REC_LOG, b"", v.log.encode("utf-8", "replace")))
    flags = 0
    if v.action == ACTION_CONTINUE and v.run_senders:
        flags = VERDICT_F_SENDERS | (VERDICT_F_DECODE if v.decode_body else 0)
    return v.action, v.status, flags, recs


def encode_verdict(v):
    action, status, flags, recs = verdict_records(v)
    body = b"".join(
        RECORD.pack(t, len(k), len(val)) + k + val for t, k, val in recs
    )
    return (
        VERDICT.pack(
            VERDICT.size + len(body), action, status, len(recs), flags
        )
        + body
    )


def validate_verdict(buf):
    """What the C decoder says of these bytes: None if valid, or why."""
    try:
        decode_verdict(buf)
    except RingError as e:
        return str(e)
    return None


def decode_verdict(buf):
    """Parses and checks a verdict as the nginx module does."""
    buf = bytes(buf)
    if len(buf) < VERDICT.size:
        raise RingError("verdict header does not match its length")
    length, action, status, nrec, flags = VERDICT.unpack_from(buf)
    if length != len(buf) or nrec > VERDICT_MAX_RECORDS:
        raise RingError("verdict header does not match its length")
    if action not in ACTION_NAMES:
        raise RingError("unknown verdict action")
    if action == ACTION_REPLY and not 200 <= status <= 599:
        raise RingError("reply status is not in 200..599")
    v = Verdict(
        action=action,
        status=status,
        run_senders=bool(flags & VERDICT_F_SENDERS),
        decode_body=bool(flags & VERDICT_F_DECODE),
    )
    pos = VERDICT.size
    bodies = 0
    for _ in range(nrec):
        if len(buf) - pos < RECORD.size:
            raise RingError("record lengths overrun the verdict")
        t, klen, vlen = RECORD.unpack_from(buf, pos)
        pos += RECORD.size
        if klen > len(buf) - pos or vlen > len(buf) - pos - klen:
            raise RingError("record lengths overrun the verdict")
        k, val = buf[pos : pos + klen], buf[pos + klen : pos + klen + vlen]
        pos += klen + vlen
        # names and values as nginx sees them: bytes, read as latin-1
        key, text = k.decode("latin-1"), val.decode("latin-1")
        bad_value = bad_char(text) is not None
        if t == REC_UPSTREAM:
            if klen or v.upstream is not None or not is_upstream_name(text):
                raise RingError("bad upstream name")
            v.upstream = text
        elif t == REC_META:
            if not is_metadata_key(key) or bad_value:
                raise RingError("bad metadata key or value")
            v.metadata[key] = text
        elif t in (REC_REQ_SET, REC_RESP_ADD, REC_RESP_SET, REC_REPLY_HEADER):
            if not is_header_name(key) or bad_value:
                raise RingError("bad header name or value")
            {
                REC_REQ_SET: v.request_set,
                REC_RESP_ADD: v.response_add,
                REC_RESP_SET: v.response_set,
                REC_REPLY_HEADER: v.reply_headers,
            }[t].append((key, text))
        elif t in (REC_REQ_DEL, REC_RESP_DEL):
            if not is_header_name(key) or vlen:
                raise RingError("bad header name to remove")
            (
                v.request_remove if t == REC_REQ_DEL else v.response_remove
            ).append(key)
        elif t == REC_REPLY_BODY:
            bodies += 1
            if klen or bodies > 1:
                raise RingError("bad reply body record")
            v.reply_body = val
        elif t == REC_RESP_BODY:
            if klen or v.response_body is not None:
                raise RingError("bad response body record")
            v.response_body = val
        elif t == REC_LOG:
            if klen:
                raise RingError("bad log record")
            v.log = val.decode("utf-8", "replace")
        else:
            raise RingError("unknown record type")
    if pos != len(buf):
        raise RingError("record lengths overrun the verdict")
    return v


# endpoints of the region's endpoint table (shm_ring.h, mosn_endpoint_t)


def endpoint_app(app):
    """An app name as the table stores it: 1..63 bytes of UTF-8, no NUL."""
    if not isinstance(app, str):
        raise RingError("an app name is a string, not %s" % type(app).__name__)
    raw = app.encode("utf-8")
    if not 0 < len(raw) < EP_APP_NAME_MAX or b"\0" in raw:
        raise RingError(
            "app name %r must be 1..%d bytes, no NUL"
            % (app, EP_APP_NAME_MAX - 1)
        )
    return raw


def endpoint_spec(host, port, site):
    """(family, 16 address bytes, port, site bytes) of an endpoint given
    as an IPv4 or IPv6 address, a port and a site name; RingError if it
    is not one."""
    if not isinstance(host, str):
        raise RingError(
            "endpoint address must be a string, not %s" % type(host).__name__
        )
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addr = socket.inet_pton(socket.AF_INET, text)
        family = EP_INET
    except OSError:
        try:
            addr = socket.inet_pton(socket.AF_INET6, text)
            family = EP_INET6
        except OSError:
            raise RingError(
                "endpoint address %r is not an IPv4 or IPv6 address" % (host,)
            ) from None
    if (
        isinstance(port, bool)
        or not isinstance(port, int)
        or not 1 <= port <= 65535
    ):
        raise RingError("endpoint port %r is not in 1..65535" % (port,))
    if not isinstance(site, str):
        raise RingError(
            "site name must be a string, not %s" % type(site).__name__
        )
    raw = site.encode("utf-8")
    if not 0 < len(raw) < EP_SITE_MAX or b"\0" in raw:
        raise RingError(
            "site name %r must be 1..%d bytes, no NUL"
            % (site, EP_SITE_MAX - 1)
        )
    return family, addr.ljust(16, b"\0"), port, raw


def endpoint_host(family, addr):
    """The text of an endpoint's address, as written by endpoint_spec."""
    if family == EP_INET:
        return socket.inet_ntop(socket.AF_INET, bytes(addr[:4]))
    return socket.inet_ntop(socket.AF_INET6, bytes(addr[:16]))
