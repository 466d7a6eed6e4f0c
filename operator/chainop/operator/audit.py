"""The audit trail: one JSON object per line for every decision that moves work or data.

Why a separate trail when there are Events and metrics: Events are de-duplicated and
expire after an hour, metrics are counts; neither answers "which tasks left the
Sovereign tier last week, and why". The trail is a log a cluster's pipeline keeps
(Loki, Elasticsearch, a SIEM), with a stable schema (docs/operations.md, "Audit trail").

Schema version 1 — every line has every key (``null`` when it does not apply), so a
parser never guesses::

    schema        1
    time          RFC 3339 UTC with milliseconds, e.g. 2026-12-02T10:00:00.123Z
    kind          decision | attempt | result | failover | spillover | benching |
                  exclusion | restart | restore | budget | drain | drill
    namespace, chain, task, uid          where (task and uid null for chain-level kinds)
    provider      the provider the line is about (the one reached, for a failover)
    fromProvider  the provider left behind (failover, spillover)
    requestTier   the most permissive privacy tier the task's routing allowed
    providerTier  the privacy tier of ``provider``
    outcome       what happened (Routed, Succeeded, TransientError, Excluded, ...)
    reason        why, in words (the decision's reason, the error, the budget)
    inputTokens, outputTokens, costUSD   what a call used and cost (attempt lines)

Never a key, a prompt or an answer: no field takes free text from a request, and every
string goes through the redactor (``chainop.redact``) like status, Events and logs do.

Destination: the logger ``chainop.audit`` (not propagated, so the operator's own log
format never wraps it). By default it writes to stdout — chainop's own logs go to
stderr — so a log pipeline can route the two apart; ``chainop run --audit-log PATH``
appends to a file instead (``-`` is stdout) and ``--no-audit`` turns it off.

Other modules (drains, drills) call :func:`record` with a kind and keyword fields.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chainop.core.chain import ExecutionResult
from chainop.core.models import (
    PRIVACY_ORDER,
    Attempt,
    Decision,
    ProviderChainSpec,
    ProviderSpec,
)
from chainop.redact import REDACTOR

SCHEMA = 1
KINDS = frozenset(
    {
        "decision",
        "attempt",
        "result",
        "failover",
        "spillover",
        "benching",
        "exclusion",
        "restart",
        "restore",
        "budget",
        "drain",
        "drill",
    }
)
#: Keyword of :func:`record` → key on the line, in the order lines carry them.
FIELDS: Mapping[str, str] = {
    "namespace": "namespace",
    "chain": "chain",
    "task": "task",
    "uid": "uid",
    "provider": "provider",
    "from_provider": "fromProvider",
    "request_tier": "requestTier",
    "provider_tier": "providerTier",
    "outcome": "outcome",
    "reason": "reason",
    "input_tokens": "inputTokens",
    "output_tokens": "outputTokens",
    "cost_usd": "costUSD",
}
#: Longest string a field keeps (reasons can quote provider replies).
MAX_TEXT = 1000

LOGGER = logging.getLogger("chainop.audit")
LOGGER.propagate = False
LOGGER.setLevel(logging.INFO)


def line(kind: str, *, at: datetime | None = None, **fields: Any) -> str:
    """One audit line (JSON, no newline). Raises for an unknown kind or field: the
    schema is a contract, and a field that is not in it (say, ``prompt``) never
    reaches the trail by accident."""
    if kind not in KINDS:
        raise ValueError(f"unknown audit kind {kind!r}; one of {sorted(KINDS)}")
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown audit field(s) {sorted(unknown)}; the schema has {list(FIELDS)}")
    when = (at or datetime.now(tz=UTC)).astimezone(UTC)
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "kind": kind,
    }
    for name, key in FIELDS.items():
        value = fields.get(name)
        if isinstance(value, str):
            value = REDACTOR.scrub(value)[:MAX_TEXT]
        elif value is not None and not isinstance(value, int | float):
            value = REDACTOR.scrub(str(value))[:MAX_TEXT]
        out[key] = value
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def record(kind: str, **fields: Any) -> None:
    """Write one audit line (see the module docstring for kinds and fields).

    Never raises for an I/O problem (logging reports it on stderr): losing an audit line
    must not fail a task. A wrong kind or field does raise — that is a bug to catch in
    tests, not at 3 a.m.
    """
    text = line(kind, **fields)
    if LOGGER.handlers:
        LOGGER.info(text)


# --------------------------------------------------------------------------- tasks


def request_tier(spec: ProviderChainSpec | None, providers: Sequence[str]) -> str | None:
    """The most permissive privacy tier among the providers a task may use."""
    if spec is None:
        return None
    tiers = {p.privacy_tier for p in spec.providers if p.name in providers}
    reachable = [tier.value for tier in PRIVACY_ORDER if tier in tiers]
    return reachable[-1] if reachable else None


@dataclass(frozen=True, slots=True)
class TaskTrail:
    """The audit lines of one task's execution, with what every line repeats."""

    namespace: str
    chain: str
    task: str
    uid: str
    request_tier: str | None

    @classmethod
    def of(
        cls,
        *,
        namespace: str,
        chain: str,
        task: str,
        uid: str,
        spec: ProviderChainSpec | None,
        decision: Decision | None,
    ) -> TaskTrail:
        providers = decision.providers if decision is not None else []
        return cls(namespace, chain, task, uid, request_tier(spec, providers))

    def _record(self, kind: str, provider: ProviderSpec | None, **fields: Any) -> None:
        record(
            kind,
            namespace=self.namespace,
            chain=self.chain,
            task=self.task,
            uid=self.uid,
            request_tier=self.request_tier,
            provider=provider.name if provider is not None else fields.pop("provider", None),
            provider_tier=provider.privacy_tier.value if provider is not None else None,
            **fields,
        )

    def decision(
        self,
        spec: ProviderChainSpec,
        decision: Decision,
        *,
        outcome: str = "Routed",
        reason: str | None = None,
    ) -> None:
        """The routing decision (``outcome`` names a failure when nothing may take it)."""
        self._record(
            "decision",
            spec.provider(decision.provider),
            outcome=outcome,
            reason=reason or decision.reason,
        )

    def attempt(self, provider: ProviderSpec, attempt: Attempt) -> None:
        """One call (or skip) ended, with what it cost."""
        self._record(
            "attempt",
            provider,
            outcome=attempt.outcome.value,
            reason=attempt.error or None,
            cost_usd=attempt.cost_usd,
        )

    def result(self, spec: ProviderChainSpec | None, result: ExecutionResult) -> None:
        """How the task's execution ended: who answered, with what tokens and total cost
        (the answer and any calls a hedge cancelled), or why nobody did."""
        provider = spec.provider(result.provider) if spec is not None and result.provider else None
        done = result.completion
        self._record(
            "result",
            provider,
            outcome="Succeeded" if done is not None else "Failed",
            reason=None
            if done is not None
            else f"{result.failure_reason}: {result.failure_message}",
            input_tokens=done.input_tokens if done is not None else None,
            output_tokens=done.output_tokens if done is not None else None,
            cost_usd=round(sum(a.cost_usd or 0.0 for a in result.attempts), 9),
        )

    def move(self, kind: str, source: ProviderSpec, target: ProviderSpec, reason: str) -> None:
        """A failover or a spillover from ``source`` to ``target``."""
        self._record(kind, target, from_provider=source.name, outcome="Moved", reason=reason)

    def benching(self, provider: ProviderSpec, seconds: float, reason: str) -> None:
        self._record("benching", provider, outcome=f"Benched {seconds:.0f}s", reason=reason)


def chain_event(
    kind: str, *, namespace: str, chain: str, provider: ProviderSpec | None, **fields: Any
) -> None:
    """A chain-level line (exclusion, restart, restore, budget, drain)."""
    record(
        kind,
        namespace=namespace,
        chain=chain,
        provider=provider.name if provider is not None else None,
        provider_tier=provider.privacy_tier.value if provider is not None else None,
        **fields,
    )


# --------------------------------------------------------------------------- setup


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The audit options of ``chainop run``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--audit-log",
        metavar="PATH",
        default="-",
        help="append the audit trail (JSON lines) to PATH; '-' (default) is stdout",
    )
    group.add_argument("--no-audit", action="store_true", help="write no audit trail")


def configure_from_args(args: argparse.Namespace) -> None:
    """Point the audit logger where ``chainop run``'s options say; a file that cannot be
    opened stops ``chainop run`` with the reason (an audit trail silently lost is worse
    than an operator that does not start)."""
    destination = None if getattr(args, "no_audit", False) else getattr(args, "audit_log", "-")
    try:
        configure(destination)
    except OSError as error:
        raise SystemExit(f"chainop run: --audit-log: {error}") from None


def configure(destination: str | None) -> None:
    """Send audit lines to stdout (``-``), append them to a file, or nowhere (None).

    A file is opened for appending (several processes and rotations append safely) and
    every line is flushed as it is written.
    """
    for old in list(LOGGER.handlers):
        LOGGER.removeHandler(old)
        old.close()
    if destination is None:
        return
    handler: logging.Handler
    if destination == "-":
        handler = logging.StreamHandler(sys.stdout)
    else:
        handler = logging.FileHandler(destination, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
