#!/usr/bin/env bash
# Stop the local control plane started by hack/cluster-up.sh: SIGTERM, then SIGKILL after
# a grace period; controller-manager first, etcd last. Leaves no stray processes.
# A node started by hack/node-up.sh is stopped (hack/node-down.sh) before anything else.
#
#   hack/cluster-down.sh          stop, keep state (.cluster/: pki, etcd data, logs)
#   hack/cluster-down.sh --wipe   stop and delete .cluster/ entirely (WIPE=1 does the same)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${CHAINOP_CLUSTER_DIR:-$REPO_ROOT/.cluster}"
RUN="$STATE/run"
WIPE="${WIPE:-0}"
GRACE="${GRACE:-10}"
for arg in "$@"; do
    case "$arg" in
        --wipe) WIPE=1 ;;
        *) echo "usage: $0 [--wipe]" >&2; exit 2 ;;
    esac
done

# Running = listed in /proc and not a zombie (an exited child not yet reaped by its parent).
running() { [[ -r "/proc/$1/stat" ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
gone_within() {  # gone_within <pid> <seconds>
    local deadline=$((SECONDS + $2))
    while running "$1"; do
        (( SECONDS < deadline )) || return 1
        sleep 0.1
    done
}

log() { printf '[cluster-down %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stop() {  # stop <component> <pattern its cmdline must contain>
    local name="$1" pattern="$2" f="$RUN/$1.pid" pid
    [[ -f "$f" ]] || return 0
    pid="$(cat "$f")"
    # Guard against a recycled pid: only signal a process that still runs our binary.
    if [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$pattern"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        if ! gone_within "$pid" "$GRACE"; then
            log "$name did not exit after ${GRACE}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            gone_within "$pid" 10 || log "WARNING: $name (pid $pid) is still running"
        fi
    fi
    rm -f "$f"
}

# A node (hack/node-up.sh) goes first: its pods are deleted through the apiserver, and it
# restores the host (mounts, network, cgroups, sysctls) before the control plane stops.
if [[ -f "$STATE/node/host-before.env" || -n "$(ls "$STATE/node/run/"*.pid 2>/dev/null)" ]]; then
    log "a node is up: stopping it first (hack/node-down.sh)"
    WIPE="$WIPE" "$REPO_ROOT/hack/node-down.sh" || log "WARNING: node-down reported problems (see above)"
fi
if [[ -d "$RUN" ]]; then
    stop kube-controller-manager kube-controller-manager
    stop kube-apiserver kube-apiserver
    stop etcd etcd
    log "control plane stopped"
else
    log "no cluster state in $STATE: nothing to stop"
fi
if [[ "$WIPE" == 1 && -d "$STATE" ]]; then
    rm -rf "$STATE"
    log "wiped $STATE"
fi
