"""Logged runs -> the supplement's tables: the golden test on the paper's own numbers, seeds, missing runs."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from polypool.data import VOC_CLASSES
from polypool.tables import METHODS, load_csv_logs, load_paper, load_records, main, render_rows

# The supplement's two per-class tables as printed, bold marks included (copied from shared/paper/supplementary.md).
SUPPLEMENT = Path(__file__).parents[1] / "results" / "paper" / "supplement_tables.txt"


def supplement_tables():
    """The two per-class tables of the supplement, as [[(text, bold), ...] per row], with their bold marks."""
    tables, current = [], []
    for line in SUPPLEMENT.read_text().splitlines():
        cells = line.split("\t")
        if cells[0] == "Method":
            current = []
            tables.append(current)
        elif len(cells) == 23 and tables and len(current) < 6:
            current.append([(re.sub(r"</?b>", "", c), "<b>" in c) for c in cells[1:]])
    return tables


def write_records(root, dataset, backbone, table_rows, seeds=(0,)):
    for (method, _), row in zip(METHODS, table_rows):
        for seed in seeds:
            values = [float(text) for text, _ in row]
            path = root / dataset / backbone / method / f"{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"per_class_iou": [v / 100 for v in values[:-1]], "miou": values[-1] / 100,
                                        "class_names": list(VOC_CLASSES)}))


@pytest.mark.parametrize("index,backbone", [(0, "vgg"), (1, "resnet")])
def test_golden_paper_numbers_regenerate_the_supplement_exactly(tmp_path, index, backbone):
    expected = supplement_tables()[index]
    assert len(expected) == 6 and all(len(row) == 22 for row in expected)
    write_records(tmp_path / "runs", "voc", backbone, expected)
    ours = load_records(tmp_path / "runs", "voc", backbone)
    rendered = render_rows(ours, "md")
    for (_, label), ours_row, paper_row in zip(METHODS, rendered, expected):
        assert ours_row[0] == label
        assert [(c.strip("*"), c.startswith("**")) for c in ours_row[1:]] == paper_row, label
    text = main(["--runs", str(tmp_path / "runs"), "--dataset", "voc", "--backbone", backbone,
                 "--out", str(tmp_path / f"voc_{backbone}")])
    assert "+0.0" in text and "Missing runs" not in text
    deltas = text.split("**ours - paper**")[1]
    assert set(re.findall(r"[+-]\d+\.\d", deltas)) == {"+0.0"}
    for suffix in (".md", ".csv", ".tex"):
        assert (tmp_path / f"voc_{backbone}{suffix}").stat().st_size > 0
    bold_bg = {"vgg": "88.3", "resnet": "90.5"}[backbone]  # P-pooling's bg, bold in the supplement
    assert f"\\textbf{{{bold_bg}}}" in (tmp_path / f"voc_{backbone}.tex").read_text()


def test_paper_rows_are_the_project_reference_data():
    paper = load_paper("voc", "vgg")
    assert paper.row("ppool")[0][-1] == pytest.approx(55.1) and paper.row("max")[0][0] == pytest.approx(87.7)
    # the mean column is the plain mean of the 21 classes (facts.md)
    for method, _ in METHODS:
        values = paper.row(method)[0]
        assert np.mean(values[:-1]) == pytest.approx(values[-1], abs=0.05)


def test_seeds_give_mean_and_std_and_missing_runs_are_dashes(tmp_path):
    root = tmp_path / "runs"
    for seed, value in ((0, 0.5), (1, 0.7)):
        path = root / "voc" / "vgg" / "ppool" / f"{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        per_class = [value] * 20 + [None]  # the last class absent: NaN, not 0
        path.write_text(json.dumps({"per_class_iou": per_class, "miou": value}))
    text = main(["--runs", str(root), "--dataset", "voc", "--backbone", "vgg", "--out", str(tmp_path / "t"),
                 "--note", "miniature run"])
    ours = text.split("**paper (supplement)**")[0]
    assert "| P-pooling | **60.0 ± 14.1** |" in ours and "n/a" in ours
    assert "| Max | - | - |" in ours
    assert "Missing runs (shown as -): Max, Average, Strided-C, Gated, DPP." in text
    assert text.splitlines()[2] == "miniature run"


def test_csv_logger_metrics_are_a_source_too(tmp_path):
    header = ["epoch", "step", "val/mIoU"] + [f"val/IoU/{n}" for n in VOC_CLASSES]
    rows = [header, ["0", "9", "0.25"] + ["0.25"] * 21, ["1", "19", "0.5"] + ["0.5"] * 20 + ["nan"]]
    path = tmp_path / "logs" / "max" / "0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    table = load_csv_logs(tmp_path / "logs")
    mean, _ = table.row("max")
    assert mean[0] == pytest.approx(50.0) and np.isnan(mean[20]) and mean[-1] == pytest.approx(50.0)


def test_quick_flag_puts_the_quick_runs_note_above_the_tables(tmp_path):
    from polypool.tables import QUICK_NOTE

    text = main(["--runs", str(tmp_path / "none"), "--dataset", "voc", "--backbone", "vgg",
                 "--out", str(tmp_path / "t"), "--quick"])
    assert text.splitlines()[2] == QUICK_NOTE and "--quick" in QUICK_NOTE
