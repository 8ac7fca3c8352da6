"""The sender filters of the response-phase benchmark: one stamps every
response, so each one makes the second round trip and is edited; two
redact a field of the body, with a regular expression and with a plain
search."""

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
            self.send_handler.set_body(self.CARD.sub(b'"card":"****"', buf, 1))
        return CONTINUE


@register_filter("bench_redact_find")
class RedactFind(StreamSenderFilter):
    """The same mask, the field found with bytes.find: Python's regular
    expressions scan a body char by char, bytes.find does not."""

    FIELD = b'"card":"'

    def __init__(self, config):
        pass

    def append(self, ctx, headers, buf, trailers):
        if buf is None:
            return CONTINUE
        start = buf.find(self.FIELD)
        if start >= 0:
            start += len(self.FIELD)
            end = buf.find(b'"', start)
            if end >= 0:
                self.send_handler.set_body(
                    b"".join((buf[:start], b"****", buf[end:]))
                )
        return CONTINUE
