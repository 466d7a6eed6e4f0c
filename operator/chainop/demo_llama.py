"""The demo's real-model-server step: llama.cpp's ``llama-server`` at the head of a chain.

Everything else in the demo runs against fake backends; this step shows chainop against
a model server written by others (SmolLM2-135M with a 256-token context, built once per
machine by ``make llama-build``): a task answered with generated text and real token
counts, and the server's own context-overflow reply (HTTP 400
``exceed_context_size_error``) advancing a long task to the next provider without
penalty. When the binary is not cached the step says how to get it and moves on.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from chainop.core.models import GROUP, VERSION
from chainop.testing import llama
from chainop.testing.cluster import free_port

if TYPE_CHECKING:
    from chainop.demo import Demo

CHAIN = "local-llm"
SHORT = {"messages": [{"role": "user", "content": "Say hello in five words."}], "maxTokens": 24}
LONG_WORDS = 600  # far beyond the server's 256-token context


def _task(name: str, request: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DelegatedTask",
            "metadata": {"name": name},
            "spec": {
                "chain": CHAIN,
                "routing": {"allowDelegation": True},
                "request": request,
                "timeoutSeconds": 60,
            },
        }
    )


def real_model_server(demo: Demo) -> None:
    """Run the step (see the module docstring); never fails the demo for a missing build."""
    demo.step("A real model server: llama.cpp's llama-server at the head of a chain")
    missing = llama.missing_reason()
    if missing is not None:
        demo.note(f"skipped: {missing}")
        return
    port = free_port()
    log_path = demo.options.log_dir / "backends" / "llama-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server = llama.LlamaServer(port=port, log_path=log_path)
    demo.on_cleanup("stopping llama-server", server.stop)
    server.start()
    seen = server.wait_ready(timeout=demo.options.wait_timeout)
    loading = [h for h in seen if h.status == 503]
    demo.note(
        f"llama-server (SmolLM2-135M, -c 256) on {server.url}: "
        + (
            f"/health said 503 {loading[0].body.strip()} while loading, then 200"
            if loading
            else "/health 200"
        )
    )
    openai_url = demo.backends.get("openai", "")
    chain = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ProviderChain",
        "metadata": {"name": CHAIN},
        "spec": {
            "providers": [
                {
                    "name": "llama",
                    "type": "openai",
                    "endpoint": server.url,
                    "model": llama.DEFAULT_ALIAS,
                    "privacyTier": "Sovereign",
                    "probe": {"kind": "Generate"},
                    "timeoutSeconds": 30,
                },
                {
                    "name": "openai",
                    "type": "openai",
                    "endpoint": openai_url,
                    "model": "gpt-4o-mini",
                    "privacyTier": "Standard",
                    "apiKeySecretRef": {"name": "openai-key", "key": "apiKey"},
                },
            ],
            "health": {"probe": {"intervalSeconds": 2, "timeoutSeconds": 10}},
        },
    }
    demo.kubectl("apply", "-f", "-", input=json.dumps(chain))
    demo.wait(
        f"chain {CHAIN} Ready",
        lambda: any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in demo.chain_status(CHAIN).get("conditions") or []
        ),
    )
    demo.kubectl("apply", "-f", "-", input=_task("llama-short", SHORT))
    long_prompt = " ".join(f"word{i}" for i in range(LONG_WORDS))
    demo.kubectl(
        "apply",
        "-f",
        "-",
        input=_task("llama-too-long", {"messages": [{"role": "user", "content": long_prompt}]}),
    )
    short = demo.wait_task("llama-short")
    long = demo.wait_task("llama-too-long")
    demo.kubectl("get", "dtask", "llama-short", "llama-too-long")
    result = short.get("result") or {}
    demo.note(
        f"✓ llama-short answered by {result.get('provider')}: {result.get('text', '').strip()!r} "
        f"({result.get('inputTokens')} prompt + {result.get('outputTokens')} generated tokens)"
    )
    first = (long.get("attempts") or [{}])[0]
    demo.note(
        f"✓ llama-too-long: llama said {first.get('outcome')} ({first.get('error', '')[:90]}), "
        f"so {long.get('provider')} answered; llama is "
        f"{demo.provider(CHAIN, 'llama').get('state')} (no penalty)"
    )
