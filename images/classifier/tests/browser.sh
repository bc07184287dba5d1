#!/usr/bin/env bash
# The classifier's pages in headless Chromium (tests/browser.py): starts the release
# binary on loopback, opens `/` and `/docs` as a person would, and keeps the screenshots.
# Needs images/classifier/build.sh to have been run, and Debian's chromium.
# Environment: CLASSIFIER_BIN (default dist/classifier), ARTIFACTS (where the screenshots
# go, default $IMGFORGE_CACHE/artifacts), IMGFORGE_CACHE, PYTHON, CHROMIUM.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIST=$(cd "$HERE/.." && pwd)/dist
CACHE=${IMGFORGE_CACHE:-/var/cache/imgforge}
VENV=$CACHE/venv-classifier-browser
PYTHON=${PYTHON:-python3}
BIN=${CLASSIFIER_BIN:-$DIST/classifier}
ARTIFACTS=${ARTIFACTS:-$CACHE/artifacts}
REQS=$HERE/browser-requirements.txt

log() { printf 'browser.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
for f in "$BIN" "$DIST/model/efficientnet-lite0.onnx" "$DIST/testdata/chelsea.png" "${CHROMIUM:-/usr/bin/chromium}"; do
    [[ -e $f ]] || die "$f is missing (images/classifier/build.sh; apt-get install chromium)"
done

stamp=$VENV/.requirements.sha256
want=$(sha256sum "$REQS" | cut -d' ' -f1)
if [[ ! -f $stamp ]] || [[ $(cat "$stamp") != "$want" ]]; then
    log "creating $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --disable-pip-version-check --quiet --no-deps -r "$REQS"
    echo "$want" >"$stamp"
fi

WORK=$(mktemp -d)
PID=
cleanup() {
    if [[ -n $PID ]]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PORT=$PORT BIND_ADDR=127.0.0.1 MODEL_DIR=$DIST/model DATA_DIR=$WORK/data LOG_LEVEL=warn \
    "$BIN" 2>"$WORK/service.log" &
PID=$!
base=http://127.0.0.1:$PORT
for _ in $(seq 1 300); do
    if "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$base/health" 2>/dev/null; then
        break
    fi
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/service.log" >&2; die "the service exited"; }
    sleep 0.2
done

mkdir -p "$ARTIFACTS"
"$VENV/bin/python" "$HERE/browser.py" "$base" "$DIST/testdata/chelsea.png" "$ARTIFACTS" || {
    cat "$WORK/service.log" >&2
    die "the browser test failed"
}
