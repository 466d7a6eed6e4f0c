"""The chainop demo (``make demo``): from a healthy chain to self-healing, on a real API server.

Everything is set up here and torn down again, nothing to prepare:

1. the local control plane (``hack/cluster-up.sh``: etcd + kube-apiserver +
   kube-controller-manager on 127.0.0.1; the first run builds them, minutes) — reused if
   it already runs, and stopped at the end only if this demo started it;
2. the CRDs, a namespace (``chainop-demo``), the vLLM Deployment and Service of
   ``examples/vllm-deployment.yaml``;
3. fake LLM backends (real HTTP servers on 127.0.0.1 speaking the OpenAI, Anthropic and
   jobs protocols): the in-cluster "vllm" one is bound by the BackendSupervisor to the
   real ``vllm`` Deployment (the supervisor plays kubelet: when chainop patches the pod
   template, the process is restarted), the OpenAI, Anthropic and batch-gateway stand-ins
   run on ports of their own and check the demo API keys;
4. the example chains (``examples/provider-chain.yaml``, ``examples/jobs-chain.yaml``)
   pointed at those backends, with probes and recovery shortened so that the story takes
   seconds (probe every 1 s, Unhealthy after 3 failed probes, recovery probes from 1 s
   doubling up to 8 s, where the examples say 15 s, 3, and 30-300 s); the Secrets of
   ``examples/secrets.yaml`` with demo keys;
5. the operator itself, ``python -m chainop run -n chainop-demo``, as a subprocess (its log
   goes to ``.cache/demo/operator.log``).

Then it narrates, with real ``kubectl`` output: the chains turn Ready; every task of
``examples/tasks/`` is routed by its rule; the in-cluster backend breaks (HTTP 503) and a
task fails over to OpenAI; probes fail, vllm turns Unhealthy and is Excluded; chainop
restarts the ``vllm`` Deployment; the backend comes back, is restored at the head, Healthy,
and takes local work again; the Events tell the same story.

**On a real node** (``hack/node-up.sh``: kubelet + containerd; used when
``hack/node-status.sh`` says one is live, or with ``NODE=1`` / ``--node``, which starts it
if needed) the in-cluster backend is a real pod instead of a supervised process: the
project's fake vLLM in the app image ``localhost/chainop:dev`` (``make image``), run by the
``vllm`` Deployment on the node with ``hostNetwork`` on the bridge address 10.213.0.1 (the
node has no cluster DNS, and a chain's endpoint must survive the pod's replacement). When
chainop patches the Deployment, ``kubectl get pods`` shows the real thing: the old pod
Terminating, the new one Running. ``NODE=0`` / ``--no-node`` forces the pod-less demo.

The story is ``chainop.demo_scenes.SCENES``, a list of small functions played on the
``Demo`` stage below (narration, kubectl with its output, waits, cleanup); the stage reads
chains and tasks and waits with ``chainop.console``, as ``kubectl chainop`` does. The
node's variants are in ``chainop.demo_node``.

Run it with ``make demo`` (``ARGS=--keep-cluster`` leaves the control plane running) or
``python -m chainop.demo --help``. Ctrl-C cleans up. Exit code 0 on success, 1 when a
step failed (the error says which and where the logs are), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import yaml

from chainop import console
from chainop.testing import cluster
from chainop.testing.cluster import ClusterError, KubeApi, ProcessRunner
from chainop.testing.supervisor import BackendSupervisor

__all__ = ["DemoError", "Options", "build_parser", "demo_chain", "main"]

T = TypeVar("T")

DEMO_LABEL = "chainop.dev/demo"
STEPS = 12

#: Health settings of the demo chains: the examples' values, shortened to seconds.
DEMO_HEALTH: dict[str, Any] = {
    "failureThreshold": 2,
    "transientRetries": 1,
    "cooldown": {"initialSeconds": 2, "maxSeconds": 10},
    "probe": {"intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 3},
}
DEMO_RECOVERY: dict[str, Any] = {"initialSeconds": 1, "maxSeconds": 8}
#: How long chainop treats a restart it ordered as in flight (no second restart
#: meanwhile): above the stand-in backend's start-up time, as for a real model server.
DEMO_RESTART_GRACE = 10
#: The demo's API keys (the fake backends refuse any other with HTTP 401).
DEMO_KEYS = {"openai-key": "sk-demo-openai-0000", "anthropic-key": "sk-ant-demo-0000"}
#: The model the example chain asks of its in-cluster vllm provider.
VLLM_MODEL = "qwen2.5-7b-instruct"
#: How long the restarted vllm backend "loads its model" before it serves (a real one: minutes).
WARMUP_SECONDS = 2.0

ROUTES_TO = re.compile(r'^# Routes to: (?P<providers>.+?) \(reason: "(?P<reason>.*)"\)$', re.M)

# Runs the fake backend; when the marker exists (every start but the first), it sleeps
# first, as a real model server loads its weights before it listens.
_WARMUP_WRAPPER = """
import os, sys, time
marker, seconds = sys.argv[1], float(sys.argv[2])
if os.path.exists(marker):
    print(f"loading model weights ({seconds:g}s)", flush=True)
    time.sleep(seconds)
else:
    open(marker, "w").close()
args = [sys.executable, "-m", "chainop.testing.fake_backend", *sys.argv[3:]]
os.execv(sys.executable, args)
"""


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which, and where to look."""


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


@dataclass(frozen=True)
class Options:
    """What the command line chose."""

    namespace: str
    keep_cluster: bool
    log_dir: Path
    wait_timeout: float
    #: True: on the real node (started if needed); False: pod-less; None: the node if live.
    node: bool | None = None


# --------------------------------------------------------------------- pure helpers


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file (empty ones left out)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def demo_chain(doc: dict[str, Any], endpoints: dict[str, str]) -> dict[str, Any]:
    """An example ProviderChain pointed at the demo's backends, with fast health settings.

    ``endpoints`` maps provider names to base URLs; every provider of the chain must have
    one. Everything else (order, tiers, models, keys, backends) stays as in the example.
    """
    out = copy.deepcopy(doc)
    spec = out["spec"]
    for provider in spec["providers"]:
        try:
            provider["endpoint"] = endpoints[provider["name"]]
        except KeyError:
            raise DemoError(f"no demo backend for provider {provider['name']!r}") from None
    mode = (spec.get("health", {}).get("probe") or {}).get("mode")
    spec["health"] = copy.deepcopy(DEMO_HEALTH)
    if mode:
        spec["health"]["probe"]["mode"] = mode
    spec.setdefault("selfHealing", {})["recovery"] = dict(DEMO_RECOVERY)
    spec["selfHealing"]["restartGraceSeconds"] = DEMO_RESTART_GRACE
    return out


def demo_secret(doc: dict[str, Any]) -> dict[str, Any]:
    """An example Secret with its placeholder replaced by the demo key."""
    out = copy.deepcopy(doc)
    name = out["metadata"]["name"]
    out["stringData"] = {key: DEMO_KEYS[name] for key in out["stringData"]}
    return out


def routing_claim(path: Path) -> tuple[list[str], str] | None:
    """The ``# Routes to: A, B (reason: "...")`` comment of an example task."""
    match = ROUTES_TO.search(path.read_text())
    if match is None:
        return None
    return [p.strip() for p in match["providers"].split(",")], match["reason"]


def dump(docs: Sequence[dict[str, Any]]) -> str:
    """Documents as one multi-document YAML text."""
    return yaml.safe_dump_all(list(docs), sort_keys=False)


# --------------------------------------------------------------------- the stage


class Demo:
    """One run of the demo: narration, kubectl, reading and waiting, cleanup — the
    scenes of ``chainop.demo_scenes`` do the rest."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.ns = options.namespace
        self.root = cluster.repo_root()
        self.examples = self.root / "examples"
        self.t0 = time.monotonic()
        self.step_no = 0
        self.cleanups: list[tuple[str, Callable[[], object]]] = []
        self.api: KubeApi | None = None
        #: The cluster as ``kubectl chainop`` sees it (set with ``api``).
        self.console: console.Cluster | None = None
        self.supervisor: BackendSupervisor | None = None
        self.operator: ProcessRunner | None = None
        self.backends: dict[str, str] = {}  # provider name -> base URL
        self.chain_names: list[str] = []
        self.started_cluster = False
        self.metrics_url = ""
        self.old_pid: int | None = None
        self.node = False  # decided in control_plane()
        self.vllm_port = 0
        self.old_pod: dict[str, Any] | None = None

    def connect(self, kubeconfig: Path) -> None:
        """Both clients of the cluster: the test helpers' and the console's."""
        self.api = cluster.connect(kubeconfig)
        self.on_cleanup("closing the API connection", self.api.close)
        try:
            self.console = console.Cluster(console.Target(str(kubeconfig), None, self.ns))
        except console.ConsoleError as error:
            raise DemoError(error.message) from error

    # ----------------------------------------------------------------- output

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def note(self, text: str) -> None:
        self.say(f"  {text}")

    def step(self, title: str) -> None:
        self.step_no += 1
        self.say(f"\n[{self.elapsed():6.1f}s] == {self.step_no}/{STEPS} {title}")

    def kubectl(self, *args: str, input: str | None = None, namespaced: bool = True) -> str:
        """Run kubectl against the demo namespace, echo the command and its output."""
        full = [*args, "-n", self.ns] if namespaced else list(args)
        self.say("  $ kubectl " + " ".join(shlex.quote(a) for a in full))
        try:
            result = cluster.kubectl(*full, input=input, timeout=self.options.wait_timeout)
        except (ClusterError, subprocess.TimeoutExpired) as error:
            raise DemoError(str(error)) from error
        for line in result.stdout.rstrip("\n").splitlines():
            self.say(f"    {line}")
        return result.stdout

    # ----------------------------------------------------------------- waiting

    def wait(self, what: str, check: Callable[[], T | None], *, timeout: float | None = None) -> T:
        """Poll ``check()`` until it returns something other than None (or False); give up
        if the operator exits, or after the timeout with what the chains look like."""
        limit = timeout or self.options.wait_timeout

        def attempt() -> T | None:
            value = check()
            if value is not None and value is not False:
                return value
            if self.operator is not None and not self.operator.running:
                raise DemoError(
                    f"the operator exited ({self.operator.returncode}) while waiting for "
                    f"{what}; see {self.operator.log_path}"
                )
            return None

        try:
            return console.wait_for(attempt, timeout=limit, what=what, interval=0.1)
        except console.ConsoleError as error:
            raise DemoError(f"{error.message}{self.diagnosis()}") from None

    def diagnosis(self) -> str:
        """What the chains look like now, for error messages."""
        lines = []
        for name in self.chain_names:
            try:
                chain = self.get("providerchains", name) or {}
            except Exception as error:  # a diagnosis must not hide the real error
                lines.append(f"chain {name}: unreadable ({error})")
                continue
            status = console.status_of(chain)
            condition = console.condition(chain, "Ready")
            states = ", ".join(
                f"{p.get('name')}={p.get('state')}" for p in status.get("providers") or []
            )
            lines.append(
                f"chain {name}: Ready={condition.get('status', '?')} "
                f"({condition.get('reason', '')}: {condition.get('message', '')}); "
                f"HEALTHY {status.get('healthySummary', '?')}; {states}"
            )
        return "".join(f"\n  {line}" for line in lines)

    # ----------------------------------------------------------------- reading

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        """One of our objects, None if it does not exist."""
        assert self.console is not None
        try:
            return self.console.get(plural, name)
        except console.ConsoleError as error:
            if error.code == console.NOT_FOUND:
                return None
            raise DemoError(f"reading {plural}/{name}: {error.message}") from error
        except console.ApiError as error:
            raise DemoError(f"reading {plural}/{name}: {error.message}") from error

    def chain_status(self, name: str) -> dict[str, Any]:
        return console.status_of(self.get("providerchains", name) or {})

    def provider(self, chain: str, name: str) -> dict[str, Any]:
        return console.provider_status(self.get("providerchains", chain) or {}, name)

    def wait_task(self, name: str) -> dict[str, Any]:
        """Wait until a task is Succeeded or Failed; return its status."""
        return self.wait(f"task {name} to finish", lambda: self.finished_task(name))

    def finished_task(self, name: str) -> dict[str, Any] | None:
        task = self.get("delegatedtasks", name) or {}
        return console.status_of(task) if task and console.finished(task) else None

    # ----------------------------------------------------------------- run

    def run(self) -> int:
        """All the steps, then the cleanup, whatever happened."""
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_interrupted)
        code = 0
        try:
            self.say(f"chainop demo: namespace {self.ns}, logs in {self.options.log_dir}")
            from chainop.demo_scenes import SCENES

            for scene in SCENES:
                scene(self)
            self.say(f"\n[{self.elapsed():6.1f}s] demo complete: every step shown above.")
        except DemoError as error:
            self.say(f"\n[{self.elapsed():6.1f}s] DEMO FAILED: {error}")
            self.say(f"  logs: {self.options.log_dir} (operator.log, backends/)")
            code = 1
        except KeyboardInterrupt:
            self.say(f"\n[{self.elapsed():6.1f}s] interrupted: cleaning up")
            code = 130
        finally:
            self.cleanup()
            signal.signal(signal.SIGTERM, previous)
        return code

    def on_cleanup(self, what: str, action: Callable[[], object]) -> None:
        self.cleanups.append((what, action))

    def run_script(self, name: str, *, timeout: float, limit: str) -> None:
        """Run ``hack/NAME`` in the foreground, its progress on the user's terminal (a first
        run builds binaries for minutes); a DemoError when it fails or outlasts ``limit``."""
        script = self.root / "hack" / name
        try:
            code = subprocess.run([str(script)], check=False, timeout=timeout).returncode
        except subprocess.TimeoutExpired as error:
            raise DemoError(f"{script} did not finish within {limit}") from error
        if code != 0:
            raise DemoError(f"{script} failed ({code}); see its output above")

    def cleanup(self) -> None:
        """Undo every step that was done, newest first; Ctrl-C cannot interrupt it."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.cleanups:
                self.say(f"\n[{self.elapsed():6.1f}s] == cleaning up")
            while self.cleanups:
                what, action = self.cleanups.pop()
                self.note(what)
                try:
                    action()
                except Exception as error:  # go on: leave as little behind as possible
                    self.note(f"  (failed: {error})")
            if self.started_cluster and self.options.keep_cluster:
                self.note(
                    "leaving the control plane running (--keep-cluster); stop it with "
                    "`make cluster-down`"
                )
            elif not self.started_cluster:
                self.note("the control plane was already running: left running")
            self.say(f"[{self.elapsed():6.1f}s] done")
        finally:
            signal.signal(signal.SIGINT, previous)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


# --------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line."""
    parser = argparse.ArgumentParser(
        prog="chainop demo",
        description=(
            "Run chainop end to end on the local control plane: routing, failover, "
            "exclusion, backend restart and restore. Sets up and removes everything."
        ),
    )
    parser.add_argument(
        "--keep-cluster",
        action="store_true",
        help="leave the control plane running even if the demo started it",
    )
    parser.add_argument(
        "--namespace", default="chainop-demo", help="namespace to create, use and delete"
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="where the operator and backends log (default: .cache/demo/)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--node",
        dest="node",
        action="store_true",
        default=None,
        help="run the backend as a pod on the real node, starting it if needed (NODE=1)",
    )
    where.add_argument(
        "--no-node",
        dest="node",
        action="store_false",
        help="the pod-less demo even if a node is up (NODE=0)",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=60.0,
        help="seconds any single wait may take before the demo gives up",
    )
    return parser


def _clear_logs(log_dir: Path) -> None:
    for pattern in ("*.log", "backends/*.log", "backends/*.started"):
        for path in log_dir.glob(pattern):
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def _unbuffered() -> Iterator[None]:
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    yield


def _node_from_env() -> bool | None:
    """NODE=1: the node (started if needed); NODE=0: pod-less; unset: the node if live."""
    value = os.environ.get("NODE", "").strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit code (0 ok, 1 a step failed, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        root = cluster.repo_root()
    except ClusterError as error:
        print(f"chainop demo: {error}", file=sys.stderr)
        return 1
    log_dir = (args.log_dir or root / ".cache" / "demo").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    _clear_logs(log_dir)
    options = Options(
        namespace=args.namespace,
        keep_cluster=args.keep_cluster,
        log_dir=log_dir,
        wait_timeout=args.wait_timeout,
        node=args.node if args.node is not None else _node_from_env(),
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with _unbuffered():
        return Demo(options).run()


if __name__ == "__main__":
    # Run chainop.demo's main, not this __main__ copy's: the scenes import DemoError from
    # chainop.demo, and a DemoError of another module copy would escape ``Demo.run``.
    from chainop.demo import main as _main

    sys.exit(_main())
