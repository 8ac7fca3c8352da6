"""Real services the tests start on free loopback ports and stop after
(bench/services.py: redis-server and the authorization service of
bench/peers/ext_authz_service.py), an HTTP upstream served from the test's
own threads, and a wait that fails the test."""

import contextlib
import http.server
import threading

from bench.procs import wait_for
from bench.services import AuthService, RedisServer, started

__all__ = ["AuthService", "RedisServer", "started", "until", "upstream_server"]


def until(cond, timeout=10):
    value = wait_for(cond, timeout)
    assert value, "condition not met within %s s" % timeout
    return value


class _Upstream(http.server.ThreadingHTTPServer):
    # nginx may open many connections at once (HTTP/2 streams)
    request_queue_size = 128
    daemon_threads = True


@contextlib.contextmanager
def upstream_server(handler):
    """An HTTP upstream on a free loopback port, serving handler (an
    http.server.BaseHTTPRequestHandler) from threads of this process."""
    server = _Upstream(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
