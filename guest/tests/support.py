"""A VM's directory tree in a temporary directory, and a recorder for commands."""

import http.server
import json
import os
import shutil
import tempfile
import threading
from unittest import mock

from imgforge_vm import firstboot, status
from imgforge_vm.context import Ctx
from imgforge_vm.layout import Layout
from imgforge_vm.system import Failed

from . import schema

# deploy.json as `imgforge render` writes it (tests/cli/render.rs writes the fixture), with
# the image these tests deploy.
CONF = dict(schema.fixture("deploy-v1.json"), image="imgforge/classifier:0.1.0")


def _checked_dumps(st, _dumps=status.dumps):
    """status.json's text, once the document passed its schema."""
    return _dumps(schema.check("status", st))


# Every status.json the program writes in these tests is checked against its schema.
status.dumps = _checked_dumps


class Vm:
    """A layout rooted in a temporary directory, with /proc's boot id in place."""

    def __init__(self, **conf):
        self.root = tempfile.mkdtemp(prefix="imgforge-vm-test-")
        self.paths = Layout.load(self.root)
        os.makedirs(os.path.dirname(self.paths.boot_id))
        with open(self.paths.boot_id, "w") as f:
            f.write("boot-1\n")
        with open(self.paths.cpu_stat, "w") as f:
            f.write("cpu  300 0 100 3600 0 0 0 0 0 0\ncpu0 150 0 50 1800 0 0 0 0 0 0\n")
        with open(self.paths.meminfo, "w") as f:
            f.write("MemTotal:        2048000 kB\nMemFree:          100000 kB\n"
                    "MemAvailable:    1024000 kB\n")
        os.makedirs(os.path.dirname(self.paths.console))
        c = schema.check("deploy", dict(CONF, **conf))
        c["data_dir"] = self.root + c["data_dir"]
        self.ctx = Ctx(c, self.paths, firstboot.STEP_NAMES)

    def console_lines(self):
        with open(self.paths.console) as f:
            return f.read().splitlines()

    def status(self):
        with open(self.paths.status) as f:
            return json.load(f)

    def cleanup(self):
        shutil.rmtree(self.root)


def ready_first_boot(ctx):
    """status.json after a first boot that went well, with every field the program writes
    (fixed times, so the fixtures built from it stay the same)."""
    for name in ctx.step_names:
        ctx.update({name: "skipped" if name == "packages" else "ok"})
    app = {"slot": "blue", "image": "imgforge/classifier:0.1.0",
           "image_id": "sha256:" + "a" * 64, "version": "0.1.0",
           "since": "2026-01-01T00:00:10Z"}
    deploy = {"kind": "first-boot", "version": "0.1.0", "image": app["image"],
              "image_id": app["image_id"], "slot": "blue",
              "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:10Z",
              "result": "ok", "error": None, "healthy_s": 4.2, "switch_s": 0.3}
    first_boot = {"runs": 1, "instance_id": "iid-1", "started": "2026-01-01T00:00:00Z",
                  "kept": None}
    st = ctx.update(certificate="ok", certificate_detail="", app=app, deploys=[deploy],
                    first_boot=first_boot, dns="ok", dns_detail="", upgrade="ok",
                    upgrade_detail="", previous_version=None, provisioned=None, error=None,
                    cloud_init={"status": "done", "errors": []}, health="ok",
                    host_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFixture"])
    st["updated"] = "2026-01-01T00:00:11Z"
    return st


class Docker:
    """Stands in for the commands the program runs: records each argv; `docker image
    inspect` answers with an image per reference; systemctl keeps units' states and
    whether they are enabled; `fail` names an argv prefix that fails."""

    def __init__(self):
        self.calls = []
        self.images = {}
        self.units = {}
        self.enabled = set()
        self.fail = None

    def add_image(self, ref, image_id, version):
        self.images[ref] = {"Id": image_id, "Config": {
            "User": "10001:10001", "Labels": {"org.opencontainers.image.version": version}}}

    def run(self, *argv, check=True, **kw):
        """Records argv; systemctl start, stop, show, enable, disable and is-enabled keep
        and tell units' states."""
        self.calls.append(list(argv))
        if self.fail and tuple(argv[:len(self.fail)]) == tuple(self.fail):
            if check:
                raise Failed(" ".join(argv) + " exited 1")
            return mock.Mock(returncode=1, stdout="", stderr="")
        stdout, code = "", 0
        units = [a for a in argv[2:] if a.endswith(".service")]
        if argv[:2] == ("systemctl", "start"):
            self.units.update((u, "activating") for u in units)
        elif argv[:2] == ("systemctl", "stop"):
            self.units.update((u, "inactive") for u in units)
        elif argv[:2] == ("systemctl", "show"):
            stdout = self.units.get(argv[-1], "inactive") + "\n"
        elif argv[:2] == ("systemctl", "enable"):
            self.enabled.update(units)
        elif argv[:2] == ("systemctl", "disable"):
            self.enabled.difference_update(units)
        elif argv[:2] == ("systemctl", "is-enabled"):
            code = 0 if argv[-1] in self.enabled else 1
        return mock.Mock(returncode=code, stdout=stdout, stderr="")

    def out(self, *argv, **kw):
        self.calls.append(list(argv))
        if argv[:3] == ("docker", "image", "inspect"):
            return json.dumps(self.images[argv[-1]])
        return ""

    def ran(self, *prefix):
        return [c for c in self.calls if c[:len(prefix)] == list(prefix)]


class Server:
    """A loopback HTTP server with the given handler class."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def serving(body):
    """A Server that answers every GET with body."""
    return Server(answering(body))


def answering(body):
    """A handler class that answers every GET with body (subclasses answer otherwise)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler
