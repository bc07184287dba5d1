"""Each boot: cloud-init's verdict, the app's health and the host keys, into status.json."""

import glob
import json
import os

from . import proxy
from .app import Apps
from .system import wait_for

# cloud-init's result appears when its last stage ends; a first boot that installs
# packages can take long, but not this long.
CLOUD_INIT_WAIT = 5400


def cloud_init_result(path, timeout, interval=2.0):
    """cloud-init's status for this boot, from result.json (on tmpfs, so per boot).
    `cloud-init status --wait` can return early once an earlier stage had an error."""
    if not wait_for(lambda: os.path.exists(path), timeout, interval):
        return {"status": "error", "errors": [f"cloud-init did not finish within {timeout} s"]}
    try:
        with open(path) as f:
            errors = json.load(f)["v1"]["errors"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        errors = [f"reading {path}: {e}"]
    return {"status": "error" if errors else "done", "errors": [str(e) for e in errors]}


def host_keys(pattern):
    """The SSH host public keys, so that imgforge can pin them from the console."""
    keys = []
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            parts = f.read().split()
        if len(parts) >= 2:
            keys.append(f"{parts[0]} {parts[1]}")
    return keys


def report(ctx):
    """Healthy is the app answering through nginx, the way users come, within the app's
    start allowance (a slow app is given its time, at every boot)."""
    ci = cloud_init_result(ctx.paths.cloud_init_result, CLOUD_INIT_WAIT)
    apps = Apps(ctx)
    # A cluster's node serves the swarm's service, not a slot.
    ok = (apps.active() or ctx.conf.get("cluster")) and wait_for(
        lambda: proxy.answers(ctx.paths, ctx.conf), apps.start_allowance(), 2)
    ctx.update(cloud_init=ci, health="ok" if ok else "failed",
               host_keys=host_keys(ctx.paths.ssh_host_public_keys))
