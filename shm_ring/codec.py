"""Request records and verdicts as bytes, in pure Python.

The layouts are those of shm_ring.h.  The hot path reads and writes them
in place (Cython); this module is the reference used by the pure-Python
fallback, by test producers and by the round-trip tests.
"""

import re
import socket
import struct

REQ_HEADER = struct.Struct("<IIQII" + "II" * 9)
HEADER_ENTRY = struct.Struct("<III")
VERDICT_HEADER = struct.Struct("<IHHII")
RECORD = struct.Struct("<B3xII")

FIELDS = ("chain", "method", "path", "query", "remote_addr", "protocol",
          "body", "headers", "meta")
F_BODY = 0x1                # the body field holds the (response's) body
F_RESPONSE = 0x2            # a response record (the response phase)
F_META = 0x4                # its meta field: the request's metadata
F_SENDERS = 0x1             # verdict flag: run the response phase
F_DECODE = 0x2              # verdict flag: hold compressed bodies too

CONTINUE, REPLY, ERROR = 0, 1, 2
REC_UPSTREAM, REC_META, REC_REQ_SET, REC_REQ_DEL = 1, 2, 3, 4
REC_RESP_ADD, REC_REPLY_HEADER, REC_REPLY_BODY, REC_LOG = 5, 6, 7, 8
REC_RESP_SET, REC_RESP_DEL, REC_RESP_BODY = 9, 10, 11
MAX_RECORDS = 256

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,255}\Z")
_META_KEY = re.compile(rb"[A-Za-z0-9_]{1,64}\Z")
_UPSTREAM = re.compile(rb"[A-Za-z0-9_.:\[\]-]{1,255}\Z")
_BAD_VALUE = re.compile(rb"[\r\n\0]")


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
    """A verdict as plain data (the filter API has a richer one)."""

    __slots__ = ("action", "status", "upstream", "metadata", "request_set",
                 "request_remove", "response_add", "reply_headers",
                 "reply_body", "log", "response_set", "response_remove",
                 "run_senders", "response_body", "decode_body")

    def __init__(self, action=CONTINUE, status=0, upstream=None,
                 metadata=None, request_set=(), request_remove=(),
                 response_add=(), reply_headers=(), reply_body=b"", log="",
                 response_set=(), response_remove=(), run_senders=False,
                 response_body=None, decode_body=False):
        self.action = action
        self.status = status
        self.upstream = upstream
        self.metadata = dict(metadata or {})
        self.request_set = list(request_set)
        self.request_remove = list(request_remove)
        self.response_add = list(response_add)
        self.reply_headers = list(reply_headers)
        self.reply_body = reply_body
        self.log = log
        self.response_set = list(response_set)
        self.response_remove = list(response_remove)
        self.run_senders = run_senders
        self.response_body = response_body
        self.decode_body = decode_body

    @classmethod
    def error(cls, why):
        return cls(action=ERROR, log=why)

    def __eq__(self, other):
        return all(getattr(self, k) == getattr(other, k)
                   for k in self.__slots__)

    def __repr__(self):
        return "Verdict(%s)" % ", ".join(
            "%s=%r" % (k, getattr(self, k)) for k in self.__slots__
            if getattr(self, k))


def _b(s):
    return s if isinstance(s, bytes) else s.encode("latin-1")


def encode_request(chain="", method="GET", path="/", query="",
                   remote_addr="127.0.0.1", protocol="HTTP/1.1",
                   headers=(), body=None, request_id=0, status=None,
                   metadata=None):
    """A request record as the nginx module writes it; with a status, the
    response record of the response phase (headers and body: the
    response's), which carries the request's metadata."""
    strings = [_b(chain), _b(method), _b(path), _b(query), _b(remote_addr),
               _b(protocol), _b(body or b"")]
    meta = encode_metadata(metadata or {})
    fields = []
    off = REQ_HEADER.size
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
    flags = (F_BODY if body is not None else 0) \
        | (F_RESPONSE if status is not None else 0) \
        | (F_META if metadata else 0)
    head = REQ_HEADER.pack(off, len(pairs), request_id, flags, status or 0,
                           *flat)
    return b"".join([head] + strings + table
                    + [n + v for n, v in pairs] + [meta])


def decode_request(buf):
    """The fields of a request record, checked against its length."""
    if len(buf) < REQ_HEADER.size:
        raise RingError("request record is shorter than its header")
    vals = REQ_HEADER.unpack_from(buf)
    rec_len, nheaders, request_id, flags = vals[0], vals[1], vals[2], vals[3]
    if rec_len < REQ_HEADER.size or rec_len > len(buf):
        raise RingError("request record length is out of bounds")
    fields = list(zip(vals[5::2], vals[6::2]))
    for off, n in fields:
        if off + n > rec_len:
            raise RingError("request field overruns the record")
    out = {"request_id": request_id,
           "status": vals[4] if flags & F_RESPONSE else None}
    for name, (off, n) in zip(FIELDS, fields):
        if name != "headers":
            out[name] = bytes(buf[off:off + n])
    out["metadata"] = decode_metadata(out.pop("meta")) \
        if flags & F_META else None
    if not flags & F_BODY:
        out["body"] = None
    table_off, table_len = fields[7]
    if table_len != nheaders * HEADER_ENTRY.size:
        raise RingError("header table length does not match its count")
    if table_off % 4:
        raise RingError("header table is not 4-byte aligned")
    headers = []
    for i in range(nheaders):
        off, nlen, vlen = HEADER_ENTRY.unpack_from(
            buf, table_off + i * HEADER_ENTRY.size)
        if off + nlen + vlen > rec_len:
            raise RingError("header overruns the record")
        headers.append((bytes(buf[off:off + nlen]),
                        bytes(buf[off + nlen:off + nlen + vlen])))
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
        return CONTINUE, 0, 0, recs
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
    if v.action == REPLY:
        recs += [(REC_REPLY_HEADER, _b(k), _b(val))
                 for k, val in v.reply_headers]
        if v.reply_body:
            recs.append((REC_REPLY_BODY, b"", _b(v.reply_body)))
    if v.log:
        recs.append((REC_LOG, b"", v.log.encode("utf-8", "replace")))
    flags = 0
    if v.action == CONTINUE and v.run_senders:
        flags = F_SENDERS | (F_DECODE if v.decode_body else 0)
    return v.action, v.status, flags, recs


def encode_verdict(v):
    action, status, flags, recs = verdict_records(v)
    body = b"".join(RECORD.pack(t, len(k), len(val)) + k + val
                    for t, k, val in recs)
    return VERDICT_HEADER.pack(VERDICT_HEADER.size + len(body), action,
                               status, len(recs), flags) + body


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
    if len(buf) < VERDICT_HEADER.size:
        raise RingError("verdict header does not match its length")
    length, action, status, nrec, flags = VERDICT_HEADER.unpack_from(buf)
    if length != len(buf) or nrec > MAX_RECORDS:
        raise RingError("verdict header does not match its length")
    if action not in (CONTINUE, REPLY, ERROR):
        raise RingError("unknown verdict action")
    if action == REPLY and not 200 <= status <= 599:
        raise RingError("reply status is not in 200..599")
    v = Verdict(action=action, status=status,
                run_senders=bool(flags & F_SENDERS),
                decode_body=bool(flags & F_DECODE))
    pos = VERDICT_HEADER.size
    bodies = 0
    for _ in range(nrec):
        if len(buf) - pos < RECORD.size:
            raise RingError("record lengths overrun the verdict")
        t, klen, vlen = RECORD.unpack_from(buf, pos)
        pos += RECORD.size
        if klen > len(buf) - pos or vlen > len(buf) - pos - klen:
            raise RingError("record lengths overrun the verdict")
        k, val = buf[pos:pos + klen], buf[pos + klen:pos + klen + vlen]
        pos += klen + vlen
        bad_value = _BAD_VALUE.search(val) is not None
        if t == REC_UPSTREAM:
            if klen or v.upstream is not None or not _UPSTREAM.match(val):
                raise RingError("bad upstream name")
            v.upstream = val.decode("latin-1")
        elif t == REC_META:
            if not _META_KEY.match(k) or bad_value:
                raise RingError("bad metadata key or value")
            v.metadata[k.decode()] = val.decode("latin-1")
        elif t in (REC_REQ_SET, REC_RESP_ADD, REC_RESP_SET,
                   REC_REPLY_HEADER):
            if not _TOKEN.match(k) or bad_value:
                raise RingError("bad header name or value")
            pair = (k.decode("latin-1"), val.decode("latin-1"))
            {REC_REQ_SET: v.request_set, REC_RESP_ADD: v.response_add,
             REC_RESP_SET: v.response_set,
             REC_REPLY_HEADER: v.reply_headers}[t].append(pair)
        elif t in (REC_REQ_DEL, REC_RESP_DEL):
            if not _TOKEN.match(k) or vlen:
                raise RingError("bad header name to remove")
            (v.request_remove if t == REC_REQ_DEL
             else v.response_remove).append(k.decode("latin-1"))
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

EP_INET, EP_INET6 = 4, 6
EP_APP_NAME_MAX = 64        # bytes, the NUL included
EP_SITE_MAX = 32
ENDPOINT = struct.Struct("<BBHI16s")


def endpoint_app(app):
    """An app name as the table stores it: 1..63 bytes of UTF-8, no NUL."""
    if not isinstance(app, str):
        raise RingError("an app name is a string, not %s"
                        % type(app).__name__)
    raw = app.encode("utf-8")
    if not 0 < len(raw) < EP_APP_NAME_MAX or b"\0" in raw:
        raise RingError("app name %r must be 1..%d bytes, no NUL"
                        % (app, EP_APP_NAME_MAX - 1))
    return raw


def endpoint_spec(host, port, site):
    """(family, 16 address bytes, port, site bytes) of an endpoint given
    as an IPv4 or IPv6 address, a port and a site name; RingError if it
    is not one."""
    if not isinstance(host, str):
        raise RingError("endpoint address must be a string, not %s"
                        % type(host).__name__)
    text = host[1:-1] if host.startswith("[") and host.endswith("]") \
        else host
    try:
        addr = socket.inet_pton(socket.AF_INET, text)
        family = EP_INET
    except OSError:
        try:
            addr = socket.inet_pton(socket.AF_INET6, text)
            family = EP_INET6
        except OSError:
            raise RingError("endpoint address %r is not an IPv4 or IPv6 "
                            "address" % (host,)) from None
    if isinstance(port, bool) or not isinstance(port, int) \
            or not 1 <= port <= 65535:
        raise RingError("endpoint port %r is not in 1..65535" % (port,))
    if not isinstance(site, str):
        raise RingError("site name must be a string, not %s"
                        % type(site).__name__)
    raw = site.encode("utf-8")
    if not 0 < len(raw) < EP_SITE_MAX or b"\0" in raw:
        raise RingError("site name %r must be 1..%d bytes, no NUL"
                        % (site, EP_SITE_MAX - 1))
    return family, addr.ljust(16, b"\0"), port, raw


def endpoint_host(family, addr):
    """The text of an endpoint's address, as written by endpoint_spec."""
    if family == EP_INET:
        return socket.inet_ntop(socket.AF_INET, bytes(addr[:4]))
    return socket.inet_ntop(socket.AF_INET6, bytes(addr[:16]))
