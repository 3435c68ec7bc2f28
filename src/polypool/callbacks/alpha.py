"""P-pooling's alpha, looked at without touching the training: every layer's alpha (the dense alpha map of a fixed
probe image), its statistics, and the dense alpha's distribution sent to W&B. Used by :class:`RunRecord`,
:class:`AlphaHistory` and the final evaluation."""

from __future__ import annotations

from typing import Any, Optional

import torch

from .. import wandb_keys as keys


def log_dense_alpha_histograms(pl_module, probe: Optional[torch.Tensor]) -> None:
    """The distribution of every dense P-pooling layer's alpha over the fixed ``probe`` image (all channels and
    positions of its alpha map), as a W&B histogram over the layer's alpha range (``alpha/<layer>/dense_hist``, the
    same bins at every step: :func:`polypool.models.segmentation.alpha_histogram`), at ``trainer/global_step``. Dense
    alpha has no parameter to take a histogram of: it is computed from the input. Nothing without a W&B logger or a
    probe."""
    if probe is None or not pl_module._wandb_runs():
        return
    for name, (module, alpha) in alpha_maps(pl_module, probe).items():
        if module.alpha_mode == "dense":
            pl_module._log_histogram(keys.alpha_dense_hist(name), alpha.flatten(), module.alpha_range)


@torch.no_grad()
def alpha_maps(pl_module, probe: Optional[torch.Tensor]) -> dict[str, tuple[Any, torch.Tensor]]:
    """``{layer name: (PPool2d, alpha)}`` for every P-pooling layer of a :class:`SegmentationModel`'s backbone:
    the alpha itself in layer/channel mode, the dense alpha map of ``probe`` (one image) in dense mode.

    The dense probe runs in eval mode: a training-mode forward would update the BatchNorm statistics (and fails on
    one image at 1x1 resolution), so looking at alpha must not touch the training."""
    from ..pooling import PPool2d  # here, not at the top: the harness imports polypool.callbacks for the record's
    # path alone, and pooling brings its compiled backends

    backbone = pl_module.network.backbone  # the names are those of the alpha/<name>/... scalars
    layers = {name: module for name, module in backbone.named_modules() if isinstance(module, PPool2d)}
    dense = {}
    if probe is not None and any(m.alpha_mode == "dense" for m in layers.values()):
        was_training = pl_module.training
        pl_module.eval()
        try:
            dense = pl_module.dense_alpha_maps(probe.to(pl_module.device))
        finally:
            pl_module.train(was_training)
    return {
        name: (module, dense[name] if module.alpha_mode == "dense" else module.current_alpha().detach().float().cpu())
        for name, module in layers.items()
        if module.alpha_mode != "dense" or name in dense
    }


def alpha_summary(pl_module, probe: Optional[torch.Tensor]) -> dict[str, dict]:
    """Mean, spread (``std``: over channels and positions), min and max of every P-pooling layer's alpha, and for a
    dense alpha its spatial spread (``spatial_std``: each channel's std over the positions of the probe's alpha map,
    averaged over the channels; how much alpha differs from place to place, which layer/channel alpha cannot)."""
    summary = {}
    for name, (module, alpha) in alpha_maps(pl_module, probe).items():
        values = alpha.flatten().double()
        summary[name] = {
            "mode": module.alpha_mode,
            "mean": values.mean().item(),
            "std": values.std(unbiased=False).item(),
            "min": values.min().item(),
            "max": values.max().item(),
        }
        if module.alpha_mode == "dense":  # (C, H_out, W_out)
            per_channel = alpha.double().flatten(1).std(1, unbiased=False)
            summary[name]["spatial_std"] = per_channel.mean().item()
    return summary
