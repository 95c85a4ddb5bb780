// Runs the `longtrain` binary as a user would, for the tests that drive the CLI.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

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

// Starts `argv` (argv[0] the binary) as a child with its output discarded, for
// tests that signal it while it runs; returns the child's pid.
inline pid_t spawn_quiet(std::vector<std::string> argv_s) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    freopen("/dev/null", "w", stdout);
    freopen("/dev/null", "w", stderr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// Sends SIGTERM to a spawned child and waits for it; returns waitpid's status.
inline int terminate_and_wait(pid_t pid) {
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

}  // namespace longtrain
