"""What is measured: chainop's executor and the baselines users would pick instead.

Every contender sends the same chat-completions request to the same fake backend and
treats anything but a whole answer as a failure. The raw clients use
``chainop.providers.http.build_client`` (the very client chainop is built on: same pool
limits, headers and per-request timeout); LiteLLM's Router gets the same endpoint and
timeout through ``litellm_params``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from chainop.core.calls import CallContext, Completion
from chainop.core.chain import HealthBoard, execute
from chainop.core.models import ProviderChainSpec, ProviderSpec, RequestSpec
from chainop.providers import ProviderClients, build_client
from chainop.providers.http import TransportName

MODEL = "fake-model"
PROMPT = "Say hello in one word."
MAX_TOKENS = 16
BODY: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": PROMPT}],
    "max_tokens": MAX_TOKENS,
}
#: Per-request timeout for every contender when nothing breaks.
TIMEOUT = 30.0

Send = Callable[[], Awaitable[object]]


class Contender:
    """One client under test: ``await open()``, then ``send()`` many times, ``close()``."""

    name = ""

    async def open(self) -> None:
        """Build clients (not measured)."""

    async def send(self) -> object:
        """One request; raises on anything but a whole answer."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release clients."""

    def counters(self) -> dict[str, Any]:
        """Extra figures the contender kept (calls per provider...)."""
        return {}


# --------------------------------------------------------------------------- raw clients


class RawHttpx(Contender):
    """A hand-written call: ``client.post`` + ``response.json()``, no failover."""

    def __init__(self, url: str, transport: TransportName) -> None:
        self.name = f"raw httpx ({transport} transport)"
        self.url = url.rstrip("/") + "/chat/completions"
        self.transport: TransportName = transport

    async def open(self) -> None:
        self.client = build_client(transport=self.transport)

    async def send(self) -> object:
        response = await self.client.post(self.url, json=BODY, timeout=TIMEOUT)
        response.raise_for_status()
        text = response.json()["choices"][0]["message"]["content"]
        if not text:
            raise RuntimeError("empty answer")
        return text

    async def close(self) -> None:
        await self.client.aclose()


class RawAiohttp(Contender):
    """aiohttp's own ClientSession: the ceiling of this machine, for reference."""

    name = "raw aiohttp (reference)"

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + "/chat/completions"

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        )

    async def send(self) -> object:
        async with self.session.post(self.url, json=BODY) as response:
            response.raise_for_status()
            data = await response.json()
        text = data["choices"][0]["message"]["content"]
        if not text:
            raise RuntimeError("empty answer")
        return text

    async def close(self) -> None:
        await self.session.close()


# --------------------------------------------------------------------------- chainop


def chain_spec(endpoints: list[str], *, timeout: float = TIMEOUT) -> ProviderChainSpec:
    """A Fallback chain over ``endpoints`` (``primary``, ``secondary``, ...), defaults otherwise."""
    names = ["primary", "secondary", "tertiary", "quaternary"]
    return ProviderChainSpec.model_validate(
        {
            "providers": [
                {"name": names[i], "endpoint": url, "model": MODEL, "timeoutSeconds": timeout}
                for i, url in enumerate(endpoints)
            ]
        }
    )


def bench_request() -> RequestSpec:
    """The request every chainop contender sends (the same one as ``BODY``)."""
    return RequestSpec.model_validate(
        {"messages": [{"role": "user", "content": PROMPT}], "maxTokens": MAX_TOKENS}
    )


class CountingCall:
    """Wraps a ProviderCall: calls per provider, and calls started while benched."""

    def __init__(self, inner: ProviderClients, board: HealthBoard) -> None:
        self.inner = inner
        self.board = board
        self.calls: Counter[str] = Counter()
        self.while_benched: Counter[str] = Counter()

    async def __call__(
        self, provider: ProviderSpec, request: RequestSpec, context: CallContext
    ) -> Completion:
        self.calls[provider.name] += 1
        if self.board.get(provider.name).is_benched(time.time()):
            self.while_benched[provider.name] += 1
        return await self.inner(provider, request, context)


class ProviderClientsOnly(Contender):
    """``ProviderClients`` called directly: the adapter and wire cost, no executor."""

    def __init__(self, url: str, transport: TransportName) -> None:
        self.name = f"chainop ProviderClients only ({transport})"
        self.transport: TransportName = transport
        self.provider = chain_spec([url]).providers[0]
        self.request = bench_request()
        self.context = CallContext(timeout=TIMEOUT)

    async def open(self) -> None:
        self.clients = ProviderClients(transport=self.transport)

    async def send(self) -> object:
        return await self.clients(self.provider, self.request, self.context)

    async def close(self) -> None:
        await self.clients.aclose()


class Chainop(Contender):
    """``chainop.core.chain.execute`` over ``ProviderClients``: the real routing path."""

    def __init__(
        self,
        endpoints: list[str],
        transport: TransportName = "aiohttp",
        *,
        timeout: float = TIMEOUT,
        count: bool = False,
    ) -> None:
        n = len(endpoints)
        self.name = f"chainop executor, {n}-provider chain ({transport})"
        self.transport: TransportName = transport
        self.chain = chain_spec(endpoints, timeout=timeout)
        self.eligible = [p.name for p in self.chain.providers]
        self.request = bench_request()
        self.timeout = timeout
        self.count = count

    async def open(self) -> None:
        self.clients = ProviderClients(transport=self.transport)
        self.reset()

    def reset(self) -> None:
        """Fresh health (as a newly started operator would have)."""
        self.board = HealthBoard(self.chain)
        self.counting = CountingCall(self.clients, self.board)
        self.call = self.counting if self.count else self.clients

    async def send(self) -> object:
        result = await execute(
            chain=self.chain,
            eligible=self.eligible,
            request=self.request,
            call=self.call,
            board=self.board,
            now=time.time,
        )
        if result.completion is None:
            raise RuntimeError(result.failure_message)
        return result

    async def close(self) -> None:
        await self.clients.aclose()

    def counters(self) -> dict[str, Any]:
        return {
            "calls": dict(self.counting.calls),
            "calls_while_benched": dict(self.counting.while_benched),
            "primary_benchings": self.board.get("primary").benchings,
        }


# --------------------------------------------------------------------------- LiteLLM


def import_litellm() -> Any:
    """Import LiteLLM with telemetry off, the local cost map and quiet logs."""
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return litellm


def litellm_deployment(name: str, url: str, timeout: float) -> dict[str, Any]:
    """One Router deployment: an OpenAI-compatible endpoint, like a chainop provider."""
    return {
        "model_name": name,
        "litellm_params": {
            "model": f"openai/{MODEL}",
            "api_base": url,
            "api_key": "sk-bench",
            "timeout": timeout,
        },
    }


class LiteLLMRouter(Contender):
    """LiteLLM's Router: one deployment, or a primary with a fallback group.

    ``tuned`` sets the Router's failure knobs to chainop's defaults (``num_retries`` =
    transientRetries, ``allowed_fails`` = failureThreshold - 1, since LiteLLM cools down
    when the failures of the minute *exceed* it, ``cooldown_time`` =
    cooldown.initialSeconds). Otherwise every knob is LiteLLM's default.
    """

    def __init__(
        self,
        endpoints: list[str],
        *,
        timeout: float = TIMEOUT,
        tuned: bool = False,
    ) -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self.tuned = tuned
        if len(endpoints) == 1:
            self.name = "LiteLLM Router"
        else:
            self.name = "LiteLLM Router, " + ("tuned like chainop" if tuned else "defaults")

    async def open(self) -> None:
        self.litellm = import_litellm()
        self.reset()

    def reset(self) -> None:
        """A new Router: no cooldowns, no failure counts."""
        litellm = self.litellm
        if len(self.endpoints) == 1:
            self.router = litellm.Router(
                model_list=[litellm_deployment("bench", self.endpoints[0], self.timeout)]
            )
            self.model = "bench"
            return
        model_list = [
            litellm_deployment("primary", self.endpoints[0], self.timeout),
            litellm_deployment("secondary", self.endpoints[1], self.timeout),
        ]
        options: dict[str, Any] = {"fallbacks": [{"primary": ["secondary"]}]}
        if self.tuned:
            health = chain_spec(self.endpoints).health
            options.update(
                num_retries=health.transient_retries,
                allowed_fails=health.failure_threshold - 1,
                cooldown_time=health.cooldown.initial_seconds,
            )
        self.router = litellm.Router(model_list=model_list, **options)
        self.model = "primary"

    async def send(self) -> object:
        response = await self.router.acompletion(
            model=self.model,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=MAX_TOKENS,
        )
        text = response.choices[0].message.content
        if not text:
            raise RuntimeError("empty answer")
        return text


# --------------------------------------------------------------------------- helpers


class ConnectCounter:
    """Counts TCP connection attempts per port by wrapping the loop's ``sock_connect``.

    asyncio's ``create_connection`` (httpcore, anyio) and aiohttp's happy-eyeballs both
    go through ``loop.sock_connect``, so this sees every client's attempts, including
    refused ones that never reach a server.
    """

    def __init__(self) -> None:
        self.by_port: Counter[int] = Counter()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        inner = loop.sock_connect

        async def sock_connect(sock: Any, address: Any) -> None:
            if isinstance(address, tuple) and len(address) >= 2:
                self.by_port[int(address[1])] += 1
            await inner(sock, address)

        loop.sock_connect = sock_connect  # type: ignore[method-assign]


OVERHEAD_CONTENDERS = (
    "raw-httpx",
    "raw-httpx-aiohttp",
    "raw-aiohttp",
    "providerclients-aiohttp",
    "chainop-1-aiohttp",
    "chainop-2-aiohttp",
    "chainop-1-httpx",
    "litellm",
)


def overhead_contender(key: str, url: str, spare_url: str) -> Contender:
    """Build a routing-overhead contender by key (see ``OVERHEAD_CONTENDERS``)."""
    if key == "raw-httpx":
        return RawHttpx(url, "httpx")
    if key == "raw-httpx-aiohttp":
        return RawHttpx(url, "aiohttp")
    if key == "raw-aiohttp":
        return RawAiohttp(url)
    if key == "providerclients-aiohttp":
        return ProviderClientsOnly(url, "aiohttp")
    if key == "chainop-1-aiohttp":
        return Chainop([url], "aiohttp")
    if key == "chainop-2-aiohttp":
        return Chainop([url, spare_url], "aiohttp")
    if key == "chainop-1-httpx":
        return Chainop([url], "httpx")
    if key == "litellm":
        return LiteLLMRouter([url])
    raise ValueError(f"unknown contender {key!r}")
