// Programmatic dependent launch (sm_90): a kernel of a chain may be launched
// while the one before it is still running, do its set-up (shared memory,
// loads of inputs that were complete before the chain began), and wait for
// the earlier grid only where it reads what that grid writes.
//
// The rules a chain keeps (CUDA programming guide, "Programmatic Dependent
// Launch"):
// - its first kernel is launched plainly (chained = false), so it starts only
//   when everything before it in the stream is done; every later kernel reads
//   before its wait only what existed before the first kernel started;
// - every kernel launched chained calls wait_for_previous_grid() in every CTA
//   before it reads or writes anything an earlier kernel of the chain writes
//   or reads, and before it exits: the wait returns once the previous grid has
//   completed with its memory visible, so completion stays ordered along the
//   chain (kernel 3 waiting on 2 also waits on 1);
// - a kernel lets the next one launch with let_next_grid_launch(); without it
//   the next launches at its completion (a plain stream order).
// Both are no-ops in a kernel launched plainly or without a dependent.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace longtrain::kernels::pdl {

__device__ __forceinline__ void wait_for_previous_grid() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void let_next_grid_launch() { asm volatile("griddepcontrol.launch_dependents;" :::); }

// kernel<<<grid, block, smem, stream>>>(args...), allowed to start early
// (programmatic stream serialisation) when chained.
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool chained,
                   Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = chained ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace longtrain::kernels::pdl
