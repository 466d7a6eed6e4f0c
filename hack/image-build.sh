#!/usr/bin/env bash
# `make image`: build the project's Dockerfile without a Docker engine (buildah from
# Debian), FROM a locally made base image (no registry is reachable), and import it into
# the node's containerd when a node is up:
#
#   hack/image-build.sh                 -> localhost/chainop:dev
#   IMAGE=localhost/chainop:x hack/image-build.sh
#
# Then: helm install chainop charts/chainop --set image.repository=localhost/chainop \
#         --set image.tag=dev --set image.pullPolicy=Never
#
# buildah runs with --runtime runc (its default crun fails on this hybrid cgroup layout:
# "cgroups in hybrid mode not supported"), --network host (no CNI config for builds),
# cgroupfs, --layers (the dependency layer is reused: a code change rebuilds in seconds),
# and a private storage under <cache>/buildah. The image is also saved as
# <cache>/images/app.tar, which hack/node-up.sh imports into a new node.
# Takes <cache>/build.lock while building (one heavy build at a time on 2 cores).
set -euo pipefail
LOG_TAG=image
CANNOT_WHAT="build the image"
# shellcheck source=hack/node-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/node-lib.sh"
IMAGE="${IMAGE:-$APP_IMAGE}"
CONTEXT="${CONTEXT:-$REPO_ROOT}"   # the build context (another checkout, a copy)
t0=$SECONDS

(( EUID == 0 )) || cannot "not root (buildah here runs as root with a private storage)"
# runc too: buildah runs its RUN steps with it (below), and on a machine that never had a
# node, nothing else installed it (buildah then fails with "exec: no command").
command -v buildah >/dev/null && command -v mmdebstrap >/dev/null && command -v runc >/dev/null \
    || "$REPO_ROOT/hack/node-deps.sh" buildah mmdebstrap runc \
    || { rc=$?; (( rc == 2 )) && exit 2; die "installing buildah/mmdebstrap/runc failed"; }
"$REPO_ROOT/hack/image-base.sh" pause base

# buildah keeps a blob-info cache in /var/lib/containers/cache whatever --root says:
# remove it afterwards unless it was there before.
if [[ ! -e /var/lib/containers ]]; then trap 'rm -rf /var/lib/containers' EXIT; fi
B=(buildah --root "$CACHE/buildah/root" --runroot "$CACHE/buildah/runroot" --storage-driver overlay)
mkdir -p "$CACHE/buildah"

exec 8>"$CACHE/build.lock"
if ! flock -n 8; then
    log "another build holds $CACHE/build.lock; waiting for it (one heavy build at a time)"
    flock 8
fi

# The base image into buildah's storage (again only when the archive changed).
mark="$(stat -c '%s %Y' "$IMAGES/base.tar")"
if [[ "$(cat "$CACHE/buildah/base.imported" 2>/dev/null)" != "$mark" ]] \
    || ! "${B[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    log "loading $BASE_IMAGE into buildah's storage"
    "${B[@]}" pull --quiet "docker-archive:$IMAGES/base.tar" >/dev/null
    echo "$mark" >"$CACHE/buildah/base.imported"
fi

log "building $IMAGE from Dockerfile (FROM $BASE_IMAGE)"
tb=$SECONDS
"${B[@]}" build --layers --pull=false \
    --runtime "$(command -v runc)" --isolation oci --cgroup-manager cgroupfs --network host \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" \
    -t "$IMAGE" -f "$CONTEXT/Dockerfile" "$CONTEXT" 2>&1 \
    | grep -vE '^(Copying (blob|config)|Writing manifest|Storing signatures)' | sed 's/^/    /' >&2
(( PIPESTATUS[0] == 0 )) || die "buildah build failed"
build_s=$((SECONDS - tb))

# Save it where node-up finds it, and into a running node's containerd (both skipped when
# the build produced the same image as last time).
te=$SECONDS
id="$("${B[@]}" inspect --type image --format '{{.FromImageID}}' "$IMAGE" 2>/dev/null || true)"
[[ -n "$id" ]] || id="$("${B[@]}" images --noheading --no-trunc --format '{{.ID}}' "$IMAGE" | head -1)"
if [[ -f "$IMAGES/app.tar" && "$(cat "$IMAGES/app.id" 2>/dev/null)" == "$id $IMAGE" ]]; then
    log "unchanged image ($id): $IMAGES/app.tar kept"
else
    rm -f "$IMAGES/app.tar.tmp"
    "${B[@]}" push --quiet "$IMAGE" "docker-archive:$IMAGES/app.tar.tmp:$IMAGE" >/dev/null
    mv -f "$IMAGES/app.tar.tmp" "$IMAGES/app.tar"
    echo "$id $IMAGE" >"$IMAGES/app.id"
fi
flock -u 8
save_s=$((SECONDS - te))
import_s=-
if [[ "$(cat "$CTRD_DIR/imported-${IMAGE//[\/:]/_}" 2>/dev/null)" == "$(stat -c '%s %Y' "$IMAGES/app.tar")" ]] \
    && ctr_ images ls -q 2>/dev/null | grep -qxF "$IMAGE"; then
    log "$IMAGE already in the node's containerd"
elif ctr --address "$CTRD_SOCK" version >/dev/null 2>&1; then
    ti=$SECONDS
    ctr_ images import "$IMAGES/app.tar" >/dev/null
    stat -c '%s %Y' "$IMAGES/app.tar" >"$CTRD_DIR/imported-${IMAGE//[\/:]/_}"
    import_s=$((SECONDS - ti))
    log "imported $IMAGE into the node's containerd (${import_s}s)"
else
    log "no node running: $IMAGES/app.tar is imported by the next hack/node-up.sh"
fi
size="$("${B[@]}" images --format '{{.Size}}' "$IMAGE" 2>/dev/null | head -1)"
log "image $IMAGE ($size) in $((SECONDS - t0))s: build ${build_s}s, save ${save_s}s, import ${import_s}s"
log "helm: --set image.repository=${IMAGE%:*} --set image.tag=${IMAGE##*:} --set image.pullPolicy=Never"
