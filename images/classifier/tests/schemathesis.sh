#!/usr/bin/env bash
# Tests the classifier against its own OpenAPI description: starts the release binary on
# loopback and runs schemathesis (pinned, from PyPI) against /openapi.json. Fails on any
# 5xx, on any response whose status, content type, headers or body the document does not
# describe, and on any request that breaks the schema yet is accepted.
# Needs images/classifier/build.sh to have been run.
# Environment: CLASSIFIER_BIN (default dist/classifier), MAX_EXAMPLES (per operation,
# default 40), IMGFORGE_CACHE, PYTHON.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIST=$(cd "$HERE/.." && pwd)/dist
CACHE=${IMGFORGE_CACHE:-/var/cache/imgforge}
VENV=$CACHE/venv-classifier-schemathesis
PYTHON=${PYTHON:-python3}
BIN=${CLASSIFIER_BIN:-$DIST/classifier}
MAX_EXAMPLES=${MAX_EXAMPLES:-40}
REQS=$HERE/schemathesis-requirements.txt

log() { printf 'schemathesis.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
for f in "$BIN" "$DIST/model/efficientnet-lite0.onnx"; do
    [[ -e $f ]] || die "$f is missing: run images/classifier/build.sh first"
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
TOKEN=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')
# Small limits, so that schemathesis also meets the refusals.
PORT=$PORT BIND_ADDR=127.0.0.1 MODEL_DIR=$DIST/model DATA_DIR=$WORK/data \
    HISTORY_TOKEN=$TOKEN HISTORY_MAX_ROWS=50 MAX_BODY_BYTES=65536 LOG_LEVEL=warn \
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

# positive_data_acceptance is left out: the document can say "binary", not "a valid
# PNG", so schema-valid random bytes are rightly refused with 415 not_an_image.
cd "$WORK"
status=0
"$VENV/bin/st" run "$base/openapi.json" \
    --checks all --exclude-checks positive_data_acceptance \
    --header "Authorization: Bearer $TOKEN" \
    --max-examples "$MAX_EXAMPLES" --seed 1 --workers 1 \
    --generation-database none --request-timeout 60 --no-color || status=$?
if ! kill -0 "$PID" 2>/dev/null; then
    cat "$WORK/service.log" >&2
    die "the service died during the run"
fi
if grep -q '"level":"ERROR"' "$WORK/service.log"; then
    grep '"level":"ERROR"' "$WORK/service.log" >&2
    die "the service logged errors"
fi
exit "$status"
