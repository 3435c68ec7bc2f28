// Fused CPU kernels for P-pooling (float32, NCHW; a float64 build for the tests): forward and analytic backward in
// one pass over the windows. What they compute, and their conventions: ../p_pool2d.h. Here the row loops of each
// path, the per-plane drivers (forward_impl, backward_impl) and the entry points; the vector maths are in
// vec_math.h, the geometry and row loads in p_pool2d_common.h, the window buffers in p_pool2d_buffers.h, the fused
// dense branch in dense_branch.h.
//
// Layout of the work: one (sample, channel) plane per task, one output row at a time. Each window offset's elements
// of an output row are one contiguous row (RowBuffers: read in place from a zero-padded, for stride 2 phase-split,
// copy of the plane, or copied out for other strides), so all the arithmetic is vectorised along the output row
// with ATen's Vectorized<real_t> (powers from exp2_upto_127, logarithms from the exponent split). With the fused
// dense branch at stride 1, where a row of outputs fills its vectors badly, the whole plane's outputs are one row
// (flat_outputs).
// The backward scatters into a per-plane padded gradient buffer, so no two threads ever write the same element (with
// a layer/channel alpha of 2 or more at stride 1, the windows that take the plane's powers gather instead:
// gather_backward). VGG's 2x2/2 pools, which tile the input, take a shorter path: deinterleaved loads in, interleaved
// stores out.

#include "../p_pool2d.h"
#include "dense_branch.h"
#include "p_pool2d_buffers.h"
#include "p_pool2d_common.h"
#include "vec_math.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace polypool::ops::detail {

namespace {

Geometry make_geometry(const torch::Tensor& x, std::vector<int64_t> k, std::vector<int64_t> s,
                       std::vector<int64_t> p, std::vector<int64_t> out) {
  return Geometry(x.size(2), x.size(3), k[0], k[1], s[0], s[1], p[0], p[1], out[0], out[1]);
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& alpha, bool dense_alpha, const Geometry& g) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == kRealType && x.is_contiguous() && x.dim() == 4,
              "p_pool2d_cpu: x must be a contiguous 4-D ", kRealName, " CPU tensor");
  TORCH_CHECK(alpha.scalar_type() == kRealType && alpha.is_contiguous(), "p_pool2d_cpu: alpha must be contiguous ", kRealName);
  const int64_t planes = x.size(0) * x.size(1);
  TORCH_CHECK(alpha.numel() == (dense_alpha ? planes * g.oh * g.ow : planes),
              "p_pool2d_cpu: alpha must hold one value per plane, or per output when dense");
}

void check_branch(const torch::Tensor& x, const Geometry& g, const torch::Tensor& k, const torch::Tensor& slope,
                  const torch::Tensor& w, const torch::Tensor& b) {
  const int64_t c = x.size(1);
  for (const auto* t : {&k, &slope, &w, &b})
    TORCH_CHECK(t->scalar_type() == kRealType && t->is_contiguous() && t->device().is_cpu(),
                "p_pool2d_cpu: the branch parameters must be contiguous ", kRealName, " CPU tensors");
  TORCH_CHECK(k.numel() == c * g.kh * g.kw && slope.numel() == c && w.numel() == c && b.numel() == c,
              "p_pool2d_cpu: the branch needs k (C, kh*kw) and slope, w, b (C,)");
}

void check_saved(const torch::Tensor& den_t, const torch::Tensor& y_t, const torch::Tensor& grad_y) {
  TORCH_CHECK(grad_y.is_contiguous() && den_t.is_contiguous() && y_t.is_contiguous(),
              "p_pool2d_cpu: saved tensors and grad_y must be contiguous");
}

}  // namespace

// Alphas just above 1: a ratio r at or above the smallest normal float can have r^a below it (written as 0) while
// r^(a-1), dx's other factor, is not negligible (a = 1.01, r = 2^-125: r^a = 2^-126.25 is 0, r^(a-1) = 0.42). Over
// those r (below 2^(-126/a) in float) r^(a-1) is at most 2^(-126 (a-1)/a), above 2^-24 (the rounding of the rest of
// dx) for a < 1 / (1 - 24/126) = 1.235 (double: 1 / (1 - 53/1022)), and the window spans over 2^102; a vector of
// windows with such an alpha takes r^(a-1) = 2^((a-1) log2 r), not p / r.
const Vec kNearOne(1 / (1 - static_cast<real_t>(std::numeric_limits<real_t>::digits) /
                                static_cast<real_t>(1 - std::numeric_limits<real_t>::min_exponent)));

// What the backward needs per output, for dx_i = coef_p * p_i - coef_p_over_r * p_i / r_i.
struct BackwardCoefficients {
  Vec q, g_over_den, a, coef_p, coef_p_over_r, at_zero;
  // an alpha in (1, kNearOne) (or NaN) in the vector, also in a lane that is no output (it costs an exp per window
  // element, changes nothing): p / r as 2^((a-1) log2 r)
  bool near_one;
  BackwardCoefficients(const Vec& y, const Vec& den, const Vec& grad, const Vec& alpha, const Normaliser& n)
      : q(y * n.inv_m + n.zero),  // y/m; 1 in an all-zero window
        g_over_den(grad / den),    // den >= 1 on real outputs; the vector tail loads den = 0 and is never stored
        a(alpha),
        coef_p(g_over_den * (alpha + Vec(1.f))),
        coef_p_over_r(g_over_den * alpha * q),
        at_zero(Vec::blendv(Vec(0.f), Vec(1.f), alpha == Vec(1.f))),  // r^(a-1) at r = 0
        near_one(!all_lanes((alpha <= Vec(1.f)) | (alpha >= kNearOne))) {}

  // dx of one window element x (normalised by n), not flushed (flush_subnormal: once per element); adds its term of
  // dy/da (in log2 units, before the factor ln 2 m / den) to alpha_sum.
  inline Vec grad_x(const Vec& x, const Normaliser& n, bool need_alpha, Vec& alpha_sum) const {
    const Vec r = n.ratio(x);
    const Vec log2_r = log2_unit(r);
    return grad_x_of(r, r >= kTiny, log2_r, pow_unit(log2_r, a), need_alpha, alpha_sum);
  }
  // the same from the splits of x and of the window max (overlapping windows: no log per window element)
  // (below_one: as for pow_split; r counts as 0 where d says so, as in the forward)
  inline Vec grad_x_split(const Vec& x, const Vec& ex, const Vec& lx, const Vec& em, const Vec& lm,
                          const Normaliser& n, bool below_one, bool need_alpha, Vec& alpha_sum) const {
    const Vec r = n.ratio_of_row(x);
    const Vec d = log2_ratio(ex, lx, em, lm);
    return grad_x_of(r, d >= kMinNormalLog2, d, pow_split(d, a, below_one), need_alpha, alpha_sum);
  }
  // positive: r does not count as 0; log2_r: log2 r (alpha_sum is in log2 units: add_grad_alpha multiplies by ln 2)
  inline Vec grad_x_of(const Vec& r, const Vec& positive, const Vec& log2_r, const Vec& p, bool need_alpha,
                       Vec& alpha_sum) const {
    if (need_alpha) alpha_sum = at::vec::fmadd(Vec::blendv(Vec(0.f), p * log2_r, positive), r - q, alpha_sum);
    // where a = 0, coef_p_over_r = 0 and p / r = 1 / r is finite (r about the smallest normal or more, or at_zero = 0)
    const Vec p_over_r = Vec::blendv(at_zero, near_one ? exp2_upto_127((a - Vec(1.f)) * log2_r) : p / r, positive);
    return coef_p * p - coef_p_over_r * p_over_r;
  }
};

// One row of outputs of the general path: the window max, then the sums, from the per-offset row buffers. With a
// branch, alpha is computed here from the window and written to alpha_out (the row of the alpha map).
inline void forward_row_general(RowBuffers& buf, const Geometry& g, int64_t o, const AlphaRow& a_row, real_t* y,
                                real_t* den_out, Vec& low, const Branch* branch = nullptr,
                                real_t* alpha_out = nullptr) {
  const int64_t taps = g.kh * g.kw;
  for (int64_t j = 0; j < g.ow; j += kLanes) {
    // the vector tail (lanes past ow) reads input columns that no window of this row has: left out of low
    const Vec live = lanes_below(std::min<int64_t>(kLanes, g.ow - j));
    Vec m = buf.x(0, j);
    low = at::vec::minimum(low, Vec::blendv(Vec(0.f), m, live));
    for (int64_t d = 1; d < taps; ++d) {
      const Vec v = buf.x(d, j);
      m = at::vec::maximum(m, v);
      low = at::vec::minimum(low, Vec::blendv(Vec(0.f), v, live));
    }
    m = flush_max(m);
    const Normaliser n(m);
    Vec a;
    if (branch != nullptr) {
      Vec u(0.f);
      for (int64_t d = 0; d < taps; ++d) u = u + Vec(branch->k[d]) * buf.x(d, j);
      a = branch->alpha(u);
      store_row(a, alpha_out, j, g.ow);
    } else {
      a = a_row.load(j);
    }
    Vec num(0.f), den(0.f), em, lm;
    // the sums with the weights p = r^a of weight(d, r): each way of computing them gets its own loop
    auto sum_windows = [&](auto weight) {
      for (int64_t di = 0; di < g.kh; ++di) {
        if (!g.row_in_window(o, di)) continue;  // ceil-mode overhang (and padding, unless counted): not in the window
        for (int64_t dj = 0; dj < g.kw; ++dj) {
          const int64_t d = di * g.kw + dj;
          const Vec r = n.ratio_of_row(buf.x(d, j));
          Vec p = weight(d, r);
          if (!buf.full_cols[dj]) p = p * Vec::loadu(buf.col_mask.data() + dj * g.ow_padded + j);
          den = den + p;
          num = num + p * r;
        }
      }
    };
    const PlanePowers powers(buf, taps, j, std::min<int64_t>(kLanes, g.ow - j), n);
    // the row sums where no window of the vector is all zero (its weights are 1, not P / P(m)) and sum P x s >=
    // P(m) m s stays at least 2^-100, so that what underflows in it (below 2^-126) is under 2^-26 of it, as the
    // weights the powers drop are of theirs
    bool box = powers.usable && buf.box_sums_ready;
    if (box) {
      const Vec fine = (~powers.zero & (powers.top * (m * Vec(buf.box_scale)) >= kPowerFloor)) | ~live;
      box = all_lanes(fine);
    }
    if (box) {
      // den = sum P / P(m) and y = m sum p r / den = sum P x / sum P, the sums of kh rows of the box sums (rows
      // outside the window, padding or overhang, hold P = 0), x scaled by s
      Vec sum_p(0.f), sum_px(0.f);
      for (int64_t di = 0; di < g.kh; ++di) {
        const int64_t at = (o * g.sh + di) * g.ow_padded + j;
        sum_p = sum_p + Vec::loadu(buf.row_p.data() + at);
        sum_px = sum_px + Vec::loadu(buf.row_px.data() + at);
      }
      store_row(sum_px / sum_p / Vec(buf.box_scale), y, j, g.ow);
      if (den_out != nullptr) store_row(sum_p * powers.inv_top, den_out, j, g.ow);
      continue;
    }
    if (powers.usable) {
      sum_windows([&](int64_t d, const Vec& r) { return powers.weight(buf.power(d, j), r); });
    } else if (buf.split) {
      split_log2(m, em, lm);
      const bool below_one = any_below_one(a, live);
      sum_windows([&](int64_t d, const Vec&) {
        return pow_split(log2_ratio(buf.e(d, j), buf.l(d, j), em, lm), a, below_one);
      });
    } else {
      sum_windows([&](int64_t, const Vec& r) { return pow_unit(log2_unit(r), a); });
    }
    store_row(num / den * m, y, j, g.ow);
    // the backward's state (not the window max: the backward recomputes it), unless no gradient is needed
    if (den_out != nullptr) store_row(den, den_out, j, g.ow);
  }
}

inline void forward_row_2x2(const real_t* x_row, const Geometry& g, const AlphaRow& a_row, real_t* y,
                            real_t* den_out, Vec& low, const Branch* branch = nullptr, real_t* alpha_out = nullptr) {
  for (int64_t j = 0; j < g.ow; j += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, g.ow - j);
    const auto top = load_pairs(x_row, j, count), bottom = load_pairs(x_row + g.W, j, count);
    const Vec xs[4] = {top.first, top.second, bottom.first, bottom.second};
    const Vec m = flush_max(at::vec::maximum(at::vec::maximum(xs[0], xs[1]), at::vec::maximum(xs[2], xs[3])));
    low = at::vec::minimum(low, at::vec::minimum(at::vec::minimum(xs[0], xs[1]), at::vec::minimum(xs[2], xs[3])));
    const Normaliser n(m);
    Vec a;
    if (branch != nullptr) {
      const real_t* k = branch->k;
      a = branch->alpha(Vec(k[0]) * xs[0] + Vec(k[1]) * xs[1] + Vec(k[2]) * xs[2] + Vec(k[3]) * xs[3]);
      store_row(a, alpha_out, j, g.ow);
    } else {
      a = a_row.load(j);
    }
    Vec num(0.f), den(0.f);
    for (const Vec& x : xs) {
      const Vec r = n.ratio(x);
      const Vec p = pow_unit(log2_unit(r), a);
      den = den + p;
      num = num + p * r;
    }
    store_row(num / den * m, y, j, g.ow);
    // the backward's state (not the window max: the backward recomputes it), unless no gradient is needed
    if (den_out != nullptr) store_row(den, den_out, j, g.ow);
  }
}

// y, and den when need_state; with a branch, alpha is computed in the kernel (written to alpha_map) and a
// plane with a negative x is skipped (flagged: the caller then runs the unfused branch and the shifted pooling).
bool forward_impl(const torch::Tensor& x, const real_t* a_data, bool dense_alpha, const Geometry& g, real_t* y_data,
                  real_t* den_data, const BranchArgs* branch, real_t* alpha_map) {
  const int64_t planes = x.size(0) * x.size(1), channels = x.size(1), taps = g.kh * g.kw;
  const real_t* x_data = x.data_ptr<real_t>();
  const bool tiled = tiles_2x2(g);
  std::atomic<bool> any_negative{false};
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    RowBuffers buf(g, dense_alpha && branch == nullptr, kForwardSplit, !dense_alpha, false, branch != nullptr);
    Vec low(0.f);  // the running minimum of every window element (padding and vector tails count as 0)
    for (int64_t plane = begin; plane < end; ++plane) {
      const real_t* xp = x_data + plane * g.H * g.W;
      Branch br{};
      real_t* alpha_plane_out = nullptr;
      if (branch != nullptr) {
        // one read of the plane (it stays in cache for the windows): the normaliser, and the negative check of
        // every element, also of rows and columns that no window reads
        const auto range = plane_range(xp, g.H * g.W);
        if (range.second < 0.f) {
          any_negative = true;
          continue;
        }
        branch->f[plane] = plane_normaliser(branch->scale, range.first);
        br = branch->plane(plane, channels, taps);
        alpha_plane_out = alpha_map + plane * g.oh * g.ow;
      }
      const real_t* alpha_plane = branch == nullptr && dense_alpha ? a_data + plane * g.oh * g.ow : nullptr;
      const real_t alpha_value = branch == nullptr && !dense_alpha ? a_data[plane] : 0.f;
      if (!tiled) {
        buf.prepare_plane(xp, g);
        buf.prepare_powers(alpha_value);
        buf.prepare_box_sums(g, alpha_value);
      }
      const Branch* b = branch != nullptr ? &br : nullptr;
      if (buf.flat) {  // (with a branch) the plane's outputs as one row, then copied out row by row
        buf.gather(xp, g, 0);
        forward_row_general(buf, buf.flat_g, 0, AlphaRow{nullptr, 0.f, buf.flat_g.ow}, buf.flat_y.data(),
                            den_data ? buf.flat_den.data() : nullptr, low, b, buf.flat_alpha.data());
        for (int64_t o = 0; o < g.oh; ++o) {
          const int64_t out = (plane * g.oh + o) * g.ow, at = o * g.Wpad;
          std::copy_n(buf.flat_y.data() + at, g.ow, y_data + out);
          if (den_data) std::copy_n(buf.flat_den.data() + at, g.ow, den_data + out);
          std::copy_n(buf.flat_alpha.data() + at, g.ow, alpha_plane_out + o * g.ow);
        }
      } else {
        for (int64_t o = 0; o < g.oh; ++o) {
          const int64_t out = (plane * g.oh + o) * g.ow;
          real_t* alpha_row_out = alpha_plane_out ? alpha_plane_out + o * g.ow : nullptr;
          if (tiled) {
            const AlphaRow a_row{alpha_plane ? alpha_plane + o * g.ow : nullptr, alpha_value, g.ow};
            forward_row_2x2(xp + 2 * o * g.W, g, a_row, y_data + out, den_data ? den_data + out : nullptr, low, b,
                            alpha_row_out);
          } else {
            buf.gather(xp, g, o);
            const AlphaRow a_row = b ? AlphaRow{nullptr, 0.f, g.ow} : buf.alpha_row(alpha_plane, alpha_value, g, o);
            forward_row_general(buf, g, o, a_row, y_data + out, den_data ? den_data + out : nullptr, low, b,
                                alpha_row_out);
          }
        }
      }
      if (branch != nullptr) {  // the plane's alpha statistics (sum, min, max), from the map just written (cached)
        const int64_t count = g.oh * g.ow;
        Vec sum(0.f), lo_v(std::numeric_limits<real_t>::infinity()), hi_v(-std::numeric_limits<real_t>::infinity());
        int64_t i = 0;
        for (; i + kLanes <= count; i += kLanes) {
          const Vec v = Vec::loadu(alpha_plane_out + i);
          sum = sum + v;
          lo_v = at::vec::minimum(lo_v, v);
          hi_v = at::vec::maximum(hi_v, v);
        }
        real_t sums[kLanes], los[kLanes], his[kLanes];
        sum.store(sums);
        lo_v.store(los);
        hi_v.store(his);
        double total = 0.0;
        real_t lowest = std::numeric_limits<real_t>::infinity(), highest = -lowest;
        for (int64_t t = 0; t < kLanes; ++t) {
          total += sums[t];
          lowest = std::min(lowest, los[t]);
          highest = std::max(highest, his[t]);
        }
        for (; i < count; ++i) {
          total += alpha_plane_out[i];
          lowest = std::min(lowest, alpha_plane_out[i]);
          highest = std::max(highest, alpha_plane_out[i]);
        }
        real_t* stats = branch->stats + plane * 3;
        stats[0] = static_cast<real_t>(total);
        stats[1] = lowest;
        stats[2] = highest;
      }
    }
    real_t lows[kLanes];
    low.store(lows);
    if (*std::min_element(lows, lows + kLanes) < 0.f) any_negative = true;
  });
  return any_negative.load();
}

// The saved per-output tensors of the backward and where its results go, for one plane.
struct BackwardPlane {
  const real_t *den, *y, *grad;  // (oh, ow) rows of this plane
  real_t* grad_alpha_dense;          // (oh, ow), or nullptr
  double grad_alpha_sum = 0.0;      // layer/channel alpha: this plane's dy/da
  const Branch* branch = nullptr;   // the fused dense branch: dalpha goes on into its parameters' sums
  BranchGrad* branch_grad = nullptr;

  BackwardCoefficients coefficients(int64_t out, int64_t j, int64_t ow, const Vec& a, const Normaliser& n) const {
    return BackwardCoefficients(load_row(y + out, j, ow), load_row(den + out, j, ow), load_row(grad + out, j, ow),
                                a, n);
  }
  // dy/da of outputs j .. j + kLanes - 1: alpha_sum * g m / den; with a branch, on into its parameters (u: the
  // window's conv sums, value(d): its element at tap d)
  template <class Value>
  void add_grad_alpha(const Vec& alpha_sum, const BackwardCoefficients& c, const Vec& m, int64_t out, int64_t j,
                      int64_t ow, const Vec& live, const Vec& u, const Value& value) {
    const Vec grad_a = alpha_sum * c.g_over_den * (m * Vec(kLn2));  // alpha_sum in log2 units
    if (branch != nullptr) {
      // the lanes that are no output (the vector tail, which loads den = 0; flat outputs' wrapping columns) are
      // dropped, never multiplied
      branch_grad->add(*branch, Vec::blendv(Vec(0.f), grad_a, live), u, value);
    } else if (grad_alpha_dense != nullptr) {
      store_row(grad_a, grad_alpha_dense + out, j, ow);
    } else {
      real_t lanes[kLanes];
      grad_a.store(lanes);
      const int64_t count = std::min<int64_t>(kLanes, ow - j);
      for (int64_t t = 0; t < count; ++t) grad_alpha_sum += lanes[t];
    }
  }
};

// gather: the plane takes GatherBackward (see there): each vector of windows whose weights come from the plane's
// powers writes its factors into the maps instead of scattering its dx; the others scatter and write 0 there.
inline void backward_row_general(RowBuffers& buf, const Geometry& g, int64_t o, const AlphaRow& a_row,
                                 BackwardPlane& plane, bool need_alpha, real_t* grad_pad, bool gather = false) {
  const int64_t out = o * g.ow, taps = g.kh * g.kw;
  const Vec plane_top(gather ? buf.plane_top : 1.f);  // M (divided by: 1 / M is subnormal for M >= 2^126)
  for (int64_t j = 0; j < g.ow; j += kLanes) {
    // the window's element at tap d, 0 in the lanes that are no output (the vector tail, whose input columns no
    // window of this row has; flat outputs' wrapping columns): an inf there would make the branch's dk NaN through
    // 0 * inf
    const Vec live = buf.flat ? Vec::loadu(buf.flat_live.data() + j) > Vec(0.f)
                              : lanes_below(std::min<int64_t>(kLanes, g.ow - j));
    const bool partial = buf.flat ? !all_lanes(live) : g.ow - j < kLanes;
    auto value = [&](int64_t d) { return Vec::blendv(Vec(0.f), buf.x(d, j), live); };
    // the window max, recomputed as the forward computed it (not saved)
    Vec m = value(0), a, u(0.f);
    for (int64_t d = 1; d < taps; ++d) m = at::vec::maximum(m, value(d));
    m = flush_max(m);
    if (plane.branch != nullptr) {  // alpha, recomputed as the forward computed it (not saved)
      for (int64_t d = 0; d < taps; ++d) u = u + Vec(plane.branch->k[d]) * value(d);
      a = plane.branch->alpha(u);
    } else {
      a = a_row.load(j);
    }
    const Normaliser n(m);
    const BackwardCoefficients c = plane.coefficients(out, j, g.ow, a, n);
    const int64_t count = std::min<int64_t>(kLanes, g.ow - j);
    if (gather) {  // overwritten where this vector's windows take the maps
      const int64_t at = (o + g.kh - 1) * buf.map_stride + kLanes + j;
      Vec(0.f).store(buf.map_a.data() + at);
      Vec(0.f).store(buf.map_b.data() + at);
    }
    Vec alpha_sum(0.f), em, lm;
    if (buf.split) split_log2(m, em, lm);
    const bool below_one = buf.split && any_below_one(c.a, live);
    const PlanePowers powers(buf, taps, j, count, n);
    // scatter the dx of every window element, element(di, dj) giving those at offset (di, dj) of outputs
    // j .. j + kLanes - 1: each way of computing them gets its own loop
    auto scatter = [&](auto element) {
      for (int64_t di = 0; di < g.kh; ++di) {
        if (o >= g.valid_rows[di]) continue;  // overhang rows: cropped from dx, and r log r = 0 there
        real_t* grad_row = grad_pad + (o * g.sh + di) * g.Wpad;
        if (g.sw == 1) {  // the outputs' elements at offset dj are contiguous: a vector add
          // Whole vectors also at the row's end: the lanes past it add exactly 0 (to the row's padding, the next
          // row's first columns or the plane's slack), which costs less than a partial (masked) load and store per
          // offset (timings: results/bench/cpu_kernel_notes.md)
          for (int64_t dj = 0; dj < g.kw; ++dj) {
            Vec dx = element(di, dj);
            if (partial) dx = Vec::blendv(Vec(0.f), dx, live);
            real_t* dst = grad_row + j + dj;
            (Vec::loadu(dst) + dx).store(dst);
          }
        } else if (g.sw == 2) {  // offsets dj and dj + 1 interleave into contiguous columns
          for (int64_t dj = 0; dj < g.kw; dj += 2) {
            const Vec even = element(di, dj);
            const Vec odd = dj + 1 < g.kw ? element(di, dj + 1) : Vec(0.f);  // adds 0 one past the row (slack)
            add_pairs(even, odd, grad_row + 2 * j + dj, count);
          }
        } else {
          for (int64_t dj = 0; dj < g.kw; ++dj) {
            element(di, dj).store(buf.tmp.data());
            for (int64_t t = 0; t < count; ++t) grad_row[(j + t) * g.sw + dj] += buf.tmp[t];
          }
        }
      }
    };
    if (!buf.split) {
      scatter([&](int64_t di, int64_t dj) { return c.grad_x(buf.x(di * g.kw + dj, j), n, need_alpha, alpha_sum); });
    } else if (powers.usable) {
      bool gathered = false;
      if (gather) {
        // dx_i = P_i A_i - Q_i B_i, Q_i = P_i / (x_i / M): this vector's terms of A and B. Not where a window is
        // all zero (its weights are 1, not P / P(m)) or a factor is so large (or NaN) that A or B, sums of up to
        // kMaxGatherTaps of them, could overflow: those scatter.
        const Vec factor_a = c.coef_p * powers.inv_top, factor_b = c.coef_p_over_r * powers.inv_top * (m / plane_top);
        const Vec small = (factor_a.abs() <= kMaxGatherFactor) & (factor_b.abs() <= kMaxGatherFactor);
        const Vec bad = (powers.zero | ~small) & live;
        if (all_lanes(~bad)) {
          const int64_t at = (o + g.kh - 1) * buf.map_stride + kLanes + j;
          Vec::blendv(Vec(0.f), factor_a, live).store(buf.map_a.data() + at);
          Vec::blendv(Vec(0.f), factor_b, live).store(buf.map_b.data() + at);
          if (need_alpha) {
            // sum p (r - q) log r = inv_top ln 2 sum P (x / m - q) log2(x / m), with nothing to mask: no window
            // here is all zero, and a zero x (padding included) has P = 0 and a finite split
            Vec sum(0.f);
            for (int64_t di = 0; di < g.kh; ++di) {
              if (o >= g.valid_rows[di]) continue;  // overhang rows: not in the window
              for (int64_t dj = 0; dj < g.kw; ++dj) {
                const int64_t d = di * g.kw + dj;
                const Vec log2_r = (buf.e(d, j) - em) + (buf.l(d, j) - lm);
                sum = at::vec::fmadd(buf.power(d, j) * at::vec::fmsub(buf.x(d, j), n.inv_m, c.q), log2_r, sum);
              }
            }
            alpha_sum = sum * powers.inv_top;  // in log2 units, as grad_x_of's
          }
          gathered = true;
        }
      }
      if (!gathered)
        scatter([&](int64_t di, int64_t dj) {
          const int64_t d = di * g.kw + dj;
          const Vec r = n.ratio(buf.x(d, j));
          const Vec log2_r = log2_ratio(buf.e(d, j), buf.l(d, j), em, lm);
          return c.grad_x_of(r, r >= kTiny, log2_r, powers.weight(buf.power(d, j), r), need_alpha, alpha_sum);
        });
    } else {
      scatter([&](int64_t di, int64_t dj) {
        const int64_t d = di * g.kw + dj;
        return c.grad_x_split(buf.x(d, j), buf.e(d, j), buf.l(d, j), em, lm, n, below_one, need_alpha, alpha_sum);
      });
    }
    if (need_alpha) plane.add_grad_alpha(alpha_sum, c, m, out, j, g.ow, live, u, value);
  }
}

// GatherBackward. With the plane's powers P_i = (x_i / M)^a 2^kPowerOffset (layer/channel alpha, stride 1), a
// window's weights are p_i = P_i / P(m) and p_i / r_i = Q_i (m / M) / P(m), Q_i = P_i / (x_i / M), so the dx of
// element i summed over the windows w that hold it is
//   dx_i = sum_w (coef_p p_i - coef_p_over_r p_i / r_i) = P_i A_i - Q_i B_i,
//   A_i = sum_w coef_p(w) / P(m_w),   B_i = sum_w coef_p_over_r(w) (m_w / M) / P(m_w):
// the rows write each output's two factors into maps (map_a, map_b), and this pass sums them over each element's
// windows, one add per window element instead of a dx and a scatter per window element (whose load overlaps the
// previous store, which defeats store-to-load forwarding). Only for a >= kMinSumAlpha (x / M is normal wherever P is
// positive; r^(a-1) -> 0 at r -> 0, as the kernel's convention has it at r = 0); the maps of windows that scattered
// their dx hold 0.
inline void gather_backward(const RowBuffers& buf, const Geometry& g, real_t* grad_pad) {
  const Vec plane_top(buf.plane_top);
  for (int64_t row = g.ph; row < g.ph + g.H; ++row) {
    for (int64_t col = g.pw; col < g.pw + g.W; col += kLanes) {  // whole vectors: past the row, P = Q = 0
      Vec sum_a(0.f), sum_b(0.f);
      for (int64_t di = 0; di < g.kh; ++di) {
        // output row row - di, at map row row - di + kh - 1; output column col - dj at map column col - dj + kLanes
        const int64_t at = (row - di + g.kh - 1) * buf.map_stride + kLanes + col;
        for (int64_t dj = 0; dj < g.kw; ++dj) {
          sum_a = sum_a + Vec::loadu(buf.map_a.data() + at - dj);
          sum_b = sum_b + Vec::loadu(buf.map_b.data() + at - dj);
        }
      }
      const int64_t at = row * buf.phase_len + col;
      const Vec x = Vec::loadu(buf.padded.data() + at), power = Vec::loadu(buf.padded_p.data() + at);
      // Q = 0 where x / M is below the smallest normal: zeros (and subnormals), and elements whose power is 0 (with
      // a >= kMinSumAlpha, P > 0 means x / M >= 2^-113)
      const Vec ratio = x / plane_top;
      const Vec q = Vec::blendv(power / ratio, Vec(0.f), ratio < kTiny);
      const Vec dx = power * sum_a - q * sum_b;
      real_t* dst = grad_pad + row * g.Wpad + col;
      (Vec::loadu(dst) + dx).store(dst);
    }
  }
}

inline void backward_row_2x2(const real_t* x_row, const Geometry& g, int64_t o, const AlphaRow& a_row,
                             BackwardPlane& plane, bool need_alpha, real_t* gx_row) {
  const int64_t out = o * g.ow;
  for (int64_t j = 0; j < g.ow; j += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, g.ow - j);
    const auto top = load_pairs(x_row, j, count), bottom = load_pairs(x_row + g.W, j, count);
    const Vec xs[4] = {top.first, top.second, bottom.first, bottom.second};
    // the window max, recomputed as the forward computed it (not saved)
    const Vec m = flush_max(at::vec::maximum(at::vec::maximum(xs[0], xs[1]), at::vec::maximum(xs[2], xs[3])));
    Vec a, u(0.f);
    if (plane.branch != nullptr) {  // alpha, recomputed as the forward computed it (not saved)
      const real_t* k = plane.branch->k;
      u = Vec(k[0]) * xs[0] + Vec(k[1]) * xs[1] + Vec(k[2]) * xs[2] + Vec(k[3]) * xs[3];
      a = plane.branch->alpha(u);
    } else {
      a = a_row.load(j);
    }
    const Normaliser n(m);
    const BackwardCoefficients c = plane.coefficients(out, j, g.ow, a, n);
    Vec alpha_sum(0.f);
    // each element is in one window: its dx is finished here
    const Vec g00 = flush_subnormal(c.grad_x(top.first, n, need_alpha, alpha_sum));
    const Vec g01 = flush_subnormal(c.grad_x(top.second, n, need_alpha, alpha_sum));
    const Vec g10 = flush_subnormal(c.grad_x(bottom.first, n, need_alpha, alpha_sum));
    const Vec g11 = flush_subnormal(c.grad_x(bottom.second, n, need_alpha, alpha_sum));
    store_pairs(g00, g01, gx_row, j, count);
    store_pairs(g10, g11, gx_row + g.W, j, count);
    if (need_alpha)
      plane.add_grad_alpha(alpha_sum, c, m, out, j, g.ow, lanes_below(count), u, [&](int64_t d) { return xs[d]; });
  }
}

// grad_x, and: the alpha gradient (branch == nullptr: per output for a dense alpha, per plane otherwise, into
// ga_data), or the branch's per-plane parameter gradients (into branch_out: (N*C, kh*kw + 3)).
// The window max is recomputed from the window; with a branch, alpha too (a_data is nullptr).
void backward_impl(const torch::Tensor& x, const real_t* a_data, bool dense_alpha, const Geometry& g,
                   const torch::Tensor& den_t, const torch::Tensor& y_t,
                   const torch::Tensor& grad_y, bool need_alpha, real_t* gx_data, real_t* ga_data,
                   const BranchArgs* branch, real_t* branch_out) {
  const int64_t planes = x.size(0) * x.size(1), channels = x.size(1), taps = g.kh * g.kw;
  const real_t* x_data = x.data_ptr<real_t>();
  const bool tiled = tiles_2x2(g);
  const int64_t plane_out = g.oh * g.ow;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    RowBuffers buf(g, dense_alpha && branch == nullptr, true, !dense_alpha, true, branch != nullptr);
    BranchGrad branch_grad(branch != nullptr ? taps : 0);
    // the general path scatters into a padded plane, plus slack: a stride-2 pair can add 0 one past the end, and
    // stride 1 adds whole vectors: at most ow_padded + kw - 2 <= Wpad + kLanes - 2 columns into the last row
    // (gather_backward: pw + W + kLanes - 2 <= Wpad + kLanes - 2; flat outputs: up to Hpad Wpad + kLanes + kw - 2)
    std::vector<real_t> grad_pad(tiled ? 0 : g.Hpad * g.Wpad + 2 * kLanes + g.kw);
    for (int64_t p = begin; p < end; ++p) {
      const real_t* xp = x_data + p * g.H * g.W;
      real_t* gx_plane = gx_data + p * g.H * g.W;
      const real_t* alpha_plane = dense_alpha && a_data != nullptr ? a_data + p * plane_out : nullptr;
      const real_t alpha_value = dense_alpha || a_data == nullptr ? 0.f : a_data[p];
      BackwardPlane plane{den_t.data_ptr<real_t>() + p * plane_out, y_t.data_ptr<real_t>() + p * plane_out,
                          grad_y.data_ptr<real_t>() + p * plane_out,
                          need_alpha && dense_alpha && branch == nullptr ? ga_data + p * plane_out : nullptr};
      Branch br{};
      if (branch != nullptr) {
        // the normaliser, as the forward computed it (it checked that the plane has no negative element)
        branch->f[p] = plane_normaliser(branch->scale, plane_range(xp, g.H * g.W).first);
        br = branch->plane(p, channels, taps);
        plane.branch = &br;
        plane.branch_grad = &branch_grad;
        branch_grad.clear();
      }
      if (!tiled) {
        std::fill(grad_pad.begin(), grad_pad.end(), 0.f);
        buf.prepare_plane(xp, g);
        buf.prepare_powers(alpha_value);
      }
      const bool gather = !tiled && buf.gather_maps && buf.powers_ready && alpha_value >= kMinSumAlpha;
      if (buf.flat) {  // (with a branch) the plane's outputs as one row, their saved rows and grad_y copied in
        for (int64_t o = 0; o < g.oh; ++o) {
          const int64_t out = o * g.ow, at = o * g.Wpad;
          std::copy_n(plane.y + out, g.ow, buf.flat_y.data() + at);
          std::copy_n(plane.den + out, g.ow, buf.flat_den.data() + at);
          std::copy_n(plane.grad + out, g.ow, buf.flat_grad.data() + at);
        }
        plane.y = buf.flat_y.data();
        plane.den = buf.flat_den.data();
        plane.grad = buf.flat_grad.data();
        buf.gather(xp, g, 0);
        backward_row_general(buf, buf.flat_g, 0, AlphaRow{nullptr, 0.f, buf.flat_g.ow}, plane, need_alpha,
                             grad_pad.data());
      } else {
        for (int64_t o = 0; o < g.oh; ++o) {
          if (tiled) {
            const AlphaRow a_row{alpha_plane ? alpha_plane + o * g.ow : nullptr, alpha_value, g.ow};
            backward_row_2x2(xp + 2 * o * g.W, g, o, a_row, plane, need_alpha, gx_plane + 2 * o * g.W);
          } else {
            buf.gather(xp, g, o);
            backward_row_general(buf, g, o, buf.alpha_row(alpha_plane, alpha_value, g, o), plane, need_alpha,
                                 grad_pad.data(), gather);
          }
        }
      }
      if (gather) gather_backward(buf, g, grad_pad.data());
      if (branch != nullptr) {
        branch_grad.store(branch_out + p * (taps + 3), br.f);
      } else if (need_alpha && !dense_alpha) {
        ga_data[p] = static_cast<real_t>(plane.grad_alpha_sum);
      }
      if (!tiled) {  // the input's part of the padded gradient plane, each element's sum flushed
        for (int64_t h = 0; h < g.H; ++h) {
          const real_t* src = grad_pad.data() + (h + g.ph) * g.Wpad + g.pw;
          real_t* dst = gx_plane + h * g.W;
          for (int64_t w = 0; w < g.W; w += kLanes) {
            const int count = static_cast<int>(std::min<int64_t>(kLanes, g.W - w));
            flush_subnormal(Vec::loadu(src + w, count)).store(dst + w, count);
          }
        }
      }
    }
  });
}

}  // namespace polypool::ops::detail

namespace polypool::ops {

using namespace detail;

// The four entry points, as p_pool2d.h declares and describes them.

std::tuple<torch::Tensor, torch::Tensor, bool> p_pool2d_forward(
    torch::Tensor x, torch::Tensor alpha, bool dense_alpha, std::vector<int64_t> kernel, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> out_size, bool need_state, bool include_pad) {
  Geometry g = make_geometry(x, kernel, stride, padding, out_size);
  g.include_pad = include_pad;
  check_inputs(x, alpha, dense_alpha, g);
  auto y = torch::empty({x.size(0), x.size(1), g.oh, g.ow}, x.options());
  auto den_out = need_state ? torch::empty_like(y) : torch::empty({0}, x.options());
  const bool negative = forward_impl(x, alpha.data_ptr<real_t>(), dense_alpha, g, y.data_ptr<real_t>(),
                                     need_state ? den_out.data_ptr<real_t>() : nullptr, nullptr, nullptr);
  return {y, den_out, negative};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, bool> dense_p_pool2d_forward(
    torch::Tensor x, torch::Tensor k, torch::Tensor slope, torch::Tensor w, torch::Tensor b, double lo, double hi,
    double scale, std::vector<int64_t> kernel, std::vector<int64_t> stride, std::vector<int64_t> padding,
    std::vector<int64_t> out_size, bool need_state, bool include_pad) {
  Geometry g = make_geometry(x, kernel, stride, padding, out_size);
  g.include_pad = include_pad;
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == kRealType && x.is_contiguous() && x.dim() == 4,
              "p_pool2d_cpu: x must be a contiguous 4-D ", kRealName, " CPU tensor");
  check_branch(x, g, k, slope, w, b);
  auto y = torch::empty({x.size(0), x.size(1), g.oh, g.ow}, x.options());
  auto alpha = torch::empty_like(y);
  auto den_out = need_state ? torch::empty_like(y) : torch::empty({0}, x.options());  // m: recomputed in backward
  auto f = torch::empty({x.size(0) * x.size(1)}, x.options());  // per plane, for the branch (the backward's own)
  auto stats = torch::empty({x.size(0) * x.size(1), 3}, x.options());
  BranchArgs args{k.data_ptr<real_t>(), slope.data_ptr<real_t>(), w.data_ptr<real_t>(), b.data_ptr<real_t>(),
                  static_cast<real_t>(lo), static_cast<real_t>(hi), static_cast<real_t>(scale), f.data_ptr<real_t>(),
                  stats.data_ptr<real_t>()};
  const bool negative = forward_impl(x, nullptr, true, g, y.data_ptr<real_t>(),
                                     need_state ? den_out.data_ptr<real_t>() : nullptr, &args, alpha.data_ptr<real_t>());
  return {y, alpha, den_out, stats, negative};
}

std::vector<torch::Tensor> p_pool2d_backward(
    torch::Tensor x, torch::Tensor alpha, bool dense_alpha, torch::Tensor den_t, torch::Tensor y_t,
    torch::Tensor grad_y, bool need_alpha, std::vector<int64_t> kernel, std::vector<int64_t> stride,
    std::vector<int64_t> padding) {
  const Geometry g = make_geometry(x, kernel, stride, padding, {den_t.size(2), den_t.size(3)});
  check_inputs(x, alpha, dense_alpha, g);
  check_saved(den_t, y_t, grad_y);
  const int64_t planes = x.size(0) * x.size(1);
  auto grad_x = torch::empty_like(x);
  // dense alpha: one gradient per output; otherwise one per plane, reduced here (no output-sized temporary)
  auto grad_alpha = !need_alpha ? torch::Tensor() : dense_alpha ? torch::empty_like(den_t) : torch::zeros({planes}, x.options());
  backward_impl(x, alpha.data_ptr<real_t>(), dense_alpha, g, den_t, y_t, grad_y, need_alpha,
                grad_x.data_ptr<real_t>(), need_alpha ? grad_alpha.data_ptr<real_t>() : nullptr, nullptr, nullptr);
  return {grad_x, grad_alpha};
}

std::vector<torch::Tensor> dense_p_pool2d_backward(
    torch::Tensor x, torch::Tensor den_t, torch::Tensor y_t, torch::Tensor grad_y, torch::Tensor k,
    torch::Tensor slope, torch::Tensor w, torch::Tensor b, double lo, double hi, double scale,
    std::vector<int64_t> kernel, std::vector<int64_t> stride, std::vector<int64_t> padding) {
  const Geometry g = make_geometry(x, kernel, stride, padding, {den_t.size(2), den_t.size(3)});
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == kRealType && x.is_contiguous() && x.dim() == 4,
              "p_pool2d_cpu: x must be a contiguous 4-D ", kRealName, " CPU tensor");
  check_saved(den_t, y_t, grad_y);
  check_branch(x, g, k, slope, w, b);
  auto grad_x = torch::empty_like(x);
  auto partial = torch::empty({x.size(0) * x.size(1), g.kh * g.kw + 3}, x.options());
  auto f = torch::empty({x.size(0) * x.size(1)}, x.options());  // per plane, filled by backward_impl
  BranchArgs args{k.data_ptr<real_t>(), slope.data_ptr<real_t>(), w.data_ptr<real_t>(), b.data_ptr<real_t>(),
                  static_cast<real_t>(lo), static_cast<real_t>(hi), static_cast<real_t>(scale), f.data_ptr<real_t>()};
  backward_impl(x, nullptr, true, g, den_t, y_t, grad_y, true, grad_x.data_ptr<real_t>(), nullptr, &args,
                partial.data_ptr<real_t>());
  return {grad_x, partial};
}

}  // namespace polypool::ops
