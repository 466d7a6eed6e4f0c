"""``get``: the namespace's tasks with the columns of ``kubectl get dtask``, plus reason."""

from __future__ import annotations

import argparse
from typing import Any

from chainop import console
from chainop.commands import add_parser, connect

EXAMPLES = """\
  kubectl chainop get
  kubectl chainop get auto summarise-logs
  kubectl chainop get --chain default -l chainop.dev/replay-of=auto
  kubectl chainop get -o json | jq '.[].status.phase'"""

COLUMNS = ("name", "phase", "provider", "attempts", "latency", "cost", "chain", "reason", "age")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = add_parser(
        sub,
        "get",
        common,
        help="list tasks with phase, provider, attempts, latency, cost",
        examples=EXAMPLES,
    )
    p.add_argument("names", nargs="*", help="only these tasks")
    p.add_argument("--chain", default=None, help="only tasks of this chain")
    p.add_argument("-l", "--selector", default=None, help="label selector, as kubectl's")
    p.set_defaults(handler=run)


def row(task: dict[str, Any]) -> tuple[object, ...]:
    status = console.status_of(task)
    return (
        task["metadata"]["name"],
        console.phase(task),
        status.get("provider", ""),
        status.get("attemptCount", 0),
        status.get("latency", ""),
        status.get("cost", ""),
        (task.get("spec") or {}).get("chain", ""),
        console.condition(task, "Succeeded").get("reason", ""),
        console.age(task["metadata"].get("creationTimestamp")),
    )


def run(args: argparse.Namespace) -> int:
    cluster = connect(args)
    if args.names:
        tasks = [cluster.get(console.TASKS, name) for name in args.names]
    else:
        tasks = cluster.list_objects(console.TASKS, args.selector)
    if args.chain:
        tasks = [t for t in tasks if (t.get("spec") or {}).get("chain") == args.chain]
    if not tasks and args.output == "table":
        console.progress(f"No tasks found in namespace {cluster.namespace}.")
        return console.OK
    console.emit(tasks, args.output, lambda: console.table(COLUMNS, map(row, tasks)))
    return console.OK
