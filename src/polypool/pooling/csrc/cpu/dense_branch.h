// The fused dense-alpha side branch of the CPU kernel (cpu/p_pool2d_kernel.cpp): its per-plane parameters, alpha
// from a window's conv sums, and the sums of its parameters' gradients.
#pragma once

#include "vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace polypool::ops::detail {

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

}  // namespace polypool::ops::detail
