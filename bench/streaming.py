"""Streamed provider calls (issue 15): what streaming costs, and what it buys.

``python -m bench streaming`` measures two things against ``chainop.testing.fake_backend``
in its own process (pinned to the last CPU), the measuring process pinned to the others:

1. **Executor overhead, streamed and not.** The same answer (``--st-words`` words, one
   word-sized ``chat.completion.chunk`` each, as a server sends one token per chunk)
   fetched four ways in one process, in alternating short slices (the machine is shared:
   slices seconds apart in one process see the same interference, so the median of the
   per-slice ratios is steadier than a ratio of separate runs): chainop's executor
   (``chainop.core.chain.execute`` over ``ProviderClients``) with ``stream: true`` and
   with ``stream: false``, and the raw httpx client chainop is built on
   (``chainop.providers.build_client``), streamed through ``httpx-sse`` and whole. Each
   treats anything but the whole answer as a failure. Figures: CPU per request (the
   process's CPU time over the slice / requests), requests/s and tokens/s (requests/s x
   the answer's chunks) at concurrency 1 and 16.
2. **Time to abandon a provider stalled before its first token.** A chain of a stalled
   provider (it sends the 200 and its headers, then nothing: a hung engine) and a healthy
   one; ``--st-tasks`` executions at once, streamed with ``timeoutSeconds: T`` and
   ``firstTokenTimeoutSeconds: F``, then not streamed with the same ``timeoutSeconds``
   (the non-streamed call cannot tell a slow answer from no answer, so it waits T). The
   time to abandon is the stalled attempt's own ``latencyMs``; the time to the answer is
   the whole execution's.

Results go to ``bench/results/latest.json`` (key ``streaming``) and section 8 of
docs/benchmarks.md, rendered by :func:`render`. No control plane is needed: this is the
executor, the part of chainop a streamed call changes.
"""

# ruff: noqa: RUF001 - the markdown uses the multiplication sign on purpose

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from httpx_sse import aconnect_sse

from bench import backend
from bench.contenders import Contender
from bench.load import closed_loop
from chainop.core.chain import HealthBoard, execute
from chainop.core.models import ProviderChainSpec, RequestSpec
from chainop.providers import ProviderClients, build_client

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## 8. Streamed calls: executor overhead and time to abandon a stalled provider (issue 15)"
MODEL = "fake-model"
#: The measured clients, in the order they are shown.
CONTENDERS = ("raw-stream", "chainop-stream", "raw-whole", "chainop-whole")
LABELS = {
    "raw-stream": "raw httpx + httpx-sse, streamed",
    "chainop-stream": "chainop executor, `stream: true`",
    "raw-whole": "raw httpx, not streamed",
    "chainop-whole": "chainop executor, `stream: false`",
}
#: Generous: nothing is slow in the overhead part, and a failure is counted, not waited.
TIMEOUT = 30.0
WORKER_TIMEOUT = 240


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the report."""
    print(message, file=sys.stderr, flush=True)


def prompt(words: int) -> str:
    """The user message: the fake echoes it, so its length sets the answer's."""
    return " ".join(f"word{i}" for i in range(words))


def chain(
    endpoints: list[str], *, stream: bool, timeout: float, first_token: float | None = None
) -> ProviderChainSpec:
    """A Fallback chain over ``endpoints``, every provider streamed or not; no retry on the
    same provider (a stalled one is left at once, as its attempt shows)."""
    names = ["primary", "secondary"]
    providers = []
    for name, url in zip(names, endpoints, strict=False):
        entry: dict[str, Any] = {
            "name": name,
            "endpoint": url,
            "model": MODEL,
            "timeoutSeconds": timeout,
            "stream": stream,
        }
        if first_token is not None:
            entry["firstTokenTimeoutSeconds"] = first_token
        providers.append(entry)
    return ProviderChainSpec.model_validate(
        {"providers": providers, "health": {"transientRetries": 0}}
    )


# --------------------------------------------------------------------------- contenders


class RawStream(Contender):
    """A hand-written streamed call: ``httpx-sse`` over chainop's own client, the deltas
    joined until ``[DONE]``; no failover, no classification."""

    def __init__(self, url: str, words: int) -> None:
        self.name = LABELS["raw-stream"]
        self.url = url.rstrip("/") + "/chat/completions"
        self.body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt(words)}],
            "max_tokens": 4 * words + 64,
            "stream": True,
        }
        self.chunks = 0

    async def open(self) -> None:
        self.client = build_client(transport="aiohttp")

    async def send(self) -> object:
        parts: list[str] = []
        done = False
        async with aconnect_sse(
            self.client, "POST", self.url, json=self.body, timeout=TIMEOUT
        ) as source:
            source.response.raise_for_status()
            async for event in source.aiter_sse():
                if event.data == "[DONE]":
                    done = True
                    break
                choices = json.loads(event.data).get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    parts.append(choices[0]["delta"]["content"])
        if not done or not parts:
            raise RuntimeError("cut stream")
        self.chunks = len(parts)
        return "".join(parts)

    async def close(self) -> None:
        await self.client.aclose()


class RawWhole(Contender):
    """A hand-written call: ``client.post`` + ``response.json()``."""

    def __init__(self, url: str, words: int) -> None:
        self.name = LABELS["raw-whole"]
        self.url = url.rstrip("/") + "/chat/completions"
        self.body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt(words)}],
            "max_tokens": 4 * words + 64,
        }

    async def open(self) -> None:
        self.client = build_client(transport="aiohttp")

    async def send(self) -> object:
        response = await self.client.post(self.url, json=self.body, timeout=TIMEOUT)
        response.raise_for_status()
        text = response.json()["choices"][0]["message"]["content"]
        if not text:
            raise RuntimeError("empty answer")
        return text

    async def close(self) -> None:
        await self.client.aclose()


class ChainopExecutor(Contender):
    """``execute`` over ``ProviderClients`` on a one-provider chain, streamed or not."""

    def __init__(self, url: str, words: int, *, stream: bool) -> None:
        self.name = LABELS["chainop-stream" if stream else "chainop-whole"]
        self.chain = chain([url], stream=stream, timeout=TIMEOUT)
        self.request = RequestSpec.model_validate(
            {"messages": [{"role": "user", "content": prompt(words)}], "maxTokens": 4 * words + 64}
        )
        self.first_token_ms: list[int] = []

    async def open(self) -> None:
        self.clients = ProviderClients(transport="aiohttp")
        self.board = HealthBoard(self.chain)

    async def send(self) -> object:
        result = await execute(
            chain=self.chain,
            eligible=["primary"],
            request=self.request,
            call=self.clients,
            board=self.board,
            now=time.time,
        )
        if result.completion is None:
            raise RuntimeError(result.failure_message)
        if result.completion.first_token_ms is not None and len(self.first_token_ms) < 10_000:
            self.first_token_ms.append(result.completion.first_token_ms)
        return result

    async def close(self) -> None:
        await self.clients.aclose()


def contender(key: str, url: str, words: int) -> Contender:
    """Build one contender by key (see :data:`CONTENDERS`)."""
    if key == "raw-stream":
        return RawStream(url, words)
    if key == "raw-whole":
        return RawWhole(url, words)
    if key == "chainop-stream":
        return ChainopExecutor(url, words, stream=True)
    if key == "chainop-whole":
        return ChainopExecutor(url, words, stream=False)
    raise ValueError(f"unknown contender {key!r}")


# --------------------------------------------------------------------------- worker jobs


async def overhead_job(job: dict[str, Any]) -> dict[str, Any]:
    """Every contender in one process, alternating slices per concurrency."""
    keys: list[str] = job["contenders"]
    clients = {key: contender(key, job["url"], job["words"]) for key in keys}
    for client in clients.values():
        await client.open()
    out: dict[str, Any] = {"names": {key: c.name for key, c in clients.items()}}
    try:
        texts = {key: await clients[key].send() for key in keys}
        for _ in range(30):  # connections, first-use imports, caches
            for client in clients.values():
                await client.send()
        raw = clients.get("raw-stream")
        out["chunks_per_answer"] = raw.chunks if isinstance(raw, RawStream) else None
        out["answer_chars"] = len(str(texts.get("raw-whole", "")))
        streamed = clients.get("chainop-stream")
        first_token: dict[str, float] = {}
        for concurrency in job["concurrency"]:
            if isinstance(streamed, ChainopExecutor):
                streamed.first_token_ms.clear()
            slices: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
            for number in range(job["slices"]):
                order = list(keys) if number % 2 == 0 else list(reversed(keys))
                for key in order:
                    result = await closed_loop(
                        clients[key].send, concurrency=concurrency, seconds=job["slice_seconds"]
                    )
                    slices[key].append(
                        {
                            "rps": result.rps,
                            "cpu_us_per_request": result.cpu_us_per_request,
                            "errors": result.errors,
                            "first_error": result.first_error,
                            "p50_ms": result.p50_ms,
                        }
                    )
            out[str(concurrency)] = slices
            if isinstance(streamed, ChainopExecutor) and streamed.first_token_ms:
                first_token[str(concurrency)] = statistics.median(streamed.first_token_ms)
        out["chainop_first_token_ms_p50"] = first_token
    finally:
        for client in clients.values():
            await client.close()
    return out


async def stall_job(job: dict[str, Any]) -> dict[str, Any]:
    """``tasks`` executions at once on [stalled, healthy], streamed or not."""
    spec = chain(
        [job["stalled"], job["healthy"]],
        stream=job["stream"],
        timeout=job["timeout"],
        first_token=job["first_token"] if job["stream"] else None,
    )
    request = RequestSpec.model_validate(
        {"messages": [{"role": "user", "content": "hello"}], "maxTokens": 64}
    )
    clients = ProviderClients(transport="aiohttp")

    async def one() -> dict[str, Any]:
        started = time.perf_counter()
        result = await execute(
            chain=spec,
            eligible=["primary", "secondary"],
            request=request,
            call=clients,
            board=HealthBoard(spec),  # each execution on its own: no benching between them
            now=time.time,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        first = result.attempts[0]
        return {
            "answered_by": result.provider if result.completion is not None else None,
            "abandon_ms": first.latency_ms,
            "first_outcome": str(first.outcome.value),
            "first_error": first.error or "",
            "answer_ms": elapsed_ms,
            "outcomes": [(a.provider, str(a.outcome.value)) for a in result.attempts],
        }

    try:
        runs = await asyncio.gather(*(one() for _ in range(job["tasks"])))
    finally:
        await clients.aclose()
    return {"runs": list(runs)}


JOBS = {"overhead": overhead_job, "stall": stall_job}


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One job in a fresh process pinned away from the backends; its JSON result."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.streaming", "worker", json.dumps(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"streaming worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# --------------------------------------------------------------------------- the section


def summarise_overhead(raw: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Medians per contender and concurrency, and the medians of per-slice CPU ratios."""
    chunks = raw.get("chunks_per_answer") or 0
    out: dict[str, Any] = {"by_concurrency": {}}
    for concurrency, slices in raw.items():
        if not concurrency.isdigit():
            continue
        table: dict[str, Any] = {}
        for key in keys:
            rps = statistics.median(s["rps"] for s in slices[key])
            table[key] = {
                "rps": round(rps, 1),
                "rps_range": [
                    round(min(s["rps"] for s in slices[key])),
                    round(max(s["rps"] for s in slices[key])),
                ],
                "tokens_per_s": round(rps * chunks),
                "cpu_us_per_request": round(
                    statistics.median(s["cpu_us_per_request"] for s in slices[key])
                ),
                "p50_ms": round(statistics.median(s["p50_ms"] for s in slices[key]), 2),
                "errors": sum(s["errors"] for s in slices[key]),
                "first_error": next((s["first_error"] for s in slices[key] if s["errors"]), ""),
            }

        out["by_concurrency"][concurrency] = {
            "table": table,
            "cpu_ratios": {
                name: cpu_ratio(slices, a, b)
                for name, (a, b) in {
                    "chainop_stream_vs_raw_stream": ("chainop-stream", "raw-stream"),
                    "chainop_whole_vs_raw_whole": ("chainop-whole", "raw-whole"),
                    "chainop_stream_vs_chainop_whole": ("chainop-stream", "chainop-whole"),
                    "raw_stream_vs_raw_whole": ("raw-stream", "raw-whole"),
                }.items()
            },
        }
    return out


def cpu_ratio(slices: dict[str, list[dict[str, Any]]], a: str, b: str) -> float | None:
    """Median over the slices of ``a``'s CPU per request / ``b``'s in the slice next to it."""
    if a not in slices or b not in slices:
        return None
    pairs = zip(slices[a], slices[b], strict=True)
    return round(
        float(
            statistics.median(x["cpu_us_per_request"] / y["cpu_us_per_request"] for x, y in pairs)
        ),
        2,
    )


def summarise_stall(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and max of the times to abandon and to answer, and who answered."""
    abandon = sorted(r["abandon_ms"] for r in runs)
    answer = sorted(r["answer_ms"] for r in runs)
    return {
        "tasks": len(runs),
        "answered_by_secondary": sum(r["answered_by"] == "secondary" for r in runs),
        "abandon_ms_p50": round(statistics.median(abandon)),
        "abandon_ms_max": round(abandon[-1]),
        "answer_ms_p50": round(statistics.median(answer)),
        "answer_ms_max": round(answer[-1]),
        "first_outcomes": sorted({r["first_outcome"] for r in runs}),
        "first_error": runs[0]["first_error"] if runs else "",
    }


def run(args: Any) -> dict[str, Any]:
    """The whole section: the overhead slices, then the stalled provider both ways."""
    out: dict[str, Any] = {
        "settings": {
            "words": args.st_words,
            "slices": args.st_slices,
            "slice_seconds": args.st_slice_seconds,
            "concurrency": [1, 16],
            "timeout_s": args.st_timeout,
            "first_token_timeout_s": args.st_first_token,
            "stall_tasks": args.st_tasks,
        }
    }
    keys = list(CONTENDERS)
    with backend.Backend("bench") as server:
        log("streaming: overhead slices (4 clients, c=1 and c=16)")
        raw = run_worker(
            {
                "job": "overhead",
                "contenders": keys,
                "url": server.api,
                "words": args.st_words,
                "concurrency": [1, 16],
                "slices": args.st_slices,
                "slice_seconds": args.st_slice_seconds,
            }
        )
    out["overhead"] = summarise_overhead(raw, keys)
    out["overhead"]["chunks_per_answer"] = raw.get("chunks_per_answer")
    out["overhead"]["answer_chars"] = raw.get("answer_chars")
    out["overhead"]["chainop_first_token_ms_p50"] = raw.get("chainop_first_token_ms_p50")
    out["stall"] = {}
    for streamed in (True, False):
        variant = "streamed" if streamed else "not_streamed"
        # Fresh backends per variant: a stalled handler only ends with its server.
        with backend.Backend("stalled") as stalled, backend.Backend("healthy") as healthy:
            stalled.control.set(mode="stall_first_token")
            log(f"streaming: {args.st_tasks} executions on a stalled provider, {variant}")
            result = run_worker(
                {
                    "job": "stall",
                    "stalled": stalled.api,
                    "healthy": healthy.api,
                    "stream": streamed,
                    "timeout": args.st_timeout,
                    "first_token": args.st_first_token,
                    "tasks": args.st_tasks,
                }
            )
            calls = stalled.control.stats()["requests"].get("openai", 0)
        summary = summarise_stall(result["runs"])
        summary["calls_to_stalled"] = calls
        out["stall"][variant] = summary
    return out


def add_arguments(parser: Any) -> None:
    """The section's knobs (``--st-*``)."""
    g = parser.add_argument_group("streaming (python -m bench streaming)")
    g.add_argument("--st-words", type=int, default=100, help="words (chunks) of the answer")
    g.add_argument("--st-slices", type=int, default=8, help="slices per client and concurrency")
    g.add_argument("--st-slice-seconds", type=float, default=0.5, help="seconds per slice")
    g.add_argument("--st-timeout", type=float, default=5.0, help="provider timeoutSeconds")
    g.add_argument(
        "--st-first-token", type=float, default=1.0, help="firstTokenTimeoutSeconds (streamed)"
    )
    g.add_argument("--st-tasks", type=int, default=8, help="executions at once on the stall")


# --------------------------------------------------------------------------- markdown


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def render(section: dict[str, Any]) -> str:
    """Section 8 of docs/benchmarks.md from one run's figures."""
    s = section["settings"]
    over = section["overhead"]
    lines = [
        TITLE,
        "",
        f"Measured by `{section.get('command', 'python -m bench streaming')}` on "
        f"{section.get('machine', {}).get('date', '?')} in {section.get('elapsed_seconds', '?')}"
        f" s (load average {section.get('loadavg_at_start', '?')} at start). No control plane: "
        "this is the executor (`chainop.core.chain.execute` over `ProviderClients`), the part a "
        "streamed call changes. The fake backend runs in its own process pinned to the last CPU, "
        "the measuring process on the others.",
        "",
        "### 8.1 Executor overhead, streamed and not",
        "",
        f"The same answer, {over.get('answer_chars')} characters in "
        f"{over.get('chunks_per_answer')} word-sized `chat.completion.chunk` events (one per "
        "token, as a server streams), fetched four ways in one process, alternating "
        f"{s['slices']} slices of {s['slice_seconds']:g} s per client and concurrency; medians "
        "of the slices (*slices' req/s*: the lowest and highest slice, how much the shared "
        "machine moved them). *Tokens/s* = requests/s × the answer's chunks. The CPU ratios "
        "are medians of per-slice ratios (slices seconds apart see the same interference), "
        "the figure to compare clients by; requests/s depend on what else the two cores run.",
        "",
        "| client | c | req/s | slices' req/s | tokens/s | p50 ms | CPU µs/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for concurrency, part in over["by_concurrency"].items():
        for key in CONTENDERS:
            row = part["table"].get(key)
            if row is None:
                continue
            low, high = row.get("rps_range") or (row["rps"], row["rps"])
            lines.append(
                f"| {LABELS[key]} | {concurrency} | {_num(row['rps'])} | "
                f"{low:,.0f}–{high:,.0f} | {row['tokens_per_s']:,} | {row['p50_ms']:.2f} | "
                f"{row['cpu_us_per_request']:,} | {row['errors']} |"
            )
    lines.append("")
    for concurrency, part in over["by_concurrency"].items():
        r = part["cpu_ratios"]
        lines.append(
            f"- c={concurrency}, CPU per request: chainop streamed / raw streamed "
            f"{_x(r['chainop_stream_vs_raw_stream'])}; chainop whole / raw whole "
            f"{_x(r['chainop_whole_vs_raw_whole'])}; chainop streamed / chainop whole "
            f"{_x(r['chainop_stream_vs_chainop_whole'])}; raw streamed / raw whole "
            f"{_x(r['raw_stream_vs_raw_whole'])}."
        )
    first_token = over.get("chainop_first_token_ms_p50") or {}
    if first_token:
        shown = ", ".join(f"c={c}: {ms:g} ms" for c, ms in first_token.items())
        lines.append(
            f"- chainop's recorded time to first token (`firstTokenMs`), median of the "
            f"streamed executor's calls: {shown}."
        )
    stall = section["stall"]
    streamed, whole = stall["streamed"], stall["not_streamed"]
    lines += [
        "",
        "### 8.2 Time to abandon a provider stalled before its first token",
        "",
        f"{s['stall_tasks']} executions at once on a chain of a stalled provider (it sends "
        "`200` and its headers, then nothing: a hung engine behind a live API server; "
        "fake mode `stall_first_token`) and a healthy one, `transientRetries: 0`. Streamed: "
        f"`timeoutSeconds: {s['timeout_s']:g}`, `firstTokenTimeoutSeconds: "
        f"{s['first_token_timeout_s']:g}`; not streamed: the same `timeoutSeconds` (a whole "
        "reply cannot tell a slow answer from none). *Abandon* = the stalled attempt's own "
        "`latencyMs`; *answer* = the whole execution, the healthy provider's answer included.",
        "",
        "| call | abandoned p50 ms | max ms | first attempt | answered p50 ms | max ms | "
        "answered by the next |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for label, row in (("streamed", streamed), ("not streamed", whole)):
        lines.append(
            f"| {label} | {row['abandon_ms_p50']:,} | {row['abandon_ms_max']:,} | "
            f"{', '.join(row['first_outcomes'])} | {row['answer_ms_p50']:,} | "
            f"{row['answer_ms_max']:,} | {row['answered_by_secondary']}/{row['tasks']} |"
        )
    bound = (s["first_token_timeout_s"] + 1) * 1000
    met = "met" if streamed["abandon_ms_max"] <= bound else "**missed**"
    ratio = (
        whole["abandon_ms_p50"] / streamed["abandon_ms_p50"] if streamed["abandon_ms_p50"] else 0
    )
    lines += [
        "",
        f"- Streamed, the stalled provider is left {ratio:.1f}× sooner than by the non-streamed "
        f"call with the same timeout (p50 {streamed['abandon_ms_p50']:,} ms vs "
        f"{whole['abandon_ms_p50']:,} ms); every abandon within `firstTokenTimeoutSeconds` + 1 s "
        f"({bound:,.0f} ms): {met} (max {streamed['abandon_ms_max']:,} ms). The first attempt's "
        f"error, streamed: “{streamed['first_error']}”; not streamed: “{whole['first_error']}”.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """``worker JOB_JSON``: one measurement, its JSON on the last line of stdout."""
    if argv[:1] != ["worker"]:
        raise SystemExit("usage: python -m bench.streaming worker JOB")
    job = json.loads(argv[1])
    backend.pin(os.getpid(), backend.load_cpus())
    result = asyncio.run(JOBS[job["job"]](job))
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
