"""The HTTP client of the members API: one keep-alive session, every exchange a verdict."""

from __future__ import annotations

import contextlib
import ssl
import zlib
from dataclasses import replace
from types import TracebackType
from typing import Final, Protocol, Self

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from worker.config import default
from worker.credentials import Credentials, CredentialsRefused
from worker.logs import SECRETS
from worker.protocol import (
    Kind,
    Op,
    Request,
    Verdict,
    classify,
    landed_answer,
    no_answer,
    unreachable,
    untrusted_endpoint,
)
from worker.signing import request_target

CONTENT_TYPE: Final = "application/json;charset=UTF-8"
# The most an answer may hold, as sent and once inflated: a page of 500 members is about
# 200 KB, so anything near this is not the members API.
MAX_ANSWER_BYTES: Final = 8 * 1024 * 1024
_READ_CHUNK: Final = 256 * 1024
# OpenSSL's verify codes for a certificate issued to another host name or IP address.
_WRONG_HOST: Final = frozenset({62, 64})


class Pacer(Protocol):
    """What a rate limiter offers the client (see ``limits.RateLimiter.departure``)."""

    async def departure(self) -> None: ...


class MembersClient:
    """Sends requests of the members API to ``endpoint`` and classifies what comes back:
    the :class:`~worker.driver.Exchange` over aiohttp.

    Parameters:
        endpoint: scheme, host and port of the API (``https://apig.example:443``).
        credentials: what authenticates each request, added when it is released.
        read_timeout: seconds an answer may keep us waiting once the request is written.
        connect_timeout: seconds to open a connection (TLS included).
        connections: the most sockets kept open at once.
        ssl_context: None verifies TLS with the system's CAs; False disables verification.
        pacer: awaited right before each request's bytes are written to the socket, so
            a rate limiter can hold the write itself, and count what reaches the wire.
        proxy: an explicit proxy URL; without one, ``HTTPS_PROXY``, ``HTTP_PROXY`` and
            ``NO_PROXY`` apply, as for most tools.

    Time spent waiting for the rate limiter counts toward neither timeout. ``send`` never
    raises for HTTP or transport trouble. Answers larger than :data:`MAX_ANSWER_BYTES`, as
    sent or inflated, are never held: they are an answer this API does not give. A 401
    asks the credentials whether a retry may help (given the headers the request carried),
    and the request is sent once more, authorised anew, if they say so.
    Use as an async context manager.
    """

    def __init__(
        self,
        endpoint: str,
        credentials: Credentials,
        *,
        read_timeout: float = default("timeout"),
        connect_timeout: float = default("connect_timeout"),
        connections: int = default("concurrency"),
        ssl_context: ssl.SSLContext | bool | None = None,
        pacer: Pacer | None = None,
        proxy: str | None = None,
    ) -> None:
        self._endpoint = URL(endpoint.rstrip("/"))
        self._credentials = credentials
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._connections = connections
        self._ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._pacer = pacer
        self._proxy = proxy
        self._proxy_auth: aiohttp.BasicAuth | None = None

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
        if self._proxy is None:
            # The proxy the environment names for the endpoint, looked up once: with
            # trust_env, aiohttp would look it up in a thread for every request (30% of
            # the CPU at 600 requests a second).
            with contextlib.suppress(LookupError):
                proxy, self._proxy_auth = get_env_proxy_for_url(self._endpoint)
                self._proxy = str(proxy)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            trace_configs=traces,
            # Inflating is ours, bounded: aiohttp would inflate a small bomb into gigabytes.
            auto_decompress=False,
        )
        # Every secret the credentials hold now (a token they fetch later adds itself).
        SECRETS.add(self._credentials.secrets)
        opener = getattr(self._credentials, "open", None)
        if opener is not None:  # credentials that fetch their own (an IAM token)
            opener(self._session)
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

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use MembersClient as an async context manager"
        return self._session

    async def send(self, request: Request) -> Verdict:
        """Send one request and say what its answer means."""
        headers = request_headers()
        verdict = await self._send_once(request, headers)
        # A 401 from the API (not a refused login) may mean a token revoked early: fresh
        # credentials get one more try, and a second 401 is final.
        if verdict.kind is Kind.AUTH_REFUSED and verdict.answered:
            try:
                if await self._credentials.refresh(headers):
                    again = await self._send_once(request, request_headers())
                    verdict = replace(again, refused_before=True)
            except CredentialsRefused as exc:
                verdict = _refused_login(exc)
        return self._scrubbed(verdict)

    def _scrubbed(self, verdict: Verdict) -> Verdict:
        """The verdict with no secret in what it says: a server may echo what it was sent
        (``invalid token: ...``, a request id made of a header), and that goes to reports
        and logs."""
        said = (verdict.msg, verdict.code, verdict.request_id)
        msg, code, request_id = map(SECRETS.scrub, said)
        if (msg, code, request_id) == said:
            return verdict
        return replace(verdict, msg=msg, code=code, request_id=request_id)

    async def _send_once(self, request: Request, headers: dict[str, str]) -> Verdict:
        """Send ``request`` once with ``headers`` and what the credentials add to them."""
        # The target exactly as a signature covers it: the path as given, the query
        # sorted and encoded as the SDK sends it; aiohttp must not encode it again.
        target = request_target(request.path, request.query)
        url = URL(str(self._endpoint) + target, encoded=True)
        try:
            await self._credentials.authorise(request.method, url, headers, request.body)
        except CredentialsRefused as exc:
            return _refused_login(exc)
        if not request.body and self._pacer is not None:
            # A request without a body never fires on_request_chunk_sent: its headers go
            # out at once, so the window is waited for here.
            await self._pacer.departure()
        try:
            # No redirects: credentials are custom headers that aiohttp would carry to any
            # host a 3xx names, and a redirect is not an answer this API gives.
            async with self.session.request(
                request.method,
                url,
                data=request.body or None,
                headers=headers,
                allow_redirects=False,
                proxy=self._proxy,
                proxy_auth=self._proxy_auth,
            ) as response:
                payload = await read_bounded(response)
                if payload is None:
                    return Verdict(
                        Kind.UNEXPECTED,
                        response.status,
                        f"HTTP.{response.status}",
                        f"an answer over {MAX_ANSWER_BYTES:,} bytes (or inflating past it)",
                    )
                answer = response.headers
                content_type = answer.get("Content-Type", "")
                request_id = answer.get("X-Request-Id", "")
                landed = (
                    landed_answer(response.status, payload, content_type, request_id)
                    if request.op is Op.POST
                    else None
                )
                return landed or classify(
                    request.op,
                    response.status,
                    payload,
                    content_type=content_type,
                    retry_after=answer.get("Retry-After"),
                    request_id=request_id,
                    scrub=SECRETS.scrub,
                )
        except aiohttp.ClientConnectorCertificateError as exc:
            error = exc.certificate_error
            code = getattr(error, "verify_code", None)
            return untrusted_endpoint(str(error), wrong_host=code in _WRONG_HOST)
        except aiohttp.ConnectionTimeoutError:
            return unreachable("no connection within the connect timeout")
        except (aiohttp.ClientConnectorError, aiohttp.ClientHttpProxyError) as exc:
            # Refused, no route, unknown host, a TLS handshake with a plain-HTTP port, a
            # proxy that refused the tunnel: nothing of the request was sent.
            return unreachable(_describe(exc))
        except TimeoutError:
            return no_answer("timeout", "no answer within the read timeout")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            return no_answer("connection_reset", _describe(exc))
        except (aiohttp.ClientError, OSError) as exc:
            return no_answer("connection_error", _describe(exc))


def request_headers() -> dict[str, str]:
    """The headers every request of this tool starts from: JSON, and no compression
    (answers are read as sent, bounded)."""
    return {"Content-Type": CONTENT_TYPE, "Accept-Encoding": "identity"}


def _refused_login(exc: CredentialsRefused) -> Verdict:
    return Verdict(Kind.AUTH_REFUSED, None, "credentials_refused", str(exc))


async def read_bounded(response: aiohttp.ClientResponse) -> bytes | None:
    """The answer's body, inflated if it came compressed; None when it is too large."""
    declared = response.content_length
    if declared is not None and declared > MAX_ANSWER_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    while chunk := await response.content.read(_READ_CHUNK):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            return None
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    # 47: a zlib or a gzip header, whichever it is.
    inflater = zlib.decompressobj(47)
    try:
        inflated = inflater.decompress(body, MAX_ANSWER_BYTES + 1)
    except zlib.error:
        return b""
    return None if len(inflated) > MAX_ANSWER_BYTES or inflater.unconsumed_tail else inflated


def _describe(exc: BaseException) -> str:
    # Only the exception's own message: aiohttp errors can carry request_info, whose headers
    # hold the credentials, and that must never reach a log or a report.
    text = str(exc) if not isinstance(exc, aiohttp.ClientResponseError) else exc.message
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
