# Shared by hack/node-up.sh, hack/node-down.sh and hack/image-*.sh (sourced, not run).
#
# Layout: everything the node writes lives under $NODE_DIR (= <cluster dir>/node/), except
# the few paths a component fixes itself; node-up records in $NODE_DIR/host-before.env
# which of those existed before, and node-down removes only the ones we created.
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${CHAINOP_CLUSTER_DIR:-$REPO_ROOT/.cluster}"
CACHE="${CHAINOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chainop}"
BIN="$CACHE/bin"
IMAGES="$CACHE/images"
PKI="$STATE/pki"
NODE_DIR="$STATE/node"
NODE_RUN="$NODE_DIR/run"          # pid files
NODE_LOGS="$NODE_DIR/logs"        # containerd.log, kubelet.log, kube-scheduler.log
NODE_PKI="$NODE_DIR/pki"          # kubelet + scheduler client certs, kubeconfigs
CTRD_DIR="$NODE_DIR/containerd"   # config.toml, root/ (images, kept), state/
CTRD_SOCK="$NODE_DIR/containerd.sock"
KUBELET_DIR="$NODE_DIR/kubelet"   # the kubelet's --root-dir
POD_LOGS="$NODE_DIR/pod-logs"     # the kubelet's podLogsDir
CNI_CONF="$NODE_DIR/cni/net.d"
CNI_IPAM="$NODE_DIR/cni/ipam"     # host-local IPAM dataDir
CNI_BIN="${CNI_BIN:-/usr/lib/cni}"
NODE_NAME="${NODE_NAME:-chainop-node}"
# A /24 of its own on a bridge of its own: no route and no masquerade off this machine.
POD_CIDR="${POD_CIDR:-10.213.0.0/24}"
POD_PREFIX="${POD_CIDR%.*/*}"           # 10.213.0
BRIDGE_IP="${BRIDGE_IP:-$POD_PREFIX.1}"   # the node's InternalIP (not loopback)
BRIDGE="${BRIDGE:-chainop0}"
SERVICE_CIDR="10.0.0.0/24"
SERVICE_IP="10.0.0.1"
NAT_CHAIN="CHAINOP-NODE-DNAT"
PAUSE_IMAGE="localhost/chainop-pause:1"
BASE_IMAGE="localhost/chainop-base:bookworm"
APP_IMAGE="${APP_IMAGE:-localhost/chainop:dev}"
# Host paths that a component fixes itself (created if missing, removed by node-down
# only when node-up found them absent).
FIXED_PATHS=(/run/containerd /var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers /run/netns)
# Kernel settings the kubelet (or we) may change; node-up records, node-down restores.
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward)

: "${LOG_TAG:=node}"
log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%H:%M:%S)" "$*" >&2; }
# die also appends its message to $FAILURE_REPORT when set (hack/test.sh repeats it as the
# last line of its output, which is the part of a long CI log that gets read).
die() {
    log "ERROR: $*"
    [[ -z "${FAILURE_REPORT:-}" ]] || printf '%s: %s\n' "$LOG_TAG" "$*" >>"$FAILURE_REPORT"
    exit 1
}
# "This host cannot run a node": one line, exit code 2 (tests skip with this reason).
cannot() { printf '%s: cannot %s here: %s\n' "$LOG_TAG" "${CANNOT_WHAT:-run a node}" "$*" >&2; exit 2; }

find_tool() {  # find_tool <name>: $REPO/.venv/bin/<name>, else PATH
    if [[ -x "$REPO_ROOT/.venv/bin/$1" ]]; then echo "$REPO_ROOT/.venv/bin/$1"
    elif command -v "$1" >/dev/null; then command -v "$1"
    else return 1; fi
}

pid_of() {  # pid_of <component> <pattern>: print the live pid from its pid file
    local f="$NODE_RUN/$1.pid" pid
    [[ -f "$f" ]] || return 1
    pid="$(cat "$f")"
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2" || return 1
    echo "$pid"
}

ctr_() { ctr --address "$CTRD_SOCK" -n k8s.io "$@"; }

# The admin kubeconfig of the control plane and a kubectl for it.
kubectl_() {
    local k; k="$(find_tool kubectl)" || die "kubectl not found (hack/install.sh provides it in .venv)"
    "$k" --kubeconfig "$STATE/kubeconfig" "$@"
}
