"""We test these aspects: chainop against a real model server written by others.

The Sovereign head of the chain is llama.cpp's ``llama-server`` (built by
``hack/llama-build.sh``) serving SmolLM2-135M with a 256-token context, run by the
supervisor (playing kubelet: SIGTERM, then SIGKILL after the grace) as the process
behind a real Deployment. Skipped, with the reason, when the binary is not cached.

* a task is answered by the real server: generated text, real token counts;
* the server's own context-overflow reply (HTTP 400 ``exceed_context_size_error``)
  advances the task to the next provider without penalty;
* the server frozen with SIGSTOP (the socket still accepts, nothing answers: a hung
  engine) is detected by the Generate probe, Excluded, its Deployment restarted; the
  restarted server answers 503 "Loading model" while it loads (neither failure nor
  recovery) and the provider is Healthy again; the figure (seconds from the freeze to
  the restart patch, and to Healthy) is printed;
* spillover read from the server's real ``/metrics``: started with one slot and
  ``--metrics``, under a burst of 8 tasks that allow delegation it is kept busy (one
  request decoding, the others deferred: ``llamacpp:requests_deferred``), and tasks that
  arrive while it is saturated skip it (``saturated: ...``) for the fake Standard
  provider behind it; some answered by llama, some spilled, no penalty to its health.

Streamed calls (issue 15), against a server started directly (no Deployment: nothing is
restarted, the freezes are the test's own):

* a streamed answer (``stream: true``, SSE ``chat.completion.chunk`` as llama-server
  frames it) is assembled whole: the same text, word for word, as the server's
  non-streamed answer to the same request (greedy sampling), real token counts from its
  usage chunk, and ``firstTokenMs`` recorded in the attempt and the result;
* the server frozen with SIGSTOP before its first token (the socket still accepts,
  nothing answers) is abandoned within ``firstTokenTimeoutSeconds`` + 1 s -- the
  attempt's own ``latencyMs`` -- and the task is answered by the next provider; thawed,
  it streams again;
* frozen mid-stream (after its ``/slots`` shows tokens decoded), the stalled stream is
  abandoned within ``timeoutSeconds`` + 1 s as a cut stream, never an answer: redone
  whole on the next provider (``onCutStream: Redo``), or continued there from the real
  server's partial text (``Continue``: ``stitched``, ``parts``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chainop.testing import llama
from chainop.testing.cluster import free_port
from chainop.testing.supervisor import BackendSupervisor
from tests.e2e.kit import CHAINS, Kit, outcomes

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(llama.missing_reason() is not None, reason=str(llama.missing_reason())),
]

PROBE = {"intervalSeconds": 1, "timeoutSeconds": 5, "unhealthyThreshold": 2}
SHORT_REQUEST = {"messages": [{"role": "user", "content": "Say hello."}], "maxTokens": 24}


@pytest.fixture
def kubelet(kubeconfig: Path, tmp_path: Path) -> Iterator[BackendSupervisor]:
    """The supervisor with a short grace: a frozen server never exits on SIGTERM."""
    sup = BackendSupervisor(
        kubeconfig, log_dir=tmp_path / "backends", ready_timeout=60, termination_grace=2
    )
    yield sup
    sup.close()


def llama_chain(
    kit: Kit, port: int, cloud_url: str, *, provider: dict[str, Any] | None = None, **spec: Any
) -> None:
    """Chain ``default``: llama (Sovereign, behind Deployment ``llama``; ``provider`` adds
    to its entry), then a fake cloud."""
    kit.create_deployment("llama")
    kit.create_chain(
        "default",
        [
            kit.provider(
                "llama",
                f"http://127.0.0.1:{port}",
                "Sovereign",
                model=llama.DEFAULT_ALIAS,
                backend={"deployment": "llama"},
                **{"timeoutSeconds": 30, **(provider or {})},
            ),
            kit.provider("cloud", cloud_url),
        ],
        health={"probe": PROBE, "failureThreshold": 3},
        selfHealing={"recovery": {"initialSeconds": 1, "maxSeconds": 2}},
        taskDefaults={"allowDelegation": True},
        **spec,
    )


def llama_state(kit: Kit) -> dict[str, Any]:
    return kit.provider_status("default", "llama")


def wait_loaded(kit: Kit) -> None:
    """Healthy by a passing probe (a new provider starts Healthy before any probe)."""
    kit.wait_until(
        lambda: (
            llama_state(kit).get("state") == "Healthy"
            and llama_state(kit).get("lastProbeLatencyMs") is not None
        ),
        timeout=90,
        what="llama Healthy by its probes",
    )


def test_real_server_answers_and_its_context_overflow_advances_without_penalty(
    kit: Kit, operator, backends, kubelet
):
    port = free_port()
    kubelet.bind(kit.namespace, "llama", llama.command(port), port)
    llama_chain(kit, port, backends("cloud").url)
    wait_loaded(kit)
    # maxTokens well inside the 256-token context: a longer budget would let the context
    # run out first, which chainop rightly reads as an incomplete answer.
    kit.create_task("short", request=SHORT_REQUEST, timeoutSeconds=60)
    answered = kit.wait_task("short", timeout=90)
    assert answered["phase"] == "Succeeded", answered.get("conditions")
    result = answered["result"]
    assert result["provider"] == "llama", answered["attempts"]
    assert result["text"].strip()
    assert not result["text"].startswith("[")  # not a fake's echo: generated text
    assert result["inputTokens"] > 0
    assert result["outputTokens"] > 0

    long_prompt = " ".join(f"word{i}" for i in range(600))  # far beyond 256 tokens
    kit.create_task("too-long", content=long_prompt, timeoutSeconds=60)
    moved = kit.wait_task("too-long", timeout=90)
    assert moved["phase"] == "Succeeded", moved.get("conditions")
    assert outcomes(moved) == [("llama", "Unsupported"), ("cloud", "Succeeded")]
    assert "context" in moved["attempts"][0]["error"]
    # No penalty for the overflow: llama stays Healthy, and its last error (if a slow
    # Generate probe on two busy cores left one) is never the context's.
    kit.holds(
        lambda: (
            llama_state(kit)["state"] == "Healthy"
            and "context" not in llama_state(kit).get("lastError", "")
        ),
        what="llama Healthy, not penalised for the overflow",
    )
    assert kit.get(CHAINS, "default")["status"]["activeOrder"] == ["llama", "cloud"]


def test_frozen_server_is_excluded_restarted_and_healthy_again(
    kit: Kit, operator, backends, kubelet
):
    port = free_port()
    kubelet.bind(kit.namespace, "llama", llama.command(port), port)
    llama_chain(kit, port, backends("cloud").url)
    wait_loaded(kit)
    pid = kubelet.pid(kit.namespace, "llama")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a hung engine: the socket accepts, nothing answers
    frozen_at = time.monotonic()
    kubelet.wait_for_restarts(kit.namespace, "llama", 1, timeout=90)
    restarted_after = time.monotonic() - frozen_at
    assert kubelet.pid(kit.namespace, "llama") != pid
    kit.wait_until(
        lambda: llama_state(kit).get("state") == "Healthy" and llama_state(kit)["restarts"] == 1,
        timeout=120,
        what="llama Healthy after its restart",
    )
    healthy_after = time.monotonic() - frozen_at
    print(
        f"\nllama-server frozen → restart patch + new process: {restarted_after:.1f}s; "
        f"→ Healthy again: {healthy_after:.1f}s"
    )
    reasons = kit.event_reasons("default")
    for reason in ("ProviderUnhealthy", "ProviderExcluded", "BackendRestarted", "ProviderRestored"):
        assert reason in reasons
    # The restarted server really answers again.
    kit.create_task("after", request=SHORT_REQUEST, timeoutSeconds=60)
    after = kit.wait_task("after", timeout=90)
    assert after["result"]["provider"] == "llama"


#: Long enough to keep the only slot busy for a second or two (160 tokens of counting,
#: greedy: SmolLM2 never stops early on it; ~1.5-3 s on these machines), and inside the
#: 256-token context with its ~45 prompt tokens.
BUSY_REQUEST = {
    "messages": [{"role": "user", "content": "Count from 1 to 100, separated by commas."}],
    "maxTokens": 160,
}


def test_burst_keeps_its_one_slot_busy_and_spills_by_its_real_metrics(
    kit: Kit, operator, backends, kubelet
):
    port = free_port()
    kubelet.bind(kit.namespace, "llama", llama.command(port, slots=1, metrics=True), port)
    cloud = backends("cloud")
    llama_chain(
        kit,
        port,
        cloud.url,
        provider={
            # One slot: a second request already waits a whole generation, so one
            # deferred request is the limit. llama.cpp publishes no KV-cache share (its
            # queue alone decides). Probes that list models never queue behind the slot
            # (a Generate probe would wait its turn and time out under load).
            "loadSignal": {"maxWaiting": 1},
            "probe": {"kind": "List"},
            "timeoutSeconds": 90,
        },
    )
    wait_loaded(kit)
    kit.wait_until(
        lambda: llama_state(kit).get("load") is not None,
        timeout=30,
        what="a first reading of llama's /metrics in the chain's status",
    )
    # The burst, in two steps around the reading that shows the queue: the signal is read
    # once per probe interval, so tasks created in the same instant all reach the server
    # before any reading can show the queue they make. Three at once fill the slot and
    # defer two...
    names = [f"burst-{i}" for i in range(8)]
    for name in names[:3]:
        kit.create_task(name, request=BUSY_REQUEST, timeoutSeconds=150)
    kit.wait_until(
        lambda: (llama_state(kit).get("load") or {}).get("saturated", "").startswith("saturated:"),
        timeout=60,
        what="llama saturated by its own /metrics (requests deferred)",
    )
    reading = llama_state(kit)["load"]
    assert reading["waiting"] >= 1  # llamacpp:requests_deferred
    assert reading["running"] == 1  # llamacpp:requests_processing: the only slot
    assert reading.get("kvCacheUsage") is None  # not published by this build
    # ... and the other five arrive while it is busy.
    for name in names[3:]:
        kit.create_task(name, request=BUSY_REQUEST, timeoutSeconds=150)
    statuses = {name: kit.wait_task(name, timeout=240) for name in names}

    for name, status in statuses.items():
        assert status["phase"] == "Succeeded", (name, status.get("conditions"))
    by_llama = [n for n, s in statuses.items() if outcomes(s) == [("llama", "Succeeded")]]
    spilled = [
        n
        for n, s in statuses.items()
        if outcomes(s) == [("llama", "Skipped"), ("cloud", "Succeeded")]
    ]
    assert sorted(by_llama + spilled) == sorted(names), {
        n: outcomes(s) for n, s in statuses.items()
    }
    assert by_llama, "no task was answered by llama-server"
    assert spilled, "no task spilled over"
    for name in by_llama:
        text = statuses[name]["result"]["text"]
        assert text.strip()
        assert not text.startswith("[")  # generated, not a fake's echo
    for name in spilled:
        skip = statuses[name]["attempts"][0]["error"]
        assert skip.startswith("saturated: ")
        assert "waiting" in skip
    assert cloud.stats()["requests"].get("openai", 0) == len(spilled)
    state = llama_state(kit)
    assert state["state"] == "Healthy"  # saturation is no failure
    assert state.get("consecutiveFailures", 0) == 0
    print(
        f"\nburst of {len(names)} on a one-slot llama-server: {len(by_llama)} answered by it, "
        f"{len(spilled)} spilled to the cloud; the saturating reading: {reading}"
    )


# --------------------------------------------------------------------------- streaming

#: Streamed calls: one attempt per provider, no probes (the freezes are the test's own).
STREAM_HEALTH = {"transientRetries": 0, "probe": {"mode": "Passive"}}


@pytest.fixture
def llama_server(tmp_path: Path) -> Iterator[llama.LlamaServer]:
    """llama-server run directly, its model loaded; stopped (thawed first) afterwards."""
    with llama.LlamaServer(log_path=tmp_path / "llama-server.log") as server:
        server.wait_ready(timeout=60)
        yield server


def streamed_llama(server: llama.LlamaServer, **extra: Any) -> dict[str, Any]:
    """The llama provider entry (Sovereign, ``stream: true``)."""
    return {
        "name": "llama",
        "type": "openai",
        "endpoint": server.url,
        "model": llama.DEFAULT_ALIAS,
        "privacyTier": "Sovereign",
        "stream": True,
        "timeoutSeconds": 30,
        **extra,
    }


def decoded(server: llama.LlamaServer) -> int:
    """Tokens the server's only slot has decoded for the request in flight (``/slots``)."""
    reply = server.request("GET", "/slots", timeout=5)
    if reply.status != 200:
        return 0
    slot = reply.json()[0]
    if not slot.get("is_processing"):
        return 0
    return int((slot.get("next_token") or [{}])[0].get("n_decoded", 0))


def test_streamed_answer_is_assembled_whole_with_its_first_token(
    kit: Kit, operator, backends, llama_server
):
    cloud = backends("cloud")
    kit.create_chain(
        "default",
        [streamed_llama(llama_server), kit.provider("cloud", cloud.url)],
        health=STREAM_HEALTH,
        taskDefaults={"allowDelegation": True},
    )
    # The same server without streaming, for the text to compare with.
    kit.create_chain(
        "whole",
        [{**streamed_llama(llama_server), "stream": False}],
        health=STREAM_HEALTH,
    )
    kit.chain_ready("default")
    kit.chain_ready("whole")
    kit.create_task("streamed", request=BUSY_REQUEST, timeoutSeconds=90)
    streamed = kit.wait_task("streamed", timeout=120)
    kit.create_task("whole", chain="whole", request=BUSY_REQUEST, timeoutSeconds=90)
    whole = kit.wait_task("whole", timeout=120)

    assert streamed["phase"] == "Succeeded", streamed.get("conditions")
    assert outcomes(streamed) == [("llama", "Succeeded")]
    assert whole["phase"] == "Succeeded", whole.get("conditions")
    result = streamed["result"]
    # Assembled whole: every delta joined, exactly the text the server answers at once.
    assert result["text"] == whole["result"]["text"]
    assert len(result["text"]) > 100
    assert not result["text"].startswith("[")  # generated, not a fake's echo
    # Real counts from the server's usage chunk (stream_options.include_usage).
    assert result["outputTokens"] == whole["result"]["outputTokens"] > 0
    assert result["inputTokens"] == whole["result"]["inputTokens"] > 0
    attempt = streamed["attempts"][0]
    assert attempt["firstTokenMs"] is not None
    assert 0 < attempt["firstTokenMs"] < attempt["latencyMs"]
    assert result["firstTokenMs"] == attempt["firstTokenMs"]
    assert whole["attempts"][0].get("firstTokenMs") is None  # only a stream has one
    assert cloud.stats()["requests"].get("openai", 0) == 0
    print(
        f"\nllama-server streamed {result['outputTokens']} tokens: first token "
        f"{attempt['firstTokenMs']} ms, whole answer {attempt['latencyMs']} ms"
    )


def test_server_frozen_before_its_first_token_is_abandoned_within_the_bound(
    kit: Kit, operator, backends, llama_server
):
    cloud = backends("cloud")
    kit.create_chain(
        "default",
        [
            streamed_llama(llama_server, firstTokenTimeoutSeconds=2),
            kit.provider("cloud", cloud.url),
        ],
        health=STREAM_HEALTH,
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    llama_server.freeze()  # a hung engine: the socket accepts, nothing answers
    try:
        kit.create_task("frozen", request=SHORT_REQUEST, timeoutSeconds=60)
        status = kit.wait_task("frozen", timeout=60)
    finally:
        llama_server.thaw()
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert outcomes(status) == [("llama", "TransientError"), ("cloud", "Succeeded")]
    first = status["attempts"][0]
    assert "no first token within 2s" in first["error"]
    # The operator's own record: within firstTokenTimeoutSeconds + 1 s, not timeoutSeconds.
    assert 2000 <= first["latencyMs"] <= 3000
    assert status["result"]["text"].startswith("[cloud]")
    assert cloud.stats()["requests"]["openai"] == 1
    kit.wait_until(
        lambda: kit.provider_status("default", "llama").get("consecutiveFailures") == 1,
        what="the stall counted against llama",
    )

    # Thawed, the real server streams the next task itself.
    kit.create_task("thawed", request=SHORT_REQUEST, timeoutSeconds=60)
    status = kit.wait_task("thawed", timeout=90)
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert outcomes(status) == [("llama", "Succeeded")]
    assert status["result"]["firstTokenMs"] is not None


@pytest.mark.parametrize("policy", ["Redo", "Continue"])
def test_server_frozen_mid_stream_is_a_cut_stream_redone_or_continued(
    kit: Kit, operator, backends, llama_server, policy
):
    cloud = backends("cloud")
    timeout = 6
    kit.create_chain(
        "default",
        [
            streamed_llama(llama_server, timeoutSeconds=timeout, firstTokenTimeoutSeconds=5),
            kit.provider("cloud", cloud.url),
        ],
        health=STREAM_HEALTH,
        onCutStream=policy,
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task("mid-stream", request=BUSY_REQUEST, timeoutSeconds=90)
    try:
        # Freeze it once it has decoded (and so streamed) a few tokens of 160.
        kit.wait_until(lambda: decoded(llama_server) >= 8, timeout=60, what="tokens decoded")
        llama_server.freeze()
        status = kit.wait_task("mid-stream", timeout=60)
    finally:
        if llama_server.frozen:
            llama_server.thaw()
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert outcomes(status) == [("llama", "IncompleteReply"), ("cloud", "Succeeded")]
    first = status["attempts"][0]
    assert "stalled" in first["error"]
    # Tokens flowed, so the first-token limit (5 s) no longer applied: the stall was
    # abandoned at timeoutSeconds, within a second of it.
    assert timeout * 1000 <= first["latencyMs"] <= (timeout + 1) * 1000
    result = status["result"]
    assert result["provider"] == "cloud"
    if policy == "Redo":
        assert not result.get("stitched")
        assert result["text"].startswith("[cloud] echo: Count from 1 to 100")
        return
    # Continue: the real server's partial text, then the cloud's continuation of it.
    assert result["stitched"] is True
    llama_part, cloud_part = result["parts"]
    assert llama_part["provider"] == "llama"
    assert llama_part["complete"] is False
    assert llama_part["chars"] > 0
    assert cloud_part == {
        "provider": "cloud",
        "chars": len(result["text"]) - llama_part["chars"],
        "complete": True,
    }
    partial = result["text"][: llama_part["chars"]]
    assert not partial.startswith("[")  # generated by llama-server
    assert result["text"][llama_part["chars"] :].startswith("[cloud] echo: ")
    sent = cloud.stats()["last_request"]["openai"]["json"]["messages"]
    assert sent[1] == {"role": "assistant", "content": partial}
    print(f"\nllama-server frozen mid-stream after {len(partial)} characters: {partial!r}")
