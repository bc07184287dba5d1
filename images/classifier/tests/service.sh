# Sourced by the classifier's test scripts: a pinned venv, and the release binary serving
# on loopback until the script exits. Needs images/classifier/build.sh to have run.
# Environment: CLASSIFIER_BIN (default dist/classifier), IMGFORGE_CACHE, PYTHON.

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIST=$(cd "$HERE/.." && pwd)/dist
CACHE=${IMGFORGE_CACHE:-/var/cache/imgforge}
PYTHON=${PYTHON:-python3}
BIN=${CLASSIFIER_BIN:-$DIST/classifier}
NAME=$(basename "$0")

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The venv $1 with exactly the packages pinned in requirements file $2 (made anew when
# the file changes).
pinned_venv() { # venv requirements
    local venv=$1 reqs=$2 stamp=$1/.requirements.sha256 want
    want=$(sha256sum "$reqs" | cut -d' ' -f1)
    if [[ ! -f $stamp ]] || [[ $(cat "$stamp") != "$want" ]]; then
        log "creating $venv"
        rm -rf "$venv"
        "$PYTHON" -m venv "$venv"
        "$venv/bin/pip" install --disable-pip-version-check --quiet --no-deps -r "$reqs"
        echo "$want" >"$stamp"
    fi
}

# Starts the service with the environment given as NAME=VALUE arguments on a free
# loopback port, waits for /health, and sets BASE, PID, WORK (its data and log).
start_service() { # python [NAME=VALUE...]
    local python=$1 port
    shift
    for f in "$BIN" "$DIST/model/efficientnet-lite0.onnx"; do
        [[ -e $f ]] || die "$f is missing: run images/classifier/build.sh first"
    done
    WORK=$(mktemp -d)
    trap 'stop_service' EXIT
    port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    env PORT="$port" BIND_ADDR=127.0.0.1 MODEL_DIR="$DIST/model" DATA_DIR="$WORK/data" "$@" \
        "$BIN" 2>"$WORK/service.log" &
    PID=$!
    BASE=http://127.0.0.1:$port
    for _ in $(seq 1 300); do
        if "$python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$BASE/health" 2>/dev/null; then
            return
        fi
        kill -0 "$PID" 2>/dev/null || { cat "$WORK/service.log" >&2; die "the service exited"; }
        sleep 0.2
    done
    die "the service did not answer /health within 60 s"
}

stop_service() {
    if [[ -n ${PID:-} ]]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "${WORK:-}"
}
