// C++ unit tests of the torch-free spectral-attention CPU kernels (and the fp16/bf16 storage helpers) against naive
// double-precision loops written here. Exit status 0 on success, 1 on any failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "sschsr/spectral_attention.h"
#include "test_util.h"

using sschsr::index_t;
using sschsr::spectral::AttentionShape;
using sschsr::storage::Dtype;
namespace st = sschsr::storage;

// ---- naive reference ---------------------------------------------------------------------------------------------
struct Stats {
  std::vector<double> gram, qsq, ksq;
};

static Stats naive_stats(const std::vector<double>& q, const std::vector<double>& k, const AttentionShape& s) {
  const index_t c = s.channels / s.heads;
  Stats r{std::vector<double>(s.batch * s.heads * c * c, 0.0), std::vector<double>(s.batch * s.channels, 0.0),
          std::vector<double>(s.batch * s.channels, 0.0)};
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads; ++h)
      for (index_t i = 0; i < c; ++i)
        for (index_t j = 0; j < c; ++j) {
          double acc = 0;
          for (index_t p = 0; p < s.pixels; ++p)
            acc += q[((b * s.channels) + h * c + i) * s.pixels + p] * k[((b * s.channels) + h * c + j) * s.pixels + p];
          r.gram[((b * s.heads + h) * c + i) * c + j] = acc;
        }
  for (index_t bc = 0; bc < s.batch * s.channels; ++bc)
    for (index_t p = 0; p < s.pixels; ++p) {
      r.qsq[bc] += q[bc * s.pixels + p] * q[bc * s.pixels + p];
      r.ksq[bc] += k[bc * s.pixels + p] * k[bc * s.pixels + p];
    }
  return r;
}

// softmax(q̂ k̂ᵀ τ) v written the textbook way: normalise q and k first, then multiply.
static std::vector<double> naive_attention(const std::vector<double>& q, const std::vector<double>& k,
                                           const std::vector<double>& v, const std::vector<double>& tau,
                                           const AttentionShape& s) {
  const index_t c = s.channels / s.heads, P = s.pixels;
  std::vector<double> out(q.size(), 0.0);
  std::vector<double> qn(q.size()), kn(k.size());
  for (index_t bc = 0; bc < s.batch * s.channels; ++bc) {
    double a = 0, b2 = 0;
    for (index_t p = 0; p < P; ++p) {
      a += q[bc * P + p] * q[bc * P + p];
      b2 += k[bc * P + p] * k[bc * P + p];
    }
    a = std::max(std::sqrt(a), 1e-12);
    b2 = std::max(std::sqrt(b2), 1e-12);
    for (index_t p = 0; p < P; ++p) {
      qn[bc * P + p] = q[bc * P + p] / a;
      kn[bc * P + p] = k[bc * P + p] / b2;
    }
  }
  std::vector<double> row(c);
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads; ++h)
      for (index_t i = 0; i < c; ++i) {
        double mx = -INFINITY;
        for (index_t j = 0; j < c; ++j) {
          double acc = 0;
          for (index_t p = 0; p < P; ++p)
            acc += qn[(b * s.channels + h * c + i) * P + p] * kn[(b * s.channels + h * c + j) * P + p];
          row[j] = acc * tau[h];
          mx = std::max(mx, row[j]);
        }
        double tot = 0;
        for (index_t j = 0; j < c; ++j) tot += (row[j] = std::exp(row[j] - mx));
        for (index_t j = 0; j < c; ++j) row[j] /= tot;
        for (index_t p = 0; p < P; ++p) {
          double acc = 0;
          for (index_t j = 0; j < c; ++j) acc += row[j] * v[(b * s.channels + h * c + j) * P + p];
          out[(b * s.channels + h * c + i) * P + p] = acc;
        }
      }
  return out;
}

// ---- typed runs --------------------------------------------------------------------------------------------------
template <typename T>
static std::vector<T> cast_to(const std::vector<double>& x) {
  std::vector<T> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = st::StoreAs<T>::from(x[i]);
  return r;
}

template <typename T>
static std::vector<double> cast_from(const std::vector<T>& x) {
  std::vector<double> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = st::load_as<double>(x[i]);
  return r;
}

template <typename T, typename S>
static void check_case(Dtype dt, const AttentionShape& s, unsigned seed, double tol_stats, double tol_out,
                       const char* name) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  const index_t n = s.batch * s.channels * s.pixels;
  std::vector<double> q(n), k(n), v(n), tau(s.heads);
  for (auto& x : q) x = nd(gen);
  for (auto& x : k) x = nd(gen) + 0.3;
  for (auto& x : v) x = nd(gen);
  for (auto& x : tau) x = 0.5 + std::abs(nd(gen));
  // Round the inputs to T first, so the reference sees exactly what the kernel sees.
  const std::vector<T> qt = cast_to<T>(q), kt = cast_to<T>(k), vt = cast_to<T>(v);
  q = cast_from(qt);
  k = cast_from(kt);
  v = cast_from(vt);
  const index_t c = s.channels / s.heads;
  std::vector<S> gram(s.batch * s.heads * c * c, S(-1)), qsq(s.batch * s.channels, S(-1)),
      ksq(s.batch * s.channels, S(-1));
  sschsr::spectral::gram_and_norms_cpu(dt, qt.data(), kt.data(), s, gram.data(), qsq.data(), ksq.data());
  const Stats ref = naive_stats(q, k, s);
  const double eg = rel_err(cast_from(gram), ref.gram), eq = rel_err(cast_from(qsq), ref.qsq),
               ek = rel_err(cast_from(ksq), ref.ksq);
  EXPECT(eg <= tol_stats && eq <= tol_stats && ek <= tol_stats, "%s stats rel err gram %.3g qsq %.3g ksq %.3g", name,
         eg, eq, ek);

  std::vector<S> taus(tau.begin(), tau.end());
  std::vector<T> out(n);
  sschsr::spectral::spectral_attention_cpu(dt, qt.data(), kt.data(), vt.data(), taus.data(), s, out.data());
  const std::vector<double> want = naive_attention(q, k, v, std::vector<double>(taus.begin(), taus.end()), s);
  const double eo = rel_err(cast_from(out), want);
  EXPECT(eo <= tol_out, "%s attention rel err %.3g (tol %.3g)", name, eo, tol_out);
}

// Statistics are sums over pixels: the stats of two pixel halves add up to the stats of the whole.
static void check_additivity() {
  const AttentionShape whole{2, 16, 300, 2};
  const index_t half_p = 137;
  std::mt19937 gen(7);
  std::normal_distribution<float> nd;
  const index_t n = whole.batch * whole.channels * whole.pixels;
  std::vector<float> q(n), k(n);
  for (auto& x : q) x = nd(gen);
  for (auto& x : k) x = nd(gen);
  auto split = [&](index_t p0, index_t p1) {
    std::vector<float> qs, ks;
    for (index_t bc = 0; bc < whole.batch * whole.channels; ++bc)
      for (index_t p = p0; p < p1; ++p) {
        qs.push_back(q[bc * whole.pixels + p]);
        ks.push_back(k[bc * whole.pixels + p]);
      }
    return std::make_pair(qs, ks);
  };
  const index_t c = whole.channels / whole.heads;
  auto stats = [&](const std::vector<float>& qq, const std::vector<float>& kk, index_t P) {
    const AttentionShape s{whole.batch, whole.channels, P, whole.heads};
    std::vector<float> g(whole.batch * whole.heads * c * c), a(whole.batch * whole.channels),
        b(whole.batch * whole.channels);
    sschsr::spectral::gram_and_norms_cpu(Dtype::f32, qq.data(), kk.data(), s, g.data(), a.data(), b.data());
    std::vector<double> all;
    for (float x : g) all.push_back(x);
    for (float x : a) all.push_back(x);
    for (float x : b) all.push_back(x);
    return all;
  };
  const auto [q0, k0] = split(0, half_p);
  const auto [q1, k1] = split(half_p, whole.pixels);
  const std::vector<double> s0 = stats(q0, k0, half_p), s1 = stats(q1, k1, whole.pixels - half_p),
                            sw = stats(q, k, whole.pixels);
  std::vector<double> sum(sw.size());
  for (std::size_t i = 0; i < sw.size(); ++i) sum[i] = s0[i] + s1[i];
  const double e = rel_err(sum, sw);
  EXPECT(e <= 1e-6, "tile additivity rel err %.3g", e);
}

static void check_half_conversions() {
  // Every finite half survives half → float → half; nan stays nan.
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const float f = st::half_bits_to_float(static_cast<std::uint16_t>(b));
    const std::uint16_t back = st::float_to_half_bits(f);
    if ((b & 0x7c00u) == 0x7c00u && (b & 0x3ffu)) {
      EXPECT(std::isnan(f) && (back & 0x7c00u) == 0x7c00u && (back & 0x3ffu), "half nan 0x%04x", b);
    } else {
      EXPECT(back == b, "half round trip 0x%04x -> %g -> 0x%04x", b, f, back);
    }
  }
  struct Case {
    float f;
    std::uint16_t h;
  };
  const Case cases[] = {
      {1.0f, 0x3c00}, {-2.0f, 0xc000}, {65504.0f, 0x7bff}, {65519.99f, 0x7bff}, {65520.0f, 0x7c00},
      {1e9f, 0x7c00}, {std::ldexp(1.0f, -24), 0x0001}, {std::ldexp(1.0f, -25), 0x0000},
      {std::ldexp(1.5f, -25), 0x0001}, {std::ldexp(3.0f, -25), 0x0002},    // 1.5 ulp: ties to even (2)
      {std::ldexp(1.0f, -14), 0x0400}, {std::ldexp(1023.5f, -24), 0x0400},  // rounds up into the normals
      {1.0f + std::ldexp(1.0f, -11), 0x3c00}, {1.0f + std::ldexp(3.0f, -11), 0x3c02},  // ties to even
      {0.1f, 0x2e66}, {-0.0f, 0x8000},
  };
  for (const Case& c : cases) {
    const std::uint16_t got = st::float_to_half_bits(c.f);
    EXPECT(got == c.h, "float_to_half(%.9g) = 0x%04x, want 0x%04x", c.f, got, c.h);
  }
  // bfloat16: exact for the top 16 bits, round to nearest even otherwise.
  EXPECT(st::float_to_bf16_bits(1.0f) == 0x3f80, "bf16(1)");
  EXPECT(st::float_to_bf16_bits(st::bits_to_float(0x3f808000u)) == 0x3f80, "bf16 tie to even (down)");
  EXPECT(st::float_to_bf16_bits(st::bits_to_float(0x3f818000u)) == 0x3f82, "bf16 tie to even (up)");
  EXPECT(st::float_to_bf16_bits(st::bits_to_float(0x3f808001u)) == 0x3f81, "bf16 above tie");
  EXPECT(std::isnan(st::bf16_bits_to_float(st::float_to_bf16_bits(NAN))), "bf16 nan");
  EXPECT(st::bf16_bits_to_float(0x4049) == 3.140625f, "bf16 -> float");
}

// A constant-zero q row gives a uniform attention row (all logits 0 after the 1e-12 clamp), like F.normalize.
static void check_zero_rows() {
  const AttentionShape s{1, 4, 50, 1};
  std::vector<float> q(4 * 50), k(4 * 50), v(4 * 50), out(4 * 50);
  std::mt19937 gen(3);
  std::normal_distribution<float> nd;
  for (auto& x : q) x = nd(gen);
  for (auto& x : k) x = nd(gen);
  for (auto& x : v) x = nd(gen);
  for (int p = 0; p < 50; ++p) q[p] = 0.0f;  // channel 0 of q is all zero
  const float tau = 1.0f;
  sschsr::spectral::spectral_attention_cpu(Dtype::f32, q.data(), k.data(), v.data(), &tau, s, out.data());
  double err = 0;
  for (int p = 0; p < 50; ++p) {
    const double mean = (v[p] + v[50 + p] + v[100 + p] + v[150 + p]) / 4.0;
    err = std::max(err, std::abs(out[p] - mean));
  }
  EXPECT(err < 1e-6, "zero q row: max deviation from the mean of v %.3g", err);
}

int main() {
  check_half_conversions();
  check_additivity();
  check_zero_rows();
  const AttentionShape shapes[] = {
      {2, 12, 77, 3},    // c = 4, pixel tail
      {1, 10, 1031, 2},  // c = 5 (odd micro-tile edges), crosses a 1024-pixel chunk
      {1, 64, 4200, 1},  // c = 64, crosses a 4096-pixel split
      {3, 256, 33, 8},   // c = 32, the res1 head size
      {1, 7, 1, 7},      // c = 1, one pixel
  };
  unsigned seed = 1;
  for (const AttentionShape& s : shapes) {
    char name[96];
    std::snprintf(name, sizeof name, "B%lld C%lld P%lld heads%lld", static_cast<long long>(s.batch),
                  static_cast<long long>(s.channels), static_cast<long long>(s.pixels),
                  static_cast<long long>(s.heads));
    check_case<double, double>(Dtype::f64, s, seed, 1e-13, 1e-12, name);
    check_case<float, float>(Dtype::f32, s, seed, 1e-5, 1e-5, name);
    check_case<st::half_t, float>(Dtype::f16, s, seed, 1e-5, 2e-3, name);
    check_case<st::bfloat16_t, float>(Dtype::bf16, s, seed, 1e-5, 1e-2, name);
    ++seed;
  }
  if (g_failures) {
    std::printf("%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("test_spectral_attention: all passed\n");
  return 0;
}
