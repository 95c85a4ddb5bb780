// Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"): the
// reference math in plain LibTorch ops. These free functions are the ground
// truth that the fused CUDA kernels in kernels/ are checked against.
//
// Shapes (F: feature dimension after the map, Dv: value head dimension):
//   q, k  [B, H, L, Dk]   projected, split into heads, before the feature map
//   φq, φk [B, H, L, F]   after apply_feature_map (F = Dk, 2·Dk for cosformer,
//                         m for favor)
//   v     [B, H, L, Dv]
//   decay [H]             per-head γ_h in (0, 1]; undefined = no decay
//   out   [B, H, L, Dv]   in v's dtype
//
// Math, with S_t = γ S_{t-1} + φk_t v_tᵀ  ([B, H, F, Dv]) and
//            z_t = γ z_{t-1} + φk_t      ([B, H, F]):
//   causal:        o_t = φq_t·S_t / (φq_t·z_t + eps)
//                  i.e. o_t = Σ_{s≤t} γ^{t-s} (φq_t·φk_s) v_s / Σ_{s≤t} γ^{t-s} (φq_t·φk_s) + eps
//   bidirectional: the same sums over all s with weight γ^{|t-s|}; without
//                  decay o = φQ (φKᵀ V) / (φQ (φKᵀ 1) + eps), O(L·F·Dv).
//   normalize = false keeps the numerator only (RetNet / Lightning style, where
//   a norm after the mixer takes the denominator's place).
//
// Causal is computed in chunks of C (Lightning Attention-2): inside a chunk the
// masked, decayed product (φQ φKᵀ ⊙ D) V, across chunks the running state S, z.
// Cost O(L·C·F + L·F·Dv); no tensor is ever L×L. Bidirectional with decay is the
// causal scan plus the strictly-causal scan of the reversed sequence.
//
// All accumulation is in fp32 (fp64 when an input is fp64) with autocast off,
// whatever the input dtype; the output is cast back to v's dtype.
// Limits: the decay is per head, not data-dependent (no gating as in GLA/Mamba);
// positions enter only through causality, the decay and the cosformer
// reweighting — the `linear` mixer ignores RoPE (a rotation before a positive
// feature map does not make φq·φk a function of relative position).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace longtrain {

enum class FeatureMap { kEluPlusOne, kRelu, kFavor, kCosformer };

// "elu+1" | "relu" | "favor" | "cosformer"; throws std::invalid_argument
// listing the valid names.
FeatureMap parse_feature_map(const std::string& name);
std::string feature_map_name(FeatureMap map);
const std::vector<std::string>& feature_map_names();

struct FeatureMapSpec {
  FeatureMap map = FeatureMap::kEluPlusOne;
  torch::Tensor favor_proj;       // [m, Dk] for kFavor (see favor_projection)
  int64_t cosformer_horizon = 0;  // M for kCosformer: positions must be < M
};

// Feature dimension F that apply_feature_map produces for head dimension dk.
int64_t feature_dim(const FeatureMapSpec& spec, int64_t dk);

// x: [B, H, L, Dk] -> [B, H, L, F], computed in fp32 (fp64 for fp64 x).
//  elu+1:     elu(x) + 1, strictly positive. The default: with relu a query
//             or key can be zeroed in every channel, and then the whole
//             denominator φq·z is 0 and the output is 0/eps.
//  relu:      max(x, 0).
//  favor:     Performer FAVOR+ positive random features (Choromanski et al.
//             2021): exp(W x − |x|²/2) / sqrt(m). The caller scales q and k by
//             Dk^(-1/4) first so that E[φ(q)·φ(k)] = exp(q·k / sqrt(Dk)).
//  cosformer: cosFormer (Qin et al. 2022): [relu(x) cos(π/2 · i/M),
//             relu(x) sin(π/2 · i/M)] for absolute position i = offset + l, so
//             φq_i·φk_j = relu(q)·relu(k) cos(π/2 · (i−j)/M), > 0 weight for
//             |i−j| < M. offset is the position of x's first token.
torch::Tensor apply_feature_map(const torch::Tensor& x, const FeatureMapSpec& spec, int64_t offset = 0);

// FAVOR+ projection W: [m, dk] fp32: stacked dk×dk orthogonal blocks (QR of a
// Gaussian; the last block truncated), each row rescaled to the norm of an
// independent dk-dimensional Gaussian (chi(dk)-distributed), so rows are
// marginally Gaussian but orthogonal within a block. Deterministic in
// (seed, draw): the mixer's redraw k uses draw = k.
torch::Tensor favor_projection(int64_t m, int64_t dk, uint64_t seed, int64_t draw);

struct LinearAttentionOptions {
  bool causal = true;
  int64_t chunk = 64;  // C; only the causal scan (and decayed bidirectional) uses it
  bool normalize = true;
  double eps = 1e-6;
  torch::Tensor decay;  // [H] in (0, 1], differentiable; undefined = γ = 1
};

// The reference: chunked causal / O(L·F·Dv) bidirectional, as above.
torch::Tensor linear_attention_chunked(const torch::Tensor& phi_q, const torch::Tensor& phi_k,
                                       const torch::Tensor& v, const LinearAttentionOptions& opts);

// The same math through the dense [B, H, L, L] weight matrix (masked, decayed).
// O(L²) memory: for tests on small L only.
torch::Tensor linear_attention_naive(const torch::Tensor& phi_q, const torch::Tensor& phi_k,
                                     const torch::Tensor& v, const LinearAttentionOptions& opts);

// Recurrent form for generation (causal only). S: [B, H, F, Dv], z: [B, H, F],
// fp32 (fp64 for fp64 inputs).
struct LinearAttentionState {
  torch::Tensor S;
  torch::Tensor z;
};

LinearAttentionState linear_attention_initial_state(int64_t B, int64_t H, int64_t F, int64_t Dv,
                                                    const torch::TensorOptions& options);

// One token: φq, φk [B, H, 1, F], v [B, H, 1, Dv] -> o [B, H, 1, Dv] (v's
// dtype). Updates `state` to include this token (new tensors, so autograd can
// run through a sequence of steps). Equals linear_attention_chunked token by token.
torch::Tensor linear_attention_step(const torch::Tensor& phi_q, const torch::Tensor& phi_k,
                                    const torch::Tensor& v, LinearAttentionState& state,
                                    const LinearAttentionOptions& opts);

}  // namespace longtrain
