// Plain parameters of the chunked causal linear attention kernels (no torch
// types: shared by op.cpp and the .cu files).
//
// Every kernel here evaluates one generic "pass" over a sequence of L rows:
//
//   out_t = Σ_{s ≤ t} γ^(t−s) (q_t·k_s + c_t + e_s) v_s           (normalize off)
//   out_t = Σ_{s ≤ t} γ^(t−s) (q_t·k_s) v_s / (Σ_{s ≤ t} γ^(t−s) q_t·k_s + eps)
//
// q, k: [B, H, L, D], v, out: [B, H, L, D] (one head dim D for all four),
// c, e: optional per-row / per-column scalars [B·H, L] fp32. With `reverse`
// the pass runs over the rows in reverse order (t ≥ s, the anti-causal form
// the backward needs): row index l is visited as position L − 1 − l.
//
// The forward is one pass (c = e = 0, normalize on or off). The backward is
// three passes of the same code, with g = dO / (den + eps) and
// h = −(dO·O) / (den + eps) (h = 0 without normalisation):
//   dφq_t = Σ_{s ≤ t} γ^(t−s) (g_t·v_s + h_t) φk_s        q=g, k=v,  v=φk, c=h
//   dφk_s = Σ_{t ≥ s} γ^(t−s) (v_s·g_t + h_t) φq_t        q=v, k=g,  v=φq, e=h, reverse
//   dv_s  = Σ_{t ≥ s} γ^(t−s) (φk_s·φq_t) g_t             q=φk, k=φq, v=g,    reverse
// (the last two fused into one reverse pass since v2; without decay all
// three are one pass since v6, see `out3` below).
//
// A pass is three kernels (Lightning Attention-2 / fla "chunk" form):
//   1. block_state: for each block of kBlockChunks·64 rows, its contribution
//      to the running state S = Σ γ^(·) k_s v_sᵀ [D, D] (fp32) and to the
//      vectors zk = Σ γ^(·) k_s, zv = Σ γ^(·) v_s, ze = Σ γ^(·) e_s v_s;
//   2. scan: the exclusive prefix over blocks, S_b = γ^(rows per block) S_{b−1} + ΔS_{b−1};
//   3. chunk: per block, 64-row sub-chunks in order: the masked, decayed
//      intra-chunk products on tensor cores plus q·S from the carried state,
//      which is then advanced in shared memory (as a bf16 hi + lo pair, 16
//      mantissa bits) to the next sub-chunk.
#pragma once

#include <cstdint>

#include "kernels/swizzle.h"

namespace longtrain::kernels::linear_attention {

constexpr int kRows = 64;  // rows per sub-chunk (one tile of the mma products)

struct Operand {
  const void* ptr = nullptr;
  int64_t strides[3] = {0, 0, 0};  // batch, head, row; the head dim is contiguous
};

struct PassParams {
  Operand q, k, v;
  void* out = nullptr;
  int64_t out_strides[3] = {0, 0, 0};
  // The fused dφk/dv pass (q2 set): a second set of rows (φk) whose outputs
  // (dv) use the transposed state and the pass's k, v swapped (chunk.cu).
  Operand q2;
  void* out2 = nullptr;
  int64_t out2_strides[3] = {0, 0, 0};
  const float* c = nullptr;  // [B·H, L] per-row scalar, or null
  const float* e = nullptr;  // [B·H, L] per-column scalar, or null
  float* rden = nullptr;     // [B·H, L] out: 1 / (den + eps) when normalize
  const float* log2_decay = nullptr;  // [H] log2 γ_h, or null (γ = 1)
  // Workspaces, [B·H, n_blocks + 1, ·] fp32: S [D·D], zk [D] (normalize),
  // zv [D] (c), ze [D] (e). After the scan slot b holds the prefix at the
  // start of block b, and in the forward pass slot n_blocks the whole sum (the
  // fused backward's last block starts from it).
  float* states = nullptr;
  float* zk = nullptr;
  float* zv = nullptr;
  float* ze = nullptr;
  // The block prefixes are given (states, zk, zv, ze already scanned): skip
  // block_state and scan. With states_transposed, slot b holds Sᵀ (the dφq
  // pass reuses the forward's Σ γ φk vᵀ, whose transpose is its Σ γ v φkᵀ).
  bool states_ready = false;
  bool states_transposed = false;
  int B = 0, H = 0, L = 0, D = 0;
  int block_chunks = 4;  // sub-chunks of 64 rows per block
  int n_blocks = 0;      // ceil(L / (64 · block_chunks))
  // The fused backward (v6; no decay): dφq, dφk and dv in one pass over the
  // forward's blocks, each walked from its last row to its first. q = V,
  // k = G, v = φq, q2 = φk, e = h (with the normaliser); out = dφk,
  // out2 = dv, out3 = dφq. states, ze: R = Σ g φqᵀ and Σ h φq over the later
  // blocks, made by block_state and the scan in `mirror` order (block b's sum
  // into slot n_blocks − b, so that slot n_blocks − 1 − b holds what lies
  // after block b); states2, zk2: the forward's prefixes Σ φk vᵀ and Σ φk,
  // from which each block's walk subtracts its sub-chunks' sums (chunk.cu,
  // dqkv_kernel).
  void* out3 = nullptr;
  int64_t out3_strides[3] = {0, 0, 0};
  const float* states2 = nullptr;
  const float* zk2 = nullptr;
  bool mirror = false;
  bool reverse = false;
  bool normalize = false;
  float eps = 1e-6f;
};

// The kernels' shared-memory tiles (chunk.cu): swizzle.h's swizzled_offset.
using kernels::swizzled_offset;

// Sub-chunks per block so that `sub_chunks` fill the fewest whole waves of
// `slots` resident CTAs with blocks of at most `max_per_block` (op.cpp's block
// size from 8K on; a partial last wave idles most of the GPU).
inline int fewest_waves_block(int64_t sub_chunks, int64_t slots, int max_per_block) {
  if (sub_chunks <= 0 || slots <= 0) return 1;
  for (int64_t waves = 1;; ++waves) {
    const int64_t per_block = (sub_chunks + waves * slots - 1) / (waves * slots);
    if (per_block <= max_per_block) return static_cast<int>(per_block);
  }
}

// Backward preparation: g = dO · r, h = −(dO·O) · r with r = rden (or g = dO,
// no h, when rden is null). g: [B·H, L, D] contiguous, h: [B·H, L].
struct PrepParams {
  Operand dout, out;
  const float* rden = nullptr;
  void* g = nullptr;
  float* h = nullptr;
  int B = 0, H = 0, L = 0, D = 0;
};

// One token of the recurrent form (generation), in place on the fp32 state:
//   S = γ S + k vᵀ, z = γ z + k, o = q·S / (q·z + eps)  (or q·S).
// q, k, v, o: [B·H, D] contiguous; S: [B·H, D, D]; z: [B·H, D].
struct StepParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  float* S = nullptr;
  float* z = nullptr;
  const float* decay = nullptr;  // [H] γ_h, or null
  int B = 0, H = 0, D = 0;
  bool normalize = true;
  float eps = 1e-6f;
};

enum class DType { kBFloat16 };

// Launchers (chunk.cu): check the last CUDA error and throw with the kernel
// name on failure. `stream` is a cudaStream_t. D must be 64 or 128.
void linear_attention_pass(const PassParams& p, DType dtype, void* stream);
void linear_attention_prep(const PrepParams& p, DType dtype, void* stream);
void linear_attention_step(const StepParams& p, DType dtype, void* stream);
// CTAs of the chunk kernel (fused: the dφk/dv kernel) resident at once on the
// current device: SMs x CTAs per SM, for the block size (op.cpp).
int linear_attention_resident_ctas(int D, bool fused);

}  // namespace longtrain::kernels::linear_attention
