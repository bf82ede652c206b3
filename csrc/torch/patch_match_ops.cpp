// Torch binding of patch matching: the sschsr::patch_match schema, input checks shared with the CUDA binding, and the
// CPU implementation (csrc/cpu/patch_match_kernel.cpp).
#include <torch/library.h>
#include <ATen/ATen.h>

#include <limits>

#include "sschsr/patch_match.h"

namespace sschsr {
namespace patchmatch {

Dtype patch_match_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::f32;
    case at::kDouble: return Dtype::f64;
    case at::kHalf: return Dtype::f16;
    case at::kBFloat16: return Dtype::bf16;
    default:
      TORCH_CHECK(false, "patch_match: unsupported dtype ", t.scalar_type(),
                  " (float32, float64, float16, bfloat16)");
  }
  return Dtype::f32;
}

// Shared with the CUDA binding (declared there): validates and returns the shape.
MatchShape check_patch_match_inputs(const at::Tensor& feat, const at::Tensor& ref, int64_t patch_size) {
  TORCH_CHECK(feat.dim() == 4, "patch_match: feat must be B×C×h×w, got ", feat.dim(), " dimensions (shape ",
              feat.sizes(), ")");
  TORCH_CHECK(ref.sizes() == feat.sizes(), "patch_match: feat and ref_feat must share one B×C×h×w shape, got ",
              feat.sizes(), " and ", ref.sizes());
  TORCH_CHECK(ref.scalar_type() == feat.scalar_type(), "patch_match: feat is ", feat.scalar_type(), " but ref_feat is ",
              ref.scalar_type());
  TORCH_CHECK(ref.device() == feat.device(), "patch_match: feat is on ", feat.device(), " but ref_feat is on ",
              ref.device());
  TORCH_CHECK(patch_size >= 1, "patch_match: patch_size must be at least 1, got ", patch_size);
  TORCH_CHECK(feat.size(2) >= patch_size && feat.size(3) >= patch_size, "patch_match: feature maps ", feat.size(2), "×",
              feat.size(3), " are smaller than the ", patch_size, "×", patch_size, " patch");
  TORCH_CHECK(feat.size(1) >= 1, "patch_match: feature maps need at least one channel");
  patch_match_dtype(feat);
  const MatchShape shape{feat.size(0), feat.size(1), feat.size(2), feat.size(3), patch_size};
  TORCH_CHECK(shape.positions() < std::numeric_limits<std::int32_t>::max(), "patch_match: ", shape.positions(),
              " patches exceed the 2^31 index range of the kernels");
  return shape;
}

namespace {

std::tuple<at::Tensor, at::Tensor> patch_match_cpu_op(const at::Tensor& feat, const at::Tensor& ref,
                                                      int64_t patch_size) {
  const MatchShape shape = check_patch_match_inputs(feat, ref, patch_size);
  TORCH_CHECK(feat.device().is_cpu(), "patch_match (CPU kernel): tensors must be on the CPU, got ", feat.device());
  at::Tensor index = at::empty({shape.batch, shape.out_h(), shape.out_w()}, feat.options().dtype(at::kLong));
  at::Tensor sim = at::empty({shape.batch, shape.out_h(), shape.out_w()}, feat.options());
  if (shape.batch == 0) return {index, sim};
  const at::Tensor fc = feat.contiguous(), rc = ref.contiguous();
  patch_match_cpu(patch_match_dtype(feat), fc.data_ptr(), rc.data_ptr(), shape, index.data_ptr<int64_t>(),
                  sim.data_ptr());
  return {index, sim};
}

}  // namespace
}  // namespace patchmatch
}  // namespace sschsr

TORCH_LIBRARY_FRAGMENT(sschsr, m) {
  m.def("patch_match(Tensor feat, Tensor ref_feat, int patch_size) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sschsr, CPU, m) {
  m.impl("patch_match", &sschsr::patchmatch::patch_match_cpu_op);
}
