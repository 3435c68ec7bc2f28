"""Logged runs -> the supplement's tables: the golden test on the paper's own numbers, seeds, missing runs."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from polypool.data import VOC_CLASSES
from polypool.data.classes import VOC_SHORT_NAMES
from polypool.repro.tables import METHODS, load_csv_logs, load_paper, load_records, main, render_rows

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
            path.write_text(
                json.dumps(
                    {
                        "per_class_iou": [v / 100 for v in values[:-1]],
                        "miou": values[-1] / 100,
                        "class_names": list(VOC_CLASSES),
                    }
                )
            )


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
    text = main(
        [
            "--runs",
            str(tmp_path / "runs"),
            "--dataset",
            "voc",
            "--backbone",
            backbone,
            "--out",
            str(tmp_path / f"voc_{backbone}"),
        ]
    )
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
    # the mean column is the plain mean of the 21 classes (docs/paper_notes.md)
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
    text = main(
        [
            "--runs",
            str(root),
            "--dataset",
            "voc",
            "--backbone",
            "vgg",
            "--out",
            str(tmp_path / "t"),
            "--note",
            "miniature run",
        ]
    )
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
    from polypool.repro.tables import QUICK_NOTE

    text = main(
        [
            "--runs",
            str(tmp_path / "none"),
            "--dataset",
            "voc",
            "--backbone",
            "vgg",
            "--out",
            str(tmp_path / "t"),
            "--quick",
        ]
    )
    assert text.splitlines()[2].startswith(QUICK_NOTE + " Data: ") and "--quick" in QUICK_NOTE
    assert "No paired comparison: it needs 3 seeds" in text
    assert "**paper (supplement)**" not in text and "ours - paper" not in text  # a generated set, not VOC


# --- our rows differing from the paper's: the sign of every difference, and the files read back ------------------


def known_deltas():
    """A difference per method and column, different for every method (swapped rows show) and of both signs."""
    return np.array([[((7 * m + 3 * j) % 9 - 4) * 0.3 for j in range(22)] for m in range(len(METHODS))])


def paper_tsv_rows(backbone):
    """The paper's rows straight from results/paper/*.tsv, in METHODS order."""
    name = {"vgg": "table1_voc_vgg.tsv", "resnet": "table2_voc_resnet.tsv"}[backbone]
    rows = {
        row[0]: row[1:]
        for row in (line.split("\t") for line in (SUPPLEMENT.parent / name).read_text().splitlines()[1:])
    }
    return np.array([[float(v) for v in rows[label]] for _, label in METHODS])


def read_csv_sections(path):
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    sections = {}
    for row in rows[1:]:
        sections.setdefault(row[0], []).append(row[1:])
    return rows[0], sections


def read_tex_sections(path):
    """{title: [[label, (text, bold), ...], ...]} from the .tex file's tabulars."""
    sections, current = {}, None
    for line in path.read_text().splitlines():
        if line.startswith("% "):
            current = sections.setdefault(line[2:], [])
        elif line.endswith(" \\\\") and not line.startswith("Method"):
            cells = line[:-3].split(" & ")
            current.append(
                [cells[0]]
                + [
                    (re.sub(r"\\textbf\{(.*)\}", r"\1", c).replace("$\\pm$", "±"), c.startswith("\\textbf"))
                    for c in cells[1:]
                ]
            )
    return sections


@pytest.mark.parametrize("backbone", ["vgg", "resnet"])
def test_rows_that_differ_from_the_paper_give_signed_differences_in_every_file(tmp_path, backbone):
    paper = load_paper("voc", backbone)
    paper_rows = paper_tsv_rows(backbone)  # read here, not through load_paper: a row mix-up there must show
    deltas = known_deltas()
    ours_rows = np.round(paper_rows + deltas, 1)
    assert (deltas > 0).any() and (deltas < 0).any() and (deltas == 0).any()
    write_records(tmp_path / "runs", "voc", backbone, [[(f"{v:.1f}", False) for v in row] for row in ours_rows])
    stem = tmp_path / f"voc_{backbone}"
    text = main(["--runs", str(tmp_path / "runs"), "--dataset", "voc", "--backbone", backbone, "--out", str(stem)])

    header, csv_sections = read_csv_sections(stem.with_suffix(".csv"))
    assert header == ["table", "method", *paper.columns]
    assert set(csv_sections) == {"ours", "paper", "ours - paper"}
    labels = [label for _, label in METHODS]
    for name, expected in (("ours", ours_rows), ("paper", paper_rows)):
        assert [row[0] for row in csv_sections[name]] == labels
        assert np.array([[float(v) for v in row[1:]] for row in csv_sections[name]]) == pytest.approx(expected)
    csv_deltas = csv_sections["ours - paper"]
    assert [row[0] for row in csv_deltas] == labels
    for (_method, label), row, expected in zip(METHODS, csv_deltas, deltas):
        for cell, d in zip(row[1:], expected):
            assert cell == f"{d:+.1f}".replace("-0.0", "+0.0"), (label, cell, d)
            assert np.sign(float(cell)) == np.sign(round(d, 1)), (label, cell, d)  # ours above the paper: +

    tex = read_tex_sections(stem.with_suffix(".tex"))
    assert list(tex) == ["ours", "paper (supplement)", "ours - paper"]
    for title, values in (("ours", ours_rows), ("paper (supplement)", paper_rows)):
        rows = tex[title]
        assert [row[0] for row in rows] == labels
        got = np.array([[float(text) for text, _ in row[1:]] for row in rows])
        assert got == pytest.approx(values)
        bold = np.array([[b for _, b in row[1:]] for row in rows])
        assert (bold == (values == values.max(0))).all(), title  # the best of each column, and only it
    assert [[text for text, _ in row[1:]] for row in tex["ours - paper"]] == [row[1:] for row in csv_deltas]
    md_deltas = text.split("**ours - paper**")[1]
    for (_, label), row in zip(METHODS, csv_deltas):
        assert f"| {label} | " + " | ".join(row[1:]) + " |" in md_deltas


def test_seeds_table_reads_back_paper_and_differences(tmp_path):
    root = tmp_path / "runs"
    paper = load_paper("voc", "vgg")
    for seed, value in ((0, 0.5), (1, 0.7)):  # P-pooling: 60.0 ± 14.1 in every class
        path = root / "voc" / "vgg" / "ppool" / f"{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"per_class_iou": [value] * 21, "miou": value}))
    main(["--runs", str(root), "--dataset", "voc", "--backbone", "vgg", "--out", str(tmp_path / "t")])
    _, sections = read_csv_sections(tmp_path / "t.csv")
    assert sections["ours"][-1][1:] == ["60.0 ± 14.1"] * 22 and sections["ours"][0][1:] == ["-"] * 22
    paper_ppool = paper.row("ppool")[0]
    assert [float(v) for v in sections["paper"][-1][1:]] == pytest.approx(paper_ppool)
    deltas = sections["ours - paper"]
    assert deltas[0][1:] == ["-"] * 22  # no run of ours: no difference
    assert deltas[-1][1:] == [f"{60.0 - p:+.1f}" for p in paper_ppool]  # the mean over seeds minus the paper
    assert [np.sign(float(cell)) for cell in deltas[-1][1:]] == [np.sign(60.0 - p) for p in paper_ppool]
    tex = read_tex_sections(tmp_path / "t.tex")
    assert tex["ours"][-1][1] == ("60.0 ± 14.1", True)  # the only row with runs: bold everywhere


# --- the details mutation testing found unchecked ------------------------------------------------------------------


def write_run(root, method, per_class, miou=None, seed=0, backbone="vgg"):
    path = root / "voc" / backbone / method / f"{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"per_class_iou": per_class}
    if miou is not None:
        record["miou"] = miou
    path.write_text(json.dumps(record))


def test_markdown_and_latex_text_exactly(tmp_path):
    from polypool.repro.tables import Table, write_tables

    columns = ["bg", "cat", "mean"]
    ours = Table(
        columns,
        {
            "max": [np.array([50.06, np.nan, 40.0])],
            "ppool": [np.array([60.0, 30.0, 45.0]), np.array([62.0, 30.0, 46.0])],
        },
    )
    paper = Table(columns, {"max": [np.array([50.1, 20.0, 35.0])], "ppool": [np.array([61.0, 31.0, 46.0])]})
    text = write_tables(ours, paper, tmp_path / "a" / "b" / "t", note="a note")  # parents created
    dashes = "| - | - | - |"
    assert text == "\n".join(
        [
            "# t: per-class IoU (%) and mIoU",
            "",
            "a note",
            "",
            "**ours**",
            "",
            "| Method | bg | cat | mean |",
            "|---|---:|---:|---:|",
            "| Max | 50.1 | n/a | 40.0 |",
            f"| Average {dashes}",
            f"| Strided-C {dashes}",
            f"| Gated {dashes}",
            f"| DPP {dashes}",
            "| P-pooling | **61.0 ± 1.4** | **30.0 ± 0.0** | **45.5 ± 0.7** |",
            "",
            "**paper (supplement)**",
            "",
            "| Method | bg | cat | mean |",
            "|---|---:|---:|---:|",
            "| Max | 50.1 | 20.0 | 35.0 |",
            f"| Average {dashes}",
            f"| Strided-C {dashes}",
            f"| Gated {dashes}",
            f"| DPP {dashes}",
            "| P-pooling | **61.0** | **31.0** | **46.0** |",
            "",
            "**ours - paper**",
            "",
            "| Method | bg | cat | mean |",
            "|---|---:|---:|---:|",
            "| Max | +0.0 | n/a | +5.0 |",
            f"| Average {dashes}",
            f"| Strided-C {dashes}",
            f"| Gated {dashes}",
            f"| DPP {dashes}",
            "| P-pooling | +0.0 | -1.0 | -0.5 |",
            "",
            "Missing runs (shown as -): Average, Strided-C, Gated, DPP.",
            "",
        ]
    )  # -0.04 -> "+0.0", never "-0.0"
    assert (tmp_path / "a" / "b" / "t.md").read_text() == text
    tex_dashes = " & - & - & -"
    assert (tmp_path / "a" / "b" / "t.tex").read_text() == "\n".join(
        [
            "% ours",
            "\\begin{tabular}{lccc}",
            "\\toprule",
            "Method & bg & cat & mean \\\\",
            "\\midrule",
            "Max & 50.1 & n/a & 40.0 \\\\",
            f"Average{tex_dashes} \\\\",
            f"Strided-C{tex_dashes} \\\\",
            f"Gated{tex_dashes} \\\\",
            f"DPP{tex_dashes} \\\\",
            "P-pooling & \\textbf{61.0 $\\pm$ 1.4} & \\textbf{30.0 $\\pm$ 0.0} & \\textbf{45.5 $\\pm$ 0.7} \\\\",
            "\\bottomrule",
            "\\end{tabular}",
            "",
            "% paper (supplement)",
            "\\begin{tabular}{lccc}",
            "\\toprule",
            "Method & bg & cat & mean \\\\",
            "\\midrule",
            "Max & 50.1 & 20.0 & 35.0 \\\\",
            f"Average{tex_dashes} \\\\",
            f"Strided-C{tex_dashes} \\\\",
            f"Gated{tex_dashes} \\\\",
            f"DPP{tex_dashes} \\\\",
            "P-pooling & \\textbf{61.0} & \\textbf{31.0} & \\textbf{46.0} \\\\",
            "\\bottomrule",
            "\\end{tabular}",
            "",
            "% ours - paper",
            "\\begin{tabular}{lccc}",
            "\\toprule",
            "Method & bg & cat & mean \\\\",
            "\\midrule",
            "Max & +0.0 & n/a & +5.0 \\\\",
            f"Average{tex_dashes} \\\\",
            f"Strided-C{tex_dashes} \\\\",
            f"Gated{tex_dashes} \\\\",
            f"DPP{tex_dashes} \\\\",
            "P-pooling & +0.0 & -1.0 & -0.5 \\\\",
            "\\bottomrule",
            "\\end{tabular}",
            "",
        ]
    )
    csv_text = (tmp_path / "a" / "b" / "t.csv").read_bytes()
    assert csv_text.splitlines()[:2] == [b"table,method,bg,cat,mean", b"ours,Max,50.1,n/a,40.0"]
    assert csv_text.count(b"\r\n") == 19  # csv's own line ends, none doubled


def test_bold_compares_at_the_printed_precision():
    from polypool.repro.tables import Table

    table = Table(["bg", "mean"], {"max": [np.array([50.12, 40.04])], "avg": [np.array([50.08, 40.0])]})
    rendered = {row[0]: row[1:] for row in render_rows(table, "md")}
    assert rendered["Max"] == ["**50.1**", "**40.0**"] and rendered["Average"] == ["**50.1**", "**40.0**"]


def test_single_run_has_zero_std_and_records_are_kept(tmp_path):
    write_run(tmp_path, "max", [0.5] * 20 + [None])  # no miou logged: the mean of the classes present
    table = load_records(tmp_path, "voc", "vgg")
    mean, std = table.row("max")
    assert mean[-1] == pytest.approx(50.0) and np.isnan(mean[20]) and (std == 0).all()
    assert table.columns == [*list(VOC_SHORT_NAMES), "mean"]
    assert table.records["max"][0]["per_class_iou"][0] == 0.5


def test_record_values_without_and_with_a_logged_miou():
    from polypool.repro.tables import record_values

    np.testing.assert_allclose(record_values([0.5, None, 0.7]), [50.0, np.nan, 70.0, 60.0])
    np.testing.assert_allclose(record_values([0.5, None, 0.7], 0.4), [50.0, np.nan, 70.0, 40.0])


def test_metrics_csv_cells_and_the_logged_miou(tmp_path):
    from polypool.repro.tables import load_metrics_csv

    header = ["epoch", "step", "val/mIoU"] + [f"val/IoU/{n}" for n in VOC_CLASSES]
    cells = ["0.5"] * 18 + ["", "nan", "0.25"]  # an empty cell and "nan" both mean "absent class"
    path = tmp_path / "metrics.csv"
    path.write_text("\n".join(",".join(r) for r in [header, ["0", "9", "0.4", *cells]]) + "\n")
    values = load_metrics_csv(path)
    assert values[0] == pytest.approx(50.0) and np.isnan(values[18]) and np.isnan(values[19])
    assert values[20] == pytest.approx(25.0) and values[-1] == pytest.approx(40.0)  # the logged mIoU, not a mean
    path.write_text(",".join(header) + "\n0,9," + "," * 20 + "\n")  # a training row only
    with pytest.raises(ValueError, match=r"metrics.csv has no evaluation row \(no 'final/mIoU' or 'val/mIoU' value\)"):
        load_metrics_csv(path)


def test_metrics_csv_gives_the_final_evaluation_over_later_periodic_validations(tmp_path):
    """The record's numbers come from the final whole-val evaluation; a table read from the logs must agree."""
    from polypool.repro.tables import load_metrics_csv

    names = VOC_CLASSES
    header = (
        ["epoch", "step", "val/mIoU"]
        + [f"val/IoU/{n}" for n in names]
        + ["final/mIoU"]
        + [f"final/IoU/{n}" for n in names]
    )
    periodic = ["0", "8", "0.3"] + ["0.3"] * 21 + [""] * 22
    final = ["0", "10", ""] + [""] * 21 + ["0.6"] + ["0.5"] * 20 + ["nan"]
    later_periodic = ["0", "10", "0.2"] + ["0.2"] * 21 + [""] * 22  # logged after the final row, same step
    path = tmp_path / "metrics.csv"
    path.write_text("\n".join(",".join(r) for r in [header, periodic, final, later_periodic]) + "\n")
    values = load_metrics_csv(path, names)
    np.testing.assert_allclose(values[:20], 50.0)
    assert np.isnan(values[20]) and values[21] == pytest.approx(60.0)


def test_paper_tables_and_their_keys():
    from polypool.repro.tables import paper_table_key

    with pytest.raises(ValueError, match=r"no per-class table for cityscapes/resnet; it has \[\('voc', 'resnet'\)"):
        load_paper("cityscapes", "resnet")
    assert paper_table_key("voc", "vgg_largefov") == ("voc", "vgg")
    assert paper_table_key("voc", "resnet101_deeplabv2") == ("voc", "resnet")
    assert paper_table_key("ade20k", "inception_v3") == ("ade20k", "inception")
    assert paper_table_key("voc", "other") == ("voc", "other")


def test_main_defaults_read_results_runs_and_write_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "results" / "runs", "max", [0.5] * 21, 0.5)
    text = main([])
    assert capsys.readouterr().out == text + "\n"
    assert (tmp_path / "results" / "voc_vgg.md").read_text() == text and "**paper (supplement)**" in text
    assert "| Max | **50.0** |" in text


def test_main_csv_logs_wandb_and_a_dataset_without_a_paper_table(tmp_path, monkeypatch):
    from polypool.repro import tables
    from polypool.repro.tables import Table

    header = ["epoch", "step", "val/mIoU"] + [f"val/IoU/{n}" for n in VOC_CLASSES]
    path = tmp_path / "logs" / "gated" / "0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text(",".join(header) + "\n0,9,0.3," + ",".join(["0.3"] * 21) + "\n")
    text = main(["--csv-logs", str(tmp_path / "logs"), "--out", str(tmp_path / "c")])
    assert "| Gated | **30.0** |" in text
    calls = []

    def fake_wandb(path, dataset, backbone):
        calls.append((path, dataset, backbone))
        return Table([*list(VOC_SHORT_NAMES), "mean"], {"dpp": [np.full(22, 20.0)]})

    monkeypatch.setattr(tables, "load_wandb", fake_wandb)
    text = main(
        ["--wandb", "me/polypool", "--dataset", "cityscapes", "--backbone", "resnet", "--out", str(tmp_path / "w")]
    )
    assert calls == [("me/polypool", "cityscapes", "resnet")]
    assert "| DPP | **20.0** |" in text and "paper" not in text  # the paper has no Cityscapes per-class table


def test_text_ends_once_notes_join_and_csv_log_columns(tmp_path):
    from polypool.repro.tables import QUICK_NOTE, Table, write_tables

    full = Table(["bg", "mean"], {m: [np.array([50.0, 50.0])] for m, _ in METHODS})
    text = write_tables(full, None, tmp_path / "full")  # no note, nothing missing: the text ends with its table
    assert text.splitlines()[1:3] == ["", "**ours**"] and text.endswith("| **50.0** | **50.0** |\n")
    text = main(["--runs", str(tmp_path / "none"), "--out", str(tmp_path / "q"), "--quick", "--note", "extra"])
    assert text.splitlines()[2].startswith(QUICK_NOTE) and text.splitlines()[2].endswith(". extra")
    header = ["epoch", "step", "val/mIoU"] + [f"val/IoU/{n}" for n in VOC_CLASSES]
    path = tmp_path / "logs" / "max" / "0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text(",".join(header) + "\n0,9,0.3," + ",".join(["0.3"] * 21) + "\n")
    assert load_csv_logs(tmp_path / "logs").columns == [*list(VOC_SHORT_NAMES), "mean"]


# --- detail columns, paired differences against Max, the generated note (issue 15) -------------------------------


def write_detail_record(root, method, seed, miou, boundary, trimap):
    path = root / "voc" / "vgg" / method / f"{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "per_class_iou": [miou] * 21,
                "miou": miou,
                "seed": seed,
                "boundary_iou": {"mean": boundary, "per_class": [boundary] * 21},
                "trimap_miou": {"1": trimap, "4": trimap + 0.1, "16": trimap + 0.2},
            }
        )
    )


def test_detail_metrics_are_extra_columns_of_our_rows_only(tmp_path):
    root = tmp_path / "runs"
    write_detail_record(root, "max", 0, 0.5, 0.25, 0.125)
    write_detail_record(root, "ppool", 0, 0.6, 0.375, 0.5)
    table = load_records(root, "voc", "vgg")
    assert table.detail_columns == ["bIoU", "trimap 1px", "trimap 4px", "trimap 16px"]
    rows = {row[0]: row[1:] for row in render_rows(table, "md", detail=True)}
    assert rows["Max"][22:] == ["25.0", "12.5", "22.5", "32.5"]
    assert rows["P-pooling"][21:] == ["**60.0**", "**37.5**", "**50.0**", "**60.0**", "**70.0**"]
    assert len(render_rows(table, "md")[0]) == 23  # without detail=True: the paper's columns only
    text = main(["--runs", str(root), "--dataset", "voc", "--backbone", "vgg", "--out", str(tmp_path / "t")])
    ours, paper = text.split("**paper (supplement)**")
    assert "| mean | bIoU | trimap 1px | trimap 4px | trimap 16px |" in ours
    assert "bIoU" not in paper  # the paper's and the difference sections keep the paper's columns
    csv_header = (tmp_path / "t.csv").read_text().splitlines()[0].split(",")
    assert csv_header[-5:] == ["mean", "bIoU", "trimap 1px", "trimap 4px", "trimap 16px"]


def test_paired_differences_against_max_pair_by_seed_with_a_t_interval(tmp_path):
    from scipy import stats

    from polypool.repro.tables import findings, paired_differences

    root = tmp_path / "runs"
    max_miou = {0: 0.40, 1: 0.50, 2: 0.45}
    ppool_diff = {0: 0.02, 1: 0.04, 2: 0.03}  # P-pooling better by 2-4 points on every seed
    avg_diff = {0: -0.05, 1: 0.05, 2: 0.01}  # Average: no clear difference
    for seed in (2, 0, 1):  # written out of order: pairing must follow the seed, not the file order
        write_detail_record(root, "max", seed, max_miou[seed], 0.3, 0.2)
        write_detail_record(root, "ppool", seed, max_miou[seed] + ppool_diff[seed], 0.3 - ppool_diff[seed], 0.2)
        write_detail_record(root, "avg", seed, max_miou[seed] + avg_diff[seed], 0.3, 0.2)
    write_detail_record(root, "gated", 0, 0.5, 0.3, 0.2)  # one seed: no comparison
    for seed in (3, 4):  # Average has two more seeds than P-pooling; Max has seed 3 only
        write_detail_record(root, "avg", seed, 0.45, 0.3, 0.2)
    write_detail_record(root, "max", 3, 0.45, 0.3, 0.2)
    table = load_records(root, "voc", "vgg")
    differences = {(d.method, d.metric): d for d in paired_differences(table)}
    assert {m for m, _ in differences} == {"avg", "ppool"}
    d = differences["ppool", "mIoU"]
    assert sorted(d.diffs) == pytest.approx([2.0, 3.0, 4.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)  # the std of 2, 3, 4 is 1
    assert d.interval == pytest.approx((3.0 - half, 3.0 + half))
    assert differences["ppool", "bIoU"].mean == pytest.approx(-3.0)
    assert differences["ppool", "trimap 1px"].mean == pytest.approx(0.0, abs=1e-9)
    lines = findings(table)
    assert lines[0] == "mIoU (mean over seeds), best first: Gated 50.0, P-pooling 48.0, Average 45.2, Max 45.0."
    ppool_line = next(line for line in lines if line.startswith("P-pooling vs Max"))
    assert "mIoU +3.0 [" in ppool_line and "(better)" in ppool_line and "bIoU -3.0 [" in ppool_line
    assert "(worse)" in ppool_line
    avg_line = next(line for line in lines if line.startswith("Average vs Max"))
    assert "mIoU +0.3 [" in avg_line and "(no clear difference)" in avg_line
    assert "paired over 4 seeds" in avg_line and "paired over 3 seeds" in ppool_line  # seed 4 has no Max
    text = main(["--runs", str(root), "--dataset", "voc", "--backbone", "vgg", "--out", str(tmp_path / "t")])
    section = text.split("**paired difference vs Max")[1]
    assert "| Method | mIoU | bIoU | trimap 1px |" in section
    assert f"| P-pooling | +3.0 [{3.0 - half:+.1f}, {3.0 + half:+.1f}] | -3.0 [" in section


def test_the_quick_note_names_each_difference_from_the_full_recipe_from_the_config_files(tmp_path):
    from polypool.repro.tables import recipe_differences

    (tmp_path / "full.yaml").write_text(
        "model:\n  lr: 0.1\n  backbone: vgg16\ndata:\n  class_path: "
        "polypool.data.VOCSegmentationDataModule\n  init_args:\n"
        "    crop_size: 321\n    root: data\n"
    )
    (tmp_path / "quick.yaml").write_text(
        "model:\n  lr: 0.1\n  backbone: vgg16_bn\n  optimizer: adamw\n"
        "  network_weights: null\n  tta_flip: false\n"
        "data:\n  init_args:\n    crop_size: 64\n    hflip: true\n"
        "trainer:\n  callbacks: []\n  max_steps: 60\n"
    )
    lines = recipe_differences(["full.yaml", "quick.yaml"], root=tmp_path)
    # restated defaults (network_weights, tta_flip, hflip) are no difference; an unset key of
    # the full config is its class's default
    assert lines == [
        "model.backbone vgg16_bn (full: vgg16)",
        "model.optimizer adamw (full: sgd)",
        "data.crop_size 64 (full: 321)",
        "trainer.max_steps 60 (full: -1)",
    ]
    assert recipe_differences(["full.yaml"], root=tmp_path) == []


def test_provenance_lines_name_the_config_files_and_each_p_pooling_runs_alpha():
    from polypool.repro.tables import Table, provenance_lines

    def alpha(first, last):
        return {
            "first": {"step": 0, "layers": {"4": {"mean": first, "std": 0.5}}},
            "last": {"step": 60, "layers": {"4": {"mean": last, "std": 0.25}, "9": {"mean": 3.0, "std": 0.0}}},
        }

    table = Table(
        ["bg", "mean"],
        records={
            "max": [{"config_files": ["configs/voc/vgg.yaml", "configs/trainer/quick.yaml"], "seed": 0}],
            "gated": [{"config_files": [], "seed": 0}, {"seed": 1}],  # no config files: not named
            "dpp": [{"config_files": ["configs/voc/vgg.yaml"], "seed": 0, "alpha": None}],
            "ppool": [
                {
                    "config_files": ["configs/voc/vgg.yaml", "configs/trainer/quick.yaml"],
                    "seed": 2,
                    "alpha": alpha(30.0, 29.84),
                },
                {"seed": 3, "alpha": {"first": {}, "last": {"layers": {}}}},
            ],  # no layers: no line
        },
    )
    assert provenance_lines(table) == [
        "Our rows: runs of `configs/voc/vgg.yaml`, `configs/voc/vgg.yaml + configs/trainer/quick.yaml`.",
        "No environment recorded for Max seed 0, Gated seed 0, Gated seed 1, DPP seed 0, P-pooling seed 2, "
        "P-pooling seed 3 (records written before provenance was).",
        "P-pooling seed 2: alpha mean from step 0 to step 60: 4 30 (spread 0.5) -> 29.84 (spread 0.25); "
        "9 ? -> 3 (spread 0).",
    ]
    # a record without a first probe says so, and a table without config files has no "Our rows" line
    table = Table(
        ["bg", "mean"],
        records={
            "ppool": [{"seed": 0, "alpha": {"last": {"step": 8, "layers": {"4": {"mean": 1.23456, "std": 0.0123456}}}}}]
        },
    )
    assert provenance_lines(table) == [
        "No environment recorded for P-pooling seed 0 (records written before provenance was).",
        "P-pooling seed 0: alpha mean from step ? to step 8: 4 ? -> 1.235 (spread 0.0123).",
    ]


def test_load_wandb_reads_the_finished_runs_of_the_experiments_group(monkeypatch):
    """W&B's API stubbed: the query (path, group, finished only), the pooling from the run's config, the summary's
    per-class IoU and mIoU, and runs without a pooling or an mIoU left out."""
    import sys
    import types

    from polypool.repro.tables import load_wandb

    class Run:
        def __init__(self, pooling, miou, iou=0.25):
            self.config = {"model": {"pooling": pooling}} if pooling else {}
            self.summary = {f"val/IoU/{name}": iou for name in VOC_CLASSES[:-1]}  # the last class never seen
            if miou is not None:
                self.summary["val/mIoU"] = miou

    queries = []

    class Api:
        def runs(self, path, filters):
            queries.append((path, filters))
            return [Run("max", 0.5), Run("ppool", 0.6, 0.3), Run("ppool", 0.7, 0.4), Run(None, 0.9), Run("avg", None)]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Api))
    table = load_wandb("me/polypool", "voc", "vgg_largefov")
    assert queries == [("me/polypool", {"group": "voc/vgg_largefov", "state": "finished"})]
    assert table.columns == [*list(VOC_SHORT_NAMES), "mean"]
    assert sorted(table.runs) == ["max", "ppool"]
    assert len(table.runs["max"]) == 1 and len(table.runs["ppool"]) == 2
    np.testing.assert_allclose(table.runs["max"][0][:20], 25.0)
    assert np.isnan(table.runs["max"][0][20])  # a class without a logged IoU
    assert table.runs["max"][0][21] == pytest.approx(50.0)
    np.testing.assert_allclose([r[0] for r in table.runs["ppool"]], [30.0, 40.0])
    np.testing.assert_allclose([r[21] for r in table.runs["ppool"]], [60.0, 70.0])


def test_load_wandb_prefers_the_final_evaluation(monkeypatch):
    import sys
    import types

    from polypool.repro.tables import load_wandb

    run = types.SimpleNamespace(
        config={"model": {"pooling": "max"}},
        summary={
            "val/mIoU": 0.2,
            **{f"val/IoU/{n}": 0.2 for n in VOC_CLASSES},
            "final/mIoU": 0.6,
            **{f"final/IoU/{n}": 0.5 for n in VOC_CLASSES[1:]},
        },
    )
    api = types.SimpleNamespace(runs=lambda path, filters: [run])
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=lambda: api))
    values = load_wandb("me/polypool", "voc", "vgg").runs["max"][0]
    assert np.isnan(values[0]) and values[1] == pytest.approx(50.0) and values[21] == pytest.approx(60.0)


def test_records_sort_by_seed_number_and_the_file_name_gives_a_missing_seed(tmp_path):
    folder = tmp_path / "voc" / "vgg" / "max"
    folder.mkdir(parents=True)
    for name, seed, miou in [("10", 10, 0.1), ("extra", None, 0.2), ("9", "absent", 0.3), ("1", 5, 0.4)]:
        record = {"per_class_iou": [miou] * 21, "miou": miou}
        if seed != "absent":
            record["seed"] = seed
        (folder / f"{name}.json").write_text(json.dumps(record))
    table = load_records(tmp_path, "voc", "vgg")
    # 1.json, 9.json, 10.json by number (not 1, 10, 9 as text), then the named file; a recorded seed wins over the
    # file's name, and a record without one takes its file's number
    assert [round(v[-1]) for v in table.runs["max"]] == [40, 30, 10, 20]
    assert table.seeds["max"] == [5, 9, 10, None]


def test_findings_without_any_run_say_so():
    from polypool.repro.tables import PAIRED_MIN_SEEDS, Table, findings

    assert findings(Table(columns=["bg", "mean"])) == [
        f"No paired comparison: it needs {PAIRED_MIN_SEEDS} seeds of each pooling (these runs have 0 for the pooling "
        f"with fewest); run with --seeds {PAIRED_MIN_SEEDS}."
    ]


def test_a_setting_the_quick_preset_sets_to_null_is_a_difference(tmp_path):
    from polypool.repro.tables import recipe_differences

    (tmp_path / "full.yaml").write_text("model:\n  lr: 0.1\n")
    (tmp_path / "quick.yaml").write_text("model:\n  lr: 0.1\n  custom_setting: null\n")
    assert recipe_differences(["full.yaml", "quick.yaml"], root=tmp_path) == [
        "model.custom_setting None (full: default)"
    ]


def test_the_quick_note_and_the_written_tables_carry_the_runs_provenance(tmp_path):
    from polypool.repro.tables import quick_note, recipe_differences, write_tables

    root = tmp_path / "runs"
    configs = ["configs/voc/vgg.yaml", "configs/trainer/quick.yaml"]
    alpha = {
        "first": {"step": 0, "layers": {"features.4": {"mean": 30.0, "std": 0.5}}},
        "last": {"step": 40, "layers": {"features.4": {"mean": 29.0, "std": 0.75}}},
    }
    for seed in (0, 1, 2):  # enough seeds for the paired differences
        for method, miou in (("max", 0.45 + seed / 100), ("ppool", 0.47 + seed / 50)):
            write_detail_record(root, method, seed, miou, 0.3, 0.2)
            path = root / "voc" / "vgg" / method / f"{seed}.json"
            record = json.loads(path.read_text())
            record.update(config_files=configs, steps=40, **({"alpha": alpha} if method == "ppool" else {}))
            path.write_text(json.dumps(record))
    table = load_records(root, "voc", "vgg")
    note = quick_note(table)
    differences = recipe_differences(configs)
    assert differences and f"Differences from `configs/voc/vgg.yaml`: {'; '.join(differences)}." in note
    assert "Steps per run: 40." in note
    text = write_tables(table, None, tmp_path / "t")
    assert "- Our rows: runs of `configs/voc/vgg.yaml + configs/trainer/quick.yaml`." in text
    assert (
        "- P-pooling seed 0: alpha mean from step 0 to step 40: features.4 30 (spread 0.5) -> 29 (spread 0.75)." in text
    )
    rows = list(csv.reader((tmp_path / "t.csv").open()))
    paired = [row for row in rows if row[0] == "paired vs max"]
    assert paired[0][:2] == ["paired vs max", "method"] and paired[1][1] == "P-pooling"


def test_identical_runs_are_no_clear_difference(tmp_path):
    """Every paired difference 0: the interval is [0, 0], which does not exclude 0."""
    from polypool.repro.tables import findings

    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        for method in ("max", "ppool"):
            write_detail_record(root, method, seed, 0.4 + seed / 100, 0.3, 0.2)
    line = next(line for line in findings(load_records(root, "voc", "vgg")) if line.startswith("P-pooling vs Max"))
    assert "mIoU +0.0 [+0.0, +0.0] (no clear difference)" in line and "(better)" not in line


def test_a_committed_reference_is_a_section_of_its_own_and_the_table_names_the_runs_trained_now(tmp_path):
    """reproduce.sh --quick's table (issue 31, section 0): the committed miniature is shown apart from the user's rows,
    never counted as them, and the provenance says which rows this sweep trained and which it read."""
    ours, reference = tmp_path / "runs", tmp_path / "reference"
    write_detail_record(ours, "max", 0, 0.5, 0.25, 0.125)
    write_detail_record(ours, "ppool", 0, 0.6, 0.375, 0.5)
    for seed, miou in ((0, 0.7), (1, 0.8)):
        write_detail_record(reference, "avg", seed, miou, 0.25, 0.25)
    text = main(
        [
            "--runs",
            str(ours),
            "--dataset",
            "voc",
            "--backbone",
            "vgg",
            "--out",
            str(tmp_path / "t"),
            "--quick",
            "--reference",
            str(reference),
            "--trained",
            "ppool seed 0",
        ]
    )
    mine, committed = text.split("**committed reference (")
    assert "| Average | - |" in mine  # the reference's Average is not one of the user's rows
    assert "2 seed(s); trained when it was committed, not by this sweep)**" in committed
    assert "| mIoU | bIoU | trimap 1px | trimap 4px | trimap 16px |" in committed
    assert (
        "| Average | **75.0 ± 7.1** | **25.0 ± 0.0** | **25.0 ± 0.0** | **35.0 ± 0.0** | **45.0 ± 0.0** |" in committed
    )
    assert "| Max | - |" in committed
    assert (
        f"- Trained by this sweep: P-pooling seed 0. Read from records of earlier sweeps in {ours}: Max seed 0."
        in committed
    )  # under the tables, with the other provenance lines
    csv_rows = (tmp_path / "t.csv").read_text().splitlines()
    assert any(row.startswith('"committed reference') and ",Average," in row for row in csv_rows)
