// Fused CPU kernels for P-pooling (fp32, NCHW): forward and analytic backward in one pass over the windows.
//
// The same max-normalised arithmetic as the reference op (polypool/pooling/functional.py), with
//   r = x / m (window max),  p = r^a = exp(a * log r),  den = sum p,  q = sum p r / den,  y = m q,
//   dx_i = g/den * ((a+1) p_i - a q p_i / r_i),   da = g m / den * sum_i p_i (r_i - q) log r_i,
// and the same conventions (0^0 = 1, an all-zero window has r = 1, 0 * log 0 = 0, r^(a-1) at r = 0 is 1 if a = 1
// and 0 otherwise; a window does not include its ceil-mode overhang).
//
// Layout of the work: one (sample, channel) plane per task, one output row at a time. The kh*kw input rows
// under an output row are first copied into contiguous, zero-padded buffers (one per window offset), so all the
// arithmetic is vectorised along the output row with ATen's Vectorized<float> (SLEEF exp/log). The backward
// scatters into a per-plane padded gradient buffer, so no two threads ever write the same element. VGG's
// 2x2/2 pools, which tile the input, take a shorter path: deinterleaved loads in, interleaved stores out.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <tuple>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();

struct Geometry {
  int64_t H, W, kh, kw, sh, sw, ph, pw, oh, ow;
  int64_t ow_padded;  // ow rounded up to whole vectors
  int64_t Hpad, Wpad;  // the padded input, overhang included
  std::vector<int64_t> valid_rows;  // per di: outputs o with o*sh + di inside the padded input
  std::vector<int64_t> valid_cols;  // per dj: the same for columns

  Geometry(int64_t H_, int64_t W_, int64_t kh_, int64_t kw_, int64_t sh_, int64_t sw_, int64_t ph_, int64_t pw_,
           int64_t oh_, int64_t ow_)
      : H(H_), W(W_), kh(kh_), kw(kw_), sh(sh_), sw(sw_), ph(ph_), pw(pw_), oh(oh_), ow(ow_) {
    ow_padded = (ow + kLanes - 1) / kLanes * kLanes;
    Hpad = std::max(H + 2 * ph, (oh - 1) * sh + kh);
    Wpad = std::max(W + 2 * pw, (ow - 1) * sw + kw);
    for (int64_t d = 0; d < kh; ++d) valid_rows.push_back(std::min(oh, (H + 2 * ph - d + sh - 1) / sh));
    for (int64_t d = 0; d < kw; ++d) valid_cols.push_back(std::min(ow, (W + 2 * pw - d + sw - 1) / sw));
  }
};

// buf[j] = the padded input at (row o*sh + di, column j*sw + dj), 0 in the padding and the vector tail.
inline void gather_row(const float* plane, const Geometry& g, int64_t o, int64_t di, int64_t dj, float* buf) {
  const int64_t row = o * g.sh + di - g.ph;
  if (row < 0 || row >= g.H) {
    std::fill(buf, buf + g.ow_padded, 0.f);
    return;
  }
  // outputs j whose column j*sw + dj - pw lies inside the input: [first, last)
  const int64_t offset = dj - g.pw;
  const int64_t first = offset >= 0 ? 0 : (-offset + g.sw - 1) / g.sw;
  const int64_t last = std::min(g.ow, (g.W - 1 - offset) / g.sw + 1);
  const float* src = plane + row * g.W + offset;
  std::fill(buf, buf + first, 0.f);
  if (g.sw == 1) {
    std::copy(src + first, src + last, buf + first);
  } else {
    for (int64_t j = first; j < last; ++j) buf[j] = src[j * g.sw];
  }
  std::fill(buf + std::max(first, last), buf + g.ow_padded, 0.f);
}

// Per-plane alpha: a constant (layer/channel alpha) or one row of a dense alpha map.
struct AlphaRow {
  const float* dense;  // nullptr when constant
  float value;
  int64_t ow;          // the row's length: loads stop there
  inline Vec load(int64_t j) const {
    return dense ? Vec::loadu(dense + j, static_cast<int>(std::min<int64_t>(kLanes, ow - j))) : Vec(value);
  }
};

// log r. SLEEF's 3.5-ulp log where ATen's AVX2 vectors are compiled in (r^a then carries a relative error of
// about |log r^a| * 2e-7, under 3e-6 wherever r^a is not negligible), the 1-ulp one otherwise.
#if defined(CPU_CAPABILITY_AVX2)
extern "C" __m256 Sleef_logf8_u35(__m256);
inline Vec log_unit(const Vec& r) { return Vec(Sleef_logf8_u35(r)); }
#else
inline Vec log_unit(const Vec& r) { return r.log(); }
#endif

// r^a for r in [0, 1], with 0^0 = 1. ATen's exp_u20 (20 ulp, ~1.2e-6 relative) flushes results below the
// smallest normal float to 0, which is the a -> inf limit and spares the slow denormal path.
inline Vec pow_unit(const Vec& r, const Vec& log_r, const Vec& a) {
  const Vec p = (a * log_r).exp_u20();  // exp(-inf) = 0 for r = 0 and a > 0
  return Vec::blendv(p, Vec(1.f), a == Vec(0.f));
}

// Subnormals count as 0 (as on a GPU that flushes denormals): a window max below the smallest normal float would
// overflow 1/m, and a subnormal element or ratio x/m would overflow p/r (0 * inf = NaN at alpha = 0).
const Vec kTiny(std::numeric_limits<float>::min());

// A window max below the smallest normal float flushed to 0 (NaN stays NaN).
inline Vec flush_max(const Vec& m) { return Vec::blendv(m, Vec(0.f), m < kTiny); }

// 1/m and the all-zero-window indicator of a vector of (flushed) window maxima: r = x * inv_m + zero is then 1 in
// an all-zero window (and in the vector tail, which loads zeros and is never stored).
struct Normaliser {
  Vec inv_m, zero;
  explicit Normaliser(const Vec& m) {
    const Vec zero_mask = m < kTiny;
    zero = Vec::blendv(Vec(0.f), Vec(1.f), zero_mask);
    inv_m = Vec::blendv(m, Vec(1.f), zero_mask).reciprocal();
  }
  // r = x/m in [0, 1], 1 in an all-zero window; an element or a ratio below the smallest normal float counts as 0.
  inline Vec ratio(const Vec& x) const {
    const Vec r = x * inv_m + zero;
    return Vec::blendv(r, zero, (x < kTiny) | (r < kTiny));
  }
};

// What the backward needs per output, for dx_i = coef_p * p_i - coef_p_over_r * p_i / r_i.
struct BackwardCoefficients {
  Vec q, g_over_den, a, coef_p, coef_p_over_r, at_zero, alpha_zero;
  BackwardCoefficients(const Vec& y, const Vec& den, const Vec& grad, const Vec& alpha, const Normaliser& n)
      : q(y * n.inv_m + n.zero),  // y/m; 1 in an all-zero window
        g_over_den(grad / den),    // den >= 1 on real outputs; the vector tail loads den = 0 and is never stored
        a(alpha),
        coef_p(g_over_den * (alpha + Vec(1.f))),
        coef_p_over_r(g_over_den * alpha * q),
        at_zero(Vec::blendv(Vec(0.f), Vec(1.f), alpha == Vec(1.f))),  // r^(a-1) at r = 0
        alpha_zero(alpha == Vec(0.f)) {}

  // dx of one window element x (normalised by n); adds its term of dy/da (before the factor m / den) to alpha_sum.
  // Subnormal results (|dx| < 1.2e-38, from the tiny weights r^a of a large alpha) are flushed to 0: left in, they
  // make the next layer's convolution backward several times slower on x86 (measured: 5x for VGG16's conv1_2).
  inline Vec grad_x(const Vec& x, const Normaliser& n, bool need_alpha, Vec& alpha_sum) const {
    const Vec r = n.ratio(x);
    const Vec log_r = log_unit(r);
    const Vec p = pow_unit(r, log_r, a);
    const Vec positive = r > Vec(0.f);
    if (need_alpha) alpha_sum = alpha_sum + Vec::blendv(Vec(0.f), p * (r - q) * log_r, positive);
    // the a q p/r term is 0 where a = 0 (never 0 * p/r)
    const Vec p_over_r = Vec::blendv(Vec::blendv(at_zero, p / r, positive), Vec(0.f), alpha_zero);
    const Vec dx = coef_p * p - coef_p_over_r * p_over_r;
    return Vec::blendv(dx, Vec(0.f), dx.abs() < Vec(std::numeric_limits<float>::min()));
  }
};

struct RowBuffers {
  std::vector<float> windows, col_mask, alpha, tmp;
  RowBuffers(const Geometry& g, bool dense_alpha)
      : windows(g.kh * g.kw * g.ow_padded), col_mask(g.kw * g.ow_padded, 0.f),
        alpha(dense_alpha ? g.ow_padded : 0, 0.f), tmp(g.ow_padded) {
    for (int64_t dj = 0; dj < g.kw; ++dj)
      std::fill(col_mask.begin() + dj * g.ow_padded, col_mask.begin() + dj * g.ow_padded + g.valid_cols[dj], 1.f);
  }
  float* window(const Geometry& g, int64_t di, int64_t dj) { return windows.data() + (di * g.kw + dj) * g.ow_padded; }
  void gather(const float* plane, const Geometry& g, int64_t o) {
    for (int64_t di = 0; di < g.kh; ++di)
      for (int64_t dj = 0; dj < g.kw; ++dj) gather_row(plane, g, o, di, dj, window(g, di, dj));
  }
  AlphaRow alpha_row(const float* alpha_plane, float alpha_value, const Geometry& g, int64_t o) {
    if (alpha_plane == nullptr) return AlphaRow{nullptr, alpha_value, g.ow};
    std::copy(alpha_plane + o * g.ow, alpha_plane + (o + 1) * g.ow, alpha.begin());
    return AlphaRow{alpha.data(), 0.f, g.ow};
  }
};

inline Vec load_row(const float* row, int64_t j, int64_t ow) {
  return Vec::loadu(row + j, static_cast<int>(std::min<int64_t>(kLanes, ow - j)));
}

inline void store_row(const Vec& v, float* row, int64_t j, int64_t ow) {
  v.store(row + j, static_cast<int>(std::min<int64_t>(kLanes, ow - j)));
}

Geometry make_geometry(const torch::Tensor& x, std::vector<int64_t> k, std::vector<int64_t> s,
                       std::vector<int64_t> p, std::vector<int64_t> out) {
  return Geometry(x.size(2), x.size(3), k[0], k[1], s[0], s[1], p[0], p[1], out[0], out[1]);
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& alpha, bool dense_alpha, const Geometry& g) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() == 4,
              "p_pool2d_cpu: x must be a contiguous 4-D float32 CPU tensor");
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && alpha.is_contiguous(), "p_pool2d_cpu: alpha must be contiguous fp32");
  const int64_t planes = x.size(0) * x.size(1);
  TORCH_CHECK(alpha.numel() == (dense_alpha ? planes * g.oh * g.ow : planes),
              "p_pool2d_cpu: alpha must hold one value per plane, or per output when dense");
}

}  // namespace

// VGG's pools (2x2, stride 2, no padding, even H and W) tile the input: each element is in exactly one window.
// There the four elements of kLanes windows are two deinterleaved vector loads per input row, and the gradient
// is interleaved and stored straight into grad_x, without the general path's per-offset buffers and scatter.
inline bool tiles_2x2(const Geometry& g) {
  return g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 && g.H == 2 * g.oh &&
         g.W == 2 * g.ow;
}

// (even, odd) columns of input row `row` under outputs j .. j + count - 1; zeros past the count.
inline std::pair<Vec, Vec> load_pairs(const float* row, int64_t j, int64_t count) {
  const float* src = row + 2 * j;
  const int64_t n = 2 * count;
  const Vec lo = n >= kLanes ? Vec::loadu(src) : Vec::loadu(src, static_cast<int>(n));
  const Vec hi = n >= 2 * kLanes ? Vec::loadu(src + kLanes)
                 : n > kLanes    ? Vec::loadu(src + kLanes, static_cast<int>(n - kLanes))
                                 : Vec(0.f);
  return at::vec::deinterleave2(lo, hi);
}

inline void store_pairs(const Vec& even, const Vec& odd, float* row, int64_t j, int64_t count) {
  const auto interleaved = at::vec::interleave2(even, odd);
  float* dst = row + 2 * j;
  const int64_t n = 2 * count;
  if (n > kLanes) {
    interleaved.first.store(dst);
    interleaved.second.store(dst + kLanes, static_cast<int>(n - kLanes));
  } else {
    interleaved.first.store(dst, static_cast<int>(n));
  }
}

// One row of outputs of the general path: the window max, then the sums, from the per-offset row buffers.
inline void forward_row_general(RowBuffers& buf, const Geometry& g, int64_t o, const AlphaRow& a_row, float* y,
                                float* m_out, float* den_out, Vec& low) {
  for (int64_t j = 0; j < g.ow; j += kLanes) {
    Vec m = Vec::loadu(buf.window(g, 0, 0) + j);
    low = at::vec::minimum(low, m);
    for (int64_t d = 1; d < g.kh * g.kw; ++d) {
      const Vec v = Vec::loadu(buf.windows.data() + d * g.ow_padded + j);
      m = at::vec::maximum(m, v);
      low = at::vec::minimum(low, v);
    }
    m = flush_max(m);
    const Normaliser n(m);
    const Vec a = a_row.load(j);
    Vec num(0.f), den(0.f);
    for (int64_t di = 0; di < g.kh; ++di) {
      if (o >= g.valid_rows[di]) continue;  // ceil-mode overhang: not part of the window
      for (int64_t dj = 0; dj < g.kw; ++dj) {
        const Vec r = n.ratio(Vec::loadu(buf.window(g, di, dj) + j));
        Vec p = pow_unit(r, log_unit(r), a);
        if (g.valid_cols[dj] < g.ow) p = p * Vec::loadu(buf.col_mask.data() + dj * g.ow_padded + j);
        den = den + p;
        num = num + p * r;
      }
    }
    store_row(num / den * m, y, j, g.ow);
    if (m_out != nullptr) {  // the backward's state: not written when no gradient is needed
      store_row(m, m_out, j, g.ow);
      store_row(den, den_out, j, g.ow);
    }
  }
}

inline void forward_row_2x2(const float* x_row, const Geometry& g, const AlphaRow& a_row, float* y, float* m_out,
                            float* den_out, Vec& low) {
  for (int64_t j = 0; j < g.ow; j += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, g.ow - j);
    const auto top = load_pairs(x_row, j, count), bottom = load_pairs(x_row + g.W, j, count);
    const Vec xs[4] = {top.first, top.second, bottom.first, bottom.second};
    const Vec m = flush_max(at::vec::maximum(at::vec::maximum(xs[0], xs[1]), at::vec::maximum(xs[2], xs[3])));
    low = at::vec::minimum(low, at::vec::minimum(at::vec::minimum(xs[0], xs[1]), at::vec::minimum(xs[2], xs[3])));
    const Normaliser n(m);
    const Vec a = a_row.load(j);
    Vec num(0.f), den(0.f);
    for (const Vec& x : xs) {
      const Vec r = n.ratio(x);
      const Vec p = pow_unit(r, log_unit(r), a);
      den = den + p;
      num = num + p * r;
    }
    store_row(num / den * m, y, j, g.ow);
    if (m_out != nullptr) {  // the backward's state: not written when no gradient is needed
      store_row(m, m_out, j, g.ow);
      store_row(den, den_out, j, g.ow);
    }
  }
}

// Returns (y, m, den), each (N, C, oh, ow) fp32 (m and den empty unless need_state: the backward's state), and
// whether a window held a negative x (then the caller shifts the maps and calls again: the arithmetic here assumes
// x >= 0).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, bool> forward(
    torch::Tensor x, torch::Tensor alpha, bool dense_alpha, std::vector<int64_t> kernel, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> out_size, bool need_state) {
  const Geometry g = make_geometry(x, kernel, stride, padding, out_size);
  check_inputs(x, alpha, dense_alpha, g);
  const int64_t planes = x.size(0) * x.size(1);
  auto y = torch::empty({x.size(0), x.size(1), g.oh, g.ow}, x.options());
  auto m_out = need_state ? torch::empty_like(y) : torch::empty({0}, x.options());
  auto den_out = need_state ? torch::empty_like(y) : torch::empty({0}, x.options());
  const float* x_data = x.data_ptr<float>();
  const float* a_data = alpha.data_ptr<float>();
  float* y_data = y.data_ptr<float>();
  float* m_data = need_state ? m_out.data_ptr<float>() : nullptr;
  float* den_data = need_state ? den_out.data_ptr<float>() : nullptr;
  const bool tiled = tiles_2x2(g);

  std::atomic<bool> any_negative{false};
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    RowBuffers buf(g, dense_alpha);
    Vec low(0.f);  // the running minimum of every window element (padding and vector tails are 0)
    for (int64_t plane = begin; plane < end; ++plane) {
      const float* xp = x_data + plane * g.H * g.W;
      const float* alpha_plane = dense_alpha ? a_data + plane * g.oh * g.ow : nullptr;
      const float alpha_value = dense_alpha ? 0.f : a_data[plane];
      for (int64_t o = 0; o < g.oh; ++o) {
        const int64_t out = (plane * g.oh + o) * g.ow;
        if (tiled) {
          const AlphaRow a_row{alpha_plane ? alpha_plane + o * g.ow : nullptr, alpha_value, g.ow};
          forward_row_2x2(xp + 2 * o * g.W, g, a_row, y_data + out, m_data ? m_data + out : nullptr,
                          den_data ? den_data + out : nullptr, low);
        } else {
          buf.gather(xp, g, o);
          const AlphaRow a_row = buf.alpha_row(alpha_plane, alpha_value, g, o);
          forward_row_general(buf, g, o, a_row, y_data + out, m_data ? m_data + out : nullptr,
                              den_data ? den_data + out : nullptr, low);
        }
      }
    }
    float lows[kLanes];
    low.store(lows);
    if (*std::min_element(lows, lows + kLanes) < 0.f) any_negative = true;
  });
  return {y, m_out, den_out, any_negative.load()};
}

// The saved per-output tensors of the backward and where its results go, for one plane.
struct BackwardPlane {
  const float *m, *den, *y, *grad;  // (oh, ow) rows of this plane
  float* grad_alpha_dense;          // (oh, ow), or nullptr
  double grad_alpha_sum = 0.0;      // layer/channel alpha: this plane's dy/da

  BackwardCoefficients coefficients(int64_t out, int64_t j, int64_t ow, const Vec& a, const Normaliser& n) const {
    return BackwardCoefficients(load_row(y + out, j, ow), load_row(den + out, j, ow), load_row(grad + out, j, ow),
                                a, n);
  }
  // dy/da of outputs j .. j + kLanes - 1: alpha_sum * g m / den
  void add_grad_alpha(const Vec& alpha_sum, const BackwardCoefficients& c, const Vec& m, int64_t out, int64_t j,
                      int64_t ow) {
    const Vec grad_a = alpha_sum * c.g_over_den * m;
    if (grad_alpha_dense != nullptr) {
      store_row(grad_a, grad_alpha_dense + out, j, ow);
    } else {
      float lanes[kLanes];
      grad_a.store(lanes);
      const int64_t count = std::min<int64_t>(kLanes, ow - j);
      for (int64_t t = 0; t < count; ++t) grad_alpha_sum += lanes[t];
    }
  }
};

inline void backward_row_general(RowBuffers& buf, const Geometry& g, int64_t o, const AlphaRow& a_row,
                                 BackwardPlane& plane, bool need_alpha, float* grad_pad) {
  const int64_t out = o * g.ow;
  for (int64_t j = 0; j < g.ow; j += kLanes) {
    const Vec m = load_row(plane.m + out, j, g.ow);
    const Normaliser n(m);
    const BackwardCoefficients c = plane.coefficients(out, j, g.ow, a_row.load(j), n);
    const int64_t count = std::min<int64_t>(kLanes, g.ow - j);
    Vec alpha_sum(0.f);
    for (int64_t di = 0; di < g.kh; ++di) {
      if (o >= g.valid_rows[di]) continue;  // overhang rows: cropped from dx, and r log r = 0 there
      float* grad_row = grad_pad + (o * g.sh + di) * g.Wpad;
      for (int64_t dj = 0; dj < g.kw; ++dj) {
        c.grad_x(Vec::loadu(buf.window(g, di, dj) + j), n, need_alpha, alpha_sum).store(buf.tmp.data());
        for (int64_t t = 0; t < count; ++t) grad_row[(j + t) * g.sw + dj] += buf.tmp[t];
      }
    }
    if (need_alpha) plane.add_grad_alpha(alpha_sum, c, m, out, j, g.ow);
  }
}

inline void backward_row_2x2(const float* x_row, const Geometry& g, int64_t o, const AlphaRow& a_row,
                             BackwardPlane& plane, bool need_alpha, float* gx_row) {
  const int64_t out = o * g.ow;
  for (int64_t j = 0; j < g.ow; j += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, g.ow - j);
    const Vec m = load_row(plane.m + out, j, g.ow);
    const Normaliser n(m);
    const BackwardCoefficients c = plane.coefficients(out, j, g.ow, a_row.load(j), n);
    const auto top = load_pairs(x_row, j, count), bottom = load_pairs(x_row + g.W, j, count);
    Vec alpha_sum(0.f);
    const Vec g00 = c.grad_x(top.first, n, need_alpha, alpha_sum), g01 = c.grad_x(top.second, n, need_alpha, alpha_sum);
    const Vec g10 = c.grad_x(bottom.first, n, need_alpha, alpha_sum);
    const Vec g11 = c.grad_x(bottom.second, n, need_alpha, alpha_sum);
    store_pairs(g00, g01, gx_row, j, count);
    store_pairs(g10, g11, gx_row + g.W, j, count);
    if (need_alpha) plane.add_grad_alpha(alpha_sum, c, m, out, j, g.ow);
  }
}

// Returns (grad_x (N, C, H, W), grad_alpha: per output (N, C, oh, ow) for a dense alpha, else per plane (N*C);
// empty unless need_alpha).
std::vector<torch::Tensor> backward(torch::Tensor x, torch::Tensor alpha, bool dense_alpha, torch::Tensor m_t,
                                    torch::Tensor den_t, torch::Tensor y_t, torch::Tensor grad_y, bool need_alpha,
                                    std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                    std::vector<int64_t> padding) {
  const Geometry g = make_geometry(x, kernel, stride, padding, {m_t.size(2), m_t.size(3)});
  check_inputs(x, alpha, dense_alpha, g);
  TORCH_CHECK(grad_y.is_contiguous() && m_t.is_contiguous() && den_t.is_contiguous() && y_t.is_contiguous(),
              "p_pool2d_cpu: saved tensors and grad_y must be contiguous");
  const int64_t planes = x.size(0) * x.size(1);
  auto grad_x = torch::empty_like(x);
  // dense alpha: one gradient per output; otherwise one per plane, reduced here (no output-sized temporary)
  auto grad_alpha = !need_alpha ? torch::Tensor() : dense_alpha ? torch::empty_like(m_t) : torch::zeros({planes}, x.options());
  const float* x_data = x.data_ptr<float>();
  const float* a_data = alpha.data_ptr<float>();
  float* gx_data = grad_x.data_ptr<float>();
  float* ga_data = need_alpha ? grad_alpha.data_ptr<float>() : nullptr;
  const bool tiled = tiles_2x2(g);
  const int64_t plane_out = g.oh * g.ow;

  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    RowBuffers buf(g, dense_alpha);
    std::vector<float> grad_pad(tiled ? 0 : g.Hpad * g.Wpad);  // the general path scatters into a padded plane
    for (int64_t p = begin; p < end; ++p) {
      const float* xp = x_data + p * g.H * g.W;
      float* gx_plane = gx_data + p * g.H * g.W;
      const float* alpha_plane = dense_alpha ? a_data + p * plane_out : nullptr;
      const float alpha_value = dense_alpha ? 0.f : a_data[p];
      BackwardPlane plane{m_t.data_ptr<float>() + p * plane_out, den_t.data_ptr<float>() + p * plane_out,
                          y_t.data_ptr<float>() + p * plane_out, grad_y.data_ptr<float>() + p * plane_out,
                          need_alpha && dense_alpha ? ga_data + p * plane_out : nullptr};
      if (!tiled) std::fill(grad_pad.begin(), grad_pad.end(), 0.f);
      for (int64_t o = 0; o < g.oh; ++o) {
        if (tiled) {
          const AlphaRow a_row{alpha_plane ? alpha_plane + o * g.ow : nullptr, alpha_value, g.ow};
          backward_row_2x2(xp + 2 * o * g.W, g, o, a_row, plane, need_alpha, gx_plane + 2 * o * g.W);
        } else {
          buf.gather(xp, g, o);
          backward_row_general(buf, g, o, buf.alpha_row(alpha_plane, alpha_value, g, o), plane, need_alpha,
                               grad_pad.data());
        }
      }
      if (need_alpha && !dense_alpha) ga_data[p] = static_cast<float>(plane.grad_alpha_sum);
      if (!tiled) {
        for (int64_t h = 0; h < g.H; ++h)
          std::copy(grad_pad.begin() + (h + g.ph) * g.Wpad + g.pw,
                    grad_pad.begin() + (h + g.ph) * g.Wpad + g.pw + g.W, gx_plane + h * g.W);
      }
    }
  });
  return {grad_x, grad_alpha};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("forward", &forward, "P-pooling forward (fp32 CPU, fused)");
  module.def("backward", &backward, "P-pooling backward (fp32 CPU, fused)");
}
