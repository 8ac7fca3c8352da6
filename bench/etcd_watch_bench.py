"""What an etcd watch costs the process that follows it: CPU per watched
change of each client, one real etcd member on loopback.

Each client runs in a process of its own, watches a prefix and decodes
every change's JSON value (what the discovery process does before the
table write); this script puts ``--changes`` values to one key under it
at ``--rate`` a second and the client reports its own CPU time from its
first to its last change.  Clients:

    channel     pyworker.discovery.grpcchannel, each read handed over
    channel:S   the same, the watch gathering for S seconds after a read
    aetcd       aetcd's watch_prefix (grpc.aio)
    grpcio      grpcio's own stubs (the blocking API, a thread)
    grpclib     grpclib (pure-Python gRPC on h2)

aetcd, grpclib (and aetcd's protobuf modules, which the grpcio and
grpclib clients use) are not dependencies of the gateway: a client whose
library is missing is skipped.

    python -m bench.etcd_watch_bench [--clients channel,channel:0.05,aetcd]
        [--changes 500] [--rate 100] [--runs 3]
"""

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import CHECKOUT, report

KEY = b"/bench/watch/"
END = b"/bench/watch0"
ALL = "channel,channel:0.05,aetcd,grpcio,grpclib"


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the clients (each in a process of its own) -------------------------------


async def follow(kind, host, port, n):
    got = 0
    done = asyncio.Event()

    def seen(events):
        nonlocal got
        for event in events:
            json.loads(event.kv.value)
            got += 1
        if got >= n:
            done.set()

    if kind.startswith("channel"):
        from pyworker.discovery.etcdwire import (
            WATCH,
            WatchCreateRequest,
            WatchRequest,
            WatchResponse,
        )
        from pyworker.discovery.grpcchannel import Channel

        window = float(kind.split(":")[1]) if ":" in kind else 0.0
        channel = await Channel.open(host, port, 5.0, window)

        def answers(messages):
            events = []
            for raw in messages:
                events.extend(WatchResponse.FromString(raw).events)
            if events:
                seen(events)

        request = WatchRequest(
            create_request=WatchCreateRequest(key=KEY, range_end=END)
        )
        channel.start(
            WATCH, request.SerializeToString(), [], answers, half_close=False
        )
    elif kind == "aetcd":
        import aetcd

        client = aetcd.Client(host, port)
        await client.connect()
        watch = await client.watch_prefix(KEY)

        async def loop():
            async for event in watch:
                seen([event])

        asyncio.get_running_loop().create_task(loop())
    elif kind == "grpcio":
        import threading

        import grpc
        from aetcd.rpc import rpc_pb2, rpc_pb2_grpc

        stub = rpc_pb2_grpc.WatchStub(grpc.insecure_channel(f"{host}:{port}"))
        loop = asyncio.get_running_loop()

        def requests():
            yield rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(
                    key=KEY, range_end=END
                )
            )
            threading.Event().wait()

        def read():
            for answer in stub.Watch(requests()):
                if answer.events:
                    loop.call_soon_threadsafe(seen, list(answer.events))

        threading.Thread(target=read, daemon=True).start()
    elif kind == "grpclib":
        from aetcd.rpc import rpc_pb2
        from grpclib.client import Channel
        from grpclib.const import Cardinality

        channel = Channel(host, port)

        async def loop():
            async with channel.request(
                "/etcdserverpb.Watch/Watch",
                Cardinality.STREAM_STREAM,
                rpc_pb2.WatchRequest,
                rpc_pb2.WatchResponse,
            ) as stream:
                await stream.send_message(
                    rpc_pb2.WatchRequest(
                        create_request=rpc_pb2.WatchCreateRequest(
                            key=KEY, range_end=END
                        )
                    )
                )
                async for answer in stream:
                    if answer.events:
                        seen(answer.events)

        asyncio.get_running_loop().create_task(loop())
    else:
        raise SystemExit(f"unknown client {kind}")
    await asyncio.sleep(0.5)  # the watch is up
    print("ready", flush=True)
    before = cpu()
    await done.wait()
    print("result %d %.6f" % (got, cpu() - before), flush=True)


def available(kind):
    needs = {
        "aetcd": ["aetcd"],
        "grpcio": ["grpc", "aetcd"],
        "grpclib": ["grpclib", "aetcd"],
    }.get(kind.split(":")[0], [])
    for name in needs:
        try:
            __import__(name)
        except ImportError:
            return False
    return True


# -- the driver ---------------------------------------------------------------


def measure(kind, etcd, args):
    from pyworker.discovery.etcdwire import PUT, PutRequest, PutResponse
    from pyworker.discovery.grpcchannel import Channel

    host, port = etcd.endpoints[0].rsplit(":", 1)
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            __spec__.name,
            "--follow",
            kind,
            host,
            port,
            str(args.changes),
        ],
        cwd=CHECKOUT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout.readline().strip() == "ready", kind

        async def write():
            channel = await Channel.open(host, int(port), 5.0)
            next_at = time.monotonic()
            for i in range(args.changes):
                value = json.dumps(
                    {
                        "server_list": [
                            {
                                "ip": "10.0.0.1",
                                "port": 1000 + i % 4,
                                "site": "s1",
                            }
                        ]
                    }
                ).encode()
                await channel.unary(
                    PUT,
                    PutRequest(key=KEY + b"test", value=value),
                    PutResponse,
                )
                next_at += 1 / args.rate
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            channel.close()

        asyncio.run(write())
        _, got, used = client.stdout.readline().split()
        client.wait(30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    return int(got), float(used)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", default=ALL)
    p.add_argument("--changes", type=int, default=500)
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--follow", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.follow:
        kind, host, port, n = args.follow
        asyncio.run(follow(kind, host, int(port), int(n)))
        return
    from fleet import Etcd

    kinds = [k for k in args.clients.split(",") if available(k)]
    skipped = [k for k in args.clients.split(",") if k not in kinds]
    load = Path("/proc/loadavg").read_text().strip()
    etcd = Etcd(1).start()
    per = {k: [] for k in kinds}
    try:
        for _ in range(args.runs):
            for kind in kinds:  # interleaved, so load hits all alike
                got, used = measure(kind, etcd, args)
                per[kind].append(used * 1000 / got)
                print(
                    "%-14s %d changes  %.3f ms CPU per change"
                    % (kind, got, per[kind][-1]),
                    flush=True,
                )
    finally:
        etcd.close()
    print()
    print("Command: `%s`  " % report.command(__spec__.name))
    print(
        "Load average before: %s; after: %s  "
        % (load, Path("/proc/loadavg").read_text().strip())
    )
    print(
        "%d changes at %g a second, %d interleaved runs%s"
        % (
            args.changes,
            args.rate,
            args.runs,
            "; skipped (not installed): " + ", ".join(skipped)
            if skipped
            else "",
        )
    )
    print()
    print("| client | ms CPU per change, median | runs |")
    print("| --- | --- | --- |")
    for kind in kinds:
        print(
            "| %s | %.3f | %s |"
            % (
                kind,
                statistics.median(per[kind]),
                " / ".join("%.3f" % v for v in per[kind]),
            )
        )


if __name__ == "__main__":
    main()
