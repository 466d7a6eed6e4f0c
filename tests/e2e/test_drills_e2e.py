"""We test these aspects: failover drills (``spec.drills``) through the operator, on real
sockets and a real API server.

* a drill on a healthy chain passes: ``status.lastDrill`` names the forced head and the
  path [second provider]; the head's backend gets no completion call; the drill metrics;
* a drill whose fallback is broken (HTTP 500, or a closed port) fails, with a
  ``DrillFailed`` Event and the reason, and the forced head is not penalised (Healthy,
  no failures, no benching); with drills turned off its gauge goes away;
* ``allowPaid: false`` skips a paid provider (path goes past it, its backend is never
  called) and fails, saying so, when only paid hops remain;
* an operator restart resumes ``lastDrill`` from status and does not drill again before
  the interval is over;
* the gauges the chart's alerts read: restarts remaining 0 once a backend's restarts
  ran out while it is down, and a chain that is not Ready;
* a fixed fallback passes the next due drill, with a ``DrillRecovered`` Event.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chainop.kube.client import GROUP, VERSION
from chainop.testing.cluster import free_port
from tests.e2e.kit import CHAINS, Kit, operator_metric

pytestmark = pytest.mark.cluster

PASSIVE = {"failureThreshold": 2, "transientRetries": 1, "probe": {"mode": "Passive"}}
PAID = {"cost": {"inputPerMillionTokens": 0.15, "outputPerMillionTokens": 0.6}}


def _last_drill(kit: Kit, chain: str) -> dict[str, Any]:
    """Wait for the chain's status.lastDrill and return it."""
    obj = kit.wait(
        CHAINS,
        chain,
        lambda o: bool((o.get("status") or {}).get("lastDrill")),
        what=f"status.lastDrill of {chain}",
    )
    return dict(obj["status"]["lastDrill"])


def _scraped(port: int, name: str, **labels: str) -> float | None:
    """A metric of an operator that may still be starting (None until /metrics answers)."""
    try:
        return operator_metric(port, name, **labels)
    except OSError:
        return None


def _series(port: int, name: str, **labels: str) -> list[float]:
    """The values of every sample of ``name`` with ``labels`` (empty: no such series)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def _completions(backend: Any) -> int:
    return int(backend.stats()["requests"].get("openai", 0))


def _drilled_chain(kit: Kit, name: str, primary: str, secondary: str, **health: Any) -> None:
    """``primary`` then ``secondary`` (both Sovereign, so free to drill), drilled hourly,
    probes passive: the drill's call is the only traffic the fallback sees."""
    kit.create_chain(
        name,
        [
            kit.provider("primary", primary, "Sovereign"),
            kit.provider("secondary", secondary, "Sovereign"),
        ],
        health={**PASSIVE, **health},
        drills={"intervalMinutes": 60},
    )


def test_drill_passes_on_a_healthy_chain(kit: Kit, operator, backends):
    primary, secondary = backends("primary"), backends("secondary")
    _drilled_chain(kit, "healthy", primary.url, secondary.url)
    drill = _last_drill(kit, "healthy")
    assert drill["passed"] is True, drill
    assert drill["forced"] == "primary"
    assert drill["path"] == ["secondary"]
    assert drill["reason"] == "secondary answered with primary failed on purpose"
    assert drill["time"]
    assert _completions(primary) == 0  # failed in chainop, never called
    assert _completions(secondary) == 1
    port = operator.metrics_port
    labels = {"namespace": kit.namespace, "chain": "healthy"}
    assert operator_metric(port, "chainop_drills_total", result="passed", **labels) == 1
    assert operator_metric(port, "chainop_drill_last_passed", **labels) == 1
    assert operator_metric(port, "chainop_failovers_total", **labels) == 0
    assert kit.provider_status("healthy", "primary")["consecutiveFailures"] == 0
    # The audit trail (stdout by default) has the drill: where it went, what was forced.
    lines = [
        json.loads(text)
        for text in operator.log().splitlines()
        if text.startswith('{"schema"') and '"kind":"drill"' in text
    ]
    assert [
        (a["chain"], a["provider"], a["fromProvider"], a["outcome"], a["providerTier"])
        for a in lines
    ] == [("healthy", "secondary", "primary", "passed", "Sovereign")]


@pytest.mark.parametrize("breakage", ["http-500", "closed-port"])
def test_drill_fails_with_an_event_when_the_fallback_is_broken(
    kit: Kit, operator, backends, breakage
):
    primary = backends("primary")
    if breakage == "http-500":
        secondary = backends("secondary")
        secondary.set_mode("error", status=500)
        url, expected = secondary.url, "HTTP 500"
    else:
        url, expected = f"http://127.0.0.1:{free_port()}", "fallback secondary failed"
    _drilled_chain(kit, "broken", primary.url, url)
    drill = _last_drill(kit, "broken")
    assert drill["passed"] is False, drill
    assert drill["path"] == ["secondary"]
    assert expected in drill["reason"]
    kit.wait_until(lambda: "DrillFailed" in kit.event_reasons("broken"), what="DrillFailed Event")
    # The forced failure cost the head nothing.
    head = kit.provider_status("broken", "primary")
    assert head["state"] == "Healthy"
    assert head["consecutiveFailures"] == 0
    assert head.get("benchings", 0) == 0
    assert _completions(primary) == 0
    labels = {"namespace": kit.namespace, "chain": "broken"}
    assert operator_metric(operator.metrics_port, "chainop_drill_last_passed", **labels) == 0
    assert (
        operator_metric(operator.metrics_port, "chainop_drills_total", result="failed", **labels)
        == 1
    )
    # Drills turned off: the old failure stops feeding the ChainopDrillFailing alert.
    assert _series(operator.metrics_port, "chainop_drill_last_passed", **labels) == [0.0]
    kit.api.custom.patch_namespaced_custom_object(
        GROUP, VERSION, kit.namespace, CHAINS, "broken", {"spec": {"drills": None}}
    )
    kit.wait_until(
        lambda: _series(operator.metrics_port, "chainop_drill_last_passed", **labels) == [],
        what="the drill gauge dropped",
    )


def test_allow_paid_false_skips_a_paid_provider(kit: Kit, operator, backends):
    primary, paid, onprem = backends("primary"), backends("paid"), backends("onprem")
    kit.create_chain(
        "mixed",
        [
            kit.provider("primary", primary.url, "Sovereign"),
            kit.provider("paid", paid.url, "Standard", **PAID),
            kit.provider("onprem", onprem.url, "Sovereign"),
        ],
        health=PASSIVE,
        drills={"intervalMinutes": 60, "allowPaid": False},
    )
    kit.create_chain(
        "paid-only",
        [
            kit.provider("primary", primary.url, "Sovereign"),
            kit.provider("paid", paid.url, "Standard", **PAID),
        ],
        health=PASSIVE,
        drills={"intervalMinutes": 60},
    )
    mixed = _last_drill(kit, "mixed")
    assert mixed["passed"] is True, mixed
    assert mixed["path"] == ["onprem"]
    only_paid = _last_drill(kit, "paid-only")
    assert only_paid["passed"] is False
    assert only_paid["path"] == []
    assert "paid providers left out (paid" in only_paid["reason"]
    kit.wait_until(
        lambda: "DrillFailed" in kit.event_reasons("paid-only"), what="DrillFailed Event"
    )
    assert _completions(paid) == 0
    assert _completions(primary) == 0


def test_restart_resumes_last_drill_and_does_not_drill_again(kit: Kit, start_operator, backends):
    primary, secondary = backends("primary"), backends("secondary")
    first = start_operator()
    _drilled_chain(kit, "steady", primary.url, secondary.url)
    drill = _last_drill(kit, "steady")
    assert drill["passed"] is True
    first.kill()
    second = start_operator()
    labels = {"namespace": kit.namespace, "chain": "steady"}
    # The new operator has seen the chain Ready (its hook ran the due check with it)...
    kit.wait_until(
        lambda: _scraped(second.metrics_port, "chainop_chain_ready", **labels) == 1,
        what="chain Ready on the new operator",
    )
    # ... and resumed lastDrill from status: it exports it, and has not drilled again.
    kit.wait_until(
        lambda: _scraped(second.metrics_port, "chainop_drill_last_passed", **labels) == 1,
        what="lastDrill resumed",
    )
    kit.holds(
        lambda: (
            operator_metric(second.metrics_port, "chainop_drills_total", **labels) == 0
            and _completions(secondary) == 1
        ),
        what="no second drill",
    )
    assert kit.get(CHAINS, "steady")["status"]["lastDrill"]["time"] == drill["time"]


def test_alert_gauges_restarts_remaining_and_chain_ready(kit: Kit, operator, supervisor):
    """What ChainopRestartBudgetExhausted and ChainopChainNotReady read: a backend whose
    restarts do not help uses up maxRestartsPerHour (remaining 0, provider down) and its
    single-provider chain is not Ready."""
    port = free_port()
    kit.create_deployment("vllm")
    command = [sys.executable, "-m", "chainop.testing.fake_backend", "--port", str(port)]
    supervisor.bind(kit.namespace, "vllm", [*command, "--name", "vllm", "--mode", "error"], port)
    kit.create_chain(
        "default",
        [
            kit.provider(
                "vllm", f"http://127.0.0.1:{port}", "Sovereign", backend={"deployment": "vllm"}
            )
        ],
        health={
            "failureThreshold": 2,
            "probe": {"intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 2},
        },
        selfHealing={
            "maxRestartsPerHour": 2,
            "restartGraceSeconds": 1,
            "recovery": {"initialSeconds": 1, "maxSeconds": 1},
        },
    )
    kit.wait_until(
        lambda: "RestartBudgetExhausted" in kit.event_reasons("default"),
        timeout=60,
        what="a RestartBudgetExhausted event",
    )
    port_m = operator.metrics_port
    labels = {"namespace": kit.namespace, "chain": "default"}
    kit.wait_until(
        lambda: (
            operator_metric(port_m, "chainop_backend_restarts_remaining", provider="vllm", **labels)
            == 0
            and operator_metric(port_m, "chainop_chain_ready", **labels) == 0
        ),
        what="restarts remaining 0 and chain not Ready",
    )
    down = sum(
        operator_metric(port_m, "chainop_provider_state", provider="vllm", state=s, **labels)
        for s in ("Unhealthy", "Excluded")
    )
    assert down == 1
    conditions = kit.get(CHAINS, "default")["status"]["conditions"]
    assert any(c["type"] == "Ready" and c["status"] == "False" for c in conditions)


def test_fixed_fallback_passes_the_next_due_drill_with_drill_recovered(
    kit: Kit, start_operator, backends
):
    """The next drill is due interval after lastDrill.time, read from status by a new
    operator: with that time moved an hour back, the new operator drills at once."""
    primary, secondary = backends("primary"), backends("secondary")
    secondary.set_mode("error", status=500)
    first = start_operator()
    _drilled_chain(
        kit,
        "healing",
        primary.url,
        secondary.url,
        cooldown={"initialSeconds": 1, "maxSeconds": 1},
    )
    failed = _last_drill(kit, "healing")
    assert failed["passed"] is False
    first.kill()
    secondary.set_mode("healthy")
    an_hour_ago = datetime.now(UTC) - timedelta(minutes=61)
    kit.api.custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        kit.namespace,
        CHAINS,
        "healing",
        {"status": {"lastDrill": {**failed, "time": an_hour_ago.isoformat()}}},
    )
    start_operator()
    passed = kit.wait(
        CHAINS,
        "healing",
        lambda o: (o.get("status") or {}).get("lastDrill", {}).get("passed") is True,
        what="a passing drill",
    )["status"]["lastDrill"]
    assert passed["path"] == ["secondary"]
    kit.wait_until(
        lambda: "DrillRecovered" in kit.event_reasons("healing"), what="DrillRecovered Event"
    )
