"""Self-healing as pure transitions: exclusion, restart budget, recovery, restore.

The lifecycle of an in-cluster provider that breaks (DESIGN.md, "Health and
self-healing")::

    Healthy ─probe fails x unhealthyThreshold→ Unhealthy ─exclude→ Excluded
       ↑                                                        │ restart (once, budgeted)
       └──────── first successful recovery probe (restore) ─────┘ recovery probes, backoff

Restart bookkeeping belongs to the *Deployment*, not to a provider of one chain, because
several chains may name the same Deployment: ``RestartLedger`` holds the recent restart
times and whether one is in flight, and the operator persists it on the Deployment
itself (see ``chainop.kube``), so every chain and every operator restart sees the same
budget. Everything here is purely computational; ``now`` is always passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from chainop.core.health import POD_REASONS, ProviderHealth
from chainop.core.models import RecoverySpec

HOUR = 3600.0


def recovery_delay(policy: RecoverySpec, *, attempts: int) -> float:
    """Delay before recovery probe number ``attempts + 1``: doubling, capped."""
    exponent = min(max(attempts, 0), 64)
    return float(min(policy.initial_seconds * (2.0**exponent), policy.max_seconds))


def exclude(health: ProviderHealth, *, now: float, recovery: RecoverySpec) -> ProviderHealth:
    """Take an Unhealthy provider out of the active order and schedule recovery probes.

    Idempotent: excluding an Excluded provider changes nothing (its schedule stands).
    """
    if health.excluded:
        return health
    return replace(
        health,
        unhealthy=True,
        excluded_since=now,
        recovery_attempts=0,
        next_recovery_time=now + recovery_delay(recovery, attempts=0),
    )


def recovery_due(health: ProviderHealth, *, now: float) -> bool:
    """Whether an Excluded provider's next recovery probe is due."""
    return (
        health.excluded
        and health.next_recovery_time is not None
        and now >= health.next_recovery_time
    )


def recovery_failed(
    health: ProviderHealth, *, now: float, recovery: RecoverySpec, error: str
) -> ProviderHealth:
    """A recovery probe failed: back off (doubling, capped) and try again later.

    While the backend's pod cannot run (a crash loop), ``lastError`` keeps saying so: the
    probe's "cannot connect" is only a consequence of it.
    """
    attempts = health.recovery_attempts + 1
    return replace(
        health,
        recovery_attempts=attempts,
        next_recovery_time=now + recovery_delay(recovery, attempts=attempts),
        last_probe_time=now,
        last_error=health.last_error if health.reason in POD_REASONS else error,
    )


def restore(health: ProviderHealth, *, now: float, latency_ms: int | None) -> ProviderHealth:
    """The first successful recovery probe: back to Healthy, at its original position.

    The original position needs no bookkeeping: ``active_order`` is always the spec's
    order minus Excluded providers, so a restored provider is back where it was.
    """
    return replace(
        health,
        unhealthy=False,
        consecutive_failures=0,
        consecutive_probe_failures=0,
        benchings=0,
        cooldown_until=None,
        excluded_since=None,
        recovery_attempts=0,
        next_recovery_time=None,
        last_probe_time=now,
        last_probe_latency_ms=latency_ms,
        last_error="",
        slow=False,
        reason="",
        request_failures=(),
        served=(),
    )


def active_order(spec_order: Sequence[str], health: Iterable[ProviderHealth]) -> list[str]:
    """The spec's order without Excluded providers. Purely computational."""
    excluded = {h.name for h in health if h.excluded}
    return [name for name in spec_order if name not in excluded]


# --------------------------------------------------------------------------- restarts


@dataclass(frozen=True, slots=True)
class RestartLedger:
    """Restarts chainop ordered for one Deployment, shared by every chain naming it.

    ``history`` holds the times of restarts (epoch seconds); ``in_flight_since`` is set
    from the patch until the backend is seen healthy again (or the grace runs out).
    """

    history: tuple[float, ...] = ()
    in_flight_since: float | None = None

    def recent(self, *, now: float) -> tuple[float, ...]:
        """Restarts within the last hour."""
        return tuple(t for t in self.history if now - t < HOUR)

    def in_flight(self, *, now: float, grace_seconds: float) -> bool:
        """Whether a restart is under way (ordered less than ``grace_seconds`` ago)."""
        return self.in_flight_since is not None and now - self.in_flight_since < grace_seconds


@dataclass(frozen=True, slots=True)
class RestartVerdict:
    """Whether to restart now, and why not when not (for Events and logs)."""

    allowed: bool
    reason: str


def may_restart(
    ledger: RestartLedger,
    *,
    now: float,
    max_per_hour: int,
    grace_seconds: float,
    underway: str | None = None,
) -> RestartVerdict:
    """Decide whether a Deployment may be restarted now. Purely computational.

    Never two restarts in flight, never more than ``max_per_hour`` in any hour. A restart
    is in flight for ``grace_seconds`` after it was ordered, and for as long after that as
    its rollout has not yet given the backend its chance (``underway``, from
    ``restart_underway``): the grace is for a *running* backend to come up, not for the
    kubelet to get round to starting it.
    """
    if ledger.in_flight(now=now, grace_seconds=grace_seconds):
        return RestartVerdict(False, "RestartInFlight")
    if ledger.in_flight_since is not None and underway:
        return RestartVerdict(False, "RestartInFlight")
    if max_per_hour <= 0:
        return RestartVerdict(False, "RestartsDisabled")
    if len(ledger.recent(now=now)) >= max_per_hour:
        return RestartVerdict(False, "RestartBudgetExhausted")
    return RestartVerdict(True, "RestartAllowed")


#: Waiting reasons of a container the kubelet has not started yet (as opposed to one it
#: cannot start, ``POD_REASONS``).
STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})

#: ``spec.progressDeadlineSeconds`` when a Deployment does not say (the API's default).
PROGRESS_DEADLINE_SECONDS = 600.0

#: The longest chainop waits for a rollout, whatever the Deployment says: the hour of the
#: restart budget (``progressDeadlineSeconds: 2147483647`` means "no deadline").
LONGEST_ROLLOUT_WAIT = HOUR

#: A pod still there this long after its ``deletionTimestamp`` (which is the end of its
#: termination grace) is stuck, e.g. on a node that died: not a shutdown to wait for.
STUCK_TERMINATING_SECONDS = 30.0


def _epoch(stamp: object) -> float | None:
    """An RFC 3339 time from the API (``2026-12-02T16:06:46Z``) in epoch seconds."""
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def restart_underway(
    deployment: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    now: float,
    since: float | None,
    grace_seconds: float,
) -> str | None:
    """Why the restart chainop ordered at ``since`` has not yet given the backend its
    chance, in plain words, or None. Purely computational.

    ``deployment`` and ``pods`` are the objects as the API serves them. On a real node,
    the time between the patch and a new container running is the kubelet's and the
    scheduler's, not the backend's: the old pod's termination grace (``Recreate`` waits for
    it), creating the sandbox, pulling, init containers. On a busy node that took more than
    15 s (CI, kubelet v1.36), so a grace counted from the patch ran out before the new pod
    had started, and a second restart replaced a pod that had never run. Under way here
    means: the Deployment controller has not acted on the new template; no pod is of it
    yet; an old pod on a node is still shutting down; or a live pod on a node has a
    container not started yet, not past its startup probe, or started less than
    ``grace_seconds`` ago (old pods are told from new ones by that start only, so an old
    pod's container restarted just now also waits). Pods no node has taken are not
    counted: without a scheduler (a control plane with no nodes) they never will be, and
    the grace from the patch stands; nor are finished pods (Succeeded, or Failed, as
    the kubelet leaves a pod it rejected), nor a pod stuck terminating. Nothing is under
    way once ``progressDeadlineSeconds`` (at most an hour) have passed since the restart
    or the controller says the rollout exceeded it: a rollout that stuck is not one to
    wait for. A crash-looping new pod is ``pod_problem``'s, checked first.
    """
    if since is None:
        return None
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    if spec.get("paused"):
        return None  # a paused Deployment rolls nothing out: nothing to wait for
    deadline = float(spec.get("progressDeadlineSeconds") or PROGRESS_DEADLINE_SECONDS)
    if now - since >= min(deadline, LONGEST_ROLLOUT_WAIT):
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == (
            "ProgressDeadlineExceeded"
        ):
            return None
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return "the Deployment controller has not yet acted on the restart"
    replicas = int(spec.get("replicas", 1) or 0)
    if replicas and not status.get("updatedReplicas"):
        # Recreate: the new ReplicaSet gets its pods once the old ones are gone. (Only
        # "none yet": with a new pod in place, the pods below say whether it has run.)
        return f"no pod of the new template yet ({replicas} wanted)"
    for pod in pods:
        metadata = pod.get("metadata") or {}
        name = metadata.get("name", "?")
        if not (pod.get("spec") or {}).get("nodeName"):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        deleting = metadata.get("deletionTimestamp")
        if deleting:
            ends = _epoch(deleting)
            if ends is None or now - ends < STUCK_TERMINATING_SECONDS:
                return f"old pod {name} is still shutting down"
            continue
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if not statuses:
            return f"pod {name} has no containers yet"
        for container in statuses:
            state = container.get("state") or {}
            label = f"pod {name}: container {container.get('name', '?')}"
            waiting = (state.get("waiting") or {}).get("reason")
            if waiting in STARTING_REASONS:
                return f"{label} is in {waiting}"
            running = state.get("running")
            if running is None:
                continue
            if container.get("started") is False:
                return f"{label} has not passed its startup probe yet"
            started = _epoch(running.get("startedAt"))
            if started is not None and now - started < grace_seconds:
                return f"{label} started {max(now - started, 0):.0f}s ago"
    return None


def record_restart(ledger: RestartLedger, *, now: float) -> RestartLedger:
    """A restart was ordered: add it to the history (pruned to the hour), mark in flight."""
    return RestartLedger(history=(*ledger.recent(now=now), now), in_flight_since=now)


def restart_settled(ledger: RestartLedger) -> RestartLedger:
    """The backend answered again: the restart is no longer in flight."""
    return replace(ledger, in_flight_since=None)


def note_restart(health: ProviderHealth, *, now: float) -> ProviderHealth:
    """Count a restart on the provider's own status (``restarts``, ``lastRestartTime``)."""
    return replace(health, restarts=health.restarts + 1, last_restart_time=now)


# --------------------------------------------------------------------------- backend pods


@dataclass(frozen=True, slots=True)
class PodProblem:
    """Why a backend's pods cannot run, in the kubelet's word and in plain words."""

    reason: str
    message: str


def pod_problem(pods: Sequence[Mapping[str, Any]]) -> PodProblem | None:
    """The first pod of a backend whose container is stuck, or None. Purely computational.

    ``pods`` are Pod objects as the API serves them (dicts). A pod being deleted is the
    old one of a restart and is ignored. Stuck means a waiting reason a restart cannot fix
    (CrashLoopBackOff, ImagePullBackOff, ...) — or a container that is not ready and
    exited with a non-zero code (now, or before the kubelet restarted it, even if it is
    briefly running again between two crashes): a real kubelet
    (v1.36, seen on a node) shows a crash-looping container as ``terminated`` (Error,
    exit 1) for most of each back-off and says ``waiting: CrashLoopBackOff`` only late.
    """
    for pod in pods:
        metadata = pod.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            continue
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        for container in statuses:
            state = container.get("state") or {}
            waiting = state.get("waiting") or {}
            reason = waiting.get("reason")
            restarts = int(container.get("restartCount") or 0)
            last = (state.get("terminated") or {}) or (
                (container.get("lastState") or {}).get("terminated") or {}
            )
            # A container of a Deployment (restartPolicy Always) that exited non-zero is
            # restarted by the kubelet itself; a new ReplicaSet would crash the same way.
            crashed = (
                not container.get("ready")
                and (restarts >= 1 or "terminated" in state)
                and last.get("exitCode") not in (None, 0)
            )
            if reason not in POD_REASONS:
                if not crashed:
                    continue
                reason = "CrashLoopBackOff"
            ended = ""
            if last:
                ended = f"; last exit code {last.get('exitCode')}"
                if last.get("reason"):
                    ended += f" ({last['reason']})"
            detail = waiting.get("message") or ""
            message = (
                f"pod {metadata.get('name', '?')}: container {container.get('name', '?')} is in "
                f"{reason} (restarted {restarts} times{ended})"
                + (f": {detail[:160]}" if detail else "")
                + "; the kubelet keeps retrying it, and restarting the Deployment would not "
                "help, so chainop will not restart it again"
            )
            return PodProblem(reason=str(reason), message=message)
    return None
