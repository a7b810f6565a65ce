#include "client/args.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/units.h"

namespace membroker::client {
namespace {

const FlagSpec kHostFilter{"host", "HOST", "only this host"};
const FlagSpec kWatch{"watch", "true|false", "print the list, then only changes (until Ctrl-C)"};
#define WATCH_HELP                                                                          \
  "With --watch: the list, then, as they happen, only what changed (and what\n"          \
  "is gone); guest statistics alone are not a change. With -o json|yaml, one\n"          \
  "event per document. A watcher that falls too far behind is ended by the\n"           \
  "broker with RESOURCE_EXHAUSTED; run it again for a fresh list.\n\n"

std::vector<CommandSpec> BuildCommands() {
  std::vector<CommandSpec> c;
  c.push_back({{"get", "hosts"},
               {},
               {kWatch},
               "List hosts with their memory totals.",
               "Columns: HOST CONNECTED VMS CAPACITY TARGET ACTUAL FLOOR DEMAND PRESSURE\n"
               "OVERCOMMITTED (-o wide adds BACKEND VERSION RESERVED MEM_AVAILABLE\n"
               "GENERATION ACKED).\n\n" WATCH_HELP
               "Example:\n  membrokerctl --insecure get hosts -o wide\n"});
  c.push_back({{"get", "vms"},
               {},
               {kHostFilter, kWatch},
               "List VMs and their balloon targets.",
               "Columns: HOST NAME MAX ACTUAL TARGET DEMAND FLOOR HEALTH REASON\n"
               "(-o wide adds VM_ID WEIGHT GUEST_USED SWAP_IN/s).\n\n" WATCH_HELP
               "Examples:\n"
               "  membrokerctl --insecure get vms\n"
               "  membrokerctl --insecure get vms --watch\n"
               "  membrokerctl --insecure get vms --host=kvm-01 -o json\n"});
  c.push_back({{"describe", "host"},
               {"HOST"},
               {},
               "Show everything known about one host.",
               "Example:\n  membrokerctl --insecure describe host kvm-01\n"});
  c.push_back({{"describe", "vm"},
               {"VM"},
               {},
               "Show everything known about one VM.",
               "VM is the VM's id (UUID) or its name; a name used on two hosts needs the id.\n\n"
               "Example:\n  membrokerctl --insecure describe vm web-1\n"});
  c.push_back(
      {{"explain", "vm"},
       {"VM"},
       {},
       "Explain, in numbers, why a VM has its target.",
       "Prints capacity, floors, demand, desired size, share and target, then the\n"
       "decision's steps in order.\n\nExample:\n  membrokerctl --insecure explain vm web-1\n"});
  c.push_back({{"set", "vm"},
               {"VM"},
               {{"min", "SIZE", "floor: never balloon below this"},
                {"max", "SIZE", "ceiling: never give more than this"},
                {"weight", "N", "share weight under contention, 1..10000"},
                {"pinned", "true|false", "keep the VM at its max, never reclaim"}},
               "Set a VM's policy; only the given fields change.",
               "At least one of --min, --max, --weight, --pinned is required. Fields not\n"
               "given keep their stored value. A policy may be set by id for a VM not\n"
               "seen yet.\n\nExamples:\n"
               "  membrokerctl --insecure set vm web-1 --min=1GiB --weight=200\n"
               "  membrokerctl --insecure set vm db-1 --pinned=true\n"});
  c.push_back({{"unset", "vm"},
               {"VM"},
               {},
               "Clear a VM's policy (back to cluster defaults).",
               "Example:\n  membrokerctl --insecure unset vm web-1\n"});
  c.push_back({{"policy", "get"},
               {},
               {},
               "Show the cluster policy.",
               "Example:\n  membrokerctl --insecure policy get -o yaml\n"});
  c.push_back({{"policy", "set"},
               {},
               {{"buffer-percent", "P", "desired = demand * (1 + P/100), 0..1000"},
                {"host-free-margin", "SIZE", "memory left unassigned on each host"},
                {"reclaim-step", "SIZE", "most taken from one VM per interval"},
                {"hysteresis", "SIZE", "ignore target changes smaller than this"},
                {"idle-tax-percent", "P", "idle memory tax, 0..99"},
                {"default-min", "SIZE", "floor for VMs without a min"},
                {"default-weight", "N", "weight for VMs without a weight, 1..10000"},
                {"protect-margin-percent", "P", "protect floor = used * (1 + P/100), 0..1000"},
                {"report-interval", "DURATION", "how often agents report, e.g. 1s"},
                {"surplus-percent", "P", "share of spare memory given back to VMs, 0..100"},
                {"hysteresis-percent", "P", "also ignore changes under P% of the target, 0..50"},
                {"protect-margin-max", "SIZE", "cap on the protect margin (0: none)"}},
               "Change the cluster policy; only the given fields change.",
               "At least one flag is required.\n\nExample:\n"
               "  membrokerctl --insecure policy set --buffer-percent=25 --reclaim-step=256MiB\n"});
  c.push_back({{"reserve"},
               {},
               {{"host", "HOST", "the host to make room on (required)"},
                {"bytes", "SIZE", "how much room, e.g. 4GiB (required)"},
                {"wait", "DURATION", "how long the broker may take to make room"},
                {"ttl", "DURATION", "how long the reservation lasts (default 10m, at most 24h)"},
                {"for-vm", "VM_ID", "hand the reservation to this VM (UUID) when it starts"}},
               "Make room on a host for a VM about to start.",
               "The broker reclaims memory on the host within policy (floors and step\n"
               "limits hold) until its report shows the room free. With --wait the call\n"
               "answers then, or fails at the deadline: FAILED_PRECONDITION when floors,\n"
               "pinned VMs or stuck balloons leave too little (naming them),\n"
               "DEADLINE_EXCEEDED naming the balloons still moving. Without --wait it\n"
               "answers at once (READY says whether the room is free yet). Prints the\n"
               "reservation id; it ends with `membrokerctl release ID`, at its --ttl, or\n"
               "when the VM named by --for-vm appears on the host (its memory then counts\n"
               "as that VM's). The call's deadline is --timeout plus --wait.\n\nExample:\n"
               "  membrokerctl --insecure reserve --host=kvm-01 --bytes=8GiB --wait=30s\n"});
  c.push_back({{"get", "reservations"},
               {},
               {kHostFilter},
               "List active reservations.",
               "Columns: ID HOST SIZE READY FOR_VM CREATED EXPIRES.\n\nExample:\n"
               "  membrokerctl --insecure get reservations --host=kvm-01\n"});
  c.push_back({{"release"},
               {"ID"},
               {},
               "Release a reservation.",
               "Example:\n  membrokerctl --insecure release r-42\n"});
  c.push_back({{"plan"},
               {},
               {},
               "Show the cross-host rebalance plan.",
               "VM moves that restore hosts whose VMs need more than the host holds\n"
               "(floors or demand above capacity - free margin), few moves of small,\n"
               "low-weight VMs first, never onto a host they would make short. Advice\n"
               "only: migrate with `virsh migrate --live` (see README).\n"
               "Columns: VM FROM TO SIZE REASON (-o wide adds VM_ID), then the hosts\n"
               "short before and after the moves.\n\nExample:\n"
               "  membrokerctl --insecure plan\n"});
  c.push_back({{"place"},
               {},
               {{"bytes", "SIZE", "size of the VM to place, e.g. 8GiB (required)"},
                {"count", "N", "how many such VMs, 1..10000 (default 1)"}},
               "Show the hosts that could take a new VM, best first.",
               "A host qualifies when the VM fits now or after reclaim within policy\n"
               "(floors, operator mins, pinned VMs and stuck balloons hold; step limits\n"
               "only delay). Best first: hosts where no VM is pushed below its demand,\n"
               "then least reclaim, then most room left. Nothing is reserved.\n"
               "Columns: HOST FREE RECLAIM HEADROOM; with --count, where each VM goes.\n\n"
               "Examples:\n"
               "  membrokerctl --insecure place --bytes=8GiB\n"
               "  membrokerctl --insecure place --bytes=4GiB --count=10 -o json\n"});
  c.push_back({{"history"},
               {},
               {{"vm", "VM", "only changes of this VM (id or name), or \"cluster\""},
                {"limit", "N", "the newest N changes (default 100, at most 10000)"}},
               "Show the audit trail of accepted policy changes.",
               "Columns: ID TIME ACTOR ACTION TARGET CHANGES. ACTOR is the caller's\n"
               "certificate identity (\"insecure\" without TLS); CHANGES lists each\n"
               "changed field as OLD -> NEW. Oldest first.\n\nExample:\n"
               "  membrokerctl history --vm=web-1 --limit=20\n"});
  c.push_back({{"top"},
               {},
               {kHostFilter,
                {"interval", "DURATION", "refresh period (default 1s)"},
                {"iterations", "N", "stop after N refreshes (default: until Ctrl-C)"}},
               "Live view of hosts and VMs.",
               "On a terminal the screen is redrawn every interval; otherwise a plain\n"
               "timestamped table is printed every interval. Supports -o table|wide.\n\n"
               "Example:\n  membrokerctl --insecure top --interval=2s\n"});
  c.push_back({{"version"}, {}, {}, "Print the membrokerctl version.", ""});
  return c;
}

// Resource words accept singular and plural: the canonical word per verb.
std::string Canonical(const std::string& verb, const std::string& word) {
  if (verb == "get") {
    if (word == "host") return "hosts";
    if (word == "vm") return "vms";
    if (word == "reservation") return "reservations";
  } else if (verb == "describe" || verb == "explain" || verb == "set" || verb == "unset") {
    if (word == "hosts") return "host";
    if (word == "vms") return "vm";
  }
  return word;
}

bool IsPrefix(const std::vector<std::string>& prefix, const std::vector<std::string>& path) {
  if (prefix.size() > path.size()) return false;
  return std::equal(prefix.begin(), prefix.end(), path.begin());
}

bool TakesValue(absl::string_view global_name) {
  return global_name == "server" || global_name == "tls-ca" || global_name == "tls-cert" ||
         global_name == "tls-key" || global_name == "output" || global_name == "timeout";
}

bool IsGlobal(absl::string_view name) {
  return TakesValue(name) || name == "insecure" || name == "help";
}

std::string FlagsHelp(const std::vector<FlagSpec>& flags) {
  std::string out;
  for (const FlagSpec& f : flags) {
    std::string left = absl::StrCat("  --", f.name, "=", f.value_name);
    out +=
        absl::StrCat(left, std::string(left.size() < 34 ? 34 - left.size() : 1, ' '), f.help, "\n");
  }
  return out;
}

const char kGlobalHelp[] =
    "Global flags (before or after the command):\n"
    "  --server=HOST:PORT              broker address (default $MEMBROKER_SERVER,\n"
    "                                  else 127.0.0.1:7070)\n"
    "  --tls-ca=FILE --tls-cert=FILE --tls-key=FILE\n"
    "                                  mutual TLS: the CA of the broker's certificate,\n"
    "                                  your certificate and key (also $MEMBROKER_TLS_CA,\n"
    "                                  $MEMBROKER_TLS_CERT, $MEMBROKER_TLS_KEY)\n"
    "  --insecure                      plaintext, unauthenticated (local demo only)\n"
    "  -o, --output=table|wide|json|yaml\n"
    "                                  output format (default table)\n"
    "  --timeout=DURATION              deadline of each call (default 5s)\n"
    "  -h, --help                      help for any command\n";

const char kExitHelp[] =
    "Exit codes: 0 ok, 1 error, 2 usage, 64 + gRPC code when a call fails\n"
    "(e.g. 69 NOT_FOUND, 67 INVALID_ARGUMENT, 78 UNAVAILABLE).\n";

}  // namespace

const std::vector<CommandSpec>& Commands() {
  static const std::vector<CommandSpec>* commands = new std::vector<CommandSpec>(BuildCommands());
  return *commands;
}

absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view text) {
  if (text == "table") return OutputFormat::kTable;
  if (text == "wide") return OutputFormat::kWide;
  if (text == "json") return OutputFormat::kJson;
  if (text == "yaml") return OutputFormat::kYaml;
  return absl::InvalidArgumentError(
      absl::StrCat("-o: unknown output format \"", text, "\" (use table, wide, json or yaml)"));
}

std::string HelpText(const std::vector<std::string>& path) {
  std::vector<const CommandSpec*> matches;
  for (const CommandSpec& c : Commands()) {
    if (IsPrefix(path, c.path)) matches.push_back(&c);
  }
  if (path.empty() || matches.empty()) {
    std::string out =
        "membrokerctl: operate the MemBroker memory broker.\n\n"
        "Usage: membrokerctl [GLOBAL FLAGS] COMMAND [ARGS] [FLAGS]\n\nCommands:\n";
    for (const CommandSpec& c : Commands()) {
      std::string left = absl::StrCat("  ", absl::StrJoin(c.path, " "));
      for (const std::string& o : c.operands) absl::StrAppend(&left, " ", o);
      out += absl::StrCat(left, std::string(left.size() < 24 ? 24 - left.size() : 1, ' '),
                          c.summary, "\n");
    }
    return absl::StrCat(out, "\n", kGlobalHelp, "\n", kExitHelp,
                        "\nRun 'membrokerctl COMMAND --help' for a command's flags.\n");
  }
  if (matches.size() == 1 && matches[0]->path == path) {
    const CommandSpec& c = *matches[0];
    std::string usage = absl::StrCat("Usage: membrokerctl ", absl::StrJoin(c.path, " "));
    for (const std::string& o : c.operands) absl::StrAppend(&usage, " ", o);
    if (!c.flags.empty()) absl::StrAppend(&usage, " [FLAGS]");
    std::string out = absl::StrCat(c.summary, "\n\n", usage, "\n");
    if (!c.flags.empty()) absl::StrAppend(&out, "\nFlags:\n", FlagsHelp(c.flags));
    if (!c.details.empty()) absl::StrAppend(&out, "\n", c.details);
    absl::StrAppend(&out, "\n", kGlobalHelp);
    return out;
  }
  std::string out = absl::StrCat("Commands of '", absl::StrJoin(path, " "), "':\n");
  for (const CommandSpec* c : matches) {
    std::string left = absl::StrCat("  ", absl::StrJoin(c->path, " "));
    for (const std::string& o : c->operands) absl::StrAppend(&left, " ", o);
    out += absl::StrCat(left, std::string(left.size() < 24 ? 24 - left.size() : 1, ' '), c->summary,
                        "\n");
  }
  return absl::StrCat(out, "\nRun 'membrokerctl COMMAND --help' for a command's flags.\n");
}

absl::StatusOr<Invocation> ParseArgs(const std::vector<std::string>& args,
                                     const std::map<std::string, std::string>& env) {
  Invocation inv;
  auto env_or = [&env](const char* name) -> std::string {
    auto it = env.find(name);
    return it == env.end() ? std::string() : it->second;
  };
  std::string server_env = env_or(kServerEnv);
  if (!server_env.empty()) inv.global.server = server_env;
  std::string flag_server, output_text, timeout_text;
  bool server_given = false, output_given = false, timeout_given = false;
  std::vector<std::string> words;
  std::vector<std::pair<std::string, std::string>> command_flags;
  bool flags_done = false;

  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (flags_done || arg.size() < 2 || arg[0] != '-') {
      words.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_done = true;
      continue;
    }
    std::string name, value;
    bool has_value = false;
    if (arg[1] != '-') {
      // Short flags: -h, -o VALUE, -oVALUE, -o=VALUE.
      if (arg == "-h") {
        name = "help";
      } else if (arg[1] == 'o') {
        name = "output";
        if (arg.size() > 2) {
          value = arg.substr(arg[2] == '=' ? 3 : 2);
          has_value = true;
        }
      } else {
        return absl::InvalidArgumentError(absl::StrCat("unknown flag ", arg));
      }
    } else {
      std::string body = arg.substr(2);
      size_t eq = body.find('=');
      name = body.substr(0, eq);
      if (eq != std::string::npos) {
        value = body.substr(eq + 1);
        has_value = true;
      }
      if (name.empty()) return absl::InvalidArgumentError(absl::StrCat("malformed flag ", arg));
    }
    const std::string shown = name == "output" ? "-o" : absl::StrCat("--", name);
    if (name == "help") {
      if (has_value) return absl::InvalidArgumentError("--help takes no value");
      inv.help = true;
      continue;
    }
    if (name == "insecure") {
      if (has_value && value != "true" && value != "false") {
        return absl::InvalidArgumentError("--insecure: value must be true or false");
      }
      inv.global.insecure = !has_value || value == "true";
      continue;
    }
    // --watch alone means --watch=true; every other flag takes a value.
    if (name == "watch" && !has_value) {
      value = "true";
      has_value = true;
    }
    if (!has_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat(shown, " needs a value"));
      }
      value = args[++i];
    }
    if (IsGlobal(name)) {
      if (name == "server") {
        flag_server = value;
        server_given = true;
      } else if (name == "output") {
        output_text = value;
        output_given = true;
      } else if (name == "timeout") {
        timeout_text = value;
        timeout_given = true;
      } else {
        if (value.empty()) return absl::InvalidArgumentError(absl::StrCat(shown, " is empty"));
        if (name == "tls-ca") inv.global.tls_ca = value;
        if (name == "tls-cert") inv.global.tls_cert = value;
        if (name == "tls-key") inv.global.tls_key = value;
      }
      continue;
    }
    command_flags.emplace_back(name, value);
  }

  // Select the command from the leading words.
  if (words.empty()) {
    if (inv.help) return inv;
    return absl::InvalidArgumentError("no command given (see 'membrokerctl --help')");
  }
  if (words[0] == "help") {
    inv.help = true;
    inv.help_path.assign(words.begin() + 1, words.end());
    if (inv.help_path.size() >= 2) inv.help_path[1] = Canonical(inv.help_path[0], inv.help_path[1]);
    return inv;
  }
  if (words.size() >= 2) words[1] = Canonical(words[0], words[1]);
  const CommandSpec* command = nullptr;
  for (const CommandSpec& c : Commands()) {
    if (IsPrefix(c.path, words)) {
      command = &c;
      break;
    }
  }
  if (command == nullptr) {
    bool verb_known = false;
    for (const CommandSpec& c : Commands()) verb_known |= c.path[0] == words[0];
    if (inv.help) {
      if (verb_known) inv.help_path = {words[0]};
      return inv;
    }
    if (verb_known) {
      if (words.size() == 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "'", words[0], "' needs a resource (see 'membrokerctl ", words[0], " --help')"));
      }
      return absl::InvalidArgumentError(absl::StrCat("unknown resource \"", words[1], "\" for '",
                                                     words[0], "' (see 'membrokerctl ", words[0],
                                                     " --help')"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("unknown command \"", words[0], "\" (see 'membrokerctl --help')"));
  }
  if (inv.help) {
    inv.help_path = command->path;
    return inv;
  }
  inv.command = command;
  const std::string cmd_name = absl::StrJoin(command->path, " ");
  std::vector<std::string> operands(words.begin() + command->path.size(), words.end());
  if (operands.size() < command->operands.size()) {
    return absl::InvalidArgumentError(absl::StrCat("'", cmd_name, "' needs ",
                                                   command->operands[operands.size()],
                                                   " (see 'membrokerctl ", cmd_name, " --help')"));
  }
  if (operands.size() > command->operands.size()) {
    return absl::InvalidArgumentError(absl::StrCat("'", cmd_name, "': unexpected argument \"",
                                                   operands[command->operands.size()], "\""));
  }
  for (size_t i = 0; i < operands.size(); ++i) {
    if (operands[i].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", cmd_name, "': ", command->operands[i], " must not be empty"));
    }
  }
  inv.operands = std::move(operands);
  for (const auto& [name, value] : command_flags) {
    bool known = false;
    for (const FlagSpec& f : command->flags) known |= f.name == name;
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " for '", cmd_name,
                                                     "' (see 'membrokerctl ", cmd_name,
                                                     " --help')"));
    }
    if (!inv.flags.emplace(name, value).second) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " given twice"));
    }
  }

  // Global values, validated once the command is known.
  if (server_given) inv.global.server = flag_server;
  if (absl::Status s = ValidateHostPort(inv.global.server); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(server_given ? "--server" : "$MEMBROKER_SERVER", ": ", s.message()));
  }
  if (output_given) {
    auto format = ParseOutputFormat(output_text);
    if (!format.ok()) return format.status();
    inv.global.output = *format;
  }
  if (timeout_given) {
    auto timeout = ParseDurationArg(timeout_text);
    if (!timeout.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--timeout: ", timeout.status().message()));
    }
    if (*timeout <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError("--timeout must be greater than 0");
    }
    inv.global.timeout = *timeout;
  }
  // Explicit TLS flags conflict with --insecure; TLS files from the
  // environment yield to an explicit --insecure.
  const bool tls_flags =
      !inv.global.tls_ca.empty() || !inv.global.tls_cert.empty() || !inv.global.tls_key.empty();
  if (tls_flags && inv.global.insecure) {
    return absl::InvalidArgumentError("--insecure conflicts with --tls-ca/--tls-cert/--tls-key");
  }
  if (!inv.global.insecure) {
    if (inv.global.tls_ca.empty()) inv.global.tls_ca = env_or(kTlsCaEnv);
    if (inv.global.tls_cert.empty()) inv.global.tls_cert = env_or(kTlsCertEnv);
    if (inv.global.tls_key.empty()) inv.global.tls_key = env_or(kTlsKeyEnv);
  }
  return inv;
}

absl::StatusOr<uint64_t> FlagBytes(const Invocation& inv, absl::string_view name, bool* present) {
  auto it = inv.flags.find(std::string(name));
  *present = it != inv.flags.end();
  if (!*present) return uint64_t{0};
  auto bytes = ParseBytes(it->second);
  if (!bytes.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": ", bytes.status().message()));
  }
  return *bytes;
}

absl::StatusOr<int64_t> FlagInt(const Invocation& inv, absl::string_view name, int64_t lo,
                                int64_t hi, bool* present) {
  auto it = inv.flags.find(std::string(name));
  *present = it != inv.flags.end();
  if (!*present) return int64_t{0};
  int64_t v = 0;
  if (!absl::SimpleAtoi(it->second, &v) || v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": \"", it->second, "\" is not an integer in ", lo, "..", hi));
  }
  return v;
}

absl::StatusOr<double> FlagDouble(const Invocation& inv, absl::string_view name, double lo,
                                  double hi, bool* present) {
  auto it = inv.flags.find(std::string(name));
  *present = it != inv.flags.end();
  if (!*present) return 0.0;
  double v = 0;
  if (!absl::SimpleAtod(it->second, &v) || !std::isfinite(v) || v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": \"", it->second, "\" is not a number in ", lo, "..", hi));
  }
  return v;
}

absl::StatusOr<bool> FlagBool(const Invocation& inv, absl::string_view name, bool* present) {
  auto it = inv.flags.find(std::string(name));
  *present = it != inv.flags.end();
  if (!*present) return false;
  if (it->second == "true") return true;
  if (it->second == "false") return false;
  return absl::InvalidArgumentError(
      absl::StrCat("--", name, ": \"", it->second, "\" is not true or false"));
}

absl::StatusOr<absl::Duration> FlagDuration(const Invocation& inv, absl::string_view name,
                                            bool allow_zero, bool* present) {
  auto it = inv.flags.find(std::string(name));
  *present = it != inv.flags.end();
  if (!*present) return absl::ZeroDuration();
  auto d = ParseDurationArg(it->second);
  if (!d.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": ", d.status().message()));
  }
  if (!allow_zero && *d <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be greater than 0"));
  }
  return *d;
}

absl::StatusOr<std::string> FlagHostId(const Invocation& inv, absl::string_view name,
                                       bool* present) {
  auto it = inv.flags.find(std::string(name));
  *present = it != inv.flags.end();
  if (!*present) return std::string();
  if (absl::Status s = ValidateHostId(it->second); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": ", s.message()));
  }
  return it->second;
}

}  // namespace membroker::client
