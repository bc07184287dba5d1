import gzip
import io
import os
import re
import socket
import struct
import tempfile
import time
import unittest
from unittest import mock

from imgforge_vm import app, logs, system
from imgforge_vm.app import Refused

from . import schema
from .support import Vm
from .test_contract import TEMPLATES


def entry(t, message, **fields):
    """A journal entry as `journalctl -o json` prints it (t in seconds)."""
    return dict(fields, __REALTIME_TIMESTAMP=str(int(t * 1e6)), MESSAGE=message,
                __CURSOR=f"c{t}")


def parse_native(datagram):
    """journald's native protocol, read back: every field's name and bytes."""
    fields, rest = {}, datagram
    while rest:
        name, rest = rest.split(b"\n", 1)
        (size,) = struct.unpack("<Q", rest[:8])
        fields[name.decode()] = rest[8:8 + size].decode()
        rest = rest[8 + size + 1:]
    return fields


class Journal(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(5)
        self.addCleanup(self.sock.close)

    def test_a_value_cannot_forge_another_field(self):
        logs.journal(self.path, "line one\nPRIORITY=0\nSYSLOG_IDENTIFIER=x", SYSLOG_IDENTIFIER="imgforge")
        fields = parse_native(self.sock.recv(65536))
        self.assertEqual(fields["SYSLOG_IDENTIFIER"], "imgforge")
        self.assertEqual(fields["PRIORITY"], "6")
        self.assertEqual(fields["MESSAGE"], "line one\nPRIORITY=0\nSYSLOG_IDENTIFIER=x")

    def test_a_deploys_stderr_goes_to_its_file_and_each_whole_line_to_the_journal(self):
        out = io.StringIO()
        tee = logs.JournalTee(out, self.path)
        with mock.patch.object(system.sys, "stderr", tee):
            system.log("[health] waiting")
        tee.write("half a ")
        tee.write("line\n")
        self.assertEqual(out.getvalue(), "imgforge: [health] waiting\nhalf a line\n")
        said = [parse_native(self.sock.recv(65536))["MESSAGE"] for _ in range(2)]
        self.assertEqual(said, ["imgforge: [health] waiting", "half a line"])


class Request(unittest.TestCase):
    def test_defaults_and_refusals(self):
        self.assertEqual(logs.parse_request({}), {"sources": list(logs.SOURCES), "since": None,
                                                  "lines": logs.DEFAULT_LINES, "follow": False})
        for bad in ({"sources": ["kernel"]}, {"since": -1}, {"lines": 0},
                    {"lines": logs.MAX_LINES + 1}, {"sources": "app"}):
            with self.assertRaises(Refused, msg=bad):
                logs.parse_request(bad)

    def test_each_source_is_its_units_journal(self):
        paths = Vm().paths
        self.assertEqual(logs.journal_matches(paths, ["app", "deploy", "backup", "proxy"]), [
            "_SYSTEMD_UNIT=imgforge-app@blue.service", "_SYSTEMD_UNIT=imgforge-app@green.service",
            "_SYSTEMD_UNIT=imgforge-deploy.service", "_SYSTEMD_UNIT=imgforge-backup.service"])
        self.assertEqual(logs.journal_matches(paths, ["proxy"]), [])
        self.assertIn("_SYSTEMD_UNIT=cloud-final.service", logs.journal_matches(paths, ["boot"]))


def access_format():
    """The access log's format, as nginx-http.conf.hbs defines it."""
    with open(os.path.join(TEMPLATES, "nginx-http.conf.hbs")) as f:
        m = re.search(r"log_format imgforge_json escape=json '(.*)';", f.read())
    return m.group(1)


def access(t, uri, status=200, request_time="0.012", upstream="0.011"):
    """An access log line in the template's format, as nginx writes it."""
    values = {"msec": f"{t:.3f}", "remote_addr": "10.0.2.2", "request_method": "POST",
              "request_uri": uri, "status": str(status), "body_bytes_sent": "42",
              "request_time": request_time, "upstream_response_time": upstream}
    return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], access_format())


class Collect(unittest.TestCase):
    def setUp(self):
        self.vm = Vm()
        self.addCleanup(self.vm.cleanup)
        self.now = 1_800_000_000.0
        p = self.vm.paths
        os.makedirs(os.path.dirname(p.nginx_access_log))
        with gzip.open(p.nginx_access_log + ".2.gz", "wt") as f:
            f.write(access(self.now - 7200, "/old") + "\n")
        with open(p.nginx_access_log + ".1", "w") as f:
            f.write(access(self.now - 600, "/predict?a=1", 502, "0.100", "0.050, 0.040") + "\n")
        with open(p.nginx_access_log, "w") as f:
            f.write(access(self.now - 30, "/history", upstream="-") + "\nnot json\n")
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(self.now - 20))
        with open(p.nginx_error_log, "w") as f:
            f.write(f"{stamp} [error] 12#12: *3 connect() failed (111: Connection refused)\n")
        for name in os.listdir(os.path.dirname(p.nginx_access_log)):
            os.utime(os.path.join(os.path.dirname(p.nginx_access_log), name),
                     (self.now, self.now))
        os.utime(p.nginx_access_log + ".2.gz", (self.now - 7000, self.now - 7000))
        def at(t):
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        # first boot's version started loading before its entry (prestart).
        app.Apps(self.vm.ctx).save({"active": "green", "running": {}, "previous": None,
                                    "history": [
            {"kind": "first-boot", "slot": "blue", "version": "0.1.0", "started": at(self.now - 850)},
            {"kind": "deploy", "slot": "green", "version": "0.2.0", "started": at(self.now - 450)},
            {"kind": "deploy", "slot": "blue", "version": "0.3.0", "started": at(self.now - 100)}]})
        self.journal = [
            entry(self.now - 900, "loading the model", _SYSTEMD_UNIT="imgforge-app@blue.service"),
            entry(self.now - 899, "Cloud-init v. 24 running", _SYSTEMD_UNIT="cloud-final.service"),
            entry(self.now - 898, "imgforge: step app: ok", _SYSTEMD_UNIT="cloud-final.service"),
            entry(self.now - 800, "listening on 8000", _SYSTEMD_UNIT="imgforge-app@blue.service"),
            entry(self.now - 500, "imgforge: [health] waiting",
                  _SYSTEMD_UNIT="imgforge-deploy.service"),
            entry(self.now - 400, "listening", _SYSTEMD_UNIT="imgforge-app@green.service"),
            entry(self.now - 60, "crashed", _SYSTEMD_UNIT="imgforge-app@blue.service"),
            entry(self.now - 10, list(b"classified cat\n"),
                  _SYSTEMD_UNIT="imgforge-app@green.service"),
        ]

    def collect(self, **req):
        def journal_json(args):
            since = next((int(a[1:]) for a in args if a.startswith("@")), 0)
            n = int(args[args.index("--lines") + 1])
            return [e for e in self.journal if int(e["__REALTIME_TIMESTAMP"]) >= since * 1e6][-n:]
        with mock.patch.object(logs, "journal_json", journal_json):
            lines, cursor = logs.collect(self.vm.ctx, logs.parse_request(req), self.now)
        for line in lines:
            schema.check("log-line", line)
        return lines, cursor

    def test_every_source_in_time_order_with_the_version_that_wrote_each_app_line(self):
        lines, cursor = self.collect(since=3600)
        said = [(line["source"], line.get("version"), line["message"]) for line in lines]
        self.assertEqual(said, [
            ("app", "0.1.0", "loading the model"),
            ("boot", None, "step app: ok"),
            ("app", "0.1.0", "listening on 8000"),
            ("proxy", None, "POST /predict?a=1 502 0.100 s"),
            ("deploy", None, "[health] waiting"),
            ("app", "0.2.0", "listening"),
            ("app", "0.3.0", "crashed"),
            ("proxy", None, "POST /history 200 0.012 s"),
            ("proxy", None, lines[8]["message"]),
            ("app", "0.2.0", "classified cat"),
        ])
        self.assertIn("[error]", lines[8]["message"])
        self.assertEqual(lines[3]["request"], {
            "remote": "10.0.2.2", "method": "POST", "uri": "/predict?a=1", "status": 502,
            "bytes": 42, "request_time": 0.1, "upstream_time": 0.04})
        self.assertIsNone(lines[7]["request"]["upstream_time"])
        self.assertEqual(lines[0]["time"], logs.stamp(self.now - 900))
        self.assertEqual(cursor, f"c{self.now - 10}")

    def test_lines_are_the_newest_and_sources_filter(self):
        lines, _ = self.collect(lines=2)
        self.assertEqual([line["message"] for line in lines][-1], "classified cat")
        self.assertEqual(len(lines), 2)
        lines, _ = self.collect(sources=["proxy"], lines=100)
        self.assertEqual([line["source"] for line in lines], ["proxy"] * 4)
        self.assertIn("/old", lines[0]["message"])

    def test_stamp_is_rfc3339_utc_with_milliseconds(self):
        self.assertEqual(logs.stamp(1_800_000_000.9996), "2027-01-15T08:00:01.000Z")
        self.assertEqual(logs.stamp(0.25), "1970-01-01T00:00:00.250Z")


class Traffic(unittest.TestCase):
    def test_windows_count_rates_shares_and_percentiles(self):
        vm = Vm()
        self.addCleanup(vm.cleanup)
        now = 1_800_000_000.0
        os.makedirs(os.path.dirname(vm.paths.nginx_access_log))
        lines = [access(now - 1000, "/old", 200, "5.000")]  # in the hour, not in 5 minutes
        lines += [access(now - 100 + i, "/", 200, f"{(i + 1) / 1000:.3f}") for i in range(97)]
        lines += [access(now - 2, "/", 404, "0.001"), access(now - 1, "/", 503, "1.500"),
                  access(now - 1, "/", 429, "0.000")]
        with open(vm.paths.nginx_access_log, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.utime(vm.paths.nginx_access_log, (now, now))
        t = logs.traffic(vm.paths, now)
        five, hour = t["5m"], t["60m"]
        self.assertEqual((five["requests"], hour["requests"]), (100, 101))
        self.assertEqual(five["per_second"], round(100 / 300, 3))
        self.assertEqual((five["share_4xx"], five["share_5xx"]), (0.02, 0.01))
        self.assertEqual((five["p50"], five["p95"], five["p99"]), (0.049, 0.094, 1.5))
        self.assertEqual(hour["p99"], 1.5)
        empty = logs.traffic(Vm().paths, now)["5m"]
        self.assertEqual((empty["requests"], empty["p50"]), (0, None))


class Follow(unittest.TestCase):
    def test_tail_reads_whole_lines_and_starts_over_after_a_rotation(self):
        d = tempfile.mkdtemp()
        path = os.path.join(d, "access.log")
        with open(path, "w") as f:
            f.write("old\n")
        tail = logs.Tail(path, os.path.getsize(path))
        with open(path, "a") as f:
            f.write("one\ntw")
        self.assertEqual(tail.new_lines(), ["one"])
        with open(path, "a") as f:
            f.write("o\n")
        self.assertEqual(tail.new_lines(), ["two"])
        os.rename(path, path + ".1")
        with open(path, "w") as f:
            f.write("fresh\n")
        self.assertEqual(tail.new_lines(), ["fresh"])

    def test_a_client_gone_is_seen_without_a_write(self):
        r, w = os.pipe()
        out = io.TextIOWrapper(io.FileIO(w, "w"))
        self.addCleanup(out.close)
        self.assertFalse(logs.gone(out))
        os.close(r)
        self.assertTrue(logs.gone(out))


if __name__ == "__main__":
    unittest.main()
