"""Logged runs -> the supplement's Tables 1 and 2 (per-class IoU and mIoU), the paper's rows beside ours.

    python -m polypool.tables --runs results/runs --dataset voc --backbone vgg
    python -m polypool.tables --runs results/runs --dataset voc --backbone vgg_largefov
    python -m polypool.tables --wandb ENTITY/PROJECT --dataset voc --backbone resnet

``--backbone`` names the experiment, i.e. the config whose runs are read (``configs/voc/vgg.yaml`` -> ``vgg``,
``configs/voc/vgg_largefov.yaml`` -> ``vgg_largefov``); the paper's table is the one of its backbone family (both
VGG configs against Table 1, both ResNet configs against Table 2). Writes ``results/<dataset>_<experiment>.{md,csv,tex}``: our rows (mean ± std over seeds), the paper's rows, and our
minus the paper's; the best value of each column is bold, as in the supplement. A missing run is a dash and is
listed under the table, never filled in. Sources: our run records (``RunRecord``), CSVLogger's ``metrics.csv``
files (W&B offline runs keep their metrics in a binary file), or the W&B API.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .data.classes import VOC_CLASSES, VOC_SHORT_NAMES

# The supplement's rows, in its order: (pooling name in the registry, row label).
METHODS = (("max", "Max"), ("avg", "Average"), ("strided_conv", "Strided-C"), ("gated", "Gated"), ("dpp", "DPP"),
           ("ppool", "P-pooling"))
PAPER_TABLES = {("voc", "vgg"): "table1_voc_vgg.tsv", ("voc", "resnet"): "table2_voc_resnet.tsv"}
PAPER_DIR = Path(__file__).resolve().parents[2] / "results" / "paper"
# The note above tables of ``./reproduce.sh voc vgg --quick`` runs (``--quick`` below; the results notebook uses it).
QUICK_NOTE = ("Miniature run (./reproduce.sh voc vgg --quick): a generated 64-image VOC-format set, no pretrained "
              "weights (no network), 48 CPU steps per variant. It shows that the whole pipeline runs end to end; 48 "
              "steps from random initialisation are far too few for VGG16 (no batch norm) to learn much beyond the "
              "background, so its numbers say nothing about the paper's.")


@dataclass
class Table:
    """Per-class IoU (percent) of each method: a list of runs (seeds), each ``len(columns) - 1`` values + mean.
    ``records`` keeps the run records it was read from (config files, alpha over training)."""

    columns: list[str]
    runs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    records: dict[str, list[dict]] = field(default_factory=dict)

    def row(self, method: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(mean, std) over the seeds, or None when the method has no run."""
        runs = self.runs.get(method)
        if not runs:
            return None
        stacked = np.stack(runs)
        return stacked.mean(0), (stacked.std(0, ddof=1) if len(runs) > 1 else np.zeros(stacked.shape[1]))


def record_values(per_class: Sequence[Optional[float]], miou: Optional[float] = None) -> np.ndarray:
    """Per-class IoU in [0, 1] (None/NaN for absent classes) -> percent values plus the mean column."""
    values = np.array([np.nan if v is None else float(v) for v in per_class]) * 100
    mean = np.nanmean(values) if miou is None else miou * 100
    return np.append(values, mean)


def load_records(root: Path, dataset: str, backbone: str) -> Table:
    """Our run records: ``<root>/<dataset>/<backbone>/<pooling>/<seed>.json``."""
    table = Table(columns=list(VOC_SHORT_NAMES) + ["mean"])
    for method, _ in METHODS:
        for path in sorted((root / dataset / backbone / method).glob("*.json")):
            record = json.loads(path.read_text())
            table.runs.setdefault(method, []).append(record_values(record["per_class_iou"], record.get("miou")))
            table.records.setdefault(method, []).append(record)
    return table


def paper_table_key(dataset: str, experiment: str) -> tuple[str, str]:
    """The paper table an experiment is compared with: its backbone family's (vgg_largefov -> (voc, vgg))."""
    for family in ("vgg", "resnet", "inception"):
        if experiment.startswith(family):
            return dataset, family
    return dataset, experiment


def provenance_lines(table: Table) -> list[str]:
    """Which config files the rows came from, and for every P-pooling run whether alpha moved."""
    configs = sorted({" + ".join(r.get("config_files") or []) for rs in table.records.values() for r in rs} - {""})
    lines = [f"Our rows: runs of {', '.join(f'`{c}`' for c in configs)}." if configs else ""]
    for method, label in METHODS:
        for record in table.records.get(method, []):
            alpha = record.get("alpha") or {}
            first, last = (alpha.get("first") or {}), (alpha.get("last") or {})
            layers = last.get("layers") or {}
            if not layers:
                continue
            moves = []
            for name, stats in layers.items():
                start = (first.get("layers") or {}).get(name)
                begin = f"{start['mean']:.4g} (spread {start['std']:.3g})" if start else "?"
                moves.append(f"{name} {begin} -> {stats['mean']:.4g} (spread {stats['std']:.3g})")
            lines.append(f"{label} seed {record.get('seed')}: alpha mean from step {first.get('step', '?')} to step "
                         f"{last.get('step')}: " + "; ".join(moves) + ".")
    return [line for line in lines if line]


def load_metrics_csv(path: Path, class_names: Sequence[str] = VOC_CLASSES) -> np.ndarray:
    """The last validation row of a CSVLogger ``metrics.csv`` as table values."""
    last = None
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get("val/mIoU"):
                last = row
    if last is None:
        raise ValueError(f"{path} has no validation row (no 'val/mIoU' value)")
    per_class = [float(last[f"val/IoU/{name}"]) if last.get(f"val/IoU/{name}") not in (None, "", "nan") else None
                 for name in class_names]
    return record_values(per_class, float(last["val/mIoU"]))


def load_csv_logs(root: Path) -> Table:
    """CSVLogger folders laid out as ``<root>/<pooling>/<seed>/metrics.csv`` (what reproduce.sh writes)."""
    table = Table(columns=list(VOC_SHORT_NAMES) + ["mean"])
    for method, _ in METHODS:
        for path in sorted((root / method).glob("*/metrics.csv")):
            table.runs.setdefault(method, []).append(load_metrics_csv(path))
    return table


def load_wandb(path: str, dataset: str, backbone: str) -> Table:  # pragma: no cover - needs network
    """Finished W&B runs of group ``<dataset>/<backbone>``, their last logged per-class IoU."""
    import wandb

    table = Table(columns=list(VOC_SHORT_NAMES) + ["mean"])
    for run in wandb.Api().runs(path, filters={"group": f"{dataset}/{backbone}", "state": "finished"}):
        method = run.config.get("model", {}).get("pooling")
        summary = run.summary
        per_class = [summary.get(f"val/IoU/{name}") for name in VOC_CLASSES]
        if method and summary.get("val/mIoU") is not None:
            table.runs.setdefault(method, []).append(record_values(per_class, summary["val/mIoU"]))
    return table


def load_paper(dataset: str, backbone: str, paper_dir: Path = PAPER_DIR) -> Table:
    """The supplement's rows (``results/paper/table*.tsv``, copied from the paper)."""
    name = PAPER_TABLES.get((dataset, backbone))
    if name is None:
        raise ValueError(f"the paper has no per-class table for {dataset}/{backbone}; it has {sorted(PAPER_TABLES)}")
    labels = {label: method for method, label in METHODS}
    with open(paper_dir / name) as f:
        rows = list(csv.reader(f, delimiter="\t"))
    table = Table(columns=rows[0][1:])
    for row in rows[1:]:
        table.runs[labels[row[0]]] = [np.array([float(v) for v in row[1:]])]
    return table


def best_per_column(table: Table) -> np.ndarray:
    """The best (largest) mean of each column over the methods that have runs, at the printed precision."""
    rows = [np.round(r[0], 1) for m, _ in METHODS if (r := table.row(m)) is not None]
    if not rows:
        return np.full(len(table.columns), np.nan)
    with warnings.catch_warnings():  # a class absent from every run is NaN in every row: no best, no bold
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(np.stack(rows), axis=0)


def format_cell(mean: float, std: float, seeds: int, bold: bool, style: str) -> str:
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.1f}" + (f" ± {std:.1f}" if seeds > 1 else "")
    if bold:
        return {"md": f"**{text}**", "tex": f"\\textbf{{{text}}}", "csv": text}[style]
    return text


def render_rows(table: Table, style: str) -> list[list[str]]:
    best = best_per_column(table)
    rows = []
    for method, label in METHODS:
        row = table.row(method)
        if row is None:
            rows.append([label] + ["-"] * len(table.columns))
            continue
        mean, std = row
        seeds = len(table.runs[method])
        rows.append([label] + [format_cell(m, s, seeds, not math.isnan(m) and round(m, 1) == b, style)
                               for m, s, b in zip(mean, std, best)])
    return rows


def delta_rows(ours: Table, paper: Table) -> list[list[str]]:
    rows = []
    for method, label in METHODS:
        a, b = ours.row(method), paper.row(method)
        if a is None or b is None:
            rows.append([label] + ["-"] * len(ours.columns))
        else:
            # round first, and + 0.0 turns a rounded -0.0 into 0.0
            rows.append([label] + [("n/a" if math.isnan(d) else f"{round(d, 1) + 0.0:+.1f}") for d in a[0] - b[0]])
    return rows


def missing_runs(table: Table) -> list[str]:
    return [label for method, label in METHODS if not table.runs.get(method)]


def markdown(title: str, columns: Sequence[str], rows: list[list[str]]) -> str:
    lines = [f"**{title}**", "", "| Method | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def latex(title: str, columns: Sequence[str], rows: list[list[str]]) -> str:
    lines = [f"% {title}", "\\begin{tabular}{l" + "c" * len(columns) + "}", "\\toprule",
             "Method & " + " & ".join(columns) + " \\\\", "\\midrule"]
    lines += [" & ".join(row).replace("±", "$\\pm$") + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)


def write_tables(ours: Table, paper: Optional[Table], out_stem: Path, note: str = "") -> str:
    """Write ``<out_stem>.{md,csv,tex}``; returns the markdown."""
    sections = [("ours", render_rows(ours, "md"))]
    if paper is not None:
        sections += [("paper (supplement)", render_rows(paper, "md")), ("ours - paper", delta_rows(ours, paper))]
    md = [f"# {out_stem.name}: per-class IoU (%) and mIoU", ""]
    if note:
        md += [note, ""]
    for title, rows in sections:
        md += [markdown(title, ours.columns, rows), ""]
    missing = missing_runs(ours)
    if missing:
        md.append(f"Missing runs (shown as -): {', '.join(missing)}.")
    provenance = provenance_lines(ours)
    if provenance:
        md += [""] + [f"- {line}" for line in provenance]
    text = "\n".join(md).rstrip() + "\n"
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    out_stem.with_suffix(".md").write_text(text)
    with open(out_stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["table", "method"] + ours.columns)
        writer.writerows([["ours"] + r for r in render_rows(ours, "csv")])
        if paper is not None:
            writer.writerows([["paper"] + r for r in render_rows(paper, "csv")])
            writer.writerows([["ours - paper"] + r for r in delta_rows(ours, paper)])
    tex = [latex(title, ours.columns, render_rows(ours, "tex") if title == "ours" else (
        render_rows(paper, "tex") if title.startswith("paper") else rows)) for title, rows in sections]
    out_stem.with_suffix(".tex").write_text("\n\n".join(tex) + "\n")
    return text


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--runs", type=Path, default=Path("results/runs"), help="our run records (default)")
    source.add_argument("--csv-logs", type=Path, help="CSVLogger folders: <dir>/<pooling>/<seed>/metrics.csv")
    source.add_argument("--wandb", help="ENTITY/PROJECT: read finished runs from the W&B API")
    parser.add_argument("--dataset", default="voc")
    parser.add_argument("--backbone", default="vgg",
                        help="the experiment (config name) whose runs to read: vgg, vgg_largefov, resnet, ...")
    parser.add_argument("--out", type=Path, help="output stem (default results/<dataset>_<backbone>)")
    parser.add_argument("--note", default="", help="a line printed above the tables (e.g. 'miniature run')")
    parser.add_argument("--quick", action="store_true", help="note that these are reproduce.sh --quick runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.note = " ".join(filter(None, [QUICK_NOTE, args.note]))
    if args.wandb:
        ours = load_wandb(args.wandb, args.dataset, args.backbone)
    elif args.csv_logs:
        ours = load_csv_logs(args.csv_logs)
    else:
        ours = load_records(args.runs, args.dataset, args.backbone)
    key = paper_table_key(args.dataset, args.backbone)
    paper = load_paper(*key) if key in PAPER_TABLES else None
    text = write_tables(ours, paper, args.out or Path("results") / f"{args.dataset}_{args.backbone}", args.note)
    print(text)
    return text


if __name__ == "__main__":
    main()
