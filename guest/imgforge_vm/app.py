"""The app, blue-green: two slots on two loopback ports, nginx sending traffic to one.

A deploy starts the new version in the idle slot, waits for its health path, switches
nginx's upstream (reload: requests in flight finish), then drains and stops the old
slot. A version that never gets healthy switches nothing. First boot deploys the first
version the same way. State lives in app.json: which record each slot runs, which slot
is active, the version before it (the rollback target) and the deploy history.
"""

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import time
import urllib.request

from .system import Failed, log, out, read_json, run, wait_for, write_atomic

SLOTS = ("blue", "green")
HISTORY = 20
# The longest an old slot keeps serving requests it had when traffic switched.
DRAIN_SECONDS = 30
LOG_LINES = 20


class Refused(Failed):
    """The request cannot be done as asked (another deploy runs, bad input): exit 2."""


def other(slot):
    return "green" if slot == "blue" else "blue"


def unit(slot):
    return f"imgforge-app@{slot}.service"


def docker_run_argv(conf, paths, slot, record):
    """The container a slot runs: loopback-only port, the data directory, no
    capabilities, no privilege gain, a read-only root, bounded memory and processes.
    Run by image id, so it is exactly the image that was checked."""
    app = conf["app"]
    return ["docker", "run", "--rm", "--name", paths.container(slot), "--pull", "never",
            "--env-file", record["env_file"],
            "--publish", f"127.0.0.1:{paths.slot_port(slot)}:{conf['container_port']}",
            "--volume", f"{conf['data_dir']}:{conf['data_path']}",
            "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--pids-limit", str(app["pids_limit"]), "--memory", app["memory"],
            "--label", f"org.imgforge.slot={slot}",
            record["image_id"]]


def upstream_conf(port):
    return ("# Written by imgforge-vm: the app slot nginx sends traffic to.\n"
            "upstream imgforge_app {\n"
            f"    server 127.0.0.1:{int(port)};\n"
            "    keepalive 8;\n"
            "}\n")


def draining():
    """nginx workers from before the switch that still finish requests."""
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                if b"worker process is shutting down" in f.read():
                    return True
        except OSError:
            pass
    return False


def drain(seconds):
    """Waits (at most `seconds`) until nginx's old workers have finished with the old slot."""
    time.sleep(min(1.0, seconds))
    wait_for(lambda: not draining(), seconds, 0.5)


def healthy(url, timeout, interval=1.0):
    """True once url answers below 400 within timeout seconds."""
    def answers():
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status < 400
    return wait_for(answers, timeout, interval)


class Apps:
    def __init__(self, ctx):
        self.ctx = ctx
        self.conf = ctx.conf
        self.paths = ctx.paths
        self.state_path = self.paths.under("state_dir", "app.json")

    # -- state -------------------------------------------------------------------
    def load(self):
        return read_json(self.state_path, {"active": None, "running": {}, "previous": None,
                                           "history": []})

    def save(self, st):
        write_atomic(self.state_path, json.dumps(st, indent=2, sort_keys=True) + "\n", 0o600)

    def health_url(self, slot):
        return f"http://127.0.0.1:{self.paths.slot_port(slot)}{self.conf['health_path']}"

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
    def locked(self):
        """One deploy at a time on this VM; a second one is refused at once."""
        os.makedirs(self.paths.state_dir, exist_ok=True)
        with open(self.paths.under("state_dir", "deploy.lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise Refused("another deploy is running on this VM; try again when it ends") from None
            yield

    def deploy(self, record, kind="deploy", health_timeout=60, drain_s=DRAIN_SECONDS):
        """Runs record in the idle slot and switches traffic to it once healthy. Raises
        Failed (nothing switched, the old version still serving) if it never is. The
        caller holds `locked()`."""
        return self._deploy(record, kind, health_timeout, drain_s)

    def _deploy(self, record, kind, health_timeout, drain_s):
        st = self.load()
        old = st["active"]
        slot = other(old) if old else SLOTS[0]
        entry = {"kind": kind, "version": record["version"], "image": record["image"],
                 "image_id": record["image_id"], "slot": slot,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        log(f"{kind}: {record['image']} ({record['version']}) into the {slot} slot")
        self.own_data_dir(record)
        replaced = st["running"].get(slot)
        began = time.monotonic()
        if not (old is None and replaced == record and self.starting(slot)):
            st["running"][slot] = record
            self.save(st)
            self.start(slot)
        if not healthy(self.health_url(slot), health_timeout):
            lines = self.container_log(slot)
            run("systemctl", "stop", unit(slot), check=False)
            if replaced:
                st["running"][slot] = replaced
            else:
                st["running"].pop(slot, None)
            reason = f"{record['image']} did not answer {self.conf['health_path']} within {health_timeout} s"
            self.finish(st, dict(entry, result="failed", error=reason, log=lines))
            raise Failed(reason + ("; its last log lines: " + " | ".join(lines[-5:]) if lines else ""))
        healthy_after = time.monotonic() - began
        self.switch(slot)
        switched_after = time.monotonic() - began
        run("systemctl", "enable", unit(slot))
        if old:
            st["previous"] = st["running"].get(old)
            run("systemctl", "disable", unit(old), check=False)
        st["active"] = slot
        self.save(st)
        if old:
            drain(drain_s)
            run("systemctl", "stop", unit(old), check=False)
        self.prune_images(st)
        self.finish(st, dict(entry, result="ok", healthy_s=round(healthy_after, 2),
                             switch_s=round(switched_after - healthy_after, 2)))
        return slot

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
        st["running"][slot] = record
        self.save(st)
        self.start(slot)

    def switch(self, slot):
        """Points nginx at slot; the previous upstream comes back if nginx refuses it."""
        path = self.paths.nginx_upstream
        try:
            with open(path) as f:
                before = f.read()
        except OSError:
            before = None
        write_atomic(path, upstream_conf(self.paths.slot_port(slot)))
        try:
            run("nginx", "-t", capture=True)
        except Failed:
            if before is not None:
                write_atomic(path, before)
            raise
        run("systemctl", "reload", "nginx.service")

    def rollback(self, health_timeout=60, drain_s=DRAIN_SECONDS):
        st = self.load()
        if not st.get("previous"):
            raise Refused("there is no previous version to roll back to")
        return self.deploy(st["previous"], "rollback", health_timeout, drain_s)

    def env_text(self):
        """The environment the running version has."""
        st = self.load()
        rec = st["running"].get(st["active"]) if st.get("active") else None
        if not rec:
            return ""
        with open(rec["env_file"]) as f:
            return f.read()

    def own_data_dir(self, record):
        """The data directory belongs to the user the image runs as, when it is numeric."""
        data_dir = self.conf["data_dir"]
        os.makedirs(data_dir, mode=0o750, exist_ok=True)
        ids = record["user"].split(":") if record["user"] else []
        if ids and all(i.isdigit() for i in ids):
            os.chown(data_dir, int(ids[0]), int(ids[-1]))

    def container_log(self, slot):
        proc = run("docker", "logs", "--tail", str(LOG_LINES), self.paths.container(slot),
                   check=False, capture=True)
        text = (proc.stdout or "") + (proc.stderr or "")
        return [line[:300] for line in text.splitlines()[-LOG_LINES:]]

    def prune_images(self, st):
        """Keeps the images of both slots and the rollback target; removes the older
        ones this program deployed, and environment files no version uses."""
        keep = {r["image_id"] for r in list(st["running"].values()) + [st.get("previous")] if r}
        for h in st["history"]:
            image_id = h.get("image_id")
            if image_id and image_id not in keep:
                run("docker", "image", "rm", image_id, check=False, capture=True)
        env_keep = {r["env_file"] for r in list(st["running"].values()) + [st.get("previous")] if r}
        env_dir = self.paths.app_env_dir
        for name in os.listdir(env_dir) if os.path.isdir(env_dir) else []:
            path = os.path.join(env_dir, name)
            if path not in env_keep:
                os.remove(path)

    def finish(self, st, entry):
        entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
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

    # -- for systemd ----------------------------------------------------------------
    def exec_slot(self, slot):
        """imgforge-app@SLOT.service's ExecStart: becomes `docker run` for the slot's record."""
        rec = self.load()["running"].get(slot)
        if not rec:
            raise Failed(f"the {slot} slot has no version to run")
        argv = docker_run_argv(self.conf, self.paths, slot, rec)
        os.execvp(argv[0], argv)

    def active(self):
        return self.load().get("active")
