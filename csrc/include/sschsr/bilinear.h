// Bilinear sampling with zero padding: corner positions and weights, shared by the CPU and CUDA kernels.
//
// Convention (torchvision / mmcv / ONNX DeformConv): a sample at the real position (y, x) of an H×W plane reads the four
// corners (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1) with y0 = floor(y), x0 = floor(x), weighted by
// (1 − ly)(1 − lx), (1 − ly)·lx, ly·(1 − lx), ly·lx where ly = y − y0, lx = x − x0. A corner outside the plane reads zero,
// so a sample with y ≤ −1, y ≥ H, x ≤ −1 or x ≥ W is exactly zero. Positions that are NaN count as outside.
#pragma once

#include <math.h>

#include "sschsr/common.h"

namespace sschsr {

SSCHSR_INLINE float floor_value(float v) { return floorf(v); }
SSCHSR_INLINE double floor_value(double v) { return floor(v); }

// The four corners of one bilinear sample. Weights of corners outside the plane are 0 and their flags false, so a
// caller may either skip them or read any valid address for them; `inside` is false when no corner is in the plane
// (then all weights are 0 and y0/x0 are meaningless).
template <typename T>
struct BilinearCorners {
  int y0;
  int x0;
  T w00, w01, w10, w11;      // (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1)
  bool v00, v01, v10, v11;   // corner inside the plane
  bool inside;               // at least one corner inside
};

// Corner positions, validity and weights of the sample at (y, x) in an h×w plane. The range test comes before any
// float-to-int conversion, so huge or non-finite positions are safe.
template <typename T>
SSCHSR_INLINE BilinearCorners<T> bilinear_corners(T y, T x, index_t h, index_t w) {
  BilinearCorners<T> c;
  // Written as !(a && b) so that NaN positions are treated as outside.
  c.inside = (y > T(-1)) && (y < T(h)) && (x > T(-1)) && (x < T(w));
  if (!c.inside) {
    c.y0 = 0;
    c.x0 = 0;
    c.w00 = c.w01 = c.w10 = c.w11 = T(0);
    c.v00 = c.v01 = c.v10 = c.v11 = false;
    return c;
  }
  const T fy = floor_value(y);
  const T fx = floor_value(x);
  c.y0 = static_cast<int>(fy);
  c.x0 = static_cast<int>(fx);
  const T ly = y - fy;
  const T lx = x - fx;
  const T hy = T(1) - ly;
  const T hx = T(1) - lx;
  const bool y0in = c.y0 >= 0;
  const bool y1in = c.y0 + 1 < h;
  const bool x0in = c.x0 >= 0;
  const bool x1in = c.x0 + 1 < w;
  c.v00 = y0in && x0in;
  c.v01 = y0in && x1in;
  c.v10 = y1in && x0in;
  c.v11 = y1in && x1in;
  c.w00 = c.v00 ? hy * hx : T(0);
  c.w01 = c.v01 ? hy * lx : T(0);
  c.w10 = c.v10 ? ly * hx : T(0);
  c.w11 = c.v11 ? ly * lx : T(0);
  return c;
}

// One bilinear sample of a strided plane (element (yy, xx) at plane[yy * stride_y + xx * stride_x]); zero outside.
// Computes in T. Used by the CPU tests and as the readable definition the fused kernels must agree with.
template <typename T>
SSCHSR_INLINE T bilinear_sample_zero(const T* plane, index_t h, index_t w, index_t stride_y, index_t stride_x, T y,
                                     T x) {
  const BilinearCorners<T> c = bilinear_corners(y, x, h, w);
  if (!c.inside) return T(0);
  const index_t base = static_cast<index_t>(c.y0) * stride_y + static_cast<index_t>(c.x0) * stride_x;
  T v = T(0);
  if (c.v00) v += c.w00 * plane[base];
  if (c.v01) v += c.w01 * plane[base + stride_x];
  if (c.v10) v += c.w10 * plane[base + stride_y];
  if (c.v11) v += c.w11 * plane[base + stride_y + stride_x];
  return v;
}

}  // namespace sschsr
