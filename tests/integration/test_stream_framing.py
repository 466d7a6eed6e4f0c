"""We test these aspects: the fake backend streams as the real llama-server does.

The unit tests of the fake (tests/unit/test_fake_backend.py) check its streams against
what the servers' sources say; this checks them against a real server's bytes. The same
streamed requests go to llama.cpp's ``llama-server`` (SmolLM2-135M, through
:class:`chainop.testing.llama.LlamaServer`; without the cached build every test here is
*skipped* with the reason, never passed) and to a :class:`FakeBackendThread`, and the
framing is compared -- not the words, which only the model knows:

- the response: status 200, media type ``text/event-stream``, chunked, no Content-Length;
- the event structure: events end with a blank line; OpenAI events are ``data:`` lines
  only, Anthropic events are an ``event:`` line and a ``data:`` line whose JSON ``type``
  is the event's name;
- ``/v1/chat/completions`` (with and without ``stream_options.include_usage``, and a
  stream that ends on ``length``): the sequence of chunk kinds (role, content..., finish,
  usage, ``[DONE]``), each kind's keys (top level, choice, delta, usage), the role delta,
  the finishing chunk's empty delta, one ``id`` and ``object: chat.completion.chunk``
  throughout, ``choices: []`` on the usage chunk -- exactly, for the fake's
  ``stream_style: "llama.cpp"``;
- ``/v1/messages`` (llama-server's Anthropic API): the sequence of event names and each
  event's keys (``message_start``'s message and usage, ``content_block_*``,
  ``message_delta``), exactly, for ``llama.cpp`` style;
- the fake's default (vLLM/Anthropic) style keeps what a client may rely on from either
  server: a role chunk first, content deltas, one finishing chunk, the usage chunk only
  when asked and last before ``[DONE]``; Anthropic's event order with one ``ping`` more.

Every real stream is printed (``-s``), so a difference is easy to read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from chainop.testing import llama
from chainop.testing.fake_backend import FakeBackendThread
from chainop.testing.llama import LlamaServer

_MISSING = llama.missing_reason()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def request(*, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "model": llama.DEFAULT_ALIAS,
        "max_tokens": max_tokens,
        "stream": True,
        "messages": [{"role": "user", "content": "Say hi"}],
        **extra,
    }


@dataclass
class Raw:
    """A streamed reply as bytes on the wire, split into events."""

    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def media_type(self) -> str:
        return str(self.headers.get("content-type", "")).split(";")[0].strip()

    def events(self) -> list[list[tuple[str, str]]]:
        """Each event as its ``(field, value)`` lines; the body must end with a blank line."""
        text = self.body.decode()
        assert text.endswith("\n\n"), f"the last event is not terminated: {text[-80:]!r}"
        events = []
        for block in text[:-2].split("\n\n"):
            lines = []
            for line in block.split("\n"):
                name, sep, value = line.partition(": ")
                assert sep, f"not a 'field: value' line: {line!r}"
                lines.append((name, value))
            events.append(lines)
        return events


def fetch(url: str, path: str, body: dict[str, Any]) -> Raw:
    with (
        httpx.Client(timeout=120.0, trust_env=False) as client,
        client.stream("POST", url + path, json=body) as response,
    ):
        data = response.read()
    return Raw(response.status_code, response.headers, data)


def openai_shape(raw: Raw) -> list[tuple[str, Any]]:
    """The stream as ``(kind, keys)`` per chunk, runs of content chunks made one.

    Kinds: ``role``, ``content``, ``finish``, ``usage``, ``done``; keys: the chunk's
    top-level keys, its choice's keys, its delta's keys and its usage's keys.
    """
    shape: list[tuple[str, Any]] = []
    ids = set()
    for event in raw.events():
        assert [name for name, _ in event] == ["data"], event  # data-only events
        data = event[0][1]
        if data == "[DONE]":
            shape.append(("done", None))
            continue
        chunk = json.loads(data)
        ids.add(chunk["id"])
        assert chunk["object"] == "chat.completion.chunk"
        if not chunk["choices"]:
            kind = "usage"
            keys: Any = (sorted(chunk), sorted(chunk["usage"]))
        else:
            [choice] = chunk["choices"]
            delta = choice["delta"]
            if "role" in delta:
                kind = "role"
                assert delta["role"] == "assistant"
            elif choice["finish_reason"] is not None:
                kind = "finish"
            else:
                kind = "content"
            keys = (sorted(chunk), sorted(choice), sorted(delta))
            if "usage" in chunk:
                keys = (*keys, sorted(chunk["usage"]))
        if shape and shape[-1] == (kind, keys) and kind == "content":
            continue
        shape.append((kind, keys))
    assert len(ids) == 1, f"one id per stream: {ids}"
    return shape


def openai_chunks(raw: Raw) -> list[dict[str, Any]]:
    return [json.loads(e[0][1]) for e in raw.events() if e[0][1] != "[DONE]"]


def anthropic_shape(raw: Raw) -> list[tuple[str, Any]]:
    """The stream as ``(event, keys)`` per event, runs of deltas made one."""
    shape: list[tuple[str, Any]] = []
    for event in raw.events():
        assert [name for name, _ in event] == ["event", "data"], event
        name = event[0][1]
        data = json.loads(event[1][1])
        assert data["type"] == name
        keys: Any = sorted(data)
        if name == "message_start":
            keys = (keys, sorted(data["message"]), sorted(data["message"]["usage"]))
        elif name in ("content_block_start", "content_block_delta"):
            inner = data.get("content_block", data.get("delta"))
            keys = (keys, sorted(inner), inner["type"])
        elif name == "message_delta":
            keys = (keys, sorted(data["delta"]), sorted(data["usage"]))
        if shape and shape[-1] == (name, keys) and name == "content_block_delta":
            continue
        shape.append((name, keys))
    return shape


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    with LlamaServer(log_path=log) as server:
        server.wait_ready(timeout=60)
        yield server


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackendThread]:
    with FakeBackendThread(name="framing") as backend:
        yield backend


@pytest.fixture
def fake_llama(fake: FakeBackendThread) -> Iterator[FakeBackendThread]:
    fake.reset()
    fake.configure(stream_style="llama.cpp")
    yield fake
    fake.reset()


def show(label: str, raw: Raw) -> None:
    print(f"\n--- {label}: {raw.status} {dict(raw.headers)}\n{raw.body.decode()}")


def check_response(raw: Raw) -> None:
    assert raw.status == 200
    assert raw.media_type == "text/event-stream"
    assert raw.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in raw.headers


CHAT_CASES = {
    "plain": request(),
    "include_usage": request(stream_options={"include_usage": True}),
}


@pytest.mark.parametrize("case", sorted(CHAT_CASES))
def test_chat_stream_framing_matches_llama_server(
    real: LlamaServer, fake_llama: FakeBackendThread, case: str
) -> None:
    body = CHAT_CASES[case]
    theirs = fetch(real.root_url, CHAT, body)
    ours = fetch(fake_llama.url, CHAT, body)
    show(f"llama-server {case}", theirs)
    check_response(theirs)
    check_response(ours)
    assert openai_shape(ours) == openai_shape(theirs)
    first_theirs, first_ours = openai_chunks(theirs)[0], openai_chunks(ours)[0]
    assert first_ours["choices"] == first_theirs["choices"]  # the role delta, content null


def test_a_length_stop_frames_as_llama_servers_length(
    real: LlamaServer, fake_llama: FakeBackendThread
) -> None:
    body = request(max_tokens=2)
    theirs = fetch(real.root_url, CHAT, body)
    fake_llama.set_mode("length_stop", after_chunks=2)
    ours = fetch(fake_llama.url, CHAT, body)
    show("llama-server max_tokens=2", theirs)
    assert openai_shape(ours) == openai_shape(theirs)
    finish = [c for c in openai_chunks(theirs) if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish[0]["choices"][0]["finish_reason"] == "length"
    finish = [c for c in openai_chunks(ours) if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish[0]["choices"][0]["finish_reason"] == "length"


def test_messages_stream_framing_matches_llama_server(
    real: LlamaServer, fake_llama: FakeBackendThread
) -> None:
    body = request()
    theirs = fetch(real.root_url, MESSAGES, body)
    ours = fetch(fake_llama.url, MESSAGES, body)
    show("llama-server /v1/messages", theirs)
    check_response(theirs)
    check_response(ours)
    shape = anthropic_shape(theirs)
    assert [name for name, _ in shape] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert anthropic_shape(ours) == shape


@pytest.mark.parametrize("case", sorted(CHAT_CASES))
def test_the_default_style_keeps_what_clients_rely_on(
    real: LlamaServer, fake: FakeBackendThread, case: str
) -> None:
    fake.reset()
    body = CHAT_CASES[case]
    kinds = [
        [kind for kind, _ in openai_shape(fetch(url, CHAT, body))]
        for url in (real.root_url, fake.url)
    ]
    theirs, ours = kinds
    # vLLM's finishing chunk also carries the last token; it is still one finishing chunk
    # after the content, before the usage and [DONE]
    assert ours == theirs
    assert ours[0] == "role"
    assert ours[-1] == "done"
    assert ("usage" in ours) == (case == "include_usage")
    messages = [
        [name for name, _ in anthropic_shape(fetch(url, MESSAGES, request()))]
        for url in (real.root_url, fake.url)
    ]
    assert [name for name in messages[1] if name != "ping"] == messages[0]
    assert messages[1].count("ping") == 1
