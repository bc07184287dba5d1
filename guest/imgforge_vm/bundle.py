"""The app's image as an OCI bundle (`imgforge pack`): downloaded from a URL, or read
from the seed disk or the image, checked against its sha256, then loaded into Docker."""

import hashlib
import os
import tempfile
import time
import urllib.request

from .system import Failed, log, redact, retry, run

# A bundle larger than this is refused before it fills the disk.
BUNDLE_MAX_BYTES = 8 << 30
DOCKER_LOAD_TIMEOUT = 1800


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url, dest, max_bytes, sha256=None, timeout=30, deadline=1800, context=None):
    """Streams url into dest, hashing as it goes. Each read waits at most `timeout` s, the
    whole transfer `deadline` s; more than max_bytes or a wrong sha256 is an error and
    leaves nothing at dest."""
    part = dest + ".part"
    shown = redact(url)
    end = time.monotonic() + deadline
    h = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise Failed(f"{shown} is {declared} bytes, over the limit of {max_bytes}")
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                while True:
                    if time.monotonic() > end:
                        raise Failed(f"downloading {shown} took over {deadline} s")
                    block = resp.read(1 << 20)
                    if not block:
                        break
                    size += len(block)
                    if size > max_bytes:
                        raise Failed(f"{shown} sent over {max_bytes} bytes")
                    h.update(block)
                    f.write(block)
        got = h.hexdigest()
        if sha256 is not None and got != sha256:
            raise Failed(f"{shown} has sha256 {got}, expected {sha256}")
        os.replace(part, dest)
        return got
    except (OSError, ValueError) as e:
        # Timeouts, refused connections, HTTP errors: one kind of failure, with its cause.
        raise Failed(f"downloading {shown}: {e}") from None
    finally:
        if os.path.exists(part):
            os.remove(part)


def load_bundle(path, sha256):
    got = sha256_file(path)
    if got != sha256:
        raise Failed(f"bundle {path} has sha256 {got}, expected {sha256}")
    run("docker", "load", "--input", path, timeout=DOCKER_LOAD_TIMEOUT)


def fetch(ctx):
    conf, paths = ctx.conf, ctx.paths
    b = conf["bundle"]
    if b["kind"] == "url":
        dest = paths.bundle_download
        retry("downloading the bundle",
              lambda: download(b["url"], dest, BUNDLE_MAX_BYTES, sha256=b["sha256"]), tries=4, delay=10)
        log(f"loading the bundle from {redact(b['url'])}")
        try:
            run("docker", "load", "--input", dest, timeout=DOCKER_LOAD_TIMEOUT)
        finally:
            os.remove(dest)
    elif b["kind"] == "file":
        load_bundle(paths.baked_bundle, b["sha256"])
    elif b["kind"] == "seed":
        dev = next((d for d in paths.seed_devices if os.path.exists(d)), None)
        if dev is None:
            raise Failed("no seed disk labelled CIDATA is attached")
        with tempfile.TemporaryDirectory() as mnt:
            run("mount", "-o", "ro", dev, mnt)
            try:
                load_bundle(os.path.join(mnt, paths.seed_bundle), b["sha256"])
            finally:
                run("umount", mnt)
    else:
        raise Failed(f"unknown bundle kind {b['kind']!r}")
