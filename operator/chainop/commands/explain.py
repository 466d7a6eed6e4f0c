"""``explain``: a readable health report of one chain — each provider's state, reason,
last error, cooldown, probe latency, load, restarts and drain; the last failover drill and
the budget window's spend — and its last Events."""

from __future__ import annotations

import argparse
from typing import Any

from chainop import console
from chainop.commands import add_parser, connect

EXAMPLES = """\
  kubectl chainop explain default
  kubectl chainop explain default --events 20
  kubectl chainop explain default -o yaml"""


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = add_parser(
        sub, "explain", common, help="a readable health report of one chain", examples=EXAMPLES
    )
    p.add_argument("chain", help="the ProviderChain")
    p.add_argument(
        "--events",
        type=int,
        default=10,
        metavar="N",
        help="how many recent Events to show (default 10)",
    )
    p.set_defaults(handler=run)


def _load(load: dict[str, Any] | None) -> str:
    if not load:
        return ""
    text = f"{load.get('waiting', 0):g} waiting, {load.get('running', 0):g} running"
    if load.get("kvCacheUsage") is not None:
        text += f", KV cache {float(load['kvCacheUsage']) * 100:.0f}%"
    if load.get("saturated"):
        text += f" — saturated: {load['saturated']}"
    return text


def provider_lines(entry: dict[str, Any], spec: dict[str, Any], drain: dict[str, Any]) -> list[str]:
    """The lines of one provider, only the fields that say something."""
    fields = [
        ("reason", entry.get("reason")),
        ("last error", entry.get("lastError")),
        ("benched until", entry.get("cooldownUntil")),
        ("excluded since", entry.get("excludedSince")),
        ("next recovery probe", entry.get("nextRecoveryTime")),
        (
            "probe latency",
            f"{entry['lastProbeLatencyMs']}ms at {entry.get('lastProbeTime', '?')}"
            if entry.get("lastProbeLatencyMs") is not None
            else "",
        ),
        ("load", _load(entry.get("load"))),
        ("failures", entry.get("consecutiveFailures") or ""),
        (
            "restarts",
            f"{entry.get('restarts', 0)} (last {entry.get('lastRestartTime')})"
            if entry.get("restarts")
            else "",
        ),
        (
            "drained",
            f"by {drain.get('by') or '?'} since {drain.get('since', '?')} until "
            f"{drain.get('until') or 'undrained'}: {drain.get('reason') or '(no reason)'}"
            if drain
            else "",
        ),
    ]
    kind = f"{spec.get('privacyTier', 'Standard')}, {spec.get('type', '')}"
    head = f"  {spec['name']} ({kind}): {entry.get('state', 'Unknown')}"
    return [head] + [
        f"      {label}: {value}" for label, value in fields if value not in (None, "")
    ]


def governance_lines(spec: dict[str, Any], status: dict[str, Any]) -> list[str]:
    """The last drill (spec.drills) and the window's spend (spec.budget), when configured."""
    lines = []
    drill, drills = status.get("lastDrill") or {}, spec.get("drills")
    if drills:
        if drill.get("time"):
            verdict = "passed" if drill.get("passed") else "FAILED"
            path = " → ".join(drill.get("path") or []) or "(no hop called)"
            lines.append(
                f"  last drill {verdict} at {drill['time']} ({drill.get('latencyMs', 0)}ms; "
                f"{drill.get('forced') or '?'} failed on purpose, then {path}): "
                f"{drill.get('reason', '')}"
            )
        else:
            lines.append(f"  drills every {drills.get('intervalMinutes', 60)} min: none run yet")
    budget, spend = spec.get("budget"), status.get("spend") or {}
    if budget:
        used = float(spend.get("usd") or 0.0)
        cap = float(budget.get("maxUSD") or 0.0)
        ratio = f" ({used / cap * 100:.0f}%)" if cap > 0 else ""
        lines.append(
            f"  budget {used:.2f} of {cap:.2f} USD/{budget.get('window', '?')} spent{ratio}, "
            f"window from {spend.get('windowStart') or '(no task charged yet)'}; over it: "
            f"{budget.get('onExceeded', 'LocalOnly')}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    cluster = connect(args)
    chain = cluster.get(console.CHAINS, args.chain)
    events = cluster.events("ProviderChain", args.chain)[-args.events :] if args.events > 0 else []
    if args.output != "table":
        data = {
            "chain": args.chain,
            "status": console.status_of(chain),
            "events": [
                {k: e.get(k) for k in ("type", "reason", "message", "lastTimestamp", "count")}
                for e in events
            ],
        }
        console.emit(data, args.output, str)
        return console.OK
    status = console.status_of(chain)
    ready = console.condition(chain, "Ready")
    lines = [
        f"ProviderChain {args.chain} (namespace {cluster.namespace}): "
        f"Ready={ready.get('status', 'Unknown')}"
        + (f" ({ready.get('reason')}: {ready.get('message')})" if ready.get("reason") else ""),
        f"  strategy {(chain.get('spec') or {}).get('strategy', 'Fallback')}; active order: "
        f"{' → '.join(status.get('activeOrder') or []) or '(none)'}",
        *governance_lines(chain.get("spec") or {}, status),
        "",
        "providers:",
    ]
    for spec in (chain.get("spec") or {}).get("providers") or []:
        name = spec["name"]
        lines += provider_lines(
            console.provider_status(chain, name), spec, console.drain_of(chain, name)
        )
    lines += ["", f"last {len(events)} events:" if events else "no events"]
    for e in events:
        when = console.age(e.get("lastTimestamp") or e.get("eventTime"))
        count = f" (x{e['count']})" if (e.get("count") or 1) > 1 else ""
        lines.append(
            f"  {when:>4} ago  {e.get('type', ''):<7} "
            f"{e.get('reason', '')}: {e.get('message', '')}{count}"
        )
    print("\n".join(lines))
    return console.OK
