"""The daily backup of the data directory, keeping the newest N archives."""

import fcntl
import glob
import os
import subprocess
import time

from .system import ENV, run

# An archive still being written is named *.part; one older than this is left from a
# failed run and is removed.
STALE_PART_SECONDS = 6 * 3600


def prune(dest, keep, now=None):
    """Removes all but the newest `keep` archives, and parts left by failed runs."""
    now = time.time() if now is None else now
    for part in glob.glob(os.path.join(dest, "data-*.tar.gz.part")):
        if now - os.path.getmtime(part) > STALE_PART_SECONDS:
            os.remove(part)
    for old in sorted(glob.glob(os.path.join(dest, "data-*.tar.gz")))[:-keep]:
        os.remove(old)


def backup(ctx, container):
    dest = ctx.paths.backup_dir
    os.makedirs(dest, mode=0o700, exist_ok=True)
    name = os.path.join(dest, f"data-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.tar.gz")
    # Held while the app is paused: its unit does not take the pause for a fault.
    lock = open(ctx.paths.backup_lock, "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    # Paused, the app cannot write half a transaction into the archive.
    paused = container is not None and subprocess.run(
        ["docker", "pause", container], env=ENV, timeout=60).returncode == 0
    try:
        run("tar", "--create", "--gzip", "--file", name + ".part", "--directory",
            ctx.conf["data_dir"], ".", timeout=3600)
        os.replace(name + ".part", name)
    finally:
        if paused:
            run("docker", "unpause", container, check=False)
        lock.close()
        if os.path.exists(name + ".part"):
            os.remove(name + ".part")
        prune(dest, ctx.conf["backup_keep"])
