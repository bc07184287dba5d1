"""What `imgforge deploy`, `rollback` and `status` run on the VM over SSH.

deploy-version reads its request from stdin, so no secret is in any command line: one
JSON line ({"image", "env", "bundle": {"size", "sha256"}, "health_timeout", "drain"}),
then, with a bundle, exactly `size` bytes of it. install-program reads one JSON line
({"size", "sha256"}) and then the program. Each prints one JSON line with the result.
"""

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile

from . import status
from .app import Apps, Refused, healthy
from .system import Failed, log, out, retry, run, sha256_file, write_atomic

ENV_LINE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=[^\n\r\0]*")
BUNDLE_MAX_BYTES = 8 << 30
PROGRAM_MAX_BYTES = 4 << 20


def request(stream):
    try:
        head = json.loads(stream.readline(1 << 20))
    except ValueError as e:
        raise Refused(f"the request is not JSON: {e}") from None
    image, env = head.get("image"), head.get("env")
    if not isinstance(image, str) or not image:
        raise Refused("the request names no image")
    if env is not None:
        bad = [line for line in env.splitlines() if line and not line.startswith("#")
               and not ENV_LINE.fullmatch(line)]
        if bad:
            raise Refused(f"environment lines that are not NAME=VALUE: {len(bad)}")
    return head


def receive(stream, dest, size, sha256):
    """Exactly `size` bytes from stream into dest (0600), checked against sha256."""
    if not isinstance(size, int) or not 0 < size <= BUNDLE_MAX_BYTES:
        raise Refused(f"bundle size {size!r} is not between 1 and {BUNDLE_MAX_BYTES}")
    h, left = hashlib.sha256(), size
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        while left:
            block = stream.read(min(left, 1 << 20))
            if not block:
                raise Failed(f"the bundle ended after {size - left} of {size} bytes")
            h.update(block)
            f.write(block)
            left -= len(block)
    if h.hexdigest() != sha256:
        raise Failed(f"the bundle arrived with sha256 {h.hexdigest()}, expected {sha256}")


def read_exactly(stream, size, what):
    data = stream.read(size)
    if len(data) != size:
        raise Failed(f"{what} ended after {len(data)} of {size} bytes")
    return data


def install_program(ctx, stream, python=sys.executable):
    """Replaces this program with the one on stdin, which `imgforge deploy` sends first so
    that the VM runs the program of the imgforge that deploys to it. Checked before it
    replaces anything: the sha256, a zip with this program's entry point, and that it runs
    (`--help`) with this VM's python3. Then renamed into place: a command already running
    keeps the modules it imported, and every later one runs the new program."""
    try:
        head = json.loads(stream.readline(1 << 20))
    except ValueError as e:
        raise Refused(f"the request is not JSON: {e}") from None
    size, sha256 = head.get("size"), head.get("sha256")
    if not isinstance(size, int) or not 0 < size <= PROGRAM_MAX_BYTES:
        raise Refused(f"program size {size!r} is not between 1 and {PROGRAM_MAX_BYTES}")
    data = read_exactly(stream, size, "the program")
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise Failed(f"the program arrived with sha256 {got}, expected {sha256}")
    path = ctx.paths.program
    previous = sha256_file(path) if os.path.exists(path) else None
    if previous == got:
        return {"program": got, "replaced": False}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = set(z.namelist())
            if not {"__main__.py", "imgforge_vm/cli.py"} <= names or z.testzip() is not None:
                raise zipfile.BadZipFile("not this program's files")
    except zipfile.BadZipFile as e:
        raise Refused(f"the program is not an imgforge-vm zip: {e}") from None

    def runs(tmp):
        try:
            proc = subprocess.run([python, tmp, "--help"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Failed(f"the new program did not run: {e}") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise Failed(f"the new program does not run with {python}: {last}")

    write_atomic(path, data, 0o755, check=runs)
    log(f"program replaced: sha256 {got} (was {previous})")
    return {"program": got, "replaced": True, "previous": previous}


def deploy_version(ctx, stream):
    head = request(stream)
    apps = Apps(ctx)
    with apps.locked():
        return _deploy_version(ctx, apps, head, stream)


def _deploy_version(ctx, apps, head, stream):
    bundle = head.get("bundle")
    if bundle:
        dest = ctx.paths.under("state_dir", "incoming.oci.tar")
        try:
            receive(stream, dest, bundle.get("size"), bundle.get("sha256"))
            run("docker", "load", "--input", dest, timeout=1800)
        finally:
            if os.path.exists(dest):
                os.remove(dest)
    else:
        retry("docker pull", lambda: run("docker", "pull", head["image"], timeout=1800), tries=4)
    env = head["env"] if head.get("env") is not None else apps.env_text()
    apps.deploy(apps.record(head["image"], env), "deploy", head.get("health_timeout", 60),
                head.get("drain", 30))
    return apps.load()["history"][-1]


def rollback(ctx, stream):
    head = json.loads(stream.readline(1 << 20) or "{}")
    apps = Apps(ctx)
    with apps.locked():
        apps.rollback(head.get("health_timeout", 60), head.get("drain", 30))
    return apps.load()["history"][-1]


def report(ctx):
    """status.json, and what only root sees: the certificate, disk use, health now."""
    conf, paths = ctx.conf, ctx.paths
    doc = {"status": status.read(paths), "certificate": None, "disk": {}}
    apps = Apps(ctx)
    slot = apps.active()
    doc["healthy"] = slot is not None and healthy(apps.health_url(slot), 5)
    cert = f"/etc/letsencrypt/live/{conf['domain']}/cert.pem" if conf.get("domain") else ""
    if cert and os.path.exists(cert):
        text = out("openssl", "x509", "-noout", "-issuer", "-enddate", "-in", cert)
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        doc["certificate"] = {"issuer": fields.get("issuer", "").strip(),
                              "not_after": fields.get("notAfter", "").strip()}
    for name, path in (("data", conf["data_dir"]), ("backups", paths.backup_dir)):
        if os.path.isdir(path):
            doc["disk"][name] = int(out("du", "-sb", path).split()[0])
    return doc
