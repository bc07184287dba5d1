import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import unittest
import urllib.error
import urllib.request

from imgforge_vm import registry
from imgforge_vm.system import Failed


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def bundle(path, name="docker.io/imgforge/classifier:0.2.0", corrupt=False):
    """An OCI bundle as `imgforge pack` writes one: blobs, index.json naming the image."""
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as t:
        data = b"hello from a layer\n"
        info = tarfile.TarInfo("app/hello.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    layer = gzip.compress(layer_tar.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Labels": {"org.opencontainers.image.version": "0.2.0"}},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [sha(layer_tar.getvalue())]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(layer), "size": len(layer)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
        "size": len(manifest), "annotations": {"io.containerd.image.name": name}}]}).encode()
    blobs = {sha(b): b for b in (layer, config, manifest)}
    with tarfile.open(path, "w") as t:
        for digest, data in blobs.items():
            if corrupt and data is layer:
                data = data + b"x"
            info = tarfile.TarInfo("blobs/sha256/" + digest.split(":")[1])
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for fname, data in (("index.json", index), ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')):
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return sha(manifest)


class RegistryTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.store = registry.Store(os.path.join(self.dir, "store"))

    def serve(self):
        srv = registry.server(self.store.root, "127.0.0.1", 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.addCleanup(srv.server_close)
        self.addCleanup(srv.shutdown)
        return f"127.0.0.1:{srv.server_address[1]}"

    def test_a_bundle_is_imported_by_digest_and_pulled_by_a_real_client(self):
        path = os.path.join(self.dir, "b.oci.tar")
        digest = bundle(path)
        self.assertEqual(self.store.import_bundle(path), ("imgforge/classifier", "0.2.0", digest))
        # Importing it again changes nothing.
        self.assertEqual(self.store.import_bundle(path)[2], digest)
        addr = self.serve()
        if not shutil.which("skopeo"):
            self.skipTest("skopeo is not installed (tests/ci.sh installs it)")
        out = os.path.join(self.dir, "pulled")
        subprocess.run(["skopeo", "copy", "--src-tls-verify=false",
                        f"docker://{addr}/imgforge/classifier@{digest}", f"oci:{out}:x"],
                       check=True, capture_output=True)
        with open(os.path.join(out, "index.json")) as f:
            self.assertEqual(json.load(f)["manifests"][0]["digest"], digest)
        inspect = subprocess.run(["skopeo", "inspect", "--tls-verify=false",
                                  f"docker://{addr}/imgforge/classifier:0.2.0"],
                                 check=True, capture_output=True, text=True)
        doc = json.loads(inspect.stdout)
        self.assertEqual(doc["Digest"], digest)
        self.assertEqual(doc["Labels"]["org.opencontainers.image.version"], "0.2.0")

    def test_it_serves_nothing_else_and_takes_nothing(self):
        path = os.path.join(self.dir, "b.oci.tar")
        digest = bundle(path)
        self.store.import_bundle(path)
        addr = self.serve()

        def status(url, method="GET"):
            try:
                with urllib.request.urlopen(urllib.request.Request(url, method=method)) as r:
                    return r.status, r.headers
            except urllib.error.HTTPError as e:
                return e.code, e.headers

        code, headers = status(f"http://{addr}/v2/")
        self.assertEqual((code, headers["Docker-Distribution-API-Version"]), (200, "registry/2.0"))
        code, headers = status(f"http://{addr}/v2/imgforge/classifier/manifests/0.2.0", "HEAD")
        self.assertEqual((code, headers["Docker-Content-Digest"]), (200, digest))
        for url in ("/v2/imgforge/classifier/manifests/0.9.9",
                    f"/v2/imgforge/other/manifests/{digest}",
                    f"/v2/imgforge/other/blobs/{digest}",
                    "/v2/imgforge/classifier/blobs/sha256:" + "0" * 64,
                    "/v2/imgforge/classifier/blobs/../../../etc/passwd",
                    "/v2/../etc/passwd"):
            self.assertEqual(status(f"http://{addr}{url}")[0], 404, url)
        self.assertEqual(status(f"http://{addr}/v2/imgforge/classifier/blobs/uploads/", "POST")[0], 405)

    def test_a_blob_that_is_not_its_digest_is_refused_and_names_no_tag(self):
        path = os.path.join(self.dir, "bad.oci.tar")
        bundle(path, corrupt=True)
        with self.assertRaisesRegex(Failed, "has sha256"):
            self.store.import_bundle(path)
        self.assertEqual(self.store.repositories(), {})
        self.assertEqual([n for n in os.listdir(os.path.join(self.store.root, "blobs", "sha256"))
                          if n.startswith(".part")], [])

    def test_an_image_name_that_is_not_repository_and_tag_is_refused(self):
        for name in ("docker.io/imgforge/classifier", "docker.io/Imgforge/x:1", "x:a/b"):
            path = os.path.join(self.dir, "n.oci.tar")
            bundle(path, name=name)
            with self.assertRaisesRegex(Failed, "REPOSITORY:TAG"):
                self.store.import_bundle(path)


if __name__ == "__main__":
    unittest.main()
