"""We test these aspects of probes by kind (``ProviderClients.probe``), over real sockets
against the fake backend and tiny aiohttp servers, with both transports:

* List: the listing URL per protocol (anthropic's ``{root}/v1/models`` either way the
  endpoint is written), healthy only when the listing serves the configured model;
  every listing shape real servers send (OpenAI/vLLM, llama.cpp's ``data`` + ``models``,
  Ollama's ``/v1/models`` and ``/api/tags``, Anthropic's paginated list, Gemini's
  ``models/`` ids), copied from the servers' source and docs; drift raises
  ModelNotServedError with what is served instead, and clears when the model is back;
  ``has_more`` without the model is not drift; a 2xx without a listing is incomplete;
* Health: ``GET {scheme://host:port}{healthPath}`` at the root, 200 with an empty body is
  healthy; 503 "Loading model" is ``loading`` (for every kind), a bare 503 is a failure;
* Generate: the tiny completion on the wire (model, prompt, maxTokens, temperature 0);
  any well-formed reply counts (empty content, finish_reason length, only reasoning);
  a reply without choices/content is incomplete; jobs providers get a List instead;
* the hung engine: List and Health pass while Generate times out;
* Auto is refused; the key is sent and never appears in a drift message;
* the pure helpers (model matching, listing reading, URLs) on their own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from chainop.core import errors
from chainop.core.models import ProbeKind, ProviderSpec
from chainop.providers import TRANSPORTS, ProviderClients, probes
from chainop.providers.probes import ProbeResult
from chainop.testing.fake_backend import FakeBackend

SHORT = 0.2  # seconds: the budget of every probe that waits for a timeout
CANARY_KEY = "sk-canary-7f3a9c1e-never-show-me"
LIST, HEALTH, GENERATE = ProbeKind.LIST, ProbeKind.HEALTH, ProbeKind.GENERATE
JSON = {"content-type": "application/json"}

# --------------------------------------------------------------------------- listings
# Shapes copied from the servers' source and docs (values shortened, structure kept).

#: vLLM ``ModelList``/``ModelCard`` (vllm/entrypoints/openai/engine/protocol.py).
VLLM_LISTING = {
    "object": "list",
    "data": [
        {
            "id": "Qwen/Qwen2.5-7B-Instruct",
            "object": "model",
            "created": 1733000000,
            "owned_by": "vllm",
            "root": "/models/qwen2.5-7b",
            "parent": None,
            "max_model_len": 32768,
            "permission": [
                {
                    "id": "modelperm-0a1b2c",
                    "object": "model_permission",
                    "created": 1733000000,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
    ],
}
#: llama.cpp ``GET /v1/models`` (tools/server/server-context.cpp, tools/server/README.md):
#: an Ollama-style ``models`` list next to the OpenAI-style ``data`` list.
LLAMACPP_LISTING = {
    "models": [
        {
            "name": "smollm2-135m",
            "model": "smollm2-135m",
            "modified_at": "",
            "size": "",
            "digest": "",
            "type": "model",
            "description": "",
            "tags": [""],
            "capabilities": ["completion"],
            "parameters": "",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "",
                "families": [""],
                "parameter_size": "",
                "quantization_level": "",
            },
        }
    ],
    "object": "list",
    "data": [
        {
            "id": "smollm2-135m",
            "object": "model",
            "created": 1764633600,
            "owned_by": "llamacpp",
            "meta": {
                "vocab_type": 2,
                "n_vocab": 49152,
                "n_ctx_train": 8192,
                "n_embd": 576,
                "n_params": 134515008,
                "size": 270887936,
            },
        }
    ],
}
#: Ollama's OpenAI-compatible ``GET /v1/models`` (docs.ollama.com/openai).
OLLAMA_V1_LISTING = {
    "object": "list",
    "data": [
        {"id": "llama3:latest", "object": "model", "created": 1717000000, "owned_by": "library"},
        {"id": "qwen2.5:7b", "object": "model", "created": 1717000001, "owned_by": "library"},
    ],
}
#: Ollama's native ``GET /api/tags`` (docs.ollama.com/api/tags).
OLLAMA_TAGS_LISTING = {
    "models": [
        {
            "name": "llama3:latest",
            "model": "llama3:latest",
            "modified_at": "2025-10-03T23:34:03.409490317-07:00",
            "size": 4661224676,
            "digest": "365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "8.0B",
                "quantization_level": "Q4_0",
            },
        }
    ]
}
#: Anthropic ``GET /v1/models`` (docs.anthropic.com/en/api/models-list): paginated.
ANTHROPIC_LISTING = {
    "data": [
        {
            "type": "model",
            "id": "claude-3-5-haiku-20241022",
            "display_name": "Claude Haiku 3.5",
            "created_at": "2024-10-22T00:00:00Z",
        },
        {
            "type": "model",
            "id": "claude-sonnet-4-5-20250929",
            "display_name": "Claude Sonnet 4.5",
            "created_at": "2025-09-29T00:00:00Z",
        },
    ],
    "has_more": False,
    "first_id": "claude-3-5-haiku-20241022",
    "last_id": "claude-sonnet-4-5-20250929",
}
#: Gemini's OpenAI-compatible ``GET /v1beta/openai/models``
#: (ai.google.dev/gemini-api/docs/openai#list-models): ids carry ``models/``.
GEMINI_LISTING = {
    "object": "list",
    "data": [
        {"id": "models/gemini-2.0-flash", "object": "model", "owned_by": "google"},
        {"id": "models/gemini-2.5-pro", "object": "model", "owned_by": "google"},
    ],
}

# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    async with FakeBackend(name="probe-fake", models=["m1"]) as fake:
        yield fake


@pytest.fixture(params=TRANSPORTS)
async def clients(request: pytest.FixtureRequest) -> AsyncIterator[ProviderClients]:
    async with ProviderClients(transport=request.param) as provider_clients:
        yield provider_clients


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def tiny_server() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[str]]]:
    """Start a tiny aiohttp server with ``{"GET /path": handler}`` routes; yields its URL."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for key, handler in routes.items():
            method, path = key.split(" ", 1)
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


def make_provider(
    url: str,
    protocol: str = "openai",
    *,
    model: str = "m1",
    endpoint: str | None = None,
    **probe: Any,
) -> ProviderSpec:
    """A provider at ``url``; OpenAI and jobs endpoints include /v1 as users write them."""
    if endpoint is None:
        endpoint = url if protocol == "anthropic" else url + "/v1"
    return ProviderSpec.model_validate(
        {
            "name": f"{protocol}-p",
            "type": protocol,
            "endpoint": endpoint,
            "model": model,
            "probe": probe,
        }
    )


async def probe(
    clients: ProviderClients,
    provider: ProviderSpec,
    kind: ProbeKind,
    *,
    api_key: str | None = None,
    timeout: float = 5.0,  # noqa: ASYNC109 - the probe's own budget, passed through
) -> ProbeResult:
    return await clients.probe(provider, kind=kind, api_key=api_key, timeout=timeout)


def replay(backend: FakeBackend, body: Any, *, status: int = 200, **headers: str) -> None:
    """Make every route of the fake answer exactly this (mode ``reply``)."""
    raw = body if isinstance(body, str) else json.dumps(body)
    backend.set_mode("reply", status=status, headers=headers or JSON, body=raw)


# --------------------------------------------------------------------------- List


@pytest.mark.parametrize(
    ("protocol", "path"),
    [("openai", "/v1/models"), ("anthropic", "/v1/models"), ("jobs", "/v1/models")],
)
async def test_list_serves_the_model(
    clients: ProviderClients, backend: FakeBackend, protocol: str, path: str
) -> None:
    result = await probe(clients, make_provider(backend.url, protocol), LIST)
    assert result.kind is LIST
    assert result.served == ("m1",)
    assert not result.loading
    assert result.latency > 0
    assert backend.stats["last_request"]["models"]["path"] == path
    assert set(backend.stats["requests"]) == {"models"}  # never a paid completion


@pytest.mark.parametrize("endpoint_suffix", ["", "/", "/v1", "/v1/"])
async def test_anthropic_probe_urls_either_endpoint_spelling(
    clients: ProviderClients, backend: FakeBackend, endpoint_suffix: str
) -> None:
    provider = make_provider(backend.url, "anthropic", endpoint=backend.url + endpoint_suffix)
    await probe(clients, provider, LIST)
    await probe(clients, provider, GENERATE)
    await probe(clients, provider, HEALTH)
    last = backend.stats["last_request"]
    assert last["models"]["path"] == "/v1/models"
    assert last["anthropic"]["path"] == "/v1/messages"
    assert last["health"]["path"] == "/health"
    assert last["anthropic"]["headers"]["anthropic-version"] == "2023-06-01"


async def test_drift_after_a_redeploy_then_recovery(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    provider = make_provider(backend.url)
    backend.configure(models=["qwen2.5-7b-instruct", "m1-v2"])  # another --served-model-name
    with pytest.raises(errors.ModelNotServedError) as caught:
        await probe(clients, provider, LIST)
    assert caught.value.served == ("qwen2.5-7b-instruct", "m1-v2")
    assert caught.value.message == "model m1 is not served (serving: qwen2.5-7b-instruct, m1-v2)"
    assert isinstance(caught.value, errors.ModelNotFoundError)  # advance, no penalty
    backend.configure(served_model="m1")
    assert (await probe(clients, provider, LIST)).served == ("m1",)


@pytest.mark.parametrize(
    ("listing", "model", "served"),
    [
        pytest.param(
            VLLM_LISTING,
            "Qwen/Qwen2.5-7B-Instruct",
            ("Qwen/Qwen2.5-7B-Instruct",),
            id="vllm",
        ),
        pytest.param(LLAMACPP_LISTING, "smollm2-135m", ("smollm2-135m",), id="llama.cpp"),
        pytest.param(
            OLLAMA_V1_LISTING, "llama3", ("llama3:latest", "qwen2.5:7b"), id="ollama-v1-tag"
        ),
        pytest.param(
            OLLAMA_V1_LISTING,
            "qwen2.5:7b",
            ("llama3:latest", "qwen2.5:7b"),
            id="ollama-v1-exact",
        ),
        pytest.param(OLLAMA_TAGS_LISTING, "llama3", ("llama3:latest",), id="ollama-api-tags"),
        pytest.param(
            ANTHROPIC_LISTING,
            "claude-sonnet-4-5-20250929",
            ("claude-3-5-haiku-20241022", "claude-sonnet-4-5-20250929"),
            id="anthropic",
        ),
        pytest.param(
            ANTHROPIC_LISTING,
            "claude-3-5-haiku-latest",
            ("claude-3-5-haiku-20241022", "claude-sonnet-4-5-20250929"),
            id="anthropic-alias",
        ),
        pytest.param(
            GEMINI_LISTING,
            "gemini-2.0-flash",
            ("models/gemini-2.0-flash", "models/gemini-2.5-pro"),
            id="gemini",
        ),
    ],
)
async def test_listing_shapes_serve_the_model(
    clients: ProviderClients,
    backend: FakeBackend,
    listing: dict[str, Any],
    model: str,
    served: tuple[str, ...],
) -> None:
    replay(backend, listing)
    result = await probe(clients, make_provider(backend.url, model=model), LIST)
    assert result.served == served


@pytest.mark.parametrize(
    ("listing", "model"),
    [
        pytest.param(VLLM_LISTING, "Qwen/Qwen2.5-14B-Instruct", id="vllm"),
        pytest.param(LLAMACPP_LISTING, "smollm2-360m", id="llama.cpp"),
        pytest.param(OLLAMA_TAGS_LISTING, "llama3:70b", id="ollama-other-tag"),
        pytest.param(ANTHROPIC_LISTING, "claude-sonnet-4", id="anthropic-not-a-snapshot"),
        pytest.param(GEMINI_LISTING, "gemini-1.5-pro", id="gemini"),
        pytest.param({"object": "list", "data": []}, "m1", id="empty"),
    ],
)
async def test_listing_shapes_without_the_model_are_drift(
    clients: ProviderClients, backend: FakeBackend, listing: dict[str, Any], model: str
) -> None:
    replay(backend, listing)
    with pytest.raises(errors.ModelNotServedError, match=f"model {model} is not served"):
        await probe(clients, make_provider(backend.url, model=model), LIST)


async def test_has_more_without_the_model_is_not_drift(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    replay(backend, {**ANTHROPIC_LISTING, "has_more": True})
    provider = make_provider(backend.url, "anthropic", model="claude-opus-4-1-20250805")
    result = await probe(clients, provider, LIST)
    assert result.served == ("claude-3-5-haiku-20241022", "claude-sonnet-4-5-20250929")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param("<html><body>Welcome to the hotel wifi</body></html>", "text/html", id="html"),
        pytest.param('{"object": "list"}', "application/json", id="no-listing"),
        pytest.param('{"data": "m1"}', "application/json", id="data-not-a-list"),
        pytest.param('[{"id": "m1"}]', "application/json", id="array"),
    ],
)
async def test_a_2xx_without_a_listing_is_incomplete(
    clients: ProviderClients, backend: FakeBackend, body: str, content_type: str
) -> None:
    replay(backend, body, **{"content-type": content_type})
    with pytest.raises(errors.IncompleteReplyError):
        await probe(clients, make_provider(backend.url), LIST)


async def test_the_listing_is_bounded_and_named_briefly(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    replay(backend, {"data": [{"id": f"model-{i}"} for i in range(500)]})
    with pytest.raises(errors.ModelNotServedError) as caught:
        await probe(clients, make_provider(backend.url), LIST)
    assert len(caught.value.served) == probes.MAX_SERVED
    assert caught.value.message.endswith("model-7, ... (492 more))")


async def test_a_key_in_the_listing_is_redacted(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    replay(backend, {"data": [{"id": f"for-{CANARY_KEY}"}]})
    with pytest.raises(errors.ModelNotServedError) as caught:
        await probe(clients, make_provider(backend.url), LIST, api_key=CANARY_KEY)
    assert CANARY_KEY not in caught.value.message
    assert CANARY_KEY not in "".join(caught.value.served)


# --------------------------------------------------------------------------- Health


async def test_health_is_at_the_root_and_an_empty_200_is_healthy(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    result = await probe(clients, make_provider(backend.url), HEALTH)
    assert result == ProbeResult(kind=HEALTH, latency=result.latency)
    assert backend.stats["last_request"]["health"]["path"] == "/health"
    assert set(backend.stats["requests"]) == {"health"}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param("", "text/plain", id="vllm-empty"),
        pytest.param('{"status":"ok"}', "application/json; charset=utf-8", id="llama.cpp"),
        pytest.param("", "application/json", id="tgi"),
    ],
)
async def test_health_bodies_of_real_servers(
    clients: ProviderClients,
    tiny_server: Callable[[dict[str, Handler]], Awaitable[str]],
    body: str,
    content_type: str,
) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.Response(body=body.encode(), headers={"content-type": content_type})

    url = await tiny_server({"GET /healthz": health})
    provider = make_provider(url, endpoint=url + "/serving/v1", healthPath="/healthz")
    assert (await probe(clients, provider, HEALTH)).kind is HEALTH


@pytest.mark.parametrize("kind", [HEALTH, LIST, GENERATE])
async def test_loading_model_is_neither_failure_nor_recovery(
    clients: ProviderClients, backend: FakeBackend, kind: ProbeKind
) -> None:
    backend.set_mode("loading")  # llama.cpp's 503 on every route while it loads
    result = await probe(clients, make_provider(backend.url), kind)
    assert result.loading
    assert result.kind is kind


async def test_a_bare_503_from_health_is_a_failure(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    # vLLM's /health when the engine is dead: Response(status_code=503), no body
    # (vllm/entrypoints/serve/instrumentator/health.py).
    backend.set_mode("reply", route="health", status=503, headers={}, body="")
    with pytest.raises(errors.TransientError):
        await probe(clients, make_provider(backend.url), HEALTH)


async def test_health_of_a_missing_path_is_permanent(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    provider = make_provider(backend.url, healthPath="/nowhere")
    with pytest.raises(errors.PermanentError):
        await probe(clients, provider, HEALTH)


# --------------------------------------------------------------------------- Generate


@pytest.mark.parametrize(
    ("protocol", "route", "path"),
    [("openai", "openai", "/v1/chat/completions"), ("anthropic", "anthropic", "/v1/messages")],
)
async def test_generate_sends_a_tiny_completion(
    clients: ProviderClients, backend: FakeBackend, protocol: str, route: str, path: str
) -> None:
    provider = make_provider(backend.url, protocol, maxTokens=8)
    result = await probe(clients, provider, GENERATE, api_key="probe-key-1")
    assert result == ProbeResult(kind=GENERATE, latency=result.latency)
    sent = backend.stats["last_request"][route]
    assert sent["path"] == path
    assert sent["json"] == {
        "model": "m1",
        "messages": [{"role": "user", "content": "Reply with OK."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    key_header = {"openai": "authorization", "anthropic": "x-api-key"}[protocol]
    assert sent["headers"][key_header].endswith("probe-key-1")


# A reasoning model that spent max_tokens thinking: vLLM puts the thoughts in
# ``reasoning_content`` and leaves ``content`` null (vllm/entrypoints/openai/
# chat_completion/protocol.py ``ChatMessage``); Anthropic answers a ``thinking`` block
# and ``stop_reason: max_tokens`` (docs.anthropic.com/en/docs/build-with-claude/
# extended-thinking).
WELL_FORMED = [
    pytest.param(
        "openai",
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1764633600,
            "model": "m1",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "reasoning_content": "The user wants me to reply with",
                        "tool_calls": [],
                    },
                    "logprobs": None,
                    "finish_reason": "length",
                    "stop_reason": None,
                }
            ],
            "usage": {"prompt_tokens": 14, "total_tokens": 30, "completion_tokens": 16},
        },
        id="openai-reasoning-length",
    ),
    pytest.param(
        "openai",
        {
            "id": "chatcmpl-2",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ""},
                    "finish_reason": "stop",
                }
            ],
        },
        id="openai-empty-content",
    ),
    pytest.param(
        "anthropic",
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "m1",
            "content": [{"type": "thinking", "thinking": "The user wants", "signature": "EqQB"}],
            "stop_reason": "max_tokens",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 16},
        },
        id="anthropic-thinking-max-tokens",
    ),
    pytest.param(
        "anthropic",
        {"id": "msg_02", "type": "message", "content": [], "stop_reason": "end_turn"},
        id="anthropic-empty-content",
    ),
]


@pytest.mark.parametrize(("protocol", "reply"), WELL_FORMED)
async def test_generate_counts_any_well_formed_reply(
    clients: ProviderClients, backend: FakeBackend, protocol: str, reply: dict[str, Any]
) -> None:
    replay(backend, reply)
    result = await probe(clients, make_provider(backend.url, protocol), GENERATE)
    assert result.kind is GENERATE


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_generate_counts_the_fakes_empty_answer(
    clients: ProviderClients, backend: FakeBackend, protocol: str
) -> None:
    backend.set_mode("empty")  # choices: [] / content: []
    assert (await probe(clients, make_provider(backend.url, protocol), GENERATE)).kind is GENERATE


@pytest.mark.parametrize(
    ("protocol", "body"),
    [
        ("openai", '{"id": "x", "object": "chat.completion"}'),
        ("openai", '{"error": {"message": "engine busy"}}'),
        ("anthropic", '{"id": "msg", "type": "message", "content": "OK"}'),
        ("openai", "<html>captive portal</html>"),
    ],
    ids=["no-choices", "error-in-200", "content-not-a-list", "html"],
)
async def test_generate_without_choices_or_content_is_incomplete(
    clients: ProviderClients, backend: FakeBackend, protocol: str, body: str
) -> None:
    replay(backend, body)
    with pytest.raises(errors.IncompleteReplyError):
        await probe(clients, make_provider(backend.url, protocol), GENERATE)


async def test_generate_for_another_model_is_model_not_found(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    with pytest.raises(errors.ModelNotFoundError, match="does not exist"):
        await probe(clients, make_provider(backend.url, model="m9"), GENERATE)


async def test_generate_on_a_jobs_provider_is_a_list(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    result = await probe(clients, make_provider(backend.url, "jobs"), GENERATE)
    assert result.kind is LIST
    assert result.served == ("m1",)
    assert set(backend.stats["requests"]) == {"models"}  # no job submitted


# --------------------------------------------------------------------------- hung engine


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_hung_engine_only_generate_sees_it(
    clients: ProviderClients, backend: FakeBackend, protocol: str
) -> None:
    backend.set_mode("hung_engine")
    provider = make_provider(backend.url, protocol)
    assert (await probe(clients, provider, LIST, timeout=SHORT)).served == ("m1",)
    assert not (await probe(clients, provider, HEALTH, timeout=SHORT)).loading
    with pytest.raises(errors.TransientError, match=r"timed out after 0\.2s"):
        await probe(clients, provider, GENERATE, timeout=SHORT)
    backend.set_mode("healthy")  # the restarted engine answers again
    assert (await probe(clients, provider, GENERATE)).kind is GENERATE


async def test_a_failing_probe_is_not_retried(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    backend.set_mode("error", status=503)
    for kind, route in ((LIST, "models"), (HEALTH, "health"), (GENERATE, "openai")):
        with pytest.raises(errors.TransientError):
            await probe(clients, make_provider(backend.url), kind)
        assert backend.stats["requests"][route] == 1


async def test_auto_is_refused(clients: ProviderClients, backend: FakeBackend) -> None:
    with pytest.raises(ValueError, match="kinds"):
        await probe(clients, make_provider(backend.url), ProbeKind.AUTO)


async def test_the_key_never_appears_in_probe_errors(
    clients: ProviderClients, backend: FakeBackend
) -> None:
    backend.set_mode("error", status=503, echo_headers=True)
    for kind in (LIST, HEALTH, GENERATE):
        with pytest.raises(errors.ProviderError) as caught:
            await probe(clients, make_provider(backend.url), kind, api_key=CANARY_KEY)
        assert CANARY_KEY not in caught.value.message


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("configured", "listed", "matches"),
    [
        ("m1", "m1", True),
        ("llama3", "llama3:latest", True),
        ("llama3:latest", "llama3", True),
        ("llama3", "llama3:70b", False),
        ("gemini-2.0-flash", "models/gemini-2.0-flash", True),
        ("models/gemini-2.0-flash", "gemini-2.0-flash", True),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku-20241022", True),
        ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", True),
        ("claude-sonnet-4", "claude-sonnet-4-5-20250929", False),
        ("M1", "m1", False),
        ("gpt-4o", "gpt-4o-mini", False),
    ],
)
def test_model_matches(configured: str, listed: str, matches: bool) -> None:
    assert probes.model_matches(configured, listed) is matches


def test_listed_models_reads_both_lists_once() -> None:
    assert probes.listed_models(LLAMACPP_LISTING) == (("smollm2-135m",), False)
    # Newer llama.cpp: data[] entries carry the --alias names (get_res_model_info).
    newer = {"data": [{"id": "/m/SmolLM2.gguf", "aliases": ["smollm2"], "tags": []}]}
    assert probes.listed_models(newer) == (("/m/SmolLM2.gguf", "smollm2"), False)
    assert probes.listed_models({"data": [{"id": 3}, "x", {"id": "a"}], "has_more": True}) == (
        ("a",),
        True,
    )
    assert probes.listed_models({"object": "list"}) is None


def test_urls_and_body() -> None:
    provider = make_provider("https://llm.example:8443", endpoint="https://llm.example:8443/v1")
    assert probes.health_url(provider) == "https://llm.example:8443/health"
    assert probes.generate_url(provider) == "https://llm.example:8443/v1/chat/completions"
    assert probes.generate_body(provider)["max_tokens"] == 16
