"""Whether a model name a server uses is the model chainop was configured with.

Purely computational; shared by the List probe (a listing without the configured model is
drift) and the executor (a reply naming another model is drift: the server was redeployed
with another model, or a gateway rerouted). Names are the same model when equal, or equal
once a ``models/`` prefix (Gemini) or a ``:latest`` tag (Ollama: ``llama3`` is served as
``llama3:latest``) is dropped from either, or when the server's name is the configured
alias's dated snapshot: Anthropic lists and answers ``claude-3-5-haiku-20241022`` for the
alias ``claude-3-5-haiku-latest``, OpenAI answers ``gpt-4o-mini-2024-07-18`` for
``gpt-4o-mini``.
"""

from __future__ import annotations

import re

_DATED_SNAPSHOT = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")


def model_matches(configured: str, named: str) -> bool:
    """Whether the server's ``named`` model is the ``configured`` one (see above)."""
    if configured == named:
        return True
    want, have = _canonical(configured), _canonical(named)
    if want == have:
        return True
    alias = want.removesuffix("-latest")
    return have.startswith(alias + "-") and bool(_DATED_SNAPSHOT.fullmatch(have[len(alias) :]))


def _canonical(name: str) -> str:
    return name.removeprefix("models/").removesuffix(":latest")
