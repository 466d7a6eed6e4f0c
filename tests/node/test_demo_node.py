"""We test these aspects: ``make demo`` on the real node (``--node``).

The demo runs as a subprocess, as ``make demo`` runs it with a node up, in a namespace of
its own, with ``--keep-cluster`` (the shared node and control plane stay). Its vllm backend
is a real pod; after chainop's restart ``kubectl get pods`` shows the old pod Terminating
next to the new one Running, then the new one alone, serving; the story ends restored.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.node import onnode
from tests.node.conftest import Node, report

pytestmark = pytest.mark.node


@pytest.mark.timeout(400)
def test_demo_on_the_node_shows_the_pod_replaced(node: Node, tmp_path: Path, capsys) -> None:
    namespace = f"n1-demo-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", KUBECONFIG=str(node.kubeconfig))
    try:
        result = subprocess.run(
            [
                sys.executable, "-m", "chainop.demo", "--node", "--keep-cluster",
                "--namespace", namespace, "--log-dir", str(tmp_path),
            ],
            cwd=onnode.ROOT, env=env, capture_output=True, text=True, timeout=380, check=False,
        )  # fmt: skip
    finally:
        onnode.delete_namespace(node, namespace)
    out = result.stdout
    assert result.returncode == 0, out[-6000:] + result.stderr[-3000:]
    assert "a real node is up (kubelet + containerd)" in out
    assert "vllm-" in out
    # One kubectl listing with the old pod Terminating and the new one Running.
    listings = re.split(r"\$ kubectl get pods -o wide", out)
    side_by_side = [
        block
        for block in listings
        if re.search(r"^\s+vllm-\S+\s+\S+\s+Terminating\s", block.split("$")[0], re.M)
        and re.search(r"^\s+vllm-\S+\s+\S+\s+Running\s", block.split("$")[0], re.M)
    ]
    assert side_by_side, out[-6000:]
    assert "vllm backend restarted by the kubelet" in out
    assert "✓ restored at its original position, Healthy" in out
    assert "demo complete" in out
    elapsed = re.findall(r"\[\s*([\d.]+)s\] demo complete", out)
    report(
        capsys,
        "the demo on the node:",
        [
            f"demo complete in {elapsed[0] if elapsed else '?'} s; a kubectl get pods with the "
            "old pod Terminating and the new one Running:",
            *[
                line.strip()
                for line in side_by_side[0].split("$")[0].splitlines()
                if line.strip().startswith(("NAME", "vllm-"))
            ],
        ],
    )
