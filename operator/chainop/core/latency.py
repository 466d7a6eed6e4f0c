"""Observed latency of providers: EWMA for adaptive order, percentiles for hedging.

Purely computational. Only complete answers are observed: a failure's latency says how
long it took to fail, not how fast the provider answers, and a cancelled hedge never
finished. Per output token when the reply says how many tokens it produced, so a provider
that happened to get long answers is not taken for a slow one.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

#: Weight of the newest observation in the EWMA (about the last 6 calls dominate).
EWMA_WEIGHT = 0.3
#: Recent latencies kept per provider for percentiles.
WINDOW = 200
#: A percentile is trusted only after this many observations.
MIN_SAMPLES = 20


@dataclass(slots=True)
class LatencyStats:
    """One provider's recent latency: an EWMA (per token when known) and a window."""

    ewma_ms: float | None = None
    ewma_ms_per_token: float | None = None
    window: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def observe(self, latency_ms: float, output_tokens: int = 0) -> None:
        """Record one complete answer."""
        if not math.isfinite(latency_ms) or latency_ms < 0:
            return
        self.window.append(latency_ms)
        self.ewma_ms = _ewma(self.ewma_ms, latency_ms)
        if output_tokens > 0:
            self.ewma_ms_per_token = _ewma(self.ewma_ms_per_token, latency_ms / output_tokens)

    def observe_outrun(self, elapsed_ms: float) -> None:
        """A call cancelled after ``elapsed_ms`` because a hedge answered first: its
        latency was at least that. Kept in the window (so the slow tail stays in the
        percentile a hedge waits for) but not in the EWMA, which takes whole answers."""
        if math.isfinite(elapsed_ms) and elapsed_ms >= 0:
            self.window.append(elapsed_ms)

    @property
    def score(self) -> float | None:
        """What adaptive order sorts by: ms per token when known, else ms per call."""
        return self.ewma_ms_per_token if self.ewma_ms_per_token is not None else self.ewma_ms

    @property
    def unit(self) -> str:
        """The unit of :attr:`score`, for the decision's reason."""
        return "ms/token" if self.ewma_ms_per_token is not None else "ms"

    def percentile(self, p: float) -> float | None:
        """The p-th percentile (nearest rank) of the window; None below MIN_SAMPLES."""
        if len(self.window) < MIN_SAMPLES:
            return None
        ordered = sorted(self.window)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]


def _ewma(previous: float | None, value: float) -> float:
    if previous is None:
        return value
    return EWMA_WEIGHT * value + (1 - EWMA_WEIGHT) * previous
