"""The members API client over loopback: what it tells the rate limiter of each request."""

from __future__ import annotations

import asyncio
import socket
import time

from worker.client import MembersClient
from worker.config import Api
from worker.credentials import Token
from worker.emulator import Emulator, EmulatorConfig
from worker.members import Channel
from worker.protocol import Kind, post_request

TOKEN = "demo-token"
CHANNEL = Channel("proj1", "inst1", "chan1")
BODY = b'{"members":[{"host":"10.0.0.1","port":80}]}'
REQUEST = post_request(Api.ROMA, CHANNEL, BODY)


class Pacer:
    """Holds every write for ``hold`` seconds, and notes when it let each one go."""

    def __init__(self, hold: float = 0.0) -> None:
        self.hold = hold
        self.departures: list[float] = []

    async def departure(self) -> None:
        await asyncio.sleep(self.hold)
        self.departures.append(time.monotonic())


async def test_the_pacer_holds_the_write_itself() -> None:
    # The rate limiter counts what reaches the wire: the request must not arrive before
    # the pacer let it go, and must arrive right after.
    pacer = Pacer(hold=0.3)
    config = EmulatorConfig(tokens=(TOKEN,), auto_create=True, record_arrivals=True)
    async with (
        Emulator(config) as emulator,
        MembersClient(emulator.url, Token(TOKEN), pacer=pacer) as client,
    ):
        for _ in range(3):
            verdict = await client.send(REQUEST)
            assert verdict.kind is Kind.OK
        arrivals = list(emulator.arrivals or [])
    assert len(pacer.departures) == len(arrivals) == 3
    for departed, arrived in zip(pacer.departures, arrivals, strict=True):
        assert departed <= arrived


async def test_a_request_that_never_left_never_reached_the_pacer() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    # Nothing listens on the port any more: the connection is refused before a byte is sent.
    pacer = Pacer()
    async with MembersClient(f"http://127.0.0.1:{port}", Token(TOKEN), pacer=pacer) as client:
        verdict = await client.send(REQUEST)
    assert verdict.kind is Kind.UNREACHABLE
    assert verdict.code == "connection_error"
    assert pacer.departures == []
