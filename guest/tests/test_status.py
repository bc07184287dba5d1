import json
import os
import unittest

from imgforge_vm import status

from .support import Vm, ready_first_boot

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "status-v1.json")


class DeriveState(unittest.TestCase):
    def doc(self, steps, health="ok", ci="done"):
        d = status.new(list(steps))
        d["steps"].update(steps)
        d["health"] = health
        d["cloud_init"]["status"] = ci
        return d

    def test_every_step_done_and_healthy_is_ready(self):
        self.assertEqual(status.derive_state(self.doc({"a": "ok", "b": "skipped"})), "ready")

    def test_one_failed_step_or_a_cloud_init_error_is_failed(self):
        self.assertEqual(status.derive_state(self.doc({"a": "ok", "b": "failed"})), "failed")
        self.assertEqual(status.derive_state(self.doc({"a": "ok"}, ci="error")), "failed")
        self.assertEqual(status.derive_state(self.doc({"a": "ok"}, health="failed")), "failed")

    def test_anything_not_yet_done_is_pending(self):
        self.assertEqual(status.derive_state(self.doc({"a": "ok", "b": "pending"})), "pending")
        self.assertEqual(status.derive_state(self.doc({"a": "ok"}, health="pending")), "pending")


class Update(unittest.TestCase):
    def setUp(self):
        self.vm = Vm()

    def tearDown(self):
        self.vm.cleanup()

    def test_a_new_document_is_versioned_and_lists_every_step_pending(self):
        st = self.vm.ctx.update()
        self.assertEqual(st["version"], status.VERSION)
        self.assertEqual(list(st["steps"]), self.vm.ctx.step_names)
        self.assertTrue(all(v == "pending" for v in st["steps"].values()))
        self.assertEqual(st["boot_id"], "boot-1")

    def test_updates_merge_and_each_is_printed_on_the_console(self):
        self.vm.ctx.update({"firewall": "ok"})
        self.vm.ctx.update({"packages": "failed"}, error="packages: apt-get exited 100")
        st = self.vm.status()
        self.assertEqual((st["steps"]["firewall"], st["steps"]["packages"]), ("ok", "failed"))
        self.assertEqual(st["state"], "failed")
        lines = self.vm.console_lines()
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[1].startswith(status.PREFIX))
        self.assertEqual(json.loads(lines[1][len(status.PREFIX):])["error"],
                         "packages: apt-get exited 100")

    def test_a_document_of_another_version_is_started_afresh(self):
        os.makedirs(self.vm.paths.state_dir)
        with open(self.vm.paths.status, "w") as f:
            json.dump({"version": 0, "steps": {"old": "ok"}}, f)
        st = self.vm.ctx.update()
        self.assertNotIn("old", st["steps"])
        self.assertEqual(st["previous_version"], 0)


class Fixture(unittest.TestCase):
    """The document imgforge's Rust side parses (src/contract/status.rs reads the same
    file, and fails on a field of its type the file lacks)."""

    def test_a_ready_first_boot_matches_the_fixture(self):
        vm = Vm()
        try:
            st = ready_first_boot(vm.ctx)
            text = status.dumps(st)
            if os.environ.get("IMGFORGE_UPDATE_GOLDEN"):
                with open(FIXTURE, "w") as f:
                    f.write(text)
            with open(FIXTURE) as f:
                self.assertEqual(f.read(), text)
            self.assertEqual(st["state"], "ready")
        finally:
            vm.cleanup()

    def test_a_key_the_schema_lacks_is_refused(self):
        vm = Vm()
        try:
            with self.assertRaises(AssertionError) as e:
                vm.ctx.update(health="ok", healthy=True)
            self.assertIn("healthy", str(e.exception))
        finally:
            vm.cleanup()
