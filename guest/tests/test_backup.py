import os
import tempfile
import time
import unittest

from imgforge_vm import backup


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
