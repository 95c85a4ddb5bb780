// See chunked_cross_entropy.h.
#include "model/chunked_cross_entropy.h"

#include "kernels/xent/op.h"

namespace longtrain {
namespace {

// The softmax and the sums run in fp32, or fp64 for fp64 inputs (the tests).
torch::ScalarType accumulate_type(const torch::Tensor& hidden) {
  return hidden.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ChunkedCrossEntropy : public torch::autograd::Function<ChunkedCrossEntropy> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden, const torch::Tensor& weight,
                               const torch::Tensor& targets, int64_t chunk) {
    const int64_t n = hidden.size(0);
    const auto acc = accumulate_type(hidden);
    const auto f32 = hidden.options().dtype(acc);
    const auto valid = targets.ne(kIgnoreIndex);                  // [N]
    const auto count = valid.sum().to(acc);                       // stays on the device
    auto loss_sum = torch::zeros({}, f32);
    auto grad_hidden = torch::empty_like(hidden);                 // [N, D]
    auto grad_weight = torch::zeros(weight.sizes(), weight.options().dtype(acc));  // [V, D]
    torch::Tensor weight_c;  // the weight in the matmuls' dtype, cast once (not once per chunk)
    for (int64_t start = 0; start < n; start += chunk) {
      const int64_t rows = std::min(chunk, n - start);
      const auto h = hidden.narrow(0, start, rows);               // [C, D]
      const auto t = targets.narrow(0, start, rows);              // [C]
      const auto keep = valid.narrow(0, start, rows);             // [C]
      // Autocast (still in force inside Function::forward) picks the matmul dtype, as for the plain head.
      const auto raw = torch::linear(h, weight);                          // [C, V]
      const auto compute = raw.scalar_type();  // the gradient matmuls run in it too, as autocast's would
      const auto keep_f = keep.to(acc);
      torch::Tensor dl;  // d(sum of losses)/d logits in the matmuls' dtype, uncounted rows not yet zeroed
      if (kernels::softmax_xent_kernel_unsupported(raw).empty()) {
        // CUDA, bf16/fp16 logits: one kernel for the rows' losses and
        // softmax - onehot (kernels/xent; the -100 targets count nothing).
        auto [row_loss, d] = kernels::softmax_xent_cuda(raw, t);
        loss_sum += row_loss.sum();
        dl = d;
      } else {
        const auto logits = raw.to(acc);
        const auto logp = torch::log_softmax(logits, -1);                   // [C, V]
        const auto safe_t = torch::where(keep, t, torch::zeros_like(t)).unsqueeze(1);  // [C, 1]
        loss_sum -= (logp.gather(1, safe_t).squeeze(1) * keep_f).sum();
        // d(sum of losses)/d logits = softmax - onehot, on counted rows; the
        // mean's 1/count is applied once below.
        auto dlogits = logp.exp_();                                          // [C, V]
        dlogits.scatter_add_(1, safe_t, -torch::ones_like(safe_t, f32));
        dl = dlogits.to(compute);
      }
      if (!weight_c.defined()) weight_c = weight.to(compute);
      // Uncounted rows are zeroed on the [C, D] side of both products, not
      // in the [C, V] dlogits (a full pass over them: 7 ms of a 205 ms step
      // of the 134M model on the H100); the products are the same.
      const auto keep_c = keep_f.unsqueeze(1).to(compute);                 // [C, 1]
      grad_hidden.narrow(0, start, rows).copy_(torch::mm(dl, weight_c).mul_(keep_c));  // [C, D]
      const auto hk = h.to(compute) * keep_c;                                         // [C, D]
      if (compute != acc && grad_weight.is_cuda()) {
        // bf16 products summed into the fp32 gradient by the GEMM itself
        // (beta = 1): no [V, D] bf16 product and fp32 add per chunk (0.8 ms
        // of the 134M model's step on the H100).
        at::addmm_out(grad_weight, grad_weight, dl.t(), hk, acc);                    // [V, D]
      } else {
        grad_weight.add_(torch::mm(dl.t(), hk));
      }
    }
    const auto inv = count.reciprocal();
    grad_hidden.mul_(inv.to(grad_hidden.scalar_type()));
    grad_weight.mul_(inv);
    ctx->save_for_backward({grad_hidden, grad_weight.to(weight.scalar_type())});
    return loss_sum * inv;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto& g = grad_out[0];  // 0-dim
    return {saved[0] * g.to(saved[0].scalar_type()), saved[1] * g.to(saved[1].scalar_type()), torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

torch::Tensor chunked_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& targets, int64_t chunk) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "chunked_cross_entropy: hidden [N, D] ", hidden.sizes(), " and weight [V, D] ", weight.sizes(),
              " must share D");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0), "chunked_cross_entropy: targets ",
              targets.sizes(), " must be [N] with N = ", hidden.size(0));
  TORCH_CHECK(chunk > 0, "chunked_cross_entropy: chunk must be > 0, got ", chunk);
  const bool needs_grad = torch::GradMode::is_enabled() && (hidden.requires_grad() || weight.requires_grad());
  if (!needs_grad) {
    const auto acc = accumulate_type(hidden);
    torch::Tensor sum = torch::zeros({}, hidden.options().dtype(acc));
    for (int64_t start = 0; start < hidden.size(0); start += chunk) {
      const int64_t rows = std::min(chunk, hidden.size(0) - start);
      const auto logits = torch::linear(hidden.narrow(0, start, rows), weight).to(acc);
      sum += torch::nn::functional::cross_entropy(
          logits, targets.narrow(0, start, rows),
          torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(kIgnoreIndex));
    }
    return sum / targets.ne(kIgnoreIndex).sum().to(acc);
  }
  return ChunkedCrossEntropy::apply(hidden, weight, targets, chunk);
}

}  // namespace longtrain
