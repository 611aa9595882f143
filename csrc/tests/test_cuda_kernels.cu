// Tests of the CUDA launchers (csrc/cuda/launch.h) against host loops of the same scalar math
// (csrc/kernels/math.h) and against one-by-one memory insertion. No torch: raw cudaMalloc.
// Exits with 77 (CTest: skipped) when no CUDA device is present.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/launch.h"
#include "kernels/math.h"
#include "tests/check.h"

namespace k = fastcl::kernels;
namespace fc = fastcl::cuda;

namespace {

std::mt19937_64 rng(11);

#define CUDA_OK(expr)                                                                        \
  do {                                                                                       \
    const cudaError_t e_ = (expr);                                                           \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr,              \
                   cudaGetErrorString(e_));                                                  \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

// ---- storage types on the host ----
template <typename S> struct Traits;
template <> struct Traits<float> {
  using M = float;
  static constexpr fc::DType dtype = fc::DType::kFloat32;
  static float to(float v) { return v; }
  static float from(float v) { return v; }
  static constexpr double rtol = 1e-5, atol = 1e-6;
  static const char* name() { return "float32"; }
};
template <> struct Traits<double> {
  using M = double;
  static constexpr fc::DType dtype = fc::DType::kFloat64;
  static double to(double v) { return v; }
  static double from(double v) { return v; }
  static constexpr double rtol = 1e-12, atol = 1e-13;
  static const char* name() { return "float64"; }
};
template <> struct Traits<__half> {
  using M = float;
  static constexpr fc::DType dtype = fc::DType::kFloat16;
  static float to(__half v) { return __half2float(v); }
  static __half from(float v) { return __float2half_rn(v); }
  static constexpr double rtol = 2e-3, atol = 2e-3;
  static const char* name() { return "float16"; }
};
template <> struct Traits<__nv_bfloat16> {
  using M = float;
  static constexpr fc::DType dtype = fc::DType::kBFloat16;
  static float to(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
  static constexpr double rtol = 1.6e-2, atol = 1.6e-2;
  static const char* name() { return "bfloat16"; }
};

// A device buffer holding a copy of a host vector.
template <typename T>
struct DeviceBuf {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuf(const std::vector<T>& h) : n(h.size()) {
    CUDA_OK(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T) + 64));
    if (n) CUDA_OK(cudaMemcpy(ptr, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> get() const {
    std::vector<T> h(n);
    if (n) CUDA_OK(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  ~DeviceBuf() { cudaFree(ptr); }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
};

template <typename S>
std::vector<S> random_vec(size_t n, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<S> v(n);
  for (auto& x : v) x = Traits<S>::from(typename Traits<S>::M(d(rng)));
  return v;
}

// A list of tensors packed in one flat buffer per list, at element offsets that include odd
// ones (misaligned for 16-byte vectors), with sizes from empty to several chunks.
struct Layout {
  std::vector<int64_t> numel, offset;
  int64_t total = 0;
};
Layout make_layout(int tensors) {
  const int64_t sizes[] = {0, 1, 3, 8, 17, 1000, 8192, 8193, 20000, 100003};
  Layout l;
  for (int i = 0; i < tensors; ++i) {
    const int64_t n = sizes[rng() % 10];
    l.total += (i % 3 == 1) ? 1 : 0;  // a misaligned start now and then
    l.total = (i % 3 == 0) ? (l.total + 7) / 8 * 8 : l.total;
    l.offset.push_back(l.total);
    l.numel.push_back(n);
    l.total += n;
  }
  return l;
}

template <typename S>
std::vector<void*> pointers(const DeviceBuf<S>& b, const Layout& l) {
  std::vector<void*> p;
  for (const int64_t o : l.offset) p.push_back(b.ptr + o);
  return p;
}

template <typename S>
void expect_close(const std::vector<S>& got, const std::vector<S>& want, const std::string& ctx) {
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i) {
    const double g = Traits<S>::to(got[i]), w = Traits<S>::to(want[i]);
    if (!fastcl_test::close(g, w, Traits<S>::rtol, Traits<S>::atol)) {
      ++bad;
      FASTCL_CHECK_CLOSE(g, w, Traits<S>::rtol, Traits<S>::atol) << ctx << "element" << i;
    }
  }
  FASTCL_CHECK(bad == 0) << ctx;
}

template <typename S>
void test_list_ops() {
  using T = Traits<S>;
  using M = typename T::M;
  const char* name = T::name();
  for (const int tensors : {1, 5, 90}) {  // 90 > 79 (3 lists) and 59 (5 lists) of one launch
    const Layout l = make_layout(tensors);
    const int64_t n = l.numel.size();
    const auto p0 = random_vec<S>(l.total, -2, 2), g0 = random_vec<S>(l.total, -2, 2);
    const auto a0 = random_vec<S>(l.total, -2, 2), h0 = random_vec<S>(l.total, 0, 3);
    const auto k0 = random_vec<S>(l.total, -2, 2), al0 = random_vec<S>(l.total, 0, 1);
    DeviceBuf<S> p(p0), g(g0), a(a0), h(h0), pk(k0), al(al0), out(p0);
    const auto P = pointers(p, l), G = pointers(g, l), A = pointers(a, l), H = pointers(h, l);
    const auto K = pointers(pk, l), AL = pointers(al, l), O = pointers(out, l);
    const std::string ctx = std::string(name) + " tensors=" + std::to_string(tensors);
    const double lr = 0.1, prox = 0.7, decay = 0.9;

    // prox_sgd out of place, then in place; SGD form
    CUDA_OK(fc::prox_sgd(T::dtype, n, l.numel.data(), O.data(), P.data(), G.data(), A.data(),
                         H.data(), lr, prox, 0));
    std::vector<S> want = p0;
    for (int64_t i = 0; i < l.total; ++i)
      want[i] = T::from(k::prox_sgd(T::to(p0[i]), T::to(g0[i]), T::to(a0[i]), T::to(h0[i]), M(lr), M(prox)));
    // elements outside every tensor keep their value
    std::vector<bool> inside(l.total, false);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < l.numel[i]; ++j) inside[l.offset[i] + j] = true;
    for (int64_t i = 0; i < l.total; ++i)
      if (!inside[i]) want[i] = p0[i];
    expect_close(out.get(), want, "prox_sgd out of place " + ctx);
    CUDA_OK(fc::prox_sgd(T::dtype, n, l.numel.data(), P.data(), P.data(), G.data(), A.data(),
                         H.data(), lr, prox, 0));
    expect_close(p.get(), want, "prox_sgd_ in place " + ctx);
    CUDA_OK(fc::prox_sgd(T::dtype, n, l.numel.data(), O.data(), P.data(), G.data(), nullptr,
                         nullptr, lr, 0.0, 0));
    const auto p1 = p.get();
    for (int64_t i = 0; i < l.total; ++i)
      want[i] = inside[i] ? T::from(k::sgd(T::to(p1[i]), T::to(g0[i]), M(lr))) : want[i];
    expect_close(out.get(), want, "sgd " + ctx);

    // taylor
    CUDA_OK(fc::taylor_importance(T::dtype, n, l.numel.data(), H.data(), G.data(), P.data(), decay, 0));
    std::vector<S> wh = h0;
    for (int64_t i = 0; i < l.total; ++i)
      if (inside[i])
        wh[i] = T::from(k::taylor(T::to(h0[i]), T::to(g0[i]), T::to(p1[i]), M(decay), M(1.0 - decay)));
    expect_close(h.get(), wh, "taylor " + ctx);

    // emcl, all three modes
    for (int mode = 0; mode < 3; ++mode) {
      const auto pb = p.get(), hb = h.get(), ab = al.get();
      CUDA_OK(fc::emcl_meta_step(T::dtype, n, l.numel.data(), P.data(), K.data(), H.data(),
                                 AL.data(), G.data(), 0.5, decay, 0.3, mode, 0.05, 1e-3, 0));
      std::vector<S> wp = pb, whh = hb, wa = ab;
      for (int64_t i = 0; i < l.total; ++i) {
        if (!inside[i]) continue;
        M pv = T::to(pb[i]), hv = T::to(hb[i]), av = T::to(ab[i]);
        k::emcl_meta(pv, T::to(k0[i]), hv, av, T::to(g0[i]), M(0.5), M(decay), M(1.0 - decay),
                     M(0.3), mode, M(0.05), M(1e-3));
        wp[i] = T::from(pv);
        whh[i] = T::from(hv);
        wa[i] = T::from(av);
      }
      const std::string c = " mode=" + std::to_string(mode) + " " + ctx;
      expect_close(p.get(), wp, "emcl theta0" + c);
      expect_close(h.get(), whh, "emcl importance" + c);
      expect_close(al.get(), wa, "emcl meta lr" + c);
    }
  }

  // trajectory shift: phi[i] of numel[i]; thetas[i] of learners[i] * numel[i]
  for (const bool shift : {true, false}) {
    const Layout l = make_layout(120);  // > 95 tensors of one 2-list launch
    const int64_t n = l.numel.size();
    std::vector<int64_t> learners(n), toff(n);
    int64_t ttotal = 0;
    for (int64_t i = 0; i < n; ++i) {
      learners[i] = 1 + rng() % 4;
      ttotal = (i % 2 == 0) ? (ttotal + 7) / 8 * 8 : ttotal + 1;
      toff[i] = ttotal;
      ttotal += learners[i] * l.numel[i];
    }
    const auto phi0 = random_vec<S>(l.total, -1, 1), th0 = random_vec<S>(ttotal, -1, 1);
    DeviceBuf<S> phi(phi0), th(th0);
    const auto PH = pointers(phi, l);
    std::vector<void*> TH;
    for (int64_t i = 0; i < n; ++i) TH.push_back(th.ptr + toff[i]);
    CUDA_OK(fc::trajectory_shift(T::dtype, n, l.numel.data(), learners.data(), PH.data(),
                                 TH.data(), 0.3, shift, 0));
    std::vector<S> wphi = phi0, wth = th0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t s = l.numel[i];
      for (int64_t j = 0; j < s; ++j) {
        M acc = 0;
        for (int64_t t = 0; t < learners[i]; ++t) acc += T::to(th0[toff[i] + t * s + j]);
        const M pv = T::to(phi0[l.offset[i] + j]);
        const M d = k::shift_delta(acc / M(learners[i]), pv, M(0.3));
        wphi[l.offset[i] + j] = T::from(pv + d);
        if (shift)
          for (int64_t t = 0; t < learners[i]; ++t)
            wth[toff[i] + t * s + j] = T::from(T::to(th0[toff[i] + t * s + j]) + d);
      }
    }
    const std::string ctx = std::string(name) + (shift ? " shift" : " reptile");
    expect_close(phi.get(), wphi, "trajectory_shift phi " + ctx);
    expect_close(th.get(), wth, "trajectory_shift thetas " + ctx);
  }
}

// ---- MLP inner loop ----

// mlp_prox_steps_ on the host in double, as fastcl/ops/reference.py specifies it: for every
// example, forward, d_L = softmax - onehot, then per layer from the last d_(l-1) (with W_l
// before its update) and the prox / SGD step of W_l, b_l. p, a, h: flat lists of 2L tensors at
// the offsets of `l`; a == h == nullptr: SGD.
void host_mlp_steps(const std::vector<int64_t>& n, const Layout& l, std::vector<double>& p,
                    const std::vector<double>* a, const std::vector<double>* h,
                    const std::vector<double>& x, const std::vector<int64_t>& y, double lr,
                    double prox) {
  const size_t L = n.size() - 1;
  auto W = [&](size_t layer) { return p.data() + l.offset[2 * layer - 2]; };  // layer = 1..L
  auto B = [&](size_t layer) { return p.data() + l.offset[2 * layer - 1]; };
  auto step = [&](int64_t t, int64_t e, double g) {
    double& v = p[l.offset[t] + e];
    v = a ? k::prox_sgd(v, g, (*a)[l.offset[t] + e], (*h)[l.offset[t] + e], lr, prox)
          : k::sgd(v, g, lr);
  };
  for (size_t i = 0; i < y.size(); ++i) {
    std::vector<std::vector<double>> act(L + 1), d(L + 1);  // act[0] = x_i, act[L] = logits
    act[0].assign(x.begin() + i * n[0], x.begin() + (i + 1) * n[0]);
    for (size_t m = 1; m <= L; ++m) {
      act[m].resize(n[m]);
      for (int64_t j = 0; j < n[m]; ++j) {
        double z = B(m)[j];
        for (int64_t c = 0; c < n[m - 1]; ++c) z += W(m)[j * n[m - 1] + c] * act[m - 1][c];
        act[m][j] = (m < L && z < 0) ? 0.0 : z;
      }
    }
    const double mx = *std::max_element(act[L].begin(), act[L].end());
    double sum = 0;
    for (const double z : act[L]) sum += std::exp(z - mx);
    d[L].resize(n[L]);
    for (int64_t j = 0; j < n[L]; ++j)
      d[L][j] = std::exp(act[L][j] - mx) / sum - (j == y[i] ? 1.0 : 0.0);
    for (size_t m = L; m >= 1; --m) {
      const int64_t rows = n[m], cols = n[m - 1];
      if (m > 1) {
        d[m - 1].assign(cols, 0.0);
        for (int64_t c = 0; c < cols; ++c)
          if (act[m - 1][c] > 0)
            for (int64_t j = 0; j < rows; ++j) d[m - 1][c] += W(m)[j * cols + c] * d[m][j];
      }
      for (int64_t j = 0; j < rows; ++j) {
        for (int64_t c = 0; c < cols; ++c) step(2 * m - 2, j * cols + c, d[m][j] * act[m - 1][c]);
        step(2 * m - 1, j, d[m][j]);
      }
    }
  }
}

template <typename S>
void test_mlp_prox_steps() {
  using T = Traits<S>;
  // against double on the host: float32 takes the rounding of k sequential steps
  const double rtol = std::is_same<S, float>::value ? 1e-4 : 1e-10;
  const double atol = std::is_same<S, float>::value ? 1e-5 : 1e-12;
  // the small MLP of the spec; a zero-width hidden layer; several blocks per layer and more
  // columns than threads in a block; more classes than threads (the softmax block loops)
  const std::vector<std::vector<int64_t>> nets = {
      {7, 5, 4, 3}, {5, 0, 3}, {300, 70, 33, 10}, {37, 300, 260}};
  const int64_t ks[] = {4, 2, 3, 2};
  for (size_t net = 0; net < nets.size(); ++net) {
    const auto& n = nets[net];
    const int64_t L = static_cast<int64_t>(n.size()) - 1, kk = ks[net];
    Layout l;  // W_1, b_1, ..., W_L, b_L back to back
    int64_t units = 0;
    for (int64_t m = 1; m <= L; ++m) {
      for (const int64_t numel : {n[m] * n[m - 1], n[m]}) {
        l.offset.push_back(l.total);
        l.numel.push_back(numel);
        l.total += numel;
      }
      units += n[m];
    }
    // weights of scale 1/sqrt(fan in), so the logits stay O(1) for every width
    std::vector<S> p0(l.total), a0(l.total);
    for (int64_t t = 0; t < 2 * L; ++t) {
      const double scale = 1.0 / std::sqrt(double(std::max<int64_t>(n[t / 2], 1)));
      const auto pv = random_vec<S>(l.numel[t], -scale, scale);
      const auto av = random_vec<S>(l.numel[t], -scale, scale);
      std::copy(pv.begin(), pv.end(), p0.begin() + l.offset[t]);
      std::copy(av.begin(), av.end(), a0.begin() + l.offset[t]);
    }
    const auto h0 = random_vec<S>(l.total, 0, 3), x = random_vec<S>(kk * n[0], -1, 1);
    std::vector<int64_t> y(kk);
    for (auto& v : y) v = rng() % n[L];
    y[0] = n[L] - 1;  // the last class
    DeviceBuf<S> da(a0), dh(h0), dx(x);
    DeviceBuf<int64_t> dy(y);
    const auto A = pointers(da, l), H = pointers(dh, l);
    auto to_double = [](const std::vector<S>& v) { return std::vector<double>(v.begin(), v.end()); };
    const std::vector<double> ad = to_double(a0), hd = to_double(h0), xd = to_double(x);

    for (const bool anchored : {true, false}) {
      const double lr = 0.3, prox = anchored ? 0.7 : 0.0;
      DeviceBuf<S> dp(p0);
      // the workspace needs no initialisation: NaN would show through
      DeviceBuf<S> ws(std::vector<S>(2 * units, std::numeric_limits<S>::quiet_NaN()));
      const auto P = pointers(dp, l);
      CUDA_OK(fc::mlp_prox_steps(T::dtype, L, n.data(), P.data(), dx.ptr, dy.ptr, kk,
                                 anchored ? A.data() : nullptr, anchored ? H.data() : nullptr,
                                 lr, prox, ws.ptr, 0));
      std::vector<double> want = to_double(p0);
      host_mlp_steps(n, l, want, anchored ? &ad : nullptr, anchored ? &hd : nullptr, xd, y, lr,
                     prox);
      const auto got = dp.get();
      std::string ctx = std::string(T::name()) + " widths";
      for (const int64_t w : n) ctx += " " + std::to_string(w);
      ctx += anchored ? " prox" : " sgd";
      int bad = 0;
      for (int64_t e = 0; e < l.total && bad < 5; ++e) {
        if (!fastcl_test::close(double(got[e]), want[e], rtol, atol)) {
          ++bad;
          FASTCL_CHECK_CLOSE(double(got[e]), want[e], rtol, atol) << ctx << "element" << e;
        }
      }
      FASTCL_CHECK(bad == 0) << "mlp_prox_steps " << ctx;
    }
  }

  // nothing to do, and rejected calls: nothing written
  const std::vector<int64_t> n = {2, 3};
  const std::vector<S> w0 = random_vec<S>(6, -1, 1), b0 = random_vec<S>(3, -1, 1);
  DeviceBuf<S> w(w0), b(b0), x{std::vector<S>(2)}, ws{std::vector<S>(6)};
  DeviceBuf<int64_t> y{std::vector<int64_t>(1)};
  void* P[2] = {w.ptr, b.ptr};
  const void* A[2] = {w0.data(), b0.data()};  // never read
  FASTCL_CHECK(fc::mlp_prox_steps(T::dtype, 1, n.data(), P, x.ptr, y.ptr, 0, nullptr, nullptr,
                                  0.1, 0.0, ws.ptr, 0) == cudaSuccess) << "k = 0";
  FASTCL_CHECK(fc::mlp_prox_steps(fc::DType::kFloat16, 1, n.data(), P, x.ptr, y.ptr, 1, nullptr,
                                  nullptr, 0.1, 0.0, ws.ptr, 0) == cudaErrorInvalidValue)
      << "float16";
  FASTCL_CHECK(fc::mlp_prox_steps(T::dtype, 1, n.data(), P, x.ptr, y.ptr, 1, A, nullptr, 0.1,
                                  0.0, ws.ptr, 0) == cudaErrorInvalidValue) << "anchors alone";
  FASTCL_CHECK(w.get() == w0 && b.get() == b0) << "mlp_prox_steps wrote on a call with no work";
}

// ---- memory ops ----

void test_ring_insert() {
  for (int it = 0; it < 200; ++it) {
    const int64_t T = 1 + rng() % 3, C = 1 + rng() % 6, m = 1 + rng() % 5;
    const int64_t row_bytes = (it % 3 == 0) ? 3 : (it % 3 == 1) ? 8 : 64;  // byte / word copies
    const int64_t rows = T * C * m;
    std::vector<uint8_t> data0(rows * row_bytes);
    for (auto& b : data0) b = uint8_t(rng());
    std::vector<int64_t> counts0(T * C);
    for (auto& c : counts0) c = rng() % 9;
    DeviceBuf<uint8_t> data(data0);
    DeviceBuf<int64_t> counts(counts0);
    std::vector<uint8_t> want = data0;
    std::vector<int64_t> wcounts = counts0;
    for (int round = 0; round < 3; ++round) {
      const int64_t B = (it % 10 == 0) ? 700 : int64_t(rng() % 30);  // > one tile of labels
      const int64_t task = rng() % T;
      std::vector<int64_t> y(B);
      for (auto& v : y) v = (rng() % 2) ? 0 : int64_t(rng() % C);
      std::vector<uint8_t> x(B * row_bytes);
      for (auto& b : x) b = uint8_t(rng());
      for (int64_t i = 0; i < B; ++i) {  // one by one, as reference.py
        const int64_t slot = (task * C + y[i]) * m + wcounts[task * C + y[i]] % m;
        std::memcpy(&want[slot * row_bytes], &x[i * row_bytes], row_bytes);
        wcounts[task * C + y[i]] += 1;
      }
      DeviceBuf<int64_t> dy(y), ws{std::vector<int64_t>(2 * B + 1)};
      DeviceBuf<uint8_t> dx(x);
      CUDA_OK(fc::ring_insert(data.ptr, counts.ptr, C, m, dx.ptr, dy.ptr, B, row_bytes, task,
                              ws.ptr, 0));
      FASTCL_CHECK(data.get() == want) << "ring_insert data differs from one by one, it" << it
                                       << "round" << round << "B" << B;
      FASTCL_CHECK(counts.get() == wcounts) << "ring_insert counts, it" << it;
    }
  }
}

void test_ring_sample() {
  for (int it = 0; it < 200; ++it) {
    const int64_t T = 1 + rng() % 5, C = 1 + rng() % 300, m = 1 + rng() % 7;  // > one scan tile
    std::vector<int64_t> counts(T * C);
    for (auto& c : counts) c = (rng() % 3 == 0) ? 0 : int64_t(rng() % 12);
    std::vector<uint8_t> mask(T, 0);
    for (auto& b : mask) b = rng() % 2;
    if (it % 7 == 0) std::fill(counts.begin(), counts.end(), 0);  // empty selection
    const int64_t n = 1 + rng() % 2000;
    std::vector<double> u(n);
    for (auto& v : u) v = std::uniform_real_distribution<double>(0, 1)(rng);
    if (n > 2) u[0] = 0.0, u[1] = std::nextafter(1.0, 0.0);
    // reference.py: fills, ends = cumsum, k = floor(u*total), searchsorted right
    std::vector<int64_t> fills(T * C), ends(T * C);
    int64_t total = 0;
    for (int64_t r = 0; r < T * C; ++r) {
      fills[r] = mask[r / C] ? std::min(counts[r], m) : 0;
      total += fills[r];
      ends[r] = total;
    }
    std::vector<int64_t> want(n, -1);
    if (total > 0)
      for (int64_t i = 0; i < n; ++i) {
        const int64_t kk = std::min<int64_t>(int64_t(std::floor(u[i] * double(total))), total - 1);
        const int64_t ring = std::upper_bound(ends.begin(), ends.end(), kk) - ends.begin();
        want[i] = ring * m + kk - (ends[ring] - fills[ring]);
      }
    DeviceBuf<int64_t> dc(counts), out{std::vector<int64_t>(n)}, ws{std::vector<int64_t>(T * C)};
    DeviceBuf<uint8_t> dm(mask);
    DeviceBuf<double> du(u);
    CUDA_OK(fc::ring_sample(dc.ptr, dm.ptr, T, C, m, du.ptr, n, out.ptr, ws.ptr, 0));
    FASTCL_CHECK(out.get() == want) << "ring_sample differs from reference.py, it" << it << "total" << total;
  }
}

void test_reservoir_insert() {
  for (int it = 0; it < 200; ++it) {
    const int64_t cap = 1 + rng() % 50, row_bytes = (it % 2) ? 12 : 32;
    const int64_t n_seen = (it % 4 == 0) ? int64_t(rng() % cap) : cap + int64_t(rng() % 200);
    const int64_t B = (it % 10 == 0) ? 3000 : int64_t(rng() % 60);
    const int64_t task = rng() % 5;
    std::vector<uint8_t> data0(cap * row_bytes), x(B * row_bytes);
    for (auto& b : data0) b = uint8_t(rng());
    for (auto& b : x) b = uint8_t(rng());
    std::vector<int64_t> labels0(cap), tasks0(cap), y(B);
    for (auto& v : labels0) v = rng() % 10;
    for (auto& v : tasks0) v = rng() % 5;
    for (auto& v : y) v = rng() % 10;
    std::vector<double> u(B);
    for (auto& v : u) v = std::floor(std::uniform_real_distribution<double>(0, 1)(rng) * 64) / 64;
    std::vector<uint8_t> want = data0;
    std::vector<int64_t> wl = labels0, wt = tasks0, wslots(B);
    for (int64_t i = 0; i < B; ++i) {  // one by one
      const int64_t s = k::reservoir_slot(n_seen + i, u[i], cap);
      wslots[i] = s;
      if (s < 0) continue;
      std::memcpy(&want[s * row_bytes], &x[i * row_bytes], row_bytes);
      wl[s] = y[i];
      wt[s] = task;
    }
    DeviceBuf<uint8_t> data(data0), dx(x);
    DeviceBuf<int64_t> labels(labels0), tasks(tasks0), dy(y), slots{std::vector<int64_t>(B)},
        ws{std::vector<int64_t>(cap, 12345)};
    DeviceBuf<double> du(u);
    CUDA_OK(fc::reservoir_insert(data.ptr, labels.ptr, tasks.ptr, cap, dx.ptr, dy.ptr, B,
                                 row_bytes, task, n_seen, du.ptr, slots.ptr, ws.ptr, 0));
    FASTCL_CHECK(slots.get() == wslots) << "reservoir slots, it" << it;
    FASTCL_CHECK(data.get() == want) << "reservoir data differs from one by one, it" << it;
    FASTCL_CHECK(labels.get() == wl) << "reservoir labels, it" << it;
    FASTCL_CHECK(tasks.get() == wt) << "reservoir tasks, it" << it;
  }
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: the CUDA kernel tests are skipped\n");
    return 77;
  }
  test_list_ops<float>();
  test_list_ops<double>();
  test_list_ops<__half>();
  test_list_ops<__nv_bfloat16>();
  test_mlp_prox_steps<float>();
  test_mlp_prox_steps<double>();
  test_ring_insert();
  test_ring_sample();
  test_reservoir_insert();
  CUDA_OK(cudaDeviceSynchronize());
  return fastcl_test::report("cuda kernels (csrc/cuda)");
}
