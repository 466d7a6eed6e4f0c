#!/usr/bin/env bash
# Join a real node to the local control plane: containerd + runc (Debian's), a bridge CNI,
# a kubelet and a kube-scheduler (built from the same Kubernetes module as the apiserver).
#
#   hack/node-up.sh            idempotent; starts the control plane first if needed
#   hack/node-down.sh          stops it and undoes every host change (see that script)
#
# Everything lives under <cluster dir>/node/ (state, sockets, logs, certs); the host paths a
# component fixes itself are recorded in node/host-before.env and removed by node-down only
# if they did not exist before. Pods get 10.213.0.0/24 (POD_CIDR) on the bridge chainop0
# with no route and no masquerade off this machine; one DNAT rule lets them reach the API
# server at the kubernetes service IP (10.0.0.1:443 -> 127.0.0.1:<apiserver port>).
#
# Exit codes: 0 node Ready; 2 this host cannot run a node (one line says why: not root, no
# cgroups, a port or the pod CIDR taken, another kubelet...); 1 anything else failed.
#
# Environment: NODE_NAME (chainop-node), POD_CIDR (10.213.0.0/24), KUBELET_PORT (10250; a
#   busy default is replaced by a free port, a busy explicit one is an error),
#   CHAINOP_CLUSTER_DIR, CHAINOP_CACHE, KEEP_ON_FAILURE=1 (do not tear down a failed start).
set -euo pipefail
LOG_TAG=node-up
# shellcheck source=hack/node-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/node-lib.sh"
t0=$SECONDS

# ---------------------------------------------------------------- can this host run a node?
[[ "$(uname -s)" == Linux ]] || cannot "not Linux"
(( EUID == 0 )) || cannot "not root (the kubelet and containerd need root: mounts, cgroups, network namespaces)"
if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    CGROUP_MODE=v2
    for c in cpu memory pids; do
        grep -qw "$c" /sys/fs/cgroup/cgroup.controllers || cannot "cgroup v2 without the $c controller"
    done
else
    CGROUP_MODE=v1
    for c in cpu cpuacct cpuset memory pids devices freezer; do
        [[ -d "/sys/fs/cgroup/$c" ]] || cannot "no cgroups: the v1 '$c' hierarchy is not mounted at /sys/fs/cgroup/$c"
    done
fi
(( ${#CTRD_SOCK} < 100 )) || cannot "the cluster dir path is too long for a unix socket ($CTRD_SOCK): set CHAINOP_CLUSTER_DIR to a shorter path"
command -v ip >/dev/null || cannot "no 'ip' command (iproute2)"
[[ -e /dev/kmsg ]] || cannot "no /dev/kmsg (the kubelet's OOM watcher needs it)"

pid_kubelet="$(pid_of kubelet "$BIN/kubelet" || true)"
pid_ctrd="$(pid_of containerd "containerd --config $CTRD_DIR" || true)"
pid_sched="$(pid_of kube-scheduler "$BIN/kube-scheduler" || true)"
# Another kubelet (not ours) on this host would fight over /var/lib/kubelet, cgroups, ports.
for other in $(pgrep -x kubelet || true); do
    # (a zombie - exited, not yet reaped by whoever inherited it - is no kubelet)
    # (or one that is gone by now: it may be reaped between pgrep and this line)
    st="$(awk '{print $3}' "/proc/$other/stat" 2>/dev/null || true)"
    [[ -z "$st" || "$st" == Z ]] && continue
    [[ "$other" == "$pid_kubelet" ]] || cannot "another kubelet is already running on this host (pid $other: $(tr '\0' ' ' <"/proc/$other/cmdline" | cut -c1-120))"
done
if ip -o link show "$BRIDGE" >/dev/null 2>&1 && [[ ! -f "$NODE_DIR/host-before.env" ]]; then
    cannot "network bridge $BRIDGE exists but is not ours (another node? hack/node-down.sh of its checkout removes it)"
fi
# The pod CIDR must not overlap anything routed on this host (but our own bridge).
if ip -4 route show to match "$POD_PREFIX.0" 2>/dev/null | grep -v "dev $BRIDGE" | grep -qv '^default'; then
    cannot "pod CIDR $POD_CIDR overlaps a route of this host ($(ip -4 route show to match "$POD_PREFIX.0" | grep -v '^default' | head -1)): set POD_CIDR"
fi
port_busy() {  # port_busy <port>: something listens on it (any address); no traffic sent
    [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The kubelet's port (the apiserver learns it from the Node status).
KUBELET_PORT_DEFAULT=10250
if [[ -n "${KUBELET_PORT:-}" ]]; then
    :  # explicit: used as is (a busy one is an error below)
elif [[ -f "$NODE_DIR/ports.env" ]]; then
    # shellcheck source=/dev/null
    source "$NODE_DIR/ports.env"
else
    KUBELET_PORT=$KUBELET_PORT_DEFAULT
    if port_busy "$KUBELET_PORT"; then
        KUBELET_PORT="$(free_port)"
        log "port $KUBELET_PORT_DEFAULT is in use: the kubelet listens on $KUBELET_PORT"
    fi
fi
if [[ -z "$pid_kubelet" ]] && port_busy "$KUBELET_PORT"; then
    cannot "port $KUBELET_PORT (the kubelet's) is in use"
fi
if ! iptables -t nat -S >/dev/null 2>&1; then
    command -v iptables >/dev/null && cannot "iptables does not work here: $(iptables -t nat -S 2>&1 | head -1)"
fi

# ---------------------------------------------------------------- packages
"$REPO_ROOT/hack/node-deps.sh" containerd runc containernetworking-plugins iptables conntrack \
    || { rc=$?; (( rc == 2 )) && exit 2; die "installing the node's packages failed"; }
iptables -t nat -S >/dev/null 2>&1 || cannot "iptables does not work here: $(iptables -t nat -S 2>&1 | head -1)"
[[ -x "$CNI_BIN/bridge" && -x "$CNI_BIN/host-local" && -x "$CNI_BIN/loopback" ]] \
    || die "CNI plugins missing in $CNI_BIN (containernetworking-plugins)"

# ---------------------------------------------------------------- already up?
lease_fresh() {  # our kubelet's Lease was renewed since it started
    local since="$1" renew
    renew="$(kubectl_ get lease -n kube-node-lease "$NODE_NAME" -o jsonpath='{.spec.renewTime}' 2>/dev/null)" || return 1
    [[ -n "$renew" ]] || return 1
    (( $(date -d "$renew" +%s) >= since ))
}
node_ready() {  # Ready=True, posted by our kubelet (heartbeat at or after its start)
    local since="$1" st hb
    st="$(kubectl_ get node "$NODE_NAME" -o jsonpath='{range .status.conditions[?(@.type=="Ready")]}{.status} {.lastHeartbeatTime}{end}' 2>/dev/null)" || return 1
    read -r st hb <<<"$st"
    [[ "$st" == True ]] && (( $(date -d "$hb" +%s) >= since ))
}
# Images: the pause (sandbox) image always; the base and app images when they are cached.
import_image() {  # import_image <archive> <ref>: skipped when this archive is already in
    local archive="$1" ref="$2" mark
    [[ -f "$archive" ]] || return 0
    mark="$(stat -c '%s %Y' "$archive")"
    if [[ "$(cat "$CTRD_DIR/imported-${ref//[\/:]/_}" 2>/dev/null)" == "$mark" ]] \
        && ctr_ images ls -q 2>/dev/null | grep -qxF "$ref"; then
        return 0
    fi
    local t=$SECONDS err try
    # A second try after a short pause: a containerd that has just started may still be
    # setting up its CRI plugin; the error of the last try is what gets reported.
    for try in 1 2; do
        if err="$(ctr_ images import "$archive" 2>&1 >/dev/null)" \
            && ctr_ images ls -q | grep -qxF "$ref"; then
            break
        fi
        (( try == 2 )) && die "importing $archive did not give $ref: ${err:-no error from ctr}"
        log "importing $archive failed (${err:-no error}); trying once more"
        sleep 2
    done
    echo "$mark" >"$CTRD_DIR/imported-${ref//[\/:]/_}"
    log "imported $ref into the node's containerd ($((SECONDS - t))s)"
}
import_images() {
    import_image "$IMAGES/pause.tar" "$PAUSE_IMAGE"
    import_image "$IMAGES/base.tar" "$BASE_IMAGE"
    import_image "$IMAGES/app.tar" "$APP_IMAGE"
}
if [[ -n "$pid_kubelet" && -n "$pid_ctrd" && -n "$pid_sched" && -f "$STATE/kubeconfig" ]]; then
    started="$(cat "$NODE_RUN/kubelet.started" 2>/dev/null || echo 0)"
    if lease_fresh "$(( $(date +%s) - 40 ))" && node_ready "$started"; then
        import_images   # images built since the node started
        log "node $NODE_NAME already up and Ready (kubelet pid $pid_kubelet)"
        exit 0
    fi
fi

on_fail() {
    local rc=$?
    (( rc == 0 || rc == 2 )) && return
    log "node-up failed (rc=$rc); logs in ${NODE_LOGS#"$REPO_ROOT"/}/"
    local c; for c in containerd kubelet kube-scheduler; do
        [[ -f "$NODE_LOGS/$c.log" ]] || continue
        log "last lines of $c.log:"; tail -n 12 "$NODE_LOGS/$c.log" >&2
    done
    if [[ "${KEEP_ON_FAILURE:-0}" != 1 ]]; then
        log "tearing the partial node down (KEEP_ON_FAILURE=1 keeps it)"
        "$REPO_ROOT/hack/node-down.sh" >&2 || true
    fi
}
trap on_fail EXIT

# ---------------------------------------------------------------- control plane, binaries, images
log "control plane (hack/cluster-up.sh)"
"$REPO_ROOT/hack/cluster-up.sh"
# shellcheck source=/dev/null
source "$STATE/cluster.env"
tr '\0' ' ' <"/proc/$(cat "$STATE/run/kube-apiserver.pid")/cmdline" | grep -q -- '--kubelet-preferred-address-types' \
    || die "the running kube-apiserver lacks --kubelet-preferred-address-types (restart it: hack/cluster-down.sh && hack/cluster-up.sh)"
if [[ ! -x "$BIN/kubelet" || ! -x "$BIN/kube-scheduler" ]]; then
    log "kubelet/kube-scheduler not built yet: building them (~1 min after the apiserver, ~5 min cold)"
fi
"$REPO_ROOT/hack/cluster-build.sh" node
"$REPO_ROOT/hack/image-base.sh" pause

mkdir -p "$NODE_RUN" "$NODE_LOGS" "$NODE_PKI" "$CTRD_DIR" "$KUBELET_DIR" "$POD_LOGS" "$CNI_CONF" "$CNI_IPAM"
chmod 700 "$NODE_DIR" "$NODE_PKI"

# ---------------------------------------------------------------- what the host looked like
# Recorded once per node lifetime (a node-up after a failed/partial start keeps the first
# record): node-down restores exactly this.
if [[ ! -f "$NODE_DIR/host-before.env" ]]; then
    {
        echo "# host state before hack/node-up.sh, $(date -Is); hack/node-down.sh restores it"
        for s in "${SYSCTLS[@]}"; do echo "SYSCTL_${s//./_}=$(sysctl -n "$s")"; done
        i=0
        for p in "${FIXED_PATHS[@]}" /var/lib/kubelet/device-plugins; do
            [[ -e "$p" ]] && echo "EXISTED_$i=1 # $p" || echo "EXISTED_$i=0 # $p"
            i=$((i + 1))
        done
        for ipt in iptables ip6tables; do
            echo "CHAINS_$ipt=\"$(for t in filter nat mangle; do $ipt -t "$t" -S 2>/dev/null | sed -n "s/^-N \(KUBE-.*\)/$t:\1/p"; done | tr '\n' ' ')\""
        done
        echo "VETHS_BEFORE=\"$(ip -o link show type veth 2>/dev/null | awk -F': ' '{split($2, n, "@"); print n[1]}' | tr '\n' ' ')\""
        # v1: one hierarchy per controller; v2 (or hybrid's unified): the root itself
        echo "KUBEPODS_EXISTED=\"$(for h in /sys/fs/cgroup/ /sys/fs/cgroup/*/; do [[ -d "${h}kubepods" ]] && basename "$h"; done | tr '\n' ' ')\""
    } >"$NODE_DIR/host-before.env.tmp"
    mv -f "$NODE_DIR/host-before.env.tmp" "$NODE_DIR/host-before.env"
    log "recorded the host's state in ${NODE_DIR#"$REPO_ROOT"/}/host-before.env"
fi

# ---------------------------------------------------------------- certificates + RBAC
gen_client_cert() {  # gen_client_cert <name> <subject>
    local name="$1" subj="$2"
    [[ -f "$NODE_PKI/$name.crt" ]] && return
    openssl genrsa -out "$NODE_PKI/$name.key" 2048 2>/dev/null
    openssl req -new -key "$NODE_PKI/$name.key" -subj "$subj" -out "$NODE_PKI/$name.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$NODE_PKI/$name.ext"
    openssl x509 -req -in "$NODE_PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -sha256 -extfile "$NODE_PKI/$name.ext" -out "$NODE_PKI/$name.crt" 2>/dev/null
    rm -f "$NODE_PKI/$name.csr" "$NODE_PKI/$name.ext"
}
write_kubeconfig() {  # write_kubeconfig <file> <cert name> <user>
    cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: chainop-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(base64 -w0 "$NODE_PKI/$2.crt")
    client-key-data: $(base64 -w0 "$NODE_PKI/$2.key")
contexts:
- name: chainop-local
  context: {cluster: chainop-local, user: $3}
current-context: chainop-local
EOF
    chmod 600 "$1.tmp"; mv -f "$1.tmp" "$1"
}
gen_client_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
gen_client_cert scheduler "/CN=system:kube-scheduler"
write_kubeconfig "$NODE_PKI/kubelet.kubeconfig" kubelet "system:node:$NODE_NAME"
write_kubeconfig "$NODE_PKI/scheduler.kubeconfig" scheduler system:kube-scheduler
# RBAC only (no Node authorizer): the system:node role for every node identity.
kubectl_ apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: chainop:system:nodes
  labels: {app.kubernetes.io/managed-by: chainop-hack}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: system:nodes}
EOF
# A Node object left by an earlier kubelet (crash, node-down without an apiserver) says
# Ready for ~50 s: delete it so the wait below only sees our kubelet's.
if [[ -z "$pid_kubelet" ]]; then
    kubectl_ delete node "$NODE_NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------- network
if ! ip -o link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    log "created bridge $BRIDGE ($BRIDGE_IP/${POD_CIDR#*/})"
fi
ip addr replace "$BRIDGE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up
# Pods reach the apiserver (127.0.0.1) at the service IP: DNAT + route_localnet on the bridge.
sysctl -qw "net.ipv4.conf.$BRIDGE.route_localnet=1"
iptables -t nat -N "$NAT_CHAIN" 2>/dev/null || iptables -t nat -F "$NAT_CHAIN"
iptables -t nat -A "$NAT_CHAIN" -s "$POD_CIDR" -d "$SERVICE_IP" -p tcp --dport 443 \
    -j DNAT --to-destination "127.0.0.1:$APISERVER_PORT"
iptables -t nat -C PREROUTING -j "$NAT_CHAIN" 2>/dev/null || iptables -t nat -I PREROUTING -j "$NAT_CHAIN"
cat >"$CNI_CONF/10-chainop.conflist.tmp" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "chainop",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_IPAM",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR", "gw": "$BRIDGE_IP"}]
      }
    }
  ]
}
EOF
mv -f "$CNI_CONF/10-chainop.conflist.tmp" "$CNI_CONF/10-chainop.conflist"

# ---------------------------------------------------------------- daemons
start() {  # start <component> <binary> <args...>: detached, in its own session
    local name="$1"; shift
    log "starting $name (log: ${NODE_LOGS#"$REPO_ROOT"/}/$name.log)"
    echo "--- $(date -Is) $*" >>"$NODE_LOGS/$name.log"
    nohup setsid "$@" >>"$NODE_LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$NODE_RUN/$name.pid"
}
wait_for() {  # wait_for <what> <timeout s> <command...>
    local what="$1" timeout="$2"; shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        (( SECONDS < deadline )) || return 1
        sleep 0.2
    done
    log "$what ($((SECONDS - t0))s)"
}

# containerd: private root/state/socket; the CRI plugin set for this kind of machine.
mkdir -p "$CTRD_DIR/root" "$CTRD_DIR/state"
cat >"$CTRD_DIR/config.toml" <<EOF
# Written by hack/node-up.sh: chainop's node containerd (private root, state and socket).
version = 2
root = "$CTRD_DIR/root"
state = "$CTRD_DIR/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CTRD_SOCK"

[ttrpc]
  address = ""

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD_DIR/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE: runc cannot set a negative oom_score_adj
  # ("can't get final child's PID from pipe: EOF"); clamp instead.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$CNI_CONF"
    max_conf_num = 1
EOF
if [[ -z "$pid_ctrd" ]]; then
    start containerd "$(command -v containerd)" --config "$CTRD_DIR/config.toml"
fi
wait_for "containerd ready" 30 ctr --address "$CTRD_SOCK" version \
    || die "containerd did not answer on $CTRD_SOCK"

import_images

# kubelet
HEALTHZ_PORT="${HEALTHZ_PORT:-$(free_port)}"
echo "KUBELET_PORT=$KUBELET_PORT" >"$NODE_DIR/ports.env"
: >"$NODE_DIR/resolv.conf"   # pods get no resolver: nothing off this machine to ask
cat >"$NODE_DIR/kubelet-config.yaml" <<EOF
# Written by hack/node-up.sh
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Kubernetes >= 1.35 refuses cgroup v1 unless told; deprecated upstream (docs/control-plane.md).
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CTRD_SOCK
address: $BRIDGE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $HEALTHZ_PORT
podLogsDir: $POD_LOGS
resolvConf: $NODE_DIR/resolv.conf
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
failSwapOn: false
serializeImagePulls: false
# Never garbage-collect the locally imported images (no registry to pull them back from).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
maxPods: 110
# The kubelet renews its Lease every leaseDuration/4. Its first attempt comes before the
# Node is registered and fails ("Failed to get node when trying to set owner ref"), so
# with the default 40 s the Lease appears only ~10 s after start; 20 s halves that.
nodeLeaseDurationSeconds: 20
containerLogMaxSize: 10Mi
EOF
if [[ -z "$pid_kubelet" ]]; then
    date +%s >"$NODE_RUN/kubelet.started"
    start kubelet "$BIN/kubelet" --config "$NODE_DIR/kubelet-config.yaml" \
        --kubeconfig "$NODE_PKI/kubelet.kubeconfig" \
        --root-dir "$KUBELET_DIR" --cert-dir "$KUBELET_DIR/pki" \
        --hostname-override "$NODE_NAME" --node-ip "$BRIDGE_IP" \
        --v 1
fi
started="$(cat "$NODE_RUN/kubelet.started")"

# kube-scheduler: without it pods stay Pending even with a kubelet.
if [[ -z "$pid_sched" ]]; then
    sk="$NODE_PKI/scheduler.kubeconfig"
    start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$sk" \
        --authentication-kubeconfig "$sk" --authorization-kubeconfig "$sk" \
        --leader-elect=false --bind-address 127.0.0.1 --secure-port "$(free_port)" --profiling=false
fi

# ---------------------------------------------------------------- Ready (by the Lease, not just the condition)
kubelet_alive() { pid_of kubelet "$BIN/kubelet" >/dev/null || { log "the kubelet exited"; return 2; }; }
live_and_ready() { kubelet_alive && lease_fresh "$started" && node_ready "$started"; }
deadline=$((SECONDS + 120))
until live_and_ready 2>/dev/null; do
    pid_of kubelet "$BIN/kubelet" >/dev/null || die "the kubelet exited (log: $NODE_LOGS/kubelet.log)"
    pid_of containerd "containerd --config $CTRD_DIR" >/dev/null || die "containerd exited (log: $NODE_LOGS/containerd.log)"
    (( SECONDS < deadline )) || die "node $NODE_NAME not Ready after 120 s"
    sleep 0.5
done
log "node $NODE_NAME Ready, Lease renewed ($(( $(date +%s) - started ))s after the kubelet started)"
pid_of kube-scheduler "$BIN/kube-scheduler" >/dev/null || die "kube-scheduler exited (log: $NODE_LOGS/kube-scheduler.log)"
trap - EXIT
log "node up in $((SECONDS - t0))s: pods on $POD_CIDR (bridge $BRIDGE), images: $PAUSE_IMAGE$([[ -f "$IMAGES/base.tar" ]] && echo ", $BASE_IMAGE")$([[ -f "$IMAGES/app.tar" ]] && echo ", $APP_IMAGE")"
log "KUBECONFIG=$STATE/kubeconfig; hack/node-down.sh stops it and cleans the host"
