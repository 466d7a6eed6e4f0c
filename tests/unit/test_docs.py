"""We test these aspects: generated docs and the CLI stay true to the code.

* docs/reference.md is what ``python -m chainop.refdocs`` generates from the models;
* every metric family of chainop.metrics is documented in docs/operations.md;
* ``chainop crds`` prints the CRDs of crds/; ``chainop version`` prints the version.
"""

from __future__ import annotations

from pathlib import Path

import yaml

import chainop
from chainop import cli, refdocs
from chainop.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]


def test_reference_is_generated_from_the_models():
    current = (ROOT / "docs" / refdocs.FILE_NAME).read_text(encoding="utf-8")
    assert current == refdocs.render(), "stale: run `python -m chainop.refdocs --write docs/`"


def test_every_metric_is_documented():
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    names = {metric.name for metric in Metrics().registry.collect()}
    assert names  # the registry really has our families
    for name in names:
        assert f"`{name}" in operations, f"{name} missing from docs/operations.md"


def test_chainop_crds_prints_the_crds(capsys):
    assert cli.main(["crds"]) == 0
    printed = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    on_disk = [
        d
        for f in sorted((ROOT / "crds").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]
    assert sorted(d["metadata"]["name"] for d in printed) == sorted(
        d["metadata"]["name"] for d in on_disk
    )
    assert {d["metadata"]["name"]: d for d in printed} == {
        d["metadata"]["name"]: d for d in on_disk
    }


def test_chainop_version(capsys):
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"chainop {chainop.__version__}"


def test_error_table_is_generated_from_the_corpus():
    """docs/errors.md is what ``python -m tests.corpus.table`` makes of the corpus today."""
    from tests.corpus import load_replies, table

    written = (ROOT / "docs" / "errors.md").read_text()
    assert written == table.render(load_replies()), (
        "docs/errors.md is stale: run `python -m tests.corpus.table --write docs/errors.md`"
    )
