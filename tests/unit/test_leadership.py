"""We test these aspects: the replica-activity rule mirrored from kopf's peering.

* alone, or with only dead or lower-priority peers, a replica is active;
* a live peer with a higher or equal priority makes it stand by;
* garbage in the peering status is ignored, never raised.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chainop.operator.leadership import is_active

NOW = 1_800_000_000.0


def seen(seconds_ago: float) -> str:
    return datetime.fromtimestamp(NOW - seconds_ago, tz=UTC).isoformat()


@pytest.mark.parametrize(
    ("peers", "active"),
    [
        ({}, True),
        ({"me": {"priority": 5, "lifetime": 60, "lastseen": seen(1)}}, True),
        ({"other": {"priority": 4, "lifetime": 60, "lastseen": seen(1)}}, True),
        ({"other": {"priority": 6, "lifetime": 60, "lastseen": seen(1)}}, False),
        ({"other": {"priority": 5, "lifetime": 60, "lastseen": seen(1)}}, False),
        ({"other": {"priority": 9, "lifetime": 60, "lastseen": seen(61)}}, True),
        ({"other": "garbage"}, True),
        ({"other": {"priority": "x", "lastseen": seen(1)}}, True),
        ({"other": {"priority": 9, "lifetime": 60, "lastseen": "not a time"}}, True),
    ],
)
def test_active_unless_a_live_peer_outranks_or_ties(peers, active):
    assert is_active(peers, identity="me", priority=5, now=NOW) is active
