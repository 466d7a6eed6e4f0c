"""The error vocabulary shared by provider clients and the chain executor.

Provider clients (``chainop.providers``) translate whatever went wrong on the wire into
one of these classes; the chain executor (``chainop.core.chain``) decides what to do
purely from the class. Keeping the classification here, free of httpx, lets the rules of
DESIGN.md ("Executing a chain") be tested without any I/O.

Exception tree::

    ChainopError
    ├── ProviderError                  a fault attributed to one provider
    │   ├── TransientError             retry, then count toward benching
    │   │   ├── RateLimitedError       HTTP 429, may carry Retry-After
    │   │   └── IncompleteReplyError   malformed JSON, cut-off body, empty choices
    │   ├── ModelNotFoundError         404 naming the model: advance, no penalty
    │   ├── UnsupportedRequestError    beyond declared capabilities: advance, no penalty
    │   └── PermanentError             400/401/403/422: fail the task at once
    ├── DeadlineExceeded               the caller's own deadline: never the provider's fault
    └── ChainExhaustedError            every eligible provider failed or was skipped
"""

from __future__ import annotations

import enum
import json


class ErrorKind(enum.StrEnum):
    """How the executor treats a failure; also the ``outcome`` written to task status."""

    TRANSIENT = "TransientError"
    RATE_LIMITED = "RateLimited"
    INCOMPLETE = "IncompleteReply"
    MODEL_NOT_FOUND = "ModelNotFound"
    UNSUPPORTED = "Unsupported"
    PERMANENT = "PermanentError"
    DEADLINE = "DeadlineExceeded"


class ChainopError(Exception):
    """Root of every error chainop raises on purpose."""


class ProviderError(ChainopError):
    """A failure attributed to one provider.

    ``message`` must be safe to show in status and Events: clients never put request
    headers (and so never an API key) into it.
    """

    kind: ErrorKind = ErrorKind.PERMANENT

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    @property
    def penalizes(self) -> bool:
        """Whether this failure counts toward the provider's consecutive failures."""
        return False

    @property
    def retryable(self) -> bool:
        """Whether the same provider may be tried again for the same task."""
        return False


class TransientError(ProviderError):
    """Connection refused/reset, timeout, HTTP 408/429/5xx: may work on a retry."""

    kind = ErrorKind.TRANSIENT

    @property
    def penalizes(self) -> bool:
        return True

    @property
    def retryable(self) -> bool:
        return True


class RateLimitedError(TransientError):
    """HTTP 429. ``retry_after`` (seconds) benches the provider at least that long."""

    kind = ErrorKind.RATE_LIMITED

    def __init__(
        self, message: str, *, status_code: int | None = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class IncompleteReplyError(TransientError):
    """A reply that is not a whole answer; the work is redone elsewhere, whole."""

    kind = ErrorKind.INCOMPLETE


class ModelNotFoundError(ProviderError):
    """The provider does not serve the model: advance without penalty."""

    kind = ErrorKind.MODEL_NOT_FOUND


class UnsupportedRequestError(ProviderError):
    """The request needs more than the provider declares (context, vision, tools)."""

    kind = ErrorKind.UNSUPPORTED


class PermanentError(ProviderError):
    """A bad request or a bad key: failing over cannot fix it."""

    kind = ErrorKind.PERMANENT


class DeadlineExceeded(ChainopError):
    """The task's own ``timeoutSeconds`` ran out: the caller's limit, not a provider fault."""

    kind = ErrorKind.DEADLINE


class ChainExhaustedError(ChainopError):
    """Every eligible provider failed or was skipped; the message joins every reason."""

    def __init__(self, reasons: list[tuple[str, str]]) -> None:
        self.reasons = reasons
        joined = "; ".join(f"{name}: {why}" for name, why in reasons) or "no provider eligible"
        super().__init__(f"all providers failed: {joined}")


def classify_status(
    status_code: int, *, body_text: str = "", model: str = "", retry_after: float | None = None
) -> ProviderError:
    """Map an HTTP error status (and a short body excerpt) to an error class.

    Purely computational, no side effects. A 404 whose body names the model, or says
    "model" and "not found"/"does not exist", is model-not-found; any other 404 is a
    permanent fault (a wrong endpoint path cannot be fixed by retrying).
    """
    excerpt = _error_message(body_text)[:200].replace("\n", " ").strip()
    detail = f"HTTP {status_code}" + (f": {excerpt}" if excerpt else "")
    lowered = body_text.lower()
    if status_code == 429:
        return RateLimitedError(detail, status_code=429, retry_after=retry_after)
    if status_code == 408 or status_code >= 500:
        return TransientError(detail, status_code=status_code)
    if status_code == 404 and (
        (model and model.lower() in lowered)
        or ("model" in lowered and ("not found" in lowered or "does not exist" in lowered))
    ):
        return ModelNotFoundError(detail, status_code=404)
    return PermanentError(detail, status_code=status_code)


def _error_message(body_text: str) -> str:
    """The human part of an error body: ``error.message`` of OpenAI/Anthropic-style JSON,
    else the body itself. Purely computational."""
    try:
        parsed = json.loads(body_text)
    except ValueError:
        return body_text
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(parsed.get("message"), str):
            return str(parsed["message"])
    return body_text


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header given in seconds; HTTP dates are ignored (None).

    Purely computational. Negative or non-numeric values yield None.
    """
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds < 0 or seconds != seconds:  # NaN check without math import
        return None
    return seconds
