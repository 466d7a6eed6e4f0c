#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and helm from the Go module proxy, and
# (only when asked) the node's kubelet and kube-scheduler from the same module.
#
#   hack/cluster-build.sh            control plane + helm (what cluster-up needs)
#   hack/cluster-build.sh node       kubelet + kube-scheduler only (what node-up adds)
#   NODE=1 hack/cluster-build.sh     all of them
#
# No Docker and no GitHub downloads: k8s.io/kubernetes is required as a Go module from a
# tiny module of our own (<cache>/k8s-build/<version>/), with a `replace` for every staging
# module (k8s.io/api, k8s.io/apiserver, ...) pinned to the published v0.N.P, derived from
# the release's own go.mod. Binaries land in <cache>/bin/; a stamp file per component skips
# rebuilding when the right version is already there.
#
# <cache> is the user cache folder, not the checkout: every clone on a machine (CI's fresh
# clone included) shares one build, so only a machine's first run pays for it. Builds of
# heavy things take <cache>/build.lock, so two of them never compete for 2 cores.
#
# Environment overrides:
#   K8S_VERSION   (default v1.36.3)   HELM_VERSION (default v3.22.0)
#   CHAINOP_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/chainop)
#   FORCE=1       rebuild even if the stamps match
#   SKIP_HELM=1   skip helm
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_VERSION="${K8S_VERSION:-v1.36.3}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${CHAINOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chainop}"
BIN="$CACHE/bin"
FORCE="${FORCE:-0}"

log() { printf '[cluster-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; [ -z "${FAILURE_REPORT:-}" ] || echo "cluster-build: $*" >>"$FAILURE_REPORT"; exit 1; }

GO_READY=0
setup_go() {  # the Go environment; only needed (and only probed) when something must be built
    (( GO_READY )) && return
    GO_READY=1
    command -v go >/dev/null || die "go is not installed (need Go >= 1.25 to build $K8S_VERSION)"

    # A project-local Go environment: reusable, never depends on ~/go.
    export GOPATH="$CACHE/go"
    export GOMODCACHE="$GOPATH/pkg/mod"
    export GOCACHE="$CACHE/go/build-cache"
    export GOTOOLCHAIN=local          # never download a toolchain
    export GOFLAGS="-mod=mod -buildvcs=false"
    export CGO_ENABLED=0
    export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
    if [[ -z "${GOSUMDB:-}" ]]; then
        # The checksum database is not reachable from every machine; the proxy still is.
        if curl -fsS -m 5 -o /dev/null "https://sum.golang.org/lookup/golang.org/x/text@v0.3.0" 2>/dev/null; then
            export GOSUMDB=sum.golang.org
        else
            log "sum.golang.org unreachable: GOSUMDB=off (modules come from $GOPROXY only)"
            export GOSUMDB=off
        fi
    fi
    mkdir -p "$BIN" "$GOPATH" "$GOCACHE"

    # Go >= 1.27 with Kubernetes >= 1.36 serves broken OpenAPI unless json v2 is disabled.
    go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
    k8s_minor="$(echo "$K8S_VERSION" | sed -E 's/^v1\.([0-9]+).*/\1/')"
    if (( go_minor >= 27 && k8s_minor >= 36 )); then
        export GOEXPERIMENT="${GOEXPERIMENT:+$GOEXPERIMENT,}nojsonv2"
        log "Go 1.$go_minor + Kubernetes 1.$k8s_minor: GOEXPERIMENT=$GOEXPERIMENT"
    fi
}

stamp_ok() {  # stamp_ok <name> <version> <binary>...
    local name="$1" version="$2"; shift 2
    [[ "$FORCE" == 1 ]] && return 1
    [[ -f "$BIN/.stamp-$name" && "$(cat "$BIN/.stamp-$name")" == "$version" ]] \
        && all_executable "$BIN" "$@"
}

all_executable() {  # all_executable <dir> <binary>...
    local dir="$1"; shift
    local b; for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

# Run `go build -v`, printing a progress line every 100 packages (full log kept on disk).
go_build() {  # go_build <logfile> <go build args...>
    local logfile="$1"; shift
    local start=$SECONDS
    set +e
    go build -v "$@" 2>&1 | tee "$logfile" | awk -v start="$(date +%s)" '
        /^#|: / { print "    " $0; fflush(); next }
        { n++; if (n % 100 == 0) { printf "    ... %d packages compiled (%ds, last: %s)\n", n, systime() - start, $0; fflush() } }'
    local rc=${PIPESTATUS[0]}
    set -e
    (( rc == 0 )) || die "go build failed (rc=$rc), see $logfile"
    log "  done in $((SECONDS - start))s"
}

K8S_MOD_READY=0
prepare_k8s_module() {  # the tiny module that requires k8s.io/kubernetes (all four commands)
    (( K8S_MOD_READY )) && return
    K8S_MOD_READY=1
    setup_go
    K8S_MOD="$CACHE/k8s-build/$K8S_VERSION"
    local mod="$K8S_MOD"
    local staging_version="v0.${K8S_VERSION#v1.}"
    mkdir -p "$mod"
    log "fetching k8s.io/kubernetes@$K8S_VERSION go.mod from $GOPROXY"
    local kmod
    kmod="$(cd "$mod" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
        | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
    [[ -f "$kmod" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
    local go_line; go_line="$(grep -E '^go [0-9]' "$kmod" | head -1)"
    log "release go.mod says '$go_line'; local toolchain is $(go env GOVERSION)"

    # Every staging module (k8s.io/X => ./staging/src/k8s.io/X) -> k8s.io/X v0.N.P
    local replaces
    replaces="$(sed -nE 's#^[[:space:]]*(k8s\.io/[A-Za-z0-9._-]+)[[:space:]]+=>[[:space:]]+\./staging/.*#\t\1 => \1 '"$staging_version"'#p' "$kmod")"
    [[ -n "$replaces" ]] || die "found no staging replace directives in $kmod"
    local tools
    tools="$(cat <<'EOF'
//go:build tools

// Package tools pins the Kubernetes commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
)"
    # Already prepared for this version (a tidy go.mod with our replaces and all commands)?
    if [[ -f "$mod/go.sum" && -f "$mod/tools.go" && "$(cat "$mod/tools.go")" == "$tools" ]] \
        && grep -q "^require k8s.io/kubernetes $K8S_VERSION\$\|k8s.io/kubernetes $K8S_VERSION\$" "$mod/go.mod" 2>/dev/null \
        && grep -q "=> k8s.io/api $staging_version" "$mod/go.mod"; then
        log "module $mod already prepared"
        return
    fi
    log "pinning $(wc -l <<<"$replaces") staging modules to $staging_version"
    cat >"$mod/go.mod" <<EOF
// Generated by hack/cluster-build.sh: builds Kubernetes $K8S_VERSION from the module proxy.
module chainop.dev/k8s-build

$go_line

require k8s.io/kubernetes $K8S_VERSION

replace (
$replaces
)
EOF
    printf '%s\n' "$tools" >"$mod/tools.go"
    log "resolving the module graph (go mod tidy; downloads ~hundreds of modules the first time)"
    (cd "$mod" && go mod tidy -e 2>&1 | grep -v '^go: downloading' | sed 's/^/    /' >&2 || true)
}

build_k8s_commands() {  # build_k8s_commands <stamp> <command>...: serially (2 cores)
    local stamp="$1"; shift
    if stamp_ok "$stamp" "$K8S_VERSION" "$@"; then
        log "$* $K8S_VERSION already built"
        return
    fi
    prepare_k8s_module
    local k8s_minor; k8s_minor="$(echo "$K8S_VERSION" | sed -E 's/^v1\.([0-9]+).*/\1/')"
    local pkg=k8s.io/component-base/version
    local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1"
    ldflags+=" -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
    ldflags+=" -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
    local c
    for c in "$@"; do
        log "building $c $K8S_VERSION (first time: minutes; progress every 100 packages)"
        (cd "$K8S_MOD" && go_build "$CACHE/k8s-build/$c.log" -trimpath -ldflags "$ldflags" \
            -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c")
        mv -f "$BIN/$c.tmp" "$BIN/$c"
        "$BIN/$c" --version >&2
    done
    echo "$K8S_VERSION" >"$BIN/.stamp-$stamp"
}

build_kubernetes() { build_k8s_commands kubernetes kube-apiserver kube-controller-manager; }
# The node's kubelet and scheduler: same module and Go cache, so after the apiserver most
# packages are already compiled.
build_node() { build_k8s_commands node kubelet kube-scheduler; }

build_helm() {
    if stamp_ok helm "$HELM_VERSION" helm; then
        log "helm $HELM_VERSION already built"
        return
    fi
    setup_go
    local major="${HELM_VERSION%%.*}"   # v3 / v4
    local mod="$CACHE/helm-build/$HELM_VERSION"
    mkdir -p "$mod"
    cat >"$mod/go.mod" <<EOF
// Generated by hack/cluster-build.sh
module chainop.dev/helm-build

go 1.25.0

require helm.sh/helm/$major $HELM_VERSION
EOF
    cat >"$mod/tools.go" <<EOF
//go:build tools

// Package tools pins the helm command this module builds.
package tools

import _ "helm.sh/helm/$major/cmd/helm"
EOF
    log "resolving helm $HELM_VERSION"
    (cd "$mod" && go mod tidy -e 2>&1 | grep -v '^go: downloading' | sed 's/^/    /' >&2 || true)
    local ver_pkg="helm.sh/helm/$major/internal/version"
    log "building helm $HELM_VERSION"
    (cd "$mod" && go_build "$CACHE/helm-build/helm.log" -trimpath \
        -ldflags "-s -w -X $ver_pkg.version=$HELM_VERSION -X $ver_pkg.gitTreeState=clean" \
        -o "$BIN/helm.tmp" "helm.sh/helm/$major/cmd/helm")
    mv -f "$BIN/helm.tmp" "$BIN/helm"
    "$BIN/helm" version --short >&2 || true
    echo "$HELM_VERSION" >"$BIN/.stamp-helm"
}

built_kubernetes() { stamp_ok kubernetes "$K8S_VERSION" kube-apiserver kube-controller-manager; }
built_helm() { stamp_ok helm "$HELM_VERSION" helm; }
built_node() { stamp_ok node "$K8S_VERSION" kubelet kube-scheduler; }

t0=$SECONDS
mkdir -p "$CACHE"
comps=()
for arg in "$@"; do
    case "$arg" in
        node|kubernetes|helm) comps+=("$arg") ;;
        *) die "usage: $0 [kubernetes] [helm] [node]   (no argument: kubernetes + helm)" ;;
    esac
done
if (( ${#comps[@]} == 0 )); then
    comps=(kubernetes)
    [[ "${SKIP_HELM:-0}" == 1 ]] || comps+=(helm)
    [[ "${NODE:-0}" == 1 ]] && comps+=(node)
fi
# Nothing to build: return at once, without waiting for the lock (another heavy build,
# e.g. llama-server's, may hold it for many minutes).
missing=()
for c in "${comps[@]}"; do "built_$c" || missing+=("$c"); done
if (( ${#missing[@]} == 0 )); then
    log "already built in $BIN: ${comps[*]} (Kubernetes $K8S_VERSION, helm $HELM_VERSION)"
    exit 0
fi
exec 9>"$CACHE/build.lock"
if ! flock -n 9; then
    log "another build holds $CACHE/build.lock; waiting for it (2 cores: one heavy build at a time)"
    flock 9
fi
log "cache: $CACHE (Kubernetes $K8S_VERSION, helm $HELM_VERSION; building: ${missing[*]})"
for c in "${missing[@]}"; do "build_$c"; done
log "all binaries ready in $BIN ($((SECONDS - t0))s)"
