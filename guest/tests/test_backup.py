import json
import os
import sqlite3
import tarfile
import tempfile
import threading
import time
import unittest
from unittest import mock

from imgforge_vm import backup, restore

from .support import Vm


class Prune(unittest.TestCase):
    def test_keeps_the_newest_and_removes_stale_parts(self):
        d = tempfile.mkdtemp()
        names = [f"data-2026010{i}T000000Z.tar.gz" for i in range(1, 6)]
        for n in names + ["data-20260106T000000Z.tar.gz.part", "data-20260107T000000Z.tar.gz.part"]:
            open(os.path.join(d, n), "w").close()
        old = time.time() - backup.STALE_PART_SECONDS - 60
        os.utime(os.path.join(d, "data-20260106T000000Z.tar.gz.part"), (old, old))
        backup.prune(d, 2)
        self.assertEqual(sorted(os.listdir(d)),
                         [names[3], names[4], "data-20260107T000000Z.tar.gz.part"])


class Snapshot(unittest.TestCase):
    """The copy is taken while the app writes: nothing waits, and the copy is whole."""

    def setUp(self):
        self.vm = Vm()
        self.addCleanup(self.vm.cleanup)
        self.data = self.vm.ctx.conf["data_dir"]
        os.makedirs(os.path.join(self.data, "uploads"))
        with open(os.path.join(self.data, "uploads", "a.txt"), "w") as f:
            f.write("kept\n")
        self.db = os.path.join(self.data, "history.sqlite3")
        conn = sqlite3.connect(self.db)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE h (id INTEGER PRIMARY KEY, label TEXT)")
        conn.commit()
        conn.close()

    def test_a_database_written_the_whole_time_is_copied_whole_and_no_write_waits(self):
        stop, errors, written = threading.Event(), [], [0]

        def writer():
            conn = sqlite3.connect(self.db, timeout=0.05)
            while not stop.is_set():
                try:
                    with conn:
                        conn.execute("INSERT INTO h (label) VALUES (?)", ("x" * 500,))
                    written[0] += 1
                except sqlite3.Error as e:
                    errors.append(str(e))
            conn.close()
        t = threading.Thread(target=writer)
        t.start()
        try:
            while written[0] < 200:
                time.sleep(0.01)
            before = written[0]
            staging = os.path.join(tempfile.mkdtemp(), "copy")
            counts = backup.snapshot(self.data, staging)
            after = written[0]
        finally:
            stop.set()
            t.join()
        self.assertEqual(errors, [], "a write waited for the copy")
        self.assertEqual(counts, (2, 1))
        self.assertEqual(sorted(os.listdir(staging)), ["history.sqlite3", "uploads"])
        copy = sqlite3.connect(os.path.join(staging, "history.sqlite3"))
        self.assertEqual(copy.execute("PRAGMA integrity_check").fetchone(), ("ok",))
        rows = copy.execute("SELECT count(*) FROM h").fetchone()[0]
        self.assertTrue(before <= rows <= after, (before, rows, after))

    @unittest.skipUnless(os.geteuid() == 0, "SQLite's root case: needs root")
    def test_the_copy_by_root_leaves_no_file_of_roots_in_the_data_directory(self):
        nobody = 65534
        for root, dirs, names in os.walk(self.data):
            for n in dirs + names + ["."]:
                os.chown(os.path.join(root, n), nobody, nobody)
        backup.snapshot(self.data, os.path.join(tempfile.mkdtemp(), "copy"))
        for root, dirs, names in os.walk(self.data):
            for n in dirs + names:
                self.assertEqual(os.stat(os.path.join(root, n)).st_uid, nobody, n)
        self.assertIn("history.sqlite3-shm", os.listdir(self.data))

    def test_a_backup_archives_the_copy_and_records_it_and_a_failure_keeps_the_last_good(self):
        ctx = self.vm.ctx
        record = backup.backup(ctx)
        self.assertEqual((record["result"], record["files"], record["databases"]), ("ok", 2, 1))
        archive = os.path.join(self.vm.paths.backup_dir, record["archive"] + ".tar.gz")
        with tarfile.open(archive) as tar:
            self.assertEqual(sorted(n for n in tar.getnames() if n != "."),
                             ["./history.sqlite3", "./uploads", "./uploads/a.txt"])
        self.assertEqual([a["name"] for a in restore.archives(ctx)], [record["archive"]])
        self.assertFalse(os.path.exists(self.vm.paths.backup_staging))
        time.sleep(1.1)
        broken = sqlite3.OperationalError("disk I/O error")
        with mock.patch.object(backup, "copy", side_effect=broken):
            with self.assertRaises(sqlite3.OperationalError):
                backup.backup(ctx)
        with open(self.vm.paths.backup_state) as f:
            state = json.load(f)
        self.assertEqual((state["last"]["result"], state["last"]["error"]), ("failed", "disk I/O error"))
        self.assertEqual(state["last_ok"], record)
        self.assertEqual(len(restore.archives(ctx)), 1)
        self.assertEqual([n for n in os.listdir(self.vm.paths.backup_dir) if n.endswith(".part")], [])
