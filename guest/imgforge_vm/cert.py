"""The certificate: one attempt when one is due, never failing the boot.

The timer calls `attempt` every minute. Nothing is asked of the ACME server until the
domain reaches this VM (a token nginx serves) and the ACME directory answers; after a
certbot failure the next try waits 2, 4, 8, 16, 32, then 60 minutes. certbot only
obtains the certificate (`certonly --webroot`: nginx serves the challenge from a
directory); the HTTPS site is imgforge's own, installed whenever a valid certificate for
the domain exists, so a run of first boot again never drops HTTPS.
"""

import fcntl
import json
import os
import re
import ssl
import subprocess
import time

from . import proxy, status
from .system import ENV, fetch, log, read_json, run, write_atomic

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
# Unchecked conditions (DNS not pointing here yet, ACME server down) are looked at again
# after this many seconds; they cost the ACME server nothing.
RECHECK = 60


def backoff(failures):
    """Seconds to wait after `failures` certbot failures in a row: 2, 4, ... 32, then 60
    minutes, so at most 5 tries in the first hour (Let's Encrypt allows 5 failed
    validations per hostname an hour)."""
    return 60 * min(2 ** failures, 60)


def certbot_argv(conf, webroot):
    argv = ["certbot", "certonly", "--webroot", "--webroot-path", webroot, "--non-interactive",
            "--agree-tos", "--email", conf["email"], "--no-eff-email", "--domain", conf["domain"],
            "--keep-until-expiring", "--deploy-hook", "systemctl reload nginx"]
    if conf.get("acme_server"):
        argv += ["--server", conf["acme_server"]]
    return argv


def valid(domain, live):
    """Whether a certificate for domain exists that has not expired, with its key."""
    cert = os.path.join(live, domain, "fullchain.pem")
    if not os.path.exists(os.path.join(live, domain, "privkey.pem")):
        return False
    proc = run("openssl", "x509", "-in", cert, "-noout", "-checkend", "0", "-ext",
               "subjectAltName", check=False, capture=True)
    return proc.returncode == 0 and domain in re.findall(r"DNS:([^,\s]+)", proc.stdout)


class Certificate:
    def __init__(self, ctx):
        self.ctx = ctx
        self.state_path = ctx.paths.cert_state

    def load(self):
        return read_json(self.state_path, {"failures": 0, "next": 0})

    def save(self, st):
        write_atomic(self.state_path, json.dumps(st) + "\n", 0o600)

    def report(self, state, detail=""):
        self.ctx.update(certificate=state, certificate_detail=detail)

    def attempt(self):
        """One attempt if one is due; a lock keeps two attempts (timer, first boot) apart."""
        os.makedirs(self.ctx.paths.state_dir, exist_ok=True)
        with open(self.ctx.paths.cert_lock, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return "busy"
            return self._attempt(time.time())

    def installed(self):
        """With a valid certificate, the HTTPS site is nginx's (installed if it was not)."""
        if not valid(self.ctx.conf["domain"], self.ctx.paths.letsencrypt_live):
            return False
        if proxy.install_site(self.ctx.paths, tls=True):
            proxy.reload()
            log("HTTPS site installed")
        return True

    def _attempt(self, now):
        conf = self.ctx.conf
        if self.installed():
            if (status.read(self.ctx.paths) or {}).get("certificate") != "ok":
                self.save({"failures": 0, "next": 0})
                self.report("ok")
            return "installed"
        st = self.load()
        if now < st["next"]:
            return "waiting"
        problem = self.precondition()
        if problem:
            st["next"] = now + RECHECK
            self.save(st)
            self.report("pending", problem)
            return "pending"
        argv = certbot_argv(conf, self.ctx.paths.acme_webroot)
        env = dict(ENV, REQUESTS_CA_BUNDLE=self.ctx.paths.acme_ca) if conf.get("acme_ca_bundle") else ENV
        log("run: " + " ".join(argv))
        try:
            ok = subprocess.run(argv, env=env, timeout=900).returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if ok and self.installed():
            self.save({"failures": 0, "next": 0})
            self.report("ok")
            return "ok"
        st["failures"] += 1
        st["next"] = now + backoff(st["failures"])
        self.save(st)
        self.report("pending", f"certbot failed {st['failures']} time(s); next try in "
                               f"{backoff(st['failures']) // 60} min")
        return "failed"

    def precondition(self):
        """Why asking for a certificate now would be wasted, or None."""
        conf, paths = self.ctx.conf, self.ctx.paths
        with open(paths.probe_token) as f:
            token = f.read()
        try:
            seen = fetch(f"http://{conf['domain']}/.well-known/imgforge-probe", 4096, timeout=10).decode()
        except Exception as e:
            seen = str(e)
        if seen != token:
            return f"{conf['domain']} does not reach this VM yet"
        directory = conf.get("acme_server") or LETSENCRYPT
        try:
            context = ssl.create_default_context(cafile=paths.acme_ca if conf.get("acme_ca_bundle") else None)
            fetch(directory, 1 << 20, timeout=15, context=context)
        except Exception as e:
            return f"ACME server {directory} unreachable: {e}"
        return None


def start(ctx):
    """First boot: one attempt now, then the timer keeps trying."""
    if not ctx.conf["tls"]:
        ctx.update(certificate="disabled")
        return "skipped"
    Certificate(ctx).attempt()
    run("systemctl", "enable", "--now", ctx.paths.units["cert_timer"])
    return "ok"
