"""Async access to the Kubernetes API for what kopf does not do for us.

kopf watches our resources; everything else chainop reads or writes — Secrets,
Deployments, status patches from background loops, owned ConfigMaps, Events, TTL
deletions — goes through ``KubeClient``. It wraps the official (synchronous) client and
runs its calls in a worker thread of its own pool so handlers never block the
event loop. The writes made once per task — status patches, Events, TTL deletions — go
instead through ``AsyncApi``, an aiohttp session on the event loop built from the same
configuration (as kopf's own calls do): under a burst of 500 tasks the thread pool queued
the patches (p50 50-200 ms before a thread took one) and its threads fought the event
loop for the GIL. Errors come out as ``KubeError`` with the HTTP status, never with
request headers (which would carry the bearer token).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import functools
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast
from urllib.parse import quote

import aiohttp
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from chainop.core.models import GROUP, VERSION

log = logging.getLogger(__name__)

CHAINS = "providerchains"
TASKS = "delegatedtasks"
EVENT_MESSAGE_LIMIT = 1000

T = TypeVar("T")


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        """The object does not exist."""
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """A precondition (resourceVersion, uid) or an existing name got in the way."""
        return self.status == 409


class SecretError(Exception):
    """A Secret or one of its keys is missing or unreadable; ``reason`` is CamelCase."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What an Event is about."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str = ""


def _message_of(error: ApiException) -> str:
    """The API server's own message from an error body, without headers."""
    return _message_of_body(error.body, error.reason)


def _message_of_body(body: Any, reason: Any = None) -> str:
    """The ``message`` of an API error body (a Status), else its first 300 characters."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body.startswith("{"):
        try:
            parsed = json.loads(body)
        except ValueError:
            return body[:300]
        if isinstance(parsed, dict):
            return str(parsed.get("message", ""))[:300]
    return str(body or reason or "")[:300]


def load_api_client(*, kubeconfig: str | None = None, pool_size: int = 32) -> k8s.ApiClient:
    """An ApiClient from in-cluster config, else ``kubeconfig``/``$KUBECONFIG``."""
    configuration = k8s.Configuration()
    try:
        if kubeconfig:
            raise k8s_config.ConfigException("explicit kubeconfig")
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    configuration.connection_pool_maxsize = pool_size
    return k8s.ApiClient(configuration)


#: Connections of the async write path: as many as the thread pool had threads.
ASYNC_CONNECTIONS = 32
#: Give up on one API request after this long (the sync client waits forever).
ASYNC_REQUEST_TIMEOUT = 60.0


class AsyncApi:
    """JSON requests to the API server on the event loop (aiohttp), for the hot writes.

    Built from the kubernetes client's ``Configuration`` (host, CA, client certificate,
    bearer token with its refresh hook — in-cluster tokens rotate), so it talks to the
    same server with the same identity. ``from_configuration`` returns None for what it
    does not do (a proxy), and the caller keeps the threaded client then.
    """

    def __init__(self, configuration: k8s.Configuration, *, connections: int) -> None:
        self.configuration = configuration
        self.host = str(configuration.host).rstrip("/")
        self.connections = connections
        self.ssl: ssl.SSLContext | bool = False
        if self.host.startswith("https:"):
            self.ssl = self._ssl_context(configuration)
        self.server_hostname: str | None = getattr(configuration, "tls_server_name", None)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_configuration(
        cls, configuration: k8s.Configuration, *, connections: int = ASYNC_CONNECTIONS
    ) -> AsyncApi | None:
        if getattr(configuration, "proxy", None) or not configuration.host:
            return None
        return cls(configuration, connections=connections)

    @staticmethod
    def _ssl_context(cfg: k8s.Configuration) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        ca_data = getattr(cfg, "ca_cert_data", None)
        if ca_data:
            context.load_verify_locations(
                cadata=ca_data.decode() if isinstance(ca_data, bytes) else ca_data
            )
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file or None)
        if not cfg.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif getattr(cfg, "assert_hostname", None) is False:
            context.check_hostname = False
        return context

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, ssl=self.ssl),
                timeout=aiohttp.ClientTimeout(total=ASYNC_REQUEST_TIMEOUT),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        *,
        content_type: str = "application/json",
    ) -> None:
        """Send one request; raise ``KubeError`` as the threaded client would."""
        headers = {
            "Content-Type": content_type,
            "Accept": "application/json",
            "User-Agent": "chainop",
        }
        # auth_settings() runs the configuration's refresh hook (expired tokens re-read).
        auth = self.configuration.auth_settings().get("BearerToken")
        if auth and auth.get("value"):
            headers["Authorization"] = str(auth["value"])
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            async with self._open().request(
                method,
                self.host + path,
                data=data,
                headers=headers,
                server_hostname=self.server_hostname,
            ) as reply:
                payload = await reply.read()
                if reply.status >= 400:
                    raise KubeError(
                        reply.status, str(reply.reason or ""), _message_of_body(payload)
                    )
        except (aiohttp.ClientError, OSError) as error:  # TimeoutError is an OSError
            raise KubeError(0, "Unreachable", str(error)[:300] or type(error).__name__) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(part, safe="") for part in parts)


class KubeClient:
    """The few API calls chainop makes itself, each run in a worker thread."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        component: str = "chainop",
        workers: int = 32,
        async_writes: bool = True,
    ) -> None:
        self.api_client = api_client
        #: Status patches, Events and TTL deletions on the event loop (None: threads).
        self.http = (
            AsyncApi.from_configuration(api_client.configuration, connections=workers)
            if async_writes
            else None
        )
        # Our own threads, as many as the connection pool: asyncio's default executor
        # has min(32, CPUs + 4) threads (6 on 2 cores), which queued a burst's status
        # patches behind each other.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="kube"
        )
        self.core = k8s.CoreV1Api(api_client)
        self.apps = k8s.AppsV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)
        self.component = component
        self.writes = 0

    def close(self) -> None:
        """Release the worker threads and the connection pool (``aclose`` also closes
        the async session)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        """Close the async session, then what ``close`` releases."""
        if self.http is not None:
            await self.http.aclose()
        self.close()

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, functools.partial(fn, *args, **kwargs)
            )
        except ApiException as error:
            raise KubeError(
                error.status or 0, str(error.reason or ""), _message_of(error)
            ) from None
        except (OSError, Urllib3Error) as error:
            # The API server is restarting: connection refused surfaces as an OSError or,
            # once urllib3 has spent its retries, as MaxRetryError/ProtocolError (not
            # OSErrors). Either way it is "unreachable", which callers retry or ride out.
            raise KubeError(0, "Unreachable", str(error)[:300]) from None

    # ----------------------------------------------------------------- secrets

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        """The value of one key of a Secret in ``namespace``; raises ``SecretError``.

        The value is returned to the caller only; it is never logged or put in messages.
        """
        try:
            secret = await self._call(self.core.read_namespaced_secret, name, namespace)
        except KubeError as error:
            if error.not_found:
                raise SecretError(
                    "SecretNotFound", f"Secret {name!r} not found in namespace {namespace!r}"
                ) from None
            if error.status == 403:
                raise SecretError(
                    "SecretForbidden", f"not allowed to read Secret {name!r} in {namespace!r}"
                ) from None
            raise
        data: Mapping[str, bytes | str] = secret.data or {}
        if key not in data:
            raise SecretError(
                "SecretKeyNotFound", f"Secret {name!r} has no key {key!r} (namespace {namespace!r})"
            )
        try:
            value = base64.b64decode(data[key]).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            raise SecretError(
                "SecretKeyInvalid", f"key {key!r} of Secret {name!r} is not UTF-8 text"
            ) from None
        if not value:
            raise SecretError("SecretKeyEmpty", f"key {key!r} of Secret {name!r} is empty")
        return value

    # ----------------------------------------------------------------- deployments

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment as a dict, or None if it does not exist."""
        try:
            obj = await self._call(self.apps.read_namespaced_deployment, name, namespace)
        except KubeError as error:
            if error.not_found:
                return None
            raise
        result: dict[str, Any] = self.api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return result

    async def list_pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        """Pods matching a label selector (a Deployment's ``spec.selector.matchLabels``)."""
        label_selector = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
        obj = await self._call(
            self.core.list_namespaced_pod, namespace, label_selector=label_selector
        )
        result: dict[str, Any] = self.api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        items = result.get("items") or []
        return [item for item in items if isinstance(item, dict)]

    async def patch_deployment(
        self, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch a Deployment. Put ``metadata.resourceVersion`` in ``patch`` to make it
        conditional (a 409 then means someone else changed it first)."""
        self.writes += 1
        obj = await self._call(
            self.apps.patch_namespaced_deployment,
            name,
            namespace,
            patch,
        )
        result: dict[str, Any] = self.api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return result

    # ----------------------------------------------------------------- our resources

    async def patch_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        *,
        resource_version: str | None = None,
        uid: str | None = None,
    ) -> None:
        """Merge-patch ``.status`` of a ProviderChain or DelegatedTask.

        With ``resource_version`` the patch applies only to that version of the object
        (optimistic concurrency: a 409 means someone wrote in between; read and retry);
        with ``uid`` only to that object (not a namesake created after a deletion).
        """
        self.writes += 1
        body: dict[str, Any] = {"status": status}
        metadata = {
            key: value
            for key, value in (("resourceVersion", resource_version), ("uid", uid))
            if value is not None
        }
        if metadata:
            body["metadata"] = metadata
        if self.http is not None:
            await self.http.request(
                "PATCH",
                _path("apis", GROUP, VERSION, "namespaces", namespace, plural, name, "status"),
                body,
                content_type="application/merge-patch+json",
            )
            return
        await self._call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            body,
        )

    async def read_chain(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ProviderChain as a dict, or None if it does not exist (admission: a task's
        chain is read by name, because a standby replica watches nothing)."""
        try:
            obj = await self._call(
                self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, CHAINS, name
            )
        except KubeError as error:
            if error.not_found:
                return None
            raise
        return cast(dict[str, Any], obj)

    async def read_peering(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        """kopf's peering object (ClusterKopfPeering, or KopfPeering in ``namespace``)."""
        try:
            if namespace is None:
                obj = await self._call(
                    self.custom.get_cluster_custom_object,
                    "kopf.dev",
                    "v1",
                    "clusterkopfpeerings",
                    name,
                )
            else:
                obj = await self._call(
                    self.custom.get_namespaced_custom_object,
                    "kopf.dev",
                    "v1",
                    namespace,
                    "kopfpeerings",
                    name,
                )
        except KubeError as error:
            if error.not_found:
                return None
            raise
        return cast(dict[str, Any], obj)

    async def delete_task(self, namespace: str, name: str, *, uid: str) -> bool:
        """Delete a DelegatedTask, only if it is still the one with ``uid``; False if gone."""
        self.writes += 1
        options = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        try:
            if self.http is not None:
                path = _path("apis", GROUP, VERSION, "namespaces", namespace, TASKS, name)
                await self.http.request("DELETE", path, options)
                return True
            await self._call(
                self.custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                TASKS,
                name,
                body=options,
            )
        except KubeError as error:
            if error.not_found or error.conflict:
                return False
            raise
        return True

    async def apply_configmap(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a ConfigMap, replacing one of the same name (a retried task result)."""
        self.writes += 1
        try:
            await self._call(self.core.create_namespaced_config_map, namespace, body)
        except KubeError as error:
            if not error.conflict:
                raise
            await self._call(
                self.core.replace_namespaced_config_map,
                body["metadata"]["name"],
                namespace,
                body,
            )

    # ----------------------------------------------------------------- events

    async def post_event(self, ref: ObjectRef, *, type: str, reason: str, message: str) -> None:
        """Record a core/v1 Event about ``ref``. Failures are logged, never raised:
        an Event is worth less than the work it describes."""
        now = datetime.now(tz=UTC)
        body = {
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": ref.api_version,
                "kind": ref.kind,
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": ref.uid or None,
            },
            "type": type,
            "reason": reason,
            "message": message[:EVENT_MESSAGE_LIMIT],
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.component,
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        self.writes += 1
        try:
            if self.http is not None:
                await self.http.request(
                    "POST", _path("api", "v1", "namespaces", ref.namespace, "events"), body
                )
                return
            await self._call(self.core.create_namespaced_event, ref.namespace, body)
        except KubeError as error:
            log.warning("could not record event %s on %s/%s: %s", reason, ref.kind, ref.name, error)
