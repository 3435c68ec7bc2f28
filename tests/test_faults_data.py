"""Issue 32, sections 6 and 7: silent data problems fail (or warn) before training, and the messages say what is
wrong. Every test runs on a tiny generated VOC set in seconds."""

import shutil
from pathlib import Path

import pytest

from polypool.data import DatasetError, VOCSegmentationDataModule
from polypool.data.fixtures import make_voc

REPO = Path(__file__).parents[1]
SPLITS = "VOCdevkit/VOC2012/ImageSets/Segmentation"


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), n_train=12, n_val=2, size=(32, 32), seed=0, n_sbd=3)


@pytest.fixture
def root(voc_root, tmp_path):
    return Path(shutil.copytree(voc_root, tmp_path / "voc"))


def voc(root, **kwargs):
    return VOCSegmentationDataModule(root, batch_size=2, num_workers=0, crop_size=16, **kwargs)


def ids(root, split):
    return (root / SPLITS / f"{split}.txt").read_text().split()


# --- section 6: duplicates and overlap -----------------------------------------------------------------------------


def test_an_id_listed_twice_is_an_error_naming_it(root):
    val = ids(root, "val")
    (root / SPLITS / "val.txt").write_text("\n".join(val + val[:1]) + "\n")
    with pytest.raises(DatasetError, match=rf"val.txt lists 1 id \({val[0]}\) more than once.*Remove the repeated"):
        voc(root).prepare_data()
    train = ids(root, "train")  # 12 repeated ids: 10 named, and the count
    (root / SPLITS / "train.txt").write_text("\n".join(train + train) + "\n")
    with pytest.raises(DatasetError, match=rf"train.txt lists 12 ids \({', '.join(sorted(train)[:10])} and 2 more\)"):
        voc(root).setup("fit")


def test_an_id_in_both_train_and_val_is_an_error_unless_allowed(root):
    val = ids(root, "val")
    (root / SPLITS / "train.txt").write_text("\n".join(ids(root, "train") + val[:1]) + "\n")
    with pytest.raises(
        DatasetError,
        match=rf"1 id \({val[0]}\) in both the train split 'train' and the val split "
        rf"'val'.*allow_split_overlap=True",
    ):
        voc(root).setup("fit")
    dm = voc(root, allow_split_overlap=True)
    with pytest.warns(UserWarning, match=rf"1 id \({val[0]}\) in both .*allowed by allow_split_overlap=True"):
        dm.setup("fit")
    assert len(dm.train_dataset) == 13 and len(dm.val_dataset) == 2
    # trainaug removes VOC val by construction, though SBD's train list holds VOC val ids (as the real one does) and
    # VOC train ids again: no error, no warning
    (root / SPLITS / "train.txt").write_text("\n".join(ids(root, "train")[:-1]) + "\n")
    assert set(val) & set((root / "benchmark_RELEASE/dataset/train.txt").read_text().split())
    dm = voc(root, train_split="trainaug")
    dm.setup("fit")
    assert not {p[0].stem for p in dm.train_dataset.pairs} & set(val)


def test_allow_split_overlap_is_a_cli_argument(capsys, monkeypatch):
    from polypool.cli import main

    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                "configs/voc/vgg.yaml",
                "--data.init_args.allow_split_overlap",
                "true",
                "--print_config",
            ]
        )
    assert exit_info.value.code in (0, None)
    assert "allow_split_overlap: true" in capsys.readouterr().out


# --- section 6: byte-order mark ------------------------------------------------------------------------------------


def test_a_split_file_with_a_utf8_byte_order_mark(root):
    val = ids(root, "val")
    path = root / SPLITS / "val.txt"
    path.write_bytes("\ufeff".encode("utf-8") + path.read_bytes())  # as Windows' Notepad saves "UTF-8"
    dm = voc(root)
    dm.setup("validate")
    assert [p[0].stem for p in dm.val_dataset.pairs] == val


# --- section 6: the val set is read before training ----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated image", "garbage mask", "mask of another size"])
def test_a_bad_val_file_stops_setup_fit_before_training(root, damage):
    from PIL import Image

    val_id = ids(root, "val")[1]
    image = root / "VOCdevkit/VOC2012/JPEGImages" / f"{val_id}.jpg"
    mask = root / "VOCdevkit/VOC2012/SegmentationClass" / f"{val_id}.png"
    if damage == "truncated image":
        image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
        expected = rf"cannot read .*{val_id}.jpg .*truncated; re-extract it"
    elif damage == "garbage mask":
        mask.write_bytes(b"not a png")
        expected = rf"cannot read .*{val_id}.png .*re-extract it"
    else:
        Image.new("P", (8, 8)).save(mask)
        expected = rf"image .*{val_id}.jpg is 32x32 but its mask .*{val_id}.png is 8x8"
    dm = voc(root)
    with pytest.raises(
        DatasetError,
        match=r"the val \('val'\) set is read once before training, and 1 of its 2 "
        r"samples cannot be used: " + expected,
    ):
        dm.setup("fit")
    voc(root).setup("validate")  # evaluation alone does not read ahead: the error comes with the file's batch


def test_every_bad_val_file_is_counted(root):
    for val_id in ids(root, "val"):
        path = root / "VOCdevkit/VOC2012/JPEGImages" / f"{val_id}.jpg"
        path.write_bytes(b"garbage")
    first, second = ids(root, "val")
    with pytest.raises(
        DatasetError,
        match=rf"2 of its 2 samples cannot be used: cannot read .*{first}.jpg .*"
        rf"The others \(by image\): .*{second}.jpg",
    ):
        voc(root).setup("fit")


# --- section 7: an id with neither image nor mask ------------------------------------------------------------------


def test_an_id_with_neither_image_nor_mask_is_named_as_such(root):
    (root / SPLITS / "train.txt").write_text("\n".join([*ids(root, "train"), "2099_000123"]) + "\n")
    with pytest.raises(
        DatasetError,
        match=r"id 2099_000123 \(listed in split 'train'\) has neither image "
        r"\(.*JPEGImages/2099_000123.jpg\) nor mask "
        r"\(.*SegmentationClass/2099_000123.png\)",
    ):
        voc(root).setup("fit")


# --- section 6: --ckpt_path last with no checkpoint, --trainer.max_steps 0 ----------------------------------------


def fit_args(root, tmp_path, steps=2, extra=()):
    """tests/test_cli.py's fit_args, with no W&B."""
    return [
        "fit",
        "--config",
        "configs/voc/resnet.yaml",
        "--config",
        "configs/trainer/quick.yaml",
        "--data.init_args.root",
        str(root),
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.crop_size",
        "16",
        "--model.backbone",
        "resnet18",
        "--model.pooling",
        "max",
        "--model.output_stride",
        "8",
        "--trainer.max_epochs",
        "-1",
        "--trainer.max_steps",
        str(steps),
        "--trainer.limit_val_batches",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path / "logs"),
        "--records_root",
        str(tmp_path / "runs"),
        "--wandb_project",
        "null",
        *extra,
    ]


def test_ckpt_path_last_without_a_checkpoint_is_refused(root, tmp_path, monkeypatch):
    from polypool.cli import main

    monkeypatch.chdir(REPO)
    folder = tmp_path / "logs" / "checkpoints"
    with pytest.raises(
        ValueError,
        match=rf"--ckpt_path last: there is no last.ckpt in {folder} to resume from. "
        r"Drop --ckpt_path to start this run from scratch",
    ):
        main(fit_args(root, tmp_path, extra=["--ckpt_path", "last"]))
    assert not folder.exists() and not (tmp_path / "runs").exists()  # nothing trained, nothing recorded


def test_max_steps_0_is_refused(root, tmp_path, monkeypatch):
    from polypool.cli import main

    monkeypatch.chdir(REPO)
    with pytest.raises(
        ValueError,
        match=r"--trainer.max_steps 0: a fit of 0 steps trains nothing.*"
        r"python -m polypool validate",
    ):
        main(fit_args(root, tmp_path, steps=0))
    assert not (tmp_path / "runs").exists()  # no record


# --- section 7: the pre-training announces the steps it takes ------------------------------------------------------


def test_the_pretraining_announces_the_steps_the_overrides_set(tmp_path, monkeypatch):
    from polypool.repro import quick

    def fake_run_child(command, **kwargs):  # the pre-training's child, without training
        last = tmp_path / "pretrain/checkpoints/last.ckpt"
        last.parent.mkdir(parents=True, exist_ok=True)
        last.write_bytes(b"ckpt")
        return 0

    monkeypatch.setattr(quick, "run_child", fake_run_child)
    said = []
    quick.pretrain(tmp_path, ["--trainer.max_steps=9", "--trainer.max_steps", "5"], say=said.append)
    assert "(5 steps;" in said[0], said  # the last override wins, as on the command line
    assert quick.pretrain_steps([]) == str(quick.PRETRAIN_STEPS)
    assert quick.pretrain_steps(["--trainer.max_steps", "4", "--data.init_args.crop_size", "32"]) == "4"
    assert quick.pretrain_steps(["--trainer.max_steps", "4", "--trainer.max_steps=7"]) == "7"
