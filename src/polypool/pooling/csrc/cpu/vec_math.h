// The vector maths of the fused CPU P-pooling kernel (cpu/p_pool2d_kernel.cpp): its compute type, and logarithms,
// powers and the flushing of subnormals on ATen's Vectorized<real_t>, with hand-written AVX2 float paths.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace polypool::ops::detail {

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

// A positive subnormal x is 0 (they count as 0); negative ones stay, for the negative-input check.
inline real_t flush_positive_subnormal(real_t x) { return x > 0 && x < std::numeric_limits<real_t>::min() ? 0 : x; }

// dst[i] = src[i] for i < n, positive subnormals as 0
inline void copy_flushed(const real_t* src, int64_t n, real_t* dst) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const int count = static_cast<int>(std::min<int64_t>(kLanes, n - i));
    const Vec x = Vec::loadu(src + i, count);
    Vec::blendv(x, Vec(0.f), (x > Vec(0.f)) & (x < Vec(std::numeric_limits<real_t>::min()))).store(dst + i, count);
  }
}

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
  // float mantissa, as accurate as SLEEF's 1-ulp log2 at a few FMAs (SLEEF's log2 was a large share of P-pooling's
  // time with overlapping windows: results/bench/cpu_kernel_notes.md).
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
// written as 0: left in, they make the next layer's convolution backward several times slower on x86, whose
// arithmetic on subnormals is slow (results/bench/cpu_kernel_notes.md). Applied to each element's finished dx, once,
// not to every window's term of it.
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

// whether a vector of windows has an alpha below 1 (or NaN) in a live lane: pow_split's below_one
inline bool any_below_one(const Vec& a, const Vec& live) { return !all_lanes((a >= Vec(1.f)) | ~live); }

}  // namespace polypool::ops::detail
