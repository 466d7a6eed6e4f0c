"""Which replica runs the background loop, following kopf's own peering decision.

With ``--peering``, kopf pauses the watch handlers of every replica that sees a live
peer of higher priority (or of the same priority: then all pause). kopf offers no public
way to ask "am I paused?", but its decision is a pure function of the peering object's
status (``{identity: {priority, lifetime, lastseen}}``), so the runtime reads the same
object and applies the same rule to gate what kopf does not gate for us: probes,
self-healing restarts and chain status writes. Without peering, the process is active.

Timing (docs/reliability.md has the arithmetic): the object is read every
``CHECK_SECONDS``, and the rule is re-applied to the last successful read on every call,
so a peer that dies is replaced on the first tick after its record expires (``lastseen +
lifetime``), not up to ``CHECK_SECONDS`` later. That cached read is never older than
``CHECK_SECONDS`` while reads succeed, and kopf renews a record at least 5 s before it
expires (``lifetime - randint(5, 10)``, at least 1 s), so a live peer's renewal is always
seen before its previous record runs out. After a failed read the last decision stands.
One rule is added to kopf's: our own record must be alive too. kopf judges only the
others' records, but they judge ours; if it expired (our keep-alive PATCHes have not
landed for a lifetime), another replica may have taken over, so this one's health loop
stands down until the record is renewed. (When kopf's keep-alive finally gives up, after
its retries, kopf stops the whole process; this rule covers the time before.)

A read that fails is never silent: a 403 (the ServiceAccount lacks ``get`` on the
peering resource) or a missing peering object means this replica can never become
active, so it is logged as an ERROR naming the missing permission or object — at once,
then again every ``REPEAT_SECONDS`` while it lasts — counted in
``chainop_leadership_check_errors_total{reason}``, and shown in ``/healthz``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from chainop.kube.client import KubeError

log = logging.getLogger(__name__)

#: How often the peering object is read.
CHECK_SECONDS = 2.0
#: While a problem lasts (403, no peering object, own keep-alive missing), it is logged
#: again this often: one ERROR line a minute is seen in any log tail or log alert, where
#: one every CHECK_SECONDS would drown the rest of the log.
REPEAT_SECONDS = 60.0
#: Our own keep-alive may be absent from the peering status this long after the first
#: read (kopf writes it within a second of starting) before that is reported.
OWN_RECORD_GRACE_SECONDS = 30.0
#: kopf's lifetime for a peer that does not say (kopf._core.engines.peering.Peer).
KOPF_DEFAULT_LIFETIME = 60


class PeeringReader(Protocol):
    """What Leadership needs of the API client (``KubeClient`` is one)."""

    async def read_peering(self, name: str, namespace: str | None) -> dict[str, Any] | None: ...


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def peer_deadline(info: Any) -> float | None:
    """When a peer's record expires (``lastseen + lifetime``), as kopf computes it."""
    if not isinstance(info, Mapping):
        return None
    seen = _parse_time(info.get("lastseen"))
    try:
        lifetime = int(info.get("lifetime", KOPF_DEFAULT_LIFETIME))
    except (TypeError, ValueError):
        return None
    return None if seen is None else seen + lifetime


def is_active(peers: Mapping[str, Any], *, identity: str, priority: int, now: float) -> bool:
    """kopf's rule: active unless a live other peer has a priority >= ours. Pure."""
    for other, info in peers.items():
        if other == identity or not isinstance(info, Mapping):
            continue
        deadline = peer_deadline(info)
        try:
            other_priority = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        alive = deadline is not None and deadline > now
        if alive and other_priority >= priority:
            return False
    return True


class Leadership:
    """Polls the peering object and says whether this replica should act."""

    def __init__(
        self,
        kube: PeeringReader,
        *,
        peering: str | None,
        identity: str,
        priority: int,
        namespace: str | None,
    ) -> None:
        self.kube = kube
        self.peering = peering
        self.identity = identity
        self.priority = priority
        self.namespace = namespace
        self.active = peering is None
        #: What stops this replica from judging (None while reads succeed), for /healthz.
        self.problem: str | None = None
        self._checked_at = float("-inf")
        #: The peering status of the last successful read; None after a failed one.
        self._peers: Mapping[str, Any] | None = None
        self._first_read_at: float | None = None
        self._reported: dict[str, float] = {}  # problem kind -> when last logged
        self._leader_gauge: Gauge | None = None
        self._errors: Counter | None = None

    # ----------------------------------------------------------------- reporting

    @property
    def resource(self) -> str:
        """The peering resource, as RBAC names it."""
        if self.namespace is None:
            return "clusterkopfpeerings.kopf.dev"
        return f"kopfpeerings.kopf.dev in namespace {self.namespace}"

    def export_metrics(self, registry: CollectorRegistry) -> None:
        """Register ``chainop_leader`` and ``chainop_leadership_check_errors_total``."""
        self._leader_gauge = Gauge(
            "chainop_leader",
            "1 while this replica runs the health loop (probes, self-healing, chain "
            "status); 0 while it stands by. Across replicas the sum should be 1.",
            registry=registry,
        )
        self._errors = Counter(
            "chainop_leadership_check_errors_total",
            "Failed reads of the kopf peering object, by reason (Forbidden: RBAC lacks "
            "get on it; NotFound: it does not exist; Unreachable; Error). While they "
            "last this replica cannot become active.",
            ["reason"],
            registry=registry,
        )
        self._leader_gauge.set(1.0 if self.active else 0.0)

    def report(self) -> dict[str, Any]:
        """Leadership as shown in ``/healthz`` (kopf probe ``leadership``)."""
        return {
            "peering": self.peering,
            "identity": self.identity,
            "active": self.active,
            "problem": self.problem,
        }

    def _problem(self, kind: str, message: str, *, now: float) -> None:
        """Record a problem; log it as an ERROR now and every REPEAT_SECONDS after."""
        self.problem = message
        last = self._reported.get(kind)
        if last is None or now - last >= REPEAT_SECONDS:
            self._reported[kind] = now
            log.error("%s", message)

    def _solved(self, kind: str) -> None:
        if self._reported.pop(kind, None) is not None:
            log.info("peering %s: %s solved", self.peering, kind)
        if not self._reported:
            self.problem = None

    def _count(self, reason: str) -> None:
        if self._errors is not None:
            self._errors.labels(reason).inc()

    # ----------------------------------------------------------------- the check

    async def check(self, *, now: float) -> bool:
        """Re-read (every ``CHECK_SECONDS``), re-judge (every call), return whether to act."""
        if self.peering is None:
            return self.active
        if now - self._checked_at >= CHECK_SECONDS:
            self._checked_at = now
            await self._read(now=now)
        if self._peers is None:
            return self.active  # the last read failed: keep the last decision
        own_deadline = peer_deadline(self._peers.get(self.identity))
        active = (
            own_deadline is not None
            and own_deadline > now  # peers see us alive: no one else has taken over
            and is_active(self._peers, identity=self.identity, priority=self.priority, now=now)
        )
        self._own_record(own_deadline, now=now)
        if active != self.active:
            log.info(
                "peering %s: this replica (%s, priority %d) is now %s",
                self.peering,
                self.identity,
                self.priority,
                "active" if active else f"standing by ({self._outranking(now=now)})",
            )
        self.active = active
        if self._leader_gauge is not None:
            self._leader_gauge.set(1.0 if active else 0.0)
        return active

    async def _read(self, *, now: float) -> None:
        assert self.peering is not None
        try:
            obj = await self.kube.read_peering(self.peering, self.namespace)
        except KubeError as error:
            self._peers = None
            if error.status == 403:
                self._count("Forbidden")
                self._problem(
                    "Forbidden",
                    f"peering {self.peering}: HTTP 403 reading the peering object — the "
                    f"ServiceAccount lacks 'get' on {self.resource}, so this replica can "
                    f"never become active: no probes, no benching, no self-healing on any "
                    f"replica while tasks still run. Grant verbs get, list, watch, patch on "
                    f"{self.resource} (the chart's RBAC does; docs/security.md). "
                    f"API server: {error.message}",
                    now=now,
                )
            else:
                self._count("Unreachable" if error.status == 0 else "Error")
                log.warning(
                    "cannot read peering %s: %s; keeping the last decision (%s)",
                    self.peering,
                    error,
                    "active" if self.active else "standing by",
                )
            return
        self._solved("Forbidden")
        if obj is None:
            self._peers = None
            self._count("NotFound")
            self._problem(
                "NotFound",
                f"peering {self.peering}: the peering object ({self.resource}, name "
                f"{self.peering}) does not exist; kopf never creates it and pauses every "
                f"replica until it does. Create it (the chart does when replicaCount > 1).",
                now=now,
            )
            return
        self._solved("NotFound")
        status = obj.get("status")
        self._peers = status if isinstance(status, Mapping) else {}
        if self._first_read_at is None:
            self._first_read_at = now

    def _own_record(self, own_deadline: float | None, *, now: float) -> None:
        """Report our keep-alive missing from the status (kopf's patch refused?) or
        expired (its PATCHes failing: the other replicas take over)."""
        assert self._peers is not None
        if own_deadline is not None and own_deadline <= now:
            self._problem(
                "KeepAliveExpired",
                f"peering {self.peering}: this replica's keep-alive ({self.identity}) "
                f"expired {now - own_deadline:.0f} s ago, so the other replicas consider it "
                f"dead and one of them takes over; its health loop stands down until kopf's "
                f"keep-alive PATCH lands again (look for kopf's PATCH errors above).",
                now=now,
            )
            return
        self._solved("KeepAliveExpired")
        if self.identity in self._peers:
            self._solved("NoKeepAlive")
        elif self._first_read_at is not None and now - self._first_read_at > (
            OWN_RECORD_GRACE_SECONDS
        ):
            self._problem(
                "NoKeepAlive",
                f"peering {self.peering}: this replica's keep-alive ({self.identity}) is "
                f"not in the peering status after {OWN_RECORD_GRACE_SECONDS:.0f} s, so it "
                f"stays inactive; kopf writes it with 'patch' on {self.resource} "
                f"(look for kopf's errors above).",
                now=now,
            )

    def _outranking(self, *, now: float) -> str:
        """Who keeps this replica standing by (for the log)."""
        if self._peers is None or self.identity not in self._peers:
            return "own keep-alive not yet in the peering status"
        own = peer_deadline(self._peers.get(self.identity))
        if own is not None and own <= now:
            return "own keep-alive expired"
        others = []
        for other, info in self._peers.items():
            deadline = peer_deadline(info)
            if other == self.identity or deadline is None or deadline <= now:
                continue
            priority = info.get("priority") if isinstance(info, Mapping) else None
            others.append(f"{other} priority {priority} until +{deadline - now:.1f}s")
        return "live peer " + ", ".join(others) if others else "no live peer"
