#!/usr/bin/env bash
# Create .venv and install chainop with its dev dependencies (idempotent).
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.chainop-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "==> .venv is up to date"
  exit 0
fi
echo "==> installing chainop and its dev dependencies into .venv (from PyPI)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "$want" > "$stamp"
echo "==> installed: $(.venv/bin/python -c 'import chainop; print("chainop", chainop.__version__)')"
