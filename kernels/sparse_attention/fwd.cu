// Block-sparse flash attention, forward.
//
//   o[i] = sum_j softmax_j(q_i . k_j * scale) v_j over the keys j the layout
//   allows for query i;  lse[i] = log sum_j exp(q_i . k_j * scale)
//
// One CTA per (work item, batch * head): a query tile of 64 rows, or a piece
// of a row far longer than the rest (BigBird's global rows; the piece that
// finishes last merges the pieces' partial softmax). 4 warps (one warpgroup), 16 query
// rows each. The CTA walks its item's visits of the layout: K and V tiles
// are copied asynchronously into shared memory one visit ahead, S = Q K^T and
// O += P V run on tensor cores (wgmma, fp32 accumulators; v1-v3 used mma.sync),
// and the softmax is the online one (running max and sum in registers,
// base-2 exponentials).
// Full visits skip element masking; partial visits, the sequence end and
// excluded keys mask per element. Never an L x L matrix in memory.
//
// Matches: model/sparse_attention.cpp (the reference) on the same layout.
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/launch_check.h"
#include "kernels/math_constants.h"
#include "kernels/sparse_attention/tile.cuh"
#include "kernels/swizzle.h"
#include "kernels/wgmma.cuh"

namespace longtrain::kernels {
namespace {

using namespace tile;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// The conditional rescale's threshold, in log2 units (the forward's softmax).
constexpr float kRescaleAbove = 8.f;

// v4: the products as warpgroup instructions (kernels/wgmma.cuh): the 4 warps
// are one warpgroup, Q, K and V are read by the tensor cores straight from
// shared memory in swizzle.h's layout (one read per CTA, where each warp's
// mma.sync loaded all of K and V through ldmatrix), and P goes from the S
// accumulators to the P V product's A registers. The accumulators keep the
// mma.sync C layout, so the masking and the online softmax are v3's. (Q as
// register A fragments held across visits gave wrong scores from the second
// visit on at D = 64, though not at D = 128; Q from shared memory is right
// at both: NOTES.md, v4.)

// A split row's pieces' partial softmax merged into o and lse (by the last
// piece to finish, v8; a kernel of its own before):
//   o = sum_k 2^(m_k - M) o_k / sum_k 2^(m_k - M) l_k,  M = max_k m_k,
// two threads per row, each D / 2 columns; the partials read from L2.
template <typename T, int D>
__device__ __forceinline__ void merge_split_rows(const SparseAttentionParams& p, int bh, int qt, int first, int n) {
  constexpr int kPer = kThreads / kTile, kCols = D / kPer;
  const int r = threadIdx.x / kPer, c0 = (threadIdx.x % kPer) * kCols, row = qt * kTile + r;
  if (row >= p.L) return;
  const int64_t at = static_cast<int64_t>(bh) * p.layout.row_work.n_pieces + first;
  const float* ml = p.ml_part + at * 2 * kTile + r;
  const float* op = p.o_part + at * kTile * D + r * D + c0;
  float mx = -INFINITY;
  for (int k = 0; k < n; ++k) mx = fmaxf(mx, __ldcg(ml + k * 2 * kTile));
  float sum = 0.f, acc[kCols] = {};
  if (mx > -INFINITY) {
    for (int k = 0; k < n; ++k) {
      const float w = exp2f(__ldcg(ml + k * 2 * kTile) - mx);
      sum += w * __ldcg(ml + k * 2 * kTile + kTile);
      const float4* o4 = reinterpret_cast<const float4*>(op + static_cast<int64_t>(k) * kTile * D);
#pragma unroll
      for (int j = 0; j < kCols / 4; ++j) {
        const float4 x = __ldcg(o4 + j);
        acc[4 * j] += w * x.x, acc[4 * j + 1] += w * x.y, acc[4 * j + 2] += w * x.z, acc[4 * j + 3] += w * x.w;
      }
    }
  }
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  const int b = bh / p.H, h = bh % p.H;
  T* out = static_cast<T*>(p.o) + b * p.o_strides[0] + h * p.o_strides[1] + static_cast<int64_t>(row) * p.o_strides[2] + c0;
#pragma unroll
  for (int j = 0; j < kCols; j += 2) *reinterpret_cast<uint32_t*>(out + j) = Pack<T>::from(acc[j] * inv, acc[j + 1] * inv);
  if (c0 == 0) p.lse[static_cast<int64_t>(bh) * p.L + row] = sum > 0.f ? (mx + log2f(sum)) / kLog2e : -INFINITY;
}

// kMinBlocks CTAs per SM: 4 at D = 64 (128 registers since v8's last-piece
// merge, no spill; with Q in registers 3 had been slower than 4, 0.164
// against 0.147 ms at 16K), 2 at D = 128 (167 registers at v10; its 81 KiB of
// shared memory allow 2).
template <typename T, int D, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks) sparse_attention_fwd_kernel(const SparseAttentionParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* qs = align_1024<T>(smem_raw);
  T* ks = qs + WgSmem<D>::kTileElems;  // [kStages] buffers
  T* vs = ks + kStages * WgSmem<D>::kTileElems;
  StageMeta* meta = reinterpret_cast<StageMeta*>(vs + kStages * WgSmem<D>::kTileElems);

  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const SparseLayoutParams& lay = p.layout;
  const int32_t* item = work_item(lay.row_work, lay, h);
  const int qt = item[0], v0 = item[1], v1 = item[2];
  if (qt < 0) return;  // this layout has fewer work items than the grid

  const T* q = static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_strides[0] + h * p.k_strides[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_strides[0] + h * p.v_strides[1];
  const int row_a = warp * 16 + g, row_b = row_a + 8;  // this thread's two rows in the tile

  float o[D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const float scale_log2 = p.scale * kLog2e;

  // Tile row `tr` of a [L, D] matrix into a swizzled tile.
  auto load = [&](T* tile, const T* src, int64_t stride, int tr) {
    load_tile_async<D, kThreads>(tile, src, stride, tr * kTile, p.L, tid);
  };
  load(qs, q, p.q_strides[2], qt);
  VisitRef ahead = prime_kv<D, kThreads>(ks, vs, meta, k, v, p, first_visit(item), v0, v1, tid);

  const uint32_t qa = smem_addr(qs);
  for (int visit = v0; visit < v1; ++visit) {
    const int buf = next_kv_visit<D, kThreads>(ks, vs, meta, k, v, p, ahead, visit, v0, v1, tid);
    const uint32_t kb = smem_addr(ks + buf * WgSmem<D>::kTileElems);
    const uint32_t vb = smem_addr(vs + buf * WgSmem<D>::kTileElems);

    const RowVisitMask vm = row_visit_mask(p, meta, b, buf);

    // S = Q K^T (raw scores; the scale is folded into the exponent's FMA),
    // written over s (v5: no zeroing first).
    float s[kTile / 8][4];
    wg::product_ss<false, false, D / 16, T, true>(
        s, [&](int kk) { return wg::desc_nk<kTile>(qa, kk); }, [&](int kk) { return wg::desc_nk<kTile>(kb, kk); });
    if (vm.any()) mask_scores(s, vm, row_a, row_b, t, -INFINITY);

    // Online softmax (base 2, m in the scaled domain). m is the exponents'
    // reference, raised only when a row's max passes it by more than
    // kRescaleAbove (FlashAttention-4's conditional rescale): then the warp
    // rescales O and l together; otherwise the exponentials keep the old
    // reference and stay below 2^kRescaleAbove (exact in fp32, P's bf16/fp16
    // rounding relative as before), and lse = m + log2(l) holds either way.
    float mx[2];
    bool grow = false;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float x = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < kTile / 8; ++nb) x = fmaxf(x, fmaxf(s[nb][2 * r], s[nb][2 * r + 1]));
      mx[r] = quad_max(x) * scale_log2;
      grow |= mx[r] > m[r] + kRescaleAbove;
    }
    if (__any_sync(0xffffffff, grow)) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float nm = fmaxf(m[r], mx[r]);
        const float alpha = exp2f(m[r] - (nm == -INFINITY ? 0.f : nm));
        m[r] = nm;
        l[r] *= alpha;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn) o[dn][2 * r] *= alpha, o[dn][2 * r + 1] *= alpha;
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float use = m[r] == -INFINITY ? 0.f : m[r];
      float sum = 0.f;
#pragma unroll
      for (int nb = 0; nb < kTile / 8; ++nb) {
        s[nb][2 * r] = exp2f(fmaf(s[nb][2 * r], scale_log2, -use));
        s[nb][2 * r + 1] = exp2f(fmaf(s[nb][2 * r + 1], scale_log2, -use));
        sum += s[nb][2 * r] + s[nb][2 * r + 1];
      }
      l[r] += sum;
    }

    // O += P V, P straight from the S registers.
    uint32_t pa[kTile / 16][4];
    pack_a<T>(pa, s);
    wg::product<true, T>(o, pa, [&](int kk) { return wg::desc_kn<kTile>(vb, kk); });
    __syncthreads();  // the next visit's copy overwrites this buffer
  }
  cp_async_wait<0>();

  // A piece of a split row: the unnormalised output and (max, sum) of its
  // visits; the last piece to finish merges them all.
  const int slot = __ldcg(item + 3), piece = __ldcg(item + 4);
  if (slot >= 0) {
    const int64_t at = static_cast<int64_t>(bh) * lay.row_work.n_pieces + piece;
    float* op = p.o_part + at * kTile * D;
    float* ml = p.ml_part + at * 2 * kTile;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = r ? row_b : row_a;
      const float total = quad_sum(l[r]);
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        *reinterpret_cast<float2*>(op + row * D + dn * 8 + 2 * t) = make_float2(o[dn][2 * r], o[dn][2 * r + 1]);
      }
      if (t == 0) ml[row] = m[r], ml[kTile + row] = total;
    }
    const int2 pieces = split_pieces(lay.row_work, lay, h, slot);
    if (last_piece(p.row_done + static_cast<int64_t>(bh) * lay.row_work.n_split + slot, pieces.y)) {
      merge_split_rows<T, D>(p, bh, qt, pieces.x, pieces.y);
    }
    return;
  }

  // Normalise and store; rows with no allowed key get 0 and lse = -inf.
  T* out = static_cast<T*>(p.o) + b * p.o_strides[0] + h * p.o_strides[1];
  float* lse = p.lse + (static_cast<int64_t>(b) * p.H + h) * p.L;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float total = quad_sum(l[r]);
    const int row = qt * kTile + (r ? row_b : row_a);
    const float inv = total > 0.f ? 1.f / total : 0.f;
    if (row < p.L) {
      T* dst = out + static_cast<int64_t>(row) * p.o_strides[2];
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        *reinterpret_cast<uint32_t*>(dst + dn * 8 + 2 * t) =
            Pack<T>::from(o[dn][2 * r] * inv, o[dn][2 * r + 1] * inv);
      }
      if (t == 0) lse[row] = total > 0.f ? (m[r] + log2f(total)) / kLog2e : -INFINITY;
    }
  }
}

template <typename T, int D>
void launch_fwd(const SparseAttentionParams& p, cudaStream_t stream) {
  constexpr int smem = WgSmem<D>::bytes(1 + 2 * kStages, sizeof(StageMeta));  // Q, K[n], V[n], visit data
  auto kernel = sparse_attention_fwd_kernel<T, D, D == 64 ? 4 : 2>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  kernel<<<dim3(p.B * p.H, p.layout.row_work.n_items), kThreads, smem, stream>>>(p);
  check_launch("sparse_attention_fwd_kernel");
}

}  // namespace

void sparse_attention_fwd(const SparseAttentionParams& p, DType dtype, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.D != 64 && p.D != 128) throw std::invalid_argument("sparse_attention_fwd: head dim must be 64 or 128");
  if (dtype == DType::kBFloat16) {
    p.D == 64 ? launch_fwd<__nv_bfloat16, 64>(p, s) : launch_fwd<__nv_bfloat16, 128>(p, s);
  } else {
    p.D == 64 ? launch_fwd<__half, 64>(p, s) : launch_fwd<__half, 128>(p, s);
  }
}

}  // namespace longtrain::kernels
