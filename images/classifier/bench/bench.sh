#!/usr/bin/env bash
# Latency and throughput of POST /predict for the Rust service (dist/classifier) and,
# side by side, the same ONNX model behind onnxruntime + FastAPI + uvicorn (app.py),
# at concurrency 1 and 2, loopback only, a bounded number of requests each.
# Needs images/classifier/build.sh to have been run. Not a test: it reports numbers.
# Environment: REQUESTS (per run, default 100), IMGFORGE_CACHE, PYTHON.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIST=$(cd "$HERE/.." && pwd)/dist
CACHE=${IMGFORGE_CACHE:-/var/cache/imgforge}
VENV=$CACHE/venv-classifier-bench
PYTHON=${PYTHON:-python3}
REQUESTS=${REQUESTS:-100}
IMAGE=$DIST/testdata/coffee.png

die() { printf 'bench.sh: error: %s\n' "$*" >&2; exit 1; }
for f in "$DIST/classifier" "$DIST/model/efficientnet-lite0.onnx" "$IMAGE"; do
    [[ -e $f ]] || die "$f is missing: run images/classifier/build.sh first"
done

stamp=$VENV/.requirements.sha256
want=$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)
if [[ ! -f $stamp ]] || [[ $(cat "$stamp") != "$want" ]]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --disable-pip-version-check --quiet --no-deps -r "$HERE/requirements.txt"
    echo "$want" >"$stamp"
fi

free_port() {
    "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_health() { # url
    for _ in $(seq 1 600); do
        if "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    die "$1 did not come up"
}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

RUST_PORT=$(free_port)
PORT=$RUST_PORT BIND_ADDR=127.0.0.1 MODEL_DIR=$DIST/model DATA_DIR=$WORK/data \
    LOG_LEVEL=warn "$DIST/classifier" 2>"$WORK/rust.log" &
PIDS+=($!)
PY_PORT=$(free_port)
(cd "$HERE" && MODEL_DIR=$DIST/model exec "$VENV/bin/uvicorn" app:app --host 127.0.0.1 \
    --port "$PY_PORT" --log-level warning 2>"$WORK/python.log") &
PIDS+=($!)
wait_health "http://127.0.0.1:$RUST_PORT/health"
wait_health "http://127.0.0.1:$PY_PORT/health"

printf 'host: %s cores, %s\n' "$(nproc)" "$(uname -m)"
printf 'binary: %s bytes (dist/classifier, static, stripped)\n' "$(stat -c %s "$DIST/classifier")"
printf 'model:  %s bytes (efficientnet-lite0.onnx)\n' "$(stat -c %s "$DIST/model/efficientnet-lite0.onnx")"
printf 'image:  %s, %s requests per run after 5 warm-up requests\n\n' "$(basename "$IMAGE")" "$REQUESTS"
printf '%-28s %5s %9s %9s %9s %7s %s\n' service conc p50_ms p99_ms req/s errors top1
for conc in 1 2; do
    for svc in rust python; do
        if [[ $svc == rust ]]; then
            port=$RUST_PORT name="rust (axum + tract)"
        else
            port=$PY_PORT name="python (fastapi + ort)"
        fi
        out=$("$VENV/bin/python" "$HERE/load.py" "http://127.0.0.1:$port/predict" "$IMAGE" "$conc" "$REQUESTS")
        "$VENV/bin/python" -c '
import json, sys
r = json.loads(sys.argv[2])
print("{name:<28} {concurrency:>5} {p50_ms:>9} {p99_ms:>9} {rps:>9} {errors:>7} {top1}".format(name=sys.argv[1], **r))
' "$name" "$out"
    done
done
for pid in "${PIDS[@]}"; do
    printf 'peak RSS pid %s: %s\n' "$pid" "$(grep VmHWM /proc/"$pid"/status 2>/dev/null | awk '{print $2, $3}' || echo '?')"
done
