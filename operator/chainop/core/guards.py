"""Agent guards: checked on a task's conversation before any provider is called.

Purely computational. Coding agents send conversations full of tool calls; an agent that
is stuck calls the same tool with the same arguments again and again, and one that runs
away piles up hundreds of calls — each round trip through the chain then costs money and
a slot for nothing. ``guards.maxToolCalls`` bounds the conversation's tool calls;
``guards.toolLoop`` trips on ``identicalCalls`` consecutive calls with the same name and
the same arguments (compared as JSON values, so key order and spacing do not matter).
A Fail guard fails the task at once with the numbers; a Warn guard only says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from chainop.core.models import GuardAction, GuardsSpec, RequestSpec, ToolCall

TOOL_COUNT_EXCEEDED = "ToolCountExceeded"
TOOL_LOOP = "ToolLoop"


@dataclass(frozen=True, slots=True)
class Trip:
    """A guard that tripped: its reason (CamelCase), the numbers in words, and the action."""

    reason: str
    message: str
    action: GuardAction


def _identity(call: ToolCall) -> tuple[str, str]:
    """A call's name and arguments, the arguments in canonical JSON."""
    try:
        arguments = json.dumps(json.loads(call.arguments), sort_keys=True, separators=(",", ":"))
    except ValueError:
        arguments = call.arguments
    return call.name, arguments


def longest_identical_run(calls: list[ToolCall]) -> tuple[int, ToolCall | None]:
    """The longest run of consecutive identical calls, and one call of it."""
    best, best_call = 0, None
    run, previous = 0, None
    for call in calls:
        identity = _identity(call)
        run = run + 1 if identity == previous else 1
        previous = identity
        if run > best:
            best, best_call = run, call
    return best, best_call


def check(guards: GuardsSpec, request: RequestSpec) -> list[Trip]:
    """Every guard the conversation trips, Fail ones first."""
    calls = [call for message in request.messages for call in message.tool_calls]
    trips: list[Trip] = []
    if len(calls) > guards.max_tool_calls:
        trips.append(
            Trip(
                TOOL_COUNT_EXCEEDED,
                f"the conversation holds {len(calls)} tool calls; guards.maxToolCalls is "
                f"{guards.max_tool_calls}",
                GuardAction.FAIL,
            )
        )
    loop = guards.tool_loop
    run, call = longest_identical_run(calls)
    if call is not None and run >= loop.identical_calls:
        shown = call.arguments if len(call.arguments) <= 120 else call.arguments[:117] + "..."
        trips.append(
            Trip(
                TOOL_LOOP,
                f"{call.name}({shown}) was called {run} times in a row; "
                f"guards.toolLoop.identicalCalls is {loop.identical_calls}",
                loop.action,
            )
        )
    trips.sort(key=lambda trip: trip.action is not GuardAction.FAIL)
    return trips
