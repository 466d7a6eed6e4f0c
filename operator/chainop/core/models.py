"""Spec and status of ``ProviderChain`` and ``DelegatedTask`` (chainop.dev/v1alpha1).

These pydantic models are the single source of truth for the API: the CRDs in ``crds/``
(and so ``kubectl explain``) are generated from them, which is why every field carries a
description, bounds and defaults. Field names are snake_case in Python and camelCase on
the wire (``model_validate`` takes the camelCase dicts of DESIGN.md; ``model_dump(
by_alias=True)`` gives them back).

Validation here catches what a CRD schema cannot (duplicate provider names, reserved
names, ``maxSeconds < initialSeconds``); the operator turns such errors into
``Ready=False`` instead of crashing.
"""

from __future__ import annotations

import enum
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "chainop.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Names a provider may not take, because ``preferredProvider`` gives them a meaning.
RESERVED_PROVIDER_NAMES = frozenset({"auto", "local"})
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Model(BaseModel):
    """Frozen, camelCase on the wire, unknown fields rejected (typos are errors)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="forbid",
        use_enum_values=False,
    )


class _StatusModel(_Model):
    """Status is written by chainop; reading tolerates fields from newer versions."""

    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- enums


class Strategy(enum.StrEnum):
    """How a chain spreads work over its providers."""

    FALLBACK = "Fallback"
    PRIMARY_ONLY = "PrimaryOnly"
    ROUND_ROBIN = "RoundRobin"
    FALLBACK_ONLY = "FallbackOnly"


class AdaptiveOrder(enum.StrEnum):
    """Whether a chain may reorder its providers by observed latency."""

    OFF = "Off"
    LATENCY_WITHIN_TIER = "LatencyWithinTier"


class ProviderType(enum.StrEnum):
    """The wire protocol a provider speaks."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    JOBS = "jobs"


class PrivacyTier(enum.StrEnum):
    """Where data sent to a provider ends up; Sovereign is the only "local" tier."""

    SOVEREIGN = "Sovereign"
    PRIVATE = "Private"
    STANDARD = "Standard"


#: From most to least private; ``effectivePrivacyTier`` is the last one reachable.
PRIVACY_ORDER: tuple[PrivacyTier, ...] = (
    PrivacyTier.SOVEREIGN,
    PrivacyTier.PRIVATE,
    PrivacyTier.STANDARD,
)


class ProbeMode(enum.StrEnum):
    """Active: periodic zero-cost probes. Passive: health from real traffic only."""

    ACTIVE = "Active"
    PASSIVE = "Passive"


class ProbeKind(enum.StrEnum):
    """What an active probe asks a provider (see ``ProviderProbeSpec``)."""

    AUTO = "Auto"
    LIST = "List"
    HEALTH = "Health"
    GENERATE = "Generate"


class ProviderState(enum.StrEnum):
    """A provider's health as shown in ``status.providers[].state``."""

    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    COOLING_DOWN = "CoolingDown"
    UNHEALTHY = "Unhealthy"
    EXCLUDED = "Excluded"
    DRAINED = "Drained"


class ComplexityHint(enum.StrEnum):
    """A hint about how demanding a task is (informational in v1alpha1)."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class TaskPhase(enum.StrEnum):
    """Summary of a task for ``kubectl get``; conditions carry the detail."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class MessageRole(enum.StrEnum):
    """Who said a message in the conversation."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class CutStreamPolicy(enum.StrEnum):
    """What the chain does with a stream that broke after some tokens."""

    REDO = "Redo"
    CONTINUE = "Continue"


class GuardAction(enum.StrEnum):
    """What a tripped agent guard does."""

    FAIL = "Fail"
    WARN = "Warn"


# --------------------------------------------------------------------------- chain spec


class SecretKeyRef(_Model):
    """A key of a Secret in the resource's own namespace."""

    name: str = Field(
        min_length=1, max_length=253, description="Name of the Secret, in the chain's namespace."
    )
    key: str = Field(
        min_length=1, max_length=253, description="Key inside the Secret holding the API key."
    )


class BackendRef(_Model):
    """The in-cluster workload serving a provider, which chainop may restart."""

    deployment: str = Field(
        min_length=1,
        max_length=253,
        description=(
            "Name of a Deployment in the chain's namespace. When the provider turns "
            "Unhealthy, chainop patches its pod-template annotation chainop.dev/restartedAt."
        ),
    )


class Capabilities(_Model):
    """What a provider can take; a request beyond it skips the provider without penalty.

    Leaving a field out means "unknown": the request is sent and the provider decides.
    """

    context_window: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description=(
            "Largest prompt plus maxTokens the model accepts, in tokens (prompt estimated "
            "as characters/4). Unset: not checked."
        ),
    )
    vision: bool | None = Field(
        default=None,
        description="Whether the model accepts images. false skips requests with images.",
    )
    tools: bool | None = Field(
        default=None,
        description="Whether the model accepts tool definitions. false skips requests with tools.",
    )


class ProviderProbeSpec(_Model):
    """How chainop probes this provider (when the chain probes it actively).

    List: GET the model listing; healthy only if the configured model is in it (a
    listing without it is model drift). Health: GET the server's own health endpoint at
    the endpoint's root (vLLM, TGI, SGLang, llama.cpp); 503 "Loading model" while a
    restarted server loads is neither a failure nor a recovery. Generate: a tiny
    completion (maxTokens tokens); any well-formed reply counts, so a reasoning model
    that spends every token thinking still passes; it is the only probe that sees a hung
    engine behind a live API server. Auto: Generate + List for Sovereign providers with
    a backend (own hardware: free), List for everything else (paid APIs are never
    charged for a probe).
    """

    kind: ProbeKind = Field(
        default=ProbeKind.AUTO, description="Auto, List, Health or Generate (see above)."
    )
    health_path: str = Field(
        default="/health",
        max_length=256,
        pattern=r"^/[^\s?#]*$",
        description="Path of the Health probe, at the root of the endpoint's host.",
    )
    max_tokens: int = Field(
        default=16,
        ge=2,
        le=256,
        description=(
            "maxTokens of a Generate probe: small, but never 1 (reasoning models may spend "
            "the first tokens thinking; any well-formed reply counts)."
        ),
    )

    def kinds(self, *, sovereign_with_backend: bool) -> tuple[ProbeKind, ...]:
        """The concrete probes to run, ``Auto`` resolved. Purely computational."""
        if self.kind is not ProbeKind.AUTO:
            return (self.kind,)
        if sovereign_with_backend:
            return (ProbeKind.GENERATE, ProbeKind.LIST)
        return (ProbeKind.LIST,)


class LoadSignalSpec(_Model):
    """Where an in-cluster server publishes its queue, and when it counts as saturated.

    chainop reads the server's Prometheus text endpoint with the probe (one read per
    distinct endpoint per probe interval, free: no completion is sent) and understands
    vLLM's names (``vllm:num_requests_waiting``, ``vllm:num_requests_running``,
    ``vllm:kv_cache_usage_perc``, formerly ``vllm:gpu_cache_usage_perc``) and llama.cpp's
    (``llamacpp:requests_deferred``, ``llamacpp:requests_processing``). A saturated provider
    is skipped (attempt Skipped, no penalty to its health) by tasks whose routing allows a
    later provider; tasks that may only run on it still queue there. A reading older than
    three probe intervals is ignored.
    """

    metrics_path: str = Field(
        default="/metrics",
        max_length=256,
        pattern=r"^/[^\s?#]*$",
        description="Path of the Prometheus text endpoint, at the root of the endpoint's host.",
    )
    max_waiting: int | None = Field(
        default=8,
        ge=0,
        le=100_000,
        description=(
            "Saturated when at least this many requests wait in the server's queue; "
            "null: the queue is not a limit."
        ),
    )
    slots: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description=(
            "How many requests the server runs at once (vLLM --max-num-seqs, llama.cpp "
            "--parallel). Used between two readings: calls sent beyond the free slots count "
            "as queued. Unset: learned from the last reading that showed a queue (then the "
            "server was full), and until then new calls are assumed to find a slot."
        ),
    )
    max_kv_cache_usage: float | None = Field(
        default=0.95,
        gt=0,
        le=1,
        description=(
            "Saturated when the KV cache is at least this full (0-1); null: no limit. "
            "Servers that do not publish it (llama.cpp) are judged by the queue alone."
        ),
    )


class Cost(_Model):
    """Price of a provider, used to compute ``status.result.costUSD`` from usage."""

    input_per_million_tokens: float = Field(
        default=0.0, ge=0, le=1_000_000, description="USD per million input (prompt) tokens."
    )
    output_per_million_tokens: float = Field(
        default=0.0, ge=0, le=1_000_000, description="USD per million output tokens."
    )


class ProviderSpec(_Model):
    """One provider of a chain: an endpoint, a model, a protocol and a privacy tier."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description=(
            "Unique name within the chain (a DNS label). 'auto' and 'local' are reserved "
            "for DelegatedTask.spec.routing.preferredProvider."
        ),
    )
    type: ProviderType = Field(
        default=ProviderType.OPENAI,
        description=(
            "Protocol: openai (any OpenAI-compatible /chat/completions), anthropic "
            "(/v1/messages) or jobs (asynchronous POST /jobs, GET /jobs/{id})."
        ),
    )
    endpoint: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://[^\s/@?#]+(/[^\s?#]*)?$",
        description=(
            "Base URL, e.g. http://vllm.team-a.svc:8000/v1 or https://api.openai.com/v1. "
            "No user:password@, query or fragment: credentials belong in apiKeySecretRef."
        ),
    )
    model: str = Field(
        min_length=1, max_length=256, description="Model name sent with every request."
    )
    privacy_tier: PrivacyTier = Field(
        default=PrivacyTier.STANDARD,
        description=(
            "Sovereign (in-cluster; the only tier that counts as local), Private, or "
            "Standard (public API). Defaults to Standard so a provider is never treated "
            "as local by accident."
        ),
    )
    backend: BackendRef | None = Field(
        default=None, description="The in-cluster Deployment chainop may restart, if any."
    )
    capabilities: Capabilities = Field(
        default_factory=Capabilities,
        description="Declared limits, checked before a request is sent.",
    )
    timeout_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Timeout of one request to this provider."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the API key; the key never appears in status or logs.",
    )
    cost: Cost = Field(default_factory=Cost, description="Prices used to compute task cost.")
    probe: ProviderProbeSpec = Field(
        default_factory=ProviderProbeSpec,
        description="What the active probe asks (List, Health, Generate or Auto).",
    )
    exempt_from_cooldown: bool = Field(
        default=False,
        description=(
            "Never bench this provider (for pay-per-use providers that never rate-limit)."
        ),
    )
    stream: bool | None = Field(
        default=None,
        description=(
            "Call with stream=true (SSE) and assemble the answer: time to first token is "
            "measured and firstTokenTimeoutSeconds applies. Unset: true for Sovereign "
            "providers, false for others. Ignored by jobs providers."
        ),
    )
    first_token_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description=(
            "Streamed calls only: abandon the call when no token came within this long "
            "(a transient failure of the provider, evidence of a hung engine) and advance. "
            "Unset: only timeoutSeconds applies."
        ),
    )
    load_signal: LoadSignalSpec | None = Field(
        default=None,
        description=(
            "Read this server's queue from its Prometheus endpoint and spill work over to "
            "the next provider while it is saturated (in-cluster servers; unset: never)."
        ),
    )

    def streams(self) -> bool:
        """Whether calls to this provider stream (``stream``, else by privacy tier)."""
        if self.type is ProviderType.JOBS:
            return False
        if self.stream is not None:
            return self.stream
        return self.privacy_tier is PrivacyTier.SOVEREIGN


class CooldownSpec(_Model):
    """Exponential, capped benching: initialSeconds x 2^(benchings-1), at most maxSeconds."""

    initial_seconds: float = Field(
        default=5.0, gt=0, le=86_400, description="Length of the first benching, in seconds."
    )
    max_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="Cap of any benching, in seconds."
    )

    @model_validator(mode="after")
    def _cap_not_below_initial(self) -> CooldownSpec:
        if self.max_seconds < self.initial_seconds:
            raise ValueError("maxSeconds must be >= initialSeconds")
        return self


class ProbeSpec(_Model):
    """Periodic zero-cost health probes (GET {endpoint}/models or equivalent)."""

    interval_seconds: float = Field(
        default=15.0, ge=1, le=3600, description="Time between two probes of one endpoint."
    )
    timeout_seconds: float = Field(default=5.0, gt=0, le=300, description="Timeout of one probe.")
    unhealthy_threshold: int = Field(
        default=3, ge=1, le=100, description="Failed probes in a row that make it Unhealthy."
    )
    mode: ProbeMode | None = Field(
        default=None,
        description=(
            "Active or Passive for every provider of the chain. Unset: Active for "
            "Sovereign providers, Passive for the others (probing paid APIs costs money)."
        ),
    )


class WedgedSpec(_Model):
    """Request-path evidence that an in-cluster backend is wedged.

    A provider with a ``backend`` whose real calls fail ``failures`` times (timeouts,
    refused or reset connections, 5xx) within ``windowSeconds`` while none succeeds is
    Unhealthy even when its probes pass: an API server can answer listings and /health
    while its engine is dead. It is then Excluded, restarted and recovered exactly as
    for failed probes (Event ProviderWedged).
    """

    failures: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Failed real calls (timeouts, 5xx, refused) with no success between them.",
    )
    window_seconds: float = Field(
        default=120.0,
        gt=0,
        le=86_400,
        description="The failures must all fall within this many seconds.",
    )


class HealthSpec(_Model):
    """How failures turn into benching."""

    failure_threshold: int = Field(
        default=2, ge=1, le=100, description="Consecutive transient failures that bench a provider."
    )
    transient_retries: int = Field(
        default=1, ge=0, le=10, description="Retries on the same provider before advancing."
    )
    cooldown: CooldownSpec = Field(
        default_factory=CooldownSpec, description="Benching length, exponential and capped."
    )
    probe: ProbeSpec = Field(default_factory=ProbeSpec, description="Active health probes.")
    quota_cooldown_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86_400,
        description=(
            "Benching after a provider says its quota, credit or spend limit is exhausted "
            "(not a short rate limit): the chain advances at once and skips it this long."
        ),
    )
    retry_after_cap_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86_400,
        description=(
            "Sanity cap on a provider's own retry delay (Retry-After, retry-after-ms, "
            "x-ratelimit-reset-*, Gemini retryDelay). A delay longer than "
            "cooldown.maxSeconds is honoured up to this cap."
        ),
    )
    wedged: WedgedSpec = Field(
        default_factory=WedgedSpec,
        description="When failing real calls make a provider with a backend Unhealthy.",
    )


class RecoverySpec(_Model):
    """Backoff of recovery probes of an Excluded provider."""

    initial_seconds: float = Field(
        default=30.0, gt=0, le=86_400, description="Delay before the first recovery probe."
    )
    max_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="Cap of the doubling delay."
    )

    @model_validator(mode="after")
    def _cap_not_below_initial(self) -> RecoverySpec:
        if self.max_seconds < self.initial_seconds:
            raise ValueError("maxSeconds must be >= initialSeconds")
        return self


class SelfHealingSpec(_Model):
    """What chainop does about an Unhealthy provider."""

    exclude: bool = Field(
        default=True, description="Take an Unhealthy provider out of status.activeOrder."
    )
    restart_backends: bool = Field(
        default=True,
        description="Patch the provider's backend Deployment (like kubectl rollout restart).",
    )
    max_restarts_per_hour: int = Field(
        default=3, ge=0, le=60, description="Restarts of one Deployment allowed in any hour."
    )
    recovery: RecoverySpec = Field(
        default_factory=RecoverySpec, description="Recovery-probe backoff."
    )
    restart_grace_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description=(
            "How long a restart chainop ordered counts as under way (no second restart, no "
            "penalty for failures) unless the backend answers first: from the patch, and "
            "on a node from when the restarted container starts. While the rollout has "
            "not started it (old pod shutting down, new one being created or initialising, "
            "startup probe not passed), the restart stays under way, up to the "
            "Deployment's progressDeadlineSeconds (an hour at most). Set it above the "
            "backend's start-up time (model loading)."
        ),
    )


class TaskDefaults(_Model):
    """Defaults for DelegatedTasks that use this chain."""

    allow_delegation: bool = Field(
        default=False,
        description="Whether tasks may leave Sovereign providers when they do not say.",
    )


class ChainRoutingSpec(_Model):
    """How the chain orders its providers for each task, beyond the spec's order."""

    adaptive: AdaptiveOrder = Field(
        default=AdaptiveOrder.OFF,
        description=(
            "Off: the spec's order. LatencyWithinTier: providers of the same privacy tier "
            "that are next to each other in the chain are ordered by an EWMA of their "
            "recent latency (per output token when usage is known); providers never move "
            "across tiers, and the task's decision says when the order was changed."
        ),
    )


class ToolLoopSpec(_Model):
    """The same tool called with the same arguments again and again: an agent stuck."""

    identical_calls: int = Field(
        default=3,
        ge=2,
        le=1000,
        description=(
            "Trips when this many consecutive tool calls have the same name and arguments."
        ),
    )
    action: GuardAction = Field(
        default=GuardAction.FAIL,
        description=(
            "Fail: the task fails (reason ToolLoop) before any call. Warn: a condition "
            "and an Event, then go on."
        ),
    )


class GuardsSpec(_Model):
    """Guards for agent conversations, checked before any provider is called."""

    max_tool_calls: int = Field(
        default=50,
        ge=1,
        le=100_000,
        description=(
            "Fail the task (reason ToolCountExceeded) when the conversation holds more "
            "tool calls than this."
        ),
    )
    tool_loop: ToolLoopSpec = Field(
        default_factory=ToolLoopSpec, description="Identical tool calls in a row."
    )
    require_configured_model: bool = Field(
        default=False,
        description=(
            "A reply that names another model than the provider's is a failover (transient, "
            "counted) instead of an answer with a ModelDrift Event."
        ),
    )


class ProviderDrain(_Model):
    """A provider taken out of service by hand (``kubectl chainop drain``), in the spec.

    In the spec rather than in status so that it is declarative: GitOps tools see it, and
    it survives operator restarts and replica changes. An entry whose ``until`` has passed
    is no longer in effect; chainop leaves the spec alone (it never edits what users own).
    """

    provider: str = Field(
        min_length=1, max_length=63, description="Name of the drained provider (spec.providers)."
    )
    reason: str = Field(default="", max_length=256, description="Why, in the drainer's words.")
    by: str = Field(
        default="", max_length=128, description="Who drained it (the plugin records the user)."
    )
    since: datetime | None = Field(default=None, description="When it was drained.")
    until: datetime | None = Field(
        default=None, description="When the drain ends by itself; absent: until undrained."
    )

    def active(self, now: datetime) -> bool:
        """In effect at ``now``: no end, or an end still ahead.

        An ``until`` without a zone (``2026-12-02T10:30:00``: the API server's date-time
        format admits it) is UTC, as everywhere else chainop reads one
        (``chainop.core.drains``), so comparing it never raises.
        """
        if self.until is None:
            return True
        until = self.until if self.until.tzinfo is not None else self.until.replace(tzinfo=UTC)
        return (now if now.tzinfo is not None else now.replace(tzinfo=UTC)) < until


class DrillsSpec(_Model):
    """Scheduled failover drills: prove the fallback path answers before an outage.

    Each drill sends one tiny synthetic request through the chain with its head failed
    on purpose *inside chainop* (the head is never called and never penalised), so the
    next eligible hop must answer. See docs/operations.md, "Failover drills".
    """

    interval_minutes: int = Field(
        default=60,
        ge=1,
        le=10080,
        description=(
            "Minutes between drills, counted from status.lastDrill.time (so an operator "
            "restart neither repeats nor skips a drill)."
        ),
    )
    allow_paid: bool = Field(
        default=False,
        description=(
            "Whether a drill may call a paid provider: one that is not Sovereign and "
            "declares a cost or authenticates with an API key. Off: such hops are left "
            "out of the drill, and a chain with no other hop fails its drill."
        ),
    )


# --------------------------------------------------------------------------- budgets

#: A budget window: whole numbers with a unit, summed ("24h", "7d", "1h30m", "20s").
BUDGET_WINDOW_PATTERN = r"^([0-9]+[smhd])+$"
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Shortest and longest windows: below 10 s a window is noise; above a year a typo.
MIN_BUDGET_WINDOW_SECONDS = 10
MAX_BUDGET_WINDOW_SECONDS = 366 * 86400


def window_seconds(window: str) -> int:
    """Seconds of a budget window such as ``24h`` or ``1h30m``. Purely computational.

    Raises ValueError for anything else: a window is always spelled with units, so
    ``"24"`` (hours? seconds?) is rejected rather than guessed.
    """
    if not re.fullmatch(BUDGET_WINDOW_PATTERN, window):
        raise ValueError(
            f"window {window!r}: use whole numbers with units s, m, h or d, e.g. 24h, 7d, 1h30m"
        )
    return sum(
        int(number) * _WINDOW_UNITS[unit]
        for number, unit in re.findall(r"([0-9]+)([smhd])", window)
    )


class BudgetAction(enum.StrEnum):
    """What happens to new tasks once a chain's budget for the window is spent."""

    LOCAL_ONLY = "LocalOnly"
    FAIL = "Fail"


class ProviderBudget(_Model):
    """A cap on what one provider of the chain may cost per window."""

    name: str = Field(
        min_length=1, max_length=63, description="Provider name, as in spec.providers."
    )
    max_usd: float = Field(
        gt=0,
        le=1_000_000_000,
        alias="maxUSD",
        description="USD this provider may cost per window; once spent it is left out of "
        "new tasks' routing.",
    )


class BudgetSpec(_Model):
    """A spend budget: what tasks of this chain may cost per fixed window."""

    window: str = Field(
        default="24h",
        pattern=BUDGET_WINDOW_PATTERN,
        max_length=32,
        description=(
            "Length of a budget window: whole numbers with units s, m, h, d (24h, 7d, "
            "1h30m), from 10s to 366d. Windows are fixed and aligned to the Unix epoch "
            "(24h runs from 00:00 to 00:00 UTC); each new window starts from zero."
        ),
    )
    max_usd: float = Field(
        gt=0,
        le=1_000_000_000,
        alias="maxUSD",
        description="USD the chain's tasks may cost per window (usage x price, or the "
        "provider's own cost).",
    )
    on_exceeded: BudgetAction = Field(
        default=BudgetAction.LOCAL_ONLY,
        description=(
            "Once maxUSD is spent, new tasks are LocalOnly (Sovereign providers only; "
            "decision reason 'budget 10.00 USD/24h spent') or Fail (reason "
            "BudgetExceeded). Tasks already running finish."
        ),
    )
    providers: list[ProviderBudget] = Field(
        default_factory=list,
        max_length=32,
        description="Optional caps per provider, in the same window.",
    )

    @model_validator(mode="after")
    def _window_in_range(self) -> BudgetSpec:
        seconds = window_seconds(self.window)
        if not MIN_BUDGET_WINDOW_SECONDS <= seconds <= MAX_BUDGET_WINDOW_SECONDS:
            raise ValueError(
                f"spec.budget.window: {self.window} is {seconds}s; a window is from "
                f"{MIN_BUDGET_WINDOW_SECONDS}s to 366d"
            )
        names = [cap.name for cap in self.providers]
        if len(set(names)) != len(names):
            raise ValueError("spec.budget.providers: a provider is named twice")
        return self

    @property
    def seconds(self) -> int:
        """The window's length in seconds."""
        return window_seconds(self.window)

    def cap(self, provider: str) -> float | None:
        """maxUSD of one provider, or None when it has no cap of its own."""
        for entry in self.providers:
            if entry.name == provider:
                return entry.max_usd
        return None


class ProviderChainSpec(_Model):
    """An ordered chain of LLM providers: head first, the last one is the terminus."""

    strategy: Strategy = Field(
        default=Strategy.FALLBACK,
        description=(
            "Fallback: head to tail, terminus always attempted. PrimaryOnly: the head "
            "only. RoundRobin: spread over healthy providers, falling back on errors. "
            "FallbackOnly: skip the chain's head and use the rest in order (to drain the "
            "primary or test the fallback path)."
        ),
    )
    providers: list[ProviderSpec] = Field(
        min_length=1, max_length=32, description="Providers in order; the last is the terminus."
    )
    health: HealthSpec = Field(
        default_factory=HealthSpec, description="Failure counting, benching and probes."
    )
    self_healing: SelfHealingSpec = Field(
        default_factory=SelfHealingSpec, description="Exclusion, restarts and recovery."
    )
    advance_on_permanent_error: bool = Field(
        default=False,
        description="Advance to the next provider on 400/401/403/422 instead of failing.",
    )
    advance_on_content_policy: bool = Field(
        default=False,
        description=(
            "Advance to the next provider when one refuses or filters the content. Off: "
            "the task fails with reason ContentPolicy (a refusal is never a success)."
        ),
    )
    task_defaults: TaskDefaults = Field(
        default_factory=TaskDefaults, description="Defaults for tasks using this chain."
    )
    routing: ChainRoutingSpec = Field(
        default_factory=ChainRoutingSpec,
        description="Latency-aware ordering of the providers within a privacy tier.",
    )
    on_cut_stream: CutStreamPolicy = Field(
        default=CutStreamPolicy.REDO,
        description=(
            "A stream that broke after some tokens (no terminator, an error event, an "
            "unasked-for context-full stop). Redo: the next provider answers the request "
            "whole. Continue: the next provider is asked to continue the partial text; the "
            "result records both parts and stitched=true."
        ),
    )
    guards: GuardsSpec = Field(
        default_factory=GuardsSpec,
        description="Agent guards: tool-call count, tool loops, model drift.",
    )
    drains: list[ProviderDrain] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Providers taken out of service by hand (kubectl chainop drain): skipped like "
            "an Excluded provider and never restarted, shown as state Drained."
        ),
    )
    drills: DrillsSpec | None = Field(
        default=None,
        description="Scheduled failover drills; absent: no drills.",
    )
    budget: BudgetSpec | None = Field(
        default=None,
        description="Spend budget of the chain's tasks per window (absent: no limit).",
    )

    @model_validator(mode="after")
    def _names_unique_and_unreserved(self) -> ProviderChainSpec:
        seen: set[str] = set()
        for index, provider in enumerate(self.providers):
            # The message names the field: the API server cannot, so users read it here.
            if provider.name in RESERVED_PROVIDER_NAMES:
                raise ValueError(
                    f"spec.providers[{index}].name: provider name {provider.name!r} is "
                    "reserved (auto and local mean something in preferredProvider)"
                )
            if provider.name in seen:
                raise ValueError(
                    f"spec.providers[{index}].name: duplicate provider name {provider.name!r}"
                )
            seen.add(provider.name)
        return self

    @model_validator(mode="after")
    def _budget_caps_name_providers(self) -> ProviderChainSpec:
        if self.budget is not None:
            names = {p.name for p in self.providers}
            for index, cap in enumerate(self.budget.providers):
                if cap.name not in names:
                    raise ValueError(
                        f"spec.budget.providers[{index}].name: {cap.name!r} is not a provider "
                        "of this chain"
                    )
        return self

    def provider(self, name: str) -> ProviderSpec | None:
        """The provider called ``name``, or None."""
        for provider in self.providers:
            if provider.name == name:
                return provider
        return None

    def probe_mode(self, provider: ProviderSpec) -> ProbeMode:
        """Effective probe mode of one provider (chain setting, else by privacy tier)."""
        if self.health.probe.mode is not None:
            return self.health.probe.mode
        if provider.privacy_tier is PrivacyTier.SOVEREIGN:
            return ProbeMode.ACTIVE
        return ProbeMode.PASSIVE


# --------------------------------------------------------------------------- conditions


class Condition(_StatusModel):
    """A condition in the shape of the Kubernetes API conventions."""

    type: str = Field(description="Condition type, e.g. Ready, Succeeded, Progressing.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="One-word CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: datetime | None = Field(
        default=None, description="When status last changed."
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the condition was computed from."
    )


# --------------------------------------------------------------------------- chain status


class LoadStatus(_StatusModel):
    """The last reading of a provider's load signal."""

    waiting: float = Field(default=0, ge=0, description="Requests waiting in the server's queue.")
    running: float = Field(default=0, ge=0, description="Requests being served.")
    kv_cache_usage: float | None = Field(
        default=None, ge=0, le=1, description="KV cache usage, 0-1 (unset if not published)."
    )
    observed_at: datetime | None = Field(default=None, description="When it was read.")
    saturated: str = Field(
        default="",
        description="Why the provider counts as saturated, e.g. 'saturated: 12 waiting ≥ 8'.",
    )


class ProviderStatus(_StatusModel):
    """Observed health of one provider, and the bookkeeping that survives restarts."""

    name: str = Field(description="Provider name, as in spec.providers.")
    state: ProviderState = Field(default=ProviderState.HEALTHY, description="Health state.")
    consecutive_failures: int = Field(
        default=0, ge=0, description="Transient failures in a row (tasks and probes)."
    )
    benchings: int = Field(
        default=0, ge=0, description="Benchings since the last success (the cooldown level)."
    )
    cooldown_until: datetime | None = Field(
        default=None, description="Benched until this time (state CoolingDown)."
    )
    consecutive_probe_failures: int = Field(
        default=0, ge=0, description="Failed active probes in a row."
    )
    last_probe_time: datetime | None = Field(default=None, description="Time of the last probe.")
    last_probe_latency_ms: int | None = Field(
        default=None, ge=0, description="Latency of the last successful probe, milliseconds."
    )
    last_error: str = Field(default="", description="Last error seen, without secrets.")
    excluded_since: datetime | None = Field(
        default=None, description="When self-healing took it out of activeOrder."
    )
    restarts: int = Field(default=0, ge=0, description="Backend restarts chainop ordered.")
    last_restart_time: datetime | None = Field(
        default=None, description="When chainop last restarted the backend."
    )
    recovery_attempts: int = Field(
        default=0, ge=0, description="Recovery probes made since exclusion."
    )
    next_recovery_time: datetime | None = Field(
        default=None, description="When the next recovery probe is due."
    )
    reason: str = Field(
        default="",
        description=(
            "Why the provider is not Healthy, one CamelCase word: ProbeFailed, Wedged, "
            "ModelNotServed, QuotaExhausted, RateLimited, Failing, Slow, or the kubelet's "
            "reason for a backend pod that cannot run (CrashLoopBackOff, ImagePullBackOff...)."
        ),
    )
    served_models: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="What the listing served instead, when the configured model is missing.",
    )
    load: LoadStatus | None = Field(
        default=None, description="The last load-signal reading (providers with loadSignal)."
    )
    drain: ProviderDrain | None = Field(
        default=None, description="The drain in effect (state Drained): who, why, until."
    )


class DrillStatus(_StatusModel):
    """The outcome of the chain's last failover drill."""

    time: datetime | None = Field(default=None, description="When the drill started.")
    forced: str = Field(
        default="", description="The head chainop failed on purpose (never called)."
    )
    path: list[str] = Field(
        default_factory=list,
        description="Providers the drill really called, in order (the forced head excluded).",
    )
    latency_ms: int = Field(default=0, ge=0, description="Duration of the drill.")
    passed: bool = Field(default=False, description="Whether the next eligible hop answered.")
    reason: str = Field(default="", description="Why it passed or failed, in words.")


class ProviderSpend(_StatusModel):
    """What one provider cost in the current budget window."""

    provider: str = Field(description="Provider name.")
    usd: float = Field(default=0.0, ge=0, description="USD spent on it in the window.")


#: How many charged task uids ``status.spend.chargedTasks`` keeps (see chainop.core.budget).
CHARGED_TASKS_KEPT = 256


class SpendStatus(_StatusModel):
    """Spend of the chain's tasks in the current budget window (with spec.budget only).

    The store of record: every replica reads and writes it (with resourceVersion
    preconditions), so spend survives operator restarts and replicas agree on it.
    """

    window: str = Field(default="", description="spec.budget.window this was counted in.")
    window_start: datetime | None = Field(default=None, description="Start of the window.")
    window_end: datetime | None = Field(
        default=None, description="End of the window: spend starts again from zero then."
    )
    usd: float = Field(default=0.0, ge=0, description="USD spent in the window.")
    tasks: int = Field(default=0, ge=0, description="Tasks whose cost was counted in the window.")
    by_provider: list[ProviderSpend] = Field(
        default_factory=list, description="USD spent per provider in the window."
    )
    charged_tasks: list[str] = Field(
        default_factory=list,
        max_length=CHARGED_TASKS_KEPT,
        description=(
            "uids of the tasks charged most recently (the last 256, across windows): a "
            "task whose uid is here is never charged twice."
        ),
    )


class ProviderChainStatus(_StatusModel):
    """Observed state of a ProviderChain."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation this status reflects."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Ready and others.")
    healthy: int = Field(default=0, ge=0, description="Providers currently Healthy.")
    total: int = Field(default=0, ge=0, description="Providers in the chain.")
    healthy_summary: str = Field(
        default="",
        description=(
            'Healthy/total, e.g. "2/3", and "2/3 (1 drained)" while providers are drained by '
            "hand (the HEALTHY column of kubectl get)."
        ),
    )
    active_order: list[str] = Field(
        default_factory=list,
        description="Providers in use, in order (Excluded and Drained ones left out).",
    )
    active: str = Field(default="", description="Head of activeOrder (for kubectl get).")
    effective_privacy_tier: PrivacyTier | None = Field(
        default=None, description="The most permissive tier any task could reach."
    )
    providers: list[ProviderStatus] = Field(
        default_factory=list, description="Per-provider health."
    )
    last_drill: DrillStatus | None = Field(
        default=None, description="The last failover drill (spec.drills)."
    )
    spend: SpendStatus | None = Field(
        default=None, description="Spend in the current budget window (with spec.budget)."
    )


# --------------------------------------------------------------------------- task spec


class ToolCall(_Model):
    """A call of a tool by the model, in OpenAI's shape (arguments as a JSON string)."""

    id: str = Field(min_length=1, max_length=256, description="Id the result refers to.")
    name: str = Field(min_length=1, max_length=64, description="The tool (function) called.")
    arguments: str = Field(
        default="{}",
        max_length=1_000_000,
        description="The arguments, a JSON object as a string (as OpenAI sends it).",
    )

    @model_validator(mode="after")
    def _arguments_are_a_json_object(self) -> ToolCall:
        try:
            value = json.loads(self.arguments)
        except ValueError as error:
            raise ValueError(f"toolCalls[].arguments is not JSON: {error}") from None
        if not isinstance(value, dict):
            raise ValueError("toolCalls[].arguments must be a JSON object")
        return self


class Message(_Model):
    """One message of the conversation."""

    role: MessageRole = Field(
        default=MessageRole.USER, description="system, user, assistant or tool."
    )
    content: str = Field(default="", max_length=1_000_000, description="Text of the message.")
    images: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Image URLs (or data: URLs) attached to the message; needs vision.",
    )
    tool_calls: list[ToolCall] = Field(
        default_factory=list,
        max_length=128,
        description="Assistant messages only: the tool calls the model made.",
    )
    tool_call_id: str | None = Field(
        default=None,
        max_length=256,
        description="Tool messages only: the id of the call this message is the result of.",
    )

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> Message:
        if self.tool_calls and self.role is not MessageRole.ASSISTANT:
            raise ValueError("messages[].toolCalls: only an assistant message carries tool calls")
        if self.role is MessageRole.TOOL and not self.tool_call_id:
            raise ValueError("messages[].toolCallId: a tool message needs the id of its call")
        if self.tool_call_id and self.role is not MessageRole.TOOL:
            raise ValueError("messages[].toolCallId: only a tool message answers a tool call")
        return self


class ToolSpec(_Model):
    """A tool (function) the model may call; needs a provider with tools."""

    name: str = Field(min_length=1, max_length=64, description="Function name.")
    description: str = Field(default="", max_length=4096, description="What it does.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="JSON Schema of the arguments."
    )


class RequestSpec(_Model):
    """The LLM request itself, in a protocol-neutral form."""

    system: str | None = Field(default=None, max_length=1_000_000, description="System prompt.")
    messages: list[Message] = Field(
        min_length=1, max_length=1000, description="Conversation, oldest first."
    )
    max_tokens: int = Field(default=256, ge=1, le=1_000_000, description="Output token limit.")
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature; unset: provider default."
    )
    tools: list[ToolSpec] = Field(
        default_factory=list, max_length=128, description="Tools the model may call."
    )

    def needs_vision(self) -> bool:
        """Whether any message carries an image."""
        return any(message.images for message in self.messages)

    def needs_tools(self) -> bool:
        """Whether the request offers tools or its conversation holds tool calls/results."""
        return bool(self.tools) or any(
            m.tool_calls or m.role is MessageRole.TOOL for m in self.messages
        )

    def estimated_tokens(self) -> int:
        """Prompt tokens estimated as characters/4, plus maxTokens. Purely computational."""
        chars = len(self.system or "") + sum(len(m.content) for m in self.messages)
        return chars // 4 + self.max_tokens


class RoutingSpec(_Model):
    """Where a task may run."""

    preferred_provider: str = Field(
        default="auto",
        max_length=63,
        description=(
            "auto (the chain's active order), local (Sovereign providers only), or a "
            "provider name (first, then the chain's order). Anything else fails safe to local."
        ),
    )
    allow_delegation: bool | None = Field(
        default=None,
        description=(
            "Whether the task may leave Sovereign providers. Unset: the chain's "
            "taskDefaults.allowDelegation, else false."
        ),
    )
    requires_local: bool = Field(
        default=False, description="Sovereign providers only, whatever else is said."
    )
    complexity_hint: ComplexityHint = Field(
        default=ComplexityHint.MEDIUM, description="low, medium or high."
    )


class HedgeSpec(_Model):
    """Hedged attempts: start one more call elsewhere when the first is slow.

    After the delay, an extra attempt starts on the next eligible provider of the routing
    decision (never a wider privacy tier, never a jobs provider); the first complete answer
    wins and the other call is cancelled. afterPercentile uses the first provider's
    observed latency once 20 calls are known, afterMillis until then (or always).
    """

    after_millis: int | None = Field(
        default=None, ge=1, le=3_600_000, description="Start the hedge this long after."
    )
    after_percentile: float | None = Field(
        default=None,
        ge=50,
        le=99.9,
        description="Start the hedge at this percentile of the first provider's latency.",
    )
    max_extra: int = Field(
        default=1, ge=1, le=3, description="At most this many extra attempts per task."
    )

    @model_validator(mode="after")
    def _some_delay(self) -> HedgeSpec:
        if self.after_millis is None and self.after_percentile is None:
            raise ValueError("spec.hedge: set afterMillis, afterPercentile or both")
        return self


class DelegatedTaskSpec(_Model):
    """A unit of LLM work to run through a ProviderChain in the same namespace."""

    chain: str = Field(
        min_length=1, max_length=253, description="Name of the ProviderChain to use."
    )
    routing: RoutingSpec = Field(
        default_factory=RoutingSpec, description="Routing preferences and limits."
    )
    request: RequestSpec = Field(description="The LLM request.")
    timeout_seconds: float = Field(
        default=120.0, gt=0, le=86_400, description="Deadline for the whole task, all attempts."
    )
    hedge: HedgeSpec | None = Field(
        default=None,
        description="Start an extra attempt on the next provider when the first is slow.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="Delete the task this long after it ends. Unset: keep it.",
    )


# --------------------------------------------------------------------------- task status


class Decision(_StatusModel):
    """The routing decision: where the task may run, and why."""

    provider: str = Field(default="", description="First provider to try ('' if none).")
    reason: str = Field(default="", description="Which routing rule applied, in words.")
    providers: list[str] = Field(
        default_factory=list, description="Every eligible provider, in order."
    )


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended (the error kinds of ``chainop.core.errors``, plus two)."""

    SUCCEEDED = "Succeeded"
    SKIPPED = "Skipped"
    TRANSIENT = "TransientError"
    RATE_LIMITED = "RateLimited"
    INCOMPLETE = "IncompleteReply"
    MODEL_NOT_FOUND = "ModelNotFound"
    UNSUPPORTED = "Unsupported"
    QUOTA_EXHAUSTED = "QuotaExhausted"
    CONTENT_POLICY = "ContentPolicy"
    AUTH = "AuthError"
    PERMANENT = "PermanentError"
    DEADLINE = "DeadlineExceeded"
    CANCELLED = "Cancelled"


class Attempt(_StatusModel):
    """One provider considered for a task: a call, or a skip (benched, unsupported)."""

    provider: str = Field(description="Provider called (or skipped).")
    outcome: AttemptOutcome = Field(
        description=(
            "Succeeded; TransientError, RateLimited or IncompleteReply (counted against the "
            "provider); ModelNotFound or Unsupported (the request exceeds the provider's "
            "capabilities: advanced without penalty); QuotaExhausted (advanced at once, "
            "provider benched for quotaCooldownSeconds); ContentPolicy (a refusal or "
            "content filter: fails, or advances with advanceOnContentPolicy); AuthError "
            "and PermanentError (fail at once); DeadlineExceeded (the task's own limit); "
            "Skipped (benched, excluded or saturated, no call made); Cancelled (a hedged "
            "race another attempt won)."
        )
    )
    error: str = Field(default="", description="What went wrong, without secrets.")
    latency_ms: int = Field(default=0, ge=0, description="Duration of the call.")
    started_at: datetime | None = Field(default=None, description="When the call started.")
    job_id: str | None = Field(default=None, description="Job id, for jobs providers.")
    hedged: bool = Field(default=False, description="Started as a hedge of a slower call.")
    first_token_ms: int | None = Field(
        default=None, ge=0, description="Time to the first token (streamed calls)."
    )
    served_model: str = Field(
        default="",
        max_length=256,
        description="The model the reply named, when it is not the configured one (drift).",
    )
    cost_usd: float | None = Field(
        default=None,
        ge=0,
        alias="costUSD",
        description=(
            "Cost of this call: usage x price for an answer; for a call cancelled by a "
            "hedge, its prompt (characters/4) x the input price, a lower bound."
        ),
    )


class PendingJob(_StatusModel):
    """A submitted job being waited on; persisted before waiting so restarts resume."""

    provider: str = Field(description="The jobs provider.")
    job_id: str = Field(description="Id the job service answered.")
    idempotency_key: str = Field(description="Key sent with the submission.")
    attempt: int = Field(ge=1, description="Attempt number of the submission.")
    submitted_at: datetime | None = Field(default=None, description="When it was submitted.")


class ResultPart(_StatusModel):
    """One provider's part of a stitched answer."""

    provider: str = Field(description="The provider that wrote this part.")
    chars: int = Field(default=0, ge=0, description="Characters of the text it wrote.")
    complete: bool = Field(
        default=True, description="False for a part cut off mid-stream (continued by the next)."
    )


class TaskResult(_StatusModel):
    """The answer and what it cost."""

    provider: str = Field(description="Provider that answered.")
    text: str = Field(default="", description="The answer (empty if in outputConfigMap).")
    finish_reason: str = Field(default="", description="Why generation stopped (stop, length…).")
    input_tokens: int = Field(default=0, ge=0, description="Prompt tokens billed.")
    output_tokens: int = Field(default=0, ge=0, description="Output tokens billed.")
    cost_usd: float = Field(default=0.0, ge=0, alias="costUSD", description="Cost in USD.")
    latency_ms: int = Field(default=0, ge=0, description="Time from first attempt to answer.")
    attempt: int = Field(default=1, ge=1, description="Number of the attempt that answered.")
    was_terminus: bool = Field(default=False, description="Whether the terminus answered.")
    hedged: bool = Field(
        default=False, description="Whether a hedge raced this answer (see attempts)."
    )
    first_token_ms: int | None = Field(
        default=None, ge=0, description="Time to the answer's first token (streamed calls)."
    )
    tool_calls: list[ToolCall] = Field(
        default_factory=list, description="The tool calls the model answered with."
    )
    stitched: bool = Field(
        default=False,
        description="The answer continues a cut stream of another provider (see parts).",
    )
    parts: list[ResultPart] = Field(
        default_factory=list,
        description="With stitched: who wrote which part of the text, in order.",
    )
    extra_cost_usd: float = Field(
        default=0.0,
        ge=0,
        alias="extraCostUSD",
        description="Estimated cost of the calls a hedge cancelled (not in costUSD).",
    )
    output_config_map: str | None = Field(
        default=None, description="ConfigMap holding the text when too big for status."
    )


class DelegatedTaskStatus(_StatusModel):
    """Observed state of a DelegatedTask."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation this status reflects."
    )
    phase: TaskPhase = Field(default=TaskPhase.PENDING, description="Summary for kubectl get.")
    provider: str = Field(
        default="",
        description="The provider that answered, else the first one chosen (for kubectl get).",
    )
    latency: str = Field(
        default="", description='Time to the answer, e.g. "816ms" (for kubectl get).'
    )
    cost: str = Field(default="", description='Cost of the answer, e.g. "$0.000047".')
    decision: Decision | None = Field(default=None, description="The routing decision.")
    attempts: list[Attempt] = Field(default_factory=list, description="Every call made.")
    attempt_count: int = Field(default=0, ge=0, description="len(attempts), for kubectl get.")
    pending_job: PendingJob | None = Field(
        default=None, description="A job submitted and not finished yet."
    )
    result: TaskResult | None = Field(default=None, description="The answer, once Succeeded.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Succeeded and Progressing."
    )
    start_time: datetime | None = Field(default=None, description="When work started.")
    completion_time: datetime | None = Field(default=None, description="When the task ended.")
    charged: bool | None = Field(
        default=None,
        description=(
            "True once the task's cost was added to its chain's status.spend (set after "
            "the chain's write, so a restart in between charges it again, idempotently)."
        ),
    )
