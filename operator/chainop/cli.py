"""The ``chainop`` command tree: ``run`` the operator, ``crds``, ``version``, ``demo``, and
the plugin commands (``decide``, ``submit``, ``status``, ``drain``... in
``chainop.commands``). ``kubectl-chainop`` is the same tree under kubectl's plugin name."""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import sys
from collections.abc import Sequence

import chainop
from chainop.operator import audit
from chainop.operator.admission_config import add_admission_args


def _peering_lifetime(value: str) -> int:
    from chainop.operator.config import MIN_PEERING_LIFETIME

    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {value!r}") from None
    if seconds < MIN_PEERING_LIFETIME:
        raise argparse.ArgumentTypeError(
            f"{seconds} < {MIN_PEERING_LIFETIME}: kopf renews a keep-alive 5-10 s before it "
            "expires, so a shorter lifetime leaves a live replica looking dead"
        )
    return seconds


def build_parser(prog: str = "chainop") -> argparse.ArgumentParser:
    """The argument parser (kept separate so docs, tests and completion can inspect it)."""
    from chainop import console

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Keeps LLM provider chains healthy and routes LLM work through them.",
        epilog=console.EXIT_CODES_HELP + "\n\nEvery command has --help with examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the operator against the current kubeconfig/cluster")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; globs like team-* allowed)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (the default when no --namespace is given)",
    )
    run.add_argument(
        "--peering",
        metavar="NAME",
        default=None,
        help="run with kopf peering NAME (for several replicas; needs the peering CRDs)",
    )
    run.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority (default with --peering: random, so exactly one replica acts)",
    )
    run.add_argument(
        "--peering-lifetime",
        type=_peering_lifetime,
        default=os.environ.get("CHAINOP_PEERING_LIFETIME", "10"),
        metavar="SECONDS",
        help=(
            "with --peering: how long a replica's keep-alive counts (kopf renews it 5-10 s "
            "before; default 10, env CHAINOP_PEERING_LIFETIME): a killed active replica is "
            "replaced within this"
        ),
    )
    run.add_argument("--metrics-port", type=int, default=9090, help="port of /metrics; 0 disables")
    run.add_argument("--metrics-address", default="0.0.0.0", help="address of /metrics")
    run.add_argument(
        "--liveness",
        metavar="URL",
        default=None,
        help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    run.add_argument(
        "--transport",
        choices=["aiohttp", "httpx"],
        default="aiohttp",
        help="HTTP transport for provider calls",
    )
    run.add_argument(
        "--allow-endpoint",
        action="append",
        default=[],
        metavar="HOST_OR_CIDR",
        help=(
            "only let chains call these hosts (exact, *.suffix) or networks (repeatable); "
            "link-local/metadata addresses are refused unless listed"
        ),
    )
    run.add_argument(
        "--no-cluster-scan",
        action="store_true",
        help="do not list/watch CRDs and namespaces cluster-wide (for namespace-scoped RBAC)",
    )
    run.add_argument("--tick", type=float, default=0.25, help="health loop cadence, seconds")
    run.add_argument(
        "--max-concurrent-tasks", type=int, default=512, help="tasks executed at the same time"
    )
    run.add_argument("--log-format", choices=["plain", "full", "json"], default="full")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_admission_args(run)
    audit.add_arguments(run)

    sub.add_parser("crds", help="print the CustomResourceDefinitions (YAML)")
    sub.add_parser("version", help="print the version")
    sub.add_parser("demo", add_help=False, help="the end-to-end demo on the local control plane")
    from chainop.commands import register_all

    register_all(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    """Start the operator (blocks until it is stopped)."""
    import kopf

    from chainop.operator import handlers  # noqa: F401  (registers the handlers)
    from chainop.operator.admission import enable_from_args
    from chainop.operator.config import OperatorConfig
    from chainop.redact import install_log_filter

    if (problem := enable_from_args(args)) is not None:
        print(f"chainop run: {problem}", file=sys.stderr)
        return 2
    fmt = {
        "plain": kopf.LogFormat.PLAIN,
        "full": kopf.LogFormat.FULL,
        "json": kopf.LogFormat.JSON,
    }[args.log_format]
    kopf.configure(verbose=args.verbose, log_format=fmt)
    audit.configure_from_args(args)
    install_log_filter()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.verbose:
        # kopf logs "Handler ... succeeded" for every watch event: noise at this volume.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    from chainop.core.endpoints import EndpointPolicy

    try:
        EndpointPolicy.from_entries(args.allow_endpoint)
    except ValueError as error:
        print(f"chainop run: --allow-endpoint: {error}", file=sys.stderr)
        return 2
    priority = args.priority
    if priority is None:
        priority = random.randint(1, 2**31 - 1) if args.peering else 0
    identity = os.environ.get("POD_ID") or f"{socket.gethostname()}/{os.getpid()}"
    config = OperatorConfig(
        namespaces=tuple(args.namespace),
        metrics_port=args.metrics_port or None,
        metrics_address=args.metrics_address,
        liveness_endpoint=args.liveness,
        peering=args.peering,
        priority=priority,
        peering_lifetime=args.peering_lifetime,
        identity=identity,
        tick_seconds=args.tick,
        max_concurrent_tasks=args.max_concurrent_tasks,
        transport=args.transport,
        endpoint_allow=tuple(args.allow_endpoint),
        cluster_scan=not args.no_cluster_scan,
        log_format=args.log_format,
        verbose=args.verbose,
    )
    kopf.run(
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        standalone=config.peering is None,
        peering_name=config.peering,
        priority=config.priority,
        identity=config.identity,  # type: ignore[arg-type]  # kopf's NewType of str
        liveness_endpoint=config.liveness_endpoint,
        memo=kopf.Memo(config=config),
    )
    return 0


def _prog() -> str:
    """``kubectl chainop`` when run as kubectl's plugin (help and errors say so)."""
    return "kubectl chainop" if os.path.basename(sys.argv[0]) == "kubectl-chainop" else "chainop"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``chainop`` and ``kubectl-chainop`` console scripts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:  # the demo parses its own options (--keep-cluster, ...)
        from chainop.demo import main as demo_main

        return demo_main(argv[1:])
    prog = _prog()
    args = build_parser(prog).parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is not None:
        from chainop import console

        try:
            code: int = handler(args)
        except console.ConsoleError as error:
            print(f"{prog} {args.command}: {error.message}", file=sys.stderr)
            return error.code
        except KeyboardInterrupt:
            return 130
        return code
    if args.command == "version":
        print(f"chainop {chainop.__version__}")
        return 0
    if args.command == "crds":
        from chainop import crds

        sys.stdout.write(crds.render_yaml())
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
