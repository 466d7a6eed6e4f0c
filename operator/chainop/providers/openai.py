"""The OpenAI chat-completions protocol (OpenAI, vLLM, llama.cpp, Ollama, LiteLLM, ...).

``POST {endpoint}/chat/completions`` with ``Authorization: Bearer <key>``; the endpoint
already includes the API version (``https://api.openai.com/v1``,
``http://vllm:8000/v1``), as every OpenAI-compatible server documents it. Probes use
``GET {endpoint}/models``, which lists models and costs nothing.

Request mapping: the system prompt becomes the first ``system`` message; images become
``image_url`` content parts next to a ``text`` part; tools become ``function`` tools.
``max_tokens`` (not ``max_completion_tokens``) is sent because that is what
OpenAI-compatible servers accept.

Reply mapping: ``choices[0].message.content`` is the text; a reply that is only tool
calls (content null) is returned as the JSON list ``[{"name", "arguments"}, ...]`` so a
tool-calling answer is not mistaken for an empty one. No choices, no message, or no
content and no tool calls is an ``IncompleteReplyError``. Missing usage counts as 0.
"""

from __future__ import annotations

import json
from typing import Any

from chainop.core.calls import CallContext, Completion
from chainop.core.models import Message, ProviderSpec, RequestSpec
from chainop.providers import base, errors
from chainop.providers.http import Wire


def build_body(provider: ProviderSpec, request: RequestSpec) -> dict[str, Any]:
    """The JSON body of a chat-completions request. Purely computational."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend(_message(message) for message in request.messages)
    body: dict[str, Any] = {
        "model": provider.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters or {"type": "object", "properties": {}},
                },
            }
            for tool in request.tools
        ]
    return body


def _message(message: Message) -> dict[str, Any]:
    if not message.images:
        return {"role": message.role.value, "content": message.content}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    parts.extend({"type": "image_url", "image_url": {"url": url}} for url in message.images)
    return {"role": message.role.value, "content": parts}


def parse_reply(data: dict[str, Any], *, max_tokens: int | None = None) -> Completion:
    """A Completion from a chat-completions reply, or IncompleteReplyError.

    Purely computational. ``max_tokens`` is the caller's limit: a ``length`` finish short
    of it means the context ran out (incomplete); ``content_filter`` or a ``refusal``
    is a ``ContentPolicyError`` (see ``base.check_finished``).
    """
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise errors.incomplete("no choices")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise errors.incomplete("choices[0] is not an object")
    message = base.get_object(choice, "message", where="choices[0]")
    text = _content_text(message.get("content"))
    finish_reason = choice.get("finish_reason")
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    refusal = message.get("refusal")
    base.check_finished(
        finish_reason=finish_reason if isinstance(finish_reason, str) else "",
        output_tokens=base.token_count(usage, "completion_tokens"),
        max_tokens=max_tokens,
        refusal=refusal if isinstance(refusal, str) else "",
    )
    if not text:
        tool_calls = _tool_calls(message.get("tool_calls"))
        if not tool_calls:
            raise errors.incomplete("empty content")
        text = json.dumps(tool_calls, separators=(",", ":"))
        finish_reason = finish_reason or "tool_calls"
    return Completion(
        text=text,
        finish_reason=finish_reason if isinstance(finish_reason, str) else "stop",
        input_tokens=base.token_count(usage, "prompt_tokens"),
        output_tokens=base.token_count(usage, "completion_tokens"),
    )


def _content_text(content: Any) -> str:
    """Content is a string, or (some servers) a list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _tool_calls(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    calls = []
    for call in value:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            calls.append({"name": function["name"], "arguments": function.get("arguments", "")})
    return calls


class OpenAIAdapter:
    """Adapter for ``type: openai`` providers."""

    def headers(self, api_key: str | None) -> dict[str, str]:
        """Bearer authentication, if a key is configured."""
        return base.bearer_headers(api_key)

    def probe_url(self, provider: ProviderSpec) -> str:
        """``{endpoint}/models``: lists models, costs nothing."""
        return base.join_url(provider.endpoint, "/models")

    async def complete(
        self, wire: Wire, provider: ProviderSpec, request: RequestSpec, context: CallContext
    ) -> Completion:
        """``POST {endpoint}/chat/completions`` and parse the first choice."""
        reply = await wire.request(
            "POST",
            base.join_url(provider.endpoint, "/chat/completions"),
            timeout=base.request_timeout(provider, context),
            headers=self.headers(context.api_key),
            json_body=build_body(provider, request),
            secrets=(context.api_key,),
        )
        reply.raise_for_status(model=provider.model, secrets=(context.api_key,))
        return parse_reply(reply.json_object(), max_tokens=request.max_tokens)
