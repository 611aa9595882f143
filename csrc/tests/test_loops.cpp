// Tests of the CPU inner loops (csrc/cpu/loops.cpp) against the scalar math of
// csrc/kernels/math.h, over lengths that hit the vector bodies and tails, in place and out of
// place, under every ISA variant this CPU runs (set_isa), and of the ISA choice itself. The
// variants may contract a*b+c into FMAs, so results are compared to a few ulps.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/isa.h"
#include "cpu/loops.h"
#include "kernels/math.h"
#include "tests/check.h"

namespace k = fastcl::kernels;
namespace cpu = fastcl::cpu;

namespace {

std::mt19937_64 rng(7);

template <typename T>
std::vector<T> random_vec(int64_t n, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v) x = T(d(rng));
  return v;
}

template <typename T>
double tol() {
  return std::is_same<T, float>::value ? 1e-5 : 1e-13;
}

const int64_t kLengths[] = {0, 1, 3, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 511, 512, 513, 1000, 4099};

template <typename T>
void test_elementwise(const char* type) {
  for (const int64_t n : kLengths) {
    const auto p = random_vec<T>(n, -2, 2), g = random_vec<T>(n, -2, 2), a = random_vec<T>(n, -2, 2);
    const auto h = random_vec<T>(n, 0, 3), pk = random_vec<T>(n, -2, 2), al = random_vec<T>(n, 0, 1);
    const T lr = T(0.1), prox = T(0.7), decay = T(0.9), omd = T(1.0 - 0.9);
    const std::string ctx = std::string(type) + " n=" + std::to_string(n);

    std::vector<T> out(n);
    cpu::sgd_loop(out.data(), p.data(), g.data(), lr, n);
    for (int64_t i = 0; i < n; ++i)
      FASTCL_CHECK_CLOSE(out[i], k::sgd(p[i], g[i], lr), tol<T>(), tol<T>()) << "sgd" << ctx << "i" << i;

    cpu::prox_sgd_loop(out.data(), p.data(), g.data(), a.data(), h.data(), lr, prox, n);
    for (int64_t i = 0; i < n; ++i)
      FASTCL_CHECK_CLOSE(out[i], k::prox_sgd(p[i], g[i], a[i], h[i], lr, prox), tol<T>(), tol<T>())
          << "prox_sgd" << ctx << "i" << i;

    // in place: out is params
    std::vector<T> inplace = p;
    cpu::prox_sgd_loop(inplace.data(), inplace.data(), g.data(), a.data(), h.data(), lr, prox, n);
    for (int64_t i = 0; i < n; ++i)
      FASTCL_CHECK_CLOSE(inplace[i], out[i], tol<T>(), tol<T>()) << "prox_sgd in place" << ctx;

    std::vector<T> hh = h;
    cpu::taylor_loop(hh.data(), g.data(), p.data(), decay, omd, n);
    for (int64_t i = 0; i < n; ++i)
      FASTCL_CHECK_CLOSE(hh[i], k::taylor(h[i], g[i], p[i], decay, omd), tol<T>(), tol<T>())
          << "taylor" << ctx << "i" << i;

    for (int mode = 0; mode < 3; ++mode) {
      std::vector<T> p2 = p, h2 = h, a2 = al;
      const T lam = T(0.5), r = T(0.3), alpha0 = T(0.05), eps = T(1e-3);
      cpu::emcl_meta_loop(p2.data(), pk.data(), h2.data(), a2.data(), g.data(), lam, decay, omd, r,
                          mode, alpha0, eps, n);
      for (int64_t i = 0; i < n; ++i) {
        T pv = p[i], hv = h[i], av = al[i];
        k::emcl_meta(pv, pk[i], hv, av, g[i], lam, decay, omd, r, mode, alpha0, eps);
        FASTCL_CHECK_CLOSE(p2[i], pv, tol<T>(), tol<T>()) << "emcl theta0 mode" << mode << ctx;
        FASTCL_CHECK_CLOSE(h2[i], hv, tol<T>(), tol<T>()) << "emcl h mode" << mode << ctx;
        FASTCL_CHECK_CLOSE(a2[i], av, 10 * tol<T>(), tol<T>()) << "emcl alpha mode" << mode << ctx;
      }
    }
  }
}

// thetas: `learners` rows of `stride` elements; the loop updates elements [0, n) of each row.
template <typename T>
void test_shift(const char* type) {
  for (const int64_t n : kLengths) {
    for (const int64_t learners : {1, 2, 5}) {
      for (const int64_t pad : {0, 9}) {
        for (const bool shift : {true, false}) {
          const int64_t stride = n + pad;
          const auto phi0 = random_vec<T>(n, -1, 1);
          const auto th0 = random_vec<T>(learners * stride, -1, 1);
          const T lr = T(0.3);
          std::vector<T> phi = phi0, th = th0;
          cpu::shift_loop(phi.data(), th.data(), learners, stride, lr, shift, n);
          const std::string ctx = std::string(type) + " n=" + std::to_string(n) +
                                  " T=" + std::to_string(learners) + " pad=" + std::to_string(pad) +
                                  (shift ? " shift" : " reptile");
          for (int64_t j = 0; j < n; ++j) {
            T acc = 0;
            for (int64_t t = 0; t < learners; ++t) acc += th0[t * stride + j];
            const T d = k::shift_delta(acc / T(learners), phi0[j], lr);
            FASTCL_CHECK_CLOSE(phi[j], phi0[j] + d, tol<T>(), tol<T>()) << "phi" << ctx << "j" << j;
            for (int64_t t = 0; t < learners; ++t) {
              const T want = shift ? T(th0[t * stride + j] + d) : th0[t * stride + j];
              FASTCL_CHECK_CLOSE(th[t * stride + j], want, tol<T>(), tol<T>())
                  << "theta" << ctx << "t" << t << "j" << j;
            }
          }
          for (int64_t t = 0; t < learners; ++t)
            for (int64_t j = n; j < stride; ++j)
              FASTCL_CHECK(th[t * stride + j] == th0[t * stride + j]) << "padding written" << ctx;
        }
      }
    }
  }
}

// The row loops of mlp_prox_steps_ against their scalar definitions (loops.h). The dot products
// are vectorised reductions (another summation order): compared to n ulps of the sum of |terms|.
template <typename T>
void test_mlp_rows(const char* type) {
  for (const int64_t n : kLengths) {
    const auto q0 = random_vec<T>(n, -2, 2), a = random_vec<T>(n, -2, 2), h = random_vec<T>(n, 0, 3);
    const auto act = random_vec<T>(n, -1, 1), next = random_vec<T>(n, -1, 1);
    const auto inv = random_vec<T>(n, 0.2, 1);
    const T prox = T(0.7), scale = T(-0.15), d = T(0.4);
    const double eps = std::is_same<T, float>::value ? 6e-8 : 1.2e-16;
    const std::string ctx = std::string(type) + " n=" + std::to_string(n);

    std::vector<T> p = q0, iv(n);
    cpu::prox_setup_loop(p.data(), a.data(), h.data(), iv.data(), prox, n);
    for (int64_t i = 0; i < n; ++i) {
      FASTCL_CHECK_CLOSE(iv[i], T(1) / (prox * h[i] + T(1)), tol<T>(), tol<T>()) << "inv" << ctx;
      FASTCL_CHECK_CLOSE(p[i], q0[i] - a[i], tol<T>(), tol<T>()) << "p - a" << ctx;
    }
    for (const int64_t m : {0, 1, 3, 4, 5, 9}) {  // rows_dot: blocks of 4 vectors and the rest
      const auto xs = random_vec<T>(m * (n + 2), -1, 1);
      std::vector<T> out(2 * m, T(-7));
      cpu::rows_dot(q0.data(), xs.data(), n + 2, m, out.data(), 2, n);
      for (int64_t s = 0; s < m; ++s) {
        double dot = 0, dmag = 0;
        for (int64_t i = 0; i < n; ++i) {
          dot += double(q0[i]) * xs[s * (n + 2) + i];
          dmag += std::fabs(double(q0[i]) * xs[s * (n + 2) + i]);
        }
        FASTCL_CHECK_CLOSE(out[2 * s], dot, 0, 4 * n * eps * (dmag + 1)) << "rows_dot" << ctx << "m" << m;
        FASTCL_CHECK(out[2 * s + 1] == T(-7)) << "rows_dot wrote between its outputs" << ctx;
      }
    }

    cpu::add_loop(p.data(), a.data(), n);
    for (int64_t i = 0; i < n; ++i) FASTCL_CHECK_CLOSE(p[i], q0[i], tol<T>(), tol<T>()) << "p + a" << ctx;

    double want = 0, mag = 0;
    for (int64_t i = 0; i < n; ++i) {
      want += (double(q0[i]) + a[i]) * next[i];
      mag += std::fabs((double(q0[i]) + a[i]) * next[i]);
    }
    FASTCL_CHECK_CLOSE(cpu::row_dot(q0.data(), a.data(), next.data(), n), want, 0, 4 * n * eps * (mag + 1))
        << "row_dot with anchors" << ctx;

    for (const bool with_inv : {true, false}) {
      for (const bool with_next : {true, false}) {
        std::vector<T> q = q0;
        const T got = cpu::row_step_dot(q.data(), with_inv ? inv.data() : nullptr, act.data(), scale,
                                        with_next ? next.data() : nullptr, n);
        double dot = 0, dmag = 0;
        for (int64_t i = 0; i < n; ++i) {
          const T v = with_inv ? T((q0[i] + scale * act[i]) * inv[i]) : T(q0[i] + scale * act[i]);
          FASTCL_CHECK_CLOSE(q[i], v, tol<T>(), tol<T>()) << "row_step_dot q" << ctx << with_inv;
          dot += double(v) * next[i];
          dmag += std::fabs(double(v) * next[i]);
        }
        FASTCL_CHECK_CLOSE(got, with_next ? dot : 0.0, 0, 4 * n * eps * (dmag + 1))
            << "row_step_dot dot" << ctx << with_inv << with_next;
      }
      std::vector<T> q = q0, dprev = random_vec<T>(n, -1, 1);
      const std::vector<T> dprev0 = dprev;
      cpu::row_back_step(q.data(), with_inv ? a.data() : nullptr, with_inv ? inv.data() : nullptr,
                         act.data(), scale, d, dprev.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const T w = with_inv ? T(q0[i] + a[i]) : q0[i];
        FASTCL_CHECK_CLOSE(dprev[i], dprev0[i] + d * w, tol<T>(), tol<T>()) << "row_back_step dprev" << ctx;
        const T v = with_inv ? T((q0[i] + scale * act[i]) * inv[i]) : T(q0[i] + scale * act[i]);
        FASTCL_CHECK_CLOSE(q[i], v, tol<T>(), tol<T>()) << "row_back_step q" << ctx;
      }
    }
  }
}

// The ISA choice: the widest supported by default, every supported one selectable, an unknown
// or unsupported name refused with the ISA in use unchanged.
void test_isa_choice(const std::vector<std::string>& isas) {
  FASTCL_CHECK(!isas.empty() && isas.back() == "generic") << "supported_isas() must end with generic";
  FASTCL_CHECK(cpu::isa_name() == isas.front()) << "default" << cpu::isa_name() << "widest" << isas.front();
  for (const std::string bad : {"avx", "AVX2", "", "sse2", "avx512", "avx2"}) {
    if (std::find(isas.begin(), isas.end(), bad) != isas.end()) continue;  // supported here
    cpu::set_isa("generic");
    bool threw = false;
    try {
      cpu::set_isa(bad);
    } catch (const std::invalid_argument& e) {
      threw = std::string(e.what()).find("'" + bad + "'") != std::string::npos &&
              std::string(e.what()).find("generic") != std::string::npos;
    }
    FASTCL_CHECK(threw) << "set_isa('" << bad << "') must throw invalid_argument naming it and the supported ISAs";
    FASTCL_CHECK(cpu::isa_name() == "generic") << "a refused set_isa changed the ISA to" << cpu::isa_name();
  }
  cpu::set_isa("auto");
  FASTCL_CHECK(cpu::isa_name() == isas.front()) << "auto after a forced ISA";
}

}  // namespace

int main() {
  const std::vector<std::string> isas = cpu::supported_isas();
  test_isa_choice(isas);
  for (const std::string& isa : isas) {
    cpu::set_isa(isa);
    FASTCL_CHECK(cpu::isa_name() == isa) << "set_isa(" << isa << ") then isa_name() =" << cpu::isa_name();
    std::printf("cpu loops: the %s variant\n", isa.c_str());
    const std::string f = isa + " float", d = isa + " double";
    test_elementwise<float>(f.c_str());
    test_elementwise<double>(d.c_str());
    test_shift<float>(f.c_str());
    test_shift<double>(d.c_str());
    test_mlp_rows<float>(f.c_str());
    test_mlp_rows<double>(d.c_str());
  }
  return fastcl_test::report("cpu loops (csrc/cpu/loops.cpp)");
}
