"""We test this aspect of the budget keeper (chainop.operator.spend) without a cluster: a
spend write the API server refuses (say RBAC lacks ``get`` on providerchains, as the chart
once did without admission) is counted in a metric and logged as a warning once a minute,
instead of failing quietly while the budget never gates."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

from chainop.kube.client import KubeError
from chainop.metrics import Metrics
from chainop.operator.spend import BudgetKeeper


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
