"""The HTTP client of the members API: one keep-alive session, every exchange a verdict."""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Final, Protocol, Self

import aiohttp

from worker.members import Channel
from worker.protocol import (
    Api,
    Verdict,
    classify,
    members_path,
    transport_failure,
    untrusted_endpoint,
)

_CONTENT_TYPE: Final = "application/json;charset=UTF-8"


class Pacer(Protocol):
    """What a rate limiter offers the client (see ``limits.RateLimiter.departure``)."""

    async def departure(self) -> None: ...


class MembersClient:
    """Posts member batches to ``endpoint`` and classifies what comes back.

    Parameters:
        endpoint: scheme, host and port of the API (``https://apig.example:443``).
        token: the ``X-Auth-Token``; kept in the session's headers only, never in messages.
        api: which product's path prefix to use.
        timeout: seconds for one request, connect to last byte.
        connections: the most sockets kept open at once.
        ssl_context: None verifies TLS with the system's CAs; False disables verification.
        pacer: awaited right before each request's bytes are written to the socket, so
            a rate limiter can hold the write itself, and count what reaches the wire.

    ``post`` never raises for HTTP or transport trouble: a timeout, a reset or a refused
    connection comes back as a :class:`~worker.protocol.Retry` verdict, a TLS certificate
    that fails verification as a :class:`~worker.protocol.Refused` one that stops the run.
    Use as an async context manager.
    """

    __slots__ = (
        "_connections",
        "_endpoint",
        "_headers",
        "_pacer",
        "_session",
        "_ssl",
        "_timeout",
        "api",
    )

    def __init__(
        self,
        endpoint: str,
        token: str,
        *,
        api: Api = Api.ROMA,
        timeout: float = 30.0,
        connections: int = 8,
        ssl_context: ssl.SSLContext | bool | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._headers = {"X-Auth-Token": token, "Content-Type": _CONTENT_TYPE}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._connections = connections
        self._ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._pacer = pacer
        self.api = api

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(limit=self._connections, ssl=self._ssl)
        traces = []
        if self._pacer is not None:
            trace = aiohttp.TraceConfig()
            pacer = self._pacer

            async def before_write(*_: object) -> None:
                await pacer.departure()

            # aiohttp awaits this signal right before it writes the body, and the buffered
            # headers with it, to the socket. on_request_headers_sent would be too early:
            # the write happens later, from a task of its own, when a busy loop gets to it.
            trace.on_request_chunk_sent.append(before_write)
            traces.append(trace)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self._timeout,
            trace_configs=traces,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, channel: Channel, body: bytes) -> Verdict:
        """Send one add-or-update request and say what its answer means."""
        assert self._session is not None, "use MembersClient as an async context manager"
        url = self._endpoint + members_path(self.api, channel)
        try:
            # No redirects: the token is a custom header that aiohttp would carry to any host
            # a 3xx names, and a redirect is not an answer this API gives.
            async with self._session.post(url, data=body, allow_redirects=False) as response:
                payload = await response.read()
                return classify(response.status, payload, response.headers.get("Retry-After"))
        except aiohttp.ClientConnectorCertificateError as exc:
            return untrusted_endpoint(str(exc.certificate_error))
        except TimeoutError:
            return transport_failure("timeout", "no answer within the request timeout")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            return transport_failure("connection_reset", _describe(exc))
        except (aiohttp.ClientError, OSError) as exc:
            return transport_failure("connection_error", _describe(exc))


def _describe(exc: BaseException) -> str:
    # Only the exception's own message: aiohttp errors can carry request_info, whose headers
    # hold the token, and that must never reach a log or a report.
    text = str(exc) if not isinstance(exc, aiohttp.ClientResponseError) else exc.message
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
