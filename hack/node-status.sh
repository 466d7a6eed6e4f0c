#!/usr/bin/env bash
# Is the node of hack/node-up.sh live and Ready? Exit 0 if so, 1 if not; one line says why.
#
# "Live" is judged by the node's Lease in kube-node-lease (a running kubelet renews it
# every ~10 s), not by the Node's Ready condition alone: a Node object left behind by a
# stopped kubelet keeps saying Ready for ~50 s. For scripts (e.g. the demo: use the node
# when one is up) and tests.
set -uo pipefail
LOG_TAG=node-status
# shellcheck source=hack/node-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/node-lib.sh"
MAX_AGE="${MAX_AGE:-30}"   # seconds since the last Lease renewal

say() { echo "node $NODE_NAME: $*"; }
[[ -f "$STATE/kubeconfig" ]] || { say "no control plane ($STATE/kubeconfig missing)"; exit 1; }
pid_of kubelet "$BIN/kubelet" >/dev/null || { say "no kubelet of ours running"; exit 1; }
renew="$(kubectl_ get lease -n kube-node-lease "$NODE_NAME" -o jsonpath='{.spec.renewTime}' --request-timeout=5s 2>/dev/null)"
[[ -n "$renew" ]] || { say "no Lease (not registered yet, or the control plane is down)"; exit 1; }
age=$(( $(date +%s) - $(date -d "$renew" +%s) ))
(( age <= MAX_AGE )) || { say "Lease last renewed ${age}s ago (kubelet not heartbeating)"; exit 1; }
ready="$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)"
[[ "$ready" == True ]] || { say "Ready=${ready:-unknown} (Lease renewed ${age}s ago)"; exit 1; }
say "Ready (Lease renewed ${age}s ago)"
