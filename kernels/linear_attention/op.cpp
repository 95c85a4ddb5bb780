// See op.h. The autograd glue: checks at the boundary, plain params for the
// kernels (params.h), launches on the current CUDA stream.
#include "kernels/linear_attention/op.h"

#include <cstdlib>

#include "kernels/glue.h"
#include "kernels/linear_attention/params.h"

#ifdef LONGTRAIN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace longtrain::kernels {

std::string linear_attention_kernel_unsupported(const torch::Tensor& v, int64_t feature_dim) {
  if (!linear_attention_cuda_built()) return "this build has no CUDA kernels";
  if (!v.is_cuda()) return "the inputs are not on a CUDA device";
  if (v.scalar_type() != torch::kBFloat16) {
    // fp16 would need an fp16 running state, which overflows once L·|k||v|
    // passes 65504; the reference keeps fp32.
    return "the kernel takes bf16 inputs, got " + std::string(c10::toString(v.scalar_type()));
  }
  if (v.dim() != 4) return "inputs must be [B, H, L, D]";
  if (feature_dim != v.size(3)) {
    return "the feature dimension " + std::to_string(feature_dim) + " differs from the value head dim " +
           std::to_string(v.size(3));
  }
  if (v.size(3) != 64 && v.size(3) != 128) return "head dim must be 64 or 128, got " + std::to_string(v.size(3));
  return "";
}

#ifndef LONGTRAIN_WITH_CUDA

bool linear_attention_cuda_built() { return false; }

torch::Tensor linear_attention_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                    const torch::Tensor&, bool, double) {
  TORCH_CHECK(false, "linear_attention_cuda: this build has no CUDA kernels (nvcc was not found at configure time)");
}

torch::Tensor linear_attention_step_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                         torch::Tensor&, torch::Tensor&, const torch::Tensor&, bool, double) {
  TORCH_CHECK(false,
              "linear_attention_step_cuda: this build has no CUDA kernels (nvcc was not found at configure time)");
}

#else

bool linear_attention_cuda_built() { return true; }

namespace {

using linear_attention::DType;
using linear_attention::Operand;
using linear_attention::PassParams;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Sub-chunks of 64 rows per block of the state scan: 2 (128 rows) below 8K,
// where more blocks fill the GPU (NOTES.md, v2). From 8K on, the fewest waves
// of CTAs whose blocks stay at most 32 sub-chunks long: the CTAs of a pass
// all take about the same time, so a partial last wave idles most of the GPU
// (H100, B = 1, H = 16: 16K fwd+bwd 0.355 ms with blocks of 8 against 0.314
// with one wave; 64K 1.186 against 1.069 with two; NOTES.md, v4). `fused`:
// the dφk/dv pass, asked apart since its kernel's occupancy is its own (3
// CTAs per SM on the H100 since v5, as the chunk kernel's); the dφq pass
// reuses the forward's blocks. LONGTRAIN_LINEAR_BLOCK_CHUNKS fixes it (a tuning knob
// for the benchmarks; read once).
int block_chunks(int64_t L, int64_t BH, int64_t D, bool fused) {
  static const int fixed = [] {
    const char* env = std::getenv("LONGTRAIN_LINEAR_BLOCK_CHUNKS");
    const int v = env ? std::atoi(env) : 0;
    return v >= 1 && v <= 64 ? v : 0;
  }();
  if (fixed) return fixed;
  if (L < 8192) return 2;
  const int64_t sub_chunks = BH * ((L + linear_attention::kRows - 1) / linear_attention::kRows);
  const int64_t slots = linear_attention::linear_attention_resident_ctas(static_cast<int>(D), fused);
  return linear_attention::fewest_waves_block(sub_chunks, slots, 32);
}

// How the backward runs: `fused` (v6, the default), dφq, dφk and dv in one
// pass when there is no decay, else as `v5`: dφk and dv in one reverse pass
// (v2) and dφq in its own; `passes` (v1): three passes.
// LONGTRAIN_LINEAR_BWD picks one (for the benchmarks; read once).
enum class Backward { kFused, kV5, kPasses };
Backward backward_kind() {
  static const Backward kind = [] {
    const char* env = std::getenv("LONGTRAIN_LINEAR_BWD");
    const std::string v = env ? env : "";
    return v == "passes" ? Backward::kPasses : v == "v5" ? Backward::kV5 : Backward::kFused;
  }();
  return kind;
}

// The forward's block prefixes, kept for the dφq pass (or the fused backward).
struct BlockStates {
  torch::Tensor states, zk;
};

Operand operand(const torch::Tensor& t) {
  Operand o;
  o.ptr = t.data_ptr();
  set_strides(o.strides, t);
  return o;
}

void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// One pass (params.h) into `out` ([B, H, L, D] with aligned rows); c, e:
// [B·H, L] fp32 or undefined.
void run_pass(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, torch::Tensor& out,
              const torch::Tensor& c, const torch::Tensor& e, const torch::Tensor& log2_decay, bool reverse,
              bool normalize, double eps, const torch::Tensor& rden, BlockStates* keep = nullptr,
              const BlockStates* reuse = nullptr, const torch::Tensor& q2 = {}, torch::Tensor* out2 = nullptr,
              torch::Tensor* out3 = nullptr, const BlockStates* forward_states = nullptr) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  PassParams p;
  p.q = operand(q);
  p.k = operand(k);
  p.v = operand(v);
  p.out = out.data_ptr();
  set_strides(p.out_strides, out);
  if (out2) {
    p.q2 = operand(q2);
    p.out2 = out2->data_ptr();
    set_strides(p.out2_strides, *out2);
  }
  if (out3) {  // the fused backward (params.h): forward_states are the forward's
    p.out3 = out3->data_ptr();
    set_strides(p.out3_strides, *out3);
    p.states2 = forward_states->states.data_ptr<float>();
    p.zk2 = forward_states->zk.defined() ? forward_states->zk.data_ptr<float>() : nullptr;
    p.mirror = true;
  }
  p.c = c.defined() ? c.data_ptr<float>() : nullptr;
  p.e = e.defined() ? e.data_ptr<float>() : nullptr;
  p.rden = rden.defined() ? rden.data_ptr<float>() : nullptr;
  p.log2_decay = log2_decay.defined() ? log2_decay.data_ptr<float>() : nullptr;
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.L = static_cast<int>(L);
  p.D = static_cast<int>(D);
  // The fused backward walks the forward's blocks (and reads its prefixes).
  p.block_chunks = block_chunks(L, B * H, D, /*fused=*/out2 != nullptr && out3 == nullptr);
  const int64_t rows = static_cast<int64_t>(p.block_chunks) * linear_attention::kRows;
  const int64_t n_blocks = (L + rows - 1) / rows;
  TORCH_CHECK(n_blocks <= 65535, "linear attention: L = ", L, " needs ", n_blocks, " blocks of ", rows,
              " rows, at most 65535 (a CUDA grid dimension); raise LONGTRAIN_LINEAR_BLOCK_CHUNKS");
  p.n_blocks = static_cast<int>(n_blocks);
  p.reverse = reverse;
  p.normalize = normalize;
  p.eps = static_cast<float>(eps);
  const auto f32 = q.options().dtype(torch::kFloat32);
  // n_blocks + 1 slots: the prefix at each block's start, then (forward) the whole sum.
  auto vec = [&](bool need) { return need ? torch::empty({B * H, p.n_blocks + 1, D}, f32) : torch::Tensor(); };
  torch::Tensor states, zk = vec(normalize), zv, ze = vec(e.defined());
  if (reuse) {
    // Σ γ v φkᵀ is the forward's Σ γ φk vᵀ transposed; Σ γ v (v = φk here) is its Σ γ φk.
    TORCH_CHECK(reuse->states.size(1) == p.n_blocks + 1, "linear attention: the forward's block states do not fit");
    states = reuse->states;
    zv = reuse->zk;
    p.states_ready = true;
    p.states_transposed = true;
  } else {
    states = torch::empty({B * H, p.n_blocks + 1, D, D}, f32);
    zv = vec(c.defined());
  }
  p.states = states.data_ptr<float>();
  p.zk = zk.defined() ? zk.data_ptr<float>() : nullptr;
  p.zv = zv.defined() ? zv.data_ptr<float>() : nullptr;
  p.ze = ze.defined() ? ze.data_ptr<float>() : nullptr;
  linear_attention::linear_attention_pass(p, DType::kBFloat16, stream());
  if (keep) *keep = BlockStates{states, zk};
}

// [B, H, L, D] bf16 stored [B, L, H, D].
torch::Tensor bhld_output(const torch::Tensor& like) {
  return torch::empty({like.size(0), like.size(2), like.size(1), like.size(3)}, like.options()).transpose(1, 2);
}

torch::Tensor log2_of(const torch::Tensor& decay) {
  return decay.numel() > 0 ? torch::log2(decay.detach().to(torch::kFloat32)).contiguous() : torch::Tensor();
}

class LinearAttentionFunction : public torch::autograd::Function<LinearAttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                               torch::Tensor decay, bool normalize, double eps) {
    q = rows_aligned(q);
    k = rows_aligned(k);
    v = rows_aligned(v);
    const c10::cuda::CUDAGuard guard(q.device());
    auto o = bhld_output(v);
    auto rden = normalize ? torch::empty({q.size(0) * q.size(1), q.size(2)}, q.options().dtype(torch::kFloat32))
                          : torch::Tensor();
    BlockStates states;
    run_pass(q, k, v, o, {}, {}, log2_of(decay), /*reverse=*/false, normalize, eps, rden, &states);
    // The block prefixes are kept when there is one to reuse (the dφq pass
    // needs Σ γ φk only with the normaliser).
    ctx->save_for_backward({q, k, v, o, decay, states.states, normalize ? states.zk : torch::Tensor()});
    ctx->saved_data["rden"] = rden;
    ctx->saved_data["normalize"] = normalize;
    return {o};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto q = saved[0], k = saved[1], v = saved[2], o = saved[3], decay = saved[4];
    const BlockStates fwd_states{saved[5], saved[6]};
    const bool normalize = ctx->saved_data["normalize"].toBool();
    const torch::Tensor rden = ctx->saved_data["rden"].toTensor();
    const c10::cuda::CUDAGuard guard(q.device());
    const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
    auto dout = grads[0].defined() ? grads[0].to(q.scalar_type()) : torch::zeros_like(o);

    // g = dO / (den + eps), h = −(dO·O) / (den + eps): the gradient with
    // respect to the numerator and (per row) the denominator. Without the
    // normaliser g is dO itself and h is not used: no preparation pass
    // (it cost 0.063 ms of 0.625 at 16K on the H100).
    torch::Tensor g, h;
    if (!normalize) {
      g = rows_aligned(dout);
    } else {
      g = torch::empty({B, H, L, D}, q.options());
      h = torch::empty({B * H, L}, q.options().dtype(torch::kFloat32));
      linear_attention::PrepParams pp;
      pp.dout = operand(dout);
      pp.out = operand(o);
      pp.rden = rden.data_ptr<float>();
      pp.g = g.data_ptr();
      pp.h = h.data_ptr<float>();
      pp.B = static_cast<int>(B);
      pp.H = static_cast<int>(H);
      pp.L = static_cast<int>(L);
      pp.D = static_cast<int>(D);
      linear_attention::linear_attention_prep(pp, DType::kBFloat16, stream());
    }

    const auto lg = log2_of(decay);
    auto dq = grad_like(q), dk = grad_like(k), dv = grad_like(v);
    const Backward kind = backward_kind();
    if (kind == Backward::kFused && !lg.defined()) {
      // dφq, dφk, dv in one pass over V, G, φq, φk (chunk.cu, dqkv_kernel); R's
      // block sums over G, φq in mirror order, forward rows (no decay: any order).
      run_pass(v, g, q, dk, {}, h, lg, /*reverse=*/false, false, 0, {}, nullptr, nullptr, k, &dv, &dq, &fwd_states);
      return {dq, dk, dv, torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
    // dφq_t = Σ_{s≤t} (g_t·v_s + h_t) φk_s, on the forward's block prefixes
    run_pass(g, v, k, dq, h, {}, lg, /*reverse=*/false, false, 0, {}, nullptr, &fwd_states);
    if (kind != Backward::kPasses) {
      // dφk and dv in one reverse pass over V, G, φq, φk (chunk.cu, dkdv_kernel)
      run_pass(v, g, q, dk, {}, h, lg, /*reverse=*/true, false, 0, {}, nullptr, nullptr, k, &dv);
    } else {
      run_pass(v, g, q, dk, {}, h, lg, /*reverse=*/true, false, 0, {});   // dφk_s = Σ_{t≥s} (v_s·g_t + h_t) φq_t
      run_pass(k, q, g, dv, {}, {}, lg, /*reverse=*/true, false, 0, {});  // dv_s = Σ_{t≥s} (φk_s·φq_t) g_t
    }
    return {dq, dk, dv, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor linear_attention_cuda(const torch::Tensor& phi_q, const torch::Tensor& phi_k, const torch::Tensor& v,
                                    const torch::Tensor& decay, bool normalize, double eps) {
  TORCH_CHECK(phi_q.dim() == 4 && phi_k.sizes() == phi_q.sizes() && v.dim() == 4 &&
                  v.sizes().slice(0, 3) == phi_q.sizes().slice(0, 3),
              "linear_attention_cuda: φq, φk, v must be [B, H, L, D] with one B, H, L, got ", phi_q.sizes(), ", ",
              phi_k.sizes(), ", ", v.sizes());
  TORCH_CHECK(phi_q.is_cuda() && phi_k.device() == phi_q.device() && v.device() == phi_q.device(),
              "linear_attention_cuda: φq, φk, v must be on one CUDA device, got ", phi_q.device(), ", ",
              phi_k.device(), ", ", v.device());
  TORCH_CHECK(phi_q.scalar_type() == torch::kBFloat16 && phi_k.scalar_type() == torch::kBFloat16 &&
                  v.scalar_type() == torch::kBFloat16,
              "linear_attention_cuda: φq, φk, v must be bf16, got ", phi_q.scalar_type(), ", ", phi_k.scalar_type(),
              ", ", v.scalar_type());
  const std::string why = linear_attention_kernel_unsupported(v, phi_q.size(3));
  TORCH_CHECK(why.empty(), "linear_attention_cuda: ", why);
  TORCH_CHECK(phi_q.size(2) < (1ll << 31) && phi_q.size(0) * phi_q.size(1) < 65536,
              "linear_attention_cuda: B * H = ", phi_q.size(0) * phi_q.size(1), " (at most 65535) or L = ",
              phi_q.size(2), " too large");
  TORCH_CHECK(eps > 0 || !normalize, "linear_attention_cuda: eps must be > 0, got ", eps);
  if (decay.defined()) {
    TORCH_CHECK(decay.dim() == 1 && decay.size(0) == phi_q.size(1) && decay.device() == phi_q.device(),
                "linear_attention_cuda: decay must be [H = ", phi_q.size(1), "] on ", phi_q.device(), ", got ",
                decay.sizes(), " on ", decay.device());
  }
  // The decay's gradient is not computed here: from the kernel's gradients
  // it would come through γ ∂ℓ/∂γ = Σ_t t (φq_t·dφq_t − φk_t·dφk_t), two large
  // sums that cancel, and bf16-level errors in dφq, dφk then exceed the bf16
  // reference's error many times over (measured on the H100, 2026-11-23).
  TORCH_CHECK(!decay.defined() || !decay.requires_grad() || !torch::GradMode::is_enabled(),
              "linear_attention_cuda: the kernel does not differentiate the decay (a learned decay trains through "
              "the reference, impl: reference); pass decay.detach() for a fixed one");
  // Autograd Functions take no undefined inputs: "no decay" is an empty tensor.
  const auto gamma = decay.defined() ? decay : torch::empty({0}, phi_q.options().dtype(torch::kFloat32));
  return LinearAttentionFunction::apply(phi_q, phi_k, v, gamma, normalize, eps)[0];
}

torch::Tensor linear_attention_step_cuda(const torch::Tensor& phi_q, const torch::Tensor& phi_k,
                                         const torch::Tensor& v, torch::Tensor& S, torch::Tensor& z,
                                         const torch::Tensor& decay, bool normalize, double eps) {
  const std::string why = linear_attention_kernel_unsupported(v, phi_q.size(3));
  TORCH_CHECK(why.empty(), "linear_attention_step_cuda: ", why);
  const int64_t B = phi_q.size(0), H = phi_q.size(1), D = phi_q.size(3);
  TORCH_CHECK(phi_q.size(2) == 1 && phi_k.sizes() == phi_q.sizes() && v.sizes() == phi_q.sizes(),
              "linear_attention_step_cuda: φq, φk, v must be [B, H, 1, D], got ", phi_q.sizes(), ", ", phi_k.sizes(),
              ", ", v.sizes());
  TORCH_CHECK(phi_k.scalar_type() == torch::kBFloat16 && v.scalar_type() == torch::kBFloat16,
              "linear_attention_step_cuda: φk and v must be bf16");
  TORCH_CHECK(S.scalar_type() == torch::kFloat32 && z.scalar_type() == torch::kFloat32 && S.is_contiguous() &&
                  z.is_contiguous() && S.sizes() == torch::IntArrayRef({B, H, D, D}) &&
                  z.sizes() == torch::IntArrayRef({B, H, D}) && S.device() == phi_q.device() &&
                  z.device() == phi_q.device(),
              "linear_attention_step_cuda: state must be contiguous fp32 S [", B, ", ", H, ", ", D, ", ", D, "], z [",
              B, ", ", H, ", ", D, "] on ", phi_q.device());
  const c10::cuda::CUDAGuard guard(phi_q.device());
  auto q = phi_q.contiguous(), k = phi_k.contiguous(), vv = v.contiguous();
  auto o = torch::empty_like(vv);
  auto gam = decay.defined() ? decay.detach().to(torch::kFloat32).contiguous() : torch::Tensor();
  linear_attention::StepParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = vv.data_ptr();
  p.o = o.data_ptr();
  p.S = S.data_ptr<float>();
  p.z = z.data_ptr<float>();
  p.decay = gam.defined() ? gam.data_ptr<float>() : nullptr;
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.D = static_cast<int>(D);
  p.normalize = normalize;
  p.eps = static_cast<float>(eps);
  linear_attention::linear_attention_step(p, DType::kBFloat16, stream());
  return o;
}

#endif

}  // namespace longtrain::kernels
