#!/usr/bin/env bash
# The README's test command: install, lint, bring the local control plane up, run every
# test, and take the control plane down again (even on failure) if this run started it.
#
#   hack/test.sh [pytest args...]       e.g. hack/test.sh -k routing
#   LINT=0 hack/test.sh                 skip ruff/mypy/import-linter
#   NODE=0 hack/test.sh                 no real node (its tests are reported as skipped)
#   LLAMA=0 hack/test.sh                no llama-server build (its tests are skipped)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
hack/install.sh
if [ "${LINT:-1}" = "1" ]; then
  hack/lint.sh
fi
started_here=0
if ! { [ -f .cluster/kubeconfig ] && KUBECONFIG=.cluster/kubeconfig .venv/bin/kubectl get --raw /readyz >/dev/null 2>&1; }; then
  started_here=1
fi
node_started_here=0
# Why a set-up step failed, repeated as the last line of the output (CI shows the tail).
export FAILURE_REPORT="${FAILURE_REPORT:-$(mktemp -t chainop-failure.XXXXXX)}"
# promtool for the alert tests (tests/unit/test_alerts.py), unpacked from Debian's
# prometheus package into the user cache; required here: without it they fail, not skip.
export CHAINOP_REQUIRE_PROMTOOL=1
if ! hack/promtool.sh; then
  echo "promtool could not be installed (hack/promtool.sh): the alert tests will fail" >>"$FAILURE_REPORT"
fi
cleanup() {
  local rc=$?
  if [ "${KEEP_CLUSTER:-0}" != "1" ]; then
    if [ "$started_here" = "1" ]; then
      echo "==> stopping the local control plane (and the node first)"
      hack/cluster-down.sh || true
    elif [ "$node_started_here" = "1" ]; then
      echo "==> stopping the node"
      hack/node-down.sh || true
    fi
  fi
  if [ -s "$FAILURE_REPORT" ]; then
    echo "==> FAILED (exit $rc): $(tr '\n' ';' <"$FAILURE_REPORT" | sed 's/;$//')"
  fi
  rm -f "$FAILURE_REPORT"
}
trap cleanup EXIT
echo "==> starting the local control plane (first run builds it from Go modules: ~7 min)"
hack/cluster-up.sh
if [ "${LLAMA:-1}" = "1" ]; then
  # The real model server of the tests (tests/e2e/test_llama_server_e2e.py): compiled once
  # per machine into the user cache (~10 min), then reused in about 10 ms.
  echo "==> llama.cpp's llama-server + SmolLM2-135M (first run compiles it: ~10 min)"
  hack/llama-build.sh
fi
if [ "${NODE:-1}" = "1" ]; then
  hack/node-status.sh >/dev/null 2>&1 || node_started_here=1
  echo "==> images (buildah, no engine) and a real node (kubelet + containerd + scheduler)"
  node_rc=0
  { hack/image-build.sh && hack/node-up.sh; } || node_rc=$?
  if [ "$node_rc" != "0" ] && [ "$node_rc" != "2" ]; then
    # node-up tears a partial node down on failure; one more try, from clean, before the
    # whole run fails (the reason of each try stays in the report).
    echo "==> the node did not come up (exit $node_rc); one more try"
    node_rc=0
    hack/node-up.sh || node_rc=$?
  fi
  if [ "$node_rc" = "2" ]; then
    echo "==> this host cannot run a node: the node tests will be reported as skipped"
    node_started_here=0
  elif [ "$node_rc" != "0" ]; then
    exit "$node_rc"
  fi
fi
echo "==> running the tests"
rc=0
.venv/bin/pytest "$@" || rc=$?
if [ "$rc" = "5" ]; then
  echo "==> pytest collected no tests (exit 5): treated as success"
  rc=0
fi
exit "$rc"
