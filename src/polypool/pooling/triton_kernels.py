"""Triton kernels of P-pooling (NCHW, fp32/fp16/bf16 in, fp32 arithmetic): forward, dx, dalpha.

The same max-normalised arithmetic and conventions as the reference op (``functional.py``):
    r = x / m (m the window max; r = 1 in an all-zero window),  p = r^a,  den = sum p,  q = sum p r / den,  y = m q
    dx_i  = sum_j g_j / den_j * ((a+1) p_ij - a q_j p_ij / r_ij)        (over the windows j that contain i)
    da_j  = g_j m_j / den_j * sum_i p_ij (r_ij - q_j) ln r_ij
with 0^0 = 1, 0 ln 0 = 0, r^(a-1) at r = 0 is 1 if a = 1 else 0, zero padding counted in the window and the
ceil-mode overhang outside it.

Work layout: program axis 0 is the (sample, channel) plane (no 65535 limit there), axis 1 a block of outputs
(forward, dalpha) or of inputs (dx). alpha is either one value per plane or dense (one per output).

* forward: one program per BLOCK outputs; the window is read twice (max, then the sums), the second time from
  cache. It writes y, m (exact in x's dtype), den and, for fp16/bf16, q in fp32 (the backward needs q to ~1e-7),
  and one flag per program: whether a window held a negative x (the arithmetic assumes x >= 0).
* dx: a gather: one program per BLOCK *inputs*, looping over the kh*kw window offsets and keeping those whose
  output exists (for stride < kernel an input lies in several windows). No atomics, no zero-fill of dx.
* dalpha: one program per BLOCK outputs recomputing the window sums; a dense alpha gets one value per output,
  a per-plane alpha one partial sum per program, reduced afterwards by torch (no atomics, no contention).

The file imports triton at the top; ``triton_fused.py`` imports it only when a kernel is needed.
Decoration reads ``TRITON_INTERPRET`` at import: with it set, the kernels run on CPU tensors (the tests).
"""

import triton
import triton.language as tl


@triton.jit
def _log2_positive(r):
    """log2 r where r > 0, and 0 at r = 0 (where the callers never use it): no log(0), no inf arithmetic."""
    return tl.log2(tl.where(r > 0.0, r, 1.0))


@triton.jit
def _pow_unit(r, log2_r, a):
    """r^a for r in [0, 1] from ``log2_r = _log2_positive(r)``: 0^a = 0 for a > 0, and 0^0 = 1."""
    return tl.exp2(tl.where(r > 0.0, a * log2_r, tl.where(a == 0.0, 0.0, float("-inf"))))


@triton.jit
def _load_alpha(alpha_ptr, plane, offs, mask, DENSE: tl.constexpr, n_out):
    if DENSE:
        return tl.load(alpha_ptr + plane * n_out + offs, mask=mask, other=0.0).to(tl.float32)
    return tl.load(alpha_ptr + plane).to(tl.float32)


@triton.jit
def p_pool2d_forward_kernel(
    x_ptr, alpha_ptr, y_ptr, m_ptr, den_ptr, q_ptr, negative_ptr,
    H, W, OH, OW,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    DENSE: tl.constexpr, SAVE_Q: tl.constexpr, BLOCK: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    n_out = OH * OW
    valid = offs < n_out
    oh = offs // OW
    ow = offs % OW
    x_plane = x_ptr + plane * H * W
    h0 = oh * SH - PH
    w0 = ow * SW - PW

    m = tl.zeros((BLOCK,), dtype=tl.float32)  # x >= 0 and the padding is 0, so 0 is a neutral start
    low = tl.zeros((BLOCK,), dtype=tl.float32)
    for di in tl.static_range(KH):
        for dj in tl.static_range(KW):
            h = h0 + di
            w = w0 + dj
            inside = valid & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            v = tl.load(x_plane + h * W + w, mask=inside, other=0.0).to(tl.float32)
            m = tl.maximum(m, v)
            low = tl.minimum(low, v)
    # one flag per program: did a window hold a negative x? (then the caller shifts the maps and calls again)
    tl.store(negative_ptr + plane * tl.num_programs(1) + tl.program_id(1), (tl.min(low, axis=0) < 0.0).to(tl.int8))

    zero = tl.where(m == 0.0, 1.0, 0.0)
    inv_m = 1.0 / tl.where(m == 0.0, 1.0, m)
    a = _load_alpha(alpha_ptr, plane, offs, valid, DENSE, n_out)
    num = tl.zeros((BLOCK,), dtype=tl.float32)
    den = tl.zeros((BLOCK,), dtype=tl.float32)
    for di in tl.static_range(KH):
        for dj in tl.static_range(KW):
            h = h0 + di
            w = w0 + dj
            inside = valid & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            in_window = (h < H + PH) & (w < W + PW)  # the ceil-mode overhang is not part of the window
            v = tl.load(x_plane + h * W + w, mask=inside, other=0.0).to(tl.float32)
            r = v * inv_m + zero
            p = tl.where(in_window, _pow_unit(r, _log2_positive(r), a), 0.0)
            den += p
            num += p * r
    q = num / tl.where(valid, den, 1.0)  # den >= 1: the max element adds exactly 1
    out = plane * n_out + offs
    tl.store(y_ptr + out, (q * m).to(y_ptr.dtype.element_ty), mask=valid)
    tl.store(m_ptr + out, m.to(m_ptr.dtype.element_ty), mask=valid)
    tl.store(den_ptr + out, den, mask=valid)
    if SAVE_Q:
        tl.store(q_ptr + out, q, mask=valid)


@triton.jit
def _window_state(m_ptr, den_ptr, yq_ptr, g_ptr, out, mask, Q_SAVED: tl.constexpr):
    """(inv_m, zero, q, g/den) of outputs ``out``: what the backward needs of each window."""
    m = tl.load(m_ptr + out, mask=mask, other=1.0).to(tl.float32)
    zero = tl.where(m == 0.0, 1.0, 0.0)
    inv_m = 1.0 / tl.where(m == 0.0, 1.0, m)
    yq = tl.load(yq_ptr + out, mask=mask, other=0.0).to(tl.float32)
    q = yq if Q_SAVED else yq * inv_m + zero  # q = y/m; 1 in an all-zero window
    den = tl.load(den_ptr + out, mask=mask, other=1.0)
    g = tl.load(g_ptr + out, mask=mask, other=0.0).to(tl.float32)
    return m, inv_m, zero, q, g / den


@triton.jit
def p_pool2d_grad_input_kernel(
    x_ptr, alpha_ptr, m_ptr, den_ptr, yq_ptr, g_ptr, gx_ptr,
    H, W, OH, OW,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    DENSE: tl.constexpr, Q_SAVED: tl.constexpr, BLOCK: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    n_in = H * W
    n_out = OH * OW
    valid = offs < n_in
    h = offs // W
    w = offs % W
    x = tl.load(x_ptr + plane * n_in + offs, mask=valid, other=0.0).to(tl.float32)
    plane_out = plane * n_out
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for di in tl.static_range(KH):
        for dj in tl.static_range(KW):
            # the window j whose offset (di, dj) is this input: j = ((h + PH - di) / SH, (w + PW - dj) / SW)
            th = h + PH - di
            tw = w + PW - dj
            oh = th // SH
            ow = tw // SW
            hit = valid & (th >= 0) & (tw >= 0) & (th % SH == 0) & (tw % SW == 0) & (oh < OH) & (ow < OW)
            j = oh * OW + ow
            m, inv_m, zero, q, g_over_den = _window_state(m_ptr, den_ptr, yq_ptr, g_ptr, plane_out + j, hit, Q_SAVED)
            a = _load_alpha(alpha_ptr, plane, j, hit, DENSE, n_out)
            r = tl.where(hit, x * inv_m + zero, 1.0)  # lanes without a window: keep r in [0, 1], no overflow
            p = _pow_unit(r, _log2_positive(r), a)
            at_zero = tl.where(a == 1.0, 1.0, 0.0)  # r^(a-1) at r = 0
            p_over_r = tl.where(r > 0.0, p / tl.where(r > 0.0, r, 1.0), at_zero)
            acc += tl.where(hit, g_over_den * ((a + 1.0) * p - a * q * p_over_r), 0.0)
    tl.store(gx_ptr + plane * n_in + offs, acc.to(gx_ptr.dtype.element_ty), mask=valid)


@triton.jit
def p_pool2d_grad_alpha_kernel(
    x_ptr, alpha_ptr, m_ptr, den_ptr, yq_ptr, g_ptr, ga_ptr,
    H, W, OH, OW,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    DENSE: tl.constexpr, Q_SAVED: tl.constexpr, BLOCK: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    n_out = OH * OW
    valid = offs < n_out
    oh = offs // OW
    ow = offs % OW
    x_plane = x_ptr + plane * H * W
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    out = plane * n_out + offs
    m, inv_m, zero, q, g_over_den = _window_state(m_ptr, den_ptr, yq_ptr, g_ptr, out, valid, Q_SAVED)
    a = _load_alpha(alpha_ptr, plane, offs, valid, DENSE, n_out)
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for di in tl.static_range(KH):
        for dj in tl.static_range(KW):
            h = h0 + di
            w = w0 + dj
            inside = valid & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            v = tl.load(x_plane + h * W + w, mask=inside, other=0.0).to(tl.float32)
            r = v * inv_m + zero
            log2_r = _log2_positive(r)
            p = _pow_unit(r, log2_r, a)
            # 0 ln 0 = 0 (r = 0: zeros, padding), and the overhang has r = 0 too: it adds nothing
            total += tl.where(r > 0.0, p * (r - q) * log2_r, 0.0)
    grad = tl.where(valid, total * 0.6931471805599453 * g_over_den * m, 0.0)  # ln r = log2 r * ln 2
    if DENSE:
        tl.store(ga_ptr + out, grad, mask=valid)
    else:
        tl.store(ga_ptr + plane * tl.num_programs(1) + block, tl.sum(grad, axis=0))
