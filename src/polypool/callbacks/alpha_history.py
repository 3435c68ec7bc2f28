"""P-pooling's alpha over training, in the run's own folder: :class:`AlphaHistory` writes it,
:func:`load_alpha_history` reads it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from typing_extensions import override

from .alpha import alpha_maps


class AlphaHistory(L.Callback):
    """Appends the alpha of every P-pooling layer of a :class:`SegmentationModel` to ``<default_root_dir>/alpha_history.jsonl`` every
    ``every_n_steps`` training steps (step 0, before the first update, included) and when training ends, so the
    alpha notebook can plot its histograms over training from the run's own folder (W&B's histograms live in its
    binary run files).

    One JSON line per snapshot: ``{"step": s, "layers": {name: {"mode", "range", "mean", "min", "max", "values",
    "sampled", "hist": {"edges", "counts"}}}}``. In layer/channel mode ``values`` is the alpha itself (one or C
    numbers). A dense alpha depends on the input, so it is taken over a fixed probe image (the first training image
    this callback sees): statistics and histogram over the whole alpha map, and ``values`` a fixed random sample of
    at most ``max_values`` of its entries (the same positions in every snapshot; ``sampled`` is true), so that
    histograms at any resolution can be drawn later. ``hist`` has ``bins`` equal bins over the layer's
    ``alpha_range``. Models without P-pooling write nothing.
    """

    filename = "alpha_history.jsonl"

    def __init__(self, every_n_steps: int = 100, bins: int = 50, max_values: int = 1024):
        if every_n_steps < 1 or bins < 1 or max_values < 1:
            raise ValueError(
                f"AlphaHistory needs every_n_steps, bins and max_values >= 1, got {every_n_steps}, {bins}, {max_values}"
            )
        self.every_n_steps, self.bins, self.max_values = every_n_steps, bins, max_values
        self._probe: Optional[torch.Tensor] = None
        self._last_step: Optional[int] = None
        self._sample_positions: dict[str, torch.Tensor] = {}

    def path(self, trainer) -> Path:
        return Path(trainer.default_root_dir) / self.filename

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._probe is None:
            self._probe = batch[0][:1].detach().clone()
        if trainer.global_step % self.every_n_steps == 0:
            self._write(trainer, pl_module)

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    @torch.no_grad()
    def snapshot(self, pl_module) -> dict:
        """``{layer name: statistics}`` of every P-pooling layer of the model, now."""
        stats = {}
        for name, (module, alpha) in alpha_maps(pl_module, self._probe).items():
            low, high = module.alpha_range
            alpha = alpha.flatten()
            if module.alpha_mode == "dense":
                if name not in self._sample_positions:
                    generator = torch.Generator().manual_seed(0)
                    self._sample_positions[name] = torch.randperm(alpha.numel(), generator=generator)[: self.max_values]
                values = alpha[self._sample_positions[name]]
            else:
                values = alpha
            top = high if high > low else low + 1.0  # a fixed alpha (low == high) still gets bins
            counts = torch.histc(alpha, bins=self.bins, min=low, max=top)
            edges = torch.linspace(low, top, self.bins + 1)
            stats[name] = {
                "mode": module.alpha_mode,
                "range": [low, high],
                "mean": alpha.mean().item(),
                "min": alpha.min().item(),
                "max": alpha.max().item(),
                "values": [round(v, 6) for v in values.tolist()],
                "sampled": module.alpha_mode == "dense",
                "hist": {"edges": edges.tolist(), "counts": counts.int().tolist()},
            }
        return stats

    def _write(self, trainer, pl_module) -> None:
        step = int(trainer.global_step)
        if not trainer.is_global_zero or step == self._last_step:
            return
        layers = self.snapshot(pl_module)
        if not layers:
            return
        self._last_step = step
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:  # appending: a resumed run adds to its history
            f.write(json.dumps({"step": step, "layers": layers}) + "\n")


def load_alpha_history(path) -> list[dict]:
    """The snapshots of an ``alpha_history.jsonl``, by step; a step written twice (a resumed run) keeps the last."""
    by_step = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            snapshot = json.loads(line)
            by_step[snapshot["step"]] = snapshot
    return [by_step[step] for step in sorted(by_step)]
