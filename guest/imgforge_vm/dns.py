"""The VM registers its own address with its DNS provider (DuckDNS or Cloudflare), so the
domain points here before the certificate is asked for. Never fails the deployment: the
outcome goes to status.json (`dns`, `dns_detail`) and a timer retries and follows address
changes. The token is read from its file, sent only to the provider, and never logged.
"""

import ipaddress
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from .system import fetch, log, out, read_json, run, wait_for, write_atomic

DUCKDNS = "https://www.duckdns.org"
CLOUDFLARE = "https://api.cloudflare.com"
# Where the VM learns its public IPv4 when no interface and no metadata service has it.
TRACE = "https://1.1.1.1/cdn-cgi/trace"
RESOLVE_WAIT = 120


class Refused(Exception):
    """The provider refused the update (a wrong token, a name not in the account)."""


def public_ipv4(api_url=None):
    """A global address on an interface (Hetzner, DigitalOcean), else the metadata
    service's (EC2, GCE), else what a public echo service saw."""
    for line in out("ip", "-4", "-o", "addr", "show", "scope", "global").splitlines():
        addr = ipaddress.ip_interface(line.split()[3]).ip
        if addr.is_global:
            return str(addr)
    for key in ("ds.meta_data.public_ipv4", "ds.meta_data.public-ipv4"):
        try:
            value = out("cloud-init", "query", key, timeout=30).strip()
            if value and ipaddress.ip_address(value).is_global:
                return value
        except Exception:
            pass
    trace = api_url + "/cdn-cgi/trace" if api_url else TRACE
    body = fetch(trace, 4096, timeout=15).decode()
    return dict(line.split("=", 1) for line in body.splitlines() if "=" in line)["ip"]


def public_ipv6():
    """A global IPv6 address on an interface, if the VM has one."""
    for line in out("ip", "-6", "-o", "addr", "show", "scope", "global").splitlines():
        addr = ipaddress.ip_interface(line.split()[3]).ip
        if addr.is_global:
            return str(addr)
    return None


def duckdns(domain, token, api_url, ipv6):
    """Sets the name's address to the request's source (and ipv6); returns the IPv4."""
    name = domain[: -len(".duckdns.org")]
    query = {"domains": name, "token": token, "ip": "", "verbose": "true"}
    if ipv6:
        query["ipv6"] = ipv6
    body = fetch(f"{api_url or DUCKDNS}/update?{urllib.parse.urlencode(query)}", 4096).decode()
    lines = body.splitlines()
    if not lines or lines[0] != "OK":
        raise Refused("DuckDNS refused the update (KO): check the token and that the name is the account's")
    return lines[1] if len(lines) > 1 else None


def cloudflare(domain, token, api_url, zone, ipv4, ipv6):
    """Creates or updates the A (and AAAA) record of domain in its zone."""
    base = (api_url or CLOUDFLARE) + "/client/v4"

    def call(method, path, body=None):
        req = urllib.request.Request(base + path, method=method,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": "Bearer " + token,
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return json.loads(resp.read(1 << 20))["result"]
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise Refused(f"Cloudflare refused the token (HTTP {e.code}): "
                              "it needs DNS edit on the zone") from None
            raise

    candidates = [zone] if zone else [".".join(domain.split(".")[i:])
                                      for i in range(len(domain.split(".")) - 1)]
    zone_id = next((z["id"] for c in candidates
                    for z in call("GET", "/zones?" + urllib.parse.urlencode({"name": c}))), None)
    if zone_id is None:
        raise Refused(f"no Cloudflare zone of this token holds {domain}")
    for kind, address in (("A", ipv4), ("AAAA", ipv6)):
        if not address:
            continue
        query = urllib.parse.urlencode({"type": kind, "name": domain})
        found = call("GET", f"/zones/{zone_id}/dns_records?{query}")
        record = {"type": kind, "name": domain, "content": address, "ttl": 60, "proxied": False}
        if found and found[0].get("content") != address:
            call("PUT", f"/zones/{zone_id}/dns_records/{found[0]['id']}", record)
        elif not found:
            call("POST", f"/zones/{zone_id}/dns_records", record)
    return ipv4


def resolves(domain, address, timeout, interval=5):
    """True once the resolver answers `address` for domain (within timeout seconds)."""
    return wait_for(lambda: address in {a[4][0] for a in socket.getaddrinfo(domain, 80, socket.AF_INET)},
                    timeout, interval)


class Dns:
    def __init__(self, ctx):
        self.ctx = ctx
        self.dns = ctx.conf.get("dns")
        self.state_path = ctx.paths.dns_state

    def load(self):
        return read_json(self.state_path, {"failures": 0, "next": 0, "address": None})

    def attempt(self, wait=RESOLVE_WAIT, now=None):
        """One registration, if one is due: sets the record when the address changed,
        then waits (bounded) until the name resolves to it."""
        now = time.time() if now is None else now
        st = self.load()
        if now < st["next"]:
            return "waiting"
        dns, domain = self.dns, self.ctx.conf["domain"]
        try:
            with open(self.ctx.paths.dns_token) as f:
                token = f.read().strip()
            ipv6 = public_ipv6()
            if dns["provider"] == "duckdns":
                address = duckdns(domain, token, dns.get("api_url"), ipv6)
            else:
                ipv4 = public_ipv4(dns.get("api_url"))
                address = cloudflare(domain, token, dns.get("api_url"), dns.get("zone"), ipv4, ipv6)
        except Refused as e:
            return self.failed(st, now, "refused", str(e))
        except Exception as e:  # the provider or the network: retried
            return self.failed(st, now, "pending", f"{dns['provider']} unreachable: {type(e).__name__}")
        if address != st.get("address"):
            log(f"dns: {domain} registered with {dns['provider']} -> {address}")
        st.update(failures=0, next=0, address=address)
        write_atomic(self.state_path, json.dumps(st) + "\n", 0o600)
        if resolves(domain, address, wait):
            self.ctx.update(dns="ok", dns_detail=f"{domain} -> {address}")
            return "ok"
        self.ctx.update(dns="pending", dns_detail=f"{domain} registered, not yet resolving to {address}")
        return "pending"

    def failed(self, st, now, state, detail):
        st["failures"] += 1
        st["next"] = now + 60 * min(2 ** st["failures"], 60)
        write_atomic(self.state_path, json.dumps(st) + "\n", 0o600)
        self.ctx.update(dns=state, dns_detail=detail)
        log(f"dns: {detail}")
        return state


def start(ctx):
    """First boot: one registration now, then the timer follows address changes."""
    Dns(ctx).attempt()
    run("systemctl", "enable", "--now", ctx.paths.units["dns_timer"])
    return "ok"
