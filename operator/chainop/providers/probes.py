"""Probes by kind: what a probe asks a provider, and how its answer is read.

:meth:`chainop.providers.registry.ProviderClients.probe` runs one concrete kind (the
runtime resolves ``Auto`` with ``ProviderProbeSpec.kinds``); this module holds the
purely computational part: URLs, bodies and the reading of replies. A probe is one
request, never retried, over the shared client; failures raise the
``chainop.core.errors`` classes through ``Reply.raise_for_status`` like real calls.

======== =================================================== ===========================
kind     request                                             healthy when
======== =================================================== ===========================
List     openai, jobs: ``GET {endpoint}/models``;            2xx JSON object with a
         anthropic: ``GET {root}/v1/models``                 listing that contains the
                                                             configured model (or says
                                                             ``has_more``)
Health   ``GET {scheme://host:port}{probe.healthPath}``      any 2xx, body ignored (vLLM
         (the root of the endpoint's host, not under /v1)    answers 200 with no body)
Generate openai: ``POST {endpoint}/chat/completions``;       2xx JSON object with a
         anthropic: ``POST {root}/v1/messages``; both        ``choices`` (openai) or
         ``"Reply with OK."``, ``max_tokens`` =              ``content`` (anthropic)
         ``probe.maxTokens``, ``temperature`` 0;             list, whatever is in it
         jobs: not offered (it would submit a job): a List
======== =================================================== ===========================

Listings understood (:func:`listed_models`), every id found under either key is served:

* ``data: [{"id": ...}]`` — OpenAI and vLLM (``vllm/entrypoints/openai/engine/
  protocol.py`` ``ModelList``), Ollama's ``/v1/models``, Gemini's OpenAI-compatible
  endpoint (ids ``models/gemini-2.0-flash``), Anthropic (``{"data": [{"id", "type":
  "model", ...}], "has_more", "first_id", "last_id"}``) and llama.cpp, whose entries
  also carry ``aliases``;
* ``models: [{"name": ..., "model": ...}]`` — Ollama's native ``/api/tags`` and the
  second list llama.cpp's ``/v1/models`` carries next to ``data`` (``get_models`` in
  ``tools/server/server-context.cpp``). llama-server names the model by its ``--alias``,
  else by the model file's path: start it with ``--alias`` set to the configured model.

A configured model matches a listed id (:func:`model_matches`) when they are equal, or
equal once a ``models/`` prefix (Gemini) or a ``:latest`` tag (Ollama: ``llama3`` is
served as ``llama3:latest``) is dropped from either, or when the listed id is the
configured alias's dated snapshot (Anthropic lists ``claude-3-5-haiku-20241022``, never
the alias ``claude-3-5-haiku-latest`` that resolves to it). A listing without the model
raises ``ModelNotServedError`` carrying what is served instead — unless it says there
is more (``has_more: true``): a partial listing cannot show drift, so it counts as
healthy. A 2xx that is not a JSON object, or has no listing under either key, raises
``IncompleteReplyError`` (a captive proxy's 200 page is not a model server).

Loading: a 503 whose error message says "Loading model" (llama.cpp answers every route
so while a restarted server loads its weights: ``tools/server/server-http.cpp``,
``{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}``) is
``ProbeResult(loading=True)`` for every kind: neither a failure nor a recovery. Any
other 503 (vLLM's ``/health`` when its engine is dead answers 503 with no body) is the
classified error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from chainop.core import errors as core_errors
from chainop.core.drift import model_matches
from chainop.core.models import ProbeKind, ProviderSpec, ProviderType
from chainop.providers import anthropic, base, errors
from chainop.providers.http import Reply

#: The prompt of a Generate probe.
GENERATE_PROMPT = "Reply with OK."
#: At most this many served ids are kept (a hostile listing must not flood status).
MAX_SERVED = 100
#: At most this many served ids are named in a drift message.
MAX_SERVED_IN_MESSAGE = 8

_LOADING = re.compile(r"\bloading\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe that did not fail.

    ``kind`` is the kind actually run (``List`` when a jobs provider was asked for
    ``Generate``); ``latency`` is seconds from sending to having read the whole reply;
    ``loading`` says the server answered 503 "Loading model" (neither a failure nor a
    recovery); ``served`` is, for List, the model ids the listing named (at most
    ``MAX_SERVED``).
    """

    kind: ProbeKind
    latency: float
    loading: bool = False
    served: tuple[str, ...] = ()


# --------------------------------------------------------------------------- URLs, bodies


def effective_kind(provider: ProviderSpec, kind: ProbeKind) -> ProbeKind:
    """The kind to run for ``kind``: jobs providers get List for Generate.

    Purely computational. ``Auto`` is refused: the runtime resolves it with
    ``provider.probe.kinds(...)`` and probes once per concrete kind.
    """
    if kind is ProbeKind.AUTO:
        raise ValueError("probe kind Auto must be resolved with provider.probe.kinds()")
    if kind is ProbeKind.GENERATE and provider.type is ProviderType.JOBS:
        return ProbeKind.LIST  # a Generate probe would submit (and pay for) a job
    return kind


def health_url(provider: ProviderSpec) -> str:
    """``{scheme}://{host:port}{probe.healthPath}``: the root of the endpoint's host.

    Purely computational.
    """
    parts = urlsplit(provider.endpoint)
    return f"{parts.scheme}://{parts.netloc}{provider.probe.health_path}"


def generate_url(provider: ProviderSpec) -> str:
    """Where a Generate probe posts: chat completions or Anthropic messages.

    Purely computational.
    """
    if provider.type is ProviderType.ANTHROPIC:
        return anthropic.api_url(provider.endpoint, "/messages")
    return base.join_url(provider.endpoint, "/chat/completions")


def generate_body(provider: ProviderSpec) -> dict[str, Any]:
    """The tiny completion of a Generate probe. Purely computational."""
    return {
        "model": provider.model,
        "messages": [{"role": "user", "content": GENERATE_PROMPT}],
        "max_tokens": provider.probe.max_tokens,
        "temperature": 0,
    }


# --------------------------------------------------------------------------- replies


def is_loading(reply: Reply) -> bool:
    """Whether ``reply`` is a 503 saying the model is still loading. Purely computational.

    Reads ``error.message`` (llama.cpp), ``message`` or a plain-text body.
    """
    if reply.status_code != 503 or not reply.body:
        return False
    text = reply.body[:4096].decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return bool(_LOADING.search(text))
    message: Any = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        if message is None:
            message = data.get("message")
    return isinstance(message, str) and bool(_LOADING.search(message))


def check_generation(provider: ProviderSpec, data: dict[str, Any]) -> None:
    """Accept any well-formed completion; raise ``IncompleteReplyError`` otherwise.

    Purely computational. The content is not inspected: empty text, ``finish_reason:
    length`` or only reasoning still prove that the engine generates.
    """
    key = "content" if provider.type is ProviderType.ANTHROPIC else "choices"
    if not isinstance(data.get(key), list):
        raise errors.incomplete(f"generate probe: no {key} list in the reply")


def listed_models(data: dict[str, Any]) -> tuple[tuple[str, ...], bool] | None:
    """The ids a listing names and whether it says there is more, or None if ``data``
    holds no listing. Purely computational.

    ``data[].id`` (and ``data[].aliases``), ``models[].name`` and ``models[].model`` are
    all read (see the module docstring); duplicates are dropped, order kept.
    """
    found = False
    ids: list[str] = []
    entries = data.get("data")
    if isinstance(entries, list):
        found = True
        for entry in entries:
            if isinstance(entry, dict):
                ids.extend(_strings((entry.get("id"),)))
                aliases = entry.get("aliases")  # llama.cpp: the --alias names of the model
                if isinstance(aliases, list):
                    ids.extend(_strings(aliases))
    entries = data.get("models")
    if isinstance(entries, list):
        found = True
        for entry in entries:
            if isinstance(entry, dict):
                ids.extend(_strings((entry.get("name"), entry.get("model"))))
            elif isinstance(entry, str):
                ids.append(entry)
    if not found:
        return None
    return tuple(dict.fromkeys(ids)), data.get("has_more") is True


def _strings(values: Iterable[Any]) -> list[str]:
    return [value for value in values if isinstance(value, str) and value]


def check_listing(
    provider: ProviderSpec, data: dict[str, Any], *, secrets: Iterable[str | None] = ()
) -> tuple[str, ...]:
    """The served ids if the listing serves ``provider.model`` (or is partial).

    Purely computational. Raises ``ModelNotServedError`` (drift) when a whole listing
    lacks the model and ``IncompleteReplyError`` when ``data`` is no listing at all.
    ``secrets`` are redacted from the served ids a server sent (they reach status).
    """
    listing = listed_models(data)
    if listing is None:
        raise errors.incomplete("list probe: no model listing (data[] or models[]) in the reply")
    served, has_more = listing
    secrets = tuple(secrets)
    if any(model_matches(provider.model, listed) for listed in served):
        return tuple(errors.redact(listed, secrets) for listed in served[:MAX_SERVED])
    served = tuple(errors.redact(listed, secrets) for listed in served)
    kept = served[:MAX_SERVED]
    if has_more:
        return kept
    named = ", ".join(served[:MAX_SERVED_IN_MESSAGE]) or "nothing"
    if len(served) > MAX_SERVED_IN_MESSAGE:
        named += f", ... ({len(served) - MAX_SERVED_IN_MESSAGE} more)"
    raise core_errors.ModelNotServedError(
        f"model {provider.model} is not served (serving: {named})", served=kept
    )
