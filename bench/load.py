"""A closed-loop load generator: N workers, each sending its next request when one returns.

CPU per request is the load process's own CPU time (``time.process_time``: every thread
of the process, user + system) over the measured window, divided by the requests
completed in it, so it counts exactly what the client under test costs its host.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: One request: returns normally on success, raises on failure.
Send = Callable[[], Awaitable[object]]


@dataclass
class LoadResult:
    """What one closed-loop run measured."""

    concurrency: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    first_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


async def closed_loop(
    send: Send, *, concurrency: int, seconds: float, warmup: float = 0.0
) -> LoadResult:
    """Run ``send`` from ``concurrency`` workers for ``seconds`` (after ``warmup``).

    Latency percentiles are over successful requests; failed ones are counted in
    ``errors`` (and in the request rate, which is completed requests of any outcome
    only when ``errors`` is 0: ``rps`` counts successes).
    """
    if warmup > 0:
        await _run(send, concurrency=concurrency, seconds=warmup)
    return await _run(send, concurrency=concurrency, seconds=seconds)


async def _run(send: Send, *, concurrency: int, seconds: float) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    first_error = ""
    clock = time.perf_counter
    stop_at = 0.0

    async def worker() -> None:
        nonlocal errors, first_error
        while clock() < stop_at:
            started = clock()
            try:
                await send()
            except Exception as exc:
                errors += 1
                if not first_error:
                    first_error = f"{type(exc).__name__}: {exc}"[:300]
            else:
                latencies.append(clock() - started)

    cpu_started = time.process_time()
    started = clock()
    stop_at = started + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = clock() - started
    cpu = time.process_time() - cpu_started
    latencies.sort()
    done = len(latencies)
    return LoadResult(
        concurrency=concurrency,
        seconds=round(elapsed, 3),
        requests=done,
        errors=errors,
        rps=done / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        cpu_us_per_request=cpu / max(done + errors, 1) * 1e6,
        first_error=first_error,
    )
