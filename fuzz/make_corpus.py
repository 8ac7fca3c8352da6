"""Writes a seed corpus of valid verdicts for the verdict fuzzer, or with
--requests of request records for the request parser's.

    python3 fuzz/make_corpus.py [--requests] DIR

Every seed is encoded by shm_ring.codec.encode_verdict, the reference
encoder, so the fuzzer starts from what a Python worker really writes.
"""

import hashlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

from shm_ring.codec import (
    ACTION_ERROR,
    ACTION_REPLY,  # noqa: E402
    Verdict,
    encode_request,
    encode_verdict,
)


def verdicts():
    yield Verdict()
    yield Verdict(upstream="s1")
    yield Verdict(upstream="s3", metadata={"UNIT": "s3"})
    yield Verdict(
        upstream="[::1]:3450",
        metadata={"UNIT": "s1", "IDC": "eu-1", "ZONE": ""},
    )
    yield Verdict(
        request_set=[("X-Unit", "s2"), ("uid", "101")],
        request_remove=["Cookie", "X-Debug"],
        response_add=[("X-Served-By", "mosn")],
    )
    yield Verdict(
        action=ACTION_REPLY,
        status=200,
        reply_headers=[("Content-Type", "text/plain")],
        reply_body=b"hello\n",
    )
    yield Verdict(action=ACTION_REPLY, status=403, reply_body=b"denied")
    yield Verdict(action=ACTION_REPLY, status=599)
    yield Verdict(
        action=ACTION_REPLY,
        status=302,
        reply_headers=[("Location", "http://example.com/a?b=c")],
        response_add=[("Set-Cookie", "a=b; Path=/")],
    )
    yield Verdict.error("filter raised ValueError: bad uid")
    yield Verdict(action=ACTION_ERROR)
    yield Verdict(log="routed by uid")
    yield Verdict(metadata={"k%d" % i: "v" * i for i in range(40)})
    yield Verdict(request_set=[("h%d" % i, "x") for i in range(255)])
    yield Verdict(
        upstream="u" * 255,
        metadata={"K" * 64: "\x7f\xff"},
        request_set=[("!#$%&'*+-.^_`|~", "\t value ")],
    )
    yield Verdict(
        action=ACTION_REPLY,
        status=500,
        reply_body=bytes(range(256)),
        log="\u00e9t\u00e9",
    )
    # the response phase: the request's verdict asks for it, and the
    # verdict on the response sets, removes and adds header lines
    yield Verdict(upstream="s1", metadata={"UNIT": "s1"}, run_senders=True)
    yield Verdict(
        response_set=[
            ("Cache-Control", "no-store"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ],
        response_remove=["Server", "X-Internal"],
        response_add=[("Retry-After", "1")],
    )
    yield Verdict(response_remove=["x-%d" % i for i in range(100)])
    # a new body, and the flag that asks for compressed bodies decoded
    yield Verdict(run_senders=True, decode_body=True)
    yield Verdict(
        response_remove=["ETag", "Content-Encoding"],
        response_body=b'{"card": "****"}',
    )
    yield Verdict(response_body=b"")
    yield Verdict(response_body=bytes(range(256)) * 4, log="redacted")


def requests():
    yield encode_request()
    yield encode_request(
        "serverListener",
        "GET",
        "/a/b",
        "x=1&y=2",
        headers=[
            ("Host", "gw"),
            ("uid", "2"),
            ("Cookie", "a=1"),
            ("cookie", "b=2"),
        ],
        request_id=7,
    )
    yield encode_request(
        "l",
        "POST",
        "/up",
        body=b"\0\1\2" * 100,
        headers=[("Content-Length", "300")],
    )
    yield encode_request(
        "l",
        status=502,
        headers=[("Server", "up")],
        metadata={"UNIT": "s1", "IDC": ""},
    )
    yield encode_request(
        "l",
        status=200,
        body=b'{"card": "4111"}',
        headers=[("Content-Type", "application/json")],
        metadata={"UNIT": "s1"},
    )
    yield encode_request(
        "l", headers=[("h%d" % i, "v" * i) for i in range(60)]
    )
    yield encode_request(
        "\u00e9", path="/\u00ff", remote_addr="::1", protocol="HTTP/2.0"
    )


def main():
    args = sys.argv[1:]
    make = [encode_verdict(v) for v in verdicts()]
    if args[:1] == ["--requests"]:
        args = args[1:]
        make = list(requests())
    if len(args) != 1:
        sys.exit(__doc__.strip())
    out = args[0]
    os.makedirs(out, exist_ok=True)
    n = 0
    for data in make:
        name = hashlib.sha1(data).hexdigest()
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        n += 1
    print("%d seeds in %s" % (n, out))


if __name__ == "__main__":
    main()
