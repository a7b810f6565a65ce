#!/usr/bin/python3
"""Attacks on a real membroker process from a client that is not the project's.

Python's grpcio (Debian python3-grpcio) with stubs compiled from proto/ at
test time (protoc + grpc_python_plugin), certificates from scripts/dev-ca.sh,
the broker on 127.0.0.1 port 0. Every attack must fail the way the security
design says: no handshake without a certificate of the broker's CA, an agent
only for its own host, AdminService only for admin and read-only identities,
changes only for admin; nothing refused changes any state.

Usage: outside_security_test.py --broker BIN --agent BIN --source-dir DIR
       --protoc BIN --grpc-python-plugin BIN
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

ARGS = None
VM_ID = "00000000-0000-0000-0000-0000000000b7"


def wait_for_log(path, pattern, timeout, proc=None):
    """The first match of `pattern` in the file at `path`, polled until
    `timeout` seconds have passed (or `proc` has exited); None if none."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path) as f:
            m = re.search(pattern, f.read())
        if m or time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            return m
        time.sleep(0.05)


class Pki:
    """dev-ca.sh's certificates, read as bytes."""

    def __init__(self, directory):
        self.dir = directory

    def read(self, name):
        with open(os.path.join(self.dir, name), "rb") as f:
            return f.read()

    def creds(self, cert, ca="ca.pem"):
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self.read(ca),
            private_key=self.read(cert + "-key.pem"),
            certificate_chain=self.read(cert + ".pem"))


class OutsideSecurityTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mb_outside_security_")
        pki_dir = os.path.join(cls.tmp, "pki")
        subprocess.run([os.path.join(ARGS.source_dir, "scripts", "dev-ca.sh"), pki_dir,
                        "kvm-01", "kvm-02"], check=True, stdout=subprocess.DEVNULL)
        cls.pki = Pki(pki_dir)
        # Stubs from the repository's protos, compiled now.
        gen = os.path.join(cls.tmp, "gen")
        os.makedirs(gen)
        proto_root = os.path.join(ARGS.source_dir, "proto")
        protos = [os.path.join(proto_root, "membroker", "v1", p)
                  for p in sorted(os.listdir(os.path.join(proto_root, "membroker", "v1")))
                  if p.endswith(".proto")]
        subprocess.run([ARGS.protoc, "-I" + proto_root, "--python_out=" + gen,
                        "--grpc_out=" + gen,
                        "--plugin=protoc-gen-grpc=" + ARGS.grpc_python_plugin] + protos,
                       check=True)
        sys.path.insert(0, gen)
        global grpc, admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, types_pb2
        import grpc  # noqa: F401
        from membroker.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, types_pb2

        cls.log_path = os.path.join(cls.tmp, "broker.log")
        cls.log = open(cls.log_path, "w")
        cls.broker = subprocess.Popen(
            [ARGS.broker, "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0",
             "--state-dir=" + os.path.join(cls.tmp, "state"),
             "--tls-cert=" + os.path.join(pki_dir, "broker.pem"),
             "--tls-key=" + os.path.join(pki_dir, "broker-key.pem"),
             "--tls-ca=" + os.path.join(pki_dir, "ca.pem")],
            stdout=cls.log, stderr=subprocess.STDOUT)
        m = wait_for_log(cls.log_path, r"grpc port (\d+), metrics port (\d+) \((.*)\)", 30,
                         cls.broker)
        if m is None:
            cls.broker.kill()
            with open(cls.log_path) as f:
                raise RuntimeError("membroker did not print its ports:\n" + f.read())
        cls.grpc_port, cls.metrics_port, cls.mode = int(m.group(1)), int(m.group(2)), m.group(3)
        cls.target = "127.0.0.1:%d" % cls.grpc_port

    @classmethod
    def tearDownClass(cls):
        cls.broker.terminate()
        try:
            cls.broker.wait(10)
        except subprocess.TimeoutExpired:
            cls.broker.kill()
        cls.log.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # --- helpers ---------------------------------------------------------

    def channel(self, creds=None):
        # A new channel per attack: every attack gets its own handshake.
        opts = [("grpc.use_local_subchannel_pool", 1)]
        if creds is None:
            return grpc.insecure_channel(self.target, options=opts)
        return grpc.secure_channel(self.target, creds, options=opts)

    def admin(self, creds):
        return admin_pb2_grpc.AdminServiceStub(self.channel(creds))

    def code_of(self, call):
        try:
            call()
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.last_error = e.details() or ""
            return e.code()

    def list_hosts(self, stub):
        return self.code_of(lambda: stub.ListHosts(admin_pb2.ListHostsRequest(), timeout=10))

    def hello(self, creds, host_id):
        """Says Hello on the agent stream; OK with a Welcome, else the status."""
        stub = agent_pb2_grpc.AgentServiceStub(self.channel(creds))
        done = threading.Event()

        def requests():
            m = agent_pb2.AgentMessage()
            m.hello.host_id = host_id
            m.hello.capacity_bytes = 8 << 30
            m.hello.host_total_bytes = 16 << 30
            m.hello.backend = "sim"
            yield m
            done.wait(10)  # keep our side open until the first reply

        call = stub.Connect(requests(), timeout=10)
        try:
            first = next(call)
            return grpc.StatusCode.OK if first.HasField("welcome") else grpc.StatusCode.UNKNOWN
        except grpc.RpcError as e:
            self.last_error = e.details() or ""
            return e.code()
        finally:
            done.set()
            call.cancel()

    def metrics(self):
        url = "http://127.0.0.1:%d/metrics" % self.metrics_port
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()

    def rejected(self, reason):
        m = re.search(r'membroker_reports_rejected_total\{reason="%s"\} (\S+)' % reason,
                      self.metrics())
        return float(m.group(1)) if m else 0.0

    def buffer_percent(self):
        stub = self.admin(self.pki.creds("admin"))
        return stub.GetClusterPolicy(admin_pb2.GetClusterPolicyRequest(), timeout=10).buffer_percent

    # --- the attacks -----------------------------------------------------

    def test_started_with_mutual_tls(self):
        self.assertEqual(self.mode, "mutual TLS")

    def test_control_admin_and_agent_succeed(self):
        # Without this, every "must fail" below could pass for a dead broker.
        self.assertEqual(self.list_hosts(self.admin(self.pki.creds("admin"))), grpc.StatusCode.OK)
        self.assertEqual(self.hello(self.pki.creds("host-kvm-01"), "kvm-01"), grpc.StatusCode.OK)

    def test_plaintext_fails_the_handshake(self):
        self.assertEqual(self.list_hosts(self.admin(None)), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.hello(None, "kvm-01"), grpc.StatusCode.UNAVAILABLE)

    def test_tls_without_client_certificate_fails(self):
        creds = grpc.ssl_channel_credentials(root_certificates=self.pki.read("ca.pem"))
        self.assertEqual(self.list_hosts(self.admin(creds)), grpc.StatusCode.UNAVAILABLE)

    def test_certificate_from_another_ca_fails(self):
        self.assertEqual(self.list_hosts(self.admin(self.pki.creds("foreign-admin"))),
                         grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.hello(self.pki.creds("foreign-host"), "kvm-01"),
                         grpc.StatusCode.UNAVAILABLE)

    def test_expired_certificate_fails(self):
        self.assertEqual(self.hello(self.pki.creds("expired"), "kvm-01"),
                         grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.list_hosts(self.admin(self.pki.creds("expired"))),
                         grpc.StatusCode.UNAVAILABLE)

    def test_broker_that_we_do_not_trust_is_refused_by_the_client(self):
        # The client side too: trusting only the foreign CA, the broker's
        # certificate does not verify.
        creds = self.pki.creds("admin", ca="foreign-ca.pem")
        self.assertEqual(self.list_hosts(self.admin(creds)), grpc.StatusCode.UNAVAILABLE)

    def test_agent_for_another_host_is_denied_and_counted(self):
        before = self.rejected("host_not_in_certificate")
        self.assertEqual(self.hello(self.pki.creds("host-kvm-01"), "kvm-02"),
                         grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn("CN=kvm-01", self.last_error)
        self.assertEqual(self.hello(self.pki.creds("host-kvm-01"), "x" * 10000),
                         grpc.StatusCode.PERMISSION_DENIED)
        self.assertLess(len(self.last_error), 1000)
        self.assertEqual(self.rejected("host_not_in_certificate"), before + 2)
        # The broker logged who tried.
        self.assertIsNotNone(wait_for_log(self.log_path, r"PERMISSION_DENIED: certificate CN=kvm-01",
                                          10))
        # kvm-02 was never admitted.
        stub = self.admin(self.pki.creds("read-only"))
        hosts = stub.ListHosts(admin_pb2.ListHostsRequest(), timeout=10)
        self.assertNotIn("kvm-02", [h.host_id for h in hosts.hosts])

    def test_admin_or_read_only_certificate_is_not_an_agent(self):
        self.assertEqual(self.hello(self.pki.creds("admin"), "admin"),
                         grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(self.hello(self.pki.creds("read-only"), "kvm-01"),
                         grpc.StatusCode.PERMISSION_DENIED)

    def test_agent_certificate_cannot_call_admin_service(self):
        stub = self.admin(self.pki.creds("host-kvm-02"))
        self.assertEqual(self.list_hosts(stub), grpc.StatusCode.PERMISSION_DENIED)
        before = self.buffer_percent()
        req = admin_pb2.SetClusterPolicyRequest()
        req.policy.buffer_percent = before + 7
        self.assertEqual(self.code_of(lambda: stub.SetClusterPolicy(req, timeout=10)),
                         grpc.StatusCode.PERMISSION_DENIED)
        watch = stub.WatchDecisions(admin_pb2.WatchDecisionsRequest(), timeout=10)
        self.assertEqual(self.code_of(lambda: next(watch)), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(self.buffer_percent(), before)

    def test_read_only_certificate_cannot_change_policy(self):
        stub = self.admin(self.pki.creds("read-only"))
        self.assertEqual(self.list_hosts(stub), grpc.StatusCode.OK)
        self.assertEqual(
            self.code_of(lambda: stub.ListAuditEntries(admin_pb2.ListAuditEntriesRequest(),
                                                       timeout=10)), grpc.StatusCode.OK)
        before = self.buffer_percent()
        cp = admin_pb2.SetClusterPolicyRequest()
        cp.policy.buffer_percent = before + 5
        vp = admin_pb2.SetVmPolicyRequest(vm=VM_ID)
        vp.policy.min_bytes = 1 << 30
        for call in (lambda: stub.SetClusterPolicy(cp, timeout=10),
                     lambda: stub.SetVmPolicy(vp, timeout=10),
                     lambda: stub.ClearVmPolicy(admin_pb2.ClearVmPolicyRequest(vm=VM_ID),
                                                timeout=10)):
            self.assertEqual(self.code_of(call), grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn("read-only", self.last_error)
        self.assertEqual(self.buffer_percent(), before)
        trail = stub.ListAuditEntries(admin_pb2.ListAuditEntriesRequest(limit=10000), timeout=10)
        self.assertNotIn("CN=read-only,OU=membroker-read-only",
                         [e.actor for e in trail.entries])

    def test_real_agents_with_tls_only_for_their_own_host(self):
        # membroker-agent itself: kvm-02 with its own certificate connects;
        # an agent that says kvm-03 with kvm-01's certificate never does.
        sim = os.path.join(ARGS.source_dir, "scripts", "demo", "host-a.textproto")
        agents = []
        try:
            for host, cert in (("kvm-02", "host-kvm-02"), ("kvm-03", "host-kvm-01")):
                log = open(os.path.join(self.tmp, "agent-%s.log" % host), "w")
                agents.append(subprocess.Popen(
                    [ARGS.agent, "--broker=" + self.target, "--host-id=" + host,
                     "--backend=sim", "--sim-config=" + sim, "--metrics-listen=127.0.0.1:0",
                     "--tls-cert=" + os.path.join(self.pki.dir, cert + ".pem"),
                     "--tls-key=" + os.path.join(self.pki.dir, cert + "-key.pem"),
                     "--tls-ca=" + os.path.join(self.pki.dir, "ca.pem")],
                    stdout=log, stderr=subprocess.STDOUT))
                log.close()
            stub = self.admin(self.pki.creds("read-only"))

            def connected():
                hosts = stub.ListHosts(admin_pb2.ListHostsRequest(), timeout=10).hosts
                return {h.host_id for h in hosts if h.connected}

            deadline = time.monotonic() + 60
            while "kvm-02" not in connected() and time.monotonic() < deadline:
                time.sleep(0.2)
            self.assertIn("kvm-02", connected())
            self.assertIsNotNone(wait_for_log(
                self.log_path, r'CN=kvm-01,OU=membroker-agent does not name host "kvm-03"', 30))
            self.assertNotIn("kvm-03", connected())
        finally:
            for a in agents:
                a.terminate()
            for a in agents:
                try:
                    a.wait(10)
                except subprocess.TimeoutExpired:
                    a.kill()

    def test_admin_change_is_audited_with_its_identity(self):
        stub = self.admin(self.pki.creds("admin"))
        vp = admin_pb2.SetVmPolicyRequest(vm=VM_ID)
        vp.policy.max_bytes = 3 << 30
        stub.SetVmPolicy(vp, timeout=10)
        trail = stub.ListAuditEntries(admin_pb2.ListAuditEntriesRequest(target=VM_ID), timeout=10)
        last = trail.entries[-1]
        self.assertEqual(last.actor, "CN=admin,OU=membroker-admin")
        self.assertEqual(last.action, "SetVmPolicy")
        self.assertIn("max_bytes: unset -> %d" % (3 << 30), list(last.changes))


class StartupTest(unittest.TestCase):
    """The daemon's choice of transport security on its command line."""

    def run_broker(self, extra, wait_for_banner):
        """Exit code and output of a broker that refuses to start, or the
        insecure banner of one that starts (then stopped)."""
        tmp = tempfile.mkdtemp(prefix="mb_outside_startup_")
        log_path = os.path.join(tmp, "log")
        try:
            with open(log_path, "w") as log:
                p = subprocess.Popen([ARGS.broker, "--listen=127.0.0.1:0",
                                      "--metrics-listen=127.0.0.1:0",
                                      "--state-dir=" + os.path.join(tmp, "state")] + extra,
                                     stdout=log, stderr=subprocess.STDOUT)
            if not wait_for_banner:
                p.wait(30)
                with open(log_path) as f:
                    return p.returncode, f.read()
            m = wait_for_log(log_path, r"INSECURE MODE", 30, p)
            p.terminate()
            p.wait(10)
            return p.returncode, m.group(0) if m else ""
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_neither_insecure_nor_tls_refuses_to_start(self):
        code, out = self.run_broker([], False)
        self.assertEqual(code, 2)
        self.assertIn("refusing to run without transport security", out)

    def test_half_the_tls_flags_refuse_to_start(self):
        code, out = self.run_broker(["--tls-ca=/nonexistent/ca.pem"], False)
        self.assertEqual(code, 2)
        self.assertIn("--tls-cert, --tls-key missing", out)

    def test_insecure_says_so(self):
        _, banner = self.run_broker(["--insecure"], True)
        self.assertEqual(banner, "INSECURE MODE")


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--source-dir", required=True)
    parser.add_argument("--protoc", required=True)
    parser.add_argument("--grpc-python-plugin", required=True)
    ARGS, rest = parser.parse_known_args()
    try:
        import grpc  # noqa: F401
    except ImportError:
        sys.exit("python3-grpcio is missing: scripts/deps.sh test installs it")
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
