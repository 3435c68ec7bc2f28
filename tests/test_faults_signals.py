"""Issue 32, sections 1 and 2: signals and orphans, two sweeps on one output folder.

A sweep stopped with SIGTERM while it generates the quick set or pre-trains the shared network stops that child
(which saves its ``last.ckpt``), says what it left and how to go on, and leaves no process behind; the next attempt
resumes the pre-training (one start per attempt in ``pretrain.log``). A fit stopped with SIGTERM or SIGUSR1 saves
``last.ckpt`` at the step it stopped at and exits 143 / 138 with a message; ``--ckpt_path last`` continues from
there as the uninterrupted run. A sweep holds a lock on its output folder (and each run on its own folder): a second
one refuses, naming the holder; a lock of a process that ended is taken over; a second sweep with another --out but
the same quick data folder waits for the first's pre-training instead of starting another.

The sweeps here run as ``python -m polypool.sweep`` (what reproduce.sh execs) in subprocesses, each bounded by a
timeout; the fits are as small as a fit gets (32 px crops, batch 2)."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import fit_args as shared_fit_args

from polypool.cli import main
from polypool.data.fixtures import make_voc
from polypool.repro import sweep as sw

REPO = Path(__file__).parents[1]
HOST = socket.gethostname()


def child_env(tmp_path) -> dict:
    """This checkout's package and the test helpers importable, one thread, W&B quiet, caches of the test's own."""
    path = os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
    }


def start(args, tmp_path, name):
    """``python -m polypool.sweep ARGS`` (or another module), output in ``tmp_path/<name>.log``."""
    log = open(tmp_path / f"{name}.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=child_env(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return process


def output(tmp_path, name) -> str:
    return (tmp_path / f"{name}.log").read_text()


def wait_for(condition, what, timeout=300, processes=(), tmp_path=None):
    deadline = time.time() + timeout
    while not condition():
        for name, process in processes:
            assert process.poll() is None, f"{name} ended (exit {process.returncode}) before {what}:\n" + (
                output(tmp_path, name)[-3000:] if tmp_path else ""
            )
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def alive(pid) -> bool:
    """A live process (not a zombie) of this pid."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_bytes()
    except (OSError, ValueError, TypeError):
        return False
    return stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def processes_mentioning(text: str) -> list[int]:
    """The pids of the live processes whose command line contains ``text`` (a test's own folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes() and alive(entry.name):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def end_leftovers(tmp_path, processes=()):
    """Whatever this test started and left (a failed test's sweeps and their children): killed by pid."""
    for _, process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    for pid in processes_mentioning(str(tmp_path)):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def tiny(root, steps):
    """Overrides after --: the runs and the quick pre-training as small as they get, no W&B."""
    return [
        "--data.init_args.root",
        str(root),
        "--data.init_args.crop_size",
        "32",
        "--data.init_args.batch_size",
        "2",
        "--trainer.max_steps",
        str(steps),
        "--wandb_project",
        "null",
    ]


# -- (a) SIGTERM during the quick set's generation and during the pre-training ----------------------------------


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the processes left")
def test_sigterm_while_the_quick_set_is_generated_leaves_no_process_and_no_partial_set(tmp_path):
    root = tmp_path / "voc"
    quick = start(["polypool.quick", str(root)], tmp_path, "quick")
    try:
        wait_for(
            lambda: (root / ".generating").is_dir() or (root / "VOCdevkit").is_dir(),
            "the generation to start",
            120,
            [("quick", quick)],
            tmp_path,
        )
        assert not (root / "VOCdevkit").is_dir()  # generated beside its place, moved there when complete
        generator = json.loads((root / "quick.lock").read_text())["child"]  # the lock file names its child
        assert alive(generator)
        quick.send_signal(signal.SIGTERM)
        assert quick.wait(60) == 143
        said = output(tmp_path, "quick")
        assert (
            f"polypool.quick: stopped (SIGTERM) while generating the quick set in {root}: nothing of it was "
            f"kept; run the same command again to generate it"
        ) in said, said
        assert not alive(generator) and not processes_mentioning(str(tmp_path))
        # nothing that would count as the set: the next attempt generates it whole
        assert not (root / "VOCdevkit").exists() and not (root / ".generating").exists()
        assert not (root / "quick.lock").exists()  # released
    finally:
        end_leftovers(tmp_path, [("quick", quick)])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the processes left")
def test_sigterm_during_the_pretraining_stops_it_says_what_is_kept_and_the_next_sweep_resumes_it(tmp_path):
    """Sweep A pre-trains; B (the same --out) refuses at once, naming A; C (another --out, the same data folder)
    waits for A's pre-training. SIGTERM to A: its pre-training saves last.ckpt and ends, A says so and exits 143,
    no process is left; C then resumes the pre-training from that checkpoint (never a second one from scratch)."""
    root = make_voc(tmp_path / "voc", n_train=8, n_val=2, size=(32, 32), seed=0)
    steps = 80  # ~0.35 s a step on one core: long enough to start B and C while A pre-trains
    out1, out2 = tmp_path / "out1", tmp_path / "out2"

    def sweep_args(out):
        return [
            "polypool.sweep",
            "voc",
            "vgg",
            "--quick",
            "--poolings",
            "max",
            "--out",
            str(out),
            "--poll-s",
            "3",
            "--",
            *tiny(root, steps),
        ]

    a = start(sweep_args(out1), tmp_path, "a")
    started = [("a", a)]
    try:
        wait_for((root / "pretrain/progress.json").is_file, "A's pre-training to start", 300, started, tmp_path)
        holder = json.loads((root / "quick.lock").read_text())
        assert holder["pid"] == a.pid and holder["host"] == HOST
        fit = holder["child"]  # A's pre-training, polypool fit
        assert alive(fit)

        b = start(sweep_args(out1), tmp_path, "b")
        started.append(("b", b))
        assert b.wait(120) == 1
        said_b = output(tmp_path, "b")
        assert f"reproduce.sh: another sweep of voc/vgg is using {out1}: pid {a.pid} on host {HOST}" in said_b, said_b
        assert f"(lock file {out1 / 'voc_vgg.lock'}). Wait for it to end, or stop it (kill {a.pid}" in said_b

        c = start(sweep_args(out2), tmp_path, "c")
        started.append(("c", c))
        wait_for(
            lambda: "quick: waiting for" in output(tmp_path, "c"),
            "C to wait for A",
            120,
            [*started[:1], ("c", c)],
            tmp_path,
        )
        assert f"quick: waiting for pid {a.pid} on host {HOST}" in output(tmp_path, "c")
        assert f"now running pid {fit} (the quick pre-training, polypool fit)" in output(tmp_path, "c")

        a.send_signal(signal.SIGTERM)
        assert a.wait(90) == 143
        said_a = output(tmp_path, "a")
        last = root / "pretrain/checkpoints/last.ckpt"
        step = torch.load(last, map_location="cpu", mmap=True, weights_only=False)["global_step"]
        assert 0 < step < steps
        assert (
            f"reproduce.sh: stopped (SIGTERM) during the quick pre-training: its last checkpoint {last} (step "
            f"{step} of {steps}) is kept; run the same command again to resume it (log: "
            f"{root / 'pretrain/pretrain.log'})"
        ) in said_a, said_a
        assert not alive(fit)  # the pre-training stopped with A: no orphan
        assert not list(processes_mentioning(str(out1)))
        log = (root / "pretrain/pretrain.log").read_text()
        assert f"polypool: stopped by SIGTERM at step {step}: saved {last}" in log

        # C takes the data folder over and resumes the pre-training: one start per attempt, the second resuming
        assert c.wait(400) == 0, output(tmp_path, "c")[-3000:]
        said_c = output(tmp_path, "c")
        assert f"steps; log {root / 'pretrain/pretrain.log'}), resuming from {last}" in said_c
        log = (root / "pretrain/pretrain.log").read_text()
        attempts = [line for line in log.splitlines() if line.startswith("== ")]
        assert len(attempts) == 2, attempts
        assert " starting: " in attempts[0] and "--ckpt_path" not in attempts[0]
        assert f" resuming from {last}: " in attempts[1] and "--ckpt_path last" in attempts[1]
        assert log.count("Restoring states from the checkpoint path") == 1
        assert (
            torch.load(root / "pretrained_max.ckpt", map_location="cpu", mmap=True, weights_only=False)["global_step"]
            == steps
        )
        assert (out2 / "runs/voc/vgg/max/0.json").is_file()
        assert not (root / "quick.lock").exists() and not (out2 / "voc_vgg.lock").exists()  # released
    finally:
        end_leftovers(tmp_path, started)


# -- (b) one sweep per output folder; a lock of a process that ended is taken over --------------------------------

FAKE_FIT = r"""
import json, sys
from pathlib import Path

def arg(name):
    return sys.argv[sys.argv.index(name) + 1]

pooling, seed = arg("--model.pooling"), int(arg("--seed_everything"))
record = Path(arg("--records_root")) / "voc" / arg("--experiment") / pooling / f"{seed}.json"
record.parent.mkdir(parents=True, exist_ok=True)
record.write_text(json.dumps({"seed": seed, "steps": 4, "miou": 0.5, "per_class_iou": [0.5] * 21,
                              "wall_time_s": 1.0}))
"""

HOLD = r"""
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-01-02 03:04:05",
                         "command": "reproduce.sh voc vgg"}).encode())
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), n_train=4, n_val=2, size=(32, 32), seed=0, n_sbd=1)


def sweep_in_process(monkeypatch, capsys, tmp_path, data_root, poolings="max,avg"):
    """``reproduce.sh voc vgg --poolings ... --out tmp_path/out`` in this process, each run a stand-in that writes
    its record at once. Returns the exit status, stdout and stderr."""
    script = tmp_path / "fake_fit.py"
    script.write_text(FAKE_FIT)
    weights = tmp_path / "vgg16.pth"  # a local weights file: nothing to download
    weights.write_bytes(b"weights")
    real_fit_command = sw.Sweep.fit_command

    def fake_fit_command(self, run, resume):
        command = real_fit_command(self, run, resume)
        return [command[0], str(script), *command[4:]]

    monkeypatch.setattr(sw.Sweep, "fit_command", fake_fit_command)
    monkeypatch.chdir(REPO)
    capsys.readouterr()
    code = sw.main(
        [
            "voc",
            "vgg",
            "--poolings",
            poolings,
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
    return code, out, err


def hold_lock(path: Path):
    """Another process holding the lock file ``path`` (flock), its note in the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@contextlib.contextmanager
def lock_held(path: Path):
    """:func:`hold_lock` for the block; the holder is killed after it."""
    holder = hold_lock(path)
    try:
        yield holder
    finally:
        holder.kill()
        holder.wait(30)


def test_a_second_sweep_on_the_same_output_folder_refuses_naming_the_first(voc_root, tmp_path, monkeypatch, capsys):
    lock = tmp_path / "out/voc_vgg.lock"
    with lock_held(lock) as holder:
        code, out, err = sweep_in_process(monkeypatch, capsys, tmp_path, voc_root)
    assert code == 1, out + err
    assert (
        f"reproduce.sh: another sweep of voc/vgg is using {tmp_path / 'out'}: pid {holder.pid} on host {HOST}, "
        f"started 2026-01-02 03:04:05 (reproduce.sh voc vgg) (lock file {lock}). Wait for it to end, or stop it "
        f"(kill {holder.pid}: its runs keep their last checkpoints) or give this one another --out DIR; "
        f"--status shows its runs"
    ) in err
    assert not (tmp_path / "out/runs").exists() and "run(s) to train" not in out  # nothing started


def test_a_lock_left_by_a_process_that_ended_is_taken_over(voc_root, tmp_path, monkeypatch, capsys):
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, timeout=60
    )
    dead = int(ended.stdout)
    assert not alive(dead)
    lock = tmp_path / "out/voc_vgg.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(
        json.dumps({"pid": dead, "host": HOST, "started": "2026-01-02 03:04:05", "command": "reproduce.sh voc vgg"})
    )  # a sweep killed with kill -9 left it
    code, out, err = sweep_in_process(monkeypatch, capsys, tmp_path, voc_root)
    assert code == 0, out + err
    assert (
        f"== taking over {lock} from pid {dead} on host {HOST}, started 2026-01-02 03:04:05 (reproduce.sh voc "
        f"vgg), which ended without releasing it"
    ) in out
    assert (tmp_path / "out/runs/voc/vgg/max/0.json").is_file() and (tmp_path / "out/runs/voc/vgg/avg/0.json").is_file()
    assert not lock.exists()  # released at the end


def test_a_run_whose_folder_another_process_holds_is_left_alone(voc_root, tmp_path, monkeypatch, capsys):
    """A run still training, started by a sweep that was killed with kill -9 (it holds its folder's lock): the next
    sweep trains the others and does not start it a second time."""
    lock = tmp_path / "out/logs/voc/vgg/avg/0/run.lock"
    with lock_held(lock) as holder:
        _code, out, err = sweep_in_process(monkeypatch, capsys, tmp_path, voc_root)
    assert (
        f"== avg seed 0: left alone, another process trains it: the folder of the run avg seed 0, "
        f"{tmp_path / 'out/logs/voc/vgg/avg/0'} is in use by pid {holder.pid} on host {HOST}"
    ) in out, out + err
    assert (tmp_path / "out/runs/voc/vgg/max/0.json").is_file()
    assert not (tmp_path / "out/runs/voc/vgg/avg/0.json").exists()
    assert not (tmp_path / "out/logs/voc/vgg/avg/0/train.log").exists()  # never started


# -- (c) a fit stopped with SIGTERM or SIGUSR1 saves last.ckpt where it stopped ---------------------------------


def fit_args(root, folder, steps, extra=()):
    """helpers.fit_args without the timed checkpoint: only the signal saves one."""
    return shared_fit_args(root, folder, steps, ["--checkpoint_every_minutes", "null", *extra])


class SignalAt(L.Callback):
    """Sends ``name`` to this process as step ``step`` starts (as a scheduler would, from outside)."""

    def __init__(self, step: int, name: str = "SIGTERM"):
        self.step, self.name = step, name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            sig = getattr(signal, self.name)
            if signal.getsignal(sig) in (signal.SIG_DFL, None):  # the default would end pytest itself
                raise RuntimeError(f"nothing handles {self.name} during the fit")
            os.kill(os.getpid(), sig)


class FirstStep(L.Callback):
    seen: list = []

    def on_train_start(self, trainer, pl_module):
        FirstStep.seen.append(trainer.global_step)


@pytest.fixture(autouse=True)
def quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGUSR1", 138)])
def test_a_fit_stopped_by_a_signal_saves_last_ckpt_at_that_step_and_resumes_from_it(
    name, code, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(REPO)
    root = make_voc(tmp_path / "voc", n_train=6, n_val=2, size=(32, 32), seed=0)  # 3 steps an epoch
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    signal_at = json.dumps({"class_path": "test_faults_signals.SignalAt", "init_args": {"step": 3, "name": name}})
    with pytest.raises(SystemExit) as stopped:
        main(fit_args(root, tmp_path / "stopped", 5, [f"--trainer.callbacks+={signal_at}"]))
    assert stopped.value.code == code
    last = tmp_path / "stopped/logs/checkpoints/last.ckpt"
    assert (
        f"polypool: stopped by {name} at step 4: saved {last}; the same command with --ckpt_path last resumes "
        f"it from there"
    ) in capsys.readouterr().err
    assert torch.load(last, weights_only=False)["global_step"] == 4  # the step it stopped at, mid-epoch
    assert not (tmp_path / "stopped/runs").exists()  # no record of a run that did not finish
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # this process's handlers are back

    FirstStep.seen = []
    resumed = main(
        fit_args(
            root, tmp_path / "stopped", 5, ["--ckpt_path", "last", "--trainer.callbacks+=test_faults_signals.FirstStep"]
        )
    )
    assert FirstStep.seen == [4] and resumed.trainer.global_step == 5
    if name == "SIGTERM":  # the resumed run ends as the uninterrupted one
        full = main(fit_args(root, tmp_path / "full", 5))
        a, b = full.model.state_dict(), resumed.model.state_dict()
        for key in a:
            torch.testing.assert_close(a[key], b[key], msg=key)
