"""HTTP clients for the wire protocols chainop speaks: OpenAI, Anthropic and jobs.

The only I/O of provider traffic lives here; ``chainop.core`` sees it through the
``ProviderCall`` protocol alone. Layout, in the manner of httpx's transports:

* ``http``      - the one shared ``httpx.AsyncClient``, ``Wire.request`` and
                  ``Wire.stream`` (SSE): bounded time, bounded memory, typed failures,
                  the first-token deadline of streamed calls
* ``stream``    - what streamed calls share: the assembler protocol, tool-call
                  building, error events and cut streams
* ``errors``    - wire failures and HTTP statuses -> ``chainop.core.errors`` classes
* ``base``      - the ``Adapter`` protocol one wire protocol implements
* ``openai``, ``anthropic``, ``jobs`` - the adapters
* ``registry``  - ``ProviderClients``: dispatch on ``provider.type``, probes, closing

Typical use::

    clients = ProviderClients(transport="aiohttp")
    completion = await clients(provider, request, CallContext(timeout=30, api_key=key))
    latency = await clients.probe(provider, api_key=key, timeout=5)
    await clients.aclose()
"""

from chainop.providers.http import (
    DEFAULT_MAX_REPLY_BYTES,
    DEFAULT_TRANSPORT,
    TRANSPORTS,
    TransportName,
    build_client,
)
from chainop.providers.registry import ProviderClients

__all__ = [
    "DEFAULT_MAX_REPLY_BYTES",
    "DEFAULT_TRANSPORT",
    "TRANSPORTS",
    "ProviderClients",
    "TransportName",
    "build_client",
]
