"""Run filter chains without nginx, from a filter's own tests.

    from pyworker.testing import run_chain

    def test_vip_users_go_to_s1():
        verdict = run_chain("conf/mosn.json", {"uid": "7"},
                            listener="serverListener")
        assert verdict.metadata == {"unit": "s1"}

The ``chain_runner`` fixture does the same, keeps the last request's
context and headers for assertions, and loads each config file once.
``run_response`` runs a chain's sender filters over a response.

A chain whose filters await runs in an event loop of its own, its filters'
``start()`` and ``stop()`` hooks around the request, as in a worker.  From
a test that already runs a loop, ``await arun_chain(...)`` instead (start
the chain's filters yourself: ``await chain.start()``).
"""

import asyncio
import os

from pyworker.api import Context
from pyworker.chain import Chain
from pyworker.config import GatewayConfig, from_dict, load
from pyworker.headers import RequestHeaders

try:
    import pytest
except ImportError:  # the runtime does not need pytest
    pytest = None


def run_chain(
    config_or_path,
    headers=(),
    listener=None,
    method="GET",
    path="/",
    query="",
    body=None,
    *,
    remote_addr="127.0.0.1",
    protocol="HTTP/1.1",
    request_id=1,
):
    """Runs one request through a chain and returns the Verdict.

    ``config_or_path``: a config file path, a parsed MOSN config (dict), a
    GatewayConfig, a Chain, or a bare ``stream_filters`` list.
    ``listener`` defaults to the config's first listener.
    ``headers``: a dict, (name, value) pairs or a RequestHeaders.
    """
    chain = chain_of(config_or_path, listener)
    return run_request(
        chain,
        headers,
        method,
        path,
        query,
        body,
        remote_addr,
        protocol,
        request_id,
    )[0]


async def arun_chain(
    config_or_path,
    headers=(),
    listener=None,
    method="GET",
    path="/",
    query="",
    body=None,
    *,
    remote_addr="127.0.0.1",
    protocol="HTTP/1.1",
    request_id=1,
):
    """run_chain() from a coroutine, in the running loop; the chain's
    filters are not started or stopped here."""
    chain = chain_of(config_or_path, listener)
    headers, body, ctx = _request(
        chain,
        headers,
        method,
        path,
        query,
        body,
        remote_addr,
        protocol,
        request_id,
    )
    return await chain.run_async(ctx, headers, body)


def run_request(
    chain,
    headers=(),
    method="GET",
    path="/",
    query="",
    body=None,
    remote_addr="127.0.0.1",
    protocol="HTTP/1.1",
    request_id=1,
):
    """Runs one request through ``chain``: (verdict, context, headers)."""
    headers, body, ctx = _request(
        chain,
        headers,
        method,
        path,
        query,
        body,
        remote_addr,
        protocol,
        request_id,
    )
    if chain.is_async:
        return (
            _in_loop(chain, chain.run_async(ctx, headers, body)),
            ctx,
            headers,
        )
    return chain.run(ctx, headers, body), ctx, headers


def _request(
    chain,
    headers,
    method,
    path,
    query,
    body,
    remote_addr,
    protocol,
    request_id,
):
    if not isinstance(headers, RequestHeaders):
        headers = RequestHeaders(headers)
    if isinstance(body, str):
        body = body.encode("utf-8")
    ctx = Context(
        request_id, method, path, query, remote_addr, protocol, chain.name
    )
    return headers, body, ctx


def _in_loop(chain, work):
    """Runs a chain's coroutine in a loop of its own, with the chain's
    filters started before and stopped after, as a worker does."""

    async def main():
        await chain.start()
        try:
            return await work
        finally:
            await chain.stop()

    try:
        return asyncio.run(main())
    except RuntimeError:
        work.close()
        raise


def run_response(
    config_or_path,
    status=200,
    headers=(),
    listener=None,
    method="GET",
    path="/",
    *,
    body=None,
    request_id=1,
    metadata=None,
):
    """Runs an upstream response (status, headers and, if given, body)
    through a chain's sender filters and returns the Verdict: its
    ``response_set``, ``response_remove``, ``response_add`` and
    ``response_body`` (None: unchanged) are what nginx applies.

    ``body``: bytes or str (UTF-8), as nginx hands it over with
    ``mosn_response_body on``; None, as without. ``metadata``: what the
    request phase set (``ctx.metadata``).
    """
    chain = chain_of(config_or_path, listener)
    if not isinstance(headers, RequestHeaders):
        headers = RequestHeaders(headers)
    if isinstance(body, str):
        body = body.encode("utf-8")
    ctx = Context(request_id, method, path, listener=chain.name)
    ctx.metadata = dict(metadata or {})
    if chain.sends_async:
        return _in_loop(
            chain, chain.run_send_async(ctx, status, headers, body)
        )
    return chain.run_send(ctx, status, headers, body)


def chain_of(config_or_path, listener=None):
    """The chain to run, from any of the forms ``run_chain`` takes."""
    if isinstance(config_or_path, Chain):
        return config_or_path
    if isinstance(config_or_path, list):
        return Chain.from_stream_filters(listener or "test", config_or_path)
    if isinstance(config_or_path, dict):
        config = from_dict(config_or_path)
    elif isinstance(config_or_path, GatewayConfig):
        config = config_or_path
    else:
        config = load(config_or_path)
    return select_chain(config, listener)


def select_chain(config, listener=None):
    """The chain of ``listener`` or, if None, of the first listener; a
    LookupError naming the listeners if there is no such one."""
    if listener is None:
        return next(iter(config.chains.values()))
    try:
        return config.chains[listener]
    except KeyError:
        raise LookupError(
            f"{config.path}: no listener named {listener!r}; "
            f"listeners: {', '.join(config.chains)}"
        ) from None


class ChainRunner:
    """``runner(config_or_path, headers, ...)`` like run_chain; config files
    are loaded once; ``context`` and ``headers`` are those of the last run."""

    def __init__(self):
        self.context = None
        self.headers = None
        self._configs = {}

    def __call__(
        self,
        config_or_path,
        headers=(),
        listener=None,
        method="GET",
        path="/",
        query="",
        body=None,
        *,
        remote_addr="127.0.0.1",
        protocol="HTTP/1.1",
        request_id=1,
    ):
        if isinstance(config_or_path, (str, os.PathLike)):
            key = os.path.abspath(config_or_path)
            if key not in self._configs:
                self._configs[key] = load(config_or_path)
            config_or_path = self._configs[key]
        chain = chain_of(config_or_path, listener)
        verdict, self.context, self.headers = run_request(
            chain,
            headers,
            method,
            path,
            query,
            body,
            remote_addr,
            protocol,
            request_id,
        )
        return verdict


if pytest is not None:

    @pytest.fixture
    def chain_runner():
        """Runs requests through chains without nginx (see ChainRunner)."""
        return ChainRunner()
