"""The operator's live state: chains, their health, probes, self-healing, status writes.

One ``Runtime`` per operator process, created on kopf's startup and kept in ``memo``.
kopf feeds it watch events (``chains.on_event``/``tasks.on_event`` in handlers.py); one
background loop (``run``) does everything level-based on a short tick:

* probes: one per distinct (type, endpoint, model, probe kinds) that some chain probes
  actively, its result shared by every chain naming it. ``Auto`` resolves to Generate +
  List for Sovereign providers with a backend (the only probe that sees a hung engine)
  and List for the rest; a listing without the model is drift (excluded, never
  restarted), a 503 "Loading model" is neither failure nor recovery;
* load signals: providers with ``loadSignal`` have their server's Prometheus page read
  once per distinct metrics URL per probe interval, whatever the probe mode (it costs
  nothing), the reading handed to every chain naming that URL (``HealthBoard.set_load``)
  and shown in status; a failed read is logged once and the old reading goes stale;
* request-path evidence: a provider the executor marked Wedged (real calls failing,
  nothing succeeding) is excluded and restarted like one whose probes failed;
* self-healing: Unhealthy → Excluded → restart the backend Deployment (once, within the
  budget, see restarts.py) → recovery probes with backoff → restore;
* status: each chain's status is rebuilt from its ``HealthBoard`` and written only when
  its significant part changed (probe times alone refresh about every ten minutes), one
  patch per chain per tick however many things changed; of a load reading only whether
  there is one and whether it saturates counts, so readings alone cost no writes;
* revalidation: Secrets and Deployments are read again now and then, so a chain that
  was NotReady for a missing Secret becomes Ready once the Secret exists.

Decisions are the core's (pure); this module only moves data between them and the API.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from chainop.core import drains as drain_rules
from chainop.core import endpoints, healing, status
from chainop.core import health as health_rules
from chainop.core import load as load_rules
from chainop.core.chain import HealthBoard
from chainop.core.errors import ModelNotServedError, ProviderError
from chainop.core.health import ProviderHealth
from chainop.core.models import (
    API_VERSION,
    Condition,
    DrillStatus,
    PrivacyTier,
    ProbeKind,
    ProbeMode,
    ProviderChainSpec,
    ProviderChainStatus,
    ProviderDrain,
    ProviderSpec,
    ProviderStatus,
)
from chainop.kube.client import CHAINS, KubeClient, KubeError, ObjectRef, SecretError
from chainop.metrics import Metrics
from chainop.operator import audit
from chainop.operator import drains as drain_ops
from chainop.operator.config import OperatorConfig
from chainop.operator.leadership import Leadership
from chainop.operator.restarts import RestartManager
from chainop.providers import loadsignal
from chainop.providers.loadsignal import LoadSignalError
from chainop.providers.registry import ProviderClients
from chainop.redact import REDACTOR

log = logging.getLogger(__name__)

#: A load signal is read early once a chain has sent this many calls since its reading...
BURST_READ_CALLS = 4
#: ... but never more often than this (seconds) per metrics URL.
BURST_READ_GAP = 0.25

#: (type, endpoint, model, probe kinds, health path, generate max tokens)
ProbeKey = tuple[str, str, str, tuple[ProbeKind, ...], str, int]


def probe_kinds(provider: ProviderSpec) -> tuple[ProbeKind, ...]:
    """The concrete probes of a provider, ``Auto`` resolved; List runs first (it is the
    cheapest, and a missing model makes generating pointless)."""
    own_hardware = provider.privacy_tier is PrivacyTier.SOVEREIGN and provider.backend is not None
    kinds = provider.probe.kinds(sovereign_with_backend=own_hardware)
    return tuple(sorted(kinds, key=lambda kind: kind is not ProbeKind.LIST))


def probe_key(provider: ProviderSpec) -> ProbeKey:
    """Providers with the same key share one probe."""
    return (
        provider.type.value,
        provider.endpoint.rstrip("/"),
        provider.model,
        probe_kinds(provider),
        provider.probe.health_path,
        provider.probe.max_tokens,
    )


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """What one round of probes (every kind of a key) found."""

    ok: bool
    latency_ms: int | None = None
    error: str = ""
    #: The server said it is loading its model (503): neither failure nor recovery.
    loading: bool = False
    #: The listing lacks the model; what it serves instead (drift).
    not_served: tuple[str, ...] | None = None
    #: A Generate probe answered: proof the engine works (clears a wedge).
    generated: bool = False


def significant(wire: dict[str, Any]) -> dict[str, Any]:
    """``status.significant`` with each provider's ``load`` cut to whether it saturates.

    A load reading changes with every read (counts, ``observedAt``); writing each one
    would cost a status patch per chain per probe interval. Its appearance and a change
    of saturation are worth a write; the numbers ride along with writes that happen
    anyway (and the periodic refresh).
    """
    result = status.significant(wire)
    result["providers"] = [
        {**p, "load": {"saturated": bool((p.get("load") or {}).get("saturated"))}}
        if p.get("load") is not None
        else p
        for p in result["providers"]
    ]
    return result


def validation_message(error: ValidationError) -> str:
    """A ValidationError as one line naming each bad field in camelCase."""
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()))
        # Our validators' messages name their field already ("spec.hedge: ..."): no
        # second field, and no pydantic "Value error, " in front (admission shows them).
        msg = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"spec.{where}: {msg}" if where and not msg.startswith("spec.") else msg)
    more = len(error.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


@dataclass
class ChainRuntime:
    """What the operator knows about one ProviderChain."""

    namespace: str
    name: str
    uid: str
    generation: int | None = None
    spec: ProviderChainSpec | None = None
    board: HealthBoard | None = None
    api_keys: dict[str, str | None] = field(default_factory=dict)
    #: (reason, message) when the chain cannot be used; None when valid.
    invalid: tuple[str, str] | None = ("Pending", "not validated yet")
    conditions: list[Condition] = field(default_factory=list)
    rotation: int = 0
    written: dict[str, Any] | None = None
    written_at: float = 0.0
    #: Spreads the periodic refresh of chains created together over time (0.75-1.25).
    refresh_spread: float = 1.0
    validated_at: float = 0.0
    #: Set when this replica takes over from another: rebuild from status on next event.
    resync: bool = False
    built_fingerprint: tuple[Any, ...] | None = None
    #: Which providers had a load reading, and which were saturated, at the last build.
    built_load: tuple[tuple[str, bool], ...] = ()
    next_expiry: float | None = None
    restart_notices: dict[str, float] = field(default_factory=dict)
    #: Providers whose wedge was already announced (Event, metric, exclusion).
    wedge_announced: set[str] = field(default_factory=set)
    #: The drains the last written (or resumed) status showed, for once-only Events.
    drains_shown: dict[str, ProviderDrain] = field(default_factory=dict)
    #: The last failover drill (operator/drills.py), resumed from and written to status.
    last_drill: DrillStatus | None = None

    @property
    def ref(self) -> ObjectRef:
        """This chain as the subject of Events."""
        return ObjectRef(API_VERSION, "ProviderChain", self.namespace, self.name, self.uid)

    @property
    def ready(self) -> bool:
        """Whether tasks may use the chain."""
        return self.invalid is None and self.spec is not None and self.board is not None

    def active_order(self) -> list[str]:
        """Provider names in use, in order (Excluded left out)."""
        if self.spec is None or self.board is None:
            return []
        return healing.active_order([p.name for p in self.spec.providers], self.board.all())

    def _fingerprint(self) -> tuple[Any, ...]:
        return (
            self.board.version if self.board else None,
            id(self.spec),
            self.invalid,
            self.generation,
            self.last_drill,
        )

    def needs_build(self, *, now: float, refresh: float) -> bool:
        """Whether anything that status shows may have changed since the last build.

        Cheap, so the loop can ask every chain every tick: health changes bump the
        board's version; the one change time makes on its own (a cooldown running out)
        is remembered as ``next_expiry``; probe timestamps refresh every ``refresh``.
        """
        return (
            self._fingerprint() != self.built_fingerprint
            or (self.next_expiry is not None and now >= self.next_expiry)
            or now - self.written_at >= refresh * self.refresh_spread
            or self._load_state(now=now) != self.built_load
        )

    def _load_state(self, *, now: float) -> tuple[tuple[str, bool], ...]:
        """The part of the load readings a write is due for: who has one, who saturates."""
        spec, board = self.spec, self.board
        if spec is None or board is None or not board.load:
            return ()
        max_age = load_rules.max_age(spec.health.probe.interval_seconds)
        return tuple(
            (
                p.name,
                load_rules.saturation(
                    board.load[p.name], p.load_signal, now=now, max_age_seconds=max_age
                )
                is not None,
            )
            for p in spec.providers
            if p.load_signal is not None and p.name in board.load
        )

    def _with_load(self, built: ProviderChainStatus, *, now: float) -> ProviderChainStatus:
        """``built`` with ``providers[].load`` from the board's readings."""
        spec, board = self.spec, self.board
        if spec is None or board is None or not board.load:
            return built
        max_age = load_rules.max_age(spec.health.probe.interval_seconds)
        signals = {p.name: p.load_signal for p in spec.providers if p.load_signal is not None}
        providers: list[ProviderStatus] = []
        for p in built.providers:
            reading = board.load.get(p.name)
            if p.name in signals and reading is not None:
                load = load_rules.to_status(
                    reading, signals[p.name], now=now, max_age_seconds=max_age
                )
                p = p.model_copy(update={"load": load})
            providers.append(p)
        return built.model_copy(update={"providers": providers})

    def build_status(self, *, now: float) -> ProviderChainStatus:
        """The status to write, from spec, health and validation."""
        self.built_fingerprint = self._fingerprint()
        self.built_load = self._load_state(now=now)
        expiries = [
            h.cooldown_until
            for h in (self.board.all() if self.board else [])
            if h.cooldown_until is not None and h.cooldown_until > now
        ]
        if self.spec is not None:  # a drain's until is a change time makes on its own too
            ends = drain_rules.next_end(self.spec, now=status.utc(now))
            expiries += [ends.timestamp()] if ends is not None else []
        self.next_expiry = min(expiries) if expiries else None
        if self.spec is None or self.board is None:
            reason, message = self.invalid or ("Pending", "")
            return status.invalid_chain_status(
                reason=reason,
                message=message,
                now=now,
                generation=self.generation,
                previous_conditions=self.conditions,
            ).model_copy(update={"last_drill": self.last_drill})
        built = status.chain_status(
            self.spec,
            self.board.all(),
            now=now,
            generation=self.generation,
            previous_conditions=self.conditions,
            invalid=self.invalid,
        )
        return self._with_load(built, now=now).model_copy(update={"last_drill": self.last_drill})


class Runtime:
    """The operator's state and background loop. See the module docstring."""

    def __init__(
        self,
        *,
        config: OperatorConfig,
        kube: KubeClient,
        clients: ProviderClients,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.kube = kube
        self.clients = clients
        self.metrics = metrics
        self.clock = clock
        self.restarts = RestartManager(kube)
        self.endpoint_policy = endpoints.EndpointPolicy.from_entries(config.endpoint_allow)
        self.leadership = Leadership(
            kube,
            peering=config.peering,
            identity=config.identity,
            priority=config.priority,
            namespace=config.namespaces[0] if config.namespaces else None,
        )
        self.chains: dict[tuple[str, str], ChainRuntime] = {}
        #: Probes in flight per key (several when a probe outlasts the interval).
        self._probing: dict[ProbeKey, int] = {}
        #: When the pods of a backend Deployment were last inspected, and the pods then
        #: read (empty when the read failed): a restart decision in the same tick uses them.
        self._pods_seen: dict[tuple[str, str], tuple[float, tuple[dict[str, Any], ...]]] = {}
        self._next_due: dict[ProbeKey, float] = {}
        #: Load-signal reads by metrics URL: when the next is due, which are in flight,
        #: and the error already logged for a URL that keeps failing.
        self._load_due: dict[str, float] = {}
        self._load_reading: set[str] = set()
        self._load_started: dict[str, float] = {}
        self._load_errors: dict[str, str] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._chain_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._event_seen: dict[tuple[str, str, str], float] = {}
        #: Called with (namespace, chain name) when a chain becomes usable.
        self.on_chain_ready: Callable[[str, str], None] = lambda namespace, name: None
        #: Called every loop pass with (now, whether this replica is active): drills and
        #: the gauges alerts read (operator/drills.py). Must not block.
        self.tick_hooks: list[Callable[[float, bool], None]] = []

    # ----------------------------------------------------------------- helpers

    def spawn(self, coro: Awaitable[Any], *, name: str = "") -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference and logging its failure."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s failed: %r", t.get_name(), t.exception())

        task.add_done_callback(done)
        return task

    def event(
        self, ref: ObjectRef, *, type: str, reason: str, message: str, dedupe: bool = True
    ) -> None:
        """Post an Event (in the background), scrubbed, and not twice within 30 s.

        ``dedupe=False`` for Events already posted once per transition by their caller
        (drains): a drain lifted and made again within 30 s is two transitions.
        """
        message = REDACTOR.scrub(message)
        key = (ref.uid or f"{ref.namespace}/{ref.name}", reason, message)
        now = self.clock()
        if dedupe and now - self._event_seen.get(key, 0.0) < 30.0:
            return
        if len(self._event_seen) > 10_000:
            self._event_seen = {k: t for k, t in self._event_seen.items() if now - t < 30.0}
        self._event_seen[key] = now
        self.spawn(
            self.kube.post_event(ref, type=type, reason=reason, message=message),
            name=f"event-{reason}",
        )

    async def close(self) -> None:
        """Cancel background work (probes, events) on shutdown."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # ----------------------------------------------------------------- chains

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock = self._chain_locks.get(key)
        if lock is None:
            lock = self._chain_locks[key] = asyncio.Lock()
        return lock

    async def chain_event(self, body: dict[str, Any], *, deleted: bool) -> None:
        """A watch event of a ProviderChain (from kopf)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if deleted:
            self._chain_locks.pop(key, None)
            gone = self.chains.pop(key, None)
            if gone is not None and gone.spec is not None:
                for p in gone.spec.providers:
                    self.metrics.forget_provider(namespace=key[0], chain=key[1], provider=p.name)
            return
        existing = self.chains.get(key)
        if (
            existing is not None
            and not existing.resync
            and existing.uid == meta.get("uid")
            and existing.generation == meta.get("generation")
        ):
            return  # a status-only change (most likely our own write)
        async with self._lock(key):
            await self.reconcile_chain(body)

    async def reconcile_chain(self, body: dict[str, Any]) -> None:
        """Parse and validate a chain; (re)build its runtime; resume health from status."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta["namespace"]), str(meta["name"])
        uid = str(meta.get("uid", ""))
        key = (namespace, name)
        runtime = self.chains.get(key)
        resumed = None
        if runtime is None or runtime.uid != uid or runtime.resync:
            # New to this process (or another replica was in charge): resume from status.
            runtime = ChainRuntime(namespace=namespace, name=name, uid=uid)
            runtime.refresh_spread = 0.75 + (zlib.crc32(uid.encode()) % 1000) / 2000
            previous = ProviderChainStatus.model_validate(body.get("status") or {})
            runtime.conditions = list(previous.conditions)
            resumed = [health_rules.from_status(p) for p in previous.providers]
            runtime.drains_shown = drain_rules.shown(previous)
            runtime.last_drill = previous.last_drill
        runtime.generation = meta.get("generation")
        now = self.clock()
        try:
            spec = ProviderChainSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            runtime.spec, runtime.board = None, None
            runtime.invalid = ("InvalidSpec", validation_message(error))
            self.chains[key] = runtime
            self.event(
                runtime.ref, type="Warning", reason="InvalidSpec", message=runtime.invalid[1]
            )
            return
        if runtime.board is None:
            runtime.board = HealthBoard(spec, initial=resumed or ())
        else:
            runtime.board.reconfigure(spec)
        runtime.spec = spec
        self.chains[key] = runtime
        await self.validate(runtime, now=now)

    async def validate(self, runtime: ChainRuntime, *, now: float) -> None:
        """Check what the schema cannot: Secrets (and their keys) and Deployments exist."""
        spec = runtime.spec
        if spec is None:
            return
        was_ready = runtime.ready
        keys: dict[str, str | None] = {}
        problem: tuple[str, str] | None = await self.check_endpoints(spec)
        for provider in spec.providers:
            ref = provider.api_key_secret_ref
            if ref is None:
                keys[provider.name] = None
                continue
            try:
                value = await self.kube.read_secret_key(runtime.namespace, ref.name, ref.key)
            except SecretError as error:
                problem = problem or (error.reason, f"provider {provider.name}: {error.message}")
                continue
            except KubeError as error:
                problem = problem or ("ApiError", f"provider {provider.name}: {error}")
                continue
            REDACTOR.add(value)
            keys[provider.name] = value
        for provider in spec.providers:
            if problem is not None or provider.backend is None:
                continue
            try:
                found = await self.kube.read_deployment(
                    runtime.namespace, provider.backend.deployment
                )
            except KubeError as error:
                problem = ("ApiError", f"provider {provider.name}: {error}")
                continue
            if found is None:
                problem = (
                    "DeploymentNotFound",
                    f"provider {provider.name}: backend Deployment "
                    f"{provider.backend.deployment!r} not found in namespace {runtime.namespace!r}",
                )
        runtime.api_keys = keys
        runtime.validated_at = now
        previous_problem = runtime.invalid
        runtime.invalid = problem
        if problem is not None and problem != previous_problem:
            self.event(runtime.ref, type="Warning", reason=problem[0], message=problem[1])
        if runtime.ready and not was_ready:
            self.event(
                runtime.ref,
                type="Normal",
                reason="Validated",
                message=f"{len(spec.providers)} providers, strategy {spec.strategy.value}",
            )
            self.on_chain_ready(runtime.namespace, runtime.name)

    async def check_endpoints(self, spec: ProviderChainSpec) -> tuple[str, str] | None:
        """The endpoint guard (``chainop.core.endpoints``) for every provider of a chain."""
        loop = asyncio.get_running_loop()
        for provider in spec.providers:
            host = endpoints.host_of(provider.endpoint)
            addresses: list[str] = []
            try:
                infos = await asyncio.wait_for(loop.getaddrinfo(host, None), timeout=2.0)
                addresses = [str(info[4][0]) for info in infos]
            except (OSError, TimeoutError, UnicodeError):
                pass  # unresolvable now: judged by name (and again at revalidation)
            why = endpoints.refusal(provider.endpoint, addresses, self.endpoint_policy)
            if why is not None:
                return ("EndpointNotAllowed", f"provider {provider.name}: {why}")
        return None

    # ----------------------------------------------------------------- the loop

    async def run(self) -> None:
        """The background loop: probes, self-healing, revalidation, status writes."""
        while True:
            try:
                was_active = self.leadership.active
                if await self.leadership.check(now=self.clock()):
                    if not was_active:
                        # Taking over: what we know may be stale; kopf re-lists every
                        # object on resume, and each chain is rebuilt from its status.
                        for runtime in self.chains.values():
                            runtime.resync = True
                    await self.tick()
                for hook in self.tick_hooks:
                    hook(self.clock(), self.leadership.active)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything one tick does
                log.exception("health loop tick failed")
            await asyncio.sleep(self.config.tick_seconds)

    async def tick(self) -> None:
        """One pass of the background loop."""
        now = self.clock()
        for runtime in list(self.chains.values()):
            interval = (
                self.config.revalidate_seconds
                if runtime.ready
                else self.config.revalidate_not_ready_seconds
            )
            if runtime.spec is not None and now - runtime.validated_at >= interval:
                key = (runtime.namespace, runtime.name)
                async with self._lock(key):
                    await self.validate(runtime, now=now)
        await self.heal_wedged(now=now)
        self.schedule_probes(now=now)
        self.schedule_load_reads(now=now)
        await self.flush(now=now)

    def probe_users(self) -> dict[ProbeKey, list[tuple[ChainRuntime, ProviderSpec]]]:
        """Every actively probed provider of every valid chain, grouped by probe key."""
        users: dict[ProbeKey, list[tuple[ChainRuntime, ProviderSpec]]] = {}
        for runtime in self.chains.values():
            if runtime.spec is None or runtime.board is None or runtime.invalid is not None:
                continue
            for provider in runtime.spec.providers:
                active = runtime.spec.probe_mode(provider) is ProbeMode.ACTIVE
                # A passive provider excluded by request-path evidence still needs
                # recovery probes to come back.
                recovering = runtime.board.get(provider.name).excluded
                if active or recovering:
                    users.setdefault(probe_key(provider), []).append((runtime, provider))
        return users

    def schedule_probes(self, *, now: float) -> None:
        """Start the probes that are due: by interval, or by an Excluded user's recovery.

        Each key keeps a fixed cadence (``next_due`` advances by the interval, not from
        when the probe happened to start), so tick granularity does not stretch it, and a
        probe that hangs until its timeout does not delay the next one: up to
        ``ceil(timeout / interval)`` probes of a key may be in flight, so a hung engine
        is Unhealthy about ``interval x unhealthyThreshold + timeout`` after it hung,
        not ``timeout x unhealthyThreshold``. Recovery probes never overlap.
        """
        all_users = self.probe_users()
        for gone in self._next_due.keys() - all_users.keys():
            del self._next_due[gone]  # no chain probes this endpoint any more
        for key, users in all_users.items():
            in_flight = self._probing.get(key, 0)
            due_at = self._next_due.get(key)
            interval: float | None = None
            recovery = False
            for runtime, provider in users:
                assert runtime.spec is not None
                assert runtime.board is not None
                health = runtime.board.get(provider.name)
                if health.excluded:
                    recovery = recovery or healing.recovery_due(health, now=now)
                else:
                    candidate = runtime.spec.health.probe.interval_seconds
                    interval = candidate if interval is None else min(interval, candidate)
            regular = interval is not None and (due_at is None or now >= due_at)
            if regular and interval is not None and in_flight:
                owner = users[0][0].spec
                timeout = owner.health.probe.timeout_seconds if owner else interval
                regular = in_flight < max(1, math.ceil(timeout / interval))
            recovery = recovery and not in_flight
            if not (regular or recovery):
                continue
            if interval is not None and regular:
                on_time = due_at is not None and now - due_at < interval
                self._next_due[key] = (due_at + interval) if on_time and due_at else now + interval
            self._probing[key] = in_flight + 1
            self.spawn(self.probe(key, users[0]), name=f"probe-{key[1]}")

    async def probe(self, key: ProbeKey, user: tuple[ChainRuntime, ProviderSpec]) -> None:
        """Probe one endpoint (every kind of its key) and hand the result to every chain
        that names it."""
        runtime, provider = user
        assert runtime.spec is not None
        try:
            outcome = await self.run_probes(
                provider,
                api_key=runtime.api_keys.get(provider.name),
                timeout=runtime.spec.health.probe.timeout_seconds,
                kinds=key[3],
            )
        finally:
            left = self._probing.get(key, 1) - 1
            if left > 0:
                self._probing[key] = left
            else:
                self._probing.pop(key, None)
        await self.deliver(key, outcome)

    async def run_probes(
        self,
        provider: ProviderSpec,
        *,
        api_key: str | None,
        timeout: float,  # noqa: ASYNC109 - each probe's own budget
        kinds: tuple[ProbeKind, ...],
    ) -> ProbeOutcome:
        """Run the probes of one key in order; the first that fails decides."""
        latency_ms: int | None = None
        generated = False
        loading = False
        for kind in kinds:
            try:
                result = await self.clients.probe(
                    provider, kind=kind, api_key=api_key, timeout=timeout
                )
            except ModelNotServedError as error:
                self.metrics.probes.labels(kind.value, "model_not_served").inc()
                return ProbeOutcome(
                    ok=False, error=REDACTOR.scrub(error.message), not_served=error.served
                )
            except ProviderError as error:
                self.metrics.probes.labels(kind.value, "failed").inc()
                message = REDACTOR.scrub(error.message)
                return ProbeOutcome(ok=False, error=f"{kind.value} probe: {message}")
            except Exception as error:  # a bug in a client must not stop probing
                self.metrics.probes.labels(kind.value, "failed").inc()
                return ProbeOutcome(
                    ok=False, error=f"{kind.value} probe failed: {type(error).__name__}"
                )
            if result.loading:
                self.metrics.probes.labels(kind.value, "loading").inc()
                loading = True
                continue
            self.metrics.probes.labels(kind.value, "ok").inc()
            latency_ms = max(latency_ms or 0, int(result.latency * 1000))
            generated = generated or result.kind is ProbeKind.GENERATE
        if loading:
            return ProbeOutcome(ok=False, loading=True, error="loading model")
        return ProbeOutcome(ok=True, latency_ms=latency_ms, generated=generated)

    async def deliver(self, key: ProbeKey, outcome: ProbeOutcome) -> None:
        """Apply one probe result to every provider that shares its key."""
        now = self.clock()
        for runtime, provider in self.probe_users().get(key, []):
            await self.apply_probe(runtime, provider, outcome, now=now)

    # ----------------------------------------------------------------- load signals

    def load_users(self) -> dict[str, list[tuple[ChainRuntime, ProviderSpec]]]:
        """Every provider with ``loadSignal`` of every valid chain, by metrics URL.

        Probe mode does not matter: reading a metrics page costs nothing.
        """
        users: dict[str, list[tuple[ChainRuntime, ProviderSpec]]] = {}
        for runtime in self.chains.values():
            if runtime.spec is None or runtime.board is None or runtime.invalid is not None:
                continue
            for provider in runtime.spec.providers:
                if provider.load_signal is not None:
                    url = loadsignal.metrics_url(provider)
                    users.setdefault(url, []).append((runtime, provider))
        return users

    def schedule_load_reads(self, *, now: float) -> None:
        """Start the load-signal reads that are due: one per metrics URL per interval.

        The interval is the shortest probe interval among the URL's users; the cadence is
        fixed like the probes' (``due`` advances by the interval), and a URL is never
        read twice at once (a slow page delays its next read rather than piling up).

        A burst reads sooner: when a user has sent ``BURST_READ_CALLS`` calls or more since
        the last reading, the URL is read at once (at most every ``BURST_READ_GAP``
        seconds, the regular cadence unchanged), so a queue that a burst builds shows in
        a quarter of a second rather than up to an interval later, when the executor's
        estimate between readings has no slot count to go on.
        """
        all_users = self.load_users()
        for gone in self._load_due.keys() - all_users.keys():
            del self._load_due[gone]
            self._load_errors.pop(gone, None)
            self._load_started.pop(gone, None)
        for url, users in all_users.items():
            due = self._load_due.get(url)
            if url in self._load_reading:
                continue
            if due is not None and now < due:
                if self._burst(url, users, now=now):
                    self._load_started[url] = now
                    self._load_reading.add(url)
                    self.spawn(self.read_load(url, users[0]), name=f"load-burst-{url}")
                continue
            interval = min(
                runtime.spec.health.probe.interval_seconds
                for runtime, _ in users
                if runtime.spec is not None
            )
            on_time = due is not None and now - due < interval
            self._load_due[url] = due + interval if on_time and due is not None else now + interval
            self._load_started[url] = now
            self._load_reading.add(url)
            self.spawn(self.read_load(url, users[0]), name=f"load-{url}")

    def _burst(
        self, url: str, users: list[tuple[ChainRuntime, ProviderSpec]], *, now: float
    ) -> bool:
        """Whether a burst of calls since the last reading warrants reading ``url`` now."""
        if now - self._load_started.get(url, 0.0) < BURST_READ_GAP:
            return False
        return any(
            runtime.board is not None
            and runtime.board.sent_since_read(provider.name) >= BURST_READ_CALLS
            for runtime, provider in users
        )

    async def read_load(self, url: str, user: tuple[ChainRuntime, ProviderSpec]) -> None:
        """Read one metrics URL (with the first user's API key, as probes send it) and
        hand the reading to every provider naming that URL."""
        runtime, provider = user
        try:
            assert runtime.spec is not None
            api_key = runtime.api_keys.get(provider.name)
            reading = await loadsignal.read_load(
                self.clients.wire,
                url,
                now=self.clock(),
                timeout=runtime.spec.health.probe.timeout_seconds,
                headers=self.clients.adapter(provider).headers(api_key),
                secrets=(api_key,),
            )
        except LoadSignalError as error:
            self._load_failed(url, REDACTOR.scrub(str(error)))
            return
        except Exception as error:  # a bug in reading must not stop the loop
            self._load_failed(url, f"load signal read failed: {type(error).__name__}")
            return
        finally:
            self._load_reading.discard(url)
        if self._load_errors.pop(url, None) is not None:
            log.info("load signal %s is read again", url)
        self.deliver_load(url, reading)

    def _load_failed(self, url: str, error: str) -> None:
        """Log a failed read once (warning), then only at debug until it is read again:
        the old reading simply goes stale and stops counting (see chainop.core.load)."""
        if url in self._load_errors:
            log.debug("load signal still not read: %s", error)
        else:
            log.warning("load signal not read (said once until it is read again): %s", error)
        self._load_errors[url] = error

    def deliver_load(self, url: str, reading: load_rules.LoadReading) -> None:
        """Give one reading to every provider (of every chain) that names ``url``."""
        for runtime, provider in self.load_users().get(url, []):
            assert runtime.board is not None
            runtime.board.set_load(provider.name, reading)
            self.metrics.set_provider_load(
                namespace=runtime.namespace,
                chain=runtime.name,
                provider=provider.name,
                waiting=reading.waiting,
                running=reading.running,
                kv_cache_usage=reading.kv_cache_usage,
            )

    async def apply_probe(
        self,
        runtime: ChainRuntime,
        provider: ProviderSpec,
        outcome: ProbeOutcome,
        *,
        now: float,
    ) -> None:
        """Health, exclusion, restart and restore for one provider after a probe."""
        spec, board = runtime.spec, runtime.board
        if spec is None or board is None:
            return
        name = provider.name
        before = board.get(name)
        if drain_ops.drained(spec, name, now=now):
            board.set(
                drain_rules.observe_probe(
                    before,
                    now=now,
                    ok=outcome.ok,
                    latency_ms=outcome.latency_ms,
                    error=outcome.error,
                    recovery=spec.self_healing.recovery,
                )
            )
            return
        healing_spec = spec.self_healing
        restarting = name in board.restarting
        ok = outcome.ok
        if outcome.loading:
            # A (re)starting server loading its model: expected, nothing to count.
            board.set(health_rules.record_loading(before, now=now))
            if before.excluded and healing.recovery_due(before, now=now):
                board.set(
                    healing.recovery_failed(
                        board.get(name), now=now, recovery=healing_spec.recovery, error="loading"
                    )
                )
            return
        if before.excluded:
            if ok:
                board.set(healing.restore(before, now=now, latency_ms=outcome.latency_ms))
                self.metrics.restores.labels(runtime.namespace, runtime.name, name).inc()
                audit.chain_event(
                    "restore",
                    namespace=runtime.namespace,
                    chain=runtime.name,
                    provider=provider,
                    outcome="Restored",
                    reason="answered its recovery probe",
                )
                self.event(
                    runtime.ref,
                    type="Normal",
                    reason="ProviderRestored",
                    message=f"{name} answered its recovery probe; back in the active order",
                )
            elif healing.recovery_due(before, now=now):
                failed = healing.recovery_failed(
                    before, now=now, recovery=healing_spec.recovery, error=outcome.error
                )
                if outcome.not_served is not None:
                    failed = health_rules.record_model_missing(
                        failed, now=now, error=outcome.error, served=outcome.not_served
                    )
                board.set(failed)
        elif outcome.not_served is not None:
            after = health_rules.record_model_missing(
                before, now=now, error=outcome.error, served=outcome.not_served
            )
            if not before.model_missing:
                self.metrics.unhealthy.labels(
                    runtime.namespace, runtime.name, name, health_rules.MODEL_NOT_SERVED
                ).inc()
                self.event(
                    runtime.ref,
                    type="Warning",
                    reason="ModelNotServed",
                    message=f"{name}: {outcome.error}; excluded until it is listed again "
                    "(a restart would not bring the model back)",
                )
            board.set(self._exclude(runtime, provider, after, now=now))
        else:
            probe = spec.health.probe
            after = health_rules.record_probe(
                before,
                now=now,
                ok=ok,
                latency_ms=outcome.latency_ms,
                error=outcome.error,
                unhealthy_threshold=probe.unhealthy_threshold,
                slow_ms=probe.timeout_seconds * 1000 * self.config.slow_probe_fraction,
                restart_in_flight=restarting,
                generated=outcome.generated,
            )
            if after.unhealthy and not before.unhealthy:
                self.metrics.unhealthy.labels(
                    runtime.namespace, runtime.name, name, health_rules.PROBE_FAILED
                ).inc()
                self.event(
                    runtime.ref,
                    type="Warning",
                    reason="ProviderUnhealthy",
                    message=(
                        f"{name} failed {after.consecutive_probe_failures} probes in a row: "
                        f"{outcome.error}"
                    ),
                )
            board.set(self._exclude(runtime, provider, after, now=now))
        if ok and restarting:
            board.restarting.discard(name)
            if provider.backend is not None:
                self.spawn(
                    self.restarts.settle(runtime.namespace, provider.backend.deployment),
                    name="restart-settle",
                )
        current = board.get(name)
        if not ok and provider.backend is not None and (current.excluded or current.unhealthy):
            await self.inspect_backend(runtime, provider, now=now)
            current = board.get(name)
        if not ok and self.restart_wanted(spec, provider, current):
            await self.maybe_restart(runtime, provider, now=now)

    def _exclude(
        self, runtime: ChainRuntime, provider: ProviderSpec, health: ProviderHealth, *, now: float
    ) -> ProviderHealth:
        """Exclude an Unhealthy provider when the chain says so (with metric and Event)."""
        spec = runtime.spec
        if spec is None or not health.unhealthy or health.excluded or not spec.self_healing.exclude:
            return health
        self.metrics.exclusions.labels(runtime.namespace, runtime.name, provider.name).inc()
        audit.chain_event(
            "exclusion",
            namespace=runtime.namespace,
            chain=runtime.name,
            provider=provider,
            outcome="Excluded",
            reason=health.reason or health_rules.PROBE_FAILED,
        )
        self.event(
            runtime.ref,
            type="Warning",
            reason="ProviderExcluded",
            message=f"{provider.name} taken out of the active order until it recovers "
            f"({health.reason or health_rules.PROBE_FAILED})",
        )
        return healing.exclude(health, now=now, recovery=spec.self_healing.recovery)

    @staticmethod
    def restart_wanted(
        spec: ProviderChainSpec, provider: ProviderSpec, health: ProviderHealth
    ) -> bool:
        """Whether an Unhealthy provider's backend should be restarted: never for a
        missing model (a restart does not bring it back)."""
        return (
            health.unhealthy
            and not health.model_missing
            and health.reason not in health_rules.POD_REASONS
            and provider.backend is not None
            and spec.self_healing.restart_backends
        )

    async def inspect_backend(
        self, runtime: ChainRuntime, provider: ProviderSpec, *, now: float, force: bool = False
    ) -> None:
        """Look at the pods of a failing provider's backend (at most every 5 s per
        Deployment, or at once with ``force``, but never twice at the same ``now``): a
        container in CrashLoopBackOff (or ImagePullBackOff, ...) is something a restart
        cannot fix, so it is said in plain words in status and an Event, and no further
        restart is ordered while it lasts."""
        board = runtime.board
        if board is None or provider.backend is None:
            return
        deployment = provider.backend.deployment
        key = (runtime.namespace, deployment)
        last = self._pods_seen.get(key)
        if last is not None and (last[0] == now or (not force and now - last[0] < 5.0)):
            return
        self._pods_seen[key] = (now, ())
        try:
            found = await self.kube.read_deployment(runtime.namespace, deployment)
            labels = ((found or {}).get("spec") or {}).get("selector", {}).get("matchLabels")
            pods = await self.kube.list_pods(runtime.namespace, labels) if labels else []
        except KubeError as error:
            log.info("pods of Deployment %s not read: %s", deployment, error)
            return
        self._pods_seen[key] = (now, tuple(pods))
        problem = healing.pod_problem(pods)
        health = board.get(provider.name)
        if problem is None:
            if health.reason in health_rules.POD_REASONS:
                board.set(replace(health, reason="", last_error=""))
            return
        board.set(replace(health, reason=problem.reason, last_error=problem.message))
        if health.reason != problem.reason:
            self.event(
                runtime.ref,
                type="Warning",
                reason="BackendCrashLooping"
                if problem.reason == "CrashLoopBackOff"
                else "BackendNotRunning",
                message=f"{provider.name}: Deployment {deployment}: {problem.message}",
            )

    async def heal_wedged(self, *, now: float) -> None:
        """Act on request-path evidence: the executor marks a provider Wedged when its
        real calls keep failing while nothing succeeds (probes may well pass). Exclude it
        and restart its backend, as for failed probes."""
        for runtime in list(self.chains.values()):
            spec, board = runtime.spec, runtime.board
            if spec is None or board is None or runtime.invalid is not None:
                continue
            for provider in spec.providers:
                health = board.get(provider.name)
                if not health.wedged or drain_ops.drained(spec, provider.name, now=now):
                    runtime.wedge_announced.discard(provider.name)
                    continue
                if provider.name in runtime.wedge_announced:
                    continue
                runtime.wedge_announced.add(provider.name)
                self.metrics.unhealthy.labels(
                    runtime.namespace, runtime.name, provider.name, health_rules.WEDGED
                ).inc()
                window = spec.health.wedged
                self.event(
                    runtime.ref,
                    type="Warning",
                    reason="ProviderWedged",
                    message=(
                        f"{provider.name}: {len(health.request_failures)} real calls failed "
                        f"within {window.window_seconds:g}s and none succeeded (last: "
                        f"{health.last_error}); its probes cannot be trusted"
                    ),
                )
                board.set(self._exclude(runtime, provider, health, now=now))
                if self.restart_wanted(spec, provider, board.get(provider.name)):
                    await self.maybe_restart(runtime, provider, now=now)

    async def maybe_restart(
        self, runtime: ChainRuntime, provider: ProviderSpec, *, now: float
    ) -> None:
        """Ask the RestartManager to restart the provider's backend, and note the outcome."""
        spec, board = runtime.spec, runtime.board
        if spec is None or board is None or provider.backend is None:
            return
        if drain_ops.drained(spec, provider.name, now=now):
            return  # out of service by hand: never restarted by self-healing
        deployment = provider.backend.deployment
        healing_spec = spec.self_healing
        health = board.get(provider.name)
        if (
            provider.name in board.restarting
            and health.last_restart_time is not None
            and now - health.last_restart_time < healing_spec.restart_grace_seconds
        ):
            return  # our own restart is under way: no need to ask the API server again
        # Look at the pods right before ordering a restart: a crash loop is the kubelet's
        # to retry, and a new ReplicaSet would crash the same way.
        await self.inspect_backend(runtime, provider, now=now, force=True)
        if not self.restart_wanted(spec, provider, board.get(provider.name)):
            return
        _, pods = self._pods_seen.get((runtime.namespace, deployment), (now, ()))
        try:
            outcome = await self.restarts.request(
                runtime.namespace,
                deployment,
                now=now,
                max_per_hour=healing_spec.max_restarts_per_hour,
                grace_seconds=healing_spec.restart_grace_seconds,
                pods=pods,
            )
        except KubeError as error:
            self.event(
                runtime.ref,
                type="Warning",
                reason="RestartFailed",
                message=f"could not restart Deployment {deployment}: {error}",
            )
            return
        name = provider.name
        reason = outcome.verdict.reason
        if outcome.performed:
            board.set(healing.note_restart(board.get(name), now=now))
            board.restarting.add(name)
            self.metrics.restarts.labels(runtime.namespace, deployment).inc()
            audit.chain_event(
                "restart",
                namespace=runtime.namespace,
                chain=runtime.name,
                provider=provider,
                outcome="Restarted",
                reason=f"Deployment {deployment} restarted ({health.reason or 'unhealthy'})",
            )
            self.event(
                runtime.ref,
                type="Normal",
                reason="BackendRestarted",
                message=f"restarted Deployment {deployment} of unhealthy provider {name}",
            )
            self.event(
                ObjectRef("apps/v1", "Deployment", runtime.namespace, deployment),
                type="Normal",
                reason="RestartedByChainop",
                message=f"provider {name} of ProviderChain {runtime.name} was unhealthy",
            )
        elif reason == "RestartInFlight":
            board.restarting.add(name)
        elif reason in ("RestartBudgetExhausted", "DeploymentNotFound", "RestartConflict"):
            last = runtime.restart_notices.get(name, 0.0)
            if now - last >= 300:
                runtime.restart_notices[name] = now
                self.event(
                    runtime.ref,
                    type="Warning",
                    reason=reason,
                    message=(
                        f"not restarting Deployment {deployment} for {name}: {reason} "
                        f"(maxRestartsPerHour={healing_spec.max_restarts_per_hour})"
                    ),
                )

    # ----------------------------------------------------------------- status

    async def flush(self, *, now: float) -> None:
        """Write each chain's status if it changed (see module docstring)."""
        writes = []
        for runtime in list(self.chains.values()):
            if not runtime.needs_build(now=now, refresh=self.config.status_refresh_seconds):
                continue
            built = runtime.build_status(now=now)
            # status.spend is the budget keeper's (chainop.operator.spend): left out, so
            # this merge patch never undoes a charge.
            wire = built.model_dump(
                by_alias=True, mode="json", exclude_none=False, exclude={"spend"}
            )
            now_significant = significant(wire)
            previous = significant(runtime.written) if runtime.written else None
            stale = (
                now - runtime.written_at
                >= self.config.status_refresh_seconds * runtime.refresh_spread
            )
            if previous == now_significant and not (stale and wire != runtime.written):
                continue
            if runtime.spec is not None and runtime.board is not None:
                for p in built.providers:
                    self.metrics.set_provider_state(
                        namespace=runtime.namespace,
                        chain=runtime.name,
                        provider=p.name,
                        state=p.state,
                    )
            writes.append(self._write_chain(runtime, wire, built, now))
        if writes:
            await asyncio.gather(*writes)

    async def _write_chain(
        self,
        runtime: ChainRuntime,
        wire: dict[str, Any],
        built: ProviderChainStatus,
        now: float,
    ) -> None:
        """Write one chain's status; only once it is written, announce its drain changes.

        Drain Events, metrics and audit lines compare what the written status shows with
        what the last written (or resumed) one showed: announced before the write, a
        refused write followed by a restart would announce the same transition twice.
        """
        try:
            await self.kube.patch_status(CHAINS, runtime.namespace, runtime.name, wire)
        except KubeError as error:
            if error.not_found:
                self.chains.pop((runtime.namespace, runtime.name), None)
            else:
                log.warning(
                    "status of chain %s/%s not written: %s", runtime.namespace, runtime.name, error
                )
                runtime.built_fingerprint = None  # try again next tick
            return
        self.metrics.status_writes.labels("ProviderChain").inc()
        if runtime.spec is not None:  # an unparsable spec shows no providers at all
            runtime.drains_shown = drain_ops.announce(
                ref=runtime.ref,
                namespace=runtime.namespace,
                chain=runtime.name,
                shown=runtime.drains_shown,
                previous_conditions=runtime.conditions,
                built=built,
                now=now,
                post=self.event,
                metrics=self.metrics,
                spec=runtime.spec,
            )
        runtime.written = wire
        runtime.written_at = now
        runtime.conditions = list(built.conditions)

    def health_snapshot(self, namespace: str, chain: str) -> list[ProviderHealth]:
        """Health of a chain's providers (for tests and debugging)."""
        runtime = self.chains.get((namespace, chain))
        return runtime.board.all() if runtime and runtime.board else []
