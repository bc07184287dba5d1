#!/usr/bin/env bash
# The test command: on a fresh Debian 12 machine (root), installs what the tests need,
# then runs every tier: lint, unit and CLI tests, real-tool checks, QEMU boot tests.
#
#   bash tests/ci.sh                          everything but the slow boot tier
#   IMGFORGE_BOOT_TESTS=0 bash tests/ci.sh    skip the QEMU boot tier
#   IMGFORGE_SLOW_TESTS=1 bash tests/ci.sh    the slow boot tier too
#
# Caches live outside the clone, so a second run is fast and a cold one still passes:
# CARGO_TARGET_DIR (default /var/cache/imgforge/target) and IMGFORGE_CACHE (default
# /var/cache/imgforge: downloads, the model venv, guest images).
set -euo pipefail
cd "$(dirname "$0")/.."

export IMGFORGE_CACHE=${IMGFORGE_CACHE:-/var/cache/imgforge}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$IMGFORGE_CACHE/target}
export CARGO_TERM_COLOR=never
mkdir -p "$IMGFORGE_CACHE"
step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

step "installing packages"
export DEBIAN_FRONTEND=noninteractive
# A new machine carries qemu-utils from bookworm-backports without a backports source:
# bookworm's qemu-system-x86 (7.2) breaks it. Take QEMU from the suite the installed
# qemu-utils came from, so the emulator and qemu-img are one version.
qemu_suite=()
if dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null | grep -q '~bpo'; then
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    if ! grep -rqs "$codename-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$codename" >/etc/apt/sources.list.d/imgforge-backports.sources
    fi
    qemu_suite=(-t "$codename-backports")
fi
apt-get update -qq
# cloud-init: `cloud-init schema` checks every rendered user-data.
# skopeo, podman: read and load the OCI bundles. dosfstools, mtools, xorriso: check seed disks.
# openssh-client/-server, sudo: verify's SSH checks against a real sshd. busybox-static: a tiny test app.
# python3-jsonschema: the VM program's tests check what it writes against guest/schema/.
# chromium: the classifier's pages in a real browser (images/classifier/tests/browser.sh).
# ssh-audit: checks the booted VM's sshd (and the current release from PyPI, below).
# postgresql: the classifier's history tests on PostgreSQL (the tests start their own server).
# borgbackup, prometheus: the VM program's backup tests; the repository the restore boot test
# backs up to, and the Prometheus that scrapes the VM's /metrics.
# mmdebstrap, e2fsprogs, fdisk, openssl (and QEMU, below): the guest image and boot tests.
# vde2, haproxy: the cluster boot test's private network between guests and its load balancer.
# python3-venv, npm: the classifier's model build (pinned packages from PyPI and npm).
pkgs=(cloud-init skopeo podman containerd dosfstools mtools xorriso openssh-client openssh-server
    busybox-static python3-jsonschema mmdebstrap e2fsprogs fdisk openssl ca-certificates
    curl file sudo binutils procps uidmap fuse-overlayfs gpg ssh-audit chromium borgbackup prometheus postgresql
    vde2 haproxy)
# Machines that already carry Node.js/npm or a Python with venv (not from Debian) keep theirs:
# Debian's npm conflicts with a nodejs from elsewhere.
command -v npm >/dev/null || pkgs+=(npm)
python3 -m venv --help >/dev/null 2>&1 || pkgs+=(python3-venv)
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
apt-get install -y -qq --no-install-recommends "${qemu_suite[@]}" qemu-system-x86 qemu-utils >/dev/null
printf 'QEMU: %s; qemu-img: %s\n' "$(qemu-system-x86_64 --version | head -n1)" "$(qemu-img --version | head -n1)"
rustup component add clippy rustfmt >/dev/null 2>&1 || true
audit_venv=$IMGFORGE_CACHE/venv-ssh-audit
[ -x "$audit_venv/bin/ssh-audit" ] || { python3 -m venv "$audit_venv" && "$audit_venv/bin/pip" install -q ssh-audit==3.3.0; }

step "building the classifier's model and binary"
images/classifier/build.sh

step "lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The VM program (guest/, Python): compiled, and linted by ruff for Python 3.8 and later.
lint_venv=$IMGFORGE_CACHE/venv-guest-lint
[ -x "$lint_venv/bin/ruff" ] || { python3 -m venv "$lint_venv" && "$lint_venv/bin/pip" install -q ruff==0.8.4; }
python3 -m compileall -q guest
"$lint_venv/bin/ruff" check guest

step "the VM program's unit tests"
(cd guest && python3 -m unittest discover -s tests -t .)

step "unit, CLI and real-tool tests"
cargo test --workspace

step "classifier API against its OpenAPI document (schemathesis)"
images/classifier/tests/schemathesis.sh

step "the classifier's pages in headless Chromium"
images/classifier/tests/browser.sh

if [ "${IMGFORGE_BOOT_TESTS:-1}" != 0 ]; then
    # Two VMs at a time: a TCG guest keeps one core busy, and this machine has two.
    # The slow tier, skipped unless IMGFORGE_SLOW_TESTS=1: the runner's own test (the
    # deployment tests cover it), the ACME server down for 10 minutes (the DNS tests get
    # a certificate late too), provisioning (tens of minutes, Debian's mirror), DuckDNS's
    # registration and the refused token (CI keeps Cloudflare's registration; the
    # renderer's and the VM program's tests keep both tokens out of logs and argv), the
    # first boot on Debian 13 (the same scenario as on 12), the deploy client killed at
    # every phase, two power cuts, a slow version and a new instance-id (the deploy test
    # keeps one interrupted client; the baked test's app starts slowly), the backup to a
    # repository with a restore onto a new VM and Prometheus (two VMs one after the other;
    # the deploy test backs up on the VM, the VM program's tests run borg), and the
    # cluster (four VMs, most of an hour). CI's tier must end well inside 90 minutes on a new machine, where
    # its two VMs take both cores.
    step "QEMU boot tests"
    slow=(--skip minimal_fixture --skip certificate_arrives_when_the_acme_server_comes_up_late
        --skip a_provisioned_image_deploys --skip a_killed_client_or_a_power_cut
        --skip duckdns_registration --skip a_refused_token_is_reported
        --skip first_boot_on_debian_13 --skip a_manager_and_a_worker_form_a_cluster
        --skip backups_outlive_the_vm)
    [ "${IMGFORGE_SLOW_TESTS:-0}" = 1 ] && slow=()
    cargo test --test boot -- --ignored --test-threads=2 --nocapture "${slow[@]}"
fi
step "done"
