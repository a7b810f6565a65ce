// broker_load: the broker under a fleet's load, against a bare gRPC echo
// of the same protocol in the same run.
//
// For each size N hosts x M VMs (--sizes), this process opens N agent
// streams over loopback (the gRPC callback client: a handful of threads,
// not one per stream) to
//   1. mb_echo_server (bench/echo_server.cc): answers every report with a
//      TargetSet of the same shape and decides nothing: the ceiling;
//   2. a real membroker (127.0.0.1 port 0, --insecure, a fresh state dir);
//   3. with --admin_load, a second real membroker whose measured time is
//      cut into --admin_segment slices, quiet and loaded in turn (quiet
//      first): in the loaded ones a reader lists VMs (one host, and every
//      VM), lists hosts and scrapes /metrics. The p99 of reports written in
//      loaded slices is set beside that of the quiet slices of the same
//      process, so the admin load's cost is read side by side, not across
//      two broker runs minutes apart.
// Each host sends a full report of its M VMs every --interval, the hosts'
// sends spread evenly over the interval. The VMs move: about 40 % idle,
// 30 % growing until they near their size and then dropping back (a job
// that ends), 30 % swinging; their balloon follows the targets received,
// so targets keep changing.
//
// Measured over --duration after --warmup:
//   - decision latency: report written -> the TargetSet carrying its
//     sequence (TargetSet.report_sequence) received; p50 / p99 / p99.9.
//     A report whose decision changed no target gets no TargetSet; the
//     share answered is printed;
//   - reports/s: offered (hosts / --interval, what the schedule asks
//     for), written (reports whose write completed) and answered
//     (TargetSets matched to a report). A host whose previous report is
//     still being written skips its turn (counted). Every size line and
//     the table name the interval: a row at a slower interval than 1 s
//     holds more VMs at the same reports/s, not the fleet goal's rate;
//   - the server's CPU seconds per report (/proc/PID/stat utime+stime),
//     and its RSS per VM (VmRSS at the end minus VmRSS before any agent
//     connected, over N x M).
// The ratio "broker / echo" compares sustained reports/s; "cpu ratio"
// compares CPU per report (echo / broker): how much of the ceiling's
// capacity the broker keeps on the same cores.
//
// Bounded: every phase has a deadline; it never fails on a figure and
// exits 1 only when it cannot run (a server does not start).

#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <deque>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "membroker/v1/agent.grpc.pb.h"
#include "tests/util/broker_process.h"
#include "tests/util/child_process.h"
#include "tests/util/http.h"

ABSL_FLAG(std::string, sizes, "100x50,1000x50,5000x50,10000x50",
          "comma-separated HOSTSxVMS sizes, run in order");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(20), "measured time per run");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(5), "time before measuring, per run");
ABSL_FLAG(absl::Duration, interval, absl::Seconds(1), "report interval per host");
ABSL_FLAG(absl::Duration, connect_timeout, absl::Seconds(120),
          "deadline for every stream of a run to be welcomed");
ABSL_FLAG(
    int, hosts_per_channel, 1,
    "agent streams sharing one TCP connection (1: one connection per host, like real agents)");
ABSL_FLAG(bool, echo, true, "run the echo ceiling");
ABSL_FLAG(bool, broker, true, "run the broker");
ABSL_FLAG(bool, admin_load, true,
          "also run the broker while admin listings and /metrics scrapes run");
ABSL_FLAG(absl::Duration, admin_segment, absl::Seconds(5),
          "the broker+admin run alternates quiet and admin-load segments of this length "
          "(quiet first); its p99s compare the two in one broker process");
ABSL_FLAG(absl::Duration, admin_period, absl::Seconds(1),
          "admin load: ListVms of one host and GetHost this often");
ABSL_FLAG(absl::Duration, full_list_period, absl::Seconds(5),
          "admin load: ListVms of every VM, ListHosts and a /metrics scrape this often");
ABSL_FLAG(int, churn_vms, 10000,
          "before the sizes: one host adds this many VMs in one report, then removes them "
          "(0: skip); broker CPU and admin latency on that host meanwhile");
ABSL_FLAG(std::string, broker_bin, MB_BROKER_PATH, "membroker binary");
ABSL_FLAG(std::string, echo_bin, MB_ECHO_PATH, "mb_echo_server binary");
ABSL_FLAG(std::string, work_dir, "", "where state dirs and logs go (default: a temp dir)");

namespace membroker::bench {
namespace {

namespace v1 = ::membroker::v1;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// Counters shared by every stream of a run.
struct RunStats {
  std::atomic<uint64_t> welcomed{0};
  std::atomic<uint64_t> written{0};   // reports whose write completed
  std::atomic<uint64_t> skipped{0};   // turns skipped: previous write in flight
  std::atomic<uint64_t> answered{0};  // TargetSets matched to a report
  std::atomic<uint64_t> failed{0};    // streams that ended with an error
  std::atomic<bool> measuring{false};
  // With --admin_load, the broker+admin run alternates segments of this
  // length from measure_from: even ones quiet, odd ones under admin load.
  // A report belongs to the segment it was written in.
  absl::Duration segment = absl::ZeroDuration();
  absl::Time measure_from;
  absl::Mutex mu;
  std::vector<double> latencies_ms ABSL_GUARDED_BY(mu);  // while measuring
  // The same, split by segment (only when segment > 0).
  std::vector<double> quiet_ms ABSL_GUARDED_BY(mu);
  std::vector<double> admin_ms ABSL_GUARDED_BY(mu);
  // When each report slower than 100 ms was written (stalls vs. spread).
  std::vector<absl::Time> slow_sent ABSL_GUARDED_BY(mu);
  std::string first_error ABSL_GUARDED_BY(mu);
};

// One simulated VM: a guest whose used memory follows a pattern and whose
// balloon follows the targets (at most 256 MiB per report).
struct VmModel {
  enum Kind { kIdle, kGrowing, kSwinging };
  Kind kind = kIdle;
  uint64_t max_bytes = 0;
  uint64_t actual_bytes = 0;
  uint64_t target_bytes = 0;  // 0: none received
  double used_bytes = 0;
  double rate_bytes = 0;  // growth per second, or swing amplitude
  double period_seconds = 60;
  double phase = 0;
  uint64_t swap_in_total = 0;
  uint64_t major_faults_total = 0;
};

// One agent stream. The pacer thread writes reports; gRPC's threads
// deliver reads and write completions. At most one write in flight.
class HostStream final : public grpc::ClientBidiReactor<v1::AgentMessage, v1::BrokerMessage> {
 public:
  HostStream(int index, int vms, RunStats* stats) : index_(index), stats_(stats) {
    std::mt19937_64 rng(0x5eed + static_cast<uint64_t>(index));
    host_id_ = absl::StrFormat("load-host-%05d", index);
    uint64_t sum_max = 0;
    vms_.resize(static_cast<size_t>(vms));
    for (int i = 0; i < vms; ++i) {
      VmModel& m = vms_[static_cast<size_t>(i)];
      const uint64_t sizes[] = {2 * kGiB, 4 * kGiB, 8 * kGiB};
      m.max_bytes = sizes[rng() % 3];
      m.actual_bytes = m.max_bytes;
      const int roll = static_cast<int>(rng() % 10);
      m.kind = roll < 4 ? VmModel::kIdle : roll < 7 ? VmModel::kGrowing : VmModel::kSwinging;
      m.used_bytes = static_cast<double>(m.max_bytes) * (0.1 + 0.2 * (rng() % 100) / 100.0);
      m.rate_bytes = m.kind == VmModel::kGrowing ? static_cast<double>((8 + rng() % 56) * kMiB)
                                                 : static_cast<double>(m.max_bytes) * 0.2;
      m.period_seconds = 20 + static_cast<double>(rng() % 60);
      m.phase = static_cast<double>(rng() % 1000) / 1000.0 * 6.28318;
      sum_max += m.max_bytes;
    }
    capacity_bytes_ = sum_max * 6 / 10;
    host_total_bytes_ = capacity_bytes_ + 8 * kGiB;
    v1::HostReport* r = report_.mutable_report();
    for (int i = 0; i < vms; ++i) {
      v1::VmSample* s = r->add_vms();
      s->set_vm_id(absl::StrFormat("%08x-%04x-4000-8000-%012x", index, i, (index << 16) | i));
      s->set_name(absl::StrFormat("vm-%05d-%02d", index, i));
      s->set_max_bytes(vms_[static_cast<size_t>(i)].max_bytes);
      by_id_[s->vm_id()] = i;
    }
  }

  // Opens the stream and sends the Hello.
  void Start(v1::AgentService::Stub* stub) {
    stub->async()->Connect(&ctx_, this);
    AddHold();
    v1::Hello* h = hello_.mutable_hello();
    h->set_host_id(host_id_);
    h->set_agent_version("broker_load");
    h->set_backend("sim");
    h->set_capacity_bytes(capacity_bytes_);
    h->set_host_total_bytes(host_total_bytes_);
    writing_ = true;
    StartWrite(&hello_);
    StartRead(&in_);
    StartCall();
  }

  // The pacer's turn for this host at `now`: writes a report, or counts a
  // skipped turn when the previous write is still in flight.
  void Tick(absl::Time now) {
    if (!welcomed_.load() || done_.load()) return;
    if (writing_.exchange(true)) {
      if (stats_->measuring.load()) stats_->skipped.fetch_add(1);
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      FillReportLocked(now);
      // Sent now: the pacer may be behind its schedule (it shares the cores).
      sent_.emplace_back(sequence_, absl::Now());
      if (sent_.size() > 8) sent_.pop_front();
    }
    StartWrite(&report_);
  }

  // Ends the stream (the run is over).
  void Stop() {
    ctx_.TryCancel();
    RemoveHold();
  }

  void OnWriteDone(bool ok) override {
    if (ok && hello_written_.exchange(true) && stats_->measuring.load()) {
      stats_->written.fetch_add(1);
    }
    writing_ = false;
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    const absl::Time now = absl::Now();
    if (in_.has_welcome()) {
      if (!welcomed_.exchange(true)) stats_->welcomed.fetch_add(1);
    } else if (in_.has_targets()) {
      const v1::TargetSet& ts = in_.targets();
      absl::MutexLock lock(&mu_);
      for (auto it = sent_.begin(); it != sent_.end(); ++it) {
        if (it->first != ts.report_sequence()) continue;
        if (stats_->measuring.load()) {
          stats_->answered.fetch_add(1);
          absl::MutexLock slock(&stats_->mu);
          const double ms = absl::ToDoubleMilliseconds(now - it->second);
          stats_->latencies_ms.push_back(ms);
          if (stats_->segment > absl::ZeroDuration() && it->second >= stats_->measure_from) {
            const int64_t k = (it->second - stats_->measure_from) / stats_->segment;
            (k % 2 == 1 ? stats_->admin_ms : stats_->quiet_ms).push_back(ms);
          }
          if (now - it->second > absl::Milliseconds(100)) stats_->slow_sent.push_back(it->second);
        }
        sent_.erase(sent_.begin(), it + 1);
        break;
      }
      for (const v1::VmTarget& t : ts.targets()) {
        auto vm = by_id_.find(t.vm_id());
        if (vm != by_id_.end())
          vms_[static_cast<size_t>(vm->second)].target_bytes = t.target_bytes();
      }
    }
    StartRead(&in_);
  }

  void OnDone(const grpc::Status& status) override {
    done_ = true;
    if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED) {
      stats_->failed.fetch_add(1);
      absl::MutexLock lock(&stats_->mu);
      if (stats_->first_error.empty()) {
        stats_->first_error = absl::StrCat(host_id_, ": ", status.error_message());
      }
    }
    absl::MutexLock lock(&done_mu_);
    finished_ = true;
  }

  // Waits until OnDone ran; false after `timeout`.
  bool WaitDone(absl::Duration timeout) {
    absl::MutexLock lock(&done_mu_);
    return done_mu_.AwaitWithTimeout(absl::Condition(&finished_), timeout);
  }

 private:
  void FillReportLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const double dt =
        last_fill_ == absl::InfinitePast() ? 1.0 : absl::ToDoubleSeconds(now - last_fill_);
    last_fill_ = now;
    const double t = absl::ToDoubleSeconds(now - absl::UnixEpoch());
    v1::HostReport* r = report_.mutable_report();
    r->set_sequence(++sequence_);
    r->mutable_sent_at()->set_seconds(absl::ToUnixSeconds(now));
    uint64_t sum_actual = 0;
    double sum_used = 0;
    for (size_t i = 0; i < vms_.size(); ++i) {
      VmModel& m = vms_[i];
      const double max = static_cast<double>(m.max_bytes);
      switch (m.kind) {
        case VmModel::kIdle:
          break;
        case VmModel::kGrowing:
          m.used_bytes += m.rate_bytes * dt;
          if (m.used_bytes > 0.85 * max) m.used_bytes = 0.15 * max;  // the job ended
          break;
        case VmModel::kSwinging:
          m.used_bytes =
              0.35 * max + m.rate_bytes * std::sin(6.28318 * t / m.period_seconds + m.phase);
          break;
      }
      // The balloon moves toward the target, 256 MiB per report at most.
      if (m.target_bytes != 0) {
        const uint64_t step = 256 * kMiB;
        if (m.target_bytes > m.actual_bytes) {
          m.actual_bytes = std::min(m.target_bytes, m.actual_bytes + step);
        } else {
          m.actual_bytes =
              std::max(m.target_bytes, m.actual_bytes - std::min(m.actual_bytes, step));
        }
        m.actual_bytes = std::min(m.actual_bytes, m.max_bytes);
      }
      const uint64_t total =
          m.actual_bytes > 64 * kMiB ? m.actual_bytes - 32 * kMiB : m.actual_bytes;
      const uint64_t used = static_cast<uint64_t>(std::max(0.0, m.used_bytes));
      const uint64_t available = used >= total ? total / 50 : total - used;
      if (used + 64 * kMiB > total) {
        // Short: the guest swaps and faults.
        m.swap_in_total += 4 * kMiB;
        m.major_faults_total += 500;
      }
      v1::VmSample* s = r->mutable_vms(static_cast<int>(i));
      s->set_actual_bytes(m.actual_bytes);
      s->set_last_target_bytes(m.target_bytes);
      v1::GuestStats* g = s->mutable_stats();
      g->set_total_bytes(total);
      g->set_available_bytes(available);
      g->set_free_bytes(available / 2);
      g->set_disk_caches_bytes(available / 3);
      g->set_swap_in_bytes_total(m.swap_in_total);
      g->set_swap_out_bytes_total(m.swap_in_total / 2);
      g->set_major_faults_total(m.major_faults_total);
      g->set_minor_faults_total(m.major_faults_total * 40 + sequence_);
      g->set_age_seconds(0.4);
      s->set_health(v1::BALLOON_HEALTH_OK);
      sum_actual += m.actual_bytes;
      sum_used += static_cast<double>(used);
    }
    v1::HostSample* h = r->mutable_host();
    h->set_mem_total_bytes(host_total_bytes_);
    h->set_mem_available_bytes(sum_actual >= host_total_bytes_ ? 0
                                                               : host_total_bytes_ - sum_actual);
    h->set_swap_total_bytes(0);
    h->set_psi_some_avg10_percent(sum_used > static_cast<double>(capacity_bytes_) ? 5.0 : 0.0);
  }

  const int index_;
  RunStats* const stats_;
  std::string host_id_;
  uint64_t capacity_bytes_ = 0;
  uint64_t host_total_bytes_ = 0;
  grpc::ClientContext ctx_;
  v1::AgentMessage hello_;
  v1::AgentMessage report_;  // reused; written only while writing_ is ours
  v1::BrokerMessage in_;
  std::atomic<bool> writing_{false};
  std::atomic<bool> welcomed_{false};
  std::atomic<bool> hello_written_{false};
  std::atomic<bool> done_{false};
  std::unordered_map<std::string, int> by_id_;  // immutable after construction
  absl::Mutex mu_;
  std::vector<VmModel> vms_ ABSL_GUARDED_BY(mu_);
  uint64_t sequence_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_fill_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::deque<std::pair<uint64_t, absl::Time>> sent_ ABSL_GUARDED_BY(mu_);
  absl::Mutex done_mu_;
  bool finished_ ABSL_GUARDED_BY(done_mu_) = false;
};

// CPU seconds (user + system) of a process, from /proc/PID/stat.
double CpuSeconds(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  std::getline(f, line);
  const size_t paren = line.rfind(')');
  if (paren == std::string::npos) return 0;
  std::vector<std::string> fields = absl::StrSplit(line.substr(paren + 2), ' ');
  // After the command: state is field 3, utime 14, stime 15 (1-based).
  if (fields.size() < 13) return 0;
  double utime = 0, stime = 0;
  if (!absl::SimpleAtod(fields[11], &utime) || !absl::SimpleAtod(fields[12], &stime)) return 0;
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// VmRSS of a process in bytes (0 when unreadable).
uint64_t RssBytes(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      uint64_t kib = 0;
      std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kib)) return kib * 1024;
    }
  }
  return 0;
}

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return NAN;
  const size_t k =
      std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

// One run's figures.
struct RunResult {
  bool ran = false;
  double offered_per_second = 0;   // hosts / interval: what the schedule asks for
  double reports_per_second = 0;   // reports whose write completed, per second
  double answered_per_second = 0;  // TargetSets matched to a report, per second
  double answered_share = 0;
  double p50 = NAN, p99 = NAN, p999 = NAN;
  double cpu_per_report_ms = 0;
  double rss_per_vm_bytes = 0;
  uint64_t rss_bytes = 0;
  uint64_t skipped = 0;
  uint64_t failed = 0;
  std::string admin_note;
  // Alternating segments (the broker+admin run): p99 of reports written in
  // quiet segments and in segments under admin load, and how many.
  double quiet_p99 = NAN, admin_p99 = NAN;
  size_t quiet_n = 0, admin_n = 0;
};

// Admin readers for --admin_load: small reads every admin_period, full
// listings and a scrape every full_list_period. Counts calls and their time.
class AdminLoad {
 public:
  AdminLoad(int grpc_port, int metrics_port, int hosts)
      : metrics_port_(metrics_port), hosts_(hosts) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    channel_ = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", grpc_port),
                                         grpc::InsecureChannelCredentials(), args);
    stub_ = v1::AdminService::NewStub(channel_);
    small_ = std::thread([this] { SmallLoop(); });
    full_ = std::thread([this] { FullLoop(); });
  }
  ~AdminLoad() { Stop(); }

  void Stop() {
    stop_ = true;
    if (small_.joinable()) small_.join();
    if (full_.joinable()) full_.join();
  }

  std::string Summary() const {
    return absl::StrFormat(
        "admin: %d small calls (max %.0f ms), %d full ListVms (max %.0f ms, %d VMs), %d "
        "scrapes (max %.0f ms, %.1f MB), %d errors",
        small_calls_.load(), small_max_ms_.load(), full_calls_.load(), full_max_ms_.load(),
        last_vm_count_.load(), scrapes_.load(), scrape_max_ms_.load(), scrape_mb_.load(),
        errors_.load());
  }

 private:
  void SleepUntilOrStop(absl::Time t) {
    while (!stop_ && absl::Now() < t) absl::SleepFor(absl::Milliseconds(20));
  }
  static void Max(std::atomic<double>& a, double v) {
    double cur = a.load();
    while (v > cur && !a.compare_exchange_weak(cur, v)) {
    }
  }

  // The reader stands for a client on another machine: its own parsing of
  // large replies must not delay this process's reading of TargetSets.
  static void Background() {
    setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19);
  }

  void SmallLoop() {
    Background();
    std::mt19937 rng(7);
    absl::Time next = absl::Now();
    while (!stop_) {
      const std::string host = absl::StrFormat("load-host-%05d", static_cast<int>(rng() % hosts_));
      const absl::Time start = absl::Now();
      grpc::ClientContext c1, c2;
      c1.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      c2.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      v1::ListVmsRequest req;
      req.set_host_id(host);
      v1::ListVmsResponse resp;
      v1::GetHostRequest greq;
      greq.set_host_id(host);
      v1::Host hresp;
      if (!stub_->ListVms(&c1, req, &resp).ok()) ++errors_;
      if (!stub_->GetHost(&c2, greq, &hresp).ok()) ++errors_;
      Max(small_max_ms_, absl::ToDoubleMilliseconds(absl::Now() - start));
      ++small_calls_;
      next += absl::GetFlag(FLAGS_admin_period);
      SleepUntilOrStop(next);
    }
  }

  void FullLoop() {
    Background();
    absl::Time next = absl::Now();
    while (!stop_) {
      {
        grpc::ClientContext c;
        c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
        v1::ListVmsRequest req;
        v1::ListVmsResponse resp;
        const absl::Time start = absl::Now();
        if (stub_->ListVms(&c, req, &resp).ok()) {
          last_vm_count_ = resp.vms_size();
        } else {
          ++errors_;
        }
        Max(full_max_ms_, absl::ToDoubleMilliseconds(absl::Now() - start));
        grpc::ClientContext c2;
        c2.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
        v1::ListHostsResponse hosts;
        if (!stub_->ListHosts(&c2, v1::ListHostsRequest(), &hosts).ok()) ++errors_;
        ++full_calls_;
      }
      {
        const absl::Time start = absl::Now();
        auto reply = testing::HttpGet(metrics_port_, "/metrics", absl::Seconds(60));
        if (reply.ok() && reply->status == 200) {
          scrape_mb_ = static_cast<double>(reply->body.size()) / 1e6;
        } else {
          ++errors_;
        }
        Max(scrape_max_ms_, absl::ToDoubleMilliseconds(absl::Now() - start));
        ++scrapes_;
      }
      next += absl::GetFlag(FLAGS_full_list_period);
      SleepUntilOrStop(next);
    }
  }

  const int metrics_port_;
  const int hosts_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AdminService::Stub> stub_;
  std::atomic<bool> stop_{false};
  std::atomic<int> small_calls_{0}, full_calls_{0}, scrapes_{0}, errors_{0}, last_vm_count_{0};
  std::atomic<double> small_max_ms_{0}, full_max_ms_{0}, scrape_max_ms_{0}, scrape_mb_{0};
  std::thread small_, full_;
};

// One host adds `vms` VMs in one report and then removes them, on a
// synchronous stream; meanwhile a reader calls GetHost on that host and
// ListHosts. Prints the broker's CPU for each report and the reader's
// slowest call.
void RunChurn(int port, pid_t pid, int vms) {
  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  auto stub = v1::AgentService::NewStub(channel);
  auto admin = v1::AdminService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
  auto rw = stub->Connect(&ctx);
  v1::AgentMessage hello;
  hello.mutable_hello()->set_host_id("churn-host");
  hello.mutable_hello()->set_capacity_bytes(static_cast<uint64_t>(vms) * kGiB);
  v1::BrokerMessage in;
  if (!rw->Write(hello) || !rw->Read(&in)) {
    std::printf("churn: the stream did not open\n");
    return;
  }
  std::atomic<bool> stop{false};
  std::atomic<double> max_ms{0};
  std::atomic<int> calls{0};
  std::thread reader([&] {
    while (!stop) {
      const absl::Time start = absl::Now();
      grpc::ClientContext c1, c2;
      c1.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      c2.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      v1::GetHostRequest req;
      req.set_host_id("churn-host");
      v1::Host host;
      v1::ListHostsResponse hosts;
      (void)admin->GetHost(&c1, req, &host);
      (void)admin->ListHosts(&c2, v1::ListHostsRequest(), &hosts);
      const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
      if (ms > max_ms.load()) max_ms = ms;
      ++calls;
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  // Sends a report of `n` VMs and waits for the TargetSet that includes it.
  auto step = [&](uint64_t seq, int n, const char* what) {
    v1::AgentMessage msg;
    v1::HostReport* r = msg.mutable_report();
    r->set_sequence(seq);
    r->mutable_host()->set_mem_total_bytes(static_cast<uint64_t>(vms) * 2 * kGiB);
    r->mutable_host()->set_mem_available_bytes(static_cast<uint64_t>(vms) * kGiB);
    for (int i = 0; i < n; ++i) {
      v1::VmSample* s = r->add_vms();
      s->set_vm_id(absl::StrFormat("c0000000-0000-4000-8000-%012d", i));
      s->set_name(absl::StrFormat("churn-%d", i % (n / 2 + 1)));  // half the names repeat
      s->set_max_bytes(kGiB);
      s->set_actual_bytes(kGiB);
      s->mutable_stats()->set_total_bytes(kGiB);
      s->mutable_stats()->set_available_bytes(kGiB / 2);
      s->mutable_stats()->set_age_seconds(0.1);
    }
    const double cpu0 = CpuSeconds(pid);
    const absl::Time start = absl::Now();
    if (!rw->Write(msg)) return false;
    // Done when the host shows the report (a removal may change no target,
    // so no TargetSet need come).
    const absl::Time deadline = start + absl::Seconds(120);
    while (absl::Now() < deadline) {
      grpc::ClientContext c;
      c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      v1::GetHostRequest req;
      req.set_host_id("churn-host");
      v1::Host host;
      if (admin->GetHost(&c, req, &host).ok() && host.report_sequence() >= seq) {
        std::printf("  churn: %-22s %6.2f s until decided, broker CPU %.2f s\n", what,
                    absl::ToDoubleSeconds(absl::Now() - start), CpuSeconds(pid) - cpu0);
        std::fflush(stdout);
        return true;
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  };
  // The one VM left after the removal keeps a TargetSet coming.
  const bool ok = step(1, vms, absl::StrCat("add ", vms, " VMs:").c_str()) &&
                  step(2, 1, absl::StrCat("remove ", vms - 1, " VMs:").c_str());
  stop = true;
  reader.join();
  std::printf("  churn: %s; GetHost+ListHosts meanwhile: %d calls, slowest %.0f ms\n",
              ok ? "done" : "not decided within 120 s", calls.load(), max_ms.load());
  rw->WritesDone();
  ctx.TryCancel();
  std::fflush(stdout);
}

// Runs one load against a server on `port` (process `pid`).
RunResult RunLoad(int port, int metrics_port, pid_t pid, int hosts, int vms, bool admin_load) {
  RunResult result;
  RunStats stats;
  const uint64_t idle_rss = RssBytes(pid);
  const int per_channel = std::max(1, absl::GetFlag(FLAGS_hosts_per_channel));
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<v1::AgentService::Stub>> stubs;
  for (int i = 0; i < (hosts + per_channel - 1) / per_channel; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.channel_id", i);  // distinct channels: one connection each
    args.SetMaxReceiveMessageSize(64 << 20);
    channels.push_back(grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                                 grpc::InsecureChannelCredentials(), args));
    stubs.push_back(v1::AgentService::NewStub(channels.back()));
  }
  std::vector<std::unique_ptr<HostStream>> streams;
  streams.reserve(static_cast<size_t>(hosts));
  const absl::Time connect_deadline = absl::Now() + absl::GetFlag(FLAGS_connect_timeout);
  for (int i = 0; i < hosts; ++i) {
    streams.push_back(std::make_unique<HostStream>(i, vms, &stats));
    streams.back()->Start(stubs[static_cast<size_t>(i / per_channel)].get());
    // Ramp: at most ~2000 new streams per second.
    if (i % 200 == 199) absl::SleepFor(absl::Milliseconds(100));
  }
  while (stats.welcomed.load() < static_cast<uint64_t>(hosts) && absl::Now() < connect_deadline &&
         stats.failed.load() == 0) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  if (stats.welcomed.load() < static_cast<uint64_t>(hosts)) {
    std::printf("  only %llu of %d streams were welcomed before the deadline\n",
                static_cast<unsigned long long>(stats.welcomed.load()), hosts);
  }

  // The pacer: host i reports at start + k*interval + i*interval/N.
  const absl::Duration interval = absl::GetFlag(FLAGS_interval);
  const absl::Time start = absl::Now();
  const absl::Time measure_from = start + absl::GetFlag(FLAGS_warmup);
  const absl::Time measure_to = measure_from + absl::GetFlag(FLAGS_duration);
  std::atomic<uint64_t> late{0};
  std::unique_ptr<AdminLoad> admin;
  std::vector<std::string> admin_notes;
  const absl::Duration segment = absl::GetFlag(FLAGS_admin_segment);
  if (admin_load) {
    stats.segment = segment;
    stats.measure_from = measure_from;
  }
  double cpu_from = 0;
  std::thread pacer([&] {
    int64_t round = 0;
    int next = 0;
    bool started_measuring = false;
    while (true) {
      const absl::Time now = absl::Now();
      if (now >= measure_to) break;
      if (!started_measuring && now >= measure_from) {
        started_measuring = true;
        cpu_from = CpuSeconds(pid);
        stats.measuring = true;
      }
      if (admin_load && started_measuring) {
        // Odd segments under admin load, even ones quiet.
        const bool want = ((now - measure_from) / segment) % 2 == 1;
        if (want && !admin) {
          admin = std::make_unique<AdminLoad>(port, metrics_port, hosts);
        } else if (!want && admin) {
          admin->Stop();
          admin_notes.push_back(admin->Summary());
          admin.reset();
        }
      }
      while (true) {
        const absl::Time due = start + interval * round + interval * next / hosts;
        if (due > now) break;
        if (now - due > absl::Milliseconds(100) && started_measuring) late.fetch_add(1);
        streams[static_cast<size_t>(next)]->Tick(now);
        if (++next == hosts) {
          next = 0;
          ++round;
        }
      }
      absl::SleepFor(absl::Milliseconds(1));
    }
  });
  pacer.join();
  stats.measuring = false;
  const double cpu = CpuSeconds(pid) - cpu_from;
  if (admin) {
    admin->Stop();
    admin_notes.push_back(admin->Summary());
  }
  for (const std::string& note : admin_notes) {
    absl::StrAppend(&result.admin_note, result.admin_note.empty() ? "" : "\n                ",
                    note);
  }
  const double seconds = absl::ToDoubleSeconds(absl::GetFlag(FLAGS_duration));
  result.ran = true;
  result.rss_bytes = RssBytes(pid);
  result.rss_per_vm_bytes =
      static_cast<double>(result.rss_bytes > idle_rss ? result.rss_bytes - idle_rss : 0) /
      (static_cast<double>(hosts) * vms);
  result.offered_per_second = static_cast<double>(hosts) / absl::ToDoubleSeconds(interval);
  result.reports_per_second = static_cast<double>(stats.written.load()) / seconds;
  result.answered_per_second = static_cast<double>(stats.answered.load()) / seconds;
  result.cpu_per_report_ms =
      stats.written.load() ? cpu * 1000.0 / static_cast<double>(stats.written.load()) : 0;
  result.answered_share =
      stats.written.load() ? static_cast<double>(stats.answered.load()) / stats.written.load() : 0;
  result.skipped = stats.skipped.load();
  result.failed = stats.failed.load();
  {
    absl::MutexLock lock(&stats.mu);
    result.p50 = Percentile(stats.latencies_ms, 50);
    result.p99 = Percentile(stats.latencies_ms, 99);
    result.p999 = Percentile(stats.latencies_ms, 99.9);
    result.quiet_p99 = Percentile(stats.quiet_ms, 99);
    result.admin_p99 = Percentile(stats.admin_ms, 99);
    result.quiet_n = stats.quiet_ms.size();
    result.admin_n = stats.admin_ms.size();
    if (!stats.first_error.empty())
      std::printf("  first stream error: %s\n", stats.first_error.c_str());
  }
  if (late.load() > 0) {
    std::printf("  the generator was >100 ms late for %llu reports (it shares the cores)\n",
                static_cast<unsigned long long>(late.load()));
  }
  for (auto& s : streams) s->Stop();
  for (auto& s : streams) s->WaitDone(absl::Seconds(10));
  return result;
}

void PrintRun(const char* what, const RunResult& r) {
  std::printf(
      "  %-13s offered %6.0f, written %6.0f, answered %6.0f reports/s  p50 %7.2f  p99 %7.2f  "
      "p99.9 %7.2f ms  answered %3.0f%%  cpu %.3f ms/report  rss %.0f MiB (%.0f B/VM)  skipped "
      "%llu  failed %llu\n",
      what, r.offered_per_second, r.reports_per_second, r.answered_per_second, r.p50, r.p99, r.p999,
      r.answered_share * 100, r.cpu_per_report_ms, static_cast<double>(r.rss_bytes) / kMiB,
      r.rss_per_vm_bytes, static_cast<unsigned long long>(r.skipped),
      static_cast<unsigned long long>(r.failed));
  if (!r.admin_note.empty()) std::printf("  %-13s %s\n", "", r.admin_note.c_str());
  std::fflush(stdout);
}

int Main() {
  std::string work = absl::GetFlag(FLAGS_work_dir);
  if (work.empty()) {
    char tmpl[] = "/tmp/broker_load.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      std::perror("mkdtemp");
      return 1;
    }
    work = tmpl;
  }
  struct Row {
    int hosts, vms;
    RunResult echo, broker, admin;
  };
  std::vector<Row> rows;
  if (absl::GetFlag(FLAGS_churn_vms) > 1 && absl::GetFlag(FLAGS_broker)) {
    const std::string dir = absl::StrCat(work, "/state-churn");
    mkdir(dir.c_str(), 0755);
    testing::ChildProcess broker;
    auto ports =
        testing::StartBroker(broker, absl::GetFlag(FLAGS_broker_bin), dir,
                             absl::StrCat(dir, ".log"), absl::Seconds(30), {"--log-level=warn"});
    if (!ports.ok()) {
      std::fprintf(stderr, "broker_load: membroker: %s\n", ports.status().ToString().c_str());
      return 1;
    }
    std::printf("== one host adds %d VMs in one report, then removes them\n",
                absl::GetFlag(FLAGS_churn_vms));
    RunChurn(ports->grpc, broker.pid(), absl::GetFlag(FLAGS_churn_vms));
    broker.Stop();
  }
  for (absl::string_view size :
       absl::StrSplit(absl::GetFlag(FLAGS_sizes), ',', absl::SkipEmpty())) {
    std::vector<std::string> nm = absl::StrSplit(size, 'x');
    Row row{};
    if (nm.size() != 2 || !absl::SimpleAtoi(nm[0], &row.hosts) ||
        !absl::SimpleAtoi(nm[1], &row.vms) || row.hosts <= 0 || row.vms <= 0) {
      std::fprintf(stderr, "broker_load: --sizes: \"%s\" is not HOSTSxVMS\n",
                   std::string(size).c_str());
      return 2;
    }
    const absl::Duration interval = absl::GetFlag(FLAGS_interval);
    std::printf("== %d hosts x %d VMs, one report per host every %s: %.0f reports/s offered%s\n",
                row.hosts, row.vms, absl::FormatDuration(interval).c_str(),
                row.hosts / absl::ToDoubleSeconds(interval),
                interval == absl::Seconds(1)
                    ? ""
                    : " (NOT the fleet goal's one report per host per second)");
    std::fflush(stdout);
    const std::string tag = absl::StrCat(row.hosts, "x", row.vms);
    if (absl::GetFlag(FLAGS_echo)) {
      testing::ChildProcess echo;
      if (!echo.Start({absl::GetFlag(FLAGS_echo_bin), "--listen=127.0.0.1:0"},
                      absl::StrCat(work, "/echo-", tag, ".log"))
               .ok()) {
        return 1;
      }
      auto port = echo.WaitForLog("grpc port ([0-9]+)", absl::Seconds(20));
      if (!port.ok()) {
        std::fprintf(stderr, "broker_load: echo server: %s\n", port.status().ToString().c_str());
        return 1;
      }
      row.echo = RunLoad(std::stoi(*port), 0, echo.pid(), row.hosts, row.vms, false);
      PrintRun("echo", row.echo);
      echo.Stop();
    }
    for (int mode = 0; mode < 2; ++mode) {
      if (!absl::GetFlag(FLAGS_broker)) break;
      if (mode == 1 && !absl::GetFlag(FLAGS_admin_load)) break;
      const std::string dir = absl::StrCat(work, "/state-", tag, "-", mode);
      mkdir(dir.c_str(), 0755);
      testing::ChildProcess broker;
      // Every stream comes from this one process, one address: the
      // per-peer stream cap (64 by default) must admit them all.
      auto ports = testing::StartBroker(
          broker, absl::GetFlag(FLAGS_broker_bin), dir, absl::StrCat(dir, ".log"),
          absl::Seconds(30),
          {"--log-level=warn", absl::StrCat("--max-streams-per-peer=", row.hosts + 64)});
      if (!ports.ok()) {
        std::fprintf(stderr, "broker_load: membroker: %s\n", ports.status().ToString().c_str());
        return 1;
      }
      RunResult r =
          RunLoad(ports->grpc, ports->metrics, broker.pid(), row.hosts, row.vms, mode == 1);
      PrintRun(mode == 0 ? "broker" : "broker+admin", r);
      (mode == 0 ? row.broker : row.admin) = r;
      broker.Stop();
    }
    rows.push_back(row);
  }

  std::printf("\nmachine: %ld cores; interval %s, measured %s after %s warm-up\n",
              sysconf(_SC_NPROCESSORS_ONLN),
              absl::FormatDuration(absl::GetFlag(FLAGS_interval)).c_str(),
              absl::FormatDuration(absl::GetFlag(FLAGS_duration)).c_str(),
              absl::FormatDuration(absl::GetFlag(FLAGS_warmup)).c_str());
  std::printf(
      "| hosts x VMs | interval | offered rep/s | echo rep/s | broker rep/s | ratio | echo "
      "p50/p99/p99.9 ms | broker "
      "p50/p99/p99.9 ms | echo / broker CPU ms/report | cpu ratio | broker B/VM | p99 with admin "
      "load |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    const double ratio = r.echo.reports_per_second > 0
                             ? r.broker.reports_per_second / r.echo.reports_per_second
                             : NAN;
    const double cpu_ratio = r.broker.cpu_per_report_ms > 0
                                 ? r.echo.cpu_per_report_ms / r.broker.cpu_per_report_ms
                                 : NAN;
    std::string admin = "-";
    if (r.admin.ran) {
      // Side by side in one broker process: reports written under admin
      // load against those written in the quiet segments between.
      admin =
          absl::StrFormat("%.2f vs %.2f ms quiet (%+.0f%%; %zu / %zu reports)", r.admin.admin_p99,
                          r.admin.quiet_p99, (r.admin.admin_p99 / r.admin.quiet_p99 - 1) * 100,
                          r.admin.admin_n, r.admin.quiet_n);
    }
    // A run that did not happen (--echo=false) shows "-", not zeros.
    auto f = [](bool ran, int decimals, double v) {
      return ran ? absl::StrFormat("%.*f", decimals, v) : std::string("-");
    };
    const bool both = r.echo.ran && r.broker.ran;
    std::printf(
        "| %d x %d | %s | %.0f | %s | %s | %s | %s / %s / %s | %s / %s / %s | %s / %s | "
        "%s | %s | %s |\n",
        r.hosts, r.vms, absl::FormatDuration(absl::GetFlag(FLAGS_interval)).c_str(),
        r.hosts / absl::ToDoubleSeconds(absl::GetFlag(FLAGS_interval)),
        f(r.echo.ran, 0, r.echo.reports_per_second).c_str(),
        f(r.broker.ran, 0, r.broker.reports_per_second).c_str(), f(both, 2, ratio).c_str(),
        f(r.echo.ran, 2, r.echo.p50).c_str(), f(r.echo.ran, 2, r.echo.p99).c_str(),
        f(r.echo.ran, 2, r.echo.p999).c_str(), f(r.broker.ran, 2, r.broker.p50).c_str(),
        f(r.broker.ran, 2, r.broker.p99).c_str(), f(r.broker.ran, 2, r.broker.p999).c_str(),
        f(r.echo.ran, 3, r.echo.cpu_per_report_ms).c_str(),
        f(r.broker.ran, 3, r.broker.cpu_per_report_ms).c_str(), f(both, 2, cpu_ratio).c_str(),
        f(r.broker.ran, 0, r.broker.rss_per_vm_bytes).c_str(), admin.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace membroker::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return membroker::bench::Main();
}
