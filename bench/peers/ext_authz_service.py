"""An HTTP authorization service for the ext_authz tests (aiohttp).

    python -m bench.peers.ext_authz_service --port N [--delay-ms D]

What it answers, by the request it gets:

- ``Authorization: Bearer good``: 200 with ``X-User: alice``,
  ``X-Tenant: t1`` and ``Set-Cookie: seen=1``;
- ``Authorization: Bearer slow``: the same after ``X-Delay-Ms`` ms (or
  10 s);
- any other: 401 with ``WWW-Authenticate: Bearer``, ``X-Reason: bad
  token`` and the body ``denied by the service``;
- every answer waits ``--delay-ms`` first.

``GET /_seen`` (not counted) lists, as JSON, what each check carried:
method, path (decoded, and as it came: ``raw_path``) and headers, in
order, and ``/_in_flight`` how many checks
are being answered now.  ``DELETE /_seen`` forgets them.
"""

import argparse
import asyncio
import json

from aiohttp import web

from bench.services import serve_app

SEEN = []
IN_FLIGHT = [0, 0]  # now, most at once


async def check(request):
    if request.path == "/_seen":
        if request.method == "DELETE":
            SEEN.clear()
            IN_FLIGHT[1] = 0
        return web.Response(
            text=json.dumps(SEEN), content_type="application/json"
        )
    if request.path == "/_in_flight":
        return web.Response(
            text=json.dumps(IN_FLIGHT), content_type="application/json"
        )
    SEEN.append(
        {
            "method": request.method,
            "path": request.path_qs,
            "raw_path": request.raw_path,
            "headers": list(request.headers.items()),
        }
    )
    IN_FLIGHT[0] += 1
    IN_FLIGHT[1] = max(IN_FLIGHT)
    try:
        delay = request.app["delay"]
        token = request.headers.get("Authorization", "")
        if token == "Bearer slow":
            delay = int(request.headers.get("X-Delay-Ms", "10000")) / 1000
        if delay:
            await asyncio.sleep(delay)
        if token in ("Bearer good", "Bearer slow"):
            return web.Response(
                status=200,
                headers={
                    "X-User": "alice",
                    "X-Tenant": "t1",
                    "Set-Cookie": "seen=1",
                },
            )
        return web.Response(
            status=401,
            text="denied by the service",
            headers={"WWW-Authenticate": "Bearer", "X-Reason": "bad token"},
        )
    finally:
        IN_FLIGHT[0] -= 1


async def serve(port, delay):
    async def listen(runner):
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        print("ready", flush=True)

    app = web.Application()
    app["delay"] = delay
    # any path, also one with a (decoded) line break in it
    app.router.add_route("*", r"/{tail:[\s\S]*}", check)
    await serve_app(app, listen)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
