"""`imgforge restore`: the app's data from an archive (the repository's, or this VM's
disk), with nothing that serves stopped until the restored data is ready.

The archive is extracted next to the data directory and every SQLite database in it
checked. Then the directories change names (the live one becomes DATA.before-restore-TIME,
the restored one DATA): the running container keeps the directory it has open, and goes
on serving. The running version starts again in the idle slot, on the restored data, and
takes the traffic as a deploy would (health, switch, watch, drain). If it never gets
there, the names change back and the old slot serves on as before. Day two only.
"""

import glob
import os
import shutil
import sqlite3
import time
import urllib.parse

from .app import Refused
from .backup import is_sqlite
from .system import Failed, log, phase, run


def archives(ctx):
    """The archives, oldest first: name, time, size (on this disk) and where."""
    if ctx.conf.get("borg"):
        from . import borg
        return borg.archives(ctx)
    out = []
    for path in sorted(glob.glob(os.path.join(ctx.paths.backup_dir, "data-*.tar.gz"))):
        name = os.path.basename(path)[:-len(".tar.gz")]
        try:
            when = time.strptime(name[len("data-"):], "%Y%m%dT%H%M%SZ")
        except ValueError:
            continue
        out.append({"name": name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", when),
                    "bytes": os.path.getsize(path), "where": "local"})
    return out


def extract(ctx, name, dest):
    """Archive `name`'s files into dest (an empty directory)."""
    if ctx.conf.get("borg"):
        from . import borg
        return borg.extract(ctx, name, dest)
    run("tar", "--extract", "--gzip", "--file",
        os.path.join(ctx.paths.backup_dir, name + ".tar.gz"), "--directory", dest,
        timeout=3600)


def check_databases(root):
    """Every SQLite database under root passes its integrity check; how many there are."""
    count = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            path = os.path.join(dirpath, n)
            if os.path.islink(path) or not os.path.isfile(path) or not is_sqlite(path):
                continue
            # immutable: nothing else has the copy open, and a read-only open of a WAL
            # database would leave root's -wal and -shm files beside it.
            db = sqlite3.connect("file:" + urllib.parse.quote(path) + "?mode=ro&immutable=1",
                                 uri=True)
            try:
                verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
            except sqlite3.DatabaseError as e:
                verdict = str(e)
            finally:
                db.close()
            if verdict != "ok":
                raise Failed(f"{os.path.relpath(path, root)} in the archive is damaged: "
                             f"{verdict}")
            count += 1
    return count


def restore(apps, name, health_timeout=None, drain_s=30):
    """Restores archive `name` (None: the newest) under a running app; the slot serving it."""
    ctx = apps.ctx
    name = pick(ctx, name)
    record = apps.active_record()
    if not record:
        raise Refused("no version of the app runs on this VM: deploy one, then restore")
    data = ctx.conf["data_dir"].rstrip("/")
    restored, kept = data + ".restoring", data + ".before-restore-" + time.strftime(
        "%Y%m%dT%H%M%SZ", time.gmtime())
    shutil.rmtree(restored, ignore_errors=True)
    os.makedirs(restored, mode=0o750)
    phase(apps.paths, "restore", f"extracting {name} next to {data}")
    began = time.monotonic()
    try:
        extract(ctx, name, restored)
        databases = check_databases(restored)
        give_roots_files(restored, os.stat(data))
    except BaseException:
        shutil.rmtree(restored, ignore_errors=True)
        raise
    log(f"restore: {name} extracted in {time.monotonic() - began:.1f} s, {databases} SQLite "
        "databases pass their integrity check; the app serves on meanwhile")
    previous = apps.load().get("previous")
    os.rename(data, kept)
    os.rename(restored, data)
    try:
        slot = apps.deploy(record, "restore", health_timeout, drain_s)
    except BaseException:
        # The old slot serves from the directory it has open: give it its name back.
        os.rename(data, restored)
        os.rename(kept, data)
        log(f"restore: the data before it is back in {data}; the restored copy is in {restored}")
        raise
    st = apps.load()
    st["previous"] = previous
    apps.save(st)
    log(f"restore: {name} serves from the {slot} slot; the data from before is in {kept}")
    return slot


def give_roots_files(root, owner):
    """What the archive has as root's (a backup's copy is root's work) becomes the data
    directory's owner's, when that is not root: the app must write its data."""
    if owner.st_uid == 0:
        return
    for dirpath, dirs, names in os.walk(root):
        for name in [""] + dirs + names:
            path = os.path.join(dirpath, name)
            if os.lstat(path).st_uid == 0:
                os.lchown(path, owner.st_uid, owner.st_gid)


def pick(ctx, name):
    """The archive `name` (None: the newest); Refused when there is no such archive."""
    known = archives(ctx)
    if name is None and known:
        return known[-1]["name"]
    if any(a["name"] == name for a in known):
        return name
    if name is None:
        raise Refused("there is no archive to restore: `imgforge backup now` makes one")
    newest = ", ".join(a["name"] for a in known[-5:]) or "none yet"
    raise Refused(f"no archive named {name!r}: the newest are {newest} (`imgforge backup "
                  "list` shows them all); nothing changed")
