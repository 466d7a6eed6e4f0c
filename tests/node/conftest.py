"""Fixtures for the tests of the real node (``hack/node-up.sh`` / ``hack/node-down.sh``).

The node is brought up once per session *before* the first test runs (a first-time build
of kubelet + kube-scheduler, ~5 min, and of the base image, ~1 min, must not count against
a test's timeout). When ``hack/node-up.sh`` exits 2 the host cannot run a node (not root,
no cgroups, a port in use, ...): every node test is then *skipped with that reason*, never
passed. A node this session started is stopped at the end; one that was already up is left
running.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from chainop.testing import cluster as cluster_helpers

NODE_NAME = os.environ.get("NODE_NAME", "chainop-node")
BASE_IMAGE = "localhost/chainop-base:bookworm"
PAUSE_IMAGE = "localhost/chainop-pause:1"
BRIDGE = "chainop0"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "node: needs a real node (kubelet + containerd; root): hack/node-up.sh"
    )


@dataclass
class NodeStart:
    """The outcome of the session's first ``hack/node-up.sh``."""

    returncode: int
    seconds: float
    output: str
    started_here: bool

    @property
    def reason(self) -> str:
        lines = [line for line in self.output.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"hack/node-up.sh exited {self.returncode}"


_start: NodeStart | None = None


def run_script(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 2400.0
) -> subprocess.CompletedProcess[str]:
    """Run ``hack/<script>`` from the repository; stdout and stderr together."""
    root = cluster_helpers.repo_root()
    return subprocess.run(
        [str(root / "hack" / script), *args],
        cwd=root,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def node_live() -> bool:
    return run_script("node-status.sh", timeout=30).returncode == 0


def start_node() -> NodeStart:
    """``hack/image-base.sh base`` (the pods' image) then ``hack/node-up.sh``."""
    started_here = not node_live()
    t0 = time.monotonic()
    base = run_script("image-base.sh", "base")
    if base.returncode != 0:
        return NodeStart(base.returncode, time.monotonic() - t0, base.stdout, started_here)
    up = run_script("node-up.sh")
    return NodeStart(up.returncode, time.monotonic() - t0, base.stdout + up.stdout, started_here)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Bring the node up once, outside any test's timeout, if node tests will run."""
    global _start
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("node") for item in session.items):
        _start = start_node()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if (
        _start is not None
        and _start.started_here
        and _start.returncode == 0
        and os.environ.get("KEEP_NODE", "0") != "1"
    ):
        run_script("node-down.sh", timeout=300)


@dataclass
class Node:
    """The running node and a kubectl for its control plane."""

    name: str
    state_dir: Path
    kubeconfig: Path
    up_seconds: float
    cleanups: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def node_dir(self) -> Path:
        return self.state_dir / "node"

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [cluster_helpers.kubectl_path(), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def get_json(self, *args: str) -> dict[str, object]:
        out = self.kubectl("get", *args, "-o", "json").stdout
        data: dict[str, object] = json.loads(out)
        return data

    def lease_age(self) -> float | None:
        """Seconds since the node's Lease was renewed (None: no Lease)."""
        proc = self.kubectl(
            "get", "lease", "-n", "kube-node-lease", self.name,
            "-o", "jsonpath={.spec.renewTime}", check=False,
        )  # fmt: skip
        if proc.returncode != 0 or not proc.stdout.strip():
            return None
        renewed = datetime.fromisoformat(proc.stdout.strip().replace("Z", "+00:00"))
        return time.time() - renewed.timestamp()

    def ready_condition(self) -> str | None:
        proc = self.kubectl(
            "get", "node", self.name, "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False,
        )  # fmt: skip
        return proc.stdout.strip() if proc.returncode == 0 else None

    def live_and_ready(self) -> bool:
        age = self.lease_age()
        return age is not None and age < 30 and self.ready_condition() == "True"

    def run_pod(
        self,
        namespace: str,
        name: str,
        command: Sequence[str],
        *,
        image: str = BASE_IMAGE,
        port: int | None = None,
    ) -> None:
        container: dict[str, object] = {
            "name": "main",
            "image": image,
            "imagePullPolicy": "Never",
            "command": list(command),
        }
        if port is not None:
            container["ports"] = [{"containerPort": port}]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": self.name},
                "terminationGracePeriodSeconds": 2,
                "containers": [container],
            },
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def wait_running(self, namespace: str, *names: str, timeout: float = 90.0) -> float:
        """Wait until the pods are Ready; return the seconds it took."""
        t0 = time.monotonic()
        self.kubectl(
            "wait", "-n", namespace, "--for=condition=Ready", f"--timeout={int(timeout)}s",
            *(f"pod/{n}" for n in names), timeout=timeout + 10,
        )  # fmt: skip
        return time.monotonic() - t0


@pytest.fixture(scope="session")
def node_start() -> NodeStart:
    global _start
    if _start is None:  # e.g. a single test selected by node id
        _start = start_node()
    if _start.returncode == 2:
        pytest.skip(_start.reason)  # "node-up: cannot run a node here: <why>"
    if _start.returncode != 0:
        pytest.fail(
            f"hack/node-up.sh failed ({_start.returncode}):\n{_start.output[-4000:]}",
            pytrace=False,
        )
    return _start


@pytest.fixture(scope="session")
def node(node_start: NodeStart) -> Node:
    state = cluster_helpers.cluster_dir()
    return Node(
        name=NODE_NAME,
        state_dir=state,
        kubeconfig=state / "kubeconfig",
        up_seconds=node_start.seconds,
    )


@pytest.fixture
def node_namespace(node: Node) -> Iterator[str]:
    ns = f"node-test-{uuid.uuid4().hex[:6]}"
    node.kubectl("create", "namespace", ns)
    yield ns
    node.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def read_env_file(path: Path) -> dict[str, str]:
    """A ``KEY=value  # comment`` file as written by hack/node-up.sh (shell quoting)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, rest = line.partition("=")
        words = shlex.split(rest, comments=True)
        values[key] = words[0] if words else ""
    return values


def report(capsys: pytest.CaptureFixture[str], title: str, lines: Sequence[str]) -> None:
    """Print to the terminal even under output capture (the checklist must be visible)."""
    with capsys.disabled():
        print(f"\n{title}\n" + "".join(f"  {line}\n" for line in lines), end="", flush=True)
