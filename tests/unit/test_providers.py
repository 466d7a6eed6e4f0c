"""We test these aspects: the OpenAI, Anthropic and jobs clients against the fake backend
over real sockets, with both transports (aiohttp and httpx):

* a healthy reply becomes a Completion with text, finish reason and usage, and the
  request on the wire has the protocol's shape (auth headers, system prompt, tools, images);
* every failure mode maps to the error class DESIGN.md's chain semantics need:
  5xx/408/timeouts/hangs/refused connections -> TransientError, 429 -> RateLimitedError
  with Retry-After, 400/401/403/422 -> PermanentError, 404 naming the model ->
  ModelNotFoundError, malformed JSON/empty choices/cut-off or oversized bodies ->
  IncompleteReplyError;
* the request budget is the smaller of the provider's and the caller's timeout;
* jobs: submit then poll, on_job_submitted awaited before the first poll, resuming a
  known job without resubmitting, one submission per idempotency key, failed jobs
  classified, lost jobs and jobs that never finish;
* probes: zero-cost listing URLs per protocol, strict 2xx, failures typed;
* an API key never appears in an error message or its traceback;
* reply parsers take any JSON a server may send and either answer or raise
  IncompleteReplyError, never anything else (property-based).
"""

from __future__ import annotations

import asyncio
import socket
import traceback
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainop.core import errors
from chainop.core.calls import CallContext, Completion
from chainop.core.models import Message, ProbeKind, ProviderSpec, RequestSpec, ToolSpec
from chainop.providers import TRANSPORTS, ProviderClients, TransportName
from chainop.providers import anthropic as anthropic_protocol
from chainop.providers import jobs as jobs_protocol
from chainop.providers import openai as openai_protocol
from chainop.providers.http import Reply
from chainop.testing.fake_backend import FakeBackend

PROTOCOLS = ("openai", "anthropic", "jobs")
SHORT = 0.2  # seconds: the budget of every test that waits for a timeout
CANARY_KEY = "sk-canary-7f3a9c1e-never-show-me"


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    async with FakeBackend(name="alpha") as fake:
        yield fake


@pytest.fixture(params=TRANSPORTS)
async def clients(request: pytest.FixtureRequest) -> AsyncIterator[ProviderClients]:
    async with ProviderClients(transport=request.param) as provider_clients:
        yield provider_clients


def make_provider(
    backend: FakeBackend,
    protocol: str = "openai",
    *,
    model: str = "m1",
    timeout_seconds: float = 5.0,
    endpoint: str | None = None,
) -> ProviderSpec:
    """A provider pointing at the fake; OpenAI endpoints include /v1 as users write them."""
    if endpoint is None:
        endpoint = backend.url + "/v1" if protocol == "openai" else backend.url
    return ProviderSpec.model_validate(
        {
            "name": f"{protocol}-p",
            "type": protocol,
            "endpoint": endpoint,
            "model": model,
            "timeoutSeconds": timeout_seconds,
        }
    )


def make_request(text: str = "hello", **fields: Any) -> RequestSpec:
    return RequestSpec(messages=[Message(content=text)], max_tokens=32, **fields)


def closed_port_url() -> str:
    """A URL nobody listens on: bind a free port, then close it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def call(
    clients: ProviderClients,
    provider: ProviderSpec,
    request: RequestSpec | None = None,
    **context: Any,
) -> Completion:
    context.setdefault("timeout", 5.0)
    return await clients(provider, request or make_request(), CallContext(**context))


# --------------------------------------------------------------------------- healthy


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_healthy_reply_is_a_completion_with_text_and_usage(
    clients: ProviderClients, backend: FakeBackend, protocol: str
) -> None:
    completion = await call(clients, make_provider(backend, protocol), make_request("hi there"))
    assert completion.text == "[alpha] echo: hi there"
    assert completion.finish_reason == "stop"
    assert completion.input_tokens > 0
    assert completion.output_tokens > 0


async def test_openai_request_shape(clients: ProviderClients, backend: FakeBackend) -> None:
    request = RequestSpec(
        system="Be terse.",
        messages=[Message(content="look", images=["https://img.example/cat.png"])],
        max_tokens=64,
        temperature=0.3,
        tools=[ToolSpec(name="lookup", description="Look up", parameters={"type": "object"})],
    )
    await call(clients, make_provider(backend, "openai"), request, api_key="sk-123456")
    sent = backend.stats["last_request"]["openai"]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == "Bearer sk-123456"
    body = sent["json"]
    assert body["model"] == "m1"
    assert body["max_tokens"] == 64
    assert body["temperature"] == 0.3
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://img.example/cat.png"}},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look up",
                "parameters": {"type": "object"},
            },
        }
    ]


async def test_anthropic_request_shape(clients: ProviderClients, backend: FakeBackend) -> None:
    request = RequestSpec(
        system="Be terse.",
        messages=[Message(content="look", images=["data:image/png;base64,AAAA"])],
        max_tokens=64,
        temperature=1.5,
        tools=[ToolSpec(name="lookup", parameters={"type": "object"})],
    )
    await call(clients, make_provider(backend, "anthropic"), request, api_key="sk-ant-123456")
    sent = backend.stats["last_request"]["anthropic"]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == "sk-ant-123456"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent["headers"]
    body = sent["json"]
    assert body["system"] == "Be terse."
    assert all(message["role"] != "system" for message in body["messages"])
    assert body["temperature"] == 1.0  # clamped to Anthropic's scale
    assert body["messages"][0]["content"][0] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
    }
    assert body["tools"] == [
        {"name": "lookup", "description": "", "input_schema": {"type": "object"}}
    ]


@pytest.mark.parametrize(
    ("endpoint_suffix", "url"),
    [
        ("", "https://x.example/v1/messages"),
        ("/", "https://x.example/v1/messages"),
        ("/v1", "https://x.example/v1/messages"),
        ("/v1/", "https://x.example/v1/messages"),
        ("/anthropic", "https://x.example/anthropic/v1/messages"),
    ],
)
def test_anthropic_endpoint_rule(endpoint_suffix: str, url: str) -> None:
    assert anthropic_protocol.api_url("https://x.example" + endpoint_suffix, "/messages") == url


@pytest.mark.parametrize("suffix", ["", "/v1"])
async def test_anthropic_endpoint_with_or_without_v1_reaches_v1_messages(
    clients: ProviderClients, backend: FakeBackend, suffix: str
) -> None:
    provider = make_provider(backend, "anthropic", endpoint=backend.url + suffix)
    await call(clients, provider)
    assert backend.stats["last_request"]["anthropic"]["path"] == "/v1/messages"


async def test_jobs_reply_carries_cost_and_job_id(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    completion = await call(clients, make_provider(backend, "jobs"), idempotency_key="task-1/1")
    assert completion.job_id is not None
    assert completion.cost_usd is not None
    assert completion.cost_usd > 0
    body = backend.stats["last_request"]["jobs"]["json"]
    assert body["idempotency_key"] == "task-1/1"
    assert set(body) == {"model", "messages", "max_tokens", "temperature", "idempotency_key"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_correct_api_key_is_accepted_and_wrong_one_is_permanent(
    clients: ProviderClients, backend: FakeBackend, protocol: str
) -> None:
    backend.configure(api_key="right-key")
    provider = make_provider(backend, protocol)
    await call(clients, provider, api_key="right-key")
    with pytest.raises(errors.PermanentError) as caught:
        await call(clients, provider, api_key="wrong-key")
    assert caught.value.status_code == 401


# --------------------------------------------------------------------------- failures

FAILURES: list[tuple[str, dict[str, Any], type[errors.ProviderError], str]] = [
    ("http-500", {"mode": "error", "status": 500}, errors.TransientError, "HTTP 500"),
    ("http-502", {"mode": "error", "status": 502}, errors.TransientError, "HTTP 502"),
    ("http-503", {"mode": "error", "status": 503}, errors.TransientError, "HTTP 503"),
    ("http-408", {"mode": "error", "status": 408}, errors.TransientError, "HTTP 408"),
    ("http-400", {"mode": "error", "status": 400}, errors.PermanentError, "HTTP 400"),
    ("http-401", {"mode": "error", "status": 401}, errors.AuthError, "HTTP 401"),
    ("http-403", {"mode": "error", "status": 403}, errors.AuthError, "HTTP 403"),
    ("http-422", {"mode": "error", "status": 422}, errors.PermanentError, "HTTP 422"),
    ("rate-limit", {"mode": "rate_limit", "retry_after": 7}, errors.RateLimitedError, "429"),
    ("unknown-model", {"mode": "unknown_model"}, errors.ModelNotFoundError, "m1"),
    ("malformed", {"mode": "malformed"}, errors.IncompleteReplyError, "malformed JSON"),
    ("empty", {"mode": "empty"}, errors.IncompleteReplyError, "incomplete"),
    ("drop", {"mode": "drop"}, errors.IncompleteReplyError, "connection closed"),
    ("hang", {"mode": "hang"}, errors.TransientError, "timed out after 0.2s"),
    ("slow", {"mode": "slow", "delay_ms": 5000}, errors.TransientError, "timed out after 0.2s"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("mode", "expected", "in_message"),
    [pytest.param(mode, expected, text, id=case) for case, mode, expected, text in FAILURES],
)
async def test_failure_mode_maps_to_error_class(
    clients: ProviderClients,
    backend: FakeBackend,
    protocol: str,
    mode: dict[str, Any],
    expected: type[errors.ProviderError],
    in_message: str,
) -> None:
    backend.set_mode(**mode)
    with pytest.raises(errors.ProviderError) as caught:
        await call(clients, make_provider(backend, protocol), timeout=SHORT)
    assert type(caught.value) is expected
    assert in_message in caught.value.message


async def test_rate_limit_carries_retry_after(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    backend.set_mode("rate_limit", retry_after=7)
    with pytest.raises(errors.RateLimitedError) as caught:
        await call(clients, make_provider(backend))
    assert caught.value.retry_after == 7.0
    assert caught.value.status_code == 429


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_connection_refused_is_transient(clients: ProviderClients, protocol: str) -> None:
    provider = ProviderSpec(name="gone", type=protocol, endpoint=closed_port_url(), model="m1")
    with pytest.raises(errors.ProviderError) as caught:
        await call(clients, provider)
    assert type(caught.value) is errors.TransientError
    assert "cannot connect" in caught.value.message


async def test_provider_timeout_below_the_callers_is_the_budget(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    backend.set_mode("hang")
    provider = make_provider(backend, timeout_seconds=SHORT)
    with pytest.raises(errors.TransientError, match=r"timed out after 0\.2s"):
        await call(clients, provider, timeout=30.0)


async def test_reply_larger_than_the_limit_is_incomplete(backend: FakeBackend) -> None:
    async with ProviderClients(max_reply_bytes=2048) as small_clients:
        with pytest.raises(errors.IncompleteReplyError, match="larger than 2048 bytes"):
            await call(small_clients, make_provider(backend), make_request("x" * 10_000))
        # The connection pool survives: a small reply still works.
        completion = await call(small_clients, make_provider(backend), make_request("ok"))
    assert completion.text == "[alpha] echo: ok"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_chunked_reply_without_length_is_cut_at_the_limit(transport: TransportName) -> None:
    """A hostile server streaming without Content-Length is stopped while reading."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b" " * 1024)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", endless)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        provider = ProviderSpec(
            name="hostile", endpoint=f"http://127.0.0.1:{port}/v1", model="m1", type="openai"
        )
        async with ProviderClients(transport=transport, max_reply_bytes=10_000) as small:
            with pytest.raises(errors.IncompleteReplyError, match="larger than 10000 bytes"):
                await call(small, provider)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_transient_fault_clears_after_fail_next(
    clients: ProviderClients, backend: FakeBackend, protocol: str
) -> None:
    backend.set_mode(fail_next=1, status=503)
    provider = make_provider(backend, protocol)
    with pytest.raises(errors.TransientError):
        await call(clients, provider)
    completion = await call(clients, provider)
    assert completion.text.startswith("[alpha]")


# --------------------------------------------------------------------------- jobs


async def test_job_id_is_reported_before_the_first_poll(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    backend.configure(job_delay_ms=120)
    seen: list[tuple[str, int]] = []

    async def on_job_submitted(job_id: str) -> None:
        seen.append((job_id, backend.stats["requests"].get("jobs_poll", 0)))

    completion = await call(
        clients,
        make_provider(backend, "jobs"),
        idempotency_key="task-a/1",
        on_job_submitted=on_job_submitted,
    )
    assert seen == [(completion.job_id, 0)]
    assert backend.stats["requests"]["jobs_poll"] >= 2  # queued/running, then succeeded


async def test_job_resumes_from_a_known_id_without_resubmitting(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    backend.configure(job_delay_ms=50)
    provider = make_provider(backend, "jobs")
    first = await call(clients, provider, idempotency_key="task-b/1")
    assert first.job_id is not None

    resumed = await call(clients, provider, idempotency_key="task-b/1", resume_job_id=first.job_id)

    assert resumed.job_id == first.job_id
    assert resumed.text == first.text
    stats = backend.stats
    assert stats["job_posts"] == {"task-b/1": 1}
    assert stats["jobs_created"] == 1


async def test_resume_does_not_call_on_job_submitted(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    provider = make_provider(backend, "jobs")
    first = await call(clients, provider, idempotency_key="task-c/1")
    reported: list[str] = []

    async def on_job_submitted(job_id: str) -> None:
        reported.append(job_id)

    await call(clients, provider, resume_job_id=first.job_id, on_job_submitted=on_job_submitted)
    assert reported == []


async def test_same_idempotency_key_is_one_submission(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    provider = make_provider(backend, "jobs")
    first = await call(clients, provider, idempotency_key="task-d/1")
    second = await call(clients, provider, idempotency_key="task-d/1")
    assert first.job_id == second.job_id
    stats = backend.stats
    assert stats["job_posts"] == {"task-d/1": 2}
    assert stats["job_submissions"] == {"task-d/1": 1}


async def test_empty_idempotency_key_is_replaced_by_a_unique_one(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    provider = make_provider(backend, "jobs")
    first = await call(clients, provider)
    second = await call(clients, provider)
    assert first.job_id != second.job_id


@pytest.mark.parametrize(
    ("job_error", "expected"),
    [
        (None, errors.TransientError),
        ("GPU fell off the bus", errors.TransientError),
        ({"type": "invalid_request_error", "message": "bad"}, errors.PermanentError),
        ({"message": "no", "retryable": False}, errors.PermanentError),
        ({"status_code": 503, "message": "overloaded"}, errors.TransientError),
        ({"code": 404, "message": "model m1 not found"}, errors.ModelNotFoundError),
        ({"type": "model_not_found"}, errors.ModelNotFoundError),
        ({"type": "rate_limit_error"}, errors.RateLimitedError),
    ],
)
async def test_failed_job_is_classified(
    clients: ProviderClients,
    backend: FakeBackend,
    job_error: Any,
    expected: type[errors.ProviderError],
) -> None:
    backend.configure(job_status="failed", job_error=job_error)
    with pytest.raises(errors.ProviderError) as caught:
        await call(clients, make_provider(backend, "jobs"), idempotency_key="task-e/1")
    assert type(caught.value) is expected
    assert "failed" in caught.value.message


async def test_poll_of_an_unknown_job_is_transient(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    with pytest.raises(errors.TransientError, match="unknown to the provider"):
        await call(clients, make_provider(backend, "jobs"), resume_job_id="job-lost-42")
    assert backend.stats["requests"] == {"jobs_poll": 1}


async def test_transient_poll_failures_are_ridden_out(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    backend.set_mode(route="jobs_poll", fail_next=2, status=503)
    completion = await call(clients, make_provider(backend, "jobs"), idempotency_key="task-f/1")
    assert completion.text == "[alpha] echo: hello"
    assert backend.stats["jobs_created"] == 1


async def test_persistent_poll_failures_give_up(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    backend.set_mode("error", route="jobs_poll", status=503)
    with pytest.raises(errors.TransientError, match="HTTP 503"):
        await call(clients, make_provider(backend, "jobs"), idempotency_key="task-g/1")


async def test_job_that_never_finishes_times_out(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    backend.configure(job_delay_ms=60_000)
    with pytest.raises(errors.TransientError, match=r"not finished: timed out after 0\.2s"):
        await call(
            clients, make_provider(backend, "jobs"), idempotency_key="task-h/1", timeout=SHORT
        )


async def test_job_with_tools_is_unsupported(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    request = make_request(tools=[ToolSpec(name="lookup")])
    with pytest.raises(errors.UnsupportedRequestError):
        await call(clients, make_provider(backend, "jobs"), request)
    assert backend.stats["requests"] == {}


async def test_failing_on_job_submitted_stops_before_polling(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    async def on_job_submitted(job_id: str) -> None:
        raise RuntimeError("cannot persist")

    with pytest.raises(RuntimeError, match="cannot persist"):
        await call(clients, make_provider(backend, "jobs"), on_job_submitted=on_job_submitted)
    assert "jobs_poll" not in backend.stats["requests"]


# --------------------------------------------------------------------------- probes


@pytest.mark.parametrize(
    ("protocol", "path"),
    [("openai", "/v1/models"), ("anthropic", "/v1/models"), ("jobs", "/models")],
)
async def test_probe_hits_the_listing_url_and_returns_latency(
    clients: ProviderClients, backend: FakeBackend, protocol: str, path: str
) -> None:
    backend.configure(models=["m1"])
    result = await clients.probe(
        make_provider(backend, protocol), kind=ProbeKind.LIST, api_key=None, timeout=5.0
    )
    assert result.latency >= 0
    assert result.served == ("m1",)
    assert backend.stats["last_request"]["models"]["path"] == path
    assert set(backend.stats["requests"]) == {"models"}  # never a paid completion


PROBE_FAILURES: list[tuple[str, dict[str, Any], type[errors.ProviderError]]] = [
    ("http-503", {"mode": "error", "status": 503}, errors.TransientError),
    ("http-404", {"mode": "error", "status": 404}, errors.PermanentError),
    ("http-405", {"mode": "error", "status": 405}, errors.PermanentError),
    ("http-401", {"mode": "error", "status": 401}, errors.AuthError),
    ("rate-limit", {"mode": "rate_limit"}, errors.RateLimitedError),
    ("hang", {"mode": "hang"}, errors.TransientError),
    ("drop", {"mode": "drop"}, errors.IncompleteReplyError),
    ("malformed", {"mode": "malformed"}, errors.IncompleteReplyError),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("mode", "expected"),
    [pytest.param(mode, expected, id=case) for case, mode, expected in PROBE_FAILURES],
)
async def test_probe_failure_is_typed(
    clients: ProviderClients,
    backend: FakeBackend,
    protocol: str,
    mode: dict[str, Any],
    expected: type[errors.ProviderError],
) -> None:
    backend.set_mode(route="models", **mode)
    with pytest.raises(errors.ProviderError) as caught:
        await clients.probe(
            make_provider(backend, protocol), kind=ProbeKind.LIST, api_key=None, timeout=SHORT
        )
    assert type(caught.value) is expected


async def test_probe_of_a_closed_port_is_transient(clients: ProviderClients) -> None:
    provider = ProviderSpec(name="gone", endpoint=closed_port_url(), model="m1")
    with pytest.raises(errors.TransientError, match="cannot connect"):
        await clients.probe(provider, kind=ProbeKind.LIST, api_key=None, timeout=SHORT)


async def test_probe_sends_the_key(clients: ProviderClients, backend: FakeBackend) -> None:
    backend.configure(api_key="probe-key", models=["m1"])
    list_probe = ProbeKind.LIST
    await clients.probe(
        make_provider(backend, "anthropic"), kind=list_probe, api_key="probe-key", timeout=5.0
    )
    with pytest.raises(errors.PermanentError):
        await clients.probe(
            make_provider(backend, "openai"), kind=list_probe, api_key="nope-nope", timeout=5.0
        )


# --------------------------------------------------------------------------- secrets


def rendered(exc: BaseException) -> str:
    """Everything a log line or traceback of the error would show."""
    return "".join(traceback.format_exception(exc)) + repr(exc)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "mode",
    [
        {"mode": "error", "status": 400, "echo_headers": True},
        {"mode": "error", "status": 503, "echo_headers": True},
        {"mode": "error", "status": 404, "body": f"no model for key {CANARY_KEY}"},
        {"mode": "drop"},
        {"mode": "malformed"},
        {"mode": "hang"},
    ],
    ids=["echo-400", "echo-503", "key-in-body", "drop", "malformed", "hang"],
)
async def test_api_key_never_appears_in_errors(
    clients: ProviderClients, backend: FakeBackend, protocol: str, mode: dict[str, Any]
) -> None:
    backend.set_mode(**mode)
    provider = make_provider(backend, protocol)
    with pytest.raises(errors.ProviderError) as caught:
        await call(clients, provider, api_key=CANARY_KEY, timeout=SHORT)
    assert CANARY_KEY not in rendered(caught.value)
    backend.set_mode(route="models", **mode)
    with pytest.raises(errors.ProviderError) as probed:
        await clients.probe(provider, kind=ProbeKind.LIST, api_key=CANARY_KEY, timeout=SHORT)
    assert CANARY_KEY not in rendered(probed.value)


async def test_api_key_never_appears_when_the_connection_is_refused(
    clients: ProviderClients,
) -> None:
    provider = ProviderSpec(name="gone", endpoint=closed_port_url(), model="m1")
    with pytest.raises(errors.ProviderError) as caught:
        await call(clients, provider, api_key=CANARY_KEY)
    assert CANARY_KEY not in rendered(caught.value)


async def test_failed_job_error_is_redacted(clients: ProviderClients, backend: FakeBackend) -> None:
    backend.configure(job_status="failed", job_error=f"upstream rejected {CANARY_KEY}")
    with pytest.raises(errors.ProviderError) as caught:
        await call(clients, make_provider(backend, "jobs"), api_key=CANARY_KEY)
    assert CANARY_KEY not in rendered(caught.value)


# --------------------------------------------------------------------------- lifecycle


async def test_shared_client_is_borrowed_not_closed(backend: FakeBackend) -> None:
    from chainop.providers import build_client

    client = build_client(transport="httpx")
    try:
        async with ProviderClients(client) as borrowed:
            await call(borrowed, make_provider(backend))
        assert not client.is_closed
    finally:
        await client.aclose()


async def test_many_concurrent_calls_share_the_pool(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    provider = make_provider(backend)
    completions = await asyncio.gather(
        *(call(clients, provider, make_request(f"n{i}")) for i in range(50))
    )
    assert sorted(c.text for c in completions) == sorted(f"[alpha] echo: n{i}" for i in range(50))


# --------------------------------------------------------------------------- parsers

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "choices",
                    "message",
                    "content",
                    "text",
                    "type",
                    "usage",
                    "result",
                    "status",
                    "finish_reason",
                    "stop_reason",
                    "tool_calls",
                    "function",
                    "name",
                    "input",
                    "prompt_tokens",
                    "input_tokens",
                    "cost_usd",
                    "error",
                    "code",
                    "id",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)

#: The machine is shared with other suites: no wall-clock health checks or deadlines.
relaxed = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


@relaxed
@given(data=st.dictionaries(st.sampled_from(["choices", "usage", "id"]), JSON, max_size=3))
def test_openai_parser_answers_or_reports_incomplete(data: dict[str, Any]) -> None:
    try:
        completion = openai_protocol.parse_reply(data)
    except errors.IncompleteReplyError:
        return
    assert completion.text or completion.tool_calls


@relaxed
@given(data=st.dictionaries(st.sampled_from(["content", "usage", "stop_reason"]), JSON))
def test_anthropic_parser_answers_or_reports_incomplete(data: dict[str, Any]) -> None:
    try:
        completion = anthropic_protocol.parse_reply(data)
    except errors.IncompleteReplyError:
        return
    assert completion.text or completion.tool_calls


@relaxed
@given(data=st.dictionaries(st.sampled_from(["result", "status", "error"]), JSON))
def test_jobs_parser_answers_or_reports_incomplete(data: dict[str, Any]) -> None:
    try:
        completion = jobs_protocol.parse_result("job-1", data)
    except errors.IncompleteReplyError:
        return
    assert completion.text
    assert completion.job_id == "job-1"


@relaxed
@given(error=JSON)
def test_any_job_error_is_classified(error: Any) -> None:
    classified = jobs_protocol.failure_error("job-1", "failed", error, model="m1")
    assert isinstance(classified, errors.ProviderError)


@pytest.mark.parametrize(
    "body", [b"", b"[1, 2]", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b'"text"']
)
def test_non_object_bodies_are_incomplete(body: bytes) -> None:
    reply = Reply(status_code=200, headers=httpx.Headers(), body=body)
    with pytest.raises(errors.IncompleteReplyError):
        reply.json_object()
