// The per-thread buffers of the fused CPU kernel (cpu/p_pool2d_kernel.cpp): RowBuffers, through which the forward
// and the backward read the kh*kw window elements of a row of outputs (with their log2 splits and the plane's powers),
// and PlanePowers, the weights of a vector of windows from those powers.
#pragma once

#include "p_pool2d_common.h"
#include "vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace polypool::ops::detail {

// Whether the forward, too, reads the log2 splits where windows overlap (the backward always does): with the rows
// read in place, two subtractions per window element cost less than a log each (timings:
// results/bench/cpu_kernel_notes.md)
constexpr bool kForwardSplit = true;
// Layer/channel alpha at overlapping stride-1 windows: the weights from the plane's powers (prepare_powers), one
// exp per element instead of one per window element (a 3x3/1 window reads each element 9 times). Not at stride 2,
// where an element is in only 2.25 windows of a 3x3: the exact powers cost more than they save there (timings of
// both: results/bench/cpu_kernel_notes.md).
// Only where the product errors of the exponent are exact: with hardware FMA (the AVX2 float build), or in double.
#if defined(PPOOL_FLOAT_AVX2) || defined(PPOOL_DOUBLE)
constexpr bool kPlanePowers = true;
#else
constexpr bool kPlanePowers = false;
#endif
// P(plane max) = 2^kPowerOffset, and a window takes the powers only if its largest is at least 2^-kPowerOffset: in
// float the powers span 2^100 .. 2^-100, in double 2^900 .. 2^-900; below the smallest normal they are 0.
constexpr real_t kPowerOffset = sizeof(real_t) == 4 ? 100 : 900;
const Vec kPowerFloor(std::ldexp(real_t(1), -static_cast<int>(kPowerOffset)));
// A power that underflows is a weight p under 2^-26 (float; 2^-122 in double) of its window's largest, but its dx
// has r^(a-1) = p / r too, which stays above 2^-24 (float; 2^-53 in double) only for a below 13 (double: 1.8):
// below kLostAlpha, a window with such an element takes the exact path (which, for a just above 1, takes r^(a-1)
// from log2 r: kNearOne).
constexpr real_t kLostAlpha = sizeof(real_t) == 4 ? 16 : 4;

// GatherBackward: windows of at most kMaxGatherTaps elements, whose factors are at most kMaxGatherFactor, so that
// their sums stay finite (float: 2^10 * 2^110 < 2^128)
constexpr int64_t kMaxGatherTaps = 1024;
// The forward's row sums and GatherBackward work from P and x / M alone, for a >= kMinSumAlpha: a positive power
// P = (x / M)^a 2^kPowerOffset >= 2^-126 then has x / M >= 2^(-226 / a) >= 2^-113 (double: 2^-961), a normal number
// (below it, with a near 1, x / M would be subnormal or 0 while P, and Q = P / (x / M), are not negligible), and an
// element whose ratio to its window max is subnormal has P = 0, as the other paths count it.
constexpr real_t kMinSumAlpha = 2;
const Vec kMaxGatherFactor(std::ldexp(real_t(1), static_cast<int>(kPowerOffset) + 10));

// Where the arithmetic reads the kh*kw window elements of a row of outputs: for each window offset d = (di, dj), a
// contiguous row whose element j is that offset's element of output j (zero in the padding and the ceil-mode
// overhang; the vector tail past ow holds zeros or input values, computed but never stored).
//
// Strides 1 and 2 (every pooling of the networks here) point into a zero-padded copy of the plane, made once per
// plane: with stride 1 each offset's row is the padded input row shifted by dj; with stride 2 the padded rows are
// split into their even and odd columns ("phases"), and offset dj reads phase dj % 2 shifted by dj / 2. Other
// strides copy each offset's row out of the plane for every output row (gather_row).
struct RowBuffers {
  std::vector<real_t> windows, col_mask, alpha, tmp;
  std::vector<char> full_cols;  // per dj: every output's column dj is part of its window (no mask needed)
  std::vector<const real_t*> win, win_e, win_l;  // per offset d: the row of x (and of its log2 splits) at output 0
  // overlapping windows: the log2 splits of the plane (computed once per plane), read per element instead of a log
  bool split;
  bool direct;  // stride 1 or 2: the rows are read in place from the padded (phase-split) plane
  int64_t phase_len = 0;  // the columns of one phase row of the padded plane
  int64_t run_rows = 0, run_first = 0, run_len = 0;  // stride 1: the input's rows in it (for_each_input_run)
  std::vector<real_t> padded, padded_e, padded_l, padded_row;  // sw phases of Hpad rows of phase_len
  std::vector<real_t> plane_e, plane_l, windows_e, windows_l;  // the splits of the plane and rows (other strides)
  // One alpha for the whole plane (layer/channel alpha) and overlapping stride-1 windows: the plane's powers
  // P = (x / M)^a * 2^kPowerOffset (M the plane max), one exp per element instead of one per window element; a
  // window's weights r^a = (x / m)^a are then P / P(m) (PlanePowers). Where that loses range, the exact path.
  bool plane_powers;
  bool powers_ready = false;  // this plane's powers are computed (else: the exact path for the whole plane)
  bool check_lost = false;    // alpha < kLostAlpha: an underflowed power of a positive ratio sends its windows exact
  std::vector<real_t> padded_p;
  std::vector<const real_t*> win_p;
  real_t plane_top = 0.f;  // the plane max M of the powers
  // The backward's per-output maps of GatherBackward (stride 1 with the plane's powers): rows for outputs
  // -(kh - 1) .. max(oh, Hpad) - 1 (zero outside 0 .. oh - 1), output j at column j + kLanes (zero left of it and
  // past ow)
  bool gather_maps;
  int64_t map_stride = 0;
  std::vector<real_t> map_a, map_b;
  // The forward's window sums from the powers (stride 1): per padded row and output column j, the sums over the
  // window's columns of P and of P x s (prepare_box_sums), s = 2^(1 - e) for the plane max M in [2^e, 2^(e+1)), so
  // that x s < 4 (x up to 3e38 times P up to 2^100 would overflow) exactly; zero in the padding rows. A window far
  // below M can have sum P x s below the normal range: forward_row_general checks P(m) m s.
  bool box_sums;
  bool box_sums_ready = false;
  real_t box_scale = 1.f;
  std::vector<real_t> row_p, row_px;
  // Flat outputs (flat_outputs; the fused dense branch): the padded plane's rows are Wpad (phase_len) apart, and the
  // plane's per-output rows are copied between the tensors (rows of ow) and these (rows of Wpad): the forward's y,
  // den and alpha; the backward's y, den and grad_y, with den = 1 and grad_y = 0 in the columns never stored, and
  // flat_live = 1 in the columns that are outputs (0 in the others and past oh * Wpad)
  bool flat;
  Geometry flat_g;
  std::vector<real_t> flat_y, flat_den, flat_alpha, flat_grad, flat_live;
  RowBuffers(const Geometry& g, bool dense_alpha, bool use_split, bool constant_alpha = false, bool backward = false,
             bool flat_layout = false)
      : col_mask(g.kw * g.ow_padded, 0.f), alpha(dense_alpha ? g.ow_padded : 0, 0.f), tmp(g.ow_padded),
        full_cols(g.kw, 1), win(g.kh * g.kw), win_e(g.kh * g.kw), win_l(g.kh * g.kw),
        split(use_split && (g.kh > g.sh || g.kw > g.sw)), direct(g.sw == 1 || g.sw == 2),
        plane_powers(constant_alpha && split && g.sw == 1 && kPlanePowers), win_p(g.kh * g.kw),
        gather_maps(backward && plane_powers && g.sh == 1 && g.kw <= kLanes && g.kh * g.kw <= kMaxGatherTaps),
        box_sums(!backward && plane_powers && g.sh == 1), flat(flat_layout && flat_outputs(g)),
        flat_g(flat ? flat_geometry(g) : g) {
    if (flat) {
      flat_y.assign(flat_g.ow_padded, 0.f);
      flat_den.assign(flat_g.ow_padded, 1.f);
      flat_alpha.assign(flat_g.ow_padded, 0.f);
      flat_grad.assign(flat_g.ow_padded, 0.f);
      flat_live.assign(flat_g.ow_padded, 0.f);
      for (int64_t o = 0; o < g.oh; ++o) std::fill_n(flat_live.begin() + o * g.Wpad, g.ow, 1.f);
    }
    if (box_sums) {
      row_p.assign(g.Hpad * g.ow_padded, 0.f);
      row_px.assign(row_p.size(), 0.f);
    }
    if (gather_maps) {
      map_stride = g.Wpad + 3 * kLanes;
      map_a.assign((g.kh - 1 + std::max(g.oh, g.Hpad) + 1) * map_stride, 0.f);
      map_b.assign(map_a.size(), 0.f);
    }
    if (direct) {
      // phase t holds padded columns t, t + sw, ...: ow_padded + (kw - 1) / sw of them are read, and the padded
      // input's own columns must fit (its width rounded up to whole phases)
      // (flat outputs: rows Wpad apart, read in whole vectors up to flat_g.ow_padded - 1 + (kh - 1) Wpad + kw - 1 <
      // Hpad Wpad + kLanes + kw)
      if (flat) {
        phase_len = g.Wpad;
        padded.assign(g.Hpad * phase_len + 2 * kLanes + g.kw, 0.f);
      } else {
        phase_len = std::max(g.ow_padded + (g.kw - 1) / g.sw, (g.Wpad + g.sw - 1) / g.sw) + kLanes;
        padded.assign(g.sw * g.Hpad * phase_len, 0.f);
      }
      if (g.sw == 1) {
        run_rows = g.H;
        run_first = g.ph * phase_len + g.pw;
        // pw + run_len <= Wpad + kLanes <= phase_len; with flat outputs (phase_len = Wpad) a run goes on into the
        // next rows (several where Wpad < kLanes), whose elements are already copied when the splits are taken
        run_len = (g.W + kLanes - 1) / kLanes * kLanes;
      }
      if (plane_powers) padded_p.resize(padded.size());  // (plane_powers implies stride 1: direct)
      if (g.sw == 2) padded_row.assign(2 * phase_len + 2 * kLanes, 0.f);
      if (split) {
        padded_e.assign(padded.size(), kZeroSplit);  // the padding's (at stride 1 never computed: for_each_input_run)
        padded_l.resize(padded.size());
      }
    } else {
      windows.resize(g.kh * g.kw * g.ow_padded);
      if (split) {
        plane_e.resize(g.H * g.W);
        plane_l.resize(g.H * g.W);
        windows_e.resize(windows.size());
        windows_l.resize(windows.size());
      }
    }
    for (int64_t dj = 0; dj < g.kw; ++dj)
      for (int64_t j = 0; j < g.ow; ++j) {
        const bool in = g.col_in_window(j, dj);
        col_mask[dj * g.ow_padded + j] = in ? 1.f : 0.f;
        if (!in) full_cols[dj] = 0;
      }
  }
  // the element at window offset d of outputs j .. j + kLanes - 1 (and its splits)
  inline Vec x(int64_t d, int64_t j) const { return Vec::loadu(win[d] + j); }
  inline Vec e(int64_t d, int64_t j) const { return Vec::loadu(win_e[d] + j); }
  inline Vec l(int64_t d, int64_t j) const { return Vec::loadu(win_l[d] + j); }
  inline Vec power(int64_t d, int64_t j) const { return Vec::loadu(win_p[d] + j); }

  // fn(start, len) over the stretches of the padded plane that prepare_plane's splits and prepare_powers must cover.
  // Stride 1: the input's own rows, from its first column on for a whole number of vectors (the rest of a run is
  // padding); the padding's splits and powers are never used (a zero's are masked: its r is 0), so a small map
  // (inception_v3's 8x8: 64 of the 180 padded elements) is not prepared for its padding every plane.
  // Stride 2 (phase-split rows; no plane powers there): the whole plane, its length not a whole number of vectors.
  template <class Fn>
  void for_each_input_run(const Fn& fn) const {
    if (run_rows == 0) {
      fn(0, static_cast<int64_t>(padded.size()));
      return;
    }
    for (int64_t h = 0; h < run_rows; ++h) fn(run_first + h * phase_len, run_len);
  }

  // After prepare_plane: the powers P of the padded plane for the plane's alpha a (see PlanePowers). Not for a = 0
  // (0^0 = 1 makes zeros count) or an all-zero, NaN or infinite plane: those take the exact path.
  void prepare_powers(real_t a) {
    powers_ready = false;
    if (!plane_powers || !(a > 0)) return;
    Vec hi_v(0.f);
    for_each_input_run([&](int64_t start, int64_t len) {
      for (int64_t i = start; i < start + len; i += kLanes)
        hi_v = at::vec::maximum(hi_v, Vec::loadu(padded.data() + i));
    });
    real_t lanes[kLanes];
    hi_v.store(lanes);
    const real_t top = *std::max_element(lanes, lanes + kLanes);
    plane_top = top;
    if (!(top >= std::numeric_limits<real_t>::min()) || !std::isfinite(top) ||
        std::any_of(lanes, lanes + kLanes, [](real_t v) { return std::isnan(v); }))
      return;
    Vec e_top, l_top;
    split_log2(Vec(top), e_top, l_top);
    const Vec alpha(a), offset(kPowerOffset);
    // a + b exactly as sum + error (Knuth's TwoSum)
    auto two_sum = [](const Vec& a, const Vec& b, Vec& error) {
      const Vec sum = a + b, back = sum - a;
      error = error + ((a - (sum - back)) + (b - back));
      return sum;
    };
    for_each_input_run([&](int64_t start, int64_t len) {
      for (int64_t i = start; i < start + len; i += kLanes) {
        const Vec x = Vec::loadu(padded.data() + i);
        // 2^(a log2(x / M) + offset). The exponent reaches |a log2(x / M)| ~ 200, where a single rounding is already
        // ~1e-5 relative in the power: its parts a (e - e_M) and a (l - l_M) are summed with their rounding errors
        // carried along (error), and the exponent's integer part is applied exactly.
        const Vec whole = Vec::loadu(padded_e.data() + i) - e_top;  // an integer: exact
        const Vec fraction = Vec::loadu(padded_l.data() + i) - l_top;
        const Vec whole_product = alpha * whole, fraction_product = alpha * fraction;
        Vec error = at::vec::fmadd(alpha, whole, Vec(0.f) - whole_product) +
                    at::vec::fmadd(alpha, fraction, Vec(0.f) - fraction_product);
        const Vec exponent = two_sum(two_sum(offset, whole_product, error), fraction_product, error);
        // 2^exponent = 2^n 2^f, n = round(exponent) and f = exponent - n (exact, |f| <= 1/2) where exp_u20 is
        // accurate; below 2^-126 the power is 0 (a weight under 2^-26 of its window's largest, given kPowerFloor)
        const Vec whole_exponent = exponent.round();
        const Vec small = ((exponent - whole_exponent + error) * Vec(kLn2)).exp_u20();
        const Vec power = Vec::blendv(small * pow2_int(at::vec::maximum(whole_exponent, kMinNormalLog2)), Vec(0.f),
                                      whole_exponent < kMinNormalLog2);
        Vec::blendv(power, Vec(0.f), x < kTiny).store(padded_p.data() + i);
      }
    });
    powers_ready = true;
    check_lost = a < kLostAlpha;
  }

  // After prepare_powers (forward, stride 1): the window sums of P and P x along each padded input row, so that a
  // window's den and y come from kh of them (forward_row_general). The padding rows stay zero.
  void prepare_box_sums(const Geometry& g, real_t a) {
    box_sums_ready = box_sums && powers_ready && a >= kMinSumAlpha;
    if (!box_sums_ready) return;
    box_scale = std::ldexp(real_t(1), 1 - std::ilogb(plane_top));  // a normal number for any normal plane_top
    const Vec scale(box_scale);
    for (int64_t row = g.ph; row < g.ph + g.H; ++row) {
      const real_t* p_row = padded_p.data() + row * phase_len;
      const real_t* x_row = padded.data() + row * phase_len;
      for (int64_t j = 0; j < g.ow_padded; j += kLanes) {
        Vec sum_p(0.f), sum_px(0.f);
        for (int64_t dj = 0; dj < g.kw; ++dj) {
          const Vec power = Vec::loadu(p_row + j + dj);
          sum_p = sum_p + power;
          sum_px = at::vec::fmadd(power, Vec::loadu(x_row + j + dj) * scale, sum_px);
        }
        sum_p.store(row_p.data() + row * g.ow_padded + j);
        sum_px.store(row_px.data() + row * g.ow_padded + j);
      }
    }
  }

  // once per plane, before its rows: the padded copy (strides 1 and 2) and the splits
  void prepare_plane(const real_t* plane, const Geometry& g) {
    if (!direct) {
      if (split) split_plane(plane, g.H * g.W, plane_e.data(), plane_l.data());
      return;
    }
    // only the input's own elements are written (positive subnormals as 0): the padding stays zero from the constructor
    const int64_t phase_size = g.Hpad * phase_len;
    for (int64_t h = 0; h < g.H; ++h) {
      const real_t* src = plane + h * g.W;
      real_t* dst = padded.data() + (h + g.ph) * phase_len;
      if (g.sw == 1) {
        copy_flushed(src, g.W, dst + g.pw);
      } else {  // padded row (zeros, the row, zeros), then its even and odd columns
        copy_flushed(src, g.W, padded_row.data() + g.pw);
        for (int64_t c = 0; c < phase_len; c += kLanes) {
          const auto halves = at::vec::deinterleave2(Vec::loadu(padded_row.data() + 2 * c),
                                                     Vec::loadu(padded_row.data() + 2 * c + kLanes));
          halves.first.store(dst + c, static_cast<int>(std::min<int64_t>(kLanes, phase_len - c)));
          halves.second.store(dst + phase_size + c, static_cast<int>(std::min<int64_t>(kLanes, phase_len - c)));
        }
      }
    }
    if (split)
      for_each_input_run([&](int64_t start, int64_t len) {
        split_plane(padded.data() + start, len, padded_e.data() + start, padded_l.data() + start);
      });
  }
  // point win (and win_e, win_l) at the rows of output row o
  void gather(const real_t* plane, const Geometry& g, int64_t o) {
    for (int64_t di = 0; di < g.kh; ++di)
      for (int64_t dj = 0; dj < g.kw; ++dj) {
        const int64_t d = di * g.kw + dj;
        if (direct) {
          const int64_t at = (dj % g.sw) * g.Hpad * phase_len + (o * g.sh + di) * phase_len + dj / g.sw;
          win[d] = padded.data() + at;
          if (plane_powers) win_p[d] = padded_p.data() + at;
          if (split) {
            win_e[d] = padded_e.data() + at;
            win_l[d] = padded_l.data() + at;
          }
          continue;
        }
        const int64_t at = d * g.ow_padded;
        gather_row(plane, g, o, di, dj, windows.data() + at, true);
        win[d] = windows.data() + at;
        if (split) {
          gather_row(plane_e.data(), g, o, di, dj, windows_e.data() + at, false, kZeroSplit);
          gather_row(plane_l.data(), g, o, di, dj, windows_l.data() + at);
          win_e[d] = windows_e.data() + at;
          win_l[d] = windows_l.data() + at;
        }
      }
  }
  AlphaRow alpha_row(const real_t* alpha_plane, real_t alpha_value, const Geometry& g, int64_t o) {
    if (alpha_plane == nullptr) return AlphaRow{nullptr, alpha_value, g.ow};
    std::copy(alpha_plane + o * g.ow, alpha_plane + (o + 1) * g.ow, alpha.begin());
    return AlphaRow{alpha.data(), 0.f, g.ow};
  }
};

// The weights r^a = (x / m)^a of one vector of windows from the plane's powers: P / P(m), P(m) being the window's
// largest power. Usable when every window of the vector (its first `count` lanes) has P(m) >= kPowerFloor, or is all
// zero (r = 1 there, weight 1), and, for alpha < kLostAlpha, no element of positive ratio has lost its power to
// underflow: its weight would be negligible, but not r^(a-1) in its dx (about 1 at a = 1). Otherwise the exact path.
struct PlanePowers {
  Vec top, inv_top, zero;  // P(m), the window's largest power
  bool usable = false;
  PlanePowers(const RowBuffers& buf, int64_t taps, int64_t j, int64_t count, const Normaliser& n) {
    if (!buf.powers_ready) return;
    Vec lost(0.f);
    top = buf.power(0, j);
    for (int64_t d = 1; d < taps; ++d) top = at::vec::maximum(top, buf.power(d, j));
    if (buf.check_lost)
      for (int64_t d = 0; d < taps; ++d)
        lost = lost | ((buf.power(d, j) == Vec(0.f)) & (buf.x(d, j) * n.inv_m >= kTiny));
    zero = n.zero > Vec(0.f);
    const Vec live = lanes_below(count);
    const Vec fine = (((top >= kPowerFloor) | zero) & ~(lost & ~zero)) | ~live;
    usable = all_lanes(fine);
    inv_top = Vec::blendv(top, Vec(1.f), zero).reciprocal();
  }
  // the weight of an element of power P and ratio r (0 where r counts as 0: zeros, padding, subnormal ratios)
  inline Vec weight(const Vec& power, const Vec& r) const {
    return Vec::blendv(Vec::blendv(power * inv_top, Vec(0.f), r < kTiny), Vec(1.f), zero);
  }
};

}  // namespace polypool::ops::detail
