"""Conditions in the shape the Kubernetes API conventions ask for.

``lastTransitionTime`` changes only when a condition's ``status`` flips, so watchers can
tell "still failing" from "just started failing"; everything else is updated in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from chainop.core.models import Condition

Status = Literal["True", "False", "Unknown"]


def set_condition(
    conditions: Sequence[Condition],
    *,
    type: str,
    status: Status,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
) -> list[Condition]:
    """Return ``conditions`` with ``type`` set; other conditions keep their order.

    Purely computational, no side effects.
    """
    updated: list[Condition] = []
    found = False
    for condition in conditions:
        if condition.type != type:
            updated.append(condition)
            continue
        found = True
        transition = (
            condition.last_transition_time
            if condition.status == status and condition.last_transition_time is not None
            else now
        )
        updated.append(
            Condition(
                type=type,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=transition,
                observed_generation=observed_generation,
            )
        )
    if not found:
        updated.append(
            Condition(
                type=type,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=observed_generation,
            )
        )
    return updated


def get_condition(conditions: Sequence[Condition], type: str) -> Condition | None:
    """The condition of that type, or None."""
    return next((c for c in conditions if c.type == type), None)
