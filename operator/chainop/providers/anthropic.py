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
tools become ``{name, description, input_schema}``. An assistant message's tool calls
become ``tool_use`` blocks (``input`` the parsed arguments) after its text, and tool
results ``tool_result`` blocks of a user message: consecutive results, and a user message
right after them, are merged into one user turn, results first, as the API requires.
Anthropic's temperature scale is 0..1, so a temperature above 1 is clamped to 1 rather
than rejected with a 400 that would fail the task. To continue a cut stream of another
provider (``CallContext.continue_from``), the partial text is sent as a final assistant
turn, which Anthropic continues ("prefill"); the API refuses a prefill ending in
whitespace, so trailing whitespace is cut from it and leading whitespace from the
continuation (the caller stitches the partial text as it was).

Streaming (``provider.streams()``): ``stream: true``; the events ``message_start``,
``content_block_start``/``_delta``/``_stop``, ``message_delta`` and ``message_stop`` are
assembled by :class:`EventAssembler`; ``ping`` is ignored and ``error`` (e.g.
``overloaded_error`` mid-answer) classified by ``stream.error_event``. A stream without
``message_stop`` is cut. Text, tool-call (``input_json_delta``) and thinking deltas
count as the first token.

Reply mapping (both ways): the ``text`` blocks of ``content[]`` are concatenated;
``tool_use`` blocks come back as ``Completion.tool_calls`` (arguments as a JSON string,
as OpenAI sends them), and a reply of only tool calls is a whole answer with empty text.
``stop_reason`` is translated to the OpenAI vocabulary used in task status
(``end_turn``/``stop_sequence`` -> ``stop``, ``max_tokens`` -> ``length``, ``tool_use``
-> ``tool_calls``), so ``finishReason`` means the same whichever provider answered.
``model`` is reported as the reply names it (``message.model`` when streamed).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from httpx_sse import ServerSentEvent

from chainop.core import errors as core_errors
from chainop.core.calls import CallContext, Completion
from chainop.core.models import Message, MessageRole, ProviderSpec, RequestSpec, ToolCall
from chainop.providers import base, errors, stream
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


def build_body(
    provider: ProviderSpec,
    request: RequestSpec,
    *,
    stream_reply: bool = False,
    continue_from: str | None = None,
) -> dict[str, Any]:
    """The JSON body of a Messages request. Purely computational."""
    system_parts = [request.system] if request.system else []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role is MessageRole.SYSTEM:
            system_parts.append(message.content)
        elif message.role is MessageRole.TOOL:
            _add_tool_result(messages, message)
        elif message.role is MessageRole.USER and _ends_in_tool_results(messages):
            messages[-1]["content"].extend(_blocks(message))
        else:
            messages.append(_message(message))
    prefill = (continue_from or "").rstrip()
    if prefill:
        messages.append({"role": "assistant", "content": prefill})
    body: dict[str, Any] = {
        "model": provider.model,
        "max_tokens": request.max_tokens,
        "messages": messages,
    }
    if stream_reply:
        body["stream"] = True
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
    if message.tool_calls:
        blocks = [{"type": "text", "text": message.content}] if message.content else []
        blocks.extend(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                # ToolCall guarantees a JSON object; Anthropic wants it parsed.
                "input": json.loads(call.arguments),
            }
            for call in message.tool_calls
        )
        return {"role": message.role.value, "content": blocks}
    if not message.images:
        return {"role": message.role.value, "content": message.content}
    return {"role": message.role.value, "content": _blocks(message)}


def _blocks(message: Message) -> list[dict[str, Any]]:
    """A user message as content blocks: its images, then its text (if any)."""
    blocks: list[dict[str, Any]] = [_image_block(url) for url in message.images]
    if message.content or not blocks:
        blocks.append({"type": "text", "text": message.content})
    return blocks


def _ends_in_tool_results(messages: list[dict[str, Any]]) -> bool:
    """Whether the last message built is the user turn holding tool results."""
    if not messages or messages[-1]["role"] != "user":
        return False
    content = messages[-1]["content"]
    return isinstance(content, list) and any(
        block.get("type") == "tool_result" for block in content
    )


def _add_tool_result(messages: list[dict[str, Any]], message: Message) -> None:
    """A ``tool_result`` block, in the user turn of the results before it if there is one."""
    block = {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}
    if _ends_in_tool_results(messages) and all(
        b.get("type") == "tool_result" for b in messages[-1]["content"]
    ):
        messages[-1]["content"].append(block)
    else:
        messages.append({"role": "user", "content": [block]})


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
    finish_reason = _finish_reason(data.get("stop_reason"))
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    base.check_finished(
        finish_reason=finish_reason,
        output_tokens=base.token_count(usage, "output_tokens"),
        max_tokens=max_tokens,
    )
    tool_calls = tuple(
        _tool_use(block, position)
        for position, block in enumerate(b for b in blocks if b.get("type") == "tool_use")
    )
    if not text and not tool_calls:
        raise errors.incomplete("no text in content")
    model = data.get("model")
    return Completion(
        text=text,
        finish_reason=finish_reason,
        input_tokens=base.token_count(usage, "input_tokens"),
        output_tokens=base.token_count(usage, "output_tokens"),
        tool_calls=tool_calls,
        model=model if isinstance(model, str) else "",
    )


def _finish_reason(stop_reason: Any) -> str:
    """``stop_reason`` in the OpenAI vocabulary of task status (absent: ``stop``)."""
    if not isinstance(stop_reason, str) or not stop_reason:
        return "stop"
    return STOP_REASONS.get(stop_reason, stop_reason)


def _tool_use(block: dict[str, Any], position: int) -> ToolCall:
    """A whole ``tool_use`` block as a ``ToolCall``; a malformed one is incomplete."""
    call_id, name, tool_input = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(tool_input, dict):
        raise errors.incomplete(f"tool_use {str(name)[:64]!r} input is not an object")
    return stream.tool_call(
        call_id if isinstance(call_id, str) and call_id else f"call_{position}",
        name if isinstance(name, str) else "",
        json.dumps(tool_input, separators=(",", ":")),
    )


class EventAssembler:
    """Builds one answer from Messages stream events (see :mod:`stream`)."""

    def __init__(
        self, *, model: str, max_tokens: int | None, secrets: Iterable[str | None] = ()
    ) -> None:
        self._model = model
        self._max_tokens = max_tokens
        self._secrets = tuple(secrets)
        self._text = stream.TextBuffer()
        self._text_blocks: set[int] = set()
        self._tools: dict[int, stream.ToolCallBuilder] = {}
        self._stop_reason: Any = None
        self._input_tokens = 0
        self._output_tokens = 0
        self._served_model = ""
        self._size = 0
        self._done = False
        self._token = False

    @property
    def has_token(self) -> bool:
        """Whether any text, tool-call or thinking delta arrived."""
        return self._token

    @property
    def partial_text(self) -> str:
        """The text received so far."""
        return self._text.getvalue()

    @property
    def size(self) -> int:
        """Characters kept: text, tool-call ids, names and input."""
        return self._size

    def feed(self, event: ServerSentEvent) -> bool:
        """Take one event; True at ``message_stop``."""
        if event.event == "ping" or not event.data.strip():
            return False
        data = stream.event_json(event)
        kind = data.get("type", event.event)
        if kind == "error" or event.event == "error":
            raise stream.error_event(
                data.get("error", data),
                model=self._model,
                partial_text=self.partial_text,
                after_tokens=self._token,
                secrets=self._secrets,
            )
        if kind == "message_start":
            self._message_start(data.get("message"))
        elif kind == "content_block_start":
            self._block_start(data.get("index"), data.get("content_block"))
        elif kind == "content_block_delta":
            self._block_delta(data.get("index"), data.get("delta"))
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop_reason = delta["stop_reason"]
            self._usage(data.get("usage"))
        elif kind == "message_stop":
            self._done = True
        return self._done

    def _message_start(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        model = message.get("model")
        if isinstance(model, str):
            self._served_model = model
        self._usage(message.get("usage"))

    def _usage(self, usage: Any) -> None:
        """Counts as they come: input at the start, output (cumulative) at the end."""
        if isinstance(usage, dict):
            if "input_tokens" in usage:
                self._input_tokens = base.token_count(usage, "input_tokens")
            if "output_tokens" in usage:
                self._output_tokens = base.token_count(usage, "output_tokens")

    def _block_start(self, index: Any, block: Any) -> None:
        if not isinstance(index, int) or not isinstance(block, dict):
            return
        if block.get("type") == "text":
            self._text_blocks.add(index)
            self._add_text(block.get("text"))
        elif block.get("type") == "tool_use":
            builder = self._tools.setdefault(index, stream.ToolCallBuilder())
            call_id, name, tool_input = block.get("id"), block.get("name"), block.get("input")
            builder.id = call_id if isinstance(call_id, str) else ""
            builder.name = name if isinstance(name, str) else ""
            if isinstance(tool_input, dict) and tool_input:  # whole input up front (rare)
                builder.arguments.write(json.dumps(tool_input, separators=(",", ":")))
            self._size += len(builder.id) + len(builder.name) + len(builder.arguments)
            self._token = True
        elif block.get("type") in ("thinking", "redacted_thinking"):
            self._token = True

    def _block_delta(self, index: Any, delta: Any) -> None:
        if not isinstance(delta, dict):
            return
        kind = delta.get("type")
        if kind == "text_delta" and index in self._text_blocks:
            self._add_text(delta.get("text"))
        elif kind == "input_json_delta" and isinstance(index, int) and index in self._tools:
            partial_json = delta.get("partial_json")
            if isinstance(partial_json, str):
                self._tools[index].arguments.write(partial_json)
                self._size += len(partial_json)
                self._token = True
        elif kind in ("thinking_delta", "signature_delta"):
            self._token = True

    def _add_text(self, text: Any) -> None:
        if isinstance(text, str) and text:
            self._text.write(text)
            self._size += len(text)
            self._token = True

    def finish(self, *, first_token_ms: int | None) -> Completion:
        """The whole answer, or a cut stream (no ``message_stop``, context full, bad input)."""
        partial = self.partial_text
        if not self._done:
            raise stream.cut(
                f"the stream ended without message_stop ({len(partial)} characters)", partial
            )
        finish_reason = _finish_reason(self._stop_reason)
        try:
            base.check_finished(
                finish_reason=finish_reason,
                output_tokens=self._output_tokens,
                max_tokens=self._max_tokens,
            )
        except core_errors.IncompleteReplyError as error:
            raise stream.with_partial(error, partial) from None
        tool_calls = tuple(
            builder.build(position, partial_text=partial)
            for position, (_, builder) in enumerate(sorted(self._tools.items()))
        )
        if not partial and not tool_calls:
            raise stream.cut("no text in content", partial)
        return Completion(
            text=partial,
            finish_reason=finish_reason,
            input_tokens=self._input_tokens,
            output_tokens=self._output_tokens,
            tool_calls=tool_calls,
            first_token_ms=first_token_ms,
            model=self._served_model,
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
        """``POST {root}/v1/messages``, streamed when ``provider.streams()``."""
        completion = await self._complete(wire, provider, request, context)
        prefill = context.continue_from or ""
        if prefill and prefill != prefill.rstrip():
            # The prefill lost its trailing whitespace; the caller stitches the partial
            # text as it was, so the whitespace the model re-emits would be doubled.
            completion = dataclasses.replace(completion, text=completion.text.lstrip())
        return completion

    async def _complete(
        self, wire: Wire, provider: ProviderSpec, request: RequestSpec, context: CallContext
    ) -> Completion:
        url = api_url(provider.endpoint, "/messages")
        secrets = (context.api_key,)
        streamed = provider.streams()
        body = build_body(
            provider, request, stream_reply=streamed, continue_from=context.continue_from
        )
        assembler = (
            EventAssembler(model=provider.model, max_tokens=request.max_tokens, secrets=secrets)
            if streamed
            else None
        )
        reply = await base.post_completion(
            wire,
            provider,
            context,
            url=url,
            body=body,
            headers=self.headers(context.api_key),
            assembler=assembler,
        )
        if isinstance(reply, Completion):
            return reply
        reply.raise_for_status(model=provider.model, secrets=secrets)
        return parse_reply(reply.json_object(), max_tokens=request.max_tokens)
