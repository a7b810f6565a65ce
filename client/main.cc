// membrokerctl: the operators' command-line client. All logic lives in
// mb_client (RunCtl); main only supplies argv, the environment, the
// terminal check and Ctrl-C handling.

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "client/ctl.h"

extern char** environ;

namespace {

std::atomic<bool> g_stop{false};

void OnInterrupt(int) { g_stop.store(true); }

}  // namespace

int main(int argc, char** argv) {
  membroker::client::CtlEnvironment env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string entry(*e);
    size_t eq = entry.find('=');
    if (eq != std::string::npos) env.vars[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  env.out_is_terminal = isatty(STDOUT_FILENO) == 1;
  // Ctrl-C ends a live view at its next refresh; every other command keeps
  // the default action (terminate at once).
  env.wait = membroker::client::InterruptibleWait(&g_stop);
  env.enter_live_view = [] { std::signal(SIGINT, OnInterrupt); };
  std::vector<std::string> args(argv + 1, argv + argc);
  return membroker::client::RunCtl(args, std::cout, std::cerr, env);
}
