"""We test these aspects: agent tasks through the operator, on the real control plane (issue 15).

* agent guards are checked before any provider is called: a conversation holding more
  tool calls than ``guards.maxToolCalls`` fails with reason ``ToolCountExceeded``, one
  that calls the same tool with the same arguments ``identicalCalls`` times in a row fails
  with ``ToolLoop``, the numbers in the message, and the fake backends' own counters show
  no call at all; with ``toolLoop.action: Warn`` the task goes on and succeeds, with a
  ``GuardWarning`` condition and a ``ToolLoop`` Event; the trips are counted in
  ``chainop_guard_trips_total``;
* a task with tools whose provider answers with tool calls gets them in
  ``result.toolCalls`` (OpenAI's shape: id, name, arguments as a JSON string), for both
  protocols, streamed and not, and the conversation's tool calls and tool result reach
  the provider in its protocol's shape;
* model drift: a provider whose replies name another model than the configured one
  answers, its attempt says ``servedModel``, the chain gets one ``ModelDrift`` Event per
  change and ``chainop_model_drift_total`` counts it; with
  ``guards.requireConfiguredModel: true`` such a reply is a failover to the next provider.

The backends are ``chainop.testing.fake_backend`` servers on 127.0.0.1 (real sockets);
what they received is read from their own counters, never from timing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.kit import TASKS, Kit, condition, operator_metric, outcomes

pytestmark = pytest.mark.cluster

#: No retry on the same provider: each test's attempts read as one per provider.
HEALTH = {"transientRetries": 0, "probe": {"mode": "Passive"}}


def tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One tool call of an assistant message, as a DelegatedTask carries it."""
    return {"id": call_id, "name": name, "arguments": json.dumps(arguments)}


def agent_request(calls: list[dict[str, Any]], *, tools: bool = True) -> dict[str, Any]:
    """A coding agent's conversation: the user's ask, each tool call of the model followed
    by its result, and the user's next turn."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix the failing test."}]
    for call in calls:
        messages.append({"role": "assistant", "content": "", "toolCalls": [call]})
        messages.append({"role": "tool", "toolCallId": call["id"], "content": "no such file"})
    messages.append({"role": "user", "content": "Go on."})
    request: dict[str, Any] = {"messages": messages, "maxTokens": 64}
    if tools:
        request["tools"] = [
            {
                "name": "read_file",
                "description": "Read a file of the repository.",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
            }
        ]
    return request


def generation_calls(*backends: Any) -> int:
    """Completions and messages requests the backends received, all together."""
    total = 0
    for backend in backends:
        requests = backend.stats()["requests"]
        total += requests.get("openai", 0) + requests.get("anthropic", 0)
    return total


# --------------------------------------------------------------------------- guards


def test_guards_fail_before_any_provider_call_with_their_reasons(kit: Kit, operator, backends):
    primary, cloud = backends("primary"), backends("cloud")
    kit.create_chain(
        "default",
        [kit.provider("primary", primary.url), kit.provider("cloud", cloud.url)],
        health=HEALTH,
        guards={"maxToolCalls": 4, "toolLoop": {"identicalCalls": 3, "action": "Fail"}},
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")

    # Five different calls: more than maxToolCalls (4), no loop.
    many = [tool_call(f"c{i}", "read_file", {"path": f"src/m{i}.py"}) for i in range(5)]
    kit.create_task("too-many", request=agent_request(many))
    # The same call three times in a row (argument order and spacing do not matter).
    loop = [
        tool_call("l1", "read_file", {"path": "a.py", "lines": 10}),
        {"id": "l2", "name": "read_file", "arguments": '{"lines": 10, "path": "a.py"}'},
        {"id": "l3", "name": "read_file", "arguments": '{ "path" : "a.py", "lines" : 10 }'},
    ]
    kit.create_task("looping", request=agent_request(loop))

    status = kit.wait_task("too-many")
    assert status["phase"] == "Failed"
    succeeded = condition(kit.get(TASKS, "too-many"), "Succeeded")
    assert succeeded["reason"] == "ToolCountExceeded"
    assert "5 tool calls" in succeeded["message"]
    assert "maxToolCalls is 4" in succeeded["message"]
    assert not status.get("attempts")  # no provider was even considered

    status = kit.wait_task("looping")
    assert status["phase"] == "Failed"
    succeeded = condition(kit.get(TASKS, "looping"), "Succeeded")
    assert succeeded["reason"] == "ToolLoop"
    assert "read_file" in succeeded["message"]
    assert "3 times in a row" in succeeded["message"]
    assert not status.get("attempts")

    # The backends' own counters: nothing reached either of them.
    assert generation_calls(primary, cloud) == 0
    for reason in ("ToolCountExceeded", "ToolLoop"):
        assert (
            operator_metric(
                operator.metrics_port,
                "chainop_guard_trips_total",
                namespace=kit.namespace,
                reason=reason,
                action="Fail",
            )
            == 1
        )

    # Below both limits the same chain answers: the guards are no blanket refusal.
    fine = [tool_call("f1", "read_file", {"path": "a.py"}), tool_call("f2", "grep", {"q": "x"})]
    kit.create_task("fine", request=agent_request(fine))
    status = kit.wait_task("fine")
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert outcomes(status) == [("primary", "Succeeded")]
    assert generation_calls(primary, cloud) == 1


def test_tool_loop_warn_goes_on_with_a_condition_and_an_event(kit: Kit, operator, backends):
    primary = backends("primary")
    kit.create_chain(
        "default",
        [kit.provider("primary", primary.url)],
        health=HEALTH,
        guards={"toolLoop": {"identicalCalls": 2, "action": "Warn"}},
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    loop = [tool_call(f"w{i}", "run_tests", {"target": "unit"}) for i in range(4)]
    kit.create_task("warned", request=agent_request(loop))
    status = kit.wait_task("warned")
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert outcomes(status) == [("primary", "Succeeded")]
    warning = condition(kit.get(TASKS, "warned"), "GuardWarning")
    assert warning["status"] == "True"
    assert warning["reason"] == "ToolLoop"
    assert "run_tests" in warning["message"]
    assert "4 times in a row" in warning["message"]
    assert primary.stats()["requests"].get("openai", 0) == 1
    kit.wait_until(lambda: "ToolLoop" in kit.event_reasons("warned"), what="a ToolLoop Event")
    assert (
        operator_metric(
            operator.metrics_port,
            "chainop_guard_trips_total",
            namespace=kit.namespace,
            reason="ToolLoop",
            action="Warn",
        )
        == 1
    )


# --------------------------------------------------------------------------- tool calls


def provider_of(kit: Kit, name: str, url: str, protocol: str, stream: bool) -> dict[str, Any]:
    """A provider entry of either protocol, streamed or not."""
    entry = kit.provider(name, url, stream=stream, capabilities={"tools": True})
    if protocol == "anthropic":
        entry.update(type="anthropic", endpoint=url)
    return entry


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_tool_call_answers_land_in_result_tool_calls(
    kit: Kit, operator, backends, protocol, stream
):
    agent = backends("agent")
    agent.configure(
        tool_calls=[
            {"name": "read_file", "arguments": {"path": "tests/test_parse.py"}},
            {"id": "call_grep", "name": "grep", "arguments": '{"pattern": "def test_empty"}'},
        ]
    )
    kit.create_chain(
        "default",
        [provider_of(kit, "agent", agent.url, protocol, stream)],
        health=HEALTH,
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    earlier = [tool_call("call_1", "run_tests", {"target": "tests/test_parse.py"})]
    request = agent_request(earlier)
    request["messages"].pop()  # the conversation ends with the tool's result
    kit.create_task("agent-turn", request=request)
    status = kit.wait_task("agent-turn")

    assert status["phase"] == "Succeeded", status.get("conditions")
    result = status["result"]
    calls = result["toolCalls"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("read_file", {"path": "tests/test_parse.py"}),
        ("grep", {"pattern": "def test_empty"}),
    ]
    assert calls[1]["id"] == "call_grep"
    assert calls[0]["id"]  # the server's id, kept for the tool result that answers it
    assert not result["text"].startswith("[agent]")  # no echo: the answer is the calls
    assert (result.get("firstTokenMs") is not None) is stream

    # What reached the server, in its protocol's shape (the fake checks it as the API
    # does: a result must answer an earlier call, else 400): the offered tools, the
    # conversation's call and its result.
    route = "openai" if protocol == "openai" else "anthropic"
    seen = agent.stats()["last_request"][route]
    assert seen["json"].get("stream", False) is stream
    tools = seen["tools"]
    assert tools["offered"] == ["read_file"]
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in tools["calls"]] == [
        ("call_1", "run_tests", {"target": "tests/test_parse.py"})
    ]
    assert tools["results"] == [{"id": "call_1", "content": "no such file"}]


# --------------------------------------------------------------------------- model drift


def test_model_drift_is_said_once_per_change_and_can_fail_over(kit: Kit, operator, backends):
    drifting, other, steady = backends("drifting"), backends("other"), backends("steady")
    drifting.configure(answer_model="llama-3.1-8b-instruct")  # redeployed with another model
    other.configure(answer_model="llama-3.1-8b-instruct")
    kit.create_chain(
        "default",
        [kit.provider("drifting", drifting.url, stream=True)],
        health=HEALTH,
        taskDefaults={"allowDelegation": True},
    )
    kit.create_chain(
        "strict",
        [kit.provider("other", other.url), kit.provider("steady", steady.url)],
        health=HEALTH,
        guards={"requireConfiguredModel": True},
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.chain_ready("strict")

    # Without requireConfiguredModel the answer is kept and the drift said.
    for name in ("drift-1", "drift-2"):
        kit.create_task(name)
        status = kit.wait_task(name)
        assert status["phase"] == "Succeeded", status.get("conditions")
        assert outcomes(status) == [("drifting", "Succeeded")]
        assert status["attempts"][0]["servedModel"] == "llama-3.1-8b-instruct"
        assert status["result"]["text"].startswith("[drifting]")
    kit.wait_until(lambda: "ModelDrift" in kit.event_reasons("default"), what="a ModelDrift Event")
    drift = [
        e
        for e in kit.events()
        if e["reason"] == "ModelDrift" and e["involvedObject"]["name"] == "default"
    ]
    assert len(drift) == 1
    assert drift[0]["type"] == "Warning"
    assert "llama-3.1-8b-instruct" in drift[0]["message"]
    assert drift[0]["count"] == 1  # once per change, not once per reply
    labels = {"namespace": kit.namespace, "provider": "drifting"}
    assert operator_metric(operator.metrics_port, "chainop_model_drift_total", **labels) == 1

    # The server answers as the configured model again: no servedModel, said once more.
    drifting.configure(answer_model=None)
    kit.create_task("back")
    status = kit.wait_task("back")
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert not status["attempts"][0].get("servedModel")
    kit.wait_until(
        lambda: any(
            e["reason"] == "ModelDrift" and e["type"] == "Normal"
            for e in kit.events()
            if e["involvedObject"]["name"] == "default"
        ),
        what="a Normal ModelDrift Event (the configured model again)",
    )
    assert operator_metric(operator.metrics_port, "chainop_model_drift_total", **labels) == 1

    # With requireConfiguredModel such a reply is no answer: the next provider answers.
    kit.create_task("strict-task", chain="strict")
    status = kit.wait_task("strict-task")
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert outcomes(status) == [("other", "TransientError"), ("steady", "Succeeded")]
    assert "llama-3.1-8b-instruct" in status["attempts"][0]["error"]
    assert "requireConfiguredModel" in status["attempts"][0]["error"]
    assert status["result"]["text"].startswith("[steady]")
    assert other.stats()["requests"]["openai"] == 1
    kit.wait_until(
        lambda: "ModelDrift" in kit.event_reasons("strict"), what="a ModelDrift Event on strict"
    )
