"""A last line of defence that keeps API keys out of logs, status and Events.

chainop never puts a key into a message on purpose; but a provider may echo the key it
was sent inside an error body, and a library may log a request. Every key chainop reads
from a Secret is registered here, and every text bound for a log record, a status field
or an Event goes through ``scrub`` (the log filter is installed on the root logger).
"""

from __future__ import annotations

import logging
import threading

MASK = "[REDACTED]"
#: Shorter values are not treated as secrets: masking "a" everywhere would garble logs.
MIN_SECRET_LENGTH = 6


class Redactor:
    """The set of known secret values, and a scrubber for text."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        """Remember a secret value (safe to call repeatedly)."""
        if len(secret) < MIN_SECRET_LENGTH or secret in self._secrets:
            return
        with self._lock:
            self._secrets = self._secrets | {secret}

    def scrub(self, text: str) -> str:
        """``text`` with every known secret replaced by ``[REDACTED]``."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


REDACTOR = Redactor()


class RedactingFilter(logging.Filter):
    """Scrubs known secrets out of every log record that passes through a handler."""

    def __init__(self, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self.redactor.scrub(message)
        if scrubbed != message:
            record.msg = scrubbed
            record.args = None
        return True


def install_log_filter(redactor: Redactor = REDACTOR) -> None:
    """Attach the filter to every handler of the root logger (idempotent)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(redactor))
