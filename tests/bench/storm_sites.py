"""The demo sites as bench/scale_bench.py's storm clients see them, in one
small
asyncio server: each request's uid picks the site that answers, "site sN
from PORT". `close_every`: close every Nth uid's connection unanswered, as
a broken gateway would."""

import asyncio
import re
import socket
import threading

SITE_PORTS = {"s1a": 3450, "s1b": 3451, "s2": 3452, "s3": 3453}
ANSWERING = {"s1": 3450, "s2": 3452, "s3": 3453}


def site_of(uid):
    return "s1" if uid <= 100 else "s2" if uid <= 200 else "s3"


class Sites(threading.Thread):
    def __init__(self, port=0, close_every=0):
        super().__init__(daemon=True)
        self.close_every = close_every
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.start()

    async def handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                uid = int(re.search(rb"(?i)uid: *(\d+)", head).group(1))
                if self.close_every and uid % self.close_every == 0:
                    break
                site = site_of(uid)
                body = b"site %s from %d" % (site.encode(), ANSWERING[site])
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def run(self):
        async def main():
            server = await asyncio.start_server(self.handle, sock=self.sock)
            await server.serve_forever()

        asyncio.run(main())
