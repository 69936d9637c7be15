"""The bench's wire record (bench.wire): frames parsed back to port and payload, and a
real record of requests sent over loopback."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import wire

ports = st.integers(min_value=0, max_value=65535)
payloads = st.binary(max_size=200)


def _tcp(port: int, payload: bytes, options: int) -> bytes:
    header = struct.pack("!HHIIBBHHH", 40000, port, 1, 0, (5 + options) << 4, 0x18, 512, 0, 0)
    return header + b"\x01" * 4 * options + payload


def _ipv4(segment: bytes, options: int) -> bytes:
    first = bytes([0x40 | (5 + options)])
    rest = struct.pack("!BHHHBBH4s4s", 0, 20 + 4 * options + len(segment), 0, 0, 64, 6, 0,
                       bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))  # fmt: skip
    return b"\x00" * 12 + b"\x08\x00" + first + rest + b"\x01" * 4 * options + segment


def _ipv6(segment: bytes) -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(segment), 6, 64, b"\0" * 15 + b"\1",
                         b"\0" * 15 + b"\1")  # fmt: skip
    return b"\x00" * 12 + b"\x86\xdd" + header + segment


@given(ports, payloads, st.integers(0, 10), st.integers(0, 10))
def test_an_ipv4_frame_gives_back_its_port_and_payload(
    port: int, payload: bytes, ip_options: int, tcp_options: int
) -> None:
    frame = _ipv4(_tcp(port, payload, tcp_options), ip_options)
    assert wire._destination(frame) == port
    assert wire._payload(frame) == payload


@given(ports, payloads, st.integers(0, 10))
def test_an_ipv6_frame_gives_back_its_port_and_payload(
    port: int, payload: bytes, tcp_options: int
) -> None:
    frame = _ipv6(_tcp(port, payload, tcp_options))
    assert wire._destination(frame) == port
    assert wire._payload(frame) == payload


@given(ports, payloads)
def test_a_frame_of_another_protocol_has_no_port(port: int, payload: bytes) -> None:
    udp = bytearray(_ipv4(_tcp(port, payload, 0), 0))
    udp[14 + 9] = socket.IPPROTO_UDP
    arp = b"\x00" * 12 + b"\x08\x06" + bytes(28)
    assert wire._destination(bytes(udp)) == -1
    assert wire._destination(arp) == -1


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback server that reads whatever comes and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drain() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                while conn.recv(65536):
                    pass

    thread = threading.Thread(target=drain)
    thread.start()
    yield server
    stop.set()
    thread.join()
    server.close()


def test_the_record_holds_each_api_request_sent_and_nothing_else(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    with wire.wire(port) as recorder:
        if recorder is None:
            pytest.skip("no packet socket here (needs Linux and CAP_NET_RAW)")
        before = time.time()
        with socket.create_connection(("127.0.0.1", port)) as client:
            for line in (b"POST /v2/p/apic", b"GET /_emulator/state", b"DELETE /v2/x"):
                client.sendall(line + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                time.sleep(0.05)
        after = time.time()
    assert recorder.dropped == 0
    assert len(recorder.times) == 2
    assert before <= recorder.times[0] < recorder.times[1] <= after
