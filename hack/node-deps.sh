#!/usr/bin/env bash
# Install the Debian packages a node (or the daemonless image build) needs, only those
# missing, non-interactively; print what is installed. Debian/Ubuntu (apt) only.
#
#   hack/node-deps.sh                    containerd runc containernetworking-plugins iptables conntrack
#   hack/node-deps.sh buildah mmdebstrap ...   any other list
#
# Services are never started by the install: our containerd runs with a private socket
# and state under .cluster/node/ (hack/node-up.sh), never the host's default one.
# Exit codes: 0 ok, 2 this host cannot install them (not root, no apt), 1 apt failed.
set -euo pipefail

log() { printf '[node-deps %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

pkgs=("$@")
(( ${#pkgs[@]} )) || pkgs=(containerd runc containernetworking-plugins iptables conntrack)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }
version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null; }

missing=()
for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done

if (( ${#missing[@]} )); then
    if ! command -v apt-get >/dev/null; then
        log "ERROR: cannot run here: packages missing (${missing[*]}) and no apt-get on this host"
        exit 2
    fi
    if (( EUID != 0 )); then
        log "ERROR: cannot run here: packages missing (${missing[*]}) and not root (run as root or install them)"
        exit 2
    fi
    log "installing with apt: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Do not let the packages' maintainer scripts start the host's containerd service.
    policy_made=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_made=1
    fi
    trap 'if (( policy_made )); then rm -f /usr/sbin/policy-rc.d; fi' EXIT
    apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold --no-install-recommends)
    if ! apt-get install "${apt_opts[@]}" "${missing[@]}" >/tmp/chainop-apt.$$.log 2>&1; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -q >>/tmp/chainop-apt.$$.log 2>&1 || true
        apt-get install "${apt_opts[@]}" "${missing[@]}" >>/tmp/chainop-apt.$$.log 2>&1 \
            || { tail -n 20 /tmp/chainop-apt.$$.log >&2; log "ERROR: apt-get install ${missing[*]} failed (log /tmp/chainop-apt.$$.log)"; exit 1; }
    fi
    rm -f /tmp/chainop-apt.$$.log
fi
for p in "${pkgs[@]}"; do
    installed "$p" || { log "ERROR: $p is still not installed"; exit 1; }
    log "  $p $(version "$p")"
done
