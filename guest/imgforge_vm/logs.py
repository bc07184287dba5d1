"""`imgforge logs`: what the VM did and served, as one stream of lines in time order.

Sources:
- app: the slots' output from the journal (the container's, through its unit), every
  version that ran, each line with the version that wrote it (app.json's history says
  which version each slot ran from when). The journal is persistent and bounded
  (layout.json's journald_conf), so the lines outlive deploys and reboots.
- proxy: nginx's access log for the app (JSON, with request and upstream times) and its
  error log, rotated files included.
- deploy, boot, backup, cert, dns: the VM program's own progress, by the units that run
  it: a deploy's unit (which sends its lines to the journal too: JournalTee), first boot
  (cloud-init's final stage, the program's lines), the recovery and report at each boot,
  and the timers' units.

The request is one JSON line: {"sources": [...], "since": seconds ago or null, "lines": N or
null, "follow": bool}. Each answer line is a LogLine (guest/schema/log-line.schema.json).
"""

import calendar
import gzip
import json
import os
import queue
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time

from .app import SLOTS, Apps, Refused, unit
from .system import ENV

SOURCES = ("app", "proxy", "deploy", "boot", "backup", "cert", "dns")
DEFAULT_LINES = 200
MAX_LINES = 100_000
ROTATIONS = 14
ERROR_LINE = re.compile(r"(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d) \[(\w+)\] (.*)")
SLOT_UNIT = re.compile(r"@(\w+)\.service$")
PREFIX = "imgforge: "
# First boot runs in cloud-init's final stage, whose other lines are cloud-init's.
CLOUD_FINAL = "cloud-final.service"


def journal(socket_path, message, **fields):
    """One journal entry, in journald's native protocol: each field length-prefixed, so
    no value can forge another. Quietly nothing where there is no journal."""
    entry = b""
    for name, value in [("MESSAGE", message[:16384]), ("PRIORITY", "6")] + sorted(fields.items()):
        data = str(value).encode(errors="replace")
        entry += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(entry, socket_path)
    except OSError:
        pass


class JournalTee:
    """A deploy's stderr (its log file) that also sends each whole line to the journal,
    with its time: the deploy unit's entries (`logs --source deploy`)."""

    def __init__(self, stream, socket_path):
        self.stream, self.socket_path, self.rest = stream, socket_path, ""

    def write(self, text):
        self.stream.write(text)
        *lines, self.rest = (self.rest + text).split("\n")
        for line in lines:
            journal(self.socket_path, line, SYSLOG_IDENTIFIER="imgforge")
        return len(text)

    def flush(self):
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def stamp(seconds):
    """RFC 3339, UTC, milliseconds: the one time format of every line."""
    whole = int(seconds)
    ms = int(round((seconds - whole) * 1000))
    if ms == 1000:
        whole, ms = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def parse_request(head):
    """The request's fields, checked; Refused names the one that is wrong."""
    sources = head.get("sources") or list(SOURCES)
    if not isinstance(sources, list) or not all(s in SOURCES for s in sources):
        raise Refused(f"sources {sources!r}: each must be one of {', '.join(SOURCES)}")
    since = head.get("since")
    if since is not None and not (isinstance(since, int) and since >= 0):
        raise Refused(f"since {since!r}: seconds, 0 or more")
    lines = head.get("lines")
    if lines is not None and not (isinstance(lines, int) and 1 <= lines <= MAX_LINES):
        raise Refused(f"lines {lines!r}: between 1 and {MAX_LINES}")
    if since is None and lines is None:
        lines = DEFAULT_LINES
    return {"sources": sources, "since": since, "lines": lines or MAX_LINES,
            "follow": bool(head.get("follow"))}


# -- the journal -------------------------------------------------------------------------

def source_units(paths):
    """The units whose journal is each source's."""
    units = paths.units
    return {"app": [unit(slot) for slot in SLOTS],
            "deploy": [paths.deploy_unit + ".service"],
            "boot": [CLOUD_FINAL, units["recover"], units["report"], units["upgrade"] + ".service"],
            "backup": [units["backup"]], "cert": [units["cert"]], "dns": [units["dns"]]}


def journal_matches(paths, sources):
    """journalctl's matches: any of the sources' units (matches on one field are
    alternatives)."""
    by_source = source_units(paths)
    return [f"_SYSTEMD_UNIT={u}" for s in sources if s != "proxy" for u in by_source[s]]


def journal_json(args):
    """The entries `journalctl -o json ARGS` prints."""
    proc = subprocess.run(["journalctl", "--output", "json", "--no-pager", *args], env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=300)
    return [e for e in map(parse_json, proc.stdout.splitlines()) if e]


def parse_json(line):
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Versions:
    """Which version each slot ran when, from app.json's history: a slot runs the version
    of its latest entry (deploy, rollback, first boot, switch) that started before the
    line. Lines older than the history's first entry of a slot have none, but for first
    boot's version, which starts before its entry."""

    def __init__(self, history):
        self.starts = {}
        for h in history:
            try:
                t = calendar.timegm(time.strptime(h["started"], "%Y-%m-%dT%H:%M:%SZ")) * 1e6
            except (KeyError, TypeError, ValueError):
                continue
            self.starts.setdefault(h.get("slot"), []).append((t, h.get("version"), h.get("kind")))
        for runs in self.starts.values():
            runs.sort(key=lambda r: r[0])

    @classmethod
    def load(cls, ctx):
        return cls(Apps(ctx).load().get("history", []))

    def at(self, slot, t):
        runs = self.starts.get(slot) or []
        version = runs[0][1] if runs and runs[0][2] == "first-boot" else None
        for started, v, _ in runs:
            if started > t:
                break
            version = v
        return version


def usec(entry):
    try:
        return int(entry.get("__REALTIME_TIMESTAMP", "0"))
    except ValueError:
        return 0


def text(value):
    """MESSAGE as the journal gives it: a string, bytes as a list of numbers, or null."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return bytes(value).decode(errors="replace")
    return ""


def from_journal(entry, versions, sources_of):
    """A journal entry as a line, or None (cloud-init's own lines in its final stage)."""
    t = usec(entry)
    name = entry.get("_SYSTEMD_UNIT") or ""
    message = text(entry.get("MESSAGE")).rstrip("\n")
    if name == CLOUD_FINAL and not message.startswith(PREFIX):
        return t, None
    source = sources_of.get(name, "app")
    line = {"time": stamp(t / 1e6), "source": source,
            "message": message[len(PREFIX):] if message.startswith(PREFIX) else message}
    m = SLOT_UNIT.search(name)
    if source == "app" and m:
        line["slot"] = m.group(1)
        line["version"] = versions.at(m.group(1), t)
    return t, line


# -- nginx's logs ------------------------------------------------------------------------

def access_line(raw):
    """A line of the JSON access log, or None when it is not one."""
    e = parse_json(raw)
    if not e or not isinstance(e.get("msec"), (int, float)):
        return None
    upstream = str(e.get("upstream_time") or "").split(",")[-1].strip()
    try:
        upstream_s = float(upstream)
    except ValueError:
        upstream_s = None
    req = {"remote": str(e.get("remote", "")), "method": str(e.get("method", "")),
           "uri": str(e.get("uri", "")), "status": int(e.get("status") or 0),
           "bytes": int(e.get("bytes") or 0), "request_time": float(e.get("request_time") or 0),
           "upstream_time": upstream_s}
    msg = f"{req['method']} {req['uri']} {req['status']} {req['request_time']:.3f} s"
    return int(e["msec"] * 1e6), {"time": stamp(e["msec"]), "source": "proxy",
                                  "message": msg, "request": req}


def error_line(raw):
    """A line of nginx's error log (its time is the VM's local time)."""
    m = ERROR_LINE.match(raw)
    if not m:
        return None
    fields = [int(x) for x in m.groups()[:6]]
    t = time.mktime(tuple(fields) + (0, 0, -1))
    return int(t * 1e6), {"time": stamp(t), "source": "proxy", "message": raw.rstrip("\n")}


def rotated(path):
    """path and its rotations, oldest first (logrotate: .1, then .2.gz and on)."""
    names = [f"{path}.{n}.gz" for n in range(ROTATIONS, 1, -1)] + [f"{path}.1", path]
    return [n for n in names if os.path.exists(n)]


def read_lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def file_lines(paths, since_us, files=None):
    """nginx's lines since since_us (µs), from the access and error logs (or `files`)."""
    out = []
    for path, parse in files or ((paths.nginx_access_log, access_line),
                                 (paths.nginx_error_log, error_line)):
        for name in rotated(path):
            if since_us and os.path.getmtime(name) * 1e6 < since_us:
                continue
            out += [x for x in map(parse, read_lines(name)) if x and x[0] >= since_us]
    return out


def traffic(paths, now=None, windows=(("5m", 300), ("60m", 3600))):
    """The app's requests in each window, from nginx's access log: how many, a second,
    the share of 4xx and 5xx answers, and request time percentiles (seconds)."""
    now = time.time() if now is None else now
    longest = max(w for _, w in windows)
    seen = file_lines(paths, int((now - longest) * 1e6), ((paths.nginx_access_log, access_line),))
    out = {}
    for name, seconds in windows:
        reqs = [line["request"] for t, line in seen if t >= (now - seconds) * 1e6]
        times = sorted(r["request_time"] for r in reqs)
        n = len(reqs)

        def share(lo, reqs=reqs, n=n):
            return round(sum(lo <= r["status"] < lo + 100 for r in reqs) / n, 4) if n else 0.0

        def pct(p, times=times, n=n):
            return times[min(n - 1, int(p * n))] if n else None
        out[name] = {"seconds": seconds, "requests": n, "per_second": round(n / seconds, 3),
                     "share_4xx": share(400), "share_5xx": share(500),
                     "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)}
    return out


# -- the command ---------------------------------------------------------------------------

def collect(ctx, req, now=None):
    """The backlog: every line the request asks for, oldest first, at most `lines`; and
    where following goes on (the last journal cursor)."""
    paths = ctx.paths
    now = time.time() if now is None else now
    since_us = int((now - req["since"]) * 1e6) if req["since"] is not None else 0
    lines, cursor = [], None
    matches = journal_matches(paths, req["sources"])
    if matches:
        args = ["--lines", str(req["lines"])]
        if since_us:
            args += ["--since", f"@{since_us // 1_000_000}"]
        entries = journal_json(args + matches)
        versions, sources_of = Versions.load(ctx), unit_sources(paths)
        lines += [x for x in (from_journal(e, versions, sources_of) for e in entries
                              if usec(e) >= since_us) if x[1]]
        cursor = entries[-1].get("__CURSOR") if entries else None
    if "proxy" in req["sources"]:
        lines += file_lines(paths, since_us)
    lines.sort(key=lambda x: x[0])
    return [line for _, line in lines[-req["lines"]:]], cursor


def unit_sources(paths):
    return {u: s for s, units in source_units(paths).items() for u in units}


def logs(ctx, stream, out=None):
    """Prints the backlog, then (follow) new lines as they come, until the client goes."""
    out = out or sys.stdout
    req = parse_request(parse_json(stream.readline(1 << 16) or "{}") or {})
    started = time.time()
    backlog, cursor = collect(ctx, req, started)
    sizes = {p: os.path.getsize(p) for p in (ctx.paths.nginx_access_log, ctx.paths.nginx_error_log)
             if os.path.exists(p)}
    for line in backlog:
        out.write(json.dumps(line) + "\n")
    out.flush()
    if req["follow"]:
        follow(ctx, req, cursor, started, sizes, out)


def follow(ctx, req, cursor, started, sizes, out):
    paths = ctx.paths
    lines = queue.Queue()
    stop = threading.Event()
    children = []
    matches = journal_matches(paths, req["sources"])
    if matches:
        where = ["--after-cursor", cursor] if cursor else ["--since", f"@{int(started)}"]
        proc = subprocess.Popen(["journalctl", "--output", "json", "--follow", "--no-pager",
                                 *where, *matches], env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        children.append(proc)
        sources_of = unit_sources(paths)

        def read_journal():
            versions, loaded = Versions.load(ctx), time.monotonic()
            for raw in proc.stdout:
                e = parse_json(raw)
                if not e:
                    continue
                if time.monotonic() - loaded > 5:  # a deploy may have added a version
                    versions, loaded = Versions.load(ctx), time.monotonic()
                line = from_journal(e, versions, sources_of)[1]
                if line:
                    lines.put(line)
        threading.Thread(target=read_journal, daemon=True).start()
    if "proxy" in req["sources"]:
        def read_files():
            tails = {p: Tail(p, sizes.get(p, 0)) for p in (paths.nginx_access_log,
                                                            paths.nginx_error_log)}
            parse = {paths.nginx_access_log: access_line, paths.nginx_error_log: error_line}
            while not stop.is_set():
                for p, tail in tails.items():
                    for raw in tail.new_lines():
                        x = parse[p](raw)
                        if x:
                            lines.put(x[1])
                time.sleep(0.5)
        threading.Thread(target=read_files, daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=5)
            except queue.Empty:
                # Nothing new: a client that went away shows here too, not only on a write.
                if gone(out):
                    return
                continue
            out.write(json.dumps(line) + "\n")
            out.flush()
    finally:
        stop.set()
        for proc in children:
            proc.terminate()


class Tail:
    """New whole lines of a file that logrotate may replace (a new inode starts over)."""

    def __init__(self, path, offset):
        self.path, self.offset, self.rest = path, offset, b""
        try:
            self.inode = os.stat(path).st_ino
        except OSError:
            self.inode = None

    def new_lines(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        if st.st_ino != self.inode or st.st_size < self.offset:
            self.inode, self.offset, self.rest = st.st_ino, 0, b""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(1 << 20)
        self.offset += len(data)
        *whole, self.rest = (self.rest + data).split(b"\n")
        return [w.decode(errors="replace") for w in whole]


def gone(out):
    """Whether the reader of out (a pipe to sshd) has closed it."""
    try:
        p = select.poll()
        p.register(out.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))
    except (OSError, ValueError, AttributeError):
        return False
