// Host check of causal AFT-simple (run.sh): the kernels on the CPU against a naive fp64 O(L^2) reference.
#include <cstdio>
#include <random>
#include <limits>
#include "kernels/aft/params.h"
#include "cuda_runtime.h"
#include "cuda_bf16.h"
using namespace longtrain::kernels;
static std::mt19937 rng(1);
float bfround(float f) { return bf2f(f2bf(f)); }
int main() {
  struct Cfg { int B, L, d, chunk; float kscale; int row_mult; int summary = 0; };  // summary: forward summary chunk (0: chunk)
  Cfg cfgs[] = {{1, 1, 2, 8, 1, 1}, {2, 37, 6, 8, 1, 1}, {2, 37, 6, 16, 1, 3}, {1, 100, 4, 32, 1, 1},
                {2, 203, 4, 8, 1, 1}, {1, 203, 4, 64, 30, 1}, {1, 300, 66, 256, 1, 3}, {1, 1000, 2, 8, 1, 1},
                {3, 77, 4, 16, 5, 1}, {1, 129, 70, 0, 1, 1}, {2, 600, 130, 8, 1, 3}, {2, 600, 130, 0, 3, 1},
                {1, 300, 66, 64, 1, 1, 16}, {2, 203, 4, 32, 30, 1, 8}, {1, 1000, 2, 64, 1, 3, 32}};
  int fails = 0;
  for (auto c : cfgs) {
    const int B = c.B, L = c.L, d = c.d;
    const int rs = d * c.row_mult;  // row stride (fused-qkv-like views when > d)
    const int chunk = c.chunk ? c.chunk : aft_chunk_size(B, L, d);
    std::normal_distribution<float> N(0, 1);
    auto make = [&](float sc) { std::vector<__nv_bfloat16> x((size_t)B * L * rs); for (auto& e : x) e = f2bf(N(rng) * sc); return x; };
    auto q = make(1), k = make(c.kscale), v = make(1), dy = make(1);
    const float nanf = std::numeric_limits<float>::quiet_NaN();
    auto nanbf = [&](size_t n) { return std::vector<__nv_bfloat16>(n, f2bf(nanf)); };
    auto y = nanbf((size_t)B * L * d), dq = nanbf((size_t)B * L * d), dk = dq, dv = dq;
    const int nsub = (L + 7) / 8, nch = (L + chunk - 1) / chunk, sc = c.summary ? c.summary : chunk,
              nsum = (L + sc - 1) / sc;
    std::vector<float> state((size_t)3 * B * nsub * d, nanf), summ((size_t)3 * B * nsum * d, nanf), carry = summ,
        wsum((size_t)3 * B * nch * d, nanf), xc((size_t)2 * B * nch * d, nanf);
    AftSimpleParams p;
    p.q = q.data(); p.k = k.data(); p.v = v.data(); p.y = y.data();
    for (auto* s : {p.q_strides, p.k_strides, p.v_strides}) { s[0] = (int64_t)L * rs; s[1] = rs; }
    p.y_strides[0] = (int64_t)L * d; p.y_strides[1] = d;
    p.state = state.data(); p.summary = summ.data(); p.carry = carry.data();
    p.B = B; p.L = L; p.d = d; p.chunk = chunk; p.summary_chunk = c.summary;
    aft_simple_fwd(p, AftDType::kBFloat16, nullptr);
    AftSimpleBwdParams bp; bp.fwd = p; bp.fwd.summary_chunk = 0; bp.dy = dy.data(); bp.dq = dq.data(); bp.dk = dk.data(); bp.dv = dv.data();
    bp.dy_strides[0] = (int64_t)L * rs; bp.dy_strides[1] = rs;
    for (auto* s : {bp.dq_strides, bp.dk_strides, bp.dv_strides}) { s[0] = (int64_t)L * d; s[1] = d; }
    bp.wsum = wsum.data(); bp.xcarry = xc.data();
    aft_simple_bwd(bp, AftDType::kBFloat16, nullptr);
    // fp64 reference, naive O(L^2) per channel
    double err[4] = {0, 0, 0, 0}, scale[4] = {0, 0, 0, 0};
    for (int b = 0; b < B; ++b)
      for (int ch = 0; ch < d; ++ch) {
        auto at = [&](const std::vector<__nv_bfloat16>& x, int t) { return (double)bf2f(x[((size_t)b * L + t) * rs + ch]); };
        auto out = [&](const std::vector<__nv_bfloat16>& x, int t) { return (double)bf2f(x[((size_t)b * L + t) * d + ch]); };
        std::vector<double> lse(L), R(L), G(L), sg(L);
        for (int t = 0; t < L; ++t) {
          double m = -1e300; for (int s = 0; s <= t; ++s) m = std::max(m, at(k, s));
          double num = 0, den = 0; for (int s = 0; s <= t; ++s) { double e = std::exp(at(k, s) - m); num += e * at(v, s); den += e; }
          lse[t] = m + std::log(den); R[t] = num / den; sg[t] = 1 / (1 + std::exp(-at(q, t))); G[t] = at(dy, t) * sg[t];
        }
        for (int t = 0; t < L; ++t) {
          double dvs = 0, dks = 0;
          for (int tt = t; tt < L; ++tt) { double pr = std::exp(at(k, t) - lse[tt]); dvs += G[tt] * pr; dks += G[tt] * pr * (at(v, t) - R[tt]); }
          double ref[4] = {sg[t] * R[t], G[t] * R[t] * (1 - sg[t]), dks, dvs};
          double got[4] = {out(y, t), out(dq, t), out(dk, t), out(dv, t)};
          for (int i = 0; i < 4; ++i) {
            double e = std::fabs(got[i] - ref[i]); if (!(e == e)) e = 1e30;
            err[i] = std::max(err[i], e); scale[i] = std::max(scale[i], std::fabs(ref[i]));
          }
        }
      }
    bool ok = true;
    for (int i = 0; i < 4; ++i) if (err[i] > 8e-3 * std::max(scale[i], 1e-3) + 1e-6) ok = false;
    fails += !ok;
    printf("%s B%d L%d d%d chunk%d keys%.0f rowstride%d: max err / max|ref| y %.1e dq %.1e dk %.1e dv %.1e\n", ok ? "ok  " : "FAIL",
           B, L, d, chunk, c.kscale, rs, err[0] / scale[0], err[1] / scale[1], err[2] / std::max(scale[2], 1e-30), err[3] / scale[3]);
  }
  return fails;
}
