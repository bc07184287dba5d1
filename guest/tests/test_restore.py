import json
import os
import shutil
import sqlite3
import subprocess
import unittest
from unittest import mock

from imgforge_vm import backup, borg, restore
from imgforge_vm.app import Refused
from imgforge_vm.system import Failed

from .test_app import Fixture


def rows(data_dir):
    db = sqlite3.connect(os.path.join(data_dir, "history.sqlite3"))
    try:
        return [r[0] for r in db.execute("SELECT label FROM history ORDER BY id")]
    finally:
        db.close()


def add_rows(data_dir, *labels):
    db = sqlite3.connect(os.path.join(data_dir, "history.sqlite3"))
    with db:
        db.execute("CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY, label TEXT)")
        db.executemany("INSERT INTO history (label) VALUES (?)", [(x,) for x in labels])
    db.close()


class Restore(Fixture):
    """The data from an archive, under a running app: extracted and checked beside the live
    data, then the running version starts again on it in the idle slot and takes traffic."""

    def setUp(self):
        super().setUp()
        self.data = self.vm.ctx.conf["data_dir"]
        os.makedirs(self.data)
        add_rows(self.data, "cat", "dog")
        self.deploy("app:1", kind="first-boot")
        self.deploy("app:2")
        self.archive = backup.backup(self.vm.ctx)["archive"]
        add_rows(self.data, "written after the backup")
        patch = mock.patch.object(restore, "phase", self.phase)
        patch.start()
        self.addCleanup(patch.stop)
        self.phases.clear()

    def entries(self):
        return [(h["kind"], h["version"], h["result"]) for h in self.apps.load()["history"]]

    def test_the_archive_comes_back_under_the_running_version_in_the_other_slot(self):
        with self.apps.locked():
            slot = restore.restore(self.apps, None)
        self.assertEqual(slot, "blue")
        self.agrees("blue")
        self.assertEqual(rows(self.data), ["cat", "dog"])
        kept = [d for d in os.listdir(os.path.dirname(self.data)) if ".before-restore-" in d]
        self.assertEqual(len(kept), 1)
        self.assertEqual(rows(os.path.join(os.path.dirname(self.data), kept[0])),
                         ["cat", "dog", "written after the backup"])
        self.assertEqual(self.entries()[-1], ("restore", "2.0", "ok"))
        # The rollback target is still the version before the last deploy.
        self.assertEqual(self.apps.load()["previous"]["version"], "1.0")
        self.assertEqual(self.phases[:2], ["restore", "start"])

    @unittest.skipUnless(os.geteuid() == 0, "owners: needs root")
    def test_the_restored_data_is_the_apps_even_from_an_archive_of_roots_files(self):
        nobody = 65534
        os.lchown(self.data, nobody, nobody)  # os.chown is the fixture's stand-in
        # An archive whose files are root's, as a backup's copy makes them.
        name = "data-20200101T000000Z"
        staging = os.path.join(self.vm.root, "old")
        os.makedirs(os.path.join(staging, "uploads"))
        shutil.copy(os.path.join(self.data, "history.sqlite3"), staging)
        tar = os.path.join(self.vm.paths.backup_dir, name + ".tar.gz")
        subprocess.run(["tar", "-czf", tar, "-C", staging, "."], check=True)
        with self.apps.locked():
            restore.restore(self.apps, name)
        for root, dirs, names in os.walk(self.data):
            for n in dirs + names + ["."]:
                self.assertEqual(os.stat(os.path.join(root, n)).st_uid, nobody, n)
        self.assertEqual(sorted(os.listdir(self.data)), ["history.sqlite3", "uploads"],
                         "the check leaves no -wal or -shm behind")

    def test_a_version_that_never_answers_on_the_restored_data_leaves_everything_as_it_was(self):
        self.healthy[self.vm.paths.slot_port("blue")] = False
        with self.apps.locked(), self.assertRaises(Failed):
            restore.restore(self.apps, self.archive)
        self.agrees("green")
        self.assertEqual(rows(self.data), ["cat", "dog", "written after the backup"])
        self.assertEqual(rows(self.data + ".restoring"), ["cat", "dog"])
        self.assertFalse([d for d in os.listdir(os.path.dirname(self.data))
                          if ".before-restore-" in d])

    def test_an_archive_that_does_not_exist_is_refused_before_anything_changes(self):
        with self.apps.locked(), self.assertRaises(Refused) as e:
            restore.restore(self.apps, "data-20200101T000000Z")
        self.assertIn("no archive named 'data-20200101T000000Z'", str(e.exception))
        self.assertIn(self.archive, str(e.exception))
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.data))),
                         [os.path.basename(self.data)])
        self.assertEqual(self.phases, [])

    def test_a_damaged_database_in_the_archive_stops_the_restore_before_the_switch(self):
        with mock.patch.object(restore, "check_databases", side_effect=Failed("damaged")):
            with self.apps.locked(), self.assertRaises(Failed):
                restore.restore(self.apps, self.archive)
        self.agrees("green")
        self.assertFalse(os.path.exists(self.data + ".restoring"))
        self.assertEqual(rows(self.data), ["cat", "dog", "written after the backup"])

    def test_check_databases_reads_each_database_and_names_a_damaged_one(self):
        self.assertEqual(restore.check_databases(self.data), 1)
        path = os.path.join(self.data, "history.sqlite3")
        with open(path, "r+b") as f:
            f.seek(4096)
            f.write(b"\xff" * 64)
        with self.assertRaises(Failed) as e:
            restore.check_databases(self.data)
        self.assertIn("history.sqlite3", str(e.exception))


@unittest.skipUnless(shutil.which("borg"), "needs BorgBackup (apt install borgbackup)")
class Borg(Fixture):
    """The same backup and restore with a real BorgBackup repository (a local path here;
    over SSH in the boot test)."""

    def setUp(self):
        super().setUp()
        self.vm.ctx.conf["borg"] = {"repo": os.path.join(self.vm.root, "repo"), "every": "daily",
                                    "known_hosts": False, "keep_hourly": 0, "keep_daily": 7,
                                    "keep_weekly": 4, "keep_monthly": 6}
        os.makedirs(os.path.dirname(self.vm.paths.borg_passphrase), exist_ok=True)
        with open(self.vm.paths.borg_passphrase, "w") as f:
            f.write("correct horse battery staple\n")
        self.data = self.vm.ctx.conf["data_dir"]
        os.makedirs(self.data)
        add_rows(self.data, "cat")

    def test_archives_go_to_the_encrypted_repository_and_come_back(self):
        first = backup.backup(self.vm.ctx)
        self.assertEqual((first["result"], first["where"], first["databases"]), ("ok", "borg", 1))
        self.assertGreater(first["stored_bytes"], 0)
        with open(os.path.join(self.vm.root, "repo", "config")) as f:
            self.assertIn("key = ", f.read(), "repokey: the key is in the repository")
        self.assertFalse(os.listdir(self.vm.paths.backup_dir), "nothing on the VM's disk")
        names = [a["name"] for a in restore.archives(self.vm.ctx)]
        self.assertEqual(names, [first["archive"]])
        self.assertEqual(restore.archives(self.vm.ctx)[0]["where"], "borg")
        # The passphrase is read from its file, never passed as an argument.
        env = borg.env(self.vm.ctx)
        self.assertNotIn("correct horse", json.dumps(env))
        self.assertEqual(env["BORG_PASSCOMMAND"], "cat " + self.vm.paths.borg_passphrase)
        dest = os.path.join(self.vm.root, "out")
        os.makedirs(dest)
        restore.extract(self.vm.ctx, first["archive"], dest)
        self.assertEqual(rows(dest), ["cat"])
        # A wrong passphrase reads nothing.
        with open(self.vm.paths.borg_passphrase, "w") as f:
            f.write("not the passphrase at all\n")
        with self.assertRaises(Failed):
            restore.archives(self.vm.ctx)

    def test_prune_keeps_what_deploy_json_says(self):
        self.vm.ctx.conf["borg"].update(keep_daily=1, keep_weekly=0, keep_monthly=0)
        backup.backup(self.vm.ctx)
        with mock.patch.object(backup.time, "strftime", return_value="data-20990101T000000Z"):
            backup.backup(self.vm.ctx)
        self.assertEqual([a["name"] for a in restore.archives(self.vm.ctx)],
                         ["data-20990101T000000Z"])
