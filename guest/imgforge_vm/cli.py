"""imgforge-vm COMMAND: what systemd, cloud-init and `imgforge deploy` call on the VM."""

import argparse
import json
import os
import sys

from . import firstboot
from .app import Apps, Refused
from .backup import backup
from .cert import Certificate
from .context import Ctx
from .dockerfw import block_metadata
from .install import install_program
from .report import report
from .system import Failed, log

# deploy: first boot's steps. provision, generalize: `imgforge build --provision`. cert,
# dns, backup, upgrade, report, recover, docker-firewall, registry: timers and units. run-slot: a
# slot's unit. install-program, status, deploy-version, rollback, attach: `imgforge` over
# SSH; run-job: a deploy's own unit.
COMMANDS = ("deploy", "provision", "generalize", "cert", "dns", "backup", "upgrade", "report",
            "recover", "docker-firewall", "install-program", "registry")
# Day two's commands live in remote.py, which first boot's program does not carry
# (`imgforge deploy` and `status` send the whole program first).
REMOTE = ("deploy-version", "rollback", "attach", "status", "logs", "backup-now", "backup-list",
          "restore", "cluster-token")


def main(argv=None):
    p = argparse.ArgumentParser(prog="imgforge-vm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS + REMOTE:
        sub.add_parser(name)
    sub.add_parser("run-job").add_argument("job")
    sub.add_parser("run-slot").add_argument("slot", choices=["blue", "green"])
    args = p.parse_args(argv)
    if args.command in ("provision", "generalize"):
        from . import provision
        ctx = Ctx.load(provision.STEP_NAMES)
        if args.command == "provision":
            return 0 if provision.provision(ctx) else 1
        provision.generalize(ctx)
        return 0
    ctx = Ctx.load(firstboot.STEP_NAMES)
    try:
        if args.command == "run-slot":
            return Apps(ctx).supervise(args.slot)
        if args.command == "install-program":
            print(json.dumps(install_program(ctx, sys.stdin.buffer)), flush=True)
            return 0
        if args.command == "recover":
            # A boot starts: its verdict is not the last boot's (the report gives it).
            if os.path.exists(ctx.paths.status):
                ctx.update(cloud_init={"status": "running", "errors": []}, health="pending")
            with Apps(ctx).locked(wait=120):
                Apps(ctx).reconcile(booting=True)
            return 0
        if args.command in REMOTE + ("run-job",):
            Apps(ctx).recover()
            return day_two(ctx, args)
        if args.command == "deploy":
            Apps(ctx).recover()
            return 0 if firstboot.deploy(ctx) else 1
        if args.command == "cert":
            Certificate(ctx).attempt()
        elif args.command == "dns":
            if ctx.conf.get("dns"):
                from .dns import Dns
                Dns(ctx).attempt()
        elif args.command == "upgrade":
            return 0 if firstboot.run_upgrade(ctx) else 1
        elif args.command == "backup":
            backup(ctx)
        elif args.command == "report":
            report(ctx)
        elif args.command == "registry":
            from . import registry
            registry.serve(ctx)
        elif args.command == "docker-firewall":
            log("metadata block: " + block_metadata())
            if ctx.conf.get("cluster"):
                from . import swarm
                log("the service's published port: " + swarm.block_published_port(ctx.paths))
    except Refused as e:
        print(f"imgforge-vm: error: {e}", file=sys.stderr)
        return 2
    except Failed as e:
        print(f"imgforge-vm: error: {e}", file=sys.stderr)
        return 1
    return 0


def day_two(ctx, args):
    try:
        from . import remote
    except ImportError:
        raise Failed(f"this program has no `{args.command}`: first boot's carries only what "
                     "the VM runs then; `imgforge status` or `imgforge deploy` sends the rest") from None
    return remote.main(ctx, args)
