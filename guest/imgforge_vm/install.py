"""install-program: what `imgforge deploy` and `imgforge status` send first, so that the VM
runs the program of the imgforge that talks to it. Part of every program: the one first
boot writes carries only what the VM uses then, and the rest (day two: remote.py) arrives
this way. It reads one JSON line ({"size", "sha256"}) and then the program, and prints one
JSON line with the result.
"""

import hashlib
import json
import os
import subprocess
import sys

from .app import Refused
from .system import Failed, log, write_atomic

PROGRAM_MAX_BYTES = 4 << 20


def read_exactly(stream, size, what):
    data = stream.read(size)
    if len(data) != size:
        raise Failed(f"{what} ended after {len(data)} of {size} bytes")
    return data


def install_program(ctx, stream, python=sys.executable):
    """Replaces this program with the one on stdin, which `imgforge deploy` sends first so
    that the VM runs the program of the imgforge that deploys to it. Checked before it
    replaces anything: the sha256, and that it runs with this VM's python3 as an
    imgforge-vm (its `--help`). Then renamed into place: a command already running
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
    previous = None
    if os.path.exists(path):
        with open(path, "rb") as f:
            previous = hashlib.sha256(f.read()).hexdigest()
    if previous == got:
        return {"program": got, "replaced": False}
    def ours(tmp):
        """The new program runs here and is an imgforge-vm: anything else is refused."""
        try:
            proc = subprocess.run([python, tmp, "--help"], capture_output=True, text=True,
                                  timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Failed(f"the new program did not run: {e}") from None
        if proc.returncode != 0 or not proc.stdout.startswith("usage: imgforge-vm"):
            last = (proc.stderr.strip().splitlines() or [proc.stdout[:80]])[-1]
            raise Refused(f"what was sent is not an imgforge-vm that runs with {python}: {last}")

    write_atomic(path, data, 0o755, check=ours)
    log(f"program replaced: sha256 {got} (was {previous})")
    return {"program": got, "replaced": True, "previous": previous}
