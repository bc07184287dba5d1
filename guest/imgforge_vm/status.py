"""status.json: what the deployment did, as one versioned document.

imgforge reads it from outside (the serial console line `imgforge-status: {...}`, or the
file over SSH); its Rust twin is `imgforge::contract::status::Status`, and its schema
guest/schema/status.schema.json (the unit tests check every document against it). A new field is added without
a version change; a field that changes meaning gets a new version.
"""

import fcntl
import json
import os
import sys

from .system import log, now, read_json, write_atomic

VERSION = 1
PREFIX = "imgforge-status: "
DONE = ("ok", "skipped", "kept")


def new(step_names):
    return {"version": VERSION, "state": "pending", "steps": {s: "pending" for s in step_names},
            "certificate": "pending", "health": "pending",
            "cloud_init": {"status": "running", "errors": []}}


def derive_state(st):
    """failed if anything failed; ready when every step and the health check are done."""
    values = list(st["steps"].values()) + [st.get("health", "pending")]
    if "failed" in values or st["cloud_init"]["status"] == "error":
        return "failed"
    if all(v in DONE for v in values):
        return "ready"
    return "pending"


def dumps(st):
    """status.json's text: steps stay in the order they run."""
    return json.dumps(st, indent=2) + "\n"


def read(paths):
    return read_json(paths.status, None)


def update(paths, step_names, steps=None, **fields):
    """Merges steps and fields into status.json under a lock, derives the state and
    prints the document on the console. Returns the new document."""
    _ready(paths)
    with open(paths.status_lock, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        st = read(paths) or new(step_names)
        if st.get("version") != VERSION:
            st = dict(new(step_names), previous_version=st.get("version"))
        st["steps"].update(steps or {})
        st.update(fields)
        try:
            with open(paths.boot_id) as f:
                st["boot_id"] = f.read().strip()
        except OSError:
            st["boot_id"] = ""
        st["updated"] = now()
        st["state"] = derive_state(st)
        write_atomic(paths.status, dumps(st), 0o644)
    announce(paths, st)
    return st


def begin(paths, step_names, **fields):
    """A run of first boot starts: every step pending again, cloud-init running, no
    error; what the VM runs, its certificate and its deploys stay."""
    old = read(paths) or {}
    keep = {k: old[k] for k in ("certificate", "certificate_detail", "app", "deploys",
                                "host_keys", "dns", "dns_detail") if k in old}
    fresh = dict(new(step_names), **keep)
    _ready(paths)
    with open(paths.status_lock, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_atomic(paths.status, dumps(fresh), 0o644)
    return update(paths, step_names, **fields)


def _ready(paths):
    os.makedirs(paths.state_dir, exist_ok=True)
    return paths.state_dir


def announce(paths, st):
    line = PREFIX + json.dumps(st, separators=(",", ":"))
    try:
        with open(paths.console, "a") as console:
            console.write(line + "\n")
        log(f"status: {st['state']}, certificate {st.get('certificate')}")
    except OSError:
        print(line, file=sys.stderr, flush=True)
