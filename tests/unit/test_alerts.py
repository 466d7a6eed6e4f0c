"""We test these aspects of the chart's alerts (charts/chainop/templates/prometheusrule.yaml):

* the PrometheusRule is off by default and renders when ``metrics.prometheusRule.enabled``;
  its thresholds come from values, and the values schema rejects nonsense;
* ``promtool check rules`` accepts the rendered rules;
* ``promtool test rules`` passes tests/unit/alerts/rules_test.yaml, which has, for EVERY
  alert, a case where it fires and one where it does not (checked here, so a new alert
  without tests fails);
* every alert has a severity, a summary, a description and a ``runbook_url`` whose anchor
  is a section of docs/operations.md, and every metric it reads is exported by chainop
  (or named by the budgets work: ``chainop_budget_used_ratio``).

promtool is Debian's, installed into the user cache by ``hack/promtool.sh`` (``make test``
runs it and sets CHAINOP_REQUIRE_PROMTOOL=1). Without promtool or helm these tests skip,
except where CHAINOP_REQUIRE_PROMTOOL=1 or CI is set: there they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from chainop.metrics import Metrics
from chainop.testing import cluster as cluster_helpers

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "chainop"
PROMTOOL_TESTS = Path(__file__).resolve().parent / "alerts" / "rules_test.yaml"


def _missing(what: str) -> None:
    """Skip locally; fail where the tool is required (make test, CI)."""
    if os.environ.get("CHAINOP_REQUIRE_PROMTOOL") == "1" or os.environ.get("CI"):
        pytest.fail(f"{what} (required here: CHAINOP_REQUIRE_PROMTOOL=1 or CI)")
    pytest.skip(what)


def promtool() -> str:
    built = cluster_helpers.cache_dir() / "bin" / "promtool"
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    found = shutil.which("promtool")
    if found is None:
        _missing("promtool not found: hack/promtool.sh installs it into the user cache")
    assert found is not None
    return found


def helm() -> str:
    try:
        return cluster_helpers.helm_path()
    except cluster_helpers.ClusterError:
        _missing("helm not found: `make cluster-build` builds it")
        raise


def render(*values: str) -> list[dict[str, Any]]:
    """The PrometheusRule objects ``helm template`` renders with ``--set values``
    (``--set-json`` for a value written ``json:key=value``: ``--set`` makes 0.5 a string)."""
    args = [
        arg
        for value in values
        for arg in (
            ("--set-json", value.removeprefix("json:"))
            if value.startswith("json:")
            else ("--set", value)
        )
    ]
    result = subprocess.run(
        [helm(), "template", "rel", str(CHART), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [
        doc
        for doc in yaml.safe_load_all(result.stdout)
        if doc and doc.get("kind") == "PrometheusRule"
    ]


def rules(*values: str) -> list[dict[str, Any]]:
    (rule,) = render("metrics.prometheusRule.enabled=true", *values)
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


@pytest.fixture
def rule_dir(tmp_path: Path) -> Path:
    """A folder with the rendered rules (chainop-rules.yaml) and the promtool tests."""
    (rule,) = render("metrics.prometheusRule.enabled=true")
    text = yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False)
    (tmp_path / "chainop-rules.yaml").write_text(text)
    shutil.copy(PROMTOOL_TESTS, tmp_path / "rules_test.yaml")
    return tmp_path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


# ----------------------------------------------------------------------------- tests


def test_rule_is_off_by_default_and_renders_when_on():
    assert render() == []
    (rule,) = render(
        "metrics.prometheusRule.enabled=true", "metrics.prometheusRule.labels.release=kps"
    )
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kps"


def test_thresholds_come_from_values():
    by_name = {
        r["alert"]: r
        for r in rules(
            "metrics.prometheusRule.providerDownMinutes=3",
            "metrics.prometheusRule.chainNotReadyMinutes=7",
            "json:metrics.prometheusRule.spilloverRatio=0.5",
        )
    }
    assert by_name["ChainopProviderDown"]["for"] == "3m"
    assert by_name["ChainopChainNotReady"]["for"] == "7m"
    assert by_name["ChainopSpilloverRatioHigh"]["expr"].rstrip().endswith("> 0.5")


def test_values_schema_rejects_a_ratio_above_one():
    result = subprocess.run(
        [
            helm(),
            "template",
            "rel",
            str(CHART),
            "--set",
            "metrics.prometheusRule.taskFailureRatio=2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "taskFailureRatio" in result.stderr


def test_promtool_check_rules(rule_dir: Path):
    result = run_promtool("check", "rules", "chainop-rules.yaml", cwd=rule_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules(rule_dir: Path):
    result = run_promtool("test", "rules", "rules_test.yaml", cwd=rule_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_test():
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    cases = [case for t in tests for case in t.get("alert_rule_test", [])]
    for rule in rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']}: no firing test"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: no quiet test"


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of a Markdown text."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_has_a_runbook_section_and_annotations():
    anchors = _anchors((ROOT / "docs" / "operations.md").read_text(encoding="utf-8"))
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert annotations["summary"], name
        assert annotations["description"], name
        url, _, anchor = annotations["runbook_url"].partition("#")
        assert url.endswith("docs/operations.md"), name
        assert anchor == name.lower(), name
        assert anchor in anchors, f"{name}: no section '### {name}' in docs/operations.md"


def test_alerts_read_only_metrics_chainop_exports():
    exported = {m.name for m in Metrics().registry.collect()}
    # prometheus_client names counters without _total; the samples carry it.
    exported |= {f"{name}_total" for name in exported}
    for rule in rules():
        for metric in re.findall(r"\bchainop_[a-z_]+", rule["expr"]):
            assert metric in exported, f"{rule['alert']} reads unknown {metric}"


def test_dashboard_has_spend_drill_and_spillover_panels():
    """The Grafana dashboard (charts/chainop/dashboards/chainop.json) is valid JSON with
    unique panel ids, and its governance panels read metrics that exist."""
    dashboard = json.loads((CHART / "dashboards" / "chainop.json").read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in (
        "chainop_spend_usd_total",
        "chainop_budget_used_ratio",
        "chainop_drill_last_passed",
        "chainop_drills_total",
        "chainop_chain_ready",
    ):
        assert metric in exprs, metric
    assert "rate(chainop_spillovers_total" in exprs
    assert "rate(chainop_tasks_total" in exprs
    exported = {m.name for m in Metrics().registry.collect()}
    exported |= {f"{name}_{suffix}" for name in exported for suffix in ("total", "bucket")}
    for metric in set(re.findall(r"\bchainop_[a-z_]+", exprs)):
        assert metric in exported, f"dashboard reads unknown {metric}"
