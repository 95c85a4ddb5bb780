// See generate.h.
#include "model/generate.h"

#include "data/rng.h"

namespace longtrain {

int64_t sample_token(const torch::Tensor& logits, const SamplingOptions& o, int64_t draw) {
  TORCH_CHECK(logits.dim() == 1, "sample_token: logits must be [V], got ", logits.sizes());
  TORCH_CHECK(o.temperature >= 0, "temperature must be >= 0, got ", o.temperature);
  TORCH_CHECK(o.top_k >= 0, "top_k must be >= 0, got ", o.top_k);
  TORCH_CHECK(o.top_p > 0 && o.top_p <= 1, "top_p must lie in (0, 1], got ", o.top_p);
  auto l = logits.detach().to(torch::kCPU, torch::kFloat64);
  if (o.temperature == 0) return l.argmax().item<int64_t>();
  // Sorted descending; ties keep the lower id first (stable), so the draw does
  // not depend on the sort implementation.
  auto [sorted, order] = torch::sort(l / o.temperature, /*stable=*/true, /*dim=*/0, /*descending=*/true);
  auto p = torch::softmax(sorted, 0);
  const int64_t V = p.size(0);
  int64_t keep = o.top_k > 0 ? std::min(o.top_k, V) : V;
  if (o.top_p < 1) {
    // The smallest prefix whose mass reaches top_p (at least one token).
    auto cum = p.cumsum(0);
    const int64_t reach = (cum < o.top_p).sum().item<int64_t>() + 1;
    keep = std::min(keep, reach);
  }
  auto kept = p.narrow(0, 0, keep);
  auto cum = (kept / kept.sum()).cumsum(0);
  auto cum_a = cum.accessor<double, 1>();
  // 53 random bits -> u in [0, 1).
  const double u = static_cast<double>(mix_keys(o.seed, static_cast<uint64_t>(draw), 0x5a3b1e) >> 11) * 0x1.0p-53;
  int64_t i = 0;
  while (i + 1 < keep && cum_a[i] <= u) ++i;
  return order[i].item<int64_t>();
}

GenerateResult generate(LanguageModel& model, const std::vector<int64_t>& prompt, const GenerateOptions& o) {
  TORCH_CHECK(!prompt.empty(), "generate: the prompt needs at least one token");
  TORCH_CHECK(o.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", o.max_new_tokens);
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  const auto device = model->parameters().front().device();
  GenerateResult r;
  if (o.use_cache) {
    r.fallback = model->step_unsupported();
    r.used_cache = r.fallback.empty();
  }
  std::vector<int64_t> seq = prompt;
  std::vector<torch::Tensor> kept_logits;
  LmState state;
  torch::Tensor last;  // [V] logits for the next token
  if (r.used_cache) {
    state = model->initial_state(1);
    for (int64_t t : prompt) last = model->step(torch::tensor({t}, torch::dtype(torch::kInt64).device(device)), state)[0];
  }
  for (int64_t n = 0; n < o.max_new_tokens; ++n) {
    if (!r.used_cache) {
      auto tokens = torch::tensor(seq, torch::dtype(torch::kInt64)).view({1, -1}).to(device);
      last = model->forward(tokens)[0][-1];
    }
    if (o.keep_logits) kept_logits.push_back(last.to(torch::kCPU, torch::kFloat32));
    const int64_t next = sample_token(last, o.sampling, n);
    r.tokens.push_back(next);
    seq.push_back(next);
    if (next == o.stop_token) break;
    if (r.used_cache && n + 1 < o.max_new_tokens) {
      last = model->step(torch::tensor({next}, torch::dtype(torch::kInt64).device(device)), state)[0];
    }
  }
  if (o.keep_logits && !kept_logits.empty()) r.logits = torch::stack(kept_logits);
  if (was_training) model->train();
  return r;
}

}  // namespace longtrain
