"""The names under which a run's values reach W&B, in one place.

The code that logs them (``SegmentationModel``, ``polypool.callbacks``), the table's W&B reader
(``python -m polypool.tables --wandb``) and the dashboard (``python -m polypool.dashboard``) all take them from here,
so the dashboard plots what the runs log and the table reads what they log. Nothing here imports torch or wandb.

Every value is logged with :data:`STEP` (Lightning's ``WandbLogger`` makes it the x axis of every key).
"""

from __future__ import annotations

STEP = "trainer/global_step"

# -- the run: its group, and where its config holds the pooling, the seed and the provenance -------------------------
POOLING_CONFIG = "model.pooling"  # run.config["model"]["pooling"]: the table's row, the dashboard's grouping
SEED_CONFIG = "seed_everything"
PROVENANCE_CONFIG = "provenance"  # {"software": {...}, "hardware": {...}} (polypool.provenance; cli.wandb_run_info)


def group(dataset: str, experiment: str) -> str:
    """The W&B group of a table's runs: ``<dataset>/<experiment>`` (the CLI's ``wandb_run_info``)."""
    return f"{dataset}/{experiment}"


def config_value(config: dict, dotted: str):
    """``config["model"]["pooling"]`` for ``"model.pooling"`` (None where a level is missing)."""
    value = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# -- scalars -----------------------------------------------------------------------------------------------------------
TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"
VAL = "val/"  # periodic validation (limit_val_batches of the val set)
FINAL = "final/"  # the final evaluation of the whole val set (what a run record holds)
VAL_MIOU = VAL + "mIoU"
FINAL_MIOU = FINAL + "mIoU"
FINAL_BOUNDARY_MIOU = FINAL + "boundary_mIoU"
# the band widths of the trimap mIoU (polypool.metrics.TrimapIoU's default)
TRIMAP_WIDTHS = (1, 2, 4, 8, 16, 32)


def miou(prefix: str) -> str:
    """``val/mIoU`` or ``final/mIoU`` (``prefix``: :data:`VAL` or :data:`FINAL`)."""
    return f"{prefix}mIoU"


def class_iou(prefix: str, class_name: str) -> str:
    """``val/IoU/<class>`` or ``final/IoU/<class>``."""
    return f"{prefix}IoU/{class_name}"


def final_trimap_miou(width: int) -> str:
    return f"{FINAL}trimap_mIoU/{int(width)}px"


# -- alpha of each P-pooling layer (``layer``: its name in the backbone, e.g. ``features.maxpool`` or ``4``) ----------
ALPHA_STATS = ("mean", "min", "max")


def alpha_stat(layer: str, stat: str) -> str:
    """``alpha/<layer>/mean|min|max``: alpha itself (layer/channel mode), or over the last forward's alpha map
    (dense mode); at every validation and at the final evaluation."""
    return f"alpha/{layer}/{stat}"


def alpha_hist(layer: str) -> str:
    """``alpha/<layer>/hist``: the histogram of a channel-mode alpha's per-channel values."""
    return f"alpha/{layer}/hist"


def alpha_dense_hist(layer: str) -> str:
    """``alpha/<layer>/dense_hist``: the histogram of a dense alpha over the run's fixed probe image (its first
    training image), over the layer's alpha range."""
    return f"alpha/{layer}/dense_hist"


def alpha_histogram_key(layer: str, alpha_mode: str) -> str:
    """The histogram a layer of this alpha mode sends: dense -> :func:`alpha_dense_hist`, channel ->
    :func:`alpha_hist`; a layer-mode alpha (one number) has none (empty string)."""
    return {"dense": alpha_dense_hist(layer), "channel": alpha_hist(layer)}.get(alpha_mode, "")


# -- media ---------------------------------------------------------------------------------------------------------
PANEL = "val/panel"  # image | ground truth | prediction (QualitativePanel; the final evaluation)


def alpha_map(layer: str) -> str:
    """``alpha_map/<layer>``: a dense alpha's map (mean over channels) of the first validation image."""
    return f"alpha_map/{layer}"
