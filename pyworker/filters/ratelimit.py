"""The ``ratelimit`` filter: a limit shared by every gateway of a fleet,
kept in Redis, one round trip per request.

Requests are counted by descriptors, as Envoy's rate limit filter builds
them from a route's rate limit actions
(https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-ratelimit-action),
and limited per descriptor as Envoy's rate limit service does
(https://github.com/envoyproxy/ratelimit: a count per unit of time, in a
fixed window).  Config::

    {"type": "ratelimit",
     "config": {
       "domain": "edge",
       "redis": {"url": "redis://127.0.0.1:6379/0", "timeout": "50ms"},
       "rate_limits": [
         {"actions": [{"request_headers": {"header_name": "x-user",
                                           "descriptor_key": "user"}}],
          "limit": {"requests_per_unit": 100, "unit": "second"}},
         {"actions": [{"generic_key": {"descriptor_value": "all"}}],
          "limit": {"requests_per_unit": 10000, "unit": "minute"}}],
       "failure_mode_deny": false,
       "rate_limited_status": 429,
       "status_on_error": 500,
       "rate_limit_headers": true}}

Actions (each makes one (key, value) entry of the descriptor):
``request_headers {header_name, descriptor_key, skip_if_absent}``,
``remote_address {}`` (key ``remote_address``), ``generic_key
{descriptor_key = "generic_key", descriptor_value}``,
``header_value_match {descriptor_key = "header_match", descriptor_value,
headers: [{name, exact_match | prefix_match | present_match}],
expect_match = true}`` and ``metadata {descriptor_key, key,
default_value}`` (a key of ``ctx.metadata``, set by an earlier filter).
As in Envoy, an action that finds nothing drops its whole descriptor
(``skip_if_absent`` drops only its entry), so that request is not counted
against that limit.

Every descriptor of a request is counted in one round trip: one server
side script (EVALSHA) increments each descriptor's counter for the
current window, by Redis's clock, so that every gateway counts in the
same windows.  The commands of requests in flight together share a
connection and its round trips (pyworker.redisclient: pipelined, one
write per turn of the event loop).  A request over any limit gets
``rate_limited_status`` (429) with ``Retry-After`` (seconds until the
window ends) and, with ``rate_limit_headers``, ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset``
(draft-ietf-httpapi-ratelimit-headers), which allowed requests also
carry, for their most constrained limit.

If Redis cannot be reached or does not answer within ``redis.timeout``,
the request goes on (``failure_mode_deny: false``, Envoy's default) or
gets ``status_on_error`` (500).  Counted in ``events``: ok, over_limit,
failure_allowed, failure_denied.
"""

import hashlib
import logging
import math
import time

from pyworker.api import CONTINUE, STOP, ConfigError, StreamReceiverFilter
from pyworker.api import json_type
from pyworker.filters import options
from pyworker.redisclient import RedisError, parse_url
from pyworker.registry import register_filter

log = logging.getLogger("pyworker.filter.ratelimit")

UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

# KEYS: one counter name per descriptor; ARGV: hits, then the unit (in
# seconds) of each.  Returns, per descriptor, the count in the current
# window and the milliseconds left in it.  The window is by Redis's clock,
# the same for every gateway.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local hits = tonumber(ARGV[1])
local out = {}
for i, name in ipairs(KEYS) do
  local unit = tonumber(ARGV[i + 1])
  local window = math.floor(now / unit)
  local key = name .. ':' .. window
  local n = redis.call('INCRBY', key, hits)
  if n == hits then
    redis.call('EXPIRE', key, unit + 1)
  end
  out[#out + 1] = n
  out[#out + 1] = math.ceil(((window + 1) * unit - now) * 1000)
end
return out
"""

SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()

# what a failed count raises: ConnectionError and TimeoutError from the
# connection, RedisError from Redis, ValueError from a bad URL
_FAILURES = (OSError, TimeoutError, ValueError, RedisError)


class _Limit:
    """One rate_limits entry: the actions that build its descriptor, and
    the limit on it."""

    __slots__ = ("actions", "requests", "unit", "name")

    def __init__(self, entry, path):
        if not isinstance(entry, dict):
            raise ConfigError(
                f"must be an object with actions and limit, "
                f"not {json_type(entry)}",
                path,
            )
        actions = entry.get("actions")
        if not isinstance(actions, list) or not actions:
            raise ConfigError(
                "must be a non-empty array of actions", f"{path}.actions"
            )
        self.actions = [
            _action(a, f"{path}.actions[{i}]") for i, a in enumerate(actions)
        ]
        limit = options.obj(entry, "limit")
        try:
            self.requests = options.integer(
                limit, "requests_per_unit", None, 0, 2**31
            )
            unit = limit.get("unit")
            if unit not in UNITS:
                raise ConfigError(
                    f"must be one of {', '.join(UNITS)}, not {unit!r}", "unit"
                )
        except ConfigError as exc:
            raise exc.located(f"{path}.limit") from None
        self.unit = UNITS[unit]
        self.name = None

    def descriptor(self, ctx, headers):
        """The (key, value) entries of this request, or None if an action
        found nothing."""
        entries = []
        for action in self.actions:
            entry = action(ctx, headers)
            if entry is None:
                return None
            if entry is not _SKIP:
                entries.append(entry)
        return entries


_SKIP = object()


def _action(action, path):
    if not isinstance(action, dict) or len(action) != 1:
        raise ConfigError("must be an object with one action", path)
    ((kind, spec),) = action.items()
    here = f"{path}.{kind}"
    if not isinstance(spec, dict):
        raise ConfigError(f"must be an object, not {json_type(spec)}", here)
    try:
        return _ACTIONS[kind](spec)
    except KeyError:
        raise ConfigError(
            f"unknown action; one of {', '.join(_ACTIONS)}", here
        ) from None
    except ConfigError as exc:
        raise exc.located(here) from None


def _request_headers(spec):
    name = options.string(spec, "header_name")
    key = options.string(spec, "descriptor_key")
    skip = options.flag(spec, "skip_if_absent")

    def action(ctx, headers):
        value = headers.get(name)
        if value is None:
            return _SKIP if skip else None
        return (key, value)

    return action


def _remote_address(spec):
    def action(ctx, headers):
        return ("remote_address", ctx.remote_addr) if ctx.remote_addr else None

    return action


def _generic_key(spec):
    key = options.string(spec, "descriptor_key", "generic_key")
    value = options.string(spec, "descriptor_value")
    entry = (key, value)
    return lambda ctx, headers: entry


def _header_value_match(spec):
    key = options.string(spec, "descriptor_key", "header_match")
    value = options.string(spec, "descriptor_value")
    expect = options.flag(spec, "expect_match", True)
    rules = spec.get("headers")
    if not isinstance(rules, list) or not rules:
        raise ConfigError("must be a non-empty array", "headers")
    tests = []
    for i, rule in enumerate(rules):
        here = f"headers[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError("must be an object", here)
        name = options.string(rule, "name")
        if "exact_match" in rule:
            want = options.string(rule, "exact_match")
            tests.append(lambda h, n=name, w=want: h.get(n) == w)
        elif "prefix_match" in rule:
            want = options.string(rule, "prefix_match")
            tests.append(
                lambda h, n=name, w=want: (h.get(n) or "\0").startswith(w)
            )
        elif rule.get("present_match", True):
            tests.append(lambda h, n=name: h.get(n) is not None)
        else:
            tests.append(lambda h, n=name: h.get(n) is None)
    entry = (key, value)

    def action(ctx, headers):
        matched = all(test(headers) for test in tests)
        return entry if matched == expect else None

    return action


def _metadata(spec):
    key = options.string(spec, "descriptor_key")
    name = options.string(spec, "key")
    default = spec.get("default_value")
    if default is not None and not isinstance(default, str):
        raise ConfigError("must be a string", "default_value")

    def action(ctx, headers):
        value = ctx.metadata.get(name, default)
        return (key, value) if value is not None else None

    return action


_ACTIONS = {
    "request_headers": _request_headers,
    "remote_address": _remote_address,
    "generic_key": _generic_key,
    "header_value_match": _header_value_match,
    "metadata": _metadata,
}


def _escape(text):
    # descriptor parts are joined with ':' and '='
    return text.replace("%", "%25").replace(":", "%3A").replace("=", "%3D")


@register_filter("ratelimit")
class RateLimitFilter(StreamReceiverFilter):
    __slots__ = (
        "domain",
        "limits",
        "url",
        "timeout",
        "failure_mode_deny",
        "limited_status",
        "status_on_error",
        "headers_on",
        "redis",
        "events",
        "handler",
        "_logged",
        "_unlogged",
    )

    def __init__(self, config):
        self.domain = options.string(config, "domain")
        if not self.domain:
            raise ConfigError("must not be empty", "domain")
        redis = options.obj(config, "redis")
        try:
            self.url = options.string(redis, "url", "redis://127.0.0.1:6379/0")
            try:
                parse_url(self.url)
            except ValueError as exc:
                raise ConfigError(str(exc), "url") from None
            self.timeout = options.duration(
                redis, "timeout", 0.05, low=0.001, high=60.0
            )
        except ConfigError as exc:
            raise exc.located("redis") from None
        entries = config.get("rate_limits")
        if not isinstance(entries, list) or not entries:
            raise ConfigError("must be a non-empty array", "rate_limits")
        self.limits = [
            _Limit(entry, f"rate_limits[{i}]")
            for i, entry in enumerate(entries)
        ]
        self.failure_mode_deny = options.flag(config, "failure_mode_deny")
        self.limited_status = options.status(
            config, "rate_limited_status", 429
        )
        self.status_on_error = options.status(config, "status_on_error", 500)
        self.headers_on = options.flag(config, "rate_limit_headers", True)
        self.redis = None
        self.events = {
            "ok": 0,
            "over_limit": 0,
            "failure_allowed": 0,
            "failure_denied": 0,
        }
        self._logged = 0.0
        self._unlogged = 0

    # -- the worker's life ---------------------------------------------------

    async def start(self):
        from pyworker.redisclient import RedisClient

        self.redis = RedisClient(self.url, self.timeout)

    async def stop(self):
        client, self.redis = self.redis, None
        if client is not None:
            await client.close()

    # -- a request -----------------------------------------------------------

    async def on_receive(self, ctx, headers, buf, trailers):
        keys, units, limits = [], [], []
        prefix = "ratelimit:" + _escape(self.domain)
        for limit in self.limits:
            entries = limit.descriptor(ctx, headers)
            if entries is None:
                continue
            keys.append(
                prefix
                + "".join(
                    ":%s=%s" % (_escape(k), _escape(v)) for k, v in entries
                )
            )
            units.append(limit.unit)
            limits.append(limit.requests)
        if not keys:
            return CONTINUE
        if self.redis is None:
            await self.start()
        try:
            counts = await self._count(keys, units)
        except _FAILURES as exc:
            return self._failed(ctx, exc)
        # the most constrained limit: the least left, then the longest wait
        worst = None
        for i, allowed in enumerate(limits):
            used, reset_ms = int(counts[2 * i]), int(counts[2 * i + 1])
            left = allowed - used
            if worst is None or (left, reset_ms) < (worst[0], worst[1]):
                worst = (left, reset_ms, allowed)
        left, reset_ms, allowed = worst
        reset = max(1, math.ceil(reset_ms / 1000))
        if left < 0:
            self.events["over_limit"] += 1
            reply = [("Retry-After", str(reset))]
            if self.headers_on:
                reply += _rate_headers(allowed, 0, reset)
            self.handler.send_hijack_reply(self.limited_status, reply)
            return STOP
        self.events["ok"] += 1
        if self.headers_on:
            for name, value in _rate_headers(allowed, left, reset):
                ctx.add_response_header(name, value)
        return CONTINUE

    async def _count(self, keys, units):
        """The script's answer for these counters: EVALSHA, or EVAL once
        if Redis does not have the script (yet, or any more)."""
        redis = self.redis
        try:
            return await redis.call(
                "EVALSHA", SCRIPT_SHA, len(keys), *keys, 1, *units
            )
        except RedisError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # EVAL runs it and keeps it for the EVALSHA of later requests
        return await redis.call("EVAL", SCRIPT, len(keys), *keys, 1, *units)

    def _failed(self, ctx, exc):
        now = time.monotonic()
        if now - self._logged >= 1.0:
            log.warning(
                "ratelimit: Redis at %s failed on request %s: %s%s; %s",
                self.url,
                ctx.request_id,
                exc if str(exc) else type(exc).__name__,
                " (and %d more since the last such line)" % self._unlogged
                if self._unlogged
                else "",
                "denied with %d" % self.status_on_error
                if self.failure_mode_deny
                else "allowed (failure_mode_deny is false)",
            )
            self._logged, self._unlogged = now, 0
        else:
            self._unlogged += 1
        if self.failure_mode_deny:
            self.events["failure_denied"] += 1
            self.handler.send_hijack_reply(self.status_on_error)
            return STOP
        self.events["failure_allowed"] += 1
        return CONTINUE


def _rate_headers(limit, remaining, reset):
    return [
        ("RateLimit-Limit", str(limit)),
        ("RateLimit-Remaining", str(max(0, remaining))),
        ("RateLimit-Reset", str(reset)),
    ]
