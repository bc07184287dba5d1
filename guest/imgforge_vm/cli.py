"""imgforge-vm COMMAND: what systemd, cloud-init and `imgforge deploy` call on the VM."""

import argparse
import sys

import json

from . import firstboot, remote
from .app import Apps, Refused, healthy
from .backup import backup
from .cert import Certificate
from .context import Ctx
from .dockerfw import block_metadata
from .report import report
from .system import Failed, log


def main(argv=None):
    p = argparse.ArgumentParser(prog="imgforge-vm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("deploy", help="first boot: run every step of the deployment")
    sub.add_parser("provision", help="install the stack into an image (imgforge build --provision)")
    sub.add_parser("generalize", help="make the image a template, then power off")
    sub.add_parser("cert", help="one certificate attempt, if one is due")
    sub.add_parser("dns", help="register the VM's address with its DNS provider, if due")
    sub.add_parser("backup", help="archive the data directory")
    sub.add_parser("upgrade", help="apt-get upgrade, recorded in status.json")
    sub.add_parser("report", help="record cloud-init's result and the app's health")
    sub.add_parser("docker-firewall", help="block containers from the metadata service")
    sub.add_parser("deploy-version", help="deploy the version stdin describes, blue-green")
    sub.add_parser("rollback", help="back to the version before, blue-green")
    sub.add_parser("status", help="status.json, the certificate, disk use (JSON)")
    sub.add_parser("install-program", help="replace this program with the one stdin holds")
    s = sub.add_parser("run-slot", help="run a slot's container (imgforge-app@.service)")
    s.add_argument("slot", choices=["blue", "green"])
    s = sub.add_parser("wait-healthy", help="wait for a slot's health path")
    s.add_argument("slot", choices=["blue", "green"])
    s.add_argument("--timeout", type=int, default=120)
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
        if args.command == "deploy":
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
            apps = Apps(ctx)
            slot = apps.active()
            backup(ctx, ctx.paths.container(slot) if slot else None)
        elif args.command == "report":
            report(ctx)
        elif args.command == "docker-firewall":
            log("metadata block: " + block_metadata())
        elif args.command in ("deploy-version", "rollback"):
            fn = remote.deploy_version if args.command == "deploy-version" else remote.rollback
            print(json.dumps(fn(ctx, sys.stdin.buffer)), flush=True)
        elif args.command == "install-program":
            print(json.dumps(remote.install_program(ctx, sys.stdin.buffer)), flush=True)
        elif args.command == "status":
            print(json.dumps(remote.report(ctx)), flush=True)
        elif args.command == "run-slot":
            Apps(ctx).exec_slot(args.slot)
        elif args.command == "wait-healthy":
            return 0 if healthy(Apps(ctx).health_url(args.slot), args.timeout) else 1
    except Refused as e:
        print(f"imgforge-vm: error: {e}", file=sys.stderr)
        return 2
    except Failed as e:
        print(f"imgforge-vm: error: {e}", file=sys.stderr)
        return 1
    return 0
