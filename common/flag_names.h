#pragma once
// The command-line contract spells flags with dashes (--state-dir); Abseil
// flags are named with underscores. These helpers rewrite the names (only
// the part before '=' of each "-flag"/"--flag" argument, and nothing after a
// bare "--") so both spellings work, and find unknown flags before Abseil
// does (Abseil exits with 1; the contract wants 2, a usage error).

#include <string>
#include <vector>

namespace membroker {

// Rewrites the name of one flag argument ("--state-dir=x" ->
// "--state_dir=x"); other arguments are returned unchanged.
std::string FlagArgToUnderscores(std::string arg);

// Applies FlagArgToUnderscores to argv[1..] up to a bare "--".
std::vector<std::string> DashesToUnderscores(const std::vector<std::string>& args);

// char* pointers into `args` (for absl::ParseCommandLine), null-terminated.
std::vector<char*> ArgvView(std::vector<std::string>& args);

// The first argument (as the user spelled it, with dashes) that names no
// registered flag, or "" when all are known. Abseil's own flags (--help,
// --flagfile, ...) and "--noBOOL" forms count as known.
std::string FindUnknownFlag(const std::vector<std::string>& args);

}  // namespace membroker
