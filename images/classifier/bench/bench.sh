#!/usr/bin/env bash
# Throughput, latency and peak memory of POST /predict for the Rust service
# (dist/classifier: axum + ONNX Runtime) and, side by side in the same run, the same ONNX
# model behind onnxruntime + FastAPI + uvicorn (app.py, WORKERS processes x 1 intra-op
# thread), at concurrency 1, 2 and 4, loopback only, a bounded number of requests each.
# Needs images/classifier/build.sh to have been run. Not a test: it reports numbers, as a
# Markdown table ready for the README. Run it on an otherwise idle machine: the load
# average at the start and end is printed so a busy run can be recognised.
# Environment: REQUESTS (per run, default 300), WARMUP (default 30), CONCURRENCY
# (default "1 2 4"), WORKERS (uvicorn workers, default 2), IMAGE (default chelsea.png),
# RUST_ENV (extra VAR=value settings for the Rust service), RUST_BIN (default
# dist/classifier; e.g. an older build to compare), IMGFORGE_CACHE, PYTHON.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIST=$(cd "$HERE/.." && pwd)/dist
CACHE=${IMGFORGE_CACHE:-/var/cache/imgforge}
VENV=$CACHE/venv-classifier-bench
PYTHON=${PYTHON:-python3}
REQUESTS=${REQUESTS:-300}
WARMUP=${WARMUP:-30}
CONCURRENCY=${CONCURRENCY:-1 2 4}
WORKERS=${WORKERS:-2}
IMAGE=${IMAGE:-$DIST/testdata/chelsea.png}
RUST_BIN=${RUST_BIN:-$DIST/classifier}
read -r -a RUST_ENV <<<"${RUST_ENV:-}"

die() { printf 'bench.sh: error: %s\n' "$*" >&2; exit 1; }
for f in "$RUST_BIN" "$DIST/model/efficientnet-lite0.onnx" "$IMAGE"; do
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

# A process and all its descendants.
tree() { # pid
    local pid=$1 child
    echo "$pid"
    for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do tree "$child"; done
}

# Peak RSS (VmHWM) of a process tree in MB, summed over its processes.
peak_rss_mb() { # pid
    local total=0 kb pid
    for pid in $(tree "$1"); do
        kb=$(awk '/^VmHWM/ {print $2}' /proc/"$pid"/status 2>/dev/null || echo 0)
        total=$((total + ${kb:-0}))
    done
    awk -v kb="$total" 'BEGIN {printf "%.0f", kb / 1024}'
}

# CPU time (user + system) of a process tree so far, in clock ticks.
cpu_ticks() { # pid
    local total=0 pid
    for pid in $(tree "$1"); do
        total=$((total + $(awk '{sub(/.*\) /, ""); print $12 + $13}' /proc/"$pid"/stat 2>/dev/null || echo 0)))
    done
    echo "$total"
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
# MALLOC_ARENA_MAX as image.yaml sets it.
env PORT="$RUST_PORT" BIND_ADDR=127.0.0.1 MODEL_DIR="$DIST/model" DATA_DIR="$WORK/data" \
    LOG_LEVEL=warn MALLOC_ARENA_MAX=2 "${RUST_ENV[@]}" "$RUST_BIN" 2>"$WORK/rust.log" &
RUST_PID=$!
PIDS+=("$RUST_PID")
PY_PORT=$(free_port)
(cd "$HERE" && MODEL_DIR=$DIST/model ORT_THREADS=1 exec "$VENV/bin/uvicorn" app:app \
    --host 127.0.0.1 --port "$PY_PORT" --workers "$WORKERS" --log-level warning \
    2>"$WORK/python.log") &
PY_PID=$!
PIDS+=("$PY_PID")
wait_health "http://127.0.0.1:$RUST_PORT/health"
wait_health "http://127.0.0.1:$PY_PORT/health"

cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)
printf 'host: %s cores (%s), %s; load average at start: %s\n' "$(nproc)" "$cpu" "$(uname -m)" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'rust: %s (%s bytes); %s\n' "$RUST_BIN" "$(stat -c %s "$RUST_BIN")" "${RUST_ENV[*]:-defaults}"
printf 'python: uvicorn --workers %s, onnxruntime %s, 1 intra-op thread each\n' "$WORKERS" \
    "$("$VENV/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)')"
printf 'image: %s (%s bytes), %s requests per run after %s warm-up requests\n\n' \
    "$(basename "$IMAGE")" "$(stat -c %s "$IMAGE")" "$REQUESTS" "$WARMUP"

for conc in $CONCURRENCY; do
    for svc in rust python; do
        if [[ $svc == rust ]]; then port=$RUST_PORT pid=$RUST_PID; else port=$PY_PORT pid=$PY_PID; fi
        before=$(cpu_ticks "$pid")
        "$VENV/bin/python" "$HERE/load.py" "http://127.0.0.1:$port/predict" \
            "$IMAGE" "$conc" "$REQUESTS" "$WARMUP" >"$WORK/result.$svc.$conc"
        echo $(($(cpu_ticks "$pid") - before)) >"$WORK/ticks.$svc.$conc"
    done
done
rust_mb=$(peak_rss_mb "$RUST_PID")
py_mb=$(peak_rss_mb "$PY_PID")

"$VENV/bin/python" - "$rust_mb" "$py_mb" "$CONCURRENCY" "$WORK" "$((REQUESTS + WARMUP))" \
    "$(getconf CLK_TCK)" "$(nproc)" <<'PY'
import json, os, sys
rust_mb, py_mb, levels, work = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4]
sent, hz, cores = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
results = {}
for svc in ("rust", "python"):
    for c in levels:
        with open(os.path.join(work, f"result.{svc}.{c}")) as f:
            results[f"{svc}.{c}"] = json.load(f)
        with open(os.path.join(work, f"ticks.{svc}.{c}")) as f:
            # The server's CPU time per request, warm-up requests included.
            results[f"{svc}.{c}"]["cpu_ms"] = int(f.read()) / hz / sent * 1000
print("| concurrency | Rust req/s, p50/p99 ms, CPU ms/req | Python (FastAPI + onnxruntime) req/s, p50/p99 ms, CPU ms/req | req/s ratio |")
print("|---|---|---|---|")
for c in levels:
    r, p = results[f"rust.{c}"], results[f"python.{c}"]
    cell = lambda x: f"{x['rps']}, {x['p50_ms']}/{x['p99_ms']}, {x['cpu_ms']:.1f}" + (f" ({x['errors']} errors)" if x["errors"] else "")
    print(f"| {c} | {cell(r)} | {cell(p)} | {r['rps'] / p['rps']:.2f} |")
print(f"\nPeak RSS: Rust {rust_mb} MB, Python {py_mb} MB (all processes).")
print(f"Top-1: Rust {results['rust.' + levels[0]]['top1']!r}, Python {results['python.' + levels[0]]['top1']!r}.")
# The moonshot: how much of the cores' capacity the Rust service turns into answers, taking
# a lone request's CPU time (concurrency 1) as what one answer costs.
single = results[f"rust.{levels[0]}"]["cpu_ms"]
reached = ", ".join(
    f"{results[f'rust.{c}']['rps'] * single / 1000 / cores:.0%} at {c}" for c in levels
)
print(f"Moonshot: req/s x {single:.1f} ms (CPU per request at concurrency {levels[0]}) / {cores} cores = {reached}.")
PY
printf 'load average at end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
