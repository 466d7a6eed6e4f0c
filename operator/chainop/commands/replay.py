"""``replay``: a new DelegatedTask with the same request as an old one, labelled
``chainop.dev/replay-of=<old>`` — to see how another provider answers the same thing."""

from __future__ import annotations

import argparse
import copy
from typing import Any

from chainop import console
from chainop.commands import add_parser, connect
from chainop.commands.submit import add_wait_options

EXAMPLES = """\
  kubectl chainop replay auto --provider anthropic --wait
  kubectl chainop replay auto --name auto-again
  kubectl chainop get -l chainop.dev/replay-of=auto"""

REPLAY_OF = "chainop.dev/replay-of"


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = add_parser(
        sub,
        "replay",
        common,
        help="run a task's request again, optionally on another provider",
        examples=EXAMPLES,
    )
    p.add_argument("name", help="the DelegatedTask to replay")
    p.add_argument(
        "--provider",
        default=None,
        help="set spec.routing.preferredProvider (must be a provider of the chain)",
    )
    p.add_argument(
        "--name",
        dest="new_name",
        default=None,
        help="the new task's name (default: NAME-replay-xxxxx)",
    )
    add_wait_options(p)
    p.set_defaults(handler=run)


def replay_body(old: dict[str, Any], provider: str | None, new_name: str | None) -> dict[str, Any]:
    """The new task: the old spec (preferred provider replaced), labelled with its origin."""
    name = old["metadata"]["name"]
    spec = copy.deepcopy(old.get("spec") or {})
    if provider is not None:
        spec["routing"] = {**(spec.get("routing") or {}), "preferredProvider": provider}
    meta: dict[str, Any] = {"labels": {REPLAY_OF: name[:63]}}
    if new_name:
        meta["name"] = new_name
    else:
        meta["generateName"] = f"{name[:50]}-replay-"
    return {"metadata": meta, "spec": spec}


def run(args: argparse.Namespace) -> int:
    cluster = connect(args)
    old = cluster.get(console.TASKS, args.name)
    chain_name = (old.get("spec") or {}).get("chain", "")
    if args.provider is not None and args.provider != "local":
        chain = cluster.get(console.CHAINS, chain_name)
        names = [p["name"] for p in (chain.get("spec") or {}).get("providers") or []]
        if args.provider not in names:
            console.no_such_provider(chain_name, args.provider, names)
    created = cluster.create_task(replay_body(old, args.provider, args.new_name))
    name = created["metadata"]["name"]
    if not args.wait:
        console.emit(
            created,
            args.output,
            lambda: f"delegatedtask.chainop.dev/{name} created (replay of {args.name})\n",
        )
        return console.OK
    console.progress(f"delegatedtask.chainop.dev/{name} created (replay of {args.name}); waiting")
    task = console.follow(cluster, name, timeout=args.timeout)
    if args.output != "table":
        console.emit(task, args.output, str)
        return console.OK if console.phase(task) == "Succeeded" else console.FAILED
    return console.print_outcome(cluster, task)
