"""``ProviderClients``: the operator's one object for talking to providers.

It owns (or borrows) the shared ``httpx.AsyncClient``, implements the
``chainop.core.calls.ProviderCall`` protocol by dispatching on ``provider.type`` to the
adapter of that wire protocol, and probes providers for health.

Probes come in kinds (``List``, ``Health``, ``Generate``; see
``chainop.providers.probes`` for the URLs, bodies and how replies are read). They are
strict: a 404/405 means the endpoint is not what the spec says it is, a 401/403 that the
key is bad; calling either healthy would route real work into a wall. Failures raise the
same error classes as calls (through ``Reply.raise_for_status``), so the health logic
can treat probes and real traffic alike; a timeout is ``TransientError`` "timed out
after Ns", the signal of a hung engine when a Generate probe never gets its answer. A
probe is one request over the shared client, never retried.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import httpx

from chainop.core.calls import CallContext, Completion
from chainop.core.models import ProbeKind, ProviderSpec, ProviderType, RequestSpec
from chainop.providers import http, probes
from chainop.providers.anthropic import AnthropicAdapter
from chainop.providers.base import Adapter
from chainop.providers.jobs import JobsAdapter
from chainop.providers.openai import OpenAIAdapter
from chainop.providers.probes import ProbeResult


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
        the whole wait is bounded by ``context.timeout``. Providers that stream
        (``provider.streams()``) also give up after ``firstTokenTimeoutSeconds`` without
        a token (``FirstTokenTimeoutError``), and a stream cut short raises
        ``IncompleteReplyError`` carrying the text that arrived.
        """
        return await self.adapter(provider).complete(self.wire, provider, request, context)

    async def probe(
        self,
        provider: ProviderSpec,
        *,
        kind: ProbeKind,
        api_key: str | None,
        timeout: float,  # noqa: ASYNC109 - also sets socket timeouts and the message
    ) -> ProbeResult:
        """Run one probe of ``kind`` (List, Health or Generate) against ``provider``.

        Returns a :class:`~chainop.providers.probes.ProbeResult` (latency, ``loading``
        for a 503 "Loading model", ``served`` for List); raises the
        ``chainop.core.errors`` class of the failure otherwise: ``ModelNotServedError``
        for a listing without the model, ``IncompleteReplyError`` for a 2xx that is not
        what the kind expects, ``TransientError`` "timed out after Ns" for no answer.
        ``Auto`` is refused (``ValueError``): resolve it with ``provider.probe.kinds``.
        A jobs provider asked for Generate gets a List (a job would cost a submission).
        """
        kind = probes.effective_kind(provider, kind)
        adapter = self.adapter(provider)
        secrets = (api_key,)
        if kind is ProbeKind.HEALTH:
            method, url, body = "GET", probes.health_url(provider), None
        elif kind is ProbeKind.GENERATE:
            method, url = "POST", probes.generate_url(provider)
            body = probes.generate_body(provider)
        else:
            method, url, body = "GET", adapter.probe_url(provider), None
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await self.wire.request(
            method,
            url,
            timeout=timeout,
            headers=adapter.headers(api_key),
            json_body=body,
            secrets=secrets,
        )
        latency = loop.time() - started
        if probes.is_loading(reply):
            return ProbeResult(kind=kind, latency=latency, loading=True)
        reply.raise_for_status(model=provider.model, secrets=secrets)
        if kind is ProbeKind.HEALTH:
            return ProbeResult(kind=kind, latency=latency)  # vLLM: 200 with no body
        data = reply.json_object()  # a 200 page from a captive proxy is not a model server
        if kind is ProbeKind.GENERATE:
            probes.check_generation(provider, data)
            return ProbeResult(kind=kind, latency=latency)
        served = probes.check_listing(provider, data, secrets=secrets)
        return ProbeResult(kind=kind, latency=latency, served=served)

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
