// AFT on CUDA: the LibTorch entry points (simple, local/conv, full).
//
//   y = aft_simple_cuda(q, k, v)
//   q, k, v: [B, L, d] bf16 or fp16 on one CUDA device, one dtype, d even, the
//            channel dim contiguous (any batch/row strides, e.g. the mixer's
//            chunks of a fused qkv projection); y: [B, L, d] contiguous.
//   Differentiable in q, k, v. Accumulation in fp32; saved for the backward:
//   q, k, v and the fp32 scan state every kAftSub positions (1.5 bytes per
//   element), nothing of size [B, L, d] in fp32.
//
// Matches model/aft.cpp aft_simple(q, k, v, causal = true).
//
//   y = aft_band_cuda(q, k, v, u, window)
//   causal AFT-local / AFT-conv: u: [H, window] (any float dtype, on q's device;
//   local is H = 1), H divides d with d / H even; the bias on pair (t, s) is
//   u[h, t - s] inside the window and 0 outside. Differentiable in q, k, v and
//   u. Saves, besides the inputs and the scan state, lse and R of every row
//   (2 fp32 tensors of [B, L, d]). Matches model/aft.cpp aft_local / aft_conv
//   (causal = true).
//
//   y = aft_full_blocked(q, k, v, w, causal, block)
//   AFT-full (full_op.cpp), causal or bidirectional: w: [P0, P1] with P0, P1 >= L
//   (the top-left L x L is used; fp32, bf16 or fp16). Tiles of `block` query
//   rows (forward) / key columns (backward) of P = exp(w - rowmax) times
//   [e^(k-ref) v | e^(k-ref)] as GEMMs (cuBLAS on CUDA), so memory beyond w and
//   dw is O(L·d) plus one [block, L] tile. CUDA: q, k, v bf16 or fp16 (the GEMM
//   operands are in that dtype, accumulation fp32). CPU: any floating dtype, the
//   same steps in torch ops (operands rounded to the input dtype, products in
//   fp32, or fp64 for fp64) — the algorithm's test bed. Differentiable in q, k,
//   v and w. Matches model/aft.cpp aft_full to the operand dtype's rounding.
//
// Bidirectional AFT-simple/local/conv have no kernel yet: the mixer runs their references.
#pragma once

#include <torch/torch.h>

#include <string>

namespace longtrain::kernels {

// Whether this build has the CUDA kernels.
bool aft_cuda_built();

// Why no AFT kernel can take q (build, device, dtype, rank; "" when one can):
// the checks every variant shares.
std::string aft_inputs_unsupported(const torch::Tensor& q);

// Why aft_simple_cuda cannot take these inputs ("" when it can).
std::string aft_simple_kernel_unsupported(const torch::Tensor& q);

// chunk: positions per chunk of the two-level scan, a multiple of 8 (kAftSub);
// 0 takes aft_chunk_size's choice. Results do not depend on it beyond fp32
// rounding; tests set it to cover one and many sub-chunks per chunk.
torch::Tensor aft_simple_cuda(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              int64_t chunk = 0);

// Why aft_band_cuda cannot take these inputs with H bias rows ("" when it can).
std::string aft_band_kernel_unsupported(const torch::Tensor& q, int64_t heads);

torch::Tensor aft_band_cuda(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& u, int64_t window, int64_t chunk = 0);

// Why aft_full_blocked cannot take q and w on CUDA ("" when it can).
std::string aft_full_kernel_unsupported(const torch::Tensor& q, const torch::Tensor& w);

// block: query rows / key columns per tile, >= 1; 0 takes the default:
// one block up to L = kAftFullOneBlock (the tiles P and dP then [L, L], at
// most 32 MiB each in bf16: 0.85 against 1.49 ms fwd+bwd at 4K with blocks of
// 1024), kAftFullBlock below 8K, doubled from 8K on (fewer, larger GEMMs: 3.98
// against 4.16 ms at 16K). H100, kernels/aft/NOTES.md.
constexpr int64_t kAftFullBlock = 1024, kAftFullOneBlock = 4096;
inline int64_t aft_full_default_block(int64_t L) {
  return L <= kAftFullOneBlock ? kAftFullOneBlock : L >= 8192 ? 2 * kAftFullBlock : kAftFullBlock;
}
torch::Tensor aft_full_blocked(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& w, bool causal, int64_t block = 0);

}  // namespace longtrain::kernels
