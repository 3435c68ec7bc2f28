// What the paths of the fused CPU kernel (cpu/p_pool2d_kernel.cpp) share, as torchvision's cpu/roi_align_common.h
// does for roi_align_kernel.cpp: the window geometry, the per-plane alpha row, and the row loads and stores.
#pragma once

#include "vec_math.h"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace polypool::ops::detail {

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

// Per-plane alpha: a constant (layer/channel alpha) or one row of a dense alpha map.
struct AlphaRow {
  const real_t* dense;  // nullptr when constant
  real_t value;
  int64_t ow;          // the row's length: loads stop there
  inline Vec load(int64_t j) const {
    return dense ? Vec::loadu(dense + j, static_cast<int>(std::min<int64_t>(kLanes, ow - j))) : Vec(value);
  }
};

inline Vec load_row(const real_t* row, int64_t j, int64_t ow) {
  return Vec::loadu(row + j, static_cast<int>(std::min<int64_t>(kLanes, ow - j)));
}

inline void store_row(const Vec& v, real_t* row, int64_t j, int64_t ow) {
  v.store(row + j, static_cast<int>(std::min<int64_t>(kLanes, ow - j)));
}

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

}  // namespace polypool::ops::detail
