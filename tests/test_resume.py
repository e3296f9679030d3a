"""Preemption: a run stopped by SIGTERM, Ctrl-C or SIGKILL (after a timed checkpoint, or in the middle of a save)
resumes with `cutrec train --resume` and ends bit for bit like an uninterrupted run, on the CPU with a fixed seed.

Each interrupted run is a real `cutrec` process. A hook wraps the trainer's `TrainStep.run` so that the process signals
itself (or kills itself) at a chosen step, in the middle of an epoch; the signal then takes the trainer's real path.
"""

import csv
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cutrec.cli import main
from cutrec.train.checkpoint import load_checkpoint

RUNS = {
    # 3 epochs of 25 batches; the sampled loss draws seeded negatives, BERT4Rec draws masks from the batch generator
    "sasrec-CCE-": ["--loss=CCE-", "--negatives=16"],
    "bert4rec-CE": ["--model=bert4rec", "--loss=CE"],
    # the recipe's levers: an lr schedule from the step number, AdamW, SwiGLU, label smoothing and a temperature
    "sasrec-recipe": ["--loss=CE", "--train.warmup_epochs=1", "--train.lr_decay=cosine", "--train.optimizer=adamw",
                      "--train.weight_decay=0.01", "--model.ffn_activation=swiglu", "--model.ffn_mult=2",
                      "--loss.label_smoothing=0.1", "--loss.temperature=0.8"],
}
COMMON = [
    "--epochs=3", "--train.patience=3", "--batch-size=16", "--seed=5", "--data.synthetic.num_users=400",
    "--data.synthetic.num_items=60", "--model.dim=16", "--model.num_blocks=1", "--model.num_heads=2",
    "--train.progress=false",
]
STOP_STEP = 37  # epoch 2, batch 12 of 25

DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import cutrec.train.checkpoint as checkpoint
    import cutrec.train.loop as loop
    import cutrec.train.step as step
    from cutrec.cli import main

    action, at_step = sys.argv[1], int(sys.argv[2])
    original = step.TrainStep.run

    def run(self, *args, **kwargs):
        if self.state.step == at_step:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif action == "kill-during-save":
                def torn(file):
                    file.write(b"half a checkpoint")
                    file.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                loop.save_checkpoint = lambda path, state: checkpoint.atomic_write_bytes(path, torn)
            elif action == "raise":
                raise RuntimeError("a failure inside training")
            elif action == "twice":
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                os.kill(os.getpid(), getattr(signal, action))
        return original(self, *args, **kwargs)

    def training_data(config, sequences):
        os.kill(os.getpid(), signal.SIGTERM)  # the data is still loading
        return original_data(config, sequences)

    original_data = loop.training_data
    step.TrainStep.run = run
    if action == "term-while-loading":
        loop.training_data = training_data
    sys.exit(main(sys.argv[3:]))
    """
)


def _train_args(tmp_path, run, name, *extra):
    return ["train", f"--out={tmp_path}", f"--name={name}", f"--data.cache_dir={tmp_path / 'cache'}",
            *COMMON, *RUNS[run], *extra]


def _interrupted(tmp_path, run, name, action, *extra):
    return subprocess.run(
        [sys.executable, "-c", DRIVER, action, str(STOP_STEP), *_train_args(tmp_path, run, name, *extra)],
        capture_output=True, text=True, timeout=300,
    )


def _log_rows(folder):
    with (folder / "log.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    timing = ("epoch_seconds", "train_seconds", "setup_seconds", "peak_train_gpu_mb")
    return [{k: v for k, v in row.items() if k not in timing} for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run of each configuration: its metrics.json and log rows."""
    out = tmp_path_factory.mktemp("reference")
    references = {}
    for run in RUNS:
        assert main(_train_args(out, run, run)) == 0
        references[run] = (json.loads((out / run / "metrics.json").read_text()), _log_rows(out / run))
    return references


def _resume_matches(tmp_path, name, run, uninterrupted):
    assert main(["train", "--resume", str(tmp_path / name)]) == 0
    metrics, rows = uninterrupted[run]
    assert json.loads((tmp_path / name / "metrics.json").read_text()) == metrics  # bit for bit
    assert _log_rows(tmp_path / name) == rows  # every epoch once, with the same losses and metrics


@pytest.mark.parametrize(
    "run,action,code",
    [("sasrec-CCE-", "SIGTERM", 143), ("bert4rec-CE", "SIGTERM", 143), ("bert4rec-CE", "SIGINT", 130),
     ("sasrec-recipe", "SIGTERM", 143)],
)
def test_signal_saves_last_and_resume_is_exact(tmp_path, uninterrupted, capsys, run, action, code):
    result = _interrupted(tmp_path, run, "stopped", action)
    folder = tmp_path / "stopped"
    assert result.returncode == code, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == (
        f"cutrec: stopped by {action} at step {STOP_STEP + 1} (epoch 2, batch 13 of 25); last.pt saved in {folder}; "
        f"resume with: cutrec train --resume {folder}"
    )
    assert "Traceback" not in result.stderr
    saved = load_checkpoint(folder / "last.pt")
    assert (saved["step"], saved["epoch"], saved["batches_done"]) == (STOP_STEP + 1, 1, 13)  # mid-epoch
    _resume_matches(tmp_path, "stopped", run, uninterrupted)


def test_sigkill_after_a_timed_checkpoint_resumes_exactly(tmp_path, uninterrupted):
    # a timed checkpoint after every step (the interval is 60 microseconds), then SIGKILL: no handler runs
    result = _interrupted(tmp_path, "bert4rec-CE", "killed", "kill", "--train.checkpoint_every_minutes=0.000001")
    assert result.returncode == -signal.SIGKILL
    saved = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert (saved["step"], saved["batches_done"]) == (STOP_STEP, 12)
    assert len(_log_rows(tmp_path / "killed")) == 1
    _resume_matches(tmp_path, "killed", "bert4rec-CE", uninterrupted)


def test_checkpoints_every_second_epoch_resume_exactly_and_keep_the_log(tmp_path):
    """train.checkpoint_every_epochs=2: no last.pt at epoch 1, one at epochs 2 and 4 and at the run's end (epoch 5);
    a SIGKILL in epoch 4 leaves last.pt of epoch 2 behind log rows 1-3, and the resumed run trains epoch 3 again,
    keeps its first row and ends bit for bit like an uninterrupted run."""
    every = ["--train.checkpoint_every_epochs=2", "--epochs=5", "--train.patience=5"]
    assert main(_train_args(tmp_path, "sasrec-CCE-", "whole", *every)) == 0
    assert load_checkpoint(tmp_path / "whole" / "last.pt")["epoch"] == 5  # the run's end, though 5 is odd
    kill_step = 3 * 25 + 6  # epoch 4, batch 7
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, "kill", str(kill_step), *_train_args(tmp_path, "sasrec-CCE-", "killed", *every)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL
    folder = tmp_path / "killed"
    assert load_checkpoint(folder / "last.pt")["epoch"] == 2
    first_rows = _log_rows(folder)
    assert [row["epoch"] for row in first_rows] == ["1", "2", "3"]
    assert main(["train", "--resume", str(folder)]) == 0
    assert _log_rows(folder) == _log_rows(tmp_path / "whole")  # every epoch once; epoch 3's row the first one
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(
        (tmp_path / "whole" / "metrics.json").read_text())


def test_a_failure_before_any_checkpoint_keeps_the_finished_epochs(tmp_path):
    """With last.pt only every 3rd epoch, an error in epoch 2 must not remove the folder (as it does for a run that
    fails before it has anything): epoch 1's row and best.pt are the user's."""
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, "raise", "30",
         *_train_args(tmp_path, "sasrec-CCE-", "early", "--train.checkpoint_every_epochs=3")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "a failure inside training" in result.stderr
    assert not (tmp_path / "early" / "last.pt").exists()
    assert (tmp_path / "early" / "best.pt").exists() and len(_log_rows(tmp_path / "early")) == 1


def test_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path, uninterrupted, capsys):
    result = _interrupted(tmp_path, "sasrec-CCE-", "torn", "kill-during-save",
                          "--train.checkpoint_every_minutes=0.000001")
    folder = tmp_path / "torn"
    assert result.returncode == -signal.SIGKILL
    leftovers = list(folder.glob(".last.pt.*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].read_bytes() == b"half a checkpoint"
    assert load_checkpoint(folder / "last.pt")["step"] == STOP_STEP  # the one before the torn save
    _resume_matches(tmp_path, "torn", "sasrec-CCE-", uninterrupted)
    assert not list(folder.glob(".*.tmp"))
    assert "removed 1 temporary file(s)" in capsys.readouterr().err


def test_a_signal_while_the_data_loads_leaves_no_folder(tmp_path):
    result = _interrupted(tmp_path, "sasrec-CCE-", "early", "term-while-loading")
    assert result.returncode == 143
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == "cutrec: stopped by SIGTERM before training started; nothing to resume"
    assert not (tmp_path / "early").exists()


def test_a_second_signal_exits_at_once(tmp_path):
    result = _interrupted(tmp_path, "sasrec-CCE-", "twice", "twice")
    assert result.returncode == 143
    assert "second SIGTERM: exiting now without saving" in result.stderr
    assert load_checkpoint(tmp_path / "twice" / "last.pt")["step"] == 25  # the end of epoch 1, nothing newer


def test_external_sigterm_to_the_command(tmp_path):
    """A SIGTERM from outside (as a scheduler sends it) while the command trains."""
    args = _train_args(tmp_path, "sasrec-CCE-", "external", "--epochs=200", "--train.patience=200")
    process = subprocess.Popen([sys.executable, "-m", "cutrec.cli", *args], stderr=subprocess.PIPE, text=True)
    log = tmp_path / "external" / "log.csv"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):  # wait for the first finished epoch
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1].endswith(f"resume with: cutrec train --resume {tmp_path / 'external'}")
    assert load_checkpoint(tmp_path / "external" / "last.pt")["step"] >= 25


def test_resume_refuses_other_settings(tmp_path, uninterrupted, capsys):
    assert main(_train_args(tmp_path, "sasrec-CCE-", "done")) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "done"), "--lr=0.1", "--model.dim=8"]) == 2
    error = capsys.readouterr().err.strip()
    assert "model.dim, train.lr differ from it" in error and "\n" not in error
    # a finished run resumed with more epochs trains on, appending to its log
    assert main(["train", "--resume", str(tmp_path / "done"), "--epochs=4", "--train.patience=9"]) == 2
    assert "train.patience differ" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "done"), "--loss=auto", "--batch-size=auto"]) == 0  # as given
    assert main(["train", "--resume", str(tmp_path / "done"), "--epochs=4"]) == 0
    assert [row["epoch"] for row in _log_rows(tmp_path / "done")] == ["1", "2", "3", "4"]
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "has no last.pt (it stopped before its first checkpoint)" in capsys.readouterr().err
