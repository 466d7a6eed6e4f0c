"""Many fake backends in one process: ``python -m bench.operator_backends PORT [PORT...]``.

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


async def serve(ports: list[int]) -> None:
    backends = [FakeBackend(f"ep{i}", port=port) for i, port in enumerate(ports)]
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
    asyncio.run(serve([int(p) for p in sys.argv[1:]]))
