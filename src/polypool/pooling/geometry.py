"""Pooling-window geometry shared by every pooling layer of the package.

The windows are exactly those of ``F.max_pool2d`` / ``F.avg_pool2d``: the same output size (including
``ceil_mode``'s rule that the last window must start inside the input or its left padding), and, as in
``avg_pool2d``, a window that overhangs the padded input in ceil mode only covers the padded input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

IntOrPair = Union[int, Sequence[int]]


def to_pair(value: IntOrPair, name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(2, 3) -> (2, 3)``; anything else is a clear error."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    try:
        pair = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) == 1:
        return (pair[0], pair[0])
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def pooled_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output length along one axis, with torch's ``pooling_output_shape`` rule (dilation 1)."""
    numerator = size + 2 * padding - kernel + ((stride - 1) if ceil_mode else 0)
    out = numerator // stride + 1
    # torch: in ceil mode the last window must start inside the input or the left padding.
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


@dataclass(frozen=True)
class Window:
    """Normalised 2-D pooling arguments, validated once, plus the derived output size."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    ceil_mode: bool

    @classmethod
    def make(
        cls,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        ceil_mode: bool = False,
    ) -> Window:
        kernel = to_pair(kernel_size, "kernel_size")
        # torch treats stride=None and stride=[] (what F.max_pool2d's default is) as "stride = kernel".
        stride_pair = (
            kernel
            if stride is None or (not isinstance(stride, int) and len(stride) == 0)
            else to_pair(stride, "stride")
        )
        pad = to_pair(padding, "padding")
        if min(kernel) < 1 or min(stride_pair) < 1:
            raise ValueError(f"kernel_size and stride must be positive, got kernel_size={kernel}, stride={stride_pair}")
        if min(pad) < 0 or pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
            raise ValueError(
                f"padding must be between 0 and half the kernel size (as in nn.MaxPool2d), "
                f"got padding={pad} for kernel_size={kernel}"
            )
        return cls(kernel, stride_pair, pad, bool(ceil_mode))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        out_h = pooled_size(height, self.kernel[0], self.stride[0], self.padding[0], self.ceil_mode)
        out_w = pooled_size(width, self.kernel[1], self.stride[1], self.padding[1], self.ceil_mode)
        if out_h < 1 or out_w < 1:
            raise ValueError(
                f"input of size {height}x{width} is too small for kernel_size={self.kernel}, "
                f"stride={self.stride}, padding={self.padding}: the output would be {out_h}x{out_w}"
            )
        return out_h, out_w

    def overhang(self, height: int, width: int) -> tuple[int, int]:
        """How far the last window reaches past the padded input (ceil mode only), per axis."""
        out_h, out_w = self.output_size(height, width)
        over_h = (out_h - 1) * self.stride[0] + self.kernel[0] - (height + 2 * self.padding[0])
        over_w = (out_w - 1) * self.stride[1] + self.kernel[1] - (width + 2 * self.padding[1])
        return max(over_h, 0), max(over_w, 0)

    def as_kwargs(self) -> dict:
        return dict(kernel_size=self.kernel, stride=self.stride, padding=self.padding, ceil_mode=self.ceil_mode)


def pad_ceil_overhang(x: Tensor, window: Window) -> Tensor:
    """Zero-pad the bottom/right of ``x`` by the ceil-mode overhang, so that a convolution with the window's
    kernel, stride and padding gives the pooling's output size (a conv has no ceil mode)."""
    over_h, over_w = window.overhang(*x.shape[-2:])
    return F.pad(x, (0, over_w, 0, over_h)) if over_h or over_w else x


# The offset loop shared by the poolings that need more than a max or a mean of each window (P-pooling, DPP,
# Lp): one strided view of the padded input per window offset, each the size of the output.


def window_offsets(window: Window, out_h: int, out_w: int):
    """Yield (row_slice, col_slice, di, dj) of every window offset, in padded-input coordinates."""
    (kh, kw), (sh, sw) = window.kernel, window.stride
    for di in range(kh):
        rows = slice(di, di + sh * (out_h - 1) + 1, sh)
        for dj in range(kw):
            yield rows, slice(dj, dj + sw * (out_w - 1) + 1, sw), di, dj


def overhang_mask(
    window: Window,
    height: int,
    width: int,
    out_h: int,
    out_w: int,
    di: int,
    dj: int,
    like: Tensor,
    include_pad: bool = True,
) -> Optional[Tensor]:
    """None if offset (di, dj) of every window is part of the window, else a 0/1 mask of the outputs where it is:
    in ceil mode the last row/column of windows can overhang the padded input, and the overhang is not part of the
    window; with ``include_pad=False`` (``count_include_pad=False``) the zero padding is not either."""
    (sh, sw), (ph, pw) = window.stride, window.padding
    if include_pad:
        rows = (0, min(out_h, -(-(height + 2 * ph - di) // sh)))  # outputs i with i*sh + di < H + 2ph
        cols = (0, min(out_w, -(-(width + 2 * pw - dj) // sw)))
    else:  # outputs i with 0 <= i*sh + di - ph < H
        rows = (max(0, -(-(ph - di) // sh)), min(out_h, -(-(height + ph - di) // sh)))
        cols = (max(0, -(-(pw - dj) // sw)), min(out_w, -(-(width + pw - dj) // sw)))
    if rows == (0, out_h) and cols == (0, out_w):
        return None
    mask = torch.zeros(out_h, out_w, dtype=like.dtype, device=like.device)
    mask[rows[0] : max(rows), cols[0] : max(cols)] = 1
    return mask


def pad_window_input(x: Tensor, window: Window) -> Tensor:
    """Zero-pad x by the window's padding, plus the ceil-mode overhang on the bottom/right."""
    height, width = x.shape[-2:]
    (ph, pw), (oh, ow) = window.padding, window.overhang(height, width)
    if ph == pw == oh == ow == 0:
        return x
    return F.pad(x, (pw, pw + ow, ph, ph + oh))


def window_max(xp: Tensor, window: Window, out_h: int, out_w: int) -> Tensor:
    """The max over each window of the zero-padded input ``xp``; on x >= 0 it equals ``F.max_pool2d``.

    A running ``torch.maximum`` over the offsets' strided views: several times faster than ``F.max_pool2d`` on
    the CPU, and it propagates NaN like it.
    """
    m = None
    for rows, cols, _, _ in window_offsets(window, out_h, out_w):
        m = xp[..., rows, cols].clone() if m is None else torch.maximum(m, xp[..., rows, cols], out=m)
    return m
