"""The etcd source's gRPC channel against a real etcd-server: values
larger than a frame and than a flow-control window both ways, gRPC errors
with etcd's status, a watch whose burst is read at once, a watch ended
when its member loses the cluster's leader, and the failures of a server
that is not there or does not answer."""

import asyncio
import socket

import pytest

from fleet import Etcd
from pyworker.discovery.etcdwire import (
    PUT,
    RANGE,
    WATCH,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    WatchCreateRequest,
    WatchRequest,
    WatchResponse,
)
from pyworker.discovery.grpcchannel import Channel, ChannelError, GrpcError

pytestmark = pytest.mark.slow


@pytest.fixture
def etcd():
    e = Etcd(1).start()
    yield e
    e.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def connect(member, coalesce=0.0):
    host, port = member.rsplit(":", 1)
    return await Channel.open(host, int(port), 5.0, coalesce)


async def put(channel, key, value):
    answer = await channel.unary(
        PUT, PutRequest(key=key, value=value), PutResponse
    )
    return answer.header.revision


def watch(channel, key, start, on_events, metadata=()):
    """A watch of ``key`` from ``start``; on_events(list of events) per
    read; returns its Call."""

    def answers(messages):
        events = []
        for raw in messages:
            events.extend(WatchResponse.FromString(raw).events)
        if events:
            on_events(events)

    request = WatchRequest(
        create_request=WatchCreateRequest(key=key, start_revision=start)
    )
    return channel.start(
        WATCH,
        request.SerializeToString(),
        list(metadata),
        answers,
        half_close=False,
    )


def test_a_value_larger_than_a_frame_and_a_window_both_ways(etcd):
    # 16 kB frames, 64 kB initial windows: the put waits for the
    # server's window updates, the range comes back in many frames
    value = bytes(range(33, 127)) * 3200  # 300,800 bytes

    async def main():
        channel = await connect(etcd.endpoints[0])
        try:
            revision = await put(channel, b"/big", value)
            got = await channel.unary(
                RANGE, RangeRequest(key=b"/big"), RangeResponse
            )
            return revision, got
        finally:
            channel.close()

    revision, got = run(main())
    assert [kv.value for kv in got.kvs] == [value]
    assert got.kvs[0].mod_revision == revision
    # what etcd's own client reads back
    assert (
        etcd.ctl("get", "/big", "--print-value-only").stdout
        == value.decode() + "\n"
    )


def test_an_etcd_error_is_a_grpc_status(etcd):
    etcd.put("/k", "1")
    revision = etcd.put("/k", "2")
    etcd.compact(revision)

    async def main():
        channel = await connect(etcd.endpoints[0])
        try:
            with pytest.raises(GrpcError) as err:
                await channel.unary(
                    RANGE, RangeRequest(key=b"/k", revision=1), RangeResponse
                )
            # the connection is still good for the next call
            got = await channel.unary(
                RANGE, RangeRequest(key=b"/k"), RangeResponse
            )
            return err.value, got
        finally:
            channel.close()

    err, got = run(main())
    assert err.code == 11  # OUT_OF_RANGE
    assert "compacted" in err.message
    assert [kv.value for kv in got.kvs] == [b"2"]


def test_a_burst_on_a_watch_is_read_at_once_and_in_order(etcd):
    async def main():
        watcher = await connect(etcd.endpoints[0], coalesce=1.0)
        writer = await connect(etcd.endpoints[0])
        reads, times = [], []
        first = asyncio.Event()
        every = asyncio.Event()

        def on_events(events):
            reads.append([e.kv.value for e in events])
            times.append(asyncio.get_running_loop().time())
            first.set()
            if sum(map(len, reads)) >= 21:
                every.set()

        try:
            start = await put(writer, b"/w", b"0") + 1
            call = watch(watcher, b"/w", start, on_events)
            await put(writer, b"/w", b"1")
            await first.wait()
            # twenty more while the watch lets them gather
            for i in range(2, 22):
                await put(writer, b"/w", str(i).encode())
            await every.wait()
            assert not call.done.done()
            return reads, times
        finally:
            watcher.close()
            writer.close()

    reads, times = run(main())
    assert [v for read in reads for v in read] == [
        str(i).encode() for i in range(1, 22)
    ]
    assert reads[0] == [b"1"]  # a change after a quiet spell at once
    # after a read the stream is left alone for the window: what came
    # meanwhile is read at once, whatever the machine's speed
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps and min(gaps) >= 0.99, gaps
    assert len(reads) < 21


@pytest.fixture
def cluster():
    e = Etcd(3).start()
    yield e
    e.close()


def test_a_watch_that_requires_a_leader_ends_when_it_is_lost(cluster):
    member = cluster.members[0]

    async def main():
        channel = await connect(member.endpoint)
        try:
            await put(channel, b"/x", b"1")
            call = watch(
                channel, b"/x", 0, lambda events: None, [("hasleader", "true")]
            )
            await asyncio.sleep(0.5)
            assert not call.done.done()
            for other in cluster.members[1:]:
                other.stop()
            return await asyncio.wait_for(call.done, 30)
        finally:
            channel.close()

    ended = run(main())
    assert isinstance(ended, GrpcError), ended
    assert "no leader" in ended.message


def test_no_server_and_a_silent_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        # bound, not listening: the connection is refused
        with pytest.raises(ChannelError):
            run(Channel.open("127.0.0.1", port, 2.0))
        s.listen()

        async def silent():
            channel = await Channel.open("127.0.0.1", port, 2.0)
            try:
                await channel.unary(
                    RANGE, RangeRequest(key=b"/"), RangeResponse, timeout=0.5
                )
            finally:
                channel.close()

        with pytest.raises(TimeoutError, match="no answer in 0.5 s"):
            run(silent())
