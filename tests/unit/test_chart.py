"""We test these aspects of the Helm chart (charts/chainop), without a cluster:

* its CRDs are byte-for-byte those of crds/ (plus kopf's peering CRDs, by hand);
* ``helm lint`` passes for the default values, namespaced RBAC and two replicas;
* ``helm template`` renders in those three shapes, with the secure pod settings, the
  ``chainop run`` flags, peering exactly when there is more than one replica;
* RBAC is least privilege: every verb granted on every resource is in the allow-table
  below, which names the code path that uses it; nothing else; every rule is commented;
* impossible combinations (namespaced RBAC without namespaces, or with globs) fail to
  render with a message, and the values schema rejects nonsense;
* every value in values.yaml is commented.

helm is the one ``hack/cluster-build.sh`` builds (``.cache/bin/helm``); without it the
helm-based tests are skipped (CI builds it before running the tests).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from chainop.testing import cluster as cluster_helpers

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "chainop"
RESYNC = "run `make chart-crds` (or `hack/gen-crds.sh`) to copy crds/ into charts/chainop/crds/"

# The allow-table: every verb the chart may grant, per (apiGroup, resource), with the code
# path that needs it. A verb granted but not listed here fails test_rbac_verbs_*; a verb
# listed here must be used by that code path (docs/security.md has the same table).
NAMESPACED_ALLOWED: dict[tuple[str, str], dict[str, str]] = {
    ("chainop.dev", "providerchains"): {
        "list": "kopf watch of ProviderChains (handlers.chain_event): initial list",
        "watch": "kopf watch of ProviderChains (handlers.chain_event)",
        "get": "BudgetKeeper.write (spend) and admission validate_task -> KubeClient.read_chain",
    },
    ("chainop.dev", "delegatedtasks"): {
        "list": "kopf watch of DelegatedTasks (handlers.task_event): initial list",
        "watch": "kopf watch of DelegatedTasks (handlers.task_event)",
        "delete": "TTL: TaskRunner -> KubeClient.delete_task after ttlSecondsAfterFinished",
    },
    ("chainop.dev", "providerchains/status"): {
        "patch": "Runtime status flush -> KubeClient.patch_status(CHAINS, ...)",
    },
    ("chainop.dev", "delegatedtasks/status"): {
        "patch": "TaskRunner -> KubeClient.patch_status(TASKS, ...)",
    },
    ("", "secrets"): {
        "get": "Runtime.validate -> KubeClient.read_secret_key (apiKeySecretRef, same namespace)",
    },
    ("apps", "deployments"): {
        "get": "Runtime.validate and RestartManager -> KubeClient.read_deployment",
        "patch": "RestartManager.request/settle -> KubeClient.patch_deployment",
    },
    ("", "pods"): {
        "list": "Runtime.inspect_backend -> KubeClient.list_pods (crash-looping backends)",
    },
    ("", "configmaps"): {
        "create": "TaskRunner large result -> KubeClient.apply_configmap",
        "update": "KubeClient.apply_configmap replaces one a retried task wrote (409)",
    },
    ("", "events"): {
        "create": "Runtime.event -> KubeClient.post_event (kopf posting is disabled)",
    },
}
#: Only with replicaCount > 1 (kopf peering; kopf._core.engines.peering: touch/keepalive),
#: plus chainop's own read of the same object (operator/chainop/operator/leadership.py).
PEERING_NAMESPACED: dict[tuple[str, str], dict[str, str]] = {
    ("kopf.dev", "kopfpeerings"): {
        "get": "chainop Leadership.check -> KubeClient.read_peering (who runs the health loop)",
        "list": "kopf peering watch (namespaced operator)",
        "watch": "kopf peering watch (namespaced operator)",
        "patch": "kopf peering keep-alive: merge-patch of the peering object's status",
    },
}
PEERING_CLUSTER: dict[tuple[str, str], dict[str, str]] = {
    ("kopf.dev", "clusterkopfpeerings"): {
        "get": "chainop Leadership.check -> KubeClient.read_peering (who runs the health loop)",
        "list": "kopf peering watch (cluster-wide operator)",
        "watch": "kopf peering watch (cluster-wide operator)",
        "patch": "kopf peering keep-alive: merge-patch of the peering object's status",
    },
}
#: Cluster-scoped reads kopf itself makes (kopf._core.reactor.observation); only in the
#: ClusterRole (rbac.namespaced=false). kopf degrades with a warning without them.
CLUSTER_ONLY: dict[tuple[str, str], dict[str, str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {
        "list": "kopf resource_observer: notices our CRDs appearing/changing",
        "watch": "kopf resource_observer: notices our CRDs appearing/changing",
    },
}
#: Only when watchNamespaces is set (kopf namespace_observer matches globs against them).
NAMESPACE_OBSERVER: dict[tuple[str, str], dict[str, str]] = {
    ("", "namespaces"): {
        "list": "kopf namespace_observer: match watchNamespaces patterns",
        "watch": "kopf namespace_observer: notice namespaces created later",
    },
}


def merged(*tables: dict[tuple[str, str], dict[str, str]]) -> dict[tuple[str, str], set[str]]:
    result: dict[tuple[str, str], set[str]] = {}
    for table in tables:
        for key, verbs in table.items():
            result.setdefault(key, set()).update(verbs)
    return result


ALL_ALLOWED = merged(
    NAMESPACED_ALLOWED, PEERING_NAMESPACED, PEERING_CLUSTER, CLUSTER_ONLY, NAMESPACE_OBSERVER
)

SHAPES: dict[str, tuple[list[str], dict[tuple[str, str], set[str]]]] = {
    # name: (helm --set values, the exact rights expected)
    "default": ([], merged(NAMESPACED_ALLOWED, CLUSTER_ONLY)),
    "namespaced": (
        ["rbac.namespaced=true", "watchNamespaces={team-a,team-b}"],
        merged(NAMESPACED_ALLOWED),
    ),
    "replicas2": (["replicaCount=2"], merged(NAMESPACED_ALLOWED, CLUSTER_ONLY, PEERING_CLUSTER)),
    "namespaced-replicas2": (
        ["rbac.namespaced=true", "watchNamespaces={team-a}", "replicaCount=2"],
        merged(NAMESPACED_ALLOWED, PEERING_NAMESPACED),
    ),
    "cluster-rbac-listed-namespaces": (
        ["watchNamespaces={team-*}"],
        merged(NAMESPACED_ALLOWED, CLUSTER_ONLY, NAMESPACE_OBSERVER),
    ),
    # Budgets read the chain by name whatever admission says (spend.BudgetKeeper.write).
    "no-admission": (["admission.enabled=false"], merged(NAMESPACED_ALLOWED, CLUSTER_ONLY)),
}


# ----------------------------------------------------------------------------- helpers


def helm_binary() -> str:
    try:
        return cluster_helpers.helm_path()
    except cluster_helpers.ClusterError:
        pytest.skip("helm not found: `make cluster-build` builds .cache/bin/helm (CI does)")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def set_args(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def render(values: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """``helm template`` output: the text and the parsed objects."""
    text = helm("template", "rel", str(CHART), "--namespace", "chainop-system", *set_args(values))
    objects = [doc for doc in yaml.safe_load_all(text.stdout) if doc]
    return text.stdout, objects


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def rights(objects: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """Every verb granted by the (Cluster)Roles, per (apiGroup, resource)."""
    granted: dict[tuple[str, str], set[str]] = {}
    for role in of_kind(objects, "ClusterRole") + of_kind(objects, "Role"):
        for rule in role["rules"]:
            assert "resourceNames" not in rule
            assert "nonResourceURLs" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    assert "*" not in (group, resource)
                    assert "*" not in rule["verbs"]
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


# ----------------------------------------------------------------------------- CRDs


def test_chart_crds_are_the_generated_crds_byte_for_byte():
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert generated, "crds/ is empty"
    for name in generated:
        chart_copy = CHART / "crds" / name
        assert chart_copy.is_file(), f"charts/chainop/crds/{name} is missing: {RESYNC}"
        assert chart_copy.read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/chainop/crds/{name} differs from crds/{name}: {RESYNC}"
        )
    extra = sorted(p.name for p in (CHART / "crds").glob("*.yaml") if p.name not in generated)
    assert extra == ["kopf-peerings.kopf.dev.yaml"], (
        f"unexpected CRD files in the chart (removed from crds/?): {extra}: {RESYNC}"
    )


def test_kopf_peering_crds_are_in_the_chart():
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peerings.kopf.dev.yaml").read_text()))
    scopes = {d["metadata"]["name"]: d["spec"]["scope"] for d in docs}
    assert scopes == {
        "clusterkopfpeerings.kopf.dev": "Cluster",
        "kopfpeerings.kopf.dev": "Namespaced",
    }


# ----------------------------------------------------------------------------- lint and render


@pytest.mark.parametrize("shape", ["default", "namespaced", "replicas2"])
def test_helm_lint_passes(shape: str):
    result = helm("lint", "--strict", str(CHART), *set_args(SHAPES[shape][0]))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_rbac_verbs_are_exactly_the_allow_table(shape: str):
    values, expected = SHAPES[shape]
    _, objects = render(values)
    granted = rights(objects)
    unexplained = {
        key: sorted(verbs - ALL_ALLOWED.get(key, set()))
        for key, verbs in granted.items()
        if verbs - ALL_ALLOWED.get(key, set())
    }
    assert not unexplained, f"verbs granted without a reason in the allow-table: {unexplained}"
    assert granted == expected


def test_every_rbac_rule_is_commented():
    for values in (SHAPES["default"][0], SHAPES["namespaced-replicas2"][0], ["replicaCount=2"]):
        text, _ = render(values)
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if line.startswith("- apiGroups:"):
                assert lines[number - 1].startswith("#"), f"uncommented rule: {line!r}"


def test_namespaced_rbac_creates_nothing_cluster_scoped():
    _, objects = render(SHAPES["namespaced"][0])
    assert not of_kind(objects, "ClusterRole")
    assert not of_kind(objects, "ClusterRoleBinding")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in of_kind(objects, "Role")}
    assert roles == {("team-a", "rel-chainop"), ("team-b", "rel-chainop")}
    for binding in of_kind(objects, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "rel-chainop", "namespace": "chainop-system"}
        ]


def deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = of_kind(objects, "Deployment")
    return found


def test_pod_runs_non_root_read_only_without_privileges():
    _, objects = render([])
    pod = deployment(objects)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http-healthz"}
    assert {"name": "http-healthz", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert container["image"] == "ghcr.io/chainop/chainop:0.1.0"


def test_operator_flags():
    _, objects = render([])
    args = deployment(objects)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["run", "--all-namespaces"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in args
    assert "--metrics-port=9090" in args
    assert "--log-format=json" in args
    assert not [a for a in args if a.startswith("--peering")]
    assert "--no-audit" not in args  # the audit trail on stdout by default
    _, objects = render(["operator.audit=false"])
    assert "--no-audit" in deployment(objects)["spec"]["template"]["spec"]["containers"][0]["args"]

    _, objects = render(SHAPES["namespaced"][0])
    args = deployment(objects)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args
    assert "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def test_peering_lifetime_is_passed_to_the_operator():
    _, objects = render(["replicaCount=2", "peering.lifetimeSeconds=12"])
    args = deployment(objects)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering-lifetime=12" in args


def test_peering_rbac_grants_what_chainop_reads_too():
    """The bug of issue 13: kopf's list/watch/patch were granted, chainop's own ``get`` of
    the peering object (Leadership.check) was not, so no replica ever became active."""
    for shape, resource in (
        ("replicas2", ("kopf.dev", "clusterkopfpeerings")),
        ("namespaced-replicas2", ("kopf.dev", "kopfpeerings")),
    ):
        _, objects = render(SHAPES[shape][0])
        assert rights(objects)[resource] == {"get", "list", "watch", "patch"}, shape


def test_two_replicas_peer_through_kopf():
    _, objects = render(["replicaCount=2"])
    spec = deployment(objects)["spec"]
    assert spec["replicas"] == 2
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert "--peering=chainop" in args
    assert "--peering-lifetime=10" in args  # not kopf's 60 s: takeover within ~11 s
    (peering,) = of_kind(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "chainop"

    _, objects = render(SHAPES["namespaced-replicas2"][0])
    assert [p["metadata"]["namespace"] for p in of_kind(objects, "KopfPeering")] == ["team-a"]
    assert not of_kind(objects, "ClusterKopfPeering")


def test_optional_objects_are_off_by_default_and_render_when_on():
    _, objects = render([])
    assert not of_kind(objects, "ServiceMonitor")
    assert not of_kind(objects, "ConfigMap")
    assert [s["metadata"]["name"] for s in of_kind(objects, "Service")] == [
        "rel-chainop-metrics",
        "rel-chainop-webhook",  # admission is on by default (test_admission_chart.py)
    ]

    _, objects = render(["metrics.serviceMonitor.enabled=true", "metrics.dashboard.enabled=true"])
    (monitor,) = of_kind(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http-metrics"
    (dashboard,) = of_kind(objects, "ConfigMap")
    panels = json.loads(dashboard["data"]["chainop.json"])["panels"]
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for metric in (
        "chainop_tasks_total",
        "chainop_provider_requests_total",
        "chainop_failovers_total",
        "chainop_spillovers_total",
        "chainop_provider_state",
        "chainop_backend_restarts_total",
    ):
        assert metric in exprs


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["rbac.namespaced=true"], "needs watchNamespaces"),
        (["rbac.namespaced=true", "watchNamespaces={team-*}"], "not globs"),
        (["replicaCount=2", "watchNamespaces={team-*}"], "cannot create for globs"),
        (["operator.logFormat=xml"], "logFormat"),
        (["peering.lifetimeSeconds=5"], "lifetimeSeconds"),
        (["unknownValue=1"], "unknownValue"),
    ],
)
def test_impossible_values_fail_with_a_message(values: list[str], message: str):
    result = helm("template", "rel", str(CHART), *set_args(values), check=False)
    assert result.returncode != 0
    assert message in result.stderr


# ----------------------------------------------------------------------------- values.yaml


def test_every_value_is_commented():
    """Each key has a comment right above it, or sits inside a commented block."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        previous = next((p for p in reversed(lines[:number]) if p.strip()), "")
        documented = previous.strip().startswith("#")
        inherited = any(d for _, d in stack) and not line.rstrip().endswith(":")
        if not documented and not inherited and not line.rstrip().endswith(":"):
            undocumented.append(line.strip())
        stack.append((indent, documented or inherited))
    assert not undocumented, f"values without a comment: {undocumented}"
