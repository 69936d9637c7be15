"""The HTTP shell: routes, and the order in which a request meets the emulator's rules.

Every API request goes through :meth:`Api.serve`: its body is read within the body budget
(413, 503), then authenticated (401/403: a token, or an AK/SK signature, which covers the
body), then the project's token bucket (429), then the injected failures that apply
nothing (500 or a closed connection), then the channel lookup (404), then, for a write
with conflicts on, no other write to the channel may be in progress (500), then the
members (400) and the change itself (403 past the channel's quota), then the
fail-after-commit fault, then the answer delay. Every answer carries ``X-Request-Id``.
The rules live in the pure modules; this one only wires them to aiohttp.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Final

import orjson
from aiohttp import StreamReader, web

from worker import signing
from worker.emulator import errors, paging
from worker.emulator.body import BodyBudget, BodyReader
from worker.emulator.config import MB, EmulatorConfig
from worker.emulator.errors import ApiError
from worker.emulator.faults import Draw, Fault, FaultPlan, Throttle, Writes, retry_after
from worker.emulator.iam import IamError, KeyLocks, Tokens, TokenState
from worker.emulator.state import (
    ChannelKey,
    ChannelState,
    EmulatorState,
    QuotaExceeded,
    UnknownChannel,
    UnknownInstance,
    Upserted,
    VpcMemberInfo,
)
from worker.emulator.stats import Stats
from worker.members import MAX_BODY_BYTES

CHANNEL_PATH: Final = (
    "/v2/{project_id}/{product:apic|apigw}/instances/{instance_id}/vpc-channels/{vpc_channel_id}"
)
REQUEST_ID: Final = "X-Request-Id"
_JSON: Final = "application/json"
# A Host header's value: an IP literal in brackets, or a registered name (RFC 3986), and
# a port.
_AUTHORITY: Final = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(?::[0-9]{1,5})?"
)

Headers = tuple[tuple[str, str], ...]
Operation = Callable[[web.Request, ChannelState, bytearray], tuple[int, object]]
"""A change or query on one channel: (request, channel, body) -> (status, JSON payload)."""


class _Reset(Exception):
    """The reset fault hit: close the connection without an answer."""


class Api:
    """The emulated service: state, stats, faults, throttle and credentials behind the routes.

    ``clock`` gives monotonic seconds (throttling, arrivals), ``wallclock`` Unix seconds
    (``create_time``, token lifetimes, the signature's date), ``sleep`` waits out an
    answer's delay. ``arrivals`` collects the arrival time of every API request when not
    None. ``bodies`` is the live body budget.
    """

    def __init__(
        self,
        config: EmulatorConfig,
        state: EmulatorState,
        stats: Stats,
        faults: FaultPlan,
        iam: Tokens,
        request_ids: random.Random,
        *,
        arrivals: list[float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.state = state
        self.stats = stats
        self.faults = faults
        self.iam = iam
        self.arrivals = arrivals
        self.bodies = BodyBudget(config.body_budget_mb * MB)
        self._request_ids = request_ids
        self._clock = clock
        self._wallclock = wallclock
        self._sleep = sleep
        self._reader = BodyReader()
        self._writes = Writes()
        self._tokens = frozenset(config.tokens)
        self._read_only = frozenset(config.read_only_tokens) - self._tokens
        self._keys = dict(config.aksk)
        self._locks = KeyLocks()
        burst = config.effective_burst
        self._throttle = (
            Throttle(config.rate, burst) if config.rate is not None and burst is not None else None
        )

    def routes(self) -> list[web.RouteDef]:
        """One route table serves both the ``apic`` and the ``apigw`` prefix, and IAM."""
        return [
            web.post(f"{CHANNEL_PATH}/members", self.post_members),
            web.put(f"{CHANNEL_PATH}/members", self.put_members),
            web.post(f"{CHANNEL_PATH}/members/batch-enable", self.enable_members),
            web.post(f"{CHANNEL_PATH}/members/batch-disable", self.disable_members),
            web.get(f"{CHANNEL_PATH}/members", self.get_members, allow_head=False),
            web.delete(f"{CHANNEL_PATH}/members/{{member_id}}", self.delete_member),
            web.post("/v3/auth/tokens", self.post_token),
            web.get("/_emulator/stats", self.get_stats, allow_head=False),
            web.get("/_emulator/state", self.get_state, allow_head=False),
            web.get("/_emulator/arrivals", self.get_arrivals, allow_head=False),
        ]

    def new_request_id(self) -> str:
        """32 hex digits, like the service's (and reproducible with a seed)."""
        return self._request_ids.randbytes(16).hex()

    async def post_members(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, self._upsert)

    async def put_members(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, self._replace)

    async def enable_members(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, partial(self._set_status, status=1))

    async def disable_members(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, partial(self._set_status, status=2))

    async def get_members(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, self._list)

    async def delete_member(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, self._delete)

    async def post_token(self, request: web.Request) -> web.StreamResponse:
        """IAM's password login: 201 with the token in ``X-Subject-Token``."""
        request_id = self.new_request_id()
        body = bytearray()
        try:
            body = await self._read(request)
            outcome = self.iam.issue(body, self._wallclock())
        except ApiError as error:
            return _json(error.status, error.body(request_id), _with_id(request_id, error.headers))
        finally:
            self.bodies.give(len(body))
        if isinstance(outcome, IamError):
            return _json(outcome.status, outcome.body(), _with_id(request_id))
        self.stats.tokens_issued += 1
        return _json(201, outcome.body, _with_id(request_id, (("X-Subject-Token", outcome.token),)))

    async def get_stats(self, request: web.Request) -> web.StreamResponse:
        return _json(200, self.stats.to_json())

    async def get_state(self, request: web.Request) -> web.StreamResponse:
        return _json(200, self.state.to_json())

    async def get_arrivals(self, request: web.Request) -> web.StreamResponse:
        if self.arrivals is None:
            return _json(404, {"error": "start the emulator with --record-arrivals"})
        return _json(200, {"clock": "monotonic", "arrivals": self.arrivals})

    async def serve(self, request: web.Request, operation: Operation) -> web.StreamResponse:
        """Answer one API request, applying every rule in the documented order."""
        if self.arrivals is not None:
            self.arrivals.append(self._clock())
        self.stats.by_method[request.method] += 1
        if _AUTHORITY.fullmatch(request.headers.get("Host", "")) is None:
            # As any front end answers (RFC 9112, 3.2), before the gateway sees it: an
            # IPv6 address must be bracketed there, and a signature covering a wrong Host
            # does not make it right.
            self.stats.by_status[400] += 1
            return web.Response(status=400, text="400 Bad Request: invalid Host header\n")
        request_id = self.new_request_id()
        draw = self.faults.draw()
        headers: Headers = ()
        delay = draw.latency
        body = bytearray()
        writing: ChannelKey | None = None
        # Everything this request holds (its body, its channel) is let go only once it is
        # answered, so what a client can make the emulator hold stays within the budget.
        try:
            try:
                body = await self._read(request)
                self._authorise(request, body)
                # Injected faults strike only requests the gateway let through.
                if draw.slow:
                    self.stats.faults[Fault.SLOW] += 1
                    delay += draw.slow
                channel = self._admit(request, draw)
                if request.method != "GET":
                    writing = self._begin_write(channel.key)
                status, payload = operation(request, channel, body)
                if draw.fault is Fault.FAIL_AFTER_COMMIT:
                    self.stats.faults[Fault.FAIL_AFTER_COMMIT] += 1
                    raise errors.system_error()
            except ApiError as error:
                status, payload, headers = error.status, error.body(request_id), error.headers
            except _Reset:
                if request.transport is not None:
                    request.transport.abort()
                # aiohttp ignores the write of this answer to the closed transport.
                return web.Response(status=500)
            if delay > 0:
                await self._sleep(delay)
        finally:
            self.bodies.give(len(body))
            if writing is not None:
                self._writes.end(writing)
        self.stats.by_status[status] += 1
        headers = _with_id(request_id, headers)
        if payload is None:
            return web.Response(status=status, headers=headers)
        return _json(status, payload, headers)

    async def _read(self, request: web.Request) -> bytearray:
        """The whole body, its bytes taken from the budget (413 past 12 MB, 503 when the
        budget cannot hold them). The caller gives them back; on a refusal this does.

        A declared length is taken whole before reading: a body that cannot fit is refused
        unread, and one that can is read into a single block of its size (no regrowing, no
        second copy). A chunked body is taken chunk by chunk as it arrives.
        """
        size = request.content_length
        if size is not None and size > MAX_BODY_BYTES:
            raise errors.entity_too_large()
        if size is not None and not self.bodies.take(size):
            raise errors.overloaded()
        body = bytearray(size or 0)
        try:
            if size is None:
                await self._read_chunked(request.content, body)
            else:
                with memoryview(body) as view:
                    filled = 0
                    async for chunk in request.content.iter_any():
                        view[filled : filled + len(chunk)] = chunk
                        filled += len(chunk)
        except BaseException:
            self.bodies.give(len(body))
            raise
        return body

    async def _read_chunked(self, content: StreamReader, body: bytearray) -> None:
        async for chunk in content.iter_any():
            if len(body) + len(chunk) > MAX_BODY_BYTES:
                raise errors.entity_too_large()
            if not self.bodies.take(len(chunk)):
                raise errors.overloaded()
            body += chunk

    def _authorise(self, request: web.Request, body: bytearray) -> None:
        """The gateway's part: the credentials (401/403), then the project's bucket (429)."""
        self._authenticate(request, body)
        if self._throttle is not None:
            wait = self._throttle.take(request.match_info["project_id"], self._clock())
            if wait > 0:
                self.stats.throttled += 1
                raise errors.throttled(self._throttle.rate, retry_after(wait))

    def _authenticate(self, request: web.Request, body: bytearray) -> None:
        """An ``X-Auth-Token`` (static, read-only or issued by IAM) or, without one, an
        AK/SK signature; AK/SK holders may do everything."""
        headers = request.headers
        token = headers.get("X-Auth-Token")
        if token is None and "Authorization" in headers:
            url = request.rel_url
            now = self._wallclock()
            outcome = signing.verify(
                method=request.method,
                path=url.raw_path,
                query=signing.parse_query(url.raw_query_string),
                headers=headers,
                body=body,
                keys=self._keys,
                now=datetime.fromtimestamp(now, UTC),
            )
            key = outcome.access_key
            if key is not None and self._locks.locked(key, now):
                raise errors.key_locked(key)
            if isinstance(outcome, signing.Refused):
                if key is not None:
                    self._locks.failed(key, now)
                raise errors.signature_refused(outcome)
            self._locks.passed(outcome.access_key)
            return
        if token in self._tokens:
            return
        if token in self._read_only:
            if request.method != "GET":
                raise errors.read_only()
            return
        if token is None or self.iam.check(token, self._wallclock()) is not TokenState.VALID:
            raise errors.bad_token()

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

    def _begin_write(self, channel: ChannelKey) -> ChannelKey | None:
        """Hold the channel for this write when conflicts are on (500 if another has it)."""
        if not self.config.concurrent_write_conflicts:
            return None
        if not self._writes.begin(channel):
            self.stats.faults[Fault.CONFLICT] += 1
            raise errors.write_conflict()
        return channel

    def _upsert(
        self, request: web.Request, channel: ChannelState, body: bytearray
    ) -> tuple[int, object]:
        entries = self._reader.parse(body, self.config.max_members_per_request)
        return 201, _answer(request, self._write(lambda now: channel.upsert(entries, now)))

    def _replace(
        self, request: web.Request, channel: ChannelState, body: bytearray
    ) -> tuple[int, object]:
        entries, group = self._reader.parse_replace(body, self.config.max_members_per_request)
        before = len(channel)
        done = self._write(lambda now: channel.replace(entries, now, group))
        self.stats.members_deleted += before + done.created - len(channel)
        return 200, _answer(request, done)

    def _write(self, apply: Callable[[float], Upserted]) -> Upserted:
        """Apply a validated change (upsert or replace), counting what changed."""
        try:
            done = apply(self._wallclock())
        except QuotaExceeded:
            raise errors.channel_full() from None
        self.stats.members_created += done.created
        self.stats.members_updated += done.updated
        return done

    def _list(
        self, request: web.Request, channel: ChannelState, body: bytearray
    ) -> tuple[int, object]:
        query = request.query
        offset, limit = paging.window(query.get("offset"), query.get("limit"))
        precise = query.get("precise_search", "")
        total, members = channel.page(
            offset,
            limit,
            name=query.get("name"),
            member_group_name=query.get("member_group_name"),
            member_group_id=query.get("member_group_id"),
            precise=[part.strip() for part in precise.split(",") if part.strip()],
        )
        return 200, {"total": total, "size": len(members), "members": _as_told(request, members)}

    def _set_status(
        self, request: web.Request, channel: ChannelState, body: bytearray, *, status: int
    ) -> tuple[int, object]:
        member_ids = self._reader.parse_ids(body)
        unknown = channel.set_status(member_ids, status)
        if unknown is not None:
            raise errors.unknown_member(unknown)
        self.stats.members_updated += len(member_ids)
        return 204, None

    def _delete(
        self, request: web.Request, channel: ChannelState, body: bytearray
    ) -> tuple[int, object]:
        member_id = request.match_info["member_id"]
        if not channel.delete(member_id):
            raise errors.unknown_member(member_id)
        self.stats.members_deleted += 1
        return 204, None


def build_app(api: Api) -> web.Application:
    """The aiohttp application for ``api``; every answer gets an ``X-Request-Id``."""

    @web.middleware
    async def request_id(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # The API's own answers already carry the id their error body names.
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.setdefault(REQUEST_ID, api.new_request_id())
            raise
        response.headers.setdefault(REQUEST_ID, api.new_request_id())
        return response

    app = web.Application(middlewares=[request_id])
    app.add_routes(api.routes())
    return app


def _with_id(request_id: str, headers: Headers = ()) -> Headers:
    return ((REQUEST_ID, request_id), *headers)


def _json(status: int, payload: object, headers: Headers = ()) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type=_JSON, headers=headers or None
    )


def _answer(request: web.Request, done: Upserted) -> dict[str, object]:
    size = len(done.members)
    return {"total": size, "size": size, "members": _as_told(request, done.members)}


def _as_told(request: web.Request, members: list[VpcMemberInfo]) -> list[VpcMemberInfo]:
    """Members as the product the request names tells them: APIG's answers carry each
    one's ``health_status`` (here always ``unknown``: no health check is emulated);
    ROMA Connect's do not."""
    if request.match_info["product"] != "apigw":
        return members
    return [{**member, "health_status": "unknown"} for member in members]  # type: ignore[typeddict-unknown-key]
