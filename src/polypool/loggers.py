"""The W&B logger as the reproduction uses it: offline by itself when there are no credentials."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import WandbLogger


def has_wandb_credentials() -> bool:
    """An API key in the environment or in ~/.netrc (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class PolypoolWandbLogger(WandbLogger):
    """``WandbLogger`` that runs offline when no credentials are found (``offline=None``), and whose run group,
    tags and config the CLI fills in (dataset/backbone, the pooling, the resolved config) before the run starts.

    Offline runs are kept under ``save_dir``; ``wandb sync <run dir>`` uploads them later.
    """

    def __init__(self, project: str = "polypool", save_dir: str = "results/wandb", offline: Optional[bool] = None,
                 **kwargs: Any):
        if offline is None:
            offline = not has_wandb_credentials() or os.environ.get("WANDB_MODE") == "offline"
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(project=project, save_dir=save_dir, offline=offline, **kwargs)

    def set_run_info(self, group: str, tags: list[str], config: dict) -> None:
        """Group, tags and config of the run; takes effect if the W&B run has not started yet."""
        self._wandb_init.update(group=group, tags=tags, config=config)
