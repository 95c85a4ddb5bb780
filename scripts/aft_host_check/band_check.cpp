// Host check of causal AFT-local/conv (run.sh): the band kernels on the CPU against a naive fp64 O(L^2) reference, du included.
#include <cstdio>
#include <random>
#include <limits>
#include "kernels/aft/params.h"
#include "cuda_runtime.h"
#include "cuda_bf16.h"
using namespace longtrain::kernels;
static std::mt19937 rng(2);
int main() {
  struct Cfg { int B, L, d, H, win, chunk; float kscale, uscale; int row_mult; };
  Cfg cfgs[] = {{1, 1, 2, 1, 1, 8, 1, 1, 1},   {2, 37, 4, 2, 5, 8, 1, 1, 1},   {1, 37, 4, 1, 64, 16, 1, 1, 3},
                {2, 100, 8, 2, 7, 32, 1, 3, 1}, {1, 203, 4, 1, 16, 64, 3, 1, 1}, {1, 150, 12, 3, 9, 8, 1, 8, 1},
                {2, 300, 6, 1, 33, 256, 1, 1, 3}, {1, 129, 8, 4, 1, 0, 1, 1, 1},
                // widths whose warps lie in one row: du summed over 16 / 32 lanes by shuffles
                // (d = 96: some warps straddle two rows and take an atomic per thread, the others sum over 8 lanes)
                {2, 130, 64, 2, 20, 16, 1, 1, 1}, {1, 90, 128, 1, 40, 32, 1, 1, 2}, {2, 77, 96, 6, 12, 8, 3, 2, 1}};
  int fails = 0;
  for (auto c : cfgs) {
    const int B = c.B, L = c.L, d = c.d, H = c.H, win = c.win, rs = d * c.row_mult, dh = d / H;
    const int chunk = c.chunk ? c.chunk : aft_chunk_size(B, L, d);
    std::normal_distribution<float> N(0, 1);
    auto make = [&](float sc) { std::vector<__nv_bfloat16> x((size_t)B * L * rs); for (auto& e : x) e = f2bf(N(rng) * sc); return x; };
    auto q = make(1), k = make(c.kscale), v = make(1), dy = make(1);
    std::vector<float> u((size_t)H * win);
    for (auto& e : u) e = N(rng) * c.uscale;
    if (win > 2) u[1] = -30.f;  // a tap that all but removes its term: must not cancel
    const float nanf = std::numeric_limits<float>::quiet_NaN();
    auto nanbf = [&](size_t n) { return std::vector<__nv_bfloat16>(n, f2bf(nanf)); };
    auto y = nanbf((size_t)B * L * d), dq = nanbf((size_t)B * L * d), dk = dq, dv = dq;
    const int nsub = (L + 7) / 8, nch = (L + chunk - 1) / chunk;
    std::vector<float> state((size_t)3 * B * nsub * d, nanf), summ((size_t)3 * B * nch * d, nanf), carry = summ,
        wsum((size_t)3 * B * nch * d, nanf), xc((size_t)2 * B * nch * d, nanf), rows((size_t)2 * B * L * d, nanf), du((size_t)H * win, 0.f);
    AftBandParams bp;
    AftSimpleParams& p = bp.scan;
    p.q = q.data(); p.k = k.data(); p.v = v.data(); p.y = y.data();
    for (auto* s : {p.q_strides, p.k_strides, p.v_strides}) { s[0] = (int64_t)L * rs; s[1] = rs; }
    p.y_strides[0] = (int64_t)L * d; p.y_strides[1] = d;
    p.state = state.data(); p.summary = summ.data(); p.carry = carry.data();
    p.B = B; p.L = L; p.d = d; p.chunk = chunk;
    bp.u = u.data(); bp.H = H; bp.window = win; bp.rows = rows.data();
    aft_band_fwd(bp, AftDType::kBFloat16, nullptr);
    AftBandBwdParams bb; AftSimpleBwdParams& sb = bb.scan;
    sb.fwd = p; sb.dy = dy.data(); sb.dq = dq.data(); sb.dk = dk.data(); sb.dv = dv.data();
    sb.dy_strides[0] = (int64_t)L * rs; sb.dy_strides[1] = rs;
    for (auto* s : {sb.dq_strides, sb.dk_strides, sb.dv_strides}) { s[0] = (int64_t)L * d; s[1] = d; }
    sb.wsum = wsum.data(); sb.xcarry = xc.data();
    bb.u = u.data(); bb.H = H; bb.window = win; bb.rows = rows.data(); bb.du = du.data();
    aft_band_bwd(bb, AftDType::kBFloat16, nullptr);
    double err[4] = {0, 0, 0, 0}, scale[4] = {0, 0, 0, 0};
    std::vector<double> du_ref((size_t)H * win, 0.0);
    for (int b = 0; b < B; ++b)
      for (int ch = 0; ch < d; ++ch) {
        const int h = ch / dh;
        auto at = [&](const std::vector<__nv_bfloat16>& x, int t) { return (double)bf2f(x[((size_t)b * L + t) * rs + ch]); };
        auto out = [&](const std::vector<__nv_bfloat16>& x, int t) { return (double)bf2f(x[((size_t)b * L + t) * d + ch]); };
        auto logit = [&](int t, int s) { return at(k, s) + (t - s < win ? (double)u[h * win + t - s] : 0.0); };
        std::vector<double> lse(L), R(L), G(L), sg(L), dks(L, 0), dvs(L, 0);
        for (int t = 0; t < L; ++t) {
          double m = -1e300; for (int s = 0; s <= t; ++s) m = std::max(m, logit(t, s));
          double num = 0, den = 0; for (int s = 0; s <= t; ++s) { double e = std::exp(logit(t, s) - m); num += e * at(v, s); den += e; }
          lse[t] = m + std::log(den); R[t] = num / den; sg[t] = 1 / (1 + std::exp(-at(q, t))); G[t] = at(dy, t) * sg[t];
          for (int s = 0; s <= t; ++s) {
            const double pr = std::exp(logit(t, s) - lse[t]);
            dvs[s] += G[t] * pr; dks[s] += G[t] * pr * (at(v, s) - R[t]);
            if (t - s < win) du_ref[h * win + t - s] += G[t] * pr * (at(v, s) - R[t]);
          }
        }
        for (int t = 0; t < L; ++t) {
          double ref[4] = {sg[t] * R[t], G[t] * R[t] * (1 - sg[t]), dks[t], dvs[t]};
          double got[4] = {out(y, t), out(dq, t), out(dk, t), out(dv, t)};
          for (int i = 0; i < 4; ++i) {
            double e = std::fabs(got[i] - ref[i]); if (!(e == e)) e = 1e30;
            err[i] = std::max(err[i], e); scale[i] = std::max(scale[i], std::fabs(ref[i]));
          }
        }
      }
    double du_err = 0, du_scale = 0;
    for (size_t i = 0; i < du.size(); ++i) { double e = std::fabs(du[i] - du_ref[i]); if (!(e == e)) e = 1e30; du_err = std::max(du_err, e); du_scale = std::max(du_scale, std::fabs(du_ref[i])); }
    bool ok = du_err <= 1e-4 * std::max(du_scale, 1.0);
    for (int i = 0; i < 4; ++i) if (err[i] > 8e-3 * std::max(scale[i], 1e-3) + 1e-6) ok = false;
    fails += !ok;
    printf("%s B%d L%d d%d H%d w%d chunk%d: err/max|ref| y %.1e dq %.1e dk %.1e dv %.1e du %.1e (max|du| %.2f)\n", ok ? "ok  " : "FAIL",
           B, L, d, H, win, chunk, err[0] / scale[0], err[1] / scale[1], err[2] / std::max(scale[2], 1e-30), err[3] / scale[3],
           du_err / std::max(du_scale, 1e-30), du_scale);
  }
  return fails;
}
