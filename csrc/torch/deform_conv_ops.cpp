// Torch binding of the modulated deformable convolution: the sschsr::modulated_deform_conv2d schema, the input checks
// shared with the CUDA binding, and the CPU implementation (fp32 / fp64 natively, fp16 / bf16 computed in fp32).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "sschsr/deform_conv.h"

namespace sschsr {
namespace detail {

namespace {

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

void check_same(const at::Tensor& input, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == input.device(), "modulated_deform_conv2d: ", name, " is on ", t.device(),
              " but input is on ", input.device(), "; all tensors must be on the same device");
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), "modulated_deform_conv2d: ", name, " dtype ",
                   t.scalar_type(), " does not match input dtype ", input.scalar_type());
}

}  // namespace

// Validates the tensors and arguments of one call and returns the kernel parameters (output size filled in, input
// strides NOT yet set). Shape and argument errors raise ValueError, dtype mismatches TypeError, device mismatches
// RuntimeError. Also used by the CUDA binding (deform_conv_ops_cuda.cpp).
DeformConv2dParams deform_conv2d_params_from_tensors(const at::Tensor& input, const at::Tensor& offset,
                                                     const std::optional<at::Tensor>& mask, const at::Tensor& weight,
                                                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                                     int64_t offset_groups) {
  TORCH_CHECK_VALUE(input.dim() == 4, "modulated_deform_conv2d: input must be 4-D (B, C, H, W), got shape ",
                    shape_str(input.sizes()));
  TORCH_CHECK_VALUE(offset.dim() == 4, "modulated_deform_conv2d: offset must be 4-D (B, 2*G*kh*kw, Ho, Wo), got shape ",
                    shape_str(offset.sizes()));
  TORCH_CHECK_VALUE(weight.dim() == 4, "modulated_deform_conv2d: weight must be 4-D (O, C/groups, kh, kw), got shape ",
                    shape_str(weight.sizes()));
  check_same(input, offset, "offset");
  check_same(input, weight, "weight");
  if (mask.has_value()) {
    TORCH_CHECK_VALUE(mask->dim() == 4, "modulated_deform_conv2d: mask must be 4-D (B, G*kh*kw, Ho, Wo), got shape ",
                      shape_str(mask->sizes()));
    check_same(input, *mask, "mask");
  }
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1, "modulated_deform_conv2d: bias must be 1-D (O,), got shape ",
                      shape_str(bias->sizes()));
    check_same(input, *bias, "bias");
  }
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                    "modulated_deform_conv2d: stride, padding and dilation must have 2 elements each");
  TORCH_CHECK_VALUE(stride[0] > 0 && stride[1] > 0, "modulated_deform_conv2d: stride must be positive, got ", stride);
  TORCH_CHECK_VALUE(dilation[0] > 0 && dilation[1] > 0, "modulated_deform_conv2d: dilation must be positive, got ",
                    dilation);
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0, "modulated_deform_conv2d: padding must be non-negative, got ",
                    padding);
  TORCH_CHECK_VALUE(groups > 0 && offset_groups > 0,
                    "modulated_deform_conv2d: groups and offset_groups must be positive, got groups=", groups,
                    ", offset_groups=", offset_groups);

  DeformConv2dParams p;
  p.batch = input.size(0), p.in_channels = input.size(1), p.height = input.size(2), p.width = input.size(3);
  p.out_channels = weight.size(0), p.kernel_h = weight.size(2), p.kernel_w = weight.size(3);
  p.stride_h = stride[0], p.stride_w = stride[1], p.pad_h = padding[0], p.pad_w = padding[1];
  p.dilation_h = dilation[0], p.dilation_w = dilation[1];
  p.groups = groups, p.offset_groups = offset_groups;

  TORCH_CHECK_VALUE(p.kernel_h > 0 && p.kernel_w > 0, "modulated_deform_conv2d: empty kernel, weight shape ",
                    shape_str(weight.sizes()));
  TORCH_CHECK_VALUE(p.in_channels % groups == 0 && p.out_channels % groups == 0,
                    "modulated_deform_conv2d: input channels (", p.in_channels, ") and output channels (",
                    p.out_channels, ") must be divisible by groups (", groups, ")");
  TORCH_CHECK_VALUE(weight.size(1) * groups == p.in_channels, "modulated_deform_conv2d: weight shape ",
                    shape_str(weight.sizes()), " expects ", weight.size(1), " * groups (", groups,
                    ") input channels, input has ", p.in_channels);
  TORCH_CHECK_VALUE(p.in_channels % offset_groups == 0, "modulated_deform_conv2d: input channels (", p.in_channels,
                    ") must be divisible by offset_groups (", offset_groups, ")");
  deform_conv2d_fill_output_size(p);
  TORCH_CHECK_VALUE(p.out_h > 0 && p.out_w > 0, "modulated_deform_conv2d: input ", shape_str(input.sizes()),
                    " padded by ", padding, " is smaller than the kernel (", p.kernel_h, ", ", p.kernel_w,
                    ") dilated by ", dilation);

  const int64_t taps = p.kernel_h * p.kernel_w;
  const std::vector<int64_t> want_offset{p.batch, 2 * offset_groups * taps, p.out_h, p.out_w};
  TORCH_CHECK_VALUE(offset.sizes() == at::IntArrayRef(want_offset), "modulated_deform_conv2d: offset shape ",
                    shape_str(offset.sizes()), " != expected ", shape_str(want_offset),
                    " = (B, 2*offset_groups*kh*kw, Ho, Wo) for input ", shape_str(input.sizes()), ", kernel (",
                    p.kernel_h, ", ", p.kernel_w, "), stride ", stride, ", padding ", padding, ", dilation ", dilation,
                    ", offset_groups ", offset_groups);
  if (mask.has_value()) {
    const std::vector<int64_t> want_mask{p.batch, offset_groups * taps, p.out_h, p.out_w};
    TORCH_CHECK_VALUE(mask->sizes() == at::IntArrayRef(want_mask), "modulated_deform_conv2d: mask shape ",
                      shape_str(mask->sizes()), " != expected ", shape_str(want_mask),
                      " = (B, offset_groups*kh*kw, Ho, Wo)");
  }
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->size(0) == p.out_channels, "modulated_deform_conv2d: bias has ", bias->size(0),
                      " elements, weight has ", p.out_channels, " output channels");
  }
  return p;
}

// The input as the kernels read it: channels-last memory is used as is (its strides go to the kernel), anything else
// becomes NCHW-contiguous.
at::Tensor deform_conv2d_kernel_input(const at::Tensor& input, DeformConv2dParams& p) {
  at::Tensor in = input.is_contiguous() || input.is_contiguous(at::MemoryFormat::ChannelsLast) ? input
                                                                                                 : input.contiguous();
  p.in_stride_n = in.stride(0), p.in_stride_c = in.stride(1), p.in_stride_h = in.stride(2), p.in_stride_w = in.stride(3);
  return in;
}

}  // namespace detail

namespace {

template <typename T>
const T* opt_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

at::Tensor modulated_deform_conv2d_cpu_op(const at::Tensor& input, const at::Tensor& offset,
                                          const std::optional<at::Tensor>& mask, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                          int64_t offset_groups) {
  DeformConv2dParams p = detail::deform_conv2d_params_from_tensors(input, offset, mask, weight, bias, stride, padding,
                                                                   dilation, groups, offset_groups);
  const at::ScalarType dtype = input.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                   "modulated_deform_conv2d (CPU): unsupported dtype ", dtype,
                   " (float32, float64, float16 and bfloat16 are supported)");
  // fp16 / bf16 are computed in fp32 and cast back.
  const at::ScalarType compute = dtype == at::kDouble ? at::kDouble : at::kFloat;
  auto prep = [compute](const at::Tensor& t) { return t.to(compute).contiguous(); };
  at::Tensor in = detail::deform_conv2d_kernel_input(input.to(compute), p);
  const at::Tensor off = prep(offset), wt = prep(weight);
  // Undefined tensors stand for an absent mask / bias.
  const at::Tensor msk = mask.has_value() ? prep(*mask) : at::Tensor();
  const at::Tensor bs = bias.has_value() ? prep(*bias) : at::Tensor();
  at::Tensor out = at::empty({p.batch, p.out_channels, p.out_h, p.out_w}, input.options().dtype(compute));
  if (out.numel() == 0) return out.to(dtype);
  p.num_threads = at::get_num_threads();
  if (compute == at::kDouble) {
    modulated_deform_conv2d_cpu(p, in.data_ptr<double>(), off.data_ptr<double>(), opt_ptr<double>(msk),
                                wt.data_ptr<double>(), opt_ptr<double>(bs), out.data_ptr<double>());
  } else {
    modulated_deform_conv2d_cpu(p, in.data_ptr<float>(), off.data_ptr<float>(), opt_ptr<float>(msk),
                                wt.data_ptr<float>(), opt_ptr<float>(bs), out.data_ptr<float>());
  }
  return compute == dtype ? out : out.to(dtype);
}

}  // namespace
}  // namespace sschsr

TORCH_LIBRARY_FRAGMENT(sschsr, m) {
  m.def(
      "modulated_deform_conv2d(Tensor input, Tensor offset, Tensor? mask, Tensor weight, Tensor? bias, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, int offset_groups) -> Tensor");
}

TORCH_LIBRARY_IMPL(sschsr, CPU, m) { m.impl("modulated_deform_conv2d", &sschsr::modulated_deform_conv2d_cpu_op); }
