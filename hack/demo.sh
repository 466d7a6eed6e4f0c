#!/usr/bin/env bash
# `make demo`: chainop end to end on the local control plane — routing, failover, exclusion,
# backend restart, restore — with real kubectl output. Sets everything up (control plane,
# CRDs, namespace, fake backends, the operator) and removes it again; the control plane is
# stopped at the end only if the demo started it.
#
# With a real node up (hack/node-status.sh exits 0), or NODE=1 (starts one), the vllm backend
# is a real pod and `kubectl get pods` shows chainop's restart (old pod Terminating, new one
# Running); NODE=0 forces the pod-less demo.
#
#   hack/demo.sh [--keep-cluster] [--namespace NS] [--log-dir DIR] [--wait-timeout S]
#                [--node | --no-node]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[ -x .venv/bin/python ] || hack/install.sh
exec .venv/bin/python -m chainop.demo "$@"
