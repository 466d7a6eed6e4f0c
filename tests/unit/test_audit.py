"""We test these aspects: the audit trail's line format and destinations.

* every line carries every key of schema 1, in a fixed order, with RFC 3339 UTC times;
* an unknown kind or field is refused (nothing outside the schema, a prompt say, slips in);
* registered secrets are scrubbed from every string;
* request tier: the most permissive tier among the providers a task may use;
* drain transitions reach the trail (kind ``drain``);
* destinations: a file is appended to, line by line; ``--no-audit`` writes nothing;
  ``chainop run`` parses the options (and refuses both at once).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chainop import cli
from chainop.core.models import Decision
from chainop.operator import audit
from chainop.redact import REDACTOR
from tests.unit.support import chain, provider

KEYS = [
    "schema",
    "time",
    "kind",
    "namespace",
    "chain",
    "task",
    "uid",
    "provider",
    "fromProvider",
    "requestTier",
    "providerTier",
    "outcome",
    "reason",
    "inputTokens",
    "outputTokens",
    "costUSD",
]


def test_a_line_has_every_key_in_order() -> None:
    at = datetime(2026, 12, 2, 10, 0, 0, 123456, tzinfo=UTC)
    text = audit.line("attempt", at=at, namespace="ns", provider="p", cost_usd=0.5)
    parsed = json.loads(text)
    assert list(parsed) == KEYS
    assert parsed["schema"] == 1
    assert parsed["time"] == "2026-12-02T10:00:00.123Z"
    assert (parsed["kind"], parsed["namespace"], parsed["costUSD"]) == ("attempt", "ns", 0.5)
    assert parsed["task"] is None
    assert "\n" not in text


def test_unknown_kinds_and_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown audit kind"):
        audit.line("gossip")
    with pytest.raises(TypeError, match=r"unknown audit field\(s\) \['prompt'\]"):
        audit.line("attempt", prompt="the secret plan")


def test_secrets_are_scrubbed_and_text_is_bounded() -> None:
    REDACTOR.add("sk-audit-canary-123456")
    parsed = json.loads(
        audit.line("attempt", reason="HTTP 401: bad key sk-audit-canary-123456 " + "x" * 2000)
    )
    assert "sk-audit-canary-123456" not in parsed["reason"]
    assert "[REDACTED]" in parsed["reason"]
    assert len(parsed["reason"]) == audit.MAX_TEXT


def test_request_tier_is_the_most_permissive_allowed() -> None:
    spec = chain(
        provider("vllm", "Sovereign"), provider("eu", "Private"), provider("openai", "Standard")
    )
    assert audit.request_tier(spec, ["vllm"]) == "Sovereign"
    assert audit.request_tier(spec, ["vllm", "eu"]) == "Private"
    assert audit.request_tier(spec, ["openai", "vllm"]) == "Standard"
    assert audit.request_tier(spec, []) is None
    trail = audit.TaskTrail.of(
        namespace="ns",
        chain="c",
        task="t",
        uid="u",
        spec=spec,
        decision=Decision(provider="vllm", reason="r", providers=["vllm", "eu"]),
    )
    assert trail.request_tier == "Private"


def test_a_file_is_appended_to_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier": true}\n')
    try:
        audit.configure(str(path))
        audit.record("restore", namespace="ns", chain="c", provider="p", outcome="Restored")
        # Flushed at once: readable before anything closes the file.
        lines = path.read_text().splitlines()
        assert lines[0] == '{"earlier": true}'
        assert json.loads(lines[1])["kind"] == "restore"
        audit.configure(None)
        audit.record("restore", namespace="ns")
        assert len(path.read_text().splitlines()) == 2
    finally:
        audit.configure(None)


def test_stdout_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        audit.configure_from_args(cli.build_parser().parse_args(["run"]))
        audit.record("exclusion", namespace="ns", chain="c", provider="p")
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 1
        assert json.loads(out[0])["kind"] == "exclusion"
    finally:
        audit.configure(None)


def test_run_options() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["run", "--audit-log", "/tmp/a.jsonl"]).audit_log == "/tmp/a.jsonl"
    assert parser.parse_args(["run", "--no-audit"]).no_audit is True
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--no-audit", "--audit-log", "x"])


def test_an_unwritable_file_stops_run_with_the_reason(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(["run", "--audit-log", str(tmp_path / "no" / "a")])
    with pytest.raises(SystemExit, match="--audit-log"):
        audit.configure_from_args(args)


def test_drain_transitions_are_audited(tmp_path: Path) -> None:
    """The drains feature writes its transitions to the trail (kind ``drain``)."""
    from prometheus_client import CollectorRegistry

    from chainop.kube.client import ObjectRef
    from chainop.metrics import Metrics
    from chainop.operator import drains as drain_ops
    from tests.unit.test_drains import T0, build, drained_chain

    path = tmp_path / "audit.jsonl"
    spec = drained_chain({"provider": "openai", "by": "alice", "reason": "maintenance"})
    try:
        audit.configure(str(path))
        drain_ops.announce(
            ref=ObjectRef("chainop.dev/v1alpha1", "ProviderChain", "ns", "c", "uid"),
            namespace="ns",
            chain="c",
            shown={},
            previous_conditions=[],
            built=build(spec),
            now=T0,
            post=lambda ref, **_: None,
            metrics=Metrics(CollectorRegistry()),
        )
    finally:
        audit.configure(None)
    (line,) = [json.loads(text) for text in path.read_text().splitlines()]
    assert (line["kind"], line["namespace"], line["chain"], line["provider"]) == (
        "drain",
        "ns",
        "c",
        "openai",
    )
    assert line["outcome"] == "Drained"
    assert "maintenance" in line["reason"]


def test_a_benching_by_a_drill_is_audited(tmp_path: Path) -> None:
    """A drill's real hop that fails may bench it like a task's call: that benching is an
    audit line too (kind ``benching``, no task), as every benching is."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from chainop.metrics import Metrics
    from chainop.operator.drills import _DrillObserver
    from chainop.operator.runtime import ChainRuntime
    from tests.unit.support import chain, provider

    spec = chain(provider("a", "Sovereign"), provider("b", "Sovereign"))
    runtime = SimpleNamespace(metrics=Metrics(CollectorRegistry()), event=lambda *a, **k: None)
    observer = _DrillObserver(runtime, ChainRuntime("ns", "c", "uid", spec=spec))  # type: ignore[arg-type]
    path = tmp_path / "audit.jsonl"
    try:
        audit.configure(str(path))
        observer.on_benched(spec.providers[1], 5.0, "HTTP 503")
    finally:
        audit.configure(None)
    (line,) = [json.loads(text) for text in path.read_text().splitlines()]
    assert (line["kind"], line["chain"], line["provider"], line["task"]) == (
        "benching",
        "c",
        "b",
        None,
    )
    assert (line["outcome"], line["reason"], line["providerTier"]) == (
        "Benched 5s",
        "(drill) HTTP 503",
        "Sovereign",
    )
