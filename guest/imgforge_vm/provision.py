"""Provisioning: what `imgforge build --provision` runs in a copy of the base image, once.
The packages, Docker and the app's image go in; then the image is generalized and powered
off, so every VM made from it is a new machine whose first boot only configures: no host
keys, machine id, random seed, Docker engine id or network database, cloud-init state,
DHCP leases, apt lists, journal, logs or temporary files of the provisioning boot.
"""

import glob
import os
import shutil

from . import firstboot
from .system import run


def ufw(ctx):
    """Installed, not enabled: the deployment configures it at first boot."""
    if not shutil.which("ufw"):
        firstboot.apt("update")
        firstboot.apt("install", "ufw")


def image(ctx):
    run("systemctl", "start", "docker.service")
    firstboot.fetch_image(ctx)
    run("systemctl", "stop", "docker.service", "docker.socket", check=False)


STEPS = [("ufw", ufw), ("packages", firstboot.packages),
         ("upgrade", lambda ctx: firstboot.apt("upgrade")), ("docker", firstboot.docker),
         ("image", image)]
STEP_NAMES = [name for name, _ in STEPS]


def provision(ctx):
    """Runs the steps; generalizes and powers off once cloud-init has finished."""
    ok = firstboot.run_steps(ctx, STEPS)
    ctx.update(provisioned=ok)
    if ok:
        # After cloud-final, so nothing cloud-init writes later is left in the image.
        run("systemd-run", "--no-block", "--unit", "imgforge-generalize",
            "--property", "After=cloud-final.service", ctx.paths.program, "generalize")
    return ok


# What makes one machine unlike another, or what it did: none of it may be in a template.
PER_MACHINE = [
    "/etc/ssh/ssh_host_*", "/var/lib/dbus/machine-id", "/var/lib/systemd/random-seed",
    "/var/lib/systemd/credential.secret", "/etc/docker/key.json", "/var/lib/docker/engine-id",
    "/var/lib/docker/network/files/local-kv.db", "/var/lib/dhcp/*", "/var/lib/dhclient/*",
    "/var/lib/NetworkManager/*.lease*", "/var/log/journal/*",
    "/tmp/*", "/var/tmp/*",
]


def generalize(ctx):
    run("cloud-init", "clean", "--logs", "--seed", timeout=120)
    # The journal moves to /run until poweroff, so nothing writes under /var/log/journal.
    run("journalctl", "--relinquish-var", check=False)
    # Stopped now, so that none of them writes its state again at poweroff.
    run("systemctl", "stop", "docker.service", "docker.socket", "containerd.service",
        "systemd-random-seed.service", "networking.service", check=False)
    for pattern in PER_MACHINE + [ctx.paths.config, ctx.paths.status]:
        for path in glob.glob(pattern):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.remove(path)
    with open("/etc/machine-id", "w"):
        pass
    # The provisioning boot's name is not the VMs': the provider's datasource names each.
    with open("/etc/hostname", "w") as f:
        f.write("localhost\n")
    run("apt-get", "clean")
    shutil.rmtree("/var/lib/apt/lists", ignore_errors=True)
    os.makedirs("/var/lib/apt/lists/partial", exist_ok=True)
    for path in glob.glob("/var/log/**/*", recursive=True):
        if os.path.isfile(path):
            os.truncate(path, 0)
    run("sync")
    run("systemctl", "poweroff", "--no-block")
