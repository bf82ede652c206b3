// CUDA implementations of sschsr::spectral_attention and sschsr::gram_and_norms (kernels in
// csrc/cuda/spectral_attention_kernel.cu, launched on the current stream) — unverified on hardware.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "sschsr/spectral_attention.h"

namespace sschsr {
namespace spectral {

// Defined in spectral_attention_ops.cpp (shared checks and dtype rules).
AttentionShape check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& temperature, int64_t heads);
AttentionShape check_gram_inputs(const at::Tensor& q, const at::Tensor& k, int64_t heads);
Dtype dtype_of(const at::Tensor& t);
at::ScalarType stats_dtype_of(const at::Tensor& t);

namespace {

at::Tensor workspace_for(const at::Tensor& like, const AttentionShape& shape) {
  const auto bytes = static_cast<int64_t>(spectral_attention_cuda_workspace_bytes(dtype_of(like), shape));
  return at::empty({bytes}, like.options().dtype(at::kByte));
}

at::Tensor spectral_attention_cuda_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& temperature, int64_t heads) {
  const AttentionShape shape = check_attention_inputs(q, k, v, temperature, heads);
  TORCH_CHECK(q.is_cuda(), "spectral_attention (CUDA kernel): tensors must be on a CUDA device, got ", q.device());
  const c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor tau = temperature.reshape({heads}).to(stats_dtype_of(q)).contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options());
  if (out.numel() == 0) return out;
  at::Tensor ws = workspace_for(q, shape);
  const cudaError_t err = spectral_attention_cuda(dtype_of(q), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(),
                                                  tau.data_ptr(), shape, out.data_ptr(), ws.data_ptr(),
                                                  at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "spectral_attention CUDA kernels failed: ", cudaGetErrorString(err));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gram_and_norms_cuda_op(const at::Tensor& q, const at::Tensor& k,
                                                                       int64_t heads) {
  const AttentionShape shape = check_gram_inputs(q, k, heads);
  TORCH_CHECK(q.is_cuda(), "gram_and_norms (CUDA kernel): tensors must be on a CUDA device, got ", q.device());
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t c = shape.channels / heads;
  const auto opts = q.options().dtype(stats_dtype_of(q));
  at::Tensor gram = at::empty({shape.batch, heads, c, c}, opts);
  at::Tensor q_sq = at::empty({shape.batch, shape.channels}, opts);
  at::Tensor k_sq = at::empty({shape.batch, shape.channels}, opts);
  if (shape.batch == 0 || shape.channels == 0) return {gram, q_sq, k_sq};
  const at::Tensor qc = q.contiguous(), kc = k.contiguous();
  at::Tensor ws = workspace_for(q, shape);
  const cudaError_t err = gram_and_norms_cuda(dtype_of(q), qc.data_ptr(), kc.data_ptr(), shape, gram.data_ptr(),
                                              q_sq.data_ptr(), k_sq.data_ptr(), ws.data_ptr(),
                                              at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "gram_and_norms CUDA kernels failed: ", cudaGetErrorString(err));
  return {gram, q_sq, k_sq};
}

}  // namespace
}  // namespace spectral
}  // namespace sschsr

TORCH_LIBRARY_IMPL(sschsr, CUDA, m) {
  m.impl("spectral_attention", &sschsr::spectral::spectral_attention_cuda_op);
  m.impl("gram_and_norms", &sschsr::spectral::gram_and_norms_cuda_op);
}
