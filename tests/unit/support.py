"""Builders and fakes shared by the unit tests of the core (no I/O anywhere)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chainop.core.calls import CallContext, Completion
from chainop.core.chain import ChainObserver
from chainop.core.errors import ProviderError
from chainop.core.models import (
    Attempt,
    DelegatedTaskSpec,
    ProviderChainSpec,
    ProviderSpec,
    RequestSpec,
)

T0 = 1_800_000_000.0


class Clock:
    """An injected wall clock that only moves when a test moves it."""

    def __init__(self, start: float = T0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def provider(name: str, tier: str = "Standard", **extra: Any) -> dict[str, Any]:
    """A provider dict as a user would write it."""
    return {
        "name": name,
        "type": "openai",
        "endpoint": f"http://{name}.example:8000/v1",
        "model": f"{name}-model",
        "privacyTier": tier,
        **extra,
    }


def chain(*providers: dict[str, Any], **extra: Any) -> ProviderChainSpec:
    """A ProviderChainSpec from provider dicts and top-level overrides."""
    return ProviderChainSpec.model_validate({"providers": list(providers), **extra})


def task(routing: dict[str, Any] | None = None, **extra: Any) -> DelegatedTaskSpec:
    """A DelegatedTaskSpec with a one-message request."""
    body: dict[str, Any] = {
        "chain": "default",
        "request": {"messages": [{"role": "user", "content": "hello"}]},
        **extra,
    }
    if routing is not None:
        body["routing"] = routing
    return DelegatedTaskSpec.model_validate(body)


def request(**extra: Any) -> RequestSpec:
    """A small request."""
    return RequestSpec.model_validate({"messages": [{"role": "user", "content": "hello"}], **extra})


def ok(text: str = "hi", **extra: Any) -> Completion:
    """A complete answer."""
    return Completion(text=text, input_tokens=10, output_tokens=5, **extra)


@dataclass
class ScriptedCall:
    """A ProviderCall that plays a script per provider: Completions or errors, in order.

    When a provider's script runs out, its last entry repeats. ``hang`` providers wait
    forever (until cancelled by the task deadline).
    """

    script: dict[str, list[Completion | ProviderError]] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    calls: list[tuple[str, CallContext]] = field(default_factory=list)

    async def __call__(
        self, provider: ProviderSpec, request: RequestSpec, context: CallContext
    ) -> Completion:
        self.calls.append((provider.name, context))
        if provider.name in self.hang:
            await asyncio.Event().wait()
        steps = self.script.get(provider.name) or [ok(f"from {provider.name}")]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if isinstance(step, ProviderError):
            raise step
        return step

    def called(self) -> list[str]:
        """Names of the providers called, in order."""
        return [name for name, _ in self.calls]


@dataclass
class RecordingObserver(ChainObserver):
    """Remembers every hook call, to check the executor reports what it does."""

    events: list[tuple[str, ...]] = field(default_factory=list)

    def on_attempt(self, provider: ProviderSpec, attempt: Attempt) -> None:
        self.events.append(("attempt", provider.name, attempt.outcome))

    def on_failover(
        self, from_provider: ProviderSpec, to_provider: ProviderSpec, reason: str
    ) -> None:
        self.events.append(("failover", from_provider.name, to_provider.name))

    def on_benched(self, provider: ProviderSpec, seconds: float, reason: str) -> None:
        self.events.append(("benched", provider.name, f"{seconds:g}"))

    def on_spillover(self, from_provider: ProviderSpec, to_provider: ProviderSpec) -> None:
        self.events.append(("spillover", from_provider.name, to_provider.name))

    def kinds(self, kind: str) -> list[tuple[str, ...]]:
        return [e for e in self.events if e[0] == kind]


def names(attempts: Sequence[Attempt]) -> list[tuple[str, str]]:
    """(provider, outcome) of each attempt."""
    return [(a.provider, a.outcome) for a in attempts]


# Deployments and pods shaped as kube-controller-manager and a real kubelet (v1.36, on
# this project's node) serve them during a Recreate restart, sampled every 0.3 s: the old
# pod shutting down, the new one in ContainerCreating, then running (restartCount 0) for
# a second before a crash-looping container's first exit was reported.
def stamp(epoch: float) -> str:
    """Epoch seconds as the API writes times."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rolled_deployment(**status: object) -> dict[str, object]:
    """A Deployment restarted once (generation 2) whose rollout the controller made;
    ``status`` overrides its status fields."""
    rolled = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1}
    return {
        "metadata": {"name": "flaky", "generation": 2},
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"}},
        "status": {**rolled, **status},
    }


def node_pod(name: str, state: dict[str, object], **extra: object) -> dict[str, object]:
    """A pod on the node with one container in ``state``; ``extra`` goes to metadata."""
    container: dict[str, object] = {"name": "server", "ready": False, "restartCount": 0}
    return {
        "metadata": {"name": name, **extra},
        "spec": {"nodeName": "chainop-node"},
        "status": {"phase": "Running", "containerStatuses": [{**container, "state": state}]},
    }
