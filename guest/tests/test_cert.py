import json
import os
import subprocess
import tempfile
import time
import unittest
from unittest import mock

from imgforge_vm import cert

from .support import Vm


def make_cert(live, domain, names, days):
    """A self-signed certificate for `names`, valid from yesterday for `days` (negative:
    it ended `-days` days ago), where certbot keeps the domain's."""
    d = os.path.join(live, domain)
    os.makedirs(d, exist_ok=True)
    work = tempfile.mkdtemp()
    with open(os.path.join(work, "ca.cnf"), "w") as f:
        f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\n"
                "serial = serial\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n"
                "[x]\nsubjectAltName = " + ",".join("DNS:" + n for n in names) + "\n")
    open(os.path.join(work, "index.txt"), "w").close()
    with open(os.path.join(work, "serial"), "w") as f:
        f.write("01\n")
    day = 86400
    start = time.gmtime(time.time() - day + min(days, 0) * day - day)
    end = time.gmtime(time.time() + days * day)
    key = os.path.join(d, "privkey.pem")
    for argv in (["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-subj", f"/CN={names[0]}", "-keyout", key, "-out", "req.csr"],
                 ["openssl", "ca", "-batch", "-selfsign", "-config", "ca.cnf", "-keyfile", key,
                  "-in", "req.csr", "-out", os.path.join(d, "fullchain.pem"), "-extensions", "x",
                  "-startdate", time.strftime("%Y%m%d%H%M%SZ", start),
                  "-enddate", time.strftime("%Y%m%d%H%M%SZ", end)]):
        subprocess.run(argv, check=True, capture_output=True, cwd=work)


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
    def test_certbot_only_obtains_the_certificate_through_the_webroot(self):
        conf = {"email": "a@b.c", "domain": "x.example.com", "acme_server": None}
        argv = cert.certbot_argv(conf, "/var/lib/imgforge/acme")
        self.assertEqual(argv[:3], ["certbot", "certonly", "--webroot"])
        self.assertEqual(argv[argv.index("--webroot-path") + 1], "/var/lib/imgforge/acme")
        for flag in ["--non-interactive", "--agree-tos", "--keep-until-expiring"]:
            self.assertIn(flag, argv)
        self.assertNotIn("--nginx", argv)
        self.assertNotIn("--server", argv)
        argv = cert.certbot_argv(dict(conf, acme_server="https://acme.test/dir"), "/w")
        self.assertEqual(argv[argv.index("--server") + 1], "https://acme.test/dir")


class Valid(unittest.TestCase):
    """HTTPS is kept exactly when a certificate for the domain is there and unexpired."""

    def setUp(self):
        self.live = tempfile.mkdtemp()

    def test_a_current_certificate_for_the_domain_is_valid(self):
        make_cert(self.live, "api.example.com", ["api.example.com"], 90)
        self.assertTrue(cert.valid("api.example.com", self.live))

    def test_expired_another_name_or_no_key_is_not(self):
        make_cert(self.live, "a.example.com", ["a.example.com"], -1)
        self.assertFalse(cert.valid("a.example.com", self.live))
        make_cert(self.live, "b.example.com", ["other.example.com", "xb.example.com"], 90)
        self.assertFalse(cert.valid("b.example.com", self.live))
        make_cert(self.live, "c.example.com", ["c.example.com"], 90)
        os.remove(os.path.join(self.live, "c.example.com", "privkey.pem"))
        self.assertFalse(cert.valid("c.example.com", self.live))
        self.assertFalse(cert.valid("d.example.com", self.live))


class Attempt(unittest.TestCase):
    def setUp(self):
        self.vm = Vm()
        self.c = cert.Certificate(self.vm.ctx)
        self.has_cert = False
        p = mock.patch.object(self.c, "installed", lambda: self.has_cert)
        p.start()
        self.addCleanup(p.stop)

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
        def certbot(*a, **k):
            self.has_cert = True  # obtained: the HTTPS site goes in
            return mock.Mock(returncode=0)
        with mock.patch.object(self.c, "precondition", return_value=None), \
                mock.patch.object(cert.subprocess, "run", certbot):
            self.assertEqual(self.c._attempt(1200), "ok")
        self.assertEqual(self.state()["failures"], 0)
        self.assertEqual(self.vm.status()["certificate"], "ok")
        self.assertEqual(os.stat(self.c.state_path).st_mode & 0o777, 0o600)

    def test_with_a_valid_certificate_certbot_is_not_asked_again(self):
        self.has_cert = True
        with mock.patch.object(cert.subprocess, "run") as run:
            self.assertEqual(self.c._attempt(1000), "installed")
        run.assert_not_called()
        self.assertEqual(self.vm.status()["certificate"], "ok")
