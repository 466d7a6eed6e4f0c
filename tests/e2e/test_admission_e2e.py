"""We test these aspects: the admission webhook, called by the real API server.

The operator runs with ``--admission-port`` on 127.0.0.1 and a certificate made here (a
CA and a serving certificate for IP 127.0.0.1, with the ``openssl`` command line); a
ValidatingWebhookConfiguration (``clientConfig.url`` + ``caBundle``, ``failurePolicy:
Ignore``, limited to this test's namespace) sends it ProviderChains and DelegatedTasks.
The corpus is ``tests/e2e/manifests/admission/*.yaml``; each file says what it expects:

* ``deny: TEXT`` — ``kubectl apply`` exits non-zero, stderr says the webhook denied the
  request with TEXT (the field first), and nothing is created;
* ``warn: TEXT`` — the object is created and kubectl prints ``Warning: TEXT``;
* ``ok`` — created without a warning;
* an update that leaves ``.spec`` alone (a label) is admitted without warnings;
* with the operator stopped, what it would deny is applied (failurePolicy Ignore);
* a standby replica (kopf peering, paused) answers admission as well as the active one;
* a renewed certificate (new files, new caBundle: what cert-manager does) is served
  without restarting the operator (kopf re-reads the files every 60 s);
* the cluster-scoped webhook configuration is deleted afterwards, whatever happened.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from chainop.testing import cluster as cluster_helpers
from chainop.testing.admission import (
    make_tls,
    serve_args,
    wait_listening,
    webhook_configuration,
)
from chainop.testing.cluster import kubectl
from tests.e2e.conftest import Operator

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "manifests" / "admission"
FILES = sorted(CORPUS.glob("*.yaml"))


def expectation(path: Path) -> tuple[str, str]:
    match = re.search(r"^# expect: (deny|warn|ok):?(.*)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} has no '# expect:' line"
    return match.group(1), match.group(2).strip()


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, tls.crt, tls.key): a CA and a serving certificate for IP 127.0.0.1."""
    return make_tls(tmp_path / "tls")


@pytest.fixture
def install_webhooks(kubeconfig: Path, namespace: str) -> Iterator[Callable[[int, bytes], None]]:
    """Install the webhook configuration; it is cluster-scoped, so always delete it."""
    name = f"chainop-e2e-{namespace}"

    def install(port: int, ca: bytes) -> None:
        manifest = yaml.safe_dump(webhook_configuration(name, namespace, port, ca))
        kubectl("apply", "-f", "-", input=manifest, kubeconfig=kubeconfig)

    yield install
    kubectl(
        "delete", "validatingwebhookconfiguration", name, "--ignore-not-found",
        kubeconfig=kubeconfig, check=False,
    )  # fmt: skip


def apply(path: Path, namespace: str, kubeconfig: Path, *extra: str):
    return kubectl("apply", "-n", namespace, "-f", str(path), *extra, check=False,
                   kubeconfig=kubeconfig)  # fmt: skip


def exists(path: Path, namespace: str, kubeconfig: Path) -> bool:
    result = kubectl("get", "-n", namespace, "-f", str(path), check=False, kubeconfig=kubeconfig)
    return result.returncode == 0


def wait_in_effect(path: Path, namespace: str, kubeconfig: Path, *, timeout: float = 60) -> None:
    """The API server picks a new webhook configuration up within moments: probe with a
    server-side dry run until it is denied (sideEffects None allows dry runs)."""
    deadline = time.monotonic() + timeout
    while True:
        result = apply(path, namespace, kubeconfig, "--dry-run=server")
        if "denied the request" in result.stderr:
            return
        assert time.monotonic() < deadline, f"webhook not in effect: {result.stderr}"
        time.sleep(0.3)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scan", [(), ("--no-cluster-scan",)], ids=["cluster-scan", "namespaced"])
def test_kubectl_apply_is_denied_or_warned_by_the_operator_and_ignored_without_it(
    scan: tuple[str, ...],
    start_operator: Callable[..., Operator],
    install_webhooks: Callable[[int, bytes], None],
    tls: tuple[Path, Path, Path],
    namespace: str,
    kubeconfig: Path,
) -> None:
    ca, crt, key = tls
    port = cluster_helpers.free_port()
    operator = start_operator(
        *scan,  # the chart's namespaced shape runs without kopf's cluster-wide scans
        *serve_args(port, crt, key),
    )
    wait_listening(port, ca)
    install_webhooks(port, ca.read_bytes())
    duplicate = CORPUS / "deny-duplicate-provider-names.yaml"
    wait_in_effect(duplicate, namespace, kubeconfig)

    transcript: list[str] = []
    order = sorted(FILES, key=lambda p: expectation(p)[0] != "ok")  # the chain tasks use first
    for path in order:
        kind, expected = expectation(path)
        result = apply(path, namespace, kubeconfig)
        transcript.append(f"$ kubectl apply -f {path.name}\n{result.stderr}{result.stdout}")
        if kind == "deny":
            assert result.returncode != 0, f"{path.name} was admitted: {result.stdout}"
            assert "denied the request" in result.stderr, result.stderr
            assert expected in result.stderr, f"{path.name}: {expected!r} not in {result.stderr}"
            assert not exists(path, namespace, kubeconfig), f"{path.name} was created"
        else:
            assert result.returncode == 0, f"{path.name}: {result.stderr}"
            assert exists(path, namespace, kubeconfig)
            if kind == "warn":
                assert f"Warning: {expected}" in result.stderr, (path.name, result.stderr)
            else:
                assert "Warning" not in result.stderr, (path.name, result.stderr)

    # An update that leaves the spec alone is admitted without a review (no warning again).
    relabel = kubectl(
        "label", "-n", namespace, "providerchain", "warn-drain-unknown-provider", "team=a",
        kubeconfig=kubeconfig,
    )  # fmt: skip
    assert "Warning" not in relabel.stderr, relabel.stderr
    assert "Traceback" not in operator.log()

    # Operator down: the API server cannot reach the webhook and, failurePolicy Ignore,
    # admits what it would have denied.
    assert operator.runner is not None
    operator.runner.stop()
    result = apply(duplicate, namespace, kubeconfig)
    transcript.append(f"$ kubectl apply -f {duplicate.name}   # operator stopped\n{result.stdout}")
    assert result.returncode == 0, result.stderr
    assert exists(duplicate, namespace, kubeconfig)
    print("\n" + "\n".join(transcript))


def leadership(operator: Operator) -> dict[str, object]:
    """The replica's leadership report from its /healthz (kopf's liveness endpoint)."""
    url = f"http://127.0.0.1:{operator.liveness_port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as reply:
        report: dict[str, object] = json.loads(reply.read())["leadership"]
    return report


@pytest.mark.timeout(300)
def test_a_standby_replica_answers_admission_too(
    start_operator: Callable[..., Operator],
    install_webhooks: Callable[[int, bytes], None],
    tls: tuple[Path, Path, Path],
    namespace: str,
    kubeconfig: Path,
) -> None:
    """Two peered replicas; the webhook points at the standby only, and it still denies
    and warns (including the warning that needs the chain read from the API)."""
    peerings = ROOT / "charts" / "chainop" / "crds" / "kopf-peerings.kopf.dev.yaml"
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(peerings),
            kubeconfig=kubeconfig)  # fmt: skip
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/kopfpeerings.kopf.dev", kubeconfig=kubeconfig)  # fmt: skip
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
               "metadata": {"name": "chainop", "namespace": namespace}}  # fmt: skip
    kubectl("apply", "-f", "-", input=yaml.safe_dump(peering), kubeconfig=kubeconfig)
    ca, crt, key = tls

    def replica(priority: int, port: int) -> Operator:
        return start_operator(
            *("--peering", "chainop", "--priority", str(priority)),
            *serve_args(port, crt, key),
        )

    active = replica(100, cluster_helpers.free_port())
    assert active.runner is not None
    active.runner.wait_for_log(r"this replica .* is now active", timeout=60)
    standby_port = cluster_helpers.free_port()
    standby = replica(1, standby_port)
    wait_listening(standby_port, ca)
    assert leadership(standby)["active"] is False
    install_webhooks(standby_port, ca.read_bytes())
    wait_in_effect(CORPUS / "deny-every-provider-drained.yaml", namespace, kubeconfig)

    assert apply(CORPUS / "chain-cloud.yaml", namespace, kubeconfig).returncode == 0
    result = apply(CORPUS / "warn-task-requires-local.yaml", namespace, kubeconfig)
    assert result.returncode == 0, result.stderr
    assert "Warning: spec.routing.requiresLocal: " in result.stderr
    assert leadership(standby)["active"] is False  # it answered as a standby
    assert "Traceback" not in standby.log()


@pytest.mark.timeout(300)
def test_a_renewed_certificate_is_served_without_a_restart(
    start_operator: Callable[..., Operator],
    install_webhooks: Callable[[int, bytes], None],
    tmp_path: Path,
    namespace: str,
    kubeconfig: Path,
) -> None:
    """As cert-manager renews: the mounted files change, the cainjector updates caBundle."""
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    first_ca, first_crt, first_key = make_tls(tmp_path / "first")
    crt, key = mounted / "tls.crt", mounted / "tls.key"
    shutil.copy(first_crt, crt)
    shutil.copy(first_key, key)
    port = cluster_helpers.free_port()
    operator = start_operator(
        *serve_args(port, crt, key),
    )
    wait_listening(port, first_ca)
    install_webhooks(port, first_ca.read_bytes())
    denied = CORPUS / "deny-only-provider-drained.yaml"
    wait_in_effect(denied, namespace, kubeconfig)

    second_ca, second_crt, second_key = make_tls(tmp_path / "second")
    for source, target in ((second_crt, crt), (second_key, key)):
        staged = target.with_suffix(".new")
        shutil.copy(source, staged)
        staged.replace(target)  # atomically, as the kubelet swaps a Secret volume
    install_webhooks(port, second_ca.read_bytes())
    wait_listening(port, second_ca, timeout=120)  # kopf noticed and restarted its server
    wait_in_effect(denied, namespace, kubeconfig)
    assert operator.runner is not None
    assert operator.runner.running  # the same process: no restart
    assert "Traceback" not in operator.log()
