"""The sender filters of the response-phase benchmark: one stamps every
response, so each one makes the second round trip and is edited; one
redacts a field of the body."""

import re

from pyworker import CONTINUE, StreamSenderFilter, register_filter


@register_filter("bench_stamp")
class Stamp(StreamSenderFilter):
    def __init__(self, config):
        self.value = config.get("value", "1")

    def append(self, ctx, headers, buf, trailers):
        headers.set("x-bench-stamp", self.value)
        return CONTINUE


@register_filter("bench_redact")
class Redact(StreamSenderFilter):
    """Masks the card number of a JSON body: what an OpenResty body filter
    does with ngx.re.sub, here in Python."""

    CARD = re.compile(rb'"card":"[^"]*"')

    def __init__(self, config):
        pass

    def append(self, ctx, headers, buf, trailers):
        if buf is not None:
            self.send_handler.set_body(
                self.CARD.sub(b'"card":"****"', buf, 1))
        return CONTINUE
