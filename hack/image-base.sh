#!/usr/bin/env bash
# Make the two images that no registry can give us here, as docker-archive tarballs in the
# user cache (<cache>/images/), without any container engine:
#
#   localhost/chainop-pause:1        a static pause() loop (C, gcc -static): the node's
#                                    sandbox image; pods can also run it with a command
#   localhost/chainop-base:bookworm  Debian bookworm minbase + python3 (3.11) + the host's
#                                    CA bundle (so pip in a build verifies TLS behind the
#                                    host's proxy), made with mmdebstrap
#
#   hack/image-base.sh [pause] [base]     (default: both; each is skipped when cached)
#   FORCE=1 hack/image-base.sh base       rebuild
#
# The archives are single-layer "docker save" tarballs: `ctr images import`, `buildah pull
# docker-archive:` and `docker load` all take them. The mmdebstrap run takes
# <cache>/build.lock (one heavy build at a time on 2 cores).
set -euo pipefail
LOG_TAG=image-base
# shellcheck source=hack/node-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/node-lib.sh"
FORCE="${FORCE:-0}"
# Bump when what goes into an image changes: a stale cached archive is then rebuilt.
PAUSE_REV=1
BASE_REV=1

# docker_archive <layer.tar> <image ref> <config JSON "config" object> <out.tar>
docker_archive() {
    local layer="$1" ref="$2" cfg="$3" out="$4" tmp diff cfg_sha
    tmp="$(mktemp -d "$IMAGES/.archive.XXXXXX")"
    diff="$(sha256sum "$layer" | cut -d' ' -f1)"
    mkdir "$tmp/$diff"
    ln "$layer" "$tmp/$diff/layer.tar" 2>/dev/null || cp "$layer" "$tmp/$diff/layer.tar"
    printf '{"architecture":"amd64","os":"linux","created":"%s","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"hack/image-base.sh"}]}' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$cfg" "$diff" >"$tmp/config.json"
    cfg_sha="$(sha256sum "$tmp/config.json" | cut -d' ' -f1)"
    mv "$tmp/config.json" "$tmp/$cfg_sha.json"
    printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' "$cfg_sha" "$ref" "$diff" >"$tmp/manifest.json"
    tar -C "$tmp" -cf "$out.tmp" manifest.json "$cfg_sha.json" "$diff"
    mv -f "$out.tmp" "$out"
    rm -rf "$tmp"
}

stamp_ok() { [[ "$FORCE" != 1 && -f "$IMAGES/$1.tar" && "$(cat "$IMAGES/.stamp-$1" 2>/dev/null)" == "$2" ]]; }

build_pause() {
    if stamp_ok pause "$PAUSE_REV"; then log "pause image cached: $IMAGES/pause.tar"; return; fi
    command -v gcc >/dev/null && [[ -f /usr/lib/x86_64-linux-gnu/libc.a || -f /usr/lib/libc.a ]] \
        || "$REPO_ROOT/hack/node-deps.sh" gcc libc6-dev
    local t0=$SECONDS tmp
    tmp="$(mktemp -d)"
    cat >"$tmp/pause.c" <<'EOF'
/* chainop's pause: holds a pod's namespaces, reaps zombies, exits on INT/TERM. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
    return 0;
}
EOF
    mkdir -p "$tmp/root"
    gcc -static -Os -s -o "$tmp/root/pause" "$tmp/pause.c"
    tar -C "$tmp/root" --owner=0 --group=0 --numeric-owner -cf "$tmp/layer.tar" pause
    docker_archive "$tmp/layer.tar" "$PAUSE_IMAGE" \
        '{"Entrypoint":["/pause"],"User":"65535:65535","Env":["PATH=/"]}' "$IMAGES/pause.tar"
    rm -rf "$tmp"
    echo "$PAUSE_REV" >"$IMAGES/.stamp-pause"
    log "pause image built in $((SECONDS - t0))s: $IMAGES/pause.tar ($PAUSE_IMAGE)"
}

build_base() {
    if stamp_ok base "$BASE_REV"; then log "base image cached: $IMAGES/base.tar"; return; fi
    command -v mmdebstrap >/dev/null || "$REPO_ROOT/hack/node-deps.sh" mmdebstrap
    exec 8>"$CACHE/build.lock"
    if ! flock -n 8; then
        log "another build holds $CACHE/build.lock; waiting for it (one heavy build at a time)"
        flock 8
    fi
    local t0=$SECONDS tmp ca=/etc/ssl/certs/ca-certificates.crt
    [[ -f "$ca" ]] || die "no CA bundle at $ca"
    tmp="$(mktemp -d)"
    # The host's own Debian sources (same mirror, same snapshot) when it is a bookworm host.
    local sources=()
    if [[ -f /etc/apt/sources.list.d/debian.sources ]] && grep -q 'bookworm' /etc/apt/sources.list.d/debian.sources; then
        sources=(/etc/apt/sources.list.d/debian.sources)
    fi
    log "making the base image with mmdebstrap (Debian bookworm minbase + python3; ~1 min)"
    mmdebstrap --variant=minbase --format=tar --quiet \
        --include=python3,python3-venv,ca-certificates \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --customize-hook="copy-in $ca /etc/ssl/certs" \
        --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" > "$1/etc/pip.conf"' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        bookworm "$tmp/layer.tar" "${sources[@]}" >&2
    docker_archive "$tmp/layer.tar" "$BASE_IMAGE" \
        '{"Cmd":["python3"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]}' \
        "$IMAGES/base.tar"
    rm -rf "$tmp"
    echo "$BASE_REV" >"$IMAGES/.stamp-base"
    log "base image built in $((SECONDS - t0))s: $IMAGES/base.tar ($BASE_IMAGE, $(du -h "$IMAGES/base.tar" | cut -f1))"
}

mkdir -p "$IMAGES"
what=("$@")
(( ${#what[@]} )) || what=(pause base)
for w in "${what[@]}"; do
    case "$w" in
        pause) build_pause ;;
        base) build_base ;;
        *) die "usage: $0 [pause] [base]" ;;
    esac
done
