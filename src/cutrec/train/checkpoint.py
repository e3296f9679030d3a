"""Checkpoints and run-folder files, always written atomically (a temporary file in the same folder, then rename).

A crash or a kill mid-write leaves the previous file intact. A checkpoint carries the model weights, the optimiser
state, the step counter, every random generator's state and the resolved config, so it can be reloaded alone; it
holds only tensors, numbers, strings and plain containers and is loaded with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from cutrec.errors import CutrecError

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
LOG_NAME = "log.csv"
METRICS_NAME = "metrics.json"


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call write(file) on a temporary file beside `path`, fsync, then rename it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, lambda file: file.write((json.dumps(value, indent=2) + "\n").encode()))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda file: torch.save(state, file))


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`: tensors, numbers, strings and plain containers only, so a checkpoint from
    elsewhere can never run code; one holding anything else is refused, unexecuted."""
    if not path.is_file():
        raise CutrecError(f"no checkpoint at {str(path)!r}; pass a run folder that `cutrec train` wrote")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # a truncated or foreign file, not a refused object
            raise CutrecError(f"checkpoint {str(path)!r} cannot be read ({err}); retrain or pass another run") from None
        raise CutrecError(
            f"checkpoint {str(path)!r} holds objects other than tensors, numbers, strings and plain containers; "
            "it was not loaded (nothing in it ran); use a checkpoint that `cutrec train` wrote"
        ) from None
    except Exception as err:  # a truncated or foreign file
        raise CutrecError(f"checkpoint {str(path)!r} cannot be read ({err}); retrain or pass another run") from None


def random_states() -> dict[str, Any]:
    """Torch's CPU and CUDA generator states (the trainer's own numpy generator is saved beside them)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states
