"""Turn what went wrong on the wire into the error classes of ``chainop.core.errors``.

The chain executor decides retries, benching and failover from the error *class* alone,
so this module is where the rules of DESIGN.md ("Executing a chain") meet real sockets:

======================================================  ==================================
What happened                                           Raised
======================================================  ==================================
connection refused/reset, DNS failure, server
disconnected before answering, protocol garbage         ``TransientError``
a timeout (connect, read, write, pool, or the whole
call running past its budget)                           ``TransientError`` "timed out
                                                        after 5s"
the status line arrived but the body was cut off        ``IncompleteReplyError``
a body larger than the reply limit                      ``IncompleteReplyError``
malformed JSON, missing fields, empty choices/content   ``IncompleteReplyError``
any HTTP status outside 2xx                            ``core.errors.classify_status``:
                                                        by what the body says (auth,
                                                        quota, content policy, capability,
                                                        model not found, rate limited,
                                                        transient, bad request), with the
                                                        provider's retry delay from
                                                        ``retry-after-ms``, ``retry-after``,
                                                        ``x-ratelimit-reset-*`` or a
                                                        Gemini ``retryDelay``. 3xx is a bad
                                                        request: we never follow redirects,
                                                        so an API key is never sent to a
                                                        host nobody configured
======================================================  ==================================

Messages are shown in status, Events and logs, so they never include request headers,
and every secret handed in (the API key) is redacted from anything a server echoes back.
Exceptions are raised ``from None``: the httpx exception being replaced holds the request,
headers and all, and has no business travelling further up in a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import aiohttp
import httpx

from chainop.core import errors as core_errors

#: Placeholder written where a secret would have appeared in a message.
REDACTED = "[REDACTED]"
#: Characters of a server's error body kept in a message.
BODY_EXCERPT_CHARS = 200
#: Bytes of an error body read to classify it (the excerpt shown is much shorter).
CLASSIFY_BODY_BYTES = 16_384


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every non-trivial secret in ``text`` by a placeholder. Purely computational.

    Secrets shorter than four characters are left alone: replacing "a" everywhere would
    garble the message and protect nothing.
    """
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def format_seconds(seconds: float) -> str:
    """Render a timeout the way messages show it: ``5s``, ``0.2s``. Purely computational."""
    return f"{seconds:.3g}s"


def timed_out(timeout: float) -> core_errors.TransientError:
    """The error for any timeout: the provider did not answer within its budget."""
    return core_errors.TransientError(f"timed out after {format_seconds(timeout)}")


def from_status(
    status_code: int,
    *,
    body: bytes,
    headers: httpx.Headers,
    model: str,
    secrets: Iterable[str | None] = (),
) -> core_errors.ProviderError:
    """Classify a non-2xx reply with ``core.errors.classify_status``.

    Only a short, redacted excerpt of the body is kept: enough for a human to see
    "model `x` does not exist" in status, not enough to flood it.
    """
    # Enough of the body to read the whole error envelope (Gemini's details with the
    # retryDelay come after a long message); only a short excerpt reaches status.
    text = body[:CLASSIFY_BODY_BYTES].decode("utf-8", errors="replace")
    text = redact(text, secrets)  # classify_status keeps a short excerpt of the message
    wanted = {
        name: headers[name] for name in core_errors.RETRY_HEADERS if headers.get(name) is not None
    }
    return core_errors.classify_status(
        status_code, body_text=text, model=model, headers=wanted, now=time.time()
    )


def incomplete(what: str) -> core_errors.IncompleteReplyError:
    """A reply that is not a whole answer: redone elsewhere, whole."""
    return core_errors.IncompleteReplyError(f"incomplete reply: {what}")


def _describe(exc: BaseException, secrets: Iterable[str | None]) -> str:
    """A short, redacted ``Kind: detail`` for an exception, without any request data."""
    detail = redact(str(exc).strip(), secrets)[:BODY_EXCERPT_CHARS]
    name = type(exc).__name__
    return f"{name}: {detail}" if detail else name


def _root_cause(exc: BaseException) -> BaseException:
    """The aiohttp exception behind an httpx one, if the aiohttp transport raised it.

    ``httpx_aiohttp`` maps aiohttp errors onto httpx classes rather loosely (a server
    disconnect becomes ``ConnectTimeout``), so the original says better what happened.
    """
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError | TimeoutError):
        return cause
    return exc


def from_transport_error(
    exc: BaseException,
    *,
    timeout: float,
    body_started: bool,
    received: int,
    secrets: Iterable[str | None] = (),
) -> core_errors.ProviderError:
    """Classify a failure below HTTP: no usable status line, or a body that broke off.

    ``body_started`` says whether the status line and headers had arrived: after that
    point a broken connection means the answer was cut off (``IncompleteReplyError``),
    before it the provider simply did not answer (``TransientError``). Timeouts are
    always plain transient errors naming the budget, wherever they struck.
    """
    root = _root_cause(exc)
    if root is exc:
        is_timeout = isinstance(exc, httpx.TimeoutException | TimeoutError)
    else:
        # httpx_aiohttp maps every aiohttp ClientConnectionError to ConnectTimeout; only
        # a genuine aiohttp timeout (a TimeoutError subclass) is a timeout.
        is_timeout = isinstance(root, TimeoutError)
    if is_timeout:
        return timed_out(timeout)
    if body_started:
        return incomplete(
            f"connection closed after {received} bytes of the body ({_describe(root, secrets)})"
        )
    if isinstance(root, httpx.ConnectError | aiohttp.ClientConnectorError):
        return core_errors.TransientError(f"cannot connect ({_describe(root, secrets)})")
    return core_errors.TransientError(f"no answer ({_describe(root, secrets)})")
