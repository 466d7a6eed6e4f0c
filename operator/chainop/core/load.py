"""Load signals: when an in-cluster server counts as saturated. Purely computational.

A provider with ``loadSignal`` has its server's Prometheus endpoint read with the probe
(``chainop.providers.loadsignal`` parses it into a :class:`LoadReading`); the executor asks
:func:`saturation` before sending work there. The rules:

* saturated when ``waiting >= maxWaiting`` or ``kvCacheUsage >= maxKvCacheUsage`` (each
  limit may be switched off with null; a server that does not publish KV usage is judged
  by its queue alone);
* a reading older than ``max_age`` (three probe intervals) is ignored: never act on stale
  data (llm-d-router#2408), so a server whose metrics endpoint went quiet is treated as
  not saturated rather than skipped forever;
* saturation is never a failure: it does not count against the provider's health;
* between two readings, the queue is estimated from the calls this chain started since
  minus those that ended (``delta``): calls beyond the server's free slots queue, calls
  that ended let queued ones in. The slots are ``loadSignal.slots``, else learned from
  the last reading that showed a queue (the server was full: ``running`` is its size),
  else unknown (new calls are assumed to find a slot). Without it a burst of tasks created
  at once would all go to the local server before the next reading shows it full (seen
  on llama-server with one slot: 8 tasks in the same instant, none spilled).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from chainop.core.models import LoadSignalSpec, LoadStatus

#: A reading is acted on only while younger than this many probe intervals.
STALE_AFTER_INTERVALS = 3


@dataclass(frozen=True, slots=True)
class LoadReading:
    """One reading of a server's queue (sums over its engines; KV usage is the highest)."""

    waiting: float
    running: float
    kv_cache_usage: float | None
    #: Epoch seconds of the read.
    observed_at: float
    #: Calls of ours started since the read minus those ended (see the module docstring).
    delta: int = 0
    #: How many requests the server runs at once, when known.
    slots: int | None = None

    @property
    def queued(self) -> float:
        """The queue as estimated now (see the module docstring), never below zero."""
        if self.delta <= 0:
            return max(self.waiting + self.delta, 0.0)
        if self.slots is None:
            return self.waiting
        free = max(self.slots - self.running, 0.0)
        return self.waiting + max(self.delta - free, 0.0)


def learned_slots(reading: LoadReading, known: int | None) -> int | None:
    """The server's slots after ``reading``: its ``running`` when it also shows a queue
    (the server was full); forgotten when it runs more than that without a queue."""
    if reading.waiting > 0 and reading.running >= 1:
        return int(reading.running)
    if known is not None and reading.running > known:
        return None
    return known


def max_age(probe_interval_seconds: float) -> float:
    """How old a reading may be and still count (three probe intervals)."""
    return STALE_AFTER_INTERVALS * probe_interval_seconds


def is_fresh(reading: LoadReading, *, now: float, max_age_seconds: float) -> bool:
    """Whether ``reading`` is recent enough to act on (a reading from the future is not)."""
    age = now - reading.observed_at
    return -1.0 < age <= max_age_seconds  # 1 s of clock skew tolerated


def over_limits(reading: LoadReading, spec: LoadSignalSpec) -> str | None:
    """Why ``reading`` exceeds ``spec``'s limits, in words, or None (staleness ignored)."""
    if spec.max_waiting is not None and reading.queued >= spec.max_waiting:
        since = f" ({reading.waiting:g} read, {reading.delta:+d} since)" if reading.delta else ""
        return f"saturated: {reading.queued:g} waiting ≥ {spec.max_waiting}{since}"
    if (
        spec.max_kv_cache_usage is not None
        and reading.kv_cache_usage is not None
        and reading.kv_cache_usage >= spec.max_kv_cache_usage
    ):
        return (
            f"saturated: KV cache {reading.kv_cache_usage:.0%} full ≥ {spec.max_kv_cache_usage:.0%}"
        )
    return None


def saturation(
    reading: LoadReading | None,
    spec: LoadSignalSpec | None,
    *,
    now: float,
    max_age_seconds: float,
) -> str | None:
    """Why the provider should be skipped for load right now, or None.

    None without a load signal, without a reading, or with a stale one.
    """
    if spec is None or reading is None:
        return None
    if not is_fresh(reading, now=now, max_age_seconds=max_age_seconds):
        return None
    return over_limits(reading, spec)


def to_status(
    reading: LoadReading, spec: LoadSignalSpec | None, *, now: float, max_age_seconds: float
) -> LoadStatus:
    """The ``providers[].load`` status of a reading (``saturated`` empty when stale)."""
    why = saturation(reading, spec, now=now, max_age_seconds=max_age_seconds)
    return LoadStatus(
        waiting=max(reading.waiting, 0.0),
        running=max(reading.running, 0.0),
        kv_cache_usage=(
            None if reading.kv_cache_usage is None else min(max(reading.kv_cache_usage, 0.0), 1.0)
        ),
        observed_at=datetime.fromtimestamp(reading.observed_at, tz=UTC),
        saturated=why or "",
    )
