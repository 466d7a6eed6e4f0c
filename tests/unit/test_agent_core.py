"""Issue 15, the core's part: agent guards, model drift, stitching a cut stream, tool calls
in capability checks, first-token failures as wedge evidence (no I/O: scripted calls)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from chainop.core import chain as executor
from chainop.core import guards
from chainop.core.board import HealthBoard
from chainop.core.drift import model_matches
from chainop.core.errors import FirstTokenTimeoutError, IncompleteReplyError
from chainop.core.models import GuardAction, GuardsSpec, Message, RequestSpec, ToolCall
from chainop.core.rules import capability_miss
from tests.unit.support import (
    Clock,
    RecordingObserver,
    ScriptedCall,
    chain,
    names,
    ok,
    provider,
    request,
)


def agent_request(*calls: tuple[str, dict[str, object]]) -> RequestSpec:
    """A conversation in which the assistant made ``calls``, each answered by a tool."""
    messages: list[dict[str, object]] = [{"role": "user", "content": "fix the build"}]
    for index, (name, arguments) in enumerate(calls):
        call_id = f"call_{index}"
        messages.append(
            {
                "role": "assistant",
                "toolCalls": [{"id": call_id, "name": name, "arguments": json.dumps(arguments)}],
            }
        )
        messages.append({"role": "tool", "toolCallId": call_id, "content": "ok"})
    return RequestSpec.model_validate({"messages": messages})


# --------------------------------------------------------------------------- the API


def test_tool_messages_are_validated_with_the_field_named():
    with pytest.raises(ValidationError, match="toolCallId: a tool message needs"):
        Message.model_validate({"role": "tool", "content": "x"})
    with pytest.raises(ValidationError, match="only an assistant message carries tool calls"):
        Message.model_validate(
            {"role": "user", "content": "x", "toolCalls": [{"id": "a", "name": "f"}]}
        )
    with pytest.raises(ValidationError, match="arguments is not JSON"):
        ToolCall.model_validate({"id": "a", "name": "f", "arguments": "{oops"})
    with pytest.raises(ValidationError, match="must be a JSON object"):
        ToolCall.model_validate({"id": "a", "name": "f", "arguments": "[1]"})


def test_tool_calls_need_a_provider_with_tools():
    spec = provider("small", capabilities={"tools": False})
    p = chain(spec).providers[0]
    assert capability_miss(p, agent_request(("ls", {}))) is not None
    assert capability_miss(p, request()) is None


# --------------------------------------------------------------------------- guards


def test_tool_count_guard_fails_with_the_numbers():
    req = agent_request(*((f"tool{i}", {"i": i}) for i in range(4)))
    trips = guards.check(GuardsSpec(max_tool_calls=3), req)
    assert [(t.reason, t.action) for t in trips] == [("ToolCountExceeded", GuardAction.FAIL)]
    assert trips[0].message == ("the conversation holds 4 tool calls; guards.maxToolCalls is 3")
    assert guards.check(GuardsSpec(max_tool_calls=4), req) == []


def test_tool_loop_counts_identical_calls_in_a_row_whatever_the_key_order():
    req = agent_request(
        ("grep", {"q": "x", "path": "."}),
        ("grep", {"path": ".", "q": "x"}),
        ("grep", {"q": "x", "path": "."}),
    )
    trips = guards.check(GuardsSpec(), req)
    assert [t.reason for t in trips] == ["ToolLoop"]
    assert "was called 3 times in a row" in trips[0].message
    # Broken by another call: no loop.
    broken = agent_request(("grep", {"q": "x"}), ("ls", {}), ("grep", {"q": "x"}))
    assert guards.check(GuardsSpec(), broken) == []


def test_warn_guard_is_reported_as_warn():
    req = agent_request(*(("read", {"f": "a"}),) * 5)
    spec = GuardsSpec.model_validate({"toolLoop": {"identicalCalls": 5, "action": "Warn"}})
    (trip,) = guards.check(spec, req)
    assert trip.action is GuardAction.WARN


@given(
    sequence=st.lists(st.sampled_from(["a", "b"]), max_size=30),
    limit=st.integers(2, 6),
)
def test_property_tool_loop_trips_exactly_at_the_longest_run(sequence, limit):
    req = agent_request(*((name, {}) for name in sequence))
    longest, run = 0, 0
    for index, name in enumerate(sequence):
        run = run + 1 if index and sequence[index - 1] == name else 1
        longest = max(longest, run)
    spec = GuardsSpec.model_validate({"toolLoop": {"identicalCalls": limit}, "maxToolCalls": 99})
    tripped = any(t.reason == "ToolLoop" for t in guards.check(spec, req))
    assert tripped == (longest >= limit)


# --------------------------------------------------------------------------- model drift


@pytest.mark.parametrize(
    ("configured", "named", "same"),
    [
        ("qwen2.5-7b-instruct", "qwen2.5-7b-instruct", True),
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", True),  # OpenAI answers the snapshot
        ("claude-3-5-haiku-latest", "claude-3-5-haiku-20241022", True),
        ("llama3", "llama3:latest", True),
        ("gemini-2.0-flash", "models/gemini-2.0-flash", True),
        ("qwen2.5-7b-instruct", "llama-3.1-8b-instruct", False),
        ("gpt-4o", "gpt-4o-mini", False),
        ("gpt-4o-mini", "gpt-4o-mini-high", False),
    ],
)
def test_model_names(configured, named, same):
    assert model_matches(configured, named) is same


class DriftObserver(RecordingObserver):
    def on_model_drift(self, provider, served):
        self.events.append(("drift", provider.name, served))


TWO = chain(provider("vllm", "Sovereign"), provider("cloud"))


async def run(spec, call, *, board=None, observer=None):
    board = board or HealthBoard(spec)
    result = await executor.execute(
        chain=spec,
        eligible=[p.name for p in spec.providers],
        request=request(),
        call=call,
        board=board,
        now=Clock(),
        observer=observer,
    )
    return result, board


async def test_drift_is_said_once_per_change_and_recorded_on_the_attempt():
    observer = DriftObserver()
    board = HealthBoard(TWO)
    other = ok(model="llama-3.1-8b-instruct")
    for _ in range(2):
        result, _ = await run(TWO, ScriptedCall({"vllm": [other]}), board=board, observer=observer)
        assert result.provider == "vllm"
        assert result.attempts[-1].served_model == "llama-3.1-8b-instruct"
    back = ok(model="vllm-model")
    result, _ = await run(TWO, ScriptedCall({"vllm": [back]}), board=board, observer=observer)
    assert result.attempts[-1].served_model == ""
    assert observer.kinds("drift") == [
        ("drift", "vllm", "llama-3.1-8b-instruct"),
        ("drift", "vllm", ""),
    ]


async def test_require_configured_model_turns_drift_into_a_failover():
    spec = chain(
        provider("vllm", "Sovereign"),
        provider("cloud"),
        guards={"requireConfiguredModel": True},
    )
    call = ScriptedCall({"vllm": [ok(model="other")]})
    result, board = await run(spec, call)
    assert result.provider == "cloud"
    assert names(result.attempts) == [("vllm", "TransientError"), ("cloud", "Succeeded")]
    assert call.called() == ["vllm", "cloud"]  # never retried: it would drift again
    assert "answered as model 'other'" in result.attempts[0].error
    assert board.get("vllm").consecutive_failures == 1


# --------------------------------------------------------------------------- cut streams


async def test_cut_stream_is_redone_whole_by_default():
    cut = IncompleteReplyError("stream ended without [DONE]", partial_text="The cluster is")
    call = ScriptedCall({"vllm": [cut]})
    spec = chain(provider("vllm", "Sovereign"), provider("cloud"), health={"transientRetries": 0})
    result, _ = await run(spec, call)
    assert result.completion is not None
    assert result.completion.text == "from cloud"
    assert result.parts == ()
    assert call.calls[1][1].continue_from is None


async def test_cut_stream_is_continued_and_stitched_when_asked():
    cut = IncompleteReplyError("stream ended without [DONE]", partial_text="The cluster is")
    spec = chain(
        provider("vllm", "Sovereign"),
        provider("cloud"),
        onCutStream="Continue",
        health={"transientRetries": 0},
    )
    call = ScriptedCall({"vllm": [cut], "cloud": [ok(" healthy.")]})
    result, _ = await run(spec, call)
    assert result.completion is not None
    assert result.completion.text == "The cluster is healthy."
    assert result.parts == (("vllm", 14), ("cloud", 9))
    assert call.calls[1][1].continue_from == "The cluster is"
    # Never a success on the cut attempt itself.
    assert names(result.attempts) == [("vllm", "IncompleteReply"), ("cloud", "Succeeded")]


# --------------------------------------------------------------------------- first token


async def test_no_first_token_counts_and_is_evidence_of_a_wedged_engine():
    spec = chain(
        provider("vllm", "Sovereign", backend={"deployment": "vllm"}),
        provider("cloud"),
        health={"transientRetries": 0, "wedged": {"failures": 1, "windowSeconds": 60}},
    )
    call = ScriptedCall({"vllm": [FirstTokenTimeoutError("no first token within 2s")]})
    result, board = await run(spec, call)
    assert result.provider == "cloud"
    health = board.get("vllm")
    assert health.consecutive_failures == 1
    assert health.wedged


async def test_first_token_and_tool_calls_reach_the_result():
    calls = (ToolCall(id="c1", name="ls", arguments="{}"),)
    answer = replace(ok(""), tool_calls=calls, first_token_ms=42, finish_reason="tool_calls")
    result, _ = await run(TWO, ScriptedCall({"vllm": [answer]}))
    assert result.completion is not None
    assert result.completion.tool_calls == calls
    assert result.attempts[-1].first_token_ms == 42


async def test_no_first_token_advances_at_once_whatever_transient_retries():
    spec = chain(provider("vllm", "Sovereign"), provider("cloud"), health={"transientRetries": 2})
    call = ScriptedCall({"vllm": [FirstTokenTimeoutError("no first token within 1s")]})
    result, board = await run(spec, call)
    assert call.called() == ["vllm", "cloud"]
    assert result.provider == "cloud"
    assert board.get("vllm").consecutive_failures == 1


async def test_a_hedge_that_answers_from_scratch_is_never_stitched():
    import asyncio as _asyncio

    from chainop.core.models import HedgeSpec

    class Call:
        def __init__(self):
            self.contexts = {}

        async def __call__(self, provider, request, context):
            self.contexts[provider.name] = context
            if provider.name == "vllm":
                await _asyncio.sleep(0.05)
                raise IncompleteReplyError("cut", partial_text="PARTIAL-")
            await _asyncio.sleep(0.1)
            return ok("FULL ANSWER")

    spec = chain(
        provider("vllm", "Sovereign"),
        provider("cloud"),
        onCutStream="Continue",
        health={"transientRetries": 0},
    )
    result = await executor.execute(
        chain=spec,
        eligible=["vllm", "cloud"],
        request=request(),
        call=Call(),
        board=HealthBoard(spec),
        now=Clock(),
        hedge=HedgeSpec(after_millis=10),
    )
    assert result.completion is not None
    assert result.completion.text == "FULL ANSWER"
    assert result.parts == ()
