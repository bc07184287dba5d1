"""A node of a Docker Swarm cluster (deploy.json's `cluster`).

The first node initializes the swarm and runs the app as a Swarm service: one replica on
every node (or `replicas`), updated start-first behind its health check, rolled back by
Swarm when an update fails. The other nodes join it with the token in their own 0600 file.
Every call goes to Docker's Engine API over its Unix socket, with typed JSON bodies, so the
join token is never in a process's arguments.

The swarm runs on the provider's private network: its ports are open in UFW only to it.
The service's published port bypasses UFW (Docker's routing mesh), so a DOCKER-USER rule
drops it on the host's interfaces; nginx reaches it on loopback.
"""

import http.client
import ipaddress
import json
import os
import re
import socket
import time
import urllib.parse

from . import firstboot, proxy
from .app import Apps
from .system import Failed, log, now, out, phase, run, wait_for

# Swarm's own ports: cluster management, node gossip, the overlay network's VXLAN.
SWARM_PORT = 2377
SWARM_PORTS = ((2377, "tcp"), (7946, "tcp"), (7946, "udp"), (4789, "udp"))
# Docker 20.10's API (Debian 12's docker.io); newer engines serve it too.
API = "/v1.41"
# A joining node may boot before its manager is ready.
JOIN_TIMEOUT = 1800
NS = 1_000_000_000
# Where the overlay networks' addresses may come from (docker0 takes 172.17/16,
# docker_gwbridge 172.18/16).
POOLS = ("10.200.0.0/16", "172.30.0.0/16", "192.168.224.0/19")
# Interfaces Docker makes: its bridges, the containers' ends, the overlay's.
DOCKER_IFACES = ("docker", "br-", "veth", "vx-", "ov-")
# Swarm replaces a replica its health check calls unhealthy. Each check is an exec into
# the container, which on a busy small node (or an emulated one) can take longer than an
# image's few seconds while the app itself answers; the service gives each check this
# long and keeps the image's command, interval, start period and retries.
HEALTH_TIMEOUT = 30 * NS


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Engine:
    """Docker's Engine API: `call` returns the status and the decoded answer."""

    def __init__(self, socket_path, timeout=120):
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method, path, body=None):
        conn = UnixConnection(self.socket_path, self.timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, API + path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as e:
            raise Failed(f"Docker's API ({method} {path}): {e}") from None
        finally:
            conn.close()
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = raw.decode(errors="replace")
        return resp.status, answer

    def ok(self, method, path, body=None):
        status, answer = self.call(method, path, body)
        if status >= 300:
            raise Failed(f"Docker's API refused {method} {path}: {message(answer)} (HTTP {status})")
        return answer


def message(answer):
    if isinstance(answer, dict) and "message" in answer:
        return str(answer["message"]).strip()
    return str(answer).strip()[:300]


# -- the network -------------------------------------------------------------------

def firewall_rules(network):
    """ufw's arguments: Swarm's ports, from the private network only."""
    return [["allow", "from", network, "to", "any", "port", str(port), "proto", proto]
            for port, proto in SWARM_PORTS]


def addresses(ip_json):
    """(interface, IPv4 address) pairs from `ip -json -4 address`."""
    pairs = []
    for link in json.loads(ip_json):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                pairs.append((link["ifname"], ipaddress.IPv4Address(a["local"])))
    return pairs


def advertise_address(network, pairs):
    """This node's address on the cluster's network."""
    net = ipaddress.IPv4Network(network)
    for _, addr in pairs:
        if addr in net:
            return str(addr)
    raise Failed(f"no address of this VM is on the cluster's network {network} (it has "
                 f"{', '.join(str(a) for _, a in pairs) or 'none'}): attach it to the "
                 "provider's private network, or fix --cluster-network")


def address_pool(network):
    """The overlay networks' addresses: Swarm's default (10.0.0.0/8) would take the
    private network's own addresses when it is in 10/8, as hcloud's and DigitalOcean's
    usually are; the first of a few ranges it does not overlap."""
    net = ipaddress.IPv4Network(network)
    for pool in POOLS:
        if not net.overlaps(ipaddress.IPv4Network(pool)):
            return pool
    raise Failed(f"the cluster's network {network} overlaps every range the swarm's own "
                 f"networks could take ({', '.join(POOLS)}): use a smaller private network")


def host_interfaces(pairs):
    """The host's own interfaces (not loopback, not Docker's)."""
    names = []
    for name, addr in pairs:
        if addr.is_loopback or name.startswith(DOCKER_IFACES) or name in names:
            continue
        names.append(name)
    return names


def published_port_rules(port, ifaces):
    """DOCKER-USER rules dropping what comes in on each interface for the service's
    published port (its original destination: the routing mesh has rewritten it)."""
    return [["DOCKER-USER", "--in-interface", iface, "--protocol", "tcp", "--match", "conntrack",
             "--ctorigdstport", str(port), "--ctdir", "ORIGINAL", "--jump", "DROP"]
            for iface in ifaces]


def node_addresses():
    return addresses(out("ip", "-json", "-4", "address"))


def block_published_port(paths):
    """Keeps the service's port from outside; run after each Docker start."""
    added = 0
    for rule in published_port_rules(paths.service_port, host_interfaces(node_addresses())):
        if run("iptables", "--wait", "--check", *rule, check=False, capture=True).returncode:
            run("iptables", "--wait", "--insert", *rule)
            added += 1
    return f"{added} added" if added else "present"


# -- the swarm ---------------------------------------------------------------------

def join(ctx, engine):
    """Makes this node part of the swarm: initializes it (the manager) or joins it.
    Returns "ok", or "kept" when it already is."""
    cluster = ctx.conf["cluster"]
    state = engine.ok("GET", "/info")["Swarm"]["LocalNodeState"]
    if state == "active":
        return "kept"
    addr = advertise_address(cluster["network"], node_addresses())
    body = {"ListenAddr": f"{addr}:{SWARM_PORT}", "AdvertiseAddr": f"{addr}:{SWARM_PORT}",
            "DataPathAddr": addr}
    if cluster["role"] == "init":
        body.update(DefaultAddrPool=[address_pool(cluster["network"])], SubnetSize=24)
        engine.ok("POST", "/swarm/init", body)
        log(f"swarm initialized, advertising {addr}")
        return "ok"
    with open(ctx.paths.swarm_join_token) as f:
        body.update(RemoteAddrs=[cluster["manager"]], JoinToken=f.readline().strip())
    last = []

    def joined():
        status, answer = engine.call("POST", "/swarm/join", body)
        if status < 300:
            return True
        last[:] = [f"{message(answer)} (HTTP {status})"]
        log(f"joining {cluster['manager']}: {last[0]}; trying again")
        # A join that timed out may still be under way; what the node says counts.
        return engine.ok("GET", "/info")["Swarm"]["LocalNodeState"] == "active"

    if not wait_for(joined, JOIN_TIMEOUT, 15):
        raise Failed(f"could not join the swarm at {cluster['manager']} within "
                     f"{JOIN_TIMEOUT} s: {last[0] if last else 'no answer'}")
    log(f"joined the swarm at {cluster['manager']}, advertising {addr}")
    return "ok"


def memory_bytes(size):
    """Docker's size (`512m`, `1g`) in bytes."""
    units = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    size = size.strip().lower()
    if size[-1:] in units:
        return int(size[:-1]) * units[size[-1]]
    return int(size)


def env_lines(text):
    """Docker's env-file: NAME=VALUE lines, # comments."""
    return [line for line in text.splitlines() if line and not line.startswith("#") and "=" in line]


def service_spec(conf, paths, env, version):
    """The app as a Swarm service: the same limits as a slot's container, one replica per
    node unless the deployment names a count, start-first updates rolled back on failure,
    the published port every node answers on (kept from outside by the firewall)."""
    cluster, app = conf["cluster"], conf["app"]
    replicas = cluster.get("replicas")
    monitor = 30 * NS
    return {
        "Name": paths.service,
        "Labels": {"org.imgforge.version": version},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": conf["image"],
                "Env": env,
                "Labels": {"org.imgforge.version": version},
                "Mounts": [
                    {"Type": "bind", "Source": conf["data_dir"], "Target": conf["data_path"]},
                    {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": 64 << 20}},
                ],
                "ReadOnly": True,
                "CapabilityDrop": ["ALL"],
                "HealthCheck": {"Timeout": HEALTH_TIMEOUT},
                "StopGracePeriod": 30 * NS,
            },
            "Resources": {"Limits": {"MemoryBytes": memory_bytes(app["memory"]),
                                     "Pids": app["pids_limit"]}},
            "RestartPolicy": {"Condition": "any", "Delay": 5 * NS},
        },
        "Mode": {"Replicated": {"Replicas": replicas}} if replicas else {"Global": {}},
        "UpdateConfig": {"Parallelism": 1, "Order": "start-first", "FailureAction": "rollback",
                         "Monitor": monitor, "MaxFailureRatio": 0},
        "RollbackConfig": {"Parallelism": 1, "Order": "start-first", "FailureAction": "pause",
                           "Monitor": monitor},
        "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": conf["container_port"],
                                    "PublishedPort": paths.service_port,
                                    "PublishMode": "ingress"}]},
    }


def ensure_service(ctx, engine, version):
    """The manager creates the app's service once; a run again keeps the one there.
    Returns "created" or "kept"."""
    status, _ = engine.call("GET", f"/services/{ctx.paths.service}")
    if status == 200:
        return "kept"
    if status != 404:
        raise Failed(f"Docker's API: asking for the service {ctx.paths.service}: HTTP {status}")
    with open(ctx.paths.app_env) as f:
        env = env_lines(f.read())
    engine.ok("POST", "/services/create", service_spec(ctx.conf, ctx.paths, env, version))
    return "created"


def steps(first_boot):
    """First boot's steps on a node: the swarm's ports in the firewall, the image into
    Docker's store (the service runs it, not a slot), the swarm after it, and the app
    step waiting for the service."""
    own = {"firewall": firewall, "image": image, "app": app}
    out = []
    for name, fn in first_boot:
        out.append((name, own.get(name, fn)))
        if name == "image":
            out.append(("swarm", step))
    return out


def firewall(ctx):
    firstboot.firewall(ctx)
    for rule in firewall_rules(ctx.conf["cluster"]["network"]):
        run("ufw", *rule)


def image(ctx):
    """The image into Docker's store, and the data directory (which a bind mount needs
    in place) owned by the user the image runs as."""
    run("systemctl", "enable", "--now", "docker.service")
    run("systemctl", "enable", "--now", ctx.paths.units["docker_firewall"])
    firstboot.fetch_image(ctx)
    apps = Apps(ctx)
    apps.own_data_dir(apps.record(ctx.conf["image"], firstboot.app_env(ctx)))


def step(ctx):
    """First boot's `swarm` step: this node in the swarm, the manager's service."""
    engine = Engine(ctx.paths.docker_socket)
    joined = join(ctx, engine)
    log("the service's published port: " + block_published_port(ctx.paths))
    if ctx.conf["cluster"]["role"] != "init":
        return joined
    start_registry(ctx)
    record = Apps(ctx).record(ctx.conf["image"], firstboot.app_env(ctx))
    created = ensure_service(ctx, engine, record["version"]) == "created"
    log(f"the service {ctx.paths.service}: {'created' if created else 'kept'}")
    return "ok" if created or joined == "ok" else "kept"


def status(ctx):
    """The swarm as this node sees it, for `imgforge status`: on the manager its nodes,
    the app's replicas by node and version, and the service's last update."""
    engine = Engine(ctx.paths.docker_socket, timeout=30)
    info = engine.ok("GET", "/info")["Swarm"]
    doc = {"manager": bool(info.get("ControlAvailable")), "state": info.get("LocalNodeState", "?"),
           "nodes": [], "replicas": [], "update": None}
    if not doc["manager"]:
        return doc
    names = {}
    for n in engine.ok("GET", "/nodes"):
        names[n["ID"]] = host = n["Description"]["Hostname"]
        doc["nodes"].append({"hostname": host, "addr": n["Status"].get("Addr", ""),
                             "state": n["Status"].get("State", "?"),
                             "availability": n["Spec"].get("Availability", "?"),
                             "manager": "ManagerStatus" in n})
    doc["nodes"].sort(key=lambda n: n["hostname"])
    filters = json.dumps({"service": [ctx.paths.service], "desired-state": ["running"]})
    for t in engine.ok("GET", "/tasks?filters=" + urllib.parse.quote(filters)):
        labels = t["Spec"]["ContainerSpec"].get("Labels") or {}
        doc["replicas"].append({"node": names.get(t.get("NodeID"), t.get("NodeID", "?")),
                                "version": labels.get("org.imgforge.version", "?"),
                                "state": t["Status"].get("State", "?")})
    doc["replicas"].sort(key=lambda r: (r["node"], r["version"]))
    code, service = engine.call("GET", f"/services/{ctx.paths.service}")
    if code == 200:
        doc["update"] = (service.get("UpdateStatus") or {}).get("State")
    return doc


def app(ctx):
    """First boot's `app` step on a node: the service answers on this node's published
    port (the routing mesh reaches a replica anywhere), then nginx sends traffic there."""
    paths, conf = ctx.paths, ctx.conf
    url = f"http://127.0.0.1:{paths.service_port}{conf['health_path']}"
    wait = conf["app_start_timeout"]
    started = time.monotonic()
    from .app import answers
    if not wait_for(lambda: answers(url, 5), wait, 2):
        raise Failed(f"the service did not answer {conf['health_path']} on port "
                     f"{paths.service_port} within {wait} s")
    log(f"the service answers after {time.monotonic() - started:.0f} s")
    if proxy.point_upstream(paths, paths.service_port):
        proxy.reload()
    if not wait_for(lambda: proxy.answers(paths, conf), 60, 2):
        raise Failed("nginx does not pass the service's health path through")
    return "ok"


# -- day two -----------------------------------------------------------------------

# A cluster's deploy runs in no slot: its history entries name this (contract::status::SWARM_SLOT).
SLOT = "swarm"
# UpdateStatus.State values that end an update (Swarm's own words).
UPDATE_ENDS = {"completed": "ok", "rollback_completed": "rolled-back", "paused": "failed",
               "rollback_paused": "failed"}


# A task's states that mean it ended without being asked to (`shutdown` is asked; a
# service's app that exits 0 is `complete`, and ended too early all the same).
TASK_FAILED = ("failed", "rejected", "orphaned", "complete")


def registry_rules(network, port):
    """ufw's arguments on the manager: its registry, from the private network only."""
    return [["allow", "from", network, "to", "any", "port", str(port), "proto", "tcp"]]


def start_registry(ctx):
    """The manager's registry: its directory, its port open to the private network, its
    unit running."""
    os.makedirs(ctx.paths.registry_dir, mode=0o755, exist_ok=True)
    for rule in registry_rules(ctx.conf["cluster"]["network"], ctx.paths.registry_port):
        run("ufw", *rule)
    run("systemctl", "enable", "--now", ctx.paths.units["registry"])


def image_version(store, digest, tag):
    """The version an imported image names (its label), else its tag; and its config's
    digest (the image id every node will show)."""
    with open(store.blob(digest), "rb") as f:
        config = json.load(f)["config"]["digest"]
    with open(store.blob(config), "rb") as f:
        labels = (json.load(f).get("config") or {}).get("Labels") or {}
    return labels.get("org.opencontainers.image.version") or tag, config


def progress(engine, service):
    """`version: n running` for the service's replicas, the way the update moves them."""
    filters = json.dumps({"service": [service], "desired-state": ["running"]})
    counts = {}
    for t in engine.ok("GET", "/tasks?filters=" + urllib.parse.quote(filters)):
        labels = t["Spec"]["ContainerSpec"].get("Labels") or {}
        version = labels.get("org.imgforge.version", "?")
        state = t["Status"].get("State", "?")
        counts.setdefault(version, {}).setdefault(state, 0)
        counts[version][state] += 1
    return "; ".join(f"{v}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
                     for v, states in sorted(counts.items()))


def task_failures(engine, service, since, seen):
    """One line per replica that ended by itself since `since` (an RFC 3339 time, as
    Swarm writes them) and is not in `seen`: its version, node and Swarm's reason, the
    way `docker service ps --no-trunc` shows them. Adds them to `seen`."""
    filters = json.dumps({"service": [service]})
    lines, names = [], None
    for t in engine.ok("GET", "/tasks?filters=" + urllib.parse.quote(filters)):
        st = t.get("Status") or {}
        if t["ID"] in seen or st.get("State") not in TASK_FAILED or st.get("Timestamp", "") < since:
            continue
        seen.add(t["ID"])
        if names is None:
            names = {n["ID"]: n["Description"].get("Hostname", n["ID"]) for n in engine.ok("GET", "/nodes")}
        node = t.get("NodeID", "?")
        labels = t["Spec"]["ContainerSpec"].get("Labels") or {}
        reason = st.get("Err") or st.get("Message") or st["State"]
        lines.append(f"  replica {t['ID'][:12]} ({labels.get('org.imgforge.version', '?')}) on "
                     f"{names.get(node, node[:12])}: {st['State']}: {reason}")
    return lines


def named_task(engine, message):
    """The replica Swarm's message blames ("… early termination of task ID"), as Swarm
    records it: its version, node, state against the state Swarm wanted, and its own
    words; None when the message names none or Swarm no longer has it."""
    m = re.search(r"\btask ([a-z0-9]{25})\b", message or "")
    if not m:
        return None
    code, t = engine.call("GET", f"/tasks/{m.group(1)}")
    if code != 200:
        return None
    st = t.get("Status") or {}
    labels = t["Spec"]["ContainerSpec"].get("Labels") or {}
    code, node = engine.call("GET", f"/nodes/{t.get('NodeID', '')}")
    host = node["Description"].get("Hostname") if code == 200 else t.get("NodeID", "?")[:12]
    exit_code = (st.get("ContainerStatus") or {}).get("ExitCode")
    words = "; ".join(w for w in (st.get("Err"), st.get("Message")) if w)
    return (f"  Swarm names replica {t['ID'][:12]} ({labels.get('org.imgforge.version', '?')}) on {host}: "
            f"{st.get('State', '?')} (Swarm wanted {t.get('DesiredState', '?')})"
            + (f", exit code {exit_code}" if exit_code is not None else "")
            + (f": {words}" if words else "") + f", at {st.get('Timestamp', '?')}")


def await_update(engine, paths, before, deadline_s):
    """Follows the service's update until Swarm ends it, with each replica that fails on
    the way and why; returns (state, message)."""
    end = time.monotonic() + deadline_s
    since = engine.ok("GET", f"/services/{paths.service}")["UpdatedAt"]
    shown, seen = None, set()
    while True:
        service = engine.ok("GET", f"/services/{paths.service}")
        st = service.get("UpdateStatus") or {}
        now_shown = progress(engine, paths.service)
        if now_shown != shown:
            log(f"  replicas: {now_shown or 'none'}" + (f" ({st['State']})" if st.get("State") else ""))
            shown = now_shown
        for line in task_failures(engine, paths.service, since, seen):
            log(line)
        if st.get("StartedAt") != before and st.get("State") in UPDATE_ENDS:
            return st["State"], st.get("Message", "")
        if time.monotonic() > end:
            raise Failed(f"Swarm's update did not end within {deadline_s} s (it is "
                         f"{st.get('State', 'not started')}); `imgforge status` follows it")
        time.sleep(2)


def update(ctx, apps, kind, version, image, image_id, change, health_timeout):
    """Changes the service's spec with `change(spec)` and follows Swarm's rolling update
    (one node at a time, start-first, each replica healthy before the next; rolled back
    by Swarm on a failure). Records it in the deploy history; raises Failed unless it
    completed."""
    from .app import Refused
    paths = ctx.paths
    engine = Engine(paths.docker_socket)
    if not engine.ok("GET", "/info")["Swarm"].get("ControlAvailable"):
        raise Refused("this node is not the swarm's manager: deploy to the manager "
                      "(`imgforge status` there lists the nodes)")
    service = engine.ok("GET", f"/services/{paths.service}")
    before = (service.get("UpdateStatus") or {}).get("StartedAt")
    spec = change(json.loads(json.dumps(service["Spec"])))
    if spec == service["Spec"]:
        raise Refused(f"the service already runs {image} with this environment: nothing to update")
    nodes = len([n for n in engine.ok("GET", "/nodes") if n["Status"].get("State") == "ready"])
    started, t0 = now(), time.monotonic()
    entry = {"kind": kind, "version": version, "image": image, "image_id": image_id,
             "slot": SLOT, "started": started}
    phase(paths, "update", f"{kind}: {version} on {nodes} node(s), one at a time, start-first")
    query = f"version={service['Version']['Index']}" + ("&rollback=previous" if spec is None else "")
    engine.ok("POST", f"/services/{service['ID']}/update?{query}", spec or service["Spec"])
    deadline = (health_timeout or apps.start_allowance()) * max(nodes, 1) + 120
    try:
        state, message = await_update(engine, paths, before, deadline)
    except Failed as e:
        apps.finish(apps.load(), dict(entry, result="failed", error=str(e)))
        raise
    result = UPDATE_ENDS[state]
    entry.update(result=result, healthy_s=round(time.monotonic() - t0, 1), switch_s=0.0)
    if result != "ok":
        entry["error"] = f"Swarm: {message or state}"
        named = named_task(engine, message)
        if named:
            log(named)
    apps.finish(apps.load(), entry)
    if result != "ok":
        raise Failed(f"Swarm {'rolled the update back' if result == 'rolled-back' else 'stopped the update'}"
                     f" ({state}): {message or 'no reason given'}; {progress(engine, paths.service)}")
    log(f"[done] {version} runs on every node: {progress(engine, paths.service)}")


def deploy(ctx, apps, head):
    """A deploy on the manager: the bundle into the cluster's registry (every node pulls it
    by digest from there), or an image from its own registry, then the service's update."""
    paths = ctx.paths
    if head.get("bundle"):
        from .registry import Store
        phase(paths, "load", "adding the version to the cluster's registry")
        store = Store(paths.registry_dir)
        repo, tag, digest = store.import_bundle(head["bundle"])
        addr = advertise_address(ctx.conf["cluster"]["network"], node_addresses())
        image = f"{addr}:{paths.registry_port}/{repo}:{tag}@{digest}"
        version, image_id = image_version(store, digest, tag)
    else:
        image = head["image"]
        version, image_id = image.rsplit("@", 1)[0].rsplit(":", 1)[-1], ""
    env = None if head.get("env") is None else env_lines(head["env"])

    def change(spec):
        cs = spec["TaskTemplate"]["ContainerSpec"]
        cs["Image"] = image
        if env is not None:
            cs["Env"] = env
        cs.setdefault("Labels", {})["org.imgforge.version"] = version
        spec.setdefault("Labels", {})["org.imgforge.version"] = version
        return spec

    update(ctx, apps, "deploy", version, image, image_id, change, head.get("health_timeout"))


def rollback(ctx, apps, head):
    """Swarm's own rollback: the service's previous spec, rolled out the same way."""
    engine = Engine(ctx.paths.docker_socket)
    service = engine.ok("GET", f"/services/{ctx.paths.service}")
    previous = service.get("PreviousSpec")
    if not previous:
        from .app import Refused
        raise Refused("the service has no version before this one to roll back to")
    cs = previous["TaskTemplate"]["ContainerSpec"]
    version = (cs.get("Labels") or {}).get("org.imgforge.version", "?")
    update(ctx, apps, "rollback", version, cs["Image"], "", lambda spec: None,
           head.get("health_timeout"))
