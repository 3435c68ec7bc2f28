"""What the runs send W&B and the dashboard that shows it (issue 31, section 3): the final evaluation sends what a
periodic validation sends, dense alpha's distribution over the probe image, the dashboard of a table's runs (built
with wandb-workspaces) plots only keys the runs log, and creating it without W&B fails with a clear message."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import wandb

from polypool.cli import main
from polypool.data.fixtures import make_voc

REPO = Path(__file__).parents[1]
STEPS, VALIDATED_AT = 3, 2  # 8 images, batch 4: validation at the end of the first epoch (step 2), none at step 3
LAYER = "features.maxpool"  # resnet18's one P-pooling layer


@pytest.fixture(scope="module")
def fit(tmp_path_factory):
    """A tiny fit through the CLI (resnet18 with P-pooling, dense alpha, 48 px crops, batch 4, 3 steps, periodic
    validation of 2 batches at step 2 only) with W&B offline, and everything it sent its W&B run: a spy on the
    public ``wandb.Run.log`` keeps each call's dict."""
    tmp_path = tmp_path_factory.mktemp("fit")
    root = make_voc(tmp_path / "voc", n_train=8, n_val=4, seed=0)
    calls: list[dict] = []
    log = wandb.Run.log

    def spy(run, data, *args, **kwargs):
        calls.append(dict(data))
        return log(run, data, *args, **kwargs)

    args = [
        "fit",
        "--config",
        "configs/voc/resnet.yaml",
        "--config",
        "configs/trainer/quick.yaml",
        "--data.init_args.root",
        str(root),
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.crop_size",
        "48",
        "--model.backbone",
        "resnet18",
        "--model.pooling",
        "ppool",
        "--model.output_stride",
        "8",
        "--trainer.max_epochs",
        "-1",
        "--trainer.max_steps",
        str(STEPS),
        "--trainer.limit_val_batches",
        "2",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.default_root_dir",
        str(tmp_path / "logs"),
        "--trainer.log_every_n_steps",
        "1",
        "--records_root",
        str(tmp_path / "runs"),
        "--wandb_project",
        "test",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        patch.setattr(wandb.Run, "log", spy)
        try:
            cli = main(args)
            run = next(logger.experiment for logger in cli.trainer.loggers if hasattr(logger.experiment, "config"))
            config = {key: run.config[key] for key in run.config}
        finally:
            wandb.finish()  # one process, one run: a run left open would be the next test's
    from polypool.callbacks import RunRecord

    probe = next(c.state_dict()["probe"] for c in cli.trainer.callbacks if isinstance(c, RunRecord))
    return SimpleNamespace(calls=calls, config=config, model=cli.model, probe=probe)


def at_step(calls, step):
    """The keys and values logged at ``trainer/global_step`` ``step``, merged."""
    merged = {}
    for call in calls:
        if call.get("trainer/global_step") == step:
            merged.update(call)
    return merged


def test_the_final_evaluation_sends_wandb_what_a_validation_sends(fit):
    validated, final = at_step(fit.calls, VALIDATED_AT), at_step(fit.calls, STEPS)
    # one periodic validation (Lightning logs its self.log values one step back, at step 1), none at step 3
    assert [c["trainer/global_step"] for c in fit.calls if "val/mIoU" in c] == [VALIDATED_AT - 1]
    assert "val/mIoU" not in final
    validated.update(at_step(fit.calls, VALIDATED_AT - 1))
    # what the periodic validation sent, the final evaluation sent too: alpha's statistics, the dense alpha map,
    # the image | truth | prediction panel (images, so W&B only)
    for key in ("alpha_map/" + LAYER, "val/panel", f"alpha/{LAYER}/mean", f"alpha/{LAYER}/min", f"alpha/{LAYER}/max"):
        assert key in validated and key in final, key
    assert isinstance(final["alpha_map/" + LAYER], wandb.Image) and isinstance(final["val/panel"], wandb.Image)
    assert 1.0 <= final[f"alpha/{LAYER}/min"] <= final[f"alpha/{LAYER}/mean"] <= final[f"alpha/{LAYER}/max"] <= 50.0
    # and the W&B logger received the detail metrics of the final evaluation
    assert {"final/mIoU", "final/boundary_mIoU", "final/IoU/background"} <= set(final)
    assert {f"final/trimap_mIoU/{w}px" for w in (1, 2, 4, 8, 16, 32)} <= set(final)
    width, height = final["val/panel"].image.size
    assert width % 3 == 0 and height > 0  # image | ground truth | prediction side by side


def test_dense_alpha_sends_its_distribution_over_the_probe_at_every_validation_and_at_the_end(fit):
    from polypool.callbacks import alpha_maps

    key = f"alpha/{LAYER}/dense_hist"
    sent = [(call["trainer/global_step"], call[key]) for call in fit.calls if key in call]
    assert [step for step, _ in sent] == [VALIDATED_AT, STEPS]
    module, alpha = alpha_maps(fit.model, fit.probe)[LAYER]
    assert module.alpha_mode == "dense" and module.alpha_range == (1.0, 50.0)
    for _, histogram in sent:  # the layer's fixed range, the same 64 bins at every step
        assert isinstance(histogram, wandb.Histogram)
        np.testing.assert_allclose(histogram.bins, np.linspace(1.0, 50.0, 65), rtol=1e-6)
    # the last one is the probe's whole alpha map (every channel and position) as the trained network gives it
    counts, _ = np.histogram(alpha.flatten().numpy(), bins=64, range=(1.0, 50.0))
    assert list(sent[-1][1].histogram) == counts.tolist() and sum(counts) == alpha.numel()


def test_the_dashboard_plots_only_keys_the_runs_log(fit):
    from polypool.repro.dashboard import dashboard, plotted_keys, pooling_layers

    layers = pooling_layers(fit.model)
    assert layers == {LAYER: "dense"}
    workspace = dashboard("entity", "test", "voc", "resnet", layers)
    logged = {key for call in fit.calls for key in call}
    plotted = plotted_keys(workspace)
    assert {
        "val/mIoU",
        "final/mIoU",
        "final/boundary_mIoU",
        "final/trimap_mIoU/1px",
        f"alpha/{LAYER}/mean",
        f"alpha/{LAYER}/dense_hist",
        f"alpha_map/{LAYER}",
        "val/panel",
    } <= plotted
    assert plotted <= logged, f"plotted, never logged: {sorted(plotted - logged)}"
    # the runs table's config columns hold values of the run's config (W&B keeps a key's value under "value")
    for column in workspace.runset_settings.pinned_columns:
        section, _, name = column.partition(":")
        if section == "config":
            first, _, rest = name.partition(".value")
            value = fit.config[first]
            for part in filter(None, rest.split(".")):
                assert isinstance(value, dict) and part in value, column
                value = value[part]
        elif section == "summary":
            assert name in logged, column


def test_the_dashboard_of_a_tables_runs(monkeypatch):
    import wandb_workspaces.reports.v2 as wr

    from polypool.repro import dashboard as board

    layers = board.config_layers(board.config_files("voc", "vgg"))
    assert layers == dict.fromkeys(("4", "9", "16", "23", "30"), "dense")  # VGG16's five pools, dense alpha
    quick = board.config_layers(board.config_files("voc", "vgg", quick=True))  # vgg16_bn: other indices
    assert list(quick) == ["6", "13", "23", "33", "43"]
    workspace = board.dashboard("me", "polypool", "voc", "vgg", layers)
    assert workspace.name == "polypool voc/vgg" and (workspace.entity, workspace.project) == ("me", "polypool")
    settings = workspace.runset_settings
    assert "Group" in settings.filters and "'voc/vgg'" in settings.filters  # the table's runs: its W&B group
    assert [g.name for g in settings.groupby] == ["model.pooling"]  # every curve: a pooling's seeds
    assert [s.name for s in workspace.sections] == [
        "mIoU",
        "Boundary IoU and trimap",
        "alpha per P-pooling layer",
        "alpha maps and panels",
        "Runs and provenance",
    ]
    by_section = {s.name: s.panels for s in workspace.sections}
    line = by_section["mIoU"][0]
    assert isinstance(line, wr.LinePlot) and line.y == ["val/mIoU"] and line.x == "trainer/global_step"
    assert line.groupby_aggfunc == "mean" and line.groupby_rangefunc == "minmax"
    assert [p.metrics for p in by_section["Boundary IoU and trimap"]] == [
        ["final/boundary_mIoU"],
        [f"final/trimap_mIoU/{w}px" for w in (1, 2, 4, 8, 16, 32)],
    ]
    alpha = by_section["alpha per P-pooling layer"]
    assert [p.y for p in alpha[:2]] == [["alpha/4/mean", "alpha/4/min", "alpha/4/max"], ["alpha/4/dense_hist"]]
    assert len(alpha) == 2 * len(layers)
    maps, panel = by_section["alpha maps and panels"]
    assert isinstance(maps, wr.MediaBrowser) and maps.media_keys == [f"alpha_map/{n}" for n in layers]
    assert panel.media_keys == ["val/panel"]
    assert isinstance(by_section["Runs and provenance"][0], wr.RunComparer)
    assert {
        "config:model.value.pooling",
        "summary:final/mIoU",
        "config:provenance.value.software.git_commit",
        "config:provenance.value.software.torch",
        "config:provenance.value.hardware.device_name",
        "config:trainer.value.precision",
    } <= set(settings.pinned_columns)
    # a channel alpha: its per-channel histogram and no map; a layer alpha: no histogram
    other = board.dashboard("me", "polypool", "voc", "vgg", {"a": "channel", "b": "layer"})
    assert board.plotted_keys(other) >= {"alpha/a/hist", "alpha/b/mean"}
    assert not any(k.startswith("alpha_map/") or k == "alpha/b/hist" for k in board.plotted_keys(other))
    text = board.main(["me/polypool", "--dataset", "voc", "--config", "vgg", "--dry-run"])
    assert "[alpha per P-pooling layer]" in text and "alpha/30/dense_hist" in text


def test_the_table_reads_the_keys_and_the_group_the_dashboard_shows(monkeypatch):
    from polypool.data.classes import VOC_CLASSES
    from polypool.repro import dashboard as board
    from polypool.repro import tables

    queries = []
    run = SimpleNamespace(
        config={"model": {"pooling": "ppool"}},
        summary={"final/mIoU": 0.5, **{f"final/IoU/{name}": 0.5 for name in VOC_CLASSES}},
    )

    class Api:
        def runs(self, path, filters):
            queries.append((path, filters))
            return [run]

    monkeypatch.setattr(wandb, "Api", Api)
    table = tables.load_wandb("me/polypool", "voc", "vgg")
    assert table.runs["ppool"][0][-1] == pytest.approx(50.0)
    workspace = board.dashboard("me", "polypool", "voc", "vgg", {})
    ((_path, filters),) = queries
    assert filters["group"] in str(workspace.runset_settings.filters)  # the same runs
    assert [g.name for g in workspace.runset_settings.groupby] == ["model.pooling"]  # the table's rows
    assert "final/mIoU" in board.plotted_keys(workspace)


def run_dashboard(tmp_path, **env):
    """``python -m polypool.dashboard ent/proj ...`` (saving, no --dry-run) in a clean HOME, under a time limit."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    environment.update(HOME=str(tmp_path), PYTHONPATH=str(REPO / "src"), WANDB_SILENT="true", **env)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "polypool.dashboard",
            "ent/proj",
            "--dataset",
            "voc",
            "--config",
            "vgg",
            "--layers",
            "4",
            "9",
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=90,
        cwd=tmp_path,
    )


def test_creating_the_dashboard_without_wandb_fails_with_a_clear_message(tmp_path):
    # a key of W&B's length, a server that does not answer (a closed port), a short HTTP timeout
    done = run_dashboard(tmp_path, WANDB_API_KEY="x" * 40, WANDB_BASE_URL="http://127.0.0.1:9", WANDB_HTTP_TIMEOUT="2")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    message = done.stderr
    assert "cannot create the W&B dashboard of ent/proj" in message
    assert "http://127.0.0.1:9 could not be reached" in message and "WANDB_BASE_URL" in message
    # no API key either (none in the environment, no ~/.netrc): the unreachable server is named first
    done = run_dashboard(tmp_path, WANDB_BASE_URL="http://127.0.0.1:9")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "ent/proj" in done.stderr and "could not be reached" in done.stderr
