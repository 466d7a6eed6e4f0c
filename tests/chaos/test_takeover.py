"""We test these aspects: the operator's own failover is fast (issue 13, item 5).

Two replicas peer through kopf with the default ``--peering-lifetime`` (10 s unless
``CHAINOP_PEERING_LIFETIME`` says otherwise). The worst moment to lose the active one is
right after it renewed its keep-alive: its record then stays valid a full lifetime.

* the active replica is SIGKILLed right after a renewal (the test polls the peering
  object and kills within a few tens of ms of a new ``lastseen``); every other round at a
  random moment instead (the typical case);
* the survivor becomes active (``chainop_leader``) and has probed within
  ``lifetime + CHECK_SECONDS + tick + probe interval + probe timeout`` of the killed
  replica's last renewal — a bound computed from the configuration (14.1 s with the
  defaults, under the issue's 15 s), never a wall-clock speed — and neither chainop nor
  kopf on the survivor acted before that record expired (``lastseen + lifetime``);
* tasks created right after the kill are finished by the survivor;
* the replica that survived the last round self-heals: a hung backend is excluded, its
  Deployment restarted (the supervisor plays kubelet) and restored — by that replica
  alone.

Each round prints ``chaos/takeover`` figures (docs/reliability.md quotes them).
``CHAINOP_TAKEOVER_ROUNDS`` (default 2) sets the number of kills.
"""

from __future__ import annotations

import os
import random
import re
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from chainop.cli import build_parser
from chainop.operator.leadership import CHECK_SECONDS
from chainop.operator.restarts import RESTARTED_AT
from chainop.testing.cluster import KubeApi, free_port
from chainop.testing.fake_backend import FakeBackendControl
from tests.chaos.conftest import ChaosOperator
from tests.chaos.test_peering import PAUSED, RESUMED, install_peering
from tests.e2e.conftest import operator_command
from tests.e2e.kit import CHAINS, Kit

pytestmark = pytest.mark.cluster

PEERING = "chainop-takeover"
#: What the replicas run with: the CLI's default lifetime and the tests' tick.
LIFETIME = build_parser().parse_args(["run"]).peering_lifetime
_command = operator_command("ns", 0, 0)
TICK = float(_command[_command.index("--tick") + 1])
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 1.0
PROBING = {
    "failureThreshold": 2,
    "probe": {
        "intervalSeconds": int(PROBE_INTERVAL),
        "timeoutSeconds": int(PROBE_TIMEOUT),
        "unhealthyThreshold": 2,
    },
}
#: Worst case, from the configuration: the killed replica's record lasts LIFETIME after
#: its last renewal; chainop re-judges it every tick but reads the peering object every
#: CHECK_SECONDS (allowance for kopf's resume + re-list, which chainop waits for to know
#: the chains); then the first probe is due within an interval and ends within its timeout.
BOUND = LIFETIME + CHECK_SECONDS + TICK + PROBE_INTERVAL + PROBE_TIMEOUT
ROUNDS = int(os.environ.get("CHAINOP_TAKEOVER_ROUNDS", "2"))
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] (.*)$", re.MULTILINE)


def backend_command(port: int) -> list[str]:
    module = "chainop.testing.fake_backend"
    return [sys.executable, "-m", module, "--port", str(port), "--name", "vllm"]


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if match:
            total += float(match.group(2))
    return total


def leader(replica: ChaosOperator) -> bool:
    try:
        return metric(replica.metrics(), "chainop_leader") == 1
    except OSError:
        return False


def kopf_acting(replica: ChaosOperator) -> bool:
    """kopf's word for the current process (test_peering.acting reads every start's log)."""
    log = replica.runner.read_log() if replica.runner else ""
    return log.rfind(RESUMED) > log.rfind(PAUSED)


def identity(replica: ChaosOperator) -> str:
    """chainop's peering identity of a local process (no POD_ID): ``hostname/pid``."""
    assert replica.runner is not None
    return f"{socket.gethostname()}/{replica.runner.pid}"


def peers(api: KubeApi, namespace: str) -> dict[str, Any]:
    obj = api.custom.get_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", PEERING
    )
    return dict(obj.get("status") or {})


def lastseen(api: KubeApi, namespace: str, who: str) -> float | None:
    info = peers(api, namespace).get(who)
    if not isinstance(info, dict) or "lastseen" not in info:
        return None
    return datetime.fromisoformat(info["lastseen"]).timestamp()


def log_times(replica: ChaosOperator, pattern: str, *, after: float) -> list[float]:
    """Times (the operator's own log clock) of its log lines matching ``pattern``."""
    times = []
    for stamp, message in LOG_TIME.findall(replica.runner.read_log() if replica.runner else ""):
        if re.search(pattern, message):
            moment = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if moment >= after:
                times.append(moment)
    return times


@dataclass
class Round:
    kind: str
    renewal_to_kill: float
    active: float
    kopf_resumed: float
    probed: float

    @property
    def kill_to_probe(self) -> float:
        return self.probed - self.renewal_to_kill


def one_leader(kit: Kit, api: KubeApi, replicas: list[ChaosOperator]) -> ChaosOperator:
    """Wait until both replicas are in the peering object and exactly one leads — in
    chainop's and in kopf's eyes — and that holds across two reads of the peering object."""

    def state() -> tuple[bool, ...] | None:
        status = peers(api, kit.namespace)
        if not all(identity(r) in status for r in replicas):
            return None
        leading = tuple(leader(r) for r in replicas)
        if sum(leading) != 1 or leading != tuple(kopf_acting(r) for r in replicas):
            return None
        return leading

    def settled() -> bool:
        first = state()
        if first is None:
            return False
        time.sleep(2 * CHECK_SECONDS + 0.5)
        return state() == first

    kit.wait_until(settled, timeout=60 + 2 * LIFETIME, what="exactly one leader")
    return next(r for r in replicas if leader(r))


def kill_and_measure(
    kit: Kit, api: KubeApi, victim: ChaosOperator, survivor: ChaosOperator, *, worst: bool
) -> tuple[Round, float]:
    who = identity(victim)
    before = lastseen(api, kit.namespace, who)
    assert before is not None, peers(api, kit.namespace)
    if worst:  # kill right after the next renewal lands
        end = time.time() + LIFETIME + 5
        while lastseen(api, kit.namespace, who) == before:
            assert time.time() < end, "no renewal within a lifetime"
            time.sleep(0.02)
    else:
        time.sleep(random.uniform(0, max(1, LIFETIME - 5)))
    victim_kill_at = time.time()
    assert victim.runner is not None
    assert victim.runner.pid is not None
    os.killpg(victim.runner.pid, 9)
    renewed = lastseen(api, kit.namespace, who)  # no renewal after a SIGKILL: the last one
    assert renewed is not None
    deadline = renewed + LIFETIME
    survivor_text = survivor.metrics()
    probes_before = metric(survivor_text, "chainop_probes_total")
    tasks_before = metric(survivor_text, "chainop_tasks_total")
    names = [f"after-kill-{victim.starts}-{victim.pids[-1]}-{i}" for i in range(3)]
    for name in names:
        kit.create_task(name, content=name, timeoutSeconds=300)

    active_at = probed_at = None
    end = time.time() + BOUND + 30
    while probed_at is None and time.time() < end:
        text = survivor.metrics()
        now = time.time()
        if active_at is None and metric(text, "chainop_leader") == 1:
            active_at = now
        if metric(text, "chainop_probes_total") > probes_before:
            probed_at = now
        time.sleep(0.05)
    victim.runner.stop(timeout=5)
    tail = survivor.all_logs()[-3000:]
    assert active_at is not None, tail
    assert probed_at is not None, tail

    # Never before the record expired: the survivor's own log clock says when it switched.
    chainop_active = log_times(survivor, r"is now active", after=victim_kill_at - 1)
    kopf_resumed = log_times(survivor, RESUMED, after=victim_kill_at - 1)
    assert chainop_active, tail
    assert kopf_resumed, tail
    assert min(chainop_active) >= deadline - 0.002, (min(chainop_active), deadline)
    assert min(kopf_resumed) >= deadline - 0.002, (min(kopf_resumed), deadline)

    for name in names:
        status = kit.wait_task(name, timeout=120)
        assert status["phase"] == "Succeeded", (name, status)
    assert metric(survivor.metrics(), "chainop_tasks_total") - tasks_before == len(names)

    figures = Round(
        kind="after renewal" if worst else "random moment",
        renewal_to_kill=victim_kill_at - renewed,
        active=active_at - renewed,
        kopf_resumed=min(kopf_resumed) - renewed,
        probed=probed_at - renewed,
    )
    return figures, deadline


@pytest.mark.timeout(900)
def test_survivor_takes_over_within_the_configured_lifetime(
    kit: Kit, chaos_operator, backends, supervisor, kube_api: KubeApi, kubeconfig
) -> None:
    assert BOUND <= 15, f"the configuration allows {BOUND} s, over the 15 s goal"
    install_peering(kubeconfig, kit.namespace, PEERING)
    port = free_port()
    kit.create_deployment("vllm")
    supervisor.bind(
        kit.namespace,
        "vllm",
        backend_command(port),
        port,
    )
    cloud = backends("cloud")
    kit.create_chain(
        "default",
        [
            kit.provider(
                "vllm", f"http://127.0.0.1:{port}", "Sovereign", backend={"deployment": "vllm"}
            ),
            kit.provider("cloud", cloud.url),
        ],
        health=PROBING,
        selfHealing={"recovery": {"initialSeconds": 1, "maxSeconds": 2}},
        taskDefaults={"allowDelegation": True},
    )
    replicas = [chaos_operator("--peering", PEERING) for _ in range(2)]
    for replica in replicas:
        replica.start().wait_started()
    kit.chain_ready("default", timeout=60)

    rounds: list[Round] = []
    for number in range(ROUNDS):
        active = one_leader(kit, kube_api, replicas)
        survivor = next(r for r in replicas if r is not active)
        who = identity(survivor)
        kit.wait_until(
            lambda who=who: lastseen(kube_api, kit.namespace, who) is not None,
            timeout=30,
            what="the survivor's keep-alive in the peering object",
        )
        figures, _ = kill_and_measure(kit, kube_api, active, survivor, worst=number % 2 == 0)
        rounds.append(figures)
        print(
            f"\nchaos/takeover round {number + 1} ({figures.kind}): lifetime {LIFETIME} s, "
            f"killed {figures.renewal_to_kill:.2f} s after its renewal; survivor active "
            f"{figures.active:.2f} s, kopf resumed {figures.kopf_resumed:.2f} s, first probe "
            f"{figures.probed:.2f} s after that renewal ({figures.kill_to_probe:.2f} s after the "
            f"kill; bound {BOUND:.1f} s)"
        )
        assert figures.probed <= BOUND, figures
        active.start().wait_started()  # the pod comes back (a new process, new priority)

    # The replica in charge now self-heals a hung backend; the other one touches nothing.
    active = one_leader(kit, kube_api, replicas)
    standby = next(r for r in replicas if r is not active)
    restarts_before = metric(active.metrics(), "chainop_backend_restarts_total")
    FakeBackendControl(f"http://127.0.0.1:{port}").set(mode="hang")
    try:
        supervisor.wait_for_restarts(kit.namespace, "vllm", 1, timeout=60)
    except Exception as error:
        status = kit.get(CHAINS, "default").get("status")
        raise AssertionError(f"{error}\nchain status: {status}\n{active.log()[-2000:]}") from None
    template = kit.deployment("vllm")["spec"]["template"]
    assert RESTARTED_AT in (template.get("metadata") or {}).get("annotations", {})
    kit.wait_until(
        lambda: (
            (kit.get(CHAINS, "default").get("status") or {}).get("activeOrder") == ["vllm", "cloud"]
            and kit.provider_status("default", "vllm").get("state") == "Healthy"
        ),
        timeout=60,
        what="vllm restored at the head",
    )
    assert metric(active.metrics(), "chainop_backend_restarts_total") == restarts_before + 1
    assert metric(standby.metrics(), "chainop_backend_restarts_total") == 0
    assert not leader(standby)
    worst = max(r.probed for r in rounds)
    print(
        f"\nchaos/takeover: {ROUNDS} kills, lifetime {LIFETIME} s, worst first probe "
        f"{worst:.2f} s after the killed replica's last renewal (bound {BOUND:.1f} s); "
        f"the survivor restarted the hung backend and restored it"
    )
