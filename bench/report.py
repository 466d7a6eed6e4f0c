"""Markdown tables, ratios against the baselines of the same run, and docs/benchmarks.md."""

# ruff: noqa: RUF001 - the markdown tables use the multiplication sign and en dash on purpose

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = ROOT / "bench" / "results" / "latest.json"
DOC = ROOT / "docs" / "benchmarks.md"

#: Where the time goes, written from the profiles in bench/results (re-read them after a
#: change to the hot path; the breakdown tables below it are regenerated every run).
PROFILE_PARAGRAPH = """\
At c=16 about 93 % of the executor's wall time is inside `Wire.request`, i.e. the HTTP \
stack, and most of that is not the network work: httpx's client layers (`build_request`, \
the `Headers` model re-decoding headers on every lookup, cookie extraction on every \
response, the auth and redirect wrappers) take as much self time as aiohttp, which does \
the actual socket and HTTP parsing. The same machine serves a request for ~100 µs of CPU \
through aiohttp's own `ClientSession` and ~270 µs through the httpx API over the very same \
aiohttp transport, so about two thirds of a call's CPU is httpx's API layer (and plain \
httpx's own transport costs 3-5x more again under concurrency, which is why chainop uses \
the aiohttp transport). chainop's own code is about a tenth of the samples: the adapter \
and `Wire` ~6 % (body built from the RequestSpec, the reply streamed under the size cap, \
JSON parsed and checked for a whole answer) and the executor ~3.5 % (its body costs ~9 µs \
per request in isolation). asyncio takes ~9 %, mostly task switching and the one timer per \
request that gives `Wire` its bounded-time guarantee. Two fixes came out of this profile: \
`Wire` now parses each URL string once (httpx parsed it twice per request, ~20 µs, ~6 % of \
a call) and the executor no longer rebuilds a healthy provider's 15-field health record on \
every success nor enters an `asyncio.timeout(None)` (17 -> 9 µs). The largest remaining \
item that is chainop's to decide is httpx's per-response cookie extraction (~18 µs, ~6 %), \
which chainop has no use for; beyond that, only leaving the httpx API for aiohttp's would \
cut the per-call cost substantially.
"""

#: What the failover figures do not say by themselves.
FAILOVER_NOTES = """\
*Reading "calls to the broken primary".* The first wave is the requests already in flight \
when the primary failed (up to 16 at c=16); they fail without escalating the cooldown \
(one benching, not sixteen). After each cooldown (5 s, doubling while it keeps failing, \
capped at 300 s) exactly one half-open trial request goes to the primary while the other \
workers keep skipping it, so a broken primary costs about one call per cooldown, and \
none while it is benched. LiteLLM tuned retries every 5 s with every worker.
"""


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("httpx", "httpx-aiohttp", "aiohttp", "pydantic", "litellm", "pyinstrument"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "loadavg_at_start": [round(x, 2) for x in load],
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def load_results() -> dict[str, Any]:
    """The last saved results (sections a partial run did not measure are kept)."""
    try:
        data: dict[str, Any] = json.loads(RESULTS_JSON.read_text())
        return data
    except (OSError, ValueError):
        return {}


def save(data: dict[str, Any], markdown: str) -> None:
    """Write bench/results/latest.json and docs/benchmarks.md."""
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(data, indent=1) + "\n")
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(markdown)


# --------------------------------------------------------------------------- profile


BUCKETS = (
    ("chainop/core/", "chainop.core (executor, health rules)"),
    ("chainop/providers/", "chainop.providers (adapter, Wire)"),
    ("pydantic", "pydantic"),
    ("httpx_aiohttp", "httpx-aiohttp transport"),
    ("/httpx/", "httpx (client, request/response models)"),
    ("/aiohttp/", "aiohttp (connector, parser, streams)"),
    ("/multidict/", "aiohttp (connector, parser, streams)"),
    ("/yarl/", "yarl (URLs)"),
    ("selectors.py", "event loop waiting (epoll: idle)"),
    ("/asyncio/", "asyncio (event loop, tasks, timeouts)"),
    ("/json/", "json"),
    ("/bench/", "load generator"),
)


def _bucket(path: str) -> str:
    for needle, name in BUCKETS:
        if needle in path:
            return name
    return "C built-ins (socket send/recv, encode/decode...) and other stdlib"


def _top(counts: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(counts.items(), key=lambda item: -item[1])


def profile_breakdown(session_path: Path) -> dict[str, Any]:
    """Self time by package and the hottest functions of a pyinstrument session."""
    try:
        from pyinstrument.session import Session
    except ImportError:
        return {}
    if not session_path.exists():
        return {}
    session = Session.load(str(session_path))
    by_bucket: dict[str, float] = {}
    by_function: dict[str, float] = {}
    total = 0.0
    for stack, seconds in session.frame_records:
        leaf = stack[-1].split("\x01", 1)[0]
        function, _, rest = leaf.partition("\x00")
        path, _, line = rest.partition("\x00")
        bucket = _bucket(path)
        by_bucket[bucket] = by_bucket.get(bucket, 0.0) + seconds
        short = path.split("site-packages/")[-1].split("/operator/")[-1]
        name = f"{function} ({short}:{line})"
        by_function[name] = by_function.get(name, 0.0) + seconds
        total += seconds
    if total <= 0:
        return {}
    return {
        "seconds": round(total, 3),
        "buckets": [(name, round(100 * t / total, 1)) for name, t in _top(by_bucket)],
        "functions": [(name, round(100 * t / total, 1)) for name, t in _top(by_function)[:12]],
    }


# --------------------------------------------------------------------------- rendering


def _f(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "n/a"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def paired_ratio(
    paired: dict[str, Any], a: str, b: str, concurrency: int
) -> tuple[float, float, float]:
    """Median, low and high quartile of the per-slice CPU ratios ``a / b``."""
    slices = paired.get(str(concurrency), {})
    ratios = sorted(x / y for x, y in zip(slices.get(a, []), slices.get(b, []), strict=False) if y)
    if not ratios:
        return (0.0, 0.0, 0.0)
    quarter = len(ratios) // 4
    return (_median(ratios), ratios[quarter], ratios[-1 - quarter])


def render_overhead(overhead: dict[str, Any]) -> list[str]:
    """Table and ratios of the routing-overhead runs."""
    runs: dict[str, Any] = overhead.get("runs", {})
    paired: dict[str, Any] = overhead.get("paired", {})
    out = [
        "## 1. Routing overhead (healthy backend)",
        "",
        "Closed loop, each client in its own process (pinned away from the backend's CPU), "
        "best of the rounds. CPU = the load process's CPU time per request (user+system, "
        "all threads).",
        "",
        "| client | c=1 req/s | p50 ms | p99 ms | CPU µs/req | c=16 req/s | p50 ms | p99 ms "
        "| CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in runs.values():
        cells = [entry["name"]]
        for r in entry["results"]:
            cells += [
                _f(r["rps"]),
                _f(r["p50_ms"], 2),
                _f(r["p99_ms"], 2),
                _f(r["cpu_us_per_request"]),
            ]
        out.append("| " + " | ".join(cells) + " |")

    def metric(key: str, index: int, field: str) -> float:
        entry = runs.get(key)
        return float(entry["results"][index][field]) if entry else 0.0

    out += [
        "",
        "**CPU per request, side by side.** The ratios that carry the ≤ 1.1× target are "
        "measured in one process: the clients take turns "
        "in short slices at the same concurrency, and each cell is the median of the "
        "per-slice ratios [quartiles]; the ratio of the separate runs above is in "
        "parentheses.",
        "",
        "| CPU per request | c=1 | c=16 | target |",
        "|---|---:|---:|---|",
    ]
    for label, a, b, target in (
        (
            "chainop executor (1-provider chain) ÷ raw httpx, aiohttp transport",
            "chainop-1-aiohttp",
            "raw-httpx-aiohttp",
            1.1,
        ),
        (
            "chainop executor (2-provider chain) ÷ raw httpx, aiohttp transport",
            "chainop-2-aiohttp",
            "raw-httpx-aiohttp",
            1.1,
        ),
        (
            "ProviderClients alone (adapter + Wire) ÷ raw httpx, aiohttp transport",
            "providerclients-aiohttp",
            "raw-httpx-aiohttp",
            None,
        ),
        (
            "executor ÷ ProviderClients alone (the executor's own share)",
            "chainop-1-aiohttp",
            "providerclients-aiohttp",
            None,
        ),
    ):
        cells = []
        medians = []
        for index, concurrency in enumerate((1, 16)):
            median, low, high = paired_ratio(paired, a, b, concurrency)
            medians.append(median)
            separate = _ratio(
                metric(a, index, "cpu_us_per_request"), metric(b, index, "cpu_us_per_request")
            )
            cells.append(f"{median:.2f}× [{low:.2f}–{high:.2f}] ({separate})")
        goal = ""
        if target is not None:
            goal = f"≤ {target:g}×: {_verdict(all(0 < m <= target for m in medians))}"
        out.append(f"| {label} | {cells[0]} | {cells[1]} | {goal} |")

    rows = []
    for label, a, b, field, target in (
        (
            "chainop executor req/s ÷ LiteLLM Router req/s",
            "chainop-1-aiohttp",
            "litellm",
            "rps",
            3.0,
        ),
        (
            "chainop executor CPU/req ÷ LiteLLM Router CPU/req",
            "chainop-1-aiohttp",
            "litellm",
            "cpu_us_per_request",
            None,
        ),
        (
            "raw httpx req/s: aiohttp transport ÷ httpx transport",
            "raw-httpx-aiohttp",
            "raw-httpx",
            "rps",
            None,
        ),
        (
            "chainop executor req/s: aiohttp transport ÷ httpx transport",
            "chainop-1-aiohttp",
            "chainop-1-httpx",
            "rps",
            None,
        ),
        (
            "chainop executor CPU/req, httpx transport ÷ raw httpx, httpx transport",
            "chainop-1-httpx",
            "raw-httpx",
            "cpu_us_per_request",
            None,
        ),
        (
            "chainop executor req/s ÷ raw aiohttp (no httpx: this machine's ceiling)",
            "chainop-1-aiohttp",
            "raw-aiohttp",
            "rps",
            None,
        ),
    ):
        c1 = _ratio(metric(a, 0, field), metric(b, 0, field))
        c16 = _ratio(metric(a, 1, field), metric(b, 1, field))
        goal = ""
        if target is not None:
            ok = metric(a, 1, field) >= target * metric(b, 1, field)
            goal = f"≥ {target:g}× at c=16: {_verdict(ok)}"
        rows.append(f"| {label} | {c1} | {c16} | {goal} |")
    out += ["", "| separate runs | c=1 | c=16 | target |", "|---|---:|---:|---|", *rows, ""]
    rounds = [
        f"{e['name']}: c=16 req/s {e['results'][1].get('rounds_rps')}, "
        f"CPU µs {e['results'][1].get('rounds_cpu')}"
        for e in runs.values()
    ]
    out += ["<details><summary>every round (c=16)</summary>", ""]
    out += [f"- {line}" for line in rounds] + ["", "</details>", ""]
    return out


SCENARIO_NAMES = {
    "http-500": "HTTP 500",
    "refused": "connection refused (closed port)",
    "hang": "hang until the 1 s timeout",
}


def render_failover(failover: list[dict[str, Any]], seconds: float) -> list[str]:
    """Table and ratios of the broken-primary runs."""
    out = [
        "## 2. Failover under a broken primary",
        "",
        f"Chain primary → secondary (healthy), 1 s per-request timeout, c=16 for {seconds:g} s "
        "from a fresh start (new health board / new Router). *First failing request*: one "
        "request right after the primary broke, minus the median latency of the healthy "
        "secondary alone through the same client. *Calls to the broken primary*: requests "
        "the primary's server received (connection attempts to the closed port for "
        "*refused*).",
        "",
        "| primary | client | req/s | p50 ms | p99 ms | failed | first failing request: "
        "latency (added) | calls to broken primary: first request / steady state |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    by: dict[tuple[str, str], dict[str, Any]] = {}
    for run in failover:
        by[(run["scenario"], run["key"])] = run
        s = run["steady"]
        out.append(
            f"| {SCENARIO_NAMES.get(run['scenario'], run['scenario'])} | {run['name']} | "
            f"{_f(s['rps'])} | {_f(s['p50_ms'], 1)} | {_f(s['p99_ms'], 1)} | {s['errors']} | "
            f"{_f(run['first_ms'], 1)} ms (+{_f(run['first_added_ms'], 1)}) | "
            f"{run['first_calls_to_primary']} / {run['steady_calls_to_primary']} |"
        )
    out += [
        "",
        "| primary | chainop ÷ LiteLLM defaults (target ≥ 30×) | chainop ÷ LiteLLM tuned "
        "(target ≥ 1.5×) | chainop calls started while the primary was benched (target 0) |",
        "|---|---:|---:|---:|",
    ]
    for scenario in SCENARIO_NAMES:
        chainop = by.get((scenario, "chainop"))
        default = by.get((scenario, "litellm-default"))
        tuned = by.get((scenario, "litellm-tuned"))
        if not (chainop and default and tuned):
            continue
        rps = chainop["steady"]["rps"]
        d = default["steady"]["rps"]
        t = tuned["steady"]["rps"]
        benched = sum(chainop["counters"].get("calls_while_benched", {}).values())
        out.append(
            f"| {SCENARIO_NAMES[scenario]} | {_ratio(rps, d)}: {_verdict(rps >= 30 * d)} | "
            f"{_ratio(rps, t)}: {_verdict(rps >= 1.5 * t)} | {benched}: {_verdict(benched == 0)} |"
        )
    out += ["", FAILOVER_NOTES.strip()]
    errors = [
        f"{r['name']} ({r['scenario']}): {r['steady']['first_error'] or r['first_error']}"
        for r in failover
        if r["steady"]["errors"] or r["first_error"]
    ]
    if errors:
        out += ["", "First error of each run that had failures:", ""]
        out += [f"- {line}" for line in errors]
    out.append("")
    return out


def render_profile(profile: dict[str, Any]) -> list[str]:
    """The paragraph and the breakdown of the profiles."""
    out = ["## 3. Where the time goes (profile of the hottest path)", ""]
    files = ", ".join(f"`{name}`" for name in profile.get("files", []))
    out += [
        "pyinstrument (0.5 ms sampling, wall clock) over the c=16 closed loop of the "
        f"executor and of the raw client it is built on: {files}.",
        "",
        PROFILE_PARAGRAPH.strip(),
        "",
    ]
    chainop = profile.get("chainop") or {}
    raw = profile.get("raw") or {}
    if chainop:
        raw_buckets = dict(raw.get("buckets", []))
        out += [
            "| self time by package | chainop executor | raw httpx (aiohttp transport) |",
            "|---|---:|---:|",
        ]
        names = [name for name, _ in chainop["buckets"]]
        names += [name for name in raw_buckets if name not in names]
        chainop_buckets = dict(chainop["buckets"])
        for name in names:
            out.append(
                f"| {name} | {chainop_buckets.get(name, 0.0)} % | {raw_buckets.get(name, 0.0)} % |"
            )
        out += ["", "Hottest functions of the executor run (self time):", ""]
        out += [f"- {pct} % {name}" for name, pct in chainop["functions"]]
        out.append("")
    return out


def render(data: dict[str, Any], *, command: str) -> str:
    """The whole of docs/benchmarks.md."""
    m = data.get("machine", {})
    args = data.get("args", {})
    lines = [
        "# Benchmarks",
        "",
        "chainop side by side with what users would pick instead (issue 7), measured in one "
        "run on one machine against chainop's fake backend (`chainop.testing.fake_backend`, "
        "a real aiohttp server in its own process). Regenerated by `make bench` / "
        "`python -m bench`; tests never assert times. Sections 5 and 6 measure the operator "
        "itself: how fast each kind of backend failure is acted on (issue 11) and chainop on "
        "a real node (issue 13).",
        "",
        f"- Command: `{command}` (this file and `bench/results/latest.json` keep the latest run)",
        f"- Date: {m.get('date', '?')}; run took {data.get('elapsed_seconds', '?')} s",
        f"- Machine: {m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs, Python {m.get('python')}, "
        f"{m.get('platform', '')}; load average at start {m.get('loadavg_at_start')}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
        *[
            f"- Section {name} measured by `{info['command']}` on {info['date']}"
            for name, info in data.get("sections", {}).items()
            if info.get("command") != command
        ],
        "- Layout: fake backend(s) pinned to the last CPU, each measured client in a fresh "
        "process pinned to the others; LiteLLM with telemetry off and the local cost map. "
        "The machine is shared with other work, so absolute figures move between runs; "
        "the ratios compare runs made minutes apart in the same conditions.",
        "- Settings: "
        f"{args.get('rounds')} round(s) of {args.get('seconds')} s per client and "
        f"concurrency (after {args.get('warmup')} s warm-up), failover windows "
        f"{args.get('failover_seconds')} s, profile {args.get('profile_seconds')} s.",
        "",
    ]
    if "overhead" in data:
        lines += render_overhead(data["overhead"])
    if "failover" in data:
        lines += render_failover(data["failover"], float(args.get("failover_seconds") or 10))
    if "profile" in data:
        lines += render_profile(data["profile"])
    if "operator" in data:
        from bench import operator_report

        lines += operator_report.render_lines(data["operator"])
    if "health" in data or "node" in data:
        from bench import health_report

        if "health" in data:
            lines += health_report.render_health(data["health"])
        if "node" in data:
            lines += health_report.render_node(data["node"])
    return "\n".join(lines).rstrip() + "\n"
