import http.server
import io
import json
import os
import urllib.parse
import unittest
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock

from imgforge_vm import dns

from .support import Server, Vm

TOKEN = "good-token"


class Provider(http.server.BaseHTTPRequestHandler):
    """DuckDNS's update URL and Cloudflare's zones and records, as far as the VM uses them."""

    records = {}

    def reply(self, code, body):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if url.path == "/update":
            ok = q.get("token") == TOKEN and q.get("domains") == "vm1"
            return self.reply(200, "OK\n203.0.113.7\n\nUPDATED" if ok else "KO")
        if url.path == "/cdn-cgi/trace":
            return self.reply(200, "fl=1\nip=203.0.113.9\nts=1\n")
        if self.headers.get("Authorization") != "Bearer " + TOKEN:
            return self.reply(403, {"success": False, "result": None})
        if url.path == "/client/v4/zones":
            return self.reply(200, {"result": [{"id": "z1"}] if q["name"] == "example.com" else []})
        found = [r for r in self.records.values() if r["name"] == q["name"] and r["type"] == q["type"]]
        return self.reply(200, {"result": found})

    def write(self, rid):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.records[rid] = dict(body, id=rid)
        self.reply(200, {"result": self.records[rid]})

    def do_POST(self):
        self.write(f"r{len(self.records) + 1}")

    def do_PUT(self):
        self.write(self.path.rsplit("/", 1)[1])


class Providers(unittest.TestCase):
    def setUp(self):
        Provider.records = {}
        self.server = Server(Provider)
        self.api = self.server.url.rsplit("/", 1)[0]

    def tearDown(self):
        self.server.close()

    def test_duckdns_sets_the_source_address_and_a_wrong_token_is_refused(self):
        self.assertEqual(dns.duckdns("vm1.duckdns.org", TOKEN, self.api, None), "203.0.113.7")
        with self.assertRaises(dns.Refused) as e:
            dns.duckdns("vm1.duckdns.org", "wrong", self.api, None)
        self.assertIn("KO", str(e.exception))
        self.assertNotIn("wrong", str(e.exception))

    def test_cloudflare_creates_then_updates_the_record_in_the_zone_found(self):
        dns.cloudflare("api.example.com", TOKEN, self.api, None, "203.0.113.9", None)
        dns.cloudflare("api.example.com", TOKEN, self.api, None, "203.0.113.10", None)
        self.assertEqual([(r["name"], r["type"], r["content"]) for r in Provider.records.values()],
                         [("api.example.com", "A", "203.0.113.10")])
        with self.assertRaises(dns.Refused) as e:
            dns.cloudflare("api.example.com", "wrong", self.api, None, "203.0.113.9", None)
        self.assertIn("403", str(e.exception))
        with self.assertRaises(dns.Refused):
            dns.cloudflare("api.other.org", TOKEN, self.api, None, "203.0.113.9", None)

    def test_the_public_address_comes_from_the_echo_when_interfaces_are_private(self):
        private = "2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\n"
        with mock.patch.object(dns, "out", side_effect=[private, "", ""]):
            self.assertEqual(dns.public_ipv4(self.api), "203.0.113.9")
        public = "2: eth0    inet 93.184.216.34/24 brd 93.184.216.255 scope global eth0\n"
        with mock.patch.object(dns, "out", return_value=public):
            self.assertEqual(dns.public_ipv4(self.api), "93.184.216.34")


class Attempt(unittest.TestCase):
    def setUp(self):
        self.server = Server(Provider)
        self.vm = Vm(domain="vm1.duckdns.org",
                     dns={"provider": "duckdns", "api_url": self.server.url.rsplit("/", 1)[0]})

    def tearDown(self):
        self.server.close()
        self.vm.cleanup()

    def token(self, value):
        with open(self.vm.paths.dns_token, "w") as f:
            f.write(value + "\n")

    def test_registered_and_resolving_is_ok(self):
        os.makedirs(os.path.dirname(self.vm.paths.dns_token))
        self.token(TOKEN)
        with mock.patch.object(dns, "public_ipv6", return_value=None), \
                mock.patch.object(dns, "resolves", return_value=True):
            self.assertEqual(dns.Dns(self.vm.ctx).attempt(now=100), "ok")
        st = self.vm.status()
        self.assertEqual((st["dns"], st["dns_detail"]), ("ok", "vm1.duckdns.org -> 203.0.113.7"))

    def test_a_refused_token_is_reported_backed_off_and_never_printed(self):
        os.makedirs(os.path.dirname(self.vm.paths.dns_token))
        self.token("s3cret-wrong-token")
        printed = io.StringIO()
        with mock.patch.object(dns, "public_ipv6", return_value=None), redirect_stdout(printed), \
                redirect_stderr(printed):
            self.assertEqual(dns.Dns(self.vm.ctx).attempt(now=100), "refused")
            self.assertEqual(dns.Dns(self.vm.ctx).attempt(now=110), "waiting")
        st = self.vm.status()
        self.assertEqual(st["dns"], "refused")
        self.assertIn("KO", st["dns_detail"])
        with open(self.vm.paths.status) as f:
            self.assertNotIn("s3cret", f.read())
        self.assertNotIn("s3cret", printed.getvalue())
