"""A stand-in kubelet for fake backends: restart a local process when its Deployment rolls.

The local control plane has no kubelet, so a Deployment's pods never run. For tests and
the demo, :class:`BackendSupervisor` plays that part for chosen Deployments: each bound
Deployment gets one local process (e.g. the fake LLM backend on ``127.0.0.1:PORT``), and
whenever the Deployment's ``.spec.template`` changes — which is what
``kubectl rollout restart`` and chainop's self-healing do, by patching the annotation
``chainop.dev/restartedAt`` (or ``kubectl.kubernetes.io/restartedAt``) into
``spec.template.metadata.annotations`` — the process is killed and started again fresh,
and the restart is counted. Changes elsewhere (labels on the Deployment, status,
replicas) do not restart it, as with a real Deployment.

Thread-based, so it serves synchronous code (pytest, the demo script) as well as code
running an event loop in another thread::

    sup = BackendSupervisor(kubeconfig)
    sup.bind("team-a", "vllm", [sys.executable, "-m", "chainop.testing.fake_backend",
                                "--port", "18000"], port=18000)
    ...
    sup.wait_for_restarts("team-a", "vllm", 1, timeout=30)
    sup.close()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from kubernetes import client, config, watch

from chainop.testing import cluster

__all__ = ["STAND_IN_NODE_SELECTOR", "BackendSupervisor", "SupervisorError", "stand_in"]

#: A node selector no node has: the pods of a Deployment whose process the supervisor
#: runs must stay Pending even when a real node is up (a kubelet would otherwise try to
#: run their placeholder image, and chainop would rightly see ImagePullBackOff).
STAND_IN_NODE_SELECTOR = {"chainop.dev/stand-in": "backend-supervisor"}


def stand_in(deployment: dict[str, Any]) -> dict[str, Any]:
    """``deployment`` (a dict) with :data:`STAND_IN_NODE_SELECTOR` in its pod template."""
    spec = deployment.setdefault("spec", {})
    template = spec.setdefault("template", {})
    pod_spec = template.setdefault("spec", {})
    pod_spec["nodeSelector"] = {**(pod_spec.get("nodeSelector") or {}), **STAND_IN_NODE_SELECTOR}
    return deployment


logger = logging.getLogger(__name__)

# The kubernetes client is untyped; reach it through Any so that mypy --strict accepts calls.
_kube_config: Any = config
_kube_watch: Any = watch

_WATCH_SECONDS = 30  # server-side timeout of one watch request; the loop re-watches


class SupervisorError(RuntimeError):
    """A backend could not be started, or a binding is unknown."""


@dataclass
class _Binding:
    namespace: str
    deployment: str
    command: list[str]
    port: int
    env: dict[str, str]
    log_path: Path
    template_hash: str | None = None  # None: the Deployment does not exist (yet)
    restarts: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    watch: Any = None  # the kubernetes Watch in use, to interrupt it on close
    errors: list[str] = field(default_factory=list)
    observed_resource_version: int = 0  # of the last event handled


class BackendSupervisor:
    """Run one local process per bound Deployment; restart it when the template changes.

    ``kubeconfig`` defaults to the local cluster's
    (:func:`chainop.testing.cluster.kubeconfig_path`).
    Backend output goes to ``log_dir/<namespace>.<deployment>.log`` (a temporary directory
    by default). ``ready_timeout`` bounds the wait for a (re)started backend's port;
    ``termination_grace`` is the kubelet's grace period: SIGTERM, then SIGKILL after it.
    """

    def __init__(
        self,
        kubeconfig: str | Path | None = None,
        *,
        log_dir: str | Path | None = None,
        ready_timeout: float = 30.0,
        termination_grace: float = 10.0,
    ) -> None:
        self._kubeconfig = Path(kubeconfig or cluster.kubeconfig_path())
        self._api_client: Any = _kube_config.new_client_from_config(
            config_file=str(self._kubeconfig)
        )
        self._apps: Any = client.AppsV1Api(self._api_client)
        self._log_dir = Path(log_dir or tempfile.mkdtemp(prefix="chainop-backends-"))
        self._ready_timeout = ready_timeout
        self._termination_grace = termination_grace
        self._bindings: dict[tuple[str, str], _Binding] = {}
        self._changed = threading.Condition()
        self._closed = False

    # ------------------------------------------------------------------ public API
    def bind(
        self,
        namespace: str,
        deployment: str,
        command: Sequence[str],
        port: int,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start ``command`` (which must serve on ``127.0.0.1:port``) for the Deployment.

        Returns once the port accepts connections and the Deployment's current template is
        recorded, so any later template change restarts the process. The Deployment may
        not exist yet: its first appearance is recorded, not counted as a restart.
        """
        key = (namespace, deployment)
        if self._closed:
            raise SupervisorError("the supervisor is closed")
        if key in self._bindings:
            raise SupervisorError(f"{namespace}/{deployment} is already bound")
        self._log_dir.mkdir(parents=True, exist_ok=True)
        binding = _Binding(
            namespace=namespace,
            deployment=deployment,
            command=[str(c) for c in command],
            port=port,
            env=dict(env or {}),
            log_path=self._log_dir / f"{namespace}.{deployment}.log",
        )
        # Record the template before returning, so a patch right after bind() is seen.
        template_hash, resource_version = self._current(namespace, deployment)
        binding.template_hash = template_hash
        self._observed(binding, resource_version)
        try:
            self._start_process(binding)
        except BaseException:
            self._shutdown(binding)
            raise
        self._bindings[key] = binding
        binding.thread = threading.Thread(
            target=self._watch_loop,
            args=(binding, resource_version),
            name=f"supervisor-{namespace}-{deployment}",
            daemon=True,
        )
        binding.thread.start()

    def restarts(self, namespace: str, deployment: str) -> int:
        """How many times the backend was restarted because its template changed."""
        with self._changed:
            return self._binding(namespace, deployment).restarts

    def pid(self, namespace: str, deployment: str) -> int | None:
        """The backend's current process id (``None`` while it is not running)."""
        with self._changed:
            process = self._binding(namespace, deployment).process
            return process.pid if process and process.poll() is None else None

    def log_path(self, namespace: str, deployment: str) -> Path:
        """The file the backend's stdout and stderr go to (appended across restarts)."""
        return self._binding(namespace, deployment).log_path

    def wait_for_restarts(
        self, namespace: str, deployment: str, count: int, *, timeout: float = 30.0
    ) -> int:
        """Block until the backend has restarted at least ``count`` times and serves again.

        Returns the restart count; raises :class:`SupervisorError` on timeout.
        """
        with self._changed:
            binding = self._binding(namespace, deployment)
            if not self._changed.wait_for(lambda: binding.restarts >= count, timeout):
                raise SupervisorError(
                    f"{namespace}/{deployment}: {binding.restarts} restarts after "
                    f"{timeout}s, expected {count}; errors: {binding.errors}"
                )
            return binding.restarts

    def wait_for_observed(
        self, namespace: str, deployment: str, resource_version: str, *, timeout: float = 30.0
    ) -> None:
        """Block until the supervisor has handled the Deployment's change ``resource_version``.

        For tests that must show a change did *not* restart the backend: patch, take the
        patched object's ``metadata.resourceVersion``, wait for it here, then look at
        :meth:`restarts`. (Compares resourceVersions as integers, as etcd issues them.)
        """
        wanted = int(resource_version)
        with self._changed:
            binding = self._binding(namespace, deployment)
            if not self._changed.wait_for(
                lambda: binding.observed_resource_version >= wanted, timeout
            ):
                raise SupervisorError(
                    f"{namespace}/{deployment}: resourceVersion {resource_version} not "
                    f"observed after {timeout}s (at {binding.observed_resource_version})"
                )

    def unbind(self, namespace: str, deployment: str) -> None:
        """Stop watching the Deployment and stop its backend."""
        binding = self._bindings.pop((namespace, deployment), None)
        if binding is not None:
            self._shutdown(binding)

    def close(self) -> None:
        """Stop every watch and every backend process. Idempotent."""
        self._closed = True
        for key in list(self._bindings):
            self.unbind(*key)
        self._api_client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _binding(self, namespace: str, deployment: str) -> _Binding:
        try:
            return self._bindings[(namespace, deployment)]
        except KeyError:
            raise SupervisorError(f"{namespace}/{deployment} is not bound") from None

    def _current(self, namespace: str, deployment: str) -> tuple[str | None, str]:
        """The Deployment's template hash (``None`` if absent) and the list's resourceVersion."""
        listing = self._apps.list_namespaced_deployment(
            namespace, field_selector=f"metadata.name={deployment}"
        )
        items = listing.items or []
        template_hash = self._hash(items[0].spec.template) if items else None
        return template_hash, str(listing.metadata.resource_version)

    def _hash(self, template: Any) -> str:
        """A stable digest of a pod template (a model object or a raw dict)."""
        raw = self._api_client.sanitize_for_serialization(template)
        text = json.dumps(raw, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def _watch_loop(self, binding: _Binding, resource_version: str) -> None:
        while not binding.stop.is_set():
            w = _kube_watch.Watch()
            binding.watch = w
            try:
                for event in w.stream(
                    self._apps.list_namespaced_deployment,
                    binding.namespace,
                    field_selector=f"metadata.name={binding.deployment}",
                    resource_version=resource_version,
                    timeout_seconds=_WATCH_SECONDS,
                    allow_watch_bookmarks=True,
                    deserialize=False,
                ):
                    if binding.stop.is_set():
                        break
                    obj = event["object"]
                    resource_version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self._on_template(binding, None)
                    elif event["type"] != "BOOKMARK":
                        self._on_template(binding, self._hash(obj["spec"]["template"]))
                    self._observed(binding, resource_version)
            except Exception as exc:  # keep supervising whatever happened
                if binding.stop.is_set():
                    break
                if getattr(exc, "status", None) == 410:  # resourceVersion too old: re-list
                    logger.debug("watch expired for %s/%s", binding.namespace, binding.deployment)
                else:
                    binding.errors.append(repr(exc))
                    logger.warning(
                        "watch of %s/%s failed: %r", binding.namespace, binding.deployment, exc
                    )
                    binding.stop.wait(1.0)
                try:
                    template_hash, resource_version = self._current(
                        binding.namespace, binding.deployment
                    )
                except Exception as list_exc:
                    binding.errors.append(repr(list_exc))
                    binding.stop.wait(1.0)
                    continue
                self._on_template(binding, template_hash)
                self._observed(binding, resource_version)
            finally:
                binding.watch = None

    def _on_template(self, binding: _Binding, template_hash: str | None) -> None:
        """React to the Deployment's template as now observed (``None``: deleted)."""
        if binding.stop.is_set() or template_hash == binding.template_hash:
            return
        previous, binding.template_hash = binding.template_hash, template_hash
        if template_hash is None:  # Deployment deleted: its pods go away
            logger.info("%s/%s deleted: stopping backend", binding.namespace, binding.deployment)
            self._stop_process(binding)
            self._notify()
            return
        if previous is None:  # (re)created: start a pod unless one runs already
            if binding.process is None or binding.process.poll() is not None:
                self._start_process(binding)
            self._notify()
            return
        logger.info("%s/%s template changed: restarting", binding.namespace, binding.deployment)
        self._stop_process(binding)
        try:
            self._start_process(binding)
        except SupervisorError as exc:
            binding.errors.append(str(exc))
            logger.error("%s", exc)
        with self._changed:
            binding.restarts += 1
            self._changed.notify_all()

    def _observed(self, binding: _Binding, resource_version: str) -> None:
        with self._changed:
            with contextlib.suppress(ValueError):
                binding.observed_resource_version = max(
                    binding.observed_resource_version, int(resource_version)
                )
            self._changed.notify_all()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _start_process(self, binding: _Binding) -> None:
        if binding.log_file is None:
            binding.log_file = binding.log_path.open("ab")
        binding.log_file.write(f"--- starting: {' '.join(binding.command)}\n".encode())
        binding.log_file.flush()
        env = cluster.kube_env(self._kubeconfig, extra=binding.env)
        process = subprocess.Popen(
            binding.command,
            stdin=subprocess.DEVNULL,
            stdout=binding.log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        with self._changed:
            binding.process = process
        deadline = time.monotonic() + self._ready_timeout
        while not _port_open(binding.port):
            if process.poll() is not None:
                raise SupervisorError(
                    f"backend of {binding.namespace}/{binding.deployment} exited "
                    f"({process.returncode}) before serving on port {binding.port}; "
                    f"see {binding.log_path}"
                )
            if time.monotonic() > deadline or binding.stop.is_set():
                raise SupervisorError(
                    f"backend of {binding.namespace}/{binding.deployment} does not serve on "
                    f"port {binding.port} after {self._ready_timeout}s; see {binding.log_path}"
                )
            time.sleep(0.05)

    def _stop_process(self, binding: _Binding) -> None:
        process = binding.process
        if process is None:
            return
        if process.poll() is None:
            # As a kubelet does: SIGTERM, then SIGKILL after the grace period. A process
            # with a request in flight (llama-server) or frozen (SIGSTOP: a hung engine)
            # does not exit on SIGTERM, so the escalation is what restarts it.
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self._termination_grace)
            except subprocess.TimeoutExpired:
                logger.info(
                    "%s/%s did not exit %gs after SIGTERM: SIGKILL",
                    binding.namespace,
                    binding.deployment,
                    self._termination_grace,
                )
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        _signal_group(process.pid, signal.SIGKILL)  # leftovers of its session
        with self._changed:
            binding.process = None

    def _shutdown(self, binding: _Binding) -> None:
        binding.stop.set()
        w = binding.watch
        if w is not None:
            w.stop()
            response = getattr(w, "_resp", None)  # interrupt a blocking read at once
            if response is not None:
                with contextlib.suppress(Exception):
                    response.shutdown()
        if binding.thread is not None:
            binding.thread.join(timeout=_WATCH_SECONDS + 5)
        self._stop_process(binding)
        if binding.log_file is not None:
            binding.log_file.close()
            binding.log_file = None


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
