import fcntl
import json
import os
import subprocess
import unittest
from unittest import mock

from imgforge_vm.layout import Layout
from imgforge_vm import app, proxy, remote
from imgforge_vm.system import Failed

from .support import Docker, Vm

BLUE, GREEN = "imgforge-app@blue.service", "imgforge-app@green.service"


class Argv(unittest.TestCase):
    def test_the_container_runs_confined_on_loopback_by_image_id(self):
        vm = Vm()
        try:
            rec = {"image_id": "sha256:abc", "env_file": "/etc/imgforge/app/x.env"}
            argv = app.docker_run_argv(vm.ctx.conf, vm.paths, "green", rec)
            joined = " ".join(argv)
            for flag in ["--read-only", "--cap-drop ALL", "--security-opt no-new-privileges",
                         "--pids-limit 512", "--memory 1g", "--publish 127.0.0.1:8001:8000",
                         "--env-file /etc/imgforge/app/x.env", "--name imgforge-app-green",
                         "--no-healthcheck"]:
                self.assertIn(flag, joined)
            self.assertEqual(argv[-1], "sha256:abc")
        finally:
            vm.cleanup()

    def test_the_upstream_names_one_loopback_port(self):
        paths = Layout.load()
        text = proxy.upstream_conf(paths, 8001)
        self.assertIn("server 127.0.0.1:8001;", text)
        self.assertIn(f"upstream {paths.upstream} {{", text)
        with self.assertRaises(ValueError):
            proxy.upstream_conf(paths, "8001; include /etc/passwd")


class Fixture(unittest.TestCase):
    """A VM whose commands are recorded: nginx runs the upstream it last reloaded."""

    def setUp(self):
        self.vm = Vm()
        self.docker = Docker()
        for ref, n in (("app:1", "1"), ("app:2", "2"), ("app:3", "3")):
            self.docker.add_image(ref, "sha256:" + n * 64, n + ".0")
        self.healthy = {}
        self.nginx_port = None
        self.phases = []
        run = self.docker.run

        def run_and_reload(*argv, **kw):
            res = run(*argv, **kw)
            if argv[0] == "systemctl" and "nginx.service" in argv and res.returncode == 0:
                self.nginx_port = remote.upstream_port(self.vm.paths)
            if argv[0] == "journalctl":
                res.stdout = "loading the model\nTOKEN=s3cret in a log line\n"
            return res

        patches = [mock.patch.object(app, "run", run_and_reload),
                   mock.patch.object(proxy, "run", run_and_reload),
                   mock.patch.object(app, "out", self.docker.out),
                   mock.patch.object(app, "healthy", self.is_healthy),
                   mock.patch.object(app, "phase", self.phase),
                   mock.patch.object(remote, "phase", self.phase),
                   mock.patch.object(remote, "run", run_and_reload),
                   mock.patch.object(remote, "draining", lambda: False),
                   mock.patch.object(app.os, "chown"),
                   mock.patch.object(app.time, "sleep")]
        for p in patches:
            p.start()
            self.addCleanup(p.stop)
        # Day two's deploys (first boot's program has the core: no drain, prune or
        # rollback), unwatched unless a test watches (class Watch).
        self.apps = remote.Deploys(self.vm.ctx, watch_s=0)

    def tearDown(self):
        self.vm.cleanup()

    def phase(self, paths, name, what):
        self.phases.append(name)

    def is_healthy(self, url, timeout, interval=1.0):
        port = int(url.split(":")[2].split("/")[0])
        return self.healthy.get(port, True)

    def upstream(self):
        with open(self.vm.paths.nginx_upstream) as f:
            return f.read()

    def deploy(self, ref, env="A=1\n", **kw):
        with self.apps.locked():
            return self.apps.deploy(self.apps.record(ref, env), **kw)

    def agrees(self, slot):
        """app.json, the upstream file, nginx and the units enabled for boot name slot."""
        port = self.vm.paths.slot_port(slot)
        self.assertEqual(self.apps.active(), slot)
        self.assertEqual(remote.upstream_port(self.vm.paths), port)
        self.assertEqual(self.nginx_port, port, "nginx runs another upstream")
        self.assertEqual(self.docker.enabled, {app.unit(slot)})
        self.assertFalse(os.path.exists(self.vm.paths.switch_intent))


class Deploys(Fixture):
    def test_first_deploy_goes_to_blue_then_the_next_to_green(self):
        self.assertEqual(self.deploy("app:1", kind="first-boot"), "blue")
        self.agrees("blue")
        self.assertEqual(self.deploy("app:2"), "green")
        self.agrees("green")
        self.assertEqual(self.phases, ["start", "health", "switch"] * 2 + ["drain"])
        st = self.apps.load()
        self.assertEqual(st["previous"]["version"], "1.0")
        # The old slot is stopped after the switch.
        self.assertEqual(self.docker.units[BLUE], "inactive")
        status = self.vm.status()
        self.assertEqual(status["app"]["version"], "2.0")
        self.assertEqual([d["result"] for d in status["deploys"]], ["ok", "ok"])

    def test_first_boots_program_stops_the_old_slot_without_draining_or_pruning(self):
        core = app.Apps(self.vm.ctx)
        with core.locked():
            core.deploy(core.record("app:1", ""))
            core.deploy(core.record("app:2", ""))
        self.assertEqual(self.phases, ["start", "health", "switch"] * 2)
        self.assertEqual(self.docker.units[BLUE], "inactive")
        self.assertFalse(self.docker.ran("docker", "image", "rm"))

    def test_a_deploy_waits_as_long_as_the_start_allowance_unless_told(self):
        waits = []
        with mock.patch.object(app, "healthy", lambda url, t, *a: waits.append(t) or True):
            self.deploy("app:1")
            self.deploy("app:2", health_timeout=900)
        self.assertEqual(waits, [600, 900])
        # The slot keeps the longer of the two as its own allowance (its unit reads it).
        self.assertEqual(self.apps.load()["running"]["green"]["start_timeout"], 900)

    def test_first_boot_takes_over_the_prestarted_version_without_restarting_it(self):
        with self.apps.locked():
            self.apps.prestart(self.apps.record("app:1", "A=1\n"))
        self.assertEqual(self.docker.units[BLUE], "activating")
        self.assertIsNone(self.apps.active(), "no traffic before it is healthy")
        calls = len(self.docker.calls)
        self.assertEqual(self.deploy("app:1", kind="first-boot"), "blue")
        self.assertFalse([c for c in self.docker.calls[calls:]
                          if c[:2] in (["systemctl", "start"], ["systemctl", "stop"])])
        self.agrees("blue")
        # Once a version serves, prestart leaves everything alone.
        calls = len(self.docker.calls)
        with self.apps.locked():
            self.apps.prestart(self.apps.record("app:2", ""))
        self.assertEqual(len(self.docker.calls), calls + 1)  # the image inspect
        self.assertEqual(self.apps.load()["running"]["blue"]["image"], "app:1")

    def test_a_prestarted_version_that_stopped_or_differs_is_started_again(self):
        with self.apps.locked():
            self.apps.prestart(self.apps.record("app:1", "A=1\n"))
        self.docker.units[BLUE] = "failed"
        starts = len(self.docker.ran("systemctl", "start", "--no-block", BLUE))
        self.deploy("app:1", kind="first-boot")
        self.assertEqual(len(self.docker.ran("systemctl", "start", "--no-block", BLUE)), starts + 1)
        vm2 = Vm()
        self.addCleanup(vm2.cleanup)
        apps = app.Apps(vm2.ctx)
        with apps.locked():
            apps.prestart(apps.record("app:1", "A=1\n"))
            starts = len(self.docker.ran("systemctl", "start", "--no-block", BLUE))
            apps.deploy(apps.record("app:1", "A=2\n"), kind="first-boot")
        self.assertEqual(len(self.docker.ran("systemctl", "start", "--no-block", BLUE)), starts + 1)

    def test_a_version_that_never_gets_healthy_switches_nothing_and_its_log_stays_root_only(self):
        self.deploy("app:1")
        self.deploy("app:2")
        before = self.upstream()
        self.healthy[8000] = False  # app:3 would go to blue
        with self.assertRaises(Failed) as e:
            self.deploy("app:3")
        log = self.vm.paths.under("log_dir", "app-blue.log")
        self.assertIn("did not answer /health", str(e.exception))
        self.assertIn(log, str(e.exception))
        self.assertNotIn("s3cret", str(e.exception))
        self.assertEqual(self.upstream(), before)
        self.agrees("green")
        st = self.apps.load()
        # Blue still holds the version it had: the rollback target is untouched.
        self.assertEqual(st["running"]["blue"]["version"], "1.0")
        self.assertEqual(st["previous"]["version"], "1.0")
        self.assertEqual(st["history"][-1]["result"], "failed")
        # The app's lines are in a root-only file, not in status.json or on the console.
        with open(log) as f:
            self.assertIn("s3cret", f.read())
        self.assertEqual(os.stat(log).st_mode & 0o777, 0o600)
        with open(self.vm.paths.status) as f:
            self.assertNotIn("s3cret", f.read())
        self.assertFalse([line for line in self.vm.console_lines() if "s3cret" in line])
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
        self.agrees("blue")

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
            with self.assertRaises(app.Refused) as e:
                self.deploy("app:1")
        self.assertIn("another deploy is running", str(e.exception))


class Switch(Fixture):
    """Whatever ends a switch early leaves one version serving, everywhere."""

    def test_nginx_refusing_the_new_upstream_leaves_the_old_version_everywhere(self):
        self.deploy("app:1")
        self.docker.fail = ("nginx", "-t")
        with self.assertRaises(Failed):
            self.deploy("app:2")
        self.docker.fail = None
        self.agrees("blue")
        self.assertEqual(self.docker.units[GREEN], "inactive")
        last = self.apps.load()["history"][-1]
        self.assertEqual((last["version"], last["result"]), ("2.0", "failed"))
        self.assertIn("switching traffic", last["error"])

    def test_a_kill_in_the_middle_of_the_switch_restores_the_version_before(self):
        self.deploy("app:1")

        def killed(paths, name, what):
            if name == "switch":
                raise KeyboardInterrupt  # what SIGINT or the deploy unit's SIGTERM raise
        with mock.patch.object(app, "phase", killed), self.assertRaises(KeyboardInterrupt):
            self.deploy("app:2")
        self.agrees("blue")
        self.assertEqual(self.docker.units[GREEN], "inactive")
        self.assertEqual(self.apps.load()["history"][-1]["result"], "failed")

    def cut(self, committed):
        """The state a power cut leaves: blue served, the intent written, green enabled,
        the upstream on green; with `committed`, app.json already names green."""
        self.deploy("app:1")
        st = self.apps.load()
        green = dict(self.apps.record("app:2", "A=2\n"), start_timeout=600)
        st["running"]["green"] = green
        if committed:
            st["previous"], st["active"] = st["running"]["blue"], "green"
        self.apps.save(st)
        with open(self.vm.paths.switch_intent, "w") as f:
            json.dump({"from": "blue", "to": "green", "record": green, "started": "t"}, f)
        self.docker.enabled.add(GREEN)
        proxy.point_upstream(self.vm.paths, 8001)
        self.docker.units[GREEN] = "active"

    def test_a_switch_cut_before_its_commit_is_undone_at_the_next_start(self):
        self.cut(committed=False)
        changed = self.apps.recover()
        self.assertTrue(changed)
        self.agrees("blue")
        self.assertEqual(self.docker.units[GREEN], "inactive")
        last = self.vm.status()["deploys"][-1]
        self.assertEqual((last["version"], last["result"]), ("2.0", "interrupted"))
        self.assertEqual(self.apps.recover(), [], "a second start finds nothing to do")

    def test_a_switch_cut_after_its_commit_is_finished_at_the_next_start(self):
        self.cut(committed=True)
        self.apps.recover()
        self.agrees("green")
        self.assertEqual(self.docker.units[BLUE], "inactive")
        self.assertEqual(self.vm.status()["deploys"][-1]["result"], "ok")
        self.assertEqual(self.vm.status()["app"]["version"], "2.0")

    def test_at_boot_the_slot_app_json_does_not_name_is_kept_from_starting(self):
        self.cut(committed=False)
        self.nginx_port = None  # nginx starts after the recovery
        with self.apps.locked():
            self.apps.reconcile(booting=True)
        self.assertEqual(remote.upstream_port(self.vm.paths), 8000)
        self.assertIn(["systemctl", "stop", "--no-block", GREEN], self.docker.calls)
        self.assertEqual(self.docker.enabled, {BLUE})


class Child:
    """A `docker run` that runs until `exits_after` checks, or until killed."""

    def __init__(self, docker, exits_after=None):
        self.docker, self.exits_after, self.checks = docker, exits_after, 0

    def wait(self, timeout=None):
        if self.docker.ran("docker", "kill") or self.checks == self.exits_after:
            return 137
        self.checks += 1
        raise subprocess.TimeoutExpired("docker", timeout)


class Supervise(unittest.TestCase):
    """The slot's unit: a slow start is not a fault; a sustained failure after it is."""

    def setUp(self):
        self.vm = Vm()
        self.docker = Docker()
        self.clock = [0.0]
        patches = [mock.patch.object(app, "run", self.docker.run),
                   mock.patch.object(app.signal, "signal"),
                   mock.patch.object(app.time, "monotonic", lambda: self.clock[0])]
        for p in patches:
            p.start()
            self.addCleanup(p.stop)
        self.apps = app.Apps(self.vm.ctx)
        self.apps.save({"active": "blue", "history": [], "previous": None, "running": {
            "blue": {"image_id": "sha256:1", "env_file": "/x.env", "version": "1.0",
                     "start_timeout": 300}}})

    def tearDown(self):
        self.vm.cleanup()

    def supervise(self, answers, exits_after=None):
        """Runs the unit with the health path answering as `answers` says at each check
        (10 s apart); returns the docker kills and the checks made."""
        child = Child(self.docker, exits_after)
        seq = iter(answers)

        def answer(url, timeout=10):
            self.clock[0] += app.LIVENESS_INTERVAL
            return next(seq, answers[-1])
        with mock.patch.object(app.subprocess, "Popen", lambda *a, **k: child), \
                mock.patch.object(app, "answers", answer):
            code = self.apps.supervise("blue")
        return code, len(self.docker.ran("docker", "kill")), child.checks

    def test_a_container_still_loading_within_its_allowance_is_never_restarted(self):
        code, kills, checks = self.supervise([False] * 29, exits_after=29)
        self.assertEqual((kills, checks), (0, 29))  # 290 s of silence, allowance 300 s
        self.assertEqual(code, 137)

    def test_one_that_answered_then_stops_answering_is_restarted_after_a_sustained_failure(self):
        code, kills, checks = self.supervise([True] + [False] * 10)
        self.assertEqual((kills, checks), (1, 1 + app.LIVENESS_FAILURES))

    def test_a_short_failure_is_forgiven(self):
        answers = [True] + [False] * (app.LIVENESS_FAILURES - 1) + [True] * 5
        _, kills, _ = self.supervise(answers, exits_after=len(answers))
        self.assertEqual(kills, 0)

    def test_one_that_never_answers_is_restarted_once_its_allowance_is_over(self):
        _, kills, checks = self.supervise([False] * 100)
        self.assertEqual(kills, 1)
        self.assertEqual(checks, 300 // app.LIVENESS_INTERVAL + app.LIVENESS_FAILURES)


class Watch(Fixture):
    """After the switch the old version stays nginx's backup, and a new one that fails
    its health or answers 5xx more than the old one did loses the traffic again."""

    def setUp(self):
        super().setUp()
        self.clock = [1_800_000_000.0]
        self.checks = []
        self.health = lambda n: True
        for p in (mock.patch.object(remote.time, "time", lambda: self.clock[0]),
                  mock.patch.object(remote, "answers", self.answer)):
            p.start()
            self.addCleanup(p.stop)
        self.deploy("app:1", kind="first-boot")
        self.apps = remote.Deploys(self.vm.ctx, watch_s=60)

    def answer(self, url, timeout=10):
        """The new slot's health at this check; time goes on by the check interval."""
        self.clock[0] += remote.WATCH_INTERVAL
        self.checks.append(self.upstream())
        return self.health(len(self.checks))

    def test_a_healthy_version_keeps_the_traffic_and_the_old_one_stops_being_the_backup(self):
        self.assertEqual(self.deploy("app:2"), "green")
        self.assertIn("server 127.0.0.1:8000 backup;", self.checks[0])
        self.assertEqual(len(self.checks), 60 // remote.WATCH_INTERVAL)
        self.assertNotIn("backup", self.upstream())
        self.agrees("green")
        self.assertEqual(self.phases, ["start", "health", "switch"] * 2 + ["watch", "drain"])
        self.assertEqual(self.docker.units[BLUE], "inactive")

    def test_one_whose_health_fails_gives_the_traffic_back_and_the_deploy_fails(self):
        self.health = lambda n: n < 10
        with self.assertRaises(Failed) as e:
            self.deploy("app:2")
        self.assertIn("the watch switched traffic back to 1.0: 2.0 its health path failed 3 "
                      "times in a row", str(e.exception))
        self.assertEqual(len(self.checks), 12)
        self.agrees("blue")
        self.assertNotIn("backup", self.upstream())
        self.assertEqual(self.docker.units[GREEN], "inactive")
        st = self.apps.load()
        self.assertIsNone(st["previous"], "a rollback would go to the version that failed")
        last = st["history"][-1]
        self.assertEqual((last["version"], last["result"]), ("2.0", "rolled-back"))
        self.assertEqual(self.vm.status()["app"]["version"], "1.0")

    def test_more_5xx_than_the_old_version_gives_the_traffic_back(self):
        def access(t, status):
            return json.dumps({"msec": t, "remote": "10.0.2.2", "method": "GET", "uri": "/",
                               "status": status, "bytes": 1, "request_time": 0.01,
                               "upstream_time": "0.01"}) + "\n"
        log = self.vm.paths.nginx_access_log
        os.makedirs(os.path.dirname(log), exist_ok=True)
        before = self.clock[0]
        with open(log, "w") as f:
            f.write("".join(access(before - 100 + i, 500 if i < 2 else 200) for i in range(100)))
        os.utime(log, (before, before))

        def health(n):
            with open(log, "a") as f:
                f.write("".join(access(self.clock[0] - 1, 503 if i % 2 else 200)
                                for i in range(4)))
            os.utime(log, (self.clock[0], self.clock[0]))  # the fake clock's "now"
            return True
        self.health = health
        with self.assertRaises(Failed) as e:
            self.deploy("app:2")
        self.assertIn("6 of its answers were 5xx (50%) 6 s after the switch", str(e.exception))
        self.assertIn("against 2% before", str(e.exception))
        self.agrees("blue")


if __name__ == "__main__":
    unittest.main()
