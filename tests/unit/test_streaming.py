"""We test these aspects: streamed provider calls, tool calls and continuations, over
real sockets (the fake backend, and tiny servers of our own for what it does not send),
with both transports, plus the assemblers and request builders on their own:

* a streamed answer (OpenAI ``chat.completion.chunk`` to ``[DONE]``, vLLM and llama.cpp
  framing; Anthropic ``message_start`` .. ``message_stop``) is assembled whole: text,
  finish reason, usage, the model the reply names, and ``first_token_ms``; the request
  says ``stream: true`` (OpenAI with ``include_usage``) and accepts an event stream;
  Sovereign providers stream unless told otherwise, others do not;
* a streamed call's connection goes back to the pool (the body's end is read after the
  terminator);
* no token within ``firstTokenTimeoutSeconds`` raises ``FirstTokenTimeoutError`` and the
  server sees the connection closed; a slow stream after its first token is not cut by
  it; a non-streamed call ignores it;
* a cut stream is never a Completion: a dropped connection, a clean end without the
  terminator, an error event (vLLM's error chunk then ``[DONE]``, Anthropic's
  ``overloaded_error``), a context-full ``length``/``max_tokens`` stop, a stall after the
  first token, malformed JSON: ``IncompleteReplyError`` with the text that arrived;
  error events that no retry fixes keep their class (invalid request before any token,
  context overflow, auth); a ``length`` stop that used the caller's whole ``max_tokens``
  is an answer, as for whole replies; an echoed API key is redacted;
* tool calls both ways and both protocols: answers that are tool calls (streamed by
  index / ``input_json_delta``, and whole), conversations with tool calls and results
  accepted by the fake's API checks (consecutive Anthropic results in one user turn),
  malformed tool-call JSON an incomplete reply, never a crash;
* ``continue_from``: OpenAI appends the partial text and an instruction to continue,
  Anthropic prefills the assistant turn (without trailing whitespace, and the
  continuation without the leading whitespace it then repeats);
* properties: any split of a text into deltas, of tool-call arguments into fragments, or
  of the SSE bytes into network reads assembles to the same answer; an assembler fed any
  JSON events answers or raises a ``ProviderError``, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from itertools import pairwise
from typing import Any

import httpx
import pytest
from aiohttp import web
from httpx_sse import ServerSentEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainop.core import errors
from chainop.core.calls import CallContext, Completion
from chainop.core.models import Message, ProviderSpec, RequestSpec, ToolCall, ToolSpec
from chainop.providers import TRANSPORTS, ProviderClients
from chainop.providers import anthropic as anthropic_protocol
from chainop.providers import openai as openai_protocol
from chainop.providers.http import Wire
from chainop.testing.fake_backend import FakeBackend

PROTOCOLS = ("openai", "anthropic")
CANARY_KEY = "sk-canary-5e1d-never-show-me"
TEXT = "the quick brown fox"
ANSWER = f"[s] echo: {TEXT}"
GUARD = 30.0  # seconds: a hang guard for waits on the server side, never a timing assert

#: The machine is shared with other suites: no wall-clock health checks or deadlines.
relaxed = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    async with FakeBackend(name="s") as fake:
        yield fake


@pytest.fixture(params=TRANSPORTS)
async def clients(request: pytest.FixtureRequest) -> AsyncIterator[ProviderClients]:
    async with ProviderClients(transport=request.param) as provider_clients:
        yield provider_clients


def provider_at(url: str, protocol: str = "openai", **extra: Any) -> ProviderSpec:
    """A streaming provider at ``url`` (``/v1`` appended for OpenAI, as users write it)."""
    return ProviderSpec.model_validate(
        {
            "name": f"{protocol}-s",
            "type": protocol,
            "endpoint": url + "/v1" if protocol == "openai" else url,
            "model": "m1",
            "timeoutSeconds": 5,
            "stream": True,
            **extra,
        }
    )


def make_request(text: str = TEXT, **fields: Any) -> RequestSpec:
    fields.setdefault("max_tokens", 64)
    return RequestSpec(messages=[Message(content=text)], **fields)


async def call(
    clients: ProviderClients,
    provider: ProviderSpec,
    request: RequestSpec | None = None,
    **context: Any,
) -> Completion:
    context.setdefault("timeout", 5.0)
    return await clients(provider, request or make_request(), CallContext(**context))


def sent(backend: FakeBackend, protocol: str) -> dict[str, Any]:
    last: dict[str, Any] = backend.stats["last_request"][protocol]
    return last


async def wait_for(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds (the server notices a closed socket a little later)."""
    async with asyncio.timeout(GUARD):
        while not condition():  # noqa: ASYNC110 - the fake's counters have no event
            await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- tiny servers

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(handler: Handler) -> tuple[web.AppRunner, str]:
    """An aiohttp server on a free port answering every POST with ``handler``."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE event: ``event:`` if named, ``data:`` JSON (or text as it is)."""
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def scripted(frames: Sequence[bytes], seen: list[dict[str, Any]] | None = None) -> Handler:
    """A handler that records the request body and streams ``frames``, then ends."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if seen is not None:
            seen.append(await request.json())
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
        return response

    return handler


@pytest.fixture
async def tiny() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start tiny servers on demand; all are stopped after the test."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        runner, url = await serve(handler)
        runners.append(runner)
        return url

    yield start
    for runner in runners:
        await runner.cleanup()


def chunk(delta: dict[str, Any], finish: str | None = None, **top: Any) -> bytes:
    return sse(
        {
            "object": "chat.completion.chunk",
            "model": "m1",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **top,
        }
    )


DONE = b"data: [DONE]\n\n"


# --------------------------------------------------------------------------- healthy streams


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_streamed_answer_is_assembled_whole(
    clients: ProviderClients, backend: FakeBackend, protocol: str
) -> None:
    completion = await call(clients, provider_at(backend.url, protocol))
    assert completion.text == ANSWER
    assert completion.finish_reason == "stop"
    assert completion.input_tokens > 0
    assert completion.output_tokens > 0
    assert completion.model == "m1"
    assert completion.tool_calls == ()
    assert isinstance(completion.first_token_ms, int)
    assert completion.first_token_ms >= 0
    request = sent(backend, protocol)
    assert request["json"]["stream"] is True
    if protocol == "openai":
        assert request["json"]["stream_options"] == {"include_usage": True}


async def test_llama_cpp_framing_is_assembled_too(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    backend.configure(stream_style="llama.cpp")
    for protocol in PROTOCOLS:
        completion = await call(clients, provider_at(backend.url, protocol))
        assert completion.text == ANSWER
        assert completion.finish_reason == "stop"
        assert completion.first_token_ms is not None


async def test_streamed_calls_reuse_their_connection(
    clients: ProviderClients, tiny: Callable[[Handler], Awaitable[str]]
) -> None:
    """Reading stops at [DONE], yet the end of the body is read too: a connection closed
    before it cannot go back to the pool (a TLS handshake per call to a cloud API)."""
    peers: list[int] = []
    frames = [chunk({"content": "hi"}, "stop"), DONE]
    stream = scripted(frames)

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername")[1])
        return await stream(request)

    provider = provider_at(await tiny(handler))
    for _ in range(3):
        assert (await call(clients, provider)).text == "hi"
    assert len(peers) == 3
    assert len(set(peers)) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_sovereign_providers_stream_by_default_and_others_do_not(
    clients: ProviderClients, backend: FakeBackend, protocol: str
) -> None:
    sovereign = provider_at(backend.url, protocol, stream=None, privacyTier="Sovereign")
    standard = provider_at(backend.url, protocol, stream=None, privacyTier="Standard")
    streamed = await call(clients, sovereign)
    assert sent(backend, protocol)["json"]["stream"] is True
    assert streamed.first_token_ms is not None
    whole = await call(clients, standard)
    assert "stream" not in sent(backend, protocol)["json"]
    assert whole.first_token_ms is None
    assert whole.text == streamed.text == ANSWER


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_model_the_reply_names_is_reported(
    clients: ProviderClients, backend: FakeBackend, protocol: str
) -> None:
    backend.configure(answer_model="other-model")
    for stream in (True, False):
        completion = await call(clients, provider_at(backend.url, protocol, stream=stream))
        assert completion.model == "other-model"


async def test_a_server_that_ignores_stream_is_read_as_a_whole_reply(
    clients: ProviderClients, tiny: Callable[[Handler], Awaitable[str]]
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"model": "m1", "choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}]}
        )

    completion = await call(clients, provider_at(await tiny(handler)))
    assert completion.text == "whole"
    assert completion.first_token_ms is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_http_error_to_a_streamed_call_is_classified_as_before(
    clients: ProviderClients, backend: FakeBackend, protocol: str
) -> None:
    backend.set_mode("rate_limit", retry_after=7)
    with pytest.raises(errors.RateLimitedError) as caught:
        await call(clients, provider_at(backend.url, protocol))
    assert caught.value.retry_after == 7


# --------------------------------------------------------------------------- first token


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_no_first_token_in_time_abandons_the_call_and_closes_the_socket(
    clients: ProviderClients, backend: FakeBackend, protocol: str
) -> None:
    backend.set_mode("stall_first_token")
    provider = provider_at(backend.url, protocol, firstTokenTimeoutSeconds=0.2)
    with pytest.raises(errors.FirstTokenTimeoutError) as caught:
        await call(clients, provider, timeout=GUARD)
    assert caught.value.message == "no first token within 0.2s"
    assert caught.value.penalizes
    await wait_for(lambda: backend.stats["cancelled"].get(protocol, 0) == 1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_cancelled_stream_closes_its_connection(
    clients: ProviderClients, backend: FakeBackend, protocol: str
) -> None:
    """What a hedge relies on: the losing call, cancelled mid-stream, frees the server."""
    backend.configure(stream_chunk_ms=60_000)  # the first token, then nothing
    task = asyncio.create_task(call(clients, provider_at(backend.url, protocol), timeout=GUARD))
    await wait_for(lambda: backend.stats["requests"].get(protocol, 0) == 1)
    await asyncio.sleep(0.05)  # let the first token arrive; the test holds either way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: backend.stats["cancelled"].get(protocol, 0) == 1)


async def test_keep_alives_and_empty_deltas_are_not_a_first_token(
    clients: ProviderClients, tiny: Callable[[Handler], Awaitable[str]]
) -> None:
    """A live stream that only says it is alive (role chunk, comments) is still a hung
    engine; the server sees the connection closed."""
    closed = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk({"role": "assistant", "content": ""}))
        try:
            while True:
                await response.write(b": keep-alive\n\n")
                await asyncio.sleep(0.02)
        except (ConnectionResetError, asyncio.CancelledError):
            closed.set()
            raise

    provider = provider_at(await tiny(handler), firstTokenTimeoutSeconds=0.2)
    with pytest.raises(errors.FirstTokenTimeoutError):
        await call(clients, provider, timeout=GUARD)
    async with asyncio.timeout(GUARD):
        await closed.wait()


async def test_a_slow_stream_after_its_first_token_is_not_cut_by_the_first_token_limit(
    clients: ProviderClients, tiny: Callable[[Handler], Awaitable[str]]
) -> None:
    """The first token at once, then a pause twice the first-token limit: the limit no
    longer applies once a token came (the deadline is dropped in ``Wire.stream``, the
    same for every protocol)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk({"content": "first"}))
        await asyncio.sleep(1.0)
        await response.write(chunk({"content": " then the rest"}, "stop") + DONE)
        await response.write_eof()
        return response

    provider = provider_at(await tiny(handler), firstTokenTimeoutSeconds=0.5)
    completion = await call(clients, provider, timeout=GUARD)
    assert completion.text == "first then the rest"


async def test_a_non_streamed_call_ignores_the_first_token_limit(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    backend.set_mode("slow", delay_ms=300)
    provider = provider_at(backend.url, stream=False, firstTokenTimeoutSeconds=0.05)
    assert (await call(clients, provider)).text == ANSWER


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_stall_after_the_first_token_is_a_cut_stream(
    clients: ProviderClients, backend: FakeBackend, protocol: str
) -> None:
    backend.configure(stream_chunk_ms=60_000)
    provider = provider_at(backend.url, protocol, timeoutSeconds=1.0)
    with pytest.raises(errors.IncompleteReplyError) as caught:
        await call(clients, provider, timeout=GUARD)
    assert "stalled" in caught.value.message
    assert caught.value.partial_text
    assert ANSWER.startswith(caught.value.partial_text)


# --------------------------------------------------------------------------- cut streams


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("mode", ["cut", "error_event", "length_stop"])
async def test_a_cut_stream_is_incomplete_with_the_text_that_arrived(
    clients: ProviderClients, backend: FakeBackend, protocol: str, mode: str
) -> None:
    backend.set_mode(mode, after_chunks=2)
    with pytest.raises(errors.IncompleteReplyError) as caught:
        await call(clients, provider_at(backend.url, protocol))
    partial = caught.value.partial_text
    assert partial
    assert partial != ANSWER
    assert ANSWER.startswith(partial)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_clean_end_without_the_terminator_is_cut(
    clients: ProviderClients, tiny: Callable[[Handler], Awaitable[str]], protocol: str
) -> None:
    if protocol == "openai":
        frames = [chunk({"content": "half an"}), chunk({"content": " answer"}, "stop")]
    else:
        frames = [
            sse({"type": "message_start", "message": {"model": "m1"}}, "message_start"),
            sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
            sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "half an answer"},
                }
            ),
            sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        ]
    url = await tiny(scripted(frames))
    with pytest.raises(errors.IncompleteReplyError) as caught:
        await call(clients, provider_at(url, protocol))
    assert "without" in caught.value.message
    assert caught.value.partial_text == "half an answer"


VLLM_BAD_REQUEST = {
    "error": {
        "message": "'NoneType' object has no attribute 'shape'",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
}
VLLM_CONTEXT = {
    "error": {
        "message": "This model's maximum context length is 4096 tokens. However, you "
        "requested 5000 tokens (4000 in the messages, 1000 in the completion).",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
}
ANTHROPIC_INVALID = {
    "type": "error",
    "error": {"type": "invalid_request_error", "message": "messages: roles must alternate"},
}
ANTHROPIC_AUTH = {
    "type": "error",
    "error": {"type": "authentication_error", "message": "invalid x-api-key"},
}


@pytest.mark.parametrize(
    ("protocol", "body", "after_chunks", "expected"),
    [
        # vLLM labels every exception of a stream BadRequestError/400: after tokens, an
        # engine failure, not a request the server refused.
        ("openai", VLLM_BAD_REQUEST, 2, errors.IncompleteReplyError),
        ("openai", VLLM_CONTEXT, 0, errors.UnsupportedRequestError),
        ("anthropic", ANTHROPIC_INVALID, 0, errors.PermanentError),
        ("anthropic", ANTHROPIC_AUTH, 0, errors.AuthError),
    ],
)
async def test_error_events_are_classified_by_what_they_say(
    clients: ProviderClients,
    backend: FakeBackend,
    protocol: str,
    body: dict[str, Any],
    after_chunks: int,
    expected: type[errors.ProviderError],
) -> None:
    backend.set_mode("error_event", body=body, after_chunks=after_chunks)
    with pytest.raises(errors.ProviderError) as caught:
        await call(clients, provider_at(backend.url, protocol))
    assert type(caught.value) is expected
    assert "error event in the stream" in caught.value.message


async def test_an_api_key_echoed_in_an_error_event_is_redacted(
    clients: ProviderClients, tiny: Callable[[Handler], Awaitable[str]]
) -> None:
    error = {"error": {"message": f"engine died serving key {CANARY_KEY}", "code": 500}}
    url = await tiny(scripted([chunk({"content": "so far"}), sse(error), DONE]))
    with pytest.raises(errors.IncompleteReplyError) as caught:
        await call(clients, provider_at(url), api_key=CANARY_KEY)
    assert CANARY_KEY not in str(caught.value)
    assert "[REDACTED]" in caught.value.message
    assert caught.value.partial_text == "so far"


async def test_malformed_json_in_a_stream_is_cut(
    clients: ProviderClients, tiny: Callable[[Handler], Awaitable[str]]
) -> None:
    url = await tiny(scripted([chunk({"content": "so far"}), b"data: {not json\n\n", DONE]))
    with pytest.raises(errors.IncompleteReplyError) as caught:
        await call(clients, provider_at(url))
    assert caught.value.partial_text == "so far"


async def test_an_endless_line_is_cut_at_the_reply_limit(
    tiny: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: ")
        for _ in range(1000):
            await response.write(b"x" * 65536)
        await response.write_eof()
        return response

    url = await tiny(handler)
    async with ProviderClients(max_reply_bytes=1024 * 1024) as clients:
        with pytest.raises(errors.IncompleteReplyError) as caught:
            await call(clients, provider_at(url), timeout=GUARD)
    assert "larger than" in caught.value.message


async def test_endless_data_lines_without_an_event_end_are_cut(
    tiny: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(100_000):
            await response.write(b"data: " + b"x" * 64 + b"\n")
        await response.write_eof()
        return response

    url = await tiny(handler)
    async with ProviderClients(max_reply_bytes=256 * 1024) as clients:
        with pytest.raises(errors.IncompleteReplyError) as caught:
            await call(clients, provider_at(url), timeout=GUARD)
    assert "an event larger than" in caught.value.message


@pytest.mark.parametrize("answer_kib", [16, 96])
async def test_a_stream_is_bounded_by_its_answer_not_by_its_framing(
    tiny: Callable[[Handler], Awaitable[str]], answer_kib: int
) -> None:
    """A long answer streams many times its size in framing: with a 64 KiB limit, a
    16 KiB answer in 8-byte deltas (some 100 KiB on the wire) is whole, a 96 KiB one
    is too large."""
    deltas = ["abcdefg "] * (answer_kib * 128)
    frames = [chunk({"content": delta}) for delta in deltas]
    url = await tiny(scripted([*frames, chunk({}, "stop"), DONE]))
    async with ProviderClients(max_reply_bytes=64 * 1024) as clients:
        if answer_kib * 1024 < 64 * 1024:
            completion = await call(clients, provider_at(url), timeout=GUARD)
            assert completion.text == "".join(deltas)
            assert sum(map(len, frames)) > 64 * 1024
        else:
            with pytest.raises(errors.IncompleteReplyError) as caught:
                await call(clients, provider_at(url), timeout=GUARD)
            assert "answer larger than" in caught.value.message
            assert len(caught.value.partial_text) > 64 * 1024 - 8


# --------------------------------------------------------------------------- tool calls

TOOLS = [ToolSpec(name="lookup", description="Look up", parameters={"type": "object"})]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("stream", [True, False])
async def test_an_answer_of_tool_calls_comes_back_as_tool_calls(
    clients: ProviderClients, backend: FakeBackend, protocol: str, stream: bool
) -> None:
    backend.configure(
        tool_calls=[
            {"name": "lookup", "arguments": {"q": "weather", "days": [1, 2]}},
            {"name": "lookup", "arguments": {"q": "tide"}, "id": "call-given"},
        ]
    )
    provider = provider_at(backend.url, protocol, stream=stream)
    completion = await call(clients, provider, make_request(tools=TOOLS))
    assert completion.text == ""
    assert completion.finish_reason == "tool_calls"
    assert [call.name for call in completion.tool_calls] == ["lookup", "lookup"]
    assert [json.loads(call.arguments) for call in completion.tool_calls] == [
        {"q": "weather", "days": [1, 2]},
        {"q": "tide"},
    ]
    assert completion.tool_calls[1].id == "call-given"
    assert completion.tool_calls[0].id


CONVERSATION = [
    Message(role="user", content="what is the weather and the tide?"),
    Message(
        role="assistant",
        content="Let me look.",
        tool_calls=[
            ToolCall(id="call_1", name="lookup", arguments='{"q": "weather"}'),
            ToolCall(id="call_2", name="lookup", arguments='{"q": "tide"}'),
        ],
    ),
    Message(role="tool", tool_call_id="call_1", content="sunny"),
    Message(role="tool", tool_call_id="call_2", content="low at noon"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("stream", [True, False])
async def test_a_conversation_with_tool_calls_and_results_is_accepted_as_the_api_checks_it(
    clients: ProviderClients, backend: FakeBackend, protocol: str, stream: bool
) -> None:
    request = RequestSpec(messages=CONVERSATION, tools=TOOLS, max_tokens=64)
    completion = await call(clients, provider_at(backend.url, protocol, stream=stream), request)
    assert "tool_result call_2: low at noon" in completion.text
    tools = sent(backend, protocol)["tools"]
    assert tools["offered"] == ["lookup"]
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in tools["calls"]] == [
        ("call_1", "lookup", {"q": "weather"}),
        ("call_2", "lookup", {"q": "tide"}),
    ]
    assert tools["results"] == [
        {"id": "call_1", "content": "sunny"},
        {"id": "call_2", "content": "low at noon"},
    ]


def test_openai_request_carries_tool_calls_and_tool_messages() -> None:
    provider = provider_at("http://x.example")
    body = openai_protocol.build_body(provider, RequestSpec(messages=CONVERSATION, tools=TOOLS))
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "weather"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "tide"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "low at noon"},
    ]


def test_anthropic_request_merges_consecutive_tool_results_into_one_user_turn() -> None:
    provider = provider_at("http://x.example", "anthropic")
    messages = [*CONVERSATION, Message(role="user", content="and tomorrow?")]
    body = anthropic_protocol.build_body(provider, RequestSpec(messages=messages, tools=TOOLS))
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "weather"}},
                {"type": "tool_use", "id": "call_2", "name": "lookup", "input": {"q": "tide"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "low at noon"},
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ]
    assert body["tools"] == [
        {"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}
    ]


def openai_tool_frames(arguments: str) -> list[bytes]:
    start = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "lookup"}}
    return [
        chunk({"tool_calls": [{**start, "function": {"name": "lookup", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
        chunk({}, "tool_calls"),
        DONE,
    ]


def anthropic_tool_frames(partial_json: str) -> list[bytes]:
    block = {"type": "tool_use", "id": "toolu_a", "name": "lookup", "input": {}}
    delta = {"type": "input_json_delta", "partial_json": partial_json}
    return [
        sse({"type": "message_start", "message": {"model": "m1"}}, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": block}),
        sse({"type": "content_block_delta", "index": 0, "delta": delta}),
        sse({"type": "content_block_stop", "index": 0}),
        sse({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
        sse({"type": "message_stop"}),
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("arguments", ['{"q": "wea', "[1, 2]", '"text"'])
async def test_malformed_tool_call_json_is_an_incomplete_reply(
    clients: ProviderClients,
    tiny: Callable[[Handler], Awaitable[str]],
    protocol: str,
    arguments: str,
) -> None:
    frames = (
        openai_tool_frames(arguments) if protocol == "openai" else anthropic_tool_frames(arguments)
    )
    url = await tiny(scripted(frames))
    with pytest.raises(errors.IncompleteReplyError) as caught:
        await call(clients, provider_at(url, protocol), make_request(tools=TOOLS))
    assert "lookup" in caught.value.message


def test_streamed_tool_calls_that_reuse_an_index_with_a_new_id_stay_apart() -> None:
    def delta(call_id: str | None, name: str | None, arguments: str) -> ServerSentEvent:
        item: dict[str, Any] = {"index": 0, "function": {"arguments": arguments}}
        if call_id:
            item["id"] = call_id
            item["function"]["name"] = name
        return ServerSentEvent(data=json.dumps(_chunk({"tool_calls": [item]})))

    events = [
        delta("call_a", "lookup", '{"q": '),
        delta(None, None, '"a"}'),
        delta("call_b", "fetch", '{"url": "b"}'),
        delta("call_b", None, ""),  # an id repeated on a fragment is the same call
        ServerSentEvent(data=json.dumps(_chunk({}, "tool_calls"))),
        ServerSentEvent(data="[DONE]"),
    ]
    completion = assemble(openai_protocol.ChunkAssembler(model="m1", max_tokens=64), events)
    assert [(c.id, c.name, json.loads(c.arguments)) for c in completion.tool_calls] == [
        ("call_a", "lookup", {"q": "a"}),
        ("call_b", "fetch", {"url": "b"}),
    ]


def test_malformed_whole_tool_calls_are_incomplete() -> None:
    bad_openai = {
        "choices": [
            {
                "message": {
                    "content": None,
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{x"}}],
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    with pytest.raises(errors.IncompleteReplyError):
        openai_protocol.parse_reply(bad_openai)
    bad_anthropic = {"content": [{"type": "tool_use", "id": "t", "name": "f", "input": [1]}]}
    with pytest.raises(errors.IncompleteReplyError):
        anthropic_protocol.parse_reply(bad_anthropic)


# --------------------------------------------------------------------------- continue_from


async def test_openai_continuation_appends_the_partial_text_and_asks_to_go_on(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    completion = await call(clients, provider_at(backend.url), continue_from="Once upon a")
    messages = sent(backend, "openai")["json"]["messages"]
    assert messages[-2] == {"role": "assistant", "content": "Once upon a"}
    assert messages[-1]["role"] == "user"
    assert "without repeating" in messages[-1]["content"]
    assert messages[:-2] == [{"role": "user", "content": TEXT}]
    assert completion.text  # only the continuation: the caller stitches


async def test_anthropic_continuation_prefills_the_assistant_turn(
    clients: ProviderClients, tiny: Callable[[Handler], Awaitable[str]]
) -> None:
    seen: list[dict[str, Any]] = []
    frames = [
        sse({"type": "message_start", "message": {"model": "m1"}}, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
        sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": " time there was"},
            }
        ),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        sse({"type": "message_stop"}),
    ]
    url = await tiny(scripted(frames, seen))
    completion = await call(clients, provider_at(url, "anthropic"), continue_from="Once upon a ")
    assert seen[0]["messages"] == [
        {"role": "user", "content": TEXT},
        {"role": "assistant", "content": "Once upon a"},  # the API refuses trailing spaces
    ]
    assert "Once upon a " + completion.text == "Once upon a time there was"


# --------------------------------------------------------------------------- assemblers


def openai_events(deltas: Sequence[str], **usage: int) -> list[ServerSentEvent]:
    events = [ServerSentEvent(data=json.dumps(_chunk({"role": "assistant", "content": ""})))]
    events += [ServerSentEvent(data=json.dumps(_chunk({"content": d}))) for d in deltas]
    events.append(ServerSentEvent(data=json.dumps(_chunk({}, "stop"))))
    if usage:
        events.append(ServerSentEvent(data=json.dumps({"choices": [], "usage": usage})))
    events.append(ServerSentEvent(data="[DONE]"))
    return events


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"model": "m1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def anthropic_events(
    deltas: Sequence[str], stop: str = "end_turn", output: int = 5
) -> list[ServerSentEvent]:
    def event(name: str, **data: Any) -> ServerSentEvent:
        return ServerSentEvent(event=name, data=json.dumps({"type": name, **data}))

    return [
        event("message_start", message={"model": "m1", "usage": {"input_tokens": 3}}),
        event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        event("ping"),
        *(
            event("content_block_delta", index=0, delta={"type": "text_delta", "text": d})
            for d in deltas
        ),
        event("content_block_stop", index=0),
        event("message_delta", delta={"stop_reason": stop}, usage={"output_tokens": output}),
        event("message_stop"),
    ]


def assemble(assembler: Any, events: Sequence[ServerSentEvent]) -> Completion:
    for event in events:
        if assembler.feed(event):
            break
    result: Completion = assembler.finish(first_token_ms=1)
    return result


def splits(text: str) -> st.SearchStrategy[list[str]]:
    """Every way of cutting ``text`` into consecutive pieces."""
    return st.sets(st.integers(1, max(len(text) - 1, 1)), max_size=len(text)).map(
        lambda cuts: [text[a:b] for a, b in pairwise([0, *sorted(cuts), len(text)])]
    )


@relaxed
@given(data=st.data(), text=st.text(min_size=1, max_size=60))
def test_any_split_of_a_text_into_deltas_assembles_to_the_text(data: Any, text: str) -> None:
    pieces = [p for p in data.draw(splits(text)) if p]
    openai = openai_protocol.ChunkAssembler(model="m1", max_tokens=64)
    assert assemble(openai, openai_events(pieces)).text == text
    anthropic = anthropic_protocol.EventAssembler(model="m1", max_tokens=64)
    assert assemble(anthropic, anthropic_events(pieces)).text == text


ARGUMENTS = st.dictionaries(
    st.text(max_size=5), st.integers() | st.text(max_size=5) | st.booleans(), max_size=4
)


@relaxed
@given(data=st.data(), arguments=ARGUMENTS)
def test_any_split_of_tool_call_arguments_assembles_to_the_arguments(
    data: Any, arguments: dict[str, Any]
) -> None:
    text = json.dumps(arguments)
    pieces = data.draw(splits(text))
    openai = openai_protocol.ChunkAssembler(model="m1", max_tokens=64)
    first = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f"}}
    events = [ServerSentEvent(data=json.dumps(_chunk({"tool_calls": [first]})))]
    events += [
        ServerSentEvent(
            data=json.dumps(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}))
        )
        for p in pieces
    ]
    events += [
        ServerSentEvent(data=json.dumps(_chunk({}, "tool_calls"))),
        ServerSentEvent(data="[DONE]"),
    ]
    completion = assemble(openai, events)
    assert json.loads(completion.tool_calls[0].arguments) == arguments
    assert completion.finish_reason == "tool_calls"

    anthropic = anthropic_protocol.EventAssembler(model="m1", max_tokens=64)
    block = {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
    events = [
        ServerSentEvent(
            data=json.dumps({"type": "content_block_start", "index": 0, "content_block": block})
        )
    ]
    events += [
        ServerSentEvent(
            data=json.dumps(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": p},
                }
            )
        )
        for p in pieces
    ]
    events += [
        ServerSentEvent(
            data=json.dumps({"type": "message_delta", "delta": {"stop_reason": "tool_use"}})
        ),
        ServerSentEvent(data=json.dumps({"type": "message_stop"})),
    ]
    completion = assemble(anthropic, events)
    assert json.loads(completion.tool_calls[0].arguments) == arguments
    assert completion.finish_reason == "tool_calls"


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._chunks:
            yield piece


@relaxed
@given(data=st.data(), crlf=st.booleans())
async def test_any_split_of_the_bytes_into_reads_assembles_the_same_answer(
    data: Any, crlf: bool
) -> None:
    body = b"".join(
        [
            chunk({"role": "assistant", "content": ""}),
            b": keep-alive\n\n",
            chunk({"content": "héllo"}),
            chunk({"content": " wörld"}, "stop"),
            sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
            DONE,
        ]
    )
    if crlf:
        body = body.replace(b"\n", b"\r\n")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(body) - 1), max_size=40)))
    reads = [body[a:b] for a, b in pairwise([0, *cuts, len(body)])]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=_Chunks(reads)
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        completion = await Wire(client).stream(
            "POST",
            "http://x.example/v1/chat/completions",
            timeout=5.0,
            first_token_timeout=None,
            assembler=openai_protocol.ChunkAssembler(model="m1", max_tokens=64),
        )
    assert isinstance(completion, Completion)
    assert completion.text == "héllo wörld"
    assert (completion.input_tokens, completion.output_tokens) == (3, 2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_answer_of_token_sized_deltas_costs_its_characters_not_an_object_each(
    protocol: str,
) -> None:
    """200,000 two-character deltas (400 kB of text and tool-call arguments): kept as a
    list of strings they would cost ~12 MB, in an ``io.StringIO`` ~6 MB at its peak; the
    assemblers stay within 2 MB."""
    count = 200_000
    if protocol == "openai":
        assembler: Any = openai_protocol.ChunkAssembler(model="m1", max_tokens=10**6)
        text = ServerSentEvent(data=json.dumps(_chunk({"content": "ab"})))
        first = {"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"k": "'}}
        args = ServerSentEvent(
            data=json.dumps(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "ab"}}]}))
        )
        start = ServerSentEvent(data=json.dumps(_chunk({"tool_calls": [first]})))
    else:
        assembler = anthropic_protocol.EventAssembler(model="m1", max_tokens=10**6)
        assembler.feed(anthropic_events([])[1])  # the text block opens
        text = ServerSentEvent(
            data=json.dumps(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "ab"},
                }
            )
        )
        block = {"type": "tool_use", "id": "t", "name": "f", "input": {}}
        start = ServerSentEvent(
            data=json.dumps({"type": "content_block_start", "index": 1, "content_block": block})
        )
        args = ServerSentEvent(
            data=json.dumps(
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": "ab"},
                }
            )
        )
    tracemalloc.start()
    try:
        for _ in range(count // 2):
            assembler.feed(text)
        assembler.feed(start)
        for _ in range(count // 2):
            assembler.feed(args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert assembler.size >= 2 * count
    assert peak < 2_000_000


def test_a_length_stop_that_used_the_whole_max_tokens_is_an_answer() -> None:
    """Today's rule for whole replies: the caller's own limit reached is an answer."""
    openai = openai_protocol.ChunkAssembler(model="m1", max_tokens=5)
    events = openai_events(["five tokens of text"], prompt_tokens=3, completion_tokens=5)
    events[-3] = ServerSentEvent(data=json.dumps(_chunk({}, "length")))
    assert assemble(openai, events).finish_reason == "length"
    anthropic = anthropic_protocol.EventAssembler(model="m1", max_tokens=5)
    completion = assemble(anthropic, anthropic_events(["five"], stop="max_tokens", output=5))
    assert completion.finish_reason == "length"


def test_a_length_stop_short_of_max_tokens_is_cut_with_its_text() -> None:
    anthropic = anthropic_protocol.EventAssembler(model="m1", max_tokens=64)
    with pytest.raises(errors.IncompleteReplyError) as caught:
        assemble(anthropic, anthropic_events(["half"], stop="max_tokens", output=2))
    assert caught.value.partial_text == "half"


def test_finish_reason_error_is_never_an_answer() -> None:
    openai = openai_protocol.ChunkAssembler(model="m1", max_tokens=64)
    events = openai_events(["upstream broke"])
    events[-2] = ServerSentEvent(data=json.dumps(_chunk({}, "error")))
    with pytest.raises(errors.IncompleteReplyError) as caught:
        assemble(openai, events)
    assert caught.value.partial_text == "upstream broke"
    whole = {"choices": [{"message": {"content": "upstream broke"}, "finish_reason": "error"}]}
    with pytest.raises(errors.IncompleteReplyError):
        openai_protocol.parse_reply(whole)


def test_a_streamed_refusal_is_a_content_policy_error() -> None:
    openai = openai_protocol.ChunkAssembler(model="m1", max_tokens=64)
    events = [
        ServerSentEvent(data=json.dumps(_chunk({"refusal": "I can't help with that."}))),
        ServerSentEvent(data=json.dumps(_chunk({}, "stop"))),
        ServerSentEvent(data="[DONE]"),
    ]
    with pytest.raises(errors.ContentPolicyError):
        assemble(openai, events)


@pytest.mark.parametrize(
    ("error", "after_tokens", "expected"),
    [
        ({"type": "overloaded_error", "message": "Overloaded"}, False, errors.IncompleteReplyError),
        ({"type": "rate_limit_error", "message": "slow down"}, False, errors.RateLimitedError),
        ({"type": "rate_limit_error", "message": "slow down"}, True, errors.IncompleteReplyError),
        ({"type": "invalid_request_error", "message": "bad"}, False, errors.PermanentError),
        ({"type": "invalid_request_error", "message": "bad"}, True, errors.IncompleteReplyError),
        (
            {"type": "api_error", "message": "Internal server error"},
            True,
            errors.IncompleteReplyError,
        ),
        ({"message": "no type at all"}, True, errors.IncompleteReplyError),
        ("a bare string", False, errors.IncompleteReplyError),
    ],
)
def test_error_event_classification(
    error: Any, after_tokens: bool, expected: type[errors.ProviderError]
) -> None:
    anthropic = anthropic_protocol.EventAssembler(model="m1", max_tokens=64)
    events = anthropic_events(["some text"])[:4] if after_tokens else anthropic_events([])[:1]
    events.append(
        ServerSentEvent(event="error", data=json.dumps({"type": "error", "error": error}))
    )
    with pytest.raises(errors.ProviderError) as caught:
        assemble(anthropic, events)
    assert type(caught.value) is expected
    if isinstance(caught.value, errors.IncompleteReplyError):
        assert caught.value.partial_text == ("some text" if after_tokens else "")


EVENT_NAMES = st.sampled_from(
    [
        "message",
        "error",
        "ping",
        "message_start",
        "content_block_start",
        "content_block_delta",
        "message_delta",
        "message_stop",
    ]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "choices",
                    "delta",
                    "content",
                    "tool_calls",
                    "index",
                    "function",
                    "arguments",
                    "name",
                    "id",
                    "error",
                    "usage",
                    "finish_reason",
                    "message",
                    "content_block",
                    "partial_json",
                    "text",
                    "stop_reason",
                    "model",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=16,
)


@relaxed
@given(
    events=st.lists(
        st.tuples(EVENT_NAMES, JSON.map(json.dumps) | st.sampled_from(["[DONE]", "", "{"])),
        max_size=8,
    )
)
def test_assemblers_answer_or_raise_a_provider_error_for_any_events(
    events: list[tuple[str, str]],
) -> None:
    for assembler in (
        openai_protocol.ChunkAssembler(model="m1", max_tokens=64),
        anthropic_protocol.EventAssembler(model="m1", max_tokens=64),
    ):
        try:
            completion = assemble(
                assembler, [ServerSentEvent(event=name, data=data) for name, data in events]
            )
        except errors.ProviderError:
            continue
        assert completion.text or completion.tool_calls
