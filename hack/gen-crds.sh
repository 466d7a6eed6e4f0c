#!/usr/bin/env bash
# Regenerate crds/ from chainop.core.models (the single source of truth of the API).
# `hack/gen-crds.sh --check` exits 1 instead when crds/ is stale (for CI).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
cd "$REPO_ROOT"
if [[ "${1:-}" == "--check" ]]; then
  exec "$PYTHON" -m chainop.crds --check crds/
fi
exec "$PYTHON" -m chainop.crds --write crds/
