"""Keeps containers away from the cloud metadata service.

The metadata service (169.254.169.254) hands out the user-data, which holds the app's
environment and possibly keys. Docker's DOCKER-USER chain sees every packet a container
sends off the host; a REJECT there stops them. Run after each Docker start, since the
rule does not survive a reboot.
"""

from .system import run

METADATA = "169.254.169.254"
RULE = ["DOCKER-USER", "--destination", METADATA, "--jump", "REJECT"]


def block_metadata():
    if run("iptables", "--wait", "--check", *RULE, check=False, capture=True).returncode == 0:
        return "present"
    run("iptables", "--wait", "--insert", *RULE)
    return "added"
