"""The plugin's commands (``kubectl chainop ...`` = ``chainop ...``), one small module each.

Every module has ``register(sub, common)``, which adds its subparser with
``handler=run``; ``run(args) -> int`` returns an exit code of ``chainop.console``.
``common`` is the parent parser of the options every command shares.
"""

from __future__ import annotations

import argparse

from chainop import console


def common_options() -> argparse.ArgumentParser:
    """-n/--namespace, --context, --kubeconfig and -o, as kubectl spells them."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("cluster options")
    group.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="namespace (default: the context's namespace, else 'default')",
    )
    group.add_argument("--context", default=None, help="kubeconfig context to use")
    group.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    group.add_argument(
        "-o",
        "--output",
        choices=["table", "json", "yaml"],
        default="table",
        help="output format (default: table)",
    )
    return parent


def connect(args: argparse.Namespace) -> console.Cluster:
    """The cluster of the command's --kubeconfig/--context/--namespace."""
    return console.Cluster(console.Target(args.kubeconfig, args.context, args.namespace))


def register_all(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add every plugin command to the ``chainop`` command tree."""
    from chainop.commands import (
        completion,
        decide,
        drain,
        explain,
        get,
        replay,
        result,
        status,
        submit,
    )

    common = common_options()
    for module in (decide, submit, result, get, status, drain, replay, explain):
        module.register(sub, common)
    completion.register(sub)


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    common: argparse.ArgumentParser,
    *,
    help: str,
    examples: str,
) -> argparse.ArgumentParser:
    """A subparser with the shared options and an epilog of examples and exit codes."""
    return sub.add_parser(
        name,
        parents=[common],
        help=help,
        description=help[:1].upper() + help[1:] + ".",
        epilog=f"examples:\n{examples}\n\n{console.EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
