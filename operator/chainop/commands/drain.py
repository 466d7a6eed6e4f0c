"""``drain`` / ``undrain``: take a provider out of service by hand, and put it back.

The drain is an entry of the chain's ``spec.drains`` (declarative: GitOps tools see it,
it survives operator restarts); the operator shows it as state ``Drained``. The edit is a
merge patch conditional on the ``resourceVersion`` just read, re-read and retried on 409,
so two people draining at once never lose each other's entry. An unknown chain or
provider changes nothing.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from chainop import console
from chainop.commands import add_parser, connect

DRAIN_EXAMPLES = """\
  kubectl chainop drain default openai --for 30m --reason "provider incident INC-123"
  kubectl chainop drain default vllm --reason "GPU node maintenance" --wait
  kubectl chainop undrain default openai"""

UNDRAIN_EXAMPLES = """\
  kubectl chainop undrain default openai
  kubectl chainop undrain default vllm --wait"""

#: Attempts at the conditional patch before giving up (each lost race re-reads).
CONFLICT_RETRIES = 5
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def duration(text: str) -> timedelta:
    """``30m``, ``2h``, ``1h30m``, ``90s`` (kubectl's style) as a timedelta."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"not a duration like 30m, 2h, 1h30m, 90s: {text!r}")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    value = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError(f"duration must be positive: {text!r}")
    return value


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = add_parser(
        sub,
        "drain",
        common,
        help="take a provider out of service by hand (spec.drains)",
        examples=DRAIN_EXAMPLES,
    )
    p.add_argument("chain", help="the ProviderChain")
    p.add_argument("provider", help="a provider of the chain")
    p.add_argument(
        "--for",
        dest="duration",
        type=duration,
        default=None,
        metavar="DURATION",
        help="end the drain by itself after this long (30m, 2h, 1h30m); default: until undrained",
    )
    p.add_argument("--reason", default="", help="why (shown in status, kubectl get, Events)")
    p.add_argument(
        "--wait", action="store_true", help="wait until status shows the provider Drained"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="with --wait (default 60)"
    )
    p.set_defaults(handler=run_drain)
    u = add_parser(
        sub,
        "undrain",
        common,
        help="put a drained provider back in service",
        examples=UNDRAIN_EXAMPLES,
    )
    u.add_argument("chain", help="the ProviderChain")
    u.add_argument("provider", help="a provider of the chain")
    u.add_argument(
        "--wait", action="store_true", help="wait until status no longer shows it Drained"
    )
    u.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="with --wait (default 60)"
    )
    u.set_defaults(handler=run_undrain)


def _provider_names(chain: dict[str, Any]) -> list[str]:
    return [str(p.get("name")) for p in (chain.get("spec") or {}).get("providers") or []]


def edit_drains(
    cluster: console.Cluster, chain_name: str, provider: str, entry: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Replace ``provider``'s drain entry with ``entry`` (None removes it), conditionally.

    Returns the patched chain, or None when there was nothing to change.
    """
    for _ in range(CONFLICT_RETRIES):
        chain = cluster.get(console.CHAINS, chain_name)
        names = _provider_names(chain)
        if provider not in names:
            console.no_such_provider(chain_name, provider, names)
        drains = list((chain.get("spec") or {}).get("drains") or [])
        kept = [d for d in drains if d.get("provider") != provider]
        if entry is None and len(kept) == len(drains):
            return None
        new = kept if entry is None else [*kept, entry]
        patch = {
            "metadata": {"resourceVersion": chain["metadata"]["resourceVersion"]},
            "spec": {"drains": new},
        }
        try:
            return cluster.patch_chain(chain_name, patch)
        except console.ApiError as error:
            if error.status == 409:
                continue
            console.fail(console.FAILED, f"the API server rejected the change: {error.message}")
    console.fail(
        console.FAILED,
        f"ProviderChain {chain_name!r} kept changing under us "
        f"({CONFLICT_RETRIES} conflicts); try again",
    )


def _wait_state(cluster: console.Cluster, args: argparse.Namespace, drained: bool) -> None:
    def check() -> bool | None:
        state = console.provider_status(cluster.get(console.CHAINS, args.chain), args.provider).get(
            "state"
        )
        return True if (state == "Drained") == drained else None

    what = f"{args.provider} to {'be' if drained else 'no longer be'} Drained"
    console.wait_for(check, timeout=args.timeout, what=what)
    console.progress(f"{args.provider}: {'Drained' if drained else 'back in service'}")


def run_drain(args: argparse.Namespace) -> int:
    cluster = connect(args)
    now = datetime.now(tz=UTC).replace(microsecond=0)
    entry: dict[str, Any] = {
        "provider": args.provider,
        "reason": args.reason,
        "by": cluster.identity()[:128],
        "since": console.rfc3339(now),
    }
    if args.duration is not None:
        entry["until"] = console.rfc3339(now + args.duration)
    chain = edit_drains(cluster, args.chain, args.provider, entry)
    until = f" until {entry['until']}" if "until" in entry else " until undrained"
    console.emit(
        chain,
        args.output,
        lambda: f"providerchain.chainop.dev/{args.chain}: {args.provider} drained{until}\n",
    )
    if args.wait:
        _wait_state(cluster, args, drained=True)
    return console.OK


def run_undrain(args: argparse.Namespace) -> int:
    cluster = connect(args)
    chain = edit_drains(cluster, args.chain, args.provider, None)
    if chain is None:
        console.progress(f"{args.provider} of {args.chain} is not drained; nothing changed")
        return console.OK
    console.emit(
        chain,
        args.output,
        lambda: f"providerchain.chainop.dev/{args.chain}: {args.provider} undrained\n",
    )
    if args.wait:
        _wait_state(cluster, args, drained=False)
    return console.OK
