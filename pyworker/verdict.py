"""The verdict a chain hands back for one request, and the checks on it.

``check`` refuses anything nginx must not apply: header injection (CR, LF,
NUL), names that are not HTTP tokens, characters that latin-1 cannot carry,
an impossible status, an oversized body, malformed metadata or upstream
names, and edits of the headers nginx owns for framing and hop-by-hop
handling. The nginx module checks the encoded verdict again; this check is
here so that a refusal names the Python filter, not a byte offset.
"""

from dataclasses import dataclass

from shm_ring.abi import VERDICT_MAX_RECORDS

# the verdict is the ring's (shm_ring.codec), re-exported for filters
from shm_ring.codec import (  # noqa: F401
    ACTION_CONTINUE,
    ACTION_ERROR,
    ACTION_NAMES,
    ACTION_REPLY,
    Verdict,
    bad_char,
    is_header_name,
    is_metadata_key,
    is_upstream_name,
)


@dataclass(frozen=True, slots=True)
class Limits:
    max_reply_body: int = 65536
    max_records: int = VERDICT_MAX_RECORDS
    # a compressed response body decoded for the filters, at most
    max_decoded_body: int = 1 << 20


DEFAULT_LIMITS = Limits()


class VerdictError(ValueError):
    """A verdict nginx must not apply; ``reason`` says why."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


# nginx owns the message framing and the hop-by-hop handling of the request
_RESPONSE_OWNED = frozenset(
    {"content-length", "transfer-encoding", "connection"}
)
_REQUEST_OWNED = _RESPONSE_OWNED | {"host"}


def check(verdict, limits=DEFAULT_LIMITS):
    """Raises ``VerdictError`` if nginx must not apply ``verdict``."""
    records = len(verdict.metadata)
    if verdict.upstream is not None:
        upstream = verdict.upstream
        if not isinstance(upstream, str) or not is_upstream_name(upstream):
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
        if not (value.isascii() and value.isprintable()) and bad_char(value):
            raise VerdictError(
                f"metadata {key!r}: value {value!r} {_bad_value_reason(value)}"
            )
    if verdict.request_set:
        _check_lines(
            verdict.request_set, "request header", _REQUEST_OWNED, "set"
        )
        records += len(verdict.request_set)
    if verdict.request_remove:
        _check_names(verdict.request_remove, "request header", _REQUEST_OWNED)
        records += len(verdict.request_remove)
    if verdict.response_add:
        _check_lines(
            verdict.response_add, "response header", _RESPONSE_OWNED, "add"
        )
        records += len(verdict.response_add)
    if verdict.response_set:
        _check_lines(
            verdict.response_set, "response header", _RESPONSE_OWNED, "set"
        )
        records += len(verdict.response_set)
    if verdict.response_remove:
        _check_names(
            verdict.response_remove, "response header", _RESPONSE_OWNED
        )
        records += len(verdict.response_remove)
    if verdict.action == ACTION_REPLY:
        status = verdict.status
        if type(status) is not int or not 200 <= status <= 599:
            raise VerdictError(
                f"reply status {status!r} is not an integer in 200..599"
            )
        _check_lines(
            verdict.reply_headers, "reply header", _RESPONSE_OWNED, "send"
        )
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
        if (
            key not in _good_meta_keys
            or type(value) is not str
            or not (value.isascii() and value.isprintable())
        ):
            return False
    return True


def _check_meta_key(key):
    if type(key) is not str:
        raise VerdictError(
            f"metadata {key!r}: keys must be str, not {type(key).__name__}"
        )
    if not is_metadata_key(key):
        raise VerdictError(
            f"metadata key {key!r} is not 1..64 characters of A-Z a-z 0-9 _"
        )
    if len(_good_meta_keys) < _GOOD_META_KEYS_MAX:
        _good_meta_keys.add(key)


# header names come from a few filters: a valid name is not matched again
_good_header_names = set()
_GOOD_HEADER_NAMES_MAX = 1024


def _is_new_header_name(name):
    if not is_header_name(name):
        return False
    if len(_good_header_names) < _GOOD_HEADER_NAMES_MAX:
        _good_header_names.add(name)
    return True


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
        # printable ASCII, the common case, cannot be bad; search the rest
        if not (value.isascii() and value.isprintable()) and bad_char(value):
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
    if name not in _good_header_names and not _is_new_header_name(name):
        if bad_char(name):
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
    char = bad_char(text)
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
