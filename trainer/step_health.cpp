// See step_health.h.
#include "trainer/step_health.h"

#include <cmath>
#include <string>

namespace longtrain {

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return torch::zeros({});
  const auto norm = torch::linalg_vector_norm(torch::stack(torch::_foreach_norm(grads, 2)), 2);
  if (std::isfinite(max_norm)) {
    torch::NoGradGuard no_grad;
    torch::_foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp_max(1.0));
  }
  return norm;
}

void throw_nonfinite(int64_t step, double loss, double grad_norm) {
  throw NonFiniteError("non-finite " + std::string(std::isfinite(loss) ? "gradients" : "loss") + " at step " +
                       std::to_string(step) + " (loss " + std::to_string(loss) + ", grad norm " +
                       std::to_string(grad_norm) +
                       "); lower train.lr, or set train.on_nonfinite: skip to drop such steps");
}

void DeferredNonFinite::add(const torch::Tensor& bad, int64_t step, const torch::Tensor& loss,
                            const torch::Tensor& grad_norm) {
  const auto opts = loss.options().dtype(torch::kFloat64);
  if (!acc_.defined()) acc_ = torch::zeros({4}, opts);
  const auto first = bad & acc_[1].eq(0);
  const auto here = torch::stack({torch::full({}, static_cast<double>(step), opts), loss.to(torch::kFloat64),
                                  grad_norm.to(torch::kFloat64)});
  acc_.narrow(0, 1, 3).copy_(torch::where(first, here, acc_.narrow(0, 1, 3)));
  acc_.narrow(0, 0, 1).add_(bad.to(torch::kFloat64));
}

DeferredNonFinite::Seen DeferredNonFinite::take() {
  Seen s;
  if (!acc_.defined()) return s;
  const auto v = acc_.cpu();
  acc_ = torch::Tensor();
  const double* p = v.data_ptr<double>();
  s.count = static_cast<int64_t>(p[0]);
  s.first_step = static_cast<int64_t>(p[1]);
  s.loss = p[2];
  s.grad_norm = p[3];
  return s;
}

}  // namespace longtrain
