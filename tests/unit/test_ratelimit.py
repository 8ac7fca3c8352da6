"""The ratelimit filter against a real redis-server on a loopback port, no
nginx: descriptors from headers, address and metadata, 429 with
Retry-After and RateLimit headers, one Redis round trip per request, one
limit shared by two filters (two gateways), fail open or closed."""

import asyncio
import time

import pytest

from pyworker.api import ConfigError, Context
from pyworker.chain import Chain
from pyworker.headers import RequestHeaders
from pyworker.redisclient import RedisClient
from pyworker.verdict import ACTION_CONTINUE, ACTION_REPLY
from services import RedisServer, started
from gateway import free_port


@pytest.fixture(scope="module")
def redis_server():
    yield from started(RedisServer())


@pytest.fixture
def redis(redis_server):
    redis_server.command("FLUSHALL")
    return redis_server


def limiter(url, rate_limits, **config):
    config.setdefault("domain", "test")
    config.setdefault("redis", {"url": url, "timeout": "1s"})
    return Chain.from_stream_filters(
        "l",
        [
            {
                "type": "metadata",
                "config": {
                    "metadataers": [
                        {
                            "meta_data_key": "UNIT",
                            "config": {"unit_key": "uid"},
                        }
                    ]
                },
            },
            {
                "type": "ratelimit",
                "config": dict(rate_limits=rate_limits, **config),
            },
        ],
    )


def per_user(n, unit="minute", **action):
    return [
        {
            "actions": [
                {
                    "request_headers": dict(
                        header_name="x-user", descriptor_key="user", **action
                    )
                }
            ],
            "limit": {"requests_per_unit": n, "unit": unit},
        }
    ]


class Client:
    """Runs requests through chains in one loop, their filters started
    once, as in a worker."""

    def __init__(self, *chains):
        self.chains = chains
        self.loop = asyncio.new_event_loop()
        for chain in chains:
            self.loop.run_until_complete(chain.start())

    def __call__(self, headers=(), chain=0, remote_addr="127.0.0.1"):
        ctx = Context(1, remote_addr=remote_addr, listener="l")
        return self.loop.run_until_complete(
            self.chains[chain].run_async(ctx, RequestHeaders(headers))
        )

    def close(self):
        for chain in self.chains:
            self.loop.run_until_complete(chain.stop())
        self.loop.close()


@pytest.fixture
def client():
    made = []

    def make(*chains):
        made.append(Client(*chains))
        return made[-1]

    yield make
    for c in made:
        c.close()


def events(chain):
    return chain.filters[1][1].events


def test_over_the_limit_is_429_with_retry_after_and_ratelimit_headers(
    redis, client
):
    run = client(limiter(redis.url, per_user(3)))
    for left in (2, 1, 0):
        v = run({"X-User": "ann"})
        assert v.action == ACTION_CONTINUE
        assert dict(v.response_add) == {
            "RateLimit-Limit": "3",
            "RateLimit-Remaining": str(left),
            "RateLimit-Reset": dict(v.response_add)["RateLimit-Reset"],
        }
    v = run({"X-User": "ann"})
    assert (v.action, v.status) == (ACTION_REPLY, 429)
    reply = dict(v.reply_headers)
    assert 1 <= int(reply["Retry-After"]) <= 60
    assert reply["RateLimit-Remaining"] == "0"
    assert reply["RateLimit-Limit"] == "3"
    assert reply["RateLimit-Reset"] == reply["Retry-After"]
    # another user has a limit of its own
    assert run({"X-User": "bob"}).action == ACTION_CONTINUE
    assert events(run.chains[0]) == {
        "ok": 4,
        "over_limit": 1,
        "failure_allowed": 0,
        "failure_denied": 0,
    }


def test_one_redis_round_trip_per_request(redis, client):
    run = client(
        limiter(
            redis.url,
            per_user(1000)
            + [
                {
                    "actions": [{"remote_address": {}}],
                    "limit": {"requests_per_unit": 1000, "unit": "second"},
                },
                {
                    "actions": [{"generic_key": {"descriptor_value": "all"}}],
                    "limit": {"requests_per_unit": 1000, "unit": "hour"},
                },
            ],
        )
    )
    run({"X-User": "ann"})  # loads the script
    redis.command("CONFIG", "RESETSTAT")
    for _ in range(50):
        assert run({"X-User": "ann"}).action == ACTION_CONTINUE
    # the client's commands (the script's own run inside the EVALSHA)
    sent = set(redis.info("commandstats")) - {
        "cmdstat_incrby",
        "cmdstat_expire",
        "cmdstat_time",
        "cmdstat_config|resetstat",
    }
    assert sent == {"cmdstat_evalsha"}, sent
    assert redis.calls("evalsha") == 50
    # three descriptors, one counter each (a window that ended meanwhile
    # left a counter of its own: counters are named descriptor:window)
    keys = asyncio.run(redis_keys(redis.url))
    descriptors = {key.rsplit(b":", 1)[0] for key in keys}
    assert len(descriptors) == 3, keys


async def redis_keys(url):
    client = RedisClient(url, 1.0)
    try:
        return await client.call("KEYS", "*")
    finally:
        await client.close()


def test_two_gateways_share_one_limit(redis, client):
    run = client(
        limiter(redis.url, per_user(4)), limiter(redis.url, per_user(4))
    )
    answers = [run({"X-User": "ann"}, chain=i % 2).action for i in range(6)]
    assert answers == [ACTION_CONTINUE] * 4 + [ACTION_REPLY] * 2


def test_descriptors_from_the_address_the_metadata_and_header_matches(
    redis, client
):
    run = client(
        limiter(
            redis.url,
            [
                {
                    "actions": [
                        {"remote_address": {}},
                        {
                            "metadata": {
                                "descriptor_key": "unit",
                                "key": "unit",
                            }
                        },
                    ],
                    "limit": {"requests_per_unit": 1, "unit": "minute"},
                },
                {
                    "actions": [
                        {
                            "header_value_match": {
                                "descriptor_value": "admin",
                                "headers": [
                                    {"name": "x-role", "exact_match": "admin"}
                                ],
                            }
                        }
                    ],
                    "limit": {"requests_per_unit": 0, "unit": "minute"},
                },
            ],
        )
    )
    assert run({"uid": "5"}).action == ACTION_CONTINUE
    assert run({"uid": "5"}).status == 429  # same unit s1
    assert run({"uid": "150"}).action == ACTION_CONTINUE  # unit s2
    assert (
        run({"uid": "5"}, remote_addr="10.0.0.9").action == ACTION_CONTINUE
    )  # another address
    assert run({"uid": "7", "X-Role": "admin"}).status == 429
    # no uid: no unit, no descriptor for that limit (nothing counted)
    before = redis.calls("evalsha")
    assert run({}).action == ACTION_CONTINUE
    assert redis.calls("evalsha") == before


def test_a_missing_header_drops_its_descriptor_unless_skip_if_absent(
    redis, client
):
    run = client(
        limiter(redis.url, per_user(1)),
        limiter(redis.url, per_user(1, skip_if_absent=True)),
    )
    before = redis.calls("evalsha")
    for _ in range(3):
        assert run({}).action == ACTION_CONTINUE
    assert redis.calls("evalsha") == before
    # skip_if_absent: counted under the descriptor without that entry
    assert run({}, chain=1).action == ACTION_CONTINUE
    assert run({}, chain=1).status == 429


def test_a_window_ends_by_redis_time(redis, client):
    run = client(limiter(redis.url, per_user(1, unit="second")))
    assert run({"X-User": "ann"}).action == ACTION_CONTINUE
    v = run({"X-User": "ann"})
    if v.action == ACTION_CONTINUE:
        # the first request was the last of a window
        v = run({"X-User": "ann"})
    assert v.status == 429
    assert dict(v.reply_headers)["Retry-After"] == "1"
    deadline = time.monotonic() + 3
    while run({"X-User": "ann"}).action != ACTION_CONTINUE:
        assert time.monotonic() < deadline, "the window never ended"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "deny, expect",
    [
        (False, (ACTION_CONTINUE, 0, "failure_allowed")),
        (True, (ACTION_REPLY, 500, "failure_denied")),
    ],
)
def test_redis_down_fails_open_or_closed(client, deny, expect):
    url = "redis://127.0.0.1:%d/0" % free_port()  # nothing listens
    chain = limiter(url, per_user(1), failure_mode_deny=deny)
    v = client(chain)({"X-User": "ann"})
    assert (v.action, v.status) == expect[:2]
    assert events(chain)[expect[2]] == 1


def test_a_redis_that_comes_back_is_used_again(client):
    server = RedisServer()
    chain = limiter(
        server.url, per_user(1), redis={"url": server.url, "timeout": "200ms"}
    )
    run = client(chain)
    assert run({"X-User": "ann"}).action == ACTION_CONTINUE  # open: down
    server.start()
    try:
        assert run({"X-User": "ann"}).action == ACTION_CONTINUE
        assert run({"X-User": "ann"}).status == 429
        server.stop()
        assert run({"X-User": "ann"}).action == ACTION_CONTINUE
    finally:
        server.stop()
    assert events(chain)["failure_allowed"] == 2


@pytest.mark.parametrize(
    "config, path, words",
    [
        ({"rate_limits": per_user(1)}, "domain", "missing"),
        ({"domain": "d", "rate_limits": []}, "rate_limits", "non-empty"),
        (
            {"domain": "d", "rate_limits": per_user(1, unit="week")},
            "rate_limits[0].limit.unit",
            "one of second",
        ),
        (
            {
                "domain": "d",
                "rate_limits": [
                    {
                        "actions": [{"cookie": {}}],
                        "limit": {"requests_per_unit": 1, "unit": "second"},
                    }
                ],
            },
            "rate_limits[0].actions[0].cookie",
            "unknown action",
        ),
        (
            {
                "domain": "d",
                "rate_limits": per_user(1),
                "redis": {"url": "http://x"},
            },
            "redis.url",
            "redis://",
        ),
    ],
)
def test_bad_configs_name_their_key(config, path, words):
    with pytest.raises(ConfigError) as info:
        Chain.from_stream_filters(
            "l", [{"type": "ratelimit", "config": config}]
        )
    assert path in str(info.value) and words in str(info.value)
