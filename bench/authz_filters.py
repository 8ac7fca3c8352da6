"""A filter for bench/async_bench.py: the ext_authz check written as a
plain (blocking) filter, as a worker without an event loop had to do it.
One request at a time per worker: its rate is 1 / the service's delay."""

import http.client

from pyworker import CONTINUE, STOP, StreamReceiverFilter, register_filter


@register_filter("bench_blocking_authz")
class BlockingAuthz(StreamReceiverFilter):
    def __init__(self, config):
        self.port = config["port"]
        self.conn = None

    def on_receive(self, ctx, headers, buf, trailers):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                   timeout=2)
        try:
            self.conn.request("GET", "/auth" + ctx.path, headers={
                "Authorization": headers.get("authorization") or ""})
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
