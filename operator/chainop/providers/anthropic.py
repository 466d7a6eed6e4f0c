"""The Anthropic Messages protocol.

Endpoint rule (one rule, for calls and probes alike): the endpoint is the API *root*
(``https://api.anthropic.com``), and chainop appends ``/v1/messages`` and ``/v1/models``.
If the endpoint already ends in ``/v1`` (``https://gateway.example/anthropic/v1``), only
``/messages`` and ``/models`` are appended, so both spellings people copy from docs work
and neither produces ``/v1/v1``.

Headers: ``x-api-key`` (when a key is set) and ``anthropic-version: 2023-06-01``.

Request mapping: the system prompt goes in the top-level ``system`` field, and so does
the text of any ``system`` message in the conversation (the Messages API has no system
role); images become ``image`` blocks (``base64`` for ``data:`` URLs, ``url`` otherwise);
tools become ``{name, description, input_schema}``. Anthropic's temperature scale is
0..1, so a temperature above 1 is clamped to 1 rather than rejected with a 400 that would
fail the task.

Reply mapping: the ``text`` blocks of ``content[]`` are concatenated; a reply with only
``tool_use`` blocks becomes the JSON list ``[{"name", "arguments"}, ...]`` (as for
OpenAI). ``stop_reason`` is translated to the OpenAI vocabulary used in task status
(``end_turn``/``stop_sequence`` -> ``stop``, ``max_tokens`` -> ``length``, ``tool_use``
-> ``tool_calls``), so ``finishReason`` means the same whichever provider answered.
"""

from __future__ import annotations

import json
from typing import Any

from chainop.core.calls import CallContext, Completion
from chainop.core.models import Message, MessageRole, ProviderSpec, RequestSpec
from chainop.providers import base, errors
from chainop.providers.http import Wire

ANTHROPIC_VERSION = "2023-06-01"
MAX_TEMPERATURE = 1.0
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


def api_url(endpoint: str, path: str) -> str:
    """``{endpoint}/v1{path}``, or ``{endpoint}{path}`` if it already ends in ``/v1``.

    Purely computational.
    """
    root = endpoint.rstrip("/")
    if not root.endswith("/v1"):
        root += "/v1"
    return root + path


def build_body(provider: ProviderSpec, request: RequestSpec) -> dict[str, Any]:
    """The JSON body of a Messages request. Purely computational."""
    system_parts = [request.system] if request.system else []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role is MessageRole.SYSTEM:
            system_parts.append(message.content)
        else:
            messages.append(_message(message))
    body: dict[str, Any] = {
        "model": provider.model,
        "max_tokens": request.max_tokens,
        "messages": messages,
    }
    if system_parts:
        body["system"] = "\n\n".join(system_parts)
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, MAX_TEMPERATURE)
    if request.tools:
        body["tools"] = [
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": tool.parameters or {"type": "object", "properties": {}},
            }
            for tool in request.tools
        ]
    return body


def _message(message: Message) -> dict[str, Any]:
    if not message.images:
        return {"role": message.role.value, "content": message.content}
    blocks: list[dict[str, Any]] = [_image_block(url) for url in message.images]
    blocks.append({"type": "text", "text": message.content})
    return {"role": message.role.value, "content": blocks}


def _image_block(url: str) -> dict[str, Any]:
    """``data:image/png;base64,...`` inline, any other URL by reference."""
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[len("data:") :].split(";base64,", 1)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def parse_reply(data: dict[str, Any], *, max_tokens: int | None = None) -> Completion:
    """A Completion from a Messages reply, or IncompleteReplyError. Purely computational.

    ``stop_reason: refusal`` is a ``ContentPolicyError``; ``max_tokens`` short of the
    caller's limit, or ``model_context_window_exceeded``, means the context ran out: an
    incomplete answer (see ``base.check_finished``).
    """
    content = data.get("content")
    if not isinstance(content, list):
        raise errors.incomplete("content missing or not a list")
    blocks = [block for block in content if isinstance(block, dict)]
    text = "".join(
        block["text"]
        for block in blocks
        if block.get("type") == "text" and isinstance(block.get("text"), str)
    )
    stop_reason = data.get("stop_reason")
    finish_reason = (
        STOP_REASONS.get(stop_reason, stop_reason) if isinstance(stop_reason, str) else "stop"
    )
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    base.check_finished(
        finish_reason=finish_reason,
        output_tokens=base.token_count(usage, "output_tokens"),
        max_tokens=max_tokens,
    )
    if not text:
        tool_uses = [
            {"name": block["name"], "arguments": json.dumps(block.get("input", {}))}
            for block in blocks
            if block.get("type") == "tool_use" and isinstance(block.get("name"), str)
        ]
        if not tool_uses:
            raise errors.incomplete("no text in content")
        text = json.dumps(tool_uses, separators=(",", ":"))
    return Completion(
        text=text,
        finish_reason=finish_reason,
        input_tokens=base.token_count(usage, "input_tokens"),
        output_tokens=base.token_count(usage, "output_tokens"),
    )


class AnthropicAdapter:
    """Adapter for ``type: anthropic`` providers."""

    def headers(self, api_key: str | None) -> dict[str, str]:
        """``x-api-key`` (if a key is configured) and the pinned API version."""
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def probe_url(self, provider: ProviderSpec) -> str:
        """``{root}/v1/models`` by the endpoint rule of this module."""
        return api_url(provider.endpoint, "/models")

    async def complete(
        self, wire: Wire, provider: ProviderSpec, request: RequestSpec, context: CallContext
    ) -> Completion:
        """``POST {root}/v1/messages`` and join the text blocks."""
        reply = await wire.request(
            "POST",
            api_url(provider.endpoint, "/messages"),
            timeout=base.request_timeout(provider, context),
            headers=self.headers(context.api_key),
            json_body=build_body(provider, request),
            secrets=(context.api_key,),
        )
        reply.raise_for_status(model=provider.model, secrets=(context.api_key,))
        return parse_reply(reply.json_object(), max_tokens=request.max_tokens)
