import fcntl
import os
import unittest
from unittest import mock

from imgforge_vm import app
from imgforge_vm.system import Failed

from .support import Docker, Vm


class Argv(unittest.TestCase):
    def test_the_container_runs_confined_on_loopback_by_image_id(self):
        vm = Vm()
        try:
            rec = {"image_id": "sha256:abc", "env_file": "/etc/imgforge/app/x.env"}
            argv = app.docker_run_argv(vm.ctx.conf, vm.paths, "green", rec)
            joined = " ".join(argv)
            for flag in ["--read-only", "--cap-drop ALL", "--security-opt no-new-privileges",
                         "--pids-limit 512", "--memory 1g", "--publish 127.0.0.1:8001:8000",
                         "--env-file /etc/imgforge/app/x.env", "--name imgforge-app-green"]:
                self.assertIn(flag, joined)
            self.assertEqual(argv[-1], "sha256:abc")
        finally:
            vm.cleanup()

    def test_the_upstream_names_one_loopback_port(self):
        self.assertIn("server 127.0.0.1:8001;", app.upstream_conf(8001))
        with self.assertRaises(ValueError):
            app.upstream_conf("8001; include /etc/passwd")


class Deploys(unittest.TestCase):
    def setUp(self):
        self.vm = Vm()
        self.docker = Docker()
        self.docker.add_image("app:1", "sha256:" + "1" * 64, "1.0")
        self.docker.add_image("app:2", "sha256:" + "2" * 64, "2.0")
        self.docker.add_image("app:3", "sha256:" + "3" * 64, "3.0")
        self.healthy = {}
        patches = [mock.patch.object(app, "run", self.docker.run),
                   mock.patch.object(app, "out", self.docker.out),
                   mock.patch.object(app, "healthy", self.is_healthy),
                   mock.patch.object(app.os, "chown"),
                   mock.patch.object(app.time, "sleep")]
        for p in patches:
            p.start()
            self.addCleanup(p.stop)
        self.apps = app.Apps(self.vm.ctx)

    def tearDown(self):
        self.vm.cleanup()

    def is_healthy(self, url, timeout, interval=1.0):
        port = int(url.split(":")[2].split("/")[0])
        return self.healthy.get(port, True)

    def upstream(self):
        with open(self.vm.paths.nginx_upstream) as f:
            return f.read()

    def deploy(self, ref, env="A=1\n", **kw):
        with self.apps.locked():
            return self.apps.deploy(self.apps.record(ref, env), **kw)

    def test_first_deploy_goes_to_blue_then_the_next_to_green(self):
        self.assertEqual(self.deploy("app:1", kind="first-boot"), "blue")
        self.assertIn(":8000;", self.upstream())
        self.assertEqual(self.deploy("app:2"), "green")
        self.assertIn(":8001;", self.upstream())
        st = self.apps.load()
        self.assertEqual(st["active"], "green")
        self.assertEqual(st["previous"]["version"], "1.0")
        # The old slot is disabled (a reboot starts green) and stopped after the switch.
        self.assertIn(["systemctl", "disable", "imgforge-app@blue.service"], self.docker.calls)
        stops = self.docker.ran("systemctl", "stop", "imgforge-app@blue.service")
        self.assertTrue(stops)
        status = self.vm.status()
        self.assertEqual(status["app"]["version"], "2.0")
        self.assertEqual([d["result"] for d in status["deploys"]], ["ok", "ok"])

    def test_first_boot_takes_over_the_prestarted_version_without_restarting_it(self):
        with self.apps.locked():
            self.apps.prestart(self.apps.record("app:1", "A=1\n"))
        blue = "imgforge-app@blue.service"
        self.assertEqual(self.docker.units[blue], "activating")
        self.assertIsNone(self.apps.active(), "no traffic before it is healthy")
        calls = len(self.docker.calls)
        self.assertEqual(self.deploy("app:1", kind="first-boot"), "blue")
        self.assertFalse([c for c in self.docker.calls[calls:]
                          if c[:2] in (["systemctl", "start"], ["systemctl", "stop"])])
        self.assertIn(":8000;", self.upstream())
        # Once a version serves, prestart leaves everything alone.
        calls = len(self.docker.calls)
        with self.apps.locked():
            self.apps.prestart(self.apps.record("app:2", ""))
        self.assertEqual(len(self.docker.calls), calls + 1)  # the image inspect
        self.assertEqual(self.apps.load()["running"]["blue"]["image"], "app:1")

    def test_a_prestarted_version_that_stopped_or_differs_is_started_again(self):
        blue = "imgforge-app@blue.service"
        with self.apps.locked():
            self.apps.prestart(self.apps.record("app:1", "A=1\n"))
        self.docker.units[blue] = "failed"
        starts = len(self.docker.ran("systemctl", "start", "--no-block", blue))
        self.deploy("app:1", kind="first-boot")
        self.assertEqual(len(self.docker.ran("systemctl", "start", "--no-block", blue)),
                         starts + 1)
        vm2 = Vm()
        self.addCleanup(vm2.cleanup)
        apps = app.Apps(vm2.ctx)
        with apps.locked():
            apps.prestart(apps.record("app:1", "A=1\n"))
            starts = len(self.docker.ran("systemctl", "start", "--no-block", blue))
            apps.deploy(apps.record("app:1", "A=2\n"), kind="first-boot")
        self.assertEqual(len(self.docker.ran("systemctl", "start", "--no-block", blue)),
                         starts + 1)

    def test_a_version_that_never_gets_healthy_switches_nothing(self):
        self.deploy("app:1")
        self.deploy("app:2")
        before = self.upstream()
        self.healthy[8000] = False  # app:3 would go to blue
        with self.assertRaises(Failed) as e:
            self.deploy("app:3")
        self.assertIn("did not answer /health", str(e.exception))
        self.assertEqual(self.upstream(), before)
        st = self.apps.load()
        self.assertEqual(st["active"], "green")
        # Blue still holds the version it had: the rollback target is untouched.
        self.assertEqual(st["running"]["blue"]["version"], "1.0")
        self.assertEqual(st["previous"]["version"], "1.0")
        self.assertEqual(st["history"][-1]["result"], "failed")
        self.assertEqual(self.vm.status()["deploys"][-1]["result"], "failed")

    def test_rollback_returns_to_the_version_before(self):
        self.deploy("app:1")
        self.deploy("app:2", env="A=2\n")
        with self.apps.locked():
            self.assertEqual(self.apps.rollback(), "blue")
        st = self.apps.load()
        self.assertEqual(st["running"][st["active"]]["version"], "1.0")
        self.assertEqual(st["previous"]["version"], "2.0")
        self.assertEqual(st["history"][-1]["kind"], "rollback")

    def test_rollback_without_a_previous_version_is_an_error(self):
        self.deploy("app:1")
        with self.assertRaises(Failed), self.apps.locked():
            self.apps.rollback()

    def test_environment_files_are_0600_and_unused_ones_removed(self):
        self.deploy("app:1", env="A=1\n")
        self.deploy("app:2", env="A=2\n")
        self.deploy("app:3", env="A=3\n")
        files = sorted(os.listdir(self.vm.paths.app_env_dir))
        self.assertEqual(len(files), 2)  # the running version and the rollback target
        for name in files:
            mode = os.stat(os.path.join(self.vm.paths.app_env_dir, name)).st_mode & 0o777
            self.assertEqual(mode, 0o600)

    def test_a_second_deploy_while_one_runs_is_refused(self):
        os.makedirs(self.vm.paths.state_dir, exist_ok=True)
        with open(os.path.join(self.vm.paths.state_dir, "deploy.lock"), "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            with self.assertRaises(Failed) as e:
                self.deploy("app:1")
        self.assertIn("another deploy is running", str(e.exception))


if __name__ == "__main__":
    unittest.main()
