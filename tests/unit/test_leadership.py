"""We test these aspects: which replica runs the health loop, mirrored from kopf's peering.

* the rule: alone, or with only dead or lower-priority peers, a replica is active; a
  live peer with a higher or equal priority makes it stand by; garbage in the peering
  status is ignored, never raised; a peer's record lasts its own ``lifetime`` (whole
  seconds, as kopf reads it);
* the poll: the object is read every ``CHECK_SECONDS``, but the rule is re-applied to
  the last read on every call, so a dead peer is replaced on the first call after its
  record expires; after a failed read the last decision stands (no takeover on stale
  data);
* a failed read is loud: a 403 is an ERROR naming the verb and resource to grant, logged
  at once and again every ``REPEAT_SECONDS`` (not every check), counted by reason in
  ``chainop_leadership_check_errors_total``, shown in ``report()`` (/healthz); so is a
  missing peering object and a keep-alive of ours that never shows up; all clear when
  the read works again; ``chainop_leader`` follows the decision;
* our own record expired (kopf's keep-alive not landing): the others take over, so this
  replica's health loop stands down, with an ERROR, until the record is renewed;
* ``--peering-lifetime``: default 10 s, refused below kopf's renewal margin.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from chainop.cli import build_parser
from chainop.kube.client import KubeError
from chainop.operator.leadership import (
    CHECK_SECONDS,
    OWN_RECORD_GRACE_SECONDS,
    REPEAT_SECONDS,
    Leadership,
    is_active,
)

NOW = 1_800_000_000.0


def seen(seconds_ago: float, now: float = NOW) -> str:
    return datetime.fromtimestamp(now - seconds_ago, tz=UTC).isoformat()


@pytest.mark.parametrize(
    ("peers", "active"),
    [
        ({}, True),
        ({"me": {"priority": 5, "lifetime": 60, "lastseen": seen(1)}}, True),
        ({"other": {"priority": 4, "lifetime": 60, "lastseen": seen(1)}}, True),
        ({"other": {"priority": 6, "lifetime": 60, "lastseen": seen(1)}}, False),
        ({"other": {"priority": 5, "lifetime": 60, "lastseen": seen(1)}}, False),
        ({"other": {"priority": 9, "lifetime": 60, "lastseen": seen(61)}}, True),
        ({"other": {"priority": 9, "lifetime": 10, "lastseen": seen(9.9)}}, False),
        ({"other": {"priority": 9, "lifetime": 10, "lastseen": seen(10)}}, True),
        ({"other": {"priority": 9, "lastseen": seen(59)}}, False),  # kopf's default: 60
        ({"other": "garbage"}, True),
        ({"other": {"priority": "x", "lastseen": seen(1)}}, True),
        ({"other": {"priority": 9, "lifetime": 60, "lastseen": "not a time"}}, True),
        ({"other": {"priority": 9, "lifetime": "x", "lastseen": seen(1)}}, True),
    ],
)
def test_active_unless_a_live_peer_outranks_or_ties(peers, active):
    assert is_active(peers, identity="me", priority=5, now=NOW) is active


class FakeKube:
    """``read_peering`` answering from ``self.answer``: a body, None (404) or an error."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] | KubeError | None = None
        self.reads: list[tuple[str, str | None]] = []

    async def read_peering(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        self.reads.append((name, namespace))
        if isinstance(self.answer, KubeError):
            raise self.answer
        return self.answer


def peering(**peers: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "chainop"}, "status": peers}


FORBIDDEN = KubeError(
    403,
    "Forbidden",
    'clusterkopfpeerings.kopf.dev "chainop" is forbidden: User '
    '"system:serviceaccount:chainop-system:chainop" cannot get resource '
    '"clusterkopfpeerings" in API group "kopf.dev" at the cluster scope',
)


def leadership(
    kube: FakeKube, namespace: str | None = None
) -> tuple[Leadership, CollectorRegistry]:
    registry = CollectorRegistry()
    result = Leadership(kube, peering="chainop", identity="me", priority=5, namespace=namespace)
    result.export_metrics(registry)
    return result, registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_standalone_is_active_and_reads_nothing():
    kube = FakeKube()
    alone = Leadership(kube, peering=None, identity="me", priority=0, namespace=None)
    assert await alone.check(now=NOW)
    assert kube.reads == []


async def test_reads_every_check_seconds_and_takes_over_when_the_peer_record_expires():
    kube = FakeKube()
    lead, registry = leadership(kube)
    renewed = NOW - 0.5  # the other replica renewed just before, then died
    kube.answer = peering(
        me={"priority": 5, "lifetime": 10, "lastseen": seen(0)},
        other={"priority": 9, "lifetime": 10, "lastseen": seen(0.5)},
    )
    assert not await lead.check(now=NOW)
    assert sample(registry, "chainop_leader") == 0
    deadline = renewed + 10
    # Between reads the last read is re-judged: active on the first call past the deadline,
    # with no new read needed (the reads happen every CHECK_SECONDS regardless).
    t = NOW
    while t < deadline:
        assert not await lead.check(now=t), t
        t += 0.25
    reads = len(kube.reads)
    assert await lead.check(now=deadline + 0.001)
    assert len(kube.reads) <= reads + 1
    assert sample(registry, "chainop_leader") == 1


async def test_a_renewal_seen_in_time_keeps_the_replica_standing_by():
    kube = FakeKube()
    lead, _ = leadership(kube)
    kube.answer = peering(
        me={"priority": 5, "lifetime": 10, "lastseen": seen(0)},
        other={"priority": 9, "lifetime": 10, "lastseen": seen(0)},
    )
    assert not await lead.check(now=NOW)
    # kopf renews at least 5 s before expiry; a read every CHECK_SECONDS sees it in time.
    kube.answer = peering(
        me={"priority": 5, "lifetime": 10, "lastseen": seen(0)},
        other={"priority": 9, "lifetime": 10, "lastseen": seen(-5)},
    )
    t = NOW
    while t < NOW + 14.9:
        assert not await lead.check(now=t), t
        t += 0.25


async def test_a_failed_read_keeps_the_last_decision_instead_of_judging_stale_data():
    kube = FakeKube()
    lead, registry = leadership(kube)
    kube.answer = peering(
        me={"priority": 5, "lifetime": 10, "lastseen": seen(0)},
        other={"priority": 9, "lifetime": 10, "lastseen": seen(0)},
    )
    assert not await lead.check(now=NOW)
    kube.answer = KubeError(0, "Unreachable", "connection refused")
    assert not await lead.check(now=NOW + CHECK_SECONDS)
    assert not await lead.check(now=NOW + 30)  # the other's record has expired, but unseen
    assert sample(registry, "chainop_leadership_check_errors_total", reason="Unreachable") >= 1
    assert lead.problem is None  # transient: a warning, not a standing problem


async def test_forbidden_is_an_error_naming_the_missing_verb_repeated_not_flooded(caplog):
    kube = FakeKube()
    lead, registry = leadership(kube)
    kube.answer = FORBIDDEN
    caplog.set_level(logging.INFO, logger="chainop.operator.leadership")
    t = NOW
    while t < NOW + 2 * REPEAT_SECONDS + 1:
        assert not await lead.check(now=t)
        t += 0.25
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3  # at once, after 60 s, after 120 s — not one per check
    message = errors[0].getMessage()
    assert "403" in message
    assert "'get' on clusterkopfpeerings.kopf.dev" in message
    assert "never become active" in message
    assert "cannot get resource" in message  # the API server's own words
    checks = int((2 * REPEAT_SECONDS + 1) // CHECK_SECONDS)
    assert sample(registry, "chainop_leadership_check_errors_total", reason="Forbidden") >= checks
    report = lead.report()
    assert report["active"] is False
    assert "clusterkopfpeerings" in report["problem"]

    # Granted: the problem clears, said once, and the replica becomes active.
    kube.answer = peering(me={"priority": 5, "lifetime": 10, "lastseen": seen(0, t)})
    caplog.clear()
    assert await lead.check(now=t + CHECK_SECONDS)
    assert lead.report()["problem"] is None
    assert any("solved" in r.getMessage() for r in caplog.records)
    assert sample(registry, "chainop_leader") == 1


async def test_forbidden_in_namespaced_mode_names_the_namespace(caplog):
    kube = FakeKube()
    lead, _ = leadership(kube, namespace="team-a")
    kube.answer = KubeError(403, "Forbidden", "cannot get resource kopfpeerings")
    assert not await lead.check(now=NOW)
    assert kube.reads == [("chainop", "team-a")]
    assert "'get' on kopfpeerings.kopf.dev in namespace team-a" in caplog.text


async def test_a_missing_peering_object_is_an_error(caplog):
    kube = FakeKube()
    lead, registry = leadership(kube)
    kube.answer = None
    assert not await lead.check(now=NOW)
    assert "does not exist" in caplog.text
    assert sample(registry, "chainop_leadership_check_errors_total", reason="NotFound") == 1
    assert "does not exist" in lead.report()["problem"]


async def test_an_own_keep_alive_that_never_shows_up_is_reported(caplog):
    kube = FakeKube()
    lead, _ = leadership(kube)
    kube.answer = peering(other={"priority": 1, "lifetime": 10, "lastseen": seen(0)})
    assert not await lead.check(now=NOW)
    assert not await lead.check(now=NOW + OWN_RECORD_GRACE_SECONDS / 2)
    assert "ERROR" not in caplog.text
    assert not await lead.check(now=NOW + OWN_RECORD_GRACE_SECONDS + 1)
    assert "keep-alive (me) is not in the peering status" in caplog.text


async def test_an_expired_own_keep_alive_stands_the_health_loop_down(caplog):
    """Our keep-alive PATCHes have not landed for a lifetime: the others see this replica
    dead and take over, so its health loop must stop too."""
    kube = FakeKube()
    lead, _ = leadership(kube)
    kube.answer = peering(me={"priority": 5, "lifetime": 10, "lastseen": seen(0)})
    assert await lead.check(now=NOW)
    assert not await lead.check(now=NOW + 10)  # never renewed: expired
    assert "expired" in lead.report()["problem"]
    assert "keep-alive (me) expired" in caplog.text
    kube.answer = peering(me={"priority": 5, "lifetime": 10, "lastseen": seen(0, NOW + 12)})
    assert await lead.check(now=NOW + 12)  # renewed: active again, problem solved
    assert lead.report()["problem"] is None


@pytest.mark.parametrize(
    ("argv", "lifetime"),
    [([], 10), (["--peering-lifetime", "15"], 15), (["--peering-lifetime", "6"], 6)],
)
def test_peering_lifetime_flag(argv, lifetime):
    args = build_parser().parse_args(["run", "--peering", "p", *argv])
    assert args.peering_lifetime == lifetime


@pytest.mark.parametrize("value", ["5", "0", "ten", "10.5"])
def test_peering_lifetime_below_kopfs_renewal_margin_is_refused(value, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--peering", "p", "--peering-lifetime", value])
    assert "--peering-lifetime" in capsys.readouterr().err
