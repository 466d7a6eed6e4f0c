"""Generate docs/reference.md (the CRD field reference) from the pydantic models.

The same models generate the CRDs (``chainop.crds``), so the reference, the schema and
``kubectl explain`` can never disagree. ``python -m chainop.refdocs --write docs/`` keeps
the file current; a unit test fails when it is stale.
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from chainop.core import models

FILE_NAME = "reference.md"

SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("ProviderChain `.spec`", models.ProviderChainSpec),
    ("ProviderChain `.status`", models.ProviderChainStatus),
    ("DelegatedTask `.spec`", models.DelegatedTaskSpec),
    ("DelegatedTask `.status`", models.DelegatedTaskStatus),
)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(inner type, is_list) with ``X | None`` reduced to X."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    if origin is list:
        inner, _ = _unwrap(typing.get_args(annotation)[0])
        return inner, True
    return annotation, False


def _type_name(annotation: Any) -> str:
    inner, is_list = _unwrap(annotation)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        name = "object"
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        name = " \\| ".join(f"`{m.value}`" for m in inner)
    elif typing.get_origin(inner) is typing.Literal:
        name = " \\| ".join(f"`{v}`" for v in typing.get_args(inner))
    elif typing.get_origin(inner) is dict:
        name = "object (free-form)"
    else:
        name = {int: "integer", float: "number", str: "string", bool: "boolean"}.get(
            inner, getattr(inner, "__name__", str(inner))
        )
        if getattr(inner, "__name__", "") == "datetime":
            name = "date-time"
    return f"list of {name}" if is_list else name


def _default(field: FieldInfo) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
        if value is None:
            return ""
        if isinstance(value, enum.Enum):
            value = value.value
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        return f"`{value}`"
    if field.default_factory is not None:
        return ""
    return "**required**"


def _bounds(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for attr, label in (
            ("ge", "≥"),
            ("gt", ">"),
            ("le", "≤"),
            ("lt", "<"),
            ("min_length", "min length"),
            ("max_length", "max length"),
        ):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{label} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"pattern `{pattern}`")
    return ", ".join(parts)


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, ...]]:
    """One row per field, depth first: (path, type, default, bounds, description)."""
    for name, field in model.model_fields.items():
        alias = field.alias or name
        path = f"{prefix}{alias}"
        inner, is_list = _unwrap(field.annotation)
        yield (
            f"`{path}`",
            _type_name(field.annotation),
            _default(field),
            _bounds(field),
            (field.description or "").replace("|", "\\|"),
        )
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from rows(inner, f"{path}[]." if is_list else f"{path}.")


def render() -> str:
    """The whole reference page."""
    out = [
        "# API reference: chainop.dev/v1alpha1",
        "",
        "<!-- generated from chainop.core.models by `python -m chainop.refdocs --write docs/`;"
        " do not edit -->",
        "",
        "Both kinds are namespaced, in category `chainop`. Short names: `pchain`, `dtask`.",
        "The same models generate the CRDs, so `kubectl explain` shows these descriptions.",
        "",
    ]
    for title, model in SECTIONS:
        out += [f"## {title}", "", (model.__doc__ or "").strip().splitlines()[0], ""]
        out += ["| field | type | default | bounds | description |", "|---|---|---|---|---|"]
        out += ["| " + " | ".join(row) + " |" for row in rows(model)]
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chainop.refdocs [--write DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m chainop.refdocs")
    parser.add_argument("--write", metavar="DIR", help="write DIR/reference.md")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        target = Path(args.write) / FILE_NAME
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
