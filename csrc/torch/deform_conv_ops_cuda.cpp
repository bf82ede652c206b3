// Torch binding of the CUDA modulated deformable convolution (fp32, fp64, fp16, bf16), launched on the current stream.
// UNVERIFIED ON HARDWARE: compiled without a GPU; tests/test_deform_conv_gpu.py must pass on a GPU before it is trusted.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <optional>

#include "sschsr/deform_conv.h"

namespace sschsr {
namespace detail {
// Defined in deform_conv_ops.cpp (the checks are shared by the CPU and CUDA bindings).
DeformConv2dParams deform_conv2d_params_from_tensors(const at::Tensor& input, const at::Tensor& offset,
                                                     const std::optional<at::Tensor>& mask, const at::Tensor& weight,
                                                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                                     int64_t offset_groups);
at::Tensor deform_conv2d_kernel_input(const at::Tensor& input, DeformConv2dParams& p);
}  // namespace detail

namespace {

at::Tensor modulated_deform_conv2d_cuda_op(const at::Tensor& input, const at::Tensor& offset,
                                           const std::optional<at::Tensor>& mask, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                           int64_t offset_groups) {
  DeformConv2dParams p = detail::deform_conv2d_params_from_tensors(input, offset, mask, weight, bias, stride, padding,
                                                                   dilation, groups, offset_groups);
  TORCH_CHECK(input.is_cuda(), "modulated_deform_conv2d (CUDA): input must be a CUDA tensor");
  DeformConvDType dt;
  switch (input.scalar_type()) {
    case at::kFloat:
      dt = DeformConvDType::kFloat32;
      break;
    case at::kDouble:
      dt = DeformConvDType::kFloat64;
      break;
    case at::kHalf:
      dt = DeformConvDType::kFloat16;
      break;
    case at::kBFloat16:
      dt = DeformConvDType::kBFloat16;
      break;
    default:
      TORCH_CHECK_TYPE(false, "modulated_deform_conv2d (CUDA): unsupported dtype ", input.scalar_type(),
                       " (float32, float64, float16 and bfloat16 are supported)");
  }
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = detail::deform_conv2d_kernel_input(input, p);
  const at::Tensor off = offset.contiguous(), wt = weight.contiguous();
  // Undefined tensors stand for an absent mask / bias.
  const at::Tensor msk = mask.has_value() ? mask->contiguous() : at::Tensor();
  const at::Tensor bs = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({p.batch, p.out_channels, p.out_h, p.out_w}, input.options());
  if (out.numel() == 0) return out;
  const std::size_t ws_bytes = modulated_deform_conv2d_cuda_workspace_bytes(p, dt);
  // The caching allocator returns blocks aligned to at least 256 bytes, as the kernel's vector loads need.
  const at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, input.options().dtype(at::kByte));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(input.device().index()).stream();
  const int err = modulated_deform_conv2d_cuda(p, dt, in.data_ptr(), off.data_ptr(),
                                               msk.defined() ? msk.data_ptr() : nullptr, wt.data_ptr(),
                                               bs.defined() ? bs.data_ptr() : nullptr, out.data_ptr(),
                                               ws_bytes ? ws.data_ptr() : nullptr, stream);
  TORCH_CHECK(err == 0, "modulated_deform_conv2d (CUDA): kernel launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
  return out;
}

}  // namespace
}  // namespace sschsr

TORCH_LIBRARY_IMPL(sschsr, CUDA, m) { m.impl("modulated_deform_conv2d", &sschsr::modulated_deform_conv2d_cuda_op); }
