// C++ unit tests of the torch-free patch-matching CPU kernel against a naive double-precision search written here:
// random maps, odd sizes, several patch sizes, exact ties (periodic reference), a shifted copy, zero pixels.
// Exit status 0 on success, 1 on any failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "sschsr/patch_match.h"
#include "test_util.h"

using sschsr::index_t;
using sschsr::patchmatch::MatchShape;
using sschsr::storage::Dtype;
namespace st = sschsr::storage;

struct Naive {
  std::vector<std::int64_t> index;
  std::vector<double> sim, gap;  // gap: (best − second best) / window norm, the cosine margin of the arg-max
};

// The official formulation, literally: normalise pixels, normalise every reference patch, correlate, arg-max with
// strictly-greater updates in increasing patch order (ties keep the lowest index).
static Naive naive_match(const std::vector<double>& f, const std::vector<double>& r, const MatchShape& s) {
  const index_t C = s.channels, h = s.height, w = s.width, p = s.patch, hp = s.out_h(), wp = s.out_w();
  Naive out;
  for (index_t b = 0; b < s.batch; ++b) {
    auto normalise = [&](const std::vector<double>& x) {
      std::vector<double> y(C * h * w);
      for (index_t pix = 0; pix < h * w; ++pix) {
        double n = 0;
        for (index_t c = 0; c < C; ++c) n += x[(b * C + c) * h * w + pix] * x[(b * C + c) * h * w + pix];
        n = std::max(std::sqrt(n), 1e-12);
        for (index_t c = 0; c < C; ++c) y[c * h * w + pix] = x[(b * C + c) * h * w + pix] / n;
      }
      return y;
    };
    const std::vector<double> fi = normalise(f), fr = normalise(r);
    auto patch = [&](const std::vector<double>& m, index_t y, index_t x) {
      std::vector<double> v;
      for (index_t c = 0; c < C; ++c)
        for (index_t dy = 0; dy < p; ++dy)
          for (index_t dx = 0; dx < p; ++dx) v.push_back(m[c * h * w + (y + dy) * w + x + dx]);
      return v;
    };
    std::vector<std::vector<double>> pats;
    for (index_t Y = 0; Y < hp; ++Y)
      for (index_t X = 0; X < wp; ++X) {
        std::vector<double> v = patch(fr, Y, X);
        double n = 0;
        for (double e : v) n += e * e;
        n = std::sqrt(n) + 1e-5;
        for (double& e : v) e /= n;
        pats.push_back(v);
      }
    for (index_t y = 0; y < hp; ++y)
      for (index_t x = 0; x < wp; ++x) {
        const std::vector<double> win = patch(fi, y, x);
        double wn = 0;
        for (double e : win) wn += e * e;
        wn = std::sqrt(wn) + 1e-5;
        double best = -std::numeric_limits<double>::infinity(), second = best;
        std::int64_t bi = 0;
        for (std::size_t n = 0; n < pats.size(); ++n) {
          double sc = 0;
          for (std::size_t t = 0; t < win.size(); ++t) sc += pats[n][t] * win[t];
          if (sc > best) {
            second = best;
            best = sc;
            bi = static_cast<std::int64_t>(n);
          } else if (sc > second) {
            second = sc;
          }
        }
        out.index.push_back(bi);
        out.sim.push_back(best / wn);
        out.gap.push_back((best - second) / wn);
      }
  }
  return out;
}

template <typename T>
static void run_kernel(Dtype dt, const std::vector<double>& f, const std::vector<double>& r, const MatchShape& s,
                       std::vector<std::int64_t>& index, std::vector<double>& sim) {
  std::vector<T> ft(f.size()), rt(r.size());
  for (std::size_t i = 0; i < f.size(); ++i) {
    ft[i] = st::StoreAs<T>::from(f[i]);
    rt[i] = st::StoreAs<T>::from(r[i]);
  }
  const index_t n = s.batch * s.positions();
  index.assign(n, -1);
  std::vector<T> simt(n);
  sschsr::patchmatch::patch_match_cpu(dt, ft.data(), rt.data(), s, index.data(), simt.data());
  sim.resize(n);
  for (index_t i = 0; i < n; ++i) sim[i] = st::load_as<double>(simt[i]);
}

// fp64 must agree exactly; fp32 must agree wherever the naive margin exceeds `margin`, similarity within sim_tol.
template <typename T>
static void compare(Dtype dt, const std::vector<double>& f, const std::vector<double>& r, const MatchShape& s,
                    const Naive& want, double margin, double sim_tol, const char* name) {
  std::vector<std::int64_t> index;
  std::vector<double> sim;
  run_kernel<T>(dt, f, r, s, index, sim);
  int wrong = 0;
  double max_sim_err = 0;
  for (std::size_t i = 0; i < index.size(); ++i) {
    if (index[i] != want.index[i] && want.gap[i] > margin) ++wrong;
    max_sim_err = std::max(max_sim_err, std::abs(sim[i] - want.sim[i]));
  }
  EXPECT(wrong == 0, "%s: %d positions pick another patch (margin > %.1g)", name, wrong, margin);
  EXPECT(max_sim_err <= sim_tol, "%s: similarity max abs err %.3g > %.3g", name, max_sim_err, sim_tol);
}

static void random_cases() {
  const MatchShape shapes[] = {
      {1, 16, 9, 11, 3}, {2, 7, 6, 5, 2}, {1, 5, 8, 8, 1}, {1, 24, 13, 21, 3}, {1, 3, 7, 19, 4}, {2, 9, 5, 40, 3},
  };
  unsigned seed = 11;
  for (const MatchShape& s : shapes) {
    std::mt19937 gen(seed++);
    std::normal_distribution<double> nd;
    std::vector<double> f(s.batch * s.channels * s.height * s.width), r(f.size());
    for (auto& x : f) x = nd(gen);
    for (auto& x : r) x = nd(gen);
    const Naive want = naive_match(f, r, s);
    char name[80];
    std::snprintf(name, sizeof name, "random B%lld C%lld %lldx%lld p%lld", static_cast<long long>(s.batch),
                  static_cast<long long>(s.channels), static_cast<long long>(s.height),
                  static_cast<long long>(s.width), static_cast<long long>(s.patch));
    compare<double>(Dtype::f64, f, r, s, want, 0.0, 1e-12, name);
    compare<float>(Dtype::f32, f, r, s, want, 1e-5, 1e-5, name);
    compare<st::half_t>(Dtype::f16, f, r, s, want, 2e-2, 5e-3, name);
  }
}

// Periodic reference (period 3 in both axes): every patch has exact duplicates, so every arg-max is a tie and must
// resolve to the lowest index, which the naive search (strictly greater, increasing n) defines.
static void tie_cases() {
  const MatchShape s{1, 6, 12, 14, 3};
  std::mt19937 gen(5);
  std::normal_distribution<double> nd;
  std::vector<double> base(s.channels * 9);
  for (auto& x : base) x = nd(gen);
  std::vector<double> r(s.channels * s.height * s.width), f(r.size());
  for (index_t c = 0; c < s.channels; ++c)
    for (index_t y = 0; y < s.height; ++y)
      for (index_t x = 0; x < s.width; ++x) {
        r[(c * s.height + y) * s.width + x] = base[c * 9 + (y % 3) * 3 + x % 3];
        f[(c * s.height + y) * s.width + x] = base[c * 9 + ((y + 1) % 3) * 3 + (x + 2) % 3] + 0.01 * nd(gen);
      }
  const Naive want = naive_match(f, r, s);
  for (std::size_t i = 0; i < want.index.size(); ++i) {
    // The lowest duplicate of any patch lies in the first 3×3 block of corners.
    const std::int64_t Y = want.index[i] / s.out_w(), X = want.index[i] % s.out_w();
    EXPECT(Y < 3 && X < 3, "naive tie resolution picked (%lld, %lld)", static_cast<long long>(Y),
           static_cast<long long>(X));
  }
  for (int dt = 0; dt < 2; ++dt) {
    std::vector<std::int64_t> index;
    std::vector<double> sim;
    if (dt == 0)
      run_kernel<double>(Dtype::f64, f, r, s, index, sim);
    else
      run_kernel<float>(Dtype::f32, f, r, s, index, sim);
    int wrong = 0;
    for (std::size_t i = 0; i < index.size(); ++i) wrong += index[i] != want.index[i];
    EXPECT(wrong == 0, "ties (%s): %d positions differ from the lowest-index rule", dt ? "f32" : "f64", wrong);
  }
}

// Input = reference shifted by (sy, sx) (with fresh content where it leaves the map): windows that see shifted
// content must find the patch (y + sy, x + sx) with similarity ≈ 1.
static void shift_case() {
  const MatchShape s{1, 32, 15, 17, 3};
  const index_t sy = 2, sx = -3;
  std::mt19937 gen(9);
  std::normal_distribution<double> nd;
  std::vector<double> r(s.channels * s.height * s.width), f(r.size());
  for (auto& x : r) x = nd(gen);
  for (index_t c = 0; c < s.channels; ++c)
    for (index_t y = 0; y < s.height; ++y)
      for (index_t x = 0; x < s.width; ++x) {
        const index_t Y = y + sy, X = x + sx;
        const bool inside = Y >= 0 && Y < s.height && X >= 0 && X < s.width;
        f[(c * s.height + y) * s.width + x] = inside ? 1.7 * r[(c * s.height + Y) * s.width + X] : nd(gen);
      }
  std::vector<std::int64_t> index;
  std::vector<double> sim;
  run_kernel<float>(Dtype::f32, f, r, s, index, sim);
  int checked = 0, wrong = 0;
  for (index_t y = 0; y < s.out_h(); ++y)
    for (index_t x = 0; x < s.out_w(); ++x) {
      const index_t Y = y + sy, X = x + sx;
      if (Y < 0 || Y >= s.out_h() || X < 0 || X >= s.out_w()) continue;
      ++checked;
      const std::int64_t q = y * s.out_w() + x;
      if (index[q] != Y * s.out_w() + X || std::abs(sim[q] - 1.0) > 1e-4) ++wrong;
    }
  EXPECT(checked > 50 && wrong == 0, "shifted copy: %d of %d windows missed their source", wrong, checked);
}

// All-zero pixels (norm clamped at 1e-12 → normalised to 0) and an all-zero channel must behave like the reference.
static void zero_case() {
  const MatchShape s{1, 8, 9, 10, 3};
  std::mt19937 gen(13);
  std::normal_distribution<double> nd;
  std::vector<double> f(s.channels * s.height * s.width), r(f.size());
  for (auto& x : f) x = nd(gen);
  for (auto& x : r) x = nd(gen);
  for (index_t c = 0; c < s.channels; ++c) {
    f[(c * s.height + 4) * s.width + 4] = 0.0;  // one zero pixel in each map
    r[(c * s.height + 2) * s.width + 7] = 0.0;
  }
  for (index_t t = 0; t < s.height * s.width; ++t) r[3 * s.height * s.width + t] = 0.0;  // zero channel
  const Naive want = naive_match(f, r, s);
  compare<double>(Dtype::f64, f, r, s, want, 0.0, 1e-12, "zero pixels f64");
  compare<float>(Dtype::f32, f, r, s, want, 1e-5, 1e-5, "zero pixels f32");
}

int main() {
  random_cases();
  tie_cases();
  shift_case();
  zero_case();
  if (g_failures) {
    std::printf("%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("test_patch_match: all passed\n");
  return 0;
}
