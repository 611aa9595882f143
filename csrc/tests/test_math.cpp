// Tests of the per-element math shared by the CPU and CUDA kernels (csrc/kernels/math.h)
// against the formulas of fastcl/ops/reference.py and the papers' equations.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/math.h"
#include "tests/check.h"

namespace k = fastcl::kernels;

namespace {

std::mt19937_64 rng(20240601);

double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }

template <typename T>
void test_sgd_and_prox() {
  const double tol = std::is_same<T, float>::value ? 1e-6 : 1e-14;
  for (int it = 0; it < 2000; ++it) {
    const T p = T(uniform(-3, 3)), g = T(uniform(-3, 3)), a = T(uniform(-3, 3));
    const T h = T(uniform(0, 5)), lr = T(uniform(0, 1)), prox = T(uniform(0, 2));
    // Eq. 16, 17, 21 as written in reference.py.
    const double want = (double(p) - double(lr) * g + double(prox) * h * a) / (double(prox) * h + 1);
    FASTCL_CHECK_CLOSE(k::prox_sgd(p, g, a, h, lr, prox), want, tol, tol)
        << "p" << p << "g" << g << "a" << a << "h" << h << "lr" << lr << "prox" << prox;
    FASTCL_CHECK_CLOSE(k::sgd(p, g, lr), double(p) - double(lr) * g, tol, tol);
    // prox = 0 is plain SGD, bit for bit (finite anchors and importance).
    FASTCL_CHECK(k::prox_sgd(p, g, a, h, lr, T(0)) == k::sgd(p, g, lr))
        << "prox=0 differs from sgd for p" << p << "g" << g << "lr" << lr;
  }
  // h = 0 switches the proximal term off; h -> inf pins theta to the anchor.
  FASTCL_CHECK(k::prox_sgd(T(1), T(2), T(5), T(0), T(0.5), T(3)) == k::sgd(T(1), T(2), T(0.5)));
  FASTCL_CHECK_CLOSE(k::prox_sgd(T(1), T(2), T(5), T(1e30), T(0.5), T(3)), 5.0, 1e-6, 0);
  // nan in the importance propagates, as in the reference expression.
  FASTCL_CHECK(std::isnan(k::prox_sgd(T(1), T(2), T(5), std::numeric_limits<T>::quiet_NaN(),
                                      T(0.5), T(3))));
}

// Eq. 21: the prox step is the minimiser of the proximal objective
//   J(x) = 1/2 (x - (p - lr*g))^2 + prox/2 * h * (x - a)^2
// (the inner objective of Eq. 16, 17 multiplied by lr, prox = lr*lambda). Checked numerically:
// the derivative vanishes, nearby points are worse, and a ternary search finds the same x.
void test_prox_is_minimiser() {
  for (int it = 0; it < 300; ++it) {
    const double p = uniform(-3, 3), g = uniform(-3, 3), a = uniform(-3, 3), h = uniform(0, 5);
    const double lr = uniform(0.001, 1), prox = uniform(0, 3);
    const auto J = [&](double x) {
      const double s = x - (p - lr * g), t = x - a;
      return 0.5 * s * s + 0.5 * prox * h * t * t;
    };
    const double x = k::prox_sgd(p, g, a, h, lr, prox);
    const double dJ = (x - (p - lr * g)) + prox * h * (x - a);
    FASTCL_CHECK(std::fabs(dJ) < 1e-12 * (1 + std::fabs(p) + std::fabs(a) + prox * h))
        << "dJ/dx =" << dJ << "at the prox step";
    for (double d : {1e-2, 1e-4, -1e-2, -1e-4}) FASTCL_CHECK(J(x) <= J(x + d)) << "step" << d;
    double lo = -20, hi = 20;
    for (int s = 0; s < 200; ++s) {
      const double m1 = lo + (hi - lo) / 3, m2 = hi - (hi - lo) / 3;
      if (J(m1) < J(m2))
        hi = m2;
      else
        lo = m1;
    }
    FASTCL_CHECK_CLOSE(x, 0.5 * (lo + hi), 1e-6, 1e-6) << "ternary search minimiser";
  }
}

template <typename T>
void test_taylor() {
  const double tol = std::is_same<T, float>::value ? 1e-6 : 1e-14;
  for (int it = 0; it < 2000; ++it) {
    const T h = T(uniform(0, 4)), g = T(uniform(-3, 3)), p = T(uniform(-3, 3));
    const T decay = T(uniform(0, 1));
    const T omd = T(1.0 - double(decay));
    const double want = double(decay) * h + double(omd) * std::fabs(double(g) * p);
    FASTCL_CHECK_CLOSE(k::taylor(h, g, p, decay, omd), want, tol, tol);
    FASTCL_CHECK(k::taylor(h, g, p, T(1), T(0)) == h) << "decay=1 keeps h";
    FASTCL_CHECK(k::taylor(h, g, p, T(0), T(1)) == k::abs_(T(g * p))) << "decay=0 gives |g*theta|";
    FASTCL_CHECK(k::taylor(h, g, p, decay, omd) >= T(0)) << "importance stays >= 0";
  }
}

// One element of emcl_meta_step_ written as in reference.py.
struct Emcl {
  double p, h, a;
};
Emcl emcl_reference(double p, double pk, double h, double a, double g, double lam, double decay,
                    double r, int mode, double alpha0, double eps) {
  const double meta_grad = lam * h * (p - pk);
  const double p_new = p - a * meta_grad;
  const double h_new = decay * h + (1 - decay) * std::fabs(g * p);
  const double q = r / (h_new + eps);
  // torch.clamp(q, max=1) propagates nan.
  const double a_new = mode == 0   ? a * r / (h_new + eps)
                       : mode == 1 ? alpha0 * (std::isnan(q) ? q : std::min(q, 1.0))
                                   : alpha0 * q;
  return {p_new, h_new, a_new};
}

template <typename T>
void test_emcl_meta() {
  const double tol = std::is_same<T, float>::value ? 2e-6 : 1e-13;
  for (int mode = 0; mode < 3; ++mode) {
    for (int it = 0; it < 2000; ++it) {
      const double p = uniform(-2, 2), pk = uniform(-2, 2), h = uniform(0, 3), a = uniform(0, 1);
      const double g = uniform(-2, 2), lam = uniform(0, 2), decay = uniform(0, 1);
      const double r = uniform(0, 2), alpha0 = uniform(0, 1), eps = uniform(1e-3, 1e-1);
      T pv = T(p), hv = T(h), av = T(a);
      k::emcl_meta<T>(pv, T(pk), hv, av, T(g), T(lam), T(decay), T(1 - decay), T(r), mode,
                      T(alpha0), T(eps));
      // compare with the reference evaluated on the T-rounded inputs
      const Emcl want = emcl_reference(double(T(p)), double(T(pk)), double(T(h)), double(T(a)),
                                       double(T(g)), double(T(lam)), double(T(decay)), double(T(r)),
                                       mode, double(T(alpha0)), double(T(eps)));
      FASTCL_CHECK_CLOSE(pv, want.p, tol, tol) << "mode" << mode << "theta0";
      FASTCL_CHECK_CLOSE(hv, want.h, tol, tol) << "mode" << mode << "importance";
      FASTCL_CHECK_CLOSE(av, want.a, 10 * tol, tol) << "mode" << mode << "meta lr";
      if (mode == 1) {
        FASTCL_CHECK(av <= T(alpha0) * T(1.0000001)) << "stabilised rate exceeds alpha0";
      }
    }
  }
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  // h_new + eps == 0: the paper rate divides by zero (inf, or nan for 0/0); the stabilised
  // rate clamps inf to alpha0 and propagates nan.
  {
    T p = 1, h = 0, a = 0.5;
    k::emcl_meta<T>(p, T(1), h, a, T(0), T(1), T(0.5), T(0.5), T(2), 0, T(0.1), T(0));
    FASTCL_CHECK(a == inf) << "paper mode, h_new = 0: alpha =" << a;
    p = 1, h = 0, a = 0.5;
    k::emcl_meta<T>(p, T(1), h, a, T(0), T(1), T(0.5), T(0.5), T(2), 1, T(0.1), T(0));
    FASTCL_CHECK(a == T(0.1)) << "stabilised mode, h_new = 0: alpha =" << a;
    p = 1, h = 0, a = 0.5;
    k::emcl_meta<T>(p, T(1), h, a, T(0), T(1), T(0.5), T(0.5), T(0), 1, T(0.1), T(0));
    FASTCL_CHECK(std::isnan(a)) << "stabilised mode, r = 0, h_new = 0 (0/0): alpha =" << a;
    p = 1, h = 0, a = 0.5;
    k::emcl_meta<T>(p, T(1), h, a, T(0), T(1), T(0.5), T(0.5), T(0), 0, T(0.1), T(0));
    FASTCL_CHECK(std::isnan(a)) << "paper mode, r = 0, h_new = 0 (0/0): alpha =" << a;
    p = 1, h = 0, a = 0.5;
    k::emcl_meta<T>(p, T(1), h, a, T(0), T(1), T(0.5), T(0.5), T(2), 2, T(0.1), T(0));
    FASTCL_CHECK(a == inf) << "inverse mode, h_new = 0: alpha =" << a;
  }
  for (int mode = 0; mode < 3; ++mode) {
    T p = 1, h = nan, a = 0.5;
    k::emcl_meta<T>(p, T(0.5), h, a, T(1), T(1), T(0.5), T(0.5), T(1), mode, T(0.1), T(1e-3));
    FASTCL_CHECK(std::isnan(p) && std::isnan(h) && std::isnan(a))
        << "mode" << mode << ": nan importance must propagate to theta, h, alpha:" << p << h << a;
    p = 1, h = 1, a = 0.5;
    k::emcl_meta<T>(p, T(0.5), h, a, inf, T(1), T(0.5), T(0.5), T(1), mode, T(0.1), T(1e-3));
    FASTCL_CHECK(h == inf) << "mode" << mode << ": inf grad gives inf importance";
    FASTCL_CHECK(a == T(0)) << "mode" << mode << ": r/inf = 0 rate, got" << a;
    p = nan, h = 1, a = 0.5;
    k::emcl_meta<T>(p, T(0.5), h, a, T(1), T(1), T(0.5), T(0.5), T(1), mode, T(0.1), T(1e-3));
    FASTCL_CHECK(std::isnan(p) && std::isnan(h) && std::isnan(a))
        << "mode" << mode << ": nan theta0 propagates";
  }
}

template <typename T>
void test_shift_delta() {
  for (int it = 0; it < 1000; ++it) {
    const T mean = T(uniform(-3, 3)), phi = T(uniform(-3, 3)), lr = T(uniform(0, 1));
    const double tol = std::is_same<T, float>::value ? 1e-6 : 1e-14;
    FASTCL_CHECK_CLOSE(k::shift_delta(mean, phi, lr), double(lr) * (double(mean) - phi), tol, 1e-7);
    FASTCL_CHECK(k::shift_delta(mean, phi, T(0)) == T(0));
    FASTCL_CHECK_CLOSE(phi + k::shift_delta(mean, phi, T(1)), mean, 1e-6, 1e-6)
        << "meta_lr = 1 moves phi onto the mean";
  }
}

// Batch ring insertion (ring_slot + ring_survives) equals inserting one example at a time.
void test_ring_batch_equals_one_by_one() {
  for (int it = 0; it < 3000; ++it) {
    const int64_t T = 1 + rng() % 4, C = 1 + rng() % 5, m = 1 + rng() % 6;
    const int64_t B = rng() % 40, task = rng() % T;
    std::vector<int64_t> counts(T * C);
    for (auto& c : counts) c = rng() % 20;
    std::vector<int64_t> y(B);
    for (auto& v : y) v = (rng() % 3 == 0) ? 0 : int64_t(rng() % C);  // skewed: many repeats
    std::vector<int64_t> seq(T * C * m, -1), bat = seq;
    // one by one (reference.py)
    std::vector<int64_t> c1 = counts;
    for (int64_t i = 0; i < B; ++i) {
      const int64_t c = y[i];
      seq[(task * C + c) * m + c1[task * C + c] % m] = i;
      c1[task * C + c] += 1;
    }
    // batch: rank among earlier examples of the class, survivors write their slot
    std::vector<int64_t> c2 = counts;
    std::vector<int> written(T * C * m, 0);
    for (int64_t i = 0; i < B; ++i) {
      int64_t rank = 0, later = 0;
      for (int64_t j = 0; j < B; ++j)
        if (y[j] == y[i]) (j < i ? rank : later) += (j != i);
      if (!k::ring_survives(later, m)) continue;
      const int64_t s = k::ring_slot(task, y[i], C, m, counts[task * C + y[i]], rank);
      FASTCL_CHECK(s >= (task * C + y[i]) * m && s < (task * C + y[i] + 1) * m) << "slot outside its ring";
      written[s] += 1;
      bat[s] = i;
    }
    for (int64_t i = 0; i < B; ++i) c2[task * C + y[i]] += 1;
    FASTCL_CHECK(seq == bat) << "batch insert differs from one by one (T" << T << "C" << C << "m" << m << "B" << B << ")";
    FASTCL_CHECK(c1 == c2) << "counts differ";
    FASTCL_CHECK(*std::max_element(written.begin(), written.end()) <= 1)
        << "two survivors share a slot";
  }
}

void test_reservoir_slot() {
  const int64_t cap = 10;
  for (int64_t s = 0; s < cap; ++s) {
    FASTCL_CHECK(k::reservoir_slot(s, 0.999, cap) == s) << "s < capacity goes to slot s";
    FASTCL_CHECK(k::reservoir_slot(s, 0.0, cap) == s);
  }
  for (int it = 0; it < 20000; ++it) {
    const int64_t s = cap + rng() % 1000;
    const double u = uniform(0, 1);
    const int64_t j = static_cast<int64_t>(std::floor(u * double(s + 1)));
    FASTCL_CHECK(k::reservoir_slot(s, u, cap) == (j < cap ? j : -1)) << "s" << s << "u" << u;
  }
  FASTCL_CHECK(k::reservoir_slot(cap, 0.0, cap) == 0);
  FASTCL_CHECK(k::reservoir_slot(cap, std::nextafter(1.0, 0.0), cap) == -1);
  // Law of Algorithm R: example s is kept with probability capacity / (s + 1).
  const int64_t s = 49;
  int kept = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) kept += k::reservoir_slot(s, uniform(0, 1), cap) >= 0;
  FASTCL_CHECK(std::fabs(double(kept) / n - double(cap) / (s + 1)) < 0.01)
      << "keep rate" << double(kept) / n << "expected" << double(cap) / (s + 1);
}

}  // namespace

int main() {
  test_sgd_and_prox<float>();
  test_sgd_and_prox<double>();
  test_prox_is_minimiser();
  test_taylor<float>();
  test_taylor<double>();
  test_emcl_meta<float>();
  test_emcl_meta<double>();
  test_shift_delta<float>();
  test_shift_delta<double>();
  test_ring_batch_equals_one_by_one();
  test_reservoir_slot();
  return fastcl_test::report("kernel math (csrc/kernels/math.h)");
}
