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
* streaming (``"stream": true``), read with ``httpx-sse`` as a client would, for both
  protocols and both framings (vLLM/Anthropic, llama.cpp): the echo arrives in several
  deltas and ends with its terminator; vLLM's chunk shapes (role chunk, the last token in
  the finishing chunk, the usage chunk only when asked); Anthropic's event order;
* the stream faults, each streamed and whole: ``stall_first_token`` (200 and headers, then
  nothing; with a delay, normal; its slot held until the client leaves), ``cut`` (tokens,
  then a connection closed without the end), ``error_event`` (vLLM's exact error chunk then
  ``[DONE]``; Anthropic's ``overloaded_error`` event), ``length_stop``; ``stream_chunk_ms``
  paces tokens; older modes still apply to streams; stream modes leave other routes alone;
* tool calls answered (whole and streamed, arguments in pieces, both protocols), only to
  requests that offer tools; tool calls and results in messages accepted and reported
  in one shape, broken pairing refused as the real APIs refuse it; ``answer_model``;
  steering over HTTP, and bad stream settings refused.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse
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


# --------------------------------------------------------------------------- streaming

ROUTES = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
TOOLS = {
    "openai": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "anthropic": [
        {
            "name": "get_weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ],
}
WEATHER = {"city": "Paris", "unit": "celsius"}
ASK = {"model": "m1", "messages": [{"role": "user", "content": "ping pong"}]}
ECHO = "[beta] echo: ping pong"
ECHO_PIECES = ["[beta]", " echo:", " ping", " pong"]


@dataclass
class Stream:
    """A streamed answer as a client assembles it, parsed with ``httpx-sse``."""

    status: int
    content_type: str
    events: list[ServerSentEvent] = field(default_factory=list)
    #: The read ended in an error (a cut connection, a timeout) instead of a clean close.
    broken: BaseException | None = None

    @property
    def names(self) -> list[str]:
        return [event.event for event in self.events]

    def datas(self) -> list[Any]:
        """The JSON of every event (``[DONE]`` left as the string)."""
        return [event.data if event.data == "[DONE]" else event.json() for event in self.events]

    @property
    def terminated(self) -> bool:
        """Whether the stream ended as a complete one does: ``[DONE]`` / ``message_stop``."""
        if not self.events:
            return False
        return self.events[-1].data == "[DONE]" or self.events[-1].event == "message_stop"

    def openai_chunks(self) -> list[dict[str, Any]]:
        return [data for data in self.datas() if isinstance(data, dict) and "choices" in data]

    def openai(self) -> dict[str, Any]:
        """Text, tool calls (by index), finish reason, models, usage of an OpenAI stream."""
        text = ""
        calls: dict[int, dict[str, Any]] = {}
        finish = None
        usage = None
        deltas = 0
        for chunk in self.openai_chunks():
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk["choices"]:
                delta = choice["delta"]
                if delta.get("content"):
                    text += delta["content"]
                    deltas += 1
                for call in delta.get("tool_calls") or []:
                    entry = calls.setdefault(call["index"], {"arguments": ""})
                    entry.update({k: call[k] for k in ("id", "type") if k in call})
                    function = call.get("function", {})
                    if "name" in function:
                        entry["name"] = function["name"]
                    if function.get("arguments"):
                        entry["arguments"] += function["arguments"]
                        deltas += 1
                finish = choice["finish_reason"] or finish
        return {
            "text": text,
            "calls": [calls[index] for index in sorted(calls)],
            "finish": finish,
            "models": {chunk["model"] for chunk in self.openai_chunks()},
            "usage": usage,
            "deltas": deltas,
        }

    def anthropic(self) -> dict[str, Any]:
        """Text, tool uses, stop reason, model of an Anthropic stream."""
        blocks: dict[int, dict[str, Any]] = {}
        stop = None
        model = None
        deltas = 0
        for event in self.events:
            data = event.json()
            assert data["type"] == event.event  # Anthropic names each event by its type
            if event.event == "message_start":
                model = data["message"]["model"]
            elif event.event == "content_block_start":
                blocks[data["index"]] = {**data["content_block"], "json": ""}
            elif event.event == "content_block_delta":
                delta = data["delta"]
                block = blocks[data["index"]]
                if delta["type"] == "text_delta":
                    block["text"] += delta["text"]
                    deltas += 1
                else:
                    assert delta["type"] == "input_json_delta"
                    block["json"] += delta["partial_json"]
                    deltas += bool(delta["partial_json"])
            elif event.event == "message_delta":
                stop = data["delta"]["stop_reason"]
        ordered = [blocks[index] for index in sorted(blocks)]
        return {
            "text": "".join(b["text"] for b in ordered if b["type"] == "text"),
            "calls": [
                {"id": b["id"], "name": b["name"], "input": partial_json(b["json"])}
                for b in ordered
                if b["type"] == "tool_use"
            ],
            "stop": stop,
            "model": model,
            "deltas": deltas,
        }


def partial_json(text: str) -> Any:
    """The JSON a tool call's pieces make, or the text itself when it was cut short."""
    try:
        return json.loads(text)
    except ValueError:
        return text


async def stream(
    http: httpx.AsyncClient,
    fake: FakeBackend,
    route: str,
    body: dict[str, Any] | None = None,
    *,
    read_timeout: float | None = None,
) -> Stream:
    """POST a streamed request and read every event until the stream ends or breaks."""
    payload = {**(body or ASK), "stream": True}
    timeout = httpx.Timeout(5.0, read=read_timeout) if read_timeout else http.timeout
    async with aconnect_sse(
        http, "POST", fake.url + ROUTES[route], json=payload, timeout=timeout
    ) as source:
        result = Stream(source.response.status_code, source.response.headers["content-type"])
        if result.status != 200:
            await source.response.aread()
            return result
        try:
            async for event in source.aiter_sse():
                result.events.append(event)
        except (httpx.RemoteProtocolError, httpx.ReadTimeout) as exc:
            result.broken = exc
    return result


async def drain(response: httpx.Response) -> tuple[bytes, httpx.TransportError | None]:
    """Every byte of a streamed body, and the error that ended the read (``None``: the
    server ended it)."""
    received = b""
    try:
        async for data in response.aiter_bytes():
            received += data
    except httpx.TransportError as exc:
        return received, exc
    return received, None


def assembled(result: Stream, route: str) -> dict[str, Any]:
    return result.openai() if route == "openai" else result.anthropic()


@pytest.mark.parametrize("style", ["vllm", "llama.cpp"])
@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_a_stream_assembles_the_echo_from_several_deltas(
    http: httpx.AsyncClient, backend: FakeBackend, route: str, style: str
) -> None:
    backend.configure(stream_style=style)
    result = await stream(http, backend, route)
    assert result.status == 200
    assert result.content_type.startswith("text/event-stream")
    assert result.broken is None
    assert result.terminated
    answer = assembled(result, route)
    assert answer["text"] == ECHO
    assert answer["deltas"] == len(ECHO_PIECES)
    assert answer["finish" if route == "openai" else "stop"] == (
        "stop" if route == "openai" else "end_turn"
    )


@pytest.mark.parametrize("include_usage", [False, True])
async def test_openai_stream_frames_as_vllm(
    http: httpx.AsyncClient, backend: FakeBackend, include_usage: bool
) -> None:
    body = {**ASK, "stream_options": {"include_usage": include_usage}}
    result = await stream(http, backend, "openai", body)
    assert result.names == ["message"] * len(result.events)  # data-only events
    assert result.events[-1].data == "[DONE]"
    chunks = result.openai_chunks()
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishing) == 1
    # vLLM sends the last token in the chunk that finishes
    assert finishing[0]["choices"][0]["delta"] == {"content": ECHO_PIECES[-1]}
    usage_chunks = [c for c in chunks if "usage" in c]
    if include_usage:
        assert usage_chunks == [chunks[-1]]
        assert chunks[-1]["choices"] == []
        usage = chunks[-1]["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    else:
        assert usage_chunks == []
        assert chunks[-1] is finishing[0]


async def test_openai_stream_frames_as_llama_cpp(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.configure(stream_style="llama.cpp")
    body = {**ASK, "stream_options": {"include_usage": True}}
    chunks = (await stream(http, backend, "openai", body)).openai_chunks()
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert set(chunks[0]) == {"choices", "created", "id", "model", "system_fingerprint", "object"}
    assert chunks[-2]["choices"] == [{"finish_reason": "stop", "index": 0, "delta": {}}]
    assert chunks[-1]["choices"] == []
    assert "timings" in chunks[-1]


async def test_anthropic_stream_events_in_order(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    result = await stream(http, backend, "anthropic")
    assert result.names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * len(ECHO_PIECES),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = result.events[0].json()["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert result.events[-2].json()["usage"]["output_tokens"] >= 1


@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_stall_first_token_sends_headers_then_nothing(
    http: httpx.AsyncClient, backend: FakeBackend, route: str
) -> None:
    backend.set_mode("stall_first_token")
    payload = {**ASK, "stream": True}
    timeout = httpx.Timeout(5.0, read=0.3)
    async with http.stream("POST", backend.url + ROUTES[route], json=payload, timeout=timeout) as r:
        assert r.status_code == 200  # the stream has begun...
        assert r.headers["content-type"].startswith("text/event-stream")
        received, ended = await drain(r)
        assert isinstance(ended, httpx.ReadTimeout)  # ...but nothing comes,
        assert received == b""  # not even a role chunk
    assert backend.stats["outcomes"][route] == {"stall_first_token": 1}


@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_stall_first_token_with_a_delay_then_streams_normally(
    http: httpx.AsyncClient, backend: FakeBackend, route: str
) -> None:
    backend.set_mode("stall_first_token", delay_ms=20)
    result = await stream(http, backend, route)
    assert result.terminated
    assert assembled(result, route)["text"] == ECHO
    whole = await http.post(backend.url + ROUTES[route], json=ASK)
    assert whole.status_code == 200


@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_stall_first_token_never_answers_a_whole_request(
    http: httpx.AsyncClient, backend: FakeBackend, route: str
) -> None:
    backend.set_mode("stall_first_token")
    with pytest.raises(httpx.ReadTimeout):
        await http.post(backend.url + ROUTES[route], json=ASK, timeout=httpx.Timeout(5.0, read=0.3))


async def test_a_stalled_stream_holds_its_slot_until_the_client_leaves(
    http: httpx.AsyncClient,
) -> None:
    async with FakeBackend(name="st", max_concurrency=1) as fake:
        fake.set_mode("stall_first_token", fail_next=1)
        stalled = asyncio.create_task(stream(http, fake, "openai"))
        await until_queue(http, fake, running=1, waiting=0)
        behind = asyncio.create_task(chat(http, fake))
        await until_queue(http, fake, running=1, waiting=1)
        stalled.cancel()  # the client gives up: its slot goes to the next in line
        assert (await behind).status_code == 200
        await asyncio.gather(stalled, return_exceptions=True)
        assert fake.stats["cancelled"] == {"openai": 1}


@pytest.mark.parametrize("style", ["vllm", "llama.cpp"])
@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_cut_sends_some_tokens_then_closes_without_the_end(
    http: httpx.AsyncClient, backend: FakeBackend, route: str, style: str
) -> None:
    backend.configure(stream_style=style)
    backend.set_mode("cut", after_chunks=3)
    result = await stream(http, backend, route)
    assert isinstance(result.broken, httpx.RemoteProtocolError)  # no last chunk
    assert not result.terminated
    answer = assembled(result, route)
    assert answer["text"] == "".join(ECHO_PIECES[:3])
    assert answer["finish" if route == "openai" else "stop"] is None
    assert "message_delta" not in result.names
    assert "[DONE]" not in result.datas()


@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_cut_drops_a_whole_request(
    http: httpx.AsyncClient, backend: FakeBackend, route: str
) -> None:
    backend.set_mode("cut")
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(backend.url + ROUTES[route], json=ASK)


async def test_error_event_is_vllms_error_chunk_then_done(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.set_mode("error_event", after_chunks=2)
    result = await stream(http, backend, "openai")
    assert result.broken is None
    assert result.openai()["text"] == "".join(ECHO_PIECES[:2])
    assert result.openai()["finish"] is None
    assert [event.data for event in result.events[-2:]] == [
        '{"error": {"message": "Internal server error", "type": "InternalServerError", '
        '"param": null, "code": 500}}',
        "[DONE]",
    ]


async def test_error_event_is_anthropics_overloaded_event(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.set_mode("error_event", after_chunks=1)
    result = await stream(http, backend, "anthropic")
    assert result.broken is None
    assert result.anthropic()["text"] == ECHO_PIECES[0]
    assert result.names[-1] == "error"
    assert "message_stop" not in result.names
    assert result.events[-1].json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


@pytest.mark.parametrize(("route", "status"), [("openai", 500), ("anthropic", 529)])
async def test_error_event_fails_a_whole_request_with_the_same_error(
    http: httpx.AsyncClient, backend: FakeBackend, route: str, status: int
) -> None:
    backend.set_mode("error_event")
    response = await http.post(backend.url + ROUTES[route], json=ASK)
    assert response.status_code == status
    kind = "InternalServerError" if route == "openai" else "overloaded_error"
    assert response.json()["error"]["type"] == kind


@pytest.mark.parametrize("stream_it", [True, False])
@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_length_stop_ends_short_with_length(
    http: httpx.AsyncClient, backend: FakeBackend, route: str, stream_it: bool
) -> None:
    backend.set_mode("length_stop", after_chunks=2)
    body = {**ASK, "max_tokens": 4096}  # far from reached: the context is what is full
    short = "".join(ECHO_PIECES[:2])
    if stream_it:
        result = await stream(http, backend, route, body)
        assert result.terminated
        assert result.broken is None
        answer = assembled(result, route)
        assert answer["text"] == short
        assert answer["finish" if route == "openai" else "stop"] == (
            "length" if route == "openai" else "max_tokens"
        )
        return
    data = (await http.post(backend.url + ROUTES[route], json=body)).json()
    if route == "openai":
        assert data["choices"][0]["message"]["content"] == short
        assert data["choices"][0]["finish_reason"] == "length"
    else:
        assert data["content"] == [{"type": "text", "text": short}]
        assert data["stop_reason"] == "max_tokens"


@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_stream_chunk_ms_paces_the_tokens(
    http: httpx.AsyncClient, backend: FakeBackend, route: str
) -> None:
    backend.configure(stream_chunk_ms=60_000)  # the second token is a minute away
    result = await stream(http, backend, route, read_timeout=0.3)
    assert isinstance(result.broken, httpx.ReadTimeout)
    assert assembled(result, route)["text"] == ECHO_PIECES[0]


@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_older_modes_apply_to_streams(
    http: httpx.AsyncClient, backend: FakeBackend, route: str
) -> None:
    backend.set_mode("error", status=503, fail_next=1)
    refused = await stream(http, backend, route)
    assert refused.status == 503
    assert not refused.events
    backend.set_mode("slow", delay_ms=10, fail_next=1)
    assert assembled(await stream(http, backend, route), route)["text"] == ECHO
    backend.set_mode("empty", fail_next=1)
    empty = await stream(http, backend, route)
    assert empty.terminated
    assert assembled(empty, route)["text"] == ""
    backend.set_mode("drop", fail_next=1)
    assert isinstance((await stream(http, backend, route)).broken, httpx.RemoteProtocolError)
    backend.set_mode("hang", fail_next=1)
    with pytest.raises(httpx.ReadTimeout):  # not even the headers
        await stream(http, backend, route, read_timeout=0.3)


async def test_stream_modes_leave_other_routes_alone(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    for mode in ("stall_first_token", "cut", "error_event", "length_stop"):
        backend.set_mode(mode)
        assert (await http.get(backend.url + "/v1/models")).status_code == 200
        assert (await http.get(backend.url + "/health")).status_code == 200


def tool_request(route: str, **extra: Any) -> dict[str, Any]:
    return {**ASK, "tools": TOOLS[route], **extra}


@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_tool_calls_answer_a_request_with_tools(
    http: httpx.AsyncClient, backend: FakeBackend, route: str
) -> None:
    backend.configure(tool_calls=[{"name": "get_weather", "arguments": json.dumps(WEATHER)}])
    data = (await http.post(backend.url + ROUTES[route], json=tool_request(route))).json()
    if route == "openai":
        choice = data["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        [call] = choice["message"]["tool_calls"]
        assert call["type"] == "function"
        assert call["id"]
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == WEATHER
    else:
        assert data["stop_reason"] == "tool_use"
        [use] = data["content"]
        assert use["type"] == "tool_use"
        assert use["id"].startswith("toolu_")
        assert (use["name"], use["input"]) == ("get_weather", WEATHER)


@pytest.mark.parametrize("style", ["vllm", "llama.cpp"])
@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_tool_calls_stream_with_arguments_in_pieces(
    http: httpx.AsyncClient, backend: FakeBackend, route: str, style: str
) -> None:
    backend.configure(
        stream_style=style,
        tool_calls=[
            {"name": "get_weather", "arguments": WEATHER},
            {"name": "get_time", "arguments": "{}", "id": "given-id"},
        ],
    )
    result = await stream(http, backend, route, tool_request(route))
    assert result.terminated
    answer = assembled(result, route)
    assert answer["text"] == ""
    assert answer["deltas"] > 2  # the arguments arrived in pieces
    if route == "openai":
        assert answer["finish"] == "tool_calls"
        assert [(c["name"], json.loads(c["arguments"])) for c in answer["calls"]] == [
            ("get_weather", WEATHER),
            ("get_time", {}),
        ]
        assert {c["type"] for c in answer["calls"]} == {"function"}
        assert answer["calls"][1]["id"] == "given-id"
    else:
        assert answer["stop"] == "tool_use"
        assert [(c["name"], c["input"]) for c in answer["calls"]] == [
            ("get_weather", WEATHER),
            ("get_time", {}),
        ]
        assert answer["calls"][1]["id"] == "given-id"


@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_length_stop_cuts_a_tool_call_short(
    http: httpx.AsyncClient, backend: FakeBackend, route: str
) -> None:
    backend.configure(tool_calls=[{"name": "get_weather", "arguments": WEATHER}])
    backend.set_mode("length_stop", after_chunks=1)
    response = await http.post(backend.url + ROUTES[route], json=tool_request(route))
    assert response.status_code == 200
    data = response.json()
    if route == "openai":
        assert data["choices"][0]["finish_reason"] == "length"
        [call] = data["choices"][0]["message"]["tool_calls"]
        arguments = call["function"]["arguments"]
        assert json.dumps(WEATHER).startswith(arguments)
        assert arguments != json.dumps(WEATHER)
    else:
        assert data["stop_reason"] == "max_tokens"
        assert [block["type"] for block in data["content"]] == ["tool_use"]
    answer = assembled(await stream(http, backend, route, tool_request(route)), route)
    assert answer["finish" if route == "openai" else "stop"] == (
        "length" if route == "openai" else "max_tokens"
    )


@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_a_request_without_tools_gets_text_despite_tool_calls(
    http: httpx.AsyncClient, backend: FakeBackend, route: str
) -> None:
    backend.configure(tool_calls=[{"name": "get_weather", "arguments": WEATHER}])
    assert assembled(await stream(http, backend, route), route)["text"] == ECHO


CONVERSATIONS = {
    "openai": [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps(WEATHER)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ],
    "anthropic": [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": WEATHER}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18 C"}],
        },
    ],
}


@pytest.mark.parametrize("stream_it", [True, False])
@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_tool_calls_and_results_in_messages_arrive_translated(
    http: httpx.AsyncClient, backend: FakeBackend, route: str, stream_it: bool
) -> None:
    body = tool_request(route, messages=CONVERSATIONS[route])
    if stream_it:
        text = assembled(await stream(http, backend, route, body), route)["text"]
    else:
        data = (await http.post(backend.url + ROUTES[route], json=body)).json()
        text = (
            data["choices"][0]["message"]["content"]
            if route == "openai"
            else data["content"][0]["text"]
        )
    assert text == "[beta] echo: tool_result call_1: 18 C"
    assert backend.stats["last_request"][route]["tools"] == {
        "offered": ["get_weather"],
        "calls": [{"id": "call_1", "name": "get_weather", "arguments": json.dumps(WEATHER)}],
        "results": [{"id": "call_1", "content": "18 C"}],
    }


BROKEN_TOOL_TRAFFIC = [
    # a tool result that answers no call
    (
        "openai",
        [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c9", "content": "1"}],
    ),
    # a call left unanswered before the conversation goes on
    (
        "openai",
        [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "user", "content": "and?"},
        ],
    ),
    # arguments as an object: OpenAI sends them as a string
    (
        "openai",
        [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}}
                ],
            }
        ],
    ),
    # OpenAI's tool role on the Messages API
    ("anthropic", [{"role": "tool", "tool_call_id": "c1", "content": "1"}]),
    # a tool_use without its tool_result in the next message
    (
        "anthropic",
        [
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}],
            },
            {"role": "user", "content": "and?"},
        ],
    ),
    # a tool_result for a call the previous message did not make
    (
        "anthropic",
        [
            {"role": "user", "content": "x"},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "1"}],
            },
        ],
    ),
]


@pytest.mark.parametrize(("route", "messages"), BROKEN_TOOL_TRAFFIC)
async def test_tool_traffic_a_real_api_refuses_is_refused(
    http: httpx.AsyncClient, backend: FakeBackend, route: str, messages: list[dict[str, Any]]
) -> None:
    response = await http.post(backend.url + ROUTES[route], json={**ASK, "messages": messages})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == ("BadRequestError" if route == "openai" else "invalid_request_error")


@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_tools_of_the_other_api_are_refused(
    http: httpx.AsyncClient, backend: FakeBackend, route: str
) -> None:
    other = "anthropic" if route == "openai" else "openai"
    response = await http.post(backend.url + ROUTES[route], json={**ASK, "tools": TOOLS[other]})
    assert response.status_code == 400


@pytest.mark.parametrize("route", ["openai", "anthropic"])
async def test_answer_model_names_another_model(
    http: httpx.AsyncClient, backend: FakeBackend, route: str
) -> None:
    backend.configure(answer_model="other-model")
    whole = (await http.post(backend.url + ROUTES[route], json=ASK)).json()
    assert whole["model"] == "other-model"
    answer = assembled(await stream(http, backend, route), route)
    if route == "openai":
        assert answer["models"] == {"other-model"}
    else:
        assert answer["model"] == "other-model"
    backend.configure(answer_model=None)
    assert (await http.post(backend.url + ROUTES[route], json=ASK)).json()["model"] == "m1"


async def test_stream_steering_over_http(http: httpx.AsyncClient, backend: FakeBackend) -> None:
    control = FakeBackendControl(backend.url)
    described = await control.aset(mode="cut", after_chunks=1, route="anthropic")
    assert described["routes"]["anthropic"]["after_chunks"] == 1
    await control.aset(answer_model="x", tool_calls=[{"name": "f", "arguments": "{}"}])
    assert (await stream(http, backend, "openai")).terminated  # only anthropic is cut
    assert not (await stream(http, backend, "anthropic")).terminated
    await control.areset()
    assert backend.state.settings.tool_calls is None
    assert backend.state.settings.answer_model is None


@pytest.mark.parametrize(
    "payload",
    [
        {"mode": "cut", "after_chunks": -1},
        {"mode": "cut", "after_chunks": True},
        {"stream_style": "tgi"},
        {"stream_chunk_ms": -5},
        {"answer_model": ""},
        {"tool_calls": []},
        {"tool_calls": [{"arguments": "{}"}]},
        {"tool_calls": [{"name": "f", "arguments": "not json"}]},
        {"tool_calls": [{"name": "f", "arguments": [1, 2]}]},
        {"tool_calls": [{"name": "f", "colour": "red"}]},
    ],
)
async def test_bad_stream_steering_is_refused(
    http: httpx.AsyncClient, backend: FakeBackend, payload: dict[str, Any]
) -> None:
    response = await http.post(backend.url + "/_control", json=payload)
    assert response.status_code == 400
    result = await stream(http, backend, "openai")
    assert result.terminated
    assert result.openai()["text"] == ECHO
