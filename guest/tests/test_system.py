import hashlib
import os
import tempfile
import time
import unittest

from imgforge_vm.bundle import download
from imgforge_vm.system import Failed, run

from .support import Server, answering


BODY = os.urandom(300_000)


Serve = answering(BODY)


class Stall(Serve):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY[:1000])
        self.wfile.flush()
        time.sleep(5)


class Endless(Serve):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(100):
                self.wfile.write(BODY)
        except OSError:
            pass  # the client stopped reading, as it should


class Download(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.dest = os.path.join(self.dir, "bundle.tar")

    def fetch(self, handler, **kw):
        server = Server(handler)
        try:
            return download(server.url, self.dest, **kw)
        finally:
            server.close()

    def assertNothingLeft(self):
        self.assertEqual(os.listdir(self.dir), [])

    def test_a_good_download_is_hashed_while_streaming(self):
        want = hashlib.sha256(BODY).hexdigest()
        self.assertEqual(self.fetch(Serve, max_bytes=1 << 20, sha256=want), want)
        with open(self.dest, "rb") as f:
            self.assertEqual(f.read(), BODY)

    def test_a_wrong_sha256_leaves_nothing(self):
        with self.assertRaises(Failed) as e:
            self.fetch(Serve, max_bytes=1 << 20, sha256="0" * 64)
        self.assertIn("expected " + "0" * 64, str(e.exception))
        self.assertNothingLeft()

    def test_a_declared_size_over_the_cap_is_refused_before_reading(self):
        with self.assertRaises(Failed) as e:
            self.fetch(Serve, max_bytes=1000)
        self.assertIn("over the limit of 1000", str(e.exception))
        self.assertNothingLeft()

    def test_an_undeclared_stream_stops_at_the_cap(self):
        with self.assertRaises(Failed) as e:
            self.fetch(Endless, max_bytes=1 << 20)
        self.assertIn("sent over", str(e.exception))
        self.assertNothingLeft()

    def test_a_stalled_server_times_out(self):
        started = time.monotonic()
        with self.assertRaises(Failed) as e:
            self.fetch(Stall, max_bytes=1 << 20, timeout=1)
        self.assertIn("timed out", str(e.exception))
        self.assertLess(time.monotonic() - started, 4.5)
        self.assertNothingLeft()


class Log(unittest.TestCase):
    def test_progress_goes_to_stderr_leaving_stdout_to_the_answer(self):
        import io
        from contextlib import redirect_stderr, redirect_stdout
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            run("true")
        self.assertEqual(out.getvalue(), "")
        self.assertIn("imgforge: run: true", err.getvalue())


class Run(unittest.TestCase):
    def test_a_command_over_its_time_is_a_failure_not_a_hang(self):
        with self.assertRaises(Failed) as e:
            run("sleep", "5", timeout=0.5)
        self.assertIn("did not finish within 0.5 s", str(e.exception))

    def test_a_commands_own_output_goes_to_stderr(self):
        import os
        import tempfile
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            saved = os.dup(1), os.dup(2)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            try:
                run("echo", "Loaded image: x")
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
            out.seek(0)
            err.seek(0)
            self.assertEqual(out.read(), b"")
            self.assertIn(b"Loaded image: x", err.read())

    def test_a_failing_command_says_its_exit_code_and_stderr(self):
        with self.assertRaises(Failed) as e:
            run("sh", "-c", "echo boom >&2; exit 3", capture=True)
        self.assertIn("exited 3", str(e.exception))
        self.assertIn("boom", str(e.exception))


class Redact(unittest.TestCase):
    def test_no_credentials_query_or_fragment_are_shown(self):
        from imgforge_vm.system import redact
        shown = redact("https://user:pw@objects.example.com/b/app.tar?X-Amz-Signature=abc#f")
        self.assertEqual(shown, "https://objects.example.com/b/app.tar?…")
        self.assertEqual(redact("https://h.example/app.tar"), "https://h.example/app.tar")


class Downloads(unittest.TestCase):
    def test_a_failed_download_names_the_url_without_its_query(self):
        with self.assertRaises(Failed) as e:
            download("http://127.0.0.1:1/bundle.tar?sig=s3cret", "/nonexistent/x", 10)
        self.assertIn("http://127.0.0.1:1/bundle.tar?…", str(e.exception))
        self.assertNotIn("s3cret", str(e.exception))
