// CUDA implementation of sschsr::patch_match (kernels in csrc/cuda/patch_match_kernel.cu, launched on the current
// stream) — unverified on hardware.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "sschsr/patch_match.h"

namespace sschsr {
namespace patchmatch {

// Defined in patch_match_ops.cpp (shared checks and dtype rules).
MatchShape check_patch_match_inputs(const at::Tensor& feat, const at::Tensor& ref, int64_t patch_size);
Dtype patch_match_dtype(const at::Tensor& t);

namespace {

std::tuple<at::Tensor, at::Tensor> patch_match_cuda_op(const at::Tensor& feat, const at::Tensor& ref,
                                                       int64_t patch_size) {
  const MatchShape shape = check_patch_match_inputs(feat, ref, patch_size);
  TORCH_CHECK(feat.is_cuda(), "patch_match (CUDA kernel): tensors must be on a CUDA device, got ", feat.device());
  const c10::cuda::CUDAGuard guard(feat.device());
  at::Tensor index = at::empty({shape.batch, shape.out_h(), shape.out_w()}, feat.options().dtype(at::kLong));
  at::Tensor sim = at::empty({shape.batch, shape.out_h(), shape.out_w()}, feat.options());
  if (shape.batch == 0) return {index, sim};
  const at::Tensor fc = feat.contiguous(), rc = ref.contiguous();
  const Dtype dt = patch_match_dtype(feat);
  const auto bytes = static_cast<int64_t>(patch_match_cuda_workspace_bytes(dt, shape));
  at::Tensor ws = at::empty({bytes}, feat.options().dtype(at::kByte));
  const cudaError_t err = patch_match_cuda(dt, fc.data_ptr(), rc.data_ptr(), shape, index.data_ptr<int64_t>(),
                                           sim.data_ptr(), ws.data_ptr(), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "patch_match CUDA kernels failed: ", cudaGetErrorString(err));
  return {index, sim};
}

}  // namespace
}  // namespace patchmatch
}  // namespace sschsr

TORCH_LIBRARY_IMPL(sschsr, CUDA, m) {
  m.impl("patch_match", &sschsr::patchmatch::patch_match_cuda_op);
}
