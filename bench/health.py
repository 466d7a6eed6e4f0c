"""Issue 11: per failure kind, failure → Excluded → restart patch (``python -m bench health``).

On the local control plane, with ``chainop.testing.supervisor`` as the kubelet (it restarts
a local fake vLLM whenever the Deployment's pod template changes, which is what chainop's
restart patch does). The chain is vllm (Sovereign, ``backend.deployment: vllm``, probe
kind Auto = Generate + List) → cloud. Failure kinds:

* **killed** — the backend process SIGKILLed (connection refused);
* **503** — it answers HTTP 503 to everything (``mode: error, status: 503``);
* **hung engine** — vLLM's engine-dead case (``mode: hung_engine``): the listing and
  ``/health`` answer, generation never does; only the Generate probe sees it;
* **drifted model** — the listing no longer names the configured model
  (``models: [other]``): excluded with reason ModelNotServed and never restarted; the
  bench watches the Deployment for a while to show no patch comes, then serves the model
  again.

Times are from the failure, seen by our watches (chain status, Deployment template).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.operator import (
    CHAINS,
    GROUP,
    VERSION,
    DeploymentWatch,
    Namespace,
    Watcher,
    api,
    ensure_crds,
    loadavg,
    operator_process,
    supervised_vllm_chain,
)

MODEL = "qwen2.5-7b-instruct"
KINDS = ("killed", "503", "hung engine", "drifted model")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _interval(start: float, end: float | None) -> float | None:
    return None if end is None else round(end - start, 2)


def run(args: Any, logs: Path) -> dict[str, Any]:
    from kubernetes import client

    from chainop.testing.fake_backend import FakeBackendControl, FakeBackendThread
    from chainop.testing.supervisor import BackendSupervisor

    ensure_crds()
    probe = {
        "intervalSeconds": args.health_interval,
        "timeoutSeconds": args.health_timeout,
        "unhealthyThreshold": args.health_threshold,
    }
    recovery = {"initialSeconds": 2, "maxSeconds": 8}
    settings = {"probe": probe, "recovery": recovery, "tick": args.heal_tick, "kind": "Auto"}
    runs: list[dict[str, Any]] = []
    api_client = api()
    apps = client.AppsV1Api(api_client)
    with (
        Namespace("bench-health") as ns,
        FakeBackendThread(name="cloud") as cloud,
        BackendSupervisor(log_dir=logs / "supervisor") as sup,
    ):
        port = supervised_vllm_chain(
            api_client, sup, ns, chain="health", model=MODEL, cloud_url=cloud.url, probe=probe,
            recovery=recovery,
        )  # fmt: skip
        chains = Watcher(api_client, GROUP, VERSION, CHAINS, ns, lambda o: False)
        deps = DeploymentWatch(apps, ns, "vllm")
        op, _ = operator_process(ns, tick=args.heal_tick, log_path=logs / f"chainop-{ns}.log")

        def vllm(last: dict[str, Any]) -> dict[str, Any]:
            st = (last.get("health") or {}).get("status") or {}
            p = next((p for p in st.get("providers", []) if p.get("name") == "vllm"), {})
            return {**p, "activeOrder": st.get("activeOrder", [])}

        def healthy(last: dict[str, Any]) -> bool:
            v = vllm(last)
            return v.get("state") == "Healthy" and v["activeOrder"] == ["vllm", "cloud"]

        def excluded(last: dict[str, Any]) -> bool:
            v = vllm(last)
            return v.get("state") == "Excluded" and v["activeOrder"] == ["cloud"]

        with op:
            op.wait_for_log(r"chainop started", timeout=60)
            for rep in range(args.health_reps):
                for index, kind in enumerate(KINDS):
                    if chains.wait_for(healthy, 90) is None:
                        raise RuntimeError(f"vllm not Healthy before {kind}: {vllm(chains.last)}")
                    # A different phase against the probe schedule each time: typical cases.
                    time.sleep(1.0 + ((rep * 0.37 + index * 0.29) % 1.0) * args.health_interval)
                    control = FakeBackendControl(f"http://127.0.0.1:{port}")
                    restarts = sup.restarts(ns, "vllm")
                    patches = len(deps.changes)
                    t0 = time.monotonic()
                    if kind == "killed":
                        pid = sup.pid(ns, "vllm")
                        assert pid is not None
                        os.kill(pid, 9)
                    elif kind == "503":
                        control.set(mode="error", status=503)
                    elif kind == "hung engine":
                        control.set(mode="hung_engine")
                    else:
                        control.set(models=["llama-3.1-8b-instruct"])
                    t_unhealthy = chains.wait_for(
                        lambda last: vllm(last).get("state") in ("Unhealthy", "Excluded"), 60
                    )
                    t_excluded = chains.wait_for(excluded, 60)
                    reason = vllm(chains.last).get("reason")
                    run: dict[str, Any] = {
                        "kind": kind,
                        "to_unhealthy_s": _interval(t0, t_unhealthy),
                        "to_excluded_s": _interval(t0, t_excluded),
                        "reason": reason,
                    }
                    if kind == "drifted model":
                        # Several detection budgets: a restart would have come by now.
                        time.sleep(args.drift_watch)
                        run["watched_s"] = round(time.monotonic() - t0, 1)
                        run["patches"] = len(deps.changes) - patches
                        run["restarts"] = sup.restarts(ns, "vllm") - restarts
                        run["to_patch_s"] = None
                        control.set(models=[MODEL])
                        t_back = chains.wait_for(healthy, 60)
                        run["back_to_healthy_s"] = _interval(t0, t_back)
                    else:
                        sup.wait_for_restarts(ns, "vllm", restarts + 1, timeout=60)
                        t_up = time.monotonic()
                        t_restored = chains.wait_for(healthy, 60)
                        run["to_patch_s"] = _interval(t0, deps.first_after(t0))
                        run["to_backend_up_s"] = _interval(t0, t_up)
                        run["to_restored_s"] = _interval(t0, t_restored)
                        run["patches"] = len(deps.changes) - patches
                    run["loadavg"] = loadavg()
                    log(f"  health {kind} #{rep + 1}: {json.dumps(run)}")
                    runs.append(run)
        chains.stop()
        deps.stopped = True
        total = sup.restarts(ns, "vllm")
    api_client.close()
    return {"settings": settings, "runs": runs, "restarts": total, "loadavg_at_end": loadavg()}


def add_arguments(parser: Any) -> None:
    g = parser.add_argument_group("health (python -m bench health)")
    g.add_argument("--health-interval", type=int, default=2, help="probe intervalSeconds")
    g.add_argument("--health-timeout", type=int, default=1, help="probe timeoutSeconds")
    g.add_argument("--health-threshold", type=int, default=3, help="unhealthyThreshold")
    g.add_argument("--health-reps", type=int, default=2, help="rounds of the four kinds")
    g.add_argument("--drift-watch", type=float, default=12.0, help="s to watch for no restart")
