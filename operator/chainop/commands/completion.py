"""``completion bash|zsh``: the shell completion script of the whole command tree (shtab
generates it from the argparse parser, so it never falls behind the commands)."""

from __future__ import annotations

import argparse
import os
import sys

EXAMPLES = """\
  source <(chainop completion bash)
  chainop completion zsh > "${fpath[1]}/_chainop"
  kubectl-chainop completion bash > /etc/bash_completion.d/kubectl-chainop"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "completion",
        help="print the bash or zsh completion script",
        description="Print the shell completion script for chainop (or kubectl-chainop).",
        epilog=f"examples:\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import shtab

    from chainop.cli import build_parser

    name = os.path.basename(sys.argv[0])
    parser = build_parser(prog=name if name == "kubectl-chainop" else "chainop")
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0
