"""Triton kernels of P-pooling (fp32/fp16/bf16 in, fp32 arithmetic): forward, dx, dalpha.

The same max-normalised arithmetic and conventions as the reference op (``functional.py``):
    r = x / m (m the window max; r = 1 in an all-zero window),  p = r^a,  den = sum p,  q = sum p r / den,  y = m q
    dx_i  = sum_j g_j / den_j * ((a+1) p_ij - a q_j p_ij / r_ij)        (over the windows j that contain i)
    da_j  = g_j m_j / den_j * sum_i p_ij (r_ij - q_j) ln r_ij
with 0^0 = 1, 0 ln 0 = 0, r^(a-1) at r = 0 is 1 if a = 1 else 0 (and the a q p/r term is 0 where a = 0), zero
padding counted in the window and the ceil-mode overhang outside it. Subnormals count as 0: a window max, an
element or a ratio x/m below the smallest normal float (1/m and p/r stay finite).

Work layout: one flat 1-D grid over every output (forward, dalpha) or input (dx) of the whole tensor, in its memory
order: NCHW, or NHWC for a channels_last tensor (CL), so consecutive lanes read consecutive addresses either way.
No 65,535 limit (grid axis 0 takes 2^31 - 1 programs), no idle lanes but the last block's. x is read through its
strides (no copy of a channels_last or strided input); y, dx and the saved state are dense in that memory order.
IDX64 switches the index arithmetic to int64 for tensors of 2^31 elements or more.

* forward: one program per BLOCK outputs; the window is read twice (max, then the sums), the second time from
  cache. It writes y, and when a gradient can be asked for (STORE_STATE) den and, for fp16/bf16, q in fp32 (the
  backward needs q to ~1e-7); and one flag per program: whether a window held a negative x (the arithmetic
  assumes x >= 0). The window max is not saved: the backward recomputes it.
* backward, per output (grad_factors): once per output, the window max again (and with the fused branch alpha),
  the factors every dx term of its window needs (signed 1/m, g/den (a+1), g/den a q), and, when alpha needs a
  gradient, dalpha from the recomputed window sums, one value per output (summed per plane by torch for a
  per-plane alpha).
* dx: a gather: one program per BLOCK *inputs*; each loops over the windows that contain its input only (its
  residue class: ceil(KH/SH) x ceil(KW/SW) candidates, 1 for 2x2/2, 4 for 3x3/2), reading their precomputed
  factors. No atomics, no zero-fill.

Decoration reads ``TRITON_INTERPRET`` at import: with it set, the kernels run on CPU tensors (the tests).
"""

import triton
import triton.language as tl

TINY = tl.constexpr(1.1754943508222875e-38)  # the smallest normal float32


@triton.jit
def _log2_positive(r):
    """log2 r where r > 0, and 0 at r = 0 (where the callers never use it): no log(0), no inf arithmetic."""
    return tl.log2(tl.where(r > 0.0, r, 1.0))


@triton.jit
def _pow_unit(r, log2_r, a):
    """r^a for r in [0, 1] from ``log2_r = _log2_positive(r)``: 0^a = 0 for a > 0, and 0^0 = 1."""
    return tl.exp2(tl.where(r > 0.0, a * log2_r, tl.where(a == 0.0, 0.0, float("-inf"))))


@triton.jit
def _flush_max(m):
    """A window max below the smallest normal float counts as 0 (its reciprocal would overflow); NaN stays."""
    return tl.where(m < TINY, 0.0, m)


@triton.jit
def _normaliser(m):
    """(1/m, zero) of flushed window maxima: r = x/m + zero is 1 in an all-zero window."""
    zero = tl.where(m == 0.0, 1.0, 0.0)
    return 1.0 / tl.where(m == 0.0, 1.0, m), zero


@triton.jit
def _ratio(v, inv_m, zero):
    """r = x/m in [0, 1] (1 in an all-zero window); an element or a ratio below the smallest normal float is 0."""
    r = v * inv_m + zero
    return tl.where((v < TINY) | (r < TINY), zero, r)


@triton.jit
def _output_coords(offs, C, OH, OW, CL: tl.constexpr):
    """(n, c, oh, ow) of flat output indices in the memory order (NCHW, or NHWC when CL)."""
    if CL:
        c = offs % C
        t = offs // C
        ow = t % OW
        t = t // OW
        oh = t % OH
        n = t // OH
    else:
        ow = offs % OW
        t = offs // OW
        oh = t % OH
        t = t // OH
        c = t % C
        n = t // C
    return n, c, oh, ow


@triton.jit
def _output_index(n, c, oh, ow, C, OH, OW, CL: tl.constexpr):
    if CL:
        return ((n * OH + oh) * OW + ow) * C + c
    return ((n * C + c) * OH + oh) * OW + ow


@triton.jit
def _program_offsets(BLOCK: tl.constexpr, IDX64: tl.constexpr):
    if IDX64:
        return tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    return tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _load_alpha(alpha_ptr, plane, out, mask, DENSE: tl.constexpr):
    """alpha of outputs ``out`` (flat, memory order): dense (laid out like the output), or one per plane."""
    if DENSE:
        return tl.load(alpha_ptr + out, mask=mask, other=0.0).to(tl.float32)
    return tl.load(alpha_ptr + plane, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_tap(x_base, h, w, H, W, sxh, sxw, valid):
    """(h, w, x[h, w] in fp32): one element of the windows, 0 outside the map (the padding)."""
    inside = valid & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    return h, w, tl.load(x_base + h * sxh + w * sxw, mask=inside, other=0.0).to(tl.float32)


@triton.jit
def _window_reduce(
    x_base,
    k_ptr,
    c,
    h0,
    w0,
    H,
    W,
    sxh,
    sxw,
    valid,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BLOCK: tl.constexpr,
    CONV: tl.constexpr,
):
    """One read of each window: its max m, its min and, with CONV, the dense branch's depthwise conv sum u (k_ptr:
    the (C, KH*KW) kernel)."""
    m = tl.zeros((BLOCK,), dtype=tl.float32)  # x >= 0 and the padding is 0, so 0 is a neutral start
    low = tl.zeros((BLOCK,), dtype=tl.float32)
    u = tl.zeros((BLOCK,), dtype=tl.float32)
    for di in tl.static_range(KH):
        for dj in tl.static_range(KW):
            _h, _w, v = _load_tap(x_base, h0 + di, w0 + dj, H, W, sxh, sxw, valid)
            m = tl.maximum(m, v)
            low = tl.minimum(low, v)
            if CONV:
                u += tl.load(k_ptr + c * (KH * KW) + (di * KW + dj), mask=valid, other=0.0) * v
    return m, low, u


@triton.jit
def _window_max(
    x_base,
    k_ptr,
    c,
    h0,
    w0,
    H,
    W,
    sxh,
    sxw,
    valid,
    negative_ptr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BLOCK: tl.constexpr,
    CONV: tl.constexpr,
):
    """The forward's first read of each window: (m, u) of ``_window_reduce``; stores one flag per program: did a
    window hold a negative x? (then the caller shifts the maps and calls again)."""
    m, low, u = _window_reduce(x_base, k_ptr, c, h0, w0, H, W, sxh, sxw, valid, KH, KW, BLOCK, CONV)
    tl.store(negative_ptr + tl.program_id(0), (tl.min(low, axis=0) < 0.0).to(tl.int8))
    return m, u


@triton.jit
def _window_sums(
    x_base,
    h0,
    w0,
    H,
    W,
    sxh,
    sxw,
    valid,
    m,
    a,
    KH: tl.constexpr,
    KW: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    BLOCK: tl.constexpr,
    INCLUDE_PAD: tl.constexpr,
):
    """The forward's second read of each window: (sum p r, sum p) with r = x / m and p = r^alpha (m flushed)."""
    inv_m, zero = _normaliser(m)
    num = tl.zeros((BLOCK,), dtype=tl.float32)
    den = tl.zeros((BLOCK,), dtype=tl.float32)
    for di in tl.static_range(KH):
        for dj in tl.static_range(KW):
            h, w, v = _load_tap(x_base, h0 + di, w0 + dj, H, W, sxh, sxw, valid)
            if INCLUDE_PAD:
                in_window = (h < H + PH) & (w < W + PW)  # the ceil-mode overhang is not part of the window
            else:  # count_include_pad=False: neither is the padding
                in_window = (h >= 0) & (h < H) & (w >= 0) & (w < W)
            r = _ratio(v, inv_m, zero)
            p = tl.where(in_window, _pow_unit(r, _log2_positive(r), a), 0.0)
            den += p
            num += p * r
    return num, den


@triton.jit
def _store_forward(y_ptr, den_ptr, q_ptr, offs, valid, m, num, den, SAVE_Q: tl.constexpr, STORE_STATE: tl.constexpr):
    """y = m q with q = num / den, and the state the backward reads (den and, when asked, q; not m, which the
    backward recomputes from the window it reads anyway)."""
    q = num / tl.where(valid, den, 1.0)  # den >= 1: the max element adds exactly 1
    tl.store(y_ptr + offs, (q * m).to(y_ptr.dtype.element_ty), mask=valid)
    if STORE_STATE:
        tl.store(den_ptr + offs, den, mask=valid)
        if SAVE_Q:
            tl.store(q_ptr + offs, q, mask=valid)


@triton.jit
def p_pool2d_forward_kernel(
    x_ptr,
    alpha_ptr,
    y_ptr,
    den_ptr,
    q_ptr,
    negative_ptr,
    total,
    C,
    H,
    W,
    OH,
    OW,
    sxn,
    sxc,
    sxh,
    sxw,
    KH: tl.constexpr,
    KW: tl.constexpr,
    SH: tl.constexpr,
    SW: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    DENSE: tl.constexpr,
    SAVE_Q: tl.constexpr,
    STORE_STATE: tl.constexpr,
    CL: tl.constexpr,
    IDX64: tl.constexpr,
    BLOCK: tl.constexpr,
    INCLUDE_PAD: tl.constexpr = True,
):
    offs = _program_offsets(BLOCK, IDX64)
    valid = offs < total
    n, c, oh, ow = _output_coords(offs, C, OH, OW, CL)
    x_base = x_ptr + n * sxn + c * sxc
    h0 = oh * SH - PH
    w0 = ow * SW - PW

    m, _ = _window_max(x_base, x_ptr, c, h0, w0, H, W, sxh, sxw, valid, negative_ptr, KH, KW, BLOCK, False)
    m = _flush_max(m)
    a = _load_alpha(alpha_ptr, n * C + c, offs, valid, DENSE)
    num, den = _window_sums(x_base, h0, w0, H, W, sxh, sxw, valid, m, a, KH, KW, PH, PW, BLOCK, INCLUDE_PAD)
    _store_forward(y_ptr, den_ptr, q_ptr, offs, valid, m, num, den, SAVE_Q, STORE_STATE)


@triton.jit
def _branch_alpha(u, f_ptr, slope_ptr, w_ptr, b_ptr, plane, c, valid, lo, hi):
    """The dense branch at the conv sums u of channel c in plane n * C + c: (alpha = clamp(w prelu(f u) + b, lo, hi),
    and for its backward z = f u, prelu(z), the pre-clamp alpha, f, the PReLU slope and w)."""
    f = tl.load(f_ptr + plane, mask=valid, other=0.0)
    slope = tl.load(slope_ptr + c, mask=valid, other=0.0)
    w = tl.load(w_ptr + c, mask=valid, other=0.0)
    b = tl.load(b_ptr + c, mask=valid, other=0.0)
    z = u * f
    act = tl.where(z > 0.0, z, slope * z)
    pre = act * w + b
    return tl.minimum(tl.maximum(pre, lo), hi), z, act, pre, f, slope, w  # torch.clamp(pre, lo, hi)


@triton.jit
def p_pool2d_dense_forward_kernel(
    x_ptr,
    k_ptr,
    slope_ptr,
    w_ptr,
    b_ptr,
    f_ptr,
    alpha_ptr,
    y_ptr,
    den_ptr,
    q_ptr,
    negative_ptr,
    total,
    C,
    H,
    W,
    OH,
    OW,
    sxn,
    sxc,
    sxh,
    sxw,
    lo,
    hi,
    KH: tl.constexpr,
    KW: tl.constexpr,
    SH: tl.constexpr,
    SW: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    SAVE_Q: tl.constexpr,
    STORE_STATE: tl.constexpr,
    CL: tl.constexpr,
    IDX64: tl.constexpr,
    BLOCK: tl.constexpr,
    INCLUDE_PAD: tl.constexpr = True,
):
    """The forward kernel with alpha from the fused dense branch: the first read of the window (its max) also
    sums the depthwise conv, alpha = clamp(w prelu(f u) + b, lo, hi) is written to alpha_ptr (for the backward and
    the layer's statistics), and the sums use it."""
    offs = _program_offsets(BLOCK, IDX64)
    valid = offs < total
    n, c, oh, ow = _output_coords(offs, C, OH, OW, CL)
    plane = n * C + c
    x_base = x_ptr + n * sxn + c * sxc
    h0 = oh * SH - PH
    w0 = ow * SW - PW

    m, u = _window_max(x_base, k_ptr, c, h0, w0, H, W, sxh, sxw, valid, negative_ptr, KH, KW, BLOCK, True)

    a, _, _, _, _, _, _ = _branch_alpha(u, f_ptr, slope_ptr, w_ptr, b_ptr, plane, c, valid, lo, hi)
    tl.store(alpha_ptr + offs, a, mask=valid)

    m = _flush_max(m)
    num, den = _window_sums(x_base, h0, w0, H, W, sxh, sxw, valid, m, a, KH, KW, PH, PW, BLOCK, INCLUDE_PAD)
    _store_forward(y_ptr, den_ptr, q_ptr, offs, valid, m, num, den, SAVE_Q, STORE_STATE)


@triton.jit
def _add_per_channel(ptr, stride, j, c, value, valid, CL: tl.constexpr):
    """ptr[c * stride + j] += value over the lanes: one atomic of the block's sum when every valid lane has the same
    c (an NCHW block inside one plane, the common case), else one atomic per lane."""
    if CL:
        tl.atomic_add(ptr + c * stride + j, value, mask=valid)
    else:
        first = tl.min(tl.where(valid, c, 2147483647), axis=0)
        last = tl.max(tl.where(valid, c, -1), axis=0)
        if first == last:
            tl.atomic_add(ptr + first * stride + j, tl.sum(tl.where(valid, value, 0.0), axis=0))
        else:
            tl.atomic_add(ptr + c * stride + j, value, mask=valid)


@triton.jit
def _window_state(m, den_ptr, yq_ptr, g_ptr, out, mask, Q_SAVED: tl.constexpr):
    """(inv_m, zero, q, g/den) of outputs ``out`` with (flushed) window maxima m: what the backward needs of each
    window."""
    inv_m, zero = _normaliser(m)
    yq = tl.load(yq_ptr + out, mask=mask, other=0.0).to(tl.float32)
    q = yq if Q_SAVED else yq * inv_m + zero  # q = y/m; 1 in an all-zero window
    den = tl.load(den_ptr + out, mask=mask, other=1.0)
    g = tl.load(g_ptr + out, mask=mask, other=0.0).to(tl.float32)
    return inv_m, zero, q, g / den


@triton.jit
def p_pool2d_grad_factors_kernel(
    x_ptr,
    alpha_ptr,
    den_ptr,
    yq_ptr,
    g_ptr,
    factors_ptr,
    ga_ptr,
    total,
    C,
    H,
    W,
    OH,
    OW,
    sxn,
    sxc,
    sxh,
    sxw,
    KH: tl.constexpr,
    KW: tl.constexpr,
    SH: tl.constexpr,
    SW: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    DENSE: tl.constexpr,
    Q_SAVED: tl.constexpr,
    NEED_FACTORS: tl.constexpr,
    NEED_ALPHA: tl.constexpr,
    CL: tl.constexpr,
    IDX64: tl.constexpr,
    BLOCK: tl.constexpr,
    BRANCH: tl.constexpr = False,
    k_ptr=None,
    slope_ptr=None,
    w_ptr=None,
    b_ptr=None,
    f_ptr=None,
    lo=0.0,
    hi=0.0,
):
    """Per output, once: the factors that dx needs of each window (NEED_FACTORS), and dalpha (NEED_ALPHA).

    The window max is recomputed from the window (the forward saves only den and, for fp16/bf16, q): one more read
    of KH*KW elements that the dalpha sums read again from cache, instead of an output-sized tensor kept from the
    forward to the backward.

    factors is (3, total) fp32, laid out like the output: [0] the signed 1/m (-1 marks an all-zero window, where
    1/m := 1 and r := 1), [1] g/den (a+1), [2] g/den a q; the dx of an element i of window j is then
    factors[1] p - factors[2] p/r. Every input lies in about (K/S)^2 windows, so this is that many times less
    per-output arithmetic (and three loads instead of four) than recomputing them in the dx gather.

    BRANCH (the fused dense branch; needs NEED_ALPHA): alpha is recomputed too (the same read of the window sums the
    conv) and written to alpha_ptr for the dx kernel (NEED_FACTORS); dalpha goes on through the clamp, the 1x1
    affine and PReLU into the conv, and ga_ptr receives the branch's parameter gradients per channel,
    (C, KH*KW + 3): dk by tap, dslope, dw, db (atomic sums; the caller zero-fills it).
    """
    offs = _program_offsets(BLOCK, IDX64)
    valid = offs < total
    n, c, oh, ow = _output_coords(offs, C, OH, OW, CL)
    x_base = x_ptr + n * sxn + c * sxc
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    if BRANCH:
        m, _, u = _window_reduce(x_base, k_ptr, c, h0, w0, H, W, sxh, sxw, valid, KH, KW, BLOCK, True)
        # the forward's alpha, recomputed
        a, z, act, pre, f, slope, w_c = _branch_alpha(u, f_ptr, slope_ptr, w_ptr, b_ptr, n * C + c, c, valid, lo, hi)
        if NEED_FACTORS:
            tl.store(alpha_ptr + offs, a, mask=valid)
    else:
        m, _, u = _window_reduce(x_base, x_ptr, c, h0, w0, H, W, sxh, sxw, valid, KH, KW, BLOCK, False)
        a = _load_alpha(alpha_ptr, n * C + c, offs, valid, DENSE)
    m = _flush_max(m)
    inv_m, zero, q, g_over_den = _window_state(m, den_ptr, yq_ptr, g_ptr, offs, valid, Q_SAVED)
    if NEED_FACTORS:
        tl.store(factors_ptr + offs, tl.where(zero > 0.0, -1.0, inv_m), mask=valid)
        tl.store(factors_ptr + (offs + total), g_over_den * (a + 1.0), mask=valid)
        tl.store(factors_ptr + (offs + total + total), g_over_den * a * q, mask=valid)
    if NEED_ALPHA:
        total_sum = tl.zeros((BLOCK,), dtype=tl.float32)
        for di in tl.static_range(KH):
            for dj in tl.static_range(KW):
                _h, _w, v = _load_tap(x_base, h0 + di, w0 + dj, H, W, sxh, sxw, valid)
                r = _ratio(v, inv_m, zero)
                log2_r = _log2_positive(r)
                p = _pow_unit(r, log2_r, a)
                # 0 ln 0 = 0 (r = 0: zeros, padding), and the overhang has r = 0 too: it adds nothing
                total_sum += tl.where(r > 0.0, p * (r - q) * log2_r, 0.0)
        grad = total_sum * 0.6931471805599453 * g_over_den * m  # ln r = log2 r * ln 2
        if BRANCH:
            gp = tl.where(valid & (pre >= lo) & (pre <= hi), grad, 0.0)  # clamp: lo <= pre <= hi passes
            dact = gp * w_c
            dz = tl.where(z > 0.0, dact, dact * slope) * f
            stride = KH * KW + 3
            _add_per_channel(ga_ptr, stride, KH * KW, c, tl.where(z > 0.0, 0.0, dact * z), valid, CL)
            _add_per_channel(ga_ptr, stride, KH * KW + 1, c, gp * act, valid, CL)
            _add_per_channel(ga_ptr, stride, KH * KW + 2, c, gp, valid, CL)
            for di in tl.static_range(KH):
                for dj in tl.static_range(KW):
                    _h, _w, v = _load_tap(x_base, h0 + di, w0 + dj, H, W, sxh, sxw, valid)
                    _add_per_channel(ga_ptr, stride, di * KW + dj, c, dz * v, valid, CL)
        else:
            tl.store(ga_ptr + offs, grad, mask=valid)


@triton.jit
def _load_factors(factors_ptr, j, total_out, mask):
    """(1/m, zero, g/den (a+1), g/den a q) of outputs ``j`` from ``p_pool2d_grad_factors_kernel``'s buffer."""
    signed_inv_m = tl.load(factors_ptr + j, mask=mask, other=1.0)
    coef_p = tl.load(factors_ptr + (j + total_out), mask=mask, other=0.0)
    coef_p_over_r = tl.load(factors_ptr + (j + total_out + total_out), mask=mask, other=0.0)
    return tl.abs(signed_inv_m), tl.where(signed_inv_m < 0.0, 1.0, 0.0), coef_p, coef_p_over_r


@triton.jit
def p_pool2d_grad_input_kernel(
    x_ptr,
    alpha_ptr,
    factors_ptr,
    gx_ptr,
    total,
    total_out,
    C,
    H,
    W,
    OH,
    OW,
    sxn,
    sxc,
    sxh,
    sxw,
    KH: tl.constexpr,
    KW: tl.constexpr,
    SH: tl.constexpr,
    SW: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    DENSE: tl.constexpr,
    CL: tl.constexpr,
    IDX64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """dx from the per-output factors of ``p_pool2d_grad_factors_kernel`` (``total_out`` outputs)."""
    offs = _program_offsets(BLOCK, IDX64)
    valid = offs < total
    n, c, h, w = _output_coords(offs, C, H, W, CL)  # dx has x's shape, dense in the same memory order
    plane = n * C + c
    x = tl.load(x_ptr + n * sxn + c * sxc + h * sxh + w * sxw, mask=valid, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    # The windows that contain input (h, w): oh = (h + PH) // SH - t for t < ceil(KH / SH), at window offset
    # di = h + PH - oh * SH when di < KH (and the same for columns): only the input's residue class is visited.
    base_h = (h + PH) // SH
    base_w = (w + PW) // SW
    for t in tl.static_range((KH + SH - 1) // SH):
        for u in tl.static_range((KW + SW - 1) // SW):
            oh = base_h - t
            ow = base_w - u
            di = h + PH - oh * SH
            dj = w + PW - ow * SW
            hit = valid & (oh >= 0) & (ow >= 0) & (oh < OH) & (ow < OW) & (di < KH) & (dj < KW)
            j = _output_index(n, c, oh, ow, C, OH, OW, CL)
            inv_m, zero, coef_p, coef_p_over_r = _load_factors(factors_ptr, j, total_out, hit)
            a = _load_alpha(alpha_ptr, plane, j, hit, DENSE)
            r = tl.where(hit, _ratio(x, inv_m, zero), 1.0)  # lanes without a window: keep r in [0, 1], no overflow
            log2_r = _log2_positive(r)
            p = _pow_unit(r, log2_r, a)
            at_zero = tl.where(a == 1.0, 1.0, 0.0)  # r^(a-1) at r = 0
            # r^(a-1) = p/r where r > 0 and a != 0 (the a q p/r term is 0 at a = 0, never 0 * (p/r)), from log2 r, not
            # as p / r: a GPU's exp2 flushes a subnormal p to 0 where r^(a-1) is not negligible (a = 1.01, r = 2^-125:
            # 0.42)
            p_over_r = tl.where((r > 0.0) & (a != 0.0), tl.exp2((a - 1.0) * log2_r), at_zero)
            acc += tl.where(hit, coef_p * p - coef_p_over_r * p_over_r, 0.0)
    tl.store(gx_ptr + offs, acc.to(gx_ptr.dtype.element_ty), mask=valid)
