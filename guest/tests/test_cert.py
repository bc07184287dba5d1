import json
import os
import unittest
from unittest import mock

from imgforge_vm import cert

from .support import Vm


class Backoff(unittest.TestCase):
    def test_minutes_double_from_2_to_32_then_stay_at_60(self):
        self.assertEqual([cert.backoff(n) // 60 for n in range(1, 9)],
                         [2, 4, 8, 16, 32, 60, 60, 60])

    def test_at_most_five_certbot_runs_in_the_first_hour(self):
        t, runs = 0, 0
        while t < 3600:
            runs += 1
            t += cert.backoff(runs)
        self.assertLessEqual(runs, 5)


class Argv(unittest.TestCase):
    def test_certbot_is_non_interactive_with_redirect_and_hsts(self):
        argv = cert.certbot_argv({"email": "a@b.c", "domain": "x.example.com", "acme_server": None})
        for flag in ["--nginx", "--non-interactive", "--redirect", "--hsts", "--agree-tos"]:
            self.assertIn(flag, argv)
        self.assertNotIn("--server", argv)
        argv = cert.certbot_argv({"email": "a@b.c", "domain": "x.example.com",
                                  "acme_server": "https://acme.test/dir"})
        self.assertEqual(argv[argv.index("--server") + 1], "https://acme.test/dir")


class Attempt(unittest.TestCase):
    def setUp(self):
        self.vm = Vm()
        self.c = cert.Certificate(self.vm.ctx)

    def tearDown(self):
        self.vm.cleanup()

    def state(self):
        with open(self.c.state_path) as f:
            return json.load(f)

    def test_no_certbot_while_the_domain_does_not_reach_the_vm(self):
        with mock.patch.object(self.c, "precondition", return_value="not here yet"), \
                mock.patch.object(cert.subprocess, "run") as run:
            self.assertEqual(self.c._attempt(1000), "pending")
        run.assert_not_called()
        self.assertEqual(self.state()["next"], 1000 + cert.RECHECK)
        self.assertEqual(self.vm.status()["certificate_detail"], "not here yet")

    def test_a_certbot_failure_backs_off_and_success_installs(self):
        failed = mock.Mock(returncode=1)
        with mock.patch.object(self.c, "precondition", return_value=None), \
                mock.patch.object(cert.subprocess, "run", return_value=failed):
            self.assertEqual(self.c._attempt(1000), "failed")
            self.assertEqual(self.state()["next"], 1000 + 120)
            # Not due yet: nothing runs.
            self.assertEqual(self.c._attempt(1100), "waiting")
        with mock.patch.object(self.c, "precondition", return_value=None), \
                mock.patch.object(cert.subprocess, "run", return_value=mock.Mock(returncode=0)):
            self.assertEqual(self.c._attempt(1200), "ok")
        self.assertTrue(self.state()["installed"])
        self.assertEqual(self.vm.status()["certificate"], "ok")
        self.assertEqual(os.stat(self.c.state_path).st_mode & 0o777, 0o600)
