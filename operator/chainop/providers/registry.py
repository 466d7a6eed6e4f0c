"""``ProviderClients``: the operator's one object for talking to providers.

It owns (or borrows) the shared ``httpx.AsyncClient``, implements the
``chainop.core.calls.ProviderCall`` protocol by dispatching on ``provider.type`` to the
adapter of that wire protocol, and probes providers for health.

Probes are strict: only a 2xx answer with a JSON object body from the zero-cost listing
URL counts as healthy (its content is not inspected: listings differ between servers).
A 404/405 there means the endpoint is not what the spec says it is (a wrong path or
not an LLM server at all), and a 401/403 means the key is bad; calling either healthy
would route real work into a wall. Failures raise the same error classes as calls
(``TransientError`` for timeouts, refusals and 5xx, ``PermanentError`` for 4xx...), so
the health logic can treat probes and real traffic alike.

Probe URLs: ``{endpoint}/models`` for ``openai`` and ``jobs``; ``{root}/v1/models`` for
``anthropic`` (see ``chainop.providers.anthropic`` for the endpoint rule).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import httpx

from chainop.core.calls import CallContext, Completion
from chainop.core.models import ProviderSpec, ProviderType, RequestSpec
from chainop.providers import http
from chainop.providers.anthropic import AnthropicAdapter
from chainop.providers.base import Adapter
from chainop.providers.jobs import JobsAdapter
from chainop.providers.openai import OpenAIAdapter


def default_adapters() -> dict[ProviderType, Adapter]:
    """One adapter per wire protocol chainop speaks."""
    return {
        ProviderType.OPENAI: OpenAIAdapter(),
        ProviderType.ANTHROPIC: AnthropicAdapter(),
        ProviderType.JOBS: JobsAdapter(),
    }


class ProviderClients:
    """Calls and probes every provider over one shared connection pool.

    Build one per operator process (kopf's startup handler), put it in the app context,
    and ``await aclose()`` on cleanup. Pass ``client`` to share an existing
    ``httpx.AsyncClient`` (then it stays the caller's to close); otherwise one is built
    with ``transport`` and closed by :meth:`aclose`.
    """

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        transport: http.TransportName = http.DEFAULT_TRANSPORT,
        max_reply_bytes: int = http.DEFAULT_MAX_REPLY_BYTES,
        adapters: dict[ProviderType, Adapter] | None = None,
    ) -> None:
        self._owns_client = client is None
        self.client = client if client is not None else http.build_client(transport=transport)
        self.wire = http.Wire(self.client, max_reply_bytes=max_reply_bytes)
        self.adapters = adapters if adapters is not None else default_adapters()

    def adapter(self, provider: ProviderSpec) -> Adapter:
        """The adapter for ``provider.type``."""
        try:
            return self.adapters[provider.type]
        except KeyError:
            raise ValueError(f"no adapter for provider type {provider.type!r}") from None

    async def __call__(
        self, provider: ProviderSpec, request: RequestSpec, context: CallContext
    ) -> Completion:
        """Send ``request`` to ``provider`` (the ``ProviderCall`` protocol).

        Returns a whole answer or raises a ``chainop.core.errors.ProviderError``; the
        request budget is ``min(provider.timeoutSeconds, context.timeout)``, and for jobs
        the whole wait is bounded by ``context.timeout``.
        """
        return await self.adapter(provider).complete(self.wire, provider, request, context)

    async def probe(
        self,
        provider: ProviderSpec,
        *,
        api_key: str | None,
        timeout: float,  # noqa: ASYNC109 - also sets socket timeouts and the message
    ) -> float:
        """Check that ``provider`` answers its zero-cost listing URL; return the latency.

        Returns seconds from sending to having read the whole 2xx JSON reply; raises the
        ``chainop.core.errors`` class of the failure otherwise.
        """
        adapter = self.adapter(provider)
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await self.wire.request(
            "GET",
            adapter.probe_url(provider),
            timeout=timeout,
            headers=adapter.headers(api_key),
            secrets=(api_key,),
        )
        reply.raise_for_status(model=provider.model, secrets=(api_key,))
        reply.json_object()  # a 200 page from a captive proxy is not a model server
        return loop.time() - started

    async def aclose(self) -> None:
        """Close the shared client if this object built it."""
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> ProviderClients:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
