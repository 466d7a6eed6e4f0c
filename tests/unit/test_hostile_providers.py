"""We test these aspects: providers that attack the client, over real sockets.

Each hostile server is a tiny asyncio TCP server written here (raw bytes, so it can do
what no well-behaved framework would): a non-JSON 200, a 100 MB body (declared and
chunked), a body that never ends, headers then silence, and a slowloris trickling one
byte per second. For each, on both transports:

* the call ends with a clear attempt error of a known class (``IncompleteReplyError`` or
  a timeout ``TransientError``) within the test's timeout;
* memory stays bounded: Python allocations (tracemalloc peak) and the process's peak
  RSS grow by less than 64 MB while a 100 MB reply is refused;
* through ``core.chain.execute``, the chain fails over to a healthy second provider and
  the task gets that provider's answer, with the hostile one's attempt recorded;
* a server that announces keep-alive and then drops a reused connection as the next
  request arrives (llama-server's close after a stream, any server's idle timeout): every
  call still succeeds, the request going once more on another connection; a server that
  drops every request fails the call after two tries, with "no answer".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chainop.core import chain as executor
from chainop.core.calls import CallContext
from chainop.core.chain import HealthBoard
from chainop.core.errors import IncompleteReplyError, ProviderError, TransientError
from chainop.core.models import AttemptOutcome, ProviderChainSpec, ProviderSpec, RequestSpec
from chainop.providers.http import TRANSPORTS
from chainop.providers.registry import ProviderClients
from chainop.testing.fake_backend import FakeBackend

MIB = 1024 * 1024
MEMORY_BOUND = 64 * MIB
PROVIDER_TIMEOUT = 3.0  # seconds: what cuts silence and slowloris
GUARD = 60.0  # a hang guard far above it (never a timing assertion)

Writer = Callable[[asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":", 1)[1]))


def _headers(extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}\r\n".encode()


async def non_json(writer: asyncio.StreamWriter) -> None:
    body = b"<html><body>Welcome to the captive portal</body></html>"
    writer.write(_headers(f"Content-Length: {len(body)}\r\n") + body)
    await writer.drain()


async def huge_declared(writer: asyncio.StreamWriter) -> None:
    """100 MB announced with Content-Length, and really sent."""
    writer.write(_headers(f"Content-Length: {100 * MIB}\r\n"))
    chunk = b"x" * MIB
    for _ in range(100):
        writer.write(chunk)
        await writer.drain()


async def huge_chunked(writer: asyncio.StreamWriter) -> None:
    """100 MB in chunked encoding: no length to refuse up front."""
    writer.write(_headers("Transfer-Encoding: chunked\r\n"))
    chunk = b"x" * MIB
    for _ in range(100):
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def never_ends(writer: asyncio.StreamWriter) -> None:
    """A chunked body that keeps coming, small chunks, forever."""
    writer.write(_headers("Transfer-Encoding: chunked\r\n") + b"1\r\n{\r\n")
    while True:
        writer.write(b"10\r\n" + b' "k": [1, 2, 3],' + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.01)


async def headers_then_silence(writer: asyncio.StreamWriter) -> None:
    writer.write(_headers("Content-Length: 100\r\n"))
    await writer.drain()
    await asyncio.sleep(3600)


async def slowloris(writer: asyncio.StreamWriter) -> None:
    """A valid reply, one byte per second: every read succeeds, the whole never arrives."""
    body = b'{"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}'
    writer.write(_headers(f"Content-Length: {len(body)}\r\n"))
    for byte in body:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(1)


HOSTILE: dict[str, tuple[Writer, type[ProviderError], str]] = {
    "non-json": (non_json, IncompleteReplyError, "malformed JSON"),
    "100MB-declared": (huge_declared, IncompleteReplyError, "larger than"),
    "100MB-chunked": (huge_chunked, IncompleteReplyError, "larger than"),
    "never-ends": (never_ends, TransientError, ""),
    "headers-then-silence": (headers_then_silence, TransientError, "timed out"),
    "slowloris": (slowloris, TransientError, "timed out"),
}


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handle: Handler) -> AsyncIterator[str]:
    """Run ``handle`` on each connection to a server on 127.0.0.1; yield the base URL
    (``…/v1``). A peer going away ends a handler quietly; the connection is closed after
    it, and whatever still runs at the end is cancelled."""
    handlers: set[asyncio.Task[Any]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@contextlib.asynccontextmanager
async def hostile_server(behaviour: Writer) -> AsyncIterator[str]:
    """Serve ``behaviour`` to every connection; yield the base URL (``…/v1``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await behaviour(writer)

    async with serving(handle) as url:
        yield url


def spec_of(name: str, endpoint: str) -> ProviderSpec:
    return ProviderSpec.model_validate(
        {
            "name": name,
            "type": "openai",
            "endpoint": endpoint,
            "model": "m",
            "timeoutSeconds": PROVIDER_TIMEOUT,
        }
    )


REQUEST = RequestSpec.model_validate({"messages": [{"role": "user", "content": "hello"}]})


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_hostile_reply_is_a_clear_error_in_bounded_memory(kind: str, transport: str) -> None:
    behaviour, error_class, words = HOSTILE[kind]
    async with hostile_server(behaviour) as url, ProviderClients(transport=transport) as clients:  # type: ignore[arg-type]
        rss_before = peak_rss_bytes()
        tracemalloc.start()
        try:
            with pytest.raises(ProviderError) as caught:
                await asyncio.wait_for(
                    clients(spec_of("hostile", url), REQUEST, CallContext(timeout=30)), GUARD
                )
            _, traced_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        rss_growth = peak_rss_bytes() - rss_before
    error = caught.value
    assert isinstance(error, error_class), (kind, type(error), error.message)
    assert words in error.message, error.message
    assert error.message
    assert len(error.message) < 500
    assert traced_peak < MEMORY_BOUND, f"{kind}: traced peak {traced_peak / MIB:.1f} MiB"
    assert rss_growth < MEMORY_BOUND, f"{kind}: RSS grew {rss_growth / MIB:.1f} MiB"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_chain_fails_over_from_a_hostile_provider(kind: str) -> None:
    behaviour, _, _ = HOSTILE[kind]
    async with (
        hostile_server(behaviour) as url,
        FakeBackend("good") as good,
        ProviderClients() as clients,
    ):
        chain = ProviderChainSpec.model_validate(
            {
                "providers": [
                    spec_of("hostile", url).model_dump(by_alias=True, exclude_none=True),
                    spec_of("good", f"{good.url}/v1").model_dump(by_alias=True, exclude_none=True),
                ],
                "health": {"failureThreshold": 1, "transientRetries": 0},
            }
        )
        loop = asyncio.get_running_loop()
        result = await asyncio.wait_for(
            executor.execute(
                chain=chain,
                eligible=["hostile", "good"],
                request=REQUEST,
                call=clients,
                board=HealthBoard(chain),
                now=loop.time,
                timeout_seconds=60,
                task_key="uid",
            ),
            GUARD,
        )
    assert result.succeeded, result.failure_message
    assert result.provider == "good"
    assert "[good]" in result.completion.text  # type: ignore[union-attr]
    first = result.attempts[0]
    assert first.provider == "hostile"
    assert first.outcome in (AttemptOutcome.TRANSIENT, AttemptOutcome.INCOMPLETE), first
    assert first.error


# ------------------------------------------------ keep-alive connections dropped on reuse

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()


@contextlib.asynccontextmanager
async def dropping_server(answers_per_connection: int) -> AsyncIterator[tuple[str, list[str]]]:
    """Announce keep-alive, answer ``answers_per_connection`` requests on a connection,
    then read the next one and close without a byte of answer: the race every keep-alive
    server has with its clients (its idle timeout firing as a request arrives), and
    llama-server's close after each stream when the close is still on its way. Yields the
    base URL and a log of what each request met ("answered" or "dropped")."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(answers_per_connection):
            await _read_request(reader)
            seen.append("answered")
            writer.write(
                _headers(f"Content-Length: {len(COMPLETION)}\r\nConnection: keep-alive\r\n")
                + COMPLETION
            )
            await writer.drain()
        await _read_request(reader)
        seen.append("dropped")

    async with serving(handle) as url:
        yield url, seen


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_pooled_connection_dropped_as_the_request_arrives_costs_no_failure(
    transport: str,
) -> None:
    """Each reuse of a pooled connection meets the drop; the request goes once more, on
    another connection, and every call succeeds."""
    async with (
        dropping_server(answers_per_connection=1) as (url, seen),
        ProviderClients(transport=transport) as clients,  # type: ignore[arg-type]
    ):
        for _ in range(4):
            completion = await asyncio.wait_for(
                clients(spec_of("keepalive", url), REQUEST, CallContext(timeout=30)), GUARD
            )
            assert completion.text == "hi"
    assert seen.count("answered") == 4
    assert seen.count("dropped") == 3, seen  # the pool really reused each connection


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_server_that_drops_every_request_is_tried_twice_then_fails(
    transport: str,
) -> None:
    async with (
        dropping_server(answers_per_connection=0) as (url, seen),
        ProviderClients(transport=transport) as clients,  # type: ignore[arg-type]
    ):
        with pytest.raises(TransientError) as caught:
            await asyncio.wait_for(
                clients(spec_of("dropper", url), REQUEST, CallContext(timeout=30)), GUARD
            )
    assert "no answer" in caught.value.message, caught.value.message
    assert seen == ["dropped", "dropped"]
