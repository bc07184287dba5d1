import hashlib
import io
import json
import os
import tempfile
import unittest
import zipfile
from unittest import mock

from imgforge_vm import app, remote
from imgforge_vm.app import Refused
from imgforge_vm.system import Failed

from .support import Docker, Vm


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


class Receive(unittest.TestCase):
    def setUp(self):
        self.dest = os.path.join(tempfile.mkdtemp(), "in.tar")
        self.body = os.urandom(3 << 20)
        self.sha = hashlib.sha256(self.body).hexdigest()

    def test_exactly_size_bytes_are_taken_and_checked(self):
        s = io.BytesIO(self.body + b"trailing")
        remote.receive(s, self.dest, len(self.body), self.sha)
        with open(self.dest, "rb") as f:
            self.assertEqual(f.read(), self.body)
        self.assertEqual(os.stat(self.dest).st_mode & 0o777, 0o600)

    def test_a_short_or_altered_bundle_is_refused(self):
        with self.assertRaises(Failed):
            remote.receive(io.BytesIO(self.body[:-1]), self.dest, len(self.body), self.sha)
        with self.assertRaises(Failed):
            remote.receive(io.BytesIO(b"x" + self.body[1:]), self.dest, len(self.body), self.sha)
        with self.assertRaises(Refused):
            remote.receive(io.BytesIO(b""), self.dest, -1, self.sha)


class DeployVersion(unittest.TestCase):
    def setUp(self):
        self.vm = Vm()
        self.docker = Docker()
        self.docker.add_image("app:1", "sha256:" + "1" * 64, "1.0")
        self.docker.add_image("app:2", "sha256:" + "2" * 64, "2.0")
        for target, name in [(app, "run"), (app, "out"), (remote, "run")]:
            p = mock.patch.object(target, name, getattr(self.docker, name))
            p.start()
            self.addCleanup(p.stop)
        for p in [mock.patch.object(app, "healthy", lambda *a, **k: True),
                  mock.patch.object(app, "drain"), mock.patch.object(app.os, "chown")]:
            p.start()
            self.addCleanup(p.stop)

    def tearDown(self):
        self.vm.cleanup()

    def test_a_bundle_is_loaded_and_the_environment_kept_when_none_is_given(self):
        apps = app.Apps(self.vm.ctx)
        with apps.locked():
            apps.deploy(apps.record("app:1", "TOKEN=a b\n"))
        body = b"bundle bytes"
        head = {"image": "app:2", "env": None,
                "bundle": {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}}
        entry = remote.deploy_version(self.vm.ctx, stream(head, body))
        self.assertEqual((entry["result"], entry["version"]), ("ok", "2.0"))
        self.assertTrue(self.docker.ran("docker", "load"))
        self.assertEqual(apps.env_text(), "TOKEN=a b\n")
        self.assertEqual(os.listdir(self.vm.paths.state_dir).count("incoming.oci.tar"), 0)


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
        got = remote.install_program(self.vm.ctx, program_stream(new))
        self.assertTrue(got["replaced"])
        self.assertEqual(got["previous"],
                         hashlib.sha256(b"the program first boot wrote").hexdigest())
        self.assertEqual(self.installed(), new)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o755)
        again = remote.install_program(self.vm.ctx, program_stream(new))
        self.assertEqual((again["replaced"], again["program"]), (False, got["program"]))
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["imgforge-vm"])

    def refused_leaves_the_old(self, error, data, sha256=None):
        with self.assertRaises(error):
            remote.install_program(self.vm.ctx, program_stream(data, sha256))
        self.assertEqual(self.installed(), b"the program first boot wrote")
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["imgforge-vm"])

    def test_an_altered_short_or_foreign_program_leaves_the_old_one(self):
        new = program()
        self.refused_leaves_the_old(Failed, new, hashlib.sha256(b"other").hexdigest())
        with self.assertRaises(Failed):
            remote.install_program(self.vm.ctx, stream({"size": len(new), "sha256": "0" * 64},
                                                       new[:-1]))
        self.refused_leaves_the_old(Refused, b"#!/bin/sh\necho not a zip\n")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("__main__.py", "print('another program')\n")
        self.refused_leaves_the_old(Refused, buf.getvalue())
        with self.assertRaises(Refused):
            remote.install_program(self.vm.ctx, stream({"size": 0, "sha256": "0" * 64}))

    def test_a_program_that_does_not_run_here_leaves_the_old_one(self):
        broken = program({"imgforge_vm/cli.py": b"def main(:\n"})
        self.refused_leaves_the_old(Failed, broken)
