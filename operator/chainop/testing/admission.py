"""The admission webhook's set-up where no chart runs it: a certificate for 127.0.0.1 and
a ValidatingWebhookConfiguration that calls chainop at ``https://127.0.0.1:PORT``.

Shared by the admission e2e tests, the plugin's and ``bench.admission``; the chart does the
same for a cluster (a Service, and a certificate made by helm or cert-manager).
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import time
from pathlib import Path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def serve_args(port: int, crt: Path, key: Path) -> list[str]:
    """``chainop run`` flags that serve admission on 127.0.0.1:PORT with this certificate."""
    return [
        *("--admission-port", str(port), "--admission-host", "127.0.0.1"),
        *("--admission-cert", str(crt), "--admission-key", str(key)),
    ]


def make_tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = tmp_path / "ca.key", tmp_path / "ca.crt"
    key, csr, crt = tmp_path / "tls.key", tmp_path / "tls.csr", tmp_path / "tls.crt"
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "1",
            "-subj", "/CN=chainop-e2e-ca")  # fmt: skip
    openssl("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(crt), "-days", "1", "-extfile", str(ext))  # fmt: skip
    return ca_crt, crt, key


def webhook_configuration(name: str, namespace: str, port: int, ca: bytes) -> dict[str, object]:
    """Both webhooks at https://127.0.0.1:PORT, as the chart makes them, for one namespace."""

    def webhook(plural: str, path: str) -> dict[str, object]:
        return {
            "name": f"{plural}.chainop.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
            "matchPolicy": "Equivalent",
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "rules": [
                {
                    "apiGroups": ["chainop.dev"],
                    "apiVersions": ["v1alpha1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": [plural],
                    "scope": "Namespaced",
                }
            ],
            "clientConfig": {
                "url": f"https://127.0.0.1:{port}/{path}",
                "caBundle": base64.b64encode(ca).decode("ascii"),
            },
        }

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"chainop.dev/test": "true"}},
        "webhooks": [
            webhook("providerchains", "validate-providerchain"),
            webhook("delegatedtasks", "validate-delegatedtask"),
        ],
    }


def wait_listening(port: int, ca: Path, *, timeout: float = 60.0) -> None:
    """Until a TLS handshake with the webhook server succeeds (verified with the CA)."""
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
