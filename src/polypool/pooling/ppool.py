"""``PPool2d``: the P-pooling layer, a drop-in for ``nn.MaxPool2d`` with a learned exponent alpha."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor, nn

from .bounded import clamp_inward
from .dense_alpha import dense_branch_alpha, dense_p_pool2d_with_stats, scale_gradient
from .functional import p_pool2d
from .geometry import IntOrPair, Window

__all__ = ["PPool2d", "DenseAlphaBranch", "scale_gradient"]

AlphaMode = Literal["layer", "channel", "dense"]
ALPHA_MODES = ("layer", "channel", "dense")


class DenseAlphaBranch(nn.Module):
    """The side branch of the authors' code that predicts one alpha per output position and channel.

    Input: the pooling input scaled to ``x / (max_hw |x| + 1) * scale`` per (sample, channel) and **detached**;
    then a depthwise k x k conv with the pooling's stride and padding (no bias), PReLU (init 0.25), a depthwise
    1x1 conv whose bias starts at ``alpha_init``, and a Hardtanh clamp to the alpha range (docs/paper_notes.md).
    """

    def __init__(
        self,
        channels: int,
        window: Window,
        alpha_init: float,
        alpha_range: tuple[float, float],
        input_scale: float = 1.0,
    ):
        super().__init__()
        self.window = window
        self.input_scale = input_scale
        self.alpha_range = alpha_range
        self.conv = nn.Conv2d(
            channels, channels, window.kernel, window.stride, window.padding, groups=channels, bias=False
        )
        self.act = nn.PReLU(channels, init=0.25)
        self.proj = nn.Conv2d(channels, channels, 1, groups=channels, bias=True)
        nn.init.constant_(self.proj.bias, alpha_init)

    def forward(self, x: Tensor) -> Tensor:
        return dense_branch_alpha(x, *self.parameters_for_kernel(), self.window, self.alpha_range, self.input_scale)

    def parameters_for_kernel(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(conv weight, PReLU slope, 1x1 weight, 1x1 bias): what :func:`dense_p_pool2d` takes."""
        return self.conv.weight, self.act.weight, self.proj.weight, self.proj.bias


class PPool2d(nn.Module):
    """P-pooling layer (Wei et al., CVPR 2019): ``y = sum x^(alpha+1) / sum x^alpha`` over each window.

    Takes ``nn.MaxPool2d``'s arguments, so it replaces a max or average pooling layer one for one.

    Args:
        kernel_size, stride, padding, ceil_mode: as in ``nn.MaxPool2d`` (``stride`` defaults to the kernel).
        channels: the number of input channels; needed for ``alpha_mode="channel"`` and ``"dense"``.
        alpha_mode: ``"layer"`` (one learned alpha), ``"channel"`` (one per channel) or ``"dense"`` (one per output
            position and channel, predicted by :class:`DenseAlphaBranch` as in the authors' code).
        alpha_init: the initial alpha. The authors start at 30 (close to max pooling, which suits fine-tuning a
            max-pooled backbone); 0 gives exactly average pooling.
        alpha_range: ``(min, max)`` that alpha is clamped to, as the authors' Hardtanh does ([1, 50] in their
            first code): a clamp, not a reparameterisation. For a learned layer/channel alpha the clamp keeps the
            gradient components that point back into the range (:func:`clamp_inward`), so an alpha initialised on a
            bound (0, say) still learns; the dense branch's output is clamped exactly as the authors' Hardtanh.
        dense_input_scale: the authors' ``side_branch_scale`` for dense mode.
        alpha_grad_scale: multiplies the gradient that reaches alpha (and through it the dense branch), leaving the
            forward pass unchanged; the authors' PyTorch code scales it by 3 (docs/paper_notes.md).
        count_include_pad: as in ``nn.AvgPool2d``: whether the zero padding counts in each window (the default;
            :func:`p_pool2d`). ``swap_pooling`` carries an average-pooling site's value over.
        fused_branch: dense mode computes the branch inside the pooling kernel where a fused kernel serves the
            input (:func:`dense_p_pool2d`); ``False`` runs the branch's four ops, then the pooling.
        check: raise on NaN/Inf inputs instead of propagating them (see :func:`p_pool2d`).

    The learned parameter is ``alpha`` (layer/channel) or the submodule ``alpha_branch`` (dense); every name
    starts with ``alpha`` so the training code can give them their own learning rate.
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: Optional[IntOrPair] = None,
        padding: IntOrPair = 0,
        ceil_mode: bool = False,
        *,
        channels: Optional[int] = None,
        alpha_mode: AlphaMode = "layer",
        alpha_init: float = 30.0,
        alpha_range: tuple[float, float] = (1.0, 50.0),
        dense_input_scale: float = 1.0,
        alpha_grad_scale: float = 1.0,
        check: bool = False,
        count_include_pad: bool = True,
        fused_branch: bool = True,
    ):
        super().__init__()
        self.window = Window.make(kernel_size, stride, padding, ceil_mode)
        self.kernel_size, self.stride, self.padding = self.window.kernel, self.window.stride, self.window.padding
        self.ceil_mode = self.window.ceil_mode
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")
        low, high = (float(v) for v in alpha_range)
        if not 0 <= low <= high:
            raise ValueError(f"alpha_range must be (min, max) with 0 <= min <= max, got {alpha_range}")
        if not low <= alpha_init <= high:
            raise ValueError(f"alpha_init={alpha_init} lies outside alpha_range=({low}, {high})")
        if alpha_mode != "layer" and (channels is None or channels < 1):
            raise ValueError(f"alpha_mode={alpha_mode!r} needs the number of input channels: pass channels=C")
        if not alpha_grad_scale > 0:
            raise ValueError(f"alpha_grad_scale must be > 0, got {alpha_grad_scale}")
        self.alpha_mode = alpha_mode
        self.alpha_grad_scale = float(alpha_grad_scale)
        self.alpha_range = (low, high)
        self.channels = channels
        self.check = check
        self.count_include_pad = bool(count_include_pad)
        self.fused_branch = bool(fused_branch)
        if alpha_mode == "dense":
            self.alpha_branch = DenseAlphaBranch(channels, self.window, alpha_init, self.alpha_range, dense_input_scale)
            self.register_buffer("last_alpha_stats", torch.full((3,), float("nan")), persistent=False)
        else:
            shape = (channels, 1, 1) if alpha_mode == "channel" else ()
            self.alpha = nn.Parameter(torch.full(shape, float(alpha_init)))

    # True when the input is known to be >= 0 (a ReLU's output; swap_pooling sets it): p_pool2d then skips its
    # negative-input check and the device sync it costs. A class attribute, so older pickled layers have it too.
    input_nonnegative: bool = False
    count_include_pad: bool = True
    fused_branch: bool = True

    def current_alpha(self, x: Optional[Tensor] = None) -> Tensor:
        """The clamped alpha used in the forward pass (dense mode needs the pooling input ``x``)."""
        if self.alpha_mode == "dense":
            if x is None:
                raise ValueError("dense alpha depends on the input: pass the pooling input x")
            return self.alpha_branch(x)
        return clamp_inward(self.alpha, *self.alpha_range)

    def forward(self, x: Tensor) -> Tensor:
        if self.alpha_mode == "dense":
            y, _, stats = dense_p_pool2d_with_stats(
                x,
                *self.alpha_branch.parameters_for_kernel(),
                self.kernel_size,
                self.stride,
                self.padding,
                self.ceil_mode,
                alpha_range=self.alpha_range,
                input_scale=self.alpha_branch.input_scale,
                alpha_grad_scale=self.alpha_grad_scale,
                count_include_pad=self.count_include_pad,
                fused=self.fused_branch,
                check=self.check,
                input_nonnegative=self.input_nonnegative,
            )
            with torch.no_grad():  # for alpha_stats(): dense alpha exists only during a forward pass
                self.last_alpha_stats.copy_(stats)
            return y
        alpha = scale_gradient(self.current_alpha(x), self.alpha_grad_scale)
        return p_pool2d(
            x,
            alpha,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.check,
            input_nonnegative=self.input_nonnegative,
            count_include_pad=self.count_include_pad,
        )

    @torch.no_grad()
    def alpha_stats(self) -> dict:
        """``mean``/``min``/``max`` of alpha (floats), plus ``per_channel`` (a tensor) in channel mode.

        In dense mode the statistics are those of the last forward pass (NaN before the first one).
        """
        if self.alpha_mode == "dense":
            mean, low, high = self.last_alpha_stats.tolist()
            return {"mean": mean, "min": low, "max": high}
        alpha = self.current_alpha()
        stats = {"mean": alpha.mean().item(), "min": alpha.min().item(), "max": alpha.max().item()}
        if self.alpha_mode == "channel":
            stats["per_channel"] = alpha.flatten().detach().cpu().clone()
        return stats

    def extra_repr(self) -> str:
        stats = self.alpha_stats()
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}, alpha_mode={self.alpha_mode}, channels={self.channels}, "
            + ("count_include_pad=False, " if not self.count_include_pad else "")
            + f"alpha_range={self.alpha_range}, "
            + (f"alpha_grad_scale={self.alpha_grad_scale:g}, " if self.alpha_grad_scale != 1.0 else "")
            + f"alpha(mean={stats['mean']:.3g}, min={stats['min']:.3g}, "
            f"max={stats['max']:.3g})"
        )
