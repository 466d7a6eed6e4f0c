"""We test these aspects: error classification (DESIGN.md's error rules), without I/O.

* HTTP statuses map to transient, rate-limited, model-not-found and permanent classes;
* only failures that are the provider's fault penalise it; the caller's deadline is apart;
* error messages show the provider's own words, not raw JSON; Retry-After parsing.
"""

from __future__ import annotations

import pytest

from chainop.core import errors

OPENAI_404 = (
    '{"error": {"message": "The model `gpt-9` does not exist", "type": "invalid_request_error",'
    ' "code": "model_not_found"}}'
)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, "", errors.TransientError),
        (502, "", errors.TransientError),
        (503, "", errors.TransientError),
        (504, "", errors.TransientError),
        (408, "", errors.TransientError),
        (429, "", errors.RateLimitedError),
        (404, OPENAI_404, errors.ModelNotFoundError),
        (404, "no route", errors.PermanentError),
        (400, "", errors.PermanentError),
        (401, "", errors.AuthError),
        (403, "", errors.AuthError),
        (422, "", errors.PermanentError),
    ],
)
def test_http_status_classification(status, body, expected):
    error = errors.classify_status(status, body_text=body, model="gpt-9")
    assert type(error) is expected
    assert error.status_code == status
    assert error.message.startswith(f"HTTP {status}")


def test_model_not_found_when_the_body_names_the_model():
    error = errors.classify_status(404, body_text="unknown: qwen-7b", model="qwen-7b")
    assert isinstance(error, errors.ModelNotFoundError)


def test_only_provider_faults_penalise():
    assert errors.TransientError("x").penalizes
    assert errors.IncompleteReplyError("x").penalizes
    assert errors.RateLimitedError("x").penalizes
    assert not errors.ModelNotFoundError("x").penalizes
    assert not errors.UnsupportedRequestError("x").penalizes
    assert not errors.PermanentError("x").penalizes
    assert not issubclass(errors.DeadlineExceeded, errors.ProviderError)


def test_incomplete_reply_is_transient():
    assert issubclass(errors.IncompleteReplyError, errors.TransientError)
    assert errors.IncompleteReplyError("x").kind is errors.ErrorKind.INCOMPLETE


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (OPENAI_404, "HTTP 404: The model `gpt-9` does not exist"),
        (
            '{"type": "error", "error": {"type": "x", "message": "overloaded"}}',
            "HTTP 404: overloaded",
        ),
        ('{"error": "bad things"}', "HTTP 404: bad things"),
        ('{"message": "nope"}', "HTTP 404: nope"),
        ("plain text", "HTTP 404: plain text"),
        ("", "HTTP 404"),
    ],
)
def test_message_shows_the_providers_own_words(body, shown):
    assert errors.classify_status(404, body_text=body).message == shown


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("30", 30.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-1", None),
        ("soon", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("nan", None),
    ],
)
def test_retry_after_parsing(header, seconds):
    assert errors.parse_retry_after(header) == seconds


def test_exhausted_error_joins_every_reason():
    error = errors.ChainExhaustedError([("a", "HTTP 500"), ("b", "skipped: cooling down")])
    assert str(error) == "all providers failed: a: HTTP 500; b: skipped: cooling down"
