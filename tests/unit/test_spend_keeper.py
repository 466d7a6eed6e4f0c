"""We test these aspects of the budget keeper (chainop.operator.spend) without a cluster:

* a spend write the API server refuses (say RBAC lacks ``get`` on providerchains, as the
  chart once did without admission) is counted in a metric and logged as a warning once a
  minute, instead of failing quietly while the budget never gates;
* a replica taking over reads a budgeted chain's spend of record before gating a new task,
  rather than trusting what it saw in its last term as leader.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

from chainop.core import budget, routing
from chainop.core.board import HealthBoard
from chainop.kube.client import KubeError
from chainop.metrics import Metrics
from chainop.operator.runtime import ChainRuntime
from chainop.operator.spend import BudgetKeeper
from tests.unit.support import T0, chain, provider, task


class RefusingKube:
    def __init__(self) -> None:
        self.reads = 0

    async def read_chain(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        raise KubeError(403, "Forbidden", 'providerchains.chainop.dev "c" is forbidden')


def test_a_refused_spend_write_is_counted_and_warned_once_a_minute(caplog):
    clock = [1000.0]
    metrics = Metrics()
    runtime = SimpleNamespace(metrics=metrics, clock=lambda: clock[0], kube=RefusingKube())
    keeper = BudgetKeeper(runtime)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="chainop.operator.spend")

    def attempt() -> bool:
        return asyncio.run(keeper.write(("team-a", "c"), []))

    assert attempt() is False  # not done: tried again later
    assert attempt() is False
    clock[0] += 61
    assert attempt() is False
    value = metrics.registry.get_sample_value(
        "chainop_spend_write_errors_total", {"namespace": "team-a", "chain": "c"}
    )
    assert value == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # the first, and the first after a minute
    assert "team-a/c" in warnings[0].getMessage()
    assert "403 Forbidden" in warnings[0].getMessage()


def test_a_chain_gone_is_nothing_to_charge():
    class Gone(RefusingKube):
        async def read_chain(self, namespace: str, name: str) -> dict[str, Any] | None:
            return None

    metrics = Metrics()
    runtime = SimpleNamespace(metrics=metrics, clock=lambda: 0.0, kube=Gone())
    keeper = BudgetKeeper(runtime)  # type: ignore[arg-type]
    assert asyncio.run(keeper.write(("team-a", "c"), [])) is True
    assert (
        metrics.registry.get_sample_value(
            "chainop_spend_write_errors_total", {"namespace": "team-a", "chain": "c"}
        )
        is None
    )


class ChainReader:
    """Answers ``read_chain`` with a chain whose status shows the spend of record."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.reads = 0

    async def read_chain(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return self.body


def test_a_replica_taking_over_gates_new_tasks_on_the_spend_of_record_not_its_old_one():
    day = 86_400
    midnight = T0 // day * day
    spec = chain(
        provider("vllm", "Sovereign"),
        provider("openai", "Standard"),
        budget={"window": "24h", "maxUSD": 10},
        taskDefaults={"allowDelegation": True},
    )
    stale = budget.Spend(window="24h", window_start=midnight, window_seconds=day, usd=4.0)
    of_record = budget.Spend(window="24h", window_start=midnight, window_seconds=day, usd=10.5)
    wire = budget.to_status(of_record).model_dump(by_alias=True, mode="json")
    kube = ChainReader({"metadata": {"namespace": "ns", "name": "c"}, "status": {"spend": wire}})
    runtime = SimpleNamespace(metrics=Metrics(), clock=lambda: midnight + 60.0, kube=kube)
    keeper = BudgetKeeper(runtime)  # type: ignore[arg-type]
    keeper.known[("ns", "c")] = stale  # what this replica saw in its last term as leader
    held = ChainRuntime(namespace="ns", name="c", uid="u", spec=spec, board=HealthBoard(spec))
    decision = routing.decide(spec, task())
    assert "openai" in decision.providers

    # In charge all along: the watch keeps `known` current, no read per task.
    asyncio.run(keeper.refresh(held))
    assert kube.reads == 0
    assert keeper.gate(held, decision, running=False).decision == decision

    # Taking over: the chain's status is read before the first gate, and the budget holds.
    held.resync = True
    asyncio.run(keeper.refresh(held))
    assert kube.reads == 1
    gated = keeper.gate(held, decision, running=False).decision
    assert gated.providers == ("vllm",)
    assert gated.reason == "budget 10.00 USD/24h spent"
