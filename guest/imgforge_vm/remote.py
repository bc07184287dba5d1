"""Day two: what `imgforge deploy`, `rollback` and `status` run on the VM over SSH. Not
part of the program first boot writes: `install-program` brings it with the first deploy
or status.

Deploys and rollbacks run on the VM, not in the SSH session that asks for them.
`deploy-version` reads its request from stdin (one JSON line: {"image", "env", "bundle":
{"size", "sha256"}, "health_timeout", "drain"}, then with a bundle exactly `size` bytes of
it), so no secret is in any command line; it starts the deploy as its own transient unit
(imgforge-deploy.service running `run-job ID`, with its own root-only log) and follows that
log. The client may go away at any time: the deploy goes on, and `attach` follows it again
or says how it ended. The unit's name is taken while a deploy runs, so there is one at a time.
"""

import glob
import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time

from . import proxy, status
from .app import SLOTS, Apps, Refused, answers, now, unit
from .system import Failed, log, out, phase, read_json, retry, run, wait_for, write_atomic

# After the switch, the new version is watched this long by default, its health asked this
# often; this many failures in a row, or a 5xx share this much above the old version's
# (with at least this many 5xx answers), switch traffic back.
WATCH_SECONDS = 60
WATCH_INTERVAL = 2
WATCH_FAILURES = 3
WATCH_5XX_MARGIN = 0.05
WATCH_MIN_5XX = 5
UPSTREAM_PORT = re.compile(r"server 127\.0\.0\.1:(\d+);")
ENV_LINE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=[^\n\r\0]*")
BUNDLE_MAX_BYTES = 8 << 30
KEEP_JOBS = 10


def five_xx(statuses):
    """The share of 5xx among HTTP statuses, and their number."""
    bad = sum(s >= 500 for s in statuses)
    return (bad / len(statuses) if statuses else 0.0), bad


def upstream_port(paths):
    """The port the upstream file names, or None."""
    m = UPSTREAM_PORT.search(proxy.read(paths.nginx_upstream) or "")
    return int(m.group(1)) if m else None


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


class Deploys(Apps):
    """Day two's deploys: the new version is watched after the switch (and traffic goes
    back if it fails), the old version drains before it stops, older images go, and
    there is a version to roll back to."""

    def __init__(self, ctx, watch_s=WATCH_SECONDS):
        super().__init__(ctx)
        self.watch_s = watch_s

    def deploy(self, record, kind="deploy", health_timeout=None, drain_s=30):
        # What a rollback goes back to, if the watch undoes this deploy.
        self.previous = self.load().get("previous")
        return super().deploy(record, kind, health_timeout, drain_s)

    def retire(self, st, old, drain_s):
        if self.watch_s:
            self.watch(st, old)
        phase(self.paths, "drain", f"the {old} slot finishes its requests (at most {drain_s} s)")
        time.sleep(min(1.0, drain_s))
        wait_for(lambda: not draining(), drain_s, 0.5)
        run("systemctl", "stop", unit(old), check=False)
        self.prune_images(st)

    def watch(self, st, old):
        """The first watch_s seconds after the switch: the old slot keeps running as
        nginx's backup, and the new one's health path is asked every WATCH_INTERVAL s and
        its 5xx share compared with the old one's. A failure switches traffic back, stops
        the new slot and raises Failed; else the old slot stops being the backup."""
        new = st["active"]
        phase(self.paths, "watch", f"{self.watch_s} s: the {old} slot stays ready while the "
                                   f"{new} slot's health and 5xx answers are watched")
        from .logs import Tail, access_line, file_lines
        switched, log_file = time.time(), self.paths.nginx_access_log
        # The old version's answers over the 5 minutes before, then the new one's as
        # nginx writes them (only what is new is read at each check).
        before = five_xx([x[1]["request"]["status"] for x in file_lines(
            self.paths, int((switched - 300) * 1e6), ((log_file, access_line),))])
        tail = Tail(log_file, os.path.getsize(log_file) if os.path.exists(log_file) else 0)
        statuses, failures, problem = [], 0, None
        while not problem and time.time() - switched < self.watch_s:
            time.sleep(WATCH_INTERVAL)
            failures = 0 if answers(self.health_url(new)) else failures + 1
            after = time.time() - switched
            if failures >= WATCH_FAILURES:
                problem = (f"its health path failed {failures} times in a row, {after:.0f} s "
                           "after the switch")
            statuses += [x[1]["request"]["status"] for x in map(access_line, tail.new_lines())
                         if x]
            now = five_xx(statuses)
            if now[1] >= WATCH_MIN_5XX and now[0] > before[0] + WATCH_5XX_MARGIN:
                problem = (f"{now[1]} of its answers were 5xx ({now[0]:.0%}) {after:.0f} s "
                           f"after the switch, against {before[0]:.0%} before")
        if not problem:
            proxy.point_upstream(self.paths, self.paths.slot_port(new))
            proxy.reload()
            log(f"watch: the {new} slot stayed healthy for {self.watch_s} s")
            return
        phase(self.paths, "watch", f"{st['running'][new]['version']}: {problem}: switching "
                                   f"traffic back to the {old} slot")
        self.switch(st, old)
        st["previous"] = self.previous
        self.save(st)
        where = self.keep_log(new)
        run("systemctl", "stop", unit(new), check=False)
        raise Failed(f"the watch switched traffic back to {st['running'][old]['version']}: "
                     f"{st['running'][new]['version']} {problem}; its last log lines are in "
                     f"{where}")

    def prune_images(self, st):
        """Keeps the images of both slots and the rollback target; removes the older
        ones this program deployed, and environment files no version uses."""
        kept = [r for r in list(st["running"].values()) + [st.get("previous")] if r]
        keep = {r["image_id"] for r in kept}
        for h in st["history"]:
            image_id = h.get("image_id")
            if image_id and image_id not in keep:
                run("docker", "image", "rm", image_id, check=False, capture=True)
        env_keep = {r["env_file"] for r in kept}
        env_dir = self.paths.app_env_dir
        for name in os.listdir(env_dir) if os.path.isdir(env_dir) else []:
            path = os.path.join(env_dir, name)
            if path not in env_keep:
                os.remove(path)

    def rollback(self, health_timeout=None, drain_s=30):
        st = self.load()
        if not st.get("previous"):
            raise Refused("there is no previous version to roll back to")
        return self.deploy(st["previous"], "rollback", health_timeout, drain_s)

    def env_text(self):
        """The environment the running version has."""
        rec = self.active_record()
        if not rec:
            return ""
        with open(rec["env_file"]) as f:
            return f.read()


def notify(ctx, event, text):
    """Tells the webhook (--notify-url), if there is one, with the same curl and
    configuration the units' notifications use; a webhook that does not answer is logged,
    never a failure of its own."""
    if not ctx.conf.get("notify"):
        return
    body = json.dumps({"text": text, "content": text, "event": event,
                       "host": ctx.conf.get("domain") or "the VM"})
    try:
        proc = subprocess.run([ctx.paths.curl_bin, "-fsS", "--max-time", "30", "--retry", "3",
                               "--config", ctx.paths.notify_curlrc, "-H",
                               "Content-Type: application/json", "--data-binary", "@-"],
                              input=body, text=True, capture_output=True, timeout=150)
        ok = proc.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    log(f"notify: {event}: {'told' if ok else 'the webhook did not take it'}")


class Interrupted(BaseException):
    """The deploy's unit was stopped (SIGTERM): the switch, if one runs, is undone."""


def request(stream, image=True):
    try:
        head = json.loads(stream.readline(1 << 20) or "{}")
    except ValueError as e:
        raise Refused(f"the request is not JSON: {e}") from None
    if image and not (isinstance(head.get("image"), str) and head["image"]):
        raise Refused("the request names no image")
    env = head.get("env")
    if env is not None:
        bad = [line for line in env.splitlines() if line and not line.startswith("#")
               and not ENV_LINE.fullmatch(line)]
        if bad:
            raise Refused(f"environment lines that are not NAME=VALUE: {len(bad)}")
    return head


def receive(paths, stream, dest, size, sha256):
    """Exactly `size` bytes from stream into dest (0600), checked against sha256; a
    bundle that is not the one the client named is refused and removed."""
    if not isinstance(size, int) or not 0 < size <= BUNDLE_MAX_BYTES:
        raise Refused(f"bundle size {size!r} is not between 1 and {BUNDLE_MAX_BYTES}")
    h, left = hashlib.sha256(), size
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            while left:
                block = stream.read(min(left, 1 << 20))
                if not block:
                    raise Failed(f"the bundle ended after {size - left} of {size} bytes")
                h.update(block)
                f.write(block)
                if left == size:
                    phase(paths, "upload", f"receiving the bundle ({size} bytes)")
                left -= len(block)
        if h.hexdigest() != sha256:
            raise Refused(f"the bundle arrived with sha256 {h.hexdigest()}, not the {sha256} "
                          "imgforge sent: nothing changed; send it again")
    except BaseException:
        os.remove(dest)
        raise


class Jobs:
    """Deploys as units: each has an id, a request (0600, removed once read), a log
    (root-only) and a result."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.paths = ctx.paths
        self.dir = ctx.paths.jobs_dir

    def path(self, job, suffix):
        if suffix == "log":
            return self.paths.under("log_dir", f"deploy-{job}.log")
        return os.path.join(self.dir, f"{job}.{suffix}")

    def running(self):
        state = run("systemctl", "show", "--property", "ActiveState", "--value",
                    self.paths.deploy_unit + ".service", check=False, capture=True,
                    quiet=True).stdout.strip()
        return state in ("active", "activating", "deactivating")

    def latest(self):
        try:
            with open(os.path.join(self.dir, "latest")) as f:
                return f.read().strip() or None
        except OSError:
            return None

    def submit(self, kind, head, stream):
        """Starts a deploy (kind "deploy" or "rollback") as its own unit; returns its id.
        Refused while another deploy runs, or with a bundle that is not the one sent."""
        apps = Apps(self.ctx)
        with apps.locked():
            apps.finish_interrupted()
            if self.running():
                raise Refused("another deploy is running on this VM; `imgforge deploy --attach` follows it")
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            os.makedirs(self.paths.log_dir, mode=0o700, exist_ok=True)
            job = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()
            bundle = head.get("bundle")
            if bundle:
                dest = self.path(job, "oci.tar")
                receive(self.paths, stream, dest, bundle.get("size"), bundle.get("sha256"))
                head = dict(head, bundle=dest)
            write_atomic(self.path(job, "request"), json.dumps(dict(head, kind=kind)), 0o600)
            write_atomic(self.path(job, "log"), "", 0o600)
            write_atomic(os.path.join(self.dir, "latest"), job + "\n", 0o600)
            log_to = "append:" + self.path(job, "log")
            run("systemd-run", "--unit", self.paths.deploy_unit, "--collect", "--quiet",
                "--property", "StandardOutput=" + log_to, "--property", "StandardError=" + log_to,
                "--property", "TimeoutStopSec=120", self.paths.program, "run-job", job)
        self.prune()
        return job

    def run(self, job):
        """The deploy itself (imgforge-deploy.service): writes its result whatever happens."""
        def stop(*_):
            raise Interrupted("the deploy's unit was stopped")
        signal.signal(signal.SIGTERM, stop)
        from .logs import JournalTee
        sys.stderr = JournalTee(sys.stderr, self.paths.journal_socket)
        result = {"id": job, "exit": 1, "started": now()}
        head = read_json(self.path(job, "request"), {})
        if os.path.exists(self.path(job, "request")):
            os.remove(self.path(job, "request"))
        watch = head.get("watch")
        apps = Deploys(self.ctx, WATCH_SECONDS if watch is None else watch)
        try:
            with apps.locked(wait=120):
                apps.finish_interrupted()
                if self.ctx.conf.get("cluster"):
                    cluster_job(self.ctx, apps, head)
                elif head.get("kind") == "rollback":
                    apps.rollback(head.get("health_timeout"), head.get("drain", 30))
                elif head.get("kind") == "restore":
                    from .restore import restore
                    restore(apps, head.get("archive"), head.get("health_timeout"),
                            head.get("drain", 30))
                else:
                    if head.get("bundle"):
                        phase(self.paths, "load", "loading the image into Docker")
                        run("docker", "load", "--input", head["bundle"], timeout=1800)
                    else:
                        phase(self.paths, "load", f"pulling {head['image']}")
                        retry("docker pull", lambda: run("docker", "pull", head["image"],
                                                         timeout=1800), tries=4)
                    env = head["env"] if head.get("env") is not None else apps.env_text()
                    apps.deploy(apps.record(head["image"], env), "deploy",
                                head.get("health_timeout"), head.get("drain", 30))
            result.update(exit=0)
        except Refused as e:
            result.update(exit=2, error=str(e))
        except (Failed, Interrupted) as e:
            result.update(error=str(e))
            self.show_app_log(apps)
        except Exception as e:
            result.update(error=f"{type(e).__name__}: {e}")
        finally:
            if head.get("bundle") and os.path.exists(head["bundle"]):
                os.remove(head["bundle"])
            history = apps.load()["history"]
            if history and history[-1]["started"] >= result["started"]:
                result["entry"] = history[-1]
            write_atomic(self.path(job, "result"), json.dumps(result) + "\n", 0o600)
            log(f"done: {'ok' if result['exit'] == 0 else result.get('error')}")
            if result["exit"] == 1:
                notify(self.ctx, f"{head.get('kind', 'deploy')}-failed",
                       f"imgforge: the {head.get('kind', 'deploy')} on "
                       f"{self.ctx.conf.get('domain') or 'the VM'} failed: {result.get('error')}")
        return result["exit"]

    def show_app_log(self, apps):
        """A failed version's last log lines, for the client's terminal (this log is root's)."""
        for slot in SLOTS:
            path = apps.paths.under("log_dir", f"app-{slot}.log")
            if os.path.exists(path) and time.time() - os.path.getmtime(path) < 60:
                with open(path) as f:
                    for line in f:
                        log(f"  {slot}| {line.rstrip()}")

    def follow(self, job, stream=None):
        """Copies the job's log to stderr as it grows, until the job ends; returns its
        result. A client that went away (a broken pipe) leaves the job running."""
        stream = stream or sys.stderr
        pos = 0
        while True:
            done = os.path.exists(self.path(job, "result")) or not self.running()
            with open(self.path(job, "log"), "rb") as f:
                f.seek(pos)
                chunk = f.read()
            if chunk:
                pos += len(chunk)
                stream.write(chunk.decode(errors="replace"))
                stream.flush()
            if done and not chunk:
                break
            time.sleep(0.5)
        result = read_json(self.path(job, "result"), None)
        if result is None:
            raise Failed("the deploy ended without a result (its unit was killed): "
                         "`imgforge status` shows which version serves")
        return result

    def prune(self):
        """Keeps the last KEEP_JOBS deploys' results and logs."""
        jobs = sorted({n.split(".")[0] for n in os.listdir(self.dir) if n[0].isdigit()})
        for job in jobs[:-KEEP_JOBS]:
            for path in (self.path(job, "result"), self.path(job, "log")):
                if os.path.exists(path):
                    os.remove(path)


def cluster_job(ctx, apps, head):
    """A deploy or rollback on a cluster's manager: Swarm's rolling update of the service."""
    from . import swarm
    kind = head.get("kind")
    if kind == "rollback":
        swarm.rollback(ctx, apps, head)
    elif kind == "deploy":
        swarm.deploy(ctx, apps, head)
    else:
        raise Refused(f"a {kind} is not built for a cluster: the data is in the database "
                      "the replicas share, which its own backup restores")


def answer(result):
    """The job's result as the command's: its entry on stdout, or the error (exit 1/2)."""
    if result["exit"] == 2:
        raise Refused(result.get("error", "refused"))
    if result["exit"] != 0:
        raise Failed(result.get("error", "the deploy failed"))
    return result.get("entry", {})


def deploy_version(ctx, stream):
    jobs = Jobs(ctx)
    return answer(jobs.follow(jobs.submit("deploy", request(stream), stream)))


def rollback(ctx, stream):
    jobs = Jobs(ctx)
    return answer(jobs.follow(jobs.submit("rollback", request(stream, image=False), stream)))


def restore(ctx, stream):
    """Starts a restore (the archive the request names, else the newest) as a deploy job;
    an archive that does not exist is refused before anything changes."""
    from .restore import pick
    head = request(stream, image=False)
    if head.get("archive") is not None and not isinstance(head["archive"], str):
        raise Refused("the request's archive is not a name")
    pick(ctx, head.get("archive"))
    jobs = Jobs(ctx)
    return answer(jobs.follow(jobs.submit("restore", head, stream)))


def attach(ctx, stream):
    jobs = Jobs(ctx)
    job = jobs.latest()
    if not jobs.running() or not job:
        last = read_json(jobs.path(job, "result"), None) if job else None
        if last is None:
            raise Refused("no deploy is running on this VM, and none ran before")
        e = last.get("entry") or {}
        raise Refused(f"no deploy is running on this VM; the last one ({job}, "
                      f"{e.get('version', '?')}) ended {e.get('result') or last.get('error')}"
                      " (imgforge status shows what serves)")
    return answer(jobs.follow(job))


def report(ctx):
    """status.json, and what only root sees: the certificate, disk use, a running deploy,
    and whether the path users take answers and everything agrees on what serves."""
    conf, paths = ctx.conf, ctx.paths
    Apps(ctx).recover()
    jobs = Jobs(ctx)
    doc = {"status": status.read(paths), "certificate": None, "disk": {},
           "deploy": jobs.latest() if jobs.running() else None}
    doc["serving"] = serving(ctx, deploying=doc["deploy"] is not None)
    doc["healthy"] = doc["serving"]["answers"] and not doc["serving"]["problems"]
    cert = paths.under("letsencrypt_live", conf["domain"], "cert.pem") if conf.get("domain") else ""
    if cert and os.path.exists(cert):
        text = out("openssl", "x509", "-noout", "-issuer", "-enddate", "-in", cert)
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        doc["certificate"] = {"issuer": fields.get("issuer", "").strip(),
                              "not_after": fields.get("notAfter", "").strip()}
    for name, path in (("data", conf["data_dir"]), ("backups", paths.backup_dir)):
        if os.path.isdir(path):
            doc["disk"][name] = int(out("du", "-sb", path).split()[0])
    doc["backup"] = read_json(paths.backup_state, {})
    from .logs import traffic
    doc["traffic"] = traffic(paths)
    doc["machine"] = machine(paths)
    if conf.get("cluster"):
        from .swarm import status as swarm_status
        doc["cluster"] = swarm_status(ctx)
    return doc


def machine(paths):
    """CPU use over half a second, memory and the root filesystem."""
    def busy_total():
        with open(paths.cpu_stat) as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        return sum(ticks) - idle, sum(ticks)
    b0, t0 = busy_total()
    time.sleep(0.5)
    b1, t1 = busy_total()
    mem = {}
    with open(paths.meminfo) as f:
        for line in f:
            k, _, v = line.partition(":")
            mem[k] = int(v.split()[0]) * 1024
    disk = os.statvfs("/")
    return {"cpu": round((b1 - b0) / max(t1 - t0, 1), 4),
            "memory_used": mem["MemTotal"] - mem.get("MemAvailable", mem.get("MemFree", 0)),
            "memory_total": mem["MemTotal"],
            "disk_used": (disk.f_blocks - disk.f_bfree) * disk.f_frsize,
            "disk_total": disk.f_blocks * disk.f_frsize}


def backup_now(ctx, stream):
    """A backup now, by the unit the timer starts (one at a time); its record."""
    began = now()
    run("systemctl", "start", ctx.paths.units["backup"], check=False, timeout=7200)
    last = read_json(ctx.paths.backup_state, {}).get("last")
    if not last or last.get("started", "") < began:
        raise Failed("the backup did not run: `imgforge logs --source backup` says why")
    if last.get("result") != "ok":
        raise Failed(f"the backup failed: {last.get('error')}")
    return last


def backup_list(ctx, stream):
    """The archives, and the last backup's record."""
    state = read_json(ctx.paths.backup_state, {})
    from .restore import archives
    return {"archives": archives(ctx), "last": state.get("last")}


def cluster_token(ctx, stream):
    """The swarm's worker join token and the manager's address (`imgforge cluster token`)."""
    if not ctx.conf.get("cluster"):
        raise Refused("this VM is not a node of a cluster (rendered without --cluster)")
    from .swarm import SWARM_PORT, Engine
    engine = Engine(ctx.paths.docker_socket)
    status, swarm = engine.call("GET", "/swarm")
    if status == 503:
        raise Refused("this node is not the swarm's manager: ask the --cluster init node")
    if status != 200:
        raise Failed(f"Docker's API: GET /swarm: HTTP {status}")
    node = engine.ok("GET", "/info")["Swarm"]["NodeAddr"]
    return {"token": swarm["JoinTokens"]["Worker"], "manager": f"{node}:{SWARM_PORT}"}


def main(ctx, args):
    """A day-two command: its answer (one JSON line) on stdout; `logs` streams lines."""
    if args.command == "run-job":
        return Jobs(ctx).run(args.job)
    if args.command == "logs":
        from .logs import logs
        fn = logs
    else:
        fn = {"deploy-version": deploy_version, "rollback": rollback, "attach": attach,
              "status": lambda c, _: report(c), "backup-now": backup_now,
              "backup-list": backup_list, "restore": restore,
              "cluster-token": cluster_token}[args.command]
    try:
        answer = fn(ctx, sys.stdin.buffer)
    except BrokenPipeError:
        return 0  # the client went away; a deploy it started goes on
    if answer is not None:
        print(json.dumps(answer), flush=True)
    return 0


def running_port(paths, conf):
    """The slot port nginx's running configuration proxies to (its loopback check server
    answers with the upstream address it used), or None when nginx does not answer."""
    c = http.client.HTTPConnection("127.0.0.1", paths.nginx_check_port, timeout=10)
    try:
        c.request("GET", conf["health_path"])
        addr = c.getresponse().getheader("X-Imgforge-Upstream") or ""
    except OSError:
        return None
    finally:
        c.close()
    # After a failed try nginx lists every address it tried; the last one answered.
    m = re.search(r":(\d+)$", addr.split(",")[-1].strip())
    return int(m.group(1)) if m else None


def serving(ctx, deploying=False):
    """What serves, checked on the VM: the health path through nginx as users reach it,
    and app.json, the upstream file, nginx's running configuration and the units enabled
    for boot naming the same slot (while a deploy runs, they may differ for a moment)."""
    paths, conf = ctx.paths, ctx.conf
    active = Apps(ctx).active()
    got = proxy.user_path(paths, conf)
    doc = {"slot": active, "answers": 0 < got < 400,
           "path": f"{'https' if proxy.tls_installed(paths) else 'http'}://"
                   f"{conf.get('domain') or 'localhost'}{conf['health_path']}",
           "answer": got, "problems": []}
    if active is None or deploying:
        return doc
    port = paths.slot_port(active)
    problems = doc["problems"]
    named = upstream_port(paths)
    if named != port:
        problems.append(f"the upstream file names port {named}, app.json the {active} slot ({port})")
    running = running_port(paths, conf)
    if running is None:
        problems.append("nginx's check server does not answer: nginx is not running as configured")
    elif running != port:
        problems.append(f"nginx runs with port {running}, not the {active} slot's ({port}): "
                        "its configuration was not reloaded")
    for slot in SLOTS:
        enabled = run("systemctl", "is-enabled", "--quiet", unit(slot), check=False).returncode == 0
        if enabled != (slot == active):
            problems.append(f"{unit(slot)} is {'enabled' if enabled else 'disabled'} for boot")
    if os.path.exists(paths.switch_intent):
        problems.append("a switch was interrupted and is not finished")
    return doc
