"""Issue 14: local-first under load (``python -m bench local-first``).

Teams keep work on their own GPUs and use the cloud only when they must. A local server
that is merely *saturated* (a queue, not a failure) should shed what it cannot serve to a
permitted cloud provider instead of making every task wait its turn. This section
measures that side by side, in one run, against the same backends:

* **spillover** — ``--lf-tasks`` tasks arriving at ``--lf-rate`` per second (open loop:
  arrivals do not wait for answers, as independent users would not) at a *local* backend
  that serves ``--lf-slots`` requests at a time in ``--lf-service-ms`` each (the rest wait
  FIFO, as in vLLM's scheduler) with a *cloud* provider that has no queue but a slower
  answer (``--lf-cloud-ms``). Arrivals are above the local capacity on purpose. Contenders:
  (a) chainop as today (no ``loadSignal``: only failures move work); (b) chainop with
  ``loadSignal: {maxWaiting}`` on the local provider and a short probe interval
  (``--lf-probe``, s), once as the issue writes it (the server's slots learned from a
  reading) and once with ``slots`` declared; (c) LiteLLM's Router over the same two deployments with
  ``routing_strategy="least-busy"`` and ``"latency-based-routing"``. Figures: p50/p99
  from our send to the answer (chainop: create → the watch event showing Succeeded, so
  chainop also pays the API server round trips; LiteLLM: ``acompletion`` in process) and
  the share of tasks the local backend answered. Then the load-aware contenders once more
  at ``--lf-light-rate`` (below the local capacity), where a local-first router should
  keep everything local and a load balancer need not.
* **hedging** — a heavy-tailed backend (``--lf-tail-share`` of its calls
  ``--lf-tail-factor`` times slower) and an identical, independent replica next to it in the
  chain; the same tasks without and with ``spec.hedge``. Figures: p99, and the extra calls
  the hedges cost (the backends' own request counters: every call made, cancelled ones
  included).

The backends are chainop's fake (``chainop.testing.fake_backend``), all in one process
pinned away from the operator (``python -m bench.local_first serve``). The fake's queue
model (``max_concurrency``, ``service_ms``, ``GET /metrics`` in vLLM's format) is used
when it has one; otherwise this module adds an equivalent queue and ``/metrics`` of its
own, and says so in the results. The heavy tail is added here, in front of the fake's
handler (the fake has no "k % of calls slower" setting).

A control plane this section started is stopped at its end; one it found is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MODEL = "fake-model"
PROMPT = "Say hello in one word."
#: Generous per-call timeout everywhere: a queue must show as latency, not as failover.
CALL_TIMEOUT = 60.0
#: What each operator run waits for its tasks at most.
DRAIN_TIMEOUT = 180.0


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the report."""
    print(message, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank (the same rule as bench/operator.py)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(latencies_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99/max of a list of latencies, rounded to 0.1 ms."""
    return {
        "p50_ms": round(pct(latencies_ms, 0.50), 1),
        "p90_ms": round(pct(latencies_ms, 0.90), 1),
        "p99_ms": round(pct(latencies_ms, 0.99), 1),
        "max_ms": round(max(latencies_ms, default=0.0), 1),
    }


# --------------------------------------------------------------------------- backends


def fake_has_queue_model() -> bool:
    """Whether chainop's fake backend models a queue itself (``max_concurrency``)."""
    from chainop.testing import fake_backend

    return "max_concurrency" in fake_backend.SETTING_KEYS


class QueueModel:
    """A vLLM-like queue in front of a fake backend, for fakes that have none.

    ``slots`` requests are served at once for ``service_ms`` each; the rest wait in FIFO
    order (asyncio's Semaphore wakes waiters in order). ``GET /metrics`` publishes the
    queue under vLLM's names. KV-cache use is modelled as 1 % per running request (the
    bench's prompts are a few tokens), so only the queue can saturate the server.
    """

    def __init__(self, slots: int, service_ms: float) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.service = service_ms / 1000
        self.waiting = 0
        self.running = 0

    async def serve(self) -> None:
        """Wait for a slot, then hold it for the service time."""
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            await asyncio.sleep(self.service)
        finally:
            self.running -= 1
            self.slots.release()

    def metrics(self, model: str) -> str:
        """The Prometheus text vLLM publishes for these three gauges."""
        labels = f'{{engine="0",model_name="{model}"}}'
        lines = []
        for name, value, text in (
            ("vllm:num_requests_running", self.running, "Requests on the GPU."),
            ("vllm:num_requests_waiting", self.waiting, "Requests waiting to be processed."),
            ("vllm:kv_cache_usage_perc", 0.01 * self.running, "KV-cache usage. 1 = 100%."),
        ):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name}{labels} {value}"]
        return "\n".join(lines) + "\n"


async def serve_backends(specs: list[dict[str, Any]]) -> None:
    """Run one fake backend per spec on one event loop until SIGTERM.

    A spec: ``name``, ``port``, and any of ``delay_ms`` (a plain slow answer), ``slots``
    with ``service_ms`` (a queue), ``tail_share`` with ``tail_factor`` and ``seed`` (that
    share of the calls, drawn at random, takes ``tail_factor`` times the base time).
    ``GET /_calls`` answers how many generation calls arrived (cancelled ones included),
    ``GET /_tail`` how many were slowed.
    """
    from aiohttp import web

    from chainop.testing.fake_backend import FakeBackend

    own_queue = not fake_has_queue_model()
    backends = []
    for spec in specs:
        backend = FakeBackend(spec["name"], port=spec["port"])
        app = backend.server.app
        app.middlewares.append(_counting_middleware())
        base_ms = float(spec.get("service_ms") or spec.get("delay_ms") or 0.0)
        if spec.get("slots"):
            if own_queue:
                queue = QueueModel(int(spec["slots"]), float(spec["service_ms"]))
                app.middlewares.append(_queue_middleware(queue))

                async def metrics(request: web.Request, queue: QueueModel = queue) -> web.Response:
                    return web.Response(text=queue.metrics(MODEL), content_type="text/plain")

                app.router.add_get("/metrics", metrics)
            else:
                backend.state.configure(
                    {"max_concurrency": int(spec["slots"]), "service_ms": spec["service_ms"]}
                )
        elif spec.get("delay_ms"):
            backend.state.configure({"delay_ms": float(spec["delay_ms"])})
        if spec.get("tail_share"):
            app.middlewares.append(_tail_middleware(spec, base_ms))
        backends.append(backend)
    for backend in backends:
        await backend.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"ready {len(backends)} own_queue={own_queue}", flush=True)
    await stop.wait()
    for backend in backends:
        await backend.stop()


def _is_generation(request: Any) -> bool:
    return bool(request.method == "POST" and request.path.endswith("/chat/completions"))


def _counting_middleware() -> Any:
    """Count every generation call as it arrives (``GET /_calls``).

    The fake counts a request when its handler runs; a call that a hedge cancelled while
    it waited in front of the handler (the heavy tail, a bench-side queue) would never be
    counted there, yet it cost the server a call.
    """
    from aiohttp import web

    calls = Counter[str]()

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> Any:
        if request.path == "/_calls":
            return web.json_response(dict(calls))
        if _is_generation(request):
            calls["calls"] += 1
        return await handler(request)

    return middleware


def _queue_middleware(queue: QueueModel) -> Any:
    from aiohttp import web

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> Any:
        if _is_generation(request):
            await queue.serve()
        return await handler(request)

    return middleware


def _tail_middleware(spec: dict[str, Any], base_ms: float) -> Any:
    """Slow a random share of the generation calls down to ``tail_factor`` times base."""
    from aiohttp import web

    rng = random.Random(spec.get("seed", 14))
    extra = base_ms * (float(spec["tail_factor"]) - 1) / 1000
    share = float(spec["tail_share"])
    slowed = Counter[str]()

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> Any:
        if request.path == "/_tail":
            return web.json_response(dict(slowed))
        if _is_generation(request) and rng.random() < share:
            slowed["slow"] += 1
            await asyncio.sleep(extra)
        return await handler(request)

    return middleware


class Backends:
    """The bench's backends in one child process, pinned to the backends' CPU."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        from bench.backend import free_port

        self.specs = [dict(s, port=s.get("port") or free_port()) for s in specs]
        self.process: subprocess.Popen[str] | None = None
        self.own_queue: bool | None = None

    def url(self, name: str) -> str:
        """``http://127.0.0.1:PORT`` of the backend called ``name``."""
        port = next(s["port"] for s in self.specs if s["name"] == name)
        return f"http://127.0.0.1:{port}"

    def __enter__(self) -> Backends:
        from bench.backend import backend_cpus, pin

        self.process = subprocess.Popen(
            [PY, "-m", "bench.local_first", "serve", json.dumps(self.specs)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        pin(self.process.pid, backend_cpus())
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("ready"):
            self.__exit__()
            raise RuntimeError(f"bench backends did not start: {line!r}")
        self.own_queue = "own_queue=True" in line
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    def calls(self) -> dict[str, int]:
        """Generation calls each backend received so far (its own counter)."""
        out = {}
        for spec in self.specs:
            url = self.url(spec["name"]) + "/_calls"
            with urllib.request.urlopen(url, timeout=10) as reply:
                out[spec["name"]] = int(json.loads(reply.read()).get("calls", 0))
        return out

    def slowed(self, name: str) -> int:
        """Calls the tail slowed on backend ``name``."""
        with urllib.request.urlopen(self.url(name) + "/_tail", timeout=10) as reply:
            return int(json.loads(reply.read()).get("slow", 0))


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Per-key difference of two counter snapshots."""
    return {k: after[k] - before.get(k, 0) for k in after}


# --------------------------------------------------------------------------- chainop


def provider(name: str, url: str, tier: str, **extra: Any) -> dict[str, Any]:
    """One ProviderChain provider on a fake backend."""
    return {
        "name": name,
        "type": "openai",
        "endpoint": f"{url}/v1",
        "model": MODEL,
        "privacyTier": tier,
        "timeoutSeconds": CALL_TIMEOUT,
        **extra,
    }


def chain_body(name: str, providers: list[dict[str, Any]], probe_s: float) -> dict[str, Any]:
    """A ProviderChain probing every ``probe_s`` seconds (the load signal's refresh)."""
    from bench.operator import GROUP, VERSION

    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ProviderChain",
        "metadata": {"name": name},
        "spec": {
            "providers": providers,
            "health": {"probe": {"intervalSeconds": probe_s}},
        },
    }


def task_body(name: str, chain: str, hedge: dict[str, Any] | None) -> dict[str, Any]:
    """A DelegatedTask that may leave the Sovereign tier (the cloud is permitted)."""
    from bench.operator import GROUP, VERSION

    spec: dict[str, Any] = {
        "chain": chain,
        "routing": {"allowDelegation": True},
        "request": {"messages": [{"role": "user", "content": PROMPT}], "maxTokens": 16},
        "timeoutSeconds": 120,
    }
    if hedge:
        spec["hedge"] = hedge
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DelegatedTask",
        "metadata": {"name": name},
        "spec": spec,
    }


def paced(count: int, rate: float, send: Any, threads: int = 16) -> dict[int, float]:
    """Call ``send(i)`` for i < count at ``rate`` per second (open loop); send times."""
    sent: dict[int, float] = {}
    t0 = time.monotonic() + 0.2
    lock = threading.Lock()
    following = iter(range(count))

    def worker() -> None:
        while True:
            with lock:
                i = next(following, None)
            if i is None:
                return
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            sent[i] = time.monotonic()
            send(i)

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result()
    return sent


def attempts_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("status") or {}).get("attempts") or [])


def chain_load(obj: dict[str, Any], name: str) -> dict[str, Any] | None:
    """``status.providers[name].load`` of a ProviderChain, if chainop wrote one."""
    for entry in (obj.get("status") or {}).get("providers") or []:
        if entry.get("name") == name:
            load = entry.get("load")
            return dict(load) if load else None
    return None


def chain_ready(obj: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def operator_run(
    key: str,
    *,
    backends: Backends,
    providers: list[dict[str, Any]],
    hedge: dict[str, Any] | None,
    args: Any,
    logs: Path,
    count: int,
    rate: float,
    warmup: int,
    local: str,
) -> dict[str, Any]:
    """One chainop contender: its own namespace and operator process, then the tasks."""
    from bench.operator import (
        CHAINS,
        GROUP,
        TASKS,
        VERSION,
        Namespace,
        Watcher,
        api,
        custom,
        loadavg,
        operator_process,
        task_done,
    )

    api_client = api()
    k = custom(api_client)
    out: dict[str, Any] = {"key": key, "hedge": hedge, "rate_per_s": rate}
    with Namespace(f"bench-lf-{key}") as ns:
        k.create_namespaced_custom_object(
            GROUP, VERSION, ns, CHAINS, chain_body("lf", providers, args.lf_probe)
        )
        chains = Watcher(api_client, GROUP, VERSION, CHAINS, ns, lambda o: False)
        tasks = Watcher(api_client, GROUP, VERSION, TASKS, ns, task_done)
        op, metrics_port = operator_process(
            ns, tick=args.lf_tick, log_path=logs / f"chainop-{key}.log"
        )
        try:
            with op:
                op.wait_for_log(r"chainop started", timeout=60)
                if chains.wait_for(lambda last: chain_ready(last.get("lf", {})), 30) is None:
                    log(f"  {key}: chain not Ready after 30 s; measuring anyway")
                if any(p.get("loadSignal") for p in providers):
                    seen = chains.wait_for(
                        lambda last: chain_load(last.get("lf", {}), local) is not None, 15
                    )
                    out["load_signal_read"] = seen is not None
                    if seen is None:
                        log(f"  {key}: no status.providers[{local}].load after 15 s")

                def create(name: str) -> None:
                    k.create_namespaced_custom_object(
                        GROUP, VERSION, ns, TASKS, task_body(name, "lf", hedge)
                    )

                warm = [f"warm-{i}" for i in range(warmup)]
                paced(len(warm), min(rate, 20.0), lambda i: create(warm[i]))
                if not tasks.wait(warm, 60):
                    raise RuntimeError(f"{key}: warm-up tasks not done in 60 s")
                time.sleep(max(1.5, 2 * args.lf_probe))  # queues drained, signal refreshed
                before = backends.calls()
                names = [f"t-{i:04d}" for i in range(count)]
                log(f"  {key}: {len(names)} tasks at {rate:g}/s")
                t0 = time.monotonic()
                sent = paced(len(names), rate, lambda i: create(names[i]))
                all_done = tasks.wait(names, DRAIN_TIMEOUT)
                out["seconds"] = round(time.monotonic() - t0, 2)
                out["calls"] = delta(backends.calls(), before)
                out["metrics"] = chainop_counters(metrics_port)
                out["load_at_end"] = chain_load(chains.last.get("lf", {}), local)
        finally:
            chains.stop()
            tasks.stop()
        out["all_done"] = all_done
        out.update(task_figures(names, sent, tasks, local))
        out["loadavg"] = loadavg()
    api_client.close()
    return out


def chainop_counters(port: int) -> dict[str, float]:
    """chainop's own counters for this section (spillovers, saturated skips, hedges)."""
    from bench.operator import scrape, series_sum

    page = scrape(port)
    return {
        name: series_sum(page, f"chainop_{name}_total")
        for name in ("spillovers", "saturated_skips", "hedged_attempts", "task_waits")
    }


def task_figures(
    names: list[str], sent: dict[int, float], tasks: Any, local: str
) -> dict[str, Any]:
    """Latencies, who answered, and what the attempts say, from the last watch events.

    Where the time went, per task: *pickup* (our send → the operator's ``startTime``: the
    API server, the watch and the operator's queue), *call* (``result.latencyMs``: first
    attempt → answer, the backend's queue included) and *after call* (the rest: the status
    write and our watch seeing it). Wall clocks of one machine, so the differences are sound.
    """
    wall = time.time() - time.monotonic()
    latencies = []
    by_provider: dict[str, list[float]] = {}
    pickup: list[float] = []
    call: list[float] = []
    after: list[float] = []
    answered: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    hedged_attempts = skipped_saturated = 0
    for i, name in enumerate(names):
        obj = tasks.last.get(name, {})
        status = obj.get("status") or {}
        phases[status.get("phase", "none")] += 1
        if name in tasks.done_at and status.get("phase") == "Succeeded":
            latency = (tasks.done_at[name] - sent[i]) * 1000
            result = status.get("result") or {}
            latencies.append(latency)
            answered[result.get("provider", "?")] += 1
            by_provider.setdefault(result.get("provider", "?"), []).append(latency)
            call.append(float(result.get("latencyMs", 0)))
            with contextlib.suppress(KeyError, ValueError):
                started = datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
                pickup.append((started.timestamp() - (sent[i] + wall)) * 1000)
                after.append(latency - pickup[-1] - call[-1])
        for attempt in attempts_of(obj):
            outcomes[attempt.get("outcome", "?")] += 1
            hedged_attempts += bool(attempt.get("hedged"))
            skipped_saturated += "saturated" in str(attempt.get("error", ""))
    done = sum(answered.values())
    return {
        "local_share_by_second": share_by_second(names, sent, tasks, local),
        "tasks": len(names),
        "succeeded": done,
        "phases": dict(phases),
        "answered_by": dict(answered),
        "local_share": round(answered[local] / done, 3) if done else 0.0,
        "attempt_outcomes": dict(outcomes),
        "hedged_attempts": hedged_attempts,
        "saturated_skips": skipped_saturated,
        **summary(latencies),
        "send_spread_s": round(max(sent.values()) - min(sent.values()), 2) if sent else 0.0,
        "by_provider": {name: summary(values) for name, values in sorted(by_provider.items())},
        "pickup": summary(pickup),
        "call": summary(call),
        "after_call": summary(after),
    }


def share_by_second(
    names: list[str], sent: dict[int, float], tasks: Any, local: str
) -> list[float]:
    """The share of each second's arrivals that ``local`` answered, in send order.

    A load signal read once per probe interval makes every task of the interval take the
    same turn; this shows whether the choice swings (1, 0, 1, ...) or mixes.
    """
    if not sent:
        return []
    first = min(sent.values())
    buckets: dict[int, list[bool]] = {}
    for i, name in enumerate(names):
        provider_name = ((tasks.last.get(name, {}).get("status") or {}).get("result") or {}).get(
            "provider"
        )
        if i in sent and provider_name:
            buckets.setdefault(int(sent[i] - first), []).append(provider_name == local)
    return [round(sum(v) / len(v), 2) for _, v in sorted(buckets.items())]


# --------------------------------------------------------------------------- LiteLLM


async def litellm_job(job: dict[str, Any]) -> dict[str, Any]:
    """LiteLLM's Router over the two deployments, open-loop arrivals like chainop's."""
    from bench.contenders import import_litellm

    litellm = import_litellm()
    model_list: list[dict[str, Any]] = [
        {
            "model_name": "bench",
            "litellm_params": {
                "model": f"openai/{MODEL}",
                "api_base": f"{url}/v1",
                "api_key": "sk-bench",
                "timeout": CALL_TIMEOUT,
            },
            "model_info": {"id": name},
        }
        for name, url in job["deployments"].items()
    ]
    router = litellm.Router(model_list=model_list, routing_strategy=job["strategy"])

    async def one() -> tuple[float, str]:
        started = time.monotonic()
        response = await router.acompletion(
            model="bench", messages=[{"role": "user", "content": PROMPT}], max_tokens=16
        )
        elapsed = (time.monotonic() - started) * 1000
        if not response.choices[0].message.content:
            raise RuntimeError("empty answer")
        return elapsed, str((response._hidden_params or {}).get("model_id", "?"))

    # First one direct call per backend, outside the Router: the process's cold start
    # (imports, clients: ~0.5 s) would otherwise be booked as the first deployment's
    # latency, and latency-based routing never tries a deployment again once it looks slow.
    for deployment in model_list:
        params = deployment["litellm_params"]
        await litellm.acompletion(
            messages=[{"role": "user", "content": PROMPT}], max_tokens=16, **params
        )
    for _ in range(job["warmup"]):  # connections, the strategies' first samples
        await one()
    await asyncio.sleep(job["settle"])
    t0 = time.monotonic() + 0.1
    pending = []
    for i in range(job["count"]):
        await asyncio.sleep(max(0.0, t0 + i / job["rate"] - time.monotonic()))
        pending.append(asyncio.ensure_future(one()))
    results = await asyncio.gather(*pending, return_exceptions=True)
    latencies = [r[0] for r in results if isinstance(r, tuple)]
    answered = Counter(r[1] for r in results if isinstance(r, tuple))
    errors = Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
    by_provider: dict[str, list[float]] = {}
    by_second: dict[int, list[bool]] = {}
    for i, r in enumerate(results):
        if isinstance(r, tuple):
            by_provider.setdefault(r[1], []).append(r[0])
            by_second.setdefault(int(i / job["rate"]), []).append(r[1] == job["local"])
    done = len(latencies)
    return {
        "by_provider": {name: summary(values) for name, values in sorted(by_provider.items())},
        "local_share_by_second": [round(sum(v) / len(v), 2) for _, v in sorted(by_second.items())],
        "succeeded": done,
        "errors": dict(errors),
        "answered_by": dict(answered),
        "local_share": round(answered[job["local"]] / done, 3) if done else 0.0,
        "seconds": round(time.monotonic() - t0, 2),
        **summary(latencies),
    }


def litellm_run(
    strategy: str,
    *,
    backends: Backends,
    args: Any,
    local: str,
    cloud: str,
    count: int,
    rate: float,
) -> dict[str, Any]:
    """One LiteLLM contender in a fresh process (its imports and threads stay out of ours)."""
    from bench.operator import loadavg

    job = {
        "strategy": strategy,
        "deployments": {local: backends.url(local), cloud: backends.url(cloud)},
        "local": local,
        "count": count,
        "rate": rate,
        "warmup": args.lf_warmup,
        "settle": max(1.5, 2 * args.lf_probe),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_TELEMETRY": "False"}
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    before = backends.calls()
    proc = subprocess.run(
        [PY, "-m", "bench.local_first", "litellm", json.dumps(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"LiteLLM {strategy} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out: dict[str, Any] = {"key": f"litellm-{strategy}", "strategy": strategy}
    out.update(json.loads(lines[-1]))
    out["calls"] = delta(backends.calls(), before)  # warm-up included
    out["tasks"] = count
    out["rate_per_s"] = rate
    out["loadavg"] = loadavg()
    return out


# --------------------------------------------------------------------------- parts


def spillover(args: Any, logs: Path) -> dict[str, Any]:
    """(a) chainop today, (b) chainop with loadSignal, (c) LiteLLM x 2, same backends."""
    specs = [
        {"name": "vllm", "slots": args.lf_slots, "service_ms": args.lf_service_ms},
        {"name": "cloud", "delay_ms": args.lf_cloud_ms},
    ]
    # maxKvCacheUsage null by default: the fake's KV share is running / slots, 100 % as
    # soon as the slots are busy, so a KV limit would call it saturated with an empty queue
    # (a real vLLM serving a few-token prompt is far from a full KV cache). The queue alone
    # decides, as the maxWaiting means it to.
    load_signal: dict[str, Any] = {
        "metricsPath": "/metrics",
        "maxWaiting": args.lf_max_waiting,
        "maxKvCacheUsage": args.lf_max_kv,
    }
    out: dict[str, Any] = {
        "settings": {
            "tasks": args.lf_tasks,
            "rate_per_s": args.lf_rate,
            "local_slots": args.lf_slots,
            "local_service_ms": args.lf_service_ms,
            "local_capacity_per_s": round(args.lf_slots * 1000 / args.lf_service_ms, 1),
            "cloud_ms": args.lf_cloud_ms,
            "probe_interval_s": args.lf_probe,
            "load_signal": load_signal,
            "warmup": args.lf_warmup,
            "rounds": args.lf_rounds,
            "light_tasks": args.lf_light_tasks,
            "light_rate_per_s": args.lf_light_rate,
        },
        "runs": [],
        "light": [],
    }
    heavy = (args.lf_tasks, args.lf_rate)
    light = (args.lf_light_tasks, args.lf_light_rate)
    with Backends(specs) as backends:
        out["queue_model"] = "bench-side" if backends.own_queue else "fake backend"
        order = args.lf_spill_order.split(",")
        for round_index in range(args.lf_rounds):
            # Alternate the order: whatever drifts on a shared machine hits both ends.
            for key in order if round_index % 2 == 0 else order[::-1]:
                log(f"local-first spillover round {round_index + 1}/{args.lf_rounds}: {key}")
                tag = f"{key}-r{round_index + 1}"
                run = spill_run(key, tag, backends, load_signal, args, logs, load=heavy)
                run["key"], run["round"] = key, round_index + 1
                log(f"  {key}: {json.dumps({k: run.get(k) for k in SHOWN})}")
                out["runs"].append(run)
        if args.lf_light_rate > 0:
            # Below the local capacity: a local-first router should keep everything local.
            for key in LIGHT_CONTENDERS:
                log(f"local-first spillover, light load: {key}")
                run = spill_run(key, f"{key}-light", backends, load_signal, args, logs, load=light)
                run["key"] = key
                log(f"  {key}: {json.dumps({k: run.get(k) for k in SHOWN})}")
                out["light"].append(run)
    return out


#: The spillover contenders of each round, in the first round's order.
SPILL_CONTENDERS = (
    "chainop-today",
    "chainop-loadsignal",
    "chainop-loadsignal-slots",
    "litellm-least-busy",
    "litellm-latency-based-routing",
)
#: Measured again below the local capacity: the two load-aware chainop/LiteLLM choices.
LIGHT_CONTENDERS = (
    "chainop-loadsignal",
    "chainop-loadsignal-slots",
    "litellm-least-busy",
    "litellm-latency-based-routing",
)


def spill_run(
    key: str,
    tag: str,
    backends: Backends,
    load_signal: dict[str, Any],
    args: Any,
    logs: Path,
    *,
    load: tuple[int, float],
) -> dict[str, Any]:
    """One spillover contender by key (chainop-today, chainop-loadsignal, litellm-*);
    ``load`` is (tasks, arrivals per second)."""
    count, rate = load
    if key.startswith("litellm-"):
        strategy = key.removeprefix("litellm-")
        return litellm_run(
            strategy,
            backends=backends,
            args=args,
            local="vllm",
            cloud="cloud",
            count=count,
            rate=rate,
        )
    extra: dict[str, Any] = {}
    if key == "chainop-loadsignal":
        extra = {"loadSignal": load_signal}
    elif key == "chainop-loadsignal-slots":  # the server's slots declared, not learned
        extra = {"loadSignal": {**load_signal, "slots": args.lf_slots}}
    return operator_run(
        tag,
        backends=backends,
        providers=[
            provider("vllm", backends.url("vllm"), "Sovereign", **extra),
            provider("cloud", backends.url("cloud"), "Standard"),
        ],
        hedge=None,
        args=args,
        logs=logs,
        count=count,
        rate=rate,
        warmup=args.lf_warmup,
        local="vllm",
    )


SHOWN = ("succeeded", "p50_ms", "p99_ms", "max_ms", "local_share", "calls", "hedged_attempts")


def hedging(args: Any, logs: Path) -> dict[str, Any]:
    """A heavy-tailed backend and its replica: the same tasks without and with spec.hedge."""
    tail = {"tail_share": args.lf_tail_share, "tail_factor": args.lf_tail_factor}
    specs = [
        {"name": "replica-a", "delay_ms": args.lf_tail_ms, **tail, "seed": 14},
        {"name": "replica-b", "delay_ms": args.lf_tail_ms, **tail, "seed": 41},
    ]
    variants: list[tuple[str, dict[str, Any] | None]] = [("no-hedge", None)]
    variants.append(("hedge-ms", {"afterMillis": args.lf_hedge_ms, "maxExtra": 1}))
    for q in filter(None, args.lf_hedge_pcts.split(",")):
        variants.append((f"hedge-p{q}", {"afterPercentile": float(q), "maxExtra": 1}))
    out: dict[str, Any] = {
        "settings": {
            "tasks": args.lf_tasks,
            "rate_per_s": args.lf_tail_rate,
            "base_ms": args.lf_tail_ms,
            "tail_share": args.lf_tail_share,
            "tail_factor": args.lf_tail_factor,
            "warmup": args.lf_hedge_warmup,
        },
        "runs": [],
    }
    with Backends(specs) as backends:
        for key, hedge in variants:
            log(f"local-first hedging: {key}")
            slowed_before = backends.slowed("replica-a")
            run = operator_run(
                f"tail-{key}",
                backends=backends,
                providers=[
                    provider("replica-a", backends.url("replica-a"), "Sovereign"),
                    provider("replica-b", backends.url("replica-b"), "Sovereign"),
                ],
                hedge=hedge,
                args=args,
                logs=logs,
                count=args.lf_tasks,
                rate=args.lf_tail_rate,
                warmup=args.lf_hedge_warmup,
                local="replica-a",
            )
            run["variant"] = key
            run["slowed_on_a"] = backends.slowed("replica-a") - slowed_before  # warm-up too
            total = sum(run["calls"].values())
            run["extra_calls"] = total - run["tasks"]
            run["extra_call_share"] = round((total - run["tasks"]) / run["tasks"], 3)
            log(f"  {key}: {json.dumps({k: run.get(k) for k in SHOWN})}")
            out["runs"].append(run)
    return out


def add_arguments(parser: Any) -> None:
    """The section's knobs (``--lf-*``), all with the issue's figures as defaults."""
    g = parser.add_argument_group("local-first (python -m bench local-first)")
    g.add_argument("--lf-tasks", type=int, default=200, help="tasks per contender")
    g.add_argument("--lf-rate", type=float, default=40.0, help="arrivals per second (spillover)")
    g.add_argument("--lf-slots", type=int, default=4, help="local requests served at once")
    g.add_argument("--lf-service-ms", type=float, default=250.0, help="local service time")
    g.add_argument("--lf-cloud-ms", type=float, default=400.0, help="cloud answer time")
    g.add_argument("--lf-probe", type=float, default=1.0, help="probe intervalSeconds")
    g.add_argument("--lf-max-waiting", type=int, default=8, help="loadSignal maxWaiting")
    g.add_argument(
        "--lf-max-kv", type=float, default=None, help="loadSignal maxKvCacheUsage (default null)"
    )
    g.add_argument("--lf-warmup", type=int, default=5, help="untimed tasks first")
    g.add_argument("--lf-rounds", type=int, default=2, help="rounds of the spillover contenders")
    g.add_argument(
        "--lf-light-rate", type=float, default=10.0, help="arrivals/s below capacity (0: skip)"
    )
    g.add_argument("--lf-light-tasks", type=int, default=100, help="tasks at the light rate")
    g.add_argument("--lf-tick", type=float, default=0.25, help="chainop --tick")
    g.add_argument(
        "--lf-spill-order",
        default=",".join(SPILL_CONTENDERS),
    )
    g.add_argument("--lf-tail-ms", type=float, default=100.0, help="heavy-tailed base time")
    g.add_argument("--lf-tail-share", type=float, default=0.05, help="share of slow calls")
    g.add_argument("--lf-tail-factor", type=float, default=10.0, help="how much slower")
    g.add_argument("--lf-tail-rate", type=float, default=20.0, help="arrivals per second (tail)")
    g.add_argument("--lf-hedge-ms", type=int, default=200, help="spec.hedge.afterMillis")
    g.add_argument(
        "--lf-hedge-pcts",
        default="95,90",
        help="also run spec.hedge.afterPercentile at these (comma list; empty: none)",
    )
    g.add_argument("--lf-hedge-warmup", type=int, default=25, help="untimed tasks (p95 known)")
    g.add_argument("--lf-only", default="spillover,hedging", help="comma list of parts")


def run(args: Any) -> dict[str, Any]:
    """The whole section; starts a control plane if none runs and then stops it again."""
    from bench.operator import ensure_crds, loadavg
    from chainop.testing import cluster

    found = cluster.cluster_running()
    logs = Path(tempfile.mkdtemp(prefix="bench-local-first-"))
    log(f"local-first bench: logs in {logs}; control plane {'found' if found else 'started'}")
    out: dict[str, Any] = {"logs": str(logs), "loadavg_at_start": loadavg()}
    only = set(args.lf_only.split(","))
    try:
        ensure_crds()
        if "spillover" in only:
            out["spillover"] = spillover(args, logs)
        if "hedging" in only:
            out["hedging"] = hedging(args, logs)
    finally:
        if not found:
            log("local-first bench: stopping the control plane it started")
            with contextlib.suppress(Exception):
                cluster.stop_cluster()
    out["loadavg_at_end"] = loadavg()
    out["control_plane"] = "found running (left running)" if found else "started and stopped"
    return out


def main(argv: list[str]) -> None:
    """``serve SPECS_JSON`` (the backends) or ``litellm JOB_JSON`` (one LiteLLM run)."""
    if argv[:1] == ["serve"]:
        asyncio.run(serve_backends(json.loads(argv[1])))
    elif argv[:1] == ["litellm"]:
        print(json.dumps(asyncio.run(litellm_job(json.loads(argv[1])))), flush=True)
    else:
        raise SystemExit("usage: python -m bench.local_first serve SPECS | litellm JOB")


if __name__ == "__main__":
    main(sys.argv[1:])
