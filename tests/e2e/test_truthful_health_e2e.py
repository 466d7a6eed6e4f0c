"""We test these aspects: health that tells the truth, on the real control plane.

The in-cluster backend is the fake vLLM, bound by the supervisor (playing kubelet) to a
real Deployment; it behaves as vLLM does when its engine hangs (``hung_engine``: the
listing and ``/health`` answer, generation never does) or when it is redeployed with
another ``--served-model-name`` (``models``).

* a hung engine with no traffic: the Generate probe (Auto for a Sovereign provider with
  a backend) sees it; Unhealthy → Excluded → Deployment restarted → restored; the
  figure (seconds from the hang to the restart) is printed against the bound
  ``interval x unhealthyThreshold + probe timeout + 2 s``;
* a hung engine under traffic with List-only probes that keep passing: real calls time
  out, the request-path evidence marks it Wedged (Event ProviderWedged), it is
  excluded and restarted all the same;
* model drift: the listing stops naming the configured model → reason ModelNotServed
  with what is served instead, Event, Excluded, never restarted; back to Healthy once
  the listing names it again;
* a sample of every error class of the corpus of real replies, replayed by the head
  provider, does through the operator what the class means (status, attempts,
  cooldowns, Events).
"""

from __future__ import annotations

import sys
import time
import urllib.request
from datetime import datetime
from typing import Any

import pytest

from chainop.testing.cluster import free_port
from chainop.testing.fake_backend import FakeBackendControl
from tests.corpus import load_replies
from tests.e2e.kit import CHAINS, Kit, outcomes

pytestmark = pytest.mark.cluster

REPLIES = {reply.id: reply for reply in load_replies()}
MODEL = "qwen2.5-7b-instruct"


def vllm_command(port: int) -> list[str]:
    return [
        *(sys.executable, "-m", "chainop.testing.fake_backend"),
        *("--port", str(port), "--name", "vllm", "--served-model-name", MODEL),
    ]


def vllm(kit: Kit, port: int, **extra: Any) -> dict[str, Any]:
    return kit.provider(
        "vllm",
        f"http://127.0.0.1:{port}",
        "Sovereign",
        model=MODEL,
        backend={"deployment": "vllm"},
        **extra,
    )


def state(kit: Kit, chain: str = "default", provider: str = "vllm") -> dict[str, Any]:
    return kit.provider_status(chain, provider)


def wait_reason(kit: Kit, reason: str, *, chain: str = "default", timeout: float = 30) -> None:
    kit.wait_until(
        lambda: reason in kit.event_reasons(chain), timeout=timeout, what=f"a {reason} Event"
    )


PROBE = {"intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 2}


def start_vllm(
    kit: Kit,
    supervisor: Any,
    backends: Any,
    *,
    provider: dict[str, Any] | None = None,
    health: dict[str, Any] | None = None,
    recovery_max: float = 4,
    **spec: Any,
) -> FakeBackendControl:
    """The fake vLLM run by the supervisor behind a real Deployment, at the head of chain
    ``default`` with a cloud fallback; its control once the chain shows it Healthy."""
    port = free_port()
    kit.create_deployment("vllm")
    supervisor.bind(kit.namespace, "vllm", vllm_command(port), port)
    kit.create_chain(
        "default",
        [vllm(kit, port, **(provider or {})), kit.provider("cloud", backends("cloud").url)],
        health=health or {"probe": PROBE},
        selfHealing={"recovery": {"initialSeconds": 1, "maxSeconds": recovery_max}},
        **spec,
    )
    control = FakeBackendControl(f"http://127.0.0.1:{port}")
    # A new provider starts Healthy before any probe: wait for one to have reached it.
    kit.wait_until(
        lambda: (
            state(kit).get("state") == "Healthy"
            and control.stats()["requests"].get("models", 0) > 0
        ),
        what="vllm Healthy by its probes",
    )
    return control


def test_hung_engine_without_traffic_is_seen_by_the_generate_probe_and_restarted(
    kit: Kit, operator, backends, supervisor
):
    control = start_vllm(kit, supervisor, backends)
    control.set(mode="hung_engine")
    hung_at = time.monotonic()
    # The listing and /health still answer: only a probe that generates can tell.
    port = control.url.rsplit(":", 1)[1]
    for path in ("/v1/models", "/health"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            assert answer.status == 200, path
    supervisor.wait_for_restarts(kit.namespace, "vllm", 1, timeout=60)
    seconds = time.monotonic() - hung_at
    bound = PROBE["intervalSeconds"] * PROBE["unhealthyThreshold"] + PROBE["timeoutSeconds"] + 2
    print(f"\nhung engine → restart patch: {seconds:.1f}s (bound from the spec: {bound}s)")
    kit.wait_until(
        lambda: state(kit).get("state") == "Healthy" and state(kit).get("restarts") == 1,
        timeout=30,
        what="vllm restored after its restart",
    )
    for reason in ("ProviderUnhealthy", "ProviderExcluded", "BackendRestarted"):
        wait_reason(kit, reason)
    assert supervisor.restarts(kit.namespace, "vllm") == 1


def test_wedged_backend_is_restarted_on_request_path_evidence_while_probes_pass(
    kit: Kit, operator, backends, supervisor
):
    control = start_vllm(
        kit,
        supervisor,
        backends,
        # List probes only: they keep passing while the engine hangs.
        provider={"probe": {"kind": "List"}, "timeoutSeconds": 1},
        health={
            "probe": PROBE,
            "wedged": {"failures": 3, "windowSeconds": 60},
            "failureThreshold": 10,
            "transientRetries": 0,
        },
        taskDefaults={"allowDelegation": True},
    )
    control.set(mode="hung_engine")
    for i in range(3):
        kit.create_task(f"t{i}")
        done = kit.wait_task(f"t{i}")
        # Each task still gets its answer, from the next provider.
        assert done["phase"] == "Succeeded"
        assert outcomes(done)[0] == ("vllm", "TransientError")
    wait_reason(kit, "ProviderWedged")
    supervisor.wait_for_restarts(kit.namespace, "vllm", 1, timeout=30)
    kit.wait_until(lambda: state(kit).get("state") == "Healthy", timeout=30, what="vllm restored")
    events = " ".join(
        e.get("message", "") for e in kit.events() if e.get("reason") == "ProviderWedged"
    )
    assert "3 real calls failed" in events
    assert supervisor.restarts(kit.namespace, "vllm") == 1


def test_model_drift_is_reported_and_excluded_but_never_restarted(
    kit: Kit, operator, backends, supervisor
):
    control = start_vllm(kit, supervisor, backends, recovery_max=2)
    control.set(models=["llama-3.1-8b-instruct"])  # redeployed with another model
    kit.wait_until(lambda: state(kit).get("state") == "Excluded", what="vllm Excluded")
    drifted = state(kit)
    assert drifted["reason"] == "ModelNotServed"
    assert drifted["servedModels"] == ["llama-3.1-8b-instruct"]
    assert MODEL in drifted["lastError"]
    wait_reason(kit, "ModelNotServed")
    assert kit.get(CHAINS, "default")["status"]["activeOrder"] == ["cloud"]
    time.sleep(3)  # several probe intervals: a restart would have happened by now
    assert supervisor.restarts(kit.namespace, "vllm") == 0
    assert "BackendRestarted" not in kit.event_reasons("default")
    control.set(models=[MODEL])  # the model is served again
    kit.wait_until(
        lambda: state(kit).get("state") == "Healthy", timeout=30, what="vllm Healthy again"
    )
    assert kit.get(CHAINS, "default")["status"]["activeOrder"] == ["vllm", "cloud"]
    assert supervisor.restarts(kit.namespace, "vllm") == 0


# --------------------------------------------------------------------------- classes


def class_chain(kit: Kit, head_url: str, tail_url: str, **spec: Any) -> None:
    kit.create_chain(
        "default",
        [kit.provider("head", head_url), kit.provider("tail", tail_url)],
        health={
            "failureThreshold": 1,
            "transientRetries": 1,
            "cooldown": {"initialSeconds": 5, "maxSeconds": 60},
            "retryAfterCapSeconds": 7200,
        },
        taskDefaults={"allowDelegation": True},
        **spec,
    )
    kit.chain_ready("default")


def replay(backend: Any, reply_id: str, **options: Any) -> None:
    reply = REPLIES[reply_id]
    headers = dict(reply.headers)
    headers.setdefault("content-type", reply.content_type)
    backend.set_mode(
        "reply", route="openai", status=reply.status, headers=headers, body=reply.body, **options
    )


def seconds_until(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() - time.time()


@pytest.mark.parametrize(
    ("reply_id", "head_outcome", "phase", "head_calls"),
    [
        ("llamacpp-exceed-context-size-400", "Unsupported", "Succeeded", 1),
        ("vllm-model-does-not-exist-404", "ModelNotFound", "Succeeded", 1),
        ("tgi-generation-error-424", "TransientError", "Succeeded", 1),
        ("openai-invalid-api-key-401", "AuthError", "Failed", 1),
        ("mistral-extra-inputs-forbidden-422", "PermanentError", "Failed", 1),
    ],
)
def test_a_sample_of_every_class_does_what_it_means(
    kit: Kit, operator, backends, reply_id, head_outcome, phase, head_calls
):
    assert reply_id in REPLIES, f"corpus entry {reply_id} is gone"
    head, tail = backends("head"), backends("tail")
    replay(head, reply_id)
    class_chain(kit, head.url, tail.url)
    kit.create_task("t")
    status = kit.wait_task("t")
    assert status["phase"] == phase, status.get("conditions")
    assert outcomes(status)[:head_calls] == [("head", head_outcome)] * head_calls
    assert head.stats()["requests"].get("openai", 0) == head_calls
    if phase == "Succeeded":
        assert status["result"]["provider"] == "tail"
    failures = lambda: kit.provider_status("default", "head").get("consecutiveFailures", 0)  # noqa: E731
    if head_outcome == "TransientError":
        kit.wait_until(lambda: failures() > 0, what="head penalised")
    else:
        kit.holds(lambda: failures() == 0, what="head not penalised")


def test_quota_exhausted_benches_for_the_quota_cooldown_with_an_event(kit: Kit, operator, backends):
    head, tail = backends("head"), backends("tail")
    replay(head, "openai-insufficient-quota-429")
    class_chain(kit, head.url, tail.url)
    kit.create_task("t")
    status = kit.wait_task("t")
    assert status["phase"] == "Succeeded"
    assert outcomes(status) == [("head", "QuotaExhausted"), ("tail", "Succeeded")]
    assert head.stats()["requests"]["openai"] == 1  # no retry on an empty account
    kit.wait_until(
        lambda: kit.provider_status("default", "head").get("reason") == "QuotaExhausted",
        what="head benched for its quota",
    )
    benched = kit.provider_status("default", "head")
    assert benched["state"] == "CoolingDown"
    assert 3500 < seconds_until(benched["cooldownUntil"]) <= 3600
    wait_reason(kit, "QuotaExhausted")


def test_a_retry_delay_beyond_max_seconds_is_honoured(kit: Kit, operator, backends):
    head, tail = backends("head"), backends("tail")
    replay(head, "groq-rate-limit-tokens-per-day-429")
    class_chain(kit, head.url, tail.url)
    kit.create_task("t")
    status = kit.wait_task("t")
    assert outcomes(status)[0] == ("head", "RateLimited")
    delay = REPLIES["groq-rate-limit-tokens-per-day-429"].retry_after_seconds
    assert delay is not None
    kit.wait_until(
        lambda: kit.provider_status("default", "head").get("state") == "CoolingDown",
        what="head benched",
    )
    left = seconds_until(kit.provider_status("default", "head")["cooldownUntil"])
    # The provider's own delay, even where it is longer than cooldown.maxSeconds (60 s).
    assert delay - 30 < left <= delay + 1


def test_content_policy_fails_or_advances_as_the_chain_says(kit: Kit, operator, backends):
    head, tail = backends("head"), backends("tail")
    replay(head, "azure-content-filter-innererror-400")
    class_chain(kit, head.url, tail.url)
    kit.create_task("refused")
    status = kit.wait_task("refused")
    assert status["phase"] == "Failed"
    assert outcomes(status) == [("head", "ContentPolicy")]
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "ContentPolicy"
    assert tail.stats()["requests"].get("openai", 0) == 0


def test_content_policy_advances_when_allowed(kit: Kit, operator, backends):
    head, tail = backends("head"), backends("tail")
    replay(head, "azure-content-filter-innererror-400")
    class_chain(kit, head.url, tail.url, advanceOnContentPolicy=True)
    kit.create_task("refused")
    status = kit.wait_task("refused")
    assert status["phase"] == "Succeeded"
    assert outcomes(status) == [("head", "ContentPolicy"), ("tail", "Succeeded")]
    kit.holds(
        lambda: kit.provider_status("default", "head").get("consecutiveFailures", 0) == 0,
        what="head not penalised",
    )
