"""Every recorded real error reply, replayed over a real socket through chainop's clients.

We test these aspects:

* each entry of ``tests/corpus`` (status, headers, body copied from a primary source)
  is served byte for byte by the fake backend's ``reply`` mode and read by the real
  client of its protocol (Anthropic entries by the Messages client, the rest by the
  OpenAI-compatible one; ``models`` and ``health`` entries by the probe of that kind);
* the error class raised is the one the corpus says the reply *means* (capability,
  quota exhausted, rate limited, model not found, transient, auth, bad request,
  content policy, incomplete, loading);
* rate-limited replies that name a delay (a header or Gemini's ``retryDelay``) carry
  that delay, to the millisecond;
* the message shown in status is the provider's own words, short, on one line;
* a streamed entry (``endpoint: chat-stream``) is read by a client called with
  ``stream: true``, its chunk framed as the server sends it;
* a summary per class, so a regression in one class is visible at a glance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest

from chainop.core import errors
from chainop.core.calls import CallContext
from chainop.core.models import Message, ProbeKind, ProviderSpec, RequestSpec
from chainop.providers import ProviderClients
from chainop.testing.fake_backend import FakeBackend
from tests.corpus import Reply, load_replies

REPLIES = load_replies()

#: The error class each corpus class must raise (exactly this class, not a subclass).
EXPECTED: dict[str, type[errors.ProviderError]] = {
    "capability": errors.UnsupportedRequestError,
    "quota_exhausted": errors.QuotaExhaustedError,
    "rate_limited": errors.RateLimitedError,
    "model_not_found": errors.ModelNotFoundError,
    "transient": errors.TransientError,
    "auth": errors.AuthError,
    "bad_request": errors.PermanentError,
    "content_policy": errors.ContentPolicyError,
    "incomplete": errors.IncompleteReplyError,
}


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    async with FakeBackend(name="corpus", models=["corpus-model"]) as fake:
        yield fake


@pytest.fixture
async def clients() -> AsyncIterator[ProviderClients]:
    async with ProviderClients() as provider_clients:
        yield provider_clients


def provider_for(reply: Reply, backend: FakeBackend) -> ProviderSpec:
    """The provider a reply came from; a streamed reply's is called with stream=true."""
    protocol = "anthropic" if reply.provider == "anthropic" else "openai"
    endpoint = backend.url if protocol == "anthropic" else backend.url + "/v1"
    return ProviderSpec.model_validate(
        {
            "name": "replayed",
            "type": protocol,
            "endpoint": endpoint,
            "model": "corpus-model",
            "timeoutSeconds": 5,
            "stream": reply.endpoint == "chat-stream",
        }
    )


def body_of(reply: Reply) -> str:
    """The body served. A streamed entry records the server's chunk(s) alone; served as
    the server frames them - each event ended by a blank line, then ``data: [DONE]`` -
    so the client judges the chunk's meaning, not a stream cut after it (which would be
    incomplete whatever the chunk said)."""
    if reply.endpoint != "chat-stream":
        return reply.body
    body = reply.body.rstrip("\n") + "\n\n"
    return body if "data: [DONE]" in body else body + "data: [DONE]\n\n"


def max_tokens_for(reply: Reply) -> int:
    """The request's max_tokens; a recorded "no limit" (-1, llama.cpp) is chainop's default,
    since chainop always sends a limit."""
    if reply.request_max_tokens is None or reply.request_max_tokens < 1:
        return 256
    return reply.request_max_tokens


def route_for(reply: Reply) -> str:
    if reply.endpoint == "models":
        return "models"
    if reply.endpoint == "health":
        return "health"
    return "anthropic" if reply.provider == "anthropic" else "openai"


async def replay(
    reply: Reply, backend: FakeBackend, clients: ProviderClients
) -> errors.ProviderError | str:
    """Serve ``reply`` and read it with the client; the error raised, or "loading"/"ok"."""
    headers = dict(reply.headers)
    headers.setdefault("content-type", reply.content_type)
    backend.set_mode(
        "reply", route=route_for(reply), status=reply.status, headers=headers, body=body_of(reply)
    )
    provider = provider_for(reply, backend)
    try:
        if reply.endpoint in ("models", "health"):
            kind = ProbeKind.LIST if reply.endpoint == "models" else ProbeKind.HEALTH
            result = await clients.probe(provider, kind=kind, api_key=None, timeout=5.0)
            return "loading" if result.loading else "ok"
        request = RequestSpec(
            messages=[Message(content="replayed")], max_tokens=max_tokens_for(reply)
        )
        await clients(provider, request, CallContext(timeout=5.0))
    except errors.ProviderError as error:
        return error
    return "ok"


@pytest.mark.parametrize("reply", REPLIES, ids=[r.id for r in REPLIES])
async def test_real_reply_is_classified_by_its_meaning(
    reply: Reply, backend: FakeBackend, clients: ProviderClients
) -> None:
    outcome = await replay(reply, backend, clients)
    if reply.expect_class == "loading":
        assert outcome == "loading", f"{reply.id}: expected loading, got {outcome!r}"
        return
    assert isinstance(outcome, errors.ProviderError), f"{reply.id}: no error raised"
    expected = EXPECTED[reply.expect_class]
    assert type(outcome) is expected, (
        f"{reply.id} ({reply.provider} {reply.status}) means {reply.expect_class}, but was "
        f"read as {type(outcome).__name__}: {outcome.message}"
    )
    assert "\n" not in outcome.message
    assert len(outcome.message) <= 300
    if reply.retry_after_seconds is not None:
        assert isinstance(outcome, errors.RateLimitedError)
        assert outcome.retry_after == pytest.approx(reply.retry_after_seconds, abs=0.001)


async def test_every_class_is_recognised_at_least_once(
    backend: FakeBackend, clients: ProviderClients
) -> None:
    """A summary: how many entries of each class were read right (printed with -s)."""
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for reply in REPLIES:
        total[reply.expect_class] += 1
        outcome = await replay(reply, backend, clients)
        if reply.expect_class == "loading":
            right["loading"] += outcome == "loading"
        elif type(outcome) is EXPECTED[reply.expect_class]:
            right[reply.expect_class] += 1
    for name in sorted(total):
        print(f"{name:16} {right[name]:3}/{total[name]:3}")
    assert all(right[name] > 0 for name in total)
