#pragma once
// Command-line parsing for membrokerctl.
//
// The grammar, in the kubectl habit:
//   membrokerctl [GLOBAL FLAGS] VERB [RESOURCE] [OPERAND] [COMMAND FLAGS]
// Global flags may appear before or after the command. Every command flag
// takes a value, written `--flag=value` or `--flag value`. `--` ends flag
// parsing (for a VM name that starts with '-'). Parsing never talks to the
// network: every error here is a usage error (exit code 2).
//
// Why a parser of our own (kept on purpose, reviewed when output moved to
// protobuf's printers): the commands are one table (Commands()) that drives
// parsing, per-command flag checks and help alike; ParseArgs is a pure
// function of argv and the environment, so tests run many command lines in
// one process; errors are absl::Status messages that name the flag. absl
// flags are a process-wide registry of one flat flag set (no per-command
// flags, ABSL_FLAG belongs in main.cc only), getopt_long keeps global state
// (optind) and knows no subcommands, and CLI11 (Debian libcli11-dev) would
// add a dependency to replace about 200 lines of tested parsing without
// removing the command table or the typed Flag* accessors below.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace membroker::client {

// How replies are printed (-o).
enum class OutputFormat { kTable, kWide, kJson, kYaml };

// Parses "table|wide|json|yaml". INVALID_ARGUMENT naming -o otherwise.
absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view text);

// One command flag a command accepts.
struct FlagSpec {
  // Name without the leading "--", e.g. "host".
  std::string name;
  // Placeholder for the value in help, e.g. "SIZE".
  std::string value_name;
  // One line of help.
  std::string help;
};

// One command: its words, operands and flags, and its help.
struct CommandSpec {
  // The words that select the command, e.g. {"get", "vms"}.
  std::vector<std::string> path;
  // Names of the positional operands, e.g. {"VM"} (all required).
  std::vector<std::string> operands;
  // The command flags it accepts.
  std::vector<FlagSpec> flags;
  // One-line summary.
  std::string summary;
  // Longer help, examples included.
  std::string details;
};

// All commands membrokerctl knows, in help order.
const std::vector<CommandSpec>& Commands();

// Environment variables consulted for defaults.
inline constexpr char kServerEnv[] = "MEMBROKER_SERVER";
inline constexpr char kTlsCaEnv[] = "MEMBROKER_TLS_CA";
inline constexpr char kTlsCertEnv[] = "MEMBROKER_TLS_CERT";
inline constexpr char kTlsKeyEnv[] = "MEMBROKER_TLS_KEY";
// The server used when neither --server nor $MEMBROKER_SERVER is given.
inline constexpr char kDefaultServer[] = "127.0.0.1:7070";

// The global flags after parsing and applying environment defaults.
struct GlobalOptions {
  std::string server = kDefaultServer;
  bool insecure = false;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  OutputFormat output = OutputFormat::kTable;
  absl::Duration timeout = absl::Seconds(5);
};

// A parsed command line.
struct Invocation {
  GlobalOptions global;
  // True when --help/-h was given or the verb is "help": print help for
  // `help_path` and exit 0.
  bool help = false;
  // The words help was asked for (possibly a prefix such as {"get"}).
  std::vector<std::string> help_path;
  // The selected command (nullptr only when `help` is true).
  const CommandSpec* command = nullptr;
  // Operand values, in the order of command->operands.
  std::vector<std::string> operands;
  // Command flag values by name (without "--"); each flag at most once.
  std::map<std::string, std::string> flags;
};

// Parses `args` (without argv[0]) with `env` supplying defaults for the
// server and TLS files. INVALID_ARGUMENT with a message naming the flag,
// command or operand at fault; nothing else.
absl::StatusOr<Invocation> ParseArgs(const std::vector<std::string>& args,
                                     const std::map<std::string, std::string>& env);

// Help text for the command or command group named by `path` (all commands
// for an empty path). Unknown paths get the top-level help.
std::string HelpText(const std::vector<std::string>& path);

// Typed accessors for command flags. Each sets `*present` to whether the
// flag was given (returning a zero value when it was not) and returns
// INVALID_ARGUMENT naming the flag when the value is malformed or out of
// range.

// A size with units ("512MiB", "4GiB", "1073741824").
absl::StatusOr<uint64_t> FlagBytes(const Invocation& inv, absl::string_view name, bool* present);
// An integer in [lo, hi].
absl::StatusOr<int64_t> FlagInt(const Invocation& inv, absl::string_view name, int64_t lo,
                                int64_t hi, bool* present);
// A finite number in [lo, hi].
absl::StatusOr<double> FlagDouble(const Invocation& inv, absl::string_view name, double lo,
                                  double hi, bool* present);
// "true" or "false".
absl::StatusOr<bool> FlagBool(const Invocation& inv, absl::string_view name, bool* present);
// A duration ("500ms", "2s"); must be > 0 unless `allow_zero`.
absl::StatusOr<absl::Duration> FlagDuration(const Invocation& inv, absl::string_view name,
                                            bool allow_zero, bool* present);
// A host id ([A-Za-z0-9._-], 1..253 characters).
absl::StatusOr<std::string> FlagHostId(const Invocation& inv, absl::string_view name,
                                       bool* present);

}  // namespace membroker::client
