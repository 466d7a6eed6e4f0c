"""The validating admission webhook: kopf's webhook server, chainop's rules.

``chainop run --admission-port 9443 --admission-cert tls.crt --admission-key tls.key``
serves two validating webhooks over HTTPS (kopf's ``WebhookServer``; the certificate
comes from the chart or the test, never from kopf's self-signed generator, which needs
libraries chainop does not ship). kopf re-reads the files every 60 s and restarts the
server when they changed, so a certificate renewed by cert-manager is picked up without a
restart.

* ``/validate-providerchain`` — CREATE and UPDATE of ProviderChains;
* ``/validate-delegatedtask`` — CREATE and UPDATE of DelegatedTasks.

Parsing is the operator's own (a spec it would mark ``InvalidSpec`` is refused with the
same message); the rules are ``chainop.core.admission``. Here is only the I/O around
them: resolving endpoint hosts for the endpoint guard, and reading the chain a task
names (by name, through the API: a standby replica watches nothing, and every replica
serves admission — the webhook Service sends a request to any ready pod, and kopf's
peering pauses watching, not the webhook server).

An update that leaves ``.spec`` alone (labels, annotations, finalizers) is admitted
without review, so an object that predates a rule can still be relabelled or deleted.
A bug in a rule must never block an apply: anything but a refusal is logged and the
object admitted, just as the API server does (``failurePolicy: Ignore``) when the
operator is down.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from chainop.core import admission as rules
from chainop.core import endpoints
from chainop.core.models import (
    GROUP,
    VERSION,
    DelegatedTaskSpec,
    ProviderChainSpec,
    ProviderState,
)
from chainop.kube.client import CHAINS, TASKS, KubeError
from chainop.operator.admission_config import AdmissionConfig, config_from_args
from chainop.operator.config import OperatorConfig
from chainop.operator.runtime import validation_message

log = logging.getLogger(__name__)

CHAIN_WEBHOOK = "validate-providerchain"
TASK_WEBHOOK = "validate-delegatedtask"
#: How long one host may take to resolve (the API server's webhook timeout is longer).
RESOLVE_TIMEOUT = 2.0


def enable_from_args(
    args: argparse.Namespace, *, registry: kopf.OperatorRegistry | None = None
) -> str | None:
    """Register the webhooks if the flags ask for them; an error message if unusable."""
    try:
        config = config_from_args(args)
    except ValueError as error:
        return str(error)
    if config is not None:
        register(config, registry=registry)
    return None


def register(config: AdmissionConfig, *, registry: kopf.OperatorRegistry | None = None) -> None:
    """Register the webhook server and both handlers with kopf.

    Explicit rather than decorators at import time: kopf refuses to start when
    admission handlers exist without a server, so they exist only when one is asked for.
    """

    async def serve(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = kopf.WebhookServer(
            addr=config.host, port=config.port, certfile=config.certfile, pkeyfile=config.keyfile
        )
        log.info("admission webhooks on https://%s:%d", config.host, config.port)

    kopf.on.startup(id="admission-server", registry=registry)(serve)
    for plural, webhook, handler in (
        (CHAINS, CHAIN_WEBHOOK, validate_chain),
        (TASKS, TASK_WEBHOOK, validate_task),
    ):
        kopf.on.validate(
            GROUP, VERSION, plural, id=webhook, operations=["CREATE", "UPDATE"], registry=registry
        )(handler)


def _spec_unchanged(operation: str | None, old: kopf.Body | None, body: kopf.Body) -> bool:
    return operation == "UPDATE" and old is not None and old.get("spec") == body.get("spec")


def _verdict(review: rules.Review, warnings: list[str]) -> None:
    warnings.extend(review.warnings)
    if review.denials:
        raise kopf.AdmissionError("; ".join(review.denials), code=422)


async def resolve(hosts: Iterable[str]) -> dict[str, list[str]]:
    """What each host resolves to (empty when it does not, within RESOLVE_TIMEOUT)."""
    loop = asyncio.get_running_loop()

    async def one(host: str) -> tuple[str, list[str]]:
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, None), RESOLVE_TIMEOUT)
        except (OSError, TimeoutError, UnicodeError):
            return host, []
        return host, [str(info[4][0]) for info in infos]

    return dict(await asyncio.gather(*(one(host) for host in set(hosts))))


def _states(body: kopf.Body) -> dict[str, ProviderState]:
    states: dict[str, ProviderState] = {}
    for provider in (body.get("status") or {}).get("providers") or []:
        try:
            states[str(provider["name"])] = ProviderState(provider.get("state"))
        except (KeyError, TypeError, ValueError):
            continue
    return states


async def validate_chain(*, body: kopf.Body, warnings: list[str], memo: Any, **kwargs: Any) -> None:
    """Refuse a ProviderChain that can never work; warn about likely mistakes."""
    if _spec_unchanged(kwargs.get("operation"), kwargs.get("old"), body):
        return
    try:
        spec = ProviderChainSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as error:
        raise kopf.AdmissionError(validation_message(error), code=422) from None
    try:
        config: OperatorConfig = memo.get("config") or OperatorConfig()
        policy = endpoints.EndpointPolicy.from_entries(config.endpoint_allow)
        addresses = await resolve(endpoints.host_of(p.endpoint) for p in spec.providers)
        review = rules.review_chain(
            spec,
            now=datetime.now(UTC),
            addresses=addresses,
            policy=policy,
            states=_states(body),
        )
    except Exception:  # a bug in a rule must not block applies
        log.exception("admission review of a ProviderChain failed; admitting it")
        return
    _verdict(review, warnings)


async def _chain_of(
    memo: kopf.Memo, namespace: str, name: str
) -> tuple[bool, ProviderChainSpec | None, str | None]:
    """(known, spec, problem): known is False when the chain could not be read."""
    runtime = memo.get("runtime")
    if runtime is None:
        return False, None, None
    try:
        body = await runtime.kube.read_chain(namespace, name)
    except KubeError as error:
        log.warning("admission: cannot read ProviderChain %s/%s: %s", namespace, name, error)
        return False, None, None
    if body is None:
        return True, None, None
    try:
        return True, ProviderChainSpec.model_validate(body.get("spec") or {}), None
    except ValidationError as error:
        return True, None, validation_message(error)


async def validate_task(
    *, body: kopf.Body, namespace: str | None, warnings: list[str], memo: Any, **kwargs: Any
) -> None:
    """Refuse a DelegatedTask the operator would fail as InvalidSpec; warn about routing
    that cannot work on the chain it names."""
    if _spec_unchanged(kwargs.get("operation"), kwargs.get("old"), body):
        return
    try:
        spec = DelegatedTaskSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as error:
        raise kopf.AdmissionError(validation_message(error), code=422) from None
    try:
        known, chain, problem = await _chain_of(memo, namespace or "", spec.chain)
        if not known:
            return
        review = rules.review_task(spec, chain, namespace=namespace or "", chain_problem=problem)
    except Exception:  # a bug in a rule must not block applies
        log.exception("admission review of a DelegatedTask failed; admitting it")
        return
    _verdict(review, warnings)
