// mb_echo_server: the ceiling for bench/broker_load. A bare gRPC server of
// the broker's own AgentService.Connect that decides nothing: it answers a
// Hello with a Welcome and every report with a TargetSet of the same shape
// the broker sends (one target per reported VM, target = the VM's actual
// size, the report's sequence), through the broker's own queued stream
// writer. Same protocol, same message sizes, same stream count: what is
// left between this and membroker is the broker's own work.
//
// Usage: mb_echo_server --listen=127.0.0.1:0
// Prints "echo listening on grpc port N" once serving; stops on SIGTERM.

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/clock.h"
#include "broker/stream_writer.h"
#include "membroker/v1/agent.grpc.pb.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0", "gRPC address HOST:PORT");

namespace membroker::bench {
namespace {

namespace v1 = ::membroker::v1;

// One agent stream: read, answer, read again. Thread-safe through the
// writer; the read chain is serial.
class EchoStream final : public grpc::ServerBidiReactor<v1::AgentMessage, v1::BrokerMessage> {
 public:
  EchoStream()
      : writer_({[this](const v1::BrokerMessage* m) { StartWrite(m); },
                 [this](const grpc::Status& s) { Finish(s); },
                 [](const v1::BrokerMessage& last, const v1::BrokerMessage& incoming) {
                   return last.has_targets() && incoming.has_targets();
                 }},
                16) {
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      writer_.FinishOnce(grpc::Status::OK);
      return;
    }
    v1::BrokerMessage out;
    if (in_.has_hello()) {
      out.mutable_welcome()->mutable_report_interval()->set_seconds(1);
      out.mutable_welcome()->set_broker_version("echo");
      writer_.Enqueue(std::move(out));
    } else if (in_.has_report()) {
      const v1::HostReport& r = in_.report();
      v1::TargetSet* ts = out.mutable_targets();
      ts->set_generation(++generation_);
      ts->set_report_sequence(r.sequence());
      const int64_t now_ns = absl::GetCurrentTimeNanos();
      ts->mutable_decided_at()->set_seconds(now_ns / 1000000000);
      ts->mutable_decided_at()->set_nanos(static_cast<int32_t>(now_ns % 1000000000));
      ts->mutable_targets()->Reserve(r.vms_size());
      for (const v1::VmSample& vm : r.vms()) {
        v1::VmTarget* t = ts->add_targets();
        t->set_vm_id(vm.vm_id());
        t->set_target_bytes(vm.actual_bytes());
        t->set_reason(v1::REASON_DEMAND);
      }
      writer_.Enqueue(std::move(out));
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override { writer_.OnWriteDone(ok); }
  void OnCancel() override { writer_.FinishOnce(grpc::Status::CANCELLED); }
  void OnDone() override { delete this; }

 private:
  membroker::broker::QueuedStreamWriter<v1::BrokerMessage> writer_;
  v1::AgentMessage in_;
  uint64_t generation_ = 0;  // read chain only
};

class EchoService final : public v1::AgentService::CallbackService {
 public:
  grpc::ServerBidiReactor<v1::AgentMessage, v1::BrokerMessage>* Connect(
      grpc::CallbackServerContext*) override {
    return new EchoStream();
  }
};

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

}  // namespace
}  // namespace membroker::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  membroker::bench::EchoService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  // The broker's channel settings, so both servers treat streams alike.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "mb_echo_server: cannot listen on %s\n",
                 absl::GetFlag(FLAGS_listen).c_str());
    return 1;
  }
  std::signal(SIGINT, membroker::bench::OnSignal);
  std::signal(SIGTERM, membroker::bench::OnSignal);
  std::printf("echo listening on grpc port %d\n", port);
  std::fflush(stdout);
  while (!membroker::bench::g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
