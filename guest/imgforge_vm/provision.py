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
    """The deployment's firewall, installed and enabled now: it stays enabled in the image,
    so on every VM made from it ufw.service loads the rules before the network comes up,
    rather than first boot enabling it once cloud-init's final stage runs."""
    firstboot.firewall(ctx)


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
        run("systemd-run", "--no-block", "--unit", ctx.paths.units["generalize"],
            "--property", "After=cloud-final.service", ctx.paths.program, "generalize")
    return ok


def generalize(ctx):
    """Leaves nothing that makes one machine unlike another, or tells what it did (layout.json's
    `generalize`): none of it may be in a template."""
    g = ctx.paths.generalize
    run("cloud-init", "clean", "--logs", "--seed", timeout=120)
    # The journal moves to /run until poweroff, so nothing writes under /var/log/journal.
    run("journalctl", "--relinquish-var", check=False)
    # Stopped now, so that none of them writes its state again at poweroff.
    run("systemctl", "stop", "docker.service", "docker.socket", "containerd.service",
        "systemd-random-seed.service", "networking.service", check=False)
    for pattern in g["remove"] + [ctx.paths.config, ctx.paths.status]:
        for path in glob.glob(pattern):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.remove(path)
    machine_id, hostname = g["empty"]
    with open(machine_id, "w"):
        pass
    # The provisioning boot's name is not the VMs': the provider's datasource names each.
    with open(hostname, "w") as f:
        f.write("localhost\n")
    run("apt-get", "clean")
    shutil.rmtree(g["apt_lists"], ignore_errors=True)
    os.makedirs(os.path.join(g["apt_lists"], "partial"), exist_ok=True)
    for path in glob.glob(os.path.join(g["logs"], "**", "*"), recursive=True):
        if os.path.isfile(path):
            os.truncate(path, 0)
    run("sync")
    run("systemctl", "poweroff", "--no-block")
