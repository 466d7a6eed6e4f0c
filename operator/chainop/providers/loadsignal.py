"""Load signals: read an in-cluster server's Prometheus text endpoint into a ``LoadReading``.

A provider with ``loadSignal`` has its server's ``/metrics`` read once per probe interval
(the runtime shares one read per distinct URL among every chain naming it). It costs
nothing: no completion is sent, only the page the server already keeps for Prometheus.
What to do with the reading (skip a saturated provider, ignore a stale reading) is
``chainop.core.load``'s; this module only fetches and understands it.

The page is parsed with ``prometheus_client``'s text parser (never by hand: label values
may hold spaces, braces and escaped quotes). These gauges are understood; the names come
from each server's own source, cited where they are defined:

============  =====================================  ===================================
server        waiting / running                      KV cache in use (0-1)
============  =====================================  ===================================
vLLM          ``vllm:num_requests_waiting`` /        ``vllm:kv_cache_usage_perc`` (V1),
              ``vllm:num_requests_running``          ``vllm:gpu_cache_usage_perc``
                                                     (before it; both for a while)
llama.cpp     ``llamacpp:requests_deferred`` /       ``llamacpp:kv_cache_usage_ratio``
              ``llamacpp:requests_processing``       (builds before May 2025 only)
SGLang        ``sglang:num_queue_reqs`` /            ``sglang:token_usage``
              ``sglang:num_running_reqs``
TGI           ``tgi_queue_size`` /                   (not published)
              ``tgi_batch_current_size``
============  =====================================  ===================================

Sources: vLLM ``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``: the gauges carry
``model_name`` and, since data parallelism, ``engine`` labels; ``gpu_cache_usage_perc``
was deprecated for ``kv_cache_usage_perc``, "KV-cache usage. 1 means 100 percent usage");
llama.cpp ``tools/server/server-task.cpp`` (``server_task_result_metrics::to_metrics``:
``requests_processing`` is ``n_processing_slots``, ``requests_deferred`` is
``n_tasks_deferred``) and ``examples/server/server.cpp`` before PR #13660 removed
``kv_cache_usage_ratio`` (``kv_cache_used_cells / n_ctx``); SGLang
``python/sglang/srt/metrics/collector.py`` (``SchedulerMetricsCollector``:
``num_running_reqs``, ``num_queue_reqs`` "The number of requests in the waiting queue",
``token_usage`` the used share of the KV token pool); TGI ``backends/v3/src/queue.rs``
(``tgi_queue_size``) and ``backends/v3/src/backend.rs`` (``tgi_batch_current_size``),
listed in ``docs/source/reference/metrics.md``.

Aggregation: ``waiting`` and ``running`` are the sums over every series of every known
name (one per engine, model or rank: a server with two engines has twice the queue);
``kv_cache_usage`` is the highest series (the fullest engine saturates first). A value
that is not a finite number, a negative count, or a KV share outside 0-1 is left out:
a broken gauge must not make a server look idle or full. A page with none of these
names is an error (``LoadSignalError``), never a reading of zeros: "we cannot tell"
must not read as "idle".
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from chainop.core.errors import ProviderError
from chainop.core.load import LoadReading
from chainop.core.models import ProviderSpec
from chainop.providers import errors
from chainop.providers.http import Wire

#: Requested explicitly: a prometheus_client server would otherwise be free to answer in
#: OpenMetrics, whose counters and EOF marker the text parser does not expect.
ACCEPT = "text/plain; version=0.0.4"
#: Pages longer than this are parsed in a worker thread: the parser is pure Python
#: (measured ~28 ms for 180 kB, 2,000 series), and a large vLLM page with histograms per
#: engine must not stall every task of the event loop for that long.
PARSE_INLINE_CHARS = 64 * 1024
#: At most this much of an error reply is quoted in a message (it reaches logs).
MAX_QUOTED = 200


class LoadSignalError(Exception):
    """The load signal could not be read: no answer, not a metrics page, or no known name.

    The message is one line, safe for logs (secrets redacted, server text cut short).
    """


class Role(Enum):
    """What a known gauge measures."""

    WAITING = "waiting"
    RUNNING = "running"
    KV_CACHE = "kvCacheUsage"


#: Every gauge understood, by its name on the wire (see the module docstring for sources).
KNOWN: Mapping[str, Role] = {
    # vLLM (vllm/v1/metrics/loggers.py)
    "vllm:num_requests_waiting": Role.WAITING,
    "vllm:num_requests_running": Role.RUNNING,
    "vllm:kv_cache_usage_perc": Role.KV_CACHE,
    "vllm:gpu_cache_usage_perc": Role.KV_CACHE,
    # llama.cpp (tools/server/server-task.cpp; kv_cache_usage_ratio before PR #13660)
    "llamacpp:requests_deferred": Role.WAITING,
    "llamacpp:requests_processing": Role.RUNNING,
    "llamacpp:kv_cache_usage_ratio": Role.KV_CACHE,
    # SGLang (python/sglang/srt/metrics/collector.py)
    "sglang:num_queue_reqs": Role.WAITING,
    "sglang:num_running_reqs": Role.RUNNING,
    "sglang:token_usage": Role.KV_CACHE,
    # TGI (backends/v3/src/queue.rs, backends/v3/src/backend.rs)
    "tgi_queue_size": Role.WAITING,
    "tgi_batch_current_size": Role.RUNNING,
}


@dataclass(frozen=True, slots=True)
class _Tally:
    """What one page said, before it becomes a reading."""

    waiting: float
    running: float
    kv_cache_usage: float | None
    usable: int  # known series with a usable value
    seen: int  # known series at all


def metrics_url(provider: ProviderSpec) -> str:
    """Where ``provider``'s load signal is read: ``metricsPath`` at the root of the
    endpoint's host, as ``probe.healthPath`` (vLLM, llama.cpp and SGLang all serve
    ``/metrics`` beside ``/v1``, not under it). Purely computational.

    Raises ``ValueError`` for a provider without ``loadSignal``.
    """
    if provider.load_signal is None:
        raise ValueError(f"provider {provider.name} has no loadSignal")
    parts = urlsplit(provider.endpoint)
    return f"{parts.scheme}://{parts.netloc}{provider.load_signal.metrics_path}"


def parse_load(text: str, *, observed_at: float) -> LoadReading:
    """The reading a Prometheus text page gives, stamped ``observed_at`` (epoch seconds).

    Purely computational. Raises ``LoadSignalError`` when the page is not Prometheus
    text, or names none of the known gauges with a usable value.
    """
    tally = _tally(text)
    if tally.usable == 0:
        if tally.seen:
            raise LoadSignalError(
                f"{tally.seen} load series found, none with a usable value "
                "(not a finite count, or a KV share outside 0-1)"
            )
        raise LoadSignalError(
            "no load metric found (known: vLLM vllm:num_requests_waiting, llama.cpp "
            "llamacpp:requests_deferred, SGLang sglang:num_queue_reqs, TGI tgi_queue_size"
            " and their running/KV gauges); is this the server's metrics page "
            "(llama-server needs --metrics, SGLang --enable-metrics)?"
        )
    return LoadReading(
        waiting=tally.waiting,
        running=tally.running,
        kv_cache_usage=tally.kv_cache_usage,
        observed_at=observed_at,
    )


def _tally(text: str) -> _Tally:
    waiting = running = 0.0
    kv: float | None = None
    usable = seen = 0
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                role = KNOWN.get(sample.name)
                if role is None:
                    continue
                seen += 1
                value = sample.value
                if not math.isfinite(value) or value < 0:
                    continue
                if role is Role.KV_CACHE:
                    if value > 1:
                        continue  # documented as a 0-1 share: a percentage is not guessed at
                    kv = value if kv is None else max(kv, value)
                elif role is Role.WAITING:
                    waiting += value
                else:
                    running += value
                usable += 1
    except (ValueError, IndexError, KeyError, TypeError) as error:
        # prometheus_client's parser raises these on malformed lines (IndexError and
        # KeyError from its hand-rolled tokenizer on truncated input).
        why = _one_line(str(error)) or type(error).__name__
        raise LoadSignalError(f"not a Prometheus text page: {why}") from None
    return _Tally(waiting, running, kv, usable, seen)


async def read_load(
    wire: Wire,
    url: str,
    *,
    now: float,
    timeout: float,  # noqa: ASYNC109 - the read's whole budget, as probes have
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str | None] = (),
) -> LoadReading:
    """GET ``url`` over the shared client and parse it into a reading stamped ``now``.

    One request, never retried, bounded in time and size by the ``Wire`` like a probe.
    ``headers`` are the provider's own (its API key, as probes send it: llama-server
    started with ``--api-key`` guards ``/metrics`` too; vLLM and SGLang do not look).
    Raises ``LoadSignalError`` for everything: no answer, a non-2xx status, a page
    that is not Prometheus text or names no known gauge.
    """
    secrets = tuple(secrets)
    wanted = {**(headers or {}), "accept": ACCEPT}
    try:
        reply = await wire.request("GET", url, timeout=timeout, headers=wanted, secrets=secrets)
    except ProviderError as error:
        raise LoadSignalError(f"{url}: {error.message}") from None
    if not reply.ok:
        said = reply.body[:MAX_QUOTED].decode("utf-8", errors="replace")
        said = errors.redact(_one_line(said), secrets)
        raise LoadSignalError(f"{url}: HTTP {reply.status_code}" + (f": {said}" if said else ""))
    text = reply.body.decode("utf-8", errors="replace")
    try:
        if len(text) > PARSE_INLINE_CHARS:
            return await asyncio.to_thread(parse_load, text, observed_at=now)
        return parse_load(text, observed_at=now)
    except LoadSignalError as error:
        raise LoadSignalError(f"{url}: {errors.redact(str(error), secrets)}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_QUOTED]
