#!/usr/bin/env bash
# How fast imgforge writes a seed disk and bakes a disk image, on synthetic inputs:
#   seed:  a 40 MiB bundle onto a FAT and an ISO seed
#   build: a 64 MiB bundle into a 512 MiB GPT disk with an ext4 root, raw and qcow2
# Best of RUNS (default 3), release build. Needs e2fsprogs, fdisk, qemu-utils, xorriso.
# Usage: benches/bake.sh   (from the repository root). Environment: RUNS, BENCH_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-/var/cache/imgforge/bench-bake}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/imgforge/target}
(cd "$ROOT" && cargo build --release --quiet --bin imgforge)
IMGFORGE=$CARGO_TARGET_DIR/release/imgforge
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"

# A bundle `docker load` would take: manifest.json naming the image, and a layer.
bundle() { # size-MiB output
    mkdir -p b && head -c "$(($1 << 20))" /dev/urandom >b/layer.tar
    printf '[{"Config":"c.json","RepoTags":["bench/app:1"],"Layers":["layer.tar"]}]' >b/manifest.json
    tar -C b -cf "$2" manifest.json layer.tar && rm -rf b
}
ssh-keygen -q -t ed25519 -N '' -f key
flags=(--domain api.example.com --email ops@example.com --ssh-key key.pub)

best() { # label command...
    local label=$1 best=
    shift
    for _ in $(seq "$RUNS"); do
        local start end t
        start=$(date +%s.%N)
        "$@" >/dev/null 2>&1
        end=$(date +%s.%N)
        t=$(echo "$end - $start" | bc)
        if [ -z "$best" ] || [ "$(echo "$t < $best" | bc)" = 1 ]; then best=$t; fi
    done
    printf '%-40s %6.2f s\n' "$label" "$best"
}

bundle 40 seed.oci.tar
best "seed, 40 MiB bundle, FAT" "$IMGFORGE" seed "${flags[@]}" --bundle seed.oci.tar -o seed.img
best "seed, 40 MiB bundle, ISO" "$IMGFORGE" seed "${flags[@]}" --bundle seed.oci.tar --format iso -o seed.iso

bundle 64 build.oci.tar
truncate -s 512M base.raw
printf 'label: gpt\nstart=2048, size=1040384, name=root\n' | sfdisk -q base.raw
mkfs.ext4 -q -F -L cloudimg-rootfs -E offset=1048576 base.raw 520192k
best "build, 64 MiB bundle, raw" "$IMGFORGE" build --base base.raw "${flags[@]}" --bundle build.oci.tar -o out.raw
best "build, 64 MiB bundle, qcow2" "$IMGFORGE" build --base base.raw "${flags[@]}" --bundle build.oci.tar -o out.qcow2
