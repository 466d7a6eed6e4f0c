#!/usr/bin/env bash
# Every static check CI runs: ruff (lint + format), mypy --strict, import-linter, helm lint.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
echo "==> ruff check"
.venv/bin/ruff check operator tests $( [ -d bench ] && echo bench )
echo "==> ruff format --check"
.venv/bin/ruff format --check operator tests $( [ -d bench ] && echo bench )
echo "==> mypy --strict operator/"
.venv/bin/mypy operator/chainop
echo "==> import-linter (core stays pure)"
(cd operator && ../.venv/bin/lint-imports --config ../pyproject.toml)
if [ -d charts/chainop ] && [ -x "$(hack/cache-dir.sh)/bin/helm" ]; then
  echo "==> helm lint"
  "$(hack/cache-dir.sh)/bin/helm" lint charts/chainop
fi
