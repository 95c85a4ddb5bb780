// AFT reference math; see aft.h for the definition, shapes and variants.
//
// Numerics (simple, local, conv). Every sum for output row t is taken relative
// to that row's own shift σ_t = max_{t'} (K_{t'} + w_{t,t'}) over the terms the
// row sums, so every exponent is ≤ 0 (no overflow) and the largest term is
// exp(0) = 1 (the denominator is ≥ 1, never 0/0). Terms that underflow are below
// e^-87 of that largest one and are lost to rounding anyway. All shifts are
// detached: the ratio does not depend on them, so their gradient is exactly zero.
//
// Why not one shift per channel (the global max over L)? It is exact in the
// ratio, and a plain cumsum, but in causal mode a prefix whose keys sit more than
// ~87 below the sequence's maximum underflows to 0/0 in fp32 (keys ±80 suffice).
// The per-row shift needs a scan that rescales: a chunked scan, recursive over
// chunk summaries (prefix_scan below): work and memory O(kScanChunk·L·d), linear
// in L.
//
// local/conv use the banded decomposition: exp(w) = 1 outside the band, so row t
// sums the un-biased prefix up to t−s (and, bidirectional, the suffix from t+s)
// — both read off the scan — plus the s (2s−1) band terms with their bias. The
// band is added term by term rather than as "global + (exp(u)−1)·band", which
// would cancel catastrophically when exp(u) ≪ 1.
//
// full forms exp(w − rowmax(w)) [L, L] and exp(K − ref) [B, L, d] (ref: one key
// per channel) and takes their matrix products. That shift is separable, so it
// cannot be the exact max per (row, channel); the products are therefore taken in
// fp64, whose range (e^±708) holds keys up to ~700 away from ref — far beyond
// any realistic spread; fp32 would lose rows ~87 below it. A fused kernel keeps
// a running max per (row, channel) instead.
#include "model/aft.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <vector>

namespace longtrain {
namespace {

// Chunk of the stable scan: the intra-chunk step forms [B, d, L/C, C, C]
// (C·L·d elements, 64 MiB fp32 at L = 16384, d = 64) and the recursion depth is
// log_C(L) (3 levels at 16K).
constexpr int64_t kScanChunk = 16;
constexpr double kInf = std::numeric_limits<double>::infinity();

torch::ScalarType accumulation_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

void check_qkv(const char* op, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  TORCH_CHECK(q.dim() == 3, op, ": q must be [B, L, d], got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op, ": q, k, v must have one shape, got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k, v must have one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), op, ": q, k, v must be on one device");
  TORCH_CHECK(q.is_floating_point(), op, ": q, k, v must be floating point, got ", q.scalar_type());
}

// [B, L, d] -> [B, d, L] in the accumulation dtype: scans run over the last dim.
torch::Tensor channels_first(const torch::Tensor& x, torch::ScalarType acc) {
  return x.to(acc).transpose(1, 2).contiguous();
}

struct Scan {
  torch::Tensor sums;  // [B, c, n, 2]
  torch::Tensor max;   // [B, c, n], detached
};

// sums_t = Σ_{t'≤t} exp(key_{t'} − m_t) · weights_{t'}, m_t = max_{t'≤t} key_{t'}.
// key: [B, c, n]; weights: [B, c, n, 2] (denominator and numerator weights).
// Every exponent is ≤ 0; since weights of the first level are (1, V) and the
// argmax term enters with factor 1, sums_t[0] ≥ 1 there.
Scan prefix_scan(const torch::Tensor& key, const torch::Tensor& weights) {
  const int64_t B = key.size(0), c = key.size(1), n = key.size(2);
  auto m = std::get<0>(torch::cummax(key.detach(), -1));
  const auto bool_opts = torch::TensorOptions().dtype(torch::kBool).device(key.device());
  if (n <= kScanChunk) {
    auto later = torch::ones({n, n}, bool_opts).triu(1);  // [i, j]: j > i is masked
    // [B, c, i, j]: exp(key_j − m_i); −inf before exp so masked terms carry no gradient.
    auto e = torch::exp((key.unsqueeze(-2) - m.unsqueeze(-1)).masked_fill(later, -kInf));
    return {torch::matmul(e, weights), m};  // [B, c, n, 2]
  }
  const int64_t C = kScanChunk, chunks = (n + C - 1) / C, pad = chunks * C - n;
  torch::Tensor kp = key, wp = weights, mp = m;
  if (pad > 0) {
    // Repeating the last key keeps every exponent finite; zero weights make the
    // padding contribute nothing, and it only follows the real positions.
    kp = torch::cat({key, key.narrow(-1, n - 1, 1).expand({B, c, pad})}, -1);
    mp = torch::cat({m, m.narrow(-1, n - 1, 1).expand({B, c, pad})}, -1);
    wp = torch::constant_pad_nd(weights, {0, 0, 0, pad});
  }
  auto kc = kp.view({B, c, chunks, C});
  auto mc = mp.view({B, c, chunks, C});
  auto wc = wp.view({B, c, chunks, C, 2});
  auto later = torch::ones({C, C}, bool_opts).triu(1);
  // Within each chunk, relative to the exact row max: [B, c, chunks, C, C] @ [.., C, 2].
  auto e = torch::exp((kc.unsqueeze(-2) - mc.unsqueeze(-1)).masked_fill(later, -kInf));
  auto intra = torch::matmul(e, wc);  // [B, c, chunks, C, 2]
  // Each chunk summarised relative to its own max, then the same scan over chunks.
  auto local_max = kc.detach().amax(-1);  // [B, c, chunks]
  auto summary = torch::matmul(torch::exp(kc - local_max.unsqueeze(-1)).unsqueeze(-2), wc).squeeze(-2);
  Scan coarse = prefix_scan(local_max, summary);  // sums: [B, c, chunks, 2], max = m at chunk ends
  // Chunk j receives the inclusive sum of chunks < j (relative to the max before
  // it); chunk 0 receives zero, with m_0 as a harmless finite reference.
  auto carry = torch::constant_pad_nd(coarse.sums.narrow(2, 0, chunks - 1), {0, 0, 1, 0});
  auto carry_max = torch::cat({m.narrow(-1, 0, 1), coarse.max.narrow(-1, 0, chunks - 1)}, -1);
  auto rescale = torch::exp(carry_max.unsqueeze(-1) - mc);  // [B, c, chunks, C], ≤ 1
  auto sums = intra + carry.unsqueeze(3) * rescale.unsqueeze(-1);
  // [B, c, chunks, C, 2] -> [B, c, n, 2]
  return {sums.view({B, c, chunks * C, 2}).narrow(2, 0, n), m};
}

Scan suffix_scan(const torch::Tensor& key, const torch::Tensor& weights) {
  Scan s = prefix_scan(key.flip(-1), weights.flip(2));
  return {s.sums.flip(2), s.max.flip(-1)};
}

// y: [B, d, L] ratio -> σ(q) ⊙ y: [B, L, d] in q's dtype.
torch::Tensor gate(const torch::Tensor& q, const torch::Tensor& ratio_cf) {
  auto qa = q.to(ratio_cf.scalar_type());
  return (torch::sigmoid(qa) * ratio_cf.transpose(1, 2)).to(q.scalar_type());
}

// local and conv: u: [H, taps]. See the file comment for the decomposition.
torch::Tensor aft_banded(const char* op, const torch::Tensor& q, const torch::Tensor& k,
                         const torch::Tensor& v, const torch::Tensor& u, int64_t window, bool causal) {
  check_qkv(op, q, k, v);
  const int64_t L = q.size(1), d = q.size(2);
  TORCH_CHECK(window >= 1, op, ": window must be >= 1, got ", window);
  TORCH_CHECK(u.dim() == 2 && u.size(1) == aft_num_taps(window, causal), op, ": bias must be [H, ",
              aft_num_taps(window, causal), "] for window ", window, (causal ? " (causal)" : " (bidirectional)"),
              ", got ", u.sizes());
  TORCH_CHECK(u.size(0) >= 1 && d % u.size(0) == 0, op, ": d = ", d, " is not divisible by ", u.size(0),
              " heads");
  TORCH_CHECK(u.device() == q.device(), op, ": bias must be on q's device");
  const auto acc = accumulation_type(q);
  auto kc = channels_first(k, acc), vc = channels_first(v, acc);  // [B, d, L]
  // [H, taps] -> [d, taps, 1]: head h's kernel on each of its d/H channels.
  auto uc = u.to(acc).repeat_interleave(d / u.size(0), 0).unsqueeze(-1);
  auto weights = torch::stack({torch::ones_like(kc), vc}, -1);  // [B, d, L, 2]

  // Un-biased terms outside the band: the prefix ending at t−s (and the suffix
  // starting at t+s), each relative to its own max; −inf max where empty.
  const int64_t s = window, far = std::max<int64_t>(L - s, 0);
  Scan pre = prefix_scan(kc, weights);
  auto far_sums = torch::constant_pad_nd(pre.sums.narrow(2, 0, far), {0, 0, L - far, 0});
  auto far_max = torch::constant_pad_nd(pre.max.narrow(-1, 0, far), {L - far, 0}, -kInf);
  torch::Tensor suf_sums, suf_max;
  if (!causal) {
    Scan suf = suffix_scan(kc, weights);
    suf_sums = torch::constant_pad_nd(suf.sums.narrow(2, L - far, far), {0, 0, 0, L - far});
    suf_max = torch::constant_pad_nd(suf.max.narrow(-1, L - far, far), {0, L - far}, -kInf);
  }

  // Band offsets j = t − t' with rows [max(j,0), max(j,0)+len) reading sources
  // [max(−j,0), ...): len = L − |j|. Taps beyond L have no rows.
  std::vector<int64_t> offsets;
  const int64_t reach = std::min(s, L);
  for (int64_t j = causal ? 0 : 1 - reach; j < reach; ++j) offsets.push_back(j);
  auto tap = [&](int64_t j) { return causal ? j : j + s - 1; };

  torch::Tensor shift;  // [B, d, L]: the exact max exponent of each row
  {
    torch::NoGradGuard no_grad;
    shift = causal ? far_max.clone() : torch::maximum(far_max, suf_max);
    auto kd = kc.detach();
    auto ud = uc.detach();
    for (int64_t j : offsets) {
      const int64_t len = L - std::abs(j), row = std::max<int64_t>(j, 0), src = std::max<int64_t>(-j, 0);
      auto rows = shift.narrow(-1, row, len);
      rows.copy_(torch::maximum(rows, kd.narrow(-1, src, len) + ud.select(1, tap(j))));
    }
  }

  // [B, d, L, 2]: (denominator, numerator) of every row, relative to its shift.
  auto accum = far_sums * torch::exp(far_max - shift).unsqueeze(-1);
  if (!causal) accum = accum + suf_sums * torch::exp(suf_max - shift).unsqueeze(-1);
  for (int64_t j : offsets) {
    const int64_t len = L - std::abs(j), row = std::max<int64_t>(j, 0), src = std::max<int64_t>(-j, 0);
    auto e = torch::exp(kc.narrow(-1, src, len) + uc.select(1, tap(j)) - shift.narrow(-1, row, len));
    auto term = e.unsqueeze(-1) * weights.narrow(2, src, len);  // [B, d, len, 2]
    accum = accum + torch::constant_pad_nd(term, {0, 0, row, L - row - len});
  }
  return gate(q, accum.select(-1, 1) / accum.select(-1, 0));
}

}  // namespace

int64_t aft_num_taps(int64_t window, bool causal) { return causal ? window : 2 * window - 1; }

torch::Tensor aft_simple(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal) {
  check_qkv("aft_simple", q, k, v);
  const auto acc = accumulation_type(q);
  if (!causal) {
    // Every row sees all of L: one softmax over L per (b, channel), already max-shifted.
    auto p = torch::softmax(k.to(acc), 1);                      // [B, L, d]
    auto ratio = (p * v.to(acc)).sum(1, /*keepdim=*/true);      // [B, 1, d]
    return (torch::sigmoid(q.to(acc)) * ratio).to(q.scalar_type());
  }
  auto kc = channels_first(k, acc), vc = channels_first(v, acc);  // [B, d, L]
  Scan pre = prefix_scan(kc, torch::stack({torch::ones_like(kc), vc}, -1));
  return gate(q, pre.sums.select(-1, 1) / pre.sums.select(-1, 0));
}

torch::Tensor aft_local(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& u, int64_t window, bool causal) {
  TORCH_CHECK(u.dim() == 1, "aft_local: bias must be [taps], got ", u.sizes());
  return aft_banded("aft_local", q, k, v, u.unsqueeze(0), window, causal);
}

torch::Tensor aft_conv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& kernel, int64_t window, bool causal) {
  return aft_banded("aft_conv", q, k, v, kernel, window, causal);
}

torch::Tensor aft_conv_kernel(const torch::Tensor& raw, const torch::Tensor& gain, const torch::Tensor& shift) {
  TORCH_CHECK(raw.dim() == 2, "aft_conv_kernel: raw must be [H, taps], got ", raw.sizes());
  TORCH_CHECK(gain.dim() == 1 && gain.size(0) == raw.size(0) && shift.sizes() == gain.sizes(),
              "aft_conv_kernel: gain and shift must be [", raw.size(0), "], got ", gain.sizes(), ", ",
              shift.sizes());
  auto mean = raw.mean(1, /*keepdim=*/true);
  auto var = (raw - mean).pow(2).mean(1, /*keepdim=*/true);
  return gain.unsqueeze(1) * (raw - mean) * torch::rsqrt(var + 1e-5) + shift.unsqueeze(1);
}

torch::Tensor aft_full(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& w, bool causal) {
  check_qkv("aft_full", q, k, v);
  const int64_t L = q.size(1);
  TORCH_CHECK(w.dim() == 2 && w.size(0) >= L && w.size(1) >= L, "aft_full: bias must be [P, P] with P >= L = ",
              L, ", got ", w.sizes());
  TORCH_CHECK(w.device() == q.device(), "aft_full: bias must be on q's device");
  auto wl = w.narrow(0, 0, L).narrow(1, 0, L).to(torch::kFloat64);  // [L, L]
  if (causal) {
    auto later = torch::ones({L, L}, torch::TensorOptions().dtype(torch::kBool).device(w.device())).triu(1);
    wl = wl.masked_fill(later, -kInf);
  }
  auto a = torch::exp(wl - wl.detach().amax(1, /*keepdim=*/true));  // [L, L], row max 1
  auto kd = k.to(torch::kFloat64);
  // Per-channel reference key [B, 1, d]: the max over L when bidirectional; the
  // first key when causal, so that no row's arithmetic depends on later tokens
  // (a changed future key leaves earlier outputs bit-identical).
  auto ref = causal ? kd.detach().narrow(1, 0, 1) : kd.detach().amax(1, /*keepdim=*/true);
  auto e = torch::exp(kd - ref);  // [B, L, d]
  auto num = torch::matmul(a, e * v.to(torch::kFloat64));            // [L, L] @ [B, L, d] -> [B, L, d]
  auto den = torch::matmul(a, e);
  const auto acc = accumulation_type(q);
  return (torch::sigmoid(q.to(acc)) * (num / den).to(acc)).to(q.scalar_type());
}

torch::Tensor aft_full_bias(const torch::Tensor& u, const torch::Tensor& v, int64_t length) {
  TORCH_CHECK(u.dim() == 2 && v.sizes() == u.sizes(), "aft_full_bias: u and v must be [P, rank] alike, got ",
              u.sizes(), ", ", v.sizes());
  TORCH_CHECK(length <= u.size(0), "aft_full_bias: length ", length, " exceeds the ", u.size(0),
              " positions of the factors");
  return torch::matmul(u.narrow(0, 0, length), v.narrow(0, 0, length).t());  // [L, L]
}

torch::Tensor aft_relative_bias_dense(const torch::Tensor& u, int64_t length, int64_t window, bool causal) {
  TORCH_CHECK(u.dim() == 2 && u.size(1) == aft_num_taps(window, causal),
              "aft_relative_bias_dense: bias must be [H, ", aft_num_taps(window, causal), "], got ", u.sizes());
  auto pos = torch::arange(length, torch::TensorOptions().dtype(torch::kInt64).device(u.device()));
  auto offset = pos.unsqueeze(1) - pos.unsqueeze(0);  // [L, L]: t − t'
  auto inside = causal ? (offset >= 0).logical_and(offset < window) : offset.abs() < window;
  auto tap = (causal ? offset : offset + (window - 1)).clamp(0, u.size(1) - 1);
  auto gathered = u.index_select(1, tap.flatten()).view({u.size(0), length, length});  // [H, L, L]
  return torch::where(inside, gathered, torch::zeros_like(gathered));
}

torch::Tensor aft_naive(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& bias, bool causal) {
  check_qkv("aft_naive", q, k, v);
  const int64_t B = q.size(0), L = q.size(1), d = q.size(2);
  TORCH_CHECK(bias.dim() == 3 && bias.size(1) == L && bias.size(2) == L && bias.size(0) >= 1 &&
                  d % bias.size(0) == 0,
              "aft_naive: bias must be [H, L, L] with L = ", L, " and H dividing d = ", d, ", got ", bias.sizes());
  const int64_t H = bias.size(0), dh = d / H;
  const auto acc = accumulation_type(q);
  // [B, L, d] -> [B, H, L, dh]
  auto kh = k.to(acc).view({B, L, H, dh}).permute({0, 2, 1, 3});
  auto vh = v.to(acc).view({B, L, H, dh}).permute({0, 2, 1, 3});
  // [B, H, t, t', dh]
  auto logits = kh.unsqueeze(2) + bias.to(acc).unsqueeze(0).unsqueeze(-1);
  if (causal) {
    auto later = torch::ones({L, L}, torch::TensorOptions().dtype(torch::kBool).device(q.device())).triu(1);
    logits = logits.masked_fill(later.unsqueeze(-1), -kInf);
  }
  auto ratio = (torch::softmax(logits, 3) * vh.unsqueeze(2)).sum(3);  // [B, H, L, dh]
  // [B, H, L, dh] -> [B, L, d]
  ratio = ratio.permute({0, 2, 1, 3}).reshape({B, L, d});
  return (torch::sigmoid(q.to(acc)) * ratio).to(q.scalar_type());
}

AftSimpleState aft_simple_initial_state(int64_t batch, int64_t dim, const torch::TensorOptions& options) {
  const auto acc = options.dtype() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  auto opts = options.dtype(acc);
  return {torch::zeros({batch, dim}, opts), torch::zeros({batch, dim}, opts),
          torch::full({batch, dim}, -kInf, opts)};
}

torch::Tensor aft_simple_step(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              AftSimpleState& state) {
  TORCH_CHECK(q.dim() == 2 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "aft_simple_step: q, k, v must be [B, d] alike, got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(state.num.defined() && state.num.sizes() == q.sizes(), "aft_simple_step: state is ",
              (state.num.defined() ? state.num.sizes() : torch::IntArrayRef{}), " but the token is ", q.sizes(),
              " (start from aft_simple_initial_state)");
  const auto acc = state.num.scalar_type();
  auto ka = k.to(acc);
  auto new_max = torch::maximum(state.max, ka);
  auto rescale = torch::exp(state.max - new_max);  // 0 on the first token (max = −inf)
  auto e = torch::exp(ka - new_max);
  state.num = state.num * rescale + e * v.to(acc);
  state.den = state.den * rescale + e;
  state.max = new_max;
  return (torch::sigmoid(q.to(acc)) * state.num / state.den).to(q.scalar_type());
}

}  // namespace longtrain
