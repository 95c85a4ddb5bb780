// Runs the `longtrain` binary as a user would, for the tests that drive the CLI.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>
#include <vector>

namespace longtrain {

struct CliRun {
  int code;  // exit status; -1 if killed by a signal
  std::string out;  // stdout and stderr together
};

// `env` is prepended to the shell command line (e.g. "WORLD_SIZE=1 ").
inline CliRun run_cli(const std::string& args, const std::string& env = "") {
  const std::string cmd = env + std::string(LONGTRAIN_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

inline std::string set_args(const std::vector<std::string>& sets) {
  std::string s;
  for (const auto& o : sets) s += " --set " + o;
  return s;
}

}  // namespace longtrain
