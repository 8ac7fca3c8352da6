"""Deadlines of many things in flight at once, with no timer per thing.

A per-request ``loop.call_later`` (or ``asyncio.timeout``) costs a timer
handle, a heap insertion and its removal for every request, most of which
end long before their deadline.  Here a deadline goes into the set of its
tick (a hash insertion; ending early is a set removal) and one timer,
running only while something waits, looks every ``tick`` seconds: a thing
expires after its deadline, by at most one tick.
"""

__all__ = ["Deadlines"]


class Deadlines:
    """Calls ``expire(item)`` once ``loop.time()`` has passed the deadline
    an item was added with, unless it was discarded first."""

    __slots__ = ("loop", "expire", "tick", "buckets", "swept", "timer")

    def __init__(self, loop, expire, tick=0.01):
        self.loop = loop
        self.expire = expire
        self.tick = tick
        self.buckets = {}  # tick number -> items due by its end
        self.swept = None  # the last tick number swept
        self.timer = None

    def __len__(self):
        return sum(len(items) for items in self.buckets.values())

    def add(self, item, deadline):
        """Watches ``item`` until ``deadline`` (loop.time() seconds);
        returns the key to discard it with."""
        # the tick whose end is at or after the deadline: never early
        key = -int(-deadline // self.tick)
        if self.timer is None:
            self.swept = int(self.loop.time() // self.tick) - 1
            self.timer = self.loop.call_later(self.tick, self._sweep)
        if key <= self.swept:
            # already due: at the next sweep
            key = self.swept + 1
        items = self.buckets.get(key)
        if items is None:
            items = self.buckets[key] = set()
        items.add(item)
        return key

    def discard(self, item, key):
        items = self.buckets.get(key)
        if items is not None:
            items.discard(item)

    def _sweep(self):
        self.timer = None
        now = int(self.loop.time() // self.tick)
        buckets = self.buckets
        due = []
        key = self.swept + 1
        if now - key > len(buckets):
            # a long pause: look at the keys, not at every tick between
            due = sorted(k for k in buckets if k <= now)
        else:
            due = [k for k in range(key, now + 1) if k in buckets]
        self.swept = now
        for key in due:
            for item in buckets.pop(key):
                self.expire(item)
        if buckets:
            self.timer = self.loop.call_later(self.tick, self._sweep)

    def close(self):
        """Forgets everything; expires nothing."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.buckets.clear()
