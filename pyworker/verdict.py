"""The verdict a chain hands back for one request, and the checks on it.

``check`` refuses anything nginx must not apply: header injection (CR, LF,
NUL), names that are not HTTP tokens, characters that latin-1 cannot carry,
an impossible status, an oversized body, malformed metadata or upstream
names, and edits of the headers nginx owns for framing and hop-by-hop
handling. The nginx module checks the encoded verdict again; this check is
here so that a refusal names the Python filter, not a byte offset.
"""

import re
from dataclasses import dataclass

ACTION_CONTINUE = 0
ACTION_REPLY = 1
ACTION_ERROR = 2

ACTION_NAMES = {ACTION_CONTINUE: "CONTINUE", ACTION_REPLY: "REPLY",
                ACTION_ERROR: "ERROR"}


@dataclass(frozen=True, slots=True)
class Limits:
    max_reply_body: int = 65536
    max_records: int = 256
    # a compressed response body decoded for the filters, at most
    max_decoded_body: int = 1 << 20


DEFAULT_LIMITS = Limits()


class VerdictError(ValueError):
    """A verdict nginx must not apply; ``reason`` says why."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


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
    """

    __slots__ = ("action", "status", "upstream", "metadata", "request_set",
                 "request_remove", "response_add", "reply_headers",
                 "reply_body", "log", "response_set", "response_remove",
                 "run_senders", "response_body", "decode_body")

    def __init__(self, action=ACTION_CONTINUE, status=0, upstream=None,
                 metadata=None, request_set=None, request_remove=None,
                 response_add=None, reply_headers=None, reply_body=b"",
                 log="", response_set=None, response_remove=None,
                 run_senders=False, response_body=None, decode_body=False):
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

# RFC 9110 token; 255 is the ring's limit on a header name
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,255}").fullmatch
# CR, LF and NUL split or truncate headers; above U+00FF latin-1 cannot encode
_BAD_VALUE = re.compile("[\r\n\x00\u0100-\U0010ffff]").search
_META_KEY = re.compile(r"[A-Za-z0-9_]{1,64}").fullmatch
_UPSTREAM = re.compile(r"[A-Za-z0-9_.:\[\]-]{1,255}").fullmatch


def is_metadata_key(key):
    """Whether ``key`` can be a metadata key ($mosn_meta_<key> in nginx)."""
    return isinstance(key, str) and _META_KEY(key) is not None


# nginx owns the message framing and the hop-by-hop handling of the request
_RESPONSE_OWNED = frozenset({"content-length", "transfer-encoding",
                             "connection"})
_REQUEST_OWNED = _RESPONSE_OWNED | {"host"}


def check(verdict, limits=DEFAULT_LIMITS):
    """Raises ``VerdictError`` if nginx must not apply ``verdict``."""
    records = len(verdict.metadata)
    if verdict.upstream is not None:
        upstream = verdict.upstream
        if not isinstance(upstream, str) or not _UPSTREAM(upstream):
            raise VerdictError(
                f"upstream name {upstream!r} is not 1..255 characters "
                f"of A-Z a-z 0-9 _ . : [ ] -"
            )
        records += 1
    for key, value in verdict.metadata.items():
        if key not in _good_meta_keys:
            _check_meta_key(key)
        if type(value) is not str:
            raise VerdictError(
                f"metadata {key!r}: values must be str, not "
                f"{type(value).__name__}"
            )
        # printable ASCII, the common case, cannot be bad; search the rest
        if not (value.isascii() and value.isprintable()) and _BAD_VALUE(value):
            raise VerdictError(
                f"metadata {key!r}: value {value!r} {_bad_value_reason(value)}"
            )
    if verdict.request_set:
        _check_lines(verdict.request_set, "request header", _REQUEST_OWNED,
                     "set")
        records += len(verdict.request_set)
    if verdict.request_remove:
        _check_names(verdict.request_remove, "request header",
                     _REQUEST_OWNED)
        records += len(verdict.request_remove)
    if verdict.response_add:
        _check_lines(verdict.response_add, "response header",
                     _RESPONSE_OWNED, "add")
        records += len(verdict.response_add)
    if verdict.response_set:
        _check_lines(verdict.response_set, "response header",
                     _RESPONSE_OWNED, "set")
        records += len(verdict.response_set)
    if verdict.response_remove:
        _check_names(verdict.response_remove, "response header",
                     _RESPONSE_OWNED)
        records += len(verdict.response_remove)
    if verdict.action == ACTION_REPLY:
        status = verdict.status
        if type(status) is not int or not 200 <= status <= 599:
            raise VerdictError(
                f"reply status {status!r} is not an integer in 200..599"
            )
        _check_lines(verdict.reply_headers, "reply header", _RESPONSE_OWNED,
                     "send")
        body = verdict.reply_body
        if not isinstance(body, bytes):
            raise VerdictError(
                f"reply body must be bytes, not {type(body).__name__}"
            )
        if len(body) > limits.max_reply_body:
            raise VerdictError(
                f"reply body of {len(body)} bytes is over the limit of "
                f"{limits.max_reply_body}"
            )
        records += len(verdict.reply_headers) + (1 if body else 0)
    elif verdict.action not in (ACTION_CONTINUE, ACTION_ERROR):
        raise VerdictError(f"unknown verdict action {verdict.action!r}")
    if verdict.response_body is not None:
        if not isinstance(verdict.response_body, bytes):
            raise VerdictError(
                f"response body must be bytes, not "
                f"{type(verdict.response_body).__name__}"
            )
        records += 1
    if verdict.log:
        records += 1
    if records > limits.max_records:
        raise VerdictError(
            f"verdict has {records} records, over the limit of "
            f"{limits.max_records}"
        )


# metadata keys come from a few drivers: a valid key is not checked again
_good_meta_keys = set()
_GOOD_META_KEYS_MAX = 1024


def metadata_is_plain(metadata):
    """Whether check() would pass these metadata at a glance: keys seen
    valid before, values printable ASCII str, well under the records'
    limit."""
    if len(metadata) > 64:
        return False
    for key, value in metadata.items():
        if (key not in _good_meta_keys or type(value) is not str
                or not (value.isascii() and value.isprintable())):
            return False
    return True


def _check_meta_key(key):
    if type(key) is not str:
        raise VerdictError(
            f"metadata {key!r}: keys must be str, not {type(key).__name__}"
        )
    if not _META_KEY(key):
        raise VerdictError(
            f"metadata key {key!r} is not 1..64 characters of A-Z a-z 0-9 _"
        )
    if len(_good_meta_keys) < _GOOD_META_KEYS_MAX:
        _good_meta_keys.add(key)


def _check_lines(lines, what, owned, verb):
    for pair in lines:
        if len(pair) != 2:
            raise VerdictError(f"{what} {pair!r} is not a (name, value) pair")
        name, value = pair
        _check_name(name, what, owned, verb)
        if not isinstance(value, str):
            raise VerdictError(
                f"{what} {name!r}: value must be str, not "
                f"{type(value).__name__}"
            )
        if _BAD_VALUE(value):
            raise VerdictError(
                f"{what} {name!r}: value {value!r} {_bad_value_reason(value)}"
            )


def _check_names(names, what, owned):
    for name in names:
        _check_name(name, what, owned, "remove")


def _check_name(name, what, owned, verb):
    if not isinstance(name, str):
        raise VerdictError(
            f"{what} name must be str, not {type(name).__name__}"
        )
    if not _TOKEN(name):
        if _BAD_VALUE(name):
            raise VerdictError(
                f"{what} name {name!r} {_bad_value_reason(name)}"
            )
        raise VerdictError(
            f"{what} name {name!r} is not an HTTP token (RFC 9110)"
        )
    if name.lower() in owned:
        raise VerdictError(
            f"refusing to {verb} {what} {name!r}: nginx owns it "
            f"(framing and hop-by-hop headers cannot be edited by filters)"
        )


def _bad_value_reason(text):
    char = _BAD_VALUE(text).group()
    if char == "\r":
        return "contains CR"
    if char == "\n":
        return "contains LF"
    if char == "\x00":
        return "contains NUL"
    return (
        f"contains {char!r} (U+{ord(char):04X}), above U+00FF, which latin-1 "
        f"cannot encode"
    )
