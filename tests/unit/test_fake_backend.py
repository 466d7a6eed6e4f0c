"""We test these aspects of the fake backend tests and demos rely on:

* each protocol route answers deterministically, naming the server;
* modes apply globally or per route; a route's own mode wins; "inherit" drops it;
* fail_next fails exactly N requests, then the scope is healthy again;
* bad steering is refused with HTTP 400 and changes nothing;
* jobs are deduplicated by idempotency key and finish after job_delay_ms;
* stats count requests per route and outcomes per mode; reset forgets everything;
* the served-model list and the API key setting; models served from the start (the
  constructor, ``--served-model-name``) survive a reset; a redeploy at runtime changes
  the listing and answers other models with vLLM's exact 404;
* real servers' behaviour: ``/health`` 200 with an empty body and no key needed (vLLM);
  ``hung_engine`` (listing and health answer, generation never does); ``loading``
  (llama.cpp's exact 503 on every route); error envelopes shaped like vLLM's (400, 404,
  500) and Anthropic's on the Messages route;
* mode ``reply`` sends exactly the given status, headers and body, also with fail_next;
* FakeBackendThread (sync) and FakeBackendControl (another process) steer it the same way;
* the CLI prints its listening line and serves until terminated;
* stopping a backend with a hung request in flight finishes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from chainop.testing.fake_backend import (
    ControlError,
    FakeBackend,
    FakeBackendControl,
    FakeBackendThread,
)

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "ping"}]}


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    async with FakeBackend(name="beta") as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


async def chat(http: httpx.AsyncClient, backend: FakeBackend) -> httpx.Response:
    return await http.post(backend.url + "/v1/chat/completions", json=CHAT)


@pytest.mark.parametrize(
    ("method", "path", "body", "text_at"),
    [
        ("POST", "/v1/chat/completions", CHAT, ("choices", 0, "message", "content")),
        ("POST", "/chat/completions", CHAT, ("choices", 0, "message", "content")),
        ("POST", "/v1/messages", CHAT, ("content", 0, "text")),
    ],
)
async def test_protocol_routes_echo_deterministically(
    http: httpx.AsyncClient,
    backend: FakeBackend,
    method: str,
    path: str,
    body: dict[str, Any],
    text_at: tuple[Any, ...],
) -> None:
    response = await http.request(method, backend.url + path, json=body)
    assert response.status_code == 200
    assert response.headers["x-fake-backend"] == "beta"
    value: Any = response.json()
    for key in text_at:
        value = value[key]
    assert value == "[beta] echo: ping"


async def test_route_mode_overrides_global_and_inherit_restores(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.set_mode("error", status=503)
    backend.set_mode("healthy", route="openai")
    assert (await chat(http, backend)).status_code == 200
    assert (await http.post(backend.url + "/v1/messages", json=CHAT)).status_code == 503
    backend.set_mode("inherit", route="openai")
    assert (await chat(http, backend)).status_code == 503


async def test_fail_next_fails_exactly_n_then_heals(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.set_mode(fail_next=2, status=502)
    statuses = [(await chat(http, backend)).status_code for _ in range(4)]
    assert statuses == [502, 502, 200, 200]
    assert backend.stats["outcomes"]["openai"] == {"error": 2, "healthy": 2}


async def test_rate_limit_sends_retry_after(http: httpx.AsyncClient, backend: FakeBackend) -> None:
    backend.set_mode("rate_limit", retry_after=3)
    response = await chat(http, backend)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"


async def test_unknown_model_names_the_model(http: httpx.AsyncClient, backend: FakeBackend) -> None:
    backend.set_mode("unknown_model")
    response = await chat(http, backend)
    assert response.status_code == 404
    assert "`m1`" in response.json()["error"]["message"]


async def test_served_models_reject_others(http: httpx.AsyncClient, backend: FakeBackend) -> None:
    backend.configure(models=["m2"])
    assert (await chat(http, backend)).status_code == 404
    listing = (await http.get(backend.url + "/v1/models")).json()
    assert [model["id"] for model in listing["data"]] == ["m2"]


async def test_api_key_setting_requires_the_key(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.configure(api_key="k-1234")
    assert (await chat(http, backend)).status_code == 401
    response = await http.post(
        backend.url + "/v1/chat/completions",
        json=CHAT,
        headers={"authorization": "Bearer k-1234"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        {"mode": "exploding"},
        {"route": "nowhere", "mode": "error"},
        {"fail_next": -1},
        {"status": 99},
        {"job_status": "maybe"},
        {"colour": "red"},
        {"mode": "inherit"},
    ],
)
async def test_bad_control_is_refused_and_changes_nothing(
    http: httpx.AsyncClient, backend: FakeBackend, payload: dict[str, Any]
) -> None:
    response = await http.post(backend.url + "/_control", json=payload)
    assert response.status_code == 400
    assert (await chat(http, backend)).status_code == 200


def test_bad_mode_in_process_raises(backend: FakeBackend) -> None:
    with pytest.raises(ControlError):
        backend.set_mode("exploding")


async def test_jobs_dedup_by_key_and_finish_after_delay(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.configure(job_delay_ms=60_000)
    body = {**CHAT, "max_tokens": 8, "temperature": None, "idempotency_key": "k1"}
    first = (await http.post(backend.url + "/jobs", json=body)).json()
    second = (await http.post(backend.url + "/jobs", json=body)).json()
    assert first["id"] == second["id"]
    status = (await http.get(f"{backend.url}/jobs/{first['id']}")).json()["status"]
    assert status in {"queued", "running"}
    stats = backend.stats
    assert stats["job_posts"] == {"k1": 2}
    assert stats["job_submissions"] == {"k1": 1}

    backend.configure(job_delay_ms=0)
    other = (await http.post(backend.url + "/jobs", json={**body, "idempotency_key": "k2"})).json()
    done = (await http.get(f"{backend.url}/jobs/{other['id']}")).json()
    assert done["status"] == "succeeded"
    assert done["result"]["text"] == "[beta] echo: ping"
    assert done["result"]["cost_usd"] > 0


async def test_unknown_job_is_404(http: httpx.AsyncClient, backend: FakeBackend) -> None:
    assert (await http.get(backend.url + "/jobs/nope")).status_code == 404


async def test_reset_forgets_modes_counts_and_jobs(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.set_mode("error")
    await chat(http, backend)
    assert (await http.post(backend.url + "/_reset")).status_code == 200
    assert backend.stats["requests"] == {}
    assert (await chat(http, backend)).status_code == 200


async def test_stopping_with_a_hung_request_finishes(http: httpx.AsyncClient) -> None:
    fake = FakeBackend(name="hung", mode="hang")
    await fake.start()
    pending = asyncio.create_task(chat(http, fake))
    while not fake.stats["requests"]:  # noqa: ASYNC110 - the server counts it, no event
        await asyncio.sleep(0.01)
    await fake.stop()
    with pytest.raises(httpx.TransportError):
        await pending


def test_thread_backend_and_remote_control() -> None:
    with FakeBackendThread(name="gamma") as fake:
        control = FakeBackendControl(fake.url)
        control.set(mode="error", status=503, route="openai")
        with httpx.Client(timeout=5.0) as client:
            assert client.post(fake.url + "/chat/completions", json=CHAT).status_code == 503
            fake.set_mode("healthy", route="openai")
            assert client.post(fake.url + "/chat/completions", json=CHAT).status_code == 200
        assert control.stats()["requests"] == {"openai": 2}
        assert fake.stats()["outcomes"]["openai"] == {"error": 1, "healthy": 1}
        with pytest.raises(ControlError):
            control.set(mode="exploding")
        control.reset()
        assert fake.stats()["requests"] == {}


async def test_async_remote_control(backend: FakeBackend, http: httpx.AsyncClient) -> None:
    control = FakeBackendControl(backend.url)
    described = await control.aset(fail_next=1)
    assert described["global"]["mode"] == "error"
    assert (await chat(http, backend)).status_code == 500
    assert (await control.astats())["outcomes"]["openai"] == {"error": 1}
    await control.areset()


def test_cli_prints_listening_line_and_serves() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chainop.testing.fake_backend",
            "--port",
            "0",
            "--name",
            "delta",
            "--mode",
            "error",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("fake-backend delta listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        with httpx.Client(timeout=5.0) as client:
            assert client.post(url + "/v1/chat/completions", json=CHAT).status_code == 500
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()


# --------------------------------------------------------------------------- real servers

VLLM_404 = (
    b'{"error":{"message":"The model `m1` does not exist.","type":"NotFoundError",'
    b'"param":"model","code":404}}'
)
LOADING = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'


async def test_health_is_an_empty_200_without_a_key(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.configure(api_key="k-1234")
    response = await http.get(backend.url + "/health")
    assert response.status_code == 200
    assert response.content == b""
    assert backend.stats["requests"] == {"health": 1}


async def test_hung_engine_lists_and_answers_health_but_never_generates(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.set_mode("hung_engine")
    assert (await http.get(backend.url + "/v1/models")).status_code == 200
    assert (await http.get(backend.url + "/health")).status_code == 200
    for path in ("/v1/chat/completions", "/v1/messages", "/jobs"):
        with pytest.raises(httpx.ReadTimeout):
            await http.post(backend.url + path, json=CHAT, timeout=0.2)
    backend.set_mode("healthy")
    assert (await chat(http, backend)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/messages"),
        ("GET", "/v1/models"),
    ],
)
async def test_loading_is_llama_cpps_exact_503(
    http: httpx.AsyncClient, backend: FakeBackend, method: str, path: str
) -> None:
    backend.set_mode("loading")
    response = await http.request(
        method, backend.url + path, json=CHAT if method == "POST" else None
    )
    assert response.status_code == 503
    assert response.content == LOADING
    assert response.headers["content-type"] == "application/json; charset=utf-8"


async def test_a_redeploy_changes_the_listing_and_404s_other_models(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.configure(served_model="m2")
    listing = (await http.get(backend.url + "/v1/models")).json()
    assert [model["id"] for model in listing["data"]] == ["m2"]
    response = await chat(http, backend)
    assert response.status_code == 404
    assert response.content == VLLM_404
    anthropic = await http.post(backend.url + "/v1/messages", json=CHAT)
    assert anthropic.json()["error"]["type"] == "not_found_error"
    backend.configure(served_model=None)
    assert (await chat(http, backend)).status_code == 200


async def test_models_served_from_the_start_survive_reset(http: httpx.AsyncClient) -> None:
    async with FakeBackend(name="vllm", models=["qwen"]) as fake:
        fake.configure(models=["other"])
        fake.reset()
        listing = (await http.get(fake.url + "/v1/models")).json()
        assert [model["id"] for model in listing["data"]] == ["qwen"]


async def test_error_envelopes_are_vllms_and_anthropics(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    bad = await http.post(
        backend.url + "/v1/chat/completions",
        content=b"not json",
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400
    assert bad.json() == {
        "error": {
            "message": "request body must be a JSON object",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
    backend.set_mode("error")
    error = (await chat(http, backend)).json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("InternalServerError", None, 500)
    anthropic = (await http.post(backend.url + "/v1/messages", json=CHAT)).json()
    assert anthropic["type"] == "error"
    assert anthropic["error"]["type"] == "api_error"


async def test_reply_sends_exactly_what_it_is_given_then_heals_with_fail_next(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    body = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}  '
    backend.set_mode(
        "reply",
        status=529,
        headers={"Content-Type": "application/json", "retry-after": "7", "x-should-retry": "true"},
        body=body,
        fail_next=1,
    )
    replayed = await http.post(backend.url + "/v1/messages", json=CHAT)
    assert replayed.status_code == 529
    assert replayed.content == body.encode()
    assert replayed.headers["content-type"] == "application/json"
    assert replayed.headers["retry-after"] == "7"
    assert replayed.headers["x-should-retry"] == "true"
    assert "x-fake-backend" not in replayed.headers
    assert (await http.post(backend.url + "/v1/messages", json=CHAT)).status_code == 200


async def test_reply_over_remote_control_with_a_non_json_body(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    control = FakeBackendControl(backend.url)
    await control.aset(
        mode="reply",
        route="openai",
        status=502,
        headers={"content-type": "text/html"},
        body="<html><body><h1>502 Bad Gateway</h1></body></html>\n",
    )
    response = await chat(http, backend)
    assert response.status_code == 502
    assert response.text == "<html><body><h1>502 Bad Gateway</h1></body></html>\n"
    assert response.headers["content-type"] == "text/html"
    with pytest.raises(ControlError):
        await control.aset(mode="reply", body={"not": "a string"})
    with pytest.raises(ControlError):
        await control.aset(mode="reply", headers={"x": 1}, body="")


def test_cli_serves_the_named_models() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chainop.testing.fake_backend",
            "--port",
            "0",
            "--served-model-name",
            "qwen",
            "--served-model-name",
            "llama",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip().rsplit(" ", 1)[1]
        with httpx.Client(timeout=5.0) as client:
            listing = client.get(url + "/v1/models").json()
            assert [model["id"] for model in listing["data"]] == ["qwen", "llama"]
            other = client.post(url + "/v1/chat/completions", json=CHAT)
            assert other.status_code == 404
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()
