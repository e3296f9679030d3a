"""The training state: everything a run needs to continue, in one object that saves to and loads from last.pt.

It holds the model and the optimizer, the counters (finished epochs, optimizer steps, batches done in the current
epoch and that epoch's order of sequences), the best validation metric and its epoch, the training time so far, the
current epoch's summed loss, the log row of the last finished epoch, and every random generator: Python's, the numpy
generator that draws epoch orders and the model's batch randomness (BERT4Rec's masks), torch's CPU generator and
the training device's CUDA generator (so a run can resume with another number of GPUs visible). The kernel losses'
negatives are a function of (run seed, step); dropout and the PyTorch sampled losses draw from torch's generators,
saved here. Restored from its checkpoint, the state continues exactly
where it stopped: on the CPU with a fixed seed, a resumed run ends bit for bit like an uninterrupted one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batch_rng: np.random.Generator  # epoch orders and the model's batch randomness
    epoch: int = 0  # finished epochs
    step: int = 0  # optimizer steps taken
    epoch_order: np.ndarray | None = None  # [S'] the current epoch's sequence rows in order; None between epochs
    batches_done: int = 0  # batches of epoch_order already trained
    epoch_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # summed loss of those batches
    best_metric: float = -math.inf
    best_epoch: int = 0
    train_seconds: float = 0.0  # training and validation time over every session of the run
    last_row: dict[str, str] | None = None  # the log.csv row of the last finished epoch

    @property
    def epochs_without_improvement(self) -> int:
        """The patience count: finished epochs since the best one."""
        return self.epoch - self.best_epoch

    def state_dict(self) -> dict[str, Any]:
        """Plain containers of tensors, numbers and strings only (so the checkpoint loads with weights_only)."""
        generators: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": self.batch_rng.bit_generator.state,
            **self.torch_generators(),
        }
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "epoch_order": None if self.epoch_order is None else torch.from_numpy(self.epoch_order),
            "batches_done": self.batches_done,
            "epoch_loss": self.epoch_loss.detach().cpu(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "last_row": self.last_row,
            "generators": generators,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore everything `state_dict` saved; the generators last, after the model and optimizer are built."""
        device = next(self.model.parameters()).device
        self.model.load_state_dict(saved["model"])
        # the optimizer as built here decides how it steps (fused, capturable), not the one that saved the state
        built = [{key: group[key] for key in ("fused", "capturable") if key in group}
                 for group in self.optimizer.param_groups]
        optimizer = dict(saved["optimizer"])
        optimizer["param_groups"] = [{**group, **flags} for group, flags in zip(optimizer["param_groups"], built,
                                                                                strict=True)]
        self.optimizer.load_state_dict(optimizer)
        self.epoch, self.step, self.batches_done = saved["epoch"], saved["step"], saved["batches_done"]
        order = saved["epoch_order"]
        self.epoch_order = None if order is None else order.numpy()
        self.epoch_loss = saved["epoch_loss"].to(device)
        self.best_metric, self.best_epoch = saved["best_metric"], saved["best_epoch"]
        self.train_seconds, self.last_row = saved["train_seconds"], saved["last_row"]
        generators = saved["generators"]
        random.setstate(_as_tuples(generators["python"]))
        self.batch_rng.bit_generator.state = generators["numpy"]
        self.set_torch_generators(generators)

    def torch_generators(self) -> dict[str, torch.Tensor]:
        """torch's CPU generator and the training device's CUDA generator (others draw nothing); in a data-parallel
        run each rank has its own."""
        device = next(self.model.parameters()).device
        generators = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            generators["cuda"] = torch.cuda.get_rng_state(device)
        return generators

    def set_torch_generators(self, generators: dict[str, torch.Tensor]) -> None:
        device = next(self.model.parameters()).device
        torch.set_rng_state(generators["torch"])
        if "cuda" in generators and device.type == "cuda":
            torch.cuda.set_rng_state(generators["cuda"], device)


def _as_tuples(value: Any) -> Any:
    """random.setstate wants the tuples that getstate gave; a checkpoint may hand them back as lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
