"""Filters the integration tests configure: each does one thing that a
test then sees over HTTP."""

import hashlib
import os
import time

from pyworker import (
    CONTINUE,
    STOP,
    StreamReceiverFilter,
    StreamSenderFilter,
    register_filter,
)


@register_filter("edit_headers")
class EditHeaders(StreamReceiverFilter):
    """Sets, removes and adds headers as its config says."""

    def __init__(self, config):
        self.set = config.get("set", {})
        self.remove = config.get("remove", [])
        self.response = config.get("response", {})
        self.upstream = config.get("upstream")

    def on_receive(self, ctx, headers, buf, trailers):
        for name, value in self.set.items():
            headers.set(name, value)
        for name in self.remove:
            headers.delete(name)
        for name, value in self.response.items():
            ctx.add_response_header(name, value)
        if self.upstream:
            ctx.upstream = self.upstream
        return CONTINUE


@register_filter("slow")
class Slow(StreamReceiverFilter):
    """Sleeps before answering: longer than mosn_timeout in the tests."""

    def __init__(self, config):
        self.seconds = float(config.get("seconds", 1.0))

    def on_receive(self, ctx, headers, buf, trailers):
        if headers.get("x-slow", "yes") != "no":
            time.sleep(self.seconds)
        return CONTINUE


@register_filter("boom")
class Boom(StreamReceiverFilter):
    """Raises, as filter code with a bug does."""

    def __init__(self, config):
        pass

    def on_receive(self, ctx, headers, buf, trailers):
        raise ValueError("the filter failed on purpose")


@register_filter("bad_header")
class BadHeader(StreamReceiverFilter):
    """Tries to smuggle CR LF into a request header."""

    def __init__(self, config):
        self.value = config.get("value", "a\r\nX-Injected: 1")

    def on_receive(self, ctx, headers, buf, trailers):
        headers.set("x-bad", self.value)
        return CONTINUE


@register_filter("reply")
class Reply(StreamReceiverFilter):
    """A hijack reply with status, headers and body from the config."""

    def __init__(self, config):
        self.status = config.get("status", 200)
        self.headers = config.get("headers", {})
        self.body = config.get("body", "")

    def on_receive(self, ctx, headers, buf, trailers):
        self.handler.send_hijack_reply(self.status, self.headers, self.body)
        return STOP


@register_filter("whoami")
class WhoAmI(StreamReceiverFilter):
    """Replies with what the worker sees of itself and the request."""

    def __init__(self, config):
        pass

    def on_receive(self, ctx, headers, buf, trailers):
        body = "uid=%d pid=%d method=%s path=%s query=%s headers=%d\n" % (
            os.getuid(),
            os.getpid(),
            ctx.method,
            ctx.path,
            ctx.query,
            len(list(headers.items())),
        )
        self.handler.send_hijack_reply(
            200, {"x-worker-pid": str(os.getpid())}, body
        )
        return STOP


@register_filter("body_digest")
class BodyDigest(StreamReceiverFilter):
    """Tells the upstream how much body the filter saw, and its digest."""

    def __init__(self, config):
        pass

    def on_receive(self, ctx, headers, buf, trailers):
        import hashlib

        if buf is None:
            headers.set("x-filter-body", "none")
        else:
            headers.set(
                "x-filter-body",
                "%d:%s" % (len(buf), hashlib.sha256(buf).hexdigest()[:16]),
            )
        return CONTINUE


@register_filter("bad_verdict")
class BadVerdict(StreamReceiverFilter):
    """Produces the verdict its config names as broken."""

    def __init__(self, config):
        self.kind = config["kind"]

    def on_receive(self, ctx, headers, buf, trailers):
        kind = self.kind
        if kind == "status":
            self.handler.send_hijack_reply(99, {}, "x")
        elif kind == "big_body":
            self.handler.send_hijack_reply(200, {}, "x" * (1 << 20))
        elif kind == "meta_type":
            ctx.metadata["UNIT"] = 42
        elif kind == "nul":
            ctx.add_response_header("x-a", "b\0c")
        elif kind == "name":
            headers.set("bad name", "v")
        elif kind == "host":
            headers.set("Host", "evil.example")
        return CONTINUE


@register_filter("edit_response")
class EditResponse(StreamSenderFilter):
    """A sender filter: sets, removes and adds response headers, says which
    status it saw, and can be slow or fail (header x-response-fault)."""

    def __init__(self, config):
        self.set = config.get("set", {})
        self.remove = config.get("remove", [])
        self.add = config.get("add", {})
        self.cookies = config.get("cookies", [])

    def append(self, ctx, headers, buf, trailers):
        seen = ",".join(sorted(name.lower() for name, _ in headers.items()))
        fault = headers.get("x-response-fault")
        if fault == "boom":
            raise ValueError("the sender filter failed on purpose")
        if fault == "slow":
            time.sleep(1.0)
        for name, value in self.set.items():
            headers.set(name, value)
        for name in self.remove:
            headers.delete(name)
        if self.cookies:
            headers.delete("set-cookie")
            for cookie in self.cookies:
                headers.add("Set-Cookie", cookie)
        for name, value in self.add.items():
            ctx.add_response_header(name, value)
        ctx.add_response_header("x-seen-status", str(self.send_handler.status))
        ctx.add_response_header("x-seen-headers", seen)
        ctx.add_response_header(
            "x-seen-metadata",
            ",".join(f"{k}={v}" for k, v in sorted(ctx.metadata.items())),
        )
        return CONTINUE


@register_filter("fail_start")
class FailStart(StreamReceiverFilter):
    """A worker that loads it cannot start while the file its config names
    exists: a pool whose workers keep failing to start."""

    def __init__(self, config):
        if os.path.exists(config["when"]):
            raise RuntimeError("fail_start: %s exists" % config["when"])

    def on_receive(self, ctx, headers, buf, trailers):
        return CONTINUE


@register_filter("edits_from_header")
class EditsFromHeader(StreamReceiverFilter):
    """Edits the request headers as its x-edits header (JSON) says:
    {"set": {name: value}, "remove": [name], "log": text}; x-edits goes
    too.  A "log" is raised, so that it reaches nginx as the log record
    of a failed filter."""

    def __init__(self, config):
        pass

    def on_receive(self, ctx, headers, buf, trailers):
        import json

        edits = json.loads(headers.get("x-edits") or "{}")
        headers.delete("x-edits")
        if "log" in edits:
            raise ValueError(edits["log"])
        for name, value in edits.get("set", {}).items():
            headers.set(name, value)
        for name in edits.get("remove", []):
            headers.delete(name)
        return CONTINUE


@register_filter("response_edits_from_header")
class ResponseEditsFromHeader(StreamSenderFilter):
    """Edits the response headers as its x-response-edits header (JSON,
    which the upstream echoes) says: {"set": {name: value}, "remove":
    [name], "add": [[name, value]]}; x-response-edits goes too."""

    def __init__(self, config):
        pass

    def append(self, ctx, headers, buf, trailers):
        import json

        edits = json.loads(headers.get("x-response-edits") or "{}")
        headers.delete("x-response-edits")
        for name, value in edits.get("set", {}).items():
            headers.set(name, value)
        for name in edits.get("remove", []):
            headers.delete(name)
        for name, value in edits.get("add", []):
            headers.add(name, value)
        return CONTINUE


@register_filter("await_header")
class AwaitHeader(StreamReceiverFilter):
    """Awaits as long as its x-await-ms header says (0 without one), then
    tells the client which worker and how many requests it had in flight
    at once (x-in-flight-most, in this worker)."""

    in_flight = [0, 0]

    def __init__(self, config):
        pass

    async def on_receive(self, ctx, headers, buf, trailers):
        import asyncio

        counts = AwaitHeader.in_flight
        counts[0] += 1
        counts[1] = max(counts)
        try:
            await asyncio.sleep(int(headers.get("x-await-ms") or 0) / 1000)
        finally:
            counts[0] -= 1
        ctx.add_response_header("x-worker-pid", str(os.getpid()))
        ctx.add_response_header("x-in-flight-most", str(counts[1]))
        return CONTINUE


@register_filter("lifecycle")
class Lifecycle(StreamReceiverFilter):
    """Appends "start PID" and "stop PID" lines to the file its config
    names, from its start() and stop() hooks; its stop() first awaits
    ``stop_seconds`` (or, with ``blocking``, sleeps them without letting
    the loop run), and with a ``tag`` the lines are "start-TAG PID"."""

    def __init__(self, config):
        self.path = config["file"]
        self.suffix = "-" + config["tag"] if "tag" in config else ""
        self.stop_seconds = config.get("stop_seconds", 0)
        self.blocking = config.get("blocking", False)

    def _note(self, what):
        with open(self.path, "a") as f:
            f.write("%s%s %d\n" % (what, self.suffix, os.getpid()))

    async def start(self):
        self._note("start")

    async def stop(self):
        import asyncio
        import time

        if self.blocking:
            time.sleep(self.stop_seconds)
        await asyncio.sleep(0 if self.blocking else self.stop_seconds)
        self._note("stop")

    def on_receive(self, ctx, headers, buf, trailers):
        return CONTINUE


@register_filter("start_gate")
class StartGate(StreamReceiverFilter):
    """A worker that loads it starts serving only once the file its config
    names exists: a pool the test lets start when it has done its part.
    With ``fail``, its start() raises while the file is missing (a
    service that is down when the worker starts) instead of waiting; with
    ``note``, it first makes that file (the test sees it waiting)."""

    def __init__(self, config):
        self.path = config["file"]
        self.fail = config.get("fail", False)
        self.note = config.get("note")

    async def start(self):
        import asyncio

        if self.note:
            open(self.note, "w").close()

        while not os.path.exists(self.path):
            if self.fail:
                raise ConnectionError("start_gate: %s is missing" % self.path)
            await asyncio.sleep(0.01)

    def on_receive(self, ctx, headers, buf, trailers):
        return CONTINUE


@register_filter("rewrite_body")
class RewriteBody(StreamSenderFilter):
    """A sender filter with the response body: says what it saw (header
    x-seen-body: "none", or length and digest) and rewrites it as the
    request's x-body-mode header, else its config's mode, says."""

    def __init__(self, config):
        self.mode = config.get("mode", "none")
        self.decode_body = bool(config.get("decode_body", False))

    def append(self, ctx, headers, buf, trailers):
        ctx.add_response_header(
            "x-seen-body",
            "none" if buf is None else "%d:%s" % (len(buf), digest(buf)),
        )
        mode = ctx.metadata.get("mode") or self.mode
        if buf is None and mode in ("upper", "grow", "shrink"):
            mode = "none"
        if mode == "upper":
            self.send_handler.set_body(buf.upper())
        elif mode == "grow":
            self.send_handler.set_body(buf * 3 + b"!")
        elif mode == "shrink":
            self.send_handler.set_body(buf[: len(buf) // 2])
        elif mode == "empty":
            self.send_handler.set_body(b"")
        elif mode == "text":
            self.send_handler.set_body("h\u00e9llo \u2603\n")
        elif mode == "json":
            # whatever the upstream sent, or whether it was given at all
            self.send_handler.set_body(
                '{"error": %d}' % self.send_handler.status
            )
            headers.set("Content-Type", "application/json")
        elif mode == "huge":
            self.send_handler.set_body(b"h" * (1 << 20))
        elif mode == "slow":
            time.sleep(1.0)
            self.send_handler.set_body(b"late")
        elif mode == "boom":
            raise ValueError("the body filter failed on purpose")
        return CONTINUE


@register_filter("body_mode")
class BodyMode(StreamReceiverFilter):
    """Carries the request's x-body-mode header to the response phase, in
    the metadata."""

    def __init__(self, config):
        pass

    def on_receive(self, ctx, headers, buf, trailers):
        mode = headers.get("x-body-mode")
        if mode:
            ctx.metadata["mode"] = mode
        return CONTINUE


def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]
