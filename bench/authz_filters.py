"""Filters for bench/async_bench.py: the ext_authz check written as a
plain (blocking) filter, as a worker without an event loop had to do it
(one request at a time per worker: its rate is 1 / the service's delay),
a filter that awaits a timer instead of a service (what awaiting costs
without the I/O), and the ratelimit filter on redis-py's client, to
compare the clients."""

import asyncio
import http.client

from pyworker import CONTINUE, STOP, StreamReceiverFilter, register_filter
from pyworker.filters.ratelimit import SCRIPT, RateLimitFilter


@register_filter("bench_blocking_authz")
class BlockingAuthz(StreamReceiverFilter):
    def __init__(self, config):
        self.port = config["port"]
        self.conn = None

    def on_receive(self, ctx, headers, buf, trailers):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=2
            )
        try:
            self.conn.request(
                "GET",
                "/auth" + ctx.path,
                headers={"Authorization": headers.get("authorization") or ""},
            )
            answer = self.conn.getresponse()
            answer.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            self.handler.send_hijack_reply(403)
            return STOP
        if answer.status != 200:
            self.handler.send_hijack_reply(answer.status)
            return STOP
        headers.set("X-User", answer.getheader("X-User", ""))
        return CONTINUE


@register_filter("bench_await_timer")
class AwaitTimer(StreamReceiverFilter):
    """Awaits ``delay`` seconds, as ext_authz awaits the service, then
    sets the header ext_authz copies from its answer: the same task, the
    same verdict, no I/O."""

    def __init__(self, config):
        self.delay = config["delay"]

    async def on_receive(self, ctx, headers, buf, trailers):
        await asyncio.sleep(self.delay)
        headers.set("X-User", "bench")
        return CONTINUE


@register_filter("bench_ratelimit_redispy")
class RedisPyRateLimit(RateLimitFilter):
    """The ratelimit filter counting through redis-py's asyncio client and
    its connection pool (``pool`` connections) instead of
    pyworker.redisclient: the same script, the same round trip per
    request, what the library costs."""

    __slots__ = ("pool_size", "script")

    def __init__(self, config):
        config = dict(config)
        self.pool_size = config.pop("pool", 64)
        super().__init__(config)
        self.script = None

    async def start(self):
        import redis.asyncio

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.pool_size,
            timeout=self.timeout,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
        )
        self.redis = redis.asyncio.Redis(connection_pool=pool)
        self.script = self.redis.register_script(SCRIPT)

    async def stop(self):
        client, self.redis = self.redis, None
        if client is not None:
            await client.aclose()

    async def _count(self, keys, units):
        import redis.exceptions

        try:
            async with asyncio.timeout(self.timeout):
                return await self.script(keys=keys, args=[1] + units)
        except redis.exceptions.RedisError as exc:
            # the filter's failure path takes OSError and what it names
            raise ConnectionError(str(exc)) from exc
