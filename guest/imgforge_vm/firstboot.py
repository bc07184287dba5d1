"""First boot: the deployment's steps, in order, each recorded in status.json.

The firewall comes first, before anything that can fail, so a failed step never leaves
the VM open. A failed step stops the deployment: its error goes to status.json and
cloud-init reports the failure.
"""

import os
import shutil
import subprocess
import tempfile

from . import cert
from .app import SLOTS, Apps, upstream_conf
from .system import Failed, download, log, out, retry, run, sha256_file, write_atomic

# Waits for the dpkg lock (unattended-upgrades holds it at first boot) instead of failing.
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=1200", "-o", "Acquire::Retries=5",
       "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
APT_TIMEOUT = 1800
BASE_PACKAGES = ["ca-certificates", "curl", "gnupg", "nginx", "unattended-upgrades"]
TLS_PACKAGES = ["certbot", "python3-certbot-nginx"]
DOCKER_CE = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
             "docker-compose-plugin"]
# Docker's Release key (docs.docker.com/engine/install): the only key apt trusts for it.
DOCKER_KEY = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
# A bundle larger than this is refused before it fills the disk.
BUNDLE_MAX_BYTES = 8 << 30
DOCKER_LOAD_TIMEOUT = 1800


_updated = []


def apt(*args):
    """apt-get with retries; `update` runs once per deployment (the firewall step may
    already have run it to install ufw)."""
    if args == ("update",) and _updated:
        return
    retry(f"apt-get {args[0]}", lambda: run(*APT, *args, timeout=APT_TIMEOUT), tries=4, delay=15)
    if args == ("update",):
        _updated.append(True)


def firewall(ctx):
    if not shutil.which("ufw"):
        if ctx.conf["offline"]:
            raise Failed("ufw is not installed and the deployment is --offline")
        apt("update")
        apt("install", "ufw")
    run("ufw", "default", "deny", "incoming")
    run("ufw", "default", "allow", "outgoing")
    run("ufw", "limit", "22/tcp")
    run("ufw", "allow", "80/tcp")
    run("ufw", "allow", "443/tcp")
    run("ufw", "--force", "enable")


def packages(ctx):
    conf = ctx.conf
    if conf["offline"]:
        need = ["docker", "nginx", "ufw", "sshd"] + (["certbot"] if conf["tls"] else [])
        missing = [n for n in need if not shutil.which(n)]
        if missing:
            raise Failed("the image lacks " + ", ".join(missing) +
                         "; render without --offline, or bake them in")
        return "skipped"
    apt("update")
    apt("install", *BASE_PACKAGES, *(TLS_PACKAGES if conf["tls"] else []))
    return "ok"


def upgrade(ctx):
    """`apt-get upgrade`, off the critical path: started once the app serves, its outcome
    recorded in status.json (`upgrade`)."""
    if ctx.conf["offline"]:
        return "skipped"
    run("systemd-run", "--no-block", "--unit", "imgforge-upgrade",
        "--property", "After=cloud-final.service", ctx.paths.program, "upgrade")
    return "ok"


def run_upgrade(ctx):
    ctx.update(upgrade="running")
    try:
        apt("upgrade")
    except Exception as e:
        ctx.update(upgrade="failed", upgrade_detail=str(e))
        return False
    ctx.update(upgrade="ok", upgrade_detail="")
    return True


def docker(ctx):
    conf = ctx.conf
    if conf["offline"]:
        return "skipped"
    if conf["docker_source"] == "distro":
        apt("install", "docker.io")
        if not shutil.which("docker"):
            # Debian 13 and later ship the client apart from the daemon.
            apt("install", "docker-cli")
        return "ok"
    osr = os_release()
    url = f"https://download.docker.com/linux/{osr['ID']}"
    keyring = ctx.paths.docker_keyring
    retry("fetching Docker's key", lambda: docker_keyring(url + "/gpg", keyring), tries=4, delay=10)
    arch = out("dpkg", "--print-architecture").strip()
    write_atomic("/etc/apt/sources.list.d/docker.list",
                 f"deb [arch={arch} signed-by={keyring}] {url} {osr['VERSION_CODENAME']} stable\n")
    _updated.clear()  # a new source: its lists are needed
    apt("update")
    apt("install", *DOCKER_CE)
    return "ok"


def docker_keyring(url, keyring, fingerprint=DOCKER_KEY):
    """Writes to `keyring` exactly the key with Docker's fingerprint from the file at url:
    any other key in that file is left out, so apt trusts Docker's key only."""
    with tempfile.TemporaryDirectory() as home:
        os.chmod(home, 0o700)
        download(url, home + "/key.asc", 64 << 10)
        gpg = ["gpg", "--homedir", home, "--batch", "--quiet"]
        run(*gpg, "--import", home + "/key.asc", capture=True)
        exported = subprocess.run([*gpg, "--export", fingerprint], capture_output=True, timeout=60).stdout
        if not exported:
            raise Failed(f"{url} holds no key with fingerprint {fingerprint}")
        write_atomic(keyring, exported, 0o644)


def os_release():
    with open("/etc/os-release") as f:
        pairs = (line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        return {k: v.strip('"') for k, v in pairs}


def ssh(ctx):
    run("sshd", "-t", capture=True)
    run("systemctl", "try-reload-or-restart", "ssh.service")


def load_bundle(path, sha256):
    got = sha256_file(path)
    if got != sha256:
        raise Failed(f"bundle {path} has sha256 {got}, expected {sha256}")
    run("docker", "load", "--input", path, timeout=DOCKER_LOAD_TIMEOUT)


def image(ctx):
    run("systemctl", "enable", "--now", "docker.service")
    run("systemctl", "enable", "--now", "imgforge-docker-firewall.service")
    fetch_image(ctx)
    # The app starts loading now, while nginx and the certificate are set up; the app
    # step gives it traffic once it is healthy.
    apps = Apps(ctx)
    with apps.locked():
        apps.prestart(apps.record(ctx.conf["image"], app_env(ctx)))


def app_env(ctx):
    with open(ctx.paths.app_env) as f:
        return f.read()


def fetch_image(ctx):
    """Puts the app's image into Docker's store, from wherever the deployment says."""
    conf, paths = ctx.conf, ctx.paths
    b = conf["bundle"]
    if b["kind"] == "registry":
        retry("docker pull", lambda: run("docker", "pull", conf["image"], timeout=DOCKER_LOAD_TIMEOUT),
              tries=6, delay=10)
    elif b["kind"] == "url":
        dest = paths.under("state_dir", "bundle-download.oci.tar")
        retry("downloading the bundle",
              lambda: download(b["url"], dest, BUNDLE_MAX_BYTES, sha256=b["sha256"]), tries=4, delay=10)
        try:
            run("docker", "load", "--input", dest, timeout=DOCKER_LOAD_TIMEOUT)
        finally:
            os.remove(dest)
    elif b["kind"] == "file":
        load_bundle(paths.baked_bundle, b["sha256"])
    elif b["kind"] == "baked":
        pass  # provisioned into Docker's store when the image was built
    elif b["kind"] == "seed":
        dev = next((d for d in ("/dev/disk/by-label/CIDATA", "/dev/disk/by-label/cidata")
                    if os.path.exists(d)), None)
        if dev is None:
            raise Failed("no seed disk labelled CIDATA is attached")
        with tempfile.TemporaryDirectory() as mnt:
            run("mount", "-o", "ro", dev, mnt)
            try:
                load_bundle(os.path.join(mnt, paths.seed_bundle), b["sha256"])
            finally:
                run("umount", mnt)
    else:
        raise Failed(f"unknown bundle kind {b['kind']!r}")
    run("docker", "image", "inspect", "--format", "{{.Id}}", conf["image"], capture=True)


def app(ctx):
    apps = Apps(ctx)
    with apps.locked():
        apps.deploy(apps.record(ctx.conf["image"], app_env(ctx)), kind="first-boot",
                    health_timeout=300)


def nginx(ctx):
    paths = ctx.paths
    if not os.path.exists(paths.probe_token):
        write_atomic(paths.probe_token, os.urandom(16).hex() + "\n")
    if os.path.lexists("/etc/nginx/sites-enabled/default"):
        os.remove("/etc/nginx/sites-enabled/default")
    enabled = "/etc/nginx/sites-enabled/imgforge"
    if not os.path.lexists(enabled):
        os.symlink(paths.nginx_site, enabled)
    if not os.path.exists(paths.nginx_upstream):
        # The slot the app step will switch to; until it does, nginx answers 502.
        write_atomic(paths.nginx_upstream, upstream_conf(paths.slot_port(SLOTS[0])))
    run("nginx", "-t", capture=True)
    run("systemctl", "enable", "nginx.service")
    run("systemctl", "reload-or-restart", "nginx.service")


def backup(ctx):
    run("systemctl", "enable", "--now", "imgforge-backup.timer")


def dns(ctx):
    if not ctx.conf.get("dns"):
        return "skipped"
    # Shipped only to VMs that register their address (see render::program).
    from . import dns
    return dns.start(ctx)


# The app comes after the certificate: it starts loading in `image`, and the steps
# between run while it does.
STEPS = [("firewall", firewall), ("packages", packages), ("docker", docker), ("ssh", ssh),
         ("image", image), ("nginx", nginx), ("backup", backup), ("dns", dns),
         ("certificate", cert.start), ("app", app), ("upgrade", upgrade)]
STEP_NAMES = [name for name, _ in STEPS]


def run_steps(ctx, steps=STEPS):
    """Runs each step and records its result; stops at the first failure (returns False)."""
    for name, fn in steps:
        log(f"step {name}: starting")
        try:
            result = fn(ctx) or "ok"
        except Exception as e:
            log(f"step {name}: FAILED: {e}")
            ctx.update({name: "failed"}, error=f"{name}: {e}")
            return False
        ctx.update({name: result})
        log(f"step {name}: {result}")
    return True


def deploy(ctx):
    run("systemctl", "daemon-reload")
    # Started now, the report waits for cloud-init to finish, so a failed step is reported too.
    run("systemctl", "enable", "imgforge-report.service")
    run("systemctl", "start", "--no-block", "imgforge-report.service")
    ctx.update()
    return run_steps(ctx)
