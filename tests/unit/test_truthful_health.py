"""The 2026-12 amendments of DESIGN.md as pure rules: no I/O, time injected.

We test these aspects:

* error classes by meaning: capability (any status) advances without penalty; quota
  exhausted advances at once without a retry and benches for quotaCooldownSeconds
  (or the provider's own delay); content policy fails, or advances with
  advanceOnContentPolicy; auth fails fast with its own reason;
* a provider's retry delay beyond ``cooldown.maxSeconds`` is honoured, up to
  ``retryAfterCapSeconds``; delays read from ``retry-after-ms``, ``retry-after`` (seconds
  or a date), ``x-ratelimit-reset-*`` (Go durations) and words in the message;
* 200 replies that are not answers: ``finish_reason: length`` short of the caller's
  ``max_tokens`` (the context ran out) is incomplete; ``content_filter``, a
  ``refusal`` field and Anthropic's ``stop_reason: refusal`` are content policy;
* request-path evidence: enough failed real calls of a provider with a backend, in the
  window, with no success between them, make it Unhealthy/Wedged even while probes
  pass; not without a backend, not for rate limits or garbled replies, not while a
  restart is under way; only a generating probe or a real answer clears it;
* model drift: a listing without the model makes the provider Unhealthy with reason
  ModelNotServed and what is served instead; it is never restarted for that, and a
  listing with the model clears it;
* probe kinds: Auto is Generate + List for Sovereign providers with a backend, List for
  everything else (never a paid completion); probes are shared per endpoint+model+kind;
* a status round trip keeps the reasons that carry state.
"""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainop.core import chain as executor
from chainop.core import errors, healing
from chainop.core import health as health_rules
from chainop.core.chain import HealthBoard
from chainop.core.health import ProviderHealth
from chainop.core.models import CooldownSpec, ProbeKind, ProviderState, WedgedSpec
from chainop.operator.runtime import Runtime, probe_key, probe_kinds
from chainop.providers import anthropic as anthropic_protocol
from chainop.providers import openai as openai_protocol
from tests.unit.support import (
    Clock,
    RecordingObserver,
    ScriptedCall,
    chain,
    names,
    provider,
    request,
)

COOLDOWN = CooldownSpec(initial_seconds=5, max_seconds=300)
WEDGE = WedgedSpec(failures=3, window_seconds=60)


class QuotaObserver(RecordingObserver):
    def on_quota_exhausted(self, provider, seconds, reason):  # type: ignore[no-untyped-def]
        self.events.append(("quota", provider.name, f"{seconds:g}"))


def two(**extra):  # type: ignore[no-untyped-def]
    return chain(
        provider("vllm", "Sovereign", backend={"deployment": "vllm"}),
        provider("cloud", "Standard"),
        **extra,
    )


async def run(spec, call, *, board=None, clock=None, observer=None):  # type: ignore[no-untyped-def]
    clock = clock or Clock()
    board = board or HealthBoard(spec)
    result = await executor.execute(
        chain=spec,
        eligible=[p.name for p in spec.providers],
        request=request(),
        call=call,
        board=board,
        now=clock,
        observer=observer,
    )
    return result, board


# --------------------------------------------------------------------------- classes


async def test_capability_said_by_the_provider_advances_without_penalty() -> None:
    overflow = errors.classify_status(
        400,
        body_text='{"error":{"code":400,"message":"the request exceeds the available context '
        'size, try increasing it","type":"exceed_context_size_error"}}',
    )
    assert type(overflow) is errors.UnsupportedRequestError
    call = ScriptedCall({"vllm": [overflow]})
    result, board = await run(two(), call)
    assert result.provider == "cloud"
    assert call.called() == ["vllm", "cloud"]
    assert names(result.attempts) == [("vllm", "Unsupported"), ("cloud", "Succeeded")]
    assert board.get("vllm") == ProviderHealth(name="vllm")  # no penalty at all


async def test_quota_exhausted_advances_at_once_and_benches_for_the_quota_cooldown() -> None:
    clock = Clock()
    quota = errors.classify_status(
        429,
        body_text='{"error":{"message":"You exceeded your current quota, please check your '
        'plan and billing details.","type":"insufficient_quota","param":null,'
        '"code":"insufficient_quota"}}',
    )
    assert type(quota) is errors.QuotaExhaustedError
    spec = chain(provider("paid", "Standard"), provider("other", "Standard"))
    observer = QuotaObserver()
    call = ScriptedCall({"paid": [quota]})
    result, board = await run(spec, call, clock=clock, observer=observer)
    assert call.called() == ["paid", "other"]  # no retry on the same provider
    assert names(result.attempts)[0] == ("paid", "QuotaExhausted")
    health = board.get("paid")
    assert health.cooldown_until == clock() + 3600
    assert health.consecutive_failures == 0  # not broken, just out of credit
    assert health_rules.state_of(health, now=clock()) is ProviderState.COOLING_DOWN
    assert health_rules.reason_of(health, now=clock()) == "QuotaExhausted"
    assert observer.kinds("quota") == [("quota", "paid", "3600")]


async def test_quota_cooldown_follows_the_spec() -> None:
    clock = Clock()
    spec = chain(
        provider("paid", "Standard"), provider("other"), health={"quotaCooldownSeconds": 900}
    )
    call = ScriptedCall({"paid": [errors.QuotaExhaustedError("no credit")]})
    _, board = await run(spec, call, clock=clock)
    assert board.get("paid").cooldown_until == clock() + 900


def test_quota_never_benches_an_exempt_provider_nor_shortens_a_benching() -> None:
    now = 1000.0
    exempt = health_rules.record_quota_exhausted(
        ProviderHealth(name="p"), now=now, error="x", quota_cooldown=3600, exempt=True
    )
    assert not exempt.benched
    assert exempt.health.cooldown_until is None
    long = ProviderHealth(name="p", cooldown_until=now + 99_999)
    kept = health_rules.record_quota_exhausted(long, now=now, error="x", quota_cooldown=3600)
    assert kept.health.cooldown_until == now + 99_999


async def test_content_policy_fails_the_task_without_penalty() -> None:
    call = ScriptedCall({"vllm": [errors.ContentPolicyError("filtered")]})
    result, board = await run(two(), call)
    assert not result.succeeded
    assert result.failure_reason == "ContentPolicy"
    assert call.called() == ["vllm"]
    assert board.get("vllm").consecutive_failures == 0


async def test_content_policy_advances_when_the_chain_says_so() -> None:
    call = ScriptedCall({"vllm": [errors.ContentPolicyError("filtered")]})
    result, _ = await run(two(advanceOnContentPolicy=True), call)
    assert result.provider == "cloud"
    assert names(result.attempts)[0] == ("vllm", "ContentPolicy")


async def test_auth_error_fails_fast_with_its_own_reason() -> None:
    gemini = errors.classify_status(
        400,
        body_text='[{"error":{"code":400,"message":"API key not valid. Please pass a valid '
        'API key.","status":"INVALID_ARGUMENT"}}]',
    )
    assert type(gemini) is errors.AuthError
    call = ScriptedCall({"vllm": [gemini]})
    result, _ = await run(two(), call)
    assert result.failure_reason == "AuthError"
    assert call.called() == ["vllm"]


async def test_tgi_424_generation_error_is_retried_then_advanced() -> None:
    tgi = errors.classify_status(
        424, body_text='{"error":"Request failed during generation","error_type":"generation"}'
    )
    assert type(tgi) is errors.TransientError
    call = ScriptedCall({"vllm": [tgi]})
    result, _ = await run(two(), call)
    assert result.provider == "cloud"
    assert call.called() == ["vllm", "vllm", "cloud"]


# --------------------------------------------------------------------------- delays


def test_retry_after_beyond_max_seconds_is_honoured_up_to_the_cap() -> None:
    now = 1000.0
    outcome = health_rules.record_failure(
        ProviderHealth(name="p"),
        now=now,
        error="429",
        failure_threshold=2,
        cooldown=COOLDOWN,
        retry_after=1800,
        retry_after_cap=3600,
    )
    assert outcome.health.cooldown_until == now + 1800  # beyond maxSeconds=300
    capped = health_rules.record_failure(
        ProviderHealth(name="p"),
        now=now,
        error="429",
        failure_threshold=2,
        cooldown=COOLDOWN,
        retry_after=86_400,
        retry_after_cap=3600,
    )
    assert capped.health.cooldown_until == now + 3600


async def test_executor_honours_a_long_retry_after_with_the_chain_cap() -> None:
    clock = Clock()
    spec = two(health={"retryAfterCapSeconds": 7200, "cooldown": {"maxSeconds": 60}})
    call = ScriptedCall({"vllm": [errors.RateLimitedError("429", retry_after=1200)]})
    _, board = await run(spec, call, clock=clock)
    assert board.get("vllm").cooldown_until == clock() + 1200


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "30"}, 30.0),
        ({"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-remaining-requests": "0"}, 360.0),
        ({"x-ratelimit-reset-tokens": "2m59.56s"}, 179.56),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        (
            {
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-remaining-requests": "5",
                "x-ratelimit-reset-tokens": "7.66s",
                "x-ratelimit-remaining-tokens": "0",
            },
            7.66,
        ),
        ({}, None),
    ],
)
def test_retry_delay_from_headers(headers: dict[str, str], seconds: float | None) -> None:
    got = errors.retry_delay(headers)
    assert got == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_as_an_http_date() -> None:
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 120, usegmt=True)
    assert errors.retry_delay({"retry-after": date}, now=now) == pytest.approx(120)


def test_gemini_retry_delay_in_the_body_makes_a_quota_reply_a_rate_limit() -> None:
    body = (
        '{"error":{"code":429,"message":"You exceeded your current quota, please check your '
        'plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[{"@type":'
        '"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"27s"}]}}'
    )
    error = errors.classify_status(429, body_text=body)
    assert type(error) is errors.RateLimitedError
    assert error.retry_after == 27


@given(
    hours=st.integers(0, 5),
    minutes=st.integers(0, 59),
    millis=st.integers(0, 59_999),
)
def test_go_durations_parse_to_their_seconds(hours: int, minutes: int, millis: int) -> None:
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    text += f"{millis / 1000:g}s"
    parsed = errors.parse_duration(text)
    assert parsed == pytest.approx(hours * 3600 + minutes * 60 + millis / 1000)


@given(st.text(max_size=20))
def test_parse_duration_never_raises_and_is_never_negative(text: str) -> None:
    parsed = errors.parse_duration(text)
    assert parsed is None or parsed >= 0


# --------------------------------------------------------------------------- 200 replies


def _chat(finish: str, completion_tokens: int, **message: object) -> dict[str, object]:
    return {
        "choices": [
            {
                "message": {"role": "assistant", "content": "partial", **message},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 200, "completion_tokens": completion_tokens},
    }


def test_length_short_of_max_tokens_means_the_context_ran_out() -> None:
    with pytest.raises(errors.IncompleteReplyError, match="context ran out after 55 of 256"):
        openai_protocol.parse_reply(_chat("length", 55), max_tokens=256)


def test_length_at_the_callers_max_tokens_is_an_answer() -> None:
    completion = openai_protocol.parse_reply(_chat("length", 256), max_tokens=256)
    assert completion.finish_reason == "length"


def test_content_filter_and_refusal_are_never_a_success() -> None:
    with pytest.raises(errors.ContentPolicyError):
        openai_protocol.parse_reply(_chat("content_filter", 3), max_tokens=256)
    with pytest.raises(errors.ContentPolicyError, match="I can't help"):
        openai_protocol.parse_reply(_chat("stop", 3, refusal="I can't help with that."))
    anthropic_refusal = {
        "content": [{"type": "text", "text": "I"}],
        "stop_reason": "refusal",
        "usage": {"input_tokens": 10, "output_tokens": 1},
    }
    with pytest.raises(errors.ContentPolicyError):
        anthropic_protocol.parse_reply(anthropic_refusal, max_tokens=100)


def test_anthropic_context_window_exceeded_is_incomplete() -> None:
    reply = {
        "content": [{"type": "text", "text": "cut"}],
        "stop_reason": "model_context_window_exceeded",
        "usage": {"input_tokens": 10, "output_tokens": 1},
    }
    with pytest.raises(errors.IncompleteReplyError):
        anthropic_protocol.parse_reply(reply, max_tokens=100)


# --------------------------------------------------------------------------- wedged


def _fail(health: ProviderHealth, now: float, **kw: object) -> ProviderHealth:
    return health_rules.record_failure(
        health,
        now=now,
        error="timed out after 5s",
        failure_threshold=100,
        cooldown=COOLDOWN,
        wedge=kw.pop("wedge", WEDGE),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    ).health


def test_failed_real_calls_in_the_window_make_a_backend_wedged() -> None:
    health = ProviderHealth(name="p")
    for t in (0.0, 10.0):
        health = _fail(health, 1000 + t)
        assert not health.unhealthy
    health = _fail(health, 1020)
    assert health.wedged
    assert health_rules.state_of(health, now=1020) is ProviderState.UNHEALTHY
    assert health_rules.reason_of(health, now=1020) == "Wedged"


def test_failures_spread_beyond_the_window_are_not_a_wedge() -> None:
    health = ProviderHealth(name="p")
    for t in (0.0, 40.0, 80.0, 120.0):
        health = _fail(health, 1000 + t)
    assert not health.unhealthy


def test_a_success_between_failures_resets_the_evidence() -> None:
    health = _fail(_fail(ProviderHealth(name="p"), 1000), 1001)
    health = health_rules.record_success(health, now=1002)
    health = _fail(health, 1003)
    assert not health.unhealthy


def test_passing_listing_probes_do_not_erase_the_evidence() -> None:
    health = _fail(_fail(ProviderHealth(name="p"), 1000), 1001)
    health = health_rules.record_probe(health, now=1002, ok=True, unhealthy_threshold=3)
    assert _fail(health, 1003).wedged
    generated = health_rules.record_probe(
        health, now=1002, ok=True, unhealthy_threshold=3, generated=True
    )
    assert not _fail(generated, 1003).unhealthy


def test_no_wedge_while_our_restart_is_under_way() -> None:
    health = ProviderHealth(name="p")
    for t in range(5):
        health = _fail(health, 1000 + t, restart_in_flight=True)
    assert not health.unhealthy


async def test_only_backend_providers_and_real_faults_count_as_wedge_evidence() -> None:
    spec = chain(
        provider("vllm", "Sovereign", backend={"deployment": "vllm"}),
        provider("remote", "Sovereign"),
        health={"wedged": {"failures": 2, "windowSeconds": 60}, "failureThreshold": 100},
    )
    board = HealthBoard(spec)
    clock = Clock()
    for _ in range(3):
        board.failure(spec.providers[1], errors.TransientError("timed out"), now=clock())
        board.failure(spec.providers[0], errors.RateLimitedError("429"), now=clock())
        board.failure(spec.providers[0], errors.IncompleteReplyError("cut"), now=clock())
    assert not board.get("remote").unhealthy  # no backend to restart
    assert not board.get("vllm").unhealthy  # rate limits and garbled replies are not hangs
    board.failure(spec.providers[0], errors.TransientError("HTTP 500"), now=clock())
    board.failure(spec.providers[0], errors.TransientError("timed out"), now=clock())
    assert board.get("vllm").wedged


def test_a_listing_probe_does_not_clear_a_wedge_but_a_generating_one_does() -> None:
    wedged = ProviderHealth(name="p", unhealthy=True, reason="Wedged", request_failures=(1.0,))
    listed = health_rules.record_probe(wedged, now=5, ok=True, unhealthy_threshold=3)
    assert listed.wedged
    generated = health_rules.record_probe(
        wedged, now=5, ok=True, unhealthy_threshold=3, generated=True
    )
    assert not generated.unhealthy
    assert generated.reason == ""
    answered = health_rules.record_success(wedged, now=5)
    assert not answered.unhealthy


# --------------------------------------------------------------------------- drift


def test_a_listing_without_the_model_is_drift_and_is_never_restarted() -> None:
    health = health_rules.record_model_missing(
        ProviderHealth(name="vllm"),
        now=10,
        error="model qwen is not served (serving: llama)",
        served=("llama",),
    )
    assert health.model_missing
    status = health_rules.to_status(health, now=10)
    assert status.state is ProviderState.UNHEALTHY
    assert status.reason == "ModelNotServed"
    assert status.served_models == ["llama"]
    spec = two()
    assert not Runtime.restart_wanted(spec, spec.providers[0], health)
    wedged = ProviderHealth(name="vllm", unhealthy=True, reason="Wedged")
    assert Runtime.restart_wanted(spec, spec.providers[0], wedged)


def test_drift_clears_when_the_listing_has_the_model_again() -> None:
    drifted = health_rules.record_model_missing(
        ProviderHealth(name="p"), now=1, error="x", served=("other",)
    )
    back = health_rules.record_probe(drifted, now=2, ok=True, unhealthy_threshold=3)
    assert not back.unhealthy
    assert back.served == ()
    assert back.reason == ""


def test_restore_forgets_reason_and_evidence() -> None:
    excluded = healing.exclude(
        ProviderHealth(name="p", unhealthy=True, reason="Wedged", request_failures=(1.0, 2.0)),
        now=3,
        recovery=two().self_healing.recovery,
    )
    restored = healing.restore(excluded, now=4, latency_ms=5)
    assert restored.reason == ""
    assert restored.request_failures == ()
    assert not restored.unhealthy


def test_status_round_trip_keeps_reasons_with_state() -> None:
    for reason in ("Wedged", "ModelNotServed"):
        health = ProviderHealth(name="p", unhealthy=True, reason=reason, served=("x",))
        back = health_rules.from_status(health_rules.to_status(health, now=1))
        assert back.reason == reason


# --------------------------------------------------------------------------- probe kinds


def test_auto_probe_is_generate_and_list_only_for_own_hardware() -> None:
    spec = chain(
        provider("vllm", "Sovereign", backend={"deployment": "vllm"}),
        provider("onprem", "Sovereign"),
        provider("paid", "Standard", backend={"deployment": "x"}),
        provider("health", "Private", probe={"kind": "Health"}),
    )
    kinds = {p.name: probe_kinds(p) for p in spec.providers}
    assert kinds["vllm"] == (ProbeKind.LIST, ProbeKind.GENERATE)
    assert kinds["onprem"] == (ProbeKind.LIST,)
    assert kinds["paid"] == (ProbeKind.LIST,)  # never a paid completion
    assert kinds["health"] == (ProbeKind.HEALTH,)


def test_probes_are_shared_per_endpoint_model_and_kind() -> None:
    one = chain(provider("a", "Sovereign", backend={"deployment": "d"}))
    same = chain(provider("a", "Sovereign", backend={"deployment": "other"}))
    listing = chain(provider("a", "Sovereign", probe={"kind": "List"}))
    assert probe_key(one.providers[0]) == probe_key(same.providers[0])
    assert probe_key(one.providers[0]) != probe_key(listing.providers[0])


# --------------------------------------------------------------------------- backend pods


def _pod(name: str, waiting: str | None, *, deleting: bool = False) -> dict[str, object]:
    state = (
        {"waiting": {"reason": waiting, "message": "back-off 40s"}} if waiting else {"running": {}}
    )
    return {
        "metadata": {"name": name, **({"deletionTimestamp": "now"} if deleting else {})},
        "status": {
            "containerStatuses": [
                {
                    "name": "server",
                    "ready": waiting is None,
                    "restartCount": 4,
                    "state": state,
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                }
            ]
        },
    }


def test_a_crash_looping_backend_is_said_in_plain_words_and_not_restarted() -> None:
    problem = healing.pod_problem(
        [_pod("old", None, deleting=True), _pod("new", "CrashLoopBackOff")]
    )
    assert problem is not None
    assert problem.reason == "CrashLoopBackOff"
    assert "pod new: container server is in CrashLoopBackOff (restarted 4 times" in problem.message
    assert "last exit code 1 (Error)" in problem.message
    assert "will not restart it again" in problem.message
    spec = two()
    looping = ProviderHealth(
        name="vllm", unhealthy=True, excluded_since=1, reason="CrashLoopBackOff"
    )
    assert not Runtime.restart_wanted(spec, spec.providers[0], looping)
    assert health_rules.reason_of(looping, now=2) == "CrashLoopBackOff"


def test_running_or_terminating_pods_are_no_problem() -> None:
    assert (
        healing.pod_problem([_pod("a", None), _pod("b", "CrashLoopBackOff", deleting=True)]) is None
    )
    fresh = {
        "metadata": {"name": "c"},
        "status": {
            "containerStatuses": [
                {
                    "name": "server",
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                }
            ]
        },
    }
    assert healing.pod_problem([fresh]) is None
    between_crashes = {
        "metadata": {"name": "d"},
        "status": {
            "containerStatuses": [
                {
                    "name": "server",
                    "ready": False,
                    "restartCount": 3,
                    "state": {"running": {}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                }
            ]
        },
    }
    looping = healing.pod_problem([between_crashes])
    assert looping is not None
    assert looping.reason == "CrashLoopBackOff"


def test_a_bound_on_a_parameter_is_a_bad_request_not_a_capability() -> None:
    bad = errors.classify_status(
        422,
        body_text='{"error":"Input validation error: `temperature` must be <= 2",'
        '"error_type":"validation"}',
    )
    assert type(bad) is errors.PermanentError


@given(
    status=st.integers(300, 599),
    body=st.one_of(
        st.text(max_size=300),
        st.builds(
            lambda m, t: '{"error":{"message":' + m + ',"type":' + t + "}}",
            st.from_regex(r'"[a-z ]{0,40}"', fullmatch=True),
            st.from_regex(r'"[a-z_]{0,20}"', fullmatch=True),
        ),
    ),
    retry=st.one_of(st.none(), st.from_regex(r"[0-9a-z.]{0,8}", fullmatch=True)),
)
def test_any_error_reply_gets_a_class_and_a_short_one_line_message(
    status: int, body: str, retry: str | None
) -> None:
    headers = {"retry-after": retry} if retry is not None else {}
    error = errors.classify_status(status, body_text=body, headers=headers, now=1.0)
    assert isinstance(error, errors.ProviderError)
    assert "\n" not in error.message
    assert len(error.message) <= 220
    delay = getattr(error, "retry_after", None)
    assert delay is None or delay >= 0


def test_a_container_exiting_non_zero_again_is_a_crash_loop_before_the_kubelet_says_so() -> None:
    pod = {
        "metadata": {"name": "vllm-2"},
        "status": {
            "containerStatuses": [
                {
                    "name": "server",
                    "ready": False,
                    "restartCount": 2,
                    "state": {"terminated": {"exitCode": 1, "reason": "Error"}},
                }
            ]
        },
    }
    problem = healing.pod_problem([pod])
    assert problem is not None
    assert problem.reason == "CrashLoopBackOff"
    assert "last exit code 1 (Error)" in problem.message
    first_start = {
        "metadata": {"name": "vllm-3"},
        "status": {
            "containerStatuses": [
                {"name": "server", "ready": False, "restartCount": 0, "state": {"running": {}}}
            ]
        },
    }
    assert healing.pod_problem([first_start]) is None
