"""The full-scale recipe: the global batch under DDP, evaluation that counts each image once, the authors' and
DeepLab's configs, normalisation from the backbone, and the run record's alpha."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from helpers import REPO, in_repo  # noqa: F401 - in_repo: an autouse fixture

from polypool.cli import main
from polypool.data import VOCSegmentationDataModule
from polypool.data.dataset import EpochSampler, ShardSampler
from polypool.data.fixtures import make_voc


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), n_train=8, n_val=7, seed=0)


class FakeTrainer:
    def __init__(self, world_size=1, global_rank=0, lightning_module=None):
        self.world_size, self.global_rank, self.lightning_module = world_size, global_rank, lightning_module


# -- the global batch -----------------------------------------------------------------------------------------------
def test_epoch_sampler_gives_each_rank_a_disjoint_share_of_the_same_epoch_order():
    dataset = list(range(11))
    single = list(EpochSampler(dataset, seed=5))
    shares = [list(EpochSampler(dataset, seed=5, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]  # 11 cut to 9: every rank has as many batches
    merged = [shares[r][i] for i in range(3) for r in range(3)]
    assert merged == single[:9]  # the single-process order, dealt out to the ranks
    with pytest.raises(ValueError, match="rank must be in"):
        EpochSampler(dataset, num_replicas=2, rank=2)


def test_the_batch_is_global_and_must_split_over_the_processes(voc_root):
    dm = VOCSegmentationDataModule(voc_root, batch_size=20, num_workers=0)
    dm.trainer = FakeTrainer(world_size=4)
    assert dm.per_rank_batch_size() == 5
    dm.trainer = FakeTrainer(world_size=3)
    with pytest.raises(ValueError, match=r"batch_size=20 is the global batch.*3 processes.*\[1, 2, 4, 5, 10, 20\]"):
        dm.setup("fit")  # before any training
    with pytest.raises(ValueError, match="crop_size must be a positive size"):
        VOCSegmentationDataModule(voc_root, crop_size=-5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        VOCSegmentationDataModule(voc_root, batch_size=0)


class BatchLog(L.Callback):
    """Writes, per rank, the batch size and a hash of every image of each training step."""

    def __init__(self, out: str):
        self.out = out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        hashes = [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in batch[0]]
        with open(Path(self.out) / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(
                json.dumps(
                    {
                        "step": trainer.global_step,
                        "hashes": hashes,
                        "loader_batch_size": trainer.train_dataloader.batch_size,
                    }
                )
                + "\n"
            )


def torchrun(args, tmp_path):
    """``python -m polypool ARGS`` in 2 processes under torchrun (gloo on the CPU), as a node would launch it.
    (ddp_spawn on the CPU shares the model's tensors between the processes, metric states included, so it
    cannot test what each rank counts.)"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(29500 + os.getpid() % 1000),
            "-m",
            "polypool",
            *args,
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def ddp_args(voc_root, tmp_path, subcommand="fit"):
    return [
        subcommand,
        "--config",
        "configs/voc/resnet.yaml",
        "--config",
        "configs/trainer/cpu.yaml",
        "--data.init_args.root",
        str(voc_root),
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.train_split",
        "train",
        "--data.init_args.crop_size",
        "48",
        "--model.backbone",
        "resnet18",
        "--model.pooling",
        "ppool",
        "--model.pretrained",
        "false",
        "--model.output_stride",
        "32",
        "--wandb_project",
        "null",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--records_root",
        str(tmp_path / "runs"),
    ]


@pytest.mark.slow
def test_ddp_two_processes_split_the_global_batch(voc_root, tmp_path):
    torchrun(
        [
            *ddp_args(voc_root, tmp_path),
            "--data.init_args.batch_size",
            "4",
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.callbacks+="
            + json.dumps({"class_path": "test_recipe.BatchLog", "init_args": {"out": str(tmp_path)}}),
        ],
        tmp_path,
    )
    logs = [[json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [len(log) for log in logs] == [2, 2]
    for step in range(2):
        a, b = logs[0][step], logs[1][step]
        assert a["loader_batch_size"] == b["loader_batch_size"] == 2 and len(a["hashes"]) == len(b["hashes"]) == 2
        assert len(set(a["hashes"]) | set(b["hashes"])) == 4  # one step consumed 4 distinct samples


# -- evaluation counts each image once ----------------------------------------------------------------------------
def test_shard_sampler_neither_pads_nor_drops():
    shares = [list(ShardSampler(list(range(7)), 3, r)) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]] and sorted(sum(shares, [])) == list(range(7))
    assert [len(ShardSampler(list(range(7)), 3, r)) for r in range(3)] == [3, 2, 2]


class ConfusionLog(L.Callback):
    """Writes the confusion matrix summed over the ranks at the end of each validation (rank 0)."""

    def __init__(self, out: str):
        self.out = out

    def on_validation_epoch_end(self, trainer, pl_module):
        metric = pl_module.val_iou
        with metric.sync_context():
            confmat = metric.confmat.clone()
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps(confmat.tolist()))


@pytest.mark.slow
def test_ddp_validation_on_seven_images_equals_one_process_exactly(voc_root, tmp_path):
    def run(folder, launch):
        out = tmp_path / folder / "confmat.json"
        out.parent.mkdir()
        launch(
            [
                *ddp_args(voc_root, tmp_path / folder, "validate"),
                "--seed_everything",
                "3",
                "--trainer.callbacks+="
                + json.dumps({"class_path": "test_recipe.ConfusionLog", "init_args": {"out": str(out)}}),
            ]
        )
        return torch.tensor(json.loads(out.read_text()))

    one = run("one", main)
    two = run("two", lambda args: torchrun(args, tmp_path))
    assert one.sum() > 0 and torch.equal(one, two)  # Lightning's padding sampler would count one image twice
    voc = VOCSegmentationDataModule(voc_root, num_workers=0)
    voc.setup("validate")
    pixels = sum(int((mask != 255).sum()) for _, mask in (voc.val_dataset.load(i) for i in range(7)))
    assert int(one.sum()) == pixels  # every labelled pixel of the 7 images, once


# -- configs ----------------------------------------------------------------------------------------------------------
def load(name):
    return yaml.safe_load((REPO / "configs" / "voc" / f"{name}.yaml").read_text())


# The authors' VGG solver and training script, as read (kfxw/mydev-pytorch-semantic-segmentation, test_solver_cfg.py
# and train.py @ 17a7b9815d4e1a3fb504bc5b9bd58183989739bc, the solver's last commit; group_weight unchanged at HEAD
# aa307c116150ce8a0de522ae7859fed383763e75).
AUTHORS_VGG_SOLVER = {
    "train_cropSize": 321,
    "batch_size_per_gpu": 20,
    "gpu_id": [0],
    "lr_encoder": 2e-8,
    "lr_decoder": 2e-7,
    "weight_decay": 5e-4,
    "lr_pow": 1,
    "num_epoch": 20,
    "epoch_iters": 602,
    "random_flip": True,  # False ("False#True") at 0ea004a and e1fbbc4, True from 17a7b98 on
    "random_scale": False,
    # train.py's group_weight: conv weights in a group with lr = base x 2 and weight_decay 0; biases weight_decay 0 at
    # the base lr; the group that would decay is empty
    "weight_lr_mult": 2.0,
    "bias_lr_mult": 1.0,
    "decay": 0.0,
    "loss": "CrossEntropyLoss(ignore_index=255, reduction='sum') / batch_size_per_gpu",
}


def test_the_authors_configs_follow_their_code():
    vgg, resnet = load("vgg"), load("resnet")
    solver, model, data = AUTHORS_VGG_SOLVER, vgg["model"], vgg["data"]["init_args"]
    assert model["head"] == "vgg16_20m" and data["crop_size"] == solver["train_cropSize"]
    assert data["batch_size"] == solver["batch_size_per_gpu"] * len(solver["gpu_id"])
    assert data["scale_range"] == [1.0, 1.0] and not solver["random_scale"]
    assert data["hflip"] is solver["random_flip"]
    # the summed loss's lr as a mean loss (x crop area), and the weights' x2 of group_weight
    pixels = solver["train_cropSize"] ** 2
    assert model["lr"] == pytest.approx(solver["lr_encoder"] * pixels * solver["weight_lr_mult"], rel=1e-3)
    assert model["lr"] * model["bias_lr_mult"] == pytest.approx(
        solver["lr_encoder"] * pixels * solver["bias_lr_mult"], rel=1e-3
    )
    assert model["weight_decay"] == solver["decay"]
    assert model["head_lr_mult"] == solver["lr_decoder"] / solver["lr_encoder"]
    assert model["poly_power"] == solver["lr_pow"]
    assert vgg["trainer"]["max_steps"] == solver["num_epoch"] * solver["epoch_iters"]
    # the P-pooling branch's multipliers are of the base lr (x1, x100, x180): here of lr / weight_lr_mult
    base = model["lr"] / solver["weight_lr_mult"]
    assert [
        model[k] * model["lr"] / base for k in ("alpha_conv_lr_mult", "alpha_prelu_lr_mult", "alpha_bias_lr_mult")
    ] == pytest.approx([1.0, 100.0, 180.0])
    # the authors' own ResNet-50 and DeepLabv3 decoder (tests/test_fidelity_resnet.py checks them layer by layer)
    assert resnet["model"]["backbone"] == "resnet50_authors" and resnet["model"]["head"] == "deeplabv3_authors"
    assert resnet["data"]["init_args"]["scale_range"] == [0.5, 2.0] and resnet["data"]["init_args"]["hflip"] is True
    assert resnet["model"]["output_stride"] == 16 and resnet["data"]["init_args"]["crop_size"] == 504
    assert resnet["data"]["init_args"]["batch_size"] == 24
    assert resnet["model"]["lr"] == pytest.approx(1e-7 * 504**2, rel=1e-3)
    assert (
        resnet["model"]["alpha_conv_lr_mult"],
        resnet["model"]["alpha_prelu_lr_mult"],
        resnet["model"]["alpha_bias_lr_mult"],
    ) == (1.0, 100.0, 180.0)
    for config in (vgg, resnet):
        assert config["model"]["alpha_grad_scale"] == 3.0
        assert config["model"]["tta_flip"] is False  # one scale, no flip


def test_deeplab_configs_keep_deeplab():
    largefov, v2 = load("vgg_largefov"), load("resnet101_deeplabv2")
    assert largefov["model"]["head"] == "largefov" and largefov["model"]["lr"] == 0.001
    assert v2["model"]["backbone"] == "resnet101.tv_in1k" and v2["model"]["batchnorm"] == "frozen"
    assert v2["model"]["head"] == "aspp" and v2["model"]["output_stride"] == 8


@pytest.mark.parametrize("name", ["vgg", "vgg_largefov", "resnet", "resnet101_deeplabv2"])
def test_every_value_of_the_voc_configs_cites_a_source(name):
    lines = (REPO / "configs" / "voc" / f"{name}.yaml").read_text().splitlines()
    values = [
        line
        for line in lines
        if ":" in line
        and not line.strip().startswith("#")
        and not line.rstrip().endswith(":")
        and "class_path" not in line
        and "seed_everything" not in line
    ]
    uncited = [
        line
        for line in values
        if "#" not in line
        and not line.strip().startswith(
            ("num_workers", "root", "val_split", "default_root_dir", "val_check_interval", "check_val_every_n_epoch")
        )
    ]
    assert uncited == []


def test_every_cited_source_is_in_the_repository():
    """Configs, code, notebooks and docs cite the project's own notes (docs/*.md), never a file outside the
    repository: the shared facts file the notes were written from is not in a clone."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    texts = {
        path: (REPO / path).read_text()
        for path in tracked
        if path.endswith((".py", ".yaml", ".md", ".ipynb", ".sh", ".cfg", ".toml")) and (REPO / path).is_file()
    }
    outside = "facts" + ".md"  # spelled apart so this file does not cite it
    assert sorted(path for path, text in texts.items() if outside in text) == []
    cited = {m for text in texts.values() for m in re.findall(r"docs/[\w./-]+?\.md", text)}
    assert "docs/paper_notes.md" in cited and sorted(c for c in cited if not (REPO / c).is_file()) == []
    for path in (p for p in texts if p.startswith("configs/") and p.endswith(".yaml")):
        if re.search(r"# AC\b", texts[path]):  # "AC" is defined in the file's header, with the notes it stands for
            assert "docs/paper_notes.md" in texts[path].split("seed_everything")[0], path


# -- normalisation from the weights ---------------------------------------------------------------------------------
def test_the_datamodule_takes_mean_and_std_from_the_models_backbone(voc_root):
    from polypool.models import SegmentationModel

    model = SegmentationModel(backbone="inception_v3", output_stride=32)
    dm = VOCSegmentationDataModule(voc_root, num_workers=0)
    dm.trainer = FakeTrainer(lightning_module=model)
    dm.setup("validate")
    assert dm.mean == dm.std == (0.5, 0.5, 0.5)
    image, _ = dm.val_dataset[0]
    raw, _ = dm.val_dataset.load(0)
    torch.testing.assert_close(image, (raw.float() / 255 - 0.5) / 0.5)
    explicit = VOCSegmentationDataModule(voc_root, num_workers=0, mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    explicit.trainer = FakeTrainer(lightning_module=model)
    explicit.setup("validate")
    assert explicit.mean == (0.1, 0.2, 0.3)  # an explicit value wins
    alone = VOCSegmentationDataModule(voc_root, num_workers=0)
    alone.setup("validate")
    assert alone.mean == (0.485, 0.456, 0.406)  # no model: ImageNet's
    with pytest.raises(ValueError, match="pass both mean and std"):
        VOCSegmentationDataModule(voc_root, mean=(0.5, 0.5, 0.5))


# -- tables say which config their rows came from, and whether alpha moved -------------------------------------------
def write_record(root, experiment, pooling, miou, alpha=None):
    path = root / "voc" / experiment / pooling / "0.json"
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "per_class_iou": [miou] * 21,
                "miou": miou,
                "seed": 0,
                "alpha": alpha or {},
                "config_files": [f"configs/voc/{experiment}.yaml"],
            }
        )
    )


def test_each_config_gets_its_own_table_against_the_same_paper_table(tmp_path):
    from polypool.repro.tables import main as tables
    from polypool.repro.tables import paper_table_key

    assert paper_table_key("voc", "vgg_largefov") == paper_table_key("voc", "vgg") == ("voc", "vgg")
    assert paper_table_key("voc", "resnet101_deeplabv2") == ("voc", "resnet")
    moved = {
        "first": {"step": 0, "layers": {"features.4": {"mean": 30.0, "std": 0.01}}},
        "last": {"step": 12040, "layers": {"features.4": {"mean": 29.5, "std": 0.2}}},
    }
    write_record(tmp_path, "vgg_largefov", "ppool", 0.6, moved)
    write_record(tmp_path, "vgg", "max", 0.5)
    text = tables(
        [
            "--runs",
            str(tmp_path),
            "--dataset",
            "voc",
            "--backbone",
            "vgg_largefov",
            "--out",
            str(tmp_path / "voc_vgg_largefov"),
        ]
    )
    assert "Our rows: runs of `configs/voc/vgg_largefov.yaml`." in text
    assert (
        "P-pooling seed 0: alpha mean from step 0 to step 12040: features.4 30 (spread 0.01) -> 29.5 "
        "(spread 0.2)." in text
    )
    assert (
        "| P-pooling | **60.0** |" in text and "Missing runs (shown as -): Max," in text
    )  # the vgg run is not mixed in
    assert "**paper (supplement)**" in text  # Table 1 beside it


@pytest.mark.slow
def test_reproduce_takes_the_config_name_and_keeps_its_runs_apart(tmp_path):
    out = tmp_path / "quick"
    result = subprocess.run(
        [
            "bash",
            "reproduce.sh",
            "voc",
            "vgg_largefov",
            "--quick",
            "--poolings",
            "max",
            "--out",
            str(out),
            "--",
            "--trainer.max_steps",
            "8",
            "--data.init_args.crop_size",
            "32",
            "--wandb_project",
            "null",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "runs/voc/vgg_largefov/max/0.json").read_text())
    assert record["experiment"] == "vgg_largefov" and record["steps"] == 8
    assert record["config_files"][0] == "configs/voc/vgg_largefov.yaml"
    assert (out / "logs/voc/vgg_largefov/max/0/metrics.csv").is_file() and not (out / "runs/voc/vgg").exists()
    assert "configs/voc/vgg_largefov.yaml" in (out / "voc_vgg_largefov.md").read_text()
    bad = subprocess.run(
        ["bash", "reproduce.sh", "voc", "vgg", "--quick", "--poolings", "maxx"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown row 'maxx'" in bad.stderr


@pytest.mark.slow
def test_alpha_branch_multipliers_move_alpha_in_training(tmp_path, capsys):
    """A few hundred CPU steps of a one-pool network with dense P-pooling: the authors' multipliers (offset lr x180,
    gradient x3) move alpha's offset about 540 times further than x1 does. Prints how far alpha moved."""
    sys.path.insert(0, str(REPO / "scripts"))
    from alpha_moves import AUTHORS, PLAIN, alpha_movement

    root = make_voc(tmp_path / "voc", n_train=16, n_val=2, seed=1)
    authors = alpha_movement(root, AUTHORS, steps=200, crop=32, backbone="resnet18")["features.maxpool"]
    plain = alpha_movement(root, PLAIN, steps=200, crop=32, backbone="resnet18")["features.maxpool"]
    with capsys.disabled():
        for label, (mean0, mean1, std0, std1, offset) in (("authors'", authors), ("all x1", plain)):
            print(
                f"\n{label}: alpha mean {mean0:.5f} -> {mean1:.5f}, spread {std0:.2e} -> {std1:.2e}, "
                f"offset moved {offset:.2e}"
            )
    assert authors[4] > 100 * plain[4] > 0  # the multipliers reach the training, not just the optimiser


def test_the_cityscapes_and_ade20k_configs_name_their_benchmarks_evaluation():
    cityscapes = yaml.safe_load((REPO / "configs/cityscapes/inception.yaml").read_text())["model"]
    ade20k = yaml.safe_load((REPO / "configs/ade20k/inception.yaml").read_text())["model"]
    assert (cityscapes["eval_mode"], cityscapes["eval_crop"], ade20k["eval_mode"]) == ("sliding", [769, 769], "whole")


# -- reproduce.sh on a real node ------------------------------------------------------------------------------------
def test_shell_scripts_pass_shellcheck():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), "reproduce.sh", ".ci/run"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def run_reproduce(*args):
    # a proxy that refuses: "no network" on any machine, so a test never starts a 2 GB download
    env = {
        **os.environ,
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    return subprocess.run(
        ["bash", "reproduce.sh", *args], cwd=REPO, capture_output=True, text=True, timeout=600, env=env
    )


def test_reproduce_honours_the_data_root_and_download_overrides(tmp_path):
    missing = run_reproduce("voc", "vgg", "--", "--data.init_args.root", str(tmp_path / "elsewhere"))
    assert missing.returncode == 1 and f"no data at {tmp_path / 'elsewhere'}" in missing.stderr
    # download true: fetched once, here, before training; without network it names the URL and the folder
    offline = run_reproduce(
        "voc", "vgg", "--", f"--data.init_args.root={tmp_path / 'voc'}", "--data.init_args.download", "true"
    )
    assert offline.returncode == 1
    assert "host.robots.ox.ac.uk" in offline.stderr and f"{tmp_path / 'voc'}/VOCdevkit/VOC2012" in offline.stderr
    unknown = run_reproduce("voc", "nope")
    assert unknown.returncode == 2 and "voc/vgg_largefov.yaml" in unknown.stderr


def test_gpu_presets_take_speed_over_determinism():
    for preset in ("gpu", "ddp"):
        trainer = yaml.safe_load((REPO / "configs" / "trainer" / f"{preset}.yaml").read_text())["trainer"]
        assert trainer["benchmark"] is True and trainer["deterministic"] is False, preset


# -- bad values fail where they enter, by name ----------------------------------------------------------------------
def test_bad_values_fail_before_training_with_their_name(voc_root, capsys):
    base = [
        "fit",
        "--config",
        "configs/voc/vgg.yaml",
        "--config",
        "configs/trainer/quick.yaml",
        "--data.init_args.root",
        str(voc_root),
        "--wandb_project",
        "null",
        "--trainer.max_steps",
        "1",
    ]
    with pytest.raises(SystemExit):  # a Literal: rejected by the parser, which lists the choices
        main([*base, "--model.pooling", "nope"])
    error = capsys.readouterr().err
    assert "pooling" in error and "nope" in error and "ppool" in error and "max_all" in error
    with pytest.raises(ValueError, match=r"crop_size must be a positive size.*-5"):
        main([*base, "--data.init_args.crop_size", "-5"])
    with pytest.raises(ValueError, match=r"scale_range must be \(min, max\)"):
        main([*base, "--data.init_args.scale_range", "[2.0, 0.5]"])
    from polypool.models import SegmentationModel

    with pytest.raises(ValueError, match=r"unknown backbone 'vgg99'.*close names: \[.*'vgg19'"):
        SegmentationModel(backbone="vgg99")


def test_the_record_keeps_the_wall_time_of_earlier_attempts():
    from polypool.callbacks import RunRecord

    first = RunRecord()
    first._elapsed_before = 120.0
    state = first.state_dict()
    resumed = RunRecord()
    resumed.load_state_dict(state)
    resumed.on_fit_start(None, None)
    assert 120.0 <= resumed.elapsed() < 130.0 and resumed.state_dict()["elapsed_s"] >= 120.0


@pytest.mark.slow
def test_a_ddp_run_resumed_at_max_steps_evaluates_on_every_rank_and_writes_its_record(voc_root, tmp_path):
    args = [
        *ddp_args(voc_root, tmp_path),
        "--data.init_args.batch_size",
        "4",
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "0",
    ]
    torchrun(args, tmp_path)
    record = tmp_path / "runs/voc/resnet/ppool/0.json"
    first = json.loads(record.read_text())
    record.unlink()
    torchrun([*args, "--ckpt_path", "last"], tmp_path)  # nothing left to train: only the final evaluation
    again = json.loads(record.read_text())
    assert again["steps"] == first["steps"] == 2 and again["miou"] == pytest.approx(first["miou"])
    # The resumed record counts the earlier attempt's time as checkpointed (the first record also counted its own
    # final evaluation, which came after the checkpoint, so the two records need not be ordered).
    [checkpoint] = tmp_path.rglob("last.ckpt")
    states = torch.load(checkpoint, map_location="cpu", weights_only=False)["callbacks"]
    [checkpointed] = [state["elapsed_s"] for key, state in states.items() if key.startswith("RunRecord")]
    assert checkpointed > 0 and again["wall_time_s"] >= round(checkpointed, 1)


# -- the evaluation that feeds the record ---------------------------------------------------------------------------
def miou_by_hand(model, datamodule, flip: bool) -> float:
    """mIoU over the whole val set from a confusion matrix built here: softmax of the plain forward, plus that of
    the flipped image flipped back when ``flip``."""
    confusion = torch.zeros(21, 21, dtype=torch.long)
    with torch.no_grad():
        for images, masks, _ in datamodule.val_dataloader():
            probs = model(images).softmax(1)
            if flip:
                probs = probs + model(images.flip(-1)).flip(-1).softmax(1)
            valid = masks != 255
            confusion += torch.bincount(masks[valid] * 21 + probs.argmax(1)[valid], minlength=21 * 21).view(21, 21)
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    iou = confusion.diag().double() / union.double()
    return float(iou[union > 0].mean())


def test_validation_and_the_final_evaluation_follow_the_test_time_protocol(voc_root):
    from polypool.callbacks import final_evaluation
    from polypool.models import SegmentationModel

    L.seed_everything(0)
    model = SegmentationModel(backbone="resnet18", output_stride=32, tta_flip=True).eval()
    datamodule = VOCSegmentationDataModule(voc_root, batch_size=2, num_workers=0, crop_size=48)
    datamodule.setup("validate")
    with_flip, without = miou_by_hand(model, datamodule, flip=True), miou_by_hand(model, datamodule, flip=False)
    assert with_flip != pytest.approx(without)  # the protocol changes the score here, so the checks below see it
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    validated = trainer.validate(model, datamodule, verbose=False)[0]["val/mIoU"]
    assert validated == pytest.approx(with_flip, abs=1e-6)
    final = final_evaluation(trainer, model)
    assert float(torch.nanmean(final["iou"])) == pytest.approx(with_flip, abs=1e-6)


def test_the_final_evaluation_runs_on_the_strategys_device_and_leaves_the_module_where_it_was(voc_root, monkeypatch):
    # Lightning calls on_fit_end after its teardown has moved the module to the CPU; on a GPU node the record's
    # evaluation must move it back to the run's device. Here both are the CPU, so the test watches the moves.
    from polypool.callbacks import final_evaluation
    from polypool.models import SegmentationModel

    model = SegmentationModel(backbone="resnet18", output_stride=32)
    datamodule = VOCSegmentationDataModule(voc_root, batch_size=2, num_workers=0, crop_size=48)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(model, datamodule, verbose=False)  # attaches the datamodule, as fit does
    run_device = torch.device("cpu", 0)  # stands for cuda:0: equal to no device the module is on
    monkeypatch.setattr(type(trainer.strategy), "root_device", property(lambda self: run_device))
    events, real_to, real_predict = [], model.to, model.evaluation_prediction
    monkeypatch.setattr(model, "to", lambda device: (events.append(("to", device)), real_to(device))[1])
    monkeypatch.setattr(
        model,
        "evaluation_prediction",
        lambda images: (events.append(("predict", images.device)), real_predict(images))[1],
    )
    result = final_evaluation(trainer, model)
    assert result["device"] == run_device
    assert events[0] == ("to", run_device) and events[-1] == ("to", torch.device("cpu"))
    predictions = [event for event in events if event[0] == "predict"]
    assert len(predictions) == len(datamodule.val_dataset) == 7
    assert all(event == ("predict", torch.device("cpu")) for event in predictions)
    assert events.index(predictions[0]) > 0 and events.index(predictions[-1]) < len(events) - 1
