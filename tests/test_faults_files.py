"""Issue 32, sections 3 and 4: files written in place lose nothing, and checkpoints come often enough to resume.

Records and checkpoints reach their name only when complete; a damaged record is not "done" (the sweep trains the
run again, the damaged file kept aside) and the table skips it saying so; a full disk stops a run with a message
naming the folder and the space needed, the previous checkpoint intact; ``--ckpt_path last`` on a damaged
``last.ckpt`` names it and resumes from the newest readable checkpoint, or says to delete it; ``last.ckpt`` is also
written on a time interval (``--checkpoint_every_minutes``). The fits are as small as test_cli's: 32 px crops,
batch 2, a few steps."""

import errno
import io
import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from helpers import REPO, fit_args, in_repo  # noqa: F401 - in_repo: an autouse fixture

from polypool import callbacks
from polypool.callbacks import files, run_record
from polypool.cli import main
from polypool.data.fixtures import make_voc
from polypool.repro import sweep as sw


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), n_train=4, n_val=2, size=(32, 32), seed=0)


VALIDATE_EVERY_STEP = ["--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1"]


def a_record(miou=0.5) -> dict:
    """A record as RunRecord writes one (the fields the table and the sweep read, and some others)."""
    return {
        "dataset": "voc",
        "experiment": "vgg",
        "backbone": "vgg16_bn",
        "pooling": "ppool",
        "seed": 0,
        "class_names": [f"class{i}" for i in range(21)],
        "per_class_iou": [miou] * 20 + [None],
        "miou": miou,
        "boundary_iou": {"per_class": [0.25] * 21, "mean": 0.25},
        "trimap_miou": {"1": 0.2},
        "alpha": {},
        "config_hash": "abc",
        "git_commit": "def",
        "steps": 4,
        "wall_time_s": 12.5,
    }


def write_truncated(path: Path, record: dict) -> str:
    """The first half of ``record``'s JSON at ``path`` (what a full disk or a kill mid-write leaves)."""
    text = json.dumps(record, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text[: len(text) // 2])
    return text[: len(text) // 2]


# -- (a) a damaged record: not done, trained again, kept aside; the table skips it with a warning ----------------


def test_a_truncated_record_is_not_done_the_sweep_trains_it_again_and_the_table_skips_it(tmp_path):
    out = tmp_path / "out"
    sweep = sw.make_sweep(sw.build_parser().parse_args(["voc", "vgg", "--quick", "--out", str(out)]), [])
    runs = {run.pooling: run for run in sweep.runs()}
    ppool, maxp = runs["ppool"], runs["max"]
    half = write_truncated(ppool.record, a_record(0.6))
    maxp.record.parent.mkdir(parents=True, exist_ok=True)
    maxp.record.write_text(json.dumps(a_record(0.5), indent=2) + "\n")

    status = sw.inspect_run(ppool, 4)
    assert status.state != "done" and status.state in sw.STATES
    assert status.state == "failed"
    assert status.detail.startswith(f"damaged record: {ppool.record} (truncated, not valid JSON")
    assert status.detail.endswith("it will be trained again") and str(ppool.record) in status.line()
    assert sw.inspect_run(maxp, 4).state == "done"
    assert "1/6 runs done" in sw.completeness(sw.plan(sweep))

    # the table: the damaged record skipped, named in a warning; P-pooling shows as missing
    from polypool.repro.tables import load_records
    from polypool.repro.tables import main as tables

    with pytest.warns(UserWarning, match=rf"skipping damaged run record {ppool.record} \(truncated"):
        table = load_records(out / "runs", "voc", "vgg")
    assert "ppool" not in table.runs and len(table.runs["max"]) == 1
    with pytest.warns(UserWarning, match=str(ppool.record)):
        text = tables(
            ["--runs", str(out / "runs"), "--dataset", "voc", "--backbone", "vgg", "--out", str(tmp_path / "table")]
        )
    assert "P-pooling" in text.split("Missing runs")[1].splitlines()[0]

    # the sweep's plan trains it, from scratch (no last.ckpt), the damaged record moved aside first
    said = []
    todo = sw.runs_to_train(sw.plan(sweep), say=said.append)
    assert (ppool, False) in todo and maxp not in [run for run, _ in todo]
    assert not ppool.record.exists()
    kept = ppool.record.with_name("0.json.damaged")
    assert kept.read_text() == half  # nothing lost
    assert any(
        line.startswith(f"== ppool seed 0: its record {ppool.record} is damaged") and str(kept) in line for line in said
    ), said
    assert sw.inspect_run(ppool, 4).state == "missing"


@pytest.mark.parametrize(
    "content,why",
    [
        ("", "empty file"),
        ("[1, 2]", "a JSON list, not an object"),
        ('{"per_class_iou": [0.5]}', "no 'miou'"),
        ('{"miou": 0.5}', "no 'per_class_iou'"),
        ('{"per_class_iou": "x", "miou": 0.5}', "'per_class_iou' is not a list"),
    ],
)
def test_read_record_names_the_file_what_is_wrong_and_the_fix(tmp_path, content, why):
    path = tmp_path / "0.json"
    path.write_text(content)
    with pytest.raises(callbacks.DamagedRecord) as error:
        callbacks.read_record(path)
    assert error.value.path == path and error.value.why.startswith(why)
    assert str(path) in str(error.value) and "train the run again" in str(error.value)


# -- (b) RunRecord writes atomically -------------------------------------------------------------------------------


def run_record_on_fit_end(tmp_path, monkeypatch, miou):
    """RunRecord.on_fit_end for a 21-class run whose final evaluation gives ``miou`` for every class."""
    record = callbacks.RunRecord(root=str(tmp_path / "runs"), experiment="vgg")
    evaluation = {
        "iou": torch.full((21,), miou),
        "boundary_iou": torch.full((21,), 0.25),
        "trimap": {1: torch.full((21,), 0.2)},
        "device": torch.device("cpu"),
    }
    monkeypatch.setattr(run_record, "final_evaluation", lambda trainer, pl_module: evaluation)
    trainer = SimpleNamespace(is_global_zero=True, datamodule=SimpleNamespace(dataset_name="voc"), global_step=4)
    module = SimpleNamespace(
        hparams=SimpleNamespace(backbone="vgg16_bn", pooling="ppool"), class_names=[f"class{i}" for i in range(21)]
    )
    record.on_fit_end(trainer, module)
    return tmp_path / "runs/voc/vgg/ppool/0.json"


def test_run_record_writes_atomically_a_full_disk_leaves_the_previous_record(tmp_path, monkeypatch):
    path = run_record_on_fit_end(tmp_path, monkeypatch, 0.5)
    good = path.read_text()
    assert json.loads(good)["miou"] == pytest.approx(0.5)

    def full_disk(text):
        raise OSError(errno.ENOSPC, "No space left on device")

    class HalfWritten(io.StringIO):  # a file that takes half of what is written, then the disk is full
        def __init__(self, name):
            super().__init__()
            self.name = name

        def write(self, text):
            Path(self.name).write_bytes(text[: len(text) // 2].encode())
            full_disk(text)

    with monkeypatch.context() as patch:
        # whichever way the record is written: in place (write_text) or through open()
        patch.setattr(Path, "write_text", lambda self, text, *a, **k: HalfWritten(str(self)).write(text))
        patch.setattr(files, "open", lambda name, mode="r", *a, **k: HalfWritten(str(name)), raising=False)
        with pytest.raises(Exception) as error:
            run_record_on_fit_end(tmp_path, monkeypatch, 0.75)
    assert path.read_text() == good  # the previous record, whole
    assert [p.name for p in path.parent.iterdir()] == ["0.json"]  # no temporary file left
    assert type(error.value).__name__ == "NoSpaceError"  # a message for the CLI to print, not a traceback
    assert str(path.parent) in str(error.value) and "nothing half-written" in str(error.value)
    # and without the fault, the new record replaces it
    run_record_on_fit_end(tmp_path, monkeypatch, 0.75)
    assert json.loads(path.read_text())["miou"] == pytest.approx(0.75)
    assert [p.name for p in path.parent.iterdir()] == ["0.json"]


# -- (c) checkpoints complete or nothing; a full disk stops the run with a message ---------------------------------


def half_then_full_disk(real_save, when=lambda checkpoint: True):
    """A ``torch.save`` that writes half of the checkpoint, then fails as a full disk does."""

    def save(obj, f, *args, **kwargs):
        if not when(obj):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        if isinstance(f, (str, Path)):
            Path(f).write_bytes(data[: len(data) // 2])
        else:
            f.write(data[: len(data) // 2])
            f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_the_checkpoint_io_writes_complete_or_nothing(tmp_path, monkeypatch):
    from polypool.cli import AtomicCheckpointIO

    io_ = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io_.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 1}, path)
    assert torch.load(path, weights_only=False)["global_step"] == 1
    monkeypatch.setattr(torch, "save", half_then_full_disk(torch.save))
    with pytest.raises(callbacks.NoSpaceError) as error:
        io_.save_checkpoint({"state_dict": {"w": torch.ones(250_000)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["global_step"] == 1  # the previous good one, whole
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # nothing half-written left
    message = str(error.value)
    assert f"in {path.parent}:" in message and "needs about 976.6 KB free there" in message  # 250,000 float32
    assert "the previous last.ckpt" in message and "--ckpt_path last" in message


def test_a_full_disk_stops_the_fit_with_a_message_and_keeps_the_last_good_checkpoint(
    voc_root, tmp_path, monkeypatch, capsys
):
    main(fit_args(voc_root, tmp_path, steps=1))  # last.ckpt at step 1
    folder = tmp_path / "logs" / "checkpoints"
    good = (folder / "last.ckpt").read_bytes()
    monkeypatch.setattr(
        torch,
        "save",
        half_then_full_disk(torch.save, when=lambda c: isinstance(c, dict) and c.get("global_step", 0) >= 2),
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # a message and status 1, not a traceback
        main(fit_args(voc_root, tmp_path, steps=2, extra=["--ckpt_path", "last"]))
    monkeypatch.undo()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "polypool: no space left on device to save the checkpoint last.ckpt" in err and f"in {folder}:" in err
    assert "free there" in err and "resume with --ckpt_path last" in err and "Traceback" not in err
    assert (folder / "last.ckpt").read_bytes() == good  # step 1's, whole
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 1
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]  # no temporary file left


# -- (d) a damaged last.ckpt at resume -----------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_from_a_damaged_last_checkpoint_falls_back_to_the_best_one(voc_root, tmp_path, capsys):
    main(fit_args(voc_root, tmp_path, steps=2, extra=VALIDATE_EVERY_STEP))
    folder = tmp_path / "logs" / "checkpoints"
    last_step = torch.load(folder / "last.ckpt", weights_only=False)["global_step"]
    best = folder / "best-step=2.ckpt"
    assert best.is_file() or (folder / "best-step=1.ckpt").is_file()
    best = best if best.is_file() else folder / "best-step=1.ckpt"
    step = torch.load(best, weights_only=False)["global_step"]
    truncate(folder / "last.ckpt")
    capsys.readouterr()
    cli = main(fit_args(voc_root, tmp_path, steps=3, extra=[*VALIDATE_EVERY_STEP, "--ckpt_path", "last"]))
    err = capsys.readouterr().err
    assert (
        f"polypool: the checkpoint {folder / 'last.ckpt'} is damaged (" in err
        and f"resuming from {best} (step {step})" in err
    ), err
    assert cli.trainer.global_step == 3
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 3  # replaced by a good one
    assert last_step == 2  # every validation left its last.ckpt, whether the best improved or not


def test_resume_from_a_damaged_last_checkpoint_without_another_says_to_delete_it(voc_root, tmp_path, capsys):
    main(fit_args(voc_root, tmp_path, steps=2))  # no validation: last.ckpt only
    last = tmp_path / "logs" / "checkpoints" / "last.ckpt"
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]
    truncate(last)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(voc_root, tmp_path, steps=3, extra=["--ckpt_path", "last"]))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"polypool: cannot resume: the checkpoint {last} is damaged (" in err, err
    assert f"Delete it (rm '{last}')" in err and "torch.load fails" in err
    assert last.is_file()  # left for the user to delete


# -- (e) last.ckpt on a time interval --------------------------------------------------------------------------------


class LastCheckpointSteps(L.Callback):
    """Notes, at the start of every training step, the step of the last.ckpt on disk (None: none yet)."""

    seen: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        step = torch.load(last, weights_only=False)["global_step"] if last.is_file() else None
        LastCheckpointSteps.seen.append((trainer.global_step, step))


def test_last_checkpoint_on_a_time_interval_without_validation(voc_root, tmp_path):
    LastCheckpointSteps.seen = []
    cli = main(
        fit_args(
            voc_root,
            tmp_path,
            steps=3,
            extra=["--checkpoint_every_minutes", "0", "--trainer.callbacks+=test_faults_files.LastCheckpointSteps"],
        )
    )
    assert cli.trainer.limit_val_batches == 0  # the quick preset: no periodic validation
    [timed] = [c for c in cli.trainer.callbacks if type(c).__name__ == "TimedLastCheckpoint"]
    assert timed.interval_s == 0
    # written after every step (interval 0), so each step starts with the previous one's last.ckpt
    assert LastCheckpointSteps.seen == [(0, None), (1, 1), (2, 2)]
    folder = tmp_path / "logs" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # one last.ckpt, no last-v1.ckpt
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 3


def test_the_time_interval_is_a_cli_argument_with_a_default_of_minutes(capsys):
    from polypool.cli import TimedLastCheckpoint

    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/voc/vgg.yaml", "--print_config"])
    assert "checkpoint_every_minutes: 10.0" in capsys.readouterr().out
    timed = TimedLastCheckpoint(dirpath="x", minutes=10.0)
    assert timed.interval_s == 600 and timed.path == Path("x") / "last.ckpt"


class StopAtStep4(L.Callback):
    """Kills a run as step 4 starts: mid-epoch (3 batches an epoch), no validation before."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 4:
            raise KeyboardInterrupt("simulated interruption")


def test_a_run_resumed_from_a_timed_checkpoint_matches_an_uninterrupted_one(tmp_path):
    root = make_voc(tmp_path / "voc", n_train=6, n_val=2, size=(32, 32), seed=0)  # 3 steps an epoch
    every_step = ["--checkpoint_every_minutes", "0"]
    full = main(fit_args(root, tmp_path / "full", steps=5, extra=every_step))
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown on KeyboardInterrupt, then exit 1
        main(
            fit_args(
                root,
                tmp_path / "resumed",
                steps=5,
                extra=[*every_step, "--trainer.callbacks+=test_faults_files.StopAtStep4"],
            )
        )
    last = tmp_path / "resumed/logs/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4  # the timed save of step 4, mid-epoch
    resumed = main(fit_args(root, tmp_path / "resumed", steps=5, extra=[*every_step, "--ckpt_path", "last"]))
    assert resumed.trainer.global_step == 5
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
