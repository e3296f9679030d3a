"""Checkpoints round-trip, a failed write leaves the previous file intact, and a checkpoint that would run code is
refused without running it (directly, and through `cutrec evaluate` and `cutrec train --resume`)."""

import numpy as np
import pytest
import torch

from cutrec.cli import main
from cutrec.errors import CutrecError
from cutrec.models import BERT4Rec, SASRec
from cutrec.train.checkpoint import load_checkpoint, save_checkpoint


@pytest.mark.parametrize("kind", [SASRec, BERT4Rec])
def test_round_trip_restores_outputs(tmp_path, kind):
    torch.manual_seed(0)
    model = kind(30, max_len=8, dim=16).eval()
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": model.state_dict(), "step": 17})
    restored = kind(30, max_len=8, dim=16).eval()
    state = load_checkpoint(path)
    restored.load_state_dict(state["model"])
    inputs = torch.randint(0, 30, (4, 8))
    assert state["step"] == 17
    assert torch.equal(model(inputs), restored(inputs))


def test_interrupted_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(CutrecError, match="cannot write .*killed mid-write.*the previous file is intact"):
        save_checkpoint(path, {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_unreadable_checkpoint_is_named(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CutrecError, match="cannot be read"):
        load_checkpoint(path)
    with pytest.raises(CutrecError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


class _CreatesFile:
    """Unpickling this would call open(path, "w"): a checkpoint that creates a file when loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_holding_code_is_refused_unexecuted(tmp_path):
    path, marker = tmp_path / "last.pt", tmp_path / "created-by-the-checkpoint"
    torch.save({"model": {"w": torch.ones(2)}, "payload": _CreatesFile(marker)}, path)
    with pytest.raises(CutrecError, match="holds objects other than tensors") as error:
        load_checkpoint(path)
    assert not marker.exists() and "\n" not in str(error.value)
    save_checkpoint(path, {"step": 3, "rng": np.random.default_rng(1).bit_generator.state, "t": torch.zeros(1)})
    assert load_checkpoint(path)["rng"]["bit_generator"] == "PCG64"  # what the trainer saves loads fine


@pytest.mark.parametrize("command,file", [("evaluate", "best.pt"), ("resume", "last.pt")])
def test_commands_refuse_a_planted_checkpoint(tmp_path, capsys, command, file):
    run, marker = tmp_path / "run", tmp_path / "created-by-the-checkpoint"
    run.mkdir()
    torch.save({"config": {}, "payload": _CreatesFile(marker)}, run / file)
    args = ["evaluate", str(run), "--device=cpu"] if command == "evaluate" else ["train", "--resume", str(run)]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert "holds objects other than tensors" in error and "\n" not in error
    assert not marker.exists()
