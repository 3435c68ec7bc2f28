// Fused CPU kernels for P-pooling (float32, NCHW; a float64 build for the tests): forward and analytic backward in
// one pass over the windows.
//
// The same max-normalised arithmetic as the reference op (polypool/pooling/functional.py), with
//   r = x / m (window max),  p = r^a = exp(a * log r),  den = sum p,  q = sum p r / den,  y = m q,
//   dx_i = g/den * ((a+1) p_i - a q p_i / r_i),   da = g m / den * sum_i p_i (r_i - q) log r_i,
// and the same conventions (0^0 = 1, an all-zero window has r = 1, 0 * log 0 = 0, r^(a-1) at r = 0 is 1 if a = 1
// and 0 otherwise; a window does not include its ceil-mode overhang).
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

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <limits>
#include <tuple>
#include <vector>

namespace {

// The kernels compute in real_t: float for the real thing; double (built with -DPPOOL_DOUBLE) only so that the
// tests can gradcheck these same formulas in float64.
#if defined(PPOOL_DOUBLE)
using real_t = double;
constexpr auto kRealType = at::kDouble;
constexpr const char* kRealName = "float64";
#else
using real_t = float;
constexpr auto kRealType = at::kFloat;
constexpr const char* kRealName = "float32";
#if defined(CPU_CAPABILITY_AVX2)
#define PPOOL_FLOAT_AVX2  // the hand-written AVX2 float paths below (the exponent split, exact powers of 2)
#endif
#endif
using Vec = at::vec::Vectorized<real_t>;
constexpr int64_t kLanes = Vec::size();

struct Geometry {
  int64_t H, W, kh, kw, sh, sw, ph, pw, oh, ow;
  bool include_pad = true;  // count_include_pad: zero padding is part of each window (else only the input is)
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
  // Whether offset di of the windows of output row o is part of the window: inside the padded input (the ceil-mode
  // overhang is not), and inside the input itself when padding is not counted.
  inline bool row_in_window(int64_t o, int64_t di) const {
    if (include_pad) return o < valid_rows[di];
    const int64_t row = o * sh + di - ph;
    return row >= 0 && row < H;
  }
  inline bool col_in_window(int64_t j, int64_t dj) const {
    if (include_pad) return j < valid_cols[dj];
    const int64_t col = j * sw + dj - pw;
    return col >= 0 && col < W;
  }
};

// Flat outputs (the fused dense branch, stride 1): the padded plane is stored with its rows Wpad apart, and the
// outputs of the whole plane are computed as one row of oh * Wpad, output (o, j) at t = o * Wpad + j, whose window
// offset (di, dj) is the element t + di * Wpad + dj: a constant shift, as for one row of outputs. The kw - 1
// columns t % Wpad >= ow of each row are windows that wrap into the next row, computed and never stored (their
// gradients masked). Only where it fills the vectors better than one row of outputs at a time: ow_padded > Wpad
// (inception_v3's 17x17: 17 of 19 lanes live instead of 17 of 24; 35x35 35/37 instead of 35/40; not 8x8, 8/10
// instead of 8/8). The windows must stay inside the padded input with the padding counted (the forward's
// row_in_window and col_mask are then always true); the backward's Geometry always counts it, and does not depend on it.
inline bool flat_outputs(const Geometry& g) {
  return g.sh == 1 && g.sw == 1 && g.include_pad && g.Hpad == g.H + 2 * g.ph && g.Wpad == g.W + 2 * g.pw &&
         g.Wpad < g.ow_padded;
}

// The Geometry of flat outputs: one row (o = 0) of oh * Wpad outputs over the same padded plane
inline Geometry flat_geometry(const Geometry& g) {
  Geometry flat = g;
  flat.oh = 1;
  flat.ow = g.oh * g.Wpad;
  flat.ow_padded = (flat.ow + kLanes - 1) / kLanes * kLanes;
  return flat;
}

// A positive subnormal x is 0 (they count as 0); negative ones stay, for the negative-input check.
inline real_t flush_positive_subnormal(real_t x) { return x > 0 && x < std::numeric_limits<real_t>::min() ? 0 : x; }

// buf[j] = the padded input at (row o*sh + di, column j*sw + dj), `fill` in the padding and the vector tail (0 for
// x, whose positive subnormals are written as 0 when flush is set; kZeroSplit for the exponents of splits). For
// strides of 3 and more: strides 1 and 2 read their rows in place (RowBuffers::direct).
inline void gather_row(const real_t* plane, const Geometry& g, int64_t o, int64_t di, int64_t dj, real_t* buf,
                       bool flush = false, real_t fill = 0) {
  const int64_t row = o * g.sh + di - g.ph;
  if (row < 0 || row >= g.H) {
    std::fill(buf, buf + g.ow_padded, fill);
    return;
  }
  // outputs j whose column j*sw + dj - pw lies inside the input: [first, last)
  const int64_t offset = dj - g.pw;
  const int64_t first = offset >= 0 ? 0 : (-offset + g.sw - 1) / g.sw;
  const int64_t last = std::min(g.ow, (g.W - 1 - offset) / g.sw + 1);
  const real_t* src = plane + row * g.W + offset;
  std::fill(buf, buf + first, fill);
  for (int64_t j = first; j < last; ++j) buf[j] = flush ? flush_positive_subnormal(src[j * g.sw]) : src[j * g.sw];
  std::fill(buf + std::max(first, last), buf + g.ow_padded, fill);
}

// dst[i] = src[i] for i < n, positive subnormals as 0
inline void copy_flushed(const real_t* src, int64_t n, real_t* dst) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const int count = static_cast<int>(std::min<int64_t>(kLanes, n - i));
    const Vec x = Vec::loadu(src + i, count);
    Vec::blendv(x, Vec(0.f), (x > Vec(0.f)) & (x < Vec(std::numeric_limits<real_t>::min()))).store(dst + i, count);
  }
}

// Per-plane alpha: a constant (layer/channel alpha) or one row of a dense alpha map.
struct AlphaRow {
  const real_t* dense;  // nullptr when constant
  real_t value;
  int64_t ow;          // the row's length: loads stop there
  inline Vec load(int64_t j) const {
    return dense ? Vec::loadu(dense + j, static_cast<int>(std::min<int64_t>(kLanes, ow - j))) : Vec(value);
  }
};

// log2 x = e + l, with e an integer and l in [-1/2, 1/2) (AVX2 float: e the binary exponent, one more where the
// mantissa is above sqrt(2); elsewhere l in [0, 1)); only differences of splits are used. Overlapping windows read each
// element several times: with its split computed once, log2(x/m) = (e_x - e_m) + (l_x - l_m) costs two
// subtractions per window instead of a log, and stays accurate to ~1e-7 absolute whatever the magnitude of x (a
// plain log x - log m would lose |log x| * 6e-8). Zeros and subnormals (which count as 0) split as (kZeroSplit, 0): an
// element's d = log2(x / m) is then -max (finite: 0 * d = 0), so its weight 2^(a d) is 0 for every a > 0 (and 1 at
// a = 0, 0^0 = 1) without a mask per window element; in an all-zero window d is taken as 0.
constexpr real_t kLn2 = static_cast<real_t>(0.69314718055994530942);
constexpr real_t kZeroSplit = -std::numeric_limits<real_t>::max();
inline void split_log2(const Vec& x, Vec& e, Vec& l) {
#if defined(PPOOL_FLOAT_AVX2)
  // The mantissa is taken into [sqrt(1/2), sqrt(2)) (halved, and e one up, above sqrt(2)), and log2(1 + f) = f P(f)
  // with P of degree 8, least-squares fitted on [sqrt(1/2) - 1, sqrt(2) - 1]: at most 6.3e-8 from log2 x over every
  // float mantissa, as accurate as SLEEF's 1-ulp log2 (which took a sixth of P-pooling's 3x3/2 fwd+bwd) at a few FMAs.
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i exponent = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(0xff)),
                                            _mm256_set1_epi32(127));
  __m256 mantissa = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f800000)));
  const __m256 halve = _mm256_cmp_ps(mantissa, _mm256_set1_ps(1.41421356f), _CMP_GT_OQ);
  mantissa = _mm256_blendv_ps(mantissa, _mm256_mul_ps(mantissa, _mm256_set1_ps(0.5f)), halve);
  const __m256 counts_as_zero = _mm256_cmp_ps(x, _mm256_set1_ps(std::numeric_limits<float>::min()), _CMP_LT_OQ);
  e = Vec(_mm256_blendv_ps(_mm256_add_ps(_mm256_cvtepi32_ps(exponent), _mm256_and_ps(halve, _mm256_set1_ps(1.f))),
                           _mm256_set1_ps(kZeroSplit), counts_as_zero));
  const __m256 f = _mm256_sub_ps(mantissa, _mm256_set1_ps(1.f));
  constexpr float kP[9] = {1.4426950216293335f,   -0.7213473320007324f, 0.48091059923171997f,
                           -0.36070483922958374f, 0.2879183292388916f,  -0.23892034590244293f,
                           0.21566985547542572f,  -0.20742103457450867f, 0.12614846229553223f};
  __m256 poly = _mm256_set1_ps(kP[8]);
  for (int i = 7; i >= 0; --i) poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(kP[i]));
  l = Vec(_mm256_andnot_ps(counts_as_zero, _mm256_mul_ps(poly, f)));  // a subnormal's mantissa bits are not its log
#else
  real_t xs[kLanes], es[kLanes], ls[kLanes];
  x.store(xs);
  for (int64_t t = 0; t < kLanes; ++t) {
    int exponent = 0;
    const real_t mantissa = std::frexp(xs[t], &exponent);  // in [0.5, 1)
    const bool normal = xs[t] >= std::numeric_limits<real_t>::min();
    es[t] = normal ? static_cast<real_t>(exponent - 1) : kZeroSplit;
    ls[t] = normal ? std::log2(2.f * mantissa) : 0.f;
  }
  e = Vec::loadu(es);
  l = Vec::loadu(ls);
#endif
}

// log2 r for r in [0, 1]: e + l from the split where ATen's AVX2 vectors are compiled in (a few FMAs, about 1e-7
// absolute), ATen's 1-ulp log2 otherwise; -inf where r counts as 0 (below the smallest normal float), so that r^a =
// 2^(a log2 r) is 0 there for every a > 0.
inline Vec log2_unit(const Vec& r) {
  const Vec minus_inf(-std::numeric_limits<real_t>::infinity());
#if defined(PPOOL_FLOAT_AVX2)
  Vec e, l;
  split_log2(r, e, l);
  return Vec::blendv(e + l, minus_inf, r < Vec(std::numeric_limits<real_t>::min()));
#else
  return Vec::blendv(r.log2(), minus_inf, r < Vec(std::numeric_limits<real_t>::min()));
#endif
}

// 2^t for t <= 127, 0 below 2^-126 (as exp_u20 flushes) and NaN for NaN. AVX2 float: 2^n 2^f with n = round(t), and
// 2^f for |f| <= 1/2 a degree-5 polynomial (relative-error fit with 2^0 = 1 exactly: at most 1.7e-7 from 2^f in
// float Horner, where exp_u20 is 20 ulp), the power of 2 added to its exponent bits: fewer operations than exp_u20
// of t ln 2, which the overlapping windows pay per window element. Elsewhere exp_u20.
inline Vec exp2_upto_127(const Vec& t) {
#if defined(PPOOL_FLOAT_AVX2)
  const __m256 clamped = _mm256_max_ps(_mm256_set1_ps(-127.f), t);  // the second operand, NaN, passes through
  const __m256 whole = _mm256_round_ps(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(clamped, whole);
  constexpr float kC[6] = {1.0f, 0.6931470036506653f, 0.24022242426872253f, 0.05550733581185341f,
                           0.009671512991189957f, 0.001326472614891827f};
  __m256 poly = _mm256_set1_ps(kC[5]);
  for (int i = 4; i >= 0; --i) poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(kC[i]));
  const __m256i bits =
      _mm256_add_epi32(_mm256_castps_si256(poly), _mm256_slli_epi32(_mm256_cvtps_epi32(whole), 23));
  return Vec(_mm256_andnot_ps(_mm256_cmp_ps(clamped, _mm256_set1_ps(-126.f), _CMP_LT_OQ), _mm256_castsi256_ps(bits)));
#else
  return (t * Vec(kLn2)).exp_u20();
#endif
}

// r^a = 2^(a log2 r) for r in [0, 1] (log2_r: its log2_unit), with 0^0 = 1 (a log2 r is 0 * -inf = NaN there).
// Below the smallest normal float, r^a is 0: the a -> inf limit, and no slow denormal arithmetic.
inline Vec pow_unit(const Vec& log2_r, const Vec& a) {
  return Vec::blendv(exp2_upto_127(a * log2_r), Vec(1.f), a == Vec(0.f));
}

// 2^n for integral n in the normal exponent range (float: [-126, 127]), exactly
#if defined(PPOOL_FLOAT_AVX2)
inline Vec pow2_int(const Vec& n) {
  return Vec(_mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23)));
}
#else
inline Vec pow2_int(const Vec& n) {
  real_t lanes[kLanes];
  n.store(lanes);
  for (int64_t t = 0; t < kLanes; ++t) lanes[t] = std::ldexp(real_t(1), static_cast<int>(lanes[t]));
  return Vec::loadu(lanes);
}
#endif

// The split of every element of a plane of n values (into e and l)
inline void split_plane(const real_t* x, int64_t n, real_t* e, real_t* l) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const int count = static_cast<int>(std::min<int64_t>(kLanes, n - i));
    Vec ev, lv;
    split_log2(Vec::loadu(x + i, count), ev, lv);
    ev.store(e + i, count);
    lv.store(l + i, count);
  }
}

// Subnormals count as 0 (as on a GPU that flushes denormals): a window max below the smallest normal float would
// overflow 1/m, and a subnormal element or ratio x/m would overflow p/r (0 * inf = NaN at alpha = 0).
const Vec kTiny(std::numeric_limits<real_t>::min());

// A window max below the smallest normal float flushed to 0 (NaN stays NaN).
inline Vec flush_max(const Vec& m) { return Vec::blendv(m, Vec(0.f), m < kTiny); }

// Input gradients below the smallest normal float (|dx| < 1.2e-38, from the tiny weights r^a of a large alpha) are
// written as 0: left in, they make the next layer's convolution backward several times slower on x86 (measured: 5x
// for VGG16's conv1_2). Applied to each element's finished dx, once, not to every window's term of it.
inline Vec flush_subnormal(const Vec& v) {
  return Vec::blendv(v, Vec(0.f), v.abs() < Vec(std::numeric_limits<real_t>::min()));
}

// d = log2(x / m) from the splits of a window element x (ex, lx) and of its window max m (em, lm). An element that
// counts as 0 has ex = kZeroSplit, so d = -max (finite); in an all-zero window every element has, and so has m: d = 0.
inline Vec log2_ratio(const Vec& ex, const Vec& lx, const Vec& em, const Vec& lm) { return (ex - em) + (lx - lm); }

// log2 of the smallest normal float (-126 in float): a ratio r = x / m below it counts as 0
const Vec kMinNormalLog2(static_cast<real_t>(std::numeric_limits<real_t>::min_exponent - 1));

// r^a = 2^(a d) of d = log2_ratio(...); 1 where a = 0, exactly (a d = 0, and 2^0 = 1), so 0^0 = 1 and an all-zero
// window weighs each element 1. For a >= 1, 2^(a d) is 0 wherever r counts as 0 (d < kMinNormalLog2: a ratio below
// the smallest normal float, or x itself 0, d = -max) without a mask. Below 1 it need not underflow (a = 0.01 at
// d = -130: 0.41; a = 1e-38 at d = -max: 0.09): where the vector of windows has an a < 1 (below_one), the weights of
// those r are set to 0 where a > 0.
inline Vec pow_split(const Vec& d, const Vec& a, bool below_one) {
  const Vec p = exp2_upto_127(a * d);
  return below_one ? Vec::blendv(p, Vec(0.f), (d < kMinNormalLog2) & (a > Vec(0.f))) : p;
}

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
  // The same for an element of the window rows (RowBuffers), where positive subnormals are already 0: r is exactly 0
  // for a zero x, and a ratio below the smallest normal float is left in. Where it is used, such a ratio's weight is
  // 0 all the same (pow_split; PlanePowers::weight; log2_unit's -inf), and the backward counts it as 0 from d or r.
  inline Vec ratio_of_row(const Vec& x) const { return x * inv_m + zero; }
};

inline Vec lanes_below(int64_t count) { return Vec::arange(0.f, 1.f) < Vec(static_cast<real_t>(count)); }

// whether every lane of a comparison mask is set
inline bool all_lanes(const Vec& mask) {
  return Vec::blendv(Vec(1.f), Vec(0.f), mask).zero_mask() == (1 << kLanes) - 1;
}

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

// Where the arithmetic reads the kh*kw window elements of a row of outputs: for each window offset d = (di, dj), a
// contiguous row whose element j is that offset's element of output j (zero in the padding and the ceil-mode
// overhang; the vector tail past ow holds zeros or input values, computed but never stored).
//
// Strides 1 and 2 (every pooling of the networks here) point into a zero-padded copy of the plane, made once per
// plane: with stride 1 each offset's row is the padded input row shifted by dj; with stride 2 the padded rows are
// split into their even and odd columns ("phases"), and offset dj reads phase dj % 2 shifted by dj / 2. Other
// strides copy each offset's row out of the plane for every output row (gather_row).
// Whether the forward, too, reads the log2 splits where windows overlap (the backward always does). With the rows
// read in place it gains (measured fwd+bwd / max_pool2d's: 3x3/1 on (8, 512, 41, 41) 2.04x without, 1.85x with)
constexpr bool kForwardSplit = true;
// Layer/channel alpha at overlapping stride-1 windows: the weights from the plane's powers (prepare_powers), one
// exp per element instead of one per window element. Measured side by side, fwd+bwd / max_pool2d's with alpha 30 on
// relu(randn) inputs: 3x3/1 on (8, 512, 41, 41) 1.82x -> 1.43x, on (8, 192, 35, 35) 1.73x -> 1.42x. Not at stride 2,
// where an element is in only 2.25 windows of a 3x3: the exact powers cost more than they save (3x3/2 on
// (8, 256, 81, 81): 1.63x -> 1.84x).
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

inline Vec load_row(const real_t* row, int64_t j, int64_t ow) {
  return Vec::loadu(row + j, static_cast<int>(std::min<int64_t>(kLanes, ow - j)));
}

inline void store_row(const Vec& v, real_t* row, int64_t j, int64_t ow) {
  v.store(row + j, static_cast<int>(std::min<int64_t>(kLanes, ow - j)));
}

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

}  // namespace

// VGG's pools (2x2, stride 2, no padding, even H and W) tile the input: each element is in exactly one window.
// There the four elements of kLanes windows are two deinterleaved vector loads per input row, and the gradient
// is interleaved and stored straight into grad_x, without the general path's per-offset buffers and scatter.
inline bool tiles_2x2(const Geometry& g) {
  return g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 && g.H == 2 * g.oh &&
         g.W == 2 * g.ow;
}

// (even, odd) columns of input row `row` under outputs j .. j + count - 1; zeros past the count.
inline std::pair<Vec, Vec> load_pairs(const real_t* row, int64_t j, int64_t count) {
  const real_t* src = row + 2 * j;
  const int64_t n = 2 * count;
  const Vec lo = n >= kLanes ? Vec::loadu(src) : Vec::loadu(src, static_cast<int>(n));
  const Vec hi = n >= 2 * kLanes ? Vec::loadu(src + kLanes)
                 : n > kLanes    ? Vec::loadu(src + kLanes, static_cast<int>(n - kLanes))
                                 : Vec(0.f);
  return at::vec::deinterleave2(lo, hi);
}

inline void store_pairs(const Vec& even, const Vec& odd, real_t* row, int64_t j, int64_t count) {
  const auto interleaved = at::vec::interleave2(even, odd);
  real_t* dst = row + 2 * j;
  const int64_t n = 2 * count;
  if (n > kLanes) {
    interleaved.first.store(dst);
    interleaved.second.store(dst + kLanes, static_cast<int>(n - kLanes));
  } else {
    interleaved.first.store(dst, static_cast<int>(n));
  }
}

// The dense-alpha side branch of one (sample, channel) plane (the authors' DenseAlphaBranch, fused):
//   alpha = clamp(w * prelu(f * sum_d k_d x_d) + b, lo, hi),  f = scale / (max_plane |x| + 1),
// the depthwise conv reading exactly the pooling's window (zero padding, and zeros in the ceil-mode overhang).
struct Branch {
  const real_t* k;  // kh * kw taps of this channel, row-major
  real_t slope, w, b, lo, hi, f;
  // (z, prelu(z), pre-clamp value) of the conv sums u
  inline void parts(const Vec& u, Vec& z, Vec& act, Vec& pre) const {
    z = u * Vec(f);
    act = Vec::blendv(z * Vec(slope), z, z > Vec(0.f));
    pre = act * Vec(w) + Vec(b);
  }
  inline Vec alpha(const Vec& u) const {
    Vec z, act, pre;
    parts(u, z, act, pre);
    return at::vec::minimum(at::vec::maximum(pre, Vec(lo)), Vec(hi));  // torch.clamp(pre, lo, hi)
  }
};

// The branch's per-plane gradient sums: dk (kh * kw taps, before the factor f), dslope, dw, db.
struct BranchGrad {
  std::vector<Vec> k;
  Vec slope{0.f}, w{0.f}, b{0.f};
  explicit BranchGrad(int64_t taps) : k(taps, Vec(0.f)) {}
  void clear() {
    std::fill(k.begin(), k.end(), Vec(0.f));
    slope = w = b = Vec(0.f);
  }
  // ga: dL/dalpha of kLanes outputs, 0 in the vector tail; value(d): the window's element at tap d
  template <class Value>
  inline void add(const Branch& br, const Vec& ga, const Vec& u, const Value& value) {
    Vec z, act, pre;
    br.parts(u, z, act, pre);
    const Vec inside = (pre >= Vec(br.lo)) & (pre <= Vec(br.hi));  // clamp passes its gradient where lo <= pre <= hi
    const Vec gp = Vec::blendv(Vec(0.f), ga, inside);
    b = b + gp;
    w = w + gp * act;
    const Vec dact = gp * Vec(br.w);
    const Vec positive = z > Vec(0.f);
    slope = slope + Vec::blendv(dact * z, Vec(0.f), positive);
    const Vec dz = Vec::blendv(dact * Vec(br.slope), dact, positive);
    for (size_t d = 0; d < k.size(); ++d) k[d] = k[d] + dz * value(d);
  }
  // (dk_0 .. dk_{taps-1}, dslope, dw, db) of the plane, in double lanes summed to float
  void store(real_t* out, real_t f) const {
    auto sum = [](const Vec& v) {
      real_t lanes[kLanes];
      v.store(lanes);
      double total = 0.0;
      for (int64_t t = 0; t < kLanes; ++t) total += lanes[t];
      return total;
    };
    for (size_t d = 0; d < k.size(); ++d) out[d] = static_cast<real_t>(sum(k[d]) * f);
    out[k.size()] = static_cast<real_t>(sum(slope));
    out[k.size() + 1] = static_cast<real_t>(sum(w));
    out[k.size() + 2] = static_cast<real_t>(sum(b));
  }
};

// whether a vector of windows has an alpha below 1 (or NaN) in a live lane: pow_split's below_one
inline bool any_below_one(const Vec& a, const Vec& live) { return !all_lanes((a >= Vec(1.f)) | ~live); }

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

// The dense branch's parameters (fp32, contiguous): k (C, kh * kw), slope, w, b (C,), the clamp range, the input
// scale; and per plane the normaliser f = scale / (max |x| + 1) (plane_normaliser: the forward and the backward
// each compute it from the plane, so that nothing per plane is kept for the backward).
struct BranchArgs {
  const real_t *k, *slope, *w, *b;
  real_t lo, hi, scale;
  real_t* f;
  real_t* stats = nullptr;  // the forward: per plane (sum, min, max) of alpha
  Branch plane(int64_t plane_index, int64_t channels, int64_t taps) const {
    const int64_t c = plane_index % channels;
    return Branch{k + c * taps, slope[c], w[c], b[c], lo, hi, f[plane_index]};
  }
};

// (max, min) of one plane of n values
inline std::pair<real_t, real_t> plane_range(const real_t* x, int64_t n) {
  Vec hi(-std::numeric_limits<real_t>::infinity()), lo(std::numeric_limits<real_t>::infinity());
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec v = Vec::loadu(x + i);
    hi = at::vec::maximum(hi, v);
    lo = at::vec::minimum(lo, v);
  }
  real_t his[kLanes], los[kLanes];
  hi.store(his);
  lo.store(los);
  real_t h = *std::max_element(his, his + kLanes), l = *std::min_element(los, los + kLanes);
  for (; i < n; ++i) {
    h = std::max(h, x[i]);
    l = std::min(l, x[i]);
    if (std::isnan(x[i])) h = x[i];
  }
  if (std::isnan(h) || std::any_of(his, his + kLanes, [](real_t v) { return std::isnan(v); }))
    h = std::numeric_limits<real_t>::quiet_NaN();
  return {h, l};
}

// the branch's normaliser f = scale / (max |x| + 1) of a plane whose minimum is not negative (max |x| = its max)
inline real_t plane_normaliser(real_t scale, real_t plane_max) { return scale / (plane_max + 1.f); }

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

// Returns (y, den), each (N, C, oh, ow) in real_t (den empty unless need_state: the backward's state), and
// whether a window held a negative x (then the caller shifts the maps and calls again: the arithmetic here assumes
// x >= 0).
std::tuple<torch::Tensor, torch::Tensor, bool> forward(
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

void check_branch(const torch::Tensor& x, const Geometry& g, const torch::Tensor& k, const torch::Tensor& slope,
                  const torch::Tensor& w, const torch::Tensor& b) {
  const int64_t c = x.size(1);
  for (const auto* t : {&k, &slope, &w, &b})
    TORCH_CHECK(t->scalar_type() == kRealType && t->is_contiguous() && t->device().is_cpu(),
                "p_pool2d_cpu: the branch parameters must be contiguous ", kRealName, " CPU tensors");
  TORCH_CHECK(k.numel() == c * g.kh * g.kw && slope.numel() == c && w.numel() == c && b.numel() == c,
              "p_pool2d_cpu: the branch needs k (C, kh*kw) and slope, w, b (C,)");
}

// P-pooling with the dense alpha of the fused side branch. Returns (y, alpha (N, C, oh, ow), den, the per-plane
// (sum, min, max) of alpha (N*C, 3), and whether x has a negative element: then nothing else is valid and the caller
// takes the unfused path).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, bool> dense_forward(
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

// row[2t] += even[t], row[2t + 1] += odd[t] for t < count
inline void add_pairs(const Vec& even, const Vec& odd, real_t* row, int64_t count) {
  const auto interleaved = at::vec::interleave2(even, odd);
  const int64_t n = 2 * count;
  if (n > kLanes) {
    (Vec::loadu(row) + interleaved.first).store(row);
    const int rest = static_cast<int>(n - kLanes);
    (Vec::loadu(row + kLanes, rest) + interleaved.second).store(row + kLanes, rest);
  } else {
    (Vec::loadu(row, static_cast<int>(n)) + interleaved.first).store(row, static_cast<int>(n));
  }
}

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
          // offset (measured: 3-5% of a 3x3/1 layer-alpha fwd+bwd at widths 17 and 35)
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

void check_saved(const torch::Tensor& den_t, const torch::Tensor& y_t, const torch::Tensor& grad_y) {
  TORCH_CHECK(grad_y.is_contiguous() && den_t.is_contiguous() && y_t.is_contiguous(),
              "p_pool2d_cpu: saved tensors and grad_y must be contiguous");
}

// Returns (grad_x (N, C, H, W), grad_alpha: per output (N, C, oh, ow) for a dense alpha, else per plane (N*C);
// empty unless need_alpha). The window max is recomputed from the window.
std::vector<torch::Tensor> backward(torch::Tensor x, torch::Tensor alpha, bool dense_alpha, torch::Tensor den_t, torch::Tensor y_t, torch::Tensor grad_y, bool need_alpha,
                                    std::vector<int64_t> kernel, std::vector<int64_t> stride,
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

// The backward of dense_forward: (grad_x (N, C, H, W) through the pooling only (the branch reads x detached), and
// the branch's parameter gradients per plane (N*C, kh*kw + 3): dk by tap, dslope, dw, db). Saved state: den and y
// only; the window max, alpha and the per-plane normaliser are recomputed from x (the extra memory kept for the
// backward is den).
std::vector<torch::Tensor> dense_backward(torch::Tensor x, torch::Tensor den_t, torch::Tensor y_t, torch::Tensor grad_y,
                                          torch::Tensor k, torch::Tensor slope, torch::Tensor w, torch::Tensor b,
                                          double lo, double hi, double scale, std::vector<int64_t> kernel,
                                          std::vector<int64_t> stride, std::vector<int64_t> padding) {
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("forward", &forward, "P-pooling forward (CPU, fused)");
  module.def("backward", &backward, "P-pooling backward (CPU, fused)");
  module.def("dense_forward", &dense_forward, "P-pooling with the fused dense-alpha branch: forward (CPU)");
  module.def("dense_backward", &dense_backward, "P-pooling with the fused dense-alpha branch: backward (CPU)");
}
