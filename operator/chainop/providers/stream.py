"""What streamed (SSE) calls of every protocol share: the assembler protocol, tool-call
building, and the meaning of an error event that arrives inside a 200 stream.

A streamed reply is a sequence of Server-Sent Events parsed by ``httpx-sse`` (a
maintained parser: SSE framing has corners - ``\\r\\n`` vs ``\\n``, comments used as
keep-alives, multi-line ``data:`` - that hand-written splitters get wrong). Each wire
protocol supplies an :class:`Assembler` that is fed the events one by one and builds the
whole answer; :meth:`chainop.providers.http.Wire.stream` does the I/O around it (time
limits, the first-token deadline, bounded memory, closing the connection).

The rule every assembler keeps: **a cut stream is never a Completion**. A stream that
ends without its protocol's terminator, carries an error event, or stops because the
context (not the caller's ``max_tokens``) ran out raises ``IncompleteReplyError`` with the
text that did arrive as ``partial_text``, so the chain can redo the work or ask the next
provider to continue it (``onCutStream: Continue``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from httpx_sse import ServerSentEvent
from pydantic import ValidationError

from chainop.core import errors as core_errors
from chainop.core.calls import Completion
from chainop.core.models import ToolCall
from chainop.providers import errors


class Assembler(Protocol):
    """Builds one answer from the events of one streamed reply (one per call)."""

    def feed(self, event: ServerSentEvent) -> bool:
        """Take one event; True once the protocol's terminator arrived (stop reading).

        Raises a ``ProviderError`` for an error event or an event that cannot be read
        (``Wire.stream`` adds the ``partial_text`` to one that lacks it).
        """
        ...

    @property
    def has_token(self) -> bool:
        """Whether a token (text, reasoning or a tool call) has arrived: what the
        first-token deadline waits for."""
        ...

    @property
    def partial_text(self) -> str:
        """The answer text received so far (carried by a cut stream's error)."""
        ...

    @property
    def size(self) -> int:
        """Characters of answer kept so far (text, tool calls): what bounds memory."""
        ...

    def finish(self, *, first_token_ms: int | None) -> Completion:
        """The whole answer once the stream ended, or ``IncompleteReplyError``."""
        ...


def cut(what: str, partial_text: str) -> core_errors.IncompleteReplyError:
    """A cut stream: not an answer, but ``partial_text`` may be continued elsewhere."""
    return core_errors.IncompleteReplyError(f"incomplete reply: {what}", partial_text=partial_text)


def with_partial(error: core_errors.ProviderError, partial_text: str) -> core_errors.ProviderError:
    """``error`` carrying ``partial_text`` if it is an incomplete reply (others unchanged).

    Errors are built in places that do not know the stream (``base.check_finished``,
    ``errors.from_transport_error``); the text that arrived is attached afterwards.
    """
    if isinstance(error, core_errors.IncompleteReplyError) and not error.partial_text:
        error.partial_text = partial_text
    return error


def event_json(event: ServerSentEvent) -> dict[str, Any]:
    """The ``data`` of an event as a JSON object, or a cut stream naming the event.

    The error carries no ``partial_text``: building it costs a join of the whole answer,
    and this runs for every event; ``Wire.stream`` attaches it when the error surfaces.
    """
    try:
        data = json.loads(event.data)
    except (ValueError, RecursionError):
        raise cut(
            f"malformed JSON in a {event.event!r} event ({len(event.data)} bytes)", ""
        ) from None
    if not isinstance(data, dict):
        raise cut(f"a {event.event!r} event is not a JSON object", "")
    return data


#: Anthropic's error types (docs.anthropic.com/en/api/errors) as the HTTP status that
#: carries them outside a stream, so a mid-stream error is classified like a reply.
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
    # vLLM's ErrorInfo types (vllm/entrypoints/openai/engine/protocol.py)
    "BadRequestError": 400,
    "NotFoundError": 404,
    "InternalServerError": 500,
}


def error_event(
    error: Any,
    *,
    model: str,
    partial_text: str,
    after_tokens: bool,
    secrets: Iterable[str | None] = (),
) -> core_errors.ProviderError:
    """The error an error event inside a 200 stream means.

    ``error`` is the event's ``error`` object (Anthropic ``{"type", "message"}``, vLLM
    ``{"message", "type", "param", "code"}``). It is classified by
    ``core.errors.classify_status`` as the same error in a reply would be, with the HTTP
    status its code or type stands for (none: a 500, the server broke mid-answer):

    * what a retry elsewhere can fix (``overloaded_error``, ``api_error``, an engine
      error) becomes a cut stream - ``IncompleteReplyError`` with the text so far, so it
      may be redone or continued; a rate limit before any token keeps its
      ``RateLimitedError`` and delay;
    * what it cannot (a context overflow, a content filter, a bad key, quota) keeps its
      class, as it would outside a stream;
    * an invalid request keeps ``PermanentError`` when no token came yet (Anthropic's
      ``invalid_request_error`` event before the answer). After tokens it is a cut
      stream: a server validates a request before generating, and vLLM labels *every*
      exception of a stream ``BadRequestError``/400 (``create_streaming_error_response``'s
      default), engine failures included, which must not fail the task.
    """
    status = 500
    if isinstance(error, Mapping):
        code = error.get("code")
        kind = error.get("type")
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            status = code
        elif isinstance(kind, str) and kind in ERROR_TYPE_STATUS:
            status = ERROR_TYPE_STATUS[kind]
    body = errors.redact(json.dumps({"error": error}, default=str), secrets)
    classified = core_errors.classify_status(status, body_text=body, model=model)
    if isinstance(classified, core_errors.RateLimitedError) and not after_tokens:
        return classified
    if isinstance(classified, core_errors.TransientError) or (
        after_tokens and type(classified) is core_errors.PermanentError
    ):
        return cut(f"error event in the stream ({classified.message})", partial_text)
    classified.message = f"error event in the stream: {classified.message}"
    classified.args = (classified.message,)
    return classified


class TextBuffer:
    """Text arriving in token-sized pieces, kept at about the cost of its characters.

    A list of the pieces costs ~50 bytes of object overhead per piece (30x the text of
    two-character deltas), and ``io.StringIO`` keeps up to 100,000 pieces in such a list
    before joining them (6 MB per call at that moment); here every ``BLOCK`` pieces are
    joined into one string, so the overhead is a few hundred pieces. Linear in time.
    """

    BLOCK = 256
    __slots__ = ("_blocks", "_length", "_pending")

    def __init__(self) -> None:
        self._blocks: list[str] = []
        self._pending: list[str] = []
        self._length = 0

    def write(self, text: str) -> None:
        """Append ``text``."""
        self._pending.append(text)
        self._length += len(text)
        if len(self._pending) >= self.BLOCK:
            self._blocks.append("".join(self._pending))
            self._pending.clear()

    def getvalue(self) -> str:
        """The whole text so far."""
        return "".join(self._blocks) + "".join(self._pending)

    def __len__(self) -> int:
        return self._length


@dataclass(slots=True)
class ToolCallBuilder:
    """One tool call as its pieces arrive (id and name first, arguments in fragments)."""

    id: str = ""
    name: str = ""
    #: The argument fragments so far.
    arguments: TextBuffer = field(default_factory=TextBuffer)

    def build(self, position: int, *, partial_text: str) -> ToolCall:
        """The finished ``ToolCall``, or a cut stream if the provider's pieces are bad.

        A missing id (some OpenAI-compatible servers send none) becomes ``call_<n>``;
        empty arguments mean ``{}``. Arguments that are not a JSON object, or a missing
        or overlong name, are never passed on as an answer.
        """
        arguments = self.arguments.getvalue().strip() or "{}"
        return tool_call(
            self.id or f"call_{position}", self.name, arguments, partial_text=partial_text
        )


def tool_call(call_id: str, name: str, arguments: str, *, partial_text: str = "") -> ToolCall:
    """A validated ``ToolCall``, or ``IncompleteReplyError`` saying what is wrong with it."""
    if not name:
        raise cut("a tool call without a name", partial_text)
    try:
        return ToolCall(id=call_id, name=name, arguments=arguments)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem.get("loc", ())) or "arguments"
        raise cut(
            f"tool call {name[:64]!r} is malformed ({where}: {problem.get('msg', '')[:120]})",
            partial_text,
        ) from None
