#!/usr/bin/env bash
# Stop the node started by hack/node-up.sh and leave the host as node-up found it.
#
#   hack/node-down.sh           idempotent; the control plane keeps running
#   WIPE=1 hack/node-down.sh    also delete <cluster dir>/node/ (images, logs, certs)
#
# Order (each step needs the previous one):
#  1. cordon the node and delete its pods while the kubelet still runs (so CNI DEL cleans
#     each pod's network and the kubelet unmounts its volumes);
#  2. stop kube-scheduler and the kubelet;
#  3. kill and remove leftover containers/tasks, then any process still in a kubepods
#     cgroup, stop containerd, then its shims (only those of our socket);
#  4. unmount everything under node/ and under the host paths we created;
#  5. network: the bridge, our DNAT chain, the kubelet's iptables chains (KUBE-FIREWALL,
#     KUBE-KUBELET-CANARY v4/v6, KUBE-IPTABLES-HINT, ... those node-up did not find);
#  6. cgroups: kubepods in every hierarchy, depth-first (unless they pre-existed);
#  7. sysctls the kubelet (or the bridge) changed, back to the values node-up recorded;
#  8. host paths components fix themselves (/run/containerd, /var/lib/kubelet, /var/lib/cni,
#     /var/log/pods, /var/log/containers, /run/netns) if node-up found them absent;
#  9. the Node object (and its Lease): a stale Node says Ready for ~50 s.
# Kept for a fast next node-up: node/containerd/root (imported images), node/pki, logs.
set -uo pipefail
LOG_TAG=node-down
# shellcheck source=hack/node-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/node-lib.sh"
GRACE="${GRACE:-10}"
t0=$SECONDS
warnings=0
warn() { log "WARNING: $*"; warnings=$((warnings + 1)); }

if [[ ! -d "$NODE_DIR" ]]; then
    log "no node state in $NODE_DIR: nothing to stop"
    exit 0
fi
(( EUID == 0 )) || { printf 'node-down: must run as root\n' >&2; exit 2; }
BEFORE="$NODE_DIR/host-before.env"
if [[ -f "$BEFORE" ]]; then
    # shellcheck source=/dev/null
    source "$BEFORE"
else
    log "no $BEFORE (node-up never got that far): restoring nothing recorded, removing only what is ours"
fi

api_up() {
    [[ -f "$STATE/kubeconfig" ]] && kubectl_ get --raw /readyz --request-timeout=3s >/dev/null 2>&1
}
running() { [[ -r "/proc/$1/stat" ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
stop_pid() {  # stop_pid <name> <pid>: TERM, KILL after $GRACE s
    local name="$1" pid="$2" deadline
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + GRACE))
    while running "$pid" && (( SECONDS < deadline )); do sleep 0.1; done
    if running "$pid"; then
        log "$name did not exit after ${GRACE}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.3
        running "$pid" && warn "$name (pid $pid) still running"
    fi
}
stop_component() {  # stop_component <name> <cmdline pattern>
    local pid
    pid="$(pid_of "$1" "$2")" && stop_pid "$1" "$pid"
    rm -f "$NODE_RUN/$1.pid"
}

# ---------------------------------------------------------------- 1. pods, while the kubelet runs
kubelet_pid="$(pid_of kubelet "$BIN/kubelet" || true)"
if [[ -n "$kubelet_pid" ]] && api_up; then
    kubectl_ cordon "$NODE_NAME" >/dev/null 2>&1 || true
    pods="$(kubectl_ get pods -A --field-selector "spec.nodeName=$NODE_NAME" -o name 2>/dev/null | wc -l)"
    if (( pods > 0 )); then
        log "deleting $pods pod(s) on $NODE_NAME while the kubelet runs (grace 2 s)"
        kubectl_ get pods -A --field-selector "spec.nodeName=$NODE_NAME" \
            -o jsonpath='{range .items[*]}{.metadata.namespace}{" "}{.metadata.name}{"\n"}{end}' 2>/dev/null \
            | while read -r ns name; do
                kubectl_ delete pod -n "$ns" "$name" --grace-period=2 --wait=false >/dev/null 2>&1 || true
            done
        deadline=$((SECONDS + 40))
        while (( SECONDS < deadline )); do
            left="$(kubectl_ get pods -A --field-selector "spec.nodeName=$NODE_NAME" -o name 2>/dev/null | wc -l)"
            (( left == 0 )) && break
            sleep 0.5
        done
        (( left == 0 )) || { log "$left pod(s) still there after 40 s: force-deleting"; \
            kubectl_ delete pods -A --field-selector "spec.nodeName=$NODE_NAME" --force --grace-period=0 >/dev/null 2>&1 || true; }
    fi
    # The kubelet removes the sandboxes (CNI DEL) shortly after the pods are gone.
    if ctr --address "$CTRD_SOCK" version >/dev/null 2>&1; then
        deadline=$((SECONDS + 15))
        while [[ -n "$(ctr_ tasks ls -q 2>/dev/null)" ]] && (( SECONDS < deadline )); do sleep 0.5; done
    fi
fi

# ---------------------------------------------------------------- 2. scheduler, kubelet
stop_component kube-scheduler "$BIN/kube-scheduler"
stop_component kubelet "$BIN/kubelet"

# ---------------------------------------------------------------- 3. containers, containerd, shims
if ctr --address "$CTRD_SOCK" version >/dev/null 2>&1; then
    for ns in $(ctr --address "$CTRD_SOCK" namespaces ls -q 2>/dev/null); do
        c="ctr --address $CTRD_SOCK -n $ns"
        tasks="$($c tasks ls -q 2>/dev/null)"
        if [[ -n "$tasks" ]]; then
            log "killing $(wc -w <<<"$tasks") leftover task(s) in namespace $ns"
            for t in $tasks; do $c tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
            sleep 0.5
            for t in $tasks; do $c tasks rm -f "$t" >/dev/null 2>&1 || true; done
        fi
        containers="$($c containers ls -q 2>/dev/null)"
        if [[ -n "$containers" ]]; then
            log "removing $(wc -w <<<"$containers") leftover container(s) in namespace $ns"
            for k in $containers; do $c containers rm "$k" >/dev/null 2>&1 || true; done
        fi
    done
fi
kubepods_procs() {  # processes in the kubepods cgroups we created (not pre-existing ones)
    local h
    for h in /sys/fs/cgroup/ /sys/fs/cgroup/*/; do
        [[ -d "${h}kubepods" ]] || continue
        [[ " ${KUBEPODS_EXISTED:-} " == *" $(basename "$h") "* ]] && continue
        find "${h}kubepods" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -un
}
procs="$(kubepods_procs | tr '\n' ' ')"
if [[ -n "${procs// /}" ]]; then
    log "killing processes still in kubepods cgroups: $procs"
    # shellcheck disable=SC2086
    kill -KILL $procs 2>/dev/null || true
    sleep 0.5
fi
stop_component containerd "containerd --config $CTRD_DIR"
shims() {  # the shims of our containerd (their command line names our socket)
    local p
    for p in $(pgrep -f containerd-shim 2>/dev/null); do
        tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "-address $CTRD_SOCK" && echo "$p"
    done
}
for p in $(shims); do stop_pid "containerd-shim (leftover)" "$p"; done

# ---------------------------------------------------------------- 4. mounts
# Ours: under node/; and under the fixed host paths only when node-up created them.
our_roots=("$NODE_DIR")
i=0
for p in "${FIXED_PATHS[@]}"; do
    v="EXISTED_$i"; i=$((i + 1))
    [[ -f "$BEFORE" && "${!v:-1}" == 0 ]] && our_roots+=("$p")
done
our_mounts() {
    local r
    awk '{print $2}' /proc/self/mounts | sed 's/\\040/ /g' | while read -r m; do
        for r in "${our_roots[@]}"; do
            [[ "$m" == "$r" || "$m" == "$r"/* ]] && { echo "$m"; break; }
        done
    done | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-
}
n=0
for pass in 1 2 3; do
    mapfile -t ms < <(our_mounts)
    (( ${#ms[@]} )) || break
    for m in "${ms[@]}"; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        n=$((n + 1))
    done
done
(( n )) && log "unmounted $n mount(s)"
left="$(our_mounts)"; [[ -z "$left" ]] || warn "still mounted: $left"

# ---------------------------------------------------------------- 5. network
if ip -o link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE" && log "deleted bridge $BRIDGE"
fi
while iptables -t nat -D PREROUTING -j "$NAT_CHAIN" 2>/dev/null; do :; done
if iptables -t nat -S "$NAT_CHAIN" >/dev/null 2>&1; then
    iptables -t nat -F "$NAT_CHAIN"; iptables -t nat -X "$NAT_CHAIN"
    log "deleted iptables nat chain $NAT_CHAIN (pod -> service IP DNAT)"
fi
remove_kube_chains() {  # remove_kube_chains <iptables|ip6tables> <chains that pre-existed>
    local ipt="$1" keep=" $2 " t chain rule removed=()
    command -v "$ipt" >/dev/null || return 0
    for t in filter nat mangle; do
        for chain in $($ipt -t "$t" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[A-Za-z0-9-]*\)$/\1/p'); do
            [[ "$keep" == *" $t:$chain "* ]] && continue
            # Rules elsewhere that jump to it, then the chain itself.
            $ipt -t "$t" -S 2>/dev/null | grep -E -- "-j $chain( |\$)" | grep '^-A ' | while read -r rule; do
                # shellcheck disable=SC2086
                eval "$ipt -t $t ${rule/-A /-D }" 2>/dev/null || true
            done
            $ipt -t "$t" -F "$chain" 2>/dev/null
            $ipt -t "$t" -X "$chain" 2>/dev/null && removed+=("$t:$chain")
        done
    done
    (( ${#removed[@]} )) && log "$ipt: deleted the kubelet's chains ${removed[*]}"
    return 0
}
remove_kube_chains iptables "${CHAINS_iptables:-}"
remove_kube_chains ip6tables "${CHAINS_ip6tables:-}"

# ---------------------------------------------------------------- 6. cgroups
removed_cg=()
for h in /sys/fs/cgroup/ /sys/fs/cgroup/*/; do   # v2 root (basename "cgroup") + every v1 hierarchy
    hier="$(basename "$h")"
    [[ -d "${h}kubepods" ]] || continue
    [[ " ${KUBEPODS_EXISTED:-} " == *" $hier "* ]] && continue
    find "${h}kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
    if [[ -d "${h}kubepods" ]]; then warn "could not remove ${h}kubepods"; else removed_cg+=("$hier"); fi
done
(( ${#removed_cg[@]} )) && log "removed kubepods cgroups in: ${removed_cg[*]}"

# ---------------------------------------------------------------- 7. sysctls
restored=()
for s in "${SYSCTLS[@]}"; do
    v="SYSCTL_${s//./_}"
    want="${!v:-}"
    [[ -n "$want" ]] || continue
    now="$(sysctl -n "$s" 2>/dev/null)"
    if [[ "$now" != "$want" ]]; then
        sysctl -qw "$s=$want" && restored+=("$s $now->$want") || warn "could not restore $s=$want"
    fi
done
(( ${#restored[@]} )) && log "restored sysctls: ${restored[*]}"

# ---------------------------------------------------------------- 8. host paths we created
removed_paths=()
i=0
for p in "${FIXED_PATHS[@]}" /var/lib/kubelet/device-plugins; do
    v="EXISTED_$i"; i=$((i + 1))
    [[ -f "$BEFORE" && "${!v:-1}" == 0 && -e "$p" ]] || continue
    if [[ -n "$(our_mounts | grep -F "$p")" ]]; then warn "not removing $p: still mounted"; continue; fi
    rm -rf --one-file-system "$p" && removed_paths+=("$p")
done
(( ${#removed_paths[@]} )) && log "removed host paths node-up had created: ${removed_paths[*]}"

# ---------------------------------------------------------------- 9. the Node object
if api_up; then
    if kubectl_ get node "$NODE_NAME" >/dev/null 2>&1; then
        kubectl_ delete node "$NODE_NAME" --wait=false >/dev/null 2>&1 && log "deleted Node $NODE_NAME"
    fi
    kubectl_ delete lease -n kube-node-lease "$NODE_NAME" --ignore-not-found >/dev/null 2>&1 || true
else
    log "control plane not reachable: Node $NODE_NAME (if any) stays; node-up deletes a stale one, and its Lease stops being renewed"
fi

# ---------------------------------------------------------------- private state
# Per-run state goes (unmounted above; --one-file-system never crosses into a mount);
# images (containerd/root), certs and logs stay for the next node-up.
if [[ -z "$(our_mounts)" ]]; then
    rm -rf --one-file-system "$KUBELET_DIR" "$CTRD_DIR/state" "$CTRD_DIR/opt" "$POD_LOGS" \
        "$NODE_DIR/cni" "$NODE_RUN" "$NODE_DIR/ports.env" "$CTRD_SOCK" "$CTRD_SOCK.ttrpc"
    if [[ "${WIPE:-0}" == 1 ]]; then rm -rf --one-file-system "$NODE_DIR"; log "wiped $NODE_DIR"; fi
    (( warnings == 0 )) && rm -f "$BEFORE"
fi
if (( warnings )); then
    log "node down in $((SECONDS - t0))s with $warnings warning(s); $BEFORE kept: run hack/node-down.sh again"
    exit 1
fi
log "node down in $((SECONDS - t0))s; host restored"
