// P-pooling's fused CPU kernels (cpu/p_pool2d_kernel.cpp), bound to Python in p_pool2d.cpp and called by
// polypool/pooling/cpu_fused.py and dense_alpha.py. float32, NCHW, contiguous; a float64 build (-DPPOOL_DOUBLE) for the
// tests only. The layout follows torchvision's csrc/ops: the op's declarations here, its bindings in p_pool2d.cpp, the
// CPU kernel in cpu/.
//
// The same max-normalised arithmetic as the reference op (polypool/pooling/functional.py), with
//   r = x / m (window max),  p = r^a = exp(a * log r),  den = sum p,  q = sum p r / den,  y = m q,
//   dx_i = g/den * ((a+1) p_i - a q p_i / r_i),   da = g m / den * sum_i p_i (r_i - q) log r_i,
// and the same conventions (0^0 = 1, an all-zero window has r = 1, 0 * log 0 = 0, r^(a-1) at r = 0 is 1 if a = 1
// and 0 otherwise; a window does not include its ceil-mode overhang).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace polypool::ops {

// Returns (y, den), each (N, C, oh, ow) in real_t (den empty unless need_state: the backward's state), and
// whether a window held a negative x (then the caller shifts the maps and calls again: the arithmetic here assumes
// x >= 0).
std::tuple<torch::Tensor, torch::Tensor, bool> p_pool2d_forward(
    torch::Tensor x, torch::Tensor alpha, bool dense_alpha, std::vector<int64_t> kernel, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> out_size, bool need_state, bool include_pad);

// Returns (grad_x (N, C, H, W), grad_alpha: per output (N, C, oh, ow) for a dense alpha, else per plane (N*C);
// empty unless need_alpha). The window max is recomputed from the window.
std::vector<torch::Tensor> p_pool2d_backward(
    torch::Tensor x, torch::Tensor alpha, bool dense_alpha, torch::Tensor den_t, torch::Tensor y_t,
    torch::Tensor grad_y, bool need_alpha, std::vector<int64_t> kernel, std::vector<int64_t> stride,
    std::vector<int64_t> padding);

// P-pooling with the dense alpha of the fused side branch. Returns (y, alpha (N, C, oh, ow), den, the per-plane
// (sum, min, max) of alpha (N*C, 3), and whether x has a negative element: then nothing else is valid and the caller
// takes the unfused path).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, bool> dense_p_pool2d_forward(
    torch::Tensor x, torch::Tensor k, torch::Tensor slope, torch::Tensor w, torch::Tensor b, double lo, double hi,
    double scale, std::vector<int64_t> kernel, std::vector<int64_t> stride, std::vector<int64_t> padding,
    std::vector<int64_t> out_size, bool need_state, bool include_pad);

// The backward of dense_p_pool2d_forward: (grad_x (N, C, H, W) through the pooling only (the branch reads x
// detached), and the branch's parameter gradients per plane (N*C, kh*kw + 3): dk by tap, dslope, dw, db). Saved
// state: den and y only; the window max, alpha and the per-plane normaliser are recomputed from x (the extra memory
// kept for the backward is den).
std::vector<torch::Tensor> dense_p_pool2d_backward(
    torch::Tensor x, torch::Tensor den_t, torch::Tensor y_t, torch::Tensor grad_y, torch::Tensor k,
    torch::Tensor slope, torch::Tensor w, torch::Tensor b, double lo, double hi, double scale,
    std::vector<int64_t> kernel, std::vector<int64_t> stride, std::vector<int64_t> padding);

}  // namespace polypool::ops
