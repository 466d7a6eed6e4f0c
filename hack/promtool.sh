#!/usr/bin/env bash
# Install promtool (Prometheus' rule checker) into the user cache, <cache>/bin/promtool,
# for tests/unit/test_alerts.py (`promtool check rules`, `promtool test rules`).
#
# promtool comes from Debian's `prometheus` package. The package is only downloaded
# (`apt-get download`) and unpacked (`dpkg-deb -x`) into a temporary folder, of which
# only usr/bin/promtool is kept: nothing is installed system-wide and no Prometheus
# service is started. Idempotent: a working promtool in the cache is left alone.
#
#   hack/promtool.sh          prints the path of promtool on its last line
#
# Exit 0: promtool ready. Exit 2 (one line on stderr): it cannot be installed here
# (no apt-get/dpkg-deb, or the package cannot be downloaded).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$("$root/hack/cache-dir.sh")/bin"
target="$bin/promtool"

if [ -x "$target" ] && "$target" --version >/dev/null 2>&1; then
  echo "==> promtool already in the cache: $("$target" --version 2>&1 | head -1)"
  echo "$target"
  exit 0
fi
for tool in apt-get dpkg-deb; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "promtool: cannot install: $tool not found (promtool comes from Debian's prometheus package)" >&2
    exit 2
  fi
done

work="$(mktemp -d -t chainop-promtool.XXXXXX)"
trap 'rm -rf "$work"' EXIT
echo "==> downloading Debian's prometheus package (apt-get download; nothing is installed)"
if ! (cd "$work" && apt-get download prometheus >"$work/download.log" 2>&1); then
  # The package lists may be missing on a fresh machine: refresh them once and retry.
  if [ "$(id -u)" = "0" ]; then
    echo "==> apt-get update (package lists missing or stale)"
    apt-get update >"$work/update.log" 2>&1 || true
  fi
  if ! (cd "$work" && apt-get download prometheus >"$work/download.log" 2>&1); then
    echo "promtool: cannot install: apt-get download prometheus failed: $(tail -1 "$work/download.log")" >&2
    exit 2
  fi
fi
deb="$(ls "$work"/prometheus_*.deb)"
echo "==> extracting usr/bin/promtool from $(basename "$deb") (dpkg-deb -x)"
dpkg-deb -x "$deb" "$work/root"
if [ ! -x "$work/root/usr/bin/promtool" ]; then
  echo "promtool: cannot install: $(basename "$deb") has no usr/bin/promtool" >&2
  exit 2
fi
mkdir -p "$bin"
install -m 0755 "$work/root/usr/bin/promtool" "$target.tmp"
mv "$target.tmp" "$target"
echo "==> installed $("$target" --version 2>&1 | head -1)"
echo "$target"
