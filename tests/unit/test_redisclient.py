"""pyworker.redisclient against a real redis-server on a loopback port:
the commands of many callers share one connection and each gets its own
reply; errors, timeouts, cancellations and a lost connection touch only
whom they concern."""

import asyncio
import socket
import time

import pytest

from gateway import free_port
from pyworker.redisclient import RedisClient, RedisError, parse_url
from services import RedisServer, started, until


@pytest.fixture(scope="module")
def redis():
    yield from started(RedisServer())


def run(url, body, timeout=1.0):
    async def main():
        client = RedisClient(url, timeout)
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(main())


def connections(redis):
    # the INFO connection itself is counted too
    return int(redis.info("stats")["total_connections_received"])


def test_many_callers_share_one_connection_each_with_its_reply(redis):
    redis.command("FLUSHALL")
    before = connections(redis)

    async def body(client):
        await asyncio.gather(
            *(client.call("SET", "k%d" % i, "v%d" % i) for i in range(300))
        )
        return await asyncio.gather(
            *(client.call("GET", "k%d" % i) for i in range(300))
        )

    values = run(redis.url, body)
    assert values == [b"v%d" % i for i in range(300)]
    # one connection for the client, one for this INFO
    assert connections(redis) - before == 2


def test_an_error_reply_fails_its_caller_only(redis):
    async def body(client):
        return await asyncio.gather(
            client.call("SET", "text", "abc"),
            client.call("INCR", "text"),
            client.call("GET", "text"),
            return_exceptions=True,
        )

    ok, error, value = run(redis.url, body)
    assert ok == b"OK" and value == b"abc"
    assert isinstance(error, RedisError) and "not an integer" in str(error)


def test_a_cancelled_caller_leaves_the_replies_matched(redis):
    async def body(client):
        await client.call("SET", "a", "1")
        await client.call("SET", "b", "2")
        first = asyncio.ensure_future(client.call("GET", "a"))
        second = asyncio.ensure_future(client.call("GET", "b"))
        await asyncio.sleep(0)  # both are sent
        first.cancel()
        return await second, await client.call("GET", "a")

    assert run(redis.url, body) == (b"2", b"1")


def test_no_reply_within_the_timeout_is_a_timeout_error():
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        url = "redis://127.0.0.1:%d/0" % mute.getsockname()[1]

        async def body(client):
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await client.call("PING")
            return time.monotonic() - started

        assert run(url, body, timeout=0.1) >= 0.1


def test_nothing_listening_is_a_connection_error():
    url = "redis://127.0.0.1:%d/0" % free_port()

    async def body(client):
        with pytest.raises(ConnectionError):
            await client.call("PING")

    run(url, body)


def test_a_lost_connection_is_opened_again(redis):
    async def body(client):
        assert await client.call("PING") == b"PONG"
        conn = client.conn
        redis.command("CLIENT", "KILL", "TYPE", "normal")
        deadline = time.monotonic() + 10
        while not conn.closed:
            assert time.monotonic() < deadline, "the kill went unnoticed"
            await asyncio.sleep(0.01)
        return await client.call("PING")

    assert run(redis.url, body) == b"PONG"


def test_a_reply_from_a_replica_makes_the_client_connect_again():
    # a failover turned the server it reached into a replica: its writes
    # fail with READONLY, and the next command connects again (to whatever
    # the name points at now) rather than keep failing on that connection
    replica = RedisServer().start()
    try:

        async def body(client):
            await client.call("SET", "a", "1")
            first = client.conn
            # a primary that does not answer: it stays a read-only replica
            replica.command("REPLICAOF", "127.0.0.1", free_port())
            failed = await asyncio.gather(
                client.call("SET", "a", "2"),
                client.call("GET", "a"),
                return_exceptions=True,
            )
            replica.command("REPLICAOF", "NO", "ONE")
            await client.call("SET", "a", "3")
            return first, failed, client.conn

        before = connections(replica)
        first, failed, now = run(replica.url, body)
        assert isinstance(failed[0], RedisError)
        assert str(failed[0]).startswith("READONLY ")
        assert failed[1] == b"1"  # the reply behind it still came
        assert first.closed and now is not first
        # the client's two connections, the two REPLICAOF and this INFO
        assert connections(replica) - before == 5
    finally:
        replica.stop()


def test_the_database_of_the_url_is_selected(redis):
    redis.command("FLUSHALL")

    async def body(client):
        await client.call("SET", "in3", "x")

    run(redis.url.rsplit("/", 1)[0] + "/3", body)
    until(lambda: redis.info("keyspace").get("db3", "").startswith("keys=1,"))


@pytest.mark.parametrize(
    "url, where",
    [
        (
            "redis://:secret@10.0.0.1:7000/2",
            {
                "host": "10.0.0.1",
                "port": 7000,
                "db": 2,
                "password": "secret",
                "username": None,
                "tls": False,
            },
        ),
        (
            "rediss://ann:pw@cache",
            {
                "host": "cache",
                "port": 6379,
                "db": 0,
                "username": "ann",
                "tls": True,
            },
        ),
        ("unix:///run/redis.sock?db=5", {"path": "/run/redis.sock", "db": 5}),
    ],
)
def test_urls(url, where):
    parsed = parse_url(url)
    assert {k: parsed[k] for k in where} == where


@pytest.mark.parametrize(
    "url", ["http://x", "redis://", "unix://", "redis://h/zero"]
)
def test_bad_urls_are_value_errors(url):
    with pytest.raises(ValueError):
        parse_url(url)
