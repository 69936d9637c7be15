"""The HTTP shell: routes, and the order in which a request meets the emulator's rules.

Every API request goes through :meth:`Api.serve`: authentication (401/403), then the
project's token bucket (429), then the injected failures that apply nothing (500 or a
closed connection), then the channel lookup (404), then the body (413/400), then the
change itself, then the fail-after-commit fault, then the answer delay. The rules live in
the pure modules; this one only wires them to aiohttp.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Final

import orjson
from aiohttp import web

from worker.emulator import errors
from worker.emulator.body import BodyReader, Entry
from worker.emulator.config import EmulatorConfig
from worker.emulator.errors import ApiError
from worker.emulator.faults import Draw, Fault, FaultPlan, Throttle, retry_after
from worker.emulator.state import (
    ChannelState,
    EmulatorState,
    QuotaExceeded,
    UnknownChannel,
    UnknownInstance,
    Upserted,
)
from worker.emulator.stats import Stats

MAX_BODY_BYTES: Final = 12 * 1024 * 1024
DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 500
CHANNEL_PATH: Final = (
    "/v2/{project_id}/{product:apic|apigw}/instances/{instance_id}/vpc-channels/{vpc_channel_id}"
)
_JSON: Final = "application/json"

Operation = Callable[[web.Request, ChannelState, bytes], tuple[int, object]]
"""A change or query on one channel: (request, channel, body) -> (status, JSON payload)."""


class _Reset(Exception):
    """The reset fault hit: close the connection without an answer."""


class Api:
    """The emulated service: state, stats, faults and throttle behind the HTTP routes.

    ``clock`` gives monotonic seconds (throttling, arrivals), ``wallclock`` Unix seconds
    (``create_time``). ``arrivals`` collects the arrival time of every API request when
    not None.
    """

    def __init__(
        self,
        config: EmulatorConfig,
        state: EmulatorState,
        stats: Stats,
        faults: FaultPlan,
        *,
        arrivals: list[float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.state = state
        self.stats = stats
        self.faults = faults
        self.arrivals = arrivals
        self._clock = clock
        self._wallclock = wallclock
        self._reader = BodyReader()
        self._tokens = frozenset(config.tokens)
        self._read_only = frozenset(config.read_only_tokens) - self._tokens
        burst = config.effective_burst
        self._throttle = (
            Throttle(config.rate, burst) if config.rate is not None and burst is not None else None
        )

    def routes(self) -> list[web.RouteDef]:
        """One route table serves both the ``apic`` and the ``apigw`` prefix."""
        return [
            web.post(f"{CHANNEL_PATH}/members", self.post_members),
            web.put(f"{CHANNEL_PATH}/members", self.put_members),
            web.get(f"{CHANNEL_PATH}/members", self.get_members, allow_head=False),
            web.delete(f"{CHANNEL_PATH}/members/{{member_id}}", self.delete_member),
            web.get("/_emulator/stats", self.get_stats, allow_head=False),
            web.get("/_emulator/state", self.get_state, allow_head=False),
            web.get("/_emulator/arrivals", self.get_arrivals, allow_head=False),
        ]

    async def post_members(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, self._upsert, reads_body=True)

    async def put_members(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, self._replace, reads_body=True)

    async def get_members(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, self._list, reads_body=False)

    async def delete_member(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, self._delete, reads_body=False)

    async def get_stats(self, request: web.Request) -> web.StreamResponse:
        return _json(200, self.stats.to_json())

    async def get_state(self, request: web.Request) -> web.StreamResponse:
        return _json(200, self.state.to_json())

    async def get_arrivals(self, request: web.Request) -> web.StreamResponse:
        if self.arrivals is None:
            return _json(404, {"error": "start the emulator with --record-arrivals"})
        return _json(200, {"clock": "monotonic", "arrivals": self.arrivals})

    async def serve(
        self, request: web.Request, operation: Operation, *, reads_body: bool
    ) -> web.StreamResponse:
        """Answer one API request, applying every rule in the documented order."""
        if self.arrivals is not None:
            self.arrivals.append(self._clock())
        self.stats.by_method[request.method] += 1
        draw = self.faults.draw()
        headers: tuple[tuple[str, str], ...] = ()
        delay = draw.latency
        try:
            self._authorise(request)
            # Injected faults strike only requests the gateway let through.
            if draw.slow:
                self.stats.faults[Fault.SLOW] += 1
                delay += draw.slow
            channel = self._admit(request, draw)
            body = await _read(request) if reads_body else b""
            status, payload = operation(request, channel, body)
            if draw.fault is Fault.FAIL_AFTER_COMMIT:
                self.stats.faults[Fault.FAIL_AFTER_COMMIT] += 1
                raise errors.system_error()
        except ApiError as error:
            status, payload, headers = error.status, error.body(), error.headers
        except _Reset:
            if request.transport is not None:
                request.transport.abort()
            # aiohttp ignores the write of this answer to the closed transport.
            return web.Response(status=500)
        if delay > 0:
            await asyncio.sleep(delay)
        self.stats.by_status[status] += 1
        if payload is None:
            return web.Response(status=status, headers=headers)
        return _json(status, payload, headers)

    def _authorise(self, request: web.Request) -> None:
        """The gateway's part: the token (401/403), then the project's bucket (429)."""
        token = request.headers.get("X-Auth-Token")
        if token not in self._tokens:
            if token not in self._read_only:
                raise errors.bad_token()
            if request.method != "GET":
                raise errors.read_only()
        if self._throttle is not None:
            wait = self._throttle.take(request.match_info["project_id"], self._clock())
            if wait > 0:
                self.stats.throttled += 1
                raise errors.throttled(self._throttle.rate, retry_after(wait))

    def _admit(self, request: web.Request, draw: Draw) -> ChannelState:
        """The service's part: the faults that apply nothing, then the channel (404)."""
        info = request.match_info
        if draw.fault is Fault.FAIL:
            self.stats.faults[Fault.FAIL] += 1
            raise errors.system_error()
        if draw.fault is Fault.RESET:
            self.stats.faults[Fault.RESET] += 1
            raise _Reset
        try:
            return self.state.channel(
                (info["project_id"], info["instance_id"], info["vpc_channel_id"])
            )
        except UnknownInstance:
            raise errors.unknown_instance(info["instance_id"]) from None
        except UnknownChannel:
            raise errors.unknown_channel(info["vpc_channel_id"]) from None

    def _upsert(
        self, request: web.Request, channel: ChannelState, body: bytes
    ) -> tuple[int, object]:
        return 201, _answer(self._write(channel, body, channel.upsert))

    def _replace(
        self, request: web.Request, channel: ChannelState, body: bytes
    ) -> tuple[int, object]:
        before = len(channel)
        done = self._write(channel, body, channel.replace)
        self.stats.members_deleted += before + done.created - len(channel)
        return 200, _answer(done)

    def _write(
        self,
        channel: ChannelState,
        body: bytes,
        apply: Callable[[Sequence[Entry], float], Upserted],
    ) -> Upserted:
        """Validate a members body and apply it (upsert or replace), counting what changed."""
        entries = self._reader.parse(body, self.config.max_members_per_request)
        try:
            done = apply(entries, self._wallclock())
        except QuotaExceeded:
            raise errors.too_large("members") from None
        self.stats.members_created += done.created
        self.stats.members_updated += done.updated
        return done

    def _list(self, request: web.Request, channel: ChannelState, body: bytes) -> tuple[int, object]:
        query = request.query
        offset = _int_param(query.get("offset"), "offset", 0, 0, None)
        limit = _int_param(query.get("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        precise = query.get("precise_search", "")
        total, members = channel.page(
            offset,
            limit,
            name=query.get("name"),
            member_group_name=query.get("member_group_name"),
            member_group_id=query.get("member_group_id"),
            precise=[part.strip() for part in precise.split(",") if part.strip()],
        )
        return 200, {"total": total, "size": len(members), "members": members}

    def _delete(
        self, request: web.Request, channel: ChannelState, body: bytes
    ) -> tuple[int, object]:
        member_id = request.match_info["member_id"]
        if not channel.delete(member_id):
            raise errors.unknown_member(member_id)
        self.stats.members_deleted += 1
        return 204, None


def build_app(api: Api) -> web.Application:
    """The aiohttp application for ``api``, refusing bodies over 12 MB."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.add_routes(api.routes())
    return app


async def _read(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise errors.entity_too_large() from None


def _int_param(text: str | None, name: str, default: int, low: int, high: int | None) -> int:
    if text is None or text == "":
        return default
    if not text.isascii() or not text.isdigit():
        raise errors.invalid(name)
    value = int(text)
    if value < low or (high is not None and value > high):
        raise errors.out_of_range(name)
    return value


def _json(status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type=_JSON, headers=headers or None
    )


def _answer(done: Upserted) -> dict[str, object]:
    size = len(done.members)
    return {"total": size, "size": size, "members": done.members}
