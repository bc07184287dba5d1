"""Backups of the data directory, taken while the app serves: nothing is paused.

A backup first copies the data directory into a staging directory, as the user that owns
it (so SQLite's shared-memory files stay that user's): each SQLite database through
SQLite's online backup API, a consistent copy while the app goes on writing; any other
file as it is. The archive is made from that copy, in backup_dir (the newest backup_keep
are kept); its record (backup_state) is what `imgforge status` and `backup list` show.
"""

import fcntl
import glob
import json
import os
import shutil
import sqlite3
import time
import urllib.parse

from .system import Failed, log, now, read_json, run, write_atomic

# An archive still being written is named *.part; one older than this is left from a
# failed run and is removed.
STALE_PART_SECONDS = 6 * 3600
SQLITE_HEADER = b"SQLite format 3\x00"
# A database's companions: its copy through the backup API has what they hold.
COMPANIONS = ("-wal", "-shm", "-journal")


def prune(dest, keep, now=None):
    """Removes all but the newest `keep` archives, and parts left by failed runs."""
    now = time.time() if now is None else now
    for part in glob.glob(os.path.join(dest, "data-*.tar.gz.part")):
        if now - os.path.getmtime(part) > STALE_PART_SECONDS:
            os.remove(part)
    for old in sorted(glob.glob(os.path.join(dest, "data-*.tar.gz")))[:-keep]:
        os.remove(old)


def is_sqlite(path):
    try:
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_HEADER
    except OSError:
        return False


def copy_database(src, dst):
    """A consistent copy of the SQLite database src, read-only, while others write it."""
    uri = "file:" + urllib.parse.quote(src) + "?mode=ro"
    source = sqlite3.connect(uri, uri=True, timeout=60)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def counted(top):
    """The files under top, and how many are SQLite databases."""
    found = [os.path.join(r, n) for r, _, names in os.walk(top) for n in names]
    return len(found), sum(map(is_sqlite, found))


def snapshot(src_dir, dest_dir):
    """Copies src_dir into dest_dir: SQLite databases through the backup API (their
    -wal, -shm and -journal files left out), other regular files as they are."""
    def unreadable(e):
        raise e
    for root, _dirs, names in os.walk(src_dir, onerror=unreadable):
        rel = os.path.relpath(root, src_dir)
        os.makedirs(os.path.join(dest_dir, rel), mode=0o700, exist_ok=True)
        for name in sorted(names):
            src, dst = os.path.join(root, name), os.path.join(dest_dir, rel, name)
            if os.path.islink(src) or not os.path.isfile(src):
                continue
            base = next((src[:-len(s)] for s in COMPANIONS if name.endswith(s)), None)
            if base and is_sqlite(base):
                continue
            if is_sqlite(src):
                copy_database(src, dst)
            else:
                shutil.copy2(src, dst)


def as_owner(path, fn):
    """fn() as the user and group owning path: a child process, unless that is us."""
    st = os.stat(path)
    if st.st_uid == os.geteuid():
        return fn()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(st.st_gid)
            os.setuid(st.st_uid)
            fn()
            code = 0
        except BaseException as e:
            os.write(write, str(e).encode()[:4000])
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        error = f.read().decode(errors="replace")
    if os.waitpid(pid, 0)[1] != 0:
        raise Failed(f"copying {path} as its owner: {error or 'the copy was killed'}")


def backup(ctx):
    """One backup, while the app serves; its record in backup_state. Raises Failed."""
    paths, data_dir = ctx.paths, ctx.conf["data_dir"]
    dest = paths.backup_dir
    os.makedirs(dest, mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = os.path.join(dest, f"data-{stamp}.tar.gz")
    record = {"started": now(), "archive": f"data-{stamp}", "where": "local"}
    began = time.monotonic()
    os.makedirs(paths.state_dir, exist_ok=True)
    with open(paths.backup_lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        staging = paths.backup_staging
        try:
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging, mode=0o700)
            if not os.path.isdir(data_dir):
                os.makedirs(data_dir, mode=0o750)
            st = os.stat(data_dir)
            os.chown(staging, st.st_uid, st.st_gid)
            as_owner(data_dir, lambda: snapshot(data_dir, staging))
            files, databases = counted(staging)
            log(f"copied {files} files ({databases} SQLite databases) while the app serves")
            run("tar", "--create", "--gzip", "--file", name + ".part", "--directory", staging,
                ".", timeout=3600)
            os.replace(name + ".part", name)
            record.update(result="ok", files=files, databases=databases,
                          bytes=os.path.getsize(name))
        except Exception as e:
            record.update(result="failed", error=str(e))
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if os.path.exists(name + ".part"):
                os.remove(name + ".part")
            record["seconds"] = round(time.monotonic() - began, 2)
            state = read_json(paths.backup_state, {})
            state["last"] = record
            if record["result"] == "ok":
                state["last_ok"] = record
            write_atomic(paths.backup_state, json.dumps(state, indent=2) + "\n", 0o600)
            prune(dest, ctx.conf["backup_keep"])
    log(f"backup {record['archive']}: {record['bytes']} bytes in {record['seconds']} s")
    return record
