"""When each API request reached the wire: the kernel's timestamp of the packet that
carries its request line to the emulator's port, read off loopback with a packet socket.

The emulator stamps a request when its handler runs, late by however long its process
waited for a core. On two cores shared with the worker, that bunches requests the worker
sent evenly spaced. The kernel stamps a packet as the worker's write puts it on loopback,
whatever either process is doing then: these are the times a service across a network
counts. A packet socket needs CAP_NET_RAW (root); without it there is no wire record,
and the rows say the times are the emulator's.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # loopback shows each packet twice: as it leaves, and as it arrives
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_TIMESTAMPNS = 35  # Linux; the socket module does not name it
_ETHERNET = 14
# What the emulator counts as an arrival: any API request, by its request line.
_REQUEST = re.compile(rb"(?:GET|POST|PUT|DELETE) /v2/")


class Wire:
    """The request lines sent to one loopback port while open; ``times`` are the
    kernel's, in Unix seconds. ``dropped`` counts packets the kernel could not queue
    for this reader: a record with drops is incomplete."""

    def __init__(self, sock: socket.socket, port: int) -> None:
        self._sock = sock
        self._port = port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="wire", daemon=True)
        self.times: list[float] = []
        self.dropped = 0

    def _read(self) -> None:
        space = socket.CMSG_SPACE(16)
        while True:
            try:
                data, ancillary, _, address = self._sock.recvmsg(65535, space)
            except TimeoutError:
                # Asked to stop, the reader goes on until the queue is empty.
                if self._stop.is_set():
                    return
                continue
            if address[2] != PACKET_OUTGOING or self._port != _destination(data):
                continue
            if _REQUEST.match(_payload(data)):
                for level, kind, stamp in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        seconds, nanoseconds = struct.unpack("qq", stamp)
                        self.times.append(seconds + nanoseconds / 1e9)

    def _close(self) -> None:
        self._stop.set()
        self._thread.join()
        tallies = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        self.dropped = struct.unpack("II", tallies)[1]
        self._sock.close()


@contextmanager
def wire(port: int) -> Iterator[Wire | None]:
    """A Wire recording requests to ``port`` on loopback; None where no packet socket
    can be opened (not Linux, or not allowed)."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except (AttributeError, OSError):
        yield None
        return
    try:
        sock.bind(("lo", 0))
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        sock.settimeout(0.1)
    except BaseException:
        sock.close()
        raise
    recorder = Wire(sock, port)
    recorder._thread.start()
    try:
        yield recorder
    finally:
        recorder._close()


def _transport(frame: bytes) -> bytes:
    """The TCP segment of an IPv4 or IPv6 frame off loopback; b"" for anything else."""
    kind = frame[12:14]
    if kind == b"\x08\x00" and frame[_ETHERNET + 9] == socket.IPPROTO_TCP:
        return frame[_ETHERNET + (frame[_ETHERNET] & 15) * 4 :]
    if kind == b"\x86\xdd" and frame[_ETHERNET + 6] == socket.IPPROTO_TCP:
        return frame[_ETHERNET + 40 :]
    return b""


def _destination(frame: bytes) -> int:
    segment = _transport(frame)
    return int.from_bytes(segment[2:4]) if len(segment) >= 20 else -1


def _payload(frame: bytes) -> bytes:
    segment = _transport(frame)
    return segment[(segment[12] >> 4) * 4 :]
