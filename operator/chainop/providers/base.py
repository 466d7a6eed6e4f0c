"""The protocol every wire adapter implements, and helpers they share.

Modelled on httpx's one-method transports: an adapter knows one wire protocol (OpenAI,
Anthropic, jobs) and nothing else. It holds no state and no connections; the shared
:class:`~chainop.providers.http.Wire` is handed in on every call, so one
:class:`~chainop.providers.registry.ProviderClients` can serve every protocol over one
connection pool, and a new protocol is one new module plus one line in the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from chainop.core import errors as core_errors
from chainop.core.calls import CallContext, Completion
from chainop.core.models import ProviderSpec, RequestSpec
from chainop.providers import errors
from chainop.providers.http import Reply, Wire
from chainop.providers.stream import Assembler


class Adapter(Protocol):
    """One wire protocol: how to complete a request and where to probe."""

    async def complete(
        self, wire: Wire, provider: ProviderSpec, request: RequestSpec, context: CallContext
    ) -> Completion:
        """Send ``request`` to ``provider``; return a whole answer or raise ProviderError."""
        ...

    def probe_url(self, provider: ProviderSpec) -> str:
        """The zero-cost URL whose 2xx answer means the provider is up."""
        ...

    def headers(self, api_key: str | None) -> dict[str, str]:
        """Authentication (and version) headers for this protocol."""
        ...


def join_url(endpoint: str, path: str) -> str:
    """``endpoint`` without trailing slashes, then ``path``. Purely computational."""
    return endpoint.rstrip("/") + path


def request_timeout(provider: ProviderSpec, context: CallContext) -> float:
    """One request's budget: the provider's own timeout, cut short by the caller's."""
    return min(provider.timeout_seconds, context.timeout)


async def post_completion(
    wire: Wire,
    provider: ProviderSpec,
    context: CallContext,
    *,
    url: str,
    body: Any,
    headers: Mapping[str, str],
    assembler: Assembler | None,
) -> Reply | Completion:
    """POST one completion request: streamed into ``assembler`` when there is one (the
    provider ``streams()``), else read whole. A streamed call returns its assembled
    Completion, unless the server answered with something other than an event stream;
    the caller classifies and parses a :class:`Reply` in its protocol's way."""
    secrets = (context.api_key,)
    timeout = request_timeout(provider, context)
    if assembler is not None:
        return await wire.stream(
            "POST",
            url,
            timeout=timeout,
            first_token_timeout=provider.first_token_timeout_seconds,
            assembler=assembler,
            headers=headers,
            json_body=body,
            secrets=secrets,
        )
    return await wire.request(
        "POST", url, timeout=timeout, headers=headers, json_body=body, secrets=secrets
    )


def bearer_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization: Bearer`` when there is a key; keyless in-cluster servers get none."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def get_object(data: Mapping[str, Any], key: str, *, where: str) -> dict[str, Any]:
    """``data[key]`` as a JSON object, or ``IncompleteReplyError`` naming what is missing."""
    value = data.get(key)
    if not isinstance(value, dict):
        raise errors.incomplete(f"{where}.{key} missing or not an object")
    return value


def token_count(usage: Mapping[str, Any], key: str) -> int:
    """A token count from a usage object; absent or nonsensical counts read as 0.

    Usage is bookkeeping, not the answer: a server that omits it (some OpenAI-compatible
    ones do) still gave a complete reply, so this never raises.
    """
    value = usage.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0
    return int(value)


#: Finish reasons that mean a filter or a refusal stopped the answer.
POLICY_FINISH_REASONS = frozenset({"content_filter", "refusal", "safety", "prohibited_content"})


def check_finished(
    *, finish_reason: str, output_tokens: int, max_tokens: int | None, refusal: str = ""
) -> None:
    """Raise when a 200 reply is not a whole, permitted answer. Purely computational.

    * a content filter or refusal (``finish_reason: content_filter``, Anthropic's
      ``stop_reason: refusal``, OpenAI's ``message.refusal``) is never a success:
      ``ContentPolicyError`` (not the provider's fault);
    * ``finish_reason: length`` with fewer output tokens than the caller's ``max_tokens``
      means the *context* ran out, not the caller's budget: an incomplete answer, redone
      whole on the next provider (a bigger context may hold it). Without usage (0
      tokens) the two cannot be told apart and the caller's limit is assumed;
    * ``finish_reason: error`` (OpenRouter and some gateways end a stream broken upstream
      so) is an incomplete answer, never a success.
    """
    if finish_reason == "error":
        raise errors.incomplete("the provider ended the answer with finish_reason error")
    if finish_reason in POLICY_FINISH_REASONS or refusal:
        detail = f": {refusal[:200]}" if refusal else ""
        raise core_errors.ContentPolicyError(
            f"the provider refused or filtered the answer (finish_reason {finish_reason}){detail}"
        )
    if (
        finish_reason in ("length", "model_context_window_exceeded")
        and max_tokens is not None
        and 0 < output_tokens < max_tokens
    ) or finish_reason == "model_context_window_exceeded":
        raise errors.incomplete(
            f"the context ran out after {output_tokens} of {max_tokens} tokens "
            f"(finish_reason {finish_reason})"
        )
