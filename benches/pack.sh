#!/usr/bin/env bash
# Pack throughput on a 256 MiB input (128 MiB incompressible + 128 MiB text), against
#   tar cf - DIR | gzip -1 | sha256sum          (the shell pipeline that does the same job)
#   skopeo copy --dest-compress ... dir:D oci-archive:OUT  (gzip level 1, same layers)
# on this machine in one run. Prints MB/s (10^6 bytes of input per second), best of
# RUNS (default 3), with the CPU seconds that run used. Usage: benches/pack.sh   (from the repository root)
# Environment: RUNS, BENCH_DIR (default /var/cache/imgforge/bench-pack), IMGFORGE
# (a prebuilt binary; default: cargo build --release).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-/var/cache/imgforge/bench-pack}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/imgforge/target}

if [[ -z ${IMGFORGE:-} ]]; then
    (cd "$ROOT" && cargo build --release --quiet --bin imgforge)
    IMGFORGE=$CARGO_TARGET_DIR/release/imgforge
fi

IN=$WORK/input
mkdir -p "$IN/dist/text"
if [[ ! -f $IN/.complete ]]; then
    echo "generating the 256 MiB input in $IN" >&2
    head -c $((128 << 20)) /dev/urandom >"$IN/dist/random.bin"
    # Text: words drawn from a fixed vocabulary with a seeded generator, in 8 files.
    python3 - "$IN/dist/text" <<'PY'
import random, sys
rng = random.Random(42)
words = [w for w in open("/usr/share/dict/words").read().split() if w.isascii()] \
    if __import__("os").path.exists("/usr/share/dict/words") else \
    ["".join(rng.choice("etaoinshrdlucmfwypvbgkqjxz") for _ in range(rng.randint(2, 10))) for _ in range(20000)]
for i in range(8):
    with open(f"{sys.argv[1]}/part{i}.txt", "w") as f:
        left = 16 << 20
        while left > 0:
            line = " ".join(rng.choice(words) for _ in range(12)) + "\n"
            line = line[:left]
            f.write(line)
            left -= len(line)
PY
    cat >"$IN/image.yaml" <<'YAML'
name: bench/pack:1
user: { name: bench, uid: 1000, gid: 1000 }
entrypoint: [/bin/true]
layers:
  - name: random
    files: [{ src: dist/random.bin, dest: /data/random.bin }]
  - name: text
    files: [{ src: dist/text, dest: /data/text }]
YAML
    touch "$IN/.complete"
fi
BYTES=$(du -sb "$IN/dist" | cut -f1)
cat "$IN"/dist/random.bin "$IN"/dist/text/* >/dev/null # warm the page cache

OUT=$WORK/out
rm -rf "$OUT" && mkdir -p "$OUT"

# Runs a shell command RUNS times; prints "wall cpu" seconds of the fastest run
# (cpu = user + sys of the command and its children, steadier on a busy machine).
best() {
    local best= line
    for _ in $(seq "$RUNS"); do
        /usr/bin/time -f "%e %U %S" -o "$OUT/time" bash -c "$1" >/dev/null 2>&1
        line=$(awk '{ printf "%s %.2f", $1, $2 + $3 }' "$OUT/time")
        if [[ -z $best ]] || (($(echo "${line%% *} < ${best%% *}" | bc -l))); then best=$line; fi
    done
    echo "$best"
}

report() { # label "wall cpu" output-file
    local wall=${2%% *} cpu=${2##* }
    printf '%-44s %6.2f s wall %6.2f s cpu %7.1f MB/s  output %6.1f MB\n' "$1" "$wall" "$cpu" \
        "$(echo "$BYTES / $wall / 1000000" | bc -l)" "$(echo "$(stat -c %s "$3") / 1000000" | bc -l)"
}

echo "input: $BYTES bytes; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); best of $RUNS" >&2

export IMGFORGE IN OUT
report "imgforge pack (gzip level 2, default)" "$(best '"$IMGFORGE" pack "$IN" -o "$OUT/gz.tar"')" "$OUT/gz.tar"
report "imgforge pack --level 1" "$(best '"$IMGFORGE" pack "$IN" -o "$OUT/gz1.tar" --level 1')" "$OUT/gz1.tar"
report "imgforge pack --level 6" "$(best '"$IMGFORGE" pack "$IN" -o "$OUT/gz6.tar" --level 6')" "$OUT/gz6.tar"
report "imgforge pack --compression zstd (level 3)" \
    "$(best '"$IMGFORGE" pack "$IN" -o "$OUT/zst.tar" --compression zstd')" "$OUT/zst.tar"
report "imgforge pack --compression none" \
    "$(best '"$IMGFORGE" pack "$IN" -o "$OUT/none.tar" --compression none')" "$OUT/none.tar"
report "tar cf - DIR | gzip -1 | sha256sum" \
    "$(best 'tar cf - -C "$IN" dist | gzip -1 | tee "$OUT/pipe.tar.gz" | sha256sum')" "$OUT/pipe.tar.gz"

if command -v skopeo >/dev/null; then
    rm -rf "$OUT/dir" && skopeo copy --quiet "oci-archive:$OUT/none.tar" "dir:$OUT/dir"
    report "skopeo copy dir: oci-archive: (gzip level 1)" \
        "$(best 'rm -f "$OUT/skopeo.tar"; skopeo copy --quiet --dest-compress --dest-compress-format gzip \
            --dest-compress-level 1 "dir:$OUT/dir" "oci-archive:$OUT/skopeo.tar"')" "$OUT/skopeo.tar"
fi
