"""Markdown for issue 14's section of docs/benchmarks.md (``python -m bench local-first``).

Only what one run measured is shown, and every ratio is against the same run's
baseline: the machine is shared, so absolute figures move between runs while ratios of
contenders measured minutes apart in the same conditions hold. A target that was missed
says **missed**; nothing is rounded toward a target.
"""

# ruff: noqa: RUF001 - the markdown tables use the multiplication sign and en dash on purpose

from __future__ import annotations

from typing import Any

TITLE = "## 7. Local-first under load: spillover on queue depth, hedged calls (issue 14)"
LABELS = {
    "chainop-today": "(a) chainop as today (no `loadSignal`)",
    "chainop-loadsignal": "(b) chainop with `loadSignal`",
    "chainop-loadsignal-slots": "(b′) chainop with `loadSignal` and its `slots` declared",
    "litellm-least-busy": '(c) LiteLLM Router, `routing_strategy="least-busy"`',
    "litellm-latency-based-routing": '(c) LiteLLM Router, `"latency-based-routing"`',
}


def _hedge_label(run: dict[str, Any]) -> str:
    """How a hedging run was configured, as the DelegatedTask says it."""
    hedge = run.get("hedge")
    if not hedge:
        return "no hedge"
    fields = ", ".join(f"{k}: {v:g}" for k, v in hedge.items())
    return f"`spec.hedge: {{{fields}}}`"


def _s(ms: float) -> str:
    """Milliseconds as seconds with two decimals (queues are seconds long)."""
    return f"{ms / 1000:.2f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "–"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render_spillover(part: dict[str, Any]) -> list[str]:
    """Section 7.1: who answered, how fast, in one run."""
    s = part["settings"]
    signal = s["load_signal"]
    limits = ", ".join(f"{k}: {'null' if v is None else v}" for k, v in signal.items())
    lines = [
        "### 7.1 A saturated local server and a permitted cloud",
        "",
        f"{s['tasks']} tasks arriving at {s['rate_per_s']:g}/s (open loop: every arrival is "
        f"sent on time, whatever is still in flight) at a *local* backend that serves "
        f"{s['local_slots']} requests at a time in {s['local_service_ms']:g} ms each, the "
        f"rest waiting FIFO (capacity {s['local_capacity_per_s']:g}/s, so arrivals exceed "
        f"it {s['rate_per_s'] / s['local_capacity_per_s']:.1f}×), and a *cloud* backend with "
        f"no queue that answers in {s['cloud_ms']:g} ms. The queue and `/metrics` "
        f"(vLLM's gauges) come from the {part.get('queue_model', 'fake backend')}'s queue "
        "model. chainop's chain is local (Sovereign) → cloud (Standard), tasks with "
        f"`allowDelegation: true`; (b) adds `loadSignal: {{{limits}}}` to the local provider "
        f"and probes every {s['probe_interval_s']:g} s (`spec.health.probe.intervalSeconds`: "
        "the load signal is read with the probe, so this is how old a reading can be; "
        "between two readings chainop adds its own calls since to the queue it read); "
        f"(b′) also declares `slots: {s['local_slots']}` (the server's `--max-num-seqs`) "
        "instead of leaving chainop to learn it from a reading that shows a queue. "
        "LiteLLM's Router gets the same two backends as one model group. chainop's time is "
        "create → the watch event showing Succeeded (so it includes the API server and the "
        "operator's status write); LiteLLM's is its `acompletion` call in process. "
        f"{s['warmup']} untimed tasks first in each case.",
        "",
        "| round | contender | done | p50 s | p90 s | p99 s | max s | stayed local | p99 vs (a) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rounds = _rounds(part["runs"])
    for number, runs in rounds.items():
        today = runs.get("chainop-today", {})
        for key, run in runs.items():
            lines.append(
                f"| {number} | {LABELS.get(key, key)} | {run['succeeded']}/{run['tasks']} "
                f"| {_s(run['p50_ms'])} | {_s(run['p90_ms'])} | {_s(run['p99_ms'])} "
                f"| {_s(run['max_ms'])} | {run['local_share']:.0%} "
                f"| {_ratio(run['p99_ms'], today.get('p99_ms', 0))} |"
            )
    lines.append("")
    lines += _spillover_verdicts(rounds)
    lines += _breakdown(rounds)
    lines += _light(part)
    return lines


def _light(part: dict[str, Any]) -> list[str]:
    """The load-aware contenders below the local capacity: who keeps the work local."""
    s, runs = part["settings"], part.get("light") or []
    if not runs:
        return []
    lines = [
        f"The same backends at a light load: {s['light_tasks']} tasks at "
        f"{s['light_rate_per_s']:g}/s, below the local capacity of "
        f"{s['local_capacity_per_s']:g}/s, so the local server can serve every task.",
        "",
        "| contender | done | p50 s | p99 s | stayed local | answered by cloud |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {LABELS.get(run['key'], run['key'])} | {run['succeeded']}/{run['tasks']} "
            f"| {_s(run['p50_ms'])} | {_s(run['p99_ms'])} | {run['local_share']:.0%} "
            f"| {(run.get('answered_by') or {}).get('cloud', 0)} |"
        )
    lines.append("")
    return lines


def _rounds(runs: list[dict[str, Any]]) -> dict[int, dict[str, dict[str, Any]]]:
    """Runs grouped by round, each round's contenders in the table's order."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(int(run.get("round", 1)), {})[run["key"]] = run
    return {
        number: {k: by_key[k] for k in [*LABELS, *by_key] if k in by_key}
        for number, by_key in sorted(out.items())
    }


def _spillover_verdicts(rounds: dict[int, dict[str, dict[str, Any]]]) -> list[str]:
    """The issue's two spillover targets, judged round by round for each (b)."""
    out = []
    tally: dict[str, list[int]] = {}
    for number, runs in rounds.items():
        today = runs.get("chainop-today")
        litellm = [r for k, r in runs.items() if k.startswith("litellm-") and r.get("succeeded")]
        best = min(litellm, key=lambda r: r["p99_ms"]) if litellm else None
        for key in ("chainop-loadsignal", "chainop-loadsignal-slots"):
            spill = runs.get(key)
            if spill is None:
                continue
            name = LABELS[key].split(" ", 1)[0]
            counts = tally.setdefault(name, [0, 0, 0])
            if spill.get("load_signal_read") is False:
                out.append(
                    f"Round {number}, {name}: the operator never showed a load reading in the "
                    "chain's status: these figures are those of a chain without one."
                )
            parts = [f"Round {number}, {name}:"]
            if today:
                counts[0] += 1
                half = spill["p99_ms"] <= today["p99_ms"] / 2
                counts[1] += half
                parts.append(
                    f"p99 {_s(spill['p99_ms'])} s vs chainop today {_s(today['p99_ms'])} s = "
                    f"{_ratio(spill['p99_ms'], today['p99_ms'])} (target ≤ ½: {_verdict(half)});"
                )
            if best:
                below = spill["p99_ms"] < best["p99_ms"]
                counts[2] += below
                call = (spill.get("call") or {}).get("p99_ms")
                parts.append(
                    f"vs LiteLLM's best, {LABELS.get(best['key'], best['key'])} at "
                    f"{_s(best['p99_ms'])} s ({best['local_share']:.0%} local): "
                    f"{_ratio(spill['p99_ms'], best['p99_ms'])} "
                    f"(target below: {_verdict(below)}"
                    + (
                        f"; chainop's call alone, first attempt → answer, the part LiteLLM's "
                        f"in-process time covers: p99 {_s(call)} s);"
                        if call is not None
                        else ");"
                    )
                )
            parts.append(
                f"{spill.get('saturated_skips', 0)} tasks skipped the saturated local server "
                f"(attempt Skipped, `saturated: …`), {spill['local_share']:.0%} stayed local."
            )
            out.append(" ".join(parts))
    for name, (judged, half_met, below_met) in tally.items():
        out.append(
            f"{name} over {judged} round(s): p99 ≤ ½ of chainop today in {half_met}, below "
            f"LiteLLM's best in {below_met}."
        )
    return [*(f"- {line}" for line in out), ""] if out else []


def _breakdown(rounds: dict[int, dict[str, dict[str, Any]]]) -> list[str]:
    """Where chainop's time went, and each contender's latency per backend that answered."""
    lines = [
        "Where the time went, p50 / p99 in s. chainop: *pickup* = our create → the task's "
        "`status.startTime` (API server, watch, the operator's queue), *call* = "
        "`result.latencyMs` (first attempt → answer, the local queue included), *after* = "
        "the rest (status write, our watch). Per backend: create → Succeeded (chainop) or "
        "the `acompletion` call (LiteLLM) of the tasks that backend answered.",
        "",
        "| round | contender | pickup | call | after | answered by local | answered by cloud |",
        "|---:|---|---|---|---|---|---|",
    ]

    def pair(figures: dict[str, Any] | None) -> str:
        if not figures:
            return "–"
        return f"{_s(figures['p50_ms'])} / {_s(figures['p99_ms'])}"

    for number, runs in rounds.items():
        for key, run in runs.items():
            by = run.get("by_provider") or {}
            local = by.get("vllm")
            cloud = by.get("cloud")
            counts = run.get("answered_by") or {}
            lines.append(
                f"| {number} | {LABELS.get(key, key)} | {pair(run.get('pickup'))} "
                f"| {pair(run.get('call'))} | {pair(run.get('after_call'))} "
                f"| {pair(local)} ({counts.get('vllm', 0)}) "
                f"| {pair(cloud)} ({counts.get('cloud', 0)}) |"
            )
    lines += [
        "",
        "Share of each second's arrivals that the local backend answered (second 1, 2, …): "
        "whether a router swings between all-local and all-cloud (acting on stale load) or "
        "mixes the two at the rate the local server can take.",
        "",
    ]
    for number, runs in rounds.items():
        for key, run in runs.items():
            shares = run.get("local_share_by_second") or []
            if shares:
                cells = " ".join(f"{x:.0%}" for x in shares)
                lines.append(f"- round {number}, {LABELS.get(key, key)}: {cells}")
    lines.append("")
    return lines


def render_hedging(part: dict[str, Any]) -> list[str]:
    """Section 7.2: a heavy tail, without and with spec.hedge."""
    s = part["settings"]
    lines = [
        "### 7.2 A heavy-tailed backend, without and with hedging",
        "",
        f"{s['tasks']} tasks at {s['rate_per_s']:g}/s on a chain of two Sovereign replicas, "
        f"each answering in {s['base_ms']:g} ms but {s['tail_share']:.0%} of its calls "
        f"(drawn at random, independently per replica) {s['tail_factor']:g}× slower; no "
        "queue. Without a hedge every task goes to the first replica; with one, an extra "
        "attempt starts on the second after the delay and the first complete answer wins "
        "(the loser's attempt `Cancelled`). *Extra calls*: the two backends' own counts of "
        f"calls received minus the tasks. {s['warmup']} untimed tasks first (so the "
        "percentile form has the 20 observed latencies it needs).",
        "",
        "| variant | done | p50 s | p90 s | p99 s | max s | hedged attempts | extra calls "
        "| p99 cut |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = {run["variant"]: run for run in part["runs"]}
    base = runs.get("no-hedge", {})
    for run in runs.values():
        lines.append(
            f"| {_hedge_label(run)} | {run['succeeded']}/{run['tasks']} | {_s(run['p50_ms'])} "
            f"| {_s(run['p90_ms'])} | {_s(run['p99_ms'])} | {_s(run['max_ms'])} "
            f"| {run.get('hedged_attempts', 0)} | {run['extra_calls']} "
            f"({run['extra_call_share']:.1%}) "
            f"| {_ratio(base.get('p99_ms', 0), run['p99_ms']) if run is not base else '–'} |"
        )
    lines.append("")
    for key, run in runs.items():
        if key == "no-hedge" or not base:
            continue
        cut = base["p99_ms"] / run["p99_ms"] if run["p99_ms"] else 0.0
        ok = cut >= 2 and run["extra_call_share"] <= 0.10
        lines.append(
            f"- Target hedging cuts p99 ≥ 2× for ≤ 10 % extra calls ({_hedge_label(run)}): "
            f"p99 {cut:.2f}× lower for {run['extra_call_share']:.1%} extra calls: "
            f"{_verdict(ok)}."
        )
        q = (run.get("hedge") or {}).get("afterPercentile")
        if q is not None and s["tail_share"] >= 1 - q / 100 - 1e-9:
            lines.append(
                f"  With {s['tail_share']:.0%} of the calls slow, the first replica's p{q:g} "
                "lies on the slow calls themselves (or at their edge), so the hedge waits "
                "about as long as the slow call it should rescue."
            )
        if not run.get("hedged_attempts"):
            lines.append(
                "  No attempt was marked `hedged` in the tasks' status: the operator did "
                "not hedge in this run."
            )
    lines.append("")
    return lines


def render_lines(section: dict[str, Any]) -> list[str]:
    """The whole section 7, from ``latest.json``'s ``local_first``."""
    lines = [
        TITLE,
        "",
        f"Measured by `{section.get('command', 'python -m bench local-first')}` on "
        f"{section.get('machine', {}).get('date', '?')} in "
        f"{section.get('elapsed_seconds', '?')} s (load average "
        f"{section.get('loadavg_at_start')} at start, {section.get('loadavg_at_end')} at "
        f"end); the control plane was {section.get('control_plane', '?')}. Every contender "
        "of a table was measured in this one run, against the same backend processes "
        "(pinned to the last CPU).",
        "",
    ]
    if "spillover" in section:
        lines += render_spillover(section["spillover"])
    if "hedging" in section:
        lines += render_hedging(section["hedging"])
    return lines


def render(section: dict[str, Any]) -> str:
    """The section as one markdown string (what ``python -m bench local-first`` prints)."""
    return "\n".join(render_lines(section)).rstrip() + "\n"
