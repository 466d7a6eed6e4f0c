"""We test these aspects: the endpoint guard (pure), table-driven.

* link-local and cloud-metadata addresses are refused by default, by literal or by what
  a name resolves to;
* an allow-list restricts endpoints to listed hosts (exact or ``*.suffix``) and networks;
* an allow-list entry naming a refused address allows it explicitly.
"""

from __future__ import annotations

import pytest

from chainop.core.endpoints import EndpointPolicy, host_of, refusal

OPEN = EndpointPolicy()


@pytest.mark.parametrize(
    ("endpoint", "addresses", "refused"),
    [
        ("http://169.254.169.254/latest", [], True),
        ("http://[fd00:ec2::254]/v1", [], True),
        ("http://[fe80::1]:8000/v1", [], True),
        ("http://metadata.google.internal/v1", ["169.254.169.254"], True),
        ("http://sneaky.example/v1", ["10.0.0.1", "169.254.1.1"], True),
        ("http://vllm.team-a.svc:8000/v1", ["10.96.0.12"], False),
        ("https://api.openai.com/v1", ["104.18.7.192"], False),
        ("http://127.0.0.1:8000/v1", [], False),
        ("http://unresolvable.invalid/v1", [], False),
    ],
)
def test_link_local_and_metadata_refused_by_default(endpoint, addresses, refused):
    assert (refusal(endpoint, addresses, OPEN) is not None) is refused


@pytest.mark.parametrize(
    ("entries", "endpoint", "addresses", "allowed"),
    [
        (["api.openai.com"], "https://api.openai.com/v1", ["104.18.7.192"], True),
        (["api.openai.com"], "https://api.anthropic.com", ["1.2.3.4"], False),
        (["*.svc.cluster.local"], "http://vllm.ns.svc.cluster.local/v1", ["10.1.2.3"], True),
        (["*.svc.cluster.local"], "http://svc.cluster.local/v1", [], False),
        (["10.0.0.0/8"], "http://vllm.ns.svc:8000/v1", ["10.1.2.3"], True),
        (["10.0.0.0/8"], "http://vllm.ns.svc:8000/v1", ["10.1.2.3", "11.0.0.1"], False),
        (["10.0.0.0/8"], "http://10.9.9.9/v1", [], True),
        (["169.254.169.254"], "http://169.254.169.254/v1", [], True),
        (
            ["metadata.google.internal"],
            "http://metadata.google.internal/",
            ["169.254.169.254"],
            False,
        ),
    ],
)
def test_allow_list(entries, endpoint, addresses, allowed):
    policy = EndpointPolicy.from_entries(entries)
    assert (refusal(endpoint, addresses, policy) is None) is allowed


def test_reasons_say_why():
    why = refusal("http://169.254.169.254/", [], OPEN)
    assert "169.254.0.0/16" in why
    why = refusal("http://x.example/", [], EndpointPolicy.from_entries(["y.example"]))
    assert "not in the operator's endpoint allow-list" in why


def test_empty_entry_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        EndpointPolicy.from_entries([" "])


def test_host_of():
    assert host_of("http://[FD00:EC2::254]:80/v1") == "fd00:ec2::254"
    assert host_of("https://API.OpenAI.com/v1") == "api.openai.com"
