#!/usr/bin/env bash
# `make demo`: chainop end to end on the local control plane — routing, failover, exclusion,
# backend restart, restore — with real kubectl output. Sets everything up (control plane,
# CRDs, namespace, fake backends, the operator) and removes it again; the control plane is
# stopped at the end only if the demo started it.
#
#   hack/demo.sh [--keep-cluster] [--namespace NS] [--log-dir DIR] [--wait-timeout S]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[ -x .venv/bin/python ] || hack/install.sh
exec .venv/bin/python -m chainop.demo "$@"
