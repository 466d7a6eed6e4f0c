"""Orchestrate the benchmarks: backends up, one worker process per measurement, report.

``python -m bench [overhead|failover|profile|health|node|local-first|streaming|day2|client|all
...] [--quick]`` (``client`` = overhead + failover + profile; ``all`` = those + health +
node + local-first + streaming + day2; ``day2`` = bench.day2, issue 16's admission webhook
and plugin commands on the control plane;
``health`` = bench.health, issue 11's failure kinds on the control plane; ``node`` =
bench.node, issue 13 on the real node, skipped with the reason when none is up
(``CHAINOP_NODE_CLUSTER_DIR`` picks its cluster); ``operator`` = bench.operator;
``local-first`` = bench.local_first, issue 14's spillover and hedging side by side with
LiteLLM; ``streaming`` = bench.streaming, issue 15's streamed calls: executor overhead
streamed and not, and the time to abandon a provider stalled before its first token;
``render`` rewrites docs/benchmarks.md from bench/results/latest.json). Several
parts may be named in one run, e.g. ``python -m bench health node``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import local_first_report, operator_report, report
from bench.backend import Backend, free_port
from bench.contenders import OVERHEAD_CONTENDERS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROFILE_BASE = RESULTS / "profile-chainop-executor-c16"
PROFILE_RAW_BASE = RESULTS / "profile-raw-httpx-aiohttp-c16"
#: Measured side by side in one process for the CPU-per-request ratios.
PAIRED_CONTENDERS = (
    "raw-httpx-aiohttp",
    "providerclients-aiohttp",
    "chainop-1-aiohttp",
    "chainop-2-aiohttp",
)
FAILOVER_SCENARIOS = ("http-500", "refused", "hang")
FAILOVER_CONTENDERS = ("chainop", "litellm-default", "litellm-tuned")
#: Per-request timeout in the failover runs (what "hang until timeout" waits).
FAILOVER_TIMEOUT = 1.0
WORKER_TIMEOUT = 300


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a fresh ``python -m bench.worker`` process; return its JSON."""
    env = dict(os.environ)
    env.setdefault("LITELLM_TELEMETRY", "False")
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.worker", json.dumps(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker failed ({proc.returncode}) for {job.get('contender')}: {proc.stderr[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the markdown report."""
    print(message, file=sys.stderr, flush=True)


def best_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine rounds of one contender: best req/s and CPU, latencies of the best round.

    The machine is shared; interference only ever makes a client look slower, so the
    best round is the closest to what the client itself costs (as ``timeit`` does).
    """
    merged = dict(rounds[0])
    results = []
    for index, first in enumerate(rounds[0]["results"]):
        same = [r["results"][index] for r in rounds]
        fastest = max(same, key=lambda r: r["rps"])
        chosen = dict(fastest)
        chosen["cpu_us_per_request"] = min(r["cpu_us_per_request"] for r in same)
        chosen["rounds_rps"] = [round(r["rps"]) for r in same]
        chosen["rounds_cpu"] = [round(r["cpu_us_per_request"]) for r in same]
        assert chosen["concurrency"] == first["concurrency"]
        results.append(chosen)
    merged["results"] = results
    return merged


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Item 1: routing overhead at c=1 and c=16."""
    spare = free_port()  # the 2-provider chain's second provider: never called
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in OVERHEAD_CONTENDERS}
    with Backend("bench") as server:
        for round_number in range(args.rounds):
            order = list(OVERHEAD_CONTENDERS)
            if round_number % 2:
                order.reverse()
            for key in order:
                log(f"overhead round {round_number + 1}/{args.rounds}: {key}")
                runs[key].append(
                    run_worker(
                        {
                            "job": "overhead",
                            "contender": key,
                            "url": server.api,
                            "spare": f"http://127.0.0.1:{spare}/v1",
                            "concurrency": [1, 16],
                            "seconds": args.seconds,
                            "warmup": args.warmup,
                        }
                    )
                )
        log("overhead: paired CPU slices")
        pairs = run_worker(
            {
                "job": "paired",
                "contenders": list(PAIRED_CONTENDERS),
                "url": server.api,
                "spare": f"http://127.0.0.1:{spare}/v1",
                "concurrency": [1, 16],
                "slices": args.slices,
                "slice_seconds": args.slice_seconds,
            }
        )
    combined: dict[str, Any] = {key: best_of(rounds) for key, rounds in runs.items()}
    return {"runs": combined, "paired": pairs}


def failover(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Item 2: a broken primary (500, refused, hang) and a healthy secondary."""
    out = []
    with Backend("primary") as primary, Backend("secondary") as secondary:
        for scenario in FAILOVER_SCENARIOS:
            for key in FAILOVER_CONTENDERS:
                log(f"failover {scenario}: {key}")
                if scenario == "refused":
                    primary_url = f"http://127.0.0.1:{free_port()}/v1"
                    control = None
                else:
                    primary_url = primary.api
                    control = primary.url
                    primary.control.reset()
                    if scenario == "http-500":
                        primary.control.set(mode="error", status=500)
                    else:
                        primary.control.set(mode="hang")
                port = int(primary_url.split(":")[-1].split("/")[0])
                out.append(
                    run_worker(
                        {
                            "job": "failover",
                            "contender": key,
                            "scenario": scenario,
                            "primary": primary_url,
                            "primary_control": control,
                            "primary_port": port,
                            "secondary": secondary.api,
                            "timeout": FAILOVER_TIMEOUT,
                            "concurrency": 16,
                            "seconds": args.failover_seconds,
                        }
                    )
                )
            if scenario == "hang":
                # Hung handlers only end with the server: restart it for a clean slate.
                primary.stop()
                primary.start()
    return out


def profile(args: argparse.Namespace) -> dict[str, Any]:
    """Item 6: pyinstrument profiles of the executor and of the raw client, c=16."""
    with Backend("bench") as server:
        for key, base in (
            ("chainop-1-aiohttp", PROFILE_BASE),
            ("raw-httpx-aiohttp", PROFILE_RAW_BASE),
        ):
            log(f"profile: {key}")
            run_worker(
                {
                    "job": "overhead",
                    "contender": key,
                    "url": server.api,
                    "spare": server.api,
                    "concurrency": [16],
                    "seconds": 0.5,
                    "warmup": 0.2,
                    "profile": str(base),
                    "profile_seconds": args.profile_seconds,
                }
            )
    result = {
        "chainop": report.profile_breakdown(PROFILE_BASE.with_suffix(".pyisession")),
        "raw": report.profile_breakdown(PROFILE_RAW_BASE.with_suffix(".pyisession")),
        "files": [
            str(base.with_suffix(".txt").relative_to(ROOT))
            for base in (PROFILE_BASE, PROFILE_RAW_BASE)
        ],
    }
    for base in (PROFILE_BASE, PROFILE_RAW_BASE):
        # The raw sessions are ~10 MB each: summarised above, not kept.
        base.with_suffix(".pyisession").unlink(missing_ok=True)
        base.with_suffix(".html").unlink(missing_ok=True)
    return result


def health_part(args: argparse.Namespace) -> dict[str, Any]:
    """Issue 11: failure kind → Excluded → restart patch (bench/health.py)."""
    from bench import health as health_bench

    logs = Path(tempfile.mkdtemp(prefix="bench-health-"))
    log(f"health bench: logs in {logs}")
    return health_bench.run(args, logs)


def node_part(args: argparse.Namespace) -> dict[str, Any]:
    """Issue 13 on the real node (bench/node.py); ``{"skipped": why}`` without one."""
    from bench import node as node_bench

    return node_bench.run(args)


def local_first_part(args: argparse.Namespace) -> dict[str, Any]:
    """Issue 14: spillover on queue depth and hedged calls (bench/local_first.py)."""
    from bench import local_first

    return local_first.run(args)


def streaming_part(args: argparse.Namespace) -> dict[str, Any]:
    """Issue 15: streamed calls through the executor (bench/streaming.py)."""
    from bench import streaming

    return streaming.run(args)


def day2_part(args: argparse.Namespace) -> dict[str, Any]:
    """Issue 16: the admission webhook's cost per create, plugin commands (bench/day2.py)."""
    from bench import day2

    return day2.run(args)


def render_all(data: dict[str, Any], *, command: str) -> str:
    """docs/benchmarks.md: report.render's sections, then issue 14's, 15's and 16's when
    measured."""
    from bench import day2, streaming

    markdown = report.render(data, command=command)
    if "local_first" in data:
        markdown += "\n" + local_first_report.render(data["local_first"])
    if "streaming" in data:
        markdown += "\n" + streaming.render(data["streaming"])
    if "day2" in data:
        markdown += "\n" + day2.render(data["day2"])
    return markdown


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (``python -m bench``)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "what",
        nargs="*",
        default=["all"],
        choices=[
            *("all", "client", "overhead", "failover", "profile"),
            *("health", "node", "local-first", "streaming", "day2", "operator", "render"),
        ],
    )
    parser.add_argument("--rounds", type=int, default=3, help="overhead rounds (best is kept)")
    parser.add_argument("--seconds", type=float, default=2.0, help="overhead window per run")
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--slices", type=int, default=12, help="paired CPU slices per client")
    parser.add_argument("--slice-seconds", type=float, default=0.5)
    parser.add_argument("--failover-seconds", type=float, default=10.0)
    parser.add_argument("--profile-seconds", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="1 round, 5 s failover windows")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite the docs")
    from bench import day2, local_first, streaming
    from bench import health as health_bench
    from bench import node as node_bench

    health_bench.add_arguments(parser)
    node_bench.add_arguments(parser)
    local_first.add_arguments(parser)
    streaming.add_arguments(parser)
    day2.add_arguments(parser)
    parser.add_argument("--heal-tick", type=float, default=0.25, help="chainop --tick (health)")
    args, rest = parser.parse_known_args(argv)
    wanted = set(args.what)
    if "operator" in wanted:
        # Issue 7 items 3-5 against the real control plane: bench/operator.py.
        from bench import operator as operator_bench

        operator_parser = argparse.ArgumentParser(prog="python -m bench operator")
        operator_bench.add_arguments(operator_parser)
        operator_args = operator_parser.parse_args(rest)
        operator_args.quick = args.quick
        started = time.monotonic()
        previous = report.load_results()
        command = " ".join(["python -m bench", *(argv or sys.argv[1:])])
        section = operator_bench.run(operator_args)
        section["machine"] = report.machine()
        section["args"] = {k: v for k, v in vars(operator_args).items() if k != "quick"}
        section["elapsed_seconds"] = round(time.monotonic() - started, 1)
        section["command"] = command
        merged = dict(previous)
        old = dict(previous.get("operator", {}))
        old.update(section)  # parts this run did not measure are kept
        merged["operator"] = old
        markdown = render_all(merged, command=merged.get("command", command))
        print(operator_report.render(old))
        if not args.no_write:
            report.save(merged, markdown)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if "render" in wanted:  # rewrite the docs from bench/results/latest.json only
        saved = report.load_results()
        markdown = render_all(saved, command=saved.get("command", "python -m bench"))
        print(markdown)
        if not args.no_write:
            report.save(saved, markdown)
        return
    if args.quick:
        args.rounds = 1
        args.slices = 6
        args.failover_seconds = 5.0
        args.health_reps = 1
        args.node_kills = 1
        args.node_scale_seconds = 30.0
        args.lf_rounds = 1
        args.st_slices = 4
    started = time.monotonic()
    data: dict[str, Any] = {"args": vars(args), "machine": report.machine()}
    previous = report.load_results()
    command = " ".join(["python -m bench", *(argv or sys.argv[1:])])
    sections: dict[str, Any] = dict(previous.get("sections", {}))
    for name, run in (("overhead", overhead), ("failover", failover), ("profile", profile)):
        if wanted & {"all", "client", name}:
            data[name] = run(args)
            sections[name] = {"command": command, "date": data["machine"]["date"]}
    for name in ("overhead", "failover", "profile"):
        # A section measured by an earlier command keeps that command's name and date.
        if name not in data and name in previous and name not in sections:
            sections[name] = {
                "command": previous.get("command", "python -m bench"),
                "date": previous.get("machine", {}).get("date", "?"),
            }
    parts = (
        ("health", "health", health_part),
        ("node", "node", node_part),
        ("local_first", "local-first", local_first_part),
        ("streaming", "streaming", streaming_part),
        ("day2", "day2", day2_part),
    )
    for name, cli_name, part in parts:
        if wanted & {"all", cli_name}:
            section_started = time.monotonic()
            section = {"loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
            section.update(part(args))
            section["machine"] = report.machine()
            section["command"] = command
            section["elapsed_seconds"] = round(time.monotonic() - section_started, 1)
            section.setdefault("loadavg_at_end", [round(x, 2) for x in os.getloadavg()])
            earlier = previous.get(name) or {}
            if "skipped" in section and earlier and "skipped" not in earlier:
                # No node this time: keep the last measured figures, and say so.
                earlier = dict(earlier)
                earlier["skipped_later"] = {
                    "reason": section["skipped"],
                    "command": command,
                    "date": section["machine"]["date"],
                }
                section = earlier
            data[name] = section
            # Kept even if a later part fails: the figures of a long run are not lost.
            partial = Path(tempfile.gettempdir()) / f"chainop-bench-{name}.json"
            partial.write_text(json.dumps(section, indent=1))
            log(f"{name}: raw figures in {partial}")
    data["elapsed_seconds"] = round(time.monotonic() - started, 1)
    data["sections"] = sections
    # Keep the sections this run did not measure from the last saved results.
    if wanted & {"all", "client", "overhead", "failover", "profile"} or not previous:
        merged = {**previous, **data}
        merged["command"] = command
    else:  # only health/node/local-first/streaming/day2: the header stays the client run's
        kept = ("health", "node", "local_first", "streaming", "day2")
        merged = {**previous, **{k: data[k] for k in kept if k in data}}
        command = str(previous.get("command", command))
    markdown = render_all(merged, command=command)
    print(markdown)
    if not args.no_write:
        report.save(merged, markdown)
