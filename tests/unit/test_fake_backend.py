"""We test these aspects of the fake backend tests and demos rely on:

* each protocol route answers deterministically, naming the server;
* modes apply globally or per route; a route's own mode wins; "inherit" drops it;
* fail_next fails exactly N requests, then the scope is healthy again;
* bad steering is refused with HTTP 400 and changes nothing;
* jobs are deduplicated by idempotency key and finish after job_delay_ms;
* stats count requests per route and outcomes per mode; reset forgets everything;
* the served-model list and the API key setting;
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
