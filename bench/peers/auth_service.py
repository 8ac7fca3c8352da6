"""Route service for the auth_request peer.

nginx sends one subrequest per client request; this aiohttp app (on uvloop)
answers 200 with the chosen site in the X-Site header. One process, so the
round robin for a missing or non-numeric uid is exact.

    python3 auth_service.py --socket /path/to/auth.sock
"""
import argparse
import asyncio
import itertools
import os
import re
import signal

import uvloop
from aiohttp import web

INTEGER = re.compile(r"-?[0-9]+")
TURNS = itertools.cycle(("s1", "s2", "s3"))


def site_for(uid):
    """Same rule as every peer: 1..100 s1, 101..200 s2, other integer s3."""
    if uid is None or not INTEGER.fullmatch(uid):
        return next(TURNS)
    n = int(uid)
    if 1 <= n <= 100:
        return "s1"
    if 101 <= n <= 200:
        return "s2"
    return "s3"


async def route(request):
    return web.Response(headers={"X-Site": site_for(request.headers.get("uid"))})


async def serve(path):
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    if os.path.exists(path):
        os.unlink(path)
    await web.UnixSite(runner, path).start()
    os.chmod(path, 0o666)  # nginx workers may run as another user
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="unix socket to listen on")
    args = parser.parse_args()
    uvloop.run(serve(args.socket))


if __name__ == "__main__":
    main()
