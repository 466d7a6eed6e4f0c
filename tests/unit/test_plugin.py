"""We test these aspects of ``kubectl chainop`` without a cluster: ``decide --offline``
(the decision of ``routing.route``, bad files → exit 2), one command tree for both
console scripts with examples and exit codes in every ``--help``, completion scripts,
durations of ``drain --for``, the table and footer formats, and ``routing.route`` being
the operator's three steps in one.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from chainop import cli, console
from chainop.commands import drain
from chainop.core import adaptive, routing
from chainop.core.latency import LatencyStats
from chainop.core.models import DelegatedTaskSpec, ProviderChainSpec

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ROOT / "examples" / "provider-chain.yaml"
TASKS = ROOT / "examples" / "tasks"
PLUGIN_COMMANDS = ["decide", "submit", "result", "get", "status", "drain", "undrain"]
PLUGIN_COMMANDS += ["replay", "explain"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("task", "providers", "rule"),
    [
        ("auto.yaml", ["vllm", "openai", "anthropic"], 5),
        ("requires-local.yaml", ["vllm"], 1),
        ("named-provider.yaml", ["anthropic", "vllm", "openai"], 4),
        ("unknown-provider.yaml", ["vllm"], 6),
        ("default-no-delegation.yaml", ["vllm"], 3),
    ],
)
def test_decide_offline_is_the_routing_decision(capsys, task, providers, rule):
    code, out, _ = run(
        capsys, "decide", "--offline", "-f", str(CHAIN), "-f", str(TASKS / task), "-o", "json"
    )
    assert code == console.OK
    data = json.loads(out)
    assert (data["providers"], data["rule"]) == (providers, rule)
    chain = ProviderChainSpec.model_validate(yaml.safe_load(CHAIN.read_text())["spec"])
    spec = DelegatedTaskSpec.model_validate(yaml.safe_load((TASKS / task).read_text())["spec"])
    assert data["reason"] == routing.route(chain, spec).reason


def test_decide_offline_table_names_rule_and_order(capsys):
    code, out, _ = run(
        capsys, "decide", "--offline", "-f", str(CHAIN), "-f", str(TASKS / "auto.yaml")
    )
    assert code == 0
    assert out.splitlines()[0] == "chain default: try vllm → openai → anthropic"
    assert "rule 5: preferredProvider=auto: active order" in out


def test_decide_offline_with_nothing_eligible_exits_1(capsys, tmp_path):
    cloud_only = yaml.safe_load(CHAIN.read_text())
    cloud_only["spec"]["providers"] = cloud_only["spec"]["providers"][1:]
    chain = tmp_path / "chain.yaml"
    chain.write_text(yaml.safe_dump(cloud_only))
    code, out, _ = run(
        capsys, "decide", "--offline", "-f", str(chain), "-f", str(TASKS / "requires-local.yaml")
    )
    assert code == console.FAILED
    assert "no provider is eligible" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("spec: [unclosed\n", "is not valid YAML"),
        ("- a list\n", "every document must be a mapping"),
        (
            "spec:\n  chain: default\n  request: {messages: [{role: user}]}\n  colour: red\n",
            "spec.colour",
        ),
        ("kind: ProviderChain\nmetadata: {name: other}\nspec: {}\n", "expected one DelegatedTask"),
    ],
)
def test_decide_offline_bad_file_is_exit_2(capsys, tmp_path, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    code, _, err = run(capsys, "decide", "--offline", "-f", str(CHAIN), "-f", str(bad))
    assert code == console.USAGE
    assert message in err


def test_decide_offline_without_the_chain_is_exit_2(capsys):
    code, _, err = run(
        capsys, "decide", "--offline", "-f", str(TASKS / "auto.yaml"), "--chain", "x"
    )
    assert code == console.USAGE
    assert "no ProviderChain 'x'" in err


def test_one_command_tree_with_examples_and_exit_codes(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(PLUGIN_COMMANDS) | {"run", "crds", "version", "demo", "completion"} == set(
        sub.choices
    )
    for name in PLUGIN_COMMANDS:
        text = sub.choices[name].format_help()
        assert "examples:\n  kubectl chainop" in text, name
        assert "exit codes:" in text, name
        assert "--namespace" in text, name
        assert "--context" in text, name
    script = (ROOT / "pyproject.toml").read_text()
    assert 'kubectl-chainop = "chainop.cli:main"' in script
    assert 'chainop = "chainop.cli:main"' in script


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_covers_every_command(capsys, shell):
    code, out, _ = run(capsys, "completion", shell)
    assert code == 0
    for name in PLUGIN_COMMANDS:
        assert name in out
    assert "--namespace" in out


def test_durations():
    assert drain.duration("30m").total_seconds() == 1800
    assert drain.duration("1h30m").total_seconds() == 5400
    assert drain.duration("90s").total_seconds() == 90
    for bad in ("", "0m", "30", "soon", "-5m"):
        with pytest.raises(argparse.ArgumentTypeError):
            drain.duration(bad)


def test_bad_duration_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["drain", "default", "openai", "--for", "soon"])
    assert stopped.value.code == console.USAGE


def test_table_and_footer():
    assert console.table(("name", "phase"), [("a", "Succeeded"), ("bbbbbb", "")]) == (
        "NAME     PHASE\na        Succeeded\nbbbbbb\n"
    )
    task = {
        "status": {
            "attemptCount": 2,
            "result": {
                "provider": "openai",
                "attempt": 2,
                "latencyMs": 340,
                "inputTokens": 12,
                "outputTokens": 30,
                "costUSD": 0.000047,
            },
        }
    }
    assert console.task_footer(task) == (
        "— provider openai · attempt 2 of 2 · 340ms · 12+30 tokens · $0.000047"
    )


def test_route_is_decide_then_strategy_then_adaptive():
    chain = ProviderChainSpec.model_validate(
        {
            "strategy": "FallbackOnly",
            "routing": {"adaptive": "LatencyWithinTier"},
            "providers": [
                {"name": n, "type": "openai", "endpoint": "http://x/v1", "model": "m",
                 "privacyTier": "Standard"}
                for n in ("a", "b", "c")
            ],
        }
    )  # fmt: skip
    task = DelegatedTaskSpec.model_validate(
        {
            "chain": "c",
            "routing": {"allowDelegation": True},
            "request": {"messages": [{"role": "user"}]},
        }
    )
    fast, slow = LatencyStats(), LatencyStats()
    fast.observe(100)
    slow.observe(900)
    latency = {"b": slow, "c": fast}
    expected = adaptive.adapt(
        chain, routing.apply_strategy(chain, routing.decide(chain, task)), latency
    )
    assert routing.route(chain, task, latency=latency) == expected
    assert expected.providers == ("c", "b")  # the head skipped, then the faster first
    assert routing.route(chain, task).providers == ("b", "c")


def test_drain_in_effect_prefers_status_and_ignores_expired_entries():
    now = console.parse_time("2026-12-02T10:00:00Z")
    chain = {
        "spec": {
            "drains": [
                {"provider": "a", "by": "ann", "until": "2026-12-02T09:00:00Z"},
                {"provider": "b", "by": "bob", "reason": "maintenance"},
            ]
        },
        "status": {"providers": [{"name": "c", "drain": {"provider": "c", "by": "cy"}}]},
    }
    assert console.drain_of(chain, "a", now=now) == {}
    assert console.drain_text(console.drain_of(chain, "b", now=now)) == (
        "by bob until undrained: maintenance"
    )
    assert console.drain_of(chain, "c", now=now)["by"] == "cy"


@given(
    hours=st.integers(0, 48),
    minutes=st.integers(0, 59),
    seconds=st.integers(0, 59),
)
def test_duration_reads_what_kubectl_style_writes(hours, minutes, seconds):
    text = "".join(
        f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if value
    )
    total = hours * 3600 + minutes * 60 + seconds
    if total == 0:
        with pytest.raises(argparse.ArgumentTypeError):
            drain.duration(text)
    else:
        assert drain.duration(text).total_seconds() == total


@given(st.lists(st.tuples(st.text("ab c", max_size=6), st.text("xyz", max_size=9)), max_size=5))
def test_table_columns_line_up(rows):
    lines = console.table(("name", "value"), rows).splitlines()
    start = lines[0].index("VALUE")
    for line, (_, value) in zip(lines[1:], rows, strict=True):
        assert line[start:] == value


@pytest.mark.parametrize(
    ("on_exceeded", "providers", "reason"),
    [
        ("LocalOnly", ["vllm"], "budget 1.00 USD/24h spent"),
        ("Fail", [], "BudgetExceeded: budget 1.00 USD/24h spent"),
    ],
)
def test_decide_applies_the_budget_the_operator_applies(on_exceeded, providers, reason):
    """A spent budget in status.spend changes the decision exactly as the operator's gate
    does: LocalOnly keeps Sovereign providers with the budget's words, Fail leaves none."""
    from datetime import UTC, datetime, timedelta

    from chainop.commands import decide

    doc = yaml.safe_load(CHAIN.read_text())
    doc["spec"]["budget"] = {"window": "24h", "maxUSD": 1, "onExceeded": on_exceeded}
    spec = ProviderChainSpec.model_validate(doc["spec"])
    task = DelegatedTaskSpec.model_validate(
        yaml.safe_load((TASKS / "auto.yaml").read_text())["spec"]
    )
    day = datetime.now(tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    live = {
        **doc,
        "status": {
            "spend": {
                "window": "24h",
                "windowStart": console.rfc3339(day),
                "windowEnd": console.rfc3339(day + timedelta(days=1)),
                "usd": 1.5,
                "byProvider": [{"provider": "openai", "usd": 1.5}],
            }
        },
    }
    data = decide.decision_data("default", spec, task, live, live)
    assert data["providers"] == providers
    assert data["reason"].startswith(reason)
    assert decide.decision_data("default", spec, task, None, doc)["providers"] == [
        "vllm",
        "openai",
        "anthropic",
    ]


def test_decide_shows_what_the_strategy_tries():
    """PrimaryOnly: the executor calls the first provider only, so decide must not say
    'try vllm → openai → anthropic'; RoundRobin: the order, with its rotation named."""
    from chainop.commands import decide

    task = DelegatedTaskSpec.model_validate(
        yaml.safe_load((TASKS / "auto.yaml").read_text())["spec"]
    )
    doc = yaml.safe_load(CHAIN.read_text())
    shown = {}
    for strategy in ("PrimaryOnly", "RoundRobin", "Fallback"):
        doc["spec"]["strategy"] = strategy
        spec = ProviderChainSpec.model_validate(doc["spec"])
        shown[strategy] = decide.decision_data("default", spec, task, None, doc)
    primary = shown["PrimaryOnly"]
    assert primary["providers"] == ["vllm"]
    assert primary["reason"].endswith("; strategy PrimaryOnly tries vllm only")
    assert [s["eligible"] for s in primary["states"]] == [True, False, False]
    assert shown["RoundRobin"]["providers"] == ["vllm", "openai", "anthropic"]
    assert "RoundRobin starts each task one further" in shown["RoundRobin"]["reason"]
    assert shown["Fallback"]["reason"] == "preferredProvider=auto: active order"


def test_spend_prefers_the_chains_own_ledger():
    from chainop.commands import status

    task = {"status": {"result": {"provider": "openai", "costUSD": 0.5, "extraCostUSD": 0.25}}}
    summed = status.spend_data([{"spend": None}], [task, {"status": {}}])
    assert summed == {"source": "sum of task costs", "usd": 0.75, "byProvider": {"openai": 0.75}}
    # status.spend exactly as the operator writes it (byProvider is a list).
    from chainop.core import budget
    from chainop.core.models import BudgetSpec

    charge = budget.Charge("uid", {"openai": 2.0, "vllm": 0.5})
    written = budget.apply(None, [charge], BudgetSpec(maxUSD=10), now=1_800_000_000.0).spend
    kept = budget.to_status(written).model_dump(by_alias=True, mode="json")
    ledger = status.spend_data([{"spend": kept}, {"spend": None}], [task])
    assert ledger == {
        "source": "chain status.spend",
        "usd": 2.5,
        "byProvider": {"openai": 2.0, "vllm": 0.5},
    }
    assert "openai $2.000000" in status.render(
        {"chains": [], "tasks": {}, "namespace": "ns", "spend": ledger}
    )


def test_admission_warnings_are_read_from_every_warning_header():
    from urllib3 import HTTPHeaderDict

    headers = HTTPHeaderDict()
    headers.add("Warning", "299 - \"spec.routing.requiresLocal: chain 'cloud' has none\"")
    headers.add("Warning", '299 - "a \\"quoted\\" word", 299 - "second in one header"')
    assert console.admission_warnings(headers) == [
        "spec.routing.requiresLocal: chain 'cloud' has none",
        'a "quoted" word',
        "second in one header",
    ]
    assert console.admission_warnings(None) == []
    assert console.admission_warnings(HTTPHeaderDict()) == []


def test_explain_shows_the_last_drill_and_the_windows_spend():
    from chainop.commands.explain import governance_lines

    spec = {
        "drills": {"intervalMinutes": 60},
        "budget": {"window": "24h", "maxUSD": 10, "onExceeded": "Fail"},
    }
    status = {
        "lastDrill": {
            "time": "2026-12-02T10:00:00Z",
            "forced": "local",
            "path": ["cloud"],
            "latencyMs": 41,
            "passed": False,
            "reason": "fallback cloud failed: HTTP 500",
        },
        "spend": {"windowStart": "2026-12-02T00:00:00Z", "usd": 8.5},
    }
    drill, budget = governance_lines(spec, status)
    assert "last drill FAILED at 2026-12-02T10:00:00Z (41ms; local failed on purpose" in drill
    assert drill.endswith("then cloud): fallback cloud failed: HTTP 500")
    assert budget == (
        "  budget 8.50 of 10.00 USD/24h spent (85%), window from 2026-12-02T00:00:00Z; "
        "over it: Fail"
    )
    # Not configured: nothing to say; configured but nothing yet: says so.
    assert governance_lines({}, status) == []
    assert governance_lines({"drills": {"intervalMinutes": 5}}, {}) == [
        "  drills every 5 min: none run yet"
    ]


def test_status_leaves_out_a_spend_whose_window_ended_or_whose_budget_was_removed():
    from chainop.commands.status import current_spend

    spend = {"windowStart": "2026-12-02T00:00:00Z", "windowEnd": "2026-12-03T00:00:00Z", "usd": 3}
    chain = {"spec": {"budget": {"window": "24h", "maxUSD": 10}}, "status": {"spend": spend}}
    inside = datetime(2026, 12, 2, 12, tzinfo=UTC).timestamp()
    after = datetime(2026, 12, 3, 0, 0, 1, tzinfo=UTC).timestamp()
    assert current_spend(chain, now=inside) == spend
    assert current_spend(chain, now=after) is None  # the next window has spent nothing yet
    no_budget = {"spec": {}, "status": {"spend": spend}}
    assert current_spend(no_budget, now=inside) is None  # a stale ledger, not a budget


def test_decide_offline_says_a_task_waits_for_a_timed_drain(capsys, tmp_path):
    """vllm, the only Sovereign provider, drained for a minute: a requiresLocal task with
    time to spare waits for it (exit 0); drained with no end, it fails (exit 1)."""
    doc = yaml.safe_load(CHAIN.read_text())
    until = datetime.now(tz=UTC) + timedelta(minutes=1)
    doc["spec"]["drains"] = [{"provider": "vllm", "by": "bob", "until": until.isoformat()}]
    chain = tmp_path / "chain.yaml"
    chain.write_text(yaml.safe_dump(doc))
    task = TASKS / "requires-local.yaml"
    code, out, _ = run(capsys, "decide", "--offline", "-f", str(chain), "-f", str(task))
    assert code == console.OK, out
    assert "no provider is eligible" in out
    assert "the task would wait for the drain of vllm to end at" in out
    doc["spec"]["drains"] = [{"provider": "vllm", "by": "bob"}]
    chain.write_text(yaml.safe_dump(doc))
    code, out, _ = run(capsys, "decide", "--offline", "-f", str(chain), "-f", str(task))
    assert code == console.FAILED
    assert "would wait" not in out
