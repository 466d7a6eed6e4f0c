"""``submit``: create a DelegatedTask from a file (or a quick prompt), optionally follow it.

With ``--wait`` the attempts are shown on stderr as status records them, then the answer
goes to stdout and the footer (provider, attempts, latency, tokens, cost) to stderr, so
``kubectl chainop submit -f t.yaml --wait > answer.txt`` keeps only the answer.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from chainop import console
from chainop.commands import add_parser, connect
from chainop.core.models import DelegatedTaskSpec

EXAMPLES = """\
  kubectl chainop submit -f examples/tasks/auto.yaml --wait
  kubectl chainop submit --chain default --prompt "Summarise: ..." --wait --timeout 60
  kubectl chainop submit -f task.yaml -o json        # the created object"""


def add_wait_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait", action="store_true", help="follow the task to its end, print the answer"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="with --wait: give up after this long (exit 5; default 300)",
    )


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = add_parser(
        sub,
        "submit",
        common,
        help="create a DelegatedTask, optionally wait for its answer",
        examples=EXAMPLES,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--filename", metavar="FILE", help="the task's YAML ('-' for stdin)")
    source.add_argument("--prompt", help="a one-message task (with --chain)")
    p.add_argument("--chain", default=None, help="the chain (overrides spec.chain of -f)")
    p.add_argument(
        "--name", default=None, help="the task's name (default: the file's, else generated)"
    )
    p.add_argument(
        "--allow-delegation",
        action="store_true",
        help="with --prompt: let the task leave Sovereign providers",
    )
    add_wait_options(p)
    p.set_defaults(handler=run)


def task_body(args: argparse.Namespace) -> dict[str, Any]:
    """The DelegatedTask to create, validated before anything is sent."""
    if args.prompt is not None:
        if not args.chain:
            console.fail(console.USAGE, "--prompt needs --chain")
        spec: dict[str, Any] = {
            "chain": args.chain,
            "request": {"messages": [{"role": "user", "content": args.prompt}]},
        }
        if args.allow_delegation:
            spec["routing"] = {"allowDelegation": True}
        body: dict[str, Any] = {"metadata": {}, "spec": spec}
        source = "--prompt"
    else:
        doc = console.one_task(console.read_documents([args.filename]), [args.filename])
        source = doc.pop("__source")
        body = copy.deepcopy(doc) if "spec" in doc else {"spec": doc}
        body.pop("status", None)
        meta = body.get("metadata") or {}
        body["metadata"] = {
            k: meta[k] for k in ("name", "generateName", "labels", "annotations") if k in meta
        }
        if args.chain:
            body["spec"]["chain"] = args.chain
    console.parse_spec(DelegatedTaskSpec, body, source)
    meta = body["metadata"]
    if args.name:
        meta.pop("generateName", None)
        meta["name"] = args.name
    elif "name" not in meta and "generateName" not in meta:
        meta["generateName"] = "task-"
    return body


def run(args: argparse.Namespace) -> int:
    body = task_body(args)
    cluster = connect(args)
    cluster.get(
        console.CHAINS, body["spec"]["chain"]
    )  # an unknown chain: NOT_FOUND, nothing created
    created = cluster.create_task(body)
    name = created["metadata"]["name"]
    if not args.wait:
        console.emit(created, args.output, lambda: f"delegatedtask.chainop.dev/{name} created\n")
        return console.OK
    console.progress(f"delegatedtask.chainop.dev/{name} created; waiting (up to {args.timeout:g}s)")
    task = console.follow(cluster, name, timeout=args.timeout)
    if args.output != "table":
        console.emit(task, args.output, str)
        return console.OK if console.phase(task) == "Succeeded" else console.FAILED
    return console.print_outcome(cluster, task)
