"""Running commands, writing files and downloading, each bounded in time and size."""

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from .layout import Layout

ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive", NEEDRESTART_MODE="a",
           PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
# Every command ends within this many seconds unless its caller says otherwise.
DEFAULT_TIMEOUT = 600


class Failed(Exception):
    """A step's work failed; the message says what and why, for status.json."""


def now():
    """The time, as every document gives it: RFC 3339, UTC, seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# What the running command's progress is, in the journal (`imgforge logs --source`): set
# by the command line; None for commands whose stderr the journal already keeps apart.
SOURCE = {"name": None}
JOURNAL_SOCKET = Layout.load().journal_socket


def log(msg):
    """Progress, on stderr (stdout is for the one JSON answer of remote commands), and in
    the journal under the command's source."""
    print("imgforge: " + msg, file=sys.stderr, flush=True)
    if SOURCE["name"]:
        journal(msg, IMGFORGE_SOURCE=SOURCE["name"])


def journal(message, socket_path=None, **fields):
    """One journal entry, in journald's native protocol: each field length-prefixed, so
    no value can forge another. Quietly nothing where there is no journal."""
    entry = b""
    for name, value in [("MESSAGE", message[:16384]), ("PRIORITY", "6"),
                        ("SYSLOG_IDENTIFIER", "imgforge")] + sorted(fields.items()):
        data = str(value).encode(errors="replace")
        entry += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(entry, socket_path or JOURNAL_SOCKET)
    except OSError:
        pass


def run(*argv, timeout=DEFAULT_TIMEOUT, env=None, check=True, capture=False, quiet=False):
    """Runs argv (never through a shell). Raises Failed on a non-zero exit or a timeout."""
    if not quiet:
        log("run: " + " ".join(argv))
    try:
        # A command's own output goes to stderr too: stdout carries remote answers.
        proc = subprocess.run(argv, env=env or ENV, timeout=timeout, text=True,
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
