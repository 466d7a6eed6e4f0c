"""``status``: every chain's providers (state, benched until, restarts left this hour,
drain) and the namespace's tasks by phase and spend.

Spend is the chain's ``status.spend`` when the operator keeps one (issue 17: windowStart,
usd, byProvider); otherwise the sum of the namespace's task costs, labelled as such.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from datetime import datetime
from typing import Any

from chainop import console
from chainop.commands import add_parser, connect

EXAMPLES = """\
  kubectl chainop status
  kubectl chainop status --chain default
  kubectl chainop status -n team-a -o yaml"""


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = add_parser(
        sub,
        "status",
        common,
        help="chains, provider states and the namespace's tasks and spend",
        examples=EXAMPLES,
    )
    p.add_argument("--chain", default=None, help="only this chain")
    p.set_defaults(handler=run)


def restarts_left(
    cluster: console.Cluster, chain: dict[str, Any], provider: dict[str, Any]
) -> int | None:
    """maxRestartsPerHour minus the backend's restarts in the last hour (None: no backend,
    or its Deployment cannot be read with these credentials)."""
    from chainop.operator.restarts import ledger_from  # aiohttp: only when needed

    backend = (provider.get("backend") or {}).get("deployment")
    if not backend:
        return None
    deployment = cluster.deployment(backend)
    if deployment is None:
        return None
    per_hour = int(
        ((chain.get("spec") or {}).get("selfHealing") or {}).get("maxRestartsPerHour", 3)
    )
    return max(0, per_hour - len(ledger_from(deployment).recent(now=time.time())))


def chain_data(cluster: console.Cluster, chain: dict[str, Any]) -> dict[str, Any]:
    status = console.status_of(chain)
    providers = []
    for spec in (chain.get("spec") or {}).get("providers") or []:
        entry = console.provider_status(chain, spec["name"])
        drain = console.drain_of(chain, spec["name"])
        providers.append(
            {
                "name": spec["name"],
                "state": entry.get("state", "Unknown"),
                "benchedUntil": entry.get("cooldownUntil") or "",
                "restartsLeftThisHour": restarts_left(cluster, chain, spec),
                "drain": drain,
                "reason": entry.get("reason", ""),
            }
        )
    return {
        "name": chain["metadata"]["name"],
        "ready": console.condition(chain, "Ready").get("status", "Unknown"),
        "activeOrder": status.get("activeOrder", []),
        "providers": providers,
        "spend": current_spend(chain, now=time.time()),
    }


def current_spend(chain: dict[str, Any], *, now: float) -> dict[str, Any] | None:
    """The chain's ``status.spend`` while it means something: the chain still has a budget
    and the window it counts has not ended (after that the operator starts a new window
    at the next charge; until then the old figure is not this window's spend)."""
    spend = console.status_of(chain).get("spend")
    if not spend or not (chain.get("spec") or {}).get("budget"):
        return None
    end = spend.get("windowEnd")
    if end:
        try:
            ended = datetime.fromisoformat(str(end).replace("Z", "+00:00")).timestamp() <= now
        except ValueError:
            ended = False
        if ended:
            return None
    return dict(spend)


def _add(into: dict[str, float], provider: str, usd: float) -> None:
    into[provider] = into.get(provider, 0.0) + usd


def spend_data(chains: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Spend from the chains' status.spend when present, else summed from task costs."""
    by_provider: dict[str, float] = {}
    kept = [c["spend"] for c in chains if c.get("spend")]
    if kept:
        for spend in kept:
            # status.spend.byProvider is a list of {provider, usd} (SpendStatus).
            for entry in spend.get("byProvider") or []:
                if isinstance(entry, dict) and entry.get("provider"):
                    _add(by_provider, str(entry["provider"]), float(entry.get("usd") or 0))
        total = sum(float(s.get("usd") or 0) for s in kept)
        return {"source": "chain status.spend", "usd": total, "byProvider": by_provider}
    for task in tasks:
        result = console.status_of(task).get("result") or {}
        if result.get("provider"):
            usd = float(result.get("costUSD") or 0) + float(result.get("extraCostUSD") or 0)
            _add(by_provider, str(result["provider"]), usd)
    total = sum(by_provider.values())
    return {"source": "sum of task costs", "usd": total, "byProvider": by_provider}


def render(data: dict[str, Any]) -> str:
    rows = []
    for chain in data["chains"]:
        for p in chain["providers"]:
            drained = console.drain_text(p["drain"])
            left = p["restartsLeftThisHour"]
            rows.append(
                (
                    chain["name"],
                    chain["ready"],
                    p["name"],
                    p["state"],
                    p["benchedUntil"] or "-",
                    "-" if left is None else left,
                    drained or "-",
                )
            )
    out = console.table(
        ("chain", "ready", "provider", "state", "benched until", "restarts left", "drain"), rows
    )
    phases = ", ".join(f"{n} {phase}" for phase, n in sorted(data["tasks"].items())) or "none"
    spend = data["spend"]
    by = ", ".join(f"{k} ${v:.6f}" for k, v in sorted(spend["byProvider"].items()))
    out += f"\nnamespace {data['namespace']}: tasks {phases}\n"
    out += f"spend ${spend['usd']:.6f} ({spend['source']}){': ' + by if by else ''}\n"
    return out


def run(args: argparse.Namespace) -> int:
    cluster = connect(args)
    chains = (
        [cluster.get(console.CHAINS, args.chain)]
        if args.chain
        else cluster.list_objects(console.CHAINS)
    )
    tasks = cluster.list_objects(console.TASKS)
    if args.chain:
        tasks = [t for t in tasks if (t.get("spec") or {}).get("chain") == args.chain]
    chain_rows = [chain_data(cluster, chain) for chain in chains]
    data = {
        "namespace": cluster.namespace,
        "chains": chain_rows,
        "tasks": dict(Counter(console.phase(t) for t in tasks)),
        "spend": spend_data(chain_rows, tasks),
    }
    console.emit(data, args.output, lambda: render(data))
    return console.OK
