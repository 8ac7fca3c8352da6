"""pyworker.deadlines on a real event loop: each item expires once, after
its deadline and never before; a discarded one never; no timer runs when
nothing waits."""

import asyncio
import time

from pyworker.deadlines import Deadlines


def run(body):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(body(loop))
    finally:
        loop.close()


def test_items_expire_after_their_deadlines_in_order():
    async def body(loop):
        expired = []
        d = Deadlines(
            loop, lambda item: expired.append((item, loop.time())), tick=0.005
        )
        now = loop.time()
        due = {"late": now + 0.06, "soon": now + 0.02, "past": now - 1}
        for item, deadline in due.items():
            d.add(item, deadline)
        while len(expired) < 3:
            await asyncio.sleep(0.005)
        assert [item for item, _ in expired] == ["past", "soon", "late"]
        for item, when in expired:
            assert when >= due[item], (item, when - due[item])
        # nothing waits: no timer is left running
        assert d.timer is None and len(d) == 0

    run(body)


def test_a_discarded_item_never_expires():
    async def body(loop):
        expired = []
        d = Deadlines(loop, expired.append, tick=0.005)
        key = d.add("gone", loop.time() + 0.01)
        d.add("kept", loop.time() + 0.03)
        d.discard("gone", key)
        while not expired:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.03)
        assert expired == ["kept"]

    run(body)


def test_close_expires_nothing():
    async def body(loop):
        expired = []
        d = Deadlines(loop, expired.append, tick=0.005)
        d.add("a", loop.time() + 0.01)
        d.close()
        await asyncio.sleep(0.05)
        assert expired == [] and d.timer is None

    run(body)


def test_a_long_pause_expires_everything_due_at_once():
    async def body(loop):
        expired = []
        d = Deadlines(loop, expired.append, tick=0.001)
        for i in range(5):
            d.add(i, loop.time() + 0.002 * i)
        d.add("later", loop.time() + 60)
        # the loop is blocked far past every tick between
        time.sleep(0.05)
        await asyncio.sleep(0.01)
        assert sorted(expired) == [0, 1, 2, 3, 4]
        d.close()

    run(body)
