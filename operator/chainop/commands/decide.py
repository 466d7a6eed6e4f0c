"""``decide``: the routing decision a task would get now, without creating anything.

It calls ``chainop.core.routing.route`` — the function the operator calls when it executes
a task — on the live chain's spec (its drains, judged now) and ``status.activeOrder`` (so
Excluded and Drained providers are left out exactly as the operator leaves them out), then
the chain's spend budget as the operator gates a new task (``chainop.core.budget.gate``
with ``status.spend``: LocalOnly, or BudgetExceeded), and shows each provider's state.
``--offline -f chain.yaml -f task.yaml`` needs no cluster: the spec's order, every
provider not drained assumed Healthy (and no spend: a fresh budget window).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from chainop import console
from chainop.commands import add_parser, connect
from chainop.core import budget, routing
from chainop.core.models import DelegatedTaskSpec, ProviderChainSpec, SpendStatus, Strategy
from chainop.core.rules import ordered_for_strategy

EXAMPLES = """\
  kubectl chainop decide -f examples/tasks/auto.yaml
  kubectl chainop decide -f task.yaml --chain canary -o json
  kubectl chainop decide --offline -f examples/provider-chain.yaml -f examples/tasks/auto.yaml"""


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = add_parser(
        sub,
        "decide",
        common,
        help="show the routing decision a task would get now",
        examples=EXAMPLES,
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="the task's YAML ('-' for stdin); with --offline also the chain's",
    )
    p.add_argument("--chain", default=None, help="decide on this chain instead of spec.chain")
    p.add_argument(
        "--offline",
        action="store_true",
        help="no cluster: the chain comes from -f too; providers not drained count as Healthy",
    )
    p.set_defaults(handler=run)


def decision_data(
    chain_name: str,
    chain_spec: ProviderChainSpec,
    task: DelegatedTaskSpec,
    chain: dict[str, Any] | None,
    chain_doc: dict[str, Any],
) -> dict[str, Any]:
    """The decision and each provider's state, as printed by -o json|yaml.

    ``chain`` is the live object (None offline); ``chain_doc`` what the spec came from.
    """
    status = console.status_of(chain) if chain is not None else {}
    order = status.get("activeOrder") if "activeOrder" in status else None
    # Drains judged at the real time, offline too: an entry whose until has passed is over.
    now = datetime.now(tz=UTC)
    decision = routing.route(chain_spec, task, active_order=order, now=now)
    # Then the budget, as the operator gates a new task (spend.BudgetKeeper.gate) with the
    # spend the chain's status.spend shows (none offline: a fresh window).
    gated = budget.gate(chain_spec, decision, _spend(status), now=now.timestamp())
    failure = gated.failure
    decision = gated.decision
    # What the executor then tries (``rules.ordered_for_strategy``, per execution):
    # PrimaryOnly only the first; RoundRobin starts one further along for each task.
    tried = list(decision.providers)
    reason = decision.reason
    if len(tried) > 1 and chain_spec.strategy is Strategy.PRIMARY_ONLY:
        tried = ordered_for_strategy(chain_spec, tried)
        reason += f"; strategy PrimaryOnly tries {tried[0]} only"
    elif len(tried) > 1 and chain_spec.strategy is Strategy.ROUND_ROBIN:
        reason += "; strategy RoundRobin starts each task one further along this order"
    providers = []
    for spec in chain_spec.providers:
        entry = console.provider_status(chain, spec.name) if chain is not None else {}
        drain = console.drain_of(chain_doc, spec.name)
        assumed = "Drained" if drain else "Healthy"  # offline: what the spec alone says
        providers.append(
            {
                "name": spec.name,
                "privacyTier": spec.privacy_tier.value,
                "state": entry.get("state") or (assumed if chain is None else "Unknown"),
                "eligible": spec.name in tried,
                "reason": entry.get("reason") or "",
                "drain": drain,
            }
        )
    waits = None
    if not tried and not failure:
        # As the operator does (TaskRunner.drain_wait): only timed drains keep it out and
        # one ends before the task's deadline -> it waits, then decides again.
        parked = routing.drain_wait(
            chain_spec,
            task,
            active_order=order,
            now=now,
            deadline=now + timedelta(seconds=task.timeout_seconds),
        )
        if parked is not None:
            waits = {"provider": parked.provider, "until": parked.until.isoformat()}
    return {
        "chain": chain_name,
        "waitsForDrain": waits,
        "provider": "" if failure or not tried else tried[0],
        "providers": [] if failure else tried,
        "reason": f"BudgetExceeded: {failure}" if failure else reason,
        "rule": decision.rule,
        "localOnly": decision.local_only,
        "activeOrder": order if order is not None else [p.name for p in chain_spec.providers],
        "states": providers,
        "offline": chain is None,
        "ready": console.condition(chain, "Ready") if chain is not None else {},
        "reported": bool(status),
    }


def _spend(status: dict[str, Any]) -> budget.Spend | None:
    """The spend a chain's status shows (None when none, or unreadable)."""
    raw = status.get("spend")
    try:
        return budget.from_status(SpendStatus.model_validate(raw) if raw else None)
    except ValidationError:
        return None


def render(data: dict[str, Any]) -> str:
    head = (
        f"chain {data['chain']}: "
        + (
            f"try {' → '.join(data['providers'])}"
            if data["providers"]
            else "no provider is eligible"
        )
        + f"\nrule {data['rule']}: {data['reason']}\n"
    )
    if data.get("waitsForDrain"):
        w = data["waitsForDrain"]
        head += (
            f"the task would wait for the drain of {w['provider']} to end at {w['until']} "
            "(WaitingForProvider), then be decided again\n"
        )
    if not data["offline"] and not data["reported"]:
        head += "the chain has no status yet (is the operator running?): the spec's order\n"
    ready = data["ready"]
    if ready and ready.get("status") != "True":
        head += (
            f"chain not Ready ({ready.get('reason')}: {ready.get('message')}): "
            "the operator would hold the task until it is\n"
        )
    if data["offline"]:
        head += "(offline: the spec's order, every provider not drained assumed Healthy)\n"
    head += "\n"
    order = {name: i + 1 for i, name in enumerate(data["providers"])}
    rows = [
        (
            order.get(p["name"], "-"),
            p["name"],
            p["privacyTier"],
            p["state"],
            ("drained " + console.drain_text(p["drain"])) if p["drain"] else p["reason"],
        )
        for p in data["states"]
    ]
    return head + console.table(("order", "provider", "tier", "state", "reason"), rows)


def run(args: argparse.Namespace) -> int:
    docs = console.read_documents(args.filename)
    task_doc = console.one_task(docs, args.filename)
    task = console.parse_spec(DelegatedTaskSpec, task_doc, task_doc["__source"])
    chain_name = args.chain or task.chain
    chain: dict[str, Any] | None
    if args.offline:
        chains = [d for d in docs if d.get("kind") == "ProviderChain"]
        named = [d for d in chains if (d.get("metadata") or {}).get("name") == chain_name]
        if not named and len(chains) == 1 and args.chain is None:
            named = chains
        if not named:
            console.fail(
                console.USAGE,
                f"--offline: no ProviderChain {chain_name!r} in {', '.join(args.filename)}",
            )
        chain_doc, chain = named[0], None
        chain_name = str((chain_doc.get("metadata") or {}).get("name") or chain_name)
    else:
        chain = connect(args).get(console.CHAINS, chain_name)
        chain_doc = chain
    chain_spec = console.parse_spec(
        ProviderChainSpec, chain_doc, str(chain_doc.get("__source", "chain"))
    )
    data = decision_data(chain_name, chain_spec, task, chain, chain_doc)
    console.emit(data, args.output, lambda: render(data))
    return console.OK if data["providers"] or data["waitsForDrain"] else console.FAILED
