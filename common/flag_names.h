#pragma once
// The command-line contract spells flags with dashes (--state-dir); Abseil
// flags are named with underscores. DashesToUnderscores rewrites the names
// (only the part before '=' of each "--flag" argument, and nothing after a
// bare "--") so both spellings work.

#include <string>
#include <vector>

namespace membroker {

// Returns argv with flag names rewritten; keep the result alive while the
// char* view from ArgvView is used.
std::vector<std::string> DashesToUnderscores(int argc, char** argv);

// char* pointers into `args` (for absl::ParseCommandLine).
std::vector<char*> ArgvView(std::vector<std::string>& args);

}  // namespace membroker
