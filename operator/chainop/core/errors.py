"""The error vocabulary shared by provider clients and the chain executor.

Provider clients (``chainop.providers``) translate whatever went wrong on the wire into
one of these classes; the chain executor (``chainop.core.chain``) decides what to do
purely from the class. Keeping the classification here, free of httpx, lets the rules of
DESIGN.md ("Executing a chain") be tested without any I/O.

Exception tree::

    ChainopError
    ├── ProviderError                  a fault attributed to one provider
    │   ├── TransientError             retry, then count toward benching
    │   │   ├── RateLimitedError       a short rate limit, may carry the provider's delay
    │   │   └── IncompleteReplyError   malformed JSON, cut-off body, empty choices,
    │   │                              the context (not maxTokens) ran out
    │   ├── ModelNotFoundError         the model is not served: advance, no penalty
    │   │   └── ModelNotServedError    (probes) the listing lacks the model: drift
    │   ├── UnsupportedRequestError    capability: beyond what the provider can take
    │   │                              (context, max_tokens, images, tools, a request
    │   │                              over the per-minute budget): advance, no penalty
    │   ├── QuotaExhaustedError        quota/credit/spend limit: advance, long bench
    │   ├── ContentPolicyError         refusal or content filter: fail (or advance)
    │   └── PermanentError             bad request: fail the task at once
    │       └── AuthError              bad or missing key, no permission
    ├── DeadlineExceeded               the caller's own deadline: never the provider's fault
    └── ChainExhaustedError            every eligible provider failed or was skipped
"""

from __future__ import annotations

import email.utils
import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ErrorKind(enum.StrEnum):
    """How the executor treats a failure; also the ``outcome`` written to task status."""

    TRANSIENT = "TransientError"
    RATE_LIMITED = "RateLimited"
    INCOMPLETE = "IncompleteReply"
    MODEL_NOT_FOUND = "ModelNotFound"
    UNSUPPORTED = "Unsupported"
    QUOTA_EXHAUSTED = "QuotaExhausted"
    CONTENT_POLICY = "ContentPolicy"
    AUTH = "AuthError"
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
    """A reply that is not a whole answer; the work is redone elsewhere, whole.

    ``partial_text`` is what a cut stream delivered before it broke (empty otherwise):
    with ``onCutStream: Continue`` the next provider is asked to continue from it.
    """

    kind = ErrorKind.INCOMPLETE

    def __init__(
        self, message: str, *, status_code: int | None = None, partial_text: str = ""
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.partial_text = partial_text


class FirstTokenTimeoutError(TransientError):
    """A streamed call sent no token within ``firstTokenTimeoutSeconds``: the signature
    of a hung engine, so it counts against the provider (and as wedge evidence), and the
    chain advances at once rather than retrying the same hung engine."""


class ModelDriftError(TransientError):
    """A reply named another model while ``guards.requireConfiguredModel`` is set:
    counted against the provider, and the chain advances at once (the same server
    would answer as the same other model again)."""


class ModelNotFoundError(ProviderError):
    """The provider does not serve the model: advance without penalty."""

    kind = ErrorKind.MODEL_NOT_FOUND


class ModelNotServedError(ModelNotFoundError):
    """A probe's listing does not contain the configured model (model drift).

    ``served`` is what the listing offered instead, for status. A restart does not bring
    a model back, so the provider is excluded but never restarted.
    """

    def __init__(self, message: str, *, served: tuple[str, ...] = ()) -> None:
        super().__init__(message, status_code=None)
        self.served = served


class UnsupportedRequestError(ProviderError):
    """Capability: the request needs more than this provider can take.

    Raised before sending when the declared capabilities rule it out, and after the
    provider itself said so (prompt too long, max_tokens too large, no images, no tools,
    a single request over its per-minute token budget) in whatever status it used.
    """

    kind = ErrorKind.UNSUPPORTED


class QuotaExhaustedError(ProviderError):
    """Insufficient quota, no credit, spend limit reached: not a short rate limit.

    Retrying cannot help for a long while, so the chain advances at once and the provider
    is benched for ``health.quotaCooldownSeconds`` (unless it named a retry delay).
    """

    kind = ErrorKind.QUOTA_EXHAUSTED

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class ContentPolicyError(ProviderError):
    """A refusal or a content filter: never a success, never the provider's fault."""

    kind = ErrorKind.CONTENT_POLICY


class PermanentError(ProviderError):
    """A bad request: failing over cannot fix it."""

    kind = ErrorKind.PERMANENT


class AuthError(PermanentError):
    """A bad or missing API key, or no permission (401/403, Gemini's 400 "API key not
    valid"): failing over cannot fix the key, so the task fails at once."""

    kind = ErrorKind.AUTH


class DeadlineExceeded(ChainopError):
    """The task's own ``timeoutSeconds`` ran out: the caller's limit, not a provider fault."""

    kind = ErrorKind.DEADLINE


class ChainExhaustedError(ChainopError):
    """Every eligible provider failed or was skipped; the message joins every reason."""

    def __init__(self, reasons: list[tuple[str, str]]) -> None:
        self.reasons = reasons
        joined = "; ".join(f"{name}: {why}" for name, why in reasons) or "no provider eligible"
        super().__init__(f"all providers failed: {joined}")


#: Reply headers that carry a provider's retry delay (what ``retry_delay`` reads).
RETRY_HEADERS = (
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
)


def classify_status(
    status_code: int,
    *,
    body_text: str = "",
    model: str = "",
    headers: Mapping[str, str] | None = None,
    now: float | None = None,
) -> ProviderError:
    """Map an HTTP error reply to an error class by what it *says*, not only its status.

    Purely computational. ``headers`` (lower-case names) supply the provider's retry
    delay (``retry-after-ms``, ``retry-after``, ``x-ratelimit-reset-*``); a Gemini
    ``retryDelay`` in the body, or the delay written in the message, counts too. ``now``
    (epoch seconds) is only needed to read delays given as dates. The rules, first
    match wins (docs/errors.md has the table generated from the corpus of real replies):

    1. auth: 401, 403, or a body that says the key is invalid (Gemini answers 400);
    2. quota exhausted: insufficient quota, no credit, billing or spend limit, when no
       retry delay is named;
    3. content policy: content filters and policy refusals;
    4. capability: the prompt exceeds the context, max_tokens too large, a request over
       the per-minute token budget by itself (413, 429 "Request too large", or "Limit
       7000, Used 0, Requested 12903"), images or tools unsupported, a server flag
       needed ("requires --jinja") — whatever the status (400, 413, 422, even 500/501);
    5. model not found: the model does not exist, was decommissioned, Azure's
       DeploymentNotFound, Ollama's "try pulling it first";
    6. transient when the server says it is overloaded or busy (TGI's 429 "Model is
       overloaded", Ollama's "server busy") and names no delay;
    7. rate limited: any other 429, and a "quota" reply that names a delay (Gemini's
       per-minute quota with its retryDelay), with the provider's delay from headers,
       the body's retryDelay, or its words ("try again in 6m0s", "retry after 45
       seconds");
    8. transient: 408, 409 and 425 (lock/conflict, too early), TGI's 424, every 5xx
       (Anthropic's 529 overloaded, a proxy's HTML 502), "try again later";
    9. anything else (other 4xx, 3xx) is a bad request: permanent.
    """
    fields = _error_fields(body_text)
    excerpt = " ".join(fields.message.split())[:200]
    detail = f"HTTP {status_code}" + (f": {excerpt}" if excerpt else "")
    said = fields.searchable
    delay = retry_delay(headers or {}, now=now)
    if delay is None:
        delay = fields.retry_delay
    if delay is None:
        delay = _delay_in_words(said)
    if status_code in (401, 403) or _says(said, _AUTH):
        return AuthError(detail, status_code=status_code)
    if _says(said, _QUOTA) and delay is None:
        # Without a delay, "quota" means come back much later (billing, credit). Gemini
        # says "exceeded your current quota" for per-minute limits too, but then names
        # a retryDelay: that is a rate limit, honoured as such.
        return QuotaExhaustedError(detail, status_code=status_code)
    if _says(said, _CONTENT_POLICY):
        return ContentPolicyError(detail, status_code=status_code)
    if (
        status_code == 413
        or _says(said, _CAPABILITY)
        or _unsupported_feature(said)
        or _over_budget_alone(said)
        or _token_bound(said)
    ):
        return UnsupportedRequestError(detail, status_code=status_code)
    if status_code == 404 and ((model and model.lower() in said) or "model" in said):
        return ModelNotFoundError(detail, status_code=404)
    if _says(said, _MODEL_NOT_FOUND):
        return ModelNotFoundError(detail, status_code=status_code)
    if _says(said, _OVERLOADED) and delay is None:
        # TGI answers 429 "Model is overloaded": busy, not a limit on the caller.
        return TransientError(detail, status_code=status_code)
    if status_code == 429 or (_says(said, _QUOTA) and delay is not None):
        return RateLimitedError(detail, status_code=status_code, retry_after=delay)
    if status_code in _TRANSIENT_STATUSES or status_code >= 500 or _says(said, _BUSY):
        return TransientError(detail, status_code=status_code)
    return PermanentError(detail, status_code=status_code)


# Distinctive phrases of real replies (tests/corpus names the source of each); matched in
# the lower-cased message, type, code and status of the body.
_AUTH = (
    "invalid_api_key",
    "invalid api key",
    "incorrect api key",
    "api key not valid",
    "api_key_invalid",
    "authentication_error",
    "permission_error",
    "invalid x-api-key",
    "unauthenticated",
    "permission_denied",
    "no api key",
    "invalid authentication",
)
_QUOTA = (
    "insufficient_quota",
    "exceeded your current quota",
    "credit balance is too low",
    "credit balance too low",
    "billing_hard_limit",
    "billing hard limit",
    "billing_not_active",
    "spend limit",
    "spending limit",
    "usage limit",
    "out of credits",
    "insufficient credits",
    "insufficient balance",
    "payment required",
    "quota exceeded for metric",
)
_CONTENT_POLICY = (
    "content_filter",
    "content_policy",
    "content management policy",
    "responsibleaipolicyviolation",
    "content policy",
    "safety system",
    "flagged by",
    "prohibited_content",
)
_CAPABILITY = (
    "maximum context length",
    "context length",
    "context_length_exceeded",
    "context window",
    "exceed_context_size",
    "exceeds the available context",
    "exceeds the context",
    "prompt is too long",
    "prompt too long",
    "input is too long",
    "too many tokens",
    "too many input tokens",
    "reduce the length",
    "maximum number of tokens",
    "max_tokens is too large",
    "max_tokens: ",
    "max_new_tokens",
    "request too large",
    "request_too_large",
    "input tokens exceed",
    "input length",
    "string too long",
    "not_supported_error",
    "must have less than",
    "max_tokens must be at least",
    # The server needs a flag to take this request (llama.cpp --jinja, vLLM
    # --enable-auto-tool-choice): this provider cannot, the next one may.
    "requires --",
    "and --tool-call-parser",
)
_FEATURES = ("image", "vision", "multimodal", "tool", "function", "response_format", "audio")
_MODEL_NOT_FOUND = (
    "model_not_found",
    "does not exist",
    "model not found",
    "not found, try pulling",
    "decommissioned",
    "deploymentnotfound",
    "deployment for this resource does not exist",
    "no such model",
    "unknown model",
    "invalid model",
    "is not a valid model",
    "not_found_error",
)
_OVERLOADED = ("server busy", "server is busy", "overloaded")
_BUSY = (*_OVERLOADED, "try again later", "temporarily unavailable")
#: Statuses that say "not now" rather than "never": request timeout, conflict, TGI's
#: generation error (424), too early.
_TRANSIENT_STATUSES = frozenset({408, 409, 424, 425})


_BUDGET = re.compile(r"limit:? (\d+), used:? (\d+), requested:? ~?(\d+)")
_TRY_AGAIN = re.compile(r"(?:try again|retry) (?:in|after) (\d+(?:\.\d+)?(?:ms|h|m|s)?[\dms.]*)")


def _token_bound(text: str) -> bool:
    """ "`inputs` tokens + `max_new_tokens` must be <= 2048" (TGI): a bound on tokens, not
    on any parameter ("temperature must be <= 2" stays a bad request)."""
    return "token" in text and ("must be <= " in text or "must be less than or equal" in text)


def _over_budget_alone(text: str) -> bool:
    """ "Limit 7000, Used 0, Requested ~12903": this one request is over the per-minute
    budget by itself, so waiting cannot help (Groq answers 429, OpenAI 429 "Request too
    large"): a capability miss of this provider, not a rate limit."""
    match = _BUDGET.search(text)
    return match is not None and int(match.group(3)) > int(match.group(1))


def _delay_in_words(text: str) -> float | None:
    """ "Please try again in 6m0s", "Please retry after 45 seconds": the delay a provider
    wrote into its message (OpenAI, Groq, Azure) when no header carried it."""
    match = _TRY_AGAIN.search(text)
    if match is None:
        return None
    value = match.group(1).rstrip(".")
    seconds = parse_duration(value)
    return seconds


def _says(text: str, phrases: tuple[str, ...]) -> bool:
    return any(phrase in text for phrase in phrases)


def _unsupported_feature(text: str) -> bool:
    """ "images are not supported", "does not support tools", "unsupported ... function"."""
    negation = ("not support" in text) or ("unsupported" in text) or ("not supported" in text)
    return negation and any(feature in text for feature in _FEATURES)


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """What an error body says, whatever envelope the server used."""

    message: str = ""
    searchable: str = ""
    retry_delay: float | None = None


def _error_fields(body_text: str) -> ErrorFields:
    """Pull message, type, code and status out of the envelopes real servers use.

    Purely computational. Envelopes: OpenAI/Azure/Groq/Mistral/llama.cpp
    ``{"error": {"message", "type", "code"}}``; Anthropic ``{"type": "error", "error":
    {...}}``; vLLM ``{"object": "error", "message", "type", "code"}``; TGI ``{"error":
    "...", "error_type": "..."}``; Ollama ``{"error": "..."}``; Gemini ``{"error": {"code",
    "message", "status", "details": [{"retryDelay": "27s"}]}}``, sometimes wrapped in a
    list; FastAPI ``{"detail": ...}``; anything else (an HTML page) is searched as text.
    """
    try:
        parsed: Any = json.loads(body_text) if body_text.strip() else None
    except ValueError:
        parsed = None
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        text = body_text.strip()
        if text.startswith("<"):
            text = _html_text(text)
        return ErrorFields(message=text, searchable=text.lower())
    parts: list[str] = []
    message = ""
    delay: float | None = None
    error = parsed.get("error")
    sources: list[dict[str, Any]] = [parsed]
    if isinstance(error, dict):
        sources.insert(0, error)
        inner = error.get("innererror")
        if isinstance(inner, dict):
            sources.append(inner)
        delay = _details_delay(error.get("details"))
    elif isinstance(error, str):
        message = error
        parts.append(error)
    for source in sources:
        for key in ("message", "type", "code", "status", "error_type", "param", "reason"):
            value = source.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                parts.append(str(value))
                if key == "message" and not message and isinstance(value, str):
                    message = value
    detail = parsed.get("detail")
    if isinstance(detail, str | list | dict):
        text = detail if isinstance(detail, str) else json.dumps(detail)
        parts.append(text)
        message = message or text
    if not message:
        message = body_text.strip()
    searchable = " | ".join(parts).lower() or body_text.lower()
    return ErrorFields(message=message, searchable=searchable, retry_delay=delay)


def _html_text(html: str) -> str:
    """The title (or the tag-free text) of an HTML error page from a proxy."""
    match = re.search(r"<title>(.*?)</title>", html, flags=re.I | re.S)
    if match:
        return match.group(1).strip()
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())[:200]


def _details_delay(details: Any) -> float | None:
    """Gemini's ``google.rpc.RetryInfo`` detail: ``{"retryDelay": "27s"}``."""
    if not isinstance(details, list):
        return None
    for item in details:
        if isinstance(item, dict) and isinstance(item.get("retryDelay"), str):
            return parse_duration(item["retryDelay"])
    return None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str) -> float | None:
    """``27s``, ``1.5s``, ``20ms``, ``6m0s``, ``2m59.56s``, ``1h2m`` → seconds.

    Purely computational. The Go-style durations of OpenAI's and Groq's
    ``x-ratelimit-reset-*`` headers and Gemini's ``retryDelay``; a bare number is
    seconds. None when it does not parse.
    """
    text = value.strip().lower()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 and seconds == seconds else None
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        number, unit = float(match.group(1)), match.group(2)
        total += number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        position = match.end()
    return total if position == len(text) and position > 0 else None


def retry_delay(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The delay a provider asks for, from its headers (lower-case names), or None.

    Purely computational. ``retry-after-ms`` (OpenAI SDKs honour it first), then
    ``retry-after`` (seconds, or an HTTP date when ``now`` is given), then the longest
    ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` among the budgets that
    are exhausted (all of them when the reply does not say which).
    """
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    after = parse_retry_after(headers.get("retry-after"))
    if after is None and now is not None and headers.get("retry-after"):
        when = _http_date(headers["retry-after"])
        if when is not None:
            after = max(when - now, 0.0)
    if after is not None:
        return after
    resets = []
    for budget in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{budget}")
        if not reset:
            continue
        remaining = headers.get(f"x-ratelimit-remaining-{budget}")
        if remaining not in (None, "0") and _exhausted_known(headers):
            continue
        seconds = parse_duration(reset)
        if seconds is not None:
            resets.append(seconds)
    return max(resets) if resets else None


def _exhausted_known(headers: Mapping[str, str]) -> bool:
    """Whether the remaining-counters say which budget ran out (one of them is 0)."""
    return "0" in (
        headers.get("x-ratelimit-remaining-requests"),
        headers.get("x-ratelimit-remaining-tokens"),
    )


def _http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def _error_message(body_text: str) -> str:
    """The human part of an error body (see ``_error_fields``). Purely computational."""
    return _error_fields(body_text).message


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
