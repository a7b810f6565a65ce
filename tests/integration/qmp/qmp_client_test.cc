// The QMP client against an in-process fake QMP peer on a unix socket.

#include "node-agent/hypervisor/qmp_client.h"

#include <stdlib.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/qmp/fake_qmp_server.h"
#include "tests/util/wait.h"

namespace membroker::agent {
namespace {

using ::membroker::agent::testing::FakeQmpServer;
using ::membroker::agent::testing::FakeVmState;
using ::membroker::agent::testing::kDropConnection;
using ::testing::HasSubstr;

class QmpClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mb-qmp-client-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    server_ = std::make_unique<FakeQmpServer>(dir_ + "/vm.sock");
  }
  void TearDown() override {
    server_.reset();
    ::rmdir(dir_.c_str());
  }
  QmpClientOptions FastOptions() {
    QmpClientOptions o;
    o.io_timeout = absl::Milliseconds(500);
    return o;
  }

  std::string dir_;
  std::unique_ptr<FakeQmpServer> server_;
};

TEST_F(QmpClientTest, GreetsNegotiatesAndExecutes) {
  ASSERT_TRUE(server_->Start());
  QmpClient client(RealClock::Get(), FastOptions());
  ASSERT_TRUE(client.Connect(server_->path()).ok());
  EXPECT_TRUE(client.connected());
  auto reply = client.Execute("query-balloon");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->struct_value().fields().at("actual").number_value(), 512.0 * (1 << 20));
  auto commands = server_->commands();
  ASSERT_EQ(commands.size(), 2u);
  EXPECT_EQ(commands[0], "qmp_capabilities");
  EXPECT_EQ(commands[1], "query-balloon");
}

TEST_F(QmpClientTest, SendsArgumentsAsJson) {
  ASSERT_TRUE(server_->Start());
  QmpClient client(RealClock::Get(), FastOptions());
  ASSERT_TRUE(client.Connect(server_->path()).ok());
  google::protobuf::Struct args;
  (*args.mutable_fields())["value"].set_number_value(268435456);
  ASSERT_TRUE(client.Execute("balloon", &args).ok());
  EXPECT_EQ(server_->state().actual, 268435456u);
  // Integral byte counts must go out as JSON integers, not in exponent form.
  EXPECT_THAT(server_->requests().back(), HasSubstr("268435456"));
}

TEST_F(QmpClientTest, EventsBetweenRepliesAreSkippedAndHandedOver) {
  ASSERT_TRUE(server_->Start());
  server_->set_override([](const std::string& cmd, const google::protobuf::Struct&)
                            -> std::optional<std::vector<std::string>> {
    if (cmd != "query-balloon") return std::nullopt;
    return std::vector<std::string>{
        R"({"event": "BALLOON_CHANGE", "data": {"actual": 1000}, "timestamp": {}})",
        R"({"event": "RTC_CHANGE", "data": {"offset": 1}})",
        R"({"event": "BALLOON_CHANGE", "data": {"actual": 2000}})",
        R"({"return": {"actual": 2000}, "id": "$ID"})"};
  });
  QmpClient client(RealClock::Get(), FastOptions());
  std::vector<std::string> events;
  client.set_event_handler([&](const google::protobuf::Struct& e) {
    events.push_back(e.fields().at("event").string_value());
  });
  ASSERT_TRUE(client.Connect(server_->path()).ok());
  auto reply = client.Execute("query-balloon");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->struct_value().fields().at("actual").number_value(), 2000);
  EXPECT_EQ(events, (std::vector<std::string>{"BALLOON_CHANGE", "RTC_CHANGE", "BALLOON_CHANGE"}));
}

TEST_F(QmpClientTest, StaleReplyWithAnotherIdIsSkipped) {
  ASSERT_TRUE(server_->Start());
  server_->set_override([](const std::string& cmd, const google::protobuf::Struct&)
                            -> std::optional<std::vector<std::string>> {
    if (cmd != "query-name") return std::nullopt;
    return std::vector<std::string>{R"({"return": {"name": "old"}, "id": "mb-999"})",
                                    R"({"return": {"name": "new"}, "id": "$ID"})"};
  });
  QmpClient client(RealClock::Get(), FastOptions());
  ASSERT_TRUE(client.Connect(server_->path()).ok());
  auto reply = client.Execute("query-name");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->struct_value().fields().at("name").string_value(), "new");
}

TEST_F(QmpClientTest, ErrorReplyIsAStatusAndKeepsTheConnection) {
  ASSERT_TRUE(server_->Start());
  QmpClient client(RealClock::Get(), FastOptions());
  ASSERT_TRUE(client.Connect(server_->path()).ok());
  auto reply = client.Execute("no-such-command");
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(reply.status().message()), HasSubstr("CommandNotFound"));
  google::protobuf::Struct args;
  (*args.mutable_fields())["path"].set_string_value("/nowhere");
  (*args.mutable_fields())["property"].set_string_value("x");
  EXPECT_EQ(client.Execute("qom-get", &args).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(client.connected());
  EXPECT_TRUE(client.Execute("query-balloon").ok());
}

TEST_F(QmpClientTest, ErrorObjectOfTheWrongShapeIsStillAnError) {
  ASSERT_TRUE(server_->Start());
  server_->set_override([](const std::string& cmd, const google::protobuf::Struct&)
                            -> std::optional<std::vector<std::string>> {
    if (cmd != "query-balloon") return std::nullopt;
    return std::vector<std::string>{R"({"error": [1, 2, 3], "id": "$ID"})"};
  });
  QmpClient client(RealClock::Get(), FastOptions());
  ASSERT_TRUE(client.Connect(server_->path()).ok());
  auto reply = client.Execute("query-balloon");
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(reply.status().message()), HasSubstr("unknown"));
}

TEST_F(QmpClientTest, MalformedJsonIsDataLossAndCloses) {
  ASSERT_TRUE(server_->Start());
  server_->set_override([](const std::string& cmd, const google::protobuf::Struct&)
                            -> std::optional<std::vector<std::string>> {
    if (cmd != "query-balloon") return std::nullopt;
    return std::vector<std::string>{R"({"return": {"actual": 12)"};
  });
  QmpClient client(RealClock::Get(), FastOptions());
  ASSERT_TRUE(client.Connect(server_->path()).ok());
  EXPECT_EQ(client.Execute("query-balloon").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(client.connected());
  EXPECT_EQ(client.Execute("query-balloon").status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(QmpClientTest, NonObjectJsonIsRejected) {
  for (const char* text : {"[1,2]", "42", "\"str\"", "null", "{\"a\":", "{\"a\": nan}"}) {
    EXPECT_FALSE(ParseQmpJson(text).ok()) << text;
  }
  EXPECT_TRUE(ParseQmpJson(R"({"a": [1, {"b": null}], "c": -1.5})").ok());
}

TEST_F(QmpClientTest, DeeplyNestedJsonIsAnErrorNotACrash) {
  std::string deep(100000, '[');
  deep = absl::StrCat("{\"a\": ", deep);
  EXPECT_FALSE(ParseQmpJson(deep).ok());
}

TEST_F(QmpClientTest, ReplyWithNeitherReturnNorErrorIsDataLoss) {
  ASSERT_TRUE(server_->Start());
  server_->set_override([](const std::string& cmd, const google::protobuf::Struct&)
                            -> std::optional<std::vector<std::string>> {
    if (cmd != "query-balloon") return std::nullopt;
    return std::vector<std::string>{R"({"id": "$ID", "something": 1})"};
  });
  QmpClient client(RealClock::Get(), FastOptions());
  ASSERT_TRUE(client.Connect(server_->path()).ok());
  EXPECT_EQ(client.Execute("query-balloon").status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(QmpClientTest, HugeReplyIsRejectedAndCloses) {
  ASSERT_TRUE(server_->Start());
  server_->set_override([](const std::string& cmd, const google::protobuf::Struct&)
                            -> std::optional<std::vector<std::string>> {
    if (cmd != "query-name") return std::nullopt;
    return std::vector<std::string>{
        absl::StrCat(R"({"return": {"name": ")", std::string(3 << 20, 'x'), R"("}})")};
  });
  QmpClientOptions options = FastOptions();
  options.io_timeout = absl::Seconds(5);
  QmpClient client(RealClock::Get(), options);
  ASSERT_TRUE(client.Connect(server_->path()).ok());
  auto reply = client.Execute("query-name");
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kDataLoss) << reply.status();
  EXPECT_THAT(std::string(reply.status().message()), HasSubstr("exceeds"));
  EXPECT_FALSE(client.connected());
}

TEST_F(QmpClientTest, DroppedConnectionIsUnavailable) {
  ASSERT_TRUE(server_->Start());
  server_->set_override([](const std::string& cmd, const google::protobuf::Struct&)
                            -> std::optional<std::vector<std::string>> {
    if (cmd != "query-balloon") return std::nullopt;
    return std::vector<std::string>{kDropConnection};
  });
  QmpClient client(RealClock::Get(), FastOptions());
  ASSERT_TRUE(client.Connect(server_->path()).ok());
  auto reply = client.Execute("query-balloon");
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnavailable) << reply.status();
  EXPECT_FALSE(client.connected());
  // The server accepts again: a new Connect works.
  server_->set_override(nullptr);
  ASSERT_TRUE(client.Connect(server_->path()).ok());
  EXPECT_TRUE(client.Execute("query-balloon").ok());
}

TEST_F(QmpClientTest, SilentPeerTimesOut) {
  FakeVmState state;
  state.send_greeting = false;
  server_->set_state(state);
  ASSERT_TRUE(server_->Start());
  QmpClientOptions options = FastOptions();
  options.io_timeout = absl::Milliseconds(100);
  QmpClient client(RealClock::Get(), options);
  absl::Status status = client.Connect(server_->path());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_FALSE(client.connected());
}

TEST_F(QmpClientTest, WrongGreetingIsDataLoss) {
  FakeVmState state;
  state.greeting = R"({"hello": "not qmp"})";
  server_->set_state(state);
  ASSERT_TRUE(server_->Start());
  QmpClient client(RealClock::Get(), FastOptions());
  EXPECT_EQ(client.Connect(server_->path()).code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(client.connected());
}

TEST_F(QmpClientTest, MissingSocketAndBadPath) {
  QmpClient client(RealClock::Get(), FastOptions());
  EXPECT_EQ(client.Connect(dir_ + "/absent.sock").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client.Connect(std::string(200, 'a')).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client.Connect("").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client.Execute("query-balloon").status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(QmpClientTest, PollEventsDrainsWithoutBlocking) {
  ASSERT_TRUE(server_->Start());
  server_->set_override([](const std::string& cmd, const google::protobuf::Struct&)
                            -> std::optional<std::vector<std::string>> {
    if (cmd != "query-name") return std::nullopt;
    // The reply comes first, then two events that stay on the socket.
    return std::vector<std::string>{R"({"return": {"name": "x"}, "id": "$ID"})",
                                    R"({"event": "BALLOON_CHANGE", "data": {"actual": 5}})",
                                    R"({"event": "BALLOON_CHANGE", "data": {"actual": 6}})"};
  });
  QmpClient client(RealClock::Get(), FastOptions());
  int events = 0;
  client.set_event_handler([&](const google::protobuf::Struct&) { ++events; });
  ASSERT_TRUE(client.Connect(server_->path()).ok());
  ASSERT_TRUE(client.Execute("query-name").ok());
  // The events were sent right after the reply; poll until both arrived.
  EXPECT_TRUE(membroker::testing::WaitUntil(
      [&] {
        EXPECT_TRUE(client.PollEvents().ok());
        return events >= 2;
      },
      absl::Seconds(5), absl::Milliseconds(10)));
  EXPECT_EQ(events, 2);
  EXPECT_TRUE(client.connected());
}

}  // namespace
}  // namespace membroker::agent
