"""We test these aspects: streamed provider calls through the operator, on the real control plane.

Issue 15, both protocols (OpenAI chat completions and Anthropic messages, ``stream:
true``) against ``chainop.testing.fake_backend`` servers on 127.0.0.1:

* a provider stalled before its first token (the 200 and its headers, then nothing: a
  hung engine) is abandoned within ``firstTokenTimeoutSeconds`` + 1 s -- read from the
  operator's own record, the attempt's ``latencyMs`` -- as a transient failure counted
  against it, and the task succeeds on the next provider, whose ``firstTokenMs`` is
  recorded in the attempt, the result and ``chainop_first_token_seconds``;
* a stream cut mid-way (connection closed without the terminator), one that carries an
  error event after tokens (vLLM's error chunk followed by a normal ``[DONE]``,
  Anthropic's ``overloaded_error``), and one that stops on ``length`` the caller did not
  ask for, are never an answer: by default (``onCutStream: Redo``) the work is redone
  whole on the next provider; on a chain with nobody left the task fails;
* with ``onCutStream: Continue`` the next provider is asked to continue the partial text
  (it receives it as the assistant's turn: Anthropic's prefill, or followed by a user
  turn asking to continue for OpenAI-compatible servers), and the result says so:
  ``stitched: true``, ``parts`` with each provider's characters, the cut part
  ``complete: false``, the text the partial text followed by the continuation.

* a stall before the first token is evidence of a wedged engine: an in-cluster provider
  whose List probes keep passing while every streamed call stalls is marked Wedged on
  that evidence alone (``ProviderWedged``), and its Deployment restarted, each task
  answered by the next provider in the meantime.

No wall-clock assertions on the test's own timing: bounds are checked on the attempts'
``latencyMs``, and who was called on the backends' own counters.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from chainop.testing.cluster import free_port
from chainop.testing.fake_backend import FakeBackendControl, FakeBackendThread
from tests.e2e.kit import CHAINS, Kit, operator_metric, outcomes

pytestmark = pytest.mark.cluster

#: One attempt per provider (no retry on the same one), no probes to count.
HEALTH = {"transientRetries": 0, "probe": {"mode": "Passive"}}
FIRST_TOKEN_TIMEOUT = 1.0
#: The route each protocol's requests arrive on, at the fake.
ROUTE = {"openai": "openai", "anthropic": "anthropic"}


def streamed(
    kit: Kit, name: str, backend: FakeBackendThread, protocol: str, **extra: Any
) -> dict[str, Any]:
    """A streamed provider entry of either protocol (Anthropic's endpoint is the root)."""
    entry = kit.provider(name, backend.url, stream=True, timeoutSeconds=30, **extra)
    if protocol == "anthropic":
        entry.update(type="anthropic", endpoint=backend.url)
    return entry


def calls(backend: FakeBackendThread, protocol: str) -> int:
    """Generation requests the backend received on the protocol's route."""
    return int(backend.stats()["requests"].get(ROUTE[protocol], 0))


def streamed_request(backend: FakeBackendThread, protocol: str) -> dict[str, Any]:
    """The JSON body of the last generation request the backend received."""
    body: dict[str, Any] = backend.stats()["last_request"][ROUTE[protocol]]["json"]
    return body


# --------------------------------------------------------------------------- first token


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_provider_stalled_before_its_first_token_is_abandoned_within_the_bound(
    kit: Kit, operator, backends, protocol
):
    stalled, good = backends("stalled"), backends("good")
    stalled.set_mode("stall_first_token")
    kit.create_chain(
        "default",
        [
            streamed(kit, "stalled", stalled, protocol, firstTokenTimeoutSeconds=1),
            streamed(kit, "good", good, protocol),
        ],
        health=HEALTH,
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task("hung-head", timeoutSeconds=60)
    status = kit.wait_task("hung-head")

    assert status["phase"] == "Succeeded", status.get("conditions")
    assert outcomes(status) == [("stalled", "TransientError"), ("good", "Succeeded")]
    first, second = status["attempts"]
    assert "no first token within 1s" in first["error"]
    # The operator's own record of the abandoned call: within firstTokenTimeout + 1 s,
    # far from the provider's timeoutSeconds (30).
    assert FIRST_TOKEN_TIMEOUT * 1000 <= first["latencyMs"] <= (FIRST_TOKEN_TIMEOUT + 1) * 1000
    assert first.get("firstTokenMs") is None
    # The stalled server got the streamed request (headers went out: it was no refusal).
    assert calls(stalled, protocol) == 1
    assert streamed_request(stalled, protocol)["stream"] is True

    result = status["result"]
    assert result["provider"] == "good"
    assert result["text"].startswith("[good] echo: hello")
    assert second["firstTokenMs"] is not None
    assert 0 <= second["firstTokenMs"] <= second["latencyMs"]
    assert result["firstTokenMs"] == second["firstTokenMs"]
    assert not result.get("stitched")

    # A transient failure of the stalled provider (the signature of a hung engine)...
    kit.wait_until(
        lambda: kit.provider_status("default", "stalled").get("consecutiveFailures") == 1,
        what="the stall counted against the stalled provider",
    )
    assert kit.provider_status("default", "good").get("consecutiveFailures", 0) == 0
    # ... and the first token of the answer observed by the histogram.
    observed = operator_metric(
        operator.metrics_port,
        "chainop_first_token_seconds_count",
        namespace=kit.namespace,
        chain="default",
        provider="good",
    )
    assert observed == 1


# --------------------------------------------------------------------------- cut streams


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("mode", ["cut", "error_event", "length_stop"])
def test_cut_stream_is_redone_whole_on_the_next_provider(
    kit: Kit, operator, backends, protocol, mode
):
    broken, good = backends("broken"), backends("good")
    broken.set_mode(mode, after_chunks=3)
    kit.create_chain(
        "default",
        [streamed(kit, "broken", broken, protocol), streamed(kit, "good", good, protocol)],
        health=HEALTH,
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task("half-answer", content="tell me everything", timeoutSeconds=60)
    status = kit.wait_task("half-answer")

    assert status["phase"] == "Succeeded", status.get("conditions")
    assert outcomes(status) == [("broken", "IncompleteReply"), ("good", "Succeeded")]
    assert status["attempts"][0]["error"].startswith("incomplete reply")
    assert calls(broken, protocol) == 1
    assert streamed_request(broken, protocol)["stream"] is True
    result = status["result"]
    assert result["provider"] == "good"
    # Redone whole: the good provider's whole answer, nothing of the broken one.
    assert result["text"] == "[good] echo: tell me everything"
    assert not result.get("stitched")
    assert not result.get("parts")
    # The good provider was asked the request itself, not to continue anything.
    messages = streamed_request(good, protocol)["messages"]
    assert [m["role"] for m in messages] == ["user"]


@pytest.mark.parametrize("mode", ["cut", "error_event"])
def test_cut_stream_with_nobody_left_fails_the_task(kit: Kit, operator, backends, mode):
    only = backends("only")
    only.set_mode(mode, after_chunks=3)
    kit.create_chain(
        "default",
        [streamed(kit, "only", only, "openai")],
        health=HEALTH,
        onCutStream="Continue",  # nobody to continue: still no answer
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task("half-answer", content="tell me everything", timeoutSeconds=60)
    status = kit.wait_task("half-answer")
    assert status["phase"] == "Failed"
    assert outcomes(status) == [("only", "IncompleteReply")]
    assert not status.get("result")
    assert calls(only, "openai") == 1


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_cut_stream_is_stitched_with_continue(kit: Kit, operator, backends, protocol):
    broken, good = backends("broken"), backends("good")
    broken.set_mode("cut", after_chunks=3)
    kit.create_chain(
        "default",
        [streamed(kit, "broken", broken, protocol), streamed(kit, "good", good, protocol)],
        health=HEALTH,
        onCutStream="Continue",
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task("stitched", content="tell me everything", timeoutSeconds=60)
    status = kit.wait_task("stitched")

    assert status["phase"] == "Succeeded", status.get("conditions")
    assert outcomes(status) == [("broken", "IncompleteReply"), ("good", "Succeeded")]
    result = status["result"]
    # Three word-sized chunks arrived before the cut: "[broken] echo: tell".
    partial = "[broken] echo: tell"
    assert result["stitched"] is True
    assert result["provider"] == "good"
    assert result["text"].startswith(partial)
    continuation = result["text"][len(partial) :]
    assert continuation.startswith("[good] echo: ")
    assert result["parts"] == [
        {"provider": "broken", "chars": len(partial), "complete": False},
        {"provider": "good", "chars": len(continuation), "complete": True},
    ]
    # The good provider was asked to continue the partial text, given as the
    # assistant's own turn after the original request: Anthropic continues a final
    # assistant turn (prefill); an OpenAI-compatible server is told to, in a user turn.
    messages = streamed_request(good, protocol)["messages"]
    assert messages[0] == {"role": "user", "content": "tell me everything"}
    assert messages[1]["role"] == "assistant"
    assert messages[1]["content"] == partial
    if protocol == "anthropic":
        assert len(messages) == 2
    else:
        assert len(messages) == 3
        assert messages[2]["role"] == "user"
        assert "cut off" in messages[2]["content"]
    # Who wrote what is on the chain's record too: the cut counted against broken.
    kit.wait(
        CHAINS,
        "default",
        lambda o: kit.provider_status("default", "broken").get("consecutiveFailures") == 1,
        what="the cut stream counted against broken",
    )


# --------------------------------------------------------------------------- wedge evidence


def test_stalls_before_the_first_token_are_wedge_evidence_and_restart_the_backend(
    kit: Kit, operator, backends, supervisor
):
    # The fake vLLM run by the supervisor (playing kubelet) behind a real Deployment.
    port = free_port()
    kit.create_deployment("vllm")
    # --name vllm: it lists (and answers as) "vllm-model", the configured model.
    command = [sys.executable, "-m", "chainop.testing.fake_backend", "--name", "vllm"]
    supervisor.bind(kit.namespace, "vllm", [*command, "--port", str(port)], port)
    kit.create_chain(
        "default",
        [
            kit.provider(
                "vllm",
                f"http://127.0.0.1:{port}",
                "Sovereign",
                backend={"deployment": "vllm"},
                stream=True,
                firstTokenTimeoutSeconds=1,
                # Listing probes keep passing while generation stalls: only the real
                # calls can tell.
                probe={"kind": "List"},
            ),
            kit.provider("cloud", backends("cloud").url),
        ],
        health={
            "probe": {"intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 2},
            "wedged": {"failures": 3, "windowSeconds": 60},
            "failureThreshold": 10,  # never benched first: the wedge is what acts
            "transientRetries": 0,
        },
        selfHealing={"recovery": {"initialSeconds": 1, "maxSeconds": 4}},
        taskDefaults={"allowDelegation": True},
    )
    vllm = FakeBackendControl(f"http://127.0.0.1:{port}")
    kit.wait_until(
        lambda: (
            kit.provider_status("default", "vllm").get("state") == "Healthy"
            and vllm.stats()["requests"].get("models", 0) > 0
        ),
        what="vllm Healthy by a passing List probe",
    )
    vllm.set(mode="stall_first_token")
    for i in range(3):
        kit.create_task(f"t{i}", timeoutSeconds=60)
        status = kit.wait_task(f"t{i}")
        assert status["phase"] == "Succeeded", status.get("conditions")
        assert outcomes(status) == [("vllm", "TransientError"), ("cloud", "Succeeded")], status
        assert "no first token within 1s" in status["attempts"][0]["error"]
        assert status["attempts"][0]["latencyMs"] <= 2000
    kit.wait_until(
        lambda: "ProviderWedged" in kit.event_reasons("default"), what="a ProviderWedged Event"
    )
    supervisor.wait_for_restarts(kit.namespace, "vllm", 1, timeout=30)
    wedged = " ".join(
        e.get("message", "") for e in kit.events() if e.get("reason") == "ProviderWedged"
    )
    assert "3 real calls failed" in wedged
    # The restarted process answers, streamed, and the provider is restored.
    kit.wait_until(
        lambda: kit.provider_status("default", "vllm").get("state") == "Healthy",
        timeout=30,
        what="vllm restored after its restart",
    )
    kit.create_task("after", timeoutSeconds=60)
    status = kit.wait_task("after")
    assert outcomes(status) == [("vllm", "Succeeded")]
    assert status["result"]["firstTokenMs"] is not None
    assert supervisor.restarts(kit.namespace, "vllm") == 1
