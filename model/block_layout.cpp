// See block_layout.h.
#include "model/block_layout.h"

#include <algorithm>
#include <stdexcept>

#include "data/rng.h"

namespace longtrain {

int64_t BlockLayout::max_visits() const {
  int64_t m = 0;
  for (int64_t i = 0; i < n_blocks; ++i) m = std::max(m, row_ptr[i + 1] - row_ptr[i]);
  return m;
}

int64_t BlockLayout::allowed_pairs() const {
  int64_t pairs = 0;
  for (int64_t i = 0; i < n_blocks; ++i) {
    const int64_t rows = std::min(block, seq_len - i * block);
    for (int64_t v = row_ptr[i]; v < row_ptr[i + 1]; ++v) {
      const int64_t cols_n = std::min(block, seq_len - this->cols[v] * block);
      if (mask_index[v] < 0) {
        pairs += rows * cols_n;
      } else {
        const uint8_t* m = masks.data() + mask_index[v] * block * block;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols_n; ++c) pairs += m[r * block + c];
      }
    }
  }
  return pairs;
}

BlockLayout build_layout(const SparsePattern& pattern, int64_t seq_len, int64_t block) {
  if (block <= 0) throw std::invalid_argument("block size must be > 0, got " + std::to_string(block));
  BlockLayout L;
  L.seq_len = seq_len;
  L.block = block;
  L.n_blocks = (seq_len + block - 1) / block;
  L.row_ptr.push_back(0);
  std::vector<uint8_t> tile(static_cast<size_t>(block * block));
  for (int64_t qb = 0; qb < L.n_blocks; ++qb) {
    auto cand = pattern.candidates(qb);
    std::sort(cand.begin(), cand.end());
    cand.erase(std::unique(cand.begin(), cand.end()), cand.end());
    const int64_t q0 = qb * block, q1 = std::min(seq_len, q0 + block);
    for (int64_t kb : cand) {
      if (kb < 0 || kb >= L.n_blocks) continue;
      const int64_t k0 = kb * block, k1 = std::min(seq_len, k0 + block);
      int64_t allowed = 0;
      std::fill(tile.begin(), tile.end(), 0);
      for (int64_t q = q0; q < q1; ++q)
        for (int64_t k = k0; k < k1; ++k)
          if (pattern.allowed(q, k)) {
            tile[(q - q0) * block + (k - k0)] = 1;
            ++allowed;
          }
      if (allowed == 0) continue;
      L.cols.push_back(kb);
      // A block cut short by the sequence end is still "full": its missing rows
      // and columns are padding that the consumer drops.
      if (allowed == (q1 - q0) * (k1 - k0)) {
        L.mask_index.push_back(-1);
      } else {
        L.mask_index.push_back(static_cast<int64_t>(L.masks.size()) / (block * block));
        L.masks.insert(L.masks.end(), tile.begin(), tile.end());
      }
    }
    L.row_ptr.push_back(static_cast<int64_t>(L.cols.size()));
  }
  return L;
}

namespace {

std::vector<int64_t> block_range(int64_t first_token, int64_t last_token, int64_t block, int64_t seq_len) {
  std::vector<int64_t> out;
  const int64_t a = std::max<int64_t>(0, first_token) / block;
  const int64_t b = std::min<int64_t>(seq_len - 1, last_token) / block;
  for (int64_t kb = a; kb <= b; ++kb) out.push_back(kb);
  return out;
}

// Every key block (causal: up to the query block's own).
std::vector<int64_t> all_blocks(int64_t seq_len, int64_t block, int64_t qb, bool causal) {
  const int64_t nb = (seq_len + block - 1) / block;
  std::vector<int64_t> out;
  for (int64_t kb = 0; kb < (causal ? qb + 1 : nb); ++kb) out.push_back(kb);
  return out;
}

}  // namespace

SparsePattern sliding_pattern(int64_t seq_len, int64_t block, int64_t window, int64_t dilation, bool causal) {
  if (window < 1) throw std::invalid_argument("window must be >= 1, got " + std::to_string(window));
  if (dilation < 1) throw std::invalid_argument("dilation must be >= 1, got " + std::to_string(dilation));
  SparsePattern p;
  const int64_t half = window / 2;
  if (causal) {
    p.allowed = [=](int64_t q, int64_t k) {
      const int64_t d = q - k;
      return d >= 0 && d % dilation == 0 && d / dilation < window;
    };
  } else {
    p.allowed = [=](int64_t q, int64_t k) {
      const int64_t d = q > k ? q - k : k - q;
      return d % dilation == 0 && d / dilation <= half;
    };
  }
  const int64_t back = causal ? (window - 1) * dilation : half * dilation;
  const int64_t ahead = causal ? 0 : half * dilation;
  p.candidates = [=](int64_t qb) {
    return block_range(qb * block - back, (qb + 1) * block - 1 + ahead, block, seq_len);
  };
  return p;
}

SparsePattern bigbird_pattern(int64_t seq_len, int64_t block, int64_t window_blocks, int64_t global_blocks,
                              int64_t random_blocks, uint64_t seed, bool causal) {
  const int64_t nb = (seq_len + block - 1) / block;
  // visits[qb]: the key blocks of query block qb, drawn once here.
  auto visits = std::make_shared<std::vector<std::vector<int64_t>>>(nb);
  const int64_t before = causal ? window_blocks - 1 : window_blocks / 2;
  const int64_t after = causal ? 0 : window_blocks / 2;
  for (int64_t qb = 0; qb < nb; ++qb) {
    auto& v = (*visits)[qb];
    const bool global_row = qb < global_blocks;
    for (int64_t kb = 0; kb < nb; ++kb) {
      const bool in_window = kb >= qb - before && kb <= qb + after;
      const bool global = kb < global_blocks || global_row;
      if ((in_window || global) && (!causal || kb <= qb)) v.push_back(kb);
    }
    if (global_row) continue;
    // Random blocks: chosen among blocks not already visited (past only when causal).
    std::vector<int64_t> pool;
    for (int64_t kb = 0; kb < (causal ? qb : nb); ++kb) {
      if (std::find(v.begin(), v.end(), kb) == v.end()) pool.push_back(kb);
    }
    Rng rng(mix_keys(seed, static_cast<uint64_t>(qb), 0xB16B));
    for (int64_t r = 0; r < random_blocks && !pool.empty(); ++r) {
      const size_t pick = rng.below(pool.size());
      v.push_back(pool[pick]);
      pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(pick));
    }
    std::sort(v.begin(), v.end());
  }
  SparsePattern p;
  p.allowed = [=](int64_t q, int64_t k) {
    if (causal && k > q) return false;
    const auto& v = (*visits)[q / block];
    return std::binary_search(v.begin(), v.end(), k / block);
  };
  p.candidates = [=](int64_t qb) { return (*visits)[qb]; };
  return p;
}

SparsePattern strided_pattern(int64_t seq_len, int64_t block, int64_t stride, bool causal) {
  if (stride < 1) throw std::invalid_argument("stride must be >= 1, got " + std::to_string(stride));
  SparsePattern p;
  p.allowed = [=](int64_t q, int64_t k) {
    if (causal && k > q) return false;
    const int64_t d = q > k ? q - k : k - q;
    return d < stride || d % stride == 0;
  };
  // Strided columns reach every block: test them all (causal: the past).
  p.candidates = [=](int64_t qb) { return all_blocks(seq_len, block, qb, causal); };
  return p;
}

SparsePattern fixed_pattern(int64_t seq_len, int64_t block, int64_t stride, int64_t summary, bool causal) {
  if (stride < 1) throw std::invalid_argument("stride must be >= 1, got " + std::to_string(stride));
  if (summary < 1 || summary > stride) {
    throw std::invalid_argument("summary must be in [1, stride], got " + std::to_string(summary));
  }
  SparsePattern p;
  p.allowed = [=](int64_t q, int64_t k) {
    if (causal && k > q) return false;
    return k / stride == q / stride || k % stride >= stride - summary;
  };
  // Every segment has summary columns: test every block (causal: the past).
  p.candidates = [=](int64_t qb) { return all_blocks(seq_len, block, qb, causal); };
  return p;
}

}  // namespace longtrain
