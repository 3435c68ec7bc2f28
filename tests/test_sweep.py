"""reproduce.sh's sweep (polypool.sweep): runs side by side, resume after a kill, submitit jobs, --status, the GPU
check and --prefetch. The tests that train are slow and as small as a run gets: 32 px crops, batch 2, 4 steps."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from polypool.data.fixtures import make_voc
from polypool.repro import sweep as sw

REPO = Path(__file__).parents[1]
BLOCKED = {
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
}
# the runs' overrides: 4 steps, a validation (and last.ckpt) every 2 steps on one val image, no W&B; whatever the
# quick preset's own schedule
TINY = [
    "--data.init_args.crop_size",
    "32",
    "--data.init_args.batch_size",
    "2",
    "--trainer.max_steps",
    "4",
    "--trainer.max_epochs",
    "-1",
    "--trainer.check_val_every_n_epoch",
    "null",
    "--trainer.val_check_interval",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--wandb_project",
    "null",
]


def reproduce(*args, env=None, timeout=900):
    return subprocess.run(
        ["bash", "reproduce.sh", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def cpu_env(tmp_path):
    """One thread per run, the helper callbacks importable, W&B quiet, and caches of this test's own."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    return {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": pythonpath,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
    }


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    # SBD too: configs/voc/vgg.yaml trains on trainaug
    root = make_voc(tmp_path_factory.mktemp("voc"), n_train=8, n_val=2, size=(32, 32), seed=0, n_sbd=1)
    yield root
    shutil.rmtree(root / "pretrain", ignore_errors=True)  # the quick pre-training's checkpoints (~1 GB)


def records(out, poolings):
    return {p: json.loads((out / f"runs/voc/vgg/{p}/0.json").read_text()) for p in poolings}


def same_result(a, b):
    """The deterministic fields of two records: steps, mIoU, per-class IoU and P-pooling's alpha at the end."""
    assert a["steps"] == b["steps"]
    assert a["miou"] == pytest.approx(b["miou"], abs=1e-6)
    assert a["per_class_iou"] == pytest.approx(b["per_class_iou"], abs=1e-6, nan_ok=True)
    if a["alpha"]:
        for name, stats in a["alpha"]["last"]["layers"].items():
            for key in ("mean", "std", "min", "max"):
                assert stats[key] == pytest.approx(b["alpha"]["last"]["layers"][name][key], rel=1e-5, abs=1e-7), (
                    name,
                    key,
                )


# -- the sweep, on the CPU ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(voc_root, tmp_path_factory):
    """An uninterrupted quick sweep of two runs, two workers side by side."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "out"
    args = [
        "voc",
        "vgg",
        "--quick",
        "--workers",
        "2",
        "--poolings",
        "max,ppool",
        "--out",
        str(out),
        "--poll-s",
        "3",
        "--",
        "--data.init_args.root",
        str(voc_root),
        *TINY,
    ]
    result = reproduce(*args, env=cpu_env(tmp))
    yield out, args, result, tmp
    shutil.rmtree(tmp, ignore_errors=True)  # its runs' checkpoints (~1 GB)


@pytest.mark.slow
def test_two_runs_side_by_side_write_records_and_the_table_and_a_second_call_does_nothing(reference):
    out, args, result, tmp = reference
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    # both started before either ended: side by side
    starts = [i for i, line in enumerate(lines) if line.startswith(("== max seed 0 (log", "== ppool seed 0 (log"))]
    ends = [i for i, line in enumerate(lines) if ": finished in" in line]
    assert len(starts) == 2 and len(ends) == 2 and max(starts) < min(ends), lines
    assert "== 2 run(s) to train, 2 at a time on the CPU" in lines
    got = records(out, ["max", "ppool"])
    assert got["max"]["steps"] == got["ppool"]["steps"] == 4 and got["ppool"]["alpha"]
    table = (out / "voc_vgg.md").read_text()
    assert "Miniature run" in table and "| Max |" in table and "| P-pooling |" in table
    assert "done in" in result.stdout and "GPU-hours" in result.stdout and str(out / "voc_vgg.md") in result.stdout
    # each run's output went to its own log, as periodic plain lines (not a terminal)
    log = (out / "logs/voc/vgg/ppool/0/train.log").read_text()
    assert re.search(
        r"\[progress\] validated: step 2/4 \(50%\) \| loss \d+\.\d{4} \| mIoU \d\.\d{4} \(step 2\) \| "
        r"elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d$",
        log,
        re.MULTILINE,
    ), log[-3000:]
    progress = json.loads((out / "logs/voc/vgg/ppool/0/progress.json").read_text())
    assert progress["step"] == 4 and progress["max_steps"] == 4 and progress["miou"] is not None
    # the user's rows are the runs trained now; the committed miniature is a section of its own (issue 31, section 0)
    assert "- Trained by this sweep: Max seed 0, P-pooling seed 0." in table
    assert "**committed reference (results/quick/reference/runs, 3 seed(s)" in table
    # again: nothing to train, records untouched, and nothing pre-trained for runs that will not happen
    stamps = {p: (out / f"runs/voc/vgg/{p}/0.json").stat().st_mtime_ns for p in ("max", "ppool")}
    data_root = Path(args[args.index("--data.init_args.root") + 1])
    (data_root / "pretrained_max.ckpt").rename(data_root / "pretrained_max.aside")
    try:
        again = reproduce(*args, env=cpu_env(tmp))
        assert not (data_root / "pretrained_max.ckpt").exists()
    finally:
        (data_root / "pretrained_max.aside").replace(data_root / "pretrained_max.ckpt")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count(": done (") == 2 and "run(s) to train" not in again.stdout
    assert "quick: training the shared" not in again.stdout and "nothing to train" in again.stdout
    assert "0 run(s) trained" in again.stdout
    assert "Trained by this sweep: none." in (out / "voc_vgg.md").read_text()
    assert stamps == {p: (out / f"runs/voc/vgg/{p}/0.json").stat().st_mtime_ns for p in ("max", "ppool")}


@pytest.mark.slow
def test_a_killed_sweep_resumes_its_runs_and_ends_as_an_uninterrupted_one(reference, voc_root, tmp_path):
    ref_out, _, ref_result, _ = reference
    assert ref_result.returncode == 0, ref_result.stderr[-3000:]
    out, marker = tmp_path / "out", tmp_path / "paused"
    base = [
        "voc",
        "vgg",
        "--quick",
        "--workers",
        "2",
        "--poolings",
        "max,ppool",
        "--out",
        str(out),
        "--poll-s",
        "3",
        "--",
        "--data.init_args.root",
        str(voc_root),
        *TINY,
    ]
    pause = json.dumps(
        {"class_path": "sweep_callbacks.PauseAt", "init_args": {"pooling": "ppool", "step": 3, "marker": str(marker)}}
    )
    env = {**os.environ, **cpu_env(tmp_path)}
    with open(tmp_path / "first.log", "w") as log:
        sweep = subprocess.Popen(
            ["bash", "reproduce.sh", *base, f"--trainer.callbacks+={pause}"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 600
        while not (marker.exists() and (out / "runs/voc/vgg/max/0.json").exists()):
            assert sweep.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        run_pid = json.loads((out / "logs/voc/vgg/ppool/0/sweep.json").read_text())["pid"]
        sweep.send_signal(signal.SIGTERM)  # reproduce.sh execs the sweep: this is its process
        assert sweep.wait(120) == 143
    first = (tmp_path / "first.log").read_text()
    assert "stopped (SIGTERM)" in first
    with pytest.raises(ProcessLookupError):  # the run the sweep was training is stopped with it
        os.kill(run_pid, 0)
    ppool = out / "logs/voc/vgg/ppool/0"
    assert not (out / "runs/voc/vgg/ppool/0.json").exists()
    assert torch.load(ppool / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 2
    status = reproduce(
        "voc",
        "vgg",
        "--quick",
        "--poolings",
        "max,ppool",
        "--out",
        str(out),
        "--status",
        env=cpu_env(tmp_path),
        timeout=300,
    )
    assert " partial " in status.stdout.splitlines()[3] and " done " in status.stdout.splitlines()[2]

    again = reproduce(*base, env=cpu_env(tmp_path))  # the same command, without the pause
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "== max seed 0: done (" in again.stdout
    assert f"== ppool seed 0: resuming from {ppool / 'checkpoints/last.ckpt'}" in again.stdout
    assert "--ckpt_path last" in (ppool / "train.log").read_text()
    got, want = records(out, ["max", "ppool"]), records(ref_out, ["max", "ppool"])
    for pooling in ("max", "ppool"):
        same_result(got[pooling], want[pooling])
    assert got["ppool"]["wall_time_s"] > 0


@pytest.mark.slow
def test_slurm_jobs_through_submitits_local_executor_and_a_failed_run(voc_root, tmp_path):
    """--slurm with submitit's local executor: one job per run; the avg run fails, the max run does not stop,
    the table marks the failure, and the exit status is 1 with the failed run and its log."""
    out = tmp_path / "out"
    fail = json.dumps({"class_path": "sweep_callbacks.FailFor", "init_args": {"pooling": "avg"}})
    result = reproduce(
        "voc",
        "vgg",
        "--quick",
        "--slurm",
        "--slurm-cluster",
        "local",
        "--time",
        "0:20:00",
        "--poolings",
        "max,avg",
        "--out",
        str(out),
        "--poll-s",
        "3",
        "--",
        "--data.init_args.root",
        str(voc_root),
        *TINY,
        f"--trainer.callbacks+={fail}",
        env=cpu_env(tmp_path),
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "runs/voc/vgg/max/0.json").is_file() and not (out / "runs/voc/vgg/avg/0.json").exists()
    assert result.stdout.count(": submitted job ") == 2
    avg_log = out / "logs/voc/vgg/avg/0/train.log"
    assert "simulated failure of the avg run" in avg_log.read_text()
    assert f"avg seed 0: exit 1; log: {avg_log}" in result.stderr
    assert list((out / "slurm/voc/vgg").glob("*/*_submitted.pkl"))  # submitit's own files
    table = (out / "voc_vgg.md").read_text()
    assert f"Failed runs (shown as -): avg seed 0 (log: {avg_log})" in table and "| Max |" in table
    status = reproduce(
        "voc",
        "vgg",
        "--quick",
        "--poolings",
        "max,avg",
        "--out",
        str(out),
        "--status",
        env=cpu_env(tmp_path),
        timeout=300,
    )
    assert "1/2 runs done (0 running, 1 failed, 0 partial, 0 missing)" in status.stdout


# -- runs side by side on this node, the training replaced by a stand-in -----------------------------------------
# A stand-in for `python -m polypool fit`, given the real command's arguments: it notes its environment, then writes
# the run's record (or fails, or first waits for another run to start), in a fraction of a second. FAKE_FIT (JSON):
# "seen" the folder of its notes, "fail" the poolings that exit 1, "wait" {pooling: the pooling it waits for}.
FAKE_FIT = r"""
import json, os, sys, time
from pathlib import Path


def arg(name):
    return sys.argv[sys.argv.index(name) + 1]


plan = json.loads(os.environ["FAKE_FIT"])
pooling, seed = arg("--model.pooling"), int(arg("--seed_everything"))
note = Path(plan["seen"]) / pooling
seen = {key: os.environ.get(key) for key in ("CUDA_VISIBLE_DEVICES", "MASTER_PORT")}
(note.parent / (pooling + ".start")).write_text(json.dumps({"time": time.time(), "env": seen}))
other = plan.get("wait", {}).get(pooling)
if other:  # holds its slot until the other run has started: that one must get a slot freed by a third
    deadline = time.time() + 30
    while not (note.parent / (other + ".start")).exists():
        if time.time() > deadline:
            sys.exit(f"{other} did not start while {pooling} ran")
        time.sleep(0.05)
if pooling in plan.get("fail", []):
    print(f"simulated failure of the {pooling} run", flush=True)
    (note.parent / (pooling + ".end")).write_text(json.dumps({"time": time.time()}))
    sys.exit(1)
record = Path(arg("--records_root")) / "voc" / arg("--experiment") / pooling / f"{seed}.json"
record.parent.mkdir(parents=True, exist_ok=True)
record.write_text(json.dumps({"seed": seed, "steps": 4, "miou": 0.5, "per_class_iou": [0.5] * 21,
                              "wall_time_s": 1.0}))
(note.parent / (pooling + ".end")).write_text(json.dumps({"time": time.time()}))
"""


def sweep_with_fake_fit(monkeypatch, capsys, tmp_path, data_root, args, fail=(), wait=None):
    """``reproduce.sh voc vgg ARGS`` in this process with the stand-in above as each run's training; the runs' notes
    are in ``tmp_path/seen``. Returns the exit status, stdout, stderr and the notes."""
    script, seen = tmp_path / "fake_fit.py", tmp_path / "seen"
    script.write_text(FAKE_FIT)
    seen.mkdir()
    weights = tmp_path / "vgg16.pth"  # a local weights file: nothing to download
    weights.write_bytes(b"weights")
    real_fit_command = sw.Sweep.fit_command

    def fake_fit_command(self, run, resume):
        command = real_fit_command(self, run, resume)
        assert command[1:4] == ["-m", "polypool", "fit"], command
        return [command[0], str(script), *command[4:]]

    monkeypatch.setattr(sw.Sweep, "fit_command", fake_fit_command)
    monkeypatch.setenv("FAKE_FIT", json.dumps({"seen": str(seen), "fail": list(fail), "wait": wait or {}}))
    monkeypatch.chdir(REPO)
    capsys.readouterr()
    code = sw.main(
        [
            "voc",
            "vgg",
            *args,
            "--out",
            str(tmp_path / "out"),
            "--",
            "--data.init_args.root",
            str(data_root),
            "--model.weights",
            str(weights),
        ]
    )
    out, err = capsys.readouterr()
    notes = {path.name: json.loads(path.read_text()) for path in seen.iterdir()}
    return code, out, err, notes


def test_a_failed_run_side_by_side_does_not_stop_the_others_and_the_sweep_lists_it(
    voc_root, tmp_path, monkeypatch, capsys
):
    code, out, err, notes = sweep_with_fake_fit(
        monkeypatch,
        capsys,
        tmp_path,
        voc_root,
        ["--workers", "2", "--poolings", "max,avg,gated"],
        fail=["avg"],
        wait={"max": "gated"},
    )
    runs, logs = tmp_path / "out/runs/voc/vgg", tmp_path / "out/logs/voc/vgg"
    avg_log = logs / "avg/0/train.log"
    assert code == 1, out + err
    # the others finished and wrote their records, gated in the slot avg's failure freed (max held the other)
    assert (runs / "max/0.json").is_file() and (runs / "gated/0.json").is_file()
    assert not (runs / "avg/0.json").exists()
    assert "== max seed 0: finished in" in out and "== gated seed 0: finished in" in out
    assert f"== avg seed 0: FAILED (exit 1); log: {avg_log}" in out
    assert notes["gated.start"]["time"] >= notes["avg.end"]["time"]
    assert "simulated failure of the avg run" in avg_log.read_text()  # its output went to its own log
    assert json.loads((logs / "avg/0/sweep.json").read_text())["state"] == "failed"
    # the exit lists it with its log, and the table marks it
    assert f"1 run(s) failed:\n  avg seed 0: exit 1; log: {avg_log}\n" in err
    table = (tmp_path / "out/voc_vgg.md").read_text()
    assert f"Failed runs (shown as -): avg seed 0 (log: {avg_log})." in table
    ours = table.split("**paper")[0]
    assert "| Max | **50.0**" in ours and "| Gated | **50.0**" in ours and "| Average | - |" in ours
    assert "2/3 runs done (0 running, 1 failed, 0 partial, 0 missing)" in out


@pytest.mark.parametrize(
    "gpus, per_run, slots",
    [(2, 1, ["0", "1"]), (4, 2, ["0,1", "2,3"])],
    ids=["one GPU per run", "two GPUs per run (DDP)"],
)
def test_runs_side_by_side_are_pinned_to_their_gpus_and_a_new_one_starts_when_one_ends(
    gpus, per_run, slots, voc_root, tmp_path, monkeypatch, capsys
):
    """3 runs on 2 slots: max holds slot 0 until gated has started, so gated can only start in the slot that avg
    frees: the sweep starts a run whenever one ends, not when all have."""
    monkeypatch.setattr(sw, "gpu_problem", lambda wanted: None)  # this machine has no GPU; no run touches one
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    code, out, err, notes = sweep_with_fake_fit(
        monkeypatch,
        capsys,
        tmp_path,
        voc_root,
        ["--gpus", str(gpus), "--gpus-per-run", str(per_run), "--poolings", "max,avg,gated"],
        wait={"max": "gated"},
    )
    assert code == 0, out + err
    assert f"== 3 run(s) to train, 2 at a time, {per_run} GPU(s) each" in out
    for pooling in ("max", "avg", "gated"):
        assert (tmp_path / f"out/runs/voc/vgg/{pooling}/0.json").is_file(), pooling
    devices = {pooling: notes[f"{pooling}.start"]["env"]["CUDA_VISIBLE_DEVICES"] for pooling in ("max", "avg", "gated")}
    assert devices == {"max": slots[0], "avg": slots[1], "gated": slots[1]}
    assert notes["avg.end"]["time"] <= notes["gated.start"]["time"] <= notes["max.end"]["time"]
    assert f"== gated seed 0 on GPU {slots[1]}" in out
    ports = {pooling: notes[f"{pooling}.start"]["env"]["MASTER_PORT"] for pooling in ("max", "avg", "gated")}
    if per_run > 1:  # DDP runs side by side: one rendezvous port each
        assert all(ports.values()) and ports["max"] != ports["avg"] and ports["max"] != ports["gated"]
    else:
        assert ports == {"max": None, "avg": None, "gated": None}


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
@pytest.mark.parametrize(
    "piece", ["VOCdevkit/VOC2012/SegmentationClass", "benchmark_RELEASE/dataset"], ids=["VOC masks", "SBD (trainaug)"]
)
def test_an_incomplete_dataset_fails_at_start_naming_the_folder_the_missing_part_and_the_fix(
    piece, offline, tmp_path, monkeypatch, capsys
):
    root = make_voc(tmp_path / "voc", n_train=2, n_val=1, size=(16, 16), seed=0, n_sbd=1)
    shutil.rmtree(root / piece)
    code, out, err, notes = sweep_with_fake_fit(
        monkeypatch, capsys, tmp_path, root, ["--poolings", "max"] + (["--offline"] if offline else [])
    )
    assert code == 1, out + err
    assert f"the voc data in {root} is incomplete" in err and str(root / piece) in err
    fix = err.split("fix: ")[1]
    assert f"move {root} away and download the set: " in fix and "pass -- --data.init_args.root DIR" in fix
    if offline:
        assert "./reproduce.sh voc vgg --prefetch on a node with internet" in fix
    else:
        assert f".venv/bin/python -m polypool.data.download voc {root} --train-split trainaug" in fix
        assert "./reproduce.sh voc vgg --prefetch" in fix
    assert notes == {} and not (tmp_path / "out/logs").exists()  # before any run


# -- --status -----------------------------------------------------------------------------------------------------
def test_status_reports_each_run_without_starting_anything(tmp_path):
    out = tmp_path / "out"
    logs, runs = out / "logs/voc/vgg", out / "runs/voc/vgg"
    # done: a record
    (runs / "max").mkdir(parents=True)
    (runs / "max/0.json").write_text(json.dumps({"steps": 12040, "miou": 0.6125, "wall_time_s": 3723.0}))
    # partial: interrupted at step 4000 with a checkpoint; mIoU from metrics.csv, elapsed from progress.json
    (logs / "avg/0/checkpoints").mkdir(parents=True)
    (logs / "avg/0/checkpoints/last.ckpt").write_bytes(b"")
    (logs / "avg/0/metrics.csv").write_text("step,train/loss,val/mIoU\n1999,0.9,\n1999,,0.41\n3999,,0.47\n4000,0.5,\n")
    (logs / "avg/0/progress.json").write_text(json.dumps({"step": 3990, "max_steps": 12040, "elapsed_s": 1800}))
    # running: a live process of ours on this host
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "polypool-fit"])
    try:
        (logs / "gated/0").mkdir(parents=True)
        (logs / "gated/0/sweep.json").write_text(
            json.dumps({"state": "running", "pid": sleeper.pid, "host": sw.socket.gethostname(), "time": time.time()})
        )
        (logs / "gated/0/progress.json").write_text(
            json.dumps({"step": 600, "max_steps": 12040, "miou": 0.3, "elapsed_s": 65})
        )
        (logs / "gated/0/train.log").write_text("...")
        # failed: exit 1
        (logs / "dpp/0").mkdir(parents=True)
        (logs / "dpp/0/sweep.json").write_text(json.dumps({"state": "failed", "returncode": 1, "time": time.time()}))
        (logs / "dpp/0/train.log").write_text("Traceback ...")
        # "running" in a sweep that was killed: its process is gone, its checkpoint remains -> partial
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        (logs / "ppool/0/checkpoints").mkdir(parents=True)
        (logs / "ppool/0/checkpoints/last.ckpt").write_bytes(b"")
        (logs / "ppool/0/sweep.json").write_text(
            json.dumps({"state": "running", "pid": dead.pid, "host": sw.socket.gethostname(), "time": time.time()})
        )
        before = sorted(p for p in out.rglob("*"))
        result = reproduce("voc", "vgg", "--status", "--out", str(out), timeout=300)
    finally:
        sleeper.kill()
    assert result.returncode == 0, result.stderr
    assert sorted(p for p in out.rglob("*")) == before  # nothing started, nothing written
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:8]}
    assert rows["max"].split()[1:6] == ["0", "done", "12040/12040", "0.6125", "1:02:03"]
    assert rows["avg"].split()[1:6] == ["0", "partial", "4000/12040", "0.4700", "0:30:00"]
    assert rows["avg"].endswith(str(logs / "avg/0"))
    assert rows["strided_conv"].split()[1:6] == ["0", "missing", "-/12040", "-", "-"]
    assert rows["gated"].split()[1:6] == ["0", "running", "600/12040", "0.3000", "0:01:05"]
    assert rows["gated"].endswith(str(logs / "gated/0/train.log"))
    assert rows["dpp"].split()[1:4] == ["0", "failed", "(exit"] and rows["dpp"].endswith("dpp/0/train.log")
    assert rows["ppool"].split()[1:3] == ["0", "partial"]
    assert result.stdout.splitlines()[-1] == (
        f"table voc_vgg: 1/6 runs done (1 running, 1 failed, 2 partial, "
        f"1 missing); {out / 'voc_vgg.md'} (not built yet)"
    )


# -- the node: GPUs, prefetch, offline ----------------------------------------------------------------------------
def fake_nvidia_smi(folder: Path, driver="535.104.05", cuda="12.2", gpus=2) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    listing = "\\n".join(f"GPU {i}: NVIDIA A100-SXM4-40GB (UUID: GPU-{i})" for i in range(gpus))
    script = folder / "nvidia-smi"
    script.write_text(
        f"#!/bin/sh\nif [ \"$1\" = -L ]; then printf '{listing}\\n'; else echo "
        f"'| NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda}     |'; fi\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def test_gpu_check_names_torchs_cuda_the_drivers_and_the_fix_before_anything_starts(tmp_path):
    assert torch.cuda.device_count() == 0  # this machine: torch sees no GPU
    out = tmp_path / "out"
    none = reproduce(
        "voc",
        "vgg",
        "--gpus",
        "2",
        "--out",
        str(out),
        "--",
        "--data.init_args.root",
        str(tmp_path / "no-data"),
        env={"PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert none.returncode == 1
    assert "--gpus 2, but torch sees 0 GPU(s)" in none.stderr
    assert f"built for CUDA {torch.version.cuda} (torch.version.cuda)" in none.stderr
    assert "no nvidia-smi on PATH" in none.stderr and "fix: " in none.stderr
    assert "no data at" not in none.stderr and not out.exists()  # checked before the data and any run
    # an old driver: the fix is the torch build for its CUDA
    old = reproduce(
        "voc",
        "vgg",
        "--gpus",
        "2",
        "--gpus-per-run",
        "1",
        "--out",
        str(out),
        env=fake_nvidia_smi(tmp_path / "bin"),
        timeout=300,
    )
    assert old.returncode == 1 and not out.exists()
    assert "driver: 535.104.05, supports CUDA up to 12.2 (nvidia-smi); 2 GPU(s)" in old.stderr
    assert "fix: make setup TORCH_CUDA=cu121" in old.stderr
    assert sw.flavour_for("12.6") == "cu126" and sw.flavour_for("13.0") == "cu130" and sw.flavour_for("11.8") == "cu118"


def test_bad_sweep_options_fail_with_the_option_and_the_fix(monkeypatch):
    def error(*args):
        with pytest.raises(sw.SweepError) as info:
            sw.make_sweep(sw.build_parser().parse_args(list(args)), [])
        return info.value

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        assert "one of [1, 2, 4, 8]" in str(error("voc", "vgg", "--gpus", "8", "--gpus-per-run", "3"))
        assert "needs --gpus N" in str(error("voc", "vgg", "--gpus-per-run", "1"))
        assert "drop --gpus" in str(error("voc", "vgg", "--quick", "--gpus", "1"))
        assert "--workers 2 or fewer" in str(
            error("voc", "vgg", "--gpus", "4", "--gpus-per-run", "2", "--workers", "3")
        )
        ok = sw.make_sweep(sw.build_parser().parse_args(["voc", "vgg", "--gpus", "8", "--gpus-per-run", "2"]), [])
        assert (ok.workers, ok.gpus_per_run) == (4, 2) and "configs/trainer/ddp.yaml" in ok.base_args()
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        assert sw.gpu_slots(ok) == ["0,1", "2,3", "4,5", "6,7"]
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7,1,2,4,0,9")  # the sweep's share: the first --gpus of it
        assert sw.gpu_slots(ok) == ["3,5", "6,7", "1,2", "4,0"]
        today = sw.make_sweep(sw.build_parser().parse_args(["voc", "vgg", "--gpus", "4"]), [])
        assert (today.workers, today.gpus_per_run) == (1, 4)  # the default: one run on all GPUs
        assert today.base_args()[-2:] == ["--trainer.devices", "4"]
        quick = sw.make_sweep(sw.build_parser().parse_args(["voc", "vgg", "--quick"]), [])
        assert quick.workers == min(2, os.cpu_count())  # the README's plain --quick: two runs side by side
        one = sw.make_sweep(sw.build_parser().parse_args(["voc", "vgg", "--quick", "--workers", "1"]), [])
        assert one.workers == 1
    finally:
        os.chdir(cwd)
    assert sw.parse_time_minutes("12:00:00") == 720 and sw.parse_time_minutes("1-00:00:00") == 1440
    assert sw.parse_time_minutes("90") == 90
    values = sw.resolve_config(
        [REPO / "configs/voc/vgg.yaml"],
        ["--data.init_args.root=/x", "--trainer.max_steps", "7", "--model.weights", "w.pth"],
    )
    assert (sw.get(values, "data.init_args.root"), sw.get(values, "trainer.max_steps")) == ("/x", 7)
    assert sw.get(values, "data.init_args.train_split") == "trainaug"  # the rest of the config is kept


def test_slurm_options_reach_the_job_script(tmp_path, monkeypatch):
    """--slurm's options as submitit's SlurmExecutor holds them and writes them into the sbatch script; nothing is
    submitted. Without SLURM's commands the error says so."""
    monkeypatch.chdir(REPO)
    argv = [
        "voc",
        "vgg",
        "--slurm",
        "--gpus-per-run",
        "2",
        "--partition",
        "gpu",
        "--account",
        "lab",
        "--qos",
        "high",
        "--cpus-per-task",
        "6",
        "--mem-gb",
        "32",
        "--time",
        "12:00:00",
        "--out",
        str(tmp_path / "out"),
    ]
    args = sw.build_parser().parse_args(argv)
    sweep = sw.make_sweep(args, [])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no srun
    with pytest.raises(sw.SweepError, match=r"--slurm: no SLURM on this node .*srun.*--slurm-cluster local"):
        sw.make_executor(sweep, args)
    srun = tmp_path / "bin" / "srun"  # submitit only looks for srun on PATH
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}:/usr/bin:/bin")
    executor = sw.make_executor(sweep, args)
    assert executor.cluster == "slurm"
    parameters = executor._executor.parameters
    assert {
        key: parameters.get(key)
        for key in (
            "partition",
            "account",
            "qos",
            "cpus_per_task",
            "mem",
            "time",
            "nodes",
            "ntasks_per_node",
            "gpus_per_node",
            "job_name",
        )
    } == {
        "partition": "gpu",
        "account": "lab",
        "qos": "high",
        "cpus_per_task": 6,
        "mem": "32GB",
        "time": 720,
        "nodes": 1,
        "ntasks_per_node": 2,
        "gpus_per_node": 2,
        "job_name": "polypool-voc-vgg",
    }
    script = executor._executor._make_submission_file_text("python -m polypool fit", "0")
    for line in (
        "--partition=gpu",
        "--account=lab",
        "--qos=high",
        "--cpus-per-task=6",
        "--mem=32GB",
        "--time=720",
        "--gpus-per-node=2",
        "--ntasks-per-node=2",
        "--nodes=1",
    ):
        assert f"#SBATCH {line}\n" in script, line
    # GPUs per job without --gpus-per-run: --gpus; none: a CPU job of one task
    for gpus, tasks in (("4", 4), ("0", 1)):
        args = sw.build_parser().parse_args(["voc", "vgg", "--slurm", "--gpus", gpus, "--out", str(tmp_path / "out")])
        parameters = sw.make_executor(sw.make_sweep(args, []), args)._executor.parameters
        assert (parameters["gpus_per_node"], parameters["ntasks_per_node"]) == (int(gpus), tasks)
    assert not list((tmp_path / "out").rglob("*.pkl"))  # nothing submitted


def test_prefetch_without_network_names_the_url_and_the_folder(voc_root, tmp_path):
    result = reproduce(
        "voc",
        "vgg",
        "--prefetch",
        "--out",
        str(tmp_path / "out"),
        "--",
        "--data.init_args.root",
        str(voc_root),
        env={**cpu_env(tmp_path), **BLOCKED},
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"data: voc already in {voc_root}: nothing to fetch" in result.stdout
    assert "https://huggingface.co/timm/vgg16.tv_in1k/resolve/main/model.safetensors is unreachable" in result.stderr
    assert f"They go to {tmp_path / 'hf' / 'hub'}" in result.stderr


def test_prefetch_with_a_local_weights_file_has_nothing_to_fetch(voc_root, tmp_path):
    weights = tmp_path / "vgg16.pth"
    weights.write_bytes(b"weights")
    args = ["voc", "vgg", "--prefetch", "--out", str(tmp_path / "out"), "--", "--data.init_args.root", str(voc_root)]
    result = reproduce(*args, "--model.weights", str(weights), env={**cpu_env(tmp_path), **BLOCKED}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"weights: vgg16 from the local file {weights}: nothing to fetch" in result.stdout
    assert "prefetch done" in result.stdout and not (tmp_path / "hf").exists()
    missing = reproduce(*args, "--model.weights", str(tmp_path / "nope.pth"), env=cpu_env(tmp_path), timeout=300)
    assert missing.returncode == 1 and f"model.weights: no file {tmp_path / 'nope.pth'}" in missing.stderr


def test_offline_runs_fail_at_start_naming_where_they_looked_and_find_a_prefetched_cache(voc_root, tmp_path):
    out = tmp_path / "out"
    args = ["voc", "vgg", "--offline", "--out", str(out), "--", "--data.init_args.root", str(voc_root)]
    result = reproduce(*args, env={**cpu_env(tmp_path), **BLOCKED}, timeout=300)
    assert result.returncode == 1
    looked = tmp_path / "hf" / "hub" / "models--timm--vgg16.tv_in1k"
    assert f"pretrained weights of vgg16 are missing: looked in {looked}" in result.stderr
    assert "--prefetch" in result.stderr and not (out / "logs").exists()  # no run started
    # a prefetched cache (the hub's layout): found, nothing to fetch, and the runs get the offline variables
    snapshot = looked / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (looked / "refs").mkdir()
    (looked / "refs" / "main").write_text("0" * 40)
    prefetch = reproduce(
        "voc",
        "vgg",
        "--prefetch",
        "--out",
        str(out),
        "--",
        "--data.init_args.root",
        str(voc_root),
        env={**cpu_env(tmp_path), **BLOCKED},
        timeout=300,
    )
    assert prefetch.returncode == 0, prefetch.stderr
    assert f"weights: vgg16 already in {snapshot / 'model.safetensors'}: nothing to fetch" in prefetch.stdout
    env = sw.run_env(
        sw.Sweep("voc", "vgg", Path("configs/voc/vgg.yaml"), False, 0, 0, 1, 1, ("max",), out, offline=True)
    )
    assert env["HF_HUB_OFFLINE"] == "1" and env["WANDB_MODE"] == "offline"


def test_the_progress_view_is_a_bar_on_a_terminal_and_lines_in_a_log():
    from polypool.progress import PlainProgress, StepProgressBar, default_progress_bar, describe

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    assert isinstance(default_progress_bar(Stream(True)), StepProgressBar)
    assert isinstance(default_progress_bar(Stream(False)), PlainProgress)
    line = describe(
        {
            "step": 120,
            "max_steps": 12040,
            "loss": 0.83125,
            "miou": 0.412,
            "miou_step": 100,
            "elapsed_s": 312,
            "eta_s": 29520,
        }
    )
    assert line == "step 120/12040 (1%) | loss 0.8313 | mIoU 0.4120 (step 100) | elapsed 0:05:12 | ETA 8:12:00"
    import yaml

    for preset in (REPO / "configs/trainer").glob("*.yaml"):  # the bar in every preset
        assert yaml.safe_load(preset.read_text())["trainer"].get("enable_progress_bar", True) is True, preset


def test_the_bar_shows_the_runs_step_its_loss_the_last_miou_and_the_eta(tmp_path):
    """StepProgressBar in a tiny run of 1000 steps, stopped at step 3: one validation at step 2 (mIoU 0.2)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from polypool.progress import StepProgressBar

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.losses = []

        def training_step(self, batch, batch_idx):
            time.sleep(0.01)  # at least 10 ms a step: 997 steps to go make an ETA of several seconds
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train/loss", loss, prog_bar=True)
            self.losses.append(loss.item())
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val/mIoU", self.global_step / 10, prog_bar=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                seen["items"] = bar.get_metrics(trainer, pl_module)
                seen["postfix"] = bar.train_progress_bar.postfix
                trainer.should_stop = True

    seen, bar = {}, StepProgressBar()
    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)
    trainer = L.Trainer(
        max_steps=1000,
        max_epochs=-1,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[bar, StopAt()],
        logger=True,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
    )
    model = Tiny()
    trainer.fit(model, data, data)
    items = seen["items"]
    assert items["step"] == "3/1000" and items["mIoU"] == "0.2000"  # the validation at step 2
    assert isinstance(items["train/loss"], float) and items["train/loss"] == pytest.approx(model.losses[2])
    assert re.fullmatch(r"\d+:\d\d:\d\d", items["ETA"]) and items["ETA"] != "0:00:00"
    assert "v_num" not in items and "val/mIoU" not in items  # the logger's version dropped; the mIoU once, as "mIoU"
    assert "step=3/1000" in seen["postfix"] and "mIoU=0.2000" in seen["postfix"]  # what the bar draws


def test_make_setup_takes_torchs_cuda_build_from_a_variable():
    dry = subprocess.run(["make", "-n", "setup", "TORCH_CUDA=cu126"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    installed = REPO / ".venv/.torch-index"
    if not installed.is_file() or installed.read_text().strip() != "https://download.pytorch.org/whl/cu126":
        assert "pip uninstall --quiet --yes torch torchvision" in dry.stdout  # another build than the installed one
    assert "--index-url https://download.pytorch.org/whl/cu126 torch==2.14.1 torchvision==0.29.1" in dry.stdout
    assert "'https://download.pytorch.org/whl/cu126' > .venv/.torch-index" in dry.stdout  # remembered
    url = subprocess.run(
        ["make", "-n", "setup", "TORCH_INDEX_URL=https://example.org/whl"], cwd=REPO, capture_output=True, text=True
    )
    assert "--index-url https://example.org/whl torch==" in url.stdout
