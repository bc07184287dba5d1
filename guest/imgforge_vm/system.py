"""Running commands, writing files and downloading, each bounded in time and size."""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request


ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive", NEEDRESTART_MODE="a",
           PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
# Every command ends within this many seconds unless its caller says otherwise.
DEFAULT_TIMEOUT = 600


class Failed(Exception):
    """A step's work failed; the message says what and why, for status.json."""


def now():
    """The time, as every document gives it: RFC 3339, UTC, seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def log(msg):
    """Progress, on stderr: stdout is for the one JSON answer of remote commands."""
    print("imgforge: " + msg, file=sys.stderr, flush=True)


def run(*argv, timeout=DEFAULT_TIMEOUT, env=None, check=True, capture=False, quiet=False,
        cwd=None):
    """Runs argv (never through a shell). Raises Failed on a non-zero exit or a timeout."""
    if not quiet:
        log("run: " + " ".join(argv))
    try:
        # A command's own output goes to stderr too: stdout carries remote answers.
        proc = subprocess.run(argv, env=env or ENV, timeout=timeout, text=True, cwd=cwd,
                              stdout=subprocess.PIPE if capture else 2,
                              stderr=subprocess.PIPE if capture else None)
    except subprocess.TimeoutExpired:
        raise Failed(f"{argv[0]} did not finish within {timeout} s") from None
    except OSError as e:
        raise Failed(f"{argv[0]}: {e.strerror}") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()[-3:] if capture else []
        raise Failed(f"{' '.join(argv[:3])} exited {proc.returncode}" +
                     (": " + " / ".join(detail) if detail else ""))
    return proc


def out(*argv, timeout=DEFAULT_TIMEOUT):
    """The standard output of argv, which must succeed."""
    return run(*argv, timeout=timeout, capture=True).stdout


def retry(what, fn, tries=6, delay=5, max_delay=60):
    """Calls fn until it returns, at most `tries` times, backing off between tries."""
    for i in range(tries):
        try:
            return fn()
        except Exception as e:  # the last error is raised, with its own message
            if i == tries - 1:
                raise
            log(f"{what} failed ({e}); retry in {delay}s")
            time.sleep(delay)
            delay = min(delay * 2, max_delay)


def write_atomic(path, data, mode=0o644, check=None):
    """Writes data (str or bytes) to path: mode set before anything is written, then
    renamed; `check`, if given, is called with the written temporary file's path first and
    raises to leave path as it was."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".imgforge-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if check:
            check(tmp)
        os.replace(tmp, path)
        sync_dir(parent)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def sync_dir(path):
    """Makes a rename in directory `path` durable: a power cut after it keeps it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def redact(url):
    """url as it may be shown (status.json, the console, logs): no user, password, query
    or fragment, where presigned URLs carry their signature."""
    try:
        u = urllib.parse.urlsplit(url)
        host = (u.hostname or "") + (f":{u.port}" if u.port else "")
        return urllib.parse.urlunsplit((u.scheme, host, u.path, "", "")) + ("?…" if u.query else "")
    except ValueError:
        return "(an unreadable URL)"


def wait_for(check, timeout, interval=1.0):
    """True once check() is, within timeout seconds; an exception counts as not yet."""
    end = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except Exception:
            pass
        if time.monotonic() > end:
            return False
        time.sleep(interval)


def read_json(path, default):
    """A state file's document, or default when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def fetch(url, max_bytes, timeout=15, context=None):
    """A small response body, at most max_bytes."""
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        body = resp.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise Failed(f"{redact(url)} sent over {max_bytes} bytes")
    return body


def phase(paths, name, what):
    """Says which phase a deploy is in (`[name] what`), and holds there while the file
    paths.hold names it (an hour at most): how the boot tests stop a deploy at a known
    point. /run is a tmpfs, so a power cut clears it."""
    log(f"[{name}] {what}")

    def held():
        try:
            with open(paths.hold) as f:
                return f.read().strip() == name
        except OSError:
            return False
    if held():
        log(f"held at {name} while {paths.hold} names it")
        wait_for(lambda: not held(), 3600, 0.5)
