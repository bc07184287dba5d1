"""Backups off the VM: a BorgBackup repository over SSH (deploy.json's `borg`), encrypted
with the passphrase in borg_passphrase (repokey: the key lives in the repository, so a
new VM with the passphrase reads what an old one wrote). Shipped only to VMs that back up
to a repository (see render::program).

The passphrase reaches borg by BORG_PASSCOMMAND (a file read, never an argument or an
environment value); the SSH key and the host's key by BORG_RSH. Without known_hosts from
the user, the host's key is trusted at the first connection and pinned from then on.
"""

import json
import os
import time

from .system import Failed, ENV, log, run

# borg waits this long for the repository's lock (another VM's backup, a restore).
LOCK_WAIT = 600
TIMEOUT = 6 * 3600


def env(ctx):
    paths, repo = ctx.paths, ctx.conf["borg"]
    os.makedirs(paths.borg_base, mode=0o700, exist_ok=True)
    check = "yes" if repo["known_hosts"] else "accept-new"
    rsh = ["ssh", "-i", paths.borg_ssh_key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
           "-o", f"UserKnownHostsFile={paths.borg_known_hosts}",
           "-o", f"StrictHostKeyChecking={check}", "-o", "ServerAliveInterval=30",
           "-o", "ConnectTimeout=30"]
    return dict(ENV, BORG_REPO=repo["repo"], BORG_RSH=" ".join(rsh),
                BORG_PASSCOMMAND=f"cat {paths.borg_passphrase}",
                BORG_BASE_DIR=paths.borg_base, BORG_RELOCATED_REPO_ACCESS_IS_OK="no")


def borg(ctx, *args, cwd=None, capture=False, check=True):
    return run("borg", *args, env=env(ctx), cwd=cwd, capture=capture, check=check,
               timeout=TIMEOUT)


def ensure_repo(ctx):
    """Creates the repository (encrypted) the first time; an existing one is used as it is."""
    info = borg(ctx, "info", "--lock-wait", str(LOCK_WAIT), capture=True, check=False)
    if info.returncode == 0:
        return
    if "does not exist" not in info.stderr:
        raise Failed("the backup repository does not answer: " +
                     " / ".join(info.stderr.strip().splitlines()[-3:]))
    log(f"creating the encrypted repository {ctx.conf['borg']['repo']}")
    borg(ctx, "init", "--encryption", "repokey-blake2", "--make-parent-dirs")


def archive(ctx, staging, name):
    """An archive of the staging directory's contents, then the pruning; its sizes."""
    ensure_repo(ctx)
    doc = json.loads(borg(ctx, "create", "--json", "--lock-wait", str(LOCK_WAIT),
                          "--compression", "zstd,3", "::" + name, ".",
                          cwd=staging, capture=True).stdout)
    stats = doc["archive"]["stats"]
    prune(ctx)
    return {"bytes": stats["original_size"], "stored_bytes": stats["deduplicated_size"]}


def prune(ctx):
    """Keeps the hourly, daily, weekly and monthly archives deploy.json names; frees the
    space of the others."""
    repo = ctx.conf["borg"]
    counts = {every: repo["keep_" + every] for every in ("hourly", "daily", "weekly", "monthly")}
    keep = [f"--keep-{every}={n}" for every, n in counts.items() if n]
    borg(ctx, "prune", "--lock-wait", str(LOCK_WAIT), "--glob-archives", "data-*", *keep)
    borg(ctx, "compact", "--lock-wait", str(LOCK_WAIT))


def archives(ctx):
    """The repository's archives, oldest first."""
    doc = json.loads(borg(ctx, "list", "--json", "--lock-wait", str(LOCK_WAIT),
                          "--glob-archives", "data-*", capture=True).stdout)
    out = []
    for a in doc.get("archives", []):
        try:
            when = time.strptime(a["name"][len("data-"):], "%Y%m%dT%H%M%SZ")
        except ValueError:
            continue
        out.append({"name": a["name"], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", when),
                    "bytes": None, "where": "borg"})
    return out


def extract(ctx, name, dest):
    """The archive's files into dest (which exists and is empty)."""
    borg(ctx, "extract", "--lock-wait", str(LOCK_WAIT), "::" + name, cwd=dest)
