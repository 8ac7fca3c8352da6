"""The ext_authz filter against a real aiohttp authorization service
(bench/peers/ext_authz_service.py), no nginx: what the service is sent, what an
allowed and a denied request become, failures with and without
failure_mode_allow, the connection pool's bound, many checks in flight."""

import asyncio

import pytest

from pyworker.api import ConfigError, Context
from pyworker.chain import Chain
from pyworker.headers import RequestHeaders
from pyworker.testing import run_chain
from pyworker.verdict import ACTION_CONTINUE, ACTION_REPLY
from services import AuthService, started, until
from gateway import free_port


@pytest.fixture(scope="module")
def auth():
    yield from started(AuthService())


@pytest.fixture
def service(auth):
    # checks a test gave up on may still be answered: wait them out
    until(lambda: auth.in_flight()[0] == 0)
    auth.forget()
    return auth


def authz(url, **config):
    http = config.pop("http_service", {})
    http.setdefault("server_uri", {"uri": url, "timeout": "5s"})
    # the test service's delay rides in this header
    http.setdefault(
        "authorization_request", {"allowed_headers": ["x-delay-ms"]}
    )
    return Chain.from_stream_filters(
        "l",
        [{"type": "ext_authz", "config": dict(http_service=http, **config)}],
    )


def test_an_allowed_request_goes_on_with_the_services_headers(service):
    chain = authz(
        service.url,
        http_service={
            "path_prefix": "/check",
            "authorization_request": {
                "allowed_headers": {
                    "patterns": [{"exact": "cookie"}, {"prefix": "x-auth-"}]
                },
                "headers_to_add": [{"key": "X-Gateway", "value": "edge"}],
            },
            "authorization_response": {
                "allowed_upstream_headers": ["x-user"],
                "allowed_upstream_headers_to_append": ["x-tenant"],
                "allowed_client_headers_on_success": ["set-cookie"],
            },
        },
    )
    verdict = run_chain(
        chain,
        [
            ("Host", "example.com"),
            ("Authorization", "Bearer good"),
            ("Cookie", "c=1"),
            ("X-Auth-Org", "o"),
            ("X-Secret", "s"),
            ("X-User", "mallory"),
        ],
        method="PUT",
        path="/a/b",
        query="x=1&y=2",
    )
    assert verdict.action == ACTION_CONTINUE
    assert verdict.request_set == [("X-User", "alice"), ("X-Tenant", "t1")]
    assert verdict.response_add == [("Set-Cookie", "seen=1")]
    (seen,) = service.seen()
    assert seen["method"] == "PUT"
    assert seen["path"] == "/check/a/b?x=1&y=2"
    sent = {k.lower(): v for k, v in seen["headers"]}
    assert sent["host"] == "example.com"
    assert sent["authorization"] == "Bearer good"
    assert sent["cookie"] == "c=1" and sent["x-auth-org"] == "o"
    assert sent["x-gateway"] == "edge"
    assert "x-secret" not in sent and "x-user" not in sent
    assert chain.filters[0][1].events["allowed"] == 1


@pytest.mark.parametrize(
    "path, query, sent",
    [
        # nginx passes a query's bytes past ASCII as they came (read as
        # Latin-1): they go to the service escaped
        ("/s", "q=caf\xc3\xa9&r=%41", "/s?q=caf%C3%A9&r=%41"),
        # text past Latin-1 (a test's, a tryout's) is taken as UTF-8
        ("/\u20ac", "q=\u20ac", "/%E2%82%AC?q=%E2%82%AC"),
    ],
)
def test_a_path_and_query_past_ascii_are_sent_escaped(
    service, path, query, sent
):
    verdict = run_chain(
        authz(service.url),
        [("Authorization", "Bearer good")],
        path=path,
        query=query,
    )
    assert verdict.action == ACTION_CONTINUE
    (seen,) = service.seen()
    assert seen["raw_path"] == sent


def test_a_denied_request_gets_the_services_answer(service):
    verdict = run_chain(authz(service.url), {"Authorization": "Bearer bad"})
    assert verdict.action == ACTION_REPLY
    assert verdict.status == 401
    assert verdict.reply_body == b"denied by the service"
    names = {k.lower() for k, _ in verdict.reply_headers}
    assert {"www-authenticate", "x-reason", "content-type"} <= names
    assert not names & {"content-length", "date", "server", "connection"}
    # only the headers allowed_client_headers names
    verdict = run_chain(
        authz(
            service.url,
            http_service={
                "authorization_response": {
                    "allowed_client_headers": ["www-authenticate"]
                }
            },
        ),
        {},
    )
    assert verdict.reply_headers == [("WWW-Authenticate", "Bearer")]


@pytest.mark.parametrize(
    "allow, header_add, expect",
    [
        (False, False, (ACTION_REPLY, 403, [])),
        (True, False, (ACTION_CONTINUE, 0, [])),
        (
            True,
            True,
            (
                ACTION_CONTINUE,
                0,
                [("x-envoy-auth-failure-mode-allowed", "true")],
            ),
        ),
    ],
)
def test_a_check_past_its_timeout_follows_failure_mode_allow(
    service, allow, header_add, expect
):
    chain = authz(
        service.url,
        http_service={"server_uri": {"uri": service.url, "timeout": "50ms"}},
        failure_mode_allow=allow,
        failure_mode_allow_header_add=header_add,
    )
    verdict = run_chain(
        chain, {"Authorization": "Bearer slow", "X-Delay-Ms": "2000"}
    )
    assert (verdict.action, verdict.status, verdict.request_set) == expect
    events = chain.filters[0][1].events
    assert events["failure_allowed" if allow else "failure_denied"] == 1


def test_a_service_that_cannot_be_reached_is_a_failure():
    url = "http://127.0.0.1:%d" % free_port()  # nothing listens
    verdict = run_chain(
        authz(url, status_on_error=503), {"Authorization": "Bearer good"}
    )
    assert (verdict.action, verdict.status) == (ACTION_REPLY, 503)
    verdict = run_chain(authz(url, failure_mode_allow=True), {})
    assert verdict.action == ACTION_CONTINUE


def run_many(chain, n, headers):
    async def main():
        await chain.start()
        try:
            tasks = [
                asyncio.ensure_future(
                    chain.run_async(
                        Context(i, listener="l"), RequestHeaders(headers)
                    )
                )
                for i in range(n)
            ]
            return await asyncio.gather(*tasks)
        finally:
            await chain.stop()

    return asyncio.run(main())


def test_many_checks_are_in_flight_at_once(service):
    chain = authz(service.url)
    verdicts = run_many(
        chain, 200, {"Authorization": "Bearer slow", "X-Delay-Ms": "300"}
    )
    assert all(v.action == ACTION_CONTINUE for v in verdicts)
    now, most = service.in_flight()
    assert most >= 100, most


def test_the_pool_holds_max_connections(service):
    chain = authz(service.url, max_connections=3)
    verdicts = run_many(
        chain, 30, {"Authorization": "Bearer slow", "X-Delay-Ms": "20"}
    )
    assert all(v.action == ACTION_CONTINUE for v in verdicts)
    assert service.in_flight()[1] <= 3


@pytest.mark.parametrize(
    "config, path, words",
    [
        ({}, "http_service.server_uri.uri", "missing"),
        (
            {"http_service": {"server_uri": {"uri": "ftp://x"}}},
            "http_service.server_uri.uri",
            "http://",
        ),
        (
            {
                "http_service": {
                    "server_uri": {"uri": "http://x", "timeout": "soon"}
                }
            },
            "http_service.server_uri.timeout",
            "not a duration",
        ),
        (
            {
                "http_service": {
                    "server_uri": {"uri": "http://x"},
                    "path_prefix": "auth",
                }
            },
            "http_service.path_prefix",
            "starting with /",
        ),
        (
            {
                "http_service": {
                    "server_uri": {"uri": "http://x"},
                    "authorization_request": {
                        "allowed_headers": [{"regex": "x"}]
                    },
                }
            },
            "http_service.authorization_request.allowed_headers[0]",
            "unknown matcher",
        ),
        (
            {
                "http_service": {"server_uri": {"uri": "http://x"}},
                "status_on_error": 99,
            },
            "status_on_error",
            "200..599",
        ),
        (
            {
                "http_service": {
                    "server_uri": {"uri": "http://x"},
                    "path_prefix": "/a b",
                }
            },
            "http_service.path_prefix",
            "visible ASCII",
        ),
        (
            {"http_service": {"server_uri": {"uri": "http://x/caf\u00e9"}}},
            "http_service.server_uri.uri",
            "visible ASCII",
        ),
        (
            {
                "http_service": {
                    "server_uri": {"uri": "http://x"},
                    "authorization_request": {
                        "headers_to_add": {"X-A": "1\r\nX-B: 2"}
                    },
                }
            },
            "http_service.authorization_request.headers_to_add",
            "no HTTP header",
        ),
        (
            {
                "http_service": {
                    "server_uri": {"uri": "http://x"},
                    "authorization_request": {"headers_to_add": {"X A": "1"}},
                }
            },
            "http_service.authorization_request.headers_to_add",
            "no HTTP header",
        ),
        (
            {
                "http_service": {
                    "server_uri": {"uri": "http://x"},
                    "authorization_request": {
                        "headers_to_add": {"Content-Length": "10"}
                    },
                }
            },
            "http_service.authorization_request.headers_to_add",
            "not a header to add",
        ),
    ],
)
def test_bad_configs_name_their_key(config, path, words):
    with pytest.raises(ConfigError) as info:
        Chain.from_stream_filters(
            "l", [{"type": "ext_authz", "config": config}]
        )
    assert path in str(info.value) and words in str(info.value)
