"""We test these aspects: the CRDs generated from the models.

* ``crds/`` is not stale (regenerated in memory, compared byte for byte);
* the schemas are structural: a type everywhere, no ``$ref``/``anyOf``/``allOf``/``oneOf``/
  ``title``/``additionalProperties``, a description on every property, no ``default:
  null``, 2020-12 numeric ``exclusiveMinimum`` turned into OpenAPI v3.0 booleans;
* the details that matter to users: integer vs number, ``date-time``, enums, preserved
  ``parameters``, ``default: {}`` on default_factory objects so the apiserver fills the
  effective spec (simulated here: apiserver defaulting == pydantic's defaults);
* names, scope, status subresource, short names, categories and printer columns, and that
  every column points at a field that exists with the column's type;
* round trip: DESIGN.md's examples validate with pydantic AND against the generated schema
  (a tiny structural-schema validator below; no new dependency), status dumps of the models
  validate against the status schema, and invalid objects are rejected by both;
* the generator fails loudly on constructs it cannot express, and the CLI writes/checks.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from chainop import crds
from chainop.core import models

REPO_ROOT = Path(__file__).resolve().parents[2]
FIX = "regenerate with: .venv/bin/python -m chainop.crds --write crds/"

PROVIDER_CHAIN_SPEC: dict[str, Any] = {  # DESIGN.md, "ProviderChain"
    "strategy": "Fallback",
    "providers": [
        {
            "name": "local-vllm",
            "type": "openai",
            "endpoint": "http://vllm.team-a.svc:8000/v1",
            "model": "qwen2.5-7b-instruct",
            "privacyTier": "Sovereign",
            "backend": {"deployment": "vllm"},
            "capabilities": {"contextWindow": 32768, "vision": False, "tools": True},
            "timeoutSeconds": 60,
        },
        {
            "name": "openai",
            "type": "openai",
            "endpoint": "https://api.openai.com/v1",
            "model": "gpt-4o-mini",
            "privacyTier": "Standard",
            "apiKeySecretRef": {"name": "openai-key", "key": "apiKey"},
            "cost": {"inputPerMillionTokens": 0.15, "outputPerMillionTokens": 0.60},
            "exemptFromCooldown": False,
        },
    ],
    "health": {
        "failureThreshold": 2,
        "transientRetries": 1,
        "cooldown": {"initialSeconds": 5, "maxSeconds": 300},
        "probe": {"intervalSeconds": 15, "timeoutSeconds": 5, "unhealthyThreshold": 3},
    },
    "selfHealing": {
        "exclude": True,
        "restartBackends": True,
        "maxRestartsPerHour": 3,
        "recovery": {"initialSeconds": 30, "maxSeconds": 300},
    },
    "advanceOnPermanentError": False,
    "taskDefaults": {"allowDelegation": False},
}

DELEGATED_TASK_SPEC: dict[str, Any] = {  # DESIGN.md, "DelegatedTask"
    "chain": "default",
    "routing": {
        "preferredProvider": "auto",
        "allowDelegation": True,
        "requiresLocal": False,
        "complexityHint": "medium",
    },
    "request": {
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Summarise ..."}],
        "maxTokens": 256,
        "temperature": 0.2,
    },
    "timeoutSeconds": 120,
    "ttlSecondsAfterFinished": 3600,
}

T = datetime(2026, 1, 1, tzinfo=UTC)


def manifest(kind: str) -> dict[str, Any]:
    [crd] = [crd for crd in crds.crd_manifests() if crd["spec"]["names"]["kind"] == kind]
    return crd


def root_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = manifest(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def spec_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = root_schema(kind)["properties"]["spec"]
    return schema


def status_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = root_schema(kind)["properties"]["status"]
    return schema


def at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    """The schema node at ``a.b[].c`` (``[]`` steps into array items)."""
    node = schema
    for step in dotted.split("."):
        name, brackets = step.removesuffix("[]"), step.endswith("[]")
        node = node["properties"][name]
        if brackets:
            node = node["items"]
    return node


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path, depth first."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


# --------------------------------------------------------------------------- a tiny validator


def violations(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """What the apiserver (with kubectl's strict field validation) would object to.

    Covers exactly the keywords the generator emits; unknown fields are errors, as with
    ``kubectl apply`` (``fieldValidation=Strict``).
    """
    if value is None:
        return [] if schema.get("nullable") else [f"{path}: null"]
    kind = schema["type"]
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    }
    if not checks[kind](value):
        return [f"{path}: {value!r} is not {kind}"]
    found: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and (
        value <= schema["minimum"] if schema.get("exclusiveMinimum") else value < schema["minimum"]
    ):
        found.append(f"{path}: {value!r} below minimum")
    if "maximum" in schema and (
        value >= schema["maximum"] if schema.get("exclusiveMaximum") else value > schema["maximum"]
    ):
        found.append(f"{path}: {value!r} above maximum")
    if kind == "string":
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1e18):
            found.append(f"{path}: length {len(value)} out of bounds")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if schema.get("format") == "date-time":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                found.append(f"{path}: {value!r} is not a date-time")
    if kind == "array":
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1e18):
            found.append(f"{path}: {len(value)} items out of bounds")
        for index, item in enumerate(value):
            found += violations(schema["items"], item, f"{path}[{index}]")
    if kind == "object" and not schema.get("x-kubernetes-preserve-unknown-fields"):
        properties = schema.get("properties", {})
        found += [
            f"{path}.{name}: required" for name in schema.get("required", ()) if name not in value
        ]
        for name, item in value.items():
            if name not in properties:
                found.append(f"{path}.{name}: unknown field")
            else:
                found += violations(properties[name], item, f"{path}.{name}")
    return found


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """What the apiserver stores: absent properties with a default get it, recursively."""
    if isinstance(value, dict) and "properties" in schema:
        value = dict(value)
        for name, child in schema["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def without_empty(value: Any) -> Any:
    """Pydantic's dump minus None and empty lists: what an absent field means."""
    if isinstance(value, dict):
        return {k: without_empty(v) for k, v in value.items() if v is not None and v != []}
    if isinstance(value, list):
        return [without_empty(item) for item in value]
    return value


# --------------------------------------------------------------------------- staleness


def test_crds_directory_is_not_stale() -> None:
    for name, text in crds.render_files().items():
        path = REPO_ROOT / "crds" / name
        assert path.is_file(), f"{path} is missing; {FIX}"
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale; {FIX}"


def test_render_yaml_is_both_crds_behind_the_do_not_edit_header() -> None:
    text = crds.render_yaml()
    assert text.startswith("# generated from chainop.core.models — do not edit;")
    assert "python -m chainop.crds --write crds/" in text.splitlines()[0]
    assert list(yaml.safe_load_all(text)) == crds.crd_manifests()
    assert crds.render_yaml() == text  # stable


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("kind", ["ProviderChain", "DelegatedTask"])
def test_schema_is_structural_and_every_property_is_described(kind: str) -> None:
    forbidden = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "additionalProperties"}
    for path, node in walk(root_schema(kind)):
        assert not forbidden & node.keys(), f"{kind}{path}: {forbidden & node.keys()}"
        assert "type" in node, f"{kind}{path}: no type"
        assert node.get("default", 0) is not None, f"{kind}{path}: default null"
        for exclusive in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(exclusive, True) is True, f"{kind}{path}: numeric {exclusive}"
        is_property = not path.endswith("[]")  # items of a list of strings need none
        if path not in ("", ".metadata") and (is_property or node["type"] == "object"):
            assert node.get("description"), f"{kind}{path}: no description"
        if node["type"] == "object" and "properties" not in node and path != ".metadata":
            assert node.get("x-kubernetes-preserve-unknown-fields") is True, f"{kind}{path}"


def test_exclusive_bounds_are_openapi_v3_booleans() -> None:
    timeout = at(spec_schema("ProviderChain"), "providers[].timeoutSeconds")
    assert timeout["minimum"] == 0
    assert timeout["exclusiveMinimum"] is True
    assert timeout["maximum"] == 3600
    assert "exclusiveMaximum" not in timeout
    interval = at(spec_schema("ProviderChain"), "health.probe.intervalSeconds")
    assert interval["minimum"] == 1
    assert "exclusiveMinimum" not in interval


def test_integers_numbers_datetimes_and_enums() -> None:
    chain, task = spec_schema("ProviderChain"), spec_schema("DelegatedTask")
    assert at(chain, "providers[].timeoutSeconds")["type"] == "number"
    assert at(chain, "health.failureThreshold")["type"] == "integer"
    assert at(task, "request.maxTokens")["type"] == "integer"
    assert at(task, "request.temperature") == {
        "description": "Sampling temperature; unset: provider default.",
        "type": "number",
        "nullable": True,
        "minimum": 0,
        "maximum": 2,
    }
    assert at(status_schema("DelegatedTask"), "result.costUSD")["type"] == "number"
    cooldown_until = at(status_schema("ProviderChain"), "providers[].cooldownUntil")
    assert cooldown_until["type"] == "string"
    assert cooldown_until["format"] == "date-time"
    assert cooldown_until["nullable"] is True
    condition_status = at(status_schema("ProviderChain"), "conditions[].status")
    assert condition_status["enum"] == ["True", "False", "Unknown"]  # a Literal
    tier = at(chain, "providers[].privacyTier")
    assert tier["enum"] == ["Sovereign", "Private", "Standard"]
    assert tier["default"] == "Standard"


def test_tool_parameters_are_preserved_free_form() -> None:
    parameters = at(spec_schema("DelegatedTask"), "request.tools[].parameters")
    assert parameters["type"] == "object"
    assert parameters["x-kubernetes-preserve-unknown-fields"] is True
    assert "properties" not in parameters


def test_default_factory_objects_default_to_empty_so_nested_defaults_apply() -> None:
    chain = spec_schema("ProviderChain")
    for path in ("health", "health.cooldown", "health.probe", "selfHealing", "taskDefaults"):
        assert at(chain, path)["default"] == {}, path
    assert at(chain, "providers[].capabilities")["default"] == {}
    assert at(spec_schema("DelegatedTask"), "routing")["default"] == {}
    assert "default" not in at(chain, "providers[].backend")  # Optional: absent means none


@pytest.mark.parametrize(
    ("kind", "minimal", "model"),
    [
        (
            "ProviderChain",
            {"providers": [{"name": "a", "endpoint": "http://a/v1", "model": "m"}]},
            models.ProviderChainSpec,
        ),
        (
            "DelegatedTask",
            {"chain": "c", "request": {"messages": [{"content": "hi"}]}},
            models.DelegatedTaskSpec,
        ),
    ],
)
def test_apiserver_defaults_equal_pydantic_defaults(
    kind: str, minimal: dict[str, Any], model: type[pydantic.BaseModel]
) -> None:
    stored = apply_defaults(spec_schema(kind), minimal)
    effective = without_empty(model.model_validate(minimal).model_dump(by_alias=True, mode="json"))
    assert without_empty(stored) == effective
    assert model.model_validate(stored) == model.model_validate(minimal)


# --------------------------------------------------------------------------- names, columns


@pytest.mark.parametrize(
    ("kind", "plural", "short"),
    [("ProviderChain", "providerchains", "pchain"), ("DelegatedTask", "delegatedtasks", "dtask")],
)
def test_names_scope_version_and_status_subresource(kind: str, plural: str, short: str) -> None:
    crd = manifest(kind)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{plural}.chainop.dev"
    spec = crd["spec"]
    assert spec["group"] == "chainop.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
        "shortNames": [short],
        "categories": ["chainop"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    root = version["schema"]["openAPIV3Schema"]
    assert root["required"] == ["spec"]
    assert list(root["properties"]) == ["apiVersion", "kind", "metadata", "spec", "status"]
    assert root["properties"]["metadata"] == {"type": "object"}


def columns(kind: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = manifest(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    return found


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (
            "ProviderChain",
            [
                ("Strategy", ".spec.strategy", 0),
                ("Healthy", ".status.healthySummary", 0),
                ("Active", ".status.active", 0),
                ("Tier", ".status.effectivePrivacyTier", 0),
                ("Ready", '.status.conditions[?(@.type=="Ready")].status', 0),
                ("Reason", '.status.conditions[?(@.type=="Ready")].reason', 1),
                ("Age", ".metadata.creationTimestamp", 0),
            ],
        ),
        (
            "DelegatedTask",
            [
                ("Phase", ".status.phase", 0),
                ("Provider", ".status.provider", 0),
                ("Attempts", ".status.attemptCount", 0),
                ("Latency", ".status.latency", 0),
                ("Cost", ".status.cost", 0),
                ("Chain", ".spec.chain", 1),
                ("Reason", '.status.conditions[?(@.type=="Succeeded")].reason', 1),
                ("Age", ".metadata.creationTimestamp", 0),
            ],
        ),
    ],
)
def test_printer_columns(kind: str, expected: list[tuple[str, str, int]]) -> None:
    found = columns(kind)
    assert [(c["name"], c["jsonPath"], c.get("priority", 0)) for c in found] == expected
    assert found[-1]["type"] == "date"
    assert all(column["description"] for column in found)


@pytest.mark.parametrize("kind", ["ProviderChain", "DelegatedTask"])
def test_every_printer_column_points_at_a_field_of_its_type(kind: str) -> None:
    root = root_schema(kind)
    for column in columns(kind):
        if column["jsonPath"].startswith(".metadata."):
            continue
        dotted = re.sub(r"\[\?\(@\.type==\"\w+\"\)\]", "[]", column["jsonPath"].lstrip("."))
        field = at(root, dotted)
        assert field["type"] == column["type"], column["name"]


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    ("kind", "spec", "model"),
    [
        ("ProviderChain", PROVIDER_CHAIN_SPEC, models.ProviderChainSpec),
        ("DelegatedTask", DELEGATED_TASK_SPEC, models.DelegatedTaskSpec),
    ],
)
def test_design_examples_validate_with_pydantic_and_the_crd(
    kind: str, spec: dict[str, Any], model: type[pydantic.BaseModel]
) -> None:
    model.model_validate(spec)
    assert violations(spec_schema(kind), spec) == []
    dumped = model.model_validate(spec).model_dump(by_alias=True, mode="json")
    assert violations(spec_schema(kind), dumped) == []


def test_status_dumps_of_the_models_validate_against_the_status_schemas() -> None:
    condition = models.Condition(
        type="Ready", status="True", reason="ProvidersAvailable", last_transition_time=T
    )
    chain_status = models.ProviderChainStatus(
        observed_generation=4,
        conditions=[condition],
        healthy=2,
        total=3,
        healthy_summary="2/3",
        active_order=["local-vllm", "openai"],
        active="local-vllm",
        effective_privacy_tier=models.PrivacyTier.STANDARD,
        providers=[
            models.ProviderStatus(
                name="local-vllm", last_probe_time=T, last_probe_latency_ms=12, restarts=1
            )
        ],
    )
    task_status = models.DelegatedTaskStatus(
        phase=models.TaskPhase.SUCCEEDED,
        decision=models.Decision(provider="local-vllm", reason="allowDelegation=false (default)"),
        attempts=[
            models.Attempt(provider="local-vllm", outcome="TransientError", latency_ms=4),
            models.Attempt(provider="openai", outcome="Succeeded", latency_ms=812, started_at=T),
        ],
        attempt_count=2,
        result=models.TaskResult(provider="openai", cost_usd=0.000047, latency_ms=816, attempt=2),
        conditions=[condition.model_copy(update={"type": "Succeeded"})],
        start_time=T,
    )
    for kind, status in (("ProviderChain", chain_status), ("DelegatedTask", task_status)):
        dumped = status.model_dump(by_alias=True, mode="json")
        assert violations(status_schema(kind), dumped) == [], kind


def with_change(spec: dict[str, Any], path: str, new: Any) -> dict[str, Any]:
    """A deep copy of ``spec`` with ``a.0.b`` set to ``new`` (or deleted if ``new`` is ...)."""
    changed = copy.deepcopy(spec)
    *parents, last = [int(step) if step.isdigit() else step for step in path.split(".")]
    node: Any = changed
    for step in parents:
        node = node[step]
    if new is ...:
        del node[last]
    else:
        node[last] = new
    return changed


@pytest.mark.parametrize(
    ("kind", "model", "path", "new"),
    [
        ("ProviderChain", models.ProviderChainSpec, "strategy", "Sometimes"),
        ("ProviderChain", models.ProviderChainSpec, "providers.0.privacyTier", "Secret"),
        ("ProviderChain", models.ProviderChainSpec, "health.transientRetries", -1),
        ("ProviderChain", models.ProviderChainSpec, "providers.0.timeoutSeconds", 0),
        ("ProviderChain", models.ProviderChainSpec, "providers.0.name", "Not_A_Label"),
        ("ProviderChain", models.ProviderChainSpec, "providers.0.endpoint", "http://u:p@x/v1"),
        ("ProviderChain", models.ProviderChainSpec, "providers.0.model", ...),
        ("ProviderChain", models.ProviderChainSpec, "providers", []),
        ("ProviderChain", models.ProviderChainSpec, "health.failureThreshold", 1.5),
        ("ProviderChain", models.ProviderChainSpec, "health.probe.typo", 1),
        ("DelegatedTask", models.DelegatedTaskSpec, "routing.complexityHint", "extreme"),
        ("DelegatedTask", models.DelegatedTaskSpec, "request.temperature", -0.1),
        ("DelegatedTask", models.DelegatedTaskSpec, "ttlSecondsAfterFinished", -1),
        ("DelegatedTask", models.DelegatedTaskSpec, "chain", ...),
        ("DelegatedTask", models.DelegatedTaskSpec, "request.messages", []),
    ],
)
def test_invalid_specs_are_rejected_by_both(
    kind: str, model: type[pydantic.BaseModel], path: str, new: Any
) -> None:
    example = PROVIDER_CHAIN_SPEC if kind == "ProviderChain" else DELEGATED_TASK_SPEC
    bad = with_change(example, path, new)
    with pytest.raises(pydantic.ValidationError):
        model.model_validate(bad)
    assert violations(spec_schema(kind), bad), f"the CRD accepts {path}={new!r}"


# --------------------------------------------------------------------------- loud failures


class _Union(pydantic.BaseModel):
    """A model with a union the CRD cannot express."""

    value: int | str = pydantic.Field(description="Either.")


class _TypedMap(pydantic.BaseModel):
    """A model with a typed map (not supported yet)."""

    labels: dict[str, int] = pydantic.Field(default_factory=dict, description="Counts.")


class _Undescribed(pydantic.BaseModel):
    """A model whose field has no description."""

    value: int = 0


@pytest.mark.parametrize(
    ("model", "message"),
    [(_Union, "anyOf"), (_TypedMap, "typed maps"), (_Undescribed, "no description")],
)
def test_inexpressible_models_fail_generation(
    model: type[pydantic.BaseModel], message: str
) -> None:
    with pytest.raises(crds.UnsupportedSchema, match=message):
        crds.structural(model, mode="validation")


# --------------------------------------------------------------------------- CLI


def test_cli_writes_checks_and_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crds.main(["--check", str(tmp_path)]) == 1
    assert "--write crds/" in capsys.readouterr().err
    assert crds.main(["--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "delegatedtasks.chainop.dev.yaml",
        "providerchains.chainop.dev.yaml",
    ]
    assert crds.main(["--check", str(tmp_path)]) == 0
    capsys.readouterr()
    assert crds.main([]) == 0
    assert capsys.readouterr().out == crds.render_yaml()
