"""The HTTP client of filters that call a service (pyworker.httpclient)
against a raw asyncio server on loopback that answers as each test tells
it: keep-alive, a kept-alive connection the server closes, a server that
never answers, a body past the limit, an answer that is not HTTP, the
framings of RFC 9112 (HEAD, 1xx, a body to the close), requests that would
not be one request, and requests that wait their turn for a connection."""

import asyncio

import pytest
import uvloop

from pyworker.httpclient import HttpError, HttpPool

OK = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-User: alice\r\n"
    b"X-User: bob\r\n\r\nok"
)
# what the client makes of OK
OK_READ = (
    200,
    [("Content-Length", "2"), ("X-User", "alice"), ("X-User", "bob")],
    b"ok",
)


class Server:
    """Reads requests' heads; ``answer(n, conn)`` says what the n-th
    request (counted over every connection) gets: bytes, or None to close
    the connection unanswered, or ... to say nothing, or (bytes, None) to
    answer and close; each answer ``delay`` seconds after its request."""

    def __init__(self, answer, delay=0):
        self.answer = answer
        self.delay = delay
        self.requests = 0
        self.connections = 0
        self.heads = []

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader, writer):
        self.connections += 1
        conn = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                self.requests += 1
                reply = self.answer(self.requests, conn)
                if self.delay:
                    await asyncio.sleep(self.delay)
                if isinstance(reply, tuple):
                    writer.write(reply[0])
                    await writer.drain()
                    break
                if reply is None:
                    break
                if reply is not ...:
                    writer.write(reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self):
        self.server.close()


def served(answer, steps, delay=0, loop=None, **options):
    """(server, pool, what ``steps(pool)`` returned): the steps run with
    a pool to a Server that answers with ``answer``, on asyncio's loop or
    ``loop="uvloop"``; both are closed after, whatever the steps
    raised."""

    async def main():
        server = await Server(answer, delay).start()
        pool = HttpPool("127.0.0.1", server.port, **options)
        try:
            return server, pool, await steps(pool)
        finally:
            await pool.close()
            await server.close()

    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def test_a_kept_alive_connection_serves_the_next_request():
    async def steps(pool):
        first = await pool.request("GET", "/a", [("Authorization", "t")])
        return first, await pool.request("GET", "/b")

    server, _, (first, second) = served(lambda n, conn: OK, steps)
    assert first == second == OK_READ
    assert server.connections == 1
    assert server.heads[0].startswith(b"GET /a HTTP/1.1\r\n")
    assert b"\r\nAuthorization: t\r\n" in server.heads[0]
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in server.heads[0]


def test_a_kept_alive_connection_the_server_closed_is_tried_again_once():
    # the server closes its first connection when the second request
    # comes on it, unanswered: that request goes again on a new one
    def answer(n, conn):
        return None if conn == 1 and n == 2 else OK

    async def steps(pool):
        await pool.request("GET", "/a")
        return await pool.request("GET", "/b")

    server, _, again = served(answer, steps)
    assert again[0] == 200
    assert server.connections == 2
    assert [h.split(b" ")[1] for h in server.heads] == [b"/a", b"/b", b"/b"]


def test_a_new_connection_closed_unanswered_is_an_error():
    # nothing to try again on: the connection was not kept alive
    async def steps(pool):
        with pytest.raises(HttpError, match="closed"):
            await pool.request("GET", "/a")

    server, pool, _ = served(lambda n, conn: None, steps)
    assert server.requests == 1
    assert pool.open == 0


def test_an_answer_past_its_timeout_closes_the_connection():
    # the first request is never answered; the next one opens a new
    # connection rather than read the late answer of the first
    def answer(n, conn):
        return ... if n == 1 else OK

    async def steps(pool):
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/slow", timeout=0.05)
        return await pool.request("GET", "/next", timeout=2.0)

    server, pool, after = served(answer, steps)
    assert after[0] == 200
    assert server.connections == 2
    assert pool.open == 0


def test_a_body_is_cut_at_the_limit():
    big = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10000\r\n\r\n"
    big += b"x" * 10000

    async def steps(pool):
        got = await pool.request("GET", "/", limit=100)
        return got, await pool.request("GET", "/", limit=100)

    server, _, (got, again) = served(lambda n, conn: big, steps)
    assert got == (403, [("Content-Length", "10000")], b"x" * 100)
    assert again == got
    assert server.connections == 1  # the whole body was read, kept alive


def test_an_answer_that_is_not_http_is_an_error():
    async def steps(pool):
        with pytest.raises(HttpError, match="not an HTTP answer"):
            await pool.request("GET", "/")

    _, pool, _ = served(lambda n, conn: b"SSH-2.0-x\r\n\r\n", steps)
    assert pool.open == 0


def test_requests_past_max_connections_wait_their_turn():
    async def steps(pool):
        return await asyncio.gather(
            *(pool.request("GET", "/%d" % i) for i in range(20))
        )

    server, _, got = served(lambda n, conn: OK, steps, max_connections=2)
    assert [status for status, _, _ in got] == [200] * 20
    assert server.connections == 2


def test_a_request_that_fails_before_it_is_sent_gives_its_connection_back():
    # a limit that is no size fails the request, not the pool
    async def steps(pool):
        await pool.request("GET", "/a")
        for limit in (None, 65536.0):
            with pytest.raises(TypeError, match="number of bytes"):
                await pool.request("GET", "/b", limit=limit)
        return await pool.request("GET", "/c", timeout=2.0)

    _, pool, after = served(lambda n, conn: OK, steps, max_connections=1)
    assert after[0] == 200
    assert pool.open == 0


@pytest.mark.parametrize(
    "target, headers",
    [
        ("/a HTTP/1.1\r\nHost: x\r\n\r\nGET /b", []),
        ("/a b", []),
        ("/\u00e9", []),
        ("/", [("X-A", "1\r\nX-B: 2")]),
        ("/", [("X-A\nX-B", "2")]),
        ("/", [("X-A", "1\0")]),
    ],
)
def test_a_request_that_would_not_be_one_request_is_not_sent(target, headers):
    async def steps(pool):
        with pytest.raises(ValueError):
            await pool.request("GET", target, headers)
        with pytest.raises(ValueError, match="method"):
            await pool.request("GET /x", "/")
        return await pool.request("GET", "/ok")

    server, pool, after = served(lambda n, conn: OK, steps)
    assert after[0] == 200
    assert [h.split(b"\r\n")[0] for h in server.heads] == [b"GET /ok HTTP/1.1"]
    assert pool.open == 0


def test_an_answer_to_head_ends_with_its_head():
    # its Content-Length is that of the GET's body, which does not follow
    head = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\n"

    async def steps(pool):
        return await pool.request("HEAD", "/", timeout=2.0)

    _, pool, got = served(lambda n, conn: head, steps)
    assert got == (401, [("Content-Length", "5")], b"")
    assert pool.open == 0  # not used again: the parser expected a body


def test_interim_answers_are_skipped():
    answer = (
        b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    )

    async def steps(pool):
        first = await pool.request("GET", "/a", timeout=2.0)
        return first, await pool.request("GET", "/b", timeout=2.0)

    server, _, (first, second) = served(lambda n, conn: answer, steps)
    assert first == second == OK_READ
    assert server.connections == 1


@pytest.mark.parametrize(
    "status, header",
    [
        (403, ("Connection", "close")),  # no length at all
        (200, ("Transfer-Encoding", "gzip")),  # a coding not chunked last
        (200, ("Transfer-Encoding", "gzip, xchunked")),  # nor this
    ],
)
def test_a_body_with_no_end_of_its_own_ends_where_the_server_closes(
    status, header
):
    answer = b"HTTP/1.1 %d X\r\n%s: %s\r\n\r\nno way" % (
        status,
        header[0].encode(),
        header[1].encode(),
    )

    async def steps(pool):
        return await pool.request("GET", "/", timeout=2.0)

    _, pool, got = served(lambda n, conn: (answer, None), steps)
    assert got == (status, [header], b"no way")
    assert pool.open == 0


def test_an_answer_that_switches_protocols_is_an_error_and_only_that():
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n\x81\x00"
    )
    troubles = []

    async def steps(pool):
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: troubles.append(context)
        )
        with pytest.raises(HttpError, match="switched protocols"):
            await pool.request("GET", "/", timeout=2.0)
        await asyncio.sleep(0.05)

    _, pool, _ = served(lambda n, conn: answer, steps)
    assert troubles == []  # nothing escaped into the loop
    assert pool.open == 0


def test_a_connection_given_back_goes_to_the_longest_waiting_request():
    # one connection, a service that takes 50 ms: a task asking again and
    # again does not pass a request waiting since its first
    async def steps(pool):
        async def again_and_again():
            for i in range(6):
                await pool.request("GET", "/again/%d" % i, timeout=2.0)

        greedy = asyncio.create_task(again_and_again())
        await asyncio.sleep(0.01)
        waited = await pool.request("GET", "/waiting", timeout=0.2)
        await greedy
        return waited

    server, pool, waited = served(
        lambda n, conn: OK, steps, delay=0.05, max_connections=1
    )
    assert waited[0] == 200
    assert [h.split(b" ")[1] for h in server.heads][:3] == [
        b"/again/0",
        b"/waiting",
        b"/again/1",
    ]
    assert pool.open == 0


def test_a_turn_given_to_a_request_cancelled_then_goes_to_the_next():
    # the connection is handed to B, which is cancelled before it runs:
    # C, waiting behind it, gets the connection rather than its timeout
    async def steps(pool):
        async def first():
            got = await pool.request("GET", "/a")
            b.cancel()  # B was handed the connection, and has not run
            return got

        a = asyncio.create_task(first())
        await asyncio.sleep(0.01)
        b = asyncio.create_task(pool.request("GET", "/b"))
        await asyncio.sleep(0.01)
        c = asyncio.create_task(pool.request("GET", "/c", timeout=1.0))
        await a
        with pytest.raises(asyncio.CancelledError):
            await b
        return await c

    server, pool, got = served(
        lambda n, conn: OK, steps, delay=0.05, max_connections=1
    )
    assert got[0] == 200
    assert [h.split(b" ")[1] for h in server.heads] == [b"/a", b"/c"]
    assert server.connections == 1
    assert pool.open == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_server_that_closes_after_its_answer_leaves_the_next_a_new_one(
    loop,
):
    # the server answers A and closes: B, waiting its turn, is served on
    # a new connection (the one handed to it, or its retry)
    async def steps(pool):
        a = asyncio.create_task(pool.request("GET", "/a"))
        await asyncio.sleep(0.01)
        b = await pool.request("GET", "/b", timeout=1.0)
        return await a, b

    server, pool, (a, b) = served(
        lambda n, conn: (OK, None),
        steps,
        delay=0.05,
        loop=loop,
        max_connections=1,
    )
    assert a == b == OK_READ
    assert server.connections == 2
    assert pool.open == 0
