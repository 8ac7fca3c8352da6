"""The sender filter of the response-phase benchmark: it stamps every
response, so each one makes the second round trip and is edited."""

from pyworker import CONTINUE, StreamSenderFilter, register_filter


@register_filter("bench_stamp")
class Stamp(StreamSenderFilter):
    def __init__(self, config):
        self.value = config.get("value", "1")

    def append(self, ctx, headers, buf, trailers):
        headers.set("x-bench-stamp", self.value)
        return CONTINUE
