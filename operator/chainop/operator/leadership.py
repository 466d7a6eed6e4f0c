"""Which replica runs the background loop, following kopf's own peering decision.

With ``--peering``, kopf pauses the watch handlers of every replica that sees a live
peer of higher priority (or of the same priority: then all pause). kopf offers no public
way to ask "am I paused?", but its decision is a pure function of the peering object's
status (``{identity: {priority, lifetime, lastseen}}``), so the runtime reads the same
object and applies the same rule to gate what kopf does not gate for us: probes,
self-healing restarts and chain status writes. Without peering, the process is active.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from chainop.kube.client import KubeClient, KubeError

log = logging.getLogger(__name__)

#: How often the peering object is read.
CHECK_SECONDS = 2.0


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


def is_active(peers: Mapping[str, Any], *, identity: str, priority: int, now: float) -> bool:
    """kopf's rule: active unless a live other peer has a priority >= ours. Pure."""
    for other, info in peers.items():
        if other == identity or not isinstance(info, Mapping):
            continue
        seen = _parse_time(info.get("lastseen"))
        try:
            lifetime = float(info.get("lifetime", 60))
            other_priority = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        alive = seen is not None and seen + lifetime > now
        if alive and other_priority >= priority:
            return False
    return True


class Leadership:
    """Polls the peering object and says whether this replica should act."""

    def __init__(
        self,
        kube: KubeClient,
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
        self._checked_at = float("-inf")

    async def check(self, *, now: float) -> bool:
        """Refresh (at most every ``CHECK_SECONDS``) and return whether to act."""
        if self.peering is None or now - self._checked_at < CHECK_SECONDS:
            return self.active
        self._checked_at = now
        try:
            obj = await self.kube.read_peering(self.peering, self.namespace)
        except KubeError as error:
            log.warning(
                "cannot read peering %s: %s; keeping the last decision", self.peering, error
            )
            return self.active
        peers = (obj or {}).get("status") or {}
        active = self.identity in peers and is_active(
            peers, identity=self.identity, priority=self.priority, now=now
        )
        if active != self.active:
            log.info(
                "peering %s: this replica (%s, priority %d) is now %s",
                self.peering,
                self.identity,
                self.priority,
                "active" if active else "standing by",
            )
        self.active = active
        return active
