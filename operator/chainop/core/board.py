"""The live health, load and latency of one chain's providers, shared by its tasks.

In-memory and synchronous: asyncio runs one task at a time, so no locks. The operator
seeds health from status and persists it back when ``version`` moves; load readings come
from the probe loop; latency from the executor's own successful calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from chainop.core import health as health_rules
from chainop.core.errors import (
    IncompleteReplyError,
    ProviderError,
    QuotaExhaustedError,
    RateLimitedError,
)
from chainop.core.health import FailureOutcome, ProviderHealth
from chainop.core.latency import LatencyStats
from chainop.core.load import LoadReading, learned_slots
from chainop.core.models import ProviderChainSpec, ProviderSpec


class HealthBoard:
    """The live health of one chain's providers, shared by its concurrent tasks.

    In-memory and synchronous (asyncio runs one task at a time, so no locks). The
    operator seeds it from status, persists it back when ``version`` moves, and marks
    providers whose backend restart is under way in ``restarting``.
    """

    def __init__(self, chain: ProviderChainSpec, *, initial: Iterable[ProviderHealth] = ()):
        self.chain = chain
        self._health: dict[str, ProviderHealth] = {
            p.name: ProviderHealth(name=p.name) for p in chain.providers
        }
        for known in initial:
            if known.name in self._health:
                self._health[known.name] = known
        self.restarting: set[str] = set()
        #: Providers with a half-open trial request in flight (see ``execute``).
        self.trials: set[str] = set()
        #: The last load-signal reading of each provider that declares ``loadSignal``.
        self.load: dict[str, LoadReading] = {}
        #: Calls in flight per provider now, and when its last reading was taken.
        self.inflight: dict[str, int] = {}
        self._inflight_at_read: dict[str, int] = {}
        #: Slots learned from readings (see ``chainop.core.load.learned_slots``).
        self._slots: dict[str, int | None] = {}
        #: Observed latency of complete answers, per provider (never persisted).
        self.latency: dict[str, LatencyStats] = {}
        #: The model the last reply of each provider named, when not the configured one.
        self.served_model: dict[str, str] = {}
        self.version = 0

    def get(self, name: str) -> ProviderHealth:
        """Health of one provider (a fresh Healthy record for an unknown name)."""
        return self._health.get(name) or ProviderHealth(name=name)

    def all(self) -> list[ProviderHealth]:
        """Health of every provider, in the chain's order."""
        return [self.get(p.name) for p in self.chain.providers]

    def set(self, health: ProviderHealth) -> None:
        """Replace one provider's health (and bump ``version`` if it changed)."""
        if self._health.get(health.name) != health:
            self._health[health.name] = health
            self.version += 1

    def reconfigure(self, chain: ProviderChainSpec) -> None:
        """Adopt a new spec: keep the health of providers that stay, forget the rest."""
        self.chain = chain
        self._health = {
            p.name: self._health.get(p.name) or ProviderHealth(name=p.name) for p in chain.providers
        }
        self.version += 1
        known = set(self._health)
        self.load = {k: v for k, v in self.load.items() if k in known}
        self.latency = {k: v for k, v in self.latency.items() if k in known}

    def set_load(self, name: str, reading: LoadReading) -> None:
        """Record a load-signal reading (not a health change: ``version`` stays)."""
        self.load[name] = reading
        self._inflight_at_read[name] = self.inflight.get(name, 0)
        self._slots[name] = learned_slots(reading, self._slots.get(name))

    def load_now(self, name: str) -> LoadReading | None:
        """The last reading, with our calls started/ended since it (``delta``) folded in."""
        reading = self.load.get(name)
        if reading is None:
            return None
        delta = self.inflight.get(name, 0) - self._inflight_at_read.get(name, 0)
        if not delta:
            return reading
        provider = self.chain.provider(name)
        declared = provider.load_signal.slots if provider and provider.load_signal else None
        slots = declared if declared is not None else self._slots.get(name)
        return replace(reading, delta=delta, slots=slots)

    def sent_since_read(self, name: str) -> int:
        """Calls to ``name`` started since its last reading minus those ended (0 unread)."""
        if name not in self.load:
            return 0
        return self.inflight.get(name, 0) - self._inflight_at_read.get(name, 0)

    def call_started(self, name: str) -> None:
        """A real call to ``name`` is in flight (for the load estimate between readings)."""
        self.inflight[name] = self.inflight.get(name, 0) + 1

    def call_ended(self, name: str) -> None:
        """A call started with :meth:`call_started` ended, however it ended."""
        self.inflight[name] = max(self.inflight.get(name, 0) - 1, 0)

    def observe_latency(self, name: str, latency_ms: float, output_tokens: int = 0) -> None:
        """Record the latency of one complete answer of ``name``."""
        self.latency.setdefault(name, LatencyStats()).observe(latency_ms, output_tokens)

    def success(self, name: str, *, now: float) -> None:
        """A real request to ``name`` succeeded."""
        current = self._health.get(name)
        if (
            current is not None
            and current.consecutive_failures == 0
            and current.benchings == 0
            and current.cooldown_until is None
            and not current.last_error
        ):
            # Already what record_success would return: the hot path of a healthy chain
            # skips rebuilding and comparing a 15-field record on every request.
            return
        self.set(health_rules.record_success(self.get(name), now=now))

    def failure(
        self, provider: ProviderSpec, error: ProviderError, *, now: float
    ) -> FailureOutcome:
        """A real request to ``provider`` failed transiently; returns whether it was benched."""
        policy = self.chain.health
        # Timeouts, refusals and 5xx of an in-cluster backend are evidence of a wedged
        # engine; a rate limit or a garbled reply is not.
        wedge_evidence = provider.backend is not None and not isinstance(
            error, RateLimitedError | IncompleteReplyError
        )
        outcome = health_rules.record_failure(
            self.get(provider.name),
            now=now,
            error=error.message,
            failure_threshold=policy.failure_threshold,
            cooldown=policy.cooldown,
            exempt=provider.exempt_from_cooldown,
            retry_after=error.retry_after if isinstance(error, RateLimitedError) else None,
            retry_after_cap=policy.retry_after_cap_seconds,
            restart_in_flight=provider.name in self.restarting,
            wedge=policy.wedged if wedge_evidence else None,
        )
        self.set(outcome.health)
        return outcome

    def quota_exhausted(
        self, provider: ProviderSpec, error: QuotaExhaustedError, *, now: float
    ) -> FailureOutcome:
        """The provider's quota or credit ran out: a long benching, no failure count."""
        policy = self.chain.health
        outcome = health_rules.record_quota_exhausted(
            self.get(provider.name),
            now=now,
            error=error.message,
            quota_cooldown=policy.quota_cooldown_seconds,
            retry_after=error.retry_after,
            retry_after_cap=policy.retry_after_cap_seconds,
            exempt=provider.exempt_from_cooldown,
        )
        self.set(outcome.health)
        return outcome
