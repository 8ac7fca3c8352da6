"""Plugin server for the plugin peer (the Kong Python PDK / APISIX Python
runner way): a uvloop unix-socket server speaking a line protocol.

Each nginx worker keeps connections open (cosocket keepalive) and writes one
line per request, the uid header or an empty line; the server answers with one
line, the site. One process, so the round robin is exact.

    python -m bench.peers.plugin_server --socket /path/to/plugin.sock
"""

import asyncio
import os

from bench.peers import site_for
from bench.services import serve_on_socket, until_stopped

# a peer that sends this much without a newline is broken
MAX_PENDING = 64 * 1024


def answer(uid):
    """The line that names uid's site."""
    return site_for(uid.decode("latin-1")).encode() + b"\n"


class RouteProtocol(asyncio.Protocol):
    """Answers every complete line; keeps a partial line for the next read."""

    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        *lines, self.pending = (self.pending + data).split(b"\n")
        if lines:
            self.transport.write(
                b"".join(answer(line.rstrip(b"\r")) for line in lines)
            )
        if len(self.pending) > MAX_PENDING:
            self.transport.close()


async def serve(path):
    if os.path.exists(path):
        os.unlink(path)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(RouteProtocol, path)
    os.chmod(path, 0o666)  # nginx workers may run as another user
    await until_stopped()
    server.close()


if __name__ == "__main__":
    serve_on_socket(serve, __doc__.splitlines()[0])
