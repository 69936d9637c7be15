"""The members API client over loopback: what it tells the rate limiter of each request."""

from __future__ import annotations

import socket

from worker.api import MembersClient
from worker.emulator import Emulator, EmulatorConfig
from worker.members import Channel
from worker.protocol import Landed, Retry

TOKEN = "demo-token"
CHANNEL = Channel("proj1", "inst1", "chan1")
BODY = b'{"members":[{"host":"10.0.0.1","port":80}]}'


class Pacer:
    """Writes down what the client tells it."""

    def __init__(self) -> None:
        self.sends: list[float] = []
        self.abandons = 0

    def sent(self, at: float) -> None:
        self.sends.append(at)

    def abandoned(self) -> None:
        self.abandons += 1


async def test_every_request_that_reaches_the_wire_is_reported_sent_once() -> None:
    pacer = Pacer()
    config = EmulatorConfig(tokens=(TOKEN,), auto_create=True)
    async with (
        Emulator(config) as emulator,
        MembersClient(emulator.url, TOKEN, pacer=pacer) as client,
    ):
        verdicts = [await client.post(CHANNEL, BODY) for _ in range(3)]
    assert all(isinstance(v, Landed) for v in verdicts)
    assert len(pacer.sends) == 3
    assert pacer.sends == sorted(pacer.sends)
    assert pacer.abandons == 0


async def test_a_request_that_never_left_is_reported_abandoned() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    # Nothing listens on the port any more: the connection is refused before a byte is sent.
    pacer = Pacer()
    async with MembersClient(f"http://127.0.0.1:{port}", TOKEN, pacer=pacer) as client:
        verdict = await client.post(CHANNEL, BODY)
    assert isinstance(verdict, Retry)
    assert verdict.code == "connection_error"
    assert pacer.sends == []
    assert pacer.abandons == 1
