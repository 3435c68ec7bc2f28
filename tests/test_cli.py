"""python -m polypool: every config parses, fit logs and records, resume, DDP on CPU, reproduce.sh --quick."""

import json
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from polypool.cli import main
from polypool.data.fixtures import make_voc
from polypool.pooling import POOLING_NAMES

REPO = Path(__file__).parents[1]
BASE_CONFIGS = sorted(str(p.relative_to(REPO)) for p in REPO.glob("configs/*/*.yaml") if p.parent.name != "trainer")
PRESETS = sorted(str(p.relative_to(REPO)) for p in REPO.glob("configs/trainer/*.yaml"))


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    import wandb

    wandb.finish()  # a W&B run left open would be reused by the next test's logger (one process, one run)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), n_train=8, n_val=4, seed=0)


def test_the_paper_configs_exist():
    assert BASE_CONFIGS == [
        "configs/ade20k/inception.yaml",
        "configs/cityscapes/inception.yaml",
        "configs/voc/resnet.yaml",
        "configs/voc/resnet101_deeplabv2.yaml",
        "configs/voc/resnet_deeplabv3.yaml",
        "configs/voc/vgg.yaml",
        "configs/voc/vgg_largefov.yaml",
    ]
    assert PRESETS == [
        "configs/trainer/cpu.yaml",
        "configs/trainer/ddp.yaml",
        "configs/trainer/gpu.yaml",
        "configs/trainer/quick.yaml",
    ]


@pytest.mark.parametrize("preset", [None, *PRESETS])
@pytest.mark.parametrize("config", BASE_CONFIGS)
def test_every_config_parses_with_print_config(config, preset, capsys):
    args = ["fit", "--config", config] + (["--config", preset] if preset else []) + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: polypool.data." in printed and "pooling: ppool" in printed


def fit_args(root, tmp_path, backbone="resnet18", pooling="ppool", steps=4, extra=()):
    return [
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
        backbone,
        "--model.pooling",
        pooling,
        "--model.output_stride",
        "8",
        "--trainer.max_epochs",
        "-1",
        "--trainer.max_steps",
        str(steps),
        "--trainer.limit_val_batches",
        "2",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path / "logs"),
        "--trainer.log_every_n_steps",
        "1",
        "--records_root",
        str(tmp_path / "runs"),
        *extra,
    ]


@torch.no_grad()
def torchmetrics_iou_of(model, datamodule):
    """Per-class IoU of ``model`` (plain forward, eval mode) over every image of the datamodule's val set."""
    from torchmetrics.classification import MulticlassJaccardIndex

    metric = MulticlassJaccardIndex(21, average=None, ignore_index=255, zero_division=float("nan"))
    was_training = model.training
    model.eval()
    for images, masks, _ in datamodule.val_dataloader():
        metric.update(model(images).argmax(1), masks)
    model.train(was_training)
    return metric.compute()


def test_fit_logs_checkpoints_and_writes_a_record_that_the_table_reads(voc_root, tmp_path):
    cli = main(fit_args(voc_root, tmp_path))
    record_path = tmp_path / "runs" / "voc" / "resnet" / "ppool" / "0.json"
    record = json.loads(record_path.read_text())
    assert record["steps"] == 4 and len(record["per_class_iou"]) == 21 and 0 <= record["miou"] <= 1
    assert record["git_commit"] and record["config_hash"] != "none" and record["backbone"] == "resnet18"
    assert record["experiment"] == "resnet"  # the --config file's name
    assert 0 <= record["boundary_iou"]["mean"] <= 1 and len(record["boundary_iou"]["per_class"]) == 21
    assert list(record["trimap_miou"]) == ["1", "2", "4", "8", "16", "32"]
    assert record["config_files"] == ["configs/voc/resnet.yaml", "configs/trainer/quick.yaml"]
    first, last = record["alpha"]["first"], record["alpha"]["last"]
    assert (first["step"], last["step"]) == (0, 4) and set(last["layers"]) == {"features.maxpool"}
    start, end = first["layers"]["features.maxpool"], last["layers"]["features.maxpool"]
    assert start["mode"] == "dense" and 1.0 <= start["min"] <= start["mean"] <= start["max"] <= 50.0
    assert start["std"] > 0 and end["mean"] != start["mean"]  # a spread over the probe image, and it moved
    assert 0 < start["spatial_std"] <= start["std"]  # the spread from place to place, within the channels
    logs = tmp_path / "logs"
    assert (logs / "config.yaml").is_file() and (logs / "checkpoints" / "last.ckpt").is_file()
    header = (logs / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {
        "train/loss",
        "val/mIoU",
        "val/IoU/aeroplane",
        "final/mIoU",
        "final/boundary_mIoU",
        "final/trimap_mIoU/1px",
    } <= set(header)
    # LearningRateMonitor: every named parameter group's rate, the dense alpha branch's included
    assert {"lr-AdamW/backbone/weight", "lr-AdamW/head/weight", "lr-AdamW/alpha_bias/bias"} <= set(header)
    # the record is the final evaluation of the whole val set (4 images), not the last periodic validation (2 of
    # them, limit_val_batches), and the CSV log's final row says the same
    from polypool.loggers import read_metrics

    by_step = read_metrics(logs / "metrics.csv")
    assert [step for step, m in by_step.items() if "final/mIoU" in m] == [4]
    assert by_step[4]["final/mIoU"] == pytest.approx(record["miou"])
    iou = torchmetrics_iou_of(cli.model, cli.datamodule)
    assert record["miou"] == pytest.approx(float(torch.nanmean(iou)), abs=1e-6)
    last_periodic = [m["val/mIoU"] for m in by_step.values() if "val/mIoU" in m][-1]
    assert len(cli.datamodule.val_dataset) == 4 and last_periodic != pytest.approx(record["miou"])
    assert any(h.startswith("alpha/features.maxpool/") for h in header)
    from polypool.callbacks import load_alpha_history

    history = load_alpha_history(logs / "alpha_history.jsonl")  # quick.yaml: AlphaHistory every 4 steps
    assert [snapshot["step"] for snapshot in history] == [0, 4]
    pool = history[-1]["layers"]["features.maxpool"]  # dense alpha over the probe image: 64 channels x 12 x 12
    assert pool["mode"] == "dense" and sum(pool["hist"]["counts"]) == 64 * 12 * 12
    # the sampled values are written rounded to 6 decimals: one may round below the exact minimum
    assert pool["sampled"] and len(pool["values"]) == 1024 and pool["min"] <= min(pool["values"]) + 5e-7
    assert 1.0 <= pool["min"] <= pool["mean"] <= pool["max"] <= 50.0
    assert (
        type(cli.trainer.loggers[0]).__name__ == "ResumableCSVLogger"
    )  # first, so config.yaml goes to the run's folder
    assert type(cli.trainer.loggers[1]).__name__ == "PolypoolWandbLogger" and cli.trainer.loggers[1]._offline
    # what W&B received, read back from the offline run's own files: the panel and the dense alpha maps as images
    run_dir = next((logs / "wandb").glob("offline-run-*"))
    media = {p.parent.name for p in (run_dir / "files" / "media" / "images").rglob("*.png")}
    assert {"val", "alpha_map"} <= media, media  # val/panel_*.png, alpha_map/features.maxpool_*.png
    from polypool.repro.tables import main as tables

    text = tables(
        ["--runs", str(tmp_path / "runs"), "--dataset", "voc", "--backbone", "resnet", "--out", str(tmp_path / "table")]
    )
    assert "| P-pooling |" in text and "Missing runs (shown as -): Max, Average, Strided-C, Gated, DPP." in text


@pytest.mark.slow
@pytest.mark.parametrize("pooling", POOLING_NAMES)
@pytest.mark.parametrize(
    "backbone,config",
    [
        ("vgg16", "configs/voc/vgg.yaml"),
        ("resnet50", "configs/voc/resnet.yaml"),
        ("inception_v3", "configs/cityscapes/inception.yaml"),
    ],
)
def test_fit_every_backbone_and_pooling_through_the_cli(voc_root, tmp_path, backbone, config, pooling):
    args = fit_args(voc_root, tmp_path, backbone=backbone, pooling=pooling, steps=2)
    args[2] = config
    if backbone == "inception_v3":  # Cityscapes config, VOC fixture: the data class and a crop Inception accepts
        args += [
            "--data",
            "polypool.data.VOCSegmentationDataModule",
            "--data.init_args.root",
            str(voc_root),
            "--data.init_args.crop_size",
            "96",
            "--model.output_stride",
            "32",
            "--model.eval_mode",
            "whole",
        ]
    main(args)
    assert len(list((tmp_path / "runs" / "voc").rglob("0.json"))) == 1


def test_wandb_receives_the_alpha_histograms(voc_root, tmp_path):
    import wandb

    main(
        fit_args(
            voc_root,
            tmp_path,
            steps=2,
            extra=["--model.pooling_kwargs", "{alpha_mode: channel}", "--experiment", "resnet_variant"],
        )
    )
    wandb.finish()  # flushes the run's binary log
    # W&B's service process writes the file: on a busy machine it may still be writing when finish() returns (a
    # fresh-clone CI read only its 7-byte header), so read every run file of this test until the keys are there
    deadline, run_file = time.time() + 60, b""
    while time.time() < deadline and b"alpha/features.maxpool/mean" not in run_file:
        time.sleep(0.5 if run_file else 0)
        run_file = b"".join(f.read_bytes() for f in (tmp_path / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    # the run's binary log holds each history key as text; histograms of a constant alpha must not crash numpy
    assert b"alpha/features.maxpool/hist" in run_file and b"histogram" in run_file
    assert b"alpha/features.maxpool/mean" in run_file
    # The run's group (dataset/experiment: what `tables --wandb` queries) and tags, as W&B's run record encodes
    # them (protobuf: field 6 `run_group` then repeated field 10 `tags`, each a tag byte, a length and the text),
    # and the resolved config (JSON values)
    group = b"voc/resnet_variant"
    start = run_file.index(b"\x32" + bytes([len(group)]) + group) + 2 + len(group)
    tags = []
    while run_file[start] == 0x52:
        length = run_file[start + 1]
        tags.append(run_file[start + 2 : start + 2 + length].decode())
        start += 2 + length
    assert tags == ["ppool", "voc", "resnet", "resnet_variant"]
    assert b'"pooling":"ppool","pooling_kwargs":{"alpha_mode":"channel"}' in run_file
    assert b'experiment\x82\x01\x10"resnet_variant"' in run_file
    assert (tmp_path / "runs" / "voc" / "resnet_variant" / "ppool" / "0.json").is_file()


def final_weights(cli):
    return {k: v.clone() for k, v in cli.model.state_dict().items()}


class Interrupt(L.Callback):
    """Kills a run as step 4 starts, after the checkpoint of the validation at step 3 (mid-epoch)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 4:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_from_last_checkpoint_matches_an_uninterrupted_run(voc_root, tmp_path):
    # 8 images, batch 4: 2 steps an epoch; validation (and last.ckpt) every 3 steps, so mid-epoch
    schedule = ["--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", "3"]
    import wandb

    full = main(fit_args(voc_root, tmp_path / "full", steps=6, extra=schedule))
    wandb.finish()  # each attempt below is a process of its own on a real node
    with pytest.raises(SystemExit):  # Lightning shuts down gracefully on KeyboardInterrupt, then exits with 1
        main(
            fit_args(
                voc_root, tmp_path / "resumed", steps=6, extra=[*schedule, "--trainer.callbacks+=test_cli.Interrupt"]
            )
        )
    assert not (tmp_path / "resumed/runs").exists()  # an interrupted run writes no record
    assert torch.load(tmp_path / "resumed/logs/checkpoints/last.ckpt", weights_only=False)["global_step"] == 3
    wandb.finish()  # the interrupted process's W&B run; a resumed attempt is a new process
    resumed = main(fit_args(voc_root, tmp_path / "resumed", steps=6, extra=[*schedule, "--ckpt_path", "last"]))
    assert resumed.trainer.global_step == 6
    a, b = final_weights(full), final_weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert resumed.trainer.optimizers[0].param_groups[0]["lr"] == full.trainer.optimizers[0].param_groups[0]["lr"]
    ra = json.loads((tmp_path / "full" / "runs/voc/resnet/ppool/0.json").read_text())
    rb = json.loads((tmp_path / "resumed" / "runs/voc/resnet/ppool/0.json").read_text())
    assert ra["miou"] == pytest.approx(rb["miou"]) and rb["steps"] == 6
    # the record's alpha starts at the first attempt's step 0, on the same probe image
    assert rb["alpha"]["first"] == ra["alpha"]["first"] and rb["alpha"]["first"]["step"] == 0
    # metrics.csv keeps the first attempt's rows: merged, the history equals the uninterrupted run's
    from polypool.loggers import read_metrics

    history_full = read_metrics(tmp_path / "full/logs/metrics.csv")
    history_resumed = read_metrics(tmp_path / "resumed/logs/metrics.csv")
    assert list(history_resumed) == list(history_full) and 0 in history_resumed
    for step, values in history_full.items():
        assert set(values) == set(history_resumed[step]), step
        for key, value in values.items():
            if not key.startswith(("epoch",)):
                assert history_resumed[step][key] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), (step, key)
    # one W&B run across both attempts: the id kept in the run folder, the offline run files under that id
    run_id = (tmp_path / "resumed/logs/wandb_run_id").read_text().strip()
    assert resumed.trainer.loggers[1].experiment.id == run_id
    assert len(list((tmp_path / "resumed/logs/wandb").glob(f"offline-run-*-{run_id}"))) == 2


@pytest.mark.slow
def test_reproduce_quick_end_to_end(tmp_path):
    out = tmp_path / "quick"
    # the plumbing, end to end, at the smallest size (the overrides reach the shared pre-training too); that the
    # miniature learns is tests/test_quick.py's slow test
    tiny = ["--", "--trainer.max_steps", "3", "--data.init_args.crop_size", "32", "--data.init_args.batch_size", "2"]
    result = subprocess.run(
        ["bash", "reproduce.sh", "voc", "vgg", "--quick", "--workers", "2", "--out", str(out), *tiny],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "voc_vgg.md").read_text()
    assert "Miniature run" in table and "Missing runs" not in table
    for label in ("Max", "Average", "Strided-C", "Gated", "DPP", "P-pooling"):
        assert f"| {label} |" in table
    assert len(list((out / "runs" / "voc" / "vgg").glob("*/0.json"))) == 6
    assert (out / "data/voc/pretrained_max.ckpt").is_file()  # the network every pooling fine-tuned from
    again = subprocess.run(
        ["bash", "reproduce.sh", "voc", "vgg", "--quick", "--out", str(out), *tiny],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and again.stdout.count(": done (") == 6  # finished runs are not redone
