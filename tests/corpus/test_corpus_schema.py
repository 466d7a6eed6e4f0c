"""The corpus of real error replies follows its schema and covers what issue 11 asks for."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.corpus import CLASSES, PROVIDERS, CorpusError, Reply, load_replies

#: Phrases that put a delay into a reply: headers, Gemini's RetryInfo, and the wordings in messages.
_DELAY_HEADERS = (
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)
_DELAY_TEXT = re.compile(r'"retryDelay"|try again in \d|retry after \d+ second', re.IGNORECASE)


@pytest.fixture(scope="module")
def replies() -> list[Reply]:
    return load_replies()


def test_loader_accepts_the_corpus(replies: list[Reply]) -> None:
    assert len(replies) >= 60
    assert len({r.id for r in replies}) == len(replies)


def test_every_provider_is_present(replies: list[Reply]) -> None:
    assert {r.provider for r in replies} == PROVIDERS


def test_every_class_but_loading_has_two_entries(replies: list[Reply]) -> None:
    counts = Counter(r.expect_class for r in replies)
    thin = {cls: counts[cls] for cls in CLASSES - {"loading"} if counts[cls] < 2}
    assert not thin, f"classes with fewer than 2 entries: {thin}"


def test_rate_limited_replies_with_a_delay_name_it(replies: list[Reply]) -> None:
    for reply in replies:
        if reply.expect_class != "rate_limited":
            continue
        carries_delay = any(h in reply.headers for h in _DELAY_HEADERS) or bool(
            _DELAY_TEXT.search(reply.body)
        )
        if carries_delay:
            assert reply.retry_after_seconds is not None, reply.id


def test_json_bodies_parse(replies: list[Reply]) -> None:
    for reply in replies:
        if reply.content_type.startswith("application/json"):
            json.loads(reply.body)
        elif reply.endpoint == "chat-stream":
            for line in reply.body.splitlines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    json.loads(line.removeprefix("data: "))


def test_sources_are_precise(replies: list[Reply]) -> None:
    for reply in replies:
        assert reply.source.startswith("https://"), reply.id
        if "github.com" in reply.source and "/blob/" in reply.source:
            # code is cited at a commit, never at a moving branch
            assert re.search(r"/blob/[0-9a-f]{40}/", reply.source), reply.id


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "x.yaml").write_text(text, encoding="utf-8")
    return tmp_path


_GOOD = """
- id: good-one
  provider: vllm
  source: "https://example.org"
  note: n
  status: 400
  body: "{}"
  expect: {class: capability}
"""


def test_loader_accepts_a_minimal_entry(tmp_path: Path) -> None:
    (reply,) = load_replies(_write(tmp_path, _GOOD))
    assert reply.id == "good-one"
    assert reply.content_type == "application/json"
    assert reply.endpoint == "chat"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("provider: vllm", "provider: vllmx"), "unknown provider"),
        (("class: capability", "class: nope"), "unknown class"),
        (("status: 400", "status: '400'"), "status must be an int"),
        (('source: "https://example.org"', 'source: ""'), "source must be a non-empty string"),
        (("id: good-one", "id: Good_One"), "kebab-case"),
        (("  note: n\n", ""), "missing keys"),
        (
            ("expect: {class: capability}", "expect: {class: capability, retry_after_seconds: 3}"),
            "only for rate_limited",
        ),
        (("expect: {class: capability}", "expect: {class: loading}"), "only for health"),
    ],
)
def test_loader_names_the_bad_entry(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(CorpusError, match=message) as info:
        load_replies(_write(tmp_path, _GOOD.replace(*change)))
    assert "x.yaml" in str(info.value)


def test_loader_rejects_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="duplicate id"):
        load_replies(_write(tmp_path, _GOOD + _GOOD))
