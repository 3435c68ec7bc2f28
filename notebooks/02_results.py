# %% [markdown]
# # 02 · Results against the paper: supplementary Tables 1–2
#
# The tables are regenerated from the logged runs by `polypool.tables` (the same code `reproduce.sh` ends with),
# the paper's rows beside ours. The bar charts show what the tables are about: each pooling's per-class IoU **minus
# max pooling's**, ours next to the paper's.
#
# Which runs: full runs in `results/runs/voc/<backbone>/` when a user has trained them
# (`./reproduce.sh voc vgg --gpus 4`); otherwise your `--quick` miniature runs in `results/quick/runs/`
# (`./reproduce.sh voc vgg --quick`, minutes on a CPU), and without those the committed miniature in
# `results/quick/reference/runs/` (3 seeds, trained when it was committed, not by you). Quick runs are
# the CPU miniature (README, "The CPU miniature"): VGG16 on a generated detail-heavy VOC-format set, not PASCAL VOC,
# so their numbers are not comparable with the paper's, and every figure made from them says so in its title.

# %%
from pathlib import Path

import matplotlib

if "ipykernel" not in __import__("sys").modules:  # as a script: no screen needed
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from polypool.repro.notebooks import QUICK_LABEL, quick_runs, repo_root, save_figure
from polypool.repro.tables import METHODS, Table, load_paper, load_records, quick_note, write_tables

ROOT = repo_root()
LABELS = dict(METHODS)


def our_runs(backbone: str) -> tuple[Table, str]:
    """Our table for voc/<backbone> and where it came from: full runs if any, else the quick runs (vgg only)."""
    full = load_records(ROOT / "results" / "runs", "voc", backbone)
    if full.runs:
        return full, "full"
    if backbone == "vgg":
        return load_records(quick_runs(), "voc", backbone), "quick"
    return full, "none"


tables = {backbone: our_runs(backbone) for backbone in ("vgg", "resnet")}
for backbone, (table, kind) in tables.items():
    if kind == "none":
        print(f"voc/{backbone}: no runs (./reproduce.sh voc {backbone} trains them)")
    else:
        print(f"voc/{backbone}: {kind} runs, seeds per pooling: {({LABELS[m]: len(r) for m, r in table.runs.items()})}")

# %% [markdown]
# ## The tables
#
# Written to `results/quick/voc_<backbone>.{md,csv,tex}` for quick runs and `results/voc_<backbone>.*` for full
# runs, exactly as `reproduce.sh` writes them. A dash is a run that does not exist (never filled in).

# %%
def show_markdown(text: str) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(text))
            return
    except ImportError:
        pass
    print(text)


for backbone, (table, kind) in tables.items():
    if kind == "none":
        print(f"voc/{backbone}: no runs yet; the chart below shows the paper's rows only.")
        continue
    # quick: next to the records read (your results/quick/runs, else the committed results/quick/reference/runs)
    out = (quick_runs().parent if kind == "quick" else ROOT / "results") / f"voc_{backbone}"
    # as reproduce.sh writes them: the quick note, and no paper rows beside a generated set's numbers
    note, paper = (quick_note(table), None) if kind == "quick" else ("", load_paper("voc", backbone))
    show_markdown(write_tables(table, paper, out, note))

# %% [markdown]
# ## Per-class IoU change against max pooling, ours beside the paper's
#
# Top: P-pooling minus max pooling, per class (a positive bar = P-pooling segments that class better). Bottom: the
# mIoU change of every pooling against max pooling. Hatched bars are the paper's, solid bars ours (a black diamond
# marks each of our values, so a change of exactly 0 is visible). A class absent from our validation set (possible
# in a miniature run) is marked n/a.

# %%
def deltas(table: Table, method: str) -> np.ndarray:
    row, base = table.row(method), table.row("max")
    if row is None or base is None:
        return np.full(len(table.columns), np.nan)
    return row[0] - base[0]


def draw_ours(ax, positions, values, colour, kind):
    """Solid bars with a diamond on each value, so a delta of exactly 0 is visible; 'n/a' where NaN."""
    ax.bar(positions, np.nan_to_num(values), 0.4, color=colour, label=f"ours ({kind} runs; ◆ = value)")
    ax.plot(positions, values, "D", color="black", ms=4)
    for x in positions[np.isnan(values)]:
        ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)


for backbone, (ours, kind) in tables.items():
    paper = load_paper("voc", backbone)
    columns = paper.columns
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(14, 8.5), gridspec_kw={"height_ratios": [3, 2]})
    positions = np.arange(len(columns))
    top.bar(positions - 0.2, deltas(paper, "ppool"), 0.4, color="tab:blue", alpha=0.5, hatch="//", label="paper")
    if kind != "none":
        draw_ours(top, positions + 0.2, deltas(ours, "ppool"), "tab:blue", kind)
    top.axhline(0, color="black", lw=0.8)
    top.set_xticks(positions, columns, rotation=45, ha="right")
    top.set(ylabel="IoU(P-pooling) − IoU(max) [points]", title="Per class: P-pooling minus max pooling")
    top.legend()
    methods = [m for m, _ in METHODS if m != "max"]
    positions = np.arange(len(methods))
    bottom.bar(positions - 0.2, [deltas(paper, m)[-1] for m in methods], 0.4, color="tab:orange", alpha=0.5,
               hatch="//", label="paper")
    if kind != "none":
        draw_ours(bottom, positions + 0.2, np.array([deltas(ours, m)[-1] for m in methods]), "tab:orange", kind)
    bottom.axhline(0, color="black", lw=0.8)
    bottom.set_xticks(positions, [LABELS[m] for m in methods])
    bottom.set(ylabel="mIoU − mIoU(max) [points]", title="mIoU of each pooling minus max pooling's")
    bottom.legend()
    table_name = {"vgg": "Table 1, VGG16", "resnet": "Table 2, ResNet"}[backbone]
    status = {"quick": f"{QUICK_LABEL} (not comparable to the paper)", "full": "full runs",
              "none": "ours: no runs yet (paper only)"}[kind]
    fig.suptitle(f"VOC 2012 val, {table_name}: ours vs the paper\n{status}", fontsize=12,
                 color="tab:red" if kind != "full" else "black")
    fig.tight_layout()
    save_figure(fig, f"02_voc_{backbone}_deltas")
    plt.show()
    if kind != "none":
        recognised = {LABELS[m]: int((np.nan_to_num(ours.row(m)[0][:-1]) > 0).sum()) for m in ours.runs}
        print(f"voc/{backbone}: classes with IoU > 0, per pooling: {recognised}")
        print(f"voc/{backbone} mIoU, ours: " + ", ".join(
            f"{LABELS[m]} {ours.row(m)[0][-1]:.1f}" for m, _ in METHODS if ours.row(m) is not None))

# %% [markdown]
# ## Details: trimap mIoU against the band width, and Boundary IoU
#
# DeepLab's trimap experiment: the mIoU over the pixels within w px of a ground-truth boundary, for growing w (at
# large w it approaches the mIoU). A pooling that keeps details scores higher at small w. Each line is one pooling
# (mean over seeds, bars: ± std over seeds); the legend gives each pooling's Boundary IoU (Cheng et al., 2021;
# d = 2% of the image diagonal). Both come from the run records, so a table without detail metrics (records written
# before they existed, or the paper's) has no line here.

# %%
def trimap_curves(table: Table) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """Per pooling: band widths, mean and std of trimap mIoU over seeds, and the mean Boundary IoU (percent)."""
    curves = {}
    for method, records in table.records.items():
        widths = sorted({int(w) for r in records for w in (r.get("trimap_miou") or {})})
        if not widths:
            continue
        values = np.array([[100 * r["trimap_miou"].get(str(w), np.nan) for w in widths] for r in records])
        boundary = np.nanmean([100 * (r.get("boundary_iou") or {}).get("mean", np.nan) for r in records])
        curves[method] = (np.array(widths), values.mean(0), values.std(0), float(boundary))
    return curves


for backbone, (table, kind) in tables.items():
    curves = trimap_curves(table) if kind != "none" else {}
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, (widths, mean, std, boundary) in curves.items():
        ax.errorbar(widths, mean, yerr=std, marker="o", capsize=3, label=f"{LABELS[method]} (bIoU {boundary:.1f})")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="band width w around the ground-truth boundaries [px]", ylabel="trimap mIoU [%]")
    status = {"quick": f"{QUICK_LABEL} (not PASCAL VOC)", "full": "full runs",
              "none": "no runs with detail metrics yet"}[kind]
    if not curves:
        ax.text(0.5, 0.5, f"voc/{backbone}: no run records with detail metrics", ha="center", va="center",
                transform=ax.transAxes)
    else:
        ax.legend()
    ax.set_title(f"voc/{backbone}: trimap mIoU by band width\n{status}", color="tab:red" if kind != "full" else "black")
    fig.tight_layout()
    save_figure(fig, f"02_voc_{backbone}_trimap")
    plt.show()
    for method, (widths, mean, _, boundary) in curves.items():
        print(f"voc/{backbone} {LABELS[method]}: trimap mIoU " +
              ", ".join(f"{w}px {m:.1f}" for w, m in zip(widths, mean)) + f"; Boundary IoU {boundary:.1f}")
