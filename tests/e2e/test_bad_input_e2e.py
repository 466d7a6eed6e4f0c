"""We test these aspects: bad input gets a clear error, and the rest keeps working.

The corpus is ``tests/e2e/manifests/invalid/*.yaml``; each file says what it expects in a
comment, ``# expect: apply: FIELD`` or ``# expect: ready: REASON WORDS``:

* ``apply:`` — ``kubectl apply`` (server-side validation, strict field checking) refuses
  it, and stderr names the field path (e.g. ``spec.providers[0].timeoutSeconds``);
* ``ready:`` — only the operator can tell (duplicate or reserved provider names,
  ``maxSeconds < initialSeconds``, a metadata endpoint, a missing Secret or Deployment):
  the chain is accepted and gets ``Ready=False`` with that CamelCase reason and a message
  holding the words;
* meanwhile a valid chain beside them keeps serving tasks, before, during and after,
  and the operator never crashes (same process, no traceback in its log).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chainop.testing.cluster import kubectl
from tests.e2e.kit import CHAINS, Kit, ready_condition

pytestmark = pytest.mark.cluster

CORPUS = Path(__file__).parent / "manifests" / "invalid"
FILES = sorted(CORPUS.glob("*.yaml"))
CAMEL = re.compile(r"^[A-Z][a-z]+([A-Z][a-z]+)+$")


def expectation(path: Path) -> tuple[str, str]:
    match = re.search(r"^# expect: (apply|ready): (.+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} has no '# expect:' line"
    return match.group(1), match.group(2).strip()


def test_corpus_is_large_and_varied() -> None:
    kinds = [expectation(path)[0] for path in FILES]
    assert len(FILES) >= 30
    assert kinds.count("apply") >= 25
    assert kinds.count("ready") >= 5


def serve_one(kit: Kit, name: str) -> None:
    kit.create_task(name, chain="good", content=name)
    status = kit.wait_task(name, timeout=60)
    assert status["phase"] == "Succeeded", status
    assert status["result"]["text"].endswith(name)


@pytest.mark.timeout(600)
def test_invalid_manifests_are_refused_or_not_ready_while_a_valid_chain_serves(
    kit: Kit, operator, backends, kubeconfig
) -> None:
    good = backends("good")
    kit.create_chain("good", [kit.provider("good", good.url, "Sovereign")])
    kit.chain_ready("good")
    serve_one(kit, "before")

    rejected: list[str] = []
    not_ready: list[tuple[str, str, str]] = []
    for index, path in enumerate(FILES):
        kind, expected = expectation(path)
        result = kubectl(
            "apply", "-n", kit.namespace, "-f", str(path), check=False, kubeconfig=kubeconfig
        )
        if kind == "apply":
            assert result.returncode != 0, f"{path.name} was accepted: {result.stdout}"
            assert expected in result.stderr, f"{path.name}: {expected!r} not in {result.stderr}"
            rejected.append(path.stem)
        else:
            assert result.returncode == 0, f"{path.name}: {result.stderr}"
            reason, *words = expected.split()
            obj = kit.wait(
                CHAINS,
                path.stem,
                lambda o, reason=reason: ready_condition(o).get("reason") == reason,
                timeout=30,
                what=f"Ready=False/{reason}",
            )
            condition = ready_condition(obj)
            assert condition["status"] == "False", condition
            assert CAMEL.match(condition["reason"]), condition
            for word in words:
                assert word in condition["message"], (path.name, condition)
            not_ready.append((path.stem, reason, condition["message"]))
        if index % 10 == 9:
            serve_one(kit, f"during-{index}")  # the valid chain serves throughout
    serve_one(kit, "after")
    assert kit.chain_ready("good")["healthy"] == 1

    # Tasks naming invalid chains wait (Pending, ChainNotReady) instead of running or crashing.
    kit.create_task("on-invalid-chain", chain="op-duplicate-provider-names", timeoutSeconds=300)
    kit.wait(
        "delegatedtasks",
        "on-invalid-chain",
        lambda o: any(
            c.get("reason") == "ChainNotReady"
            for c in (o.get("status") or {}).get("conditions", [])
        ),
        what="ChainNotReady",
    )
    assert operator.runner.running
    assert "Traceback" not in operator.log()
    print(f"\nbad input: {len(rejected)} rejected by kubectl apply, {len(not_ready)} Ready=False:")
    for name, reason, message in not_ready:
        print(f"  {name}: {reason}: {message}")
