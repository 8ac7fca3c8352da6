"""A user's own filters and driver, loaded by a stream filter's "module"."""

from pyworker import (
    CONTINUE,
    MetadataDriver,
    StreamReceiverFilter,
    register_driver,
    register_filter,
)


@register_filter("tag_request")
class TagRequest(StreamReceiverFilter):
    def __init__(self, config):
        self.header = config.get("header", "x-tagged")
        self.value = config.get("value", "yes")

    def on_receive(self, ctx, headers, buf, trailers):
        headers.set(self.header, self.value)
        return CONTINUE


@register_filter("explode")
class Explode(StreamReceiverFilter):
    def __init__(self, config):
        pass

    def on_receive(self, ctx, headers, buf, trailers):
        raise RuntimeError("boom")


@register_driver("TENANT")
class TenantDriver(MetadataDriver):
    def init(self, config):
        self.header = config.get("header", "x-tenant")

    def build_metadata(self, ctx, headers, buf, trailers):
        return headers.get(self.header)
