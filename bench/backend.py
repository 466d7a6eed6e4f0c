"""Fake backends in their own processes, so the load generator never shares a core with them.

On a machine with two or more CPUs the backends are pinned to the last CPU and the load
process (see :func:`pin_load_process`) to the first, so a measurement compares clients,
not the scheduler's mood.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from types import TracebackType

from chainop.testing.fake_backend import FakeBackendControl

STARTUP_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port nobody listens on right now (also what "connection refused" targets)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpus() -> list[int]:
    """CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0))


def backend_cpus() -> set[int]:
    """Where fake backends run: the last CPU when there are two or more."""
    mine = cpus()
    return {mine[-1]} if len(mine) >= 2 else set(mine)


def load_cpus() -> set[int]:
    """Where load processes run: every CPU but the backends' one."""
    mine = cpus()
    return set(mine[:-1]) if len(mine) >= 2 else set(mine)


def pin(pid: int, where: set[int]) -> None:
    """Best-effort CPU pinning (ignored where the OS does not allow it)."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, where)


class Backend:
    """``python -m chainop.testing.fake_backend`` in a child process."""

    def __init__(self, name: str, *, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    @property
    def api(self) -> str:
        """The OpenAI-style base URL (``.../v1``)."""
        return self.url + "/v1"

    @property
    def control(self) -> FakeBackendControl:
        """Steering and counters of this backend."""
        return FakeBackendControl(self.url)

    def start(self) -> Backend:
        """Start the server and wait until it accepts connections."""
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chainop.testing.fake_backend",
                "--port",
                str(self.port),
                "--name",
                self.name,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        pin(self.process.pid, backend_cpus())
        deadline = time.monotonic() + STARTUP_TIMEOUT
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if "listening on" in line:
                return self
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"fake backend {self.name} did not start on port {self.port}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def __enter__(self) -> Backend:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
