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
  100 MB per task.
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
import http.cookiejar
import json
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from chainop.core import errors as core_errors
from chainop.providers import errors

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
        body_started = False
        received = 0
        try:
            async with asyncio.timeout(timeout):
                response = await self.client.send(request, stream=True)
                try:
                    body_started = True
                    chunks: list[bytes] = []
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > self.max_reply_bytes:
                        raise errors.incomplete(f"reply larger than {self.max_reply_bytes} bytes")
                    async for chunk in response.aiter_bytes():
                        received += len(chunk)
                        if received > self.max_reply_bytes:
                            raise errors.incomplete(
                                f"reply larger than {self.max_reply_bytes} bytes"
                            )
                        chunks.append(chunk)
                finally:
                    await response.aclose()
        except core_errors.ProviderError:
            raise
        except (
            TimeoutError,
            httpx.TransportError,
            httpx.DecodingError,
            aiohttp.ClientError,
            OSError,  # raw socket errors an aiohttp transport lets through unmapped
        ) as exc:
            raise errors.from_transport_error(
                exc, timeout=timeout, body_started=body_started, received=received, secrets=secrets
            ) from None
        return Reply(
            status_code=response.status_code, headers=response.headers, body=b"".join(chunks)
        )
