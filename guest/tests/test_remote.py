import hashlib
import http.server
import io
import json
import os
import shutil
import time
import unittest
import zipfile
from unittest import mock

from imgforge_vm import app, backup, install, proxy, remote
from imgforge_vm.app import Refused
from imgforge_vm.system import Failed, write_atomic

from . import schema
from .support import Docker, Server, Vm, ready_first_boot


def stream(head, body=b""):
    return io.BytesIO(json.dumps(head).encode() + b"\n" + body)


class Request(unittest.TestCase):
    def test_needs_an_image_and_env_lines_of_name_value(self):
        with self.assertRaises(Refused):
            remote.request(stream({"env": "A=1\n"}))
        with self.assertRaises(Refused):
            remote.request(stream({"image": "x:1", "env": "A=1\nnot a line\n"}))
        with self.assertRaises(Refused):
            remote.request(io.BytesIO(b"{not json\n"))
        head = remote.request(stream({"image": "x:1", "env": "# c\nA=it's $HOME\n"}))
        self.assertEqual(head["image"], "x:1")
        self.assertEqual(remote.request(stream({"drain": 5}), image=False)["drain"], 5)


class Receive(unittest.TestCase):
    def setUp(self):
        self.vm = Vm()
        self.dest = os.path.join(self.vm.root, "in.tar")
        self.body = os.urandom(3 << 20)
        self.sha = hashlib.sha256(self.body).hexdigest()

    def tearDown(self):
        self.vm.cleanup()

    def receive(self, data, size=None, sha=None):
        remote.receive(self.vm.paths, io.BytesIO(data), self.dest,
                       len(self.body) if size is None else size, sha or self.sha)

    def test_exactly_size_bytes_are_taken_and_checked(self):
        self.receive(self.body + b"trailing")
        with open(self.dest, "rb") as f:
            self.assertEqual(f.read(), self.body)
        self.assertEqual(os.stat(self.dest).st_mode & 0o777, 0o600)

    def test_a_short_bundle_fails_and_an_altered_one_is_refused_leaving_nothing(self):
        with self.assertRaises(Failed):
            self.receive(self.body[:-1])
        self.assertFalse(os.path.exists(self.dest))
        with self.assertRaises(Refused) as e:
            self.receive(b"x" + self.body[1:])
        self.assertIn("nothing changed", str(e.exception))
        self.assertFalse(os.path.exists(self.dest))
        with self.assertRaises(Refused):
            self.receive(b"", size=-1)


class Jobs(unittest.TestCase):
    """Deploys as units: submitted over SSH, run on their own, followed by whoever asks."""

    def setUp(self):
        self.vm = Vm()
        self.docker = Docker()
        self.docker.add_image("app:1", "sha256:" + "1" * 64, "1.0")
        self.docker.add_image("app:2", "sha256:" + "2" * 64, "2.0")
        self.unit = "inactive"
        run = self.docker.run

        def fake(*argv, **kw):
            if argv[0] == "systemd-run":
                self.unit = "active"
            if argv[:2] == ("systemctl", "show") and argv[-1] == "imgforge-deploy.service":
                self.docker.calls.append(list(argv))
                return mock.Mock(returncode=0, stdout=self.unit + "\n", stderr="")
            return run(*argv, **kw)
        patches = [mock.patch.object(m, "run", fake) for m in (app, proxy, remote)] + [
            mock.patch.object(app, "out", self.docker.out),
            mock.patch.object(app, "healthy", lambda *a, **k: True),
            mock.patch.object(remote, "running_port", lambda *a: None),
            mock.patch.object(remote, "draining", lambda: False),
            mock.patch.object(app.os, "chown"), mock.patch.object(app.time, "sleep"),
            mock.patch.object(remote.time, "sleep")]
        for p in patches:
            p.start()
            self.addCleanup(p.stop)
        self.jobs = remote.Jobs(self.vm.ctx)
        self.apps = remote.Deploys(self.vm.ctx, watch_s=0)
        with self.apps.locked():
            self.apps.deploy(self.apps.record("app:1", "TOKEN=a b\n"))

    def tearDown(self):
        self.vm.cleanup()

    def submit(self, body=b"bundle bytes", sha=None, env=None):
        head = {"image": "app:2", "env": env, "watch": 0,
                "bundle": {"size": len(body), "sha256": sha or hashlib.sha256(body).hexdigest()}}
        return self.jobs.submit("deploy", head, io.BytesIO(body))

    def test_a_deploy_is_submitted_as_its_own_unit_with_a_root_only_request_and_log(self):
        job = self.submit(env="SECRET=x\n")
        started = self.docker.ran("systemd-run")[0]
        self.assertEqual(started[-2:], ["run-job", job])
        self.assertIn("StandardError=append:" + self.jobs.path(job, "log"), started)
        for suffix in ("request", "log", "oci.tar"):
            self.assertEqual(os.stat(self.jobs.path(job, suffix)).st_mode & 0o777, 0o600, suffix)
        with open(self.jobs.path(job, "request")) as f:
            self.assertEqual(json.load(f)["bundle"], self.jobs.path(job, "oci.tar"))
        self.assertEqual(self.jobs.latest(), job)
        # One at a time: the unit's name is taken.
        with self.assertRaises(Refused) as e:
            self.submit()
        self.assertIn("another deploy is running", str(e.exception))

    def test_a_bundle_that_is_not_the_one_sent_is_refused_and_starts_nothing(self):
        with self.assertRaises(Refused):
            self.submit(sha="0" * 64)
        self.assertFalse(self.docker.ran("systemd-run"))
        self.assertFalse([n for n in os.listdir(self.vm.paths.jobs_dir) if n != "latest"])

    def test_the_job_deploys_keeps_the_environment_and_removes_its_request(self):
        job = self.submit()
        self.assertEqual(self.jobs.run(job), 0)
        self.assertFalse(os.path.exists(self.jobs.path(job, "request")))
        self.assertFalse(os.path.exists(self.jobs.path(job, "oci.tar")))
        self.assertTrue(self.docker.ran("docker", "load"))
        self.assertEqual(self.apps.env_text(), "TOKEN=a b\n")
        with open(self.jobs.path(job, "result")) as f:
            result = json.load(f)
        self.assertEqual((result["exit"], result["entry"]["version"]), (0, "2.0"))

    def test_a_failed_job_says_why_and_shows_the_app_log_to_the_client_only(self):
        job = self.submit()
        with mock.patch.object(app, "healthy", lambda *a, **k: False):
            self.assertEqual(self.jobs.run(job), 1)
        with open(self.jobs.path(job, "result")) as f:
            result = json.load(f)
        self.assertIn("did not answer /health", result["error"])
        self.assertEqual(result["entry"]["result"], "failed")

    def test_a_failed_job_tells_the_webhook_and_a_refused_one_does_not(self):
        posts = []

        class Hook(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers["Content-Length"])
                posts.append((self.headers["Content-Type"], json.loads(self.rfile.read(n))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass
        hook = Server(Hook)
        self.addCleanup(hook.close)
        paths = self.vm.paths
        os.makedirs(os.path.dirname(paths.curl_bin))
        os.symlink(shutil.which("curl"), paths.curl_bin)
        write_atomic(paths.notify_curlrc, f'url = "{hook.url}/hook"\n', 0o600)
        self.vm.ctx.conf.update(notify=True, domain="api.example.com")
        job = self.submit()
        with mock.patch.object(app, "healthy", lambda *a, **k: False):
            self.assertEqual(self.jobs.run(job), 1)
        self.assertEqual(len(posts), 1)
        kind, body = posts[0]
        self.assertEqual((kind, body["event"], body["host"]),
                         ("application/json", "deploy-failed", "api.example.com"))
        self.assertIn("did not answer /health", body["text"])
        self.assertEqual(body["text"], body["content"])
        # Refused (exit 2: the client hears why at once): nothing to tell.
        self.unit = "inactive"
        job = self.jobs.submit("rollback", {"watch": 0}, io.BytesIO())
        with mock.patch.object(remote.Deploys, "rollback", side_effect=Refused("no")):
            self.assertEqual(self.jobs.run(job), 2)
        self.assertEqual(len(posts), 1)

    def test_follow_copies_the_log_and_returns_the_result(self):
        job = self.submit()
        with open(self.jobs.path(job, "log"), "a") as f:
            f.write("imgforge: [load] loading the image into Docker\n")
        with open(self.jobs.path(job, "result"), "w") as f:
            json.dump({"id": job, "exit": 0, "entry": {"version": "2.0"}}, f)
        out = io.StringIO()
        result = self.jobs.follow(job, out)
        self.assertIn("[load]", out.getvalue())
        self.assertEqual(remote.answer(result), {"version": "2.0"})

    def test_a_job_that_died_without_a_result_is_a_failure_not_a_hang(self):
        job = self.submit()
        self.unit = "inactive"
        with self.assertRaises(Failed):
            self.jobs.follow(job, io.StringIO())

    def test_attach_without_a_running_deploy_says_how_the_last_one_ended(self):
        with self.assertRaises(Refused) as e:
            remote.attach(self.vm.ctx, None)
        self.assertIn("none ran before", str(e.exception))
        job = self.submit()
        self.jobs.run(job)
        self.unit = "inactive"
        with self.assertRaises(Refused) as e:
            remote.attach(self.vm.ctx, None)
        self.assertIn(f"the last one ({job}, 2.0) ended ok", str(e.exception))


class Serving(unittest.TestCase):
    """status's check: the path users take, and everything naming the same slot."""

    def setUp(self):
        self.vm = Vm()
        self.docker = Docker()
        self.docker.add_image("app:1", "sha256:" + "1" * 64, "1.0")
        for p in [mock.patch.object(m, "run", self.docker.run) for m in (app, proxy, remote)] + [
                mock.patch.object(app, "out", self.docker.out),
                mock.patch.object(app, "healthy", lambda *a, **k: True),
                mock.patch.object(proxy, "user_path", lambda *a: 200),
                mock.patch.object(app.os, "chown")]:
            p.start()
            self.addCleanup(p.stop)
        self.running = mock.patch.object(remote, "running_port", lambda *a: 8000)
        self.running.start()
        self.addCleanup(self.running.stop)
        apps = app.Apps(self.vm.ctx)
        with apps.locked():
            apps.deploy(apps.record("app:1", ""))

    def tearDown(self):
        self.vm.cleanup()

    def test_agreement_is_healthy(self):
        doc = remote.serving(self.vm.ctx)
        self.assertEqual((doc["answers"], doc["problems"]), (True, []))

    def test_every_disagreement_is_named(self):
        proxy.point_upstream(self.vm.paths, 8001)
        self.docker.enabled.add("imgforge-app@green.service")
        with mock.patch.object(remote, "running_port", lambda *a: 8001):
            problems = remote.serving(self.vm.ctx)["problems"]
        self.assertEqual(len(problems), 3, problems)
        self.assertIn("upstream file names port 8001", problems[0])
        self.assertIn("not reloaded", problems[1])
        self.assertIn("green.service is enabled", problems[2])


    def test_the_answer_is_the_one_imgforge_reads(self):
        """status's answer against its schema, and with the shape of the fixture imgforge's
        Rust side parses (src/cli/status.rs): one disagreement, so it has problems."""
        ready_first_boot(self.vm.ctx)
        proxy.point_upstream(self.vm.paths, 8001)
        good = {"started": "2026-12-06T03:00:00Z", "archive": "data-20261206T030000Z",
                "where": "local", "result": "ok", "files": 2, "databases": 1,
                "bytes": 40960, "seconds": 1.25}
        failed = {"started": "2026-12-07T03:00:00Z", "archive": "data-20261207T030000Z",
                  "where": "local", "result": "failed", "error": "disk full", "seconds": 0.5}
        write_atomic(self.vm.paths.backup_state, json.dumps({"last": failed, "last_ok": good}))
        # Three requests a minute ago: nginx's JSON lines, as the access log has them.
        t = time.time() - 60
        write_atomic(self.vm.paths.nginx_access_log, "".join(
            json.dumps({"msec": t, "remote": "10.0.2.2", "method": "GET", "uri": "/", "status": code,
                        "bytes": 9, "request_time": secs, "upstream_time": str(secs)}) + "\n"
            for code, secs in ((200, 0.02), (404, 0.001), (502, 0.9))))
        with mock.patch.object(remote, "out", lambda *a, **k: "4096\t/x\n"):
            doc = schema.check("status-answer", remote.report(self.vm.ctx))
        path = os.path.join(schema.FIXTURES, "status-answer-v1.json")
        if os.environ.get("IMGFORGE_UPDATE_GOLDEN"):
            with open(path, "w") as f:
                f.write(json.dumps(doc, indent=2) + "\n")
        self.assertEqual(schema.shape(doc), schema.shape(schema.fixture("status-answer-v1.json")))
        self.assertFalse(doc["healthy"])


class Backups(unittest.TestCase):
    """`imgforge backup now | list`: the unit runs it, the answers are the contract's."""

    def setUp(self):
        self.vm = Vm()
        self.addCleanup(self.vm.cleanup)
        os.makedirs(self.vm.ctx.conf["data_dir"])
        with open(os.path.join(self.vm.ctx.conf["data_dir"], "notes"), "w") as f:
            f.write("x\n")

    def start_unit(self, fail=None):
        def run(*argv, **kw):
            self.assertEqual(argv[:3], ("systemctl", "start", "imgforge-backup.service"))
            try:
                with mock.patch.object(backup, "snapshot", side_effect=fail) if fail else \
                        mock.patch.object(backup, "log"):
                    backup.backup(self.vm.ctx)
            except Exception:
                pass
        return mock.patch.object(remote, "run", run)

    def test_now_answers_the_record_and_list_shows_the_archive(self):
        with self.start_unit():
            record = schema.check("backup-answer", remote.backup_now(self.vm.ctx, None))
        self.assertEqual((record["result"], record["files"]), ("ok", 1))
        listed = schema.check("backup-list", remote.backup_list(self.vm.ctx, None))
        self.assertEqual([a["name"] for a in listed["archives"]], [record["archive"]])
        self.assertEqual(listed["last"], record)

    def test_a_failed_backup_is_a_failure_with_its_reason(self):
        with self.start_unit(fail=OSError("No space left on device")):
            with self.assertRaises(Failed) as e:
                remote.backup_now(self.vm.ctx, None)
        self.assertIn("No space left", str(e.exception))


GUEST = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def program(replace=None):
    """This program as imgforge ships it (a shebang, then a zip), with `replace` standing
    in for some files' contents."""
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/python3\n")
    with zipfile.ZipFile(buf, "a") as z:
        names = ["__main__.py"] + ["imgforge_vm/" + n for n in
                                   sorted(os.listdir(os.path.join(GUEST, "imgforge_vm")))
                                   if n.endswith((".py", ".json"))]
        for name in names:
            data = (replace or {}).get(name)
            if data is None:
                with open(os.path.join(GUEST, name), "rb") as f:
                    data = f.read()
            z.writestr(name, data)
    return buf.getvalue()


def program_stream(data, sha256=None):
    return stream({"size": len(data), "sha256": sha256 or hashlib.sha256(data).hexdigest()},
                  data)


class InstallProgram(unittest.TestCase):
    def setUp(self):
        self.vm = Vm()
        self.path = self.vm.paths.program
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "wb") as f:
            f.write(b"the program first boot wrote")

    def tearDown(self):
        self.vm.cleanup()

    def installed(self):
        with open(self.path, "rb") as f:
            return f.read()

    def test_a_new_program_replaces_the_old_once_and_runs(self):
        new = program()
        got = install.install_program(self.vm.ctx, program_stream(new))
        self.assertTrue(got["replaced"])
        self.assertEqual(got["previous"],
                         hashlib.sha256(b"the program first boot wrote").hexdigest())
        self.assertEqual(self.installed(), new)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o755)
        again = install.install_program(self.vm.ctx, program_stream(new))
        self.assertEqual((again["replaced"], again["program"]), (False, got["program"]))
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["imgforge-vm"])

    def refused_leaves_the_old(self, error, data, sha256=None):
        with self.assertRaises(error):
            install.install_program(self.vm.ctx, program_stream(data, sha256))
        self.assertEqual(self.installed(), b"the program first boot wrote")
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["imgforge-vm"])

    def test_an_altered_short_or_foreign_program_leaves_the_old_one(self):
        new = program()
        self.refused_leaves_the_old(Failed, new, hashlib.sha256(b"other").hexdigest())
        with self.assertRaises(Failed):
            install.install_program(self.vm.ctx, stream({"size": len(new), "sha256": "0" * 64},
                                                        new[:-1]))
        self.refused_leaves_the_old(Refused, b"#!/bin/sh\necho not a zip\n")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("__main__.py", "print('another program')\n")
        self.refused_leaves_the_old(Refused, buf.getvalue())
        with self.assertRaises(Refused):
            install.install_program(self.vm.ctx, stream({"size": 0, "sha256": "0" * 64}))

    def test_a_program_that_does_not_run_here_leaves_the_old_one(self):
        broken = program({"imgforge_vm/cli.py": b"def main(:\n"})
        self.refused_leaves_the_old(Failed, broken)


if __name__ == "__main__":
    unittest.main()
