"""A corpus of error replies that real LLM servers and APIs send, copied from primary sources.

``load_replies()`` reads every ``replies/*.yaml`` file next to this module, validates each entry and
returns them as frozen ``Reply`` objects. Any problem raises ``CorpusError`` naming the file and the
entry. See README.md in this directory for the schema, the class meanings and the sourcing rules.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

__all__ = [
    "CLASSES",
    "ENDPOINTS",
    "PROVIDERS",
    "REPLIES_DIR",
    "CorpusError",
    "Reply",
    "load_replies",
]

REPLIES_DIR = Path(__file__).parent / "replies"

PROVIDERS = frozenset(
    {
        "vllm",
        "llamacpp",
        "ollama",
        "tgi",
        "openai",
        "azure",
        "anthropic",
        "gemini",
        "mistral",
        "groq",
    }
)
CLASSES = frozenset(
    {
        "capability",
        "quota_exhausted",
        "rate_limited",
        "model_not_found",
        "transient",
        "auth",
        "bad_request",
        "content_policy",
        "incomplete",
        "loading",
    }
)
#: Where the reply came from: a (non-streamed) generation call, the last SSE chunk of a
#: streamed one, the server's health endpoint, or the model listing.
ENDPOINTS = frozenset({"chat", "chat-stream", "health", "models"})

_REQUIRED = ("id", "provider", "source", "note", "status", "body", "expect")
_OPTIONAL = ("headers", "endpoint", "request_max_tokens")
_EXPECT_KEYS = frozenset({"class", "retry_after_seconds"})
_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


class CorpusError(ValueError):
    """An entry of the corpus does not follow the schema."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One recorded reply and what chainop should make of it."""

    id: str
    provider: str
    source: str
    note: str
    status: int
    headers: Mapping[str, str]
    body: str
    expect_class: str
    retry_after_seconds: float | None = None
    endpoint: str = "chat"
    request_max_tokens: int | None = None
    file: str = ""

    @property
    def content_type(self) -> str:
        """The content-type to replay with: the recorded one, else inferred from the body."""
        recorded = self.headers.get("content-type")
        if recorded:
            return recorded
        if self.endpoint == "chat-stream":
            return "text/event-stream"
        if self.body.lstrip().startswith("<"):
            return "text/html"
        try:
            json.loads(self.body)
        except ValueError:
            return "text/plain"
        return "application/json"

    def json(self) -> Any:
        """The body parsed as JSON (``ValueError`` if it is not JSON)."""
        return json.loads(self.body)


def _fail(where: str, what: str) -> CorpusError:
    return CorpusError(f"{where}: {what}")


def _entry(raw: object, file: str, index: int) -> Reply:
    where = f"{file} entry #{index}"
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a mapping, got {type(raw).__name__}")
    ident = raw.get("id")
    if isinstance(ident, str) and ident:
        where = f"{file} entry {ident!r}"
    unknown = set(raw) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}")
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise _fail(where, f"missing keys {missing}")

    if not isinstance(ident, str) or not _ID.match(ident):
        raise _fail(where, f"id must be kebab-case, got {ident!r}")
    provider = raw["provider"]
    if provider not in PROVIDERS:
        raise _fail(where, f"unknown provider {provider!r} (known: {sorted(PROVIDERS)})")
    for key in ("source", "note"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise _fail(where, f"{key} must be a non-empty string")
    status = raw["status"]
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise _fail(where, f"status must be an int HTTP status, got {status!r}")
    body = raw["body"]
    if not isinstance(body, str):
        raise _fail(where, f"body must be a string, got {type(body).__name__}")

    headers = raw.get("headers") or {}
    if not isinstance(headers, dict):
        raise _fail(where, "headers must be a mapping")
    for name, value in headers.items():
        if not isinstance(name, str) or name != name.lower():
            raise _fail(where, f"header names must be lower-case strings, got {name!r}")
        if not isinstance(value, str):
            raise _fail(where, f"header {name!r} must be a string (quote it), got {value!r}")

    endpoint = raw.get("endpoint", "chat")
    if endpoint not in ENDPOINTS:
        raise _fail(where, f"unknown endpoint {endpoint!r} (known: {sorted(ENDPOINTS)})")
    max_tokens = raw.get("request_max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise _fail(where, f"request_max_tokens must be an int, got {max_tokens!r}")

    expect = raw["expect"]
    if not isinstance(expect, dict):
        raise _fail(where, "expect must be a mapping")
    extra = set(expect) - _EXPECT_KEYS
    if extra:
        raise _fail(where, f"unknown expect keys {sorted(extra)}")
    cls = expect.get("class")
    if cls not in CLASSES:
        raise _fail(where, f"unknown class {cls!r} (known: {sorted(CLASSES)})")
    if cls == "loading" and endpoint != "health":
        raise _fail(where, "class 'loading' is only for health probes (endpoint: health)")
    delay = expect.get("retry_after_seconds")
    if delay is not None:
        if cls != "rate_limited":
            raise _fail(where, "retry_after_seconds is only for rate_limited entries")
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise _fail(where, f"retry_after_seconds must be a number, got {delay!r}")
        if not math.isfinite(delay) or delay <= 0:
            raise _fail(where, f"retry_after_seconds must be positive, got {delay!r}")
        delay = float(delay)

    return Reply(
        id=ident,
        provider=provider,
        source=raw["source"].strip(),
        note=raw["note"].strip(),
        status=status,
        headers=MappingProxyType(dict(headers)),
        body=body,
        expect_class=cls,
        retry_after_seconds=delay,
        endpoint=endpoint,
        request_max_tokens=max_tokens,
        file=file,
    )


def load_replies(directory: Path = REPLIES_DIR) -> list[Reply]:
    """Every entry of every ``*.yaml`` file in ``directory``, validated, in file order."""
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CorpusError(f"no *.yaml files in {directory}")
    replies: list[Reply] = []
    seen: dict[str, str] = {}
    for path in files:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise CorpusError(f"{path.name}: not valid YAML: {exc}") from exc
        if not isinstance(data, list):
            raise CorpusError(f"{path.name}: expected a list of entries")
        for index, raw in enumerate(data):
            reply = _entry(raw, path.name, index)
            if reply.id in seen:
                raise CorpusError(
                    f"{path.name} entry {reply.id!r}: duplicate id (also in {seen[reply.id]})"
                )
            seen[reply.id] = path.name
            replies.append(reply)
    return replies
