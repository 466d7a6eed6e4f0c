"""The two CustomResourceDefinitions, generated from the pydantic models.

Why generate: ``chainop.core.models`` is the single source of truth of the API. Writing the
CRD schemas by hand would let them drift from what the operator actually parses; here every
bound, enum, default and description in ``kubectl explain`` comes from the same ``Field``
that validates the object in Python. ``crds/`` holds the rendered files so that
``kubectl apply -f crds/`` and Helm work without Python; a unit test fails when they are
stale.

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3 schema.
:func:`structural` bridges the two (purely computational, no side effects):

* ``$ref``/``$defs`` are inlined (structural schemas cannot refer to anything);
* ``anyOf: [X, {type: null}]`` (an ``Optional``) becomes ``X`` with ``nullable: true``;
* numeric ``exclusiveMinimum: 0`` (2020-12) becomes ``minimum: 0`` + ``exclusiveMinimum:
  true`` (OpenAPI v3.0), and the same for maxima; ``const`` becomes a one-value ``enum``;
* ``dict[str, Any]`` becomes ``type: object`` + ``x-kubernetes-preserve-unknown-fields``;
* ``title``, ``additionalProperties`` and ``default: null`` are dropped;
* an optional object without a default (a ``default_factory`` field) gets ``default: {}``,
  because the apiserver applies nested defaults only inside an object that exists: this
  way ``kubectl get -o yaml`` shows the effective spec, ``health.cooldown`` included;
* every property must end up with a description (its ``Field`` description, else the first
  paragraph of its model's docstring), or generation fails.

Anything else pydantic might emit (``allOf``, typed maps, unions of two types, unknown
keywords) raises :class:`UnsupportedSchema` instead of producing a CRD the apiserver would
reject or, worse, accept with a looser meaning than the model's.

Use ``python -m chainop.crds`` (print), ``--write crds/`` (regenerate) or ``--check crds/``
(exit 1 when stale); ``chainop crds`` prints :func:`render_yaml`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from chainop.core import models

HEADER = (
    "# generated from chainop.core.models — do not edit; "
    "regenerate with `python -m chainop.crds --write crds/`\n"
)

#: Keywords a structural schema may carry and we know how to copy, in output order
#: (descriptions first so the YAML reads like ``kubectl explain``).
_KEY_ORDER: tuple[str, ...] = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "nullable",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "x-kubernetes-preserve-unknown-fields",
    "items",
    "required",
    "properties",
)
_COPIED_AS_IS = frozenset(
    {
        "type",
        "format",
        "enum",
        "default",
        "minimum",
        "maximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "required",
    }
)
_DROPPED = frozenset({"title", "$schema", "$defs", "additionalProperties"})


class UnsupportedSchema(ValueError):
    """Pydantic emitted a construct this generator cannot express structurally."""


# --------------------------------------------------------------------------- the tables


@dataclass(frozen=True, kw_only=True)
class Column:
    """One ``additionalPrinterColumns`` entry (what ``kubectl get`` shows)."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str
    priority: int = 0  # 1: only with ``kubectl get -o wide``

    def manifest(self) -> dict[str, Any]:
        """The column as the CRD spells it (``priority`` only when not 0)."""
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


@dataclass(frozen=True, kw_only=True)
class Resource:
    """Everything that distinguishes one of our CRDs from the other."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    columns: tuple[Column, ...]
    categories: tuple[str, ...] = ("chainop",)

    @property
    def crd_name(self) -> str:
        """``<plural>.<group>``, also the file name under ``crds/`` (plus ``.yaml``)."""
        return f"{self.plural}.{models.GROUP}"


_AGE = Column(
    name="Age",
    type="date",
    json_path=".metadata.creationTimestamp",
    description="Time since the resource was created.",
)

# cert-manager style: the essentials first, details at priority 1 (``-o wide``), Age last.
# Printer columns cannot concatenate, so DESIGN's ``HEALTHY 2/3`` (and the task's
# LATENCY and COST with units) are summary strings that chainop writes into status.
PROVIDER_CHAIN = Resource(
    kind="ProviderChain",
    plural="providerchains",
    singular="providerchain",
    short_names=("pchain",),
    spec_model=models.ProviderChainSpec,
    status_model=models.ProviderChainStatus,
    columns=(
        Column(
            name="Strategy",
            type="string",
            json_path=".spec.strategy",
            description="Fallback, PrimaryOnly or RoundRobin.",
        ),
        Column(
            name="Healthy",
            type="string",
            json_path=".status.healthySummary",
            description="Healthy providers / providers in the chain (and how many drained).",
        ),
        Column(
            name="Active",
            type="string",
            json_path=".status.active",
            description="Head of status.activeOrder: the provider tried first.",
        ),
        Column(
            name="Tier",
            type="string",
            json_path=".status.effectivePrivacyTier",
            description="The most permissive privacy tier any task could reach.",
        ),
        Column(
            name="Ready",
            type="string",
            json_path='.status.conditions[?(@.type=="Ready")].status',
            description="Status of the Ready condition.",
        ),
        Column(
            name="Reason",
            type="string",
            json_path='.status.conditions[?(@.type=="Ready")].reason',
            description="Reason of the Ready condition.",
            priority=1,
        ),
        _AGE,
    ),
)

DELEGATED_TASK = Resource(
    kind="DelegatedTask",
    plural="delegatedtasks",
    singular="delegatedtask",
    short_names=("dtask",),
    spec_model=models.DelegatedTaskSpec,
    status_model=models.DelegatedTaskStatus,
    columns=(
        Column(
            name="Phase",
            type="string",
            json_path=".status.phase",
            description="Pending, Running, Succeeded or Failed.",
        ),
        Column(
            name="Provider",
            type="string",
            json_path=".status.provider",
            description="Provider that answered, else the first one chosen.",
        ),
        Column(
            name="Attempts",
            type="integer",
            json_path=".status.attemptCount",
            description="Provider calls made so far.",
        ),
        Column(
            name="Latency",
            type="string",
            json_path=".status.latency",
            description="Time from the first attempt to the answer.",
        ),
        Column(
            name="Cost",
            type="string",
            json_path=".status.cost",
            description="Cost of the answer in USD.",
        ),
        Column(
            name="Chain",
            type="string",
            json_path=".spec.chain",
            description="The ProviderChain used.",
            priority=1,
        ),
        Column(
            name="Reason",
            type="string",
            json_path='.status.conditions[?(@.type=="Succeeded")].reason',
            description="Reason of the Succeeded condition.",
            priority=1,
        ),
        _AGE,
    ),
)

RESOURCES: tuple[Resource, ...] = (PROVIDER_CHAIN, DELEGATED_TASK)


# --------------------------------------------------------------------------- schema


def first_paragraph(text: str) -> str:
    """The first paragraph of a docstring, on one line, with RST ````code```` made `code`.

    Purely computational. ``kubectl explain`` prints descriptions verbatim, so docstring
    markup that reads well in Python would be noise there.
    """
    paragraph = text.strip().split("\n\n", 1)[0]
    return " ".join(paragraph.split()).replace("``", "`")


def _clean_description(text: str) -> str:
    return text.strip().replace("``", "`")


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """``node`` with its ``$ref`` replaced by the definition; siblings of the ref win."""
    if "$ref" not in node:
        return dict(node)
    ref = node["$ref"]
    prefix = "#/$defs/"
    if not isinstance(ref, str) or not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
        raise UnsupportedSchema(f"unresolvable $ref {ref!r}")
    siblings = {key: value for key, value in node.items() if key != "$ref"}
    return {**_resolve(defs[ref[len(prefix) :]], defs), **siblings}


def _unwrap_optional(node: dict[str, Any], defs: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """``anyOf: [X, {type: null}]`` → (X with the outer keys, True); anything else as is."""
    if "anyOf" not in node:
        return node, False
    options = node["anyOf"]
    others = [option for option in options if option != {"type": "null"}]
    if len(others) != 1 or len(options) != 2:
        raise UnsupportedSchema(f"anyOf other than Optional[X] is not structural: {options}")
    outer = {key: value for key, value in node.items() if key != "anyOf"}
    inner = _resolve(others[0], defs)
    # The outer keys (the Field's description and default) describe the field; the inner
    # ones the type. Descriptions of the field win over the type's docstring.
    return {**inner, **outer}, True


def _convert(node: Mapping[str, Any], defs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One JSON-Schema node → one structural OpenAPI v3 node (recursively)."""
    for forbidden in ("allOf", "oneOf", "not"):
        if forbidden in node:
            raise UnsupportedSchema(f"{where}: {forbidden} cannot be made structural")
    resolved, nullable = _unwrap_optional(_resolve(node, defs), defs)
    out: dict[str, Any] = {}
    for key, value in resolved.items():
        if key in _DROPPED:
            continue
        if key == "description":
            out[key] = _clean_description(value)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            if isinstance(value, bool):  # already OpenAPI 3.0 style
                out[key] = value
            else:
                bound = "minimum" if key == "exclusiveMinimum" else "maximum"
                out[bound] = value
                out[key] = True
        elif key == "properties":
            required = set(resolved.get("required", ()))
            out[key] = {
                name: _property(child, defs, f"{where}.{name}", required=name in required)
                for name, child in value.items()
            }
        elif key == "items":
            out[key] = _convert(value, defs, f"{where}[]")
        elif key in _COPIED_AS_IS:
            out[key] = value
        else:
            raise UnsupportedSchema(f"{where}: keyword {key!r} is not handled")
    if out.get("default", 0) is None:
        del out["default"]
    if nullable:
        out["nullable"] = True
    if out.get("type") == "object" and "properties" not in out:
        additional = resolved.get("additionalProperties", True)
        if additional is not True:
            raise UnsupportedSchema(f"{where}: typed maps are not handled (extend crds.py)")
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "type" not in out:
        raise UnsupportedSchema(f"{where}: no type (structural schemas need one everywhere)")
    if not out.get("required", True):
        del out["required"]
    return {key: out[key] for key in _KEY_ORDER if key in out}


def _property(
    node: Mapping[str, Any], defs: Mapping[str, Any], where: str, *, required: bool
) -> dict[str, Any]:
    """A property: converted, described, and defaulted to ``{}`` if a default_factory one."""
    field_description = node.get("description")
    out = _convert(node, defs, where)
    if field_description is None and "description" in out:
        out["description"] = first_paragraph(out["description"])
    if not out.get("description"):
        raise UnsupportedSchema(f"{where}: no description (give the Field one)")
    is_object = out["type"] == "object"
    if is_object and not required and not out.get("nullable") and "default" not in out:
        # Optional, not Optional[...] and no default in the JSON schema: a default_factory.
        if out.get("required"):
            raise UnsupportedSchema(f"{where}: default {{}} would miss {out['required']}")
        out["default"] = {}
        out = {key: out[key] for key in _KEY_ORDER if key in out}
    return out


def structural(
    model: type[BaseModel], *, mode: Literal["validation", "serialization"]
) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model`` (camelCase, see the module docstring).

    Purely computational. ``mode`` follows pydantic: spec is *validated* by the operator,
    status is *serialized* by it, and the two may differ (aliases, computed values).
    """
    schema = model.model_json_schema(by_alias=True, mode=mode)
    defs = schema.get("$defs", {})
    out = _convert(schema, defs, model.__name__)
    out["description"] = first_paragraph(out.get("description", ""))
    return {key: out[key] for key in _KEY_ORDER if key in out}


# --------------------------------------------------------------------------- manifests


def crd_manifest(resource: Resource) -> dict[str, Any]:
    """The ``apiextensions.k8s.io/v1`` CRD of one resource. Purely computational."""
    spec_schema = structural(resource.spec_model, mode="validation")
    status_schema = structural(resource.status_model, mode="serialization")
    root = {
        "description": spec_schema["description"],
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "description": (
                    "APIVersion defines the versioned schema of this representation of an "
                    f"object: {models.API_VERSION}."
                ),
                "type": "string",
            },
            "kind": {
                "description": (
                    "Kind is a string value representing the REST resource this object "
                    f"represents: {resource.kind}."
                ),
                "type": "string",
            },
            "metadata": {"type": "object"},
            "spec": {**spec_schema, "description": f"Desired state. {spec_schema['description']}"},
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": resource.crd_name,
            "labels": {"app.kubernetes.io/name": "chainop", "app.kubernetes.io/part-of": "chainop"},
        },
        "spec": {
            "group": models.GROUP,
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": list(resource.categories),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [column.manifest() for column in resource.columns],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_manifests() -> list[dict[str, Any]]:
    """Both CRDs, ProviderChain first. Purely computational."""
    return [crd_manifest(resource) for resource in RESOURCES]


def _dump(documents: Sequence[Mapping[str, Any]]) -> str:
    # sort_keys=False: the order built above is the stable, readable one. A wide line
    # keeps descriptions on one line each, so diffs of a changed description are small.
    return HEADER + yaml.safe_dump_all(
        documents,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        explicit_start=True,
        width=1_000,
    )


def render_yaml() -> str:
    """Both CRDs as one multi-document YAML, for ``chainop crds | kubectl apply -f -``."""
    return _dump(crd_manifests())


def render_files() -> dict[str, str]:
    """File name under ``crds/`` → its content (one CRD per file, named after the CRD)."""
    return {f"{resource.crd_name}.yaml": _dump([crd_manifest(resource)]) for resource in RESOURCES}


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chainop.crds [--write DIR | --check DIR]``; prints the YAML otherwise."""
    parser = argparse.ArgumentParser(
        prog="python -m chainop.crds", description="Generate chainop's CRDs from its models."
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--write", metavar="DIR", type=Path, help="write one file per CRD")
    target.add_argument(
        "--check", metavar="DIR", type=Path, help="exit 1 if the files in DIR are stale"
    )
    args = parser.parse_args(argv)
    if args.write is not None:
        args.write.mkdir(parents=True, exist_ok=True)
        for name, text in render_files().items():
            (args.write / name).write_text(text, encoding="utf-8")
            print(f"wrote {args.write / name}")
        return 0
    if args.check is not None:
        stale = [
            name
            for name, text in render_files().items()
            if not (args.check / name).is_file()
            or (args.check / name).read_text(encoding="utf-8") != text
        ]
        for name in stale:
            print(f"stale: {args.check / name}", file=sys.stderr)
        if stale:
            print("regenerate with: python -m chainop.crds --write crds/", file=sys.stderr)
        return 1 if stale else 0
    sys.stdout.write(render_yaml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
