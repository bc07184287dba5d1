import http.server
import os
import unittest
from unittest import mock

from imgforge_vm import proxy, remote
from imgforge_vm.system import Failed

from .support import Docker, Server, Vm


class Files(unittest.TestCase):
    def setUp(self):
        self.vm = Vm()
        self.docker = Docker()
        p = mock.patch.object(proxy, "run", self.docker.run)
        p.start()
        self.addCleanup(p.stop)
        os.makedirs(os.path.dirname(self.vm.paths.nginx_site_tls))
        for path, text in ((self.vm.paths.nginx_site_http, "http site\n"),
                           (self.vm.paths.nginx_site_tls, "tls site\n")):
            with open(path, "w") as f:
                f.write(text)

    def tearDown(self):
        self.vm.cleanup()

    def test_the_upstream_file_names_one_port(self):
        self.assertIsNone(remote.upstream_port(self.vm.paths))
        self.assertTrue(proxy.point_upstream(self.vm.paths, 8001))
        self.assertEqual(remote.upstream_port(self.vm.paths), 8001)
        self.assertFalse(proxy.point_upstream(self.vm.paths, 8001), "unchanged: no write")

    def test_one_of_the_two_sites_is_live_and_tls_is_told_apart(self):
        proxy.install_site(self.vm.paths, tls=False)
        self.assertFalse(proxy.tls_installed(self.vm.paths))
        proxy.install_site(self.vm.paths, tls=True)
        self.assertTrue(proxy.tls_installed(self.vm.paths))

    def test_a_file_nginx_refuses_is_put_back_as_it_was(self):
        proxy.point_upstream(self.vm.paths, 8000)
        self.docker.fail = ("nginx", "-t")
        with self.assertRaises(Failed):
            proxy.point_upstream(self.vm.paths, 8001)
        self.assertEqual(remote.upstream_port(self.vm.paths), 8000)
        with self.assertRaises(Failed):
            proxy.install_site(self.vm.paths, tls=True)
        self.assertFalse(os.path.exists(self.vm.paths.nginx_site), "nothing before: nothing after")


class RunningPort(unittest.TestCase):
    """nginx's check server says which upstream address its running configuration used."""

    def serve(self, header):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(502)
                self.send_header("X-Imgforge-Upstream", header)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass
        server = Server(Handler)
        self.addCleanup(server.close)
        vm = Vm()
        self.addCleanup(vm.cleanup)
        vm.paths._values["nginx_check_port"] = server.httpd.server_address[1]
        return remote.running_port(vm.paths, vm.ctx.conf)

    def test_the_port_comes_from_the_header_even_when_the_app_is_down(self):
        self.assertEqual(self.serve("127.0.0.1:8001"), 8001)
        self.assertEqual(self.serve("127.0.0.1:8000, 127.0.0.1:8001"), 8001)

    def test_no_nginx_is_none(self):
        vm = Vm()
        self.addCleanup(vm.cleanup)
        vm.paths._values["nginx_check_port"] = 1
        self.assertIsNone(remote.running_port(vm.paths, vm.ctx.conf))
