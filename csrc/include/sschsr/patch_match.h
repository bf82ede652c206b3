// Exhaustive p×p patch matching (cosine similarity, arg-max over all reference patches): torch-free kernel API and the
// inline math shared by the CPU and CUDA kernels.
//
// Semantics (the official FlowSimCorrespondenceGenerationArch, spec §3.6): both B×C×h×w maps are L2-normalised per
// pixel over the channels (norm clamped at 1e-12); every stride-1 p×p reference patch n = Y·(w−p+1) + X is divided
// by (its norm + 1e-5); score(n, y, x) = ⟨patch n, input window (y, x)⟩; index = arg-max over n with ties to the
// LOWEST n; similarity = best score / (input window norm + 1e-5).
//
// Kernels stream the correlation with a running arg-max: memory is linear in the number of positions, the
// (positions × patches) score matrix is never held.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sschsr/common.h"
#include "sschsr/spectral_attention.h"  // storage::Dtype, 16-bit float helpers, math_sqrt

namespace sschsr {
namespace patchmatch {

using storage::Dtype;

constexpr double kPixelEps = 1e-12;  // clamp of the per-pixel L2 norm
constexpr double kPatchEps = 1e-5;   // added to patch and window norms

struct MatchShape {
  index_t batch;
  index_t channels;
  index_t height;
  index_t width;
  index_t patch;  // p
  SSCHSR_HOST_DEVICE index_t out_h() const { return height - patch + 1; }
  SSCHSR_HOST_DEVICE index_t out_w() const { return width - patch + 1; }
  SSCHSR_HOST_DEVICE index_t positions() const { return out_h() * out_w(); }
};

// The arg-max rule: candidate (v, n) replaces the best (bv, bn) when strictly greater, or equal with a lower index.
// Order-independent, so blocks, threads and diagonals can be visited in any order and still give the lowest index.
template <typename S>
SSCHSR_INLINE bool better_match(S v, std::int64_t n, S bv, std::int64_t bn) {
  return v > bv || (v == bv && n < bn);
}

// Per-pixel normalisation factors from Σ_c x²: r = 1 / max(‖x‖, 1e-12); the normalised pixel's squared norm r²·Σx²
// (1, or 0 for an all-zero pixel) is what the patch / window norms sum.
template <typename S>
SSCHSR_INLINE void pixel_normalisation(S sum_sq, S* inv_norm, S* normalised_sq) {
  S n = spectral::math_sqrt(sum_sq);
  const S d = n > static_cast<S>(kPixelEps) ? n : static_cast<S>(kPixelEps);
  const S r = static_cast<S>(1) / d;
  *inv_norm = r;
  *normalised_sq = sum_sq * r * r;
}

// Norm of a p×p patch (or window) of normalised pixels, plus 1e-5: √(Σ normalised_sq) + 1e-5.
// nsq: normalised squared norms of one h×w map (row stride `width`); (y, x): top-left corner.
template <typename S>
SSCHSR_INLINE S patch_norm(const S* nsq, index_t width, index_t patch, index_t y, index_t x) {
  S total = 0;
  for (index_t dy = 0; dy < patch; ++dy)
    for (index_t dx = 0; dx < patch; ++dx) total += nsq[(y + dy) * width + x + dx];
  return spectral::math_sqrt(total) + static_cast<S>(kPatchEps);
}

// ---- CPU (C++17 + OpenMP) ------------------------------------------------------------------------------------------
// feat, ref: contiguous B×C×h×w of `dtype`; index: B×(h−p+1)×(w−p+1) int64; similarity: same shape, `dtype`.
// Accumulation in float (fp32/fp16/bf16 inputs) or double (fp64). Requires (h−p+1)·(w−p+1) < 2^31.
// Method: the score of patch (Y, X) against window (y, x) is Σ_{dy,dx} G[(Y+dy, X+dx), (y+dy, x+dx)] with G the
// pixel-pair inner products, so the kernel computes each pixel-row pair's w×w block of G once (a small GEMM with
// K = C), collapses it along the p column diagonals and sums p consecutive blocks along a row diagonal: p² fewer
// multiply-adds than correlating every C·p·p patch with every window.
void patch_match_cpu(Dtype dtype, const void* feat, const void* ref, const MatchShape& shape, std::int64_t* index,
                     void* similarity);

// ---- CUDA (unverified on hardware) ---------------------------------------------------------------------------------
#ifdef SSCHSR_CUDA_API_VISIBLE  // (defined in spectral_attention.h)
// Device scratch memory the CUDA launcher needs (normalised NHWC maps, norms, per-split partial maxima).
std::size_t patch_match_cuda_workspace_bytes(Dtype dtype, const MatchShape& shape);

// Same contract as the CPU function, device pointers, launched on `stream`; returns cudaGetLastError().
// fp16/bf16 inputs run the products on tensor cores (fp16/bf16 operands, fp32 accumulation): the rounding of the
// normalised features to 16 bits can reorder near-tied scores, so the arg-max may differ from an fp32 computation
// where two patches score within ~1e-3 of each other. fp32 and fp64 inputs use exact-precision CUDA-core FMAs.
cudaError_t patch_match_cuda(Dtype dtype, const void* feat, const void* ref, const MatchShape& shape,
                             std::int64_t* index, void* similarity, void* workspace, cudaStream_t stream);
#endif

}  // namespace patchmatch
}  // namespace sschsr
