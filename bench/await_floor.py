"""What awaiting costs a Python process at the least, with no gateway
around it: the floor under any filter that awaits a service.

    python -m bench.await_floor --port PORT [--path /auth/x]
        [--connections 256] [--seconds 5] [--tasks 20000]

On the worker's event loop (uvloop where installed), one process, no
nginx, no ring, prints as JSON the CPU (user + system) of:

  task_us        a task per request, as the worker starts for a chain
                 that awaits: create_task, a done callback, one step
  timer_task_us  the same task awaiting a 10 ms timer (asyncio.sleep)
  client_us      one exchange with the service at PORT through the
                 client ext_authz uses (pyworker.httpclient), from
                 --connections long-lived coroutines: a request written,
                 its answer read and parsed; no task per request
  client_rps     the rate those exchanges ran at

bench/async_bench.py runs it against its authorization service and sets
these beside what the gateway's Python worker spends per request.
"""

import argparse
import asyncio
import json
import resource
import time

from pyworker.httpclient import HttpPool
from pyworker.worker import new_event_loop


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def tasks(count, delay):
    """CPU per task of ``count`` tasks in flight together, each awaiting
    ``delay`` seconds (none: it ends at its first step)."""
    loop = asyncio.get_running_loop()
    all_done = loop.create_future()
    left = count

    async def work():
        if delay:
            await asyncio.sleep(delay)
        return None

    def ended(task):
        nonlocal left
        left -= 1
        if not left:
            all_done.set_result(None)

    started = cpu_seconds()
    for _ in range(count):
        loop.create_task(work()).add_done_callback(ended)
    await all_done
    return 1e6 * (cpu_seconds() - started) / count


async def client(port, path, connections, seconds):
    """(CPU µs per exchange, exchanges per second)."""
    pool = HttpPool("127.0.0.1", port, max_connections=connections)
    headers = [("Authorization", "Bearer good")]
    done = 0
    until = 0.0

    async def loop_():
        nonlocal done
        while time.monotonic() < until:
            status, _, _ = await pool.request(
                "GET", path, headers, timeout=2.0
            )
            if status != 200:
                raise RuntimeError("the service answered %d" % status)
            done += 1

    # warm-up: every connection opened before the measure
    until = time.monotonic() + 1.0
    await asyncio.gather(*(loop_() for _ in range(connections)))
    done = 0
    until = time.monotonic() + seconds
    started, cpu = time.monotonic(), cpu_seconds()
    await asyncio.gather(*(loop_() for _ in range(connections)))
    elapsed = time.monotonic() - started
    used = cpu_seconds() - cpu
    await pool.close()
    return 1e6 * used / done, done / elapsed


async def measure(args):
    out = {
        "task_us": await tasks(args.tasks, 0),
        "timer_task_us": await tasks(args.tasks, 0.01),
    }
    out["client_us"], out["client_rps"] = await client(
        args.port, args.path, args.connections, args.seconds
    )
    out["loop"] = type(asyncio.get_running_loop()).__module__
    out["connections"] = args.connections
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/auth/x")
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--tasks", type=int, default=20000)
    args = p.parse_args()
    loop = new_event_loop()
    try:
        print(json.dumps(loop.run_until_complete(measure(args))))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
