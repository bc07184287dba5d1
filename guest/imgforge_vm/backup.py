"""Backups of the data directory, taken while the app serves: nothing is paused.

A backup first copies the data directory into a root-only staging directory: each SQLite
database through SQLite's online backup API, a consistent copy while the app goes on
writing (SQLite, run by root, gives the -wal and -shm files it creates to the database's
owner); its -wal, -shm and -journal files are left out (the copy has what they hold); any
other file is copied as it is. The archive is made from that copy, in backup_dir (the
newest backup_keep are kept); its record (backup_state) is what `imgforge status` and
`backup list` show.
"""

import glob
import json
import os
import shutil
import sqlite3
import time
import urllib.parse

from .system import log, now, read_json, run, write_atomic

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


def is_sqlite(path):
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def copy(src, dst):
    """One file: an SQLite database through the backup API (read-only, while others
    write it), anything else as it is. Returns whether it was a database."""
    if not is_sqlite(src):
        shutil.copy2(src, dst)
        return False
    source = sqlite3.connect("file:" + urllib.parse.quote(src) + "?mode=ro", uri=True, timeout=60)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return True


def snapshot(src_dir, dest_dir):
    """Copies src_dir to dest_dir (which must not exist); returns how many files and
    databases it copied. The copy is root's (restore gives it to the data directory's
    owner)."""
    copied = []
    shutil.copytree(src_dir, dest_dir, symlinks=True,
                    ignore=shutil.ignore_patterns("*-wal", "*-shm", "*-journal"),
                    copy_function=lambda s, d: copied.append(copy(s, d)))
    return len(copied), sum(copied)


def backup(ctx):
    """One backup, while the app serves: to the repository deploy.json names (borg), else
    a tar.gz on this VM's disk; its record in backup_state."""
    paths, repo = ctx.paths, ctx.conf.get("borg")
    os.makedirs(paths.backup_dir, mode=0o700, exist_ok=True)
    record = {"started": now(), "archive": time.strftime("data-%Y%m%dT%H%M%SZ", time.gmtime()),
              "where": "borg" if repo else "local"}
    name = os.path.join(paths.backup_dir, record["archive"] + ".tar.gz")
    began = time.monotonic()
    staging = paths.backup_staging
    try:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(os.path.dirname(staging), exist_ok=True)
        files, databases = snapshot(ctx.conf["data_dir"], staging)
        log(f"copied {files} files ({databases} SQLite databases) while the app serves")
        record.update(files=files, databases=databases)
        if repo:
            from .borg import archive
            record.update(archive(ctx, staging, record["archive"]))
        else:
            run("tar", "--create", "--gzip", "--file", name + ".part", "--directory", staging,
                ".", timeout=3600)
            os.replace(name + ".part", name)
            record.update(bytes=os.path.getsize(name))
        record["result"] = "ok"
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
        if not repo:
            prune(paths.backup_dir, ctx.conf["backup_keep"])
    log(f"backup {record['archive']}: {record['bytes']} bytes in {record['seconds']} s, "
        f"{record['where']}")
    return record
