"""pyworker.redisclient against a real redis-server on a loopback port:
the commands of many callers share one connection and each gets its own
reply; errors, timeouts, cancellations and a lost connection touch only
whom they concern."""

import asyncio
import socket
import time

import pytest

from gateway import free_port
from pyworker import redisclient
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


@pytest.mark.parametrize("write", ["SET", "EVAL"])
def test_a_reply_from_a_replica_makes_the_client_connect_again(
    monkeypatch, write
):
    # a failover turned the server it reached into a replica: its writes
    # (plain, or in a script as the rate limit sends them) fail with
    # READONLY, and the next command connects again (to whatever the name
    # points at now) rather than keep failing on that connection; not
    # sooner than RETIRE_AFTER after it opened, so that a name that still
    # points at the replica costs one connection a second
    monkeypatch.setattr(redisclient, "RETIRE_AFTER", 0.5)
    command = {
        "SET": ("SET", "a", "2"),
        "EVAL": ("EVAL", "return redis.call('SET', KEYS[1], '2')", 1, "a"),
    }[write]
    replica = RedisServer().start()
    try:

        async def body(client):
            await client.call("SET", "a", "1")
            first = client.conn
            # a primary that does not answer: it stays a read-only replica
            replica.command("REPLICAOF", "127.0.0.1", free_port())
            young = await asyncio.gather(
                client.call(*command), return_exceptions=True
            )
            kept = client.conn is first and not first.closed
            await asyncio.sleep(0.55)
            failed = await asyncio.gather(
                client.call(*command),
                client.call("GET", "a"),
                return_exceptions=True,
            )
            replica.command("REPLICAOF", "NO", "ONE")
            await client.call("SET", "a", "3")
            return first, young, kept, failed, client.conn

        before = connections(replica)
        first, young, kept, failed, now = run(replica.url, body)
        assert isinstance(young[0], RedisError) and kept
        assert isinstance(failed[0], RedisError)
        assert "READONLY" in str(failed[0])
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


def test_closing_fails_what_waits_on_a_connection_it_moved_off(monkeypatch):
    # the replica's READONLY retires the connection while a read that
    # blocks (XREAD) still waits there; closing the client fails it too
    monkeypatch.setattr(redisclient, "RETIRE_AFTER", 0.0)
    replica = RedisServer().start()
    try:

        async def body(client):
            await client.call("PING")
            replica.command("REPLICAOF", "127.0.0.1", free_port())
            write = asyncio.ensure_future(client.call("SET", "a", "1"))
            blocked = asyncio.ensure_future(
                client.call("XREAD", "BLOCK", 0, "STREAMS", "q", "$")
            )
            with pytest.raises(RedisError, match="READONLY"):
                await write
            assert await client.call("PING") == b"PONG"  # a new connection
            await client.close()
            with pytest.raises(ConnectionError, match="closed"):
                await asyncio.wait_for(blocked, 2.0)

        run(replica.url, body, timeout=30.0)
    finally:
        replica.stop()


def test_a_client_closed_while_it_connects_keeps_no_connection(redis):
    async def body(client):
        call = asyncio.ensure_future(client.call("PING"))
        await asyncio.sleep(0)  # its connection is being made
        await client.close()
        with pytest.raises(ConnectionError, match="closed"):
            await call
        return client.conn

    assert run(redis.url, body) is None
