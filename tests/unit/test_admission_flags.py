"""We test these aspects: the ``chainop run`` admission flags (no server is started).

* off unless ``--admission-port``; the port needs a certificate and a key, and those
  need the port;
* a certificate that cannot be loaded fails at once with a message naming the flags;
* ``chainop run`` exits 2 with that message before connecting to any cluster.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from chainop import cli
from chainop.operator.admission_config import AdmissionConfig, config_from_args


def parse(*argv: str):
    return cli.build_parser().parse_args(["run", *argv])


def test_off_by_default():
    assert config_from_args(parse()) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--admission-port", "9443"], "needs --admission-cert and --admission-key"),
        (["--admission-cert", "c.pem"], "need --admission-port"),
        (["--admission-port", "70000", "--admission-cert", "c", "--admission-key", "k"], "port"),
        (
            [
                "--admission-port",
                "9443",
                "--admission-cert",
                "/nonexistent/c",
                "--admission-key",
                "k",
            ],
            "cannot load --admission-cert/--admission-key",
        ),
    ],
)
def test_unusable_flags_are_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        config_from_args(parse(*argv))


def test_a_certificate_and_key_that_load_make_a_config(tmp_path: Path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=t",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    args = parse(
        "--admission-port",
        "9443",
        "--admission-cert",
        str(cert),
        "--admission-key",
        str(key),
        "--admission-host",
        "127.0.0.1",
    )
    assert config_from_args(args) == AdmissionConfig(
        port=9443, host="127.0.0.1", certfile=str(cert), keyfile=str(key)
    )


def test_chainop_run_exits_2_on_bad_admission_flags(capsys):
    assert cli.main(["run", "--admission-port", "9443"]) == 2
    assert "chainop run: --admission-port needs --admission-cert" in capsys.readouterr().err
