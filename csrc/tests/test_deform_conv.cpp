// Unit test of the torch-free CPU deformable convolution against a naive per-pixel implementation written here.
//
// The naive version follows the definition literally (every output pixel, every tap, every channel, bilinear sample
// with per-corner bounds checks, accumulate in long double) and shares no code with the kernel except the parameter
// struct. Cases cover strides, dilation, padding, conv groups, offset groups, non-square kernels, offsets that leave
// the image, no mask / no bias, channels-last input strides, tile remainders, 1 vs 2 threads, and the portable
// micro-kernels next to the AVX2 ones.
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "sschsr/deform_conv.h"

using sschsr::DeformConv2dParams;
using sschsr::index_t;

namespace {

struct Case {
  const char* name;
  index_t b, c, o, h, w, kh, kw, sh, sw, ph, pw, dh, dw, groups, og;
  double offset_scale;
  bool mask, bias, channels_last;
};

long double naive_sample(const std::vector<double>& in, const DeformConv2dParams& p, index_t b, index_t c, double y,
                         double x) {
  const long double fy = std::floor(y), fx = std::floor(x);
  const long double ly = y - fy, lx = x - fx;
  long double v = 0;
  for (int dy = 0; dy < 2; ++dy)
    for (int dx = 0; dx < 2; ++dx) {
      const double yy = fy + dy, xx = fx + dx;
      if (yy < 0 || yy >= p.height || xx < 0 || xx >= p.width) continue;
      const index_t at = b * p.in_stride_n + c * p.in_stride_c + static_cast<index_t>(yy) * p.in_stride_h +
                         static_cast<index_t>(xx) * p.in_stride_w;
      const long double wgt = (dy ? ly : 1 - ly) * (dx ? lx : 1 - lx);
      v += wgt * in[at];
    }
  return v;
}

std::vector<double> naive(const DeformConv2dParams& p, const std::vector<double>& in, const std::vector<double>& off,
                          const std::vector<double>* mask, const std::vector<double>& wt,
                          const std::vector<double>* bias) {
  const index_t K = p.kernel_h * p.kernel_w, Cg = p.in_channels / p.groups, Og = p.out_channels / p.groups;
  const index_t cpg = p.in_channels / p.offset_groups, HoWo = p.out_h * p.out_w;
  std::vector<double> out(p.batch * p.out_channels * HoWo);
  for (index_t b = 0; b < p.batch; ++b)
    for (index_t o = 0; o < p.out_channels; ++o)
      for (index_t oy = 0; oy < p.out_h; ++oy)
        for (index_t ox = 0; ox < p.out_w; ++ox) {
          const index_t gi = o / Og;
          long double acc = bias ? (*bias)[o] : 0.0;
          for (index_t cl = 0; cl < Cg; ++cl) {
            const index_t c = gi * Cg + cl, g = c / cpg;
            for (index_t i = 0; i < p.kernel_h; ++i)
              for (index_t j = 0; j < p.kernel_w; ++j) {
                const index_t tap = i * p.kernel_w + j, pix = oy * p.out_w + ox;
                const double dy = off[((b * p.offset_groups + g) * K + tap) * 2 * HoWo + pix];
                const double dx = off[(((b * p.offset_groups + g) * K + tap) * 2 + 1) * HoWo + pix];
                const double m = mask ? (*mask)[((b * p.offset_groups + g) * K + tap) * HoWo + pix] : 1.0;
                const double y = static_cast<double>(oy * p.stride_h - p.pad_h + i * p.dilation_h) + dy;
                const double x = static_cast<double>(ox * p.stride_w - p.pad_w + j * p.dilation_w) + dx;
                acc += static_cast<long double>(wt[((o * Cg + cl) * p.kernel_h + i) * p.kernel_w + j]) * m *
                       naive_sample(in, p, b, c, y, x);
              }
          }
          out[(b * p.out_channels + o) * HoWo + oy * p.out_w + ox] = static_cast<double>(acc);
        }
  return out;
}

template <typename T>
double rel_err(const std::vector<T>& a, const std::vector<double>& ref) {
  long double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const long double d = static_cast<long double>(a[i]) - ref[i];
    num += d * d;
    den += static_cast<long double>(ref[i]) * ref[i];
  }
  return static_cast<double>(std::sqrt(num / (den > 0 ? den : 1)));
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
double run_kernel(const DeformConv2dParams& p, const std::vector<double>& in, const std::vector<double>& off,
                  const std::vector<double>* mask, const std::vector<double>& wt, const std::vector<double>* bias,
                  const std::vector<double>& ref) {
  const std::vector<T> in_t = cast<T>(in), off_t = cast<T>(off), wt_t = cast<T>(wt);
  const std::vector<T> mask_t = mask ? cast<T>(*mask) : std::vector<T>();
  const std::vector<T> bias_t = bias ? cast<T>(*bias) : std::vector<T>();
  std::vector<T> out(ref.size(), T(12345));  // poison: every element must be written
  sschsr::modulated_deform_conv2d_cpu(p, in_t.data(), off_t.data(), mask ? mask_t.data() : nullptr, wt_t.data(),
                                      bias ? bias_t.data() : nullptr, out.data());
  return rel_err(out, ref);
}

int run_case(const Case& cs, std::mt19937& rng) {
  DeformConv2dParams p;
  p.batch = cs.b, p.in_channels = cs.c, p.height = cs.h, p.width = cs.w;
  p.out_channels = cs.o, p.kernel_h = cs.kh, p.kernel_w = cs.kw;
  p.stride_h = cs.sh, p.stride_w = cs.sw, p.pad_h = cs.ph, p.pad_w = cs.pw;
  p.dilation_h = cs.dh, p.dilation_w = cs.dw, p.groups = cs.groups, p.offset_groups = cs.og;
  sschsr::deform_conv2d_fill_output_size(p);
  if (cs.channels_last) {  // NHWC memory, described by strides
    p.in_stride_c = 1, p.in_stride_w = cs.c, p.in_stride_h = cs.w * cs.c, p.in_stride_n = cs.h * cs.w * cs.c;
  } else {
    sschsr::deform_conv2d_set_contiguous_strides(p);
  }
  if (const char* err = sschsr::deform_conv2d_check(p)) {
    std::printf("FAIL %s: invalid test case: %s\n", cs.name, err);
    return 1;
  }
  const index_t K = cs.kh * cs.kw, HoWo = p.out_h * p.out_w;
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<double> in(cs.b * cs.c * cs.h * cs.w), off(cs.b * 2 * cs.og * K * HoWo), mask(cs.b * cs.og * K * HoWo);
  std::vector<double> wt(cs.o * (cs.c / cs.groups) * K), bias(cs.o);
  for (auto& v : in) v = normal(rng);
  for (auto& v : off) v = cs.offset_scale * normal(rng);
  for (auto& v : mask) v = uniform(rng);
  for (auto& v : wt) v = normal(rng);
  for (auto& v : bias) v = normal(rng);
  // A few exact integer and half-integer offsets: corners land exactly on the border.
  for (std::size_t i = 0; i < off.size(); i += 7) off[i] = std::round(2.0 * off[i]) / 2.0;
  const std::vector<double> ref = naive(p, in, off, cs.mask ? &mask : nullptr, wt, cs.bias ? &bias : nullptr);
  int failures = 0;
  for (int variant = 0; variant < 3; ++variant) {
    // 0: one thread, 1: two threads, 2: two threads with the portable (non-AVX2) micro-kernels
    p.num_threads = variant == 0 ? 1 : 2;
    p.cpu_portable_only = variant == 2;
    const double e32 = run_kernel<float>(p, in, off, cs.mask ? &mask : nullptr, wt, cs.bias ? &bias : nullptr, ref);
    const double e64 = run_kernel<double>(p, in, off, cs.mask ? &mask : nullptr, wt, cs.bias ? &bias : nullptr, ref);
    const bool ok = e32 <= 1e-5 && e64 <= 1e-12;
    std::printf("%s %-28s threads=%d%s  rel_err fp32 %.2e (<= 1e-5)  fp64 %.2e (<= 1e-12)\n", ok ? "ok  " : "FAIL",
                cs.name, p.num_threads, p.cpu_portable_only ? " portable" : "         ", e32, e64);
    failures += ok ? 0 : 1;
  }
  return failures;
}

int test_rejects_bad_params() {
  DeformConv2dParams p;
  p.batch = 1, p.in_channels = 6, p.height = 5, p.width = 5, p.out_channels = 4, p.kernel_h = 3, p.kernel_w = 3;
  p.offset_groups = 4;  // 6 channels are not divisible into 4 offset groups
  sschsr::deform_conv2d_fill_output_size(p);
  sschsr::deform_conv2d_set_contiguous_strides(p);
  std::vector<float> buf(1024);
  try {
    sschsr::modulated_deform_conv2d_cpu(p, buf.data(), buf.data(), nullptr, buf.data(), nullptr, buf.data());
  } catch (const std::invalid_argument& e) {
    std::printf("ok   rejects bad params: %s\n", e.what());
    return 0;
  }
  std::printf("FAIL bad params accepted\n");
  return 1;
}

}  // namespace

int main() {
  // name, b, c, o, h, w, kh, kw, sh, sw, ph, pw, dh, dw, groups, og, offset_scale, mask, bias, channels_last
  const Case cases[] = {
      {"decoder-like 3x3 og8", 1, 16, 16, 9, 11, 3, 3, 1, 1, 1, 1, 1, 1, 1, 8, 2.0, true, true, false},
      {"batch2 stride2 groups2", 2, 8, 6, 7, 5, 3, 3, 2, 2, 1, 1, 1, 1, 2, 2, 3.0, true, true, false},
      {"1x1 kernel og3", 3, 6, 4, 10, 13, 1, 1, 1, 1, 0, 0, 1, 1, 1, 3, 1.5, true, false, false},
      {"5x5 dilation2 pad2", 1, 4, 8, 12, 9, 5, 5, 1, 1, 2, 2, 2, 2, 1, 1, 4.0, false, true, false},
      {"large offsets groups3", 2, 12, 12, 8, 8, 3, 3, 1, 1, 0, 0, 1, 1, 3, 4, 20.0, true, true, false},
      {"3x2 kernel mixed params", 1, 6, 5, 6, 14, 3, 2, 1, 2, 1, 0, 2, 1, 1, 2, 1.0, false, false, false},
      {"channels-last input", 2, 16, 24, 11, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 8, 2.5, true, true, true},
      // Og = 40 (not a multiple of the micro-kernel width), 17×13 = 221 pixels (several tiles + remainder),
      // Cg·K = 360 > one reduction chunk.
      {"tile and chunk remainders", 1, 40, 40, 17, 13, 3, 3, 1, 1, 1, 1, 1, 1, 1, 8, 3.0, true, true, false},
      {"wide channels chunk split", 1, 300, 7, 5, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 2, 1.0, true, true, false},
  };
  std::mt19937 rng(20240517);
  int failures = 0;
  for (const Case& cs : cases) failures += run_case(cs, rng);
  failures += test_rejects_bad_params();
  std::printf("isa: %s\n", sschsr::modulated_deform_conv2d_cpu_isa());
  if (failures) std::printf("%d FAILED\n", failures);
  return failures == 0 ? 0 : 1;
}
