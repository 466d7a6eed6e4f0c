"""The OpenAI chat-completions protocol (OpenAI, vLLM, llama.cpp, Ollama, LiteLLM, ...).

``POST {endpoint}/chat/completions`` with ``Authorization: Bearer <key>``; the endpoint
already includes the API version (``https://api.openai.com/v1``,
``http://vllm:8000/v1``), as every OpenAI-compatible server documents it. Probes use
``GET {endpoint}/models``, which lists models and costs nothing.

Request mapping: the system prompt becomes the first ``system`` message; images become
``image_url`` content parts next to a ``text`` part; tools become ``function`` tools; an
assistant message's tool calls become ``tool_calls: [{id, type: function, function:
{name, arguments}}]`` and a tool result a ``role: tool`` message with its
``tool_call_id``. ``max_tokens`` (not ``max_completion_tokens``) is sent because that is
what OpenAI-compatible servers accept. To continue a cut stream of another provider
(``CallContext.continue_from``), the partial text is appended as the assistant's message
followed by a short user instruction to go on from where it stopped: chat servers have no
portable "prefill" of the assistant turn, but every model follows that instruction.

Streaming (``provider.streams()``): ``stream: true`` with ``stream_options:
{include_usage: true}`` (so the last chunk carries usage, which the context-full rule
needs); ``chat.completion.chunk`` events are assembled by :class:`ChunkAssembler` until
``data: [DONE]``. The first non-empty ``content``, ``refusal``, reasoning or tool-call
delta is the first token (reasoning counts: a model thinking is an engine alive).

Reply mapping (both ways): ``choices[0].message.content`` (or the concatenated deltas) is
the text; tool calls come back as ``Completion.tool_calls`` (streamed ones by ``index``,
their argument fragments concatenated), and a reply of only tool calls is a whole answer
with empty text. Tool-call arguments that are not a JSON object are an incomplete reply,
never passed on. No choices, no message, or no content and no tool calls is an
``IncompleteReplyError``. Missing usage counts as 0. ``model`` is reported as the reply
names it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from httpx_sse import ServerSentEvent

from chainop.core import errors as core_errors
from chainop.core.calls import CallContext, Completion
from chainop.core.models import Message, MessageRole, ProviderSpec, RequestSpec, ToolCall
from chainop.providers import base, errors, stream
from chainop.providers.http import Wire

#: The user turn that follows a cut stream's partial text when another provider is asked
#: to continue it (the caller stitches the two parts, so repeating would duplicate text).
CONTINUE_INSTRUCTION = (
    "Your previous message was cut off. Continue it exactly where it stopped, without "
    "repeating any of it and without any preamble."
)


def build_body(
    provider: ProviderSpec,
    request: RequestSpec,
    *,
    stream_reply: bool = False,
    continue_from: str | None = None,
) -> dict[str, Any]:
    """The JSON body of a chat-completions request. Purely computational."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend(_message(message) for message in request.messages)
    if continue_from:
        messages.append({"role": "assistant", "content": continue_from})
        messages.append({"role": "user", "content": CONTINUE_INSTRUCTION})
    body: dict[str, Any] = {
        "model": provider.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
    }
    if stream_reply:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
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
    if message.role is MessageRole.TOOL:
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if message.tool_calls:
        return {
            "role": message.role.value,
            # OpenAI's own client sends null content next to tool calls when there is none.
            "content": message.content or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ],
        }
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
    tool_calls = _tool_calls(message.get("tool_calls"))
    if not text and not tool_calls:
        raise errors.incomplete("empty content")
    if not isinstance(finish_reason, str) or not finish_reason:
        finish_reason = "tool_calls" if tool_calls and not text else "stop"
    model = data.get("model")
    return Completion(
        text=text,
        finish_reason=finish_reason,
        input_tokens=base.token_count(usage, "prompt_tokens"),
        output_tokens=base.token_count(usage, "completion_tokens"),
        tool_calls=tool_calls,
        model=model if isinstance(model, str) else "",
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


def _arguments_text(value: Any) -> str:
    """Arguments as the JSON string OpenAI sends (a few servers send the object itself)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return ""


def _tool_calls(value: Any) -> tuple[ToolCall, ...]:
    """The tool calls of a whole (non-streamed) message; malformed ones are incomplete."""
    if not isinstance(value, list):
        return ()
    calls = []
    for position, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(function, dict):
            raise errors.incomplete(f"tool_calls[{position}] is not a function call")
        call_id = call.get("id")
        name = function.get("name")
        calls.append(
            stream.tool_call(
                call_id if isinstance(call_id, str) and call_id else f"call_{position}",
                name if isinstance(name, str) else "",
                _arguments_text(function.get("arguments")).strip() or "{}",
            )
        )
    return tuple(calls)


class ChunkAssembler:
    """Builds one answer from ``chat.completion.chunk`` events (see :mod:`stream`).

    Only choice 0 is kept (chainop asks for one). An ``error`` object in a chunk - vLLM
    sends one and then a normal ``[DONE]`` when the engine fails mid-answer - or an
    ``event: error`` is classified by ``stream.error_event`` at once.
    """

    def __init__(
        self, *, model: str, max_tokens: int | None, secrets: Iterable[str | None] = ()
    ) -> None:
        self._model = model
        self._max_tokens = max_tokens
        self._secrets = tuple(secrets)
        self._text = stream.TextBuffer()
        self._refusal: list[str] = []
        self._tools: list[stream.ToolCallBuilder] = []  # in the order they began
        self._slots: dict[int, int] = {}  # a delta's index -> its call in _tools
        self._finish_reason = ""
        self._usage: dict[str, Any] = {}
        self._served_model = ""
        self._size = 0
        self._done = False
        self._token = False

    @property
    def has_token(self) -> bool:
        """Whether any content, refusal, reasoning or tool-call delta arrived."""
        return self._token

    @property
    def partial_text(self) -> str:
        """The content received so far."""
        return self._text.getvalue()

    @property
    def size(self) -> int:
        """Characters kept: content, refusal, tool-call ids, names and arguments."""
        return self._size

    def feed(self, event: ServerSentEvent) -> bool:
        """Take one event; True at ``[DONE]``."""
        if event.data.strip() == "[DONE]":
            self._done = True
            return True
        if not event.data.strip():
            return False
        chunk = stream.event_json(event)
        error = chunk.get("error") if event.event != "error" else chunk.get("error", chunk)
        if error:
            raise stream.error_event(
                error,
                model=self._model,
                partial_text=self.partial_text,
                after_tokens=self._token,
                secrets=self._secrets,
            )
        model = chunk.get("model")
        if isinstance(model, str) and model:
            self._served_model = model
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self._finish_reason = reason
        return False

    def _delta(self, delta: dict[str, Any]) -> None:
        content = _content_text(delta.get("content"))
        if content:
            self._text.write(content)
            self._size += len(content)
            self._token = True
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._refusal.append(refusal)
            self._size += len(refusal)
            self._token = True
        if any(isinstance(delta.get(key), str) and delta[key] for key in _REASONING_KEYS):
            self._token = True
        tool_calls = delta.get("tool_calls")
        for position, item in enumerate(tool_calls if isinstance(tool_calls, list) else ()):
            if isinstance(item, dict):
                self._tool_delta(position, item)

    def _tool_delta(self, position: int, item: dict[str, Any]) -> None:
        index = item.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool):
            raise stream.cut("a tool call delta without an index", "")
        call_id = item.get("id")
        call_id = call_id if isinstance(call_id, str) else ""
        slot = self._slots.get(index)
        if slot is None or (call_id and self._tools[slot].id not in ("", call_id)):
            # A new call; also when an index is reused with another id (some servers
            # number every call 0), so two calls are not fused into one bad JSON.
            slot = self._slots[index] = len(self._tools)
            self._tools.append(stream.ToolCallBuilder())
        builder = self._tools[slot]
        if call_id and not builder.id:
            builder.id = call_id
            self._size += len(call_id)
        function = item.get("function")
        if isinstance(function, dict):
            name = function.get("name")
            if isinstance(name, str) and name and not builder.name:
                builder.name = name
                self._size += len(name)
            arguments = _arguments_text(function.get("arguments"))
            if arguments:
                builder.arguments.write(arguments)
                self._size += len(arguments)
        self._token = True

    def finish(self, *, first_token_ms: int | None) -> Completion:
        """The whole answer, or a cut stream (no ``[DONE]``, context full, bad tool call)."""
        partial = self.partial_text
        if not self._done:
            raise stream.cut(
                f"the stream ended without [DONE] ({len(partial)} characters)", partial
            )
        output_tokens = base.token_count(self._usage, "completion_tokens")
        try:
            base.check_finished(
                finish_reason=self._finish_reason,
                output_tokens=output_tokens,
                max_tokens=self._max_tokens,
                refusal="".join(self._refusal),
            )
        except core_errors.IncompleteReplyError as error:
            raise stream.with_partial(error, partial) from None
        tool_calls = tuple(
            builder.build(index, partial_text=partial) for index, builder in enumerate(self._tools)
        )
        if not partial and not tool_calls:
            raise stream.cut("empty content", partial)
        finish_reason = self._finish_reason or (
            "tool_calls" if tool_calls and not partial else "stop"
        )
        return Completion(
            text=partial,
            finish_reason=finish_reason,
            input_tokens=base.token_count(self._usage, "prompt_tokens"),
            output_tokens=output_tokens,
            tool_calls=tool_calls,
            first_token_ms=first_token_ms,
            model=self._served_model,
        )


#: Delta fields in which reasoning models stream their thinking (vLLM, DeepSeek, Ollama).
_REASONING_KEYS = ("reasoning_content", "reasoning")


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
        """``POST {endpoint}/chat/completions``, streamed when ``provider.streams()``."""
        url = base.join_url(provider.endpoint, "/chat/completions")
        secrets = (context.api_key,)
        streamed = provider.streams()
        body = build_body(
            provider, request, stream_reply=streamed, continue_from=context.continue_from
        )
        assembler = (
            ChunkAssembler(model=provider.model, max_tokens=request.max_tokens, secrets=secrets)
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
