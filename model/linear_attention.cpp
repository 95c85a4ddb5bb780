// See linear_attention.h for the math and shapes.
#include "model/linear_attention.h"
#include "model/no_autocast.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <utility>

namespace longtrain {
namespace {

using torch::Tensor;

constexpr double kHalfPi = 1.57079632679489661923;

// NoAutocast (model/no_autocast.h) below: the running state sums up to L
// terms, so it must accumulate in fp32.

torch::ScalarType compute_type(std::initializer_list<Tensor> ts) {
  for (const auto& t : ts) {
    if (t.defined() && t.scalar_type() == torch::kFloat64) return torch::kFloat64;
  }
  return torch::kFloat32;
}

void check_inputs(const char* fn, const Tensor& q, const Tensor& k, const Tensor& v,
                  const LinearAttentionOptions& opts) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, fn, ": φq, φk, v must be [B, H, L, D], got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(q.sizes() == k.sizes(), fn, ": φq ", q.sizes(), " and φk ", k.sizes(), " differ");
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2), fn, ": v ",
              v.sizes(), " does not match φq ", q.sizes(), " in [B, H, L]");
  TORCH_CHECK(opts.chunk > 0, fn, ": chunk must be > 0, got ", opts.chunk);
  TORCH_CHECK(!opts.normalize || opts.eps > 0, fn, ": eps must be > 0, got ", opts.eps);
  if (opts.decay.defined()) {
    TORCH_CHECK(opts.decay.dim() == 1 && opts.decay.size(0) == q.size(1), fn, ": decay must be [H = ",
                q.size(1), "], got ", opts.decay.sizes());
    TORCH_CHECK(((opts.decay > 0) & (opts.decay <= 1)).all().item<bool>(), fn,
                ": decay must lie in (0, 1], got ", opts.decay);
  }
}

// Decay factors for one chunk of c positions (local index i, j), per head:
//   intra [H, c, c]: γ^(i−j) on the causal (or strictly causal) triangle, else 0
//   q_in  [H, c, 1]: γ^(i+1), the decay from the carried state to row i
//   k_out [H, c, 1]: γ^(c−1−j), the decay from row j to the end of the chunk
//   carry [H, 1, 1]: γ^c, the state's decay across the whole chunk
// Without decay only `intra` (the 0/1 mask, [c, c]) is defined.
struct ChunkDecay {
  int64_t c = 0;
  Tensor intra, q_in, k_out, carry;
};

ChunkDecay chunk_decay(const Tensor& g, int64_t c, bool include_diagonal, const torch::TensorOptions& opt) {
  ChunkDecay d;
  d.c = c;
  auto idx = torch::arange(c, opt);                   // [c]
  auto diff = idx.unsqueeze(1) - idx.unsqueeze(0);    // [c, c] i − j
  auto mask = (include_diagonal ? diff >= 0 : diff > 0).to(opt.dtype());
  if (!g.defined()) {
    d.intra = mask;
    return d;
  }
  auto gh = g.view({-1, 1, 1});  // [H, 1, 1]
  // The clamp keeps exponents ≥ 0 above the diagonal, where the mask zeroes
  // the value anyway: γ^negative would be large and its gradient with it.
  d.intra = torch::pow(gh, diff.clamp_min(0)) * mask;
  d.q_in = torch::pow(gh, (idx + 1).view({1, c, 1}));
  d.k_out = torch::pow(gh, (static_cast<double>(c - 1) - idx).view({1, c, 1}));
  d.carry = torch::pow(gh, static_cast<double>(c));
  return d;
}

// Σ_{s ≤ t} (or s < t) γ^(t−s) (φq_t·φk_s) v_s and the same with v = 1, in
// chunks of C: returns num [B, H, L, Dv], den [B, H, L]. Inputs in compute type.
std::pair<Tensor, Tensor> causal_scan(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                      int64_t C, bool include_diagonal) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), F = q.size(3), Dv = v.size(3);
  auto S = torch::zeros({B, H, F, Dv}, q.options());
  auto z = torch::zeros({B, H, F}, q.options());
  const ChunkDecay full = chunk_decay(g, std::min(C, L), include_diagonal, q.options());
  ChunkDecay tail;
  std::vector<Tensor> nums, dens;
  for (int64_t t0 = 0; t0 < L; t0 += C) {
    const int64_t c = std::min(C, L - t0);
    if (c != full.c) tail = chunk_decay(g, c, include_diagonal, q.options());
    const ChunkDecay& d = c == full.c ? full : tail;
    auto qc = q.narrow(2, t0, c), kc = k.narrow(2, t0, c), vc = v.narrow(2, t0, c);  // [B, H, c, ·]
    auto a = torch::matmul(qc, kc.transpose(-1, -2)) * d.intra;                    // [B, H, c, c]
    auto q_carried = d.q_in.defined() ? qc * d.q_in : qc;                            // [B, H, c, F]
    nums.push_back(torch::matmul(a, vc) + torch::matmul(q_carried, S));
    dens.push_back(a.sum(-1) + torch::matmul(q_carried, z.unsqueeze(-1)).squeeze(-1));
    if (t0 + c >= L) break;  // the final state is not needed
    auto k_carried = (d.k_out.defined() ? kc * d.k_out : kc);  // [B, H, c, F]
    auto dS = torch::matmul(k_carried.transpose(-1, -2), vc);  // [B, H, F, Dv]
    auto dz = k_carried.sum(2);                                // [B, H, F]
    if (d.carry.defined()) {
      S = S * d.carry + dS;
      z = z * d.carry.view({H, 1}) + dz;
    } else {
      S = S + dS;
      z = z + dz;
    }
  }
  return {torch::cat(nums, 2), torch::cat(dens, 2)};
}

Tensor finish(const Tensor& num, const Tensor& den, const LinearAttentionOptions& opts, torch::ScalarType out) {
  auto o = opts.normalize ? num / (den.unsqueeze(-1) + opts.eps) : num;
  return o.to(out);
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

const std::vector<std::string>& feature_map_names() {
  static const std::vector<std::string> names = {"elu+1", "relu", "favor", "cosformer"};
  return names;
}

FeatureMap parse_feature_map(const std::string& name) {
  const auto& names = feature_map_names();
  for (size_t i = 0; i < names.size(); ++i) {
    if (name == names[i]) return static_cast<FeatureMap>(i);
  }
  std::string valid;
  for (const auto& n : names) valid += (valid.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown feature map '" + name + "' (valid: " + valid + ")");
}

std::string feature_map_name(FeatureMap map) { return feature_map_names().at(static_cast<size_t>(map)); }

int64_t feature_dim(const FeatureMapSpec& spec, int64_t dk) {
  switch (spec.map) {
    case FeatureMap::kFavor:
      TORCH_CHECK(spec.favor_proj.defined(), "favor feature map needs a projection");
      return spec.favor_proj.size(0);
    case FeatureMap::kCosformer:
      return 2 * dk;
    default:
      return dk;
  }
}

Tensor apply_feature_map(const Tensor& x, const FeatureMapSpec& spec, int64_t offset) {
  TORCH_CHECK(x.dim() == 4, "apply_feature_map: x must be [B, H, L, Dk], got ", x.sizes());
  NoAutocast no_autocast;
  auto xf = x.to(compute_type({x}));
  switch (spec.map) {
    case FeatureMap::kEluPlusOne:
      return torch::elu(xf) + 1;
    case FeatureMap::kRelu:
      return torch::relu(xf);
    case FeatureMap::kFavor: {
      const auto& w = spec.favor_proj;
      TORCH_CHECK(w.defined() && w.dim() == 2 && w.size(1) == x.size(3), "favor: projection must be [m, Dk = ",
                  x.size(3), "], got ", w.defined() ? w.sizes() : torch::IntArrayRef{});
      // The exponent W x − |x|²/2 is at most |w|²/2 (maximised over x), so
      // features cannot overflow fp32 for the row norms of a head dim ≲ 128.
      auto proj = torch::matmul(xf, w.to(xf.options()).t());  // [B, H, L, m]
      auto half_sq = xf.pow(2).sum(-1, /*keepdim=*/true) / 2;  // [B, H, L, 1]
      return torch::exp(proj - half_sq) / std::sqrt(static_cast<double>(w.size(0)));
    }
    case FeatureMap::kCosformer: {
      const int64_t L = x.size(2), M = spec.cosformer_horizon;
      TORCH_CHECK(M > 0 && offset >= 0 && offset + L <= M, "cosformer: positions [", offset, ", ", offset + L,
                  ") must lie below the horizon M = ", M, " so that cos(π/2 · (i−j)/M) stays positive");
      auto pos = torch::arange(offset, offset + L, xf.options()).view({L, 1});  // [L, 1]
      auto angle = pos * (kHalfPi / static_cast<double>(M));
      auto r = torch::relu(xf);
      return torch::cat({r * torch::cos(angle), r * torch::sin(angle)}, -1);  // [B, H, L, 2·Dk]
    }
  }
  throw std::logic_error("apply_feature_map: unhandled feature map");
}

Tensor favor_projection(int64_t m, int64_t dk, uint64_t seed, int64_t draw) {
  TORCH_CHECK(m > 0 && dk > 0 && draw >= 0, "favor_projection: need m > 0, dk > 0, draw >= 0, got m = ", m,
              ", dk = ", dk, ", draw = ", draw);
  NoAutocast no_autocast;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(splitmix64(seed ^ splitmix64(static_cast<uint64_t>(draw))));
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  std::vector<Tensor> blocks;
  for (int64_t rows = 0; rows < m; rows += dk) {
    auto [ortho, r] = torch::linalg_qr(torch::randn({dk, dk}, gen, f64));  // [dk, dk] each
    // LAPACK's QR fixes the signs of diag(R), which makes every column of Q
    // lean the same way (q_1 = ±g_1/|g_1| with the sign tied to g_11) and
    // biases the estimator by ~10%; sign(diag R) restores a uniform (Haar) Q.
    ortho = ortho * torch::sign(torch::diagonal(r));  // orthonormal columns
    blocks.push_back(ortho.t().narrow(0, 0, std::min(dk, m - rows)));
  }
  auto norms = torch::randn({m, dk}, gen, f64).norm(2, {1}, /*keepdim=*/true);  // [m, 1] ~ chi(dk)
  return (torch::cat(blocks, 0) * norms).to(torch::kFloat32);                // [m, dk]
}

Tensor linear_attention_chunked(const Tensor& phi_q, const Tensor& phi_k, const Tensor& v,
                                const LinearAttentionOptions& opts) {
  check_inputs("linear_attention_chunked", phi_q, phi_k, v, opts);
  NoAutocast no_autocast;
  const auto ct = compute_type({phi_q, phi_k, v, opts.decay});
  auto q = phi_q.to(ct), k = phi_k.to(ct), vf = v.to(ct);
  auto g = opts.decay.defined() ? opts.decay.to(ct) : Tensor();
  if (opts.causal) {
    auto [num, den] = causal_scan(q, k, vf, g, opts.chunk, /*include_diagonal=*/true);
    return finish(num, den, opts, v.scalar_type());
  }
  if (!g.defined()) {
    auto kv = torch::matmul(k.transpose(-1, -2), vf);                     // [B, H, F, Dv]
    auto num = torch::matmul(q, kv);                                      // [B, H, L, Dv]
    auto den = torch::matmul(q, k.sum(2).unsqueeze(-1)).squeeze(-1);      // [B, H, L]
    return finish(num, den, opts, v.scalar_type());
  }
  // γ^|t−s|: the causal scan covers s ≤ t; the strictly-causal scan of the
  // reversed sequence covers s > t.
  auto [num_fwd, den_fwd] = causal_scan(q, k, vf, g, opts.chunk, true);
  auto [num_bwd, den_bwd] = causal_scan(q.flip(2), k.flip(2), vf.flip(2), g, opts.chunk, false);
  return finish(num_fwd + num_bwd.flip(2), den_fwd + den_bwd.flip(2), opts, v.scalar_type());
}

Tensor linear_attention_naive(const Tensor& phi_q, const Tensor& phi_k, const Tensor& v,
                              const LinearAttentionOptions& opts) {
  check_inputs("linear_attention_naive", phi_q, phi_k, v, opts);
  NoAutocast no_autocast;
  const auto ct = compute_type({phi_q, phi_k, v, opts.decay});
  auto q = phi_q.to(ct), k = phi_k.to(ct), vf = v.to(ct);
  const int64_t L = q.size(2);
  auto idx = torch::arange(L, q.options());
  auto diff = idx.unsqueeze(1) - idx.unsqueeze(0);  // [L, L] t − s
  auto weight = opts.causal ? (diff >= 0).to(ct) : torch::ones_like(diff);
  if (opts.decay.defined()) weight = weight * torch::pow(opts.decay.to(ct).view({-1, 1, 1}), diff.abs());  // [H, L, L]
  auto w = torch::matmul(q, k.transpose(-1, -2)) * weight;  // [B, H, L, L]
  return finish(torch::matmul(w, vf), w.sum(-1), opts, v.scalar_type());
}

LinearAttentionState linear_attention_initial_state(int64_t B, int64_t H, int64_t F, int64_t Dv,
                                                    const torch::TensorOptions& options) {
  return {torch::zeros({B, H, F, Dv}, options), torch::zeros({B, H, F}, options)};
}

Tensor linear_attention_step(const Tensor& phi_q, const Tensor& phi_k, const Tensor& v, LinearAttentionState& state,
                             const LinearAttentionOptions& opts) {
  check_inputs("linear_attention_step", phi_q, phi_k, v, opts);
  TORCH_CHECK(opts.causal, "linear_attention_step: the recurrent form is causal only");
  const int64_t B = phi_q.size(0), H = phi_q.size(1), F = phi_q.size(3), Dv = v.size(3);
  TORCH_CHECK(phi_q.size(2) == 1, "linear_attention_step: one token at a time, got L = ", phi_q.size(2));
  TORCH_CHECK(state.S.defined() && state.z.defined() && state.S.sizes() == torch::IntArrayRef({B, H, F, Dv}) &&
                  state.z.sizes() == torch::IntArrayRef({B, H, F}),
              "linear_attention_step: state must be S [", B, ", ", H, ", ", F, ", ", Dv, "], z [", B, ", ", H,
              ", ", F, "]; got S ", state.S.defined() ? state.S.sizes() : torch::IntArrayRef{}, ", z ",
              state.z.defined() ? state.z.sizes() : torch::IntArrayRef{});
  NoAutocast no_autocast;
  const auto ct = compute_type({phi_q, phi_k, v, opts.decay, state.S});
  auto q = phi_q.to(ct).squeeze(2), k = phi_k.to(ct).squeeze(2), vf = v.to(ct).squeeze(2);  // [B, H, ·]
  auto S = state.S.to(ct), z = state.z.to(ct);
  if (opts.decay.defined()) {
    auto g = opts.decay.to(ct);
    S = S * g.view({1, H, 1, 1});
    z = z * g.view({1, H, 1});
  }
  S = S + k.unsqueeze(-1) * vf.unsqueeze(-2);  // [B, H, F, Dv]
  z = z + k;                                   // [B, H, F]
  state.S = S;
  state.z = z;
  auto num = torch::matmul(q.unsqueeze(-2), S);                   // [B, H, 1, Dv]
  auto den = (q * z).sum(-1).view({B, H, 1});                     // [B, H, 1]
  return finish(num, den, opts, v.scalar_type());
}

}  // namespace longtrain
