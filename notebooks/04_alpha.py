# %% [markdown]
# # 04 · The learned α
#
# P-pooling learns its exponent α: one per layer (`alpha_mode="layer"`), one per channel (`"channel"`), or one per
# output position and channel, predicted by a small side branch from the pooling input (`"dense"`, the authors'
# setting). This notebook shows, for VGG16's five pooling layers:
#
# 1. the final α of each layer in each mode;
# 2. α's histogram over training, read from each run's `alpha_history.jsonl` (written by the `AlphaHistory`
#    callback, which every `python -m polypool fit` run has);
# 3. dense α maps over an image: where the network pools more like max (high α) or more like average (low α).
#
# Runs: a user's full VOC/VGG P-pooling run when it exists (`results/logs/voc/vgg/ppool/0`), else the `--quick`
# one (trained again here when its checkpoint is missing); plus one layer-α and one channel-α run with the quick
# preset, trained here. The dense run is the table's P-pooling run: the authors' init 30, range [1, 50], α learning
# rate ×1. So that a few steps move α visibly, the layer/channel runs start at α = 3 (range [0, 50]) and give α the
# learning-rate multiplier ×180 that the authors' code gives the dense branch's α bias (docs/paper_notes.md). Quick
# runs are far too short to say what α converges to; they show what the logging and the plots do.

# %%
import matplotlib

if "ipykernel" not in __import__("sys").modules:  # as a script: no screen needed
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from polypool.callbacks import AlphaHistory, load_alpha_history
from polypool.data import VOCSegmentationDataModule
from polypool.repro.notebooks import (QUICK_DATA, QUICK_LABEL, best_checkpoint, load_model, quick_log_dir,
                                      repo_root, save_figure, train_quick_variant)

ROOT = repo_root()
full_dense = ROOT / "results" / "logs" / "voc" / "vgg" / "ppool" / "0"
if (full_dense / AlphaHistory.filename).is_file():
    RUNS, LABEL = {"dense": full_dense}, "full run"
else:
    RUNS, LABEL = {"dense": quick_log_dir("ppool")}, QUICK_LABEL
for mode in ("layer", "channel"):
    kwargs = f'{{"alpha_mode": "{mode}", "alpha_init": 3.0, "alpha_range": [0.0, 50.0]}}'
    RUNS[mode] = train_quick_variant(f"voc_vgg_ppool_{mode}", ["--model.pooling", "ppool", "--model.pooling_kwargs",
                                                               kwargs, "--model.pooling_lr_mult", "180"])
TITLE_COLOUR = "black" if LABEL == "full run" else "tab:red"  # quick runs are flagged in red
HISTORY = {mode: load_alpha_history(run / AlphaHistory.filename) for mode, run in RUNS.items()}
LAYERS = list(HISTORY["dense"][-1]["layers"])  # backbone module names, in network order
NAMES = {name: f"pool{i + 1} ({name})" for i, name in enumerate(LAYERS)}
for mode, history in HISTORY.items():
    print(f"{mode:8s} {len(history)} snapshots, steps {history[0]['step']}..{history[-1]['step']}, "
          f"from {RUNS[mode].relative_to(ROOT)}")

# %% [markdown]
# ## 1. The final α per layer
#
# Layer mode: the one α of each layer. Channel mode: the distribution over channels (box: quartiles, whiskers:
# 5–95%). Dense mode: the distribution of the α map over the probe image (the first training image; 1,024 sampled
# positions per layer).

# %%
def distribution(snapshot_layer: dict) -> np.ndarray:
    """The α values of one layer in one snapshot (for dense α: the fixed sample of the probe image's α map)."""
    return np.asarray(snapshot_layer["values"])


fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), gridspec_kw={"wspace": 0.3})
positions = np.arange(len(LAYERS))
for ax, mode, colour in zip(axes, ("layer", "channel", "dense"), ("C0", "C1", "C2")):
    first, last = HISTORY[mode][0]["layers"], HISTORY[mode][-1]["layers"]
    data = [distribution(last[name]) for name in LAYERS]
    parts = ax.boxplot(data, positions=positions, widths=0.5, whis=(5, 95), showfliers=False, patch_artist=True)
    for box in parts["boxes"]:
        box.set(facecolor=colour, alpha=0.5)
    jitter = np.random.default_rng(0)
    for x, values in zip(positions, data):  # every value (at most 1,024 per layer), jittered sideways
        ax.plot(x + jitter.uniform(-0.18, 0.18, len(values)), values, ".", color=colour, ms=2, alpha=0.5)
    ax.plot(positions, [first[name]["mean"] for name in LAYERS], "k_", ms=22, mew=1.5, label="mean α at step 0")
    ax.set_xticks(positions, [NAMES[n] for n in LAYERS], rotation=20, fontsize=8)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set(ylabel="α", title=f"{mode} α at step {HISTORY[mode][-1]['step']}")
    ax.legend(fontsize=8)
fig.suptitle(f"Learned α per pooling layer of VGG16 (box: quartiles, whiskers: 5–95%; note each panel's α axis)"
             f"\n{LABEL}", color=TITLE_COLOUR, y=1.06)
save_figure(fig, "04_alpha_per_layer")
plt.show()
for mode in HISTORY:
    first, last = HISTORY[mode][0]["layers"], HISTORY[mode][-1]["layers"]
    print(f"{mode:8s} mean alpha, first -> last snapshot:",
          {NAMES[name]: f"{first[name]['mean']:.3f} -> {last[name]['mean']:.3f}" for name in LAYERS})

# %% [markdown]
# ## 2. α's histogram over training
#
# Each panel is one layer in one mode: training step down, α across, colour = fraction of the layer's α values in
# each bin (layer mode: the bin holding its single α; dense mode: the sampled positions of the probe image's map).
# The bins (30) span the α values that layer took during the run, so small moves stay visible: read the α axis of
# each panel. The cyan line is the mean.

# %%
fig, axes = plt.subplots(3, len(LAYERS), figsize=(3.4 * len(LAYERS), 10), squeeze=False,
                         gridspec_kw={"hspace": 0.5, "wspace": 0.3})
for row, mode in enumerate(("layer", "channel", "dense")):
    history = HISTORY[mode]
    steps = [snapshot["step"] for snapshot in history]
    for col, name in enumerate(LAYERS):
        values = [distribution(snapshot["layers"][name]) for snapshot in history]
        low, high = min(v.min() for v in values), max(v.max() for v in values)
        margin = max((high - low) * 0.05, 1e-4 * max(abs(high), 1.0))
        edges = np.linspace(low - margin, high + margin, 31)
        counts = np.stack([np.histogram(v, edges)[0] / len(v) for v in values])
        image = axes[row, col].imshow(counts, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest",
                                      extent=(edges[0], edges[-1], steps[-1], steps[0]))
        axes[row, col].plot([v.mean() for v in values], steps, color="cyan", lw=1, label="mean α")
        axes[row, col].set_title(f"{mode} α, {NAMES[name]}", fontsize=9)
        axes[row, col].set_xlabel("α", fontsize=8)
        axes[row, col].tick_params(labelsize=7)
        axes[row, col].ticklabel_format(axis="x", useOffset=False)
        if col == 0:
            axes[row, col].set_ylabel("training step")
axes[0, 0].legend(fontsize=7, loc="lower left")
fig.colorbar(image, ax=axes, shrink=0.6, label="fraction of the layer's α values")
fig.suptitle(f"α histograms over training (from alpha_history.jsonl)\n{LABEL}", color=TITLE_COLOUR)
save_figure(fig, "04_alpha_histograms")
plt.show()

# %% [markdown]
# ## 3. Dense α over an image
#
# The dense run's α map at each pooling layer for one validation image (the channel mean; α per output position).
# High α pools like max, low α like average. Computed from the run's checkpoint with
# `SegmentationModel.dense_alpha_maps`, the same maps the W&B logger receives during training.

# %%
model = load_model(best_checkpoint(RUNS["dense"]))
data_root = ROOT / QUICK_DATA if LABEL == QUICK_LABEL else ROOT / "data" / "voc"
datamodule = VOCSegmentationDataModule(root=data_root, num_workers=0)
datamodule.setup("validate")
image, truth = datamodule.val_dataset[0]
maps = model.dense_alpha_maps(image[None])
mean, std = torch.tensor(datamodule.mean).view(3, 1, 1), torch.tensor(datamodule.std).view(3, 1, 1)

fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
axes = axes.flatten()
axes[0].imshow((image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
axes[0].set_title("val image 0")
for ax, (name, alpha) in zip(axes[1:], maps.items()):
    channel_mean = alpha.mean(0).numpy()
    centre = float(channel_mean.mean())  # drawn as the deviation from the map's mean, which can be tiny
    shown = ax.imshow(channel_mean - centre, cmap="coolwarm", norm=matplotlib.colors.CenteredNorm(),
                      interpolation="nearest")  # white = the map's mean
    ax.set_title(f"{NAMES[name]}: α {centre:.4f}, range {channel_mean.min():.4f} to {channel_mean.max():.4f}",
                 fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=f"α − {centre:.4f} (channel mean)")
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(f"Dense α maps of VGG16's pooling layers (red: more max-like, blue: more average-like)\n{LABEL}",
             color=TITLE_COLOUR)
fig.tight_layout()
save_figure(fig, "04_dense_alpha_maps")
plt.show()
