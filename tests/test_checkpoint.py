"""Checkpoints round-trip, and a failed write leaves the previous file intact."""

import numpy as np
import pytest
import torch

from cutrec.errors import CutrecError
from cutrec.models import BERT4Rec, SASRec
from cutrec.train.checkpoint import load_checkpoint, save_checkpoint


@pytest.mark.parametrize("kind", [SASRec, BERT4Rec])
def test_round_trip_restores_outputs(tmp_path, kind):
    torch.manual_seed(0)
    model = kind(30, max_len=8, dim=16).eval()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": model.state_dict(), "step": 17})
    restored = kind(30, max_len=8, dim=16).eval()
    state = load_checkpoint(path)
    restored.load_state_dict(state["model"])
    inputs = torch.randint(0, 30, (4, 8))
    assert state["step"] == 17
    assert torch.equal(model(inputs), restored(inputs))


def test_interrupted_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_unreadable_checkpoint_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CutrecError, match="cannot be read"):
        load_checkpoint(path)
    with pytest.raises(CutrecError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


class _RunsCode:
    """Unpickling this would call `_ran_code`: a checkpoint that executes code when loaded."""

    def __reduce__(self):
        return (_ran_code, ())


RAN = []


def _ran_code():
    RAN.append(True)
    return "executed"


def test_a_checkpoint_holding_code_is_refused_unexecuted(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.ones(2)}, "payload": _RunsCode()}, path)
    with pytest.raises(CutrecError, match="holds objects other than tensors") as error:
        load_checkpoint(path)
    assert RAN == [] and "\n" not in str(error.value)
    save_checkpoint(path, {"step": 3, "rng": np.random.default_rng(1).bit_generator.state, "t": torch.zeros(1)})
    assert load_checkpoint(path)["rng"]["bit_generator"] == "PCG64"  # what the trainer saves loads fine
