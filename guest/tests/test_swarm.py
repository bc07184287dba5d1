import http.server
import io
import ipaddress
import json
import os
import socketserver
import tempfile
import threading
import urllib.parse
import unittest
from contextlib import redirect_stderr
from unittest import mock

from imgforge_vm import swarm
from imgforge_vm.system import Failed

from . import schema
from .support import Vm

TOKEN = "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx"

IP_JSON = json.dumps([
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},
    {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "203.0.113.5"}]},
    {"ifname": "ens10", "addr_info": [{"family": "inet", "local": "10.0.0.3"}]},
    {"ifname": "docker0", "addr_info": [{"family": "inet", "local": "172.17.0.1"}]},
    {"ifname": "docker_gwbridge", "addr_info": [{"family": "inet", "local": "172.18.0.1"}]},
    {"ifname": "veth12ab", "addr_info": []},
])
NODE = swarm.addresses(IP_JSON)


class Engine(http.server.BaseHTTPRequestHandler):
    """Docker's Engine API as far as a node uses it: /info, /swarm/init, /swarm/join,
    /services/NAME, /services/create. `refuse_joins` answers that many joins with 503."""

    state = {}

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

    def address_string(self):
        return "unix"

    def do_GET(self):
        st = self.state
        st["calls"].append(("GET", self.path, None))
        if self.path == "/v1.41/info":
            return self.reply(200, {"Swarm": {"LocalNodeState": st["node"], "NodeAddr": "10.0.0.3",
                                              "ControlAvailable": bool(st.get("manager"))}})
        if self.path == "/v1.41/swarm":
            if st["node"] != "active" or not st.get("manager"):
                return self.reply(503, {"message": "This node is not a swarm manager."})
            return self.reply(200, {"JoinTokens": {"Worker": TOKEN, "Manager": "SWMTKN-1-m-m"}})
        if self.path == "/v1.41/nodes":
            return self.reply(200, [
                {"ID": "n2", "Description": {"Hostname": "worker"}, "Spec": {"Availability": "active"},
                 "Status": {"State": "down", "Addr": "10.0.0.4"}},
                {"ID": "n1", "Description": {"Hostname": "manager"}, "Spec": {"Availability": "active"},
                 "Status": {"State": "ready", "Addr": "10.0.0.3"}, "ManagerStatus": {"Leader": True}}])
        if self.path.startswith("/v1.41/tasks?filters="):
            filters = json.loads(urllib.parse.unquote(self.path.split("=", 1)[1]))
            if filters == {"service": ["imgforge-app"]}:
                return self.reply(200, st.get("tasks", []))
            assert filters == {"service": ["imgforge-app"], "desired-state": ["running"]}, filters
            return self.reply(200, [
                {"NodeID": "n1", "Spec": {"ContainerSpec": {"Labels": {"org.imgforge.version": "2"}}},
                 "Status": {"State": "running"}},
                {"NodeID": "gone", "Spec": {"ContainerSpec": {}}, "Status": {"State": "pending"}}])
        if self.path.startswith("/v1.41/tasks/"):
            tid = self.path.rsplit("/", 1)[1]
            for t in st.get("tasks", []):
                if t["ID"] == tid:
                    return self.reply(200, t)
            return self.reply(404, {"message": f"task {tid} not found"})
        if self.path == "/v1.41/nodes/n1":
            return self.reply(200, {"ID": "n1", "Description": {"Hostname": "manager"}})
        if self.path.startswith("/v1.41/services/"):
            name = self.path.rsplit("/", 1)[1]
            if name in st["services"]:
                return self.reply(200, st["services"][name])
            return self.reply(404, {"message": f"service {name} not found"})
        self.reply(404, {"message": "page not found"})

    def do_POST(self):
        st = self.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        st["calls"].append(("POST", self.path, body))
        if self.path == "/v1.41/swarm/init":
            st["node"], st["manager"] = "active", True
            return self.reply(200, "node-id")
        if self.path == "/v1.41/swarm/join":
            if st["refuse_joins"]:
                st["refuse_joins"] -= 1
                return self.reply(503, {"message": "rpc error: connection refused"})
            if body.get("JoinToken") != TOKEN:
                return self.reply(400, {"message": "invalid join token"})
            st["node"] = "active"
            return self.reply(200, None)
        if self.path == "/v1.41/services/create":
            st["services"][body["Name"]] = {"ID": "svc1", "Version": {"Index": 1}, "Spec": body,
                                            "UpdatedAt": "2026-12-07T10:01:00.5Z"}
            return self.reply(201, {"ID": "svc1"})
        if self.path.startswith("/v1.41/services/svc1/update?"):
            svc = st["services"]["imgforge-app"]
            query = urllib.parse.parse_qs(self.path.split("?", 1)[1])
            if query["version"] != [str(svc["Version"]["Index"])]:
                return self.reply(500, {"message": "update out of sequence"})
            outcome = st.get("outcome", "completed")
            new = svc.get("PreviousSpec") if query.get("rollback") == ["previous"] else body
            if outcome == "rollback_completed":
                new = svc["Spec"]
            index = svc["Version"]["Index"] + 1
            svc.update(PreviousSpec=svc["Spec"], Spec=new, Version={"Index": index},
                       UpdatedAt=f"2026-12-07T10:0{index}:00.5Z",
                       UpdateStatus={"State": outcome, "StartedAt": f"t{svc['Version']['Index']}",
                                     "Message": st.get("message", "update rolled back due to failure")
                                     if outcome != "completed" else "update completed"})
            return self.reply(200, {"Warnings": None})
        self.reply(404, {"message": "page not found"})


def task(tid, state, timestamp, version, err=None):
    status = {"State": state, "Timestamp": timestamp, "Message": state}
    if err:
        status["Err"] = err
    return {"ID": tid, "NodeID": "n1", "Status": status,
            "Spec": {"ContainerSpec": {"Labels": {"org.imgforge.version": version}}}}


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class SwarmTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="imgforge-swarm-test-")
        self.socket = os.path.join(self.dir, "docker.sock")
        Engine.state = {"node": "inactive", "services": {}, "calls": [], "refuse_joins": 0}
        self.server = UnixServer(self.socket, Engine)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.engine = swarm.Engine(self.socket, timeout=10)
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        patcher = mock.patch.object(swarm, "node_addresses", return_value=NODE)
        patcher.start()
        self.addCleanup(patcher.stop)

    def vm(self, **cluster):
        vm = Vm(cluster=cluster)
        self.addCleanup(vm.cleanup)
        os.makedirs(os.path.dirname(vm.paths.app_env), exist_ok=True)
        with open(vm.paths.app_env, "w") as f:
            f.write("# the app's environment\nMODEL_DIR=/app/model\nDATABASE_URL=postgres://a@db/h\n")
        return vm

    def calls(self, method, path):
        return [body for m, p, body in Engine.state["calls"] if (m, p) == (method, "/v1.41" + path)]

    def test_the_manager_initializes_on_its_private_address_and_creates_the_service_once(self):
        vm = self.vm(role="init", network="10.0.0.0/16")
        self.assertEqual(swarm.join(vm.ctx, self.engine), "ok")
        [init] = self.calls("POST", "/swarm/init")
        self.assertEqual(init, {"ListenAddr": "10.0.0.3:2377", "AdvertiseAddr": "10.0.0.3:2377",
                                "DataPathAddr": "10.0.0.3", "DefaultAddrPool": ["10.200.0.0/16"],
                                "SubnetSize": 24})
        self.assertEqual(swarm.join(vm.ctx, self.engine), "kept")
        self.assertEqual(len(self.calls("POST", "/swarm/init")), 1)

        self.assertEqual(swarm.ensure_service(vm.ctx, self.engine, "0.1.0"), "created")
        self.assertEqual(swarm.ensure_service(vm.ctx, self.engine, "0.1.0"), "kept")
        [spec] = self.calls("POST", "/services/create")
        self.assertEqual(spec["Name"], vm.paths.service)
        self.assertEqual(spec["TaskTemplate"]["ContainerSpec"]["Env"],
                         ["MODEL_DIR=/app/model", "DATABASE_URL=postgres://a@db/h"])

    def test_the_manager_hands_out_the_worker_token_and_its_address(self):
        from imgforge_vm import remote
        from imgforge_vm.app import Refused
        vm = self.vm(role="init", network="10.0.0.0/16")
        os.makedirs(os.path.dirname(vm.paths.docker_socket), exist_ok=True)
        os.symlink(self.socket, vm.paths.docker_socket)
        with self.assertRaises(Refused) as e:
            remote.cluster_token(vm.ctx, None)
        self.assertIn("not the swarm's manager", str(e.exception))
        swarm.join(vm.ctx, self.engine)
        answer = schema.check("cluster-token-answer", remote.cluster_token(vm.ctx, None))
        self.assertEqual(answer, {"token": TOKEN, "manager": "10.0.0.3:2377"})
        alone = Vm()
        self.addCleanup(alone.cleanup)
        with self.assertRaises(Refused) as e:
            remote.cluster_token(alone.ctx, None)
        self.assertIn("not a node of a cluster", str(e.exception))

    def test_status_lists_the_nodes_and_the_replicas_by_version(self):
        vm = self.vm(role="init", network="10.0.0.0/16")
        os.makedirs(os.path.dirname(vm.paths.docker_socket), exist_ok=True)
        os.symlink(self.socket, vm.paths.docker_socket)
        self.assertEqual(swarm.status(vm.ctx), {"manager": False, "state": "inactive", "nodes": [],
                                                "replicas": [], "update": None})
        swarm.join(vm.ctx, self.engine)
        Engine.state["services"][vm.paths.service] = {"UpdateStatus": {"State": "rollback_completed"}}
        doc = swarm.status(vm.ctx)
        self.assertEqual([(n["hostname"], n["state"], n["manager"]) for n in doc["nodes"]],
                         [("manager", "ready", True), ("worker", "down", False)])
        self.assertEqual(doc["replicas"], [{"node": "gone", "version": "?", "state": "pending"},
                                           {"node": "manager", "version": "2", "state": "running"}])
        self.assertEqual(doc["update"], "rollback_completed")
        schema.check("status-answer", {"status": None, "healthy": True, "deploy": None,
                                       "certificate": None, "cluster": doc,
                                       "serving": {"slot": None, "path": "http://localhost/health",
                                                   "answer": 200, "answers": True}})

    def test_a_node_joins_with_the_token_from_its_file_and_waits_for_the_manager(self):
        vm = self.vm(role="join", network="10.0.0.0/16", manager="10.0.0.2:2377")
        os.makedirs(os.path.dirname(vm.paths.swarm_join_token), exist_ok=True)
        with open(vm.paths.swarm_join_token, "w") as f:
            f.write(TOKEN + "\n")
        Engine.state["refuse_joins"] = 2
        with mock.patch.object(swarm, "wait_for", side_effect=fast_wait_for):
            self.assertEqual(swarm.join(vm.ctx, self.engine), "ok")
        joins = self.calls("POST", "/swarm/join")
        self.assertEqual(len(joins), 3)
        self.assertEqual(joins[-1], {"ListenAddr": "10.0.0.3:2377", "AdvertiseAddr": "10.0.0.3:2377",
                                     "DataPathAddr": "10.0.0.3", "RemoteAddrs": ["10.0.0.2:2377"],
                                     "JoinToken": TOKEN})
        self.assertEqual(swarm.join(vm.ctx, self.engine), "kept")

    def test_a_join_that_never_succeeds_fails_with_the_managers_reason(self):
        vm = self.vm(role="join", network="10.0.0.0/16", manager="10.0.0.2:2377")
        os.makedirs(os.path.dirname(vm.paths.swarm_join_token), exist_ok=True)
        with open(vm.paths.swarm_join_token, "w") as f:
            f.write("SWMTKN-1-" + "a" * 50 + "-" + "b" * 25 + "\n")
        with mock.patch.object(swarm, "wait_for", side_effect=fast_wait_for):
            with self.assertRaises(Failed) as e:
                swarm.join(vm.ctx, self.engine)
        self.assertIn("invalid join token", str(e.exception))
        self.assertIn("10.0.0.2:2377", str(e.exception))
        self.assertNotIn("b" * 25, str(e.exception))

    def test_a_node_without_an_address_on_the_network_says_so(self):
        vm = self.vm(role="init", network="192.168.50.0/24")
        with self.assertRaises(Failed) as e:
            swarm.join(vm.ctx, self.engine)
        self.assertIn("192.168.50.0/24", str(e.exception))
        self.assertIn("10.0.0.3", str(e.exception))
        self.assertEqual(self.calls("POST", "/swarm/init"), [])

    def test_an_api_error_names_the_call_and_dockers_message(self):
        with self.assertRaises(Failed) as e:
            self.engine.ok("GET", "/secrets")
        self.assertIn("GET /secrets", str(e.exception))
        self.assertIn("page not found (HTTP 404)", str(e.exception))
        with self.assertRaises(Failed) as e:
            swarm.Engine(os.path.join(self.dir, "absent.sock")).ok("GET", "/info")
        self.assertIn("Docker's API (GET /info)", str(e.exception))

    def test_a_deploy_puts_the_bundle_in_the_registry_and_follows_swarms_update(self):
        from imgforge_vm.app import Apps, Refused
        from imgforge_vm.registry import Store

        from .test_registry import bundle
        vm = self.vm(role="init", network="10.0.0.0/16")
        os.makedirs(os.path.dirname(vm.paths.docker_socket), exist_ok=True)
        os.symlink(self.socket, vm.paths.docker_socket)
        swarm.join(vm.ctx, self.engine)
        swarm.ensure_service(vm.ctx, self.engine, "0.1.0")
        path = os.path.join(self.dir, "v2.oci.tar")
        digest = bundle(path)
        apps = Apps(vm.ctx)
        with mock.patch.object(swarm.time, "sleep"):
            swarm.deploy(vm.ctx, apps, {"bundle": path, "env": None})
        [spec] = self.calls("POST", "/services/svc1/update?version=1")
        cs = spec["TaskTemplate"]["ContainerSpec"]
        self.assertEqual(cs["Image"], f"10.0.0.3:5000/imgforge/classifier:0.2.0@{digest}")
        self.assertEqual((cs["Labels"]["org.imgforge.version"], spec["Labels"]["org.imgforge.version"]),
                         ("0.2.0", "0.2.0"))
        self.assertEqual(cs["Env"], ["MODEL_DIR=/app/model", "DATABASE_URL=postgres://a@db/h"])
        self.assertEqual(Store(vm.paths.registry_dir).manifest("imgforge/classifier", "0.2.0")[0], digest)
        last = apps.load()["history"][-1]
        self.assertEqual((last["version"], last["result"], last["slot"]), ("0.2.0", "ok", "swarm"))

        # The same again: nothing to update, said before Swarm is asked.
        with self.assertRaisesRegex(Refused, "already runs"):
            swarm.deploy(vm.ctx, apps, {"bundle": path, "env": None})

        # A version Swarm rolls back: a failure naming Swarm's reason, recorded as such,
        # with each replica that failed during the update and why (not those from before,
        # nor those the update stopped).
        Engine.state["outcome"] = "rollback_completed"
        Engine.state["tasks"] = [
            task("t-old", "failed", "2026-12-07T09:00:00Z", "0.1.0", err="from before"),
            task("t-shut", "shutdown", "2026-12-07T10:03:10Z", "0.2.0"),
            task("t-sick", "failed", "2026-12-07T10:03:20Z", "0.2.0", err="unhealthy container"),
            task("t-pull", "rejected", "2026-12-07T10:03:30Z", "0.2.0", err="No such image"),
            task("t-done", "complete", "2026-12-07T10:03:40Z", "0.2.0"),
        ]
        printed = io.StringIO()
        with mock.patch.object(swarm.time, "sleep"), redirect_stderr(printed), \
                self.assertRaisesRegex(Failed, "rolled the update back"):
            swarm.deploy(vm.ctx, apps, {"bundle": path, "env": "GREETING=v3\n"})
        failures = [line for line in printed.getvalue().splitlines() if "  replica " in line]
        self.assertEqual(failures, [
            "imgforge:   replica t-sick (0.2.0) on manager: failed: unhealthy container",
            "imgforge:   replica t-pull (0.2.0) on manager: rejected: No such image",
            "imgforge:   replica t-done (0.2.0) on manager: complete: complete"])
        last = apps.load()["history"][-1]
        self.assertEqual((last["result"], last["error"]),
                         ("rolled-back", "Swarm: update rolled back due to failure"))

        # Swarm blames a replica that ended early: the deploy says what Swarm recorded of it.
        blamed = "nci0m951gc2l9z3lk6xoz2ibq"
        Engine.state["message"] = f"update rolled back due to failure or early termination of task {blamed}"
        Engine.state["tasks"].append(dict(
            task(blamed, "shutdown", "2026-12-07T10:04:40Z", "0.2.0"), DesiredState="shutdown",
            Status={"State": "shutdown", "Timestamp": "2026-12-07T10:04:40Z", "Message": "shutdown",
                    "ContainerStatus": {"ExitCode": 143}}))
        printed = io.StringIO()
        with mock.patch.object(swarm.time, "sleep"), redirect_stderr(printed), \
                self.assertRaisesRegex(Failed, "rolled the update back"):
            swarm.deploy(vm.ctx, apps, {"bundle": path, "env": "GREETING=v4\n"})
        self.assertIn("imgforge:   Swarm names replica nci0m951gc2l (0.2.0) on manager: shutdown "
                      "(Swarm wanted shutdown), exit code 143: shutdown, at 2026-12-07T10:04:40Z",
                      printed.getvalue().splitlines())
        del Engine.state["message"]

        # `imgforge rollback`: Swarm's own, to the spec before.
        Engine.state["outcome"] = "completed"
        with mock.patch.object(swarm.time, "sleep"):
            swarm.rollback(vm.ctx, apps, {})
        self.assertEqual(len(self.calls("POST", "/services/svc1/update?version=4&rollback=previous")), 1)
        self.assertEqual(apps.load()["history"][-1]["kind"], "rollback")

    def test_the_manager_opens_its_registry_to_the_private_network_only(self):
        self.assertEqual(swarm.registry_rules("10.0.0.0/16", 5000),
                         [["allow", "from", "10.0.0.0/16", "to", "any", "port", "5000", "proto", "tcp"]])


def fast_wait_for(fn, timeout, interval):
    """wait_for without the waiting: a few tries."""
    return any(fn() for _ in range(5))


class NetworkTest(unittest.TestCase):
    def test_swarms_ports_open_to_the_private_network_only(self):
        rules = swarm.firewall_rules("10.0.0.0/16")
        self.assertEqual([(r[6], r[8]) for r in rules],
                         [("2377", "tcp"), ("7946", "tcp"), ("7946", "udp"), ("4789", "udp")])
        self.assertTrue(all(r[:3] == ["allow", "from", "10.0.0.0/16"] for r in rules))

    def test_the_swarms_own_networks_keep_clear_of_the_private_network(self):
        self.assertEqual(swarm.address_pool("10.0.0.0/16"), "10.200.0.0/16")
        self.assertEqual(swarm.address_pool("10.0.0.0/8"), "172.30.0.0/16")
        self.assertEqual(swarm.address_pool("172.16.0.0/12"), "10.200.0.0/16")
        with self.assertRaises(Failed):
            swarm.address_pool("0.0.0.0/0")

    def test_the_published_port_is_dropped_on_the_hosts_own_interfaces_only(self):
        self.assertEqual(swarm.advertise_address("10.0.0.0/16", NODE), "10.0.0.3")
        ifaces = swarm.host_interfaces(NODE)
        self.assertEqual(ifaces, ["eth0", "ens10"])
        rules = swarm.published_port_rules(8002, ifaces)
        self.assertEqual(rules[0], ["DOCKER-USER", "--in-interface", "eth0", "--protocol", "tcp",
                                    "--match", "conntrack", "--ctorigdstport", "8002",
                                    "--ctdir", "ORIGINAL", "--jump", "DROP"])
        self.assertEqual(swarm.addresses("[]"), [])
        self.assertEqual(NODE[1], ("eth0", ipaddress.IPv4Address("203.0.113.5")))


class ServiceSpecTest(unittest.TestCase):
    def spec(self, **cluster):
        vm = Vm(cluster=dict(role="init", network="10.0.0.0/16", **cluster))
        self.addCleanup(vm.cleanup)
        return vm, swarm.service_spec(vm.ctx.conf, vm.paths, ["A=1"], "0.1.0")

    def test_one_replica_per_node_updated_start_first_and_rolled_back_on_failure(self):
        vm, spec = self.spec()
        self.assertEqual(spec["Mode"], {"Global": {}})
        self.assertEqual(spec["UpdateConfig"]["Order"], "start-first")
        self.assertEqual(spec["UpdateConfig"]["FailureAction"], "rollback")
        self.assertEqual(spec["RollbackConfig"]["Order"], "start-first")
        self.assertEqual(spec["EndpointSpec"]["Ports"],
                         [{"Protocol": "tcp", "TargetPort": vm.ctx.conf["container_port"],
                           "PublishedPort": vm.paths.service_port, "PublishMode": "ingress"}])
        self.assertEqual(spec["Labels"], {"org.imgforge.version": "0.1.0"})
        # The image's health check, with time for an exec on a busy node.
        self.assertEqual(spec["TaskTemplate"]["ContainerSpec"]["HealthCheck"], {"Timeout": 30 * swarm.NS})

    def test_the_same_limits_as_a_slots_container(self):
        vm, spec = self.spec(replicas=3)
        self.assertEqual(spec["Mode"], {"Replicated": {"Replicas": 3}})
        task = spec["TaskTemplate"]
        container = task["ContainerSpec"]
        self.assertTrue(container["ReadOnly"])
        self.assertEqual(container["CapabilityDrop"], ["ALL"])
        self.assertIn({"Type": "bind", "Source": vm.ctx.conf["data_dir"],
                       "Target": vm.ctx.conf["data_path"]}, container["Mounts"])
        limits = task["Resources"]["Limits"]
        self.assertEqual(limits["MemoryBytes"], swarm.memory_bytes(vm.ctx.conf["app"]["memory"]))
        self.assertEqual(limits["Pids"], vm.ctx.conf["app"]["pids_limit"])
        self.assertEqual(container["Image"], vm.ctx.conf["image"])

    def test_memory_sizes(self):
        self.assertEqual(swarm.memory_bytes("1g"), 1 << 30)
        self.assertEqual(swarm.memory_bytes("512m"), 512 << 20)
        self.assertEqual(swarm.memory_bytes("64k"), 64 << 10)
        self.assertEqual(swarm.memory_bytes("1000"), 1000)


class StepsTest(unittest.TestCase):
    def test_a_node_runs_first_boots_steps_with_the_swarm_after_the_image(self):
        from imgforge_vm import firstboot
        steps = swarm.steps(firstboot.STEPS)
        names = [name for name, _ in steps]
        self.assertEqual(names[:names.index("image") + 1], firstboot.STEP_NAMES[:names.index("image") + 1])
        self.assertEqual(names[names.index("image") + 1], "swarm")
        self.assertEqual([n for n in names if n != "swarm"], firstboot.STEP_NAMES)
        fns = dict(steps)
        self.assertIs(fns["app"], swarm.app)
        self.assertIs(fns["image"], swarm.image)
        self.assertIs(fns["firewall"], swarm.firewall)
        self.assertIs(fns["nginx"], firstboot.nginx)
