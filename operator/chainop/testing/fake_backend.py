"""A real HTTP server that speaks the OpenAI, Anthropic and jobs protocols, and breaks on cue.

Tests, the demo and benchmarks run chainop against this server on 127.0.0.1 instead of
mocks, so the bytes, sockets, timeouts and half-closed connections are real (DESIGN.md,
"Where it runs"). It answers deterministically: the text is ``[NAME] echo: <last user
message>``, with token counts of about characters/4, so a test can tell who answered.

Routes::

    POST /chat/completions, /v1/chat/completions   route "openai"
    POST /v1/messages, /messages                    route "anthropic"
    POST /jobs                                      route "jobs"       (submit)
    GET  /jobs/{id}                                 route "jobs_poll"
    GET  /models, /v1/models                        route "models"
    GET  /health                                    route "health"     (no API key needed)
    GET  /metrics                                   vLLM's Prometheus text (see "Queue")
    POST /_control   GET /_control   GET /_stats   POST /_reset     (not counted)

``GET /health`` answers 200 with an empty body, as vLLM does
(``vllm/entrypoints/serve/instrumentator/health.py``: ``Response(status_code=200)``).

Steering (``POST /_control`` with a JSON object, or :meth:`FakeBackend.set_mode`): a
*mode* applies to one ``route`` or, without one, to every route that has no mode of its
own. Each call replaces that scope's mode; ``{"route": R, "mode": "inherit"}`` drops R's.

==================  ===========================================================================
mode                behaviour
==================  ===========================================================================
healthy             a normal answer
error               HTTP ``status`` (500) with ``body`` (the server's error envelope, see
                    below, by default) and any extra ``headers``; ``echo_headers: true`` puts
                    the request headers into the body, to check that clients redact secrets
                    a misbehaving server reflects
slow                sleep ``delay_ms`` then answer normally
hang                never answer (until the client gives up or the server stops)
drop                send the status line, headers and half the body, then close the socket
rate_limit          HTTP 429 with ``Retry-After: retry_after`` (1) and OpenAI's 429 body
unknown_model       HTTP 404 with OpenAI's model-not-found body naming the requested model
malformed           HTTP 200 with a body that is not JSON
empty               HTTP 200 with empty ``choices`` / ``content`` / result text / model list
hung_engine         the vLLM engine-dead case: ``/models``, ``/health`` and job polls answer
                    normally, completions, messages and job submissions never answer; set it
                    globally (``set_mode("hung_engine")``), it only touches those routes
loading             llama.cpp loading its model: every route answers 503 with exactly
                    ``{"error":{"code":503,"message":"Loading model","type":
                    "unavailable_error"}}`` (``application/json; charset=utf-8``), as
                    ``middleware_server_state`` in llama.cpp's ``tools/server/
                    server-http.cpp`` does for every path until the model is loaded
reply               exactly ``status``, ``headers`` (an object of strings, Content-Type
                    included) and ``body`` (a string sent byte for byte), with no header of
                    the fake's own: replays a recorded real reply over a real socket
stall_first_token   a hung engine seen by a stream: the 200 and its headers go out, then no
                    token until the client gives up; with ``delay_ms``, the stream starts
                    normally after that long (a slow first token)
cut                 ``after_chunks`` (2) content chunks, then the connection closes without
                    the rest, the terminator (``[DONE]`` / ``message_stop``) or the chunked
                    encoding's last chunk
error_event         ``after_chunks`` content chunks, then the server's mid-stream error:
                    vLLM's ``data: {"error": {"message": "Internal server error", "type":
                    "InternalServerError", "param": null, "code": 500}}`` followed by a
                    normal ``data: [DONE]``; Anthropic's ``event: error`` with
                    ``{"type": "error", "error": {"type": "overloaded_error", "message":
                    "Overloaded"}}``, ending the stream; ``body`` (an object) replaces them
length_stop         the context-full case: ``after_chunks`` content chunks, then a normal end
                    with ``finish_reason: "length"`` / ``stop_reason: "max_tokens"``, whatever
                    the request's ``max_tokens``
==================  ===========================================================================

The last four are faults *inside generation*: they touch only the chat completions and
messages routes (every other route answers normally) and they act on streamed requests
(``"stream": true``); a non-streamed request meets the same fault as a real server shows
it to one: ``stall_first_token`` never answers (or answers ``delay_ms`` late), ``cut`` is
``drop``, ``error_event`` is an error status with the same body (vLLM: 500, as
``_convert_generation_error_to_response`` answers a ``GenerationError``; Anthropic: 529),
``length_stop`` a whole answer of ``after_chunks`` pieces ending in ``length`` /
``max_tokens``. Every older mode keeps its behaviour for streamed requests too:
``hang`` sends not even headers, ``slow`` waits then streams, ``error``/``rate_limit``/...
refuse with a status before any stream, ``empty`` streams no content, ``drop`` promises
the whole stream in Content-Length and sends half of it.

Error envelopes follow the servers: the Messages route answers Anthropic's ``{"type":
"error", "error": {"type", "message"}}`` (docs.anthropic.com/en/api/errors); every other
route answers vLLM's current ``{"error": {"message", "type", "param", "code"}}`` (vLLM
main as of 2026, ``ErrorResponse``/``ErrorInfo`` in ``vllm/entrypoints/openai/engine/
protocol.py``, built by ``create_error_response`` in ``.../engine/serving.py``; older
vLLM releases sent the flat ``{"object": "error", ...}``), with ``type``
``BadRequestError`` (400), ``NotFoundError`` (404), ``InternalServerError`` (500, and
other 5xx) and the HTTP status as ``code``. A model outside the served ones gets vLLM's
exact 404, ``{"error":{"message":"The model `X` does not exist.","type":"NotFoundError",
"param":"model","code":404}}`` (``_check_model`` in ``.../engine/serving.py``).

``fail_next: N`` makes only the next N requests of the scope misbehave (in ``mode``,
``error`` by default), after which it is healthy again: the shape of a transient fault.
Giving ``delay_ms`` without a mode means ``slow``.

Streaming: a chat completion or message whose body has ``"stream": true`` is answered as
server-sent events (``text/event-stream; charset=utf-8``, chunked), the text split into
word-sized deltas (``" hello"``, each word with the spaces before it) so a client must
join them; ``stream_chunk_ms`` (0) is the pause between chunks once the first token is
out. The framing is copied from the servers (``stream_style``, ``vllm`` by default):

- OpenAI route, ``vllm``: ``chat_completion_stream_generator`` in vLLM's
  ``vllm/entrypoints/openai/chat_completion/serving.py`` -- ``data: {chunk}\n\n`` per
  ``chat.completion.chunk`` (``id``, ``object``, ``created``, ``model``, ``choices:
  [{index, delta, logprobs, finish_reason}]``); the first delta ``{"role": "assistant",
  "content": ""}``; the last token in the chunk with ``finish_reason`` (and
  ``stop_reason``); with ``stream_options.include_usage`` a chunk with ``choices: []`` and
  ``usage``; then ``data: [DONE]\n\n``. Tool calls stream as ``delta.tool_calls: [{index,
  id, type: "function", function: {name, arguments: ""}}]``, then the JSON arguments in
  pieces (``[{index, function: {arguments}}]``), ending in ``finish_reason:
  "tool_calls"``, as vLLM's tool parsers send them.
- Messages route, ``vllm`` (Anthropic's own framing, from the SDK's
  ``tests/lib/streaming/fixtures/basic_response.txt`` and ``tool_use_response.txt``):
  ``event: NAME\ndata: {json}\n\n`` for ``message_start``, ``content_block_start``,
  ``ping``, ``content_block_delta`` (``text_delta``; ``input_json_delta`` with
  ``partial_json``, the first one empty, for a ``tool_use`` block opened with ``input:
  {}``), ``content_block_stop``, ``message_delta`` (``stop_reason``, ``stop_sequence``,
  ``usage.output_tokens``), ``message_stop``.
- ``llama.cpp``: llama-server b11434's framing as recorded from the real server (and
  checked against it by ``tests/integration/test_stream_framing.py``): chunk keys
  ``choices, created, id, model, system_fingerprint, object``, choices ``{finish_reason,
  index, delta}``, a first delta with ``"content": null``, the finish in a chunk of its
  own with ``delta: {}`` (and ``timings``), the usage chunk only with ``include_usage``;
  on ``/v1/messages`` no ``ping`` and ``message_start`` usage ``{cache_read_input_tokens,
  input_tokens, output_tokens: 0}``.

Tool calls: the setting ``tool_calls: [{name, arguments, id?}]`` (``arguments`` a JSON
object or its text) makes the answer to a request that offers ``tools`` those calls
instead of text (a model calls no tool it was not offered; a request without tools still
gets the echo): OpenAI ``choices[0].message: {role, content: null, tool_calls: [{id,
type: "function", function: {name, arguments}}]}``, ``finish_reason: "tool_calls"``;
Anthropic ``content: [{type: "tool_use", id, name, input}]``, ``stop_reason:
"tool_use"``; streamed as above. Ids are ``chatcmpl-tool-NAME-N-I`` / ``toolu_NAME_N_I``
(N the route's request count, I the call's index) unless given. Requests may carry tool
calls and results: OpenAI assistant ``tool_calls`` and ``role: tool`` messages with
``tool_call_id``; Anthropic ``tool_use`` blocks and ``tool_result`` blocks. They are
checked as the real APIs check them -- the calls of an assistant message are answered by
the ``role: tool`` messages right after it, each id once (OpenAI); no ``tool`` role, and
every ``tool_use`` paired with a ``tool_result`` in the next message and back
(Anthropic); ``tools`` entries must be the API's own shape -- and a request that breaks
them gets a 400 with the server's envelope before the queue. ``GET /_stats``
``last_request[route]["tools"]`` holds what arrived, in one shape for both protocols:
``{"offered": [name], "calls": [{id, name, arguments (JSON text)}], "results": [{id,
content}]}``; and when the conversation ends with tool results, the echo names them
instead of the last user text: ``[NAME] echo: tool_result ID: CONTENT``.

``answer_model: "other"``: replies (whole and streamed) name this model in ``model``
instead of the requested one -- a server redeployed with another model, or a gateway
that rerouted; ``null`` goes back.

Settings (same endpoint, independent of modes): ``job_delay_ms`` (how long a job stays
queued/running), ``job_status`` (``succeeded`` or ``failed``) and ``job_error`` (the
``error`` of a failed job), ``models`` (only these models are served: ``/models`` lists
them and a request for another gets vLLM's 404; changing it at runtime is a redeploy with
another ``--served-model-name``; unset, any model is answered and ``NAME-model`` and
``fake-model`` are listed, NAME being ``--name``), ``served_model`` (one name: the same
as ``models: [name]``), ``api_key``
(require ``Authorization: Bearer`` or ``x-api-key`` with it, else 401; ``/health`` stays
public). ``FakeBackend(models=[...])`` and ``--served-model-name`` set the models served
from the start (kept by ``reset``). The queue's settings (``max_concurrency``,
``service_ms``, ``kv_cache_usage``, ``cache_metric``, ``metrics``) are described under
"Queue" below.

Queue (settings ``max_concurrency``, ``service_ms``): the fake serves chat completions
and messages the way vLLM's scheduler admits them -- at most ``max_concurrency`` requests
are *running* at once, the others *wait* in arrival order (FIFO) and start as running ones
finish; unset (``None``, the default) means no limit, as before. ``service_ms`` is how
long one request takes once it runs (0 by default: at once). A ``slow`` mode's
``delay_ms`` is that request's service time instead of ``service_ms`` (the mode is the
more specific of the two, so a route or ``fail_next`` can make a few requests slow on a
queueing server), spent *inside* its slot, so slow requests hold up the ones behind them
as on a real server; ``hang``/``hung_engine`` requests hold their slot for ever. Only
answers that need the engine queue (modes ``healthy``, ``slow``, ``hang``,
``hung_engine``, ``drop``, ``empty``); refusals (``error``, ``rate_limit``,
``unknown_model``, ``loading``, ``malformed``, ``reply``, 401, an unserved model's 404)
answer at once, as the API server answers them before the scheduler sees the request.
Job submissions never queue (``job_delay_ms`` is their run time). A client that
disconnects while waiting or running leaves the queue and frees its slot (vLLM aborts a
request whose client went away); ``GET /_stats`` counts those under ``cancelled`` per
route, which is how a test sees that a cancelled hedge really closed its connection.
Changing ``max_concurrency`` at runtime admits waiting requests at once if it grew;
``reset`` keeps the requests in flight and their slots (they are real connections) and
goes back to the limit given at start (``FakeBackend(max_concurrency=...)``,
``--max-concurrency``).

``GET /metrics`` answers the live queue in vLLM's Prometheus text exposition, generated by
``prometheus_client`` as vLLM does (``PrometheusStatLogger`` in vLLM's
``vllm/v1/metrics/loggers.py``: gauges with the labels ``model_name`` -- the served model
name -- and ``engine`` -- the engine index, ``"0"`` for one engine), with their ``# HELP``
and ``# TYPE`` lines::

    vllm:num_requests_running{engine="0",model_name="M"}  requests being served now
    vllm:num_requests_waiting{engine="0",model_name="M"}  requests queued behind them
    vllm:kv_cache_usage_perc{engine="0",model_name="M"}   0-1: 0.8 x running / limit

The KV cache fills with the batch: ``FULL_BATCH_KV_CACHE_USAGE`` (0.8) x ``running /
max_concurrency`` (0 without a limit) -- a server whose batch size (vLLM's
``--max-num-seqs``), not its cache, makes requests queue, so a full batch stays below
chainop's default ``maxKvCacheUsage`` (0.95) and the queue alone decides saturation. The
setting ``kv_cache_usage`` (0-1, ``null`` to go back) pins the value instead, to test a
KV-cache limit apart from the queue. ``cache_metric: "vllm:gpu_cache_usage_perc"`` publishes the
old name, as vLLM up to 0.8 did (renamed in 0.9), instead of ``vllm:kv_cache_usage_perc``.
``metrics: false`` makes ``/metrics`` a 404, a server that exposes none. ``/metrics``
follows no mode (vLLM's API server answers it from its own process, whatever the engine
does), needs no API key (vLLM's ``--api-key`` guards ``/v1`` only) and is not a route of
``requests``/``outcomes`` in ``GET /_stats`` (a load-signal reader would otherwise change
the counts every probe-based test asserts); it is counted apart, as ``metrics_reads``.

Jobs are deduplicated by ``idempotency_key``: the same key answers the same id and is not
a new submission. ``GET /_stats`` counts requests per route, outcomes per route and mode,
``job_posts`` (every POST /jobs per key, repeats included) and ``job_submissions`` (jobs
created per key: one each, unless deduplication broke), so a test can assert "exactly
one submission per task".

Run it as ``python -m chainop.testing.fake_backend --port PORT [--host 127.0.0.1]
[--name NAME] [--mode healthy] [--served-model-name MODEL ...] [--max-concurrency N]
[--service-ms MS]``; it prints
``fake-backend NAME listening on URL`` once it accepts connections. In tests use
:class:`FakeBackend` (async) or :class:`FakeBackendThread` (sync); steer one in another
process with :class:`FakeBackendControl`. No per-request logging: benchmarks measure
throughput with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import signal
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Final

import httpx
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

ROUTES: Final = ("openai", "anthropic", "jobs", "jobs_poll", "models", "health")
#: Routes that need the engine: a hung engine never answers them.
GENERATION_ROUTES: Final = frozenset({"openai", "anthropic", "jobs"})
#: Routes whose requests wait in the engine's queue (a job submission is only recorded).
QUEUED_ROUTES: Final = frozenset({"openai", "anthropic"})
#: Modes whose answer comes from the engine, so they queue; the others answer at once.
ENGINE_MODES: Final = frozenset(
    {
        "healthy",
        "slow",
        "hang",
        "hung_engine",
        "drop",
        "empty",
        "stall_first_token",
        "cut",
        "error_event",
        "length_stop",
    }
)
#: Modes of a fault inside generation: they touch only the chat and messages routes.
STREAM_MODES: Final = frozenset({"stall_first_token", "cut", "error_event", "length_stop"})
#: Whose stream framing the fake copies (see "Streaming" in the module docstring).
STREAM_STYLES: Final = ("vllm", "llama.cpp")
#: vLLM's ``StreamingResponse(media_type="text/event-stream")`` as Starlette sends it.
SSE_CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
#: How many content chunks ``cut``, ``error_event`` and ``length_stop`` send by default.
DEFAULT_AFTER_CHUNKS: Final = 2
#: Characters of a tool call's JSON arguments per streamed chunk.
ARGUMENT_PIECE_CHARS: Final = 8
#: vLLM's mid-stream error: ``GenerationError("Internal server error")`` (raised by
#: ``_raise_if_error`` for ``finish_reason == "error"``) turned into ``{"error":
#: ErrorInfo}`` by ``_convert_generation_error_to_streaming_response``
#: (``vllm/entrypoints/generate/base/serving.py``, ``json.dumps`` of the model dump), and
#: sent as ``data: ...`` before the usual ``data: [DONE]`` by the chat stream generator.
VLLM_STREAM_ERROR: Final = {
    "error": {
        "message": "Internal server error",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
}
#: Anthropic's mid-stream error event (docs "Streaming Messages", error events; the SDK's
#: ``tests/test_streaming.py``).
ANTHROPIC_STREAM_ERROR: Final = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded"},
}
#: ``system_fingerprint`` of the llama.cpp-style chunks (llama-server sends ``b<build>-<commit>``).
LLAMA_FINGERPRINT: Final = "b0-fake"
#: The KV-cache gauge's names: vLLM's current one, and the one it had up to 0.8.
CACHE_METRICS: Final = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
#: ``# HELP`` texts of the gauges, as vLLM writes them (``vllm/v1/metrics/loggers.py``;
#: the old cache name with its text from before the rename).
METRIC_HELP: Final = {
    "vllm:num_requests_running": "Number of requests in model execution batches.",
    "vllm:num_requests_waiting": "Number of requests waiting to be processed.",
    "vllm:kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    "vllm:gpu_cache_usage_perc": "GPU KV-cache usage. 1 means 100 percent usage.",
}
#: The labels vLLM puts on every engine gauge (``labelnames`` in ``PrometheusStatLogger``).
METRIC_LABELS: Final = ("model_name", "engine")
#: KV-cache usage reported when every slot runs (see "Queue" in the module docstring).
FULL_BATCH_KV_CACHE_USAGE: Final = 0.8
#: The classic text exposition format, the one ``generate_latest`` writes.
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MODES: Final = (
    "healthy",
    "error",
    "slow",
    "hang",
    "drop",
    "rate_limit",
    "unknown_model",
    "malformed",
    "empty",
    "hung_engine",
    "loading",
    "reply",
    "stall_first_token",
    "cut",
    "error_event",
    "length_stop",
)
MODE_KEYS: Final = frozenset(
    {
        "mode",
        "status",
        "body",
        "headers",
        "delay_ms",
        "retry_after",
        "fail_next",
        "echo_headers",
        "after_chunks",
    }
)
SETTING_KEYS: Final = frozenset(
    {
        "job_delay_ms",
        "job_status",
        "job_error",
        "models",
        "served_model",
        "api_key",
        "max_concurrency",
        "service_ms",
        "kv_cache_usage",
        "cache_metric",
        "metrics",
        "stream_chunk_ms",
        "stream_style",
        "tool_calls",
        "answer_model",
    }
)
#: llama.cpp's reply to every route while it loads the model, byte for byte:
#: ``tools/server/server-http.cpp`` (``middleware_server_state``), serialised by
#: nlohmann::json, whose objects sort their keys.
LOADING_BODY: Final = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
LOADING_CONTENT_TYPE: Final = "application/json; charset=utf-8"
#: vLLM's ``ErrorInfo.type`` per status (``create_error_response`` in
#: ``vllm/entrypoints/openai/engine/serving.py``); other statuses keep OpenAI's types.
VLLM_ERROR_TYPES: Final = {
    400: "BadRequestError",
    404: "NotFoundError",
    500: "InternalServerError",
    501: "NotImplementedError",
}
#: Anthropic's ``error.type`` per status (docs.anthropic.com/en/api/errors).
ANTHROPIC_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
JOB_STATUSES: Final = ("succeeded", "failed")
DEFAULT_MODEL: Final = "fake-model"
#: Nominal prices of the fake, used for the jobs protocol's ``cost_usd``.
INPUT_USD_PER_TOKEN: Final = 0.5e-6
OUTPUT_USD_PER_TOKEN: Final = 1.5e-6
#: How long a stopping server waits for in-flight requests (hung ones never finish).
SHUTDOWN_TIMEOUT: Final = 0.25


class ControlError(ValueError):
    """A steering request the fake cannot honour (unknown mode, route or key)."""


@dataclass(frozen=True, slots=True)
class ModeConfig:
    """How one scope (a route, or all routes) behaves."""

    mode: str = "healthy"
    status: int = 500
    body: Any = None
    headers: dict[str, str] | None = None
    delay_ms: float = 0.0
    retry_after: float = 1.0
    fail_next: int | None = None
    echo_headers: bool = False
    after_chunks: int = DEFAULT_AFTER_CHUNKS


@dataclass(slots=True)
class Settings:
    """Behaviour that is not a failure mode."""

    job_delay_ms: float = 0.0
    job_status: str = "succeeded"
    job_error: Any = None
    models: list[str] | None = None
    api_key: str | None = None
    max_concurrency: int | None = None
    service_ms: float = 0.0
    kv_cache_usage: float | None = None
    cache_metric: str = CACHE_METRICS[0]
    metrics: bool = True
    stream_chunk_ms: float = 0.0
    stream_style: str = STREAM_STYLES[0]
    tool_calls: list[dict[str, Any]] | None = None
    answer_model: str | None = None


class EngineQueue:
    """Admission like vLLM's scheduler: at most ``limit`` requests run, the rest wait FIFO.

    Hand-made rather than an ``asyncio.Semaphore`` because the limit changes at runtime
    (``max_concurrency``) and ``/metrics`` must tell how many wait; a slot is handed over
    straight to the first waiter, so a newcomer never overtakes the queue.
    """

    def __init__(self) -> None:
        self.limit: int | None = None
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests queued behind the running ones."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def _has_room(self) -> bool:
        return self.limit is None or self.running < self.limit

    async def acquire(self) -> None:
        """Return once this request holds a slot; leave the queue if cancelled meanwhile."""
        if not self._waiters and self._has_room():
            self.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as the client went away: pass the slot on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Free a slot: the first waiter gets it."""
        self.running -= 1
        self._admit()

    def set_limit(self, limit: int | None) -> None:
        """Change the limit; a larger one (or none) admits waiters at once."""
        self.limit = limit
        self._admit()

    def _admit(self) -> None:
        while self._waiters and self._has_room():
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled, not yet removed by its task
                continue
            self.running += 1
            waiter.set_result(None)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()


@dataclass(slots=True)
class Job:
    """A submitted job; it finishes ``delay`` seconds after ``created``."""

    id: str
    key: str
    model: str
    prompt: str
    input_tokens: int
    created: float
    delay: float
    outcome: str
    error: Any


@dataclass(slots=True)
class BackendState:
    """Everything a fake backend remembers; steered by ``configure``, read by ``stats``."""

    name: str
    default_mode: str = "healthy"
    #: The models served from the start (``--served-model-name``); reset keeps them.
    default_models: list[str] | None = None
    #: The queue limit given at start (``--max-concurrency``); reset goes back to it.
    default_max_concurrency: int | None = None
    global_mode: ModeConfig = field(default_factory=ModeConfig)
    route_modes: dict[str, ModeConfig] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    requests: Counter[str] = field(default_factory=Counter)
    outcomes: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    job_posts: Counter[str] = field(default_factory=Counter)
    job_submissions: Counter[str] = field(default_factory=Counter)
    jobs: dict[str, Job] = field(default_factory=dict)
    job_ids_by_key: dict[str, str] = field(default_factory=dict)
    last_request: dict[str, dict[str, Any]] = field(default_factory=dict)
    job_counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    #: Requests whose client went away while they waited or ran, per route.
    cancelled: Counter[str] = field(default_factory=Counter)
    metrics_reads: int = 0
    engine: EngineQueue = field(default_factory=EngineQueue)

    def __post_init__(self) -> None:
        self.global_mode = ModeConfig(mode=_checked_mode(self.default_mode))
        if self.default_models is not None:
            self.settings.models = list(self.default_models)
        if self.default_max_concurrency is not None:
            self.settings.max_concurrency = _checked_limit(self.default_max_concurrency)
        self.engine.set_limit(self.settings.max_concurrency)

    def reset(self) -> None:
        """Forget modes, settings, counters and jobs (the name, start mode, start models
        and start queue limit stay; so does the queue: its requests are still in flight)."""
        fresh = BackendState(
            name=self.name,
            default_mode=self.default_mode,
            default_models=self.default_models,
            default_max_concurrency=self.default_max_concurrency,
        )
        for name in self.__dataclass_fields__:
            if name != "engine":
                setattr(self, name, getattr(fresh, name))
        self.engine.set_limit(self.settings.max_concurrency)

    def configure(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a ``/_control`` payload; raise ControlError on anything unknown."""
        unknown = set(payload) - MODE_KEYS - SETTING_KEYS - {"route"}
        if unknown:
            raise ControlError(f"unknown control keys: {sorted(unknown)}")
        route = payload.get("route")
        if route is not None and route not in ROUTES:
            raise ControlError(f"unknown route {route!r}; routes: {', '.join(ROUTES)}")
        if payload.get("mode") == "inherit":
            if route is None:
                raise ControlError("mode 'inherit' needs a route")
            self.route_modes.pop(route, None)
        elif MODE_KEYS & set(payload):
            config = _mode_config(payload)
            if route is None:
                self.global_mode = config
            else:
                self.route_modes[route] = config
        self._apply_settings(payload)
        return self.describe()

    def _apply_settings(self, payload: Mapping[str, Any]) -> None:
        settings = self.settings
        if "job_delay_ms" in payload:
            settings.job_delay_ms = _number(payload, "job_delay_ms")
        if "job_status" in payload:
            if payload["job_status"] not in JOB_STATUSES:
                raise ControlError(f"job_status must be one of {JOB_STATUSES}")
            settings.job_status = payload["job_status"]
        if "job_error" in payload:
            settings.job_error = payload["job_error"]
        if "models" in payload:
            models = payload["models"]
            if models is not None and not (
                isinstance(models, list) and all(isinstance(m, str) for m in models)
            ):
                raise ControlError("models must be a list of strings or null")
            settings.models = models
        if "served_model" in payload:
            served = payload["served_model"]
            if served is not None and not (isinstance(served, str) and served):
                raise ControlError("served_model must be a non-empty string or null")
            settings.models = None if served is None else [served]
        if "api_key" in payload:
            settings.api_key = payload["api_key"] or None
        self._apply_queue_settings(payload)
        self._apply_stream_settings(payload)

    def _apply_stream_settings(self, payload: Mapping[str, Any]) -> None:
        settings = self.settings
        if "stream_chunk_ms" in payload:
            settings.stream_chunk_ms = _number(payload, "stream_chunk_ms")
        if "stream_style" in payload:
            if payload["stream_style"] not in STREAM_STYLES:
                raise ControlError(f"stream_style must be one of {STREAM_STYLES}")
            settings.stream_style = payload["stream_style"]
        if "tool_calls" in payload:
            settings.tool_calls = _checked_tool_calls(payload["tool_calls"])
        if "answer_model" in payload:
            answer = payload["answer_model"]
            if answer is not None and not (isinstance(answer, str) and answer):
                raise ControlError("answer_model must be a non-empty string or null")
            settings.answer_model = answer

    def _apply_queue_settings(self, payload: Mapping[str, Any]) -> None:
        settings = self.settings
        if "max_concurrency" in payload:
            settings.max_concurrency = _checked_limit(payload["max_concurrency"])
            self.engine.set_limit(settings.max_concurrency)
        if "service_ms" in payload:
            settings.service_ms = _number(payload, "service_ms")
        if "kv_cache_usage" in payload:
            usage = payload["kv_cache_usage"]
            if usage is not None and not (
                isinstance(usage, int | float) and not isinstance(usage, bool) and 0 <= usage <= 1
            ):
                raise ControlError("kv_cache_usage must be a number from 0 to 1, or null")
            settings.kv_cache_usage = None if usage is None else float(usage)
        if "cache_metric" in payload:
            if payload["cache_metric"] not in CACHE_METRICS:
                raise ControlError(f"cache_metric must be one of {CACHE_METRICS}")
            settings.cache_metric = payload["cache_metric"]
        if "metrics" in payload:
            if not isinstance(payload["metrics"], bool):
                raise ControlError("metrics must be true or false")
            settings.metrics = payload["metrics"]

    def describe(self) -> dict[str, Any]:
        """The current modes and settings (the API key shown only as set or not)."""
        settings = asdict(self.settings)
        settings["api_key"] = settings["api_key"] is not None
        return {
            "name": self.name,
            "global": asdict(self.global_mode),
            "routes": {route: asdict(config) for route, config in self.route_modes.items()},
            "settings": settings,
        }

    def take_mode(self, route: str) -> ModeConfig:
        """The mode this request gets, consuming one unit of ``fail_next`` if set."""
        scoped = route in self.route_modes
        config = self.route_modes[route] if scoped else self.global_mode
        if config.fail_next is None:
            return config
        if config.fail_next <= 0:
            return ModeConfig()
        remaining = ModeConfig(**{**asdict(config), "fail_next": config.fail_next - 1})
        if scoped:
            self.route_modes[route] = remaining
        else:
            self.global_mode = remaining
        return config

    def stats(self) -> dict[str, Any]:
        """Counts as plain JSON-able dicts."""
        return {
            "name": self.name,
            "requests": dict(self.requests),
            "outcomes": {route: dict(counts) for route, counts in self.outcomes.items()},
            "job_posts": dict(self.job_posts),
            "job_submissions": dict(self.job_submissions),
            "jobs_created": sum(self.job_submissions.values()),
            "last_request": dict(self.last_request),
            "cancelled": dict(self.cancelled),
            "metrics_reads": self.metrics_reads,
            "engine": {
                "running": self.engine.running,
                "waiting": self.engine.waiting,
                "max_concurrency": self.engine.limit,
            },
        }


def _checked_limit(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ControlError("max_concurrency must be a positive integer or null")
    return value


def _checked_tool_calls(value: Any) -> list[dict[str, Any]] | None:
    """``tool_calls`` as ``[{name, arguments (a JSON object's text), input, id?}]``.

    ``arguments`` may be given as the JSON text OpenAI sends or as the object Anthropic
    sends; both protocols are answered from it, so it must be a JSON object.
    """
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ControlError("tool_calls must be a non-empty list of {name, arguments} or null")
    calls = []
    for call in value:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
            raise ControlError("every tool call needs a name")
        unknown = set(call) - {"name", "arguments", "id"}
        if unknown:
            raise ControlError(f"unknown tool call keys: {sorted(unknown)}")
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError as exc:
                raise ControlError(f"tool call arguments are not JSON: {exc}") from None
        if not isinstance(arguments, dict):
            raise ControlError("tool call arguments must be a JSON object (or its text)")
        call_id = call.get("id")
        if call_id is not None and not (isinstance(call_id, str) and call_id):
            raise ControlError("a tool call id must be a non-empty string")
        calls.append(
            {
                "name": call["name"],
                "arguments": json.dumps(arguments),
                "input": arguments,
                "id": call_id,
            }
        )
    return calls


def _checked_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ControlError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    return str(mode)


def _number(payload: Mapping[str, Any], key: str) -> float:
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ControlError(f"{key} must be a non-negative number")
    return float(value)


def _mode_config(payload: Mapping[str, Any]) -> ModeConfig:
    if "mode" in payload:
        mode = _checked_mode(payload["mode"])
    elif payload.get("fail_next") is not None:
        mode = "error"
    elif "delay_ms" in payload:
        mode = "slow"
    else:
        mode = "healthy"
    config = ModeConfig(mode=mode)
    changes: dict[str, Any] = {}
    if "status" in payload:
        status = payload["status"]
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ControlError("status must be an HTTP status code")
        changes["status"] = status
    if "body" in payload:
        changes["body"] = payload["body"]
    if "headers" in payload:
        headers = payload["headers"]
        if headers is not None and not (
            isinstance(headers, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise ControlError("headers must be an object of strings")
        changes["headers"] = headers
    if mode == "reply" and not isinstance(changes.get("body", ""), str):
        raise ControlError("mode 'reply' sends body as it is: it must be a string")
    for key in ("delay_ms", "retry_after"):
        if key in payload:
            changes[key] = _number(payload, key)
    if payload.get("fail_next") is not None:
        fail_next = payload["fail_next"]
        if not isinstance(fail_next, int) or isinstance(fail_next, bool) or fail_next < 0:
            raise ControlError("fail_next must be a non-negative integer")
        changes["fail_next"] = fail_next
    if "echo_headers" in payload:
        changes["echo_headers"] = bool(payload["echo_headers"])
    if "after_chunks" in payload:
        after = payload["after_chunks"]
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise ControlError("after_chunks must be a non-negative integer")
        changes["after_chunks"] = after
    return ModeConfig(**{**asdict(config), **changes})


# --------------------------------------------------------------------------- replies


def _text_of(content: Any) -> str:
    """Text of an OpenAI/Anthropic message content: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _conversation(body: Mapping[str, Any]) -> tuple[str, int]:
    """The last user message, and the prompt's token count (characters/4, at least 1)."""
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    texts = [_text_of(m.get("content")) for m in messages if isinstance(m, dict)]
    system = body.get("system")
    chars = sum(len(text) for text in texts) + (len(system) if isinstance(system, str) else 0)
    last_user = next(
        (
            _text_of(m.get("content"))
            for m in reversed(messages)
            if isinstance(m, dict) and m.get("role") == "user"
        ),
        "",
    )
    return last_user, max(1, chars // 4)


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _error_payload(
    route: str, status: int, message: str, *, kind: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """An error body as the server behind ``route`` would send it.

    Anthropic's envelope for the Messages route (``{"type": "error", "error": {"type",
    "message"}}``, docs.anthropic.com/en/api/errors); vLLM's for every other route
    (``ErrorResponse`` in ``vllm/entrypoints/openai/engine/protocol.py``: ``{"error":
    {"message", "type", "param", "code"}}`` with the HTTP status as ``code``).
    """
    if route == "anthropic":
        error_type = kind or ANTHROPIC_ERROR_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        return {"type": "error", "error": {"type": error_type, "message": message}}
    error_type = kind or VLLM_ERROR_TYPES.get(
        status, "InternalServerError" if status >= 500 else "BadRequestError"
    )
    return {"error": {"message": message, "type": error_type, "param": param, "code": status}}


def _model_of(body: Mapping[str, Any]) -> str:
    requested = body.get("model")
    return requested if isinstance(requested, str) else DEFAULT_MODEL


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class Block:
    """One part of an answer: text, or a tool call, and the pieces it is streamed in."""

    pieces: tuple[str, ...]
    tool_id: str | None = None
    tool_name: str | None = None

    @property
    def text(self) -> str:
        """The whole text (for a tool call: its JSON arguments)."""
        return "".join(self.pieces)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the fake answers, before a protocol shapes it (whole or streamed).

    ``finish`` is OpenAI's ``finish_reason`` (``stop``, ``length``, ``tool_calls``);
    :data:`ANTHROPIC_STOP` maps it to a ``stop_reason``.
    """

    id: str
    model: str
    blocks: tuple[Block, ...]
    finish: str
    prompt_tokens: int
    created: int

    @property
    def output_tokens(self) -> int:
        """About characters/4 of what was generated, at least 1 (as the text answers)."""
        return max(1, sum(len(block.text) for block in self.blocks) // 4)

    @property
    def text(self) -> str:
        """The text blocks joined (tool calls left out)."""
        return "".join(block.text for block in self.blocks if block.tool_name is None)

    @property
    def tool_calls(self) -> tuple[Block, ...]:
        """The tool-call blocks."""
        return tuple(block for block in self.blocks if block.tool_name is not None)


#: Anthropic's ``stop_reason`` for each ``finish_reason``.
ANTHROPIC_STOP: Final = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _pieces(text: str) -> tuple[str, ...]:
    """Split text into word-sized deltas, each word with the spaces before it (as
    tokenizers cut it: ``"I"``, ``"'m"``, ``" glad"``); joined they give the text back."""
    pieces = re.findall(r"\s*\S+", text)
    rest = text[len("".join(pieces)) :]
    if rest:
        pieces.append(rest)
    return tuple(pieces)


def _argument_pieces(arguments: str) -> tuple[str, ...]:
    """A tool call's JSON text in :data:`ARGUMENT_PIECE_CHARS`-character pieces, so a
    client has to join partial JSON (as servers stream it: ``{"locati``, ``on": "P``)."""
    size = ARGUMENT_PIECE_CHARS
    return tuple(arguments[i : i + size] for i in range(0, len(arguments), size))


def _truncated(blocks: tuple[Block, ...], budget: int) -> tuple[Block, ...]:
    """The first ``budget`` pieces of the answer (mode ``length_stop``): blocks past the
    budget are left out, the one it ends in is cut short."""
    kept: list[Block] = []
    for block in blocks:
        if budget <= 0:
            break
        pieces = block.pieces[:budget]
        budget -= len(pieces)
        kept.append(Block(pieces, block.tool_id, block.tool_name))
    return tuple(kept)


def _offers_tools(body: Mapping[str, Any]) -> bool:
    tools = body.get("tools")
    return isinstance(tools, list) and bool(tools)


def _subject(route: str, body: Mapping[str, Any]) -> str:
    """What the echo names: the last user message, or, when the conversation ends with
    tool results, those results (``tool_result ID: CONTENT``) -- so a test sees the result
    of a tool arrived, translated, where the model would read it."""
    messages = body.get("messages")
    messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    if messages:
        last = messages[-1]
        results: list[tuple[Any, str]] = []
        if route == "openai":
            for message in reversed(messages):
                if message.get("role") != "tool":
                    break
                results.insert(0, (message.get("tool_call_id"), _text_of(message.get("content"))))
        elif isinstance(last.get("content"), list):
            results = [
                (block.get("tool_use_id"), _text_of(block.get("content")))
                for block in last["content"]
                if isinstance(block, dict) and block.get("type") == "tool_result"
            ]
        if results:
            return " ".join(f"tool_result {call_id}: {content}" for call_id, content in results)
    return _conversation(body)[0]


def _tool_traffic(route: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The tools a request offers and the tool calls and results its messages carry, in one
    shape for both protocols (``{"offered": [name], "calls": [{id, name, arguments}],
    "results": [{id, content}]}``, ``arguments`` as JSON text); and what a real server
    would refuse in them (``None``: nothing).

    The checks are the servers' own: OpenAI refuses a ``role: tool`` message that answers
    no earlier ``tool_calls`` entry; Anthropic knows no ``tool`` role and pairs every
    ``tool_use`` block with a ``tool_result`` in the next message and back. A translation
    that breaks them gets the 400 it would get for real.
    """
    offered: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    summary = {"offered": offered, "calls": calls, "results": results}
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        name = None
        if isinstance(tool, dict):
            function = tool.get("function")
            if route == "openai" and isinstance(function, dict):
                name = function.get("name")
            elif route == "anthropic" and isinstance(tool.get("input_schema"), dict):
                name = tool.get("name")
        if not isinstance(name, str):
            return summary, f"tools.{len(offered)}: not a tool definition of this API: {tool!r}"
        offered.append(name)
    messages = body.get("messages")
    messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    if route == "openai":
        problem = _openai_tool_messages(messages, calls, results)
    else:
        problem = _anthropic_tool_messages(messages, calls, results)
    return summary, problem


def _openai_tool_messages(
    messages: list[dict[str, Any]], calls: list[dict[str, Any]], results: list[dict[str, Any]]
) -> str | None:
    pending: list[str] = []  # calls of the last assistant message not answered yet
    for index, message in enumerate(messages):
        role = message.get("role")
        tool_calls = message.get("tool_calls")
        if role != "tool" and pending:
            # OpenAI's own words for it.
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(pending)} (messages.{index})"
            )
        if role == "assistant" and tool_calls is not None:
            if not isinstance(tool_calls, list):
                return f"messages.{index}.tool_calls must be a list"
            for call in tool_calls:
                function = call.get("function") if isinstance(call, dict) else None
                if not (
                    isinstance(call, dict)
                    and isinstance(call.get("id"), str)
                    and call.get("type") == "function"
                    and isinstance(function, dict)
                    and isinstance(function.get("name"), str)
                    and isinstance(function.get("arguments"), str)
                ):
                    return (
                        f"messages.{index}.tool_calls: every call needs an id, type "
                        f"'function' and function {{name, arguments (a string)}}: {call!r}"
                    )
                pending.append(call["id"])
                calls.append(
                    {"id": call["id"], "name": function["name"], "arguments": function["arguments"]}
                )
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in pending:
                # OpenAI's own words for it.
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    f"preceeding message with 'tool_calls' (messages.{index}, tool_call_id "
                    f"{call_id!r})."
                )
            pending.remove(call_id)
            results.append({"id": call_id, "content": _text_of(message.get("content"))})
    return None


def _anthropic_tool_messages(
    messages: list[dict[str, Any]], calls: list[dict[str, Any]], results: list[dict[str, Any]]
) -> str | None:
    pending: list[str] = []  # tool_use ids of the previous assistant message
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "assistant"):
            return f"messages.{index}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
        answered: list[str] = []
        uses: list[str] = []
        for position, block in enumerate(blocks):
            kind = block.get("type")
            if kind == "tool_use":
                if role != "assistant" or not (
                    isinstance(block.get("id"), str)
                    and isinstance(block.get("name"), str)
                    and isinstance(block.get("input"), dict)
                ):
                    return f"messages.{index}.content.{position}: a bad tool_use block"
                uses.append(block["id"])
                calls.append(
                    {
                        "id": block["id"],
                        "name": block["name"],
                        "arguments": json.dumps(block["input"]),
                    }
                )
            elif kind == "tool_result":
                call_id = block.get("tool_use_id")
                if role != "user" or call_id not in pending:
                    # Anthropic's own words for it.
                    return (
                        f"messages.{index}.content.{position}: unexpected `tool_use_id` found "
                        f"in `tool_result` blocks: {call_id}. Each `tool_result` block must "
                        "have a corresponding `tool_use` block in the previous message."
                    )
                answered.append(call_id)
                results.append({"id": call_id, "content": _text_of(block.get("content"))})
        unanswered = [call_id for call_id in pending if call_id not in answered]
        if unanswered:
            return (
                f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(unanswered)}. Each `tool_use` block must have "
                "a corresponding `tool_result` block in the next message."
            )
        pending = uses
    return None


def _stream_error_payload(route: str, config: ModeConfig) -> Any:
    """What ``error_event`` reports: the mode's ``body`` if it is an object, else vLLM's
    generation error or Anthropic's ``overloaded_error``."""
    if isinstance(config.body, dict):
        return config.body
    return VLLM_STREAM_ERROR if route == "openai" else ANTHROPIC_STREAM_ERROR


def _stream_error_frame(route: str, config: ModeConfig) -> bytes:
    """The mid-stream error: vLLM's ``data: {"error": ...}`` (``json.dumps`` with its
    default separators, as ``create_streaming_error_response`` writes it) followed by the
    normal ``data: [DONE]``; Anthropic's ``event: error`` that ends the stream."""
    payload = _stream_error_payload(route, config)
    if route == "openai":
        return b"data: " + json.dumps(payload).encode() + b"\n\ndata: [DONE]\n\n"
    return _sse_event("error", payload, spaced=True)


def _openai_message(answer: Answer) -> dict[str, Any]:
    """``choices[0].message`` of a whole answer: text, or tool calls with no content (as
    vLLM's ``chat_completion_full_generator`` builds it for auto tool choice)."""
    if answer.tool_calls:
        return {
            "role": "assistant",
            "content": answer.text or None,
            "tool_calls": [
                {
                    "id": block.tool_id,
                    "type": "function",
                    "function": {"name": block.tool_name, "arguments": block.text},
                }
                for block in answer.tool_calls
            ],
        }
    return {"role": "assistant", "content": answer.text}


def _openai_body(answer: Answer, empty: bool) -> dict[str, Any]:
    output_tokens = answer.output_tokens
    choice = {"index": 0, "message": _openai_message(answer), "finish_reason": answer.finish}
    return {
        "id": answer.id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [] if empty else [choice],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": answer.prompt_tokens + output_tokens,
        },
    }


def _anthropic_content(block: Block) -> dict[str, Any]:
    if block.tool_name is None:
        return {"type": "text", "text": block.text}
    try:
        tool_input = json.loads(block.text)
    except ValueError:  # cut short by length_stop: the arguments were never finished
        tool_input = {}
    return {"type": "tool_use", "id": block.tool_id, "name": block.tool_name, "input": tool_input}


def _anthropic_body(answer: Answer, empty: bool) -> dict[str, Any]:
    return {
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [] if empty else [_anthropic_content(block) for block in answer.blocks],
        "stop_reason": ANTHROPIC_STOP[answer.finish],
        "stop_sequence": None,
        "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": answer.output_tokens},
    }


#: A streamed event and its kind: ``token`` (carries generated text or arguments: what
#: ``after_chunks`` counts), ``end`` (finishes the message: a finish without a token,
#: usage, ``[DONE]``, ``message_delta``, ``message_stop``) or ``frame`` (any other).
Frame = tuple[str, bytes]


def _sse_data(payload: Any) -> bytes:
    """``data: JSON\\n\\n``: one OpenAI-style event (no ``event:`` line)."""
    return b"data: " + _json_bytes(payload) + b"\n\n"


def _sse_event(event: str, payload: Any, *, spaced: bool = False) -> bytes:
    """``event: NAME\\ndata: JSON\\n\\n``: one Anthropic-style event. ``spaced``: JSON with
    ``json.dumps``' default separators, as Anthropic writes its ping and error events."""
    data = json.dumps(payload).encode() if spaced else _json_bytes(payload)
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def _openai_frames(answer: Answer, style: str, include_usage: bool) -> list[Frame]:
    """A chat completion as ``chat.completion.chunk`` events, then ``data: [DONE]``.

    ``vllm`` (``chat_completion_stream_generator`` in vLLM's ``vllm/entrypoints/openai/
    chat_completion/serving.py``): the first chunk's delta is ``{"role": "assistant",
    "content": ""}``; every choice carries ``logprobs`` and ``finish_reason`` (null until
    the end); the last token rides in the chunk that has the ``finish_reason`` (and
    ``stop_reason``); with ``stream_options.include_usage`` a last chunk has ``choices:
    []`` and ``usage``. A tool call starts with ``{"index", "id", "type": "function",
    "function": {"name", "arguments": ""}}`` and its arguments follow in pieces
    (``{"index", "function": {"arguments"}}``), as vLLM's tool parsers stream them; it
    ends with ``finish_reason: "tool_calls"``.

    ``llama.cpp`` (as llama-server b11434 sent it, tests/integration/
    test_stream_framing.py): keys ``choices, created, id, model, system_fingerprint,
    object``; the first delta is ``{"role": "assistant", "content": null}``; a choice is
    ``{"finish_reason", "index", "delta"}``; the finish comes in a chunk of its own with
    ``delta: {}`` and ``timings``; the usage chunk (``choices: []``, ``usage``,
    ``timings``) only with ``include_usage``.
    """
    llama = style == "llama.cpp"
    usage = {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.prompt_tokens + answer.output_tokens,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        if llama:
            choice: dict[str, Any] = {"finish_reason": finish, "index": 0, "delta": delta}
            return _sse_data(
                {
                    "choices": [choice],
                    "created": answer.created,
                    "id": answer.id,
                    "model": answer.model,
                    "system_fingerprint": LLAMA_FINGERPRINT,
                    "object": "chat.completion.chunk",
                    **extra,
                }
            )
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = None
        return _sse_data(
            {
                "id": answer.id,
                "object": "chat.completion.chunk",
                "created": answer.created,
                "model": answer.model,
                "choices": [choice],
            }
        )

    frames: list[Frame] = [
        ("frame", chunk({"role": "assistant", "content": None if llama else ""}))
    ]
    deltas: list[dict[str, Any]] = []
    tool_index = 0
    for block in answer.blocks:
        if block.tool_name is None:
            deltas.extend({"content": piece} for piece in block.pieces)
            continue
        opened = {
            "index": tool_index,
            "id": block.tool_id,
            "type": "function",
            "function": {"name": block.tool_name, "arguments": ""},
        }
        deltas.append({"tool_calls": [opened]})
        deltas.extend(
            {"tool_calls": [{"index": tool_index, "function": {"arguments": piece}}]}
            for piece in block.pieces
        )
        tool_index += 1
    timings = {
        "cache_n": 0,
        "prompt_n": answer.prompt_tokens,
        "prompt_ms": 0.0,
        "prompt_per_token_ms": 0.0,
        "prompt_per_second": 0.0,
        "predicted_n": answer.output_tokens,
        "predicted_ms": 0.0,
        "predicted_per_token_ms": 0.0,
        "predicted_per_second": 0.0,
    }
    if llama or not deltas:
        frames.extend(("token", chunk(delta)) for delta in deltas)
        extra = {} if include_usage or not llama else {"timings": timings}
        frames.append(("end", chunk({}, answer.finish, **extra)))
    else:  # vLLM: the last token and the finish in one chunk
        frames.extend(("token", chunk(delta)) for delta in deltas[:-1])
        frames.append(("token", chunk(deltas[-1], answer.finish)))
    if include_usage:
        if llama:
            usage_chunk: dict[str, Any] = {
                "choices": [],
                "created": answer.created,
                "id": answer.id,
                "model": answer.model,
                "system_fingerprint": LLAMA_FINGERPRINT,
                "object": "chat.completion.chunk",
                "usage": {**usage, "prompt_tokens_details": {"cached_tokens": 0}},
                "timings": timings,
            }
        else:
            usage_chunk = {
                "id": answer.id,
                "object": "chat.completion.chunk",
                "created": answer.created,
                "model": answer.model,
                "choices": [],
                "usage": usage,
            }
        frames.append(("end", _sse_data(usage_chunk)))
    frames.append(("end", b"data: [DONE]\n\n"))
    return frames


def _anthropic_frames(answer: Answer, style: str) -> list[Frame]:
    """A message as Anthropic's events: ``message_start``, per content block
    ``content_block_start`` / ``content_block_delta`` (``text_delta``; ``input_json_delta``
    with ``partial_json`` for a ``tool_use`` block, opened with ``input: {}`` and an empty
    first piece) / ``content_block_stop``, then ``message_delta`` (``stop_reason``,
    ``usage.output_tokens``) and ``message_stop``.

    ``vllm`` style is Anthropic's own (the SDK's ``tests/lib/streaming/fixtures/
    basic_response.txt`` and ``tool_use_response.txt``): a ``ping`` after the first
    ``content_block_start``, ``message_start`` usage ``{input_tokens, output_tokens: 1}``.
    ``llama.cpp`` style is llama-server's ``/v1/messages``: no ``ping``; usage
    ``{cache_read_input_tokens, input_tokens, output_tokens: 0}``.
    """
    llama = style == "llama.cpp"
    start_usage = (
        {"cache_read_input_tokens": 0, "input_tokens": answer.prompt_tokens, "output_tokens": 0}
        if llama
        else {"input_tokens": answer.prompt_tokens, "output_tokens": 1}
    )
    message: dict[str, Any] = {
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": answer.model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    frames: list[Frame] = [
        ("frame", _sse_event("message_start", {"type": "message_start", "message": message}))
    ]
    ping = ("frame", _sse_event("ping", {"type": "ping"}, spaced=True))
    for index, block in enumerate(answer.blocks):
        if block.tool_name is None:
            opened: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in block.pieces]
        else:
            opened = {"type": "tool_use", "id": block.tool_id, "name": block.tool_name, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas.extend({"type": "input_json_delta", "partial_json": p} for p in block.pieces)
        start = {"type": "content_block_start", "index": index, "content_block": opened}
        frames.append(("frame", _sse_event("content_block_start", start)))
        if index == 0 and not llama:
            frames.append(ping)
        for delta in deltas:
            kind = "token" if delta.get("text") or delta.get("partial_json") else "frame"
            payload = {"type": "content_block_delta", "index": index, "delta": delta}
            frames.append((kind, _sse_event("content_block_delta", payload)))
        stop = {"type": "content_block_stop", "index": index}
        frames.append(("frame", _sse_event("content_block_stop", stop)))
    if not answer.blocks and not llama:
        frames.append(ping)
    finish = {
        "type": "message_delta",
        "delta": {"stop_reason": ANTHROPIC_STOP[answer.finish], "stop_sequence": None},
        "usage": {"output_tokens": answer.output_tokens},
    }
    frames.append(("end", _sse_event("message_delta", finish)))
    frames.append(("end", _sse_event("message_stop", {"type": "message_stop"})))
    return frames


class _EngineGauges:
    """A ``prometheus_client`` collector of the queue's gauges, read at scrape time."""

    def __init__(self, state: BackendState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        settings = state.settings
        engine = state.engine
        usage = settings.kv_cache_usage
        if usage is None:
            usage = (
                FULL_BATCH_KV_CACHE_USAGE * min(1.0, engine.running / engine.limit)
                if engine.limit
                else 0.0
            )
        # vLLM labels its gauges with the served model name (the first one) and the engine.
        labels = [settings.models[0] if settings.models else f"{state.name}-model", "0"]
        for name, value in (
            ("vllm:num_requests_running", float(engine.running)),
            ("vllm:num_requests_waiting", float(engine.waiting)),
            (settings.cache_metric, usage),
        ):
            gauge = GaugeMetricFamily(name, METRIC_HELP[name], labels=list(METRIC_LABELS))
            gauge.add_metric(labels, value)
            yield gauge


def _replay(config: ModeConfig) -> web.Response:
    """Mode ``reply``: exactly ``status``, ``headers`` and ``body`` (no header of ours)."""
    body = config.body if isinstance(config.body, str) else ""
    return web.Response(
        body=body.encode(), status=config.status, headers=dict(config.headers or {})
    )


#: A route's answer builder: ``(request, body, empty) -> (status, payload)``; ``None`` for
#: the generation routes, which :meth:`FakeServer._generate` answers (whole or streamed).
Build = Callable[[web.Request, Mapping[str, Any], bool], Awaitable[tuple[int, Any]]] | None


class FakeServer:
    """The aiohttp application around a :class:`BackendState`."""

    def __init__(self, state: BackendState) -> None:
        self.state = state
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self._headers = {"x-fake-backend": state.name}
        add = self.app.router.add_route
        for path in ("/chat/completions", "/v1/chat/completions"):
            add("POST", path, self._route("openai", None))
        for path in ("/v1/messages", "/messages"):
            add("POST", path, self._route("anthropic", None))
        add("POST", "/jobs", self._route("jobs", self._submit_job))
        add("GET", "/jobs/{job_id}", self._route("jobs_poll", self._poll_job))
        for path in ("/models", "/v1/models"):
            add("GET", path, self._route("models", self._models))
        add("GET", "/health", self._route("health", self._health))
        add("GET", "/metrics", self._metrics)
        add("POST", "/_control", self._control)
        add("GET", "/_control", self._describe)
        add("GET", "/_stats", self._stats)
        add("POST", "/_reset", self._reset)

    # ---------------------------------------------------------------- steering

    async def _control(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
            if not isinstance(payload, dict):
                raise ControlError("the control body must be a JSON object")
            described = self.state.configure(payload)
        except (ControlError, ValueError) as exc:
            return self._json({"error": str(exc)}, status=400)
        return self._json(described)

    async def _describe(self, request: web.Request) -> web.Response:
        return self._json(self.state.describe())

    async def _stats(self, request: web.Request) -> web.Response:
        return self._json(self.state.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        return self._json({"reset": True})

    # ---------------------------------------------------------------- metrics

    async def _metrics(self, request: web.Request) -> web.Response:
        """vLLM's ``/metrics``: the live queue as Prometheus text (module docstring)."""
        state = self.state
        state.metrics_reads += 1
        if not state.settings.metrics:
            return web.Response(status=404, text="Not Found", headers=self._headers)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_EngineGauges(state))
        return web.Response(
            body=generate_latest(registry),
            headers={**self._headers, "Content-Type": METRICS_CONTENT_TYPE},
        )

    # ---------------------------------------------------------------- protocol routes

    def _route(
        self,
        route: str,
        build: Build,
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Wrap a route's answer builder in counting, auth and failure modes."""

        async def handle(request: web.Request) -> web.StreamResponse:
            state = self.state
            state.requests[route] += 1
            body: Mapping[str, Any] = {}
            if request.method == "POST":
                try:
                    parsed = await request.json()
                except ValueError:
                    parsed = None
                if not isinstance(parsed, dict):
                    state.outcomes[route]["bad_request"] += 1
                    return self._error_json(route, 400, "request body must be a JSON object")
                body = parsed
            state.last_request[route] = {
                "path": request.path,
                "json": body,
                "headers": {
                    key: request.headers[key]
                    for key in ("authorization", "x-api-key", "anthropic-version")
                    if key in request.headers
                },
            }
            tool_problem = None
            if route in QUEUED_ROUTES:
                tools, tool_problem = _tool_traffic(route, body)
                state.last_request[route]["tools"] = tools
            # /health is public, as on vLLM (its key guards /v1 only) and llama.cpp.
            if route != "health" and not self._authorized(request):
                state.outcomes[route]["unauthorized"] += 1
                return self._error_json(route, 401, "invalid api key", kind="authentication_error")
            config = state.take_mode(route)
            mode = config.mode
            if mode == "hung_engine" and route not in GENERATION_ROUTES:
                mode = "healthy"  # the API server still lists models and answers /health
            if mode in STREAM_MODES and route not in QUEUED_ROUTES:
                mode = "healthy"  # a fault inside generation: only chat and messages see it
            state.outcomes[route][mode] += 1
            if route in QUEUED_ROUTES and mode in ENGINE_MODES:
                if tool_problem is not None:  # refused before the scheduler sees it
                    return self._error_json(route, 400, tool_problem)
                return await self._queued(request, route, body, config, mode, build)
            if mode in ("hang", "hung_engine"):
                await asyncio.get_running_loop().create_future()
            if mode == "slow":
                await asyncio.sleep(config.delay_ms / 1000)
            elif mode == "error":
                return self._error_reply(request, route, config)
            elif mode == "reply":
                return _replay(config)
            elif mode == "loading":
                return web.Response(
                    body=LOADING_BODY,
                    status=503,
                    headers={**self._headers, "Content-Type": LOADING_CONTENT_TYPE},
                )
            elif mode == "rate_limit":
                return self._rate_limited(route, config)
            elif mode == "malformed":
                return web.Response(
                    body=b'{"id": "x", "choices": [{"message": {"content": "tru',
                    content_type="application/json",
                    headers=self._headers,
                )
            if mode == "unknown_model":
                return self._model_not_found(route, _model_of(body))
            refused = self._unserved(route, body)
            if refused is not None:
                return refused
            return await self._answer(request, route, body, mode, build, config)

        return handle

    async def _queued(
        self,
        request: web.Request,
        route: str,
        body: Mapping[str, Any],
        config: ModeConfig,
        mode: str,
        build: Build,
    ) -> web.StreamResponse:
        """An answer that needs the engine: wait for a slot (FIFO), hold it for the service
        time (``slow``: ``delay_ms``, else ``service_ms``), answer, free it.

        An unserved model is refused before the queue, as vLLM's API server does. A client
        that disconnects cancels this handler (``handler_cancellation``): counted, and the
        slot or the place in the queue is given up.
        """
        state = self.state
        refused = self._unserved(route, body)
        if refused is not None:
            return refused
        try:
            async with state.engine.slot():
                if mode in ("hang", "hung_engine"):
                    await asyncio.get_running_loop().create_future()
                delay_ms = config.delay_ms if mode == "slow" else state.settings.service_ms
                if delay_ms > 0:
                    await asyncio.sleep(delay_ms / 1000)
                return await self._answer(request, route, body, mode, build, config)
        except asyncio.CancelledError:
            state.cancelled[route] += 1
            raise

    def _unserved(self, route: str, body: Mapping[str, Any]) -> web.Response | None:
        """vLLM's 404 for a model outside the served ones, or ``None``."""
        served = self.state.settings.models
        model = _model_of(body)
        if served is not None and route != "models" and "model" in body and model not in served:
            return self._model_not_served(route, model)
        return None

    async def _answer(
        self,
        request: web.Request,
        route: str,
        body: Mapping[str, Any],
        mode: str,
        build: Build,
        config: ModeConfig,
    ) -> web.StreamResponse:
        """The route's normal answer (``empty``: without content; ``drop``: cut short)."""
        if build is None:
            return await self._generate(request, route, body, mode, config)
        status, payload = await build(request, body, mode == "empty")
        if payload is None:  # vLLM's /health: 200 with an empty body
            return web.Response(status=status, headers=self._headers)
        data = _json_bytes(payload)
        if mode == "drop" and status < 300:
            return await self._drop(request, status, data)
        return web.Response(
            body=data, status=status, content_type="application/json", headers=self._headers
        )

    def _authorized(self, request: web.Request) -> bool:
        expected = self.state.settings.api_key
        if expected is None:
            return True
        return request.headers.get("authorization") == f"Bearer {expected}" or (
            request.headers.get("x-api-key") == expected
        )

    async def _generate(
        self,
        request: web.Request,
        route: str,
        body: Mapping[str, Any],
        mode: str,
        config: ModeConfig,
    ) -> web.StreamResponse:
        """A chat completion or a message, whole or streamed (``"stream": true``).

        A non-streamed request meets the stream modes' faults as a real server would show
        them to it: a stall is a request that does not answer (or answers ``delay_ms``
        late), a cut one whose connection drops (as ``drop``), an error during generation
        an error status (vLLM's 500 ``InternalServerError``, ``_convert_generation_error_
        to_response``; Anthropic's 529 ``overloaded_error``), and ``length_stop`` a short
        answer that ends with ``length`` / ``max_tokens``.
        """
        if body.get("stream") is not True:
            if mode == "stall_first_token":
                if config.delay_ms <= 0:
                    await asyncio.get_running_loop().create_future()
                await asyncio.sleep(config.delay_ms / 1000)
            elif mode == "error_event":
                status = 500 if route == "openai" else 529
                return self._json(_stream_error_payload(route, config), status=status)
        answer = self._compose(route, body, mode, config)
        if body.get("stream") is True:
            return await self._stream(request, route, body, answer, mode, config)
        empty = mode == "empty"
        payload = (
            _openai_body(answer, empty) if route == "openai" else _anthropic_body(answer, empty)
        )
        data = _json_bytes(payload)
        if mode in ("drop", "cut"):
            return await self._drop(request, 200, data)
        return web.Response(body=data, content_type="application/json", headers=self._headers)

    def _compose(
        self, route: str, body: Mapping[str, Any], mode: str, config: ModeConfig
    ) -> Answer:
        """The answer to a request: the echo, or the ``tool_calls`` setting's calls when the
        request offers tools (a model calls no tool it was not offered); named after
        ``answer_model`` if set; cut to ``after_chunks`` pieces by ``length_stop``."""
        state = self.state
        settings = state.settings
        name = state.name
        number = state.requests[route]
        blocks: tuple[Block, ...]
        if settings.tool_calls and _offers_tools(body):
            blocks = tuple(
                Block(
                    _argument_pieces(call["arguments"]),
                    call["id"]
                    or (
                        f"chatcmpl-tool-{name}-{number}-{index}"
                        if route == "openai"
                        else f"toolu_{name}_{number}_{index}"
                    ),
                    call["name"],
                )
                for index, call in enumerate(settings.tool_calls)
            )
            finish = "tool_calls"
        else:
            blocks = (Block(_pieces(f"[{name}] echo: {_subject(route, body)}")),)
            finish = "stop"
        if mode == "empty":
            blocks = ()
        elif mode == "length_stop":
            blocks = _truncated(blocks, config.after_chunks)
            finish = "length"
        return Answer(
            id=f"chatcmpl-{name}" if route == "openai" else f"msg_{name}",
            model=settings.answer_model or _model_of(body),
            blocks=blocks,
            finish=finish,
            prompt_tokens=_conversation(body)[1],
            created=int(time.time()),
        )

    async def _stream(
        self,
        request: web.Request,
        route: str,
        body: Mapping[str, Any],
        answer: Answer,
        mode: str,
        config: ModeConfig,
    ) -> web.StreamResponse:
        """Send ``answer`` as server-sent events, with the mode's fault (module docstring,
        "Streaming"); ``stream_chunk_ms`` apart once the first token is out."""
        settings = self.state.settings
        if route == "openai":
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            frames = _openai_frames(answer, settings.stream_style, include_usage)
        else:
            frames = _anthropic_frames(answer, settings.stream_style)
        if mode == "drop":
            data = b"".join(frame for _, frame in frames)
            return await self._drop(request, 200, data, SSE_CONTENT_TYPE)
        response = web.StreamResponse(
            status=200,
            headers={
                **self._headers,
                "Content-Type": SSE_CONTENT_TYPE,
                "Cache-Control": "no-cache",
            },
        )
        await response.prepare(request)  # the headers go out now: the client sees a 200
        if mode == "stall_first_token":
            if config.delay_ms <= 0:
                await asyncio.get_running_loop().create_future()
            await asyncio.sleep(config.delay_ms / 1000)
        pause = settings.stream_chunk_ms / 1000
        interrupted = mode in ("cut", "error_event")
        tokens = 0
        try:
            for kind, frame in frames:
                if interrupted and (
                    kind == "end" or (kind == "token" and tokens >= config.after_chunks)
                ):
                    break
                if tokens and pause > 0:
                    await asyncio.sleep(pause)
                tokens += kind == "token"
                await response.write(frame)
            else:
                await response.write_eof()
                return response
            if mode == "cut":  # no terminator, not even the last empty chunk
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write(_stream_error_frame(route, config))
            await response.write_eof()
        except ConnectionResetError:
            self.state.cancelled[route] += 1
        return response

    async def _submit_job(
        self, request: web.Request, body: Mapping[str, Any], empty: bool
    ) -> tuple[int, Any]:
        state = self.state
        key = body.get("idempotency_key")
        key = key if isinstance(key, str) and key else f"anonymous-{next(state.job_counter)}"
        state.job_posts[key] += 1
        job_id = state.job_ids_by_key.get(key)
        if job_id is None:
            job_id = f"job-{state.name}-{next(state.job_counter)}"
            last_user, input_tokens = _conversation(body)
            state.jobs[job_id] = Job(
                id=job_id,
                key=key,
                model=str(body.get("model", DEFAULT_MODEL)),
                prompt=last_user,
                input_tokens=input_tokens,
                created=asyncio.get_running_loop().time(),
                delay=state.settings.job_delay_ms / 1000,
                outcome=state.settings.job_status,
                error=state.settings.job_error,
            )
            state.job_ids_by_key[key] = job_id
            state.job_submissions[key] += 1
        if empty:
            return 202, {}
        return 202, {"id": job_id, "status": "queued"}

    async def _poll_job(
        self, request: web.Request, body: Mapping[str, Any], empty: bool
    ) -> tuple[int, Any]:
        job = self.state.jobs.get(request.match_info["job_id"])
        if job is None:
            return 404, {"error": {"message": "job not found", "type": "not_found"}}
        elapsed = asyncio.get_running_loop().time() - job.created
        if elapsed < job.delay:
            status = "queued" if elapsed < job.delay / 4 else "running"
            return 200, {"id": job.id, "status": status}
        if job.outcome == "failed":
            error = job.error if job.error is not None else "injected job failure"
            return 200, {"id": job.id, "status": "failed", "error": error}
        text = "" if empty else f"[{self.state.name}] echo: {job.prompt}"
        output_tokens = max(1, len(text) // 4)
        return 200, {
            "id": job.id,
            "status": "succeeded",
            "result": {
                "text": text,
                "usage": {"input_tokens": job.input_tokens, "output_tokens": output_tokens},
                "cost_usd": round(
                    job.input_tokens * INPUT_USD_PER_TOKEN + output_tokens * OUTPUT_USD_PER_TOKEN,
                    12,
                ),
            },
            "error": None,
        }

    async def _health(
        self, request: web.Request, body: Mapping[str, Any], empty: bool
    ) -> tuple[int, Any]:
        return 200, None

    async def _models(
        self, request: web.Request, body: Mapping[str, Any], empty: bool
    ) -> tuple[int, Any]:
        # Unset: a fake named NAME lists NAME-model (the tests' convention) and fake-model.
        models = self.state.settings.models or [f"{self.state.name}-model", DEFAULT_MODEL]
        data = [{"id": model, "object": "model", "owned_by": self.state.name} for model in models]
        return 200, {"object": "list", "data": [] if empty else data}

    # ---------------------------------------------------------------- failure replies

    def _json(self, payload: Any, *, status: int = 200) -> web.Response:
        return web.Response(
            body=_json_bytes(payload),
            status=status,
            content_type="application/json",
            headers=self._headers,
        )

    def _error_json(
        self,
        route: str,
        status: int,
        message: str,
        *,
        kind: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        return web.Response(
            body=_json_bytes(_error_payload(route, status, message, kind=kind)),
            status=status,
            content_type="application/json",
            headers={**self._headers, **(headers or {})},
        )

    def _rate_limited(self, route: str, config: ModeConfig) -> web.Response:
        headers = {"retry-after": f"{config.retry_after:g}"}
        if route == "anthropic":
            return self._error_json(route, 429, "rate limit exceeded", headers=headers)
        # OpenAI's documented 429 (platform.openai.com/docs/guides/error-codes).
        payload = {
            "error": {
                "message": "Rate limit reached for requests",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        return web.Response(
            body=_json_bytes(payload),
            status=429,
            content_type="application/json",
            headers={**self._headers, **headers},
        )

    def _error_reply(self, request: web.Request, route: str, config: ModeConfig) -> web.Response:
        headers = {**self._headers, **(config.headers or {})}
        typed = any(key.lower() == "content-type" for key in headers)
        if config.body is not None and not config.echo_headers:
            raw = config.body if isinstance(config.body, str) else json.dumps(config.body)
            return web.Response(
                body=raw.encode(),
                status=config.status,
                content_type=None if typed else "application/json",
                headers=headers,
            )
        payload = _error_payload(
            route, config.status, f"injected error {config.status} from {self.state.name}"
        )
        if config.echo_headers:
            payload["error"]["request_headers"] = dict(request.headers)
        return web.Response(
            body=_json_bytes(payload),
            status=config.status,
            content_type=None if typed else "application/json",
            headers=headers,
        )

    def _model_not_served(self, route: str, model: str) -> web.Response:
        """A model other than the served ones: vLLM's own 404 (``_check_model`` in
        ``vllm/entrypoints/openai/engine/serving.py``), or Anthropic's."""
        if route == "anthropic":
            return self._model_not_found(route, model)
        payload = _error_payload(route, 404, f"The model `{model}` does not exist.", param="model")
        return self._json(payload, status=404)

    def _model_not_found(self, route: str, model: str) -> web.Response:
        if route == "anthropic":
            payload: dict[str, Any] = {
                "type": "error",
                "error": {"type": "not_found_error", "message": f"model: {model}"},
            }
        else:
            payload = {
                "error": {
                    "message": (
                        f"The model `{model}` does not exist or you do not have access to it."
                    ),
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "model_not_found",
                }
            }
        return self._json(payload, status=404)

    async def _drop(
        self,
        request: web.Request,
        status: int,
        data: bytes,
        content_type: str = "application/json",
    ) -> web.StreamResponse:
        """Promise the whole body in Content-Length, send half, close the socket."""
        response = web.StreamResponse(status=status, headers=self._headers)
        response.content_type = content_type
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        if request.transport is not None:
            request.transport.close()
        return response


# --------------------------------------------------------------------------- in-process API


def control_payload(**values: Any) -> dict[str, Any]:
    """A ``/_control`` payload from keyword arguments, leaving out the ones set to None."""
    return {key: value for key, value in values.items() if value is not None}


class FakeBackend:
    """A fake backend inside the running event loop: ``async with FakeBackend() as fb``.

    Listens on ``port`` (0: a free port, see :attr:`url` once started). Steering methods
    act on the state directly, so they take effect before the next request.
    ``max_concurrency`` is the queue limit from the start (kept by :meth:`reset`).
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: str = "healthy",
        models: list[str] | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.state = BackendState(
            name=name,
            default_mode=mode,
            default_models=list(models) if models else None,
            default_max_concurrency=max_concurrency,
        )
        self.server = FakeServer(self.state)
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (append ``/v1`` for OpenAI clients)."""
        if not self.port:
            raise RuntimeError("the fake backend is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start accepting connections."""
        runner = web.AppRunner(
            self.server.app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening and cancel requests still in flight (hung ones included)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeBackend:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def set_mode(
        self,
        mode: str | None = None,
        *,
        route: str | None = None,
        status: int | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        delay_ms: float | None = None,
        retry_after: float | None = None,
        fail_next: int | None = None,
        echo_headers: bool | None = None,
        after_chunks: int | None = None,
    ) -> None:
        """Set the failure mode of ``route`` (or of every route); see the module docstring."""
        payload = control_payload(
            mode=mode,
            status=status,
            body=body,
            headers=headers,
            delay_ms=delay_ms,
            retry_after=retry_after,
            fail_next=fail_next,
            echo_headers=echo_headers,
            after_chunks=after_chunks,
        )
        if not payload:
            payload = {"mode": "healthy"}
        if route is not None:
            payload["route"] = route
        self.state.configure(payload)

    def configure(self, **settings: Any) -> None:
        """Change settings: job_delay_ms, job_status, job_error, models, served_model,
        api_key, max_concurrency, service_ms, kv_cache_usage, cache_metric, metrics,
        stream_chunk_ms, stream_style, tool_calls, answer_model."""
        unknown = set(settings) - SETTING_KEYS
        if unknown:
            raise ControlError(f"unknown settings: {sorted(unknown)}")
        self.state.configure(settings)

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (see ``GET /_stats``)."""
        return self.state.stats()

    def reset(self) -> None:
        """Back to the start mode, with counters and jobs forgotten."""
        self.state.reset()


class FakeBackendThread:
    """A fake backend on its own event loop in a daemon thread, for synchronous code.

    ``with FakeBackendThread(name="a") as fb: ...`` then steer it like :class:`FakeBackend`
    (``set_mode``, ``configure``, ``stats()``, ``reset``); calls are marshalled onto the
    backend's loop, so they are safe from any thread.
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: str = "healthy",
        models: list[str] | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        self.backend = FakeBackend(
            name, host=host, port=port, mode=mode, models=models, max_concurrency=max_concurrency
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """Base URL of the running backend."""
        return self.backend.url

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread and return once the backend accepts connections."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._stopping = asyncio.Event()
            try:
                await self.backend.start()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                await self._stopping.wait()
            finally:
                await self.backend.stop()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(serve())
            finally:
                loop.close()

        self._thread = threading.Thread(
            target=run, name=f"fake-backend-{self.backend.name}", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the fake backend did not start")
        if failure:
            self._thread.join()
            raise failure[0]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the backend and join the thread."""
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)
        self._thread = None

    def _run(self, function: Callable[[], Any]) -> Any:
        if self._loop is None:
            raise RuntimeError("the fake backend is not started")

        async def call() -> Any:
            return function()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10.0)

    def set_mode(self, mode: str | None = None, **options: Any) -> None:
        """As :meth:`FakeBackend.set_mode`."""
        self._run(lambda: self.backend.set_mode(mode, **options))

    def configure(self, **settings: Any) -> None:
        """As :meth:`FakeBackend.configure`."""
        self._run(lambda: self.backend.configure(**settings))

    def stats(self) -> dict[str, Any]:
        """As :attr:`FakeBackend.stats`."""
        result: dict[str, Any] = self._run(lambda: self.backend.stats)
        return result

    def reset(self) -> None:
        """As :meth:`FakeBackend.reset`."""
        self._run(self.backend.reset)

    def __enter__(self) -> FakeBackendThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class FakeBackendControl:
    """Steer a fake backend running elsewhere (another process) over its HTTP API.

    ``FakeBackendControl(url).set(mode="error", status=503, route="openai")``;
    ``.stats()``; ``.reset()``. The ``a``-prefixed methods are the async equivalents.
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def set(self, **values: Any) -> dict[str, Any]:
        """POST /_control with the given keys (None values left out); returns the config."""
        return self._sync("POST", "/_control", control_payload(**values))

    def stats(self) -> dict[str, Any]:
        """GET /_stats."""
        return self._sync("GET", "/_stats", None)

    def reset(self) -> dict[str, Any]:
        """POST /_reset."""
        return self._sync("POST", "/_reset", None)

    async def aset(self, **values: Any) -> dict[str, Any]:
        """Async :meth:`set`."""
        return await self._async("POST", "/_control", control_payload(**values))

    async def astats(self) -> dict[str, Any]:
        """Async :meth:`stats`."""
        return await self._async("GET", "/_stats", None)

    async def areset(self) -> dict[str, Any]:
        """Async :meth:`reset`."""
        return await self._async("POST", "/_reset", None)

    def _sync(self, method: str, path: str, payload: Any) -> dict[str, Any]:
        with httpx.Client(timeout=self.timeout) as client:
            response = client.request(method, self.url + path, json=payload)
        return _control_answer(response)

    async def _async(self, method: str, path: str, payload: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.request(method, self.url + path, json=payload)
        return _control_answer(response)


def _control_answer(response: httpx.Response) -> dict[str, Any]:
    data = response.json()
    if response.status_code != 200:
        raise ControlError(str(data.get("error", data)) if isinstance(data, dict) else str(data))
    if not isinstance(data, dict):
        raise ControlError(f"unexpected control answer: {data!r}")
    return data


# --------------------------------------------------------------------------- CLI


async def _serve(
    host: str,
    port: int,
    name: str,
    mode: str,
    models: list[str] | None = None,
    max_concurrency: int | None = None,
    service_ms: float = 0.0,
) -> None:
    backend = FakeBackend(
        name, host=host, port=port, mode=mode, models=models, max_concurrency=max_concurrency
    )
    if service_ms:
        backend.configure(service_ms=service_ms)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with backend:
        print(f"fake-backend {name} listening on {backend.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m chainop.testing.fake_backend --port PORT [--host] [--name] [--mode]
    [--served-model-name MODEL ...] [--max-concurrency N] [--service-ms MS]``."""
    parser = argparse.ArgumentParser(
        prog="python -m chainop.testing.fake_backend",
        description="A fake OpenAI/Anthropic/jobs backend that fails on cue.",
    )
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--name", default="fake", help="name shown in replies and stats")
    parser.add_argument("--mode", default="healthy", choices=MODES, help="initial mode")
    parser.add_argument(
        "--served-model-name",
        action="append",
        dest="models",
        metavar="MODEL",
        help="serve only this model (repeatable), as vLLM's --served-model-name",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        metavar="N",
        help="serve N completions at once, queue the rest FIFO (default: no limit)",
    )
    parser.add_argument(
        "--service-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="how long one completion takes once served (default: 0)",
    )
    args = parser.parse_args(argv)
    if args.max_concurrency is not None and args.max_concurrency < 1:
        parser.error("--max-concurrency must be at least 1")
    if args.service_ms < 0:
        parser.error("--service-ms must not be negative")
    asyncio.run(
        _serve(
            args.host,
            args.port,
            args.name,
            args.mode,
            args.models,
            args.max_concurrency,
            args.service_ms,
        )
    )


if __name__ == "__main__":
    main()
