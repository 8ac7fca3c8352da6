"""A user's filter, loaded by the "pyworker": {"modules": [...]} block."""

from pyworker import CONTINUE, StreamReceiverFilter, register_filter


@register_filter("route_to")
class RouteTo(StreamReceiverFilter):
    def __init__(self, config):
        self.upstream = config["upstream"]

    def on_receive(self, ctx, headers, buf, trailers):
        ctx.upstream = self.upstream
        return CONTINUE
