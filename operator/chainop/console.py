"""What ``kubectl chainop`` and the demo share: acting on the cluster as a user does.

The operator talks to the API server through ``chainop.kube`` (async, its own identity);
a person at a shell talks through this module: the kubernetes client built from *their*
kubeconfig and context, the chains and tasks read as plain dicts, a wait that shows
progress on stderr, and tables / JSON / YAML on stdout. Every failure a user can cause or
meet is a ``ConsoleError`` carrying one of the documented exit codes, so a script can tell
"not found" from "cluster down" from "the task failed" without parsing text.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from chainop.core.models import API_VERSION, GROUP, VERSION

CHAINS = "providerchains"
TASKS = "delegatedtasks"

# Exit codes (documented in ``--help`` and docs/plugin.md; scripts rely on them).
OK = 0
#: The task ended Failed (or a drain/undrain could not be written).
FAILED = 1
#: Bad usage or a bad input file (argparse also exits 2).
USAGE = 2
#: The chain, task or provider does not exist.
NOT_FOUND = 3
#: The cluster cannot be reached, or refused us (kubeconfig, network, 401/403).
UNREACHABLE = 4
#: ``--wait`` ran out of ``--timeout``.
TIMED_OUT = 5
#: ``result`` of a task that has not finished yet.
NOT_FINISHED = 6

EXIT_CODES_HELP = """exit codes:
  0  success (submit --wait / result: the task Succeeded)
  1  the task Failed; decide: no provider is eligible; drain: change refused
  2  bad usage, a bad input file, or the API server rejected the object
     (e.g. the name is taken): nothing was created
  3  chain, task or provider not found (nothing was changed)
  4  cannot reach the cluster, or it refused the credentials
  5  --wait timed out
  6  result: the task has not finished yet"""

#: Seconds one API request may take before the command gives up on the cluster.
REQUEST_TIMEOUT = 15.0

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class ConsoleError(Exception):
    """A failure to report in one line on stderr and to exit with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def fail(code: int, message: str) -> NoReturn:
    raise ConsoleError(code, message)


class ApiError(Exception):
    """The API server answered an error other than 404/401/403 (e.g. 409, 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- input


def load_documents(path: str) -> list[dict[str, Any]]:
    """The YAML documents of a file ('-' is stdin); a bad file is a USAGE error."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as error:
        fail(USAGE, f"cannot read {path}: {error.strerror or error}")
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        fail(USAGE, f"{path} is not valid YAML: {error}")
    for doc in docs:
        if not isinstance(doc, dict):
            fail(USAGE, f"{path}: every document must be a mapping, got {type(doc).__name__}")
    return docs


META = ("apiVersion", "kind", "metadata", "status", "__source")


def is_task(doc: dict[str, Any]) -> bool:
    """A DelegatedTask, or a bare task spec (it has a request)."""
    if doc.get("kind") == "DelegatedTask":
        return True
    return "kind" not in doc and "request" in doc.get("spec", doc)


def parse_spec(model: type[M], doc: dict[str, Any], source: str) -> M:
    """The validated spec of a whole object or of a bare spec; USAGE error naming the field."""
    spec = doc["spec"] if "spec" in doc else {k: v for k, v in doc.items() if k not in META}
    try:
        return model.model_validate(spec or {})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        fail(USAGE, f"{source}: spec.{where}: {first['msg']}")


def read_documents(files: Sequence[str]) -> list[dict[str, Any]]:
    """Every document of every file, each remembering its file as ``__source``."""
    docs: list[dict[str, Any]] = []
    for path in files:
        docs.extend({**doc, "__source": path} for doc in load_documents(path))
    return docs


def one_task(docs: Sequence[dict[str, Any]], files: Sequence[str]) -> dict[str, Any]:
    """The one task document among ``docs``."""
    tasks = [doc for doc in docs if is_task(doc)]
    if len(tasks) != 1:
        fail(USAGE, f"{', '.join(files)}: expected one DelegatedTask, found {len(tasks)}")
    return tasks[0]


# --------------------------------------------------------------------------- cluster


@dataclass(frozen=True, slots=True)
class Target:
    """Where to act: kubeconfig file, context, namespace (from the flags or the context)."""

    kubeconfig: str | None
    context: str | None
    namespace: str | None


def _context_entry(target: Target) -> dict[str, Any]:
    from kubernetes import config as k8s_config
    from kubernetes.config.config_exception import ConfigException

    try:
        contexts, active = k8s_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=target.kubeconfig
        )
    except (ConfigException, OSError) as error:
        fail(UNREACHABLE, f"cannot load kubeconfig: {error}")
    if target.context is None:
        return dict(active or {})
    for entry in contexts or []:
        if entry.get("name") == target.context:
            return dict(entry)
    fail(UNREACHABLE, f"context {target.context!r} is not in the kubeconfig")


class Cluster:
    """The kubernetes client of the user's kubeconfig/context, with our resources' calls.

    Every call gives up after ``REQUEST_TIMEOUT`` and turns API errors into
    ``ConsoleError``: 404 → NOT_FOUND, unreachable or 401/403 → UNREACHABLE.
    """

    def __init__(self, target: Target) -> None:
        # The kubernetes client is imported here, not at the top: it is most of a
        # command's start-up time, and --help, completion and decide --offline need none.
        from kubernetes import client as k8s
        from kubernetes import config as k8s_config
        from kubernetes.config.config_exception import ConfigException

        entry = _context_entry(target)
        context = entry.get("context") or {}
        self.namespace: str = target.namespace or context.get("namespace") or "default"
        self.user: str = str(context.get("user") or os.environ.get("USER") or "")
        try:
            self.api_client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=target.kubeconfig, context=target.context
            )
        except (ConfigException, OSError) as error:
            fail(UNREACHABLE, f"cannot load kubeconfig: {error}")
        # One try: a closed port should say so at once, not after urllib3's retries.
        self.api_client.configuration.retries = 0
        self.custom = k8s.CustomObjectsApi(self.api_client)

    # CoreV1Api's module alone takes ~0.9 s to import (measured: `kubectl chainop get` went
    # from 1.15 s to about 0.5 s once it was built only when a command reads a ConfigMap or
    # Events); AppsV1Api likewise only for restart ledgers.
    @functools.cached_property
    def core(self) -> Any:
        """CoreV1Api (ConfigMaps, Events), built on first use."""
        from kubernetes import client as k8s

        return k8s.CoreV1Api(self.api_client)

    @functools.cached_property
    def apps(self) -> Any:
        """AppsV1Api (Deployments' restart ledgers), built on first use."""
        from kubernetes import client as k8s

        return k8s.AppsV1Api(self.api_client)

    def identity(self) -> str:
        """Who the API server authenticated us as (a SelfSubjectReview, GA since 1.28).

        A drain records it as ``by``: the kubeconfig's user entry is only a local label
        (``admin``, ``default``), the same on many laptops. When the server cannot say
        (older than 1.28, or the review refused) the entry's name is the best there is.
        """
        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        body = k8s.V1SelfSubjectReview(
            api_version="authentication.k8s.io/v1", kind="SelfSubjectReview"
        )
        try:
            review = k8s.AuthenticationV1Api(self.api_client).create_self_subject_review(
                body, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException:
            return self.user  # the server cannot say (older than 1.28) or refused to
        except (OSError, Urllib3Error) as error:
            host = self.api_client.configuration.host
            fail(UNREACHABLE, f"cannot reach the cluster at {host}: {type(error).__name__}")
        info = review.status.user_info if review.status is not None else None
        name = info.username if info is not None else None
        return str(name) if name else self.user

    def call(self, what: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run one API call; ``what`` names the object for the error message."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as error:
            status = error.status or 0
            if status == 404:
                fail(NOT_FOUND, f"{what} not found in namespace {self.namespace!r}")
            if status in (401, 403):
                fail(UNREACHABLE, f"the cluster refused access to {what} (HTTP {status})")
            raise ApiError(status, api_message(error)) from None
        except (OSError, Urllib3Error) as error:
            host = self.api_client.configuration.host
            fail(UNREACHABLE, f"cannot reach the cluster at {host}: {type(error).__name__}")

    # ----------------------------------------------------------------- our resources

    def get(self, plural: str, name: str) -> dict[str, Any]:
        kind = "ProviderChain" if plural == CHAINS else "DelegatedTask"
        obj: dict[str, Any] = self.call(
            f"{kind} {name!r}",
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            plural,
            name,
        )
        return obj

    def list_objects(self, plural: str, selector: str | None = None) -> list[dict[str, Any]]:
        extra = {"label_selector": selector} if selector else {}
        listing = self.call(
            plural,
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            plural,
            **extra,
        )
        items = sorted(listing.get("items") or [], key=lambda o: o["metadata"]["name"])
        return [item for item in items if isinstance(item, dict)]

    def create_task(self, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "apiVersion": API_VERSION, "kind": "DelegatedTask"}
        body["metadata"] = {**(body.get("metadata") or {}), "namespace": self.namespace}
        try:
            obj, _, headers = self.call(
                "DelegatedTask",
                self.custom.create_namespaced_custom_object_with_http_info,
                GROUP,
                VERSION,
                self.namespace,
                TASKS,
                body,
                _return_http_data_only=False,
            )
        except ApiError as error:
            fail(USAGE, f"the API server rejected the task: {error.message}")
        show_warnings(headers)
        return dict(obj)

    def patch_chain(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch a chain; put ``metadata.resourceVersion`` in to make it conditional
        (``ApiError`` 409 then means someone changed it first)."""
        obj, _, headers = self.call(
            f"ProviderChain {name!r}",
            self.custom.patch_namespaced_custom_object_with_http_info,
            GROUP,
            VERSION,
            self.namespace,
            CHAINS,
            name,
            patch,
            _return_http_data_only=False,
        )
        show_warnings(headers)
        return dict(obj)

    def configmap_text(self, name: str, key: str = "text") -> str:
        cm = self.call(
            f"ConfigMap {name!r}", self.core.read_namespaced_config_map, name, self.namespace
        )
        return str((cm.data or {}).get(key, ""))

    def deployment(self, name: str) -> dict[str, Any] | None:
        """A Deployment as a dict; None when absent or not readable with these rights."""
        try:
            obj = self.call(
                f"Deployment {name!r}", self.apps.read_namespaced_deployment, name, self.namespace
            )
        except (ConsoleError, ApiError):
            return None
        result: dict[str, Any] = self.api_client.sanitize_for_serialization(obj)
        return result

    def events(self, kind: str, name: str) -> list[dict[str, Any]]:
        """Events about one object, oldest first."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        listing = self.call(
            "Events", self.core.list_namespaced_event, self.namespace, field_selector=selector
        )
        items = [self.api_client.sanitize_for_serialization(e) for e in listing.items]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def no_such_provider(chain: str, provider: str, names: Sequence[str]) -> NoReturn:
    """NOT_FOUND for a provider the chain does not have, listing the ones it has."""
    fail(
        NOT_FOUND,
        f"ProviderChain {chain!r} has no provider {provider!r} (it has: {', '.join(names)})",
    )


#: One RFC 7234 warning-value as the API server writes admission warnings: 299 - "text".
_WARNING = re.compile(r'\d{3} \S+ "((?:[^"\\]|\\.)*)"')


def admission_warnings(headers: Any) -> list[str]:
    """The texts of the ``Warning`` headers of a reply (admission warnings among them)."""
    if headers is None:
        return []
    values = headers.getlist("Warning") if hasattr(headers, "getlist") else []
    if not values and hasattr(headers, "get"):
        values = [headers.get("Warning") or ""]
    found = [m.group(1) for value in values for m in _WARNING.finditer(str(value))]
    return [re.sub(r"\\(.)", r"\1", text) for text in found]


def show_warnings(headers: Any) -> None:
    """Print the reply's warnings on stderr as kubectl does: ``Warning: text``."""
    for text in admission_warnings(headers):
        progress(f"Warning: {text}")


def api_message(error: Any) -> str:
    """The API server's own message of an error (its JSON body), else the reason."""
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except (ValueError, AttributeError):
        return str(error.reason)


# --------------------------------------------------------------------------- reading


def status_of(obj: dict[str, Any]) -> dict[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """One condition of an object's status ({} when absent)."""
    for cond in status_of(obj).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def provider_status(chain: dict[str, Any], provider: str) -> dict[str, Any]:
    """The status entry of one provider of a chain ({} if none yet)."""
    for entry in status_of(chain).get("providers") or []:
        if entry.get("name") == provider:
            return dict(entry)
    return {}


def drain_of(
    chain: dict[str, Any], provider: str, *, now: datetime | None = None
) -> dict[str, Any]:
    """The drain in effect for ``provider``: the status's, else an unexpired entry of
    ``spec.drains`` (the operator may not have reported it yet) — {} when none."""
    reported = provider_status(chain, provider).get("drain")
    if reported:
        return dict(reported)
    moment = now or datetime.now(tz=UTC)
    for entry in (chain.get("spec") or {}).get("drains") or []:
        if entry.get("provider") != provider:
            continue
        if entry.get("until") and parse_time(str(entry["until"])) <= moment:
            continue
        return dict(entry)
    return {}


def drain_text(drain: dict[str, Any]) -> str:
    """``by alice until 2026-...: reason`` (empty when not drained)."""
    if not drain:
        return ""
    text = f"by {drain.get('by') or '?'} until {drain.get('until') or 'undrained'}"
    return text + (f": {drain['reason']}" if drain.get("reason") else "")


def phase(task: dict[str, Any]) -> str:
    return str(status_of(task).get("phase") or "Pending")


def finished(task: dict[str, Any]) -> bool:
    return phase(task) in ("Succeeded", "Failed")


def age(timestamp: str | None, *, now: datetime | None = None) -> str:
    """kubectl's short age: 42s, 5m, 3h, 2d."""
    if not timestamp:
        return ""
    when = parse_time(timestamp)
    seconds = int(((now or datetime.now(tz=UTC)) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit == "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def parse_time(text: str) -> datetime:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- waiting


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
) -> T:
    """Call ``check`` until it returns something; TIMED_OUT after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            fail(TIMED_OUT, f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def progress(text: str, *, stream: TextIO | None = None) -> None:
    """One line of progress on stderr (stdout stays the result, for pipes)."""
    print(text, file=stream or sys.stderr, flush=True)


# --------------------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Rows in aligned columns, as kubectl prints them."""
    cells = [[str(h).upper() for h in headers]] + [
        ["" if c is None else str(c) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"


def dump(data: Any, fmt: str) -> str:
    """``data`` as JSON or YAML text."""
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def emit(data: Any, fmt: str, render: Callable[[], str]) -> None:
    """Print ``data`` as ``-o json|yaml``, or ``render()`` for the table format."""
    sys.stdout.write(render() if fmt == "table" else dump(data, fmt))
    sys.stdout.flush()


# --------------------------------------------------------------------------- tasks


def task_answer(cluster: Cluster, task: dict[str, Any]) -> str:
    """The answer of a Succeeded task, from status or its owned ConfigMap when large."""
    result = status_of(task).get("result") or {}
    config_map = result.get("outputConfigMap")
    if config_map:
        return cluster.configmap_text(str(config_map))
    return str(result.get("text") or "")


def task_footer(task: dict[str, Any]) -> str:
    """One line: who answered, on which attempt, how fast, how many tokens, what it cost."""
    status = status_of(task)
    result = status.get("result") or {}
    tokens = f"{result.get('inputTokens', 0)}+{result.get('outputTokens', 0)} tokens"
    cost = float(result.get("costUSD") or 0.0)
    parts = [
        f"provider {result.get('provider') or status.get('provider') or '-'}",
        f"attempt {result.get('attempt', '-')} of {status.get('attemptCount', 0)}",
        f"{result.get('latencyMs', 0)}ms",
        tokens,
        f"${cost:.6f}",
    ]
    return "— " + " · ".join(parts)


def attempt_line(index: int, attempt: dict[str, Any]) -> str:
    """One attempt as progress: number, provider, outcome, latency, error."""
    line = f"attempt {index}: {attempt.get('provider')} {attempt.get('outcome')}"
    if attempt.get("outcome") != "Skipped":
        line += f" in {attempt.get('latencyMs', 0)}ms"
    if attempt.get("error"):
        line += f": {attempt['error']}"
    return line


def follow(cluster: Cluster, name: str, *, timeout: float) -> dict[str, Any]:
    """Wait until task ``name`` has finished, printing each attempt on stderr as it
    appears in status (a slow task writes them while Running; a fast one at the end)."""
    shown = 0
    last_phase = ""

    def check() -> dict[str, Any] | None:
        nonlocal shown, last_phase
        task = cluster.get(TASKS, name)
        attempts = status_of(task).get("attempts") or []
        for index in range(shown, len(attempts)):
            progress(attempt_line(index + 1, attempts[index]))
        shown = max(shown, len(attempts))
        if phase(task) != last_phase:
            last_phase = phase(task)
            progress(f"task {name}: {last_phase}")
        return task if finished(task) else None

    return wait_for(check, timeout=timeout, what=f"DelegatedTask {name!r} to finish")


def print_outcome(cluster: Cluster, task: dict[str, Any]) -> int:
    """The answer on stdout and the footer on stderr (Succeeded: OK), or why it failed
    (FAILED). The footer goes to stderr so that ``> answer.txt`` keeps only the answer."""
    if phase(task) == "Failed":
        cond = condition(task, "Succeeded")
        progress(
            f"task {task['metadata']['name']} Failed: {cond.get('reason', '')}: "
            f"{cond.get('message', '')}"
        )
        return FAILED
    answer = task_answer(cluster, task)
    sys.stdout.write(answer if answer.endswith("\n") else answer + "\n")
    sys.stdout.flush()
    progress(task_footer(task))
    return OK
