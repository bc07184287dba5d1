"""A cluster manager's registry: the versions deploys bring, for every node to pull.

A deploy uploads an OCI bundle to the manager only; the other nodes' Docker has no way to
it but a registry. This one is read-only and holds exactly what deploys imported: blobs by
their sha256 (checked on import), and a tag per repository naming its manifest. It speaks
the part of the OCI distribution API a pull uses (`GET /v2/`, manifests by tag or digest,
blobs by digest, a repository's tags) on the manager's address in the private network, which the firewall
opens to that network only; nodes pull by digest, so what runs is what was imported.
"""

import hashlib
import http.server
import json
import os
import re
import shutil
import socketserver
import tarfile
import tempfile

from .system import Failed, log, write_atomic

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# A repository name as the distribution spec allows it; a tag likewise.
NAME = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
ROUTE = re.compile(r"/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)")
TAGS = re.compile(r"/v2/(?P<name>.+)/tags/list")
BLOCK = 1 << 20


class Store:
    """The registry's files: blobs/sha256/HEX, and repositories.json ({name: {tag:
    {"digest", "mediaType"}}})."""

    def __init__(self, root):
        self.root = root

    def blob(self, digest):
        return os.path.join(self.root, "blobs", "sha256", digest.split(":", 1)[1])

    def repositories(self):
        try:
            with open(os.path.join(self.root, "repositories.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def manifest(self, name, ref):
        """(digest, media type) of name's manifest `ref` (a tag or a digest), or None."""
        tags = self.repositories().get(name) or {}
        if DIGEST.fullmatch(ref):
            return next(((t["digest"], t["mediaType"]) for t in tags.values()
                         if t["digest"] == ref), None)
        t = tags.get(ref)
        return (t["digest"], t["mediaType"]) if t else None

    def has_blob(self, name, digest):
        return bool(DIGEST.fullmatch(digest)) and name in self.repositories() \
            and os.path.isfile(self.blob(digest))

    def import_bundle(self, path):
        """The bundle's blobs (each checked against its name) and its image's tag; returns
        (repository, tag, manifest digest). A bundle that is not what it says is refused
        and nothing of it is kept as a tag."""
        os.makedirs(os.path.join(self.root, "blobs", "sha256"), mode=0o755, exist_ok=True)
        with tarfile.open(path) as tar:
            index = None
            for member in tar:
                if member.name in ("index.json", "./index.json"):
                    index = json.load(tar.extractfile(member))
                    continue
                parts = member.name.lstrip("./").split("/")
                if not (member.isfile() and len(parts) == 3 and parts[:2] == ["blobs", "sha256"]):
                    continue
                digest = "sha256:" + parts[2]
                if not DIGEST.fullmatch(digest):
                    raise Failed(f"the bundle has a blob named {member.name!r}")
                if not os.path.exists(self.blob(digest)):
                    self._put(tar.extractfile(member), digest)
        if not index or not index.get("manifests"):
            raise Failed("the bundle has no index.json naming its image")
        desc = index["manifests"][0]
        annotations = desc.get("annotations") or {}
        name = annotations.get("io.containerd.image.name", "")
        repo, tag = split_name(name)
        if desc.get("mediaType") not in MANIFEST_TYPES or not DIGEST.fullmatch(desc.get("digest", "")):
            raise Failed(f"the bundle's image {name} is not one manifest ({desc.get('mediaType')})")
        with open(self.blob(desc["digest"]), "rb") as f:
            manifest = json.load(f)
        for layer in [manifest["config"]] + manifest.get("layers", []):
            if not os.path.isfile(self.blob(layer["digest"])):
                raise Failed(f"the bundle's manifest names {layer['digest']}, which it lacks")
        repos = self.repositories()
        repos.setdefault(repo, {})[tag] = {"digest": desc["digest"], "mediaType": desc["mediaType"]}
        write_atomic(os.path.join(self.root, "repositories.json"),
                     json.dumps(repos, indent=2, sort_keys=True) + "\n", 0o644)
        log(f"registry: {repo}:{tag} is {desc['digest']}")
        return repo, tag, desc["digest"]

    def _put(self, src, digest):
        """One blob, written under a temporary name and renamed once its sha256 is right."""
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.blob(digest)), prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as f:
                for block in iter(lambda: src.read(BLOCK), b""):
                    h.update(block)
                    f.write(block)
            if "sha256:" + h.hexdigest() != digest:
                raise Failed(f"the bundle's blob {digest} has sha256 {h.hexdigest()}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.blob(digest))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def split_name(name):
    """`docker.io/imgforge/classifier:0.1.0` → ("imgforge/classifier", "0.1.0")."""
    ref = name.split("/", 1)[1] if name.startswith("docker.io/") else name
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not NAME.fullmatch(repo) or not TAG.fullmatch(tag):
        raise Failed(f"the bundle names its image {name!r}, not REPOSITORY:TAG")
    return repo, tag


class Handler(http.server.BaseHTTPRequestHandler):
    store = None
    server_version = "imgforge-registry"
    protocol_version = "HTTP/1.1"

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body):
        path = self.path.split("?", 1)[0]
        if path in ("/v2", "/v2/"):
            return self.send(200, b"{}", "application/json", body)
        m = TAGS.fullmatch(path)
        if m and m["name"] in self.store.repositories():
            tags = sorted(self.store.repositories()[m["name"]])
            doc = json.dumps({"name": m["name"], "tags": tags}).encode()
            return self.send(200, doc, "application/json", body)
        m = ROUTE.fullmatch(path)
        if not m or not NAME.fullmatch(m["name"]):
            return self.error(404, "NAME_UNKNOWN", "no such repository", body)
        name, ref = m["name"], m["ref"]
        if m["kind"] == "manifests":
            found = self.store.manifest(name, ref)
            if not found:
                return self.error(404, "MANIFEST_UNKNOWN", "no such manifest", body)
            digest, media = found
        else:
            if not self.store.has_blob(name, ref):
                return self.error(404, "BLOB_UNKNOWN", "no such blob", body)
            digest, media = ref, "application/octet-stream"
        try:
            f = open(self.store.blob(digest), "rb")
        except OSError:
            return self.error(404, "BLOB_UNKNOWN", "no such blob", body)
        with f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(size))
            self.send_header("Docker-Content-Digest", digest)
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            self.end_headers()
            if body:
                shutil.copyfileobj(f, self.wfile, BLOCK)

    def error(self, status, code, text, body):
        doc = json.dumps({"errors": [{"code": code, "message": text}]}).encode()
        self.send(status, doc, "application/json", body)

    def send(self, status, data, media, body):
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_POST(self):
        self.error(405, "UNSUPPORTED", "this registry is read-only", True)

    do_PUT = do_PATCH = do_DELETE = do_POST

    def log_message(self, fmt, *args):
        log(f"registry: {self.client_address[0]} {fmt % args}")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def server(root, addr, port):
    """A registry server for the store at root, bound to addr:port (port 0: any)."""
    handler = type("Bound", (Handler,), {"store": Store(root)})
    return Server((addr, port), handler)


def serve(ctx):
    """`imgforge-vm registry` (the manager's unit): on its address in the private network."""
    from .swarm import advertise_address, node_addresses
    addr = advertise_address(ctx.conf["cluster"]["network"], node_addresses())
    srv = server(ctx.paths.registry_dir, addr, ctx.paths.registry_port)
    log(f"registry: serving {ctx.paths.registry_dir} on {addr}:{ctx.paths.registry_port}")
    srv.serve_forever()
