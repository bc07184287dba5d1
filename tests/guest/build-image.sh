#!/bin/bash
# Builds the guest test image: a Debian cloud-style disk standing in for an Ubuntu cloud
# image (no Ubuntu archive is reachable where the tests run). cloud-init (NoCloud only),
# Docker, nginx, certbot, UFW and a test-only Pebble ACME server; no deployment baked in.
#
#   tests/guest/build-image.sh SUITE OUTDIR [bare]      SUITE = bookworm | trixie
#
# `bare` leaves out Docker, nginx, certbot and UFW (what a plain cloud image lacks), for the
# tests that install them from Debian's mirror; apt points at it either way.
#
# Output, cached in ${IMGFORGE_CACHE:-/var/cache/imgforge}/images/SUITE-DIGEST/ (DIGEST =
# sha256 of this script and of rootfs/) and symlinked into OUTDIR:
#   disk.qcow2         GPT disk, partition 1 = ext4 root labelled cloudimg-rootfs
#   vmlinuz, initrd.img, cmdline   for direct kernel boot (the disk has no bootloader)
#   pebble-tls-ca.pem  CA of Pebble's HTTPS endpoints (for `imgforge render --acme-ca-bundle`)
#   image.json         suite, digest, build seconds
# The last line on stdout is the cache directory. Needs root, mmdebstrap, e2fsprogs,
# fdisk (sfdisk), qemu-utils, openssl.
set -euo pipefail

usage() {
    echo "usage: $0 bookworm|trixie OUTDIR [bare]" >&2
    exit 2
}
[ $# -eq 2 ] || [ $# -eq 3 ] || usage
suite=$1
outdir=$2
variant=${3:-full}
case "$variant" in full | bare) ;; *) usage ;; esac
case "$suite" in
# Suite-specific packages: networking, and trixie's docker.io no longer carries the CLI.
bookworm) net_pkgs="ifupdown,isc-dhcp-client" ;;
trixie) net_pkgs="netplan.io" docker_cli=docker-cli ;;
*) usage ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
cache_root="${IMGFORGE_CACHE:-/var/cache/imgforge}/images"

# The key covers every recipe input: contents, paths and the executable bit.
digest=$(
    cd "$here"
    {
        find build-image.sh rootfs -type f -print0 | sort -z | xargs -0 sha256sum
        find rootfs -type f -perm -u+x | sort
    } | sha256sum | cut -c1-16
)
digest=$(printf '%s %s' "$digest" "$variant" | sha256sum | cut -c1-16)
image="$cache_root/$suite-$variant-$digest"
root_size_mib=10240

build() {
    local work root pki start
    start=$(date +%s)
    work=$(mktemp -d "$cache_root/.work-$suite-XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    root="$work/root"
    pki="$work/pki"

    # Recommends are not installed by mmdebstrap, so everything a cloud image relies on
    # is listed. apparmor: Docker cannot start containers without it; e2fsprogs and
    # locales: cloud-init's resizefs and locale modules report errors without them.
    # The locale module also needs en_US.UTF-8 already generated: Debian's locale-gen
    # ignores the locale cloud-init passes it. The initramfs is rebuilt once the real
    # fstab is in place, so that it carries fsck for the ext4 root.
    local pkgs=(
        systemd-sysv udev dbus kmod linux-image-amd64 initramfs-tools zstd
        cloud-init cloud-guest-utils "$net_pkgs" iproute2 netbase iputils-ping
        openssh-server sudo curl ca-certificates gnupg openssl procps less
        apparmor unattended-upgrades e2fsprogs locales pebble
    )
    # borgbackup and prometheus-node-exporter: what --backup-repo and --metrics-token-file
    # install (the exporter on loopback, as a deployment configures it: rootfs/etc/systemd).
    [ "$variant" = bare ] || pkgs+=(docker.io ${docker_cli:-} nginx certbot python3-certbot-nginx ufw
        borgbackup prometheus-node-exporter)
    local include
    include=$(
        IFS=,
        echo "${pkgs[*]}"
    )
    echo "imgforge: mmdebstrap $suite into $root" >&2
    mmdebstrap --mode=root --variant=apt --format=directory \
        --aptopt='Acquire::Retries "3"' \
        --include="$include" \
        --customize-hook="cp -a --no-preserve=ownership '$here/rootfs/.' \"\$1/\"" \
        --customize-hook='sed -i "s/^# *\(en_US.UTF-8 UTF-8\)/\1/" "$1/etc/locale.gen"' \
        --customize-hook='chroot "$1" locale-gen' \
        --customize-hook='chroot "$1" update-initramfs -u -k all' \
        "$suite" "$root" \
        "deb http://deb.debian.org/debian $suite main" \
        "deb http://deb.debian.org/debian $suite-updates main" \
        "deb http://deb.debian.org/debian-security $suite-security main" >&2

    # `manage_etc_hosts: localhost` rewrites /etc/hosts from this template on every boot.
    echo "127.0.0.1 api.imgforge.test" >>"$root/etc/cloud/templates/hosts.debian.tmpl"
    echo "127.0.0.1 api.imgforge.test" >>"$root/etc/hosts"

    # Pebble's own HTTPS (ACME directory and management API) needs a certificate; a
    # throwaway CA made per build, whose certificate the tests hand to certbot.
    mkdir -p "$pki"
    # keyUsage and key identifiers: Python 3.13 (trixie) verifies strictly and refuses a CA
    # without them.
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=imgforge test Pebble TLS CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$pki/key.pem" -out "$pki/cert.csr" 2>/dev/null
    printf '%s\n' 'subjectAltName=DNS:localhost,DNS:pebble,IP:127.0.0.1' 'basicConstraints=CA:FALSE' \
        'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
        'subjectKeyIdentifier=hash' 'authorityKeyIdentifier=keyid' >"$pki/ext.cnf"
    openssl x509 -req -in "$pki/cert.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 3650 -extfile "$pki/ext.cnf" -out "$pki/cert.pem" 2>/dev/null
    install -m 0644 "$pki/cert.pem" "$root/etc/pebble/cert.pem"
    install -m 0600 "$pki/key.pem" "$root/etc/pebble/key.pem"

    systemctl --root="$root" enable pebble.service imgforge-test-dns.service imgforge-test-dnsapi.service >&2

    # Every VM booted from the image must be a new machine: its own host keys (cloud-init
    # makes them), machine-id and cloud-init instance state.
    rm -f "$root"/etc/ssh/ssh_host_*
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    rm -rf "$root"/var/lib/cloud/*
    rm -f "$root"/var/cache/apt/archives/*.deb

    local out="$work/out"
    mkdir -p "$out"
    cp "$pki/ca.pem" "$out/pebble-tls-ca.pem"
    # The kernel and initrd are read by QEMU on the host (direct kernel boot).
    install -m 0644 "$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n1)" "$out/vmlinuz"
    install -m 0644 "$(ls "$root"/boot/initrd.img-* | sort -V | tail -n1)" "$out/initrd.img"
    echo "root=LABEL=cloudimg-rootfs ro console=ttyS0,115200n8" >"$out/cmdline"

    # No loop devices or mounts: the filesystem is made from the directory into a file,
    # then copied into partition 1 of a GPT disk file (1 MiB offset, 1 MiB tail for the
    # backup GPT).
    truncate -s "${root_size_mib}M" "$work/root.ext4"
    mkfs.ext4 -q -L cloudimg-rootfs -d "$root" "$work/root.ext4"
    truncate -s "$((root_size_mib + 2))M" "$work/disk.raw"
    printf 'label: gpt\nstart=2048, size=%d, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=cloudimg-rootfs\n' \
        "$((root_size_mib * 2048))" | sfdisk --quiet "$work/disk.raw"
    dd if="$work/root.ext4" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
    rm -f "$work/root.ext4"
    qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$out/disk.qcow2"
    rm -f "$work/disk.raw"

    local seconds=$(($(date +%s) - start))
    printf '{"suite":"%s","variant":"%s","digest":"%s","build_seconds":%d}\n' "$suite" "$variant" "$digest" "$seconds" >"$out/image.json"
    chmod a-w "$out"/*
    rm -rf "$image"
    mv "$out" "$image"
    rm -rf "$work"
    trap - EXIT
    echo "imgforge: built $image in ${seconds}s" >&2
}

mkdir -p "$cache_root" "$outdir"
# Concurrent test runs wait for one build instead of racing two.
exec 9>"$cache_root/.$suite-$variant.lock"
flock 9
if [ -f "$image/image.json" ]; then
    echo "imgforge: reusing cached image $image" >&2
else
    build
fi
for f in disk.qcow2 vmlinuz initrd.img cmdline pebble-tls-ca.pem image.json; do
    ln -sfn "$image/$f" "$outdir/$f"
done
echo "$image"
