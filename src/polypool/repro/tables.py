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
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .. import wandb_keys as keys
from ..data.classes import VOC_CLASSES, VOC_SHORT_NAMES
from . import spec

# The supplement's rows, in its order: (pooling name in the registry, row label) (polypool.repro.spec owns them).
METHODS = spec.ROWS
PAPER_TABLES = {("voc", "vgg"): "table1_voc_vgg.tsv", ("voc", "resnet"): "table2_voc_resnet.tsv"}
# The supplement's tables ship with the package (results/paper/*.tsv in the checkout link to them).
PAPER_DIR = Path(__file__).resolve().parent / "paper"
# The first words of the note above tables of ``./reproduce.sh voc vgg --quick`` runs (see :func:`quick_note`).
QUICK_NOTE = (
    "Miniature run (./reproduce.sh voc vgg --quick) on the CPU: the generated detail-heavy VOC-format set, "
    "not PASCAL VOC, so its numbers are not comparable with the paper's columns."
)
PAIRED_MIN_SEEDS = 3  # paired differences against Max need this many seeds of both


@dataclass
class Table:
    """Per-class IoU (percent) of each method: a list of runs (seeds), each ``len(columns) - 1`` values + mean.
    ``records`` keeps the run records it was read from (config files, alpha over training); ``detail`` the detail
    metrics of the same runs (percent, one value per ``detail_columns``: Boundary IoU, trimap mIoU per band),
    printed after the paper's columns; ``seeds`` the seed of each run (for paired differences)."""

    columns: list[str]
    runs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    records: dict[str, list[dict]] = field(default_factory=dict)
    detail_columns: list[str] = field(default_factory=list)
    detail: dict[str, list[np.ndarray]] = field(default_factory=dict)
    seeds: dict[str, list[Optional[int]]] = field(default_factory=dict)

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


def detail_values(record: dict, columns: Sequence[str]) -> np.ndarray:
    """A record's detail metrics in percent, in the order of :func:`detail_columns` (NaN where it has none)."""
    trimap = record.get("trimap_miou") or {}
    boundary = (record.get("boundary_iou") or {}).get("mean")
    values = []
    for column in columns:
        value = boundary if column == BOUNDARY_COLUMN else trimap.get(column.removeprefix("trimap ").removesuffix("px"))
        values.append(np.nan if value is None else float(value) * 100)
    return np.array(values)


BOUNDARY_COLUMN = "bIoU"


def detail_columns(records: Sequence[dict]) -> list[str]:
    """``bIoU`` and ``trimap <w>px`` for every band width the records have, narrowest first (none if no record has
    detail metrics: records written before they existed, or the paper's)."""
    widths = sorted({int(w) for r in records for w in (r.get("trimap_miou") or {})})
    has_boundary = any((r.get("boundary_iou") or {}).get("mean") is not None for r in records)
    return ([BOUNDARY_COLUMN] if has_boundary else []) + [f"trimap {w}px" for w in widths]


def load_records(root: Path, dataset: str, backbone: str) -> Table:
    """Our run records: ``<root>/<dataset>/<backbone>/<pooling>/<seed>.json``. A damaged one (truncated, not JSON,
    no ``per_class_iou``: :func:`polypool.callbacks.read_record`) is skipped with a warning naming it, and its run
    shows as missing. A record without ``miou`` takes the mean of its classes."""
    from ..callbacks import DamagedRecord, read_record

    table = Table(columns=[*list(VOC_SHORT_NAMES), "mean"])
    for method, _ in METHODS:
        for path in sorted((root / dataset / backbone / method).glob("*.json"), key=_seed_order):
            try:
                record = read_record(path, required=("per_class_iou",))
            except DamagedRecord as error:
                warnings.warn(f"skipping {error}; the table shows that run as missing", stacklevel=2)
                continue
            table.runs.setdefault(method, []).append(record_values(record["per_class_iou"], record.get("miou")))
            table.records.setdefault(method, []).append(record)
            seed = record.get("seed")
            if seed is None and path.stem.isdigit():
                seed = int(path.stem)
            table.seeds.setdefault(method, []).append(None if seed is None else int(seed))
    table.detail_columns = detail_columns([r for rs in table.records.values() for r in rs])
    if table.detail_columns:
        table.detail = {m: [detail_values(r, table.detail_columns) for r in rs] for m, rs in table.records.items()}
    return table


def _seed_order(path: Path) -> tuple[int, int, str]:
    """``<seed>.json`` sorts by seed number (10.json after 9.json)."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def paper_table_key(dataset: str, experiment: str) -> tuple[str, str]:
    """The paper table an experiment is compared with: its backbone family's (vgg_largefov -> (voc, vgg))."""
    for family in ("vgg", "resnet", "inception"):
        if experiment.startswith(family):
            return dataset, family
    return dataset, experiment


def environment_lines(table: Table) -> list[str]:
    """Which software and hardware the rows came from (the records' ``provenance``), each environment with its runs
    when there are several, and a plain warning when they differ in what makes numbers incomparable (torch, CUDA,
    the accelerator, the precision, the package's version: :func:`polypool.provenance.mixed`)."""
    from ..provenance import describe, mixed

    labels = dict(METHODS)
    runs: dict[str, list[str]] = {}
    unrecorded = []
    for method, records in table.records.items():
        for record in records:
            name = f"{labels.get(method, method)} seed {record.get('seed')}"
            if record.get("provenance"):
                runs.setdefault(describe(record["provenance"]), []).append(name)
            else:
                unrecorded.append(name)
    lines = []
    if len(runs) == 1:
        lines.append(f"Environment of every run: {next(iter(runs))}.")
    elif runs:
        lines.append(
            f"The rows come from {len(runs)} environments: "
            + "; ".join(f"{env} ({', '.join(names)})" for env, names in runs.items())
            + "."
        )
    differ = mixed(r.get("provenance") for rs in table.records.values() for r in rs)
    if differ:
        lines.append(
            "These rows MIX environments, so their differences include the environment's: "
            + "; ".join(f"{key} {' / '.join(map(str, values))}" for key, values in differ.items())
            + "."
        )
    if unrecorded:
        lines.append(f"No environment recorded for {', '.join(unrecorded)} (records written before provenance was).")
    return lines


def provenance_lines(table: Table) -> list[str]:
    """Which config files the rows came from, in which environments, and for every P-pooling run whether alpha
    moved."""
    configs = sorted({" + ".join(r.get("config_files") or []) for rs in table.records.values() for r in rs} - {""})
    lines = [f"Our rows: runs of {', '.join(f'`{c}`' for c in configs)}." if configs else ""]
    lines += environment_lines(table)
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
            lines.append(
                f"{label} seed {record.get('seed')}: alpha mean from step {first.get('step', '?')} to step "
                f"{last.get('step')}: " + "; ".join(moves) + "."
            )
    return [line for line in lines if line]


def load_metrics_csv(path: Path, class_names: Sequence[str] = VOC_CLASSES) -> np.ndarray:
    """A CSVLogger ``metrics.csv`` as table values: the run's final whole-val evaluation (``final/*``, what its
    record holds), or for a log without one the last periodic validation (``val/*``)."""
    last = {keys.FINAL: None, keys.VAL: None}
    with open(path) as f:
        for row in csv.DictReader(f):
            for prefix in last:
                if row.get(keys.miou(prefix)):
                    last[prefix] = row
    prefix = keys.FINAL if last[keys.FINAL] is not None else keys.VAL
    row = last[prefix]
    if row is None:
        raise ValueError(f"{path} has no evaluation row (no {keys.FINAL_MIOU!r} or {keys.VAL_MIOU!r} value)")
    per_class = [
        float(row[keys.class_iou(prefix, name)])
        if row.get(keys.class_iou(prefix, name)) not in (None, "", "nan")
        else None
        for name in class_names
    ]
    return record_values(per_class, float(row[keys.miou(prefix)]))


def load_csv_logs(root: Path) -> Table:
    """CSVLogger folders laid out as ``<root>/<pooling>/<seed>/metrics.csv`` (what reproduce.sh writes)."""
    table = Table(columns=[*list(VOC_SHORT_NAMES), "mean"])
    for method, _ in METHODS:
        for path in sorted((root / method).glob("*/metrics.csv")):
            table.runs.setdefault(method, []).append(load_metrics_csv(path))
    return table


def load_wandb(path: str, dataset: str, backbone: str) -> Table:
    """Finished W&B runs of group ``<dataset>/<backbone>``: their final whole-val evaluation (``final/*``), or for a
    run without one its last periodic validation (``val/*``). The keys are :mod:`polypool.wandb_keys`', the ones the
    runs log and the dashboard (``python -m polypool.dashboard``) plots."""
    import wandb

    table = Table(columns=[*list(VOC_SHORT_NAMES), "mean"])
    for run in wandb.Api().runs(path, filters={"group": keys.group(dataset, backbone), "state": "finished"}):
        method = keys.config_value(run.config, keys.POOLING_CONFIG)
        summary = run.summary
        prefix = keys.FINAL if summary.get(keys.FINAL_MIOU) is not None else keys.VAL
        per_class = [summary.get(keys.class_iou(prefix, name)) for name in VOC_CLASSES]
        if method and summary.get(keys.miou(prefix)) is not None:
            table.runs.setdefault(method, []).append(record_values(per_class, summary[keys.miou(prefix)]))
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


def render_rows(table: Table, style: str, detail: bool = False) -> list[list[str]]:
    """One row per method: the paper's columns, then (``detail``) the detail columns; bold marks each column's
    best."""
    rows = [_cells(style, table.runs, len(table.columns))]
    if detail and table.detail_columns:
        rows.append(_cells(style, table.detail, len(table.detail_columns)))
    return [[label] + [cell for part in rows for cell in part[i]] for i, (_, label) in enumerate(METHODS)]


def _cells(style: str, runs: dict[str, list[np.ndarray]], width: int) -> list[list[str]]:
    """The formatted cells of ``runs`` (one list per method, ``width`` columns), each column's best in bold."""
    view = Table(columns=[""] * width, runs=runs)
    best = best_per_column(view)
    cells = []
    for method, _ in METHODS:
        row = view.row(method)
        if row is None:
            cells.append(["-"] * width)
            continue
        mean, std = row
        seeds = len(runs[method])
        cells.append(
            [
                format_cell(m, s, seeds, not math.isnan(m) and round(m, 1) == b, style)
                for m, s, b in zip(mean, std, best)
            ]
        )
    return cells


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


def paired_metrics(table: Table) -> list[tuple[str, dict[str, list[float]]]]:
    """The metrics compared seed by seed: mIoU, Boundary IoU and trimap mIoU in the narrowest band, each as
    {method: per-run values} (percent)."""
    metrics = [("mIoU", {m: [float(v[-1]) for v in runs] for m, runs in table.runs.items()})]
    for column in (BOUNDARY_COLUMN, next((c for c in table.detail_columns if c.startswith("trimap")), None)):
        if column in table.detail_columns:
            index = table.detail_columns.index(column)
            metrics.append((column, {m: [float(v[index]) for v in runs] for m, runs in table.detail.items()}))
    return metrics


@dataclass
class PairedDifference:
    """``method`` minus the baseline on one metric, over the seeds both have: the mean, its 95% t-interval."""

    method: str
    metric: str
    diffs: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.diffs))

    @property
    def interval(self) -> tuple[float, float]:
        from scipy import stats

        n = len(self.diffs)
        half = stats.t.ppf(0.975, n - 1) * np.std(self.diffs, ddof=1) / math.sqrt(n)
        return self.mean - half, self.mean + half


def paired_differences(
    table: Table, baseline: str = "max", min_seeds: int = PAIRED_MIN_SEEDS
) -> list[PairedDifference]:
    """Each method minus ``baseline``, paired by seed (seed s of both), for every :func:`paired_metrics` metric
    where both have the same ``min_seeds`` or more seeds (a NaN value drops that seed)."""
    out = []
    for metric, values in paired_metrics(table):
        base = dict(zip(table.seeds.get(baseline, []), values.get(baseline, [])))
        for method, _ in METHODS:
            if method == baseline:
                continue
            diffs = [
                v - base[s]
                for s, v in zip(table.seeds.get(method, []), values.get(method, []))
                if s is not None and s in base and not (math.isnan(v) or math.isnan(base[s]))
            ]
            if len(diffs) >= min_seeds:
                out.append(PairedDifference(method, metric, diffs))
    return out


def paired_rows(differences: Sequence[PairedDifference]) -> tuple[list[str], list[list[str]]]:
    """Columns (the metrics) and one row per method: ``+1.2 [-0.3, +2.7]`` (mean and 95% interval)."""
    metrics = list(dict.fromkeys(d.metric for d in differences))
    labels = dict(METHODS)
    rows = []
    for method in dict.fromkeys(d.method for d in differences):
        cells = []
        for metric in metrics:
            d = next((d for d in differences if d.method == method and d.metric == metric), None)
            low, high = d.interval if d else (0.0, 0.0)
            cells.append("-" if d is None else f"{d.mean:+.1f} [{low:+.1f}, {high:+.1f}]")
        rows.append([labels[method], *cells])
    return metrics, rows


def findings(table: Table, baseline: str = "max") -> list[str]:
    """What the numbers show, in sentences written from them: the ranking by mean on each compared metric, and
    for each method against ``baseline`` whether the 95% interval of the paired difference excludes 0."""
    labels = dict(METHODS)
    lines = []
    for metric, values in paired_metrics(table):
        means = {m: float(np.nanmean(v)) for m, v in values.items() if v and not np.all(np.isnan(v))}
        if means:
            ranking = sorted(means, key=means.get, reverse=True)
            lines.append(
                f"{metric} (mean over seeds), best first: "
                + ", ".join(f"{labels[m]} {means[m]:.1f}" for m in ranking)
                + "."
            )
    differences = paired_differences(table, baseline)
    for method in dict.fromkeys(d.method for d in differences):
        parts = []
        mine = [d for d in differences if d.method == method]
        for d in mine:
            low, high = d.interval
            verdict = "better" if low > 0 else ("worse" if high < 0 else "no clear difference")
            parts.append(f"{d.metric} {d.mean:+.1f} [{low:+.1f}, {high:+.1f}] ({verdict})")
        lines.append(
            f"{labels[method]} vs {labels[baseline]}, paired over {len(mine[0].diffs)} seeds, "
            f"mean difference [95% interval]: " + "; ".join(parts) + "."
        )
    if not differences:
        seeds = min((len(r) for r in table.runs.values()), default=0)
        lines.append(
            f"No paired comparison: it needs {PAIRED_MIN_SEEDS} seeds of each pooling (these runs have "
            f"{seeds} for the pooling with fewest); run with --seeds {PAIRED_MIN_SEEDS}."
        )
    return lines


def recipe_differences(config_files: Sequence[str], root: Path = Path(".")) -> list[str]:
    """``key: value (full recipe: value)`` for every setting that the later config files (the quick preset) change
    in the first one (the full recipe), read from the files themselves (their paths relative to ``root``, the
    repository the runs were started in: the current directory by default)."""
    import yaml

    def flat(tree, prefix=""):
        out = {}
        for key, value in (tree or {}).items():
            if key == "callbacks":
                continue
            name = f"{prefix}{key}"
            out.update(flat(value, name + ".") if isinstance(value, dict) else {name: value})
        return out

    if len(config_files) < 2:
        return []
    full = yaml.safe_load((root / config_files[0]).read_text())
    base = {**argument_defaults(full), **flat(full)}
    changed = {}
    for name in config_files[1:]:
        changed.update(flat(yaml.safe_load((root / name).read_text())))
    unset = object()
    return [
        f"{key.replace('init_args.', '')} {value} (full: {base.get(key, 'default')})"
        for key, value in changed.items()
        if base.get(key, unset) != value
    ]


def argument_defaults(config: dict) -> dict:
    """``model.*``, ``data.init_args.*`` and ``trainer.*`` defaults of the classes a config instantiates (what a
    key that the config leaves out is), so a preset that restates a default is no difference."""
    import importlib
    import inspect

    import lightning as L

    from ..models import SegmentationModel

    classes = {"model": SegmentationModel, "trainer": L.Trainer}
    data_class = ((config or {}).get("data") or {}).get("class_path")
    if data_class:
        module, _, name = data_class.rpartition(".")
        classes["data.init_args"] = getattr(importlib.import_module(module), name)
    defaults = {}
    for prefix, cls in classes.items():
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                value = parameter.default
                defaults[f"{prefix}.{name}"] = list(value) if isinstance(value, tuple) else value
    return defaults


def quick_note(table: Table, extra: str = "", repo: Path = Path(".")) -> str:
    """The note of a ``--quick`` table: what the set is, how it differs from the full recipe (its config files read
    in ``repo``; and ``extra``), then what the numbers show, as a list (no number in it is written by hand)."""
    from ..data.fixtures import PRESETS

    preset = PRESETS["quick"]
    config_files = next(
        (r.get("config_files") for rs in table.records.values() for r in rs if r.get("config_files")), []
    )
    steps = sorted({r.get("steps") for rs in table.records.values() for r in rs} - {None})
    parts = [
        QUICK_NOTE,
        f"Data: `python -m polypool.data.fixtures voc DIR --preset quick` ({preset['train']} train and "
        f"{preset['val']} val images of {preset['size'][0]}x{preset['size'][1]} px, seed {preset['seed']}; "
        f"README, 'The CPU miniature').",
        f"Steps per run: {', '.join(map(str, steps)) or '?'}.",
    ]
    differences = recipe_differences(config_files, repo)
    if differences:
        parts.append(f"Differences from `{config_files[0]}`: " + "; ".join(differences) + ".")
    return " ".join(parts + ([extra] if extra else [])) + "\n\n" + "\n".join(f"- {line}" for line in findings(table))


def trained_note(table: Table, runs_root: Path, trained: str) -> str:
    """Which of the table's runs this sweep trained now and which it read from records already in ``runs_root``."""
    now = {name.strip() for name in trained.split(",") if name.strip()}  # "<pooling> seed <seed>", as the sweep names
    labels = dict(METHODS)
    named = [
        f"{labels[m]} seed {r.get('seed')}"
        for m, rs in table.records.items()
        for r in rs
        if f"{m} seed {r.get('seed')}" in now
    ]
    read = [
        f"{labels[m]} seed {r.get('seed')}"
        for m, rs in table.records.items()
        for r in rs
        if f"{m} seed {r.get('seed')}" not in now
    ]
    parts = [f"Trained by this sweep: {', '.join(named) if named else 'none'}."]
    if read:
        parts.append(f"Read from records of earlier sweeps in {runs_root}: {', '.join(read)}.")
    return " ".join(parts)


def missing_runs(table: Table) -> list[str]:
    return [label for method, label in METHODS if not table.runs.get(method)]


def markdown(title: str, columns: Sequence[str], rows: list[list[str]]) -> str:
    lines = [f"**{title}**", "", "| Method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def latex(title: str, columns: Sequence[str], rows: list[list[str]]) -> str:
    lines = [
        f"% {title}",
        "\\begin{tabular}{l" + "c" * len(columns) + "}",
        "\\toprule",
        "Method & " + " & ".join(columns) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(row).replace("±", "$\\pm$") + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)


def reference_rows(ours: Table, reference: Table) -> tuple[list[str], list[list[str]]]:
    """The summary columns (mIoU and the detail metrics) of a committed reference's rows, beside ours: the columns
    and one row per method (mean ± std over its seeds; a dash where the reference has no run)."""
    columns = ["mean"] + [c for c in reference.detail_columns if c in ours.detail_columns or not ours.detail_columns]
    summary = Table(columns=columns)
    for method, runs in reference.runs.items():
        details = reference.detail.get(method, [np.full(len(reference.detail_columns), np.nan)] * len(runs))
        summary.runs[method] = [
            np.concatenate([[run[-1]], [d[reference.detail_columns.index(c)] for c in columns[1:]]])
            for run, d in zip(runs, details)
        ]
    return ["mIoU", *columns[1:]], render_rows(summary, "md")


def write_tables(
    ours: Table,
    paper: Optional[Table],
    out_stem: Path,
    note: str = "",
    reference: Optional[tuple[str, Table]] = None,
    below: Sequence[str] = (),
) -> str:
    """Write ``<out_stem>.{md,csv,tex}``; returns the markdown. Our rows carry the detail columns (Boundary IoU,
    trimap mIoU) after the paper's; with 3+ seeds a section gives each pooling's paired difference against Max.
    ``reference`` = (its title, its table): rows trained elsewhere (the committed miniature), shown apart from ours,
    never mixed into them. ``below``: lines added to the provenance list under the tables."""
    ours_columns = ours.columns + ours.detail_columns
    sections = [("ours", ours_columns, render_rows(ours, "md", detail=True))]
    if paper is not None:
        sections += [
            ("paper (supplement)", ours.columns, render_rows(paper, "md")),
            ("ours - paper", ours.columns, delta_rows(ours, paper)),
        ]
    if reference is not None:
        sections.append((reference[0], *reference_rows(ours, reference[1])))
    differences = paired_differences(ours)
    if differences:
        metrics, rows = paired_rows(differences)
        sections.append(("paired difference vs Max, per seed: mean [95% t-interval]", metrics, rows))
    md = [f"# {out_stem.name}: per-class IoU (%) and mIoU", ""]
    if note:
        md += [note, ""]
    for title, columns, rows in sections:
        md += [markdown(title, columns, rows), ""]
    missing = missing_runs(ours)
    if missing:
        md.append(f"Missing runs (shown as -): {', '.join(missing)}.")
    provenance = list(below) + provenance_lines(ours)
    if provenance:
        md += [""] + [f"- {line}" for line in provenance]
    text = "\n".join(md).rstrip() + "\n"
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    out_stem.with_suffix(".md").write_text(text)
    with open(out_stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["table", "method", *ours_columns])
        writer.writerows([["ours", *r] for r in render_rows(ours, "csv", detail=True)])
        if paper is not None:
            writer.writerows([["paper", *r] for r in render_rows(paper, "csv")])
            writer.writerows([["ours - paper", *r] for r in delta_rows(ours, paper)])
        if differences:
            writer.writerow(["paired vs max", "method", *metrics])
            writer.writerows([["paired vs max", *r] for r in rows])
        if reference is not None:
            writer.writerow([reference[0], "method"] + sections[-1 - bool(differences)][1])
            writer.writerows([[reference[0], *r] for r in sections[-1 - bool(differences)][2]])
    tex = [
        latex(
            title,
            columns,
            render_rows(ours, "tex", detail=True)
            if title == "ours"
            else (render_rows(paper, "tex") if title.startswith("paper") else rows),
        )
        for title, columns, rows in sections
    ]
    out_stem.with_suffix(".tex").write_text("\n\n".join(tex) + "\n")
    return text


def build(
    runs: Path,
    dataset: str,
    backbone: str,
    out: Optional[Path] = None,
    note: str = "",
    quick: bool = False,
    reference: Optional[Path] = None,
    trained: Optional[str] = None,
    csv_logs: Optional[Path] = None,
    wandb: Optional[str] = None,
    repo: Path = Path("."),
) -> str:
    """The table of one experiment, written to ``<out>.{md,csv,tex}`` (default ``results/<dataset>_<backbone>``);
    returns the markdown. What ``python -m polypool.tables`` does, and what the sweep calls when its runs end.
    ``repo``: where the runs' config files are read (the --quick note's differences)."""
    if wandb:
        ours = load_wandb(wandb, dataset, backbone)
    elif csv_logs:
        ours = load_csv_logs(csv_logs)
    else:
        ours = load_records(runs, dataset, backbone)
    if quick:
        note = quick_note(ours, note, repo)
    key = paper_table_key(dataset, backbone)
    # the miniature's generated set is not PASCAL VOC: no paper rows, no differences to them
    paper = load_paper(*key) if key in PAPER_TABLES and not quick else None
    below = [trained_note(ours, runs, trained)] if trained is not None else []
    committed_rows = None
    if reference is not None:
        committed = load_records(reference, dataset, backbone)
        if committed.runs:
            seeds = max(len(r) for r in committed.runs.values())
            committed_rows = (
                f"committed reference ({reference}, {seeds} seed(s); trained when it was committed, not by this sweep)",
                committed,
            )
    return write_tables(
        ours, paper, out or spec.table_stem(spec.DEFAULT_OUT, dataset, backbone), note, committed_rows, below
    )


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--runs", type=Path, default=spec.runs_root(spec.DEFAULT_OUT), help="our run records (default)")
    source.add_argument("--csv-logs", type=Path, help="CSVLogger folders: <dir>/<pooling>/<seed>/metrics.csv")
    source.add_argument("--wandb", help="ENTITY/PROJECT: read finished runs from the W&B API")
    parser.add_argument("--dataset", default="voc")
    parser.add_argument(
        "--backbone",
        default="vgg",
        help="the experiment (config name) whose runs to read: vgg, vgg_largefov, resnet, ...",
    )
    parser.add_argument("--out", type=Path, help="output stem (default results/<dataset>_<backbone>)")
    parser.add_argument("--note", default="", help="a line printed above the tables (e.g. 'miniature run')")
    parser.add_argument("--quick", action="store_true", help="note that these are reproduce.sh --quick runs")
    parser.add_argument(
        "--reference", type=Path, help="run records trained elsewhere (results/quick/reference/runs), shown beside ours"
    )
    parser.add_argument(
        "--trained",
        help="the runs this sweep trained now, comma-separated ('max seed 0,...'): the "
        "table says which rows were trained now and which were read from records",
    )
    parser.add_argument(
        "--repo",
        type=Path,
        default=Path("."),
        help="the repository whose config files the records name (default: the current directory)",
    )
    args = parser.parse_args(argv)
    text = build(
        args.runs,
        args.dataset,
        args.backbone,
        args.out,
        args.note,
        args.quick,
        args.reference,
        args.trained,
        args.csv_logs,
        args.wandb,
        args.repo,
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
