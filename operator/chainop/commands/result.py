"""``result``: a finished task's answer (from its owned ConfigMap when it was too large for
status) on stdout, and the footer on stderr."""

from __future__ import annotations

import argparse

from chainop import console
from chainop.commands import add_parser, connect

EXAMPLES = """\
  kubectl chainop result auto
  kubectl chainop result big-summary > summary.md     # the footer stays on stderr
  kubectl chainop result auto -o json                 # status.result as JSON"""


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = add_parser(
        sub, "result", common, help="print a finished task's answer and footer", examples=EXAMPLES
    )
    p.add_argument("name", help="the DelegatedTask")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    cluster = connect(args)
    task = cluster.get(console.TASKS, args.name)
    if not console.finished(task):
        console.progress(f"task {args.name} is {console.phase(task)}: no result yet")
        return console.NOT_FINISHED
    if args.output != "table":
        result = dict(console.status_of(task).get("result") or {})
        if result.get("outputConfigMap"):
            result["text"] = console.task_answer(cluster, task)
        data = {
            "name": args.name,
            "phase": console.phase(task),
            "result": result,
            "condition": console.condition(task, "Succeeded"),
        }
        console.emit(data, args.output, str)
        return console.OK if console.phase(task) == "Succeeded" else console.FAILED
    return console.print_outcome(cluster, task)
