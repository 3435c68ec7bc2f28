# %% [markdown]
# # 03 · Qualitative comparisons, as the supplement's Figures 1–3
#
# Rows of **image | ground truth | max-pooling model | P-pooling model | error map**, for VOC (VGG16, Fig. 1),
# Cityscapes and ADE20K (Inception, Figs 2–3), coloured with each dataset's palette (ignored pixels white).
#
# The error map, which the paper does not have, compares the two models pixel by pixel: **red** = only the
# max-pooling model is wrong, **blue** = only the P-pooling model is wrong, **grey** = both are wrong, white = both
# right. Pixels within 3 px of a ground-truth boundary, where the paper says P-pooling helps, are drawn at full
# strength; errors farther from boundaries are paler. Each panel's title counts the boundary errors of each model.
#
# Which checkpoints: a user's full runs when they exist (`results/logs/<dataset>/<backbone>/{max,ppool}/0/`, with
# the data in the config's folder). Otherwise, on a fresh machine: the `--quick` VOC runs (trained here if missing)
# and miniature Inception pairs trained here on generated Cityscapes and ADE20K sets. Miniature models are barely
# trained; their panels are labelled as such and show only that the pipeline works.

# %%
from pathlib import Path

import matplotlib

if "ipykernel" not in __import__("sys").modules:  # as a script: no screen needed
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import yaml
from scipy import ndimage

from polypool.data import ADE20KDataModule, CityscapesDataModule, VOCSegmentationDataModule
from polypool.data.classes import IGNORE_INDEX
from polypool.repro.notebooks import (MINIATURE_LABEL, QUICK_DATA, QUICK_LABEL, best_checkpoint, load_model,
                                      miniature_data, miniature_pair, quick_log_dir, repo_root, save_figure)

ROOT = repo_root()
NUM_IMAGES = 3
BOUNDARY_PX = 3
SETUPS = {  # dataset -> (backbone, DataModule class, supplement figure)
    "voc": ("vgg", VOCSegmentationDataModule, "Fig. 1"),
    "cityscapes": ("inception", CityscapesDataModule, "Fig. 2"),
    "ade20k": ("inception", ADE20KDataModule, "Fig. 3"),
}


def checkpoints_and_data(dataset: str) -> tuple[dict[str, Path], Path, str]:
    """Checkpoints of the max and P-pooling models, the data root, and a label saying what they are."""
    backbone, _, _ = SETUPS[dataset]
    full = {p: ROOT / "results" / "logs" / dataset / backbone / p / "0" for p in ("max", "ppool")}
    if all((d / "checkpoints").is_dir() for d in full.values()):
        config = yaml.safe_load((ROOT / "configs" / dataset / f"{backbone}.yaml").read_text())
        return {p: best_checkpoint(d) for p, d in full.items()}, ROOT / config["data"]["init_args"]["root"], "full runs"
    if dataset == "voc":
        return ({p: best_checkpoint(quick_log_dir(p)) for p in ("max", "ppool")}, ROOT / QUICK_DATA, QUICK_LABEL)
    return ({p: best_checkpoint(d) for p, d in miniature_pair(dataset).items()}, miniature_data(dataset),
            MINIATURE_LABEL.format(dataset=dataset))


# %% [markdown]
# ## Colouring and the error map

# %%
def colour(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    palette = np.asarray(palette, dtype=np.uint8).copy()
    palette[IGNORE_INDEX] = 255
    return palette[mask]


def boundary_band(mask: np.ndarray, width: int = BOUNDARY_PX) -> np.ndarray:
    """Pixels within ``width`` px of a change of ground-truth label (the ignore label counts as a label)."""
    edges = np.zeros(mask.shape, dtype=bool)
    edges[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edges[1:, :] |= mask[1:, :] != mask[:-1, :]
    return ndimage.binary_dilation(edges, iterations=width)


def error_map(truth: np.ndarray, pred_max: np.ndarray, pred_p: np.ndarray) -> tuple[np.ndarray, dict]:
    """RGB error map (red: only max wrong, blue: only P wrong, grey: both; paler away from boundaries) and the
    counts of wrong pixels near boundaries."""
    valid = truth != IGNORE_INDEX
    wrong_max, wrong_p = (pred_max != truth) & valid, (pred_p != truth) & valid
    near = boundary_band(truth)
    rgb = np.full(truth.shape + (3,), 255, dtype=np.float32)
    for selection, value in (((wrong_max & ~wrong_p), (220, 30, 30)), ((wrong_p & ~wrong_max), (30, 80, 220)),
                             ((wrong_max & wrong_p), (90, 90, 90))):
        strength = np.where(near, 1.0, 0.35)[selection][:, None]
        rgb[selection] = 255 * (1 - strength) + np.array(value, dtype=np.float32) * strength
    rgb[~valid] = (235, 235, 200)  # ignored pixels: pale yellow
    counts = {"max": int((wrong_max & near).sum()), "P": int((wrong_p & near).sum()), "band": int((near & valid).sum())}
    return rgb.astype(np.uint8), counts


# %% [markdown]
# ## The panels

# %%
def panel(dataset: str) -> dict:
    backbone, datamodule_class, figure = SETUPS[dataset]
    checkpoints, data_root, label = checkpoints_and_data(dataset)
    datamodule = datamodule_class(root=data_root, num_workers=0)
    datamodule.setup("validate")
    models = {pooling: load_model(path) for pooling, path in checkpoints.items()}
    mean, std = torch.tensor(datamodule.mean).view(3, 1, 1), torch.tensor(datamodule.std).view(3, 1, 1)
    count = min(NUM_IMAGES, len(datamodule.val_dataset))
    height, width = datamodule.val_dataset[0][1].shape
    fig, axes = plt.subplots(count, 5, figsize=(17, (3.3 * height / width + 0.5) * count + 0.8), squeeze=False)
    totals = {"max": 0, "P": 0, "band": 0}
    for row in range(count):
        image, truth = datamodule.val_dataset[row]
        with torch.no_grad():
            preds = {p: m.predict_logits(image[None]).argmax(1)[0].numpy() for p, m in models.items()}
        truth = truth.numpy()
        errors, counts = error_map(truth, preds["max"], preds["ppool"])
        totals = {k: totals[k] + counts[k] for k in totals}
        shown = ((image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
        columns = [(shown, "image"), (colour(truth, datamodule.palette), "ground truth"),
                   (colour(preds["max"], datamodule.palette), "max pooling"),
                   (colour(preds["ppool"], datamodule.palette), "P-pooling"),
                   (errors, f"errors near boundaries: max {counts['max']}, P {counts['P']}")]
        for ax, (picture, title) in zip(axes[row], columns):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(f"val image {row}", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=np.array(c) / 255) for c in
               ((220, 30, 30), (30, 80, 220), (90, 90, 90), (235, 235, 200))]
    fig.legend(handles, ["only max wrong", "only P wrong", "both wrong", "ignored"], loc="lower right", ncol=4,
               fontsize=9, title=f"error map (full colour: within {BOUNDARY_PX} px of a boundary)")
    fig.suptitle(f"{dataset} ({figure} of the supplement), {backbone}: max pooling vs P-pooling\n{label}",
                 color="black" if label == "full runs" else "tab:red", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, f"03_qualitative_{dataset}")
    plt.show()
    return totals


for dataset in SETUPS:
    totals = panel(dataset)
    print(f"{dataset}: wrong pixels within {BOUNDARY_PX} px of a boundary, over {totals['band']} such pixels: "
          f"max pooling {totals['max']}, P-pooling {totals['P']}")
