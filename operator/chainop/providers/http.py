"""The one shared HTTP client, and the single place where bytes cross the wire.

Every provider call and probe of the operator goes through one ``httpx.AsyncClient``
(built by :func:`build_client`) so connections to a provider are pooled and reused across
tasks and chains, and there is exactly one thing to close on shutdown.

:meth:`Wire.request` wraps each exchange in the three guarantees the rest of
``chainop.providers`` relies on:

* **Bounded time.** ``asyncio.timeout`` caps the whole exchange, because httpx timeouts
  are per operation: a server trickling one byte every few seconds would otherwise never
  time out.
* **Bounded memory.** The body is streamed and reading stops past ``max_reply_bytes``
  (8 MiB by default), so a hostile or broken server cannot make the operator buffer
  100 MB per task. A streamed reply (:meth:`Wire.stream`) is bounded per event and in
  the answer assembled, each by the same limit.
* **Typed failures.** Whatever goes wrong comes out as a ``chainop.core.errors`` class
  (see ``chainop.providers.errors``); callers never see an httpx exception.

Transports: ``"httpx"`` is httpx's own (httpcore) pool; ``"aiohttp"`` is
``httpx_aiohttp.AiohttpTransport``, aiohttp's C-accelerated HTTP parser behind the same
httpx API. Both behave the same for chainop (the unit tests run against each); the
default is the one measured faster under concurrency against the fake backend. Note that
the aiohttp transport ignores ``HTTP(S)_PROXY`` environment variables; choose ``"httpx"``
if egress goes through a proxy configured that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_sse import EventSource, ServerSentEvent

from chainop.core import errors as core_errors
from chainop.core.calls import Completion
from chainop.providers import errors
from chainop.providers.stream import Assembler, cut, with_partial

TransportName = Literal["aiohttp", "httpx"]
TRANSPORTS: tuple[TransportName, ...] = get_args(TransportName)

#: Measured faster under concurrency against the fake backend (see the module docstring).
DEFAULT_TRANSPORT: TransportName = "aiohttp"
#: Largest reply body read before giving up with ``IncompleteReplyError``.
DEFAULT_MAX_REPLY_BYTES = 8 * 1024 * 1024
#: Parsed URLs kept by a Wire (provider endpoints x a few paths; cleared when full).
MAX_CACHED_URLS = 1024
#: Pool sizing: enough for hundreds of concurrent tasks across a handful of providers.
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_KEEPALIVE_CONNECTIONS = 64
DEFAULT_KEEPALIVE_EXPIRY = 30.0
#: How long a stream's end is awaited after its terminator (see ``_drain``).
DRAIN_SECONDS = 0.1
#: Used only by requests that do not pass their own timeout (every chainop call does).
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
USER_AGENT = "chainop"


def build_client(
    *,
    transport: TransportName = DEFAULT_TRANSPORT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_keepalive_connections: int = DEFAULT_MAX_KEEPALIVE_CONNECTIONS,
    keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    """Build the shared ``httpx.AsyncClient``; the caller owns it and must ``aclose()`` it.

    Redirects are never followed: a provider answering 3xx is misconfigured, and
    following it would hand the ``x-api-key`` header to whichever host it names.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive_connections,
        keepalive_expiry=keepalive_expiry,
    )
    common: dict[str, Any] = {
        "timeout": DEFAULT_TIMEOUT,
        "follow_redirects": False,
        "headers": {"user-agent": USER_AGENT, "accept": "application/json"},
        "cookies": no_cookies(),
    }
    if transport == "aiohttp":
        return httpx.AsyncClient(transport=AiohttpTransport(verify=verify, limits=limits), **common)
    return httpx.AsyncClient(limits=limits, verify=verify, **common)


def no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that refuses every cookie.

    The client is shared by every chain of every namespace: a cookie one tenant's
    provider sets (a load balancer's, say) must never ride along on another tenant's
    request to the same host. LLM APIs authenticate with headers, not cookies.
    """
    # A CookieJar, not httpx.Cookies: the client copies a Cookies object into a fresh
    # default jar (losing the policy) but adopts a CookieJar as it is.
    return http.cookiejar.CookieJar(policy=_RefuseAll())


class _RefuseAll(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole HTTP reply, read within the size limit."""

    status_code: int
    headers: httpx.Headers
    body: bytes

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx, the only success chainop recognises."""
        return 200 <= self.status_code < 300

    def raise_for_status(self, *, model: str, secrets: Iterable[str | None] = ()) -> None:
        """Raise the ``chainop.core.errors`` class of a non-2xx reply (nothing on 2xx)."""
        if not self.ok:
            raise errors.from_status(
                self.status_code, body=self.body, headers=self.headers, model=model, secrets=secrets
            )

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object, or ``IncompleteReplyError`` if it is not one."""
        try:
            data = json.loads(self.body)
        except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
            raise errors.incomplete(f"malformed JSON ({len(self.body)} bytes)") from None
        if not isinstance(data, dict):
            raise errors.incomplete(f"expected a JSON object, got {type(data).__name__}")
        return data


@dataclass(frozen=True, slots=True)
class Wire:
    """The shared client plus the reply limit: what provider adapters send through."""

    client: httpx.AsyncClient
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    #: URL string -> parsed ``httpx.URL``. Parsing a URL string costs httpx ~20 µs per
    #: request (it is parsed twice in ``build_request``), about 6 % of a whole call over
    #: the aiohttp transport; a chain calls the same few URLs all day (bench/, issue 7).
    _urls: dict[str, httpx.URL] = field(default_factory=dict, init=False, repr=False, compare=False)

    def url(self, url: str) -> httpx.URL:
        """``url`` parsed once and reused (bounded: cleared past ``MAX_CACHED_URLS``)."""
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= MAX_CACHED_URLS:
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; once more on another connection if a pooled one was dead.

        llama-server (b11434) announces ``Keep-Alive`` yet closes the connection after a
        streamed reply; the aiohttp transport hands the next request that dead
        connection: writing the body fails, or the server is found gone before a single
        byte of answer (13 of 40 sequential calls, each a failure counted against a
        healthy provider). httpcore checks a pooled connection before reusing it, but a
        close still on its way is missed just the same (1 of 24 calls in CI). One more
        try then, on another connection (the dead one has left the pool). Only for the
        errors ``_body_never_written`` names: no answer at all came back, and the calls
        are completions (no side effects) or job submissions (with an idempotency key),
        so the rare server that took the request and then vanished costs at most a
        duplicate completion. Any other error is left alone.
        """
        try:
            return await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            if not _body_never_written(exc):
                raise
        return await self.client.send(request, stream=True)

    async def request(
        self,
        method: str,
        url: str,
        *,
        timeout: float,  # noqa: ASYNC109 - also sets socket timeouts and the message
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        secrets: Iterable[str | None] = (),
    ) -> Reply:
        """Send one request and read the whole reply within ``timeout`` seconds.

        Returns the reply whatever its status (callers classify non-2xx with
        ``errors.from_status``); raises ``chainop.core.errors`` classes for everything
        below HTTP. ``secrets`` are redacted from any message built here.
        """
        secrets = tuple(secrets)
        if timeout <= 0:
            raise errors.timed_out(0.0)
        request = self.client.build_request(
            method,
            self.url(url),
            headers=headers,
            json=json_body,
            timeout=httpx.Timeout(timeout),
        )
        progress = _Progress()
        try:
            async with asyncio.timeout(timeout):
                response = await self._send(request)
                try:
                    progress.body_started = True
                    body = await self._read_body(response, progress)
                finally:
                    await response.aclose()
        except core_errors.ProviderError:
            raise
        except _WIRE_ERRORS as exc:
            raise errors.from_transport_error(
                exc,
                timeout=timeout,
                body_started=progress.body_started,
                received=progress.received,
                secrets=secrets,
            ) from None
        return Reply(status_code=response.status_code, headers=response.headers, body=body)

    async def stream(
        self,
        method: str,
        url: str,
        *,
        timeout: float,  # noqa: ASYNC109 - also sets socket timeouts and the message
        first_token_timeout: float | None,
        assembler: Assembler,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        secrets: Iterable[str | None] = (),
    ) -> Reply | Completion:
        """Send a streaming request and feed its Server-Sent Events to ``assembler``.

        Returns the assembler's whole answer, with ``first_token_ms`` measured from
        sending the request to the first token the assembler recognised; or, when the
        server did not answer with an event stream (an HTTP error, or a 2xx JSON body
        from a server that ignores ``stream``), the :class:`Reply` read whole, for the
        caller to classify or parse as usual.

        Time: ``timeout`` bounds the whole exchange; ``first_token_timeout`` (when
        shorter) bounds the wait for the first token, after which the connection is
        closed and ``FirstTokenTimeoutError`` raised: a hung engine is left at once, not
        after the whole timeout. A stream that stalls after its first token until
        ``timeout`` is a cut stream. Reading stops at the terminator (after a short
        drain of the body's end, so the connection is reused).

        Memory: one event longer than ``max_reply_bytes``, or an answer (text and tool
        calls) larger than that, is an incomplete reply; the stream's total bytes are
        not limited, as its framing is many times the answer (see ``_BoundedStream``).
        Every failure after a token carries the text received as
        ``IncompleteReplyError.partial_text``.
        """
        secrets = tuple(secrets)
        if timeout <= 0:
            raise errors.timed_out(0.0)
        request = self.client.build_request(
            method,
            self.url(url),
            headers={**(headers or {}), "accept": "text/event-stream"},
            json=json_body,
            timeout=httpx.Timeout(timeout),
        )
        first_limit = (
            first_token_timeout
            if first_token_timeout is not None and first_token_timeout < timeout
            else None
        )
        loop = asyncio.get_running_loop()
        sent = loop.time()
        first_token = asyncio.timeout(first_limit)
        first_token_ms: int | None = None
        done = False
        progress = _Progress()
        try:
            async with asyncio.timeout(timeout), first_token:
                response = await self._send(request)
                try:
                    progress.body_started = True
                    if not (200 <= response.status_code < 300 and _is_event_stream(response)):
                        body = await self._read_body(response, progress)
                        return Reply(response.status_code, response.headers, body)
                    response.stream = _BoundedStream(response, self.max_reply_bytes, progress)
                    events = EventSource(response).aiter_sse()
                    async for event in events:
                        done = assembler.feed(event)
                        if assembler.size > self.max_reply_bytes:
                            raise errors.incomplete(
                                f"answer larger than {self.max_reply_bytes} bytes"
                            )
                        if first_token_ms is None and assembler.has_token:
                            first_token_ms = round((loop.time() - sent) * 1000)
                            first_token.reschedule(None)
                        if done:
                            break
                    if done:
                        await _drain(events)
                finally:
                    await response.aclose()
        except core_errors.ProviderError as error:
            raise with_partial(error, assembler.partial_text) from None
        except TimeoutError:
            if done:  # the whole budget ran out while draining: the answer is whole
                return assembler.finish(first_token_ms=first_token_ms)
            if first_token.expired() and first_limit is not None:
                raise core_errors.FirstTokenTimeoutError(
                    f"no first token within {errors.format_seconds(first_limit)}"
                ) from None
            if assembler.has_token:
                raise cut(
                    f"the stream stalled: timed out after {errors.format_seconds(timeout)}, "
                    f"{len(assembler.partial_text)} characters received",
                    assembler.partial_text,
                ) from None
            raise errors.timed_out(timeout) from None
        except _WIRE_ERRORS as exc:
            failure = errors.from_transport_error(
                exc,
                timeout=timeout,
                body_started=progress.body_started,
                received=progress.received,
                secrets=secrets,
            )
            raise with_partial(failure, assembler.partial_text) from None
        return assembler.finish(first_token_ms=first_token_ms)

    async def _read_body(self, response: httpx.Response, progress: _Progress) -> bytes:
        """The whole body, or ``IncompleteReplyError`` past ``max_reply_bytes``."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_reply_bytes:
            raise errors.incomplete(f"reply larger than {self.max_reply_bytes} bytes")
        chunks: list[bytes] = []
        async for chunk in response.aiter_bytes():
            progress.received += len(chunk)
            if progress.received > self.max_reply_bytes:
                raise errors.incomplete(f"reply larger than {self.max_reply_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


#: What the transports raise below HTTP (``errors.from_transport_error`` sorts them out).
_WIRE_ERRORS = (
    TimeoutError,
    httpx.TransportError,
    httpx.DecodingError,
    aiohttp.ClientError,
    OSError,  # raw socket errors an aiohttp transport lets through unmapped
)


#: httpcore's words when a connection closed before any byte of the response.
_HTTPCORE_NO_RESPONSE = "Server disconnected without sending a response"


def _body_never_written(exc: BaseException) -> bool:
    """Whether the transport met a dead pooled connection: it could not write the
    request, or the server was gone before any byte of answer.

    aiohttp says so in its own errors (under httpx's); httpcore, which ignores a failed
    write and reads on, says ``Server disconnected without sending a response``. httpcore
    checks a pooled connection before reusing it, but only for a close that has already
    arrived: a server closing it at the moment the next request goes out (llama-server
    after a stream, any server's keep-alive timeout) still gets it (1 of 24 calls in CI).
    """
    if isinstance(exc, httpx.RemoteProtocolError) and _HTTPCORE_NO_RESPONSE in str(exc):
        return True
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return True
    return isinstance(cause, aiohttp.ClientOSError) and "Can not write request body" in str(cause)


async def _drain(events: AsyncIterator[ServerSentEvent]) -> None:
    """Read what follows a stream's terminator, for at most ``DRAIN_SECONDS``.

    After ``[DONE]``/``message_stop`` a server sends only the end of the chunked body,
    but a response closed before that end is read cannot go back to the pool: httpx's
    own transport then closes the connection, and every streamed call would pay a new
    TCP (and TLS) handshake. Whatever happens meanwhile (more bytes, a reset) no longer
    matters: the answer is whole.
    """
    with contextlib.suppress(core_errors.ProviderError, *_WIRE_ERRORS):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in events:
                pass


@dataclass(slots=True)
class _Progress:
    """How far a reply got: whether its body started, and how many bytes arrived."""

    body_started: bool = False
    received: int = 0


#: What ends an SSE event: a blank line, in any of the three line endings SSE allows.
_EVENT_ENDS = (b"\n\n", b"\r\r", b"\r\n\r\n")


def _is_event_stream(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


class _BoundedStream(httpx.AsyncByteStream):
    """A response's byte stream that stops at an event longer than ``limit`` bytes.

    Installed under ``httpx-sse``'s parser, which buffers an event (its lines, up to the
    blank line that ends it) before handing it over: a server sending one endless line,
    or endless ``data:`` lines without a blank one, would otherwise grow that buffer
    without bound. The stream as a whole is not limited in bytes - SSE framing carries
    some 100-200 bytes of JSON per token, so a long answer legitimately streams many
    times ``max_reply_bytes`` - only in time, and the answer kept in memory is limited
    by ``Wire.stream`` through the assembler's ``size``.
    """

    def __init__(self, response: httpx.Response, limit: int, progress: _Progress) -> None:
        if not isinstance(response.stream, httpx.AsyncByteStream):
            raise TypeError("a streamed call needs an async transport")
        self._inner = response.stream
        self._limit = limit
        self._progress = progress
        self._pending = 0  # bytes since the last event boundary
        self._tail = b""  # the end of the previous chunk, for boundaries split across

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._progress.received += len(chunk)
            window = self._tail + chunk
            end = max(
                (found + len(mark) for mark in _EVENT_ENDS if (found := window.rfind(mark)) >= 0),
                default=-1,
            )
            self._pending = len(window) - end if end >= 0 else self._pending + len(chunk)
            if self._pending > self._limit:
                raise errors.incomplete(f"an event larger than {self._limit} bytes")
            self._tail = window[-3:]
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
