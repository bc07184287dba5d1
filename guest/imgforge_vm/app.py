"""The app, blue-green: two slots on two loopback ports, nginx sending traffic to one.

A deploy starts the new version in the idle slot, waits for its health path, switches
traffic to it, then drains and stops the old slot. A version that never gets healthy
switches nothing. First boot deploys the first version the same way. State lives in
app.json: which record each slot runs, which slot is active, the version before it (the
rollback target) and the deploy history.

A switch is one transaction. The intent (switch.json) is written first; then the new
slot's unit is enabled for boot, the upstream file names it and nginx reloads; then
app.json names it active (the commit); then the old unit is disabled and the intent
removed. Whatever ends a switch early (an exception, a kill, a power cut), `reconcile`
makes the upstream file, nginx's running configuration and the units enabled for boot
agree with app.json again: at every boot (imgforge-recover.service), and when the program
starts and finds an intent nobody holds the lock for.

Each slot's unit runs `supervise`: the container, and its liveness. A container that is
loading keeps loading; one whose health path fails for LIVENESS_FAILURES checks in a row,
once it answered (or once its start allowance is over), is restarted.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.request

from . import proxy
from .layout import Layout
from .system import ENV, Failed, log, now, out, phase, read_json, run, wait_for, write_atomic

# The slots and the unit that runs one, as layout.json names them.
SLOTS = tuple(Layout.load().slots)
APP_UNIT = Layout.load().units["app"]
HISTORY = 20
# The longest an old slot keeps serving requests it had when traffic switched.
DRAIN_SECONDS = 30
LOG_LINES = 20
LIVENESS_INTERVAL = 10
LIVENESS_FAILURES = 6


class Refused(Failed):
    """The request cannot be done as asked (another deploy runs, bad input): exit 2."""


def other(slot):
    return "green" if slot == "blue" else "blue"


def unit(slot):
    """The slot's systemd unit: an instance of layout.json's app unit template."""
    return APP_UNIT.replace("@.", f"@{slot}.")


def docker_run_argv(conf, paths, slot, record):
    """The container a slot runs: loopback-only port, the data directory, no
    capabilities, no privilege gain, a read-only root, bounded memory and processes.
    Run by image id, so it is exactly the image that was checked. No Docker health
    check: the slot's unit checks the health path itself (`supervise`); the image's
    own check is for a cluster's service."""
    app = conf["app"]
    return ["docker", "run", "--rm", "--name", paths.container(slot), "--pull", "never",
            "--env-file", record["env_file"],
            "--publish", f"127.0.0.1:{paths.slot_port(slot)}:{conf['container_port']}",
            "--volume", f"{conf['data_dir']}:{conf['data_path']}",
            "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--pids-limit", str(app["pids_limit"]), "--memory", app["memory"],
            "--label", f"org.imgforge.slot={slot}", "--no-healthcheck",
            record["image_id"]]


def answers(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status < 400
    except Exception:
        return False


def healthy(url, timeout, interval=1.0):
    """True once url answers below 400 within timeout seconds."""
    return wait_for(lambda: answers(url, 5), timeout, interval)


class Apps:
    def __init__(self, ctx):
        self.ctx = ctx
        self.conf = ctx.conf
        self.paths = ctx.paths
        self.state_path = self.paths.app_state
        # Day two watches a new version after the switch (remote.Deploys); first boot
        # has no version before it to go back to.
        self.watch_s = 0

    # -- state -------------------------------------------------------------------
    def load(self):
        return read_json(self.state_path, {"active": None, "running": {}, "previous": None,
                                           "history": []})

    def save(self, st):
        write_atomic(self.state_path, json.dumps(st, indent=2, sort_keys=True) + "\n", 0o600)

    def health_url(self, slot):
        return f"http://127.0.0.1:{self.paths.slot_port(slot)}{self.conf['health_path']}"

    def start_allowance(self):
        """Seconds a version may take to answer its health path when it starts."""
        return self.conf.get("app_start_timeout", 600)

    # -- records -----------------------------------------------------------------
    def record(self, image, env_text):
        """A version: the image (by id), its label, and its environment file (0600,
        named by content so a failed deploy never touches the running version's)."""
        info = json.loads(out("docker", "image", "inspect", "--format", "{{json .}}", image))
        labels = (info.get("Config") or {}).get("Labels") or {}
        digest = hashlib.sha256(env_text.encode()).hexdigest()
        env_file = self.paths.under("app_env_dir", f"{digest[:16]}.env")
        if not os.path.exists(env_file):
            write_atomic(env_file, env_text, 0o600)
        return {"image": image, "image_id": info["Id"],
                "version": labels.get("org.opencontainers.image.version") or image.rsplit(":", 1)[-1],
                "env_file": env_file, "user": (info.get("Config") or {}).get("User") or ""}

    # -- deploys -----------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, wait=0):
        """One deploy at a time on this VM; a second one is refused, after `wait` seconds."""
        os.makedirs(self.paths.state_dir, exist_ok=True)
        with open(self.paths.deploy_lock, "w") as lock:
            def take():
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            if not wait_for(take, wait, 0.2):
                raise Refused("another deploy is running on this VM; try again when it ends "
                              "(imgforge deploy --attach follows it)")
            yield

    def retire(self, st, old, drain_s):
        """The slot that served before stops (day two drains it first: remote.Deploys)."""
        run("systemctl", "stop", unit(old), check=False)

    def deploy(self, record, kind="deploy", health_timeout=None, drain_s=DRAIN_SECONDS):
        """Runs record in the idle slot and switches traffic to it once healthy. Raises
        Failed (nothing switched, the old version still serving) if it never is. The
        caller holds `locked()`."""
        health_timeout = health_timeout or self.start_allowance()
        record = dict(record, start_timeout=max(health_timeout, self.start_allowance()))
        st = self.load()
        old = st["active"]
        slot = other(old) if old else SLOTS[0]
        entry = {"kind": kind, "version": record["version"], "image": record["image"],
                 "image_id": record["image_id"], "slot": slot, "started": now()}
        phase(self.paths, "start", f"{kind}: {record['image']} ({record['version']}) "
                                   f"into the {slot} slot")
        self.own_data_dir(record)
        replaced = st["running"].get(slot)
        began = time.monotonic()
        if not (old is None and replaced == record and self.starting(slot)):
            st["running"][slot] = record
            self.save(st)
            self.start(slot)
        phase(self.paths, "health", f"waiting for {self.conf['health_path']} on the {slot} "
                                    f"slot (at most {health_timeout} s)")
        if not healthy(self.health_url(slot), health_timeout):
            where = self.keep_log(slot)
            run("systemctl", "stop", unit(slot), check=False)
            if replaced:
                st["running"][slot] = replaced
            else:
                st["running"].pop(slot, None)
            reason = f"{record['image']} did not answer {self.conf['health_path']} within {health_timeout} s"
            self.finish(st, dict(entry, result="failed", error=reason))
            raise Failed(f"{reason}; its last log lines are in {where}")
        healthy_after = time.monotonic() - began
        try:
            self.switch(st, slot, old if self.watch_s else None)
        except BaseException as e:
            self.finish(self.load(), dict(entry, result="failed",
                                          error=f"switching traffic: {e or type(e).__name__}"))
            raise
        switched_after = time.monotonic() - began
        if old:
            try:
                self.retire(st, old, drain_s)
            except Failed as e:
                self.finish(self.load(), dict(entry, result="rolled-back", error=str(e)))
                raise
        self.finish(st, dict(entry, result="ok", healthy_s=round(healthy_after, 2),
                             switch_s=round(switched_after - healthy_after, 2)))
        log(f"{kind}: {record['version']} serves from the {slot} slot")
        return slot

    def switch(self, st, slot, backup=None):
        """Gives slot the traffic, as one transaction (see the module's doc); nginx falls
        back to the slot `backup` names while it does not answer."""
        old = st["active"]
        intent = {"from": old, "to": slot, "record": st["running"][slot], "started": now()}
        write_atomic(self.paths.switch_intent, json.dumps(intent) + "\n", 0o600)
        try:
            run("systemctl", "enable", unit(slot))
            proxy.point_upstream(self.paths, self.paths.slot_port(slot),
                                 backup and self.paths.slot_port(backup))
            proxy.reload()
            phase(self.paths, "switch", f"nginx sends new requests to the {slot} slot")
            if old:
                st["previous"] = st["running"].get(old)
            st["active"] = slot
            self.save(st)
        except BaseException:
            log("the switch did not complete: the version before keeps the traffic")
            self.reconcile(note=False)
            raise
        if old:
            run("systemctl", "disable", unit(old), check=False)
        os.remove(self.paths.switch_intent)

    def reconcile(self, booting=False, note=True):
        """Makes the upstream file, nginx's running configuration and the units enabled
        for boot agree with app.json, and ends an interrupted switch (in the history, with
        `note`). The caller holds `locked()` (or it is boot, when no deploy runs). Returns
        what it changed."""
        st = self.load()
        intent = read_json(self.paths.switch_intent, None)
        active = st["active"]
        changed = []
        if active:
            # After an interrupted switch nginx may run another upstream than its file.
            if proxy.point_upstream(self.paths, self.paths.slot_port(active)) or intent:
                proxy.reload(started_only=True)
                changed.append(f"nginx sends traffic to the {active} slot")
            for slot in SLOTS:
                want = slot == active
                enabled = run("systemctl", "is-enabled", "--quiet", unit(slot),
                              check=False).returncode == 0
                if enabled != want:
                    run("systemctl", "enable" if want else "disable", unit(slot))
                    changed.append(f"{unit(slot)} {'enabled' if want else 'disabled'}")
                if not want and (booting or self.starting(slot)):
                    run("systemctl", "stop", "--no-block", unit(slot), check=False)
            if not self.starting(active):
                run("systemctl", "start", "--no-block", unit(active))
                if not booting:
                    changed.append(f"{unit(active)} started")
        if intent and not note:
            os.remove(self.paths.switch_intent)
        elif intent:
            rec = intent.get("record") or {}
            entry = {"kind": "switch", "version": rec.get("version", "?"),
                     "image": rec.get("image", "?"), "image_id": rec.get("image_id", ""),
                     "slot": intent.get("to"), "started": intent.get("started", now())}
            if active == intent.get("to"):
                entry["result"] = "ok"
            else:
                entry.update(result="interrupted",
                             error=f"the switch to the {intent.get('to')} slot was interrupted; "
                                   f"the {active} slot keeps the traffic")
            self.finish(st, entry)
            os.remove(self.paths.switch_intent)
            changed.append(f"an interrupted switch ended {entry['result']}")
        for c in changed:
            log(f"recovered: {c}")
        return changed

    def finish_interrupted(self):
        """An intent nobody works on is finished or undone. The caller holds `locked()`."""
        return self.reconcile() if os.path.exists(self.paths.switch_intent) else []

    def recover(self):
        """At a program start: finish_interrupted, unless a deploy runs (its intent)."""
        if not os.path.exists(self.paths.switch_intent):
            return []
        try:
            with self.locked():
                return self.finish_interrupted()
        except Refused:
            return []

    def start(self, slot):
        """(Re)starts slot's unit, which runs the record app.json gives it; no wait."""
        run("systemctl", "daemon-reload")
        run("systemctl", "stop", unit(slot))
        run("systemctl", "reset-failed", unit(slot), check=False)
        run("systemctl", "start", "--no-block", unit(slot))

    def starting(self, slot):
        """Whether slot's unit is running or on its way to it."""
        state = run("systemctl", "show", "--property", "ActiveState", "--value", unit(slot),
                    check=False, capture=True).stdout.strip()
        return state in ("active", "activating", "reloading")

    def prestart(self, record):
        """First boot: starts the first version in the first slot at once, so that it
        loads while nginx and the certificate are set up; `deploy` then takes it over
        as it runs (no restart) and gives it traffic once healthy. The caller holds
        `locked()`."""
        st = self.load()
        if st["active"]:
            return
        slot = SLOTS[0]
        self.own_data_dir(record)
        st["running"][slot] = dict(record, start_timeout=self.start_allowance())
        self.save(st)
        self.start(slot)

    def active_record(self):
        st = self.load()
        return st["running"].get(st["active"]) if st.get("active") else None

    def own_data_dir(self, record):
        """The data directory belongs to the user the image runs as, when it is numeric."""
        data_dir = self.conf["data_dir"]
        os.makedirs(data_dir, mode=0o750, exist_ok=True)
        ids = record["user"].split(":") if record["user"] else []
        if ids and all(i.isdigit() for i in ids):
            os.chown(data_dir, int(ids[0]), int(ids[-1]))

    def keep_log(self, slot):
        """The slot's last log lines (its container's output and its unit's, from the
        journal: a container that exits is gone with its own log) into a root-only file,
        never into status.json or on the console (they may hold secrets); returns the
        file's path."""
        proc = run("journalctl", "--unit", unit(slot), "--boot", "--lines", str(LOG_LINES),
                   "--output", "cat", "--no-pager", check=False, capture=True)
        path = self.paths.under("log_dir", f"app-{slot}.log")
        lines = (proc.stdout or "").splitlines()[-LOG_LINES:]
        write_atomic(path, "".join(line[:300] + "\n" for line in lines), 0o600)
        return path

    def finish(self, st, entry):
        entry["finished"] = now()
        st["history"] = (st["history"] + [entry])[-HISTORY:]
        self.save(st)
        self.ctx.update(app=self.summary(st), deploys=st["history"][-5:])

    def summary(self, st):
        active = st.get("active")
        rec = st["running"].get(active) if active else None
        if not rec:
            return None
        return {"slot": active, "image": rec["image"], "image_id": rec["image_id"],
                "version": rec["version"],
                "since": next((h["finished"] for h in reversed(st["history"])
                               if h.get("result") == "ok" and h.get("slot") == active), None)}

    def active(self):
        return self.load().get("active")

    # -- for systemd ----------------------------------------------------------------
    def supervise(self, slot, notify=None):
        """imgforge-app@SLOT.service's ExecStart: runs the slot's container and restarts it
        (by ending, for systemd's Restart=always) once it stops answering its health path:
        LIVENESS_FAILURES checks in a row, counted after it first answered or after its
        start allowance. Slow to start is not dead."""
        rec = self.load()["running"].get(slot)
        if not rec:
            raise Failed(f"the {slot} slot has no version to run")
        argv = docker_run_argv(self.conf, self.paths, slot, rec)
        child = subprocess.Popen(argv, env=ENV)
        signal.signal(signal.SIGTERM, lambda *_: run(
            "docker", "stop", "--time", "20", self.paths.container(slot), check=False))
        allowance = rec.get("start_timeout") or self.start_allowance()
        began, ready, failures = time.monotonic(), False, 0
        while True:
            try:
                return child.wait(timeout=LIVENESS_INTERVAL)
            except subprocess.TimeoutExpired:
                pass
            if answers(self.health_url(slot)):
                if not ready:
                    log(f"{slot}: {rec['version']} answers its health path")
                ready, failures = True, 0
            elif ready or time.monotonic() - began > allowance:
                failures += 1
                if failures >= LIVENESS_FAILURES:
                    log(f"{slot}: {rec['version']} did not answer its health path "
                        f"{failures} times in a row: restarting it")
                    run("docker", "kill", self.paths.container(slot), check=False)

