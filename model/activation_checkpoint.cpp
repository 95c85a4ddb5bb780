// See activation_checkpoint.h.
#include "model/activation_checkpoint.h"

#include <ATen/autocast_mode.h>

#include <stdexcept>

namespace longtrain {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Generator state of one device: the default CPU generator, or a CUDA device's.
struct RngSnapshot {
  at::Generator gen;
  torch::Tensor state;
};

RngSnapshot snapshot(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return {gen, gen.get_state()};
}

void restore(const RngSnapshot& s) {
  at::Generator gen = s.gen;  // shares the generator
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(s.state);
}

// What the recompute needs besides the saved tensors; rides in the autograd
// context as a capsule (saved_data holds IValues only).
struct Recompute : torch::CustomClassHolder {
  CheckpointFn fn;
  size_t n_inputs = 0;
  std::vector<torch::Tensor> params;  // the module's own tensors: grad() w.r.t. them reaches no .grad
  std::vector<RngSnapshot> rng;  // at forward
  c10::DeviceType device_type = c10::DeviceType::CPU;
  bool autocast = false;
  at::ScalarType autocast_dtype = at::kBFloat16;
};

// Sets autocast for one device type while alive, as AutocastGuard in
// trainer/device.h does, but to a given (possibly disabled) state.
class AutocastAs {
 public:
  AutocastAs(c10::DeviceType type, bool enabled, at::ScalarType dtype)
      : type_(type), prev_(at::autocast::is_autocast_enabled(type)),
        prev_dtype_(at::autocast::get_autocast_dtype(type)) {
    at::autocast::set_autocast_enabled(type_, enabled);
    at::autocast::set_autocast_dtype(type_, dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastAs() {
    at::autocast::set_autocast_enabled(type_, prev_);
    at::autocast::set_autocast_dtype(type_, prev_dtype_);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  }
  AutocastAs(const AutocastAs&) = delete;
  AutocastAs& operator=(const AutocastAs&) = delete;

 private:
  c10::DeviceType type_;
  bool prev_;
  at::ScalarType prev_dtype_;
};

struct CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
  // tensors: the inputs, then the parameters.
  static variable_list forward(AutogradContext* ctx, c10::intrusive_ptr<Recompute> r, at::TensorList tensors) {
    const std::vector<torch::Tensor> inputs(tensors.begin(), tensors.begin() + static_cast<int64_t>(r->n_inputs));
    const torch::Device device = inputs.at(0).device();
    r->rng.push_back(snapshot(at::detail::getDefaultCPUGenerator()));
    if (device.is_cuda()) r->rng.push_back(snapshot(at::globalContext().defaultGenerator(device)));
    r->device_type = device.type();
    r->autocast = at::autocast::is_autocast_enabled(r->device_type);
    r->autocast_dtype = at::autocast::get_autocast_dtype(r->device_type);
    variable_list out = r->fn(inputs);  // autograd is off inside Function::forward
    ctx->save_for_backward(inputs);
    ctx->saved_data["recompute"] = c10::IValue::make_capsule(r);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto r = c10::static_intrusive_pointer_cast<Recompute>(ctx->saved_data["recompute"].toCapsule());
    const variable_list saved = ctx->get_saved_variables();
    std::vector<torch::Tensor> inputs;
    for (size_t i = 0; i < saved.size(); ++i) {
      inputs.push_back(saved[i].detach().requires_grad_(saved[i].requires_grad()));
    }
    // The recompute draws the forward's random numbers; whatever runs after
    // this backward draws what it would have drawn without it.
    std::vector<RngSnapshot> now;
    for (const auto& s : r->rng) now.push_back(snapshot(s.gen));
    for (const auto& s : r->rng) restore(s);
    variable_list out;
    {
      torch::AutoGradMode grad(true);
      AutocastAs autocast(r->device_type, r->autocast, r->autocast_dtype);
      out = r->fn(inputs);
    }
    for (const auto& s : now) restore(s);

    // Gradients w.r.t. whatever requires them; the rest stay undefined (zero).
    std::vector<torch::Tensor> wrt;
    std::vector<size_t> wrt_index;
    const size_t n = r->n_inputs + r->params.size();
    for (size_t i = 0; i < n; ++i) {
      const torch::Tensor& t = i < r->n_inputs ? inputs[i] : r->params[i - r->n_inputs];
      if (t.requires_grad()) {
        wrt.push_back(t);
        wrt_index.push_back(i);
      }
    }
    std::vector<torch::Tensor> outs, grads;
    for (size_t i = 0; i < out.size(); ++i) {
      if (!out[i].requires_grad() || !grad_out[i].defined()) continue;
      outs.push_back(out[i]);
      grads.push_back(grad_out[i]);
    }
    variable_list result(1 + n);  // [0]: the Recompute argument
    if (wrt.empty() || outs.empty()) return result;
    const variable_list g = torch::autograd::grad(outs, wrt, grads, /*retain_graph=*/false,
                                                  /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t j = 0; j < wrt.size(); ++j) result[1 + wrt_index[j]] = g[j];
    return result;
  }
};

}  // namespace

std::vector<torch::Tensor> checkpoint(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs,
                                      const std::vector<torch::Tensor>& params) {
  TORCH_CHECK(!inputs.empty(), "checkpoint: needs at least one input tensor");
  bool any = false;
  for (const auto& t : inputs) any = any || t.requires_grad();
  for (const auto& t : params) any = any || t.requires_grad();
  if (!torch::GradMode::is_enabled() || !any) return fn(inputs);
  auto r = c10::make_intrusive<Recompute>();
  r->fn = fn;
  r->n_inputs = inputs.size();
  r->params = params;
  std::vector<torch::Tensor> tensors = inputs;
  tensors.insert(tensors.end(), params.begin(), params.end());
  return CheckpointFunction::apply(r, at::TensorList(tensors));
}

Checkpointing parse_checkpointing(const std::string& name) {
  if (name == "none") return Checkpointing::kNone;
  if (name == "mixer") return Checkpointing::kMixer;
  if (name == "full") return Checkpointing::kFull;
  throw std::invalid_argument("'" + name + "' is not one of: none, mixer, full");
}

}  // namespace longtrain
