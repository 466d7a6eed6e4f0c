"""We test these aspects: a backend that flaps, shared by three chains, cannot cause a storm.

One in-cluster backend (a fake-backend process bound by the supervisor to the Deployment
``vllm``) is named by three ProviderChains. For ``FLAP_SECONDS`` (120 by default; the
``CHAINOP_FLAP_SECONDS`` environment variable shortens it) it is up 5 s, down 5 s (HTTP
503 on every route), while the test samples each chain's status and reads the Events.

* the flapping is really seen: the provider is probed Healthy first (the backend serves
  the chains' model), then excluded, restored and restarted at least once each, never
  for ModelNotServed;
* backend restarts stay within ``maxRestartsPerHour`` — for the Deployment as a whole,
  whatever the number of chains (the ledger lives on the Deployment);
* no restart storm: never two restarts in flight, and the budget-exhausted notice is not
  repeated more than once per chain per 5 minutes;
* the provider never oscillates faster than its schedule: each Excluded → restored cycle
  needs at least ``recovery.initialSeconds`` (a recovery probe is never due sooner), so
  the number of restores is bounded by FLAP_SECONDS / recovery.initialSeconds + 1, and
  every chain sees the same shared probe results (one probe per endpoint+model).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter

import pytest

from chainop.operator.restarts import HISTORY
from chainop.testing.cluster import free_port
from chainop.testing.fake_backend import FakeBackendControl
from tests.e2e.kit import Kit, backend_command, operator_metric, vllm_provider

pytestmark = pytest.mark.cluster

FLAP_SECONDS = float(os.environ.get("CHAINOP_FLAP_SECONDS", "120"))
HALF_PERIOD = 5.0
MAX_RESTARTS = 3
RECOVERY_INITIAL = 4.0
CHAIN_NAMES = ("alpha", "beta", "gamma")


def flap(url: str, stop: threading.Event, log: list[tuple[float, str]]) -> None:
    """Up HALF_PERIOD, down HALF_PERIOD, until stopped (the process may be restarting)."""
    control = FakeBackendControl(url, timeout=2)
    up = False
    while not stop.is_set():
        up = not up
        # A restarted process starts healthy: setting the mode again each half period
        # keeps the flapping going across restarts.
        with contextlib.suppress(Exception):
            if up:
                control.set(mode="healthy")
            else:
                control.set(mode="error", status=503)
        log.append((time.monotonic(), "up" if up else "down"))
        stop.wait(HALF_PERIOD)


@pytest.mark.timeout(int(FLAP_SECONDS) + 240)
def test_flapping_backend_shared_by_three_chains_stays_within_budget(
    kit: Kit, operator, supervisor
) -> None:
    port = free_port()
    kit.create_deployment("vllm")
    # The self-healing tests' set-up: the chains name the model the backend serves (a
    # model it did not list would keep the provider Excluded as ModelNotServed all along,
    # never restarted or restored, and the flapping would go unseen).
    supervisor.bind(kit.namespace, "vllm", backend_command(port), port)
    provider = vllm_provider(kit, port)
    for name in CHAIN_NAMES:
        kit.create_chain(
            name,
            [provider],
            health={
                "failureThreshold": 2,
                "cooldown": {"initialSeconds": 2, "maxSeconds": 30},
                "probe": {"intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 2},
            },
            selfHealing={
                "maxRestartsPerHour": MAX_RESTARTS,
                "recovery": {"initialSeconds": RECOVERY_INITIAL, "maxSeconds": 16},
            },
        )
    for name in CHAIN_NAMES:
        kit.chain_ready(name)
    # Ready=True is written before the first probe result (and a probe that finds nothing
    # new writes no status): wait for a passing List probe — one per endpoint+model, shared
    # by the three chains — so every state seen below is the flapping's doing.
    metrics_port = operator.metrics_port
    kit.wait_until(
        lambda: (
            operator_metric(metrics_port, "chainop_probes_total", kind="List", result="ok") >= 1
        ),
        what="a passing List probe of vllm",
    )
    for name in CHAIN_NAMES:
        assert kit.provider_status(name, "vllm").get("state") == "Healthy"

    stop = threading.Event()
    flips: list[tuple[float, str]] = []
    flapper = threading.Thread(
        target=flap, args=(f"http://127.0.0.1:{port}", stop, flips), daemon=True
    )
    flapper.start()
    states: dict[str, list[str]] = {name: [] for name in CHAIN_NAMES}
    reasons_seen: dict[str, set[str]] = {name: set() for name in CHAIN_NAMES}
    started = time.monotonic()
    try:
        while time.monotonic() - started < FLAP_SECONDS:
            for name in CHAIN_NAMES:
                entry = kit.provider_status(name, "vllm")
                state = entry.get("state", "")
                reasons_seen[name].add(entry.get("reason", ""))
                if not states[name] or states[name][-1] != state:
                    states[name].append(state)
            time.sleep(0.2)
    finally:
        stop.set()
        flapper.join(10)

    restarts = supervisor.restarts(kit.namespace, "vllm")
    annotations = kit.deployment("vllm")["metadata"].get("annotations") or {}
    history = [t for t in annotations.get(HISTORY, "").split(",") if t.strip()]
    reasons = Counter(kit.event_reasons())
    restores = {name: states[name].count("Healthy") - 1 for name in CHAIN_NAMES}
    exclusions = {name: states[name].count("Excluded") for name in CHAIN_NAMES}
    print(
        f"\nchaos/flap: {FLAP_SECONDS:.0f}s flapping ({len(flips)} flips), 3 chains: "
        f"restarts={restarts} (max {MAX_RESTARTS}/h) history={len(history)} "
        f"exclusions={exclusions} restores={restores} events={dict(reasons)}"
    )
    for name in CHAIN_NAMES:
        print(f"  {name} reasons: {sorted(r for r in reasons_seen[name] if r)}")
    for name in CHAIN_NAMES:
        print(f"  {name}: {' → '.join(states[name])}")

    assert restarts >= 1, "never restarted: the self-healing path was not exercised"
    assert restarts <= MAX_RESTARTS
    assert len(history) <= MAX_RESTARTS
    assert reasons["BackendRestarted"] <= MAX_RESTARTS * len(CHAIN_NAMES)
    for name in CHAIN_NAMES:
        assert exclusions[name] >= 1, f"{name} never excluded: the flapping was not seen"
        assert restores[name] >= 1, f"{name} never restored: the flapping was not seen"
        assert "ModelNotServed" not in reasons_seen[name], reasons_seen[name]
        assert restores[name] <= FLAP_SECONDS / RECOVERY_INITIAL + 1, states[name]
    not_served = operator_metric(metrics_port, "chainop_probes_total", result="model_not_served")
    assert not_served == 0
    budget_notices = [e for e in kit.events() if e["reason"] == "RestartBudgetExhausted"]
    assert all((e.get("count") or 1) <= 1 + FLAP_SECONDS // 300 for e in budget_notices)
    assert operator.runner.running
