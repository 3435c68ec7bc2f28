"""The notebooks: each committed .ipynb is its script's cells, executed without errors (fast), and each script runs
top to bottom as a notebook and writes its figures (slow: 02-04 train the quick runs when they are missing)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("notebook_build", ROOT / "notebooks" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

# The figures each notebook writes to results/figures/.
FIGURES = {
    "01_p_pooling": ["01_alpha_sweep", "01_window_gradients", "01_props", "01_detail_shift"],
    "02_results": ["02_voc_vgg_deltas", "02_voc_resnet_deltas", "02_voc_vgg_trimap", "02_voc_resnet_trimap"],
    "03_qualitative": ["03_qualitative_voc", "03_qualitative_cityscapes", "03_qualitative_ade20k"],
    "04_alpha": ["04_alpha_per_layer", "04_alpha_histograms", "04_dense_alpha_maps"],
}
SCRIPTS = build.scripts()


def test_every_notebook_is_listed():
    assert [s.stem for s in SCRIPTS] == sorted(FIGURES)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.stem)
def test_committed_notebook_is_its_script_executed(script):
    committed = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == build.cells_of(script), (
        f"{script.name} changed since its notebook was built: run python notebooks/build.py {script.stem[:2]}"
    )
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "the notebook was not executed"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) == len(FIGURES[script.stem])


def test_cells_of_a_percent_script(tmp_path):
    script = tmp_path / "99_demo.py"
    script.write_text("# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n\n# %%\nprint(x)\n")
    assert build.cells_of(script) == [("markdown", "# Title\n\ntext"), ("code", "x = 1"), ("code", "print(x)")]
    script.write_text("import os\n# %%\nx = 1\n")
    with pytest.raises(ValueError, match="before the first"):
        build.cells_of(script)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.stem)
def test_notebook_runs_top_to_bottom(script, monkeypatch):
    from polypool.repro.notebooks import QUICK_OVERRIDES_ENV

    # the smallest quick runs: this checks that the notebooks run, not what the miniature learns (test_quick.py)
    monkeypatch.setenv(
        QUICK_OVERRIDES_ENV, "--trainer.max_steps 3 --data.init_args.crop_size 32 --data.init_args.batch_size 2"
    )
    start = time.time() - 1
    notebook = build.execute(build.notebook_of(script))  # raises CellExecutionError on any failing cell
    assert all(c.execution_count is not None for c in notebook.cells if c.cell_type == "code")
    for name in FIGURES[script.stem]:
        path = ROOT / "results" / "figures" / f"{name}.png"
        assert path.is_file() and path.stat().st_mtime >= start, f"{script.name} did not write {path}"
