"""Provisioning: what `imgforge build --provision` runs in a copy of the base image, once.
The packages, Docker and the app's image go in; then the image is generalized (no host
keys, machine id, cloud-init state, apt lists or logs) and powered off, so every VM made
from it is a new machine whose first boot only configures.
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


def generalize(ctx):
    run("cloud-init", "clean", "--logs", "--seed", timeout=120)
    for path in glob.glob("/etc/ssh/ssh_host_*"):
        os.remove(path)
    with open("/etc/machine-id", "w"):
        pass
    # The provisioning boot's name is not the VMs': the provider's datasource names each.
    with open("/etc/hostname", "w") as f:
        f.write("localhost\n")
    for path in ["/var/lib/dbus/machine-id", ctx.paths.config, ctx.paths.status]:
        if os.path.lexists(path):
            os.remove(path)
    run("apt-get", "clean")
    shutil.rmtree("/var/lib/apt/lists", ignore_errors=True)
    os.makedirs("/var/lib/apt/lists/partial", exist_ok=True)
    run("journalctl", "--rotate", check=False)
    run("journalctl", "--vacuum-time=1s", check=False)
    for path in glob.glob("/var/log/**/*", recursive=True):
        if os.path.isfile(path):
            os.truncate(path, 0)
    run("sync")
    run("systemctl", "poweroff", "--no-block")
