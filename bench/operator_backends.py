"""Many fake backends in one process.

``python -m bench.operator_backends [--host ADDR] PORT [PORT...]``.

The scale benchmark (issue 7 item 5) needs 50 distinct endpoints. Fifty fake-backend
processes would take ~1.5 GB and a share of the 2 CPUs the operator is measured on, so
this runs one :class:`chainop.testing.fake_backend.FakeBackend` per port on a single event
loop: 50 real listening sockets (distinct ``host:port`` endpoints, each with its own
``GET /_stats`` counters, which is what proves "one probe per endpoint per interval"),
at the cost of one process. Prints ``ready N`` once every port accepts connections.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from chainop.testing.fake_backend import FakeBackend


async def serve(ports: list[int], host: str = "127.0.0.1") -> None:
    backends = [FakeBackend(f"ep{i}", host=host, port=port) for i, port in enumerate(ports)]
    for backend in backends:
        await backend.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"ready {len(backends)}", flush=True)
    await stop.wait()
    for backend in backends:
        await backend.stop()


if __name__ == "__main__":
    # ``--host ADDR`` first binds another address (the node bench: the pod bridge's).
    argv = sys.argv[1:]
    bind = "127.0.0.1"
    if argv[:1] == ["--host"]:
        bind, argv = argv[1], argv[2:]
    asyncio.run(serve([int(p) for p in argv], bind))
