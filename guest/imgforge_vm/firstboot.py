"""First boot: the deployment's steps, in order, each recorded in status.json.

The firewall comes first, before anything that can fail, so a failed step never leaves
the VM open. A failed step stops the deployment: its error goes to status.json and
cloud-init reports the failure.

First boot converges. When cloud-init runs it again on a VM that already has a deployment
(a new instance-id: a restored snapshot, a provider's migration, `cloud-init clean`), the
running version, its data, its environment and the certificate stay; the steps make the
rest as the user-data says.
"""

import os
import shutil
import subprocess
import tempfile

from . import cert, proxy, status
from .app import SLOTS, Apps
from .system import Failed, fetch, log, now, out, retry, run, wait_for, write_atomic

# Waits for the dpkg lock (unattended-upgrades holds it at first boot) instead of failing.
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=1200", "-o", "Acquire::Retries=5",
       "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
APT_TIMEOUT = 1800
BASE_PACKAGES = ["ca-certificates", "curl", "gnupg", "nginx", "unattended-upgrades"]
TLS_PACKAGES = ["certbot"]
DOCKER_CE = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
             "docker-compose-plugin"]
# Docker's Release key (docs.docker.com/engine/install): the only key apt trusts for it.
DOCKER_KEY = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
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
    ports = ctx.paths.public_ports
    run("ufw", "limit", f"{ports['ssh']}/tcp")
    run("ufw", "allow", f"{ports['http']}/tcp")
    run("ufw", "allow", f"{ports['https']}/tcp")
    run("ufw", "--force", "enable")


def packages(ctx):
    conf = ctx.conf
    if conf["offline"]:
        need = (["docker", "nginx", "ufw", "sshd"] + (["certbot"] if conf["tls"] else []) +
                [p["command"] for p in conf.get("packages", [])])
        missing = [n for n in need if not shutil.which(n)]
        if missing:
            raise Failed("the image lacks " + ", ".join(missing) +
                         "; render without --offline, or bake them in")
        return "skipped"
    apt("update")
    apt("install", *BASE_PACKAGES, *(TLS_PACKAGES if conf["tls"] else []),
        *[p["name"] for p in conf.get("packages", [])])
    return "ok"


def upgrade(ctx):
    """`apt-get upgrade`, off the critical path: started once the app serves, its outcome
    recorded in status.json (`upgrade`)."""
    if ctx.conf["offline"]:
        return "skipped"
    run("systemd-run", "--no-block", "--unit", ctx.paths.units["upgrade"],
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
    osr = os_release(ctx.paths)
    url = f"https://download.docker.com/linux/{osr['ID']}"
    keyring = ctx.paths.docker_keyring
    retry("fetching Docker's key", lambda: docker_keyring(url + "/gpg", keyring), tries=4, delay=10)
    arch = out("dpkg", "--print-architecture").strip()
    write_atomic(ctx.paths.docker_apt_source,
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
        try:
            key = fetch(url, 64 << 10, timeout=30)
        except (OSError, ValueError) as e:
            raise Failed(f"fetching {url}: {e}") from None
        write_atomic(home + "/key.asc", key, 0o600)
        gpg = ["gpg", "--homedir", home, "--batch", "--quiet"]
        run(*gpg, "--import", home + "/key.asc", capture=True)
        exported = subprocess.run([*gpg, "--export", fingerprint], capture_output=True, timeout=60).stdout
        if not exported:
            raise Failed(f"{url} holds no key with fingerprint {fingerprint}")
        write_atomic(keyring, exported, 0o644)


def os_release(paths):
    with open(paths.os_release) as f:
        pairs = (line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        return {k: v.strip('"') for k, v in pairs}


def ssh(ctx):
    run("sshd", "-t", capture=True)
    run("systemctl", "try-reload-or-restart", "ssh.service")
    effective = sshd_effective(out("sshd", "-T"))
    with open(ctx.paths.sshd_config) as f:
        wrong = [f"{k} is {effective.get(k, 'unset')!r}, not {v!r}"
                 for k, v in sshd_effective(f.read()).items() if effective.get(k) != v]
    if wrong:
        raise Failed("sshd runs with other settings than " + ctx.paths.sshd_config + ": " +
                     "; ".join(wrong) + " (another file of the distribution sets them first)")


def sshd_effective(text):
    """`Keyword value` lines as sshd -T prints them: lower-case keywords, each value once
    (several HostKey lines are one list)."""
    values = {}
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and not parts[0].startswith("#"):
            key = parts[0].lower()
            values[key] = values[key] + " " + parts[1] if key == "hostkey" and key in values else parts[1]
    return values


def image(ctx):
    run("systemctl", "enable", "--now", "docker.service")
    run("systemctl", "enable", "--now", ctx.paths.units["docker_firewall"])
    if Apps(ctx).active_record():
        return "kept"
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
    conf = ctx.conf
    kind = conf["bundle"]["kind"]
    if kind == "registry":
        retry("docker pull", lambda: run("docker", "pull", conf["image"], timeout=DOCKER_LOAD_TIMEOUT),
              tries=6, delay=10)
    elif kind != "baked":  # baked: provisioned into Docker's store when the image was built
        # Shipped only to VMs whose image comes as a bundle (see render::program).
        from . import bundle
        bundle.fetch(ctx)
    run("docker", "image", "inspect", "--format", "{{.Id}}", conf["image"], capture=True)


def app(ctx):
    apps = Apps(ctx)
    with apps.locked():
        kept = apps.active_record()
        if not kept:
            apps.deploy(apps.record(ctx.conf["image"], app_env(ctx)), kind="first-boot")
            return "ok"
        apps.reconcile()
        wait = apps.start_allowance()
        if not wait_for(lambda: proxy.answers(ctx.paths, ctx.conf), wait, 2):
            raise Failed(f"{kept['version']}, the version this VM ran, did not answer "
                         f"{ctx.conf['health_path']} within {wait} s")
        return "kept"


def nginx(ctx):
    """The HTTPS site when a valid certificate exists (a run again keeps HTTPS), else
    plain HTTP until the certificate step gets one."""
    paths, conf = ctx.paths, ctx.conf
    if not os.path.exists(paths.probe_token):
        write_atomic(paths.probe_token, os.urandom(16).hex() + "\n")
    os.makedirs(paths.acme_webroot, mode=0o755, exist_ok=True)
    if os.path.lexists(paths.nginx_default_site):
        os.remove(paths.nginx_default_site)
    enabled = paths.nginx_site_enabled
    if not os.path.lexists(enabled):
        os.symlink(paths.nginx_site, enabled)
    if not os.path.exists(paths.nginx_upstream):
        # The slot the app step will switch to; until it does, nginx answers 502.
        write_atomic(paths.nginx_upstream, proxy.upstream_conf(paths, paths.slot_port(SLOTS[0])))
    proxy.install_site(paths, tls=conf["tls"] and cert.valid(conf["domain"], paths.letsencrypt_live))
    # What nginx really reads, not what a distribution's nginx.conf usually includes.
    dump = out("nginx", "-T")
    unread = [p for p in (enabled, paths.nginx_conf)
              if f"# configuration file {p}:" not in dump]
    if unread:
        raise Failed("nginx does not read " + ", ".join(unread) +
                     ": its nginx.conf must include conf.d/*.conf and sites-enabled/*")
    run("systemctl", "enable", "nginx.service")
    run("systemctl", "reload-or-restart", "nginx.service")


def backup(ctx):
    run("systemctl", "enable", "--now", ctx.paths.units["backup_timer"])


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
    # A document gzipped as a whole brings the program as modules, which are in the
    # program now (render::with_program_modules).
    shutil.rmtree(ctx.paths.program_src, ignore_errors=True)
    run("systemctl", "daemon-reload")
    # The journal, persistent and bounded (layout.json's journald_conf), from now on.
    run("systemctl", "restart", "systemd-journald", check=False)
    # Started now, the report waits for cloud-init to finish, so a failed step is reported too.
    units = ctx.paths.units
    run("systemctl", "enable", units["report"], units["recover"])
    run("systemctl", "start", "--no-block", units["report"])
    steps = STEPS
    if ctx.conf.get("cluster"):
        from . import swarm  # shipped to a cluster's nodes only (render::program)
        steps = swarm.steps(STEPS)
        ctx.step_names = [name for name, _ in steps]
    before = status.read(ctx.paths) or {}
    kept = Apps(ctx).active_record()
    runs = max((before.get("first_boot") or {}).get("runs", 0), 1 if kept else 0) + 1
    if kept:
        log(f"first boot runs again (run {runs}) on a VM that serves {kept['version']}: "
            "it keeps that version, its data and its certificate")
    status.begin(ctx.paths, ctx.step_names, first_boot={
        "runs": runs, "instance_id": instance_id(ctx.paths), "started": now(),
        "kept": kept["version"] if kept else None})
    return run_steps(ctx, steps)


def instance_id(paths):
    try:
        with open(paths.instance_id) as f:
            return f.read().strip()
    except OSError:
        return None
