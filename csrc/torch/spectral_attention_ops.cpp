// Torch binding of spectral attention: the sschsr::spectral_attention and sschsr::gram_and_norms schemas, input
// checks shared with the CUDA binding, and the CPU implementations (csrc/cpu/spectral_attention_kernel.cpp).
#include <torch/library.h>
#include <ATen/ATen.h>

#include "sschsr/spectral_attention.h"

namespace sschsr {
namespace spectral {
namespace {

Dtype to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Dtype::f32;
    case at::kDouble: return Dtype::f64;
    case at::kHalf: return Dtype::f16;
    case at::kBFloat16: return Dtype::bf16;
    default: TORCH_CHECK(false, "spectral_attention: unsupported dtype ", t, " (float32, float64, float16, bfloat16)");
  }
  return Dtype::f32;
}

// Statistics dtype: float64 for float64 inputs, float32 otherwise (fp16 sums over 65k+ pixels overflow).
at::ScalarType stats_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

AttentionShape check_qk(const char* op, const at::Tensor& q, const at::Tensor& k, int64_t heads) {
  TORCH_CHECK(q.dim() == 4, op, ": q must be B×C×H×W, got ", q.dim(), " dimensions (shape ", q.sizes(), ")");
  TORCH_CHECK(k.sizes() == q.sizes(), op, ": k has shape ", k.sizes(), ", q has shape ", q.sizes(),
              "; they must match");
  TORCH_CHECK(k.scalar_type() == q.scalar_type(), op, ": q is ", q.scalar_type(), " but k is ", k.scalar_type());
  TORCH_CHECK(k.device() == q.device(), op, ": q is on ", q.device(), " but k is on ", k.device());
  TORCH_CHECK(heads > 0, op, ": heads must be positive, got ", heads);
  TORCH_CHECK(q.size(1) % heads == 0, op, ": ", q.size(1), " channels are not divisible by ", heads, " heads");
  to_dtype(q.scalar_type());
  return AttentionShape{q.size(0), q.size(1), q.size(2) * q.size(3), heads};
}

}  // namespace

// Shared with the CUDA binding (declared there): validates and returns the shape.
AttentionShape check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& temperature, int64_t heads) {
  const AttentionShape shape = check_qk("spectral_attention", q, k, heads);
  TORCH_CHECK(v.sizes() == q.sizes(), "spectral_attention: v has shape ", v.sizes(), ", q has shape ", q.sizes(),
              "; they must match");
  TORCH_CHECK(v.scalar_type() == q.scalar_type(), "spectral_attention: q is ", q.scalar_type(), " but v is ",
              v.scalar_type());
  TORCH_CHECK(v.device() == q.device(), "spectral_attention: q is on ", q.device(), " but v is on ", v.device());
  TORCH_CHECK(temperature.numel() == heads, "spectral_attention: temperature has ", temperature.numel(),
              " values, need one per head (", heads, ")");
  TORCH_CHECK(temperature.device() == q.device(), "spectral_attention: temperature is on ", temperature.device(),
              " but q is on ", q.device());
  TORCH_CHECK(at::isFloatingType(temperature.scalar_type()), "spectral_attention: temperature must be floating point");
  return shape;
}

AttentionShape check_gram_inputs(const at::Tensor& q, const at::Tensor& k, int64_t heads) {
  return check_qk("gram_and_norms", q, k, heads);
}

Dtype dtype_of(const at::Tensor& t) { return to_dtype(t.scalar_type()); }
at::ScalarType stats_dtype_of(const at::Tensor& t) { return stats_dtype(t.scalar_type()); }

namespace {

at::Tensor spectral_attention_cpu_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& temperature, int64_t heads) {
  const AttentionShape shape = check_attention_inputs(q, k, v, temperature, heads);
  TORCH_CHECK(q.device().is_cpu(), "spectral_attention (CPU kernel): tensors must be on the CPU, got ", q.device());
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor tau = temperature.reshape({heads}).to(stats_dtype(q.scalar_type())).contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options());
  if (out.numel() == 0) return out;
  spectral_attention_cpu(to_dtype(q.scalar_type()), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), tau.data_ptr(),
                         shape, out.data_ptr());
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gram_and_norms_cpu_op(const at::Tensor& q, const at::Tensor& k,
                                                                      int64_t heads) {
  const AttentionShape shape = check_gram_inputs(q, k, heads);
  TORCH_CHECK(q.device().is_cpu(), "gram_and_norms (CPU kernel): tensors must be on the CPU, got ", q.device());
  const int64_t c = shape.channels / heads;
  const auto opts = q.options().dtype(stats_dtype(q.scalar_type()));
  at::Tensor gram = at::zeros({shape.batch, heads, c, c}, opts);
  at::Tensor q_sq = at::zeros({shape.batch, shape.channels}, opts);
  at::Tensor k_sq = at::zeros({shape.batch, shape.channels}, opts);
  if (shape.batch == 0 || shape.channels == 0) return {gram, q_sq, k_sq};
  const at::Tensor qc = q.contiguous(), kc = k.contiguous();
  gram_and_norms_cpu(to_dtype(q.scalar_type()), qc.data_ptr(), kc.data_ptr(), shape, gram.data_ptr(), q_sq.data_ptr(),
                     k_sq.data_ptr());
  return {gram, q_sq, k_sq};
}

}  // namespace
}  // namespace spectral
}  // namespace sschsr

TORCH_LIBRARY_FRAGMENT(sschsr, m) {
  m.def("spectral_attention(Tensor q, Tensor k, Tensor v, Tensor temperature, int heads) -> Tensor");
  m.def("gram_and_norms(Tensor q, Tensor k, int heads) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sschsr, CPU, m) {
  m.impl("spectral_attention", &sschsr::spectral::spectral_attention_cpu_op);
  m.impl("gram_and_norms", &sschsr::spectral::gram_and_norms_cpu_op);
}
