// Agent backend overhead: CPU time of one full read of N VMs (ListVms) by
// the libvirt backend, on libvirt's in-process test driver with a generated
// node file of N domains, and the process's resident memory. Prints
// figures; never fails on time.
//
// usage: agent_overhead [VMS [ROUNDS]]   (defaults: 50 VMs, 200 rounds)

#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/clock.h"
#include "node-agent/hypervisor/libvirt_hypervisor.h"

namespace {

double CpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

double WallSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// A field of /proc/self/status in KiB ("VmRSS", "VmHWM"), or -1.
long StatusKib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  for (int i = 0; i < 200 && std::getline(in, line); ++i) {
    if (line.rfind(field, 0) == 0 && line.size() > strlen(field) && line[strlen(field)] == ':') {
      long kib = -1;
      std::sscanf(line.c_str() + strlen(field) + 1, "%ld", &kib);
      return kib;
    }
  }
  return -1;
}

std::string NodeXml(int vms) {
  std::string xml = "<node>\n";
  for (int i = 0; i < vms; ++i) {
    absl::StrAppend(
        &xml, absl::StrFormat("  <domain type='test'><name>vm%03d</name>"
                              "<uuid>5e5e5e5e-0000-4000-8000-%012d</uuid>"
                              "<memory unit='KiB'>%d</memory>"
                              "<currentMemory unit='KiB'>%d</currentMemory>"
                              "<vcpu>2</vcpu><os><type>hvm</type></os></domain>\n",
                              i, i, 4 * 1024 * 1024, (1 + i % 4) * 1024 * 1024));
  }
  return xml + "</node>\n";
}

int Run(int vms, int rounds) {
  char tmpl[] = "/tmp/mb-agent-overhead-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string path = absl::StrCat(tmpl, "/node.xml");
  std::ofstream(path) << NodeXml(vms);

  membroker::agent::LibvirtHypervisorOptions options;
  options.uri = absl::StrCat("test://", path);
  auto hv = membroker::agent::LibvirtHypervisor::Create(options, membroker::RealClock::Get());
  if (!hv.ok()) {
    std::fprintf(stderr, "%s\n", std::string(hv.status().message()).c_str());
    return 1;
  }
  long rss_before = StatusKib("VmRSS");
  // Warm-up: connects and applies nothing else.
  auto first = (*hv)->ListVms();
  if (!first.ok() || static_cast<int>(first->size()) != vms) {
    std::fprintf(stderr, "warm-up ListVms failed or saw the wrong number of VMs: %s\n",
                 first.ok() ? absl::StrCat(first->size(), " VMs").c_str()
                            : std::string(first.status().message()).c_str());
    return 1;
  }
  double cpu0 = CpuSeconds();
  double wall0 = WallSeconds();
  size_t seen = 0;
  for (int r = 0; r < rounds; ++r) {
    auto listed = (*hv)->ListVms();
    if (!listed.ok()) {
      std::fprintf(stderr, "ListVms failed: %s\n", std::string(listed.status().message()).c_str());
      return 1;
    }
    seen += listed->size();
  }
  double cpu = CpuSeconds() - cpu0;
  double wall = WallSeconds() - wall0;
  long rss_after = StatusKib("VmRSS");
  long hwm = StatusKib("VmHWM");

  std::printf("agent_overhead: libvirt backend, test driver, %d VMs, %d rounds (%zu VM reads)\n",
              vms, rounds, seen);
  std::printf("  cpu per ListVms:     %10.1f us  (%.2f us per VM)\n", cpu / rounds * 1e6,
              cpu / rounds / vms * 1e6);
  std::printf("  wall per ListVms:    %10.1f us\n", wall / rounds * 1e6);
  std::printf("  cpu share at 1 read/s: %8.4f %% of one core\n", cpu / rounds * 100.0);
  std::printf("  rss before/after:    %ld KiB / %ld KiB (peak %ld KiB)\n", rss_before, rss_after,
              hwm);
  hv->reset();
  ::unlink(path.c_str());
  ::rmdir(tmpl);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int vms = 50;
  int rounds = 200;
  if (argc > 1 && (!absl::SimpleAtoi(argv[1], &vms) || vms < 1 || vms > 10000)) {
    std::fprintf(stderr, "VMS must be an integer in [1, 10000], got '%s'\n", argv[1]);
    return 2;
  }
  if (argc > 2 && (!absl::SimpleAtoi(argv[2], &rounds) || rounds < 1 || rounds > 1000000)) {
    std::fprintf(stderr, "ROUNDS must be an integer in [1, 1000000], got '%s'\n", argv[2]);
    return 2;
  }
  if (argc > 3) {
    std::fprintf(stderr, "usage: agent_overhead [VMS [ROUNDS]]\n");
    return 2;
  }
  return Run(vms, rounds);
}
