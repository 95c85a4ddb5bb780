// See fused_adamw.h.
#include "trainer/fused_adamw.h"

namespace longtrain {

torch::Tensor FusedAdamW::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    torch::AutoGradMode enable(true);
    loss = closure();
  }
  for (auto& group : param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    TORCH_CHECK(!o.amsgrad(), "FusedAdamW: amsgrad is not supported");
    std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      TORCH_CHECK(!p.grad().is_sparse(), "FusedAdamW: sparse gradients are not supported");
      TORCH_CHECK(params.empty() || (p.device() == params[0].device() && p.scalar_type() == params[0].scalar_type()),
                  "FusedAdamW: a parameter group must share one device and dtype, got ", p.device(), "/",
                  p.scalar_type(), " beside ", params[0].device(), "/", params[0].scalar_type());
      void* key = p.unsafeGetTensorImpl();
      auto it = state().find(key);
      if (it == state().end()) {
        auto s = std::make_unique<torch::optim::AdamWParamState>();
        s->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        s->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        it = state().emplace(key, std::move(s)).first;
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
      auto st = steps_.find(key);
      if (st == steps_.end()) {
        st = steps_.emplace(key, torch::full({}, static_cast<double>(s.step()),
                                             p.options().dtype(torch::kFloat32))).first;
      }
      params.push_back(p);
      grads.push_back(p.grad());
      exp_avgs.push_back(s.exp_avg());
      exp_avg_sqs.push_back(s.exp_avg_sq());
      steps.push_back(st->second);
      if (!found_inf_.defined()) s.step(s.step() + 1);  // else the device count is the truth until saved
    }
    if (params.empty()) continue;
    torch::_foreach_add_(steps, 1);
    std::optional<torch::Tensor> found_inf;
    if (found_inf_.defined()) {
      found_inf = found_inf_;
      torch::_foreach_sub_(steps, std::vector<torch::Tensor>(steps.size(), found_inf_));
    }
    const auto [beta1, beta2] = o.betas();
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, o.lr(), beta1, beta2,
                      o.weight_decay(), o.eps(), /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/std::nullopt,
                      found_inf);
  }
  return loss;
}

void FusedAdamW::sync_steps() {
  for (const auto& [key, t] : steps_) {
    auto it = state().find(key);
    if (it == state().end()) continue;
    static_cast<torch::optim::AdamWParamState&>(*it->second).step(static_cast<int64_t>(t.item<double>()));
  }
}

void FusedAdamW::save(torch::serialize::OutputArchive& archive) const {
  // Saving is a host-side moment anyway; the counts are brought home first.
  const_cast<FusedAdamW*>(this)->sync_steps();
  torch::optim::AdamW::save(archive);
}

void FusedAdamW::load(torch::serialize::InputArchive& archive) {
  torch::optim::AdamW::load(archive);
  steps_.clear();  // rebuilt from the loaded counts on the next step
}

}  // namespace longtrain
