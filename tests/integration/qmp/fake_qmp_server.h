#pragma once
// An in-process QMP peer on a unix socket, for tests of the QMP client and
// backend. It plays one QEMU guest (identity, balloon, guest stats, QOM)
// and lets a test replace any reply with raw bytes: malformed JSON, huge
// lines, error objects, events, or a dropped connection.

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "node-agent/hypervisor/qmp_client.h"

namespace membroker::agent::testing {

// What the fake guest looks like.
struct FakeVmState {
  std::string uuid = "6f0a2c1e-9d3b-4c5a-8e7f-112233445566";
  std::optional<std::string> name = "guest-a";
  uint64_t base_memory = 512ULL << 20;
  uint64_t actual = 512ULL << 20;
  // QOM path of the balloon device; empty: no balloon device.
  std::string balloon_path = "/machine/peripheral/balloon0";
  int64_t polling_interval = 0;
  // Raw JSON of the guest-stats value; empty: QEMU's "not yet" error.
  std::string guest_stats_json;
  bool send_greeting = true;
  // Replaces QMP's greeting line when not empty.
  std::string greeting;
  // A virtio-mem device (empty id: none). With one, the balloon works
  // against base_memory only, as QEMU 7.2's does (actual = base_memory
  // minus what the balloon holds, `inflated`; virtio-mem's memory left out).
  std::string vmem_id;
  uint64_t vmem_size = 0;
  uint64_t vmem_requested = 0;
  uint64_t vmem_max = 0;
  uint64_t vmem_block = 2ULL << 20;
  // The device follows a request at once, but unplugs no lower than
  // vmem_unplug_floor (unmovable pages) and plugs no higher than
  // vmem_plug_limit (a guest without the driver).
  uint64_t vmem_unplug_floor = 0;
  uint64_t vmem_plug_limit = ~0ULL;
  uint64_t inflated = 0;
  // Raw JSON of the query-memory-devices reply when not empty.
  std::string memory_devices_json;
  // More peripherals listed by qom-list: name and type, e.g.
  // {"hostdev0", "child<vfio-pci>"}.
  std::vector<std::pair<std::string, std::string>> extra_peripherals;
  // Raw JSON of the query-memdev reply; empty: CommandNotFound.
  std::string memdev_json;
  // qom-get values of other objects: "PATH|PROPERTY" -> raw JSON.
  std::map<std::string, std::string> object_props;
};

// Sentinel a handler returns to drop the connection instead of replying.
inline const std::string kDropConnection = "<drop>";

class FakeQmpServer {
 public:
  // Returns raw lines to send for `command` (each gets "\n"), or nothing to
  // fall back to the built-in guest. kDropConnection closes the connection.
  using Override = std::function<std::optional<std::vector<std::string>>(
      const std::string& command, const google::protobuf::Struct& request)>;

  explicit FakeQmpServer(std::string path) : path_(std::move(path)) {}
  ~FakeQmpServer() { Stop(); }

  // Listens and serves connections one after another until Stop().
  bool Start() {
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path_.size() >= sizeof(addr.sun_path)) return false;
    memcpy(addr.sun_path, path_.data(), path_.size());
    ::unlink(path_.c_str());
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return false;
    if (::listen(listen_fd_, 4) != 0) return false;
    thread_ = std::thread([this] { Serve(); });
    return true;
  }

  // Stops serving, closes the socket and removes its file.
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    if (listen_fd_ >= 0) ::close(listen_fd_);
    listen_fd_ = -1;
    ::unlink(path_.c_str());
  }

  void set_override(Override o) {
    absl::MutexLock lock(&mu_);
    override_ = std::move(o);
  }
  FakeVmState state() {
    absl::MutexLock lock(&mu_);
    return state_;
  }
  void set_state(FakeVmState s) {
    absl::MutexLock lock(&mu_);
    state_ = std::move(s);
  }
  // Commands received so far, in order.
  std::vector<std::string> commands() {
    absl::MutexLock lock(&mu_);
    return commands_;
  }
  // Raw request lines received so far.
  std::vector<std::string> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  int connections() const { return connections_.load(); }
  const std::string& path() const { return path_; }

 private:
  static std::string Reply(const std::string& id, const std::string& value_json) {
    return absl::StrCat("{\"return\": ", value_json,
                        id.empty() ? "" : absl::StrCat(", \"id\": \"", id, "\""), "}");
  }
  static std::string Error(const std::string& id, const std::string& cls,
                           const std::string& desc) {
    return absl::StrCat("{\"error\": {\"class\": \"", cls, "\", \"desc\": \"", desc, "\"}",
                        id.empty() ? "" : absl::StrCat(", \"id\": \"", id, "\""), "}");
  }

  static std::string Str(const google::protobuf::Struct& s, const std::string& key) {
    auto it = s.fields().find(key);
    return it == s.fields().end() ? "" : it->second.string_value();
  }

  // The built-in guest's answer.
  std::vector<std::string> Builtin(const std::string& cmd, const google::protobuf::Struct& req,
                                   const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    google::protobuf::Struct args;
    auto a = req.fields().find("arguments");
    if (a != req.fields().end()) args = a->second.struct_value();
    FakeVmState& s = state_;
    if (cmd == "qmp_capabilities") return {Reply(id, "{}")};
    if (cmd == "query-uuid") return {Reply(id, absl::StrCat("{\"UUID\": \"", s.uuid, "\"}"))};
    if (cmd == "query-name") {
      return {Reply(id, s.name ? absl::StrCat("{\"name\": \"", *s.name, "\"}") : "{}")};
    }
    if (cmd == "query-memory-size-summary") {
      return {Reply(id, absl::StrCat("{\"base-memory\": ", s.base_memory,
                                     ", \"plugged-memory\": ", s.vmem_size, "}"))};
    }
    if (cmd == "query-memory-devices") {
      if (!s.memory_devices_json.empty()) return {Reply(id, s.memory_devices_json)};
      if (s.vmem_id.empty()) return {Reply(id, "[]")};
      return {
          Reply(id, absl::StrCat("[{\"type\": \"virtio-mem\", \"data\": {\"id\": \"", s.vmem_id,
                                 "\", \"memdev\": \"/objects/vmem0\", ",
                                 "\"node\": 0, \"memaddr\": 4294967296, \"size\": ", s.vmem_size,
                                 ", \"requested-size\": ", s.vmem_requested, ", \"max-size\": ",
                                 s.vmem_max, ", \"block-size\": ", s.vmem_block, "}}]"))};
    }
    if (cmd == "query-memdev") {
      if (s.memdev_json.empty()) {
        return {Error(id, "CommandNotFound", "The command query-memdev has not been found")};
      }
      return {Reply(id, s.memdev_json)};
    }
    if (cmd == "query-balloon") {
      if (s.balloon_path.empty()) {
        return {Error(id, "DeviceNotActive", "No balloon device has been activated")};
      }
      if (!s.vmem_id.empty()) {
        // QEMU 7.2: the balloon's actual leaves virtio-mem's memory out.
        return {Reply(id, absl::StrCat("{\"actual\": ", s.base_memory - s.inflated, "}"))};
      }
      return {Reply(id, absl::StrCat("{\"actual\": ", s.actual, "}"))};
    }
    if (cmd == "balloon" && !s.vmem_id.empty() && !s.balloon_path.empty()) {
      double v = args.fields().count("value") ? args.fields().at("value").number_value() : 0;
      if (v <= 0) return {Error(id, "GenericError", "Parameter 'value' expects a size")};
      // QEMU 7.2 sizes the balloon against boot memory only.
      const uint64_t ram = s.base_memory;
      const uint64_t target = std::min<uint64_t>(static_cast<uint64_t>(v), ram);
      s.inflated = ram - target;
      return {absl::StrCat("{\"event\": \"BALLOON_CHANGE\", \"data\": {\"actual\": ", target,
                           "}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}"),
              Reply(id, "{}")};
    }
    if ((cmd == "qom-set" || cmd == "qom-get") && !s.vmem_id.empty() &&
        Str(args, "path") == "/machine/peripheral/" + s.vmem_id) {
      if (Str(args, "property") != "requested-size") {
        return {Error(id, "GenericError", "Property not found")};
      }
      if (cmd == "qom-get") return {Reply(id, absl::StrCat(s.vmem_requested))};
      auto v = args.fields().find("value");
      if (v == args.fields().end() || v->second.number_value() < 0) {
        return {Error(id, "GenericError", "Parameter 'value' expects uint64")};
      }
      const uint64_t req = static_cast<uint64_t>(v->second.number_value());
      if (req > s.vmem_max || req % s.vmem_block != 0) {
        return {Error(id, "GenericError", "requested-size must be a multiple of block-size")};
      }
      s.vmem_requested = req;
      uint64_t size = req;
      if (req < s.vmem_size) size = std::max(req, std::min(s.vmem_size, s.vmem_unplug_floor));
      if (req > s.vmem_size) size = std::max(s.vmem_size, std::min(req, s.vmem_plug_limit));
      std::vector<std::string> out;
      if (size != s.vmem_size) {
        s.vmem_size = size;
        out.push_back(absl::StrCat(
            "{\"event\": \"MEMORY_DEVICE_SIZE_CHANGE\", \"data\": {\"id\": \"", s.vmem_id,
            "\", \"size\": ", size, ", \"qom-path\": \"/machine/peripheral/", s.vmem_id,
            "\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}"));
      }
      out.push_back(Reply(id, "{}"));
      return out;
    }
    if (cmd == "qom-get" && s.object_props.count(Str(args, "path") + "|" + Str(args, "property"))) {
      return {Reply(id, s.object_props.at(Str(args, "path") + "|" + Str(args, "property")))};
    }
    if (cmd == "balloon") {
      if (s.balloon_path.empty()) {
        return {Error(id, "DeviceNotActive", "No balloon device has been activated")};
      }
      double v = args.fields().count("value") ? args.fields().at("value").number_value() : 0;
      if (v <= 0) return {Error(id, "GenericError", "Parameter 'value' expects a size")};
      s.actual = std::min<uint64_t>(static_cast<uint64_t>(v), s.base_memory);
      // QEMU sends the event when the guest moves the balloon: here at once.
      return {absl::StrCat("{\"event\": \"BALLOON_CHANGE\", \"data\": {\"actual\": ", s.actual,
                           "}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}"),
              Reply(id, "{}")};
    }
    if (cmd == "qom-list") {
      std::string path = Str(args, "path");
      if (path == "/machine/peripheral" || path == "/machine/peripheral-anon") {
        std::string items = "[{\"name\": \"type\", \"type\": \"string\"}";
        std::string prefix = path + "/";
        if (s.balloon_path.rfind(prefix, 0) == 0) {
          absl::StrAppend(&items, ", {\"name\": \"", s.balloon_path.substr(prefix.size()),
                          "\", \"type\": \"child<virtio-balloon-pci>\"}");
        }
        if (path == "/machine/peripheral") {
          for (const auto& [name, type] : s.extra_peripherals) {
            absl::StrAppend(&items, ", {\"name\": \"", name, "\", \"type\": \"", type, "\"}");
          }
          if (!s.vmem_id.empty()) {
            absl::StrAppend(&items, ", {\"name\": \"", s.vmem_id,
                            "\", \"type\": \"child<virtio-mem-pci>\"}");
          }
        }
        absl::StrAppend(&items, ", {\"name\": \"net0\", \"type\": \"child<virtio-net-pci>\"}]");
        return {Reply(id, items)};
      }
      return {Error(id, "DeviceNotFound", "Device not found")};
    }
    if (cmd == "qom-get" || cmd == "qom-set") {
      std::string path = Str(args, "path");
      std::string prop = Str(args, "property");
      if (s.balloon_path.empty() || path != s.balloon_path) {
        return {Error(id, "DeviceNotFound", absl::StrCat("Device '", path, "' not found"))};
      }
      if (prop == "guest-stats-polling-interval") {
        if (cmd == "qom-set") {
          s.polling_interval =
              static_cast<int64_t>(args.fields().at("value").number_value());
          return {Reply(id, "{}")};
        }
        return {Reply(id, absl::StrCat(s.polling_interval))};
      }
      if (prop == "guest-stats" && cmd == "qom-get") {
        if (s.guest_stats_json.empty()) {
          return {Error(id, "GenericError", "guest hasn't updated any stats yet")};
        }
        // QMP sends one message per line.
        std::string one_line = s.guest_stats_json;
        std::replace(one_line.begin(), one_line.end(), '\n', ' ');
        return {Reply(id, one_line)};
      }
      return {Error(id, "GenericError", absl::StrCat("Property '", prop, "' not found"))};
    }
    return {Error(id, "CommandNotFound", absl::StrCat("The command ", cmd, " has not been found"))};
  }

  bool SendAll(int fd, const std::string& data) {
    size_t sent = 0;
    for (int i = 0; i < 100000 && sent < data.size(); ++i) {
      ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return sent == data.size();
  }

  void ServeConnection(int fd) {
    FakeVmState initial = state();
    std::string greeting =
        initial.greeting.empty()
            ? "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, "
              "\"major\": 7}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}"
            : initial.greeting;
    if (initial.send_greeting && !SendAll(fd, greeting + "\r\n")) return;
    std::string buffer;
    while (!stop_) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      char chunk[4096];
      ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
      if (n <= 0) return;
      buffer.append(chunk, static_cast<size_t>(n));
      size_t nl;
      while ((nl = buffer.find('\n')) != std::string::npos) {
        std::string line = buffer.substr(0, nl);
        buffer.erase(0, nl + 1);
        auto request = ParseQmpJson(line);
        if (!request.ok()) {
          if (!SendAll(fd, Error("", "GenericError", "JSON parse error") + "\r\n")) return;
          continue;
        }
        std::string cmd = Str(*request, "execute");
        std::string id = Str(*request, "id");
        std::optional<std::vector<std::string>> out;
        Override o;
        {
          absl::MutexLock lock(&mu_);
          commands_.push_back(cmd);
          requests_.push_back(line);
          o = override_;
        }
        if (o) out = o(cmd, *request);
        if (!out.has_value()) {
          absl::MutexLock lock(&mu_);
          out = Builtin(cmd, *request, id);
        }
        for (std::string& l : *out) {
          if (l == kDropConnection) return;
          // "$ID" in an override stands for the request's id.
          size_t pos = l.find("$ID");
          if (pos != std::string::npos) l.replace(pos, 3, id);
          if (!SendAll(fd, l + "\r\n")) return;
        }
      }
    }
  }

  void Serve() {
    // Bounded by stop_: each wait is 20 ms.
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      ++connections_;
      ServeConnection(fd);
      ::close(fd);
    }
  }

  std::string path_;
  int listen_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  absl::Mutex mu_;
  FakeVmState state_ ABSL_GUARDED_BY(mu_);
  Override override_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> commands_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> requests_ ABSL_GUARDED_BY(mu_);
};

}  // namespace membroker::agent::testing
