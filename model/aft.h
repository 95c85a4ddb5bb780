// Attention Free Transformer (Zhai et al. 2021), reference math in plain LibTorch ops.
//
//   Y_t = σ(Q_t) ⊙ Σ_{t'} exp(K_{t'} + w_{t,t'}) ⊙ V_{t'} / Σ_{t'} exp(K_{t'} + w_{t,t'})
//
// elementwise over the feature dimension; t' ≤ t when causal, all t' otherwise.
// These functions are the ground truth that fused kernels are checked against.
//
// Shapes: q, k, v: [B, L, d] (one dtype, one device) -> Y: [B, L, d] in that dtype.
// Accumulation is fp32 (fp64 for fp64 inputs), so bf16/fp16 inputs lose nothing
// inside the sums.
//
// Heads: as in the paper, the bias w_{t,t'} is one scalar per (t, t') shared by
// all d features — AFT is "attention with as many heads as features", so
// simple, local and full do no head split. Only conv splits d into H heads of
// d/H channels (head h owns channels [h·d/H, (h+1)·d/H)), each with its own kernel.
//
// Variants:
// - simple: w = 0. Causal is an O(L·d) prefix scan; bidirectional is a softmax of
//   K over L per channel. Numerically exact for any range of K (see aft.cpp).
// - local:  w_{t,t'} = u[t−t'] inside the window (causal 0 ≤ t−t' < s,
//   bidirectional |t−t'| < s) and 0 outside — not −inf: outside the band the
//   un-biased global terms remain. u: [taps]. This is a relative (Toeplitz) bias;
//   the paper's AFT-local keeps a full pairwise w restricted to the band. The
//   relative form needs O(s) parameters and no table, so L is unbounded.
// - conv:   the same banded Toeplitz bias, one kernel per head, u: [H, taps],
//   usually produced by aft_conv_kernel (the paper's reparameterisation).
// - full:   learned pairwise w: [P, P] with P ≥ L, the top-left L×L block is used;
//   factorised biases come from aft_full_bias (w = U Vᵀ).
// taps = s (causal, tap index t−t') or 2s−1 (bidirectional, tap index t−t'+s−1).
//
// Work and memory: simple O(16·L·d) (a chunked scan, chunk 16); local/conv add
// the band, O(L·s·d) when differentiated (O(L·d) without grad); full forms the
// [L, L] factor exp(w) (O(L²), independent of B and d) and multiplies in fp64
// (see aft.cpp), never [B, L, L, d]. aft_naive forms [B, H, L, L, d/H]: tests
// and small L only.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace longtrain {

// Number of bias taps for a window s: s causal, 2s−1 bidirectional.
int64_t aft_num_taps(int64_t window, bool causal);

torch::Tensor aft_simple(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                         bool causal);

// u: [taps] shared by all features.
torch::Tensor aft_local(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& u, int64_t window, bool causal);

// kernel: [H, taps], d divisible by H.
torch::Tensor aft_conv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& kernel, int64_t window, bool causal);

// The paper's AFT-conv parameterisation, per head h:
//   kernel_h = gain_h · (raw_h − mean(raw_h)) / sqrt(var(raw_h) + 1e-5) + shift_h
// raw: [H, taps], gain, shift: [H] -> [H, taps]. With gain = shift = 0 (the
// paper's initialisation) the kernel is 0 and AFT-conv starts as AFT-simple.
// The 1e-5 inside the root keeps the gradient finite for a constant raw kernel.
torch::Tensor aft_conv_kernel(const torch::Tensor& raw, const torch::Tensor& gain, const torch::Tensor& shift);

// w: [P0, P1] with P0, P1 ≥ L.
torch::Tensor aft_full(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& w, bool causal);

// Factorised pairwise bias: u, v: [P, rank] -> w = u[:L] v[:L]ᵀ: [L, L].
torch::Tensor aft_full_bias(const torch::Tensor& u, const torch::Tensor& v, int64_t length);

// Dense [H, L, L] bias of a banded Toeplitz kernel u: [H, taps] (0 outside the
// band), built by explicit index arithmetic, independently of aft_local/aft_conv.
torch::Tensor aft_relative_bias_dense(const torch::Tensor& u, int64_t length, int64_t window, bool causal);

// The definition, computed directly: bias: [H, L, L] (H divides d; H = 1 for
// simple/local/full), causal masking applied here, softmax over t' per
// channel. Forms [B, H, L, L, d/H]: for tests on small L.
torch::Tensor aft_naive(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& bias, bool causal);

// Recurrent form of causal AFT-simple, for generation. Running numerator and
// denominator relative to the running max of K, so exp never overflows:
// num, den, max: [B, d] in the accumulation dtype.
struct AftSimpleState {
  torch::Tensor num, den, max;
};

// An empty state (max = −inf) for inputs of `options`' dtype and device.
AftSimpleState aft_simple_initial_state(int64_t batch, int64_t dim, const torch::TensorOptions& options);

// One token: q, k, v: [B, d] -> Y_t: [B, d]; updates `state`. Equal, token by
// token, to aft_simple(..., causal = true).
torch::Tensor aft_simple_step(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              AftSimpleState& state);

}  // namespace longtrain
