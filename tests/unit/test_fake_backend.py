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
* stopping a backend with a hung request in flight finishes;
* the queue, as a real vLLM serves: ``max_concurrency`` requests run at once, the others
  wait in arrival order; ``/metrics`` tells both (vLLM's names, labels, HELP/TYPE lines,
  read with ``prometheus_client``'s parser as chainop reads it), the old cache gauge on
  request; a client that goes away leaves the queue; a larger limit admits waiters;
  refusals never queue; ``/metrics`` is no counted route; the CLI's ``--max-concurrency``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chainop.testing.fake_backend import (
    FULL_BATCH_KV_CACHE_USAGE,
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


# --------------------------------------------------------------------------- the queue

QUEUE_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")


async def metrics(http: httpx.AsyncClient, fake: FakeBackend) -> dict[str, Any]:
    """``/metrics`` parsed as chainop parses it: name -> (value, labels, help, type)."""
    response = await http.get(fake.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        family.name: (sample.value, sample.labels, family.documentation, family.type)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def queue_of(http: httpx.AsyncClient, fake: FakeBackend) -> tuple[float, float]:
    """(running, waiting) as ``/metrics`` says."""
    read = await metrics(http, fake)
    return read["vllm:num_requests_running"][0], read["vllm:num_requests_waiting"][0]


async def until_queue(
    http: httpx.AsyncClient, fake: FakeBackend, running: int, waiting: int
) -> None:
    """Poll ``/metrics`` until it shows this queue (the server has no event to await)."""
    for _ in range(500):
        if await queue_of(http, fake) == (running, waiting):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(
        f"queue never {running} running / {waiting} waiting: {await queue_of(http, fake)}"
    )


async def test_n_served_at_once_the_others_wait_and_metrics_show_them(
    http: httpx.AsyncClient,
) -> None:
    async with FakeBackend(name="q", models=["qwen"], max_concurrency=2) as fake:
        fake.set_mode("hang", fail_next=5)  # five requests that hold their slot for ever
        body = {**CHAT, "model": "qwen"}
        calls = [
            asyncio.create_task(http.post(fake.url + "/v1/chat/completions", json=body))
            for _ in range(5)
        ]
        await until_queue(http, fake, running=2, waiting=3)
        read = await metrics(http, fake)
        assert read["vllm:num_requests_running"] == (
            2.0,
            {"model_name": "qwen", "engine": "0"},
            "Number of requests in model execution batches.",
            "gauge",
        )
        assert read["vllm:num_requests_waiting"][1:] == (
            {"model_name": "qwen", "engine": "0"},
            "Number of requests waiting to be processed.",
            "gauge",
        )
        # a full batch: below chainop's default maxKvCacheUsage, the queue decides
        assert read["vllm:kv_cache_usage_perc"][0] == FULL_BATCH_KV_CACHE_USAGE
        assert "vllm:gpu_cache_usage_perc" not in read
        assert fake.stats["engine"] == {"running": 2, "waiting": 3, "max_concurrency": 2}
        assert not any(call.done() for call in calls)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await until_queue(http, fake, running=0, waiting=0)
        assert fake.stats["cancelled"] == {"openai": 5}


async def test_waiters_are_served_in_arrival_order(http: httpx.AsyncClient) -> None:
    async with FakeBackend(name="fifo", max_concurrency=1) as fake:
        fake.set_mode("hang", fail_next=1)
        holder = asyncio.create_task(chat(http, fake))  # holds the slot: the others queue
        await until_queue(http, fake, running=1, waiting=0)
        done: list[str] = []

        async def ask(text: str) -> None:
            body = {"model": "m1", "messages": [{"role": "user", "content": text}]}
            reply = await http.post(fake.url + "/v1/chat/completions", json=body)
            done.append(reply.json()["choices"][0]["message"]["content"])

        tasks = []
        for number in range(4):  # one at a time into the queue, so the arrival order is known
            tasks.append(asyncio.create_task(ask(f"n{number}")))
            await until_queue(http, fake, running=1, waiting=number + 1)
        fake.configure(service_ms=20)
        holder.cancel()  # the slot frees: the queue drains one at a time
        await asyncio.gather(*tasks)
        assert done == [f"[fifo] echo: n{number}" for number in range(4)]
        await asyncio.gather(holder, return_exceptions=True)


async def test_slow_mode_is_the_service_time_inside_the_slot(http: httpx.AsyncClient) -> None:
    async with FakeBackend(name="slow", max_concurrency=1) as fake:
        fake.set_mode("slow", delay_ms=300)
        first = asyncio.create_task(chat(http, fake))
        await until_queue(http, fake, running=1, waiting=0)
        second = asyncio.create_task(chat(http, fake))
        await until_queue(http, fake, running=1, waiting=1)  # held up behind the slow one
        assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]
        assert await queue_of(http, fake) == (0, 0)


async def test_a_client_that_leaves_gives_up_its_place(http: httpx.AsyncClient) -> None:
    async with FakeBackend(name="leave", max_concurrency=1) as fake:
        fake.set_mode("hang", fail_next=1)
        running = asyncio.create_task(chat(http, fake))
        await until_queue(http, fake, running=1, waiting=0)
        leaving = asyncio.create_task(chat(http, fake))
        await until_queue(http, fake, running=1, waiting=1)
        staying = asyncio.create_task(chat(http, fake))
        await until_queue(http, fake, running=1, waiting=2)
        leaving.cancel()  # the client closes its connection while queued
        await until_queue(http, fake, running=1, waiting=1)
        assert fake.stats["cancelled"] == {"openai": 1}
        running.cancel()  # and the hung one: its slot goes to the next in line
        assert (await staying).status_code == 200
        assert fake.stats["cancelled"] == {"openai": 2}
        assert await queue_of(http, fake) == (0, 0)


async def test_a_larger_limit_admits_waiters_and_reset_restores_the_start_limit(
    http: httpx.AsyncClient,
) -> None:
    async with FakeBackend(name="grow", max_concurrency=1) as fake:
        fake.set_mode("hang", fail_next=1)
        hung = asyncio.create_task(chat(http, fake))
        await until_queue(http, fake, running=1, waiting=0)
        waiting = asyncio.create_task(chat(http, fake))
        await until_queue(http, fake, running=1, waiting=1)
        fake.configure(max_concurrency=2)
        assert (await waiting).status_code == 200
        fake.configure(max_concurrency=None)
        assert fake.stats["engine"]["max_concurrency"] is None
        fake.reset()  # the hung request is still in flight, and still counted
        assert fake.stats["engine"] == {"running": 1, "waiting": 0, "max_concurrency": 1}
        hung.cancel()
        await asyncio.gather(hung, return_exceptions=True)
        await until_queue(http, fake, running=0, waiting=0)


async def test_refusals_answer_at_once_past_a_full_queue(http: httpx.AsyncClient) -> None:
    async with FakeBackend(name="full", models=["m1"], max_concurrency=1) as fake:
        fake.set_mode("hang", fail_next=1)
        hung = asyncio.create_task(chat(http, fake))
        await until_queue(http, fake, running=1, waiting=0)
        other_model = {**CHAT, "model": "not-served"}
        assert (
            await http.post(fake.url + "/v1/chat/completions", json=other_model)
        ).status_code == 404
        fake.set_mode("error", status=503)
        assert (await chat(http, fake)).status_code == 503
        fake.set_mode("rate_limit")
        assert (await chat(http, fake)).status_code == 429
        fake.set_mode("healthy")
        assert (await http.get(fake.url + "/v1/models")).status_code == 200  # never queued
        assert await queue_of(http, fake) == (1, 0)
        hung.cancel()
        await asyncio.gather(hung, return_exceptions=True)


async def test_kv_cache_usage_follows_the_batch_or_is_pinned(
    http: httpx.AsyncClient,
) -> None:
    async with FakeBackend(name="kv", max_concurrency=4) as fake:
        assert (await metrics(http, fake))["vllm:kv_cache_usage_perc"][0] == 0.0
        fake.set_mode("hang", fail_next=1)
        hung = asyncio.create_task(chat(http, fake))
        await until_queue(http, fake, running=1, waiting=0)
        assert (await metrics(http, fake))["vllm:kv_cache_usage_perc"][0] == 0.2  # 0.8 x 1/4
        fake.configure(kv_cache_usage=0.97)
        assert (await metrics(http, fake))["vllm:kv_cache_usage_perc"][0] == 0.97
        fake.configure(kv_cache_usage=None)
        assert (await metrics(http, fake))["vllm:kv_cache_usage_perc"][0] == 0.2
        hung.cancel()
        await asyncio.gather(hung, return_exceptions=True)


async def test_the_old_cache_gauge_replaces_the_new_one(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.configure(cache_metric="vllm:gpu_cache_usage_perc")
    read = await metrics(http, backend)
    assert "vllm:kv_cache_usage_perc" not in read
    value, labels, documentation, kind = read["vllm:gpu_cache_usage_perc"]
    assert (value, kind) == (0.0, "gauge")
    assert labels == {"model_name": "beta-model", "engine": "0"}  # unset models: NAME-model
    assert documentation == "GPU KV-cache usage. 1 means 100 percent usage."


async def test_metrics_is_public_uncounted_and_can_be_absent(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.configure(api_key="sekret")
    backend.set_mode("error")  # modes are the engine's: the metrics endpoint still answers
    assert set(QUEUE_GAUGES) <= set(await metrics(http, backend))
    assert backend.stats["requests"] == {}
    assert backend.stats["metrics_reads"] == 1
    backend.configure(metrics=False)
    assert (await http.get(backend.url + "/metrics")).status_code == 404
    assert backend.stats["metrics_reads"] == 2


@pytest.mark.parametrize(
    "settings",
    [
        {"max_concurrency": 0},
        {"max_concurrency": "2"},
        {"max_concurrency": True},
        {"service_ms": -1},
        {"kv_cache_usage": 1.5},
        {"cache_metric": "vllm:cache"},
        {"metrics": "no"},
    ],
)
async def test_bad_queue_settings_are_refused(
    http: httpx.AsyncClient, backend: FakeBackend, settings: dict[str, Any]
) -> None:
    before = (await http.get(backend.url + "/_control")).json()
    response = await http.post(backend.url + "/_control", json=settings)
    assert response.status_code == 400
    assert (await http.get(backend.url + "/_control")).json() == before


def test_cli_max_concurrency_and_service_time() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chainop.testing.fake_backend",
            "--port",
            "0",
            "--max-concurrency",
            "3",
            "--service-ms",
            "5",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip().rsplit(" ", 1)[1]
        control = FakeBackendControl(url)
        assert control.stats()["engine"]["max_concurrency"] == 3
        settings = control.set()["settings"]
        assert (settings["max_concurrency"], settings["service_ms"]) == (3, 5.0)
        with httpx.Client(timeout=5.0) as client:
            assert client.post(url + "/v1/chat/completions", json=CHAT).status_code == 200
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()
