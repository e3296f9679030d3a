"""The training loop, top to bottom: data, model, loss, epochs with validation and early stopping, then test.

The trainer owns every random generator (torch's for initialisation and dropout, a numpy generator for the batch
order and the model's batch randomness, such as BERT4Rec's masks) and the step counter, and it uses the model only
through cutrec.models.SequenceModel. The loss gets a fresh seed each step, derived from (run seed, step), so sampled
losses are reproducible. The run folder holds config.json, log.csv (one row per epoch, appended as epochs finish),
checkpoint.pt (the best model so far, written atomically) and metrics.json (test metrics).
"""

from __future__ import annotations

import csv
import math
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cutrec.config import RunConfig, to_dict
from cutrec.data.batches import IGNORE_INDEX, epoch_batches
from cutrec.data.load import load_sequences
from cutrec.data.splits import Split, global_temporal, leave_one_out
from cutrec.errors import CutrecError
from cutrec.eval.metrics import format_table, item_user_counts
from cutrec.eval.ranking import popularity_scores
from cutrec.losses import build_loss, resolve_loss_name
from cutrec.models import SequenceModel, build_model
from cutrec.train.checkpoint import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    LOG_NAME,
    METRICS_NAME,
    random_states,
    save_checkpoint,
    write_json,
)
from cutrec.train.evaluate import autocast_context, model_top_items, popular_top_items, score


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CutrecError(f"train.device={name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CutrecError(f"train.device={name!r} but no CUDA device is visible; use train.device=cpu")
    return device


def step_seed(run_seed: int, step: int) -> int:
    """The loss seed of one training step: a hash of (run seed, step) in [0, 2**31)."""
    return int(np.random.SeedSequence([run_seed, step]).generate_state(1)[0] & 0x7FFFFFFF)


def make_split(config: RunConfig) -> Split:
    data = load_sequences(config.data)
    if config.data.split == "leave_one_out":
        return leave_one_out(data)
    return global_temporal(
        data,
        test_fraction=config.data.test_fraction,
        valid_fraction=config.data.valid_fraction,
        seed=config.data.split_seed,
    )


@dataclass
class TrainingData:
    """The split plus the training statistics that evaluation and sampling need."""

    split: Split
    item_counts: torch.Tensor  # [N] events per item in training (most-popular, popularity sampling)
    item_users: torch.Tensor  # [N] distinct training users per item (surprisal)
    num_train_users: int


def training_data(config: RunConfig) -> TrainingData:
    split = make_split(config)
    train = split.train
    return TrainingData(
        split=split,
        item_counts=popularity_scores(train.items, split.num_items),
        item_users=item_user_counts(train.offsets, train.items, split.num_items),
        num_train_users=int(np.count_nonzero(np.diff(train.offsets))),
    )


def run_folder(config: RunConfig) -> Path:
    name = config.name or f"{config.data.dataset}-{config.loss.name}-{datetime.now():%Y%m%d-%H%M%S}"
    folder = Path(config.out).expanduser() / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()  # exclusive: two runs can never share a folder, and no earlier run is overwritten
    except FileExistsError:
        raise CutrecError(f"run folder {str(folder)!r} already exists; pick another --name or --out") from None
    return folder


def _optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if config.train.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)


class EpochLog:
    """log.csv, one row per finished epoch, flushed at once so a killed run keeps every finished epoch."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        with path.open("w", newline="") as file:
            csv.writer(file).writerow(columns)

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as file:
            csv.writer(file).writerow([row.get(c, "") for c in self.columns])


def train(config: RunConfig) -> Path:
    """Train, validate every epoch, keep the best checkpoint, test it; returns the run folder."""
    device = resolve_device(config.train.device)
    torch.manual_seed(config.train.seed)
    batch_order = np.random.default_rng(config.train.seed)

    data = training_data(config)
    split = data.split
    print(
        f"data: {config.data.dataset}  items {split.num_items:,}  train sequences {len(split.train.users):,}  "
        f"valid users {len(split.valid.targets):,}  test users {len(split.test.targets):,}",
        file=sys.stderr,
    )
    config = replace(config, loss=replace(config.loss, name=resolve_loss_name(config.loss.name, split.num_items)))
    folder = run_folder(config)
    write_json(folder / CONFIG_NAME, to_dict(config))

    model: SequenceModel = build_model(config.model, split.num_items).to(device)
    forward = torch.compile(model) if config.train.compile else model
    optimizer = _optimizer(config, model)
    loss_fn = build_loss(config.loss, split.num_items, data.item_counts.to(device))
    metric_names = [f"{m}@{k}" for m in ("NDCG", "HR") for k in config.eval.ks]
    log = EpochLog(
        folder / LOG_NAME,
        ["epoch", "step", "train_loss", *metric_names, "epoch_seconds", "train_seconds", "peak_train_gpu_mb"],
    )

    best_metric, best_epoch, step = -math.inf, 0, 0
    training_started = time.perf_counter()
    for epoch in range(1, config.train.epochs + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        model.train()
        total_loss, batches = torch.zeros((), device=device), 0  # summed on the device: no sync per step
        bar = tqdm(
            epoch_batches(
                split.train, batch_size=config.train.batch_size, min_length=model.min_train_length, rng=batch_order
            ),
            desc=f"epoch {epoch}",
            leave=False,
            disable=None if config.train.progress else True,  # None: only on a terminal
            file=sys.stderr,
        )
        for rows in bar:
            inputs, targets = model.training_batch(split.train, rows, batch_order)  # [B, L], [B, L]
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with autocast_context(device, config.train.amp):
                hidden = forward(inputs)  # [B, L, D]
                flat_targets = targets.view(-1)  # [B * L]
                keep = flat_targets != IGNORE_INDEX
                loss = loss_fn(
                    hidden.view(-1, hidden.shape[-1])[keep],  # [M, D] positions with a target
                    model.item_table,
                    flat_targets[keep],  # [M]
                    seed=step_seed(config.train.seed, step),
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total_loss += loss.detach()
            batches += 1
            if batches % 50 == 0:
                bar.set_postfix(loss=f"{total_loss.item() / batches:.4f}")
        train_loss = total_loss.item() / max(batches, 1)
        train_seconds = time.perf_counter() - started
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0  # training only
        if not math.isfinite(train_loss):
            raise CutrecError(
                f"training loss became {train_loss} in epoch {epoch}; lower train.lr (now {config.train.lr})"
            )
        valid = score(
            model_top_items(model, split.valid, config.eval, device, amp=config.train.amp),
            split.valid,
            config.eval,
            popularity=data.item_users,
            num_train_users=data.num_train_users,
        )
        seconds = time.perf_counter() - started
        current = valid[config.eval.valid_metric]
        improved = current > best_metric
        if improved:
            best_metric, best_epoch = current, epoch
            save_checkpoint(
                folder / CHECKPOINT_NAME,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "num_items": split.num_items,
                    "config": to_dict(config),
                    "valid_metric": current,
                    "random_states": random_states(),
                    "batch_order_state": batch_order.bit_generator.state,
                },
            )
        log.append(
            {"epoch": epoch, "step": step, "train_loss": f"{train_loss:.6f}", "epoch_seconds": f"{seconds:.3f}",
             "train_seconds": f"{train_seconds:.3f}", "peak_train_gpu_mb": f"{peak_mb:.1f}",
             **{k: f"{valid[k]:.6f}" for k in metric_names}}
        )
        print(
            f"epoch {epoch:3d}  loss {train_loss:.4f}  valid {config.eval.valid_metric} {current:.4f}"
            f"{' *' if improved else '  '}  {seconds:.1f}s" + (f"  peak {peak_mb:.0f} MB" if peak_mb else ""),
            file=sys.stderr,
        )
        if epoch - best_epoch >= config.train.patience:
            print(f"early stop: {config.eval.valid_metric} has not improved for {config.train.patience} epochs",
                  file=sys.stderr)
            break
        limit = config.train.time_limit_minutes
        if limit is not None and time.perf_counter() - training_started > 60 * limit:
            print(f"stop: train.time_limit_minutes={limit} reached after epoch {epoch}", file=sys.stderr)
            break

    results = test_run(folder, device)
    print(format_table(results["test"], config.eval.ks))
    return folder


def load_run_model(folder: Path, device: torch.device) -> tuple[RunConfig, SequenceModel, dict[str, Any]]:
    """The config, the best model and the checkpoint of a run folder."""
    from cutrec.config import build_config
    from cutrec.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(folder / CHECKPOINT_NAME, device)
    config = build_config(checkpoint["config"])
    model = build_model(config.model, checkpoint["num_items"]).to(device)
    model.load_state_dict(checkpoint["model"])
    return config, model, checkpoint


def test_run(folder: Path, device: torch.device) -> dict[str, Any]:
    """Score the best checkpoint and the most-popular baseline on the test set; write metrics.json."""
    config, model, checkpoint = load_run_model(folder, device)
    data = training_data(config)
    if data.split.num_items != checkpoint["num_items"]:
        raise CutrecError(
            f"the data now has {data.split.num_items} items but run {str(folder)!r} was trained on "
            f"{checkpoint['num_items']}; the data changed since training"
        )
    test = data.split.test
    common = {"popularity": data.item_users, "num_train_users": data.num_train_users}
    results = {
        "test": {
            model.__class__.__name__: score(
                model_top_items(model, test, config.eval, device, amp=config.train.amp), test, config.eval, **common
            ),
            "MostPopular": score(popular_top_items(data.item_counts, test, config.eval), test, config.eval, **common),
        },
        "best_epoch": checkpoint["epoch"],
        "steps": checkpoint["step"],
        "valid_metric": {config.eval.valid_metric: checkpoint["valid_metric"]},
        "test_users": len(test.targets),
    }
    write_json(folder / METRICS_NAME, results)
    return results
