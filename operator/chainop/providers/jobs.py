"""The asynchronous jobs protocol: submit once, then poll until the job ends.

``POST {endpoint}/jobs`` with ``{model, messages, max_tokens, temperature,
idempotency_key}`` answers ``{id}``; ``GET {endpoint}/jobs/{id}`` answers ``{status:
queued|running|succeeded|failed, result: {text, usage: {input_tokens, output_tokens},
cost_usd}, error}``. Probes use ``GET {endpoint}/models`` like OpenAI-compatible servers
(a jobs service is expected to list what it serves there; it costs nothing).

Exactly-once submission, which DESIGN.md ("Delegated work") requires across operator
restarts, rests on three things done here:

1. ``context.on_job_submitted(id)`` is awaited *before* the first poll, so the operator
   has persisted the id before it starts waiting. If it raises, we do not poll: the
   exception propagates unchanged (it is the operator's failure, not the provider's).
2. With ``context.resume_job_id`` set, nothing is submitted: that job is polled.
3. The ``idempotency_key`` (stable per task and attempt) goes with every submission, so
   a retried POST is recognised by the service. An empty key is replaced by a random one,
   since an empty key would make unrelated submissions collide.

Timing: the whole call (submission and waiting) is bounded by ``context.timeout``, and
each HTTP request by ``provider.timeoutSeconds`` (the overall bound cuts it short; one
clock, so the message always names the caller's budget when that is what ran out).
Polls back off exponentially (50 ms doubling to a 2 s cap). A job already submitted is
worth waiting for, so up to three transient poll failures in a row are ridden out; a
permanent one ends the wait.
A ``404`` on the poll means the service lost the job: that is a transient fault of the
provider (the work must be redone), never a permanent failure of the task.

A ``failed`` job is a ``TransientError`` unless its ``error`` says otherwise: an object
with an HTTP-like ``status_code``/``code`` is classified like that status; a ``type`` such
as ``invalid_request_error`` or ``retryable: false`` makes it permanent; a type naming
model-not-found or rate limiting maps to those classes.

Tools have no place in this protocol: a request with tools is refused with
``UnsupportedRequestError`` (advance without penalty) rather than silently dropped.
Images travel as an ``images`` list of URLs on their message.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from chainop.core import errors as core_errors
from chainop.core.calls import CallContext, Completion
from chainop.core.models import ProviderSpec, RequestSpec
from chainop.providers import base, errors
from chainop.providers.http import Wire

POLL_INITIAL_SECONDS = 0.05
POLL_MAX_SECONDS = 2.0
MAX_POLL_FAILURES = 3
RUNNING_STATES = frozenset({"queued", "running", "pending", "submitted", "in_progress"})
PERMANENT_ERROR_TYPES = frozenset(
    {
        "invalid_request",
        "invalid_request_error",
        "bad_request",
        "authentication_error",
        "permission_error",
        "permission_denied",
        "unauthorized",
        "forbidden",
    }
)
MODEL_NOT_FOUND_TYPES = frozenset({"model_not_found", "not_found_error"})
RATE_LIMIT_TYPES = frozenset({"rate_limit", "rate_limited", "rate_limit_error"})


def build_body(
    provider: ProviderSpec, request: RequestSpec, *, idempotency_key: str
) -> dict[str, Any]:
    """The JSON body of a job submission. Purely computational."""
    if request.tools:
        raise core_errors.UnsupportedRequestError("the jobs protocol cannot carry tools")
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        item: dict[str, Any] = {"role": message.role.value, "content": message.content}
        if message.images:
            item["images"] = list(message.images)
        messages.append(item)
    return {
        "model": provider.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "idempotency_key": idempotency_key,
    }


def parse_result(job_id: str, data: Mapping[str, Any]) -> Completion:
    """A Completion from a succeeded job, or IncompleteReplyError. Purely computational."""
    result = base.get_object(data, "result", where=f"job {job_id}")
    text = result.get("text")
    if not isinstance(text, str) or not text:
        raise errors.incomplete(f"job {job_id} succeeded without text")
    usage = result.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    cost = result.get("cost_usd")
    finish_reason = result.get("finish_reason")
    return Completion(
        text=text,
        finish_reason=finish_reason if isinstance(finish_reason, str) else "stop",
        input_tokens=base.token_count(usage, "input_tokens"),
        output_tokens=base.token_count(usage, "output_tokens"),
        cost_usd=float(cost)
        if isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0
        else None,
        job_id=job_id,
    )


def failure_error(
    job_id: str, status: str, error: Any, *, model: str, secrets: tuple[str | None, ...] = ()
) -> core_errors.ProviderError:
    """Classify a job that ended without success. Purely computational.

    Transient unless ``error`` says otherwise (see the module docstring).
    """
    message = ""
    code: int | None = None
    error_type = ""
    retryable: object = None
    if isinstance(error, str):
        message = error
    elif isinstance(error, dict):
        message = str(error.get("message") or "")
        for key in ("status_code", "status", "code"):
            value = error.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 400 <= value < 600:
                code = value
                break
        for key in ("type", "code"):
            value = error.get(key)
            if isinstance(value, str):
                error_type = value.lower()
                break
        retryable = error.get("retryable")
    message = errors.redact(message, secrets)[: errors.BODY_EXCERPT_CHARS]
    detail = f"job {job_id} {status}" + (f": {message}" if message else "")
    if code is not None:
        return core_errors.classify_status(code, body_text=detail, model=model)
    if error_type in MODEL_NOT_FOUND_TYPES:
        return core_errors.ModelNotFoundError(detail)
    if error_type in RATE_LIMIT_TYPES:
        return core_errors.RateLimitedError(detail, status_code=None)
    if error_type in PERMANENT_ERROR_TYPES or retryable is False:
        return core_errors.PermanentError(detail)
    return core_errors.TransientError(detail)


class JobsAdapter:
    """Adapter for ``type: jobs`` providers."""

    def __init__(
        self,
        *,
        poll_initial: float = POLL_INITIAL_SECONDS,
        poll_max: float = POLL_MAX_SECONDS,
        max_poll_failures: int = MAX_POLL_FAILURES,
    ) -> None:
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.max_poll_failures = max_poll_failures

    def headers(self, api_key: str | None) -> dict[str, str]:
        """Bearer authentication, if a key is configured."""
        return base.bearer_headers(api_key)

    def probe_url(self, provider: ProviderSpec) -> str:
        """``{endpoint}/models``, as for OpenAI-compatible servers."""
        return base.join_url(provider.endpoint, "/models")

    async def complete(
        self, wire: Wire, provider: ProviderSpec, request: RequestSpec, context: CallContext
    ) -> Completion:
        """Submit (unless resuming), report the id, then poll until the job ends."""
        job_id = context.resume_job_id
        try:
            async with asyncio.timeout(context.timeout):
                if job_id is None:
                    job_id = await self._submit(wire, provider, request, context)
                    if context.on_job_submitted is not None:
                        await context.on_job_submitted(job_id)
                return await self._wait(wire, provider, context, job_id)
        except TimeoutError:
            what = f"job {job_id} not finished" if job_id else "job submission"
            raise core_errors.TransientError(
                f"{what}: timed out after {errors.format_seconds(context.timeout)}"
            ) from None

    async def _submit(
        self,
        wire: Wire,
        provider: ProviderSpec,
        request: RequestSpec,
        context: CallContext,
    ) -> str:
        key = context.idempotency_key or f"chainop-{uuid.uuid4()}"
        reply = await wire.request(
            "POST",
            base.join_url(provider.endpoint, "/jobs"),
            timeout=provider.timeout_seconds,
            headers=self.headers(context.api_key),
            json_body=build_body(provider, request, idempotency_key=key),
            secrets=(context.api_key,),
        )
        reply.raise_for_status(model=provider.model, secrets=(context.api_key,))
        job_id = reply.json_object().get("id")
        if isinstance(job_id, int) and not isinstance(job_id, bool):
            job_id = str(job_id)
        if not isinstance(job_id, str) or not job_id:
            raise errors.incomplete("job submission answered without an id")
        return job_id

    async def _wait(
        self,
        wire: Wire,
        provider: ProviderSpec,
        context: CallContext,
        job_id: str,
    ) -> Completion:
        url = base.join_url(provider.endpoint, "/jobs/" + quote(job_id, safe=""))
        secrets = (context.api_key,)
        delay = self.poll_initial
        failures = 0
        while True:
            try:
                data = await self._poll(wire, provider, context, url, job_id)
            except core_errors.TransientError as exc:
                failures += 1
                if isinstance(exc, _JobLost) or failures >= self.max_poll_failures:
                    raise
            else:
                failures = 0
                status = data.get("status")
                if status == "succeeded":
                    return parse_result(job_id, data)
                if status not in RUNNING_STATES:
                    raise failure_error(
                        job_id,
                        status if isinstance(status, str) else "ended without a status",
                        data.get("error"),
                        model=provider.model,
                        secrets=secrets,
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.poll_max)

    async def _poll(
        self,
        wire: Wire,
        provider: ProviderSpec,
        context: CallContext,
        url: str,
        job_id: str,
    ) -> dict[str, Any]:
        reply = await wire.request(
            "GET",
            url,
            timeout=provider.timeout_seconds,
            headers=self.headers(context.api_key),
            secrets=(context.api_key,),
        )
        if reply.status_code == 404:
            # Not retried: the service does not know the job; polling again cannot help.
            raise _JobLost(f"job {job_id} unknown to the provider (HTTP 404)", status_code=404)
        reply.raise_for_status(model=provider.model, secrets=(context.api_key,))
        return reply.json_object()


class _JobLost(core_errors.TransientError):
    """The service forgot the job: transient for the provider, but not worth re-polling."""
