"""The ``echo`` filter (after MOSN's): answers the request itself.

Config::

    {"type": "echo",
     "config": {"status": 200, "body": "hello from echo\\n",
                "header_list": [{"key": "x-mosn-echo", "value": "1"}]}}

``header_list`` also takes MOSN's own shape, an object of name -> value.
``status`` defaults to 200; 0 lets the request pass, as in MOSN, where a
zero status turns the echo off. The reply is checked when the config is
loaded, so a bad header or an oversized body is a config error.
"""

from pyworker.api import (
    CONTINUE,
    STOP,
    ConfigError,
    StreamReceiverFilter,
    json_type,
)
from pyworker.registry import register_filter
from pyworker.verdict import ACTION_REPLY, Verdict, VerdictError, check


@register_filter("echo")
class EchoFilter(StreamReceiverFilter):
    __slots__ = ("status", "body", "headers", "handler")

    def __init__(self, config):
        status = config.get("status", 200)
        if type(status) is not int or not (
            status == 0 or 200 <= status <= 599
        ):
            raise ConfigError(
                f"must be 0 (off) or an HTTP status in "
                f"200..599, not {status!r}",
                "status",
            )
        body = config.get("body")
        if body is None:
            body = ""
        if not isinstance(body, str):
            raise ConfigError(
                f"must be a string, not {json_type(body)}", "body"
            )
        self.status = status
        self.body = body.encode("utf-8")
        self.headers = _header_list(config.get("header_list"))
        if status:
            try:
                check(
                    Verdict(
                        ACTION_REPLY,
                        status,
                        reply_headers=self.headers,
                        reply_body=self.body,
                    )
                )
            except VerdictError as exc:
                raise ConfigError(exc.reason) from None

    def on_receive(self, ctx, headers, buf, trailers):
        if not self.status:
            return CONTINUE
        self.handler.send_hijack_reply(self.status, self.headers, self.body)
        return STOP


def _header_list(value):
    if value is None:
        return []
    if isinstance(value, dict):  # MOSN: {"name": "value"}
        pairs = list(value.items())
    elif isinstance(value, list):  # [{"key": "name", "value": "value"}]
        pairs = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or set(item) != {"key", "value"}:
                raise ConfigError(
                    f'must be an object {{"key": ..., '
                    f'"value": ...}}, not {item!r}',
                    f"header_list[{i}]",
                )
            pairs.append((item["key"], item["value"]))
    else:
        raise ConfigError(
            f"must be an array or an object, not {json_type(value)}",
            "header_list",
        )
    for name, header_value in pairs:
        if not isinstance(header_value, str):
            raise ConfigError(
                f"the value of {name!r} must be a string, "
                f"not {json_type(header_value)}",
                "header_list",
            )
    return pairs
