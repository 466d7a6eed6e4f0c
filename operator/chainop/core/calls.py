"""The one-method protocol between the chain executor and provider clients.

The executor (``chainop.core.chain``) only knows ``ProviderCall``; the httpx clients in
``chainop.providers`` implement it, and unit tests implement it with plain functions.
That keeps failover logic testable without sockets and lets benchmarks swap transports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from chainop.core.models import ProviderSpec, RequestSpec, ToolCall


@dataclass(frozen=True, slots=True)
class Completion:
    """A complete answer from a provider. Clients never build one from half a reply."""

    text: str
    finish_reason: str = "stop"
    input_tokens: int = 0
    output_tokens: int = 0
    #: Cost reported by the provider itself (jobs protocol); None: compute from usage.
    cost_usd: float | None = None
    job_id: str | None = None
    #: Tool calls the model answered with (then ``text`` may be empty).
    tool_calls: tuple[ToolCall, ...] = ()
    #: Milliseconds from sending the request to the first token (streamed calls only).
    first_token_ms: int | None = None
    #: The model the reply names ('' when it names none).
    model: str = ""


@dataclass(frozen=True, slots=True)
class CallContext:
    """Everything about one attempt that is not the provider or the request.

    ``api_key`` is resolved from a Secret by the caller and must never be logged.
    ``idempotency_key`` is stable per task and attempt so a resubmission is recognised;
    ``resume_job_id`` resumes polling a job submitted before an operator restart;
    ``on_job_submitted`` is awaited with the job id *before* the client starts waiting,
    so the operator can persist it.
    """

    timeout: float
    api_key: str | None = None
    idempotency_key: str = ""
    resume_job_id: str | None = None
    on_job_submitted: Callable[[str], Awaitable[None]] | None = None
    #: Text a cut stream of an earlier provider delivered: ask this one to continue it
    #: (``onCutStream: Continue``); None: answer the request from the start.
    continue_from: str | None = None


class ProviderCall(Protocol):
    """Send one request to one provider; return a Completion or raise ProviderError."""

    async def __call__(
        self, provider: ProviderSpec, request: RequestSpec, context: CallContext
    ) -> Completion: ...
