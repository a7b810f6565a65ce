#include "common/flag_names.h"

#include <algorithm>

#include "absl/flags/reflection.h"

namespace membroker {

std::string FlagArgToUnderscores(std::string arg) {
  if (arg.size() <= 2 || arg[0] != '-') return arg;
  const size_t start = arg[1] == '-' ? 2 : 1;
  const size_t end = std::min(arg.find('='), arg.size());
  for (size_t j = start; j < end; ++j) {
    if (arg[j] == '-') arg[j] = '_';
  }
  return arg;
}

std::vector<std::string> DashesToUnderscores(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  bool flags_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    if (i > 0 && !flags_done && args[i] == "--") flags_done = true;
    out.push_back(i == 0 || flags_done ? args[i] : FlagArgToUnderscores(args[i]));
  }
  return out;
}

std::vector<char*> ArgvView(std::vector<std::string>& args) {
  std::vector<char*> out;
  for (std::string& a : args) out.push_back(a.data());
  out.push_back(nullptr);
  return out;
}

std::string FindUnknownFlag(const std::vector<std::string>& args) {
  static const char* const kAbseilFlags[] = {
      "help",   "helpfull", "helpshort", "helppackage", "version", "only_check_args",
      "helpon", "helpmatch", "flagfile", "fromenv",     "tryfromenv", "undefok"};
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") break;
    if (arg.size() < 2 || arg[0] != '-') continue;
    std::string name = FlagArgToUnderscores(arg).substr(arg[1] == '-' ? 2 : 1);
    name = name.substr(0, name.find('='));
    if (absl::FindCommandLineFlag(name) != nullptr) continue;
    if (std::find(std::begin(kAbseilFlags), std::end(kAbseilFlags), name) !=
        std::end(kAbseilFlags)) {
      continue;
    }
    if (name.compare(0, 2, "no") == 0 && absl::FindCommandLineFlag(name.substr(2)) != nullptr) {
      continue;
    }
    return arg.substr(0, arg.find('='));
  }
  return "";
}

}  // namespace membroker
