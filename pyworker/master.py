"""What the nginx master tells the supervisor it spawned.

nginx runs the supervisor as one of its own processes: the master hands
it nginx's channel, on which every nginx process is told to quit,
terminate or reopen its logs, and a socket of the master's orders, on
which each reload names the MOSN config and the number of workers.  Only
the master and the supervisor hold either; nothing is taken from the
shared-memory region, which processes of the workers' user can write.
"""

import array
import ctypes
import logging
import os
import socket

log = logging.getLogger("pyworker.supervisor")

# ngx_channel_t and its commands (src/os/unix/ngx_channel.h,
# ngx_process_cycle.h)
CMD_OPEN_CHANNEL = 1
CMD_CLOSE_CHANNEL = 2
CMD_QUIT = 3
CMD_TERMINATE = 4
CMD_REOPEN = 5

COMMANDS = {CMD_QUIT: "quit", CMD_TERMINATE: "terminate", CMD_REOPEN: "reopen"}


class _NgxChannel(ctypes.Structure):
    _fields_ = [
        ("command", ctypes.c_size_t),  # ngx_uint_t
        ("pid", ctypes.c_int),  # ngx_pid_t
        ("slot", ctypes.c_ssize_t),  # ngx_int_t
        ("fd", ctypes.c_int),
    ]  # ngx_fd_t


class NginxChannel:
    """The supervisor's end of its nginx channel."""

    def __init__(self, fd):
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self.size = ctypes.sizeof(_NgxChannel)
        self.buf = b""
        self.closed = False

    def fileno(self):
        return self.sock.fileno()

    def read(self):
        """The commands that came ("quit", "terminate", "reopen")."""
        out = []
        while not self.closed:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(16 * 4)
                )
            except (BlockingIOError, InterruptedError):
                break
            # nginx passes other processes' channels along: not ours
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(cdata[: len(cdata) - len(cdata) % 4])
                    for fd in fds:
                        os.close(fd)
            if not data:
                self.closed = True
                break
            self.buf += data
            while len(self.buf) >= self.size:
                msg = _NgxChannel.from_buffer_copy(self.buf[: self.size])
                self.buf = self.buf[self.size :]
                if msg.command in COMMANDS:
                    out.append(COMMANDS[msg.command])
        return out


class Orders:
    """The master's orders: "SEQ WORKERS CONFIG", one datagram each."""

    def __init__(self, fd, seq=0):
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self.seq = seq

    def fileno(self):
        return self.sock.fileno()

    def read(self):
        """The newest order past the one this supervisor started with:
        (workers, config path), or None."""
        newest = None
        while True:
            try:
                msg = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            if not msg:
                break
            try:
                seq, workers, config = msg.split(b" ", 2)
                seq, workers = int(seq), int(workers)
            except ValueError:
                log.error(
                    "an order of the nginx master could not be read: %r",
                    msg[:80],
                )
                continue
            if seq > self.seq and workers > 0 and config:
                self.seq = seq
                newest = (workers, os.fsdecode(config))
        return newest
