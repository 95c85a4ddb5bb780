// `longtrain launch`: starts one `longtrain` process per GPU (or per CPU
// worker) on this node with torchrun's environment, and supervises them.
//
//   longtrain launch --nproc N [--nnodes M --node-rank R --master ADDR:PORT] -- train RECIPE ...
//
// Rank r = R*N + local rank gets RANK, WORLD_SIZE = M*N, LOCAL_RANK,
// LOCAL_WORLD_SIZE = N, MASTER_ADDR, MASTER_PORT and NCCL_NVLS_ENABLE=0
// (NVLink multicast can take a host's GPUs out of service). One node without
// --master uses 127.0.0.1 and a free port.
//
// Supervision: SIGINT/SIGTERM are forwarded to every rank (which then agree on
// a step, write one checkpoint and exit 0); a second one kills them. When a
// rank exits non-zero or dies by a signal, the others get `grace_s` seconds to
// notice (their collectives fail) and exit, then are killed; the launcher
// names the failed rank and exits 1.
#pragma once

#include <string>
#include <vector>

namespace longtrain {

struct LaunchOptions {
  int nproc = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master;  // ADDR:PORT; empty: 127.0.0.1 and a free port (one node only)
  double grace_s = 10;
  std::vector<std::string> command;  // each rank runs `longtrain <command...>`
};

// Returns the exit code for the launcher: 0 when every rank exited 0.
// Throws std::invalid_argument on bad options.
int launch(const LaunchOptions& options);

// A TCP port that was free a moment ago (bound to port 0 on loopback, then released).
int free_tcp_port();

}  // namespace longtrain
