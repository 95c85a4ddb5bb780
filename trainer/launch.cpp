// See launch.h.
#include "trainer/launch.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <stdexcept>
#include <thread>

#include "trainer/signals.h"

namespace longtrain {
namespace {

using Clock = std::chrono::steady_clock;

std::string self_executable() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw std::runtime_error("launch: cannot resolve /proc/self/exe");
  return std::string(buf, static_cast<size_t>(n));
}

std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + strsignal(WTERMSIG(status));
  return "ended with status " + std::to_string(status);
}

struct Child {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
  int status = 0;
};

// In the child, between fork and exec.
[[noreturn]] void exec_rank(const std::string& exe, const LaunchOptions& o, const std::string& addr,
                            const std::string& port, int local_rank) {
  const int world = o.nnodes * o.nproc;
  setenv("RANK", std::to_string(o.node_rank * o.nproc + local_rank).c_str(), 1);
  setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
  setenv("LOCAL_RANK", std::to_string(local_rank).c_str(), 1);
  setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
  setenv("GROUP_RANK", std::to_string(o.node_rank).c_str(), 1);
  setenv("MASTER_ADDR", addr.c_str(), 1);
  setenv("MASTER_PORT", port.c_str(), 1);
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  std::vector<std::string> args{exe};
  args.insert(args.end(), o.command.begin(), o.command.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The launcher's own handlers do not survive exec; restore the defaults in
  // case the launcher's parent ignored them.
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  execv(exe.c_str(), argv.data());
  std::fprintf(stderr, "longtrain launch: cannot run %s: %s\n", exe.c_str(), std::strerror(errno));
  _exit(127);
}

}  // namespace

int free_tcp_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("launch: socket() failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    close(fd);
    throw std::runtime_error("launch: cannot find a free port");
  }
  close(fd);
  return ntohs(a.sin_port);
}

int launch(const LaunchOptions& o) {
  if (o.nproc < 1) throw std::invalid_argument("--nproc must be >= 1");
  if (o.nnodes < 1) throw std::invalid_argument("--nnodes must be >= 1");
  if (o.node_rank < 0 || o.node_rank >= o.nnodes) {
    throw std::invalid_argument("--node-rank must be in [0, --nnodes)");
  }
  if (o.nnodes > 1 && o.master.empty()) {
    throw std::invalid_argument("--nnodes > 1 needs --master ADDR:PORT (the node of rank 0)");
  }
  if (o.command.empty()) throw std::invalid_argument("no command to run: longtrain launch ... -- train RECIPE");
  if (o.command.front() == "launch") throw std::invalid_argument("launch cannot launch itself");
  if (o.grace_s < 0) throw std::invalid_argument("--grace-s must be >= 0");
  std::string addr = "127.0.0.1", port = std::to_string(free_tcp_port());
  if (!o.master.empty()) {
    const auto colon = o.master.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == o.master.size()) {
      throw std::invalid_argument("--master must be ADDR:PORT, got '" + o.master + "'");
    }
    addr = o.master.substr(0, colon);
    port = o.master.substr(colon + 1);
  }
  const std::string exe = self_executable();
  std::cout << "longtrain launch: " << o.nproc << " rank(s) on node " << o.node_rank << " of " << o.nnodes
            << ", world size " << o.nnodes * o.nproc << ", master " << addr << ":" << port << std::endl;

  install_stop_handlers();
  std::vector<Child> children(static_cast<size_t>(o.nproc));
  for (int local = 0; local < o.nproc; ++local) {
    Child& c = children[static_cast<size_t>(local)];
    c.rank = o.node_rank * o.nproc + local;
    std::cout.flush();
    std::cerr.flush();
    c.pid = fork();
    if (c.pid < 0) throw std::runtime_error("launch: fork failed");
    if (c.pid == 0) exec_rank(exe, o, addr, port, local);
    c.running = true;
  }

  auto signal_all = [&](int sig) {
    for (auto& c : children) {
      if (c.running) kill(c.pid, sig);
    }
  };
  int signals_seen = 0;
  const Child* failed = nullptr;
  Clock::time_point kill_at{};
  bool killed = false;
  size_t running = children.size();
  while (running > 0) {
    if (stop_requested()) {
      const int sig = stop_signal();
      clear_stop_request();
      ++signals_seen;
      if (signals_seen == 1) {
        std::cerr << "longtrain launch: forwarding signal " << sig << " to every rank (again to kill them)"
                  << std::endl;
        signal_all(sig);
      } else {
        signal_all(SIGKILL);
      }
    }
    // Reap every rank that ended since the last poll. When several failed at
    // once, blame one killed by a signal (a crash) before ranks that exited
    // with an error because their collectives lost it.
    const Child* first_failure = nullptr;
    for (int status = 0;;) {
      const pid_t pid = waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      for (auto& c : children) {
        if (c.pid != pid || !c.running) continue;
        c.running = false;
        c.status = status;
        --running;
        if ((WIFEXITED(status) && WEXITSTATUS(status) == 0) || killed) continue;
        std::cerr << "longtrain launch: rank " << c.rank << " " << describe(status) << std::endl;
        if (first_failure == nullptr || (WIFSIGNALED(status) && !WIFSIGNALED(first_failure->status))) {
          first_failure = &c;
        }
      }
    }
    if (first_failure != nullptr && failed == nullptr) {
      failed = first_failure;
      kill_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.grace_s));
      if (running > 0) std::cerr << "longtrain launch: stopping the other ranks" << std::endl;
    }
    if (failed != nullptr && !killed && running > 0 && Clock::now() >= kill_at) {
      std::cerr << "longtrain launch: killing the ranks still running " << o.grace_s
                << " s after rank " << failed->rank << " failed" << std::endl;
      signal_all(SIGKILL);
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (failed != nullptr) {
    std::cerr << "longtrain launch: error: rank " << failed->rank << " " << describe(failed->status) << std::endl;
    return 1;
  }
  for (const auto& c : children) {
    if (!(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0)) {
      std::cerr << "longtrain launch: error: rank " << c.rank << " " << describe(c.status) << std::endl;
      return 1;
    }
  }
  return 0;
}

}  // namespace longtrain
