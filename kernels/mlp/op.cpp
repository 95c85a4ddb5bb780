// See op.h. One GEMM helper over cuBLASLt (column-major: a row-major [R, C]
// tensor is a column-major [C, R] matrix), the autograd Function, checks.
#include "kernels/mlp/op.h"

#include "kernels/glue.h"

#include <cstdlib>
#include <string>

#ifdef LONGTRAIN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cublasLt.h>
#endif

namespace longtrain::kernels {

#ifndef LONGTRAIN_WITH_CUDA

std::string gelu_mlp_unsupported(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                 const torch::Tensor&, const torch::Tensor&) {
  return "this build has no CUDA kernels";
}

torch::Tensor gelu_mlp_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                            const torch::Tensor&) {
  TORCH_CHECK(false, "gelu_mlp_cuda: this build has no CUDA kernels (nvcc was not found at configure time)");
}

#else

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check(cublasStatus_t s, const char* what) {
  TORCH_CHECK(s == CUBLAS_STATUS_SUCCESS, "gelu_mlp: ", what, " failed (cuBLAS status ", static_cast<int>(s), ")");
}

// D[m, n] = op(A)[m, k] op(B)[k, n], all column-major, with an epilogue.
struct Gemm {
  int64_t m = 0, n = 0, k = 0;
  bool ta = false, tb = false;
  const Tensor* A = nullptr;
  const Tensor* B = nullptr;
  Tensor* D = nullptr;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const Tensor* bias = nullptr;  // BIAS, GELU_AUX_BIAS: added; BGRADB, DGELU_BGRAD: written
  const Tensor* aux = nullptr;   // GELU_AUX_BIAS: written (pre-activation); DGELU_BGRAD: read
};

// Runs g; false (nothing launched) when cuBLASLt has no algorithm for its
// epilogue on these shapes.
bool run(const Gemm& g) {
  const cudaDataType_t type = g.D->scalar_type() == torch::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  check(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &g.epilogue, sizeof(g.epilogue));
  if (g.bias) {
    const void* p = g.bias->data_ptr();
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p, sizeof(p));
  }
  if (g.aux) {
    const void* p = g.aux->data_ptr();
    const int64_t aux_ld = g.m;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &p, sizeof(p));
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof(aux_ld));
  }
  const uint64_t a_rows = g.ta ? g.k : g.m, a_cols = g.ta ? g.m : g.k;
  const uint64_t b_rows = g.tb ? g.n : g.k, b_cols = g.tb ? g.k : g.n;
  check(cublasLtMatrixLayoutCreate(&la, type, a_rows, a_cols, a_rows), "cublasLtMatrixLayoutCreate");
  check(cublasLtMatrixLayoutCreate(&lb, type, b_rows, b_cols, b_rows), "cublasLtMatrixLayoutCreate");
  check(cublasLtMatrixLayoutCreate(&ld, type, g.m, g.n, g.m), "cublasLtMatrixLayoutCreate");
  size_t workspace = at::cuda::getCUDABlasLtWorkspaceSize();
  check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace));
  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(handle, desc, la, lb, ld, ld, pref, 1, &result, &found);
  const bool ok = hs == CUBLAS_STATUS_SUCCESS && found > 0;
  if (ok) {
    const float one = 1.f, zero = 0.f;
    check(cublasLtMatmul(handle, desc, &one, g.A->data_ptr(), la, g.B->data_ptr(), lb, &zero, g.D->data_ptr(), ld,
                         g.D->data_ptr(), ld, &result.algo, at::cuda::getCUDABlasLtWorkspace(), workspace,
                         c10::cuda::getCurrentCUDAStream().stream()),
          "cublasLtMatmul");
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(ld);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatmulDescDestroy(desc);
  return ok;
}

void must_run(const Gemm& g, const char* what) {
  TORCH_CHECK(run(g), "gelu_mlp: cuBLASLt has no algorithm for the ", what, " GEMM (m ", g.m, ", n ", g.n, ", k ",
              g.k, ", epilogue ", static_cast<int>(g.epilogue), ")");
}

enum class MlpBackward { kDgelu, kBgrad, kAten };

MlpBackward mlp_backward_mode() {
  static const MlpBackward mode = [] {
    const char* e = std::getenv("LONGTRAIN_MLP_BWD");
    const std::string v = e ? e : "";
    if (v == "bgrad") return MlpBackward::kBgrad;
    if (v == "aten") return MlpBackward::kAten;
    return MlpBackward::kDgelu;
  }();
  return mode;
}

class GeluMlpFunction : public torch::autograd::Function<GeluMlpFunction> {
 public:
  // x: [M, K]; w1: [N, K]; b1: [N]; w2: [K2, N]; b2: [K2]; all in one dtype.
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& w1, const Tensor& b1,
                               const Tensor& w2, const Tensor& b2) {
    const c10::cuda::CUDAGuard guard(x.device());
    const int64_t M = x.size(0), K = x.size(1), N = w1.size(0), K2 = w2.size(0);
    auto pre = torch::empty({M, N}, x.options());  // H = x W1^T + b1
    auto act = torch::empty({M, N}, x.options());  // A = gelu(H)
    auto y = torch::empty({M, K2}, x.options());
    Gemm fc;  // A^T[N, M] = W1[K, N]^T x^T[K, M]
    fc.m = N, fc.n = M, fc.k = K, fc.ta = true, fc.A = &w1, fc.B = &x, fc.D = &act;
    fc.epilogue = CUBLASLT_EPILOGUE_GELU_AUX_BIAS, fc.bias = &b1, fc.aux = &pre;
    must_run(fc, "fc forward");
    Gemm proj;  // y^T[K2, M] = W2[N, K2]^T A^T[N, M]
    proj.m = K2, proj.n = M, proj.k = N, proj.ta = true, proj.A = &w2, proj.B = &act, proj.D = &y;
    proj.epilogue = CUBLASLT_EPILOGUE_BIAS, proj.bias = &b2;
    must_run(proj, "proj forward");
    ctx->save_for_backward({x, w1, w2, pre, act});
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w1 = saved[1], &w2 = saved[2], &pre = saved[3], &act = saved[4];
    const c10::cuda::CUDAGuard guard(x.device());
    const int64_t M = x.size(0), K = x.size(1), N = w1.size(0), K2 = w2.size(0);
    const Tensor dy = grads[0].contiguous();
    auto dw2 = torch::empty_like(w2), db2 = torch::empty({K2}, x.options());
    auto dpre = torch::empty({M, N}, x.options()), db1 = torch::empty({N}, x.options());
    auto dw1 = torch::empty_like(w1), dx = torch::empty_like(x);

    Gemm g2;  // dW2^T[N, K2] = A^T[N, M] dy[M, K2], db2 = Σ_rows dy
    g2.m = N, g2.n = K2, g2.k = M, g2.tb = true, g2.A = &act, g2.B = &dy, g2.D = &dw2;
    g2.epilogue = CUBLASLT_EPILOGUE_BGRADB, g2.bias = &db2;
    if (!run(g2)) {  // no fused algorithm on this build: the plain GEMM and a reduction
      g2.epilogue = CUBLASLT_EPILOGUE_DEFAULT, g2.bias = nullptr;
      must_run(g2, "proj weight gradient");
      torch::sum_out(db2, dy, {0});
    }
    // The GELU backward: in the dH GEMM's epilogue (DGELU; cuBLASLt's
    // DGELU_BGRAD ran as the GEMM plus a separate 1.3 ms epilogue kernel per
    // layer on the H100), or LibTorch's gelu_backward; db1 = Σ_rows dH from
    // the dW1 GEMM's BGRADB epilogue. LONGTRAIN_MLP_BWD=bgrad|dgelu|aten picks
    // for measurement (bench/kernel_breakdown.py); dgelu is the default.
    const MlpBackward mode = mlp_backward_mode();
    Gemm gh;  // dH^T[N, M] = W2[N, K2] dy^T[K2, M] (times gelu'(H))
    gh.m = N, gh.n = M, gh.k = K2, gh.A = &w2, gh.B = &dy, gh.D = &dpre;
    if (mode == MlpBackward::kBgrad) {
      gh.epilogue = CUBLASLT_EPILOGUE_DGELU_BGRAD, gh.bias = &db1, gh.aux = &pre;
    } else if (mode == MlpBackward::kDgelu) {
      gh.epilogue = CUBLASLT_EPILOGUE_DGELU, gh.aux = &pre;
    }
    must_run(gh, "gelu backward");
    if (mode == MlpBackward::kAten) dpre = at::gelu_backward(dpre, pre, "tanh");
    Gemm g1;  // dW1^T[K, N] = x^T[K, M] dH[M, N] (db1 = Σ_rows dH)
    g1.m = K, g1.n = N, g1.k = M, g1.tb = true, g1.A = &x, g1.B = &dpre, g1.D = &dw1;
    if (mode != MlpBackward::kBgrad) g1.epilogue = CUBLASLT_EPILOGUE_BGRADB, g1.bias = &db1;
    if (!run(g1)) {
      g1.epilogue = CUBLASLT_EPILOGUE_DEFAULT, g1.bias = nullptr;
      must_run(g1, "fc weight gradient");
      if (mode != MlpBackward::kBgrad) torch::sum_out(db1, dpre, {0});
    }
    Gemm gx;  // dx^T[K, M] = W1^T... : W1 as column-major [K, N] times dH^T[N, M]
    gx.m = K, gx.n = M, gx.k = N, gx.A = &w1, gx.B = &dpre, gx.D = &dx;
    must_run(gx, "input gradient");
    return {dx, dw1, db1, dw2, db2};
  }
};

}  // namespace

std::string gelu_mlp_unsupported(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1,
                                 const torch::Tensor& w2, const torch::Tensor& b2) {
  if (!x.is_cuda()) return "not on a CUDA device";
  if (x.scalar_type() != torch::kBFloat16 && x.scalar_type() != torch::kHalf) return "not bf16 or fp16";
  if (x.dim() < 1 || x.numel() == 0) return "empty";
  if (!x.is_contiguous() || !aligned16(x)) return "x not contiguous and 16-byte aligned";
  if (!w1.defined() || !b1.defined() || !w2.defined() || !b2.defined()) return "a bias or weight is missing";
  const int64_t K = x.size(-1), N = w1.size(0);
  if (w1.dim() != 2 || w1.size(1) != K || b1.dim() != 1 || b1.size(0) != N || w2.dim() != 2 || w2.size(1) != N ||
      b2.dim() != 1 || b2.size(0) != w2.size(0)) {
    return "weights do not chain [.., K] -> [N] -> [K2]";
  }
  if (K % 8 || N % 8 || w2.size(0) % 8) return "K, N and K2 must be multiples of 8";
  for (const auto* t : {&w1, &b1, &w2, &b2}) {
    if (t->device() != x.device() || !t->is_floating_point()) return "weights not floating point on x's device";
  }
  return "";
}

torch::Tensor gelu_mlp_cuda(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1,
                            const torch::Tensor& w2, const torch::Tensor& b2) {
  const std::string why = gelu_mlp_unsupported(x, w1, b1, w2, b2);
  TORCH_CHECK(why.empty(), "gelu_mlp_cuda: x ", x.sizes(), " (", x.scalar_type(), "): ", why);
  const auto t = x.scalar_type();
  auto sizes = x.sizes().vec();
  sizes.back() = w2.size(0);
  // The casts sit outside the Function: autograd returns the weights' gradients in their dtype.
  auto y = GeluMlpFunction::apply(x.reshape({-1, x.size(-1)}), w1.to(t).contiguous(), b1.to(t).contiguous(),
                                  w2.to(t).contiguous(), b2.to(t).contiguous());
  return y[0].view(sizes);
}

#endif

}  // namespace longtrain::kernels
