"""One measurement in a fresh process: ``python -m bench.worker '<json job>'``.

A fresh process per contender keeps one client's imports, threads and garbage (LiteLLM
brings a lot) out of another's CPU figures. The job's result is the last line of stdout,
as JSON. The process pins itself away from the fake backends' CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import backend
from bench.contenders import (
    Chainop,
    ConnectCounter,
    Contender,
    LiteLLMRouter,
    overhead_contender,
)
from bench.load import closed_loop
from chainop.testing.fake_backend import FakeBackendControl


async def overhead(job: dict[str, Any]) -> dict[str, Any]:
    """Routing overhead: one contender at each concurrency, same client throughout."""
    contender = overhead_contender(job["contender"], job["url"], job["spare"])
    await contender.open()
    try:
        for _ in range(20):  # connections, imports on first use, caches
            await contender.send()
        results = []
        for concurrency in job["concurrency"]:
            result = await closed_loop(
                contender.send,
                concurrency=concurrency,
                seconds=job["seconds"],
                warmup=job["warmup"],
            )
            results.append(result.as_dict())
        profile = job.get("profile")
        if profile:
            await profile_run(contender, job, Path(profile))
    finally:
        await contender.close()
    return {"name": contender.name, "key": job["contender"], "results": results}


async def paired(job: dict[str, Any]) -> dict[str, Any]:
    """CPU per request of several contenders in one process, in alternating short slices.

    The machine is shared: what other work does to the CPU's caches and clock hits both
    sides of a ratio alike when they run seconds apart in the same process, so the
    median of per-slice ratios is far steadier than a ratio of separate runs.
    """
    keys: list[str] = job["contenders"]
    contenders = [overhead_contender(key, job["url"], job["spare"]) for key in keys]
    for contender in contenders:
        await contender.open()
    out: dict[str, Any] = {"names": {k: c.name for k, c in zip(keys, contenders, strict=True)}}
    try:
        for contender in contenders:
            for _ in range(50):
                await contender.send()
        for concurrency in job["concurrency"]:
            cpu: dict[str, list[float]] = {key: [] for key in keys}
            for slice_number in range(job["slices"]):
                order = list(zip(keys, contenders, strict=True))
                if slice_number % 2:
                    order.reverse()
                for key, contender in order:
                    result = await closed_loop(
                        contender.send, concurrency=concurrency, seconds=job["slice_seconds"]
                    )
                    cpu[key].append(result.cpu_us_per_request)
            out[str(concurrency)] = cpu
    finally:
        for contender in contenders:
            await contender.close()
    return out


async def profile_run(contender: Contender, job: dict[str, Any], out: Path) -> None:
    """Profile ``contender`` at the last concurrency with pyinstrument: text + raw session."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    await closed_loop(
        contender.send, concurrency=job["concurrency"][-1], seconds=job["profile_seconds"]
    )
    session = profiler.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(
        profiler.output_text(unicode=True, color=False, show_all=False, short_mode=False)
    )
    session.save(str(out.with_suffix(".pyisession")))


async def failover(job: dict[str, Any]) -> dict[str, Any]:
    """A broken primary, a healthy secondary: first-failure latency, then steady state."""
    loop = asyncio.get_running_loop()
    connects = ConnectCounter()
    connects.install(loop)
    endpoints = [job["primary"], job["secondary"]]
    timeout = job["timeout"]
    kind = job["contender"]
    contender: Chainop | LiteLLMRouter
    if kind == "chainop":
        contender = Chainop(endpoints, "aiohttp", timeout=timeout, count=True)
    else:
        contender = LiteLLMRouter(endpoints, timeout=timeout, tuned=kind == "litellm-tuned")
    control = FakeBackendControl(job["primary_control"]) if job["primary_control"] else None
    port = int(job["primary_port"])

    async def calls_to_primary() -> int:
        if control is not None:
            stats = await control.astats()
            return int(stats["requests"].get("openai", 0))
        return connects.by_port[port]

    await contender.open()
    try:
        # Baseline: the healthy secondary alone, through the same contender, warm.
        secondary = _secondary_only(contender)
        for _ in range(10):
            await secondary()
        samples = []
        for _ in range(30):
            started = time.perf_counter()
            await secondary()
            samples.append(time.perf_counter() - started)
        baseline_ms = statistics.median(samples) * 1000

        # The first request after the primary broke (fresh health, warm secondary).
        before = await calls_to_primary()
        started = time.perf_counter()
        first_error = ""
        try:
            await contender.send()
        except Exception as exc:
            first_error = f"{type(exc).__name__}: {exc}"[:300]
        first_ms = (time.perf_counter() - started) * 1000
        first_calls = await calls_to_primary() - before

        # Steady state from a fresh start: a new board / a new Router.
        contender.reset()
        before = await calls_to_primary()
        result = await closed_loop(
            contender.send, concurrency=job["concurrency"], seconds=job["seconds"]
        )
        steady_calls = await calls_to_primary() - before
        counters = contender.counters()
    finally:
        await contender.close()
    return {
        "name": contender.name,
        "key": kind,
        "scenario": job["scenario"],
        "baseline_ms": baseline_ms,
        "first_ms": first_ms,
        "first_added_ms": first_ms - baseline_ms,
        "first_calls_to_primary": first_calls,
        "first_error": first_error,
        "steady": result.as_dict(),
        "steady_calls_to_primary": steady_calls,
        "counters": counters,
    }


def _secondary_only(contender: Chainop | LiteLLMRouter) -> Any:
    """A send() that only uses the secondary, through the same clients."""
    if isinstance(contender, Chainop):
        from chainop.core.chain import execute

        async def send_chainop() -> object:
            result = await execute(
                chain=contender.chain,
                eligible=["secondary"],
                request=contender.request,
                call=contender.clients,
                board=contender.board,
                now=time.time,
            )
            if result.completion is None:
                raise RuntimeError(result.failure_message)
            return result

        return send_chainop

    async def send_litellm() -> object:
        return await contender.router.acompletion(
            model="secondary",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=16,
        )

    return send_litellm


JOBS = {"overhead": overhead, "paired": paired, "failover": failover}


def main() -> None:
    """Run the job given as JSON in argv[1]; print its JSON result last."""
    job = json.loads(sys.argv[1])
    backend.pin(os.getpid(), backend.load_cpus())
    result = asyncio.run(JOBS[job["job"]](job))
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
