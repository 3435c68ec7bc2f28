"""The global random generators in the checkpoint, so that a resumed fit draws the numbers the uninterrupted one
would: :class:`RNGState`."""

from __future__ import annotations

import random
from typing import Optional

import lightning as L
import numpy as np
import torch
from typing_extensions import override


class RNGState(L.Callback):
    """Checkpoints the global random generators (Python, NumPy, torch's CPU and CUDA ones) and restores them just
    before the first training step of a resumed fit, so that dropout draws the same masks as in an uninterrupted
    run and ``--ckpt_path last`` ends where the uninterrupted run ends (Lightning saves no RNG state itself).

    The state is taken when the checkpoint is written (after a validation, whose loader's seed draw is already done)
    and restored at ``on_train_batch_start``, after everything a resumed fit does before training (the sanity check,
    the loaders' seed draws) has consumed its own numbers. The data order and augmentation come from the loader's
    own generator (``ResumableLoader``), not from these."""

    def __init__(self) -> None:
        self._pending: Optional[dict] = None

    @override
    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain lists and tensors: the checkpoint stays loadable with torch.load(weights_only=True)
        state = {
            "python": random.getstate(),
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @override
    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
