import os
import shutil
import subprocess
import tempfile
import unittest
from unittest import mock

from imgforge_vm import app, firstboot, proxy, status
from imgforge_vm.system import Failed

from .support import Docker, Vm, serving


class Steps(unittest.TestCase):
    def test_the_firewall_comes_before_anything_that_can_fail(self):
        self.assertEqual(firstboot.STEP_NAMES[0], "firewall")
        self.assertLess(firstboot.STEP_NAMES.index("firewall"),
                        firstboot.STEP_NAMES.index("packages"))

    def test_a_failed_step_is_recorded_and_stops_the_rest(self):
        vm = Vm()
        ran = []

        def ok(name):
            return lambda ctx: ran.append(name)

        def boom(ctx):
            raise Failed("bundle has sha256 x, expected y")

        steps = [("firewall", ok("firewall")), ("packages", ok("packages")),
                 ("image", boom), ("app", ok("app"))]
        try:
            self.assertFalse(firstboot.run_steps(vm.ctx, steps))
            st = vm.status()
            self.assertEqual(ran, ["firewall", "packages"])
            self.assertEqual(st["steps"]["firewall"], "ok")
            self.assertEqual(st["steps"]["image"], "failed")
            self.assertEqual(st["steps"]["app"], "pending")
            self.assertEqual(st["state"], "failed")
            self.assertIn("expected y", st["error"])
        finally:
            vm.cleanup()

    def test_offline_names_what_the_image_lacks(self):
        vm = Vm(offline=True)
        try:
            with mock.patch.object(firstboot.shutil, "which", lambda n: None if n == "nginx" else "/x"):
                with self.assertRaises(Failed) as e:
                    firstboot.packages(vm.ctx)
            self.assertIn("lacks nginx", str(e.exception))
        finally:
            vm.cleanup()


class DockerKey(unittest.TestCase):
    """apt trusts exactly the pinned key, whatever else the downloaded file holds."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.home = os.path.join(self.dir, "gnupg")
        os.mkdir(self.home, 0o700)
        self.fprs = [self.make_key(f"Key {n} <k{n}@example.com>") for n in (1, 2)]
        armored = subprocess.run(["gpg", "--homedir", self.home, "--armor", "--export", *self.fprs],
                                 check=True, capture_output=True).stdout
        self.server = serving(armored)

    def tearDown(self):
        self.server.close()
        shutil.rmtree(self.dir)

    def make_key(self, uid):
        subprocess.run(["gpg", "--homedir", self.home, "--batch", "--passphrase", "",
                        "--quick-gen-key", uid, "ed25519", "sign", "never"],
                       check=True, capture_output=True)
        out = subprocess.run(["gpg", "--homedir", self.home, "--with-colons", "--list-keys", uid],
                             check=True, capture_output=True, text=True).stdout
        return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))

    def keys_in(self, keyring):
        out = subprocess.run(["gpg", "--show-keys", "--with-colons", keyring],
                             check=True, capture_output=True, text=True).stdout
        return [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]

    def test_a_file_with_two_keys_yields_only_the_pinned_one(self):
        keyring = os.path.join(self.dir, "docker.gpg")
        firstboot.docker_keyring(self.server.url, keyring, fingerprint=self.fprs[1])
        self.assertEqual(self.keys_in(keyring), [self.fprs[1]])

    def test_a_file_without_the_pinned_key_is_refused(self):
        keyring = os.path.join(self.dir, "docker.gpg")
        with self.assertRaises(Failed):
            firstboot.docker_keyring(self.server.url, keyring, fingerprint="0" * 40)
        self.assertFalse(os.path.exists(keyring))

    def test_the_pin_is_dockers_published_fingerprint(self):
        self.assertEqual(firstboot.DOCKER_KEY, "9DC858229FC7DD38854AE2D88D81803C0EBFCD88")


class AptUpdate(unittest.TestCase):
    def test_update_runs_once_unless_a_source_was_added(self):
        calls = []
        with mock.patch.object(firstboot, "run", lambda *a, **k: calls.append(a)):
            firstboot._updated.clear()
            firstboot.apt("update")
            firstboot.apt("update")
            firstboot.apt("install", "ufw")
            self.assertEqual([c[len(firstboot.APT)] for c in calls], ["update", "install"])
            firstboot._updated.clear()
            firstboot.apt("update")
            self.assertEqual(len(calls), 3)


class Sshd(unittest.TestCase):
    """The effective configuration (sshd -T) is checked, not assumed."""

    OURS = "# comment\nPermitRootLogin no\nAllowUsers deploy\nHostKey /etc/ssh/ssh_host_ed25519_key\n"

    def check(self, effective):
        vm = Vm()
        self.addCleanup(vm.cleanup)
        os.makedirs(os.path.dirname(vm.paths.sshd_config))
        with open(vm.paths.sshd_config, "w") as f:
            f.write(self.OURS)
        with mock.patch.object(firstboot, "run"), \
                mock.patch.object(firstboot, "out", lambda *a, **k: effective):
            firstboot.ssh(vm.ctx)

    def test_what_sshd_runs_matches_the_file(self):
        self.check("port 22\npermitrootlogin no\nallowusers deploy\n"
                   "hostkey /etc/ssh/ssh_host_ed25519_key\n")

    def test_a_value_another_file_set_first_is_named(self):
        with self.assertRaises(Failed) as e:
            self.check("permitrootlogin yes\nallowusers deploy\n"
                       "hostkey /etc/ssh/ssh_host_ed25519_key\nhostkey /etc/ssh/ssh_host_rsa_key\n")
        self.assertIn("permitrootlogin is 'yes', not 'no'", str(e.exception))
        self.assertIn("hostkey is", str(e.exception))


class Converge(unittest.TestCase):
    """First boot run again on a VM with a deployment keeps what serves."""

    def setUp(self):
        self.vm = Vm()
        self.addCleanup(self.vm.cleanup)
        self.docker = Docker()
        self.docker.add_image("app:1", "sha256:" + "1" * 64, "1.0")
        for p in [mock.patch.object(app, "run", self.docker.run),
                  mock.patch.object(app, "out", self.docker.out),
                  mock.patch.object(proxy, "run", self.docker.run),
                  mock.patch.object(firstboot, "run", self.docker.run),
                  mock.patch.object(app, "healthy", lambda *a, **k: True),
                  mock.patch.object(proxy, "answers", lambda *a: True),
                  mock.patch.object(app.os, "chown")]:
            p.start()
            self.addCleanup(p.stop)
        apps = app.Apps(self.vm.ctx)
        with apps.locked():
            apps.deploy(apps.record("app:1", ""), kind="first-boot")
        self.vm.ctx.update({n: "ok" for n in firstboot.STEP_NAMES}, certificate="ok",
                           cloud_init={"status": "done", "errors": []}, health="ok")

    def test_a_run_again_starts_its_steps_afresh_and_says_it_runs_again(self):
        seen = []
        with mock.patch.object(firstboot, "run_steps", lambda ctx, _: seen.append(status.read(ctx.paths))):
            firstboot.deploy(self.vm.ctx)
        st = seen[0]
        self.assertEqual(st["first_boot"]["runs"], 2)
        self.assertEqual(st["first_boot"]["kept"], "1.0")
        self.assertTrue(all(v == "pending" for v in st["steps"].values()), st["steps"])
        self.assertEqual((st["state"], st["cloud_init"]["status"]), ("pending", "running"))
        self.assertEqual((st["certificate"], st["app"]["version"]), ("ok", "1.0"))

    def test_the_image_and_the_app_are_kept_not_deployed_again(self):
        with mock.patch.object(firstboot, "fetch_image") as fetch:
            self.assertEqual(firstboot.image(self.vm.ctx), "kept")
            fetch.assert_not_called()
        deploys = len(app.Apps(self.vm.ctx).load()["history"])
        self.assertEqual(firstboot.app(self.vm.ctx), "kept")
        self.assertEqual(len(app.Apps(self.vm.ctx).load()["history"]), deploys)
