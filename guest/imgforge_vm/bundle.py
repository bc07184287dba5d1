"""The app's image as an OCI bundle (`imgforge pack`): downloaded from a URL, or read
from the seed disk or the image, checked against its sha256, then loaded into Docker."""

import os
import tempfile

from .system import Failed, download, log, redact, retry, run, sha256_file

# A bundle larger than this is refused before it fills the disk.
BUNDLE_MAX_BYTES = 8 << 30
DOCKER_LOAD_TIMEOUT = 1800


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
