"""Route service for the auth_request peer.

nginx sends one subrequest per client request; this aiohttp app (on uvloop)
answers 200 with the chosen site in the X-Site header. One process, so the
round robin for a missing or non-numeric uid is exact.

    python -m bench.peers.auth_service --socket /path/to/auth.sock
"""

import os

from aiohttp import web

from bench.peers import site_for
from bench.services import serve_app, serve_on_socket


async def route(request):
    site = site_for(request.headers.get("uid"))
    return web.Response(headers={"X-Site": site})


async def serve(path):
    async def listen(runner):
        if os.path.exists(path):
            os.unlink(path)
        await web.UnixSite(runner, path).start()
        os.chmod(path, 0o666)  # nginx workers may run as another user

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    await serve_app(app, listen)


if __name__ == "__main__":
    serve_on_socket(serve, __doc__.splitlines()[0])
