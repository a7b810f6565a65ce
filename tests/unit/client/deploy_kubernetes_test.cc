// Checks deploy/kubernetes against the real binaries: every flag a
// container passes is in that binary's --help, every declared container
// port is one the daemon listens on (and the reverse), probes use the gRPC
// port, every path a flag names lies in a mounted volume (TLS files in a
// Secret, with a key of that name), $(VAR) references are defined,
// Services and ServiceMonitors name ports that exist, and every object
// carries the recommended app.kubernetes.io labels.
//
// The manifests are rendered with `kubectl kustomize` (base and both
// overlays) where kubectl is installed; otherwise the base's
// resource files are read as they are (printed, not skipped).

#include <gtest/gtest.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/util/child_process.h"

namespace {

namespace fs = std::filesystem;
using ::membroker::testing::RunToCompletion;

const fs::path kKube = fs::path(MB_SOURCE_DIR) / "deploy" / "kubernetes";

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// `name` on PATH, or "".
std::string OnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// `flag` with dashes as underscores: --help prints absl's spelling
// (host_id), the manifests the contract's (host-id); both are accepted.
std::string Canonical(std::string flag) {
  std::replace(flag.begin(), flag.end(), '-', '_');
  return flag;
}

// The flags (without "--", canonical) a binary's --help lists.
std::set<std::string> HelpFlags(const std::string& binary) {
  std::string out;
  RunToCompletion({binary, "--help"}, &out, absl::Seconds(30));
  std::set<std::string> flags;
  for (size_t i = out.find("--"); i != std::string::npos; i = out.find("--", i + 2)) {
    size_t end = i + 2;
    while (end < out.size() && (std::isalnum(static_cast<unsigned char>(out[end])) ||
                                out[end] == '_' || out[end] == '-')) {
      ++end;
    }
    if (end > i + 2) flags.insert(Canonical(out.substr(i + 2, end - i - 2)));
  }
  return flags;
}

// Rendered manifests: name -> documents.
std::map<std::string, std::vector<YAML::Node>> Render() {
  std::map<std::string, std::vector<YAML::Node>> out;
  const std::string kubectl = OnPath("kubectl");
  if (!kubectl.empty()) {
    for (const char* dir : {"base", "overlays/example", "overlays/insecure-demo"}) {
      std::string yaml;
      const int code =
          RunToCompletion({kubectl, "kustomize", (kKube / dir).string()}, &yaml, absl::Seconds(60));
      EXPECT_EQ(code, 0) << "kubectl kustomize " << dir << ": " << yaml;
      out[dir] = YAML::LoadAll(yaml);
    }
    return out;
  }
  std::cout << "kubectl is not installed: reading the base's resources without kustomize\n";
  YAML::Node k = YAML::LoadFile((kKube / "base" / "kustomization.yaml").string());
  for (const YAML::Node& r : k["resources"]) {
    for (YAML::Node doc : YAML::LoadAll(ReadFile(kKube / "base" / r.as<std::string>()))) {
      out["base"].push_back(doc);
    }
  }
  return out;
}

std::string Where(const YAML::Node& doc) {
  return absl::StrCat(doc["kind"].as<std::string>(), "/",
                      doc["metadata"]["name"].as<std::string>());
}

// The port of "HOST:PORT", or -1.
int PortOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) return -1;
  return port;
}

class KubernetesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    help_ = new std::map<std::string, std::set<std::string>>{
        {"membroker", HelpFlags(MB_BROKER_BIN)}, {"membroker-agent", HelpFlags(MB_AGENT_BIN)}};
  }
  static std::map<std::string, std::set<std::string>>* help_;

  // Checks one container of a workload; returns its ports by name.
  void CheckContainer(const std::string& where, const YAML::Node& pod, const YAML::Node& c,
                      std::map<std::string, int>* named_ports) {
    const std::string binary = fs::path(c["command"][0].as<std::string>()).filename().string();
    ASSERT_EQ(help_->count(binary), 1u) << where << ": unknown binary " << binary;
    const std::set<std::string>& flags = help_->at(binary);
    ASSERT_GT(flags.size(), 5u) << binary << " --help lists almost no flags";

    std::set<std::string> env;
    for (const YAML::Node& e : c["env"]) env.insert(e["name"].as<std::string>());
    std::map<std::string, std::string> mounts;  // mountPath -> volume name
    for (const YAML::Node& m : c["volumeMounts"]) {
      mounts[m["mountPath"].as<std::string>()] = m["name"].as<std::string>();
    }
    std::map<std::string, YAML::Node> volumes;
    for (const YAML::Node& v : pod["volumes"]) volumes[v["name"].as<std::string>()] = v;
    for (const auto& [path, volume] : mounts) {
      EXPECT_EQ(volumes.count(volume), 1u) << where << ": mount " << path << " of no volume";
    }
    // The mount a path lies in ("" when none).
    auto mount_of = [&](const std::string& path) -> std::string {
      std::string best;
      for (const auto& [mp, name] : mounts) {
        if ((path == mp || absl::StartsWith(path, mp + "/")) && mp.size() > best.size()) best = mp;
      }
      return best;
    };

    std::set<int> listen_ports;
    int grpc_port = -1;
    std::set<std::string> seen;
    for (const YAML::Node& a : c["args"]) {
      const std::string arg = a.as<std::string>();
      ASSERT_TRUE(absl::StartsWith(arg, "--")) << where << ": " << arg;
      const size_t eq = arg.find('=');
      const std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
      const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
      seen.insert(name);
      EXPECT_EQ(flags.count(Canonical(name)), 1u)
          << where << ": --" << name << " is not in " << binary << " --help";
      for (size_t i = value.find("$("); i != std::string::npos; i = value.find("$(", i + 2)) {
        const std::string var = value.substr(i + 2, value.find(')', i) - i - 2);
        EXPECT_EQ(env.count(var), 1u) << where << ": " << arg << " uses undefined $(" << var << ")";
      }
      if (name == "listen" || name == "metrics-listen") {
        EXPECT_GT(PortOf(value), 0) << where << ": " << arg;
        listen_ports.insert(PortOf(value));
        if (name == "listen") grpc_port = PortOf(value);
      }
      if (absl::StartsWith(value, "/")) {
        const std::string mp = mount_of(value);
        EXPECT_FALSE(mp.empty()) << where << ": " << arg << " names a path in no mounted volume";
        if (absl::StartsWith(name, "tls-") && !mp.empty() && binary == "membroker-agent") {
          // Each agent's certificate names its own node (the broker serves
          // a stream only for the host a certificate names), so it comes
          // from the node, like the kubelet's: a hostPath directory.
          const YAML::Node& v = volumes[mounts[mp]];
          ASSERT_TRUE(v["hostPath"]) << where << ": " << arg
                                     << " is not in the node's own certificate directory";
          EXPECT_EQ(v["hostPath"]["type"].as<std::string>(""), "Directory") << where;
        } else if (absl::StartsWith(name, "tls-") && !mp.empty()) {
          const YAML::Node& v = volumes[mounts[mp]];
          ASSERT_TRUE(v["secret"]) << where << ": " << arg << " is not in a Secret volume";
          std::set<std::string> keys = {"tls.crt", "tls.key", "ca.crt"};
          if (v["secret"]["items"]) {
            keys.clear();
            for (const YAML::Node& it : v["secret"]["items"])
              keys.insert(it["path"].as<std::string>());
          }
          EXPECT_EQ(keys.count(value.substr(mp.size() + 1)), 1u)
              << where << ": " << arg << " is no key of Secret " << v["secret"]["secretName"];
        }
      }
      if (name == "libvirt-uri" && value == "qemu:///system") {
        EXPECT_FALSE(mount_of("/var/run/libvirt/libvirt-sock").empty())
            << where << ": libvirt's socket directory is not mounted";
      }
    }
    // TLS: all three files (the daemons refuse a partial set), or the
    // explicit --insecure of a demo, never both.
    const size_t tls = seen.count("tls-cert") + seen.count("tls-key") + seen.count("tls-ca");
    if (seen.count("insecure") != 0) {
      EXPECT_EQ(tls, 0u) << where << ": --insecure with TLS flags";
    } else {
      EXPECT_EQ(tls, 3u) << where << ": TLS needs --tls-cert, --tls-key and --tls-ca";
    }

    std::set<int> declared;
    for (const YAML::Node& p : c["ports"]) {
      const int port = p["containerPort"].as<int>();
      declared.insert(port);
      if (p["name"]) (*named_ports)[p["name"].as<std::string>()] = port;
    }
    EXPECT_EQ(declared, listen_ports) << where << ": container ports differ from listen flags";
    for (const char* probe : {"readinessProbe", "livenessProbe"}) {
      if (!c[probe]) continue;
      ASSERT_TRUE(c[probe]["grpc"]) << where << ": " << probe << " is not a gRPC health check";
      EXPECT_EQ(c[probe]["grpc"]["port"].as<int>(), grpc_port) << where << ": " << probe;
    }
    EXPECT_TRUE(c["resources"]["requests"]) << where << ": no resource requests";
    EXPECT_TRUE(c["resources"]["limits"]) << where << ": no resource limits";
  }
};
std::map<std::string, std::set<std::string>>* KubernetesTest::help_ = nullptr;

TEST_F(KubernetesTest, ManifestsMatchTheBinaries) {
  const auto rendered = Render();
  ASSERT_FALSE(rendered.empty());
  for (const auto& [variant, docs] : rendered) {
    SCOPED_TRACE(variant);
    std::map<std::string, std::map<std::string, int>> ports_by_component;
    std::map<std::string, std::set<std::string>> service_ports_by_component;
    std::set<std::string> kinds;
    for (const YAML::Node& doc : docs) {
      if (!doc.IsMap()) continue;
      const std::string kind = doc["kind"].as<std::string>();
      const std::string where = Where(doc);
      kinds.insert(kind);
      const YAML::Node labels = doc["metadata"]["labels"];
      EXPECT_TRUE(labels && labels["app.kubernetes.io/part-of"]) << where;
      if (kind != "Namespace") {
        EXPECT_TRUE(labels["app.kubernetes.io/name"]) << where;
        EXPECT_TRUE(labels["app.kubernetes.io/component"]) << where;
      }
      if (kind == "Deployment" || kind == "DaemonSet") {
        const YAML::Node pod = doc["spec"]["template"]["spec"];
        const std::string component = labels["app.kubernetes.io/component"].as<std::string>();
        for (const YAML::Node& c : pod["containers"]) {
          CheckContainer(where, pod, c, &ports_by_component[component]);
        }
        EXPECT_EQ(pod["securityContext"]["seccompProfile"]["type"].as<std::string>(),
                  "RuntimeDefault")
            << where;
      }
      if (kind == "DaemonSet") {
        const YAML::Node spec = doc["spec"];
        EXPECT_EQ(spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"].as<int>(), 1) << where;
        EXPECT_GT(spec["template"]["spec"]["tolerations"].size(), 0u) << where;
        bool node_name = false;
        for (const YAML::Node& e : spec["template"]["spec"]["containers"][0]["env"]) {
          node_name |= e["name"].as<std::string>() == "NODE_NAME" &&
                       e["valueFrom"]["fieldRef"]["fieldPath"].as<std::string>() == "spec.nodeName";
        }
        EXPECT_TRUE(node_name) << where << ": NODE_NAME does not come from spec.nodeName";
        bool host_id = false;
        for (const YAML::Node& a : spec["template"]["spec"]["containers"][0]["args"]) {
          host_id |= a.as<std::string>() == "--host-id=$(NODE_NAME)";
        }
        EXPECT_TRUE(host_id) << where << ": the host id is not the node's name";
      }
      if (kind == "Service") {
        const std::string component = labels["app.kubernetes.io/component"].as<std::string>();
        for (const YAML::Node& p : doc["spec"]["ports"]) {
          service_ports_by_component[component].insert(p["name"].as<std::string>());
        }
      }
    }
    // Services and ServiceMonitors name ports that exist.
    for (const YAML::Node& doc : docs) {
      if (!doc.IsMap()) continue;
      const std::string kind = doc["kind"].as<std::string>();
      if (kind == "Service") {
        const std::string component =
            doc["spec"]["selector"]["app.kubernetes.io/component"].as<std::string>();
        for (const YAML::Node& p : doc["spec"]["ports"]) {
          const std::string target = p["targetPort"].as<std::string>();
          int number = 0;
          if (absl::SimpleAtoi(target, &number)) {
            bool found = false;
            for (const auto& [n, port] : ports_by_component[component]) found |= port == number;
            EXPECT_TRUE(found) << Where(doc) << ": targetPort " << target;
          } else {
            EXPECT_EQ(ports_by_component[component].count(target), 1u)
                << Where(doc) << ": targetPort " << target << " is no container port";
          }
        }
      }
      if (kind == "ServiceMonitor") {
        const std::string component =
            doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"].as<std::string>();
        for (const YAML::Node& e : doc["spec"]["endpoints"]) {
          EXPECT_EQ(service_ports_by_component[component].count(e["port"].as<std::string>()), 1u)
              << Where(doc) << ": port " << e["port"];
        }
      }
    }
    for (const char* kind : {"Namespace", "Deployment", "DaemonSet", "Service", "ServiceMonitor",
                             "PersistentVolumeClaim"}) {
      EXPECT_EQ(kinds.count(kind), 1u) << "no " << kind;
    }
    EXPECT_EQ(ports_by_component.count("broker"), 1u);
    EXPECT_EQ(ports_by_component.count("agent"), 1u);
  }
}

}  // namespace
