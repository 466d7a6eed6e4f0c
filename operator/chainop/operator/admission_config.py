"""The ``chainop run`` flags of the admission webhook server, and the config they make.

Kept apart from ``chainop.operator.admission`` so that building the command line imports
neither kopf nor the operator.
"""

from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """Where the webhook server listens and the certificate it presents."""

    port: int
    host: str
    certfile: str
    keyfile: str


def add_admission_args(parser: argparse.ArgumentParser) -> None:
    """The ``chainop run`` flags of the webhook server (off unless --admission-port)."""
    group = parser.add_argument_group("admission webhook (off unless --admission-port)")
    group.add_argument(
        "--admission-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve the validating webhooks over HTTPS on this port (needs cert and key)",
    )
    group.add_argument(
        "--admission-host",
        default="0.0.0.0",
        metavar="ADDR",
        help="address of the webhook server (default 0.0.0.0)",
    )
    group.add_argument(
        "--admission-cert", metavar="FILE", default=None, help="PEM certificate (chain)"
    )
    group.add_argument("--admission-key", metavar="FILE", default=None, help="PEM private key")


def config_from_args(args: argparse.Namespace) -> AdmissionConfig | None:
    """The admission config the flags ask for (None: off); ValueError when unusable.

    The certificate is loaded once here so that a wrong path or a key that does not fit
    fails ``chainop run`` at once with a message, not kopf's server task later.
    """
    port, cert, key = args.admission_port, args.admission_cert, args.admission_key
    if port is None:
        if cert or key:
            raise ValueError("--admission-cert/--admission-key need --admission-port")
        return None
    if not 1 <= port <= 65535:
        raise ValueError(f"--admission-port {port} is not a TCP port")
    if not cert or not key:
        raise ValueError("--admission-port needs --admission-cert and --admission-key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"cannot load --admission-cert/--admission-key: {error}") from None
    return AdmissionConfig(port=port, host=args.admission_host, certfile=cert, keyfile=key)
