"""We test these aspects: the files in examples/ are valid and do what their comments say.

* every ProviderChain and DelegatedTask parses with the API models (the same validation the
  operator applies), and every document has a known apiVersion/kind;
* every task routes as its ``# Routes to: A, B (reason: "...")`` comment claims, through
  ``chainop.core.routing.decide`` on the chain it names;
* the six routing rules are each shown by some example;
* what the chains reference exists in the examples: Secrets (and their keys), the vLLM
  Deployment, and a Service answering on the endpoint's port.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from chainop.core import routing
from chainop.core.models import API_VERSION, DelegatedTaskSpec, PrivacyTier, ProviderChainSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROUTES_TO = re.compile(r'^# Routes to: (?P<providers>.+?) \(reason: "(?P<reason>.*)"\)$', re.M)


def documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of one file (empty documents left out)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(EXAMPLES.rglob("*.yaml")) for doc in documents(path)]


def of_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path, doc in all_documents() if doc.get("kind") == kind]


def chains() -> dict[str, ProviderChainSpec]:
    return {
        doc["metadata"]["name"]: ProviderChainSpec.model_validate(doc["spec"])
        for _, doc in of_kind("ProviderChain")
    }


TASK_FILES = sorted((EXAMPLES / "tasks").glob("*.yaml"))


def test_examples_exist() -> None:
    names = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.yaml")}
    for wanted in ("provider-chain.yaml", "secrets.yaml", "vllm-deployment.yaml"):
        assert wanted in names
    assert len(TASK_FILES) >= 6


@pytest.mark.parametrize(
    ("path", "doc"),
    all_documents(),
    ids=lambda v: v.name if isinstance(v, Path) else v.get("kind", "?"),
)
def test_every_document_is_a_known_kind_with_a_name(path: Path, doc: dict[str, Any]) -> None:
    known = {
        ("v1", "Secret"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        (API_VERSION, "ProviderChain"),
        (API_VERSION, "DelegatedTask"),
    }
    assert (doc.get("apiVersion"), doc.get("kind")) in known, path
    assert doc["metadata"]["name"]
    assert "namespace" not in doc["metadata"], "examples are applied with kubectl -n"


def test_chains_parse_and_default_mixes_sovereign_and_cloud() -> None:
    found = chains()
    assert set(found) >= {"default", "batch"}
    default = found["default"]
    types = {p.name: (p.type.value, p.privacy_tier) for p in default.providers}
    assert types == {
        "vllm": ("openai", PrivacyTier.SOVEREIGN),
        "openai": ("openai", PrivacyTier.STANDARD),
        "anthropic": ("anthropic", PrivacyTier.STANDARD),
    }
    vllm = default.provider("vllm")
    assert vllm is not None
    assert vllm.backend is not None
    assert vllm.backend.deployment == "vllm"
    openai = default.provider("openai")
    assert openai is not None
    assert openai.endpoint == "https://api.openai.com/v1"
    assert openai.model == "gpt-4o-mini"
    anthropic = default.provider("anthropic")
    assert anthropic is not None
    assert anthropic.endpoint == "https://api.anthropic.com"
    assert anthropic.model.startswith("claude")
    assert any(p.type.value == "jobs" for p in found["batch"].providers)


def test_referenced_secrets_and_keys_exist_with_placeholders() -> None:
    secrets = {doc["metadata"]["name"]: doc for _, doc in of_kind("Secret")}
    for name, chain in chains().items():
        for provider in chain.providers:
            ref = provider.api_key_secret_ref
            if ref is None:
                continue
            assert ref.name in secrets, f"chain {name}: Secret {ref.name} not in examples"
            value = secrets[ref.name]["stringData"][ref.key]
            assert "REPLACE-ME" in value, "examples must never hold a real key"


def test_referenced_deployments_and_services_exist() -> None:
    deployments = {doc["metadata"]["name"]: doc for _, doc in of_kind("Deployment")}
    services = {doc["metadata"]["name"]: doc for _, doc in of_kind("Service")}
    for chain in chains().values():
        for provider in chain.providers:
            if provider.backend is None:
                continue
            deployment = deployments[provider.backend.deployment]
            # The endpoint names a Service that selects the Deployment's pods, on its port.
            url = urlsplit(provider.endpoint)
            service = services[url.hostname or ""]
            selector = service["spec"]["selector"]
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items()
            assert url.port in {p["port"] for p in service["spec"]["ports"]}
            assert provider.privacy_tier is PrivacyTier.SOVEREIGN


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.name)
def test_task_routes_as_its_comment_claims(path: Path) -> None:
    text = path.read_text()
    claim = ROUTES_TO.search(text)
    assert claim, f"{path.name} has no '# Routes to: ... (reason: \"...\")' comment"
    expected = tuple(name.strip() for name in claim["providers"].split(","))
    (doc,) = documents(path)
    assert doc["kind"] == "DelegatedTask"
    assert doc["metadata"]["name"] == path.stem, "the file is named after its task"
    task = DelegatedTaskSpec.model_validate(doc["spec"])
    decision = routing.decide(chains()[task.chain], task)
    assert decision.providers == expected
    assert decision.reason == claim["reason"]


def test_every_routing_rule_has_an_example() -> None:
    rules = set()
    for path in TASK_FILES:
        (doc,) = documents(path)
        task = DelegatedTaskSpec.model_validate(doc["spec"])
        rules.add(routing.decide(chains()[task.chain], task).rule)
    assert rules == {1, 2, 3, 4, 5, 6}


# ----------------------------------------------------------------- the demo's use of them


def test_demo_chains_keep_the_examples_meaning_with_fast_health() -> None:
    from chainop import demo

    endpoints = {
        "vllm": "http://127.0.0.1:1001/v1",
        "openai": "http://127.0.0.1:1002/v1",
        "anthropic": "http://127.0.0.1:1003",
        "batch-gateway": "http://127.0.0.1:1004",
    }
    for _, doc in of_kind("ProviderChain"):
        original = ProviderChainSpec.model_validate(doc["spec"])
        rewritten = ProviderChainSpec.model_validate(demo.demo_chain(doc, endpoints)["spec"])
        assert [p.endpoint for p in rewritten.providers] == [
            endpoints[p.name] for p in original.providers
        ]
        # Everything but endpoints and timings is the example's.
        for before, after in zip(original.providers, rewritten.providers, strict=True):
            assert before.model_copy(update={"endpoint": after.endpoint}) == after
        assert rewritten.task_defaults == original.task_defaults
        assert rewritten.health.probe.mode == original.health.probe.mode
        assert rewritten.health.probe.interval_seconds == 1
        # A restart is in flight for recovery.maxSeconds: longer than the demo's warm-up.
        assert rewritten.self_healing.recovery.max_seconds > demo.WARMUP_SECONDS + 1
        assert ProviderChainSpec.model_validate(doc["spec"]) == original  # example untouched
    for path in TASK_FILES:
        (task_doc,) = documents(path)
        task = DelegatedTaskSpec.model_validate(task_doc["spec"])
        chain_doc = next(
            d for _, d in of_kind("ProviderChain") if d["metadata"]["name"] == task.chain
        )
        fast = ProviderChainSpec.model_validate(demo.demo_chain(chain_doc, endpoints)["spec"])
        assert routing.decide(fast, task) == routing.decide(chains()[task.chain], task)
        assert demo.routing_claim(path) == (
            list(routing.decide(fast, task).providers),
            routing.decide(fast, task).reason,
        )


def test_demo_chain_needs_a_backend_for_every_provider() -> None:
    from chainop import demo

    (_, doc), *_ = of_kind("ProviderChain")
    with pytest.raises(demo.DemoError, match="no demo backend"):
        demo.demo_chain(doc, {})


def test_demo_secrets_replace_every_placeholder() -> None:
    from chainop import demo

    for _, doc in of_kind("Secret"):
        secret = demo.demo_secret(doc)
        assert all("REPLACE-ME" not in v for v in secret["stringData"].values())
        assert set(secret["stringData"]) == set(doc["stringData"])
        assert "REPLACE-ME" in next(iter(doc["stringData"].values()))  # the example is unchanged


def test_demo_command_line_defaults() -> None:
    from chainop import demo

    args = demo.build_parser().parse_args([])
    assert args.namespace == "chainop-demo"
    assert args.keep_cluster is False
    assert demo.build_parser().parse_args(["--keep-cluster"]).keep_cluster is True
