// Plain parameters of the causal AFT-simple scan kernels (no torch types: this
// header is shared by op.cpp and the .cu files).
//
// Tensors q, k, v, y (and dy, dq, dk, dv) are [B, L, d] addressed by element
// strides (batch, row); the channel dim is contiguous and d is even (each
// thread owns two adjacent channels, one 4-byte load per row).
//
// The scan state of one channel is (max, num, den): num and den are the sums
// of exp(k_s - max) v_s and exp(k_s - max) over the positions seen, max the
// largest key seen (see scan.cuh). The forward saves the state *before* every
// sub-chunk of kSub positions ([3, B, n_sub, d] fp32: max, num, den); the
// backward restarts its recomputation from those, so it needs no per-position
// fp32 tensor. L is cut into chunks of `chunk` positions (a multiple of kSub,
// chosen per launch by aft_chunk_size) for the two-level scan.
#pragma once

#include <algorithm>
#include <cstdint>

namespace longtrain::kernels {

constexpr int kAftSub = 8;        // positions per sub-chunk (saved state granularity)
constexpr int kAftSegments = 32;  // segments of the scan across chunk summaries (one CTA of 32 x 32)

struct AftSimpleParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* y = nullptr;        // null: run the scan for the saved state only
  int64_t q_strides[2], k_strides[2], v_strides[2], y_strides[2];  // batch, row
  float* state = nullptr;  // [3, B, n_sub, d] saved (max, num, den) before each sub-chunk
  float* summary = nullptr; // [3, B, n_summaries, d] workspace: each summary chunk's own state
  float* carry = nullptr;   // [3, B, n_summaries, d] workspace: exclusive carries into each
  int B = 0, L = 0, d = 0;
  int chunk = 0;           // positions per chunk, a multiple of kAftSub
  int summary_chunk = 0;   // forward: positions per summary of the cross-chunk scan, dividing
                           // chunk (the summaries want more threads than the chunk pass); 0: chunk
};

struct AftSimpleBwdParams {
  AftSimpleParams fwd;     // q, k, v and the saved state; y unused
  const void* dy = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  int64_t dy_strides[2], dq_strides[2], dk_strides[2], dv_strides[2];
  float* wsum = nullptr;   // [3, B, n_chunks, d] workspace: per-chunk suffix-sum summaries and decays
  float* xcarry = nullptr; // [2, B, n_chunks, d] workspace: suffix carries entering each chunk
};

// Causal AFT-local / AFT-conv: a banded Toeplitz bias u[h, j] on the pairs
// (t, s = t - j), j < window; head h owns channels [h d/H, (h+1) d/H), d/H even.
struct AftBandParams {
  AftSimpleParams scan;      // q, k, v, y and the un-biased scan's saved state
  const float* u = nullptr;  // [H, window] fp32 contiguous
  int H = 1, window = 1;
  float* rows = nullptr;     // [2, B, L, d] fp32: lse_t and R_t of every output row, for the backward
};

struct AftBandBwdParams {
  AftSimpleBwdParams scan;   // scan.fwd = the forward's AftBandParams::scan (y unused)
  const float* u = nullptr;
  int H = 1, window = 1;
  const float* rows = nullptr;
  float* du = nullptr;       // [H, window] fp32, zeroed by the caller; accumulated with atomics
};

enum class AftDType { kBFloat16, kFloat16 };

// Positions per chunk for this problem: the largest power of two in
// [kAftSub, 256] that still gives about one thread per H100 thread slot.
inline int aft_chunk_size(int64_t B, int64_t L, int64_t d) {
  int c = 256;
  while (c > kAftSub && B * (d / 2) * ((L + c - 1) / c) < 128 * 1024) c /= 2;
  return c;
}

// The chunk passes (forward chunk kernel, backward summary and chunk kernels)
// run chunks of twice that, while the forward's summaries keep aft_chunk_size:
// measured on the H100 at B = 1, L = 16K, d = 1024 (kernels/aft/NOTES.md), the
// summaries are fastest at 64 positions and the chunk passes at 128.
inline int aft_pass_chunk_size(int64_t B, int64_t L, int64_t d) { return std::min(256, 2 * aft_chunk_size(B, L, d)); }

// Positions per forward summary (host and device: the kernels chunk by it).
#ifdef __CUDACC__
__host__ __device__
#endif
inline int aft_summary_chunk(const AftSimpleParams& p) { return p.summary_chunk > 0 ? p.summary_chunk : p.chunk; }

// Launchers (fwd.cu, bwd.cu): check the last CUDA error and throw with the
// kernel name on failure. `stream` is a cudaStream_t.
void aft_simple_fwd(const AftSimpleParams& p, AftDType dtype, void* stream);
void aft_simple_bwd(const AftSimpleBwdParams& p, AftDType dtype, void* stream);
void aft_band_fwd(const AftBandParams& p, AftDType dtype, void* stream);    // band.cu
void aft_band_bwd(const AftBandBwdParams& p, AftDType dtype, void* stream);

// AFT-full's elementwise tile steps (full.cu); the GEMMs are cuBLAS's (full_op.cpp).
// w: the [L, L] bias (a view of the learned table, row stride w_stride) in
// fp32, bf16 or fp16. A tile covers rows [row0, row1) and columns [col0, col1)
// of the pair matrix; element (r, c) is masked (exactly 0) when causal and c > r.
// P = exp(w - m[r]) of the tile goes out row-major with row stride p_stride in
// the GEMM operand dtype (the inputs' dtype).
enum class AftFullWDType { kFloat32, kBFloat16, kFloat16 };

struct AftFullTileParams {
  const void* w = nullptr;
  int64_t w_stride = 0;
  float* m = nullptr;         // [L] row shifts: written by aft_full_p_rows, read by the others
  float* s = nullptr;         // [L] row sums of exp(w - m) in fp32: written by aft_full_p_rows
  const float* dcorr = nullptr;  // [L] (p_dw) per-row shift of dP, see aft_full_p_dw below
  void* p = nullptr;          // out (p_rows, p_dw): the tile's P
  int64_t p_stride = 0;
  const void* dp = nullptr;   // in (p_dw): dP of rows [row0, L) x [col0, col1), operand dtype
  int64_t dp_stride = 0;
  void* dw = nullptr;         // out (p_dw): the [L, L] bias gradient in w's dtype
  int64_t dw_stride = 0;
  int row0 = 0, row1 = 0, col0 = 0, col1 = 0, L = 0;
  bool causal = true;
};

// Launchers (full.cu), each on `stream` (a cudaStream_t), checking the launch:
// - p_rows: rows [row0, row1) x columns [0, col1): m[r] = max of row r's
//   unmasked w over those columns, then P, and s[r] = the row's sum of P (fp32).
// - p_dw: rows [0, L) x columns [col0, col1) (row1 = L): P of rows [row0, L)
//   with the saved m, and dw = exp(w - m[r]) * (dP - dcorr[r]) for unmasked
//   r >= row0, 0 elsewhere (every element of the column slab written).
// The O(L·d) steps around the GEMMs, one fused kernel each (full.cu). q, k,
// v, dy: [B, L, d] in the operand dtype with unit channel stride; the pair
// tensors [L, B·2d] (column b·2d + c: the first of the pair, b·2d + d + c: the
// second) and [B, L, d] outputs contiguous.
struct AftFullRowsParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* dy = nullptr;
  int64_t q_strides[2] = {0, 0}, k_strides[2] = {0, 0}, v_strides[2] = {0, 0}, dy_strides[2] = {0, 0};
  const float* ref = nullptr;  // [B, d]: the max over L of each channel's key
  void* pairs = nullptr;       // out, operand dtype: AE = [e·v | e] (fwd_prep), G = [dnum | dden] (bwd_prep)
  const float* nd = nullptr;   // [L, B·2d] fp32 [num | den] (fwd_out, bwd_prep)
  const float* dae = nullptr;  // [L, B·2d] fp32 [dA | dE] (bwd_post)
  const float* row_sums = nullptr;  // [L] (bwd_prep)
  float* corr = nullptr;       // out [L] (bwd_prep): Σ_row G·ND / row_sums
  void* y = nullptr;           // out [B, L, d] (fwd_out)
  void* dq = nullptr;          // out [B, L, d] (bwd_prep)
  void* dk = nullptr;          // out [B, L, d] (bwd_post)
  void* dv = nullptr;          // out [B, L, d] (bwd_post)
  int B = 0, L = 0, d = 0;
};
// fwd_prep: AE from k, v, ref. fwd_out: y = σ(q) num/den. bwd_prep: dq, G and
// corr from dy, q, ND. bwd_post: dk, dv from dAE, k, v, ref.
void aft_full_fwd_prep(const AftFullRowsParams& p, AftDType op, void* stream);
void aft_full_fwd_out(const AftFullRowsParams& p, AftDType op, void* stream);
void aft_full_bwd_prep(const AftFullRowsParams& p, AftDType op, void* stream);
void aft_full_bwd_post(const AftFullRowsParams& p, AftDType op, void* stream);

void aft_full_p_rows(const AftFullTileParams& p, AftFullWDType w, AftDType op, void* stream);
void aft_full_p_dw(const AftFullTileParams& p, AftFullWDType w, AftDType op, void* stream);

}  // namespace longtrain::kernels
