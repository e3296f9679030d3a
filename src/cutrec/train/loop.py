"""The training loop, top to bottom: run folder, data, model, epochs with validation, early stopping and checkpoints,
then test (unless eval.test is false). `train` starts a run and `resume` continues one from its last.pt.

Everything that changes while a run trains lives in one `TrainState` (cutrec.train.state); the loop owns nothing
else. The model is used only through cutrec.models.SequenceModel; each step runs through cutrec.train.step (static
shapes, no host sync, one CUDA graph where it applies), whose loss seed is derived from (run seed, step). The loop
reads the device only at epoch ends, checkpoints and through the step's non-waiting readout. The run folder holds
data.npz (the run's own copy of its preprocessed data, raw ids included), run.json (its format), config.json,
log.csv (one row per finished epoch; rows are only added, each time atomically), last.pt (the whole state, at every
train.checkpoint_every_epochs-th epoch end, every train.checkpoint_every_minutes, at the run's end and on a stop; a
run resumed from an epoch before its last log row trains those epochs again and keeps their first rows), best.pt
(the model of the best validation epoch, the one tested) and metrics.json (the best epoch, its validation metric and
the test metrics). SIGTERM and SIGINT stop after the current step with last.pt written (see interrupt.py).
"""

from __future__ import annotations

import csv
import io
import secrets
import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cutrec import distributed
from cutrec.config import RunConfig, build_config, differing_keys, merged_values, to_dict
from cutrec.console import note, progress, set_quiet
from cutrec.data.batches import IGNORE_INDEX, epoch_order, num_batches, usable_rows
from cutrec.data.cache import read_npz, write_npz
from cutrec.data.load import load_sequences
from cutrec.data.preprocess import SequenceData
from cutrec.data.splits import EvalSet, Split, global_temporal, leave_one_out
from cutrec.distributed import SINGLE, Ranks
from cutrec.errors import CutrecError
from cutrec.eval.metrics import format_table, item_user_counts
from cutrec.eval.ranking import popularity_scores
from cutrec.losses import build_loss, resolve_loss_name
from cutrec.models import SequenceModel, build_model
from cutrec.train import catalog_parallel
from cutrec.train.checkpoint import (
    BEST_NAME,
    CONFIG_NAME,
    DATA_NAME,
    LAST_NAME,
    LOG_NAME,
    METRICS_NAME,
    atomic_write_bytes,
    load_checkpoint,
    remove_leftovers,
    run_format,
    save_checkpoint,
    write_json,
    write_run_info,
)
from cutrec.train.evaluate import model_top_items, popular_top_items, score
from cutrec.train.interrupt import RunStopped, StopSignals
from cutrec.train.memory import batch_positions, checked_batch_size
from cutrec.train.state import TrainState
from cutrec.train.step import NonFiniteStep, TrainStep, make_optimizer, step_seed

# what --resume may change: nothing that changes what is computed
RESUMABLE_KEYS = ("train.epochs", "train.time_limit_minutes", "train.progress", "train.check_memory",
                  "train.memory_limit_gb", "train.tensorboard", "train.dist_timeout_minutes",
                  "train.checkpoint_every_epochs", "train.checkpoint_every_minutes", "eval.test")


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


def make_split(config: RunConfig, data: SequenceData) -> Split:
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

    @property
    def train_lengths(self) -> np.ndarray:
        return np.diff(self.split.train.offsets)  # [S] items per training sequence


def training_data(config: RunConfig, sequences: SequenceData) -> TrainingData:
    """The split of `sequences` that the config names, with its training statistics."""
    split = make_split(config, sequences)
    train = split.train
    return TrainingData(
        split=split,
        item_counts=popularity_scores(train.items, split.num_items),
        item_users=item_user_counts(train.offsets, train.items, split.num_items),
        num_train_users=int(np.count_nonzero(np.diff(train.offsets))),
    )


def print_data(config: RunConfig, data: TrainingData) -> None:
    split = data.split
    note(
        f"data: {config.data.label}  items {split.num_items:,}  train sequences {len(split.train.users):,}  "
        f"valid users {len(split.valid.targets):,}  test users {len(split.test.targets):,}")


def create_run_folder(config: RunConfig) -> Path:
    """OUT/NAME, created exclusively before any data is read; every --out/--name problem is a one-line error."""
    out = Path(config.out).expanduser()
    name = config.name or (
        f"{config.data.label}-{config.model.name}-{config.loss.name}-{datetime.now():%Y%m%d-%H%M%S}-"
        f"{secrets.token_hex(3)}"  # two runs started in the same second never collide
    )
    if Path(name).name != name or name in (".", ".."):
        raise CutrecError(f"name={name!r} is not a folder name; give --name without '/'")
    folder = out / name
    if out.exists() and not out.is_dir():
        raise CutrecError(f"out={config.out!r} is a file, not a folder; pass --out a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        folder.mkdir()  # exclusive: two runs can never share a folder, and no earlier run is overwritten
    except FileExistsError:
        if folder.is_dir() and (folder / LAST_NAME).exists():
            raise CutrecError(
                f"run folder {str(folder)!r} already exists; pick another --name or --out, or continue it with "
                f"`cutrec train --resume {folder}`"
            ) from None
        if folder.is_dir():
            raise CutrecError(
                f"run folder {str(folder)!r} already exists and holds no last.pt (it stopped before its first "
                "checkpoint); delete it or pick another --name or --out"
            ) from None
        raise CutrecError(f"a file {str(folder)!r} is where the run folder would go; pick another --name") from None
    except OSError as err:
        raise CutrecError(
            f"cannot create run folder {str(folder)!r} ({err.strerror}); pass --out a folder you can write to"
        ) from None
    return folder


class EpochLog:
    """log.csv, one row per finished epoch. Rows are only ever added, never changed or dropped, and each addition is
    an atomic rewrite (earlier rows plus the new one), so a kill mid-write cannot leave a torn row. An epoch that
    already has a row (trained again after a resume from an earlier last.pt) keeps its first one."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        self.epochs: set[int] = set()  # the epochs that have a row
        if not path.exists():
            self._write([columns])
            return
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            header, rows = reader.fieldnames or [], list(reader)
        self.epochs = {int(row["epoch"]) for row in rows if (row.get("epoch") or "").isdigit()}
        if header != columns:  # a log written by an earlier version: the same rows under today's columns
            self._write([columns, *([row.get(c) or "" for c in columns] for row in rows)])

    def append(self, row: dict[str, Any]) -> bool:
        """Add the row unless its epoch has one; whether it was added."""
        if int(row["epoch"]) in self.epochs:
            return False
        self._write([[row.get(c, "") for c in self.columns]], keep=self.path.read_bytes())
        self.epochs.add(int(row["epoch"]))
        return True

    def _write(self, rows: list[list[Any]], keep: bytes = b"") -> None:
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        atomic_write_bytes(self.path, lambda file: file.write(keep + text.getvalue().encode()))


def stop_reason(config: RunConfig, state: TrainState) -> str | None:
    """Why training ends before the next epoch, or None to go on; a function of the state alone."""
    if state.epoch >= config.train.epochs:
        return f"train.epochs={config.train.epochs} reached"
    if state.epochs_without_improvement >= config.train.patience:
        return f"early stop: {config.eval.valid_metric} has not improved for {config.train.patience} epochs"
    limit = config.train.time_limit_minutes
    if limit is not None and state.train_seconds > 60 * limit:
        return f"train.time_limit_minutes={limit} reached after epoch {state.epoch}"
    return None


def train(config: RunConfig, sequences: SequenceData | None = None) -> Path:
    """Start a run: create its folder, read the data (config.data, unless `sequences` are given), keep a copy of
    it in the folder, train, test the best epoch (unless eval.test is false); returns the run folder.

    A failure or a signal before the first last.pt removes the folder again: nothing in it could be resumed.
    """
    device, ranks = start_ranks(config)
    folder = Path(distributed.broadcast(str(create_run_folder(config)) if ranks.main else None, ranks))
    try:
        with StopSignals() as signals:  # a signal while the data loads stops before the first step
            if ranks.main:
                write_json(folder / CONFIG_NAME, to_dict(config))
            if sequences is None:
                sequences = distributed.main_first(lambda: load_sequences(config.data), ranks)
            if ranks.main:
                atomic_write_bytes(folder / DATA_NAME, lambda file: write_npz(file, sequences))
                write_run_info(folder)
            data = training_data(config, sequences)
            print_data(config, data)
            loss_name = resolve_loss_name(config.loss.name, data.split.num_items)
            config = replace(config, loss=replace(config.loss, name=loss_name))
            if config.train.catalog_parallel:
                catalog_parallel.check(config, ranks)
            batch_size = global_batch_size(config, data, device, ranks)
            config = replace(config, train=replace(config.train, batch_size=batch_size))
            if ranks.main:
                write_json(folder / CONFIG_NAME, to_dict(config))
            if signals.received:
                raise RunStopped(f"stopped by {signals.name} before training started; nothing to resume",
                                 128 + signals.received)
        note(f"run folder: {folder}")
        torch.manual_seed(config.train.seed)  # the same initial model on every rank
        state = new_state(config, data.split.num_items, device, ranks)
        if ranks.rank:  # each rank's own dropout and PyTorch-sampled negatives; rank 0 draws as a single process
            torch.manual_seed(step_seed(config.train.seed, 0, ranks.rank))
        return fit(config, folder, data, state, device, ranks)
    except BaseException:  # a folder without a checkpoint or a finished epoch holds nothing of the user's
        if ranks.main and not (folder / LAST_NAME).exists() and not (folder / BEST_NAME).exists():
            shutil.rmtree(folder, ignore_errors=True)
        raise


def start_ranks(config: RunConfig) -> tuple[torch.device, Ranks]:
    """This process's device and place in a data-parallel run (SINGLE outside torchrun); ranks other than 0 print
    only warnings and errors."""
    device = resolve_device(config.train.device)
    ranks = distributed.start(device, config.train.dist_timeout_minutes)
    if not ranks.main:
        set_quiet(True)
    return distributed.rank_device(device, ranks), ranks


def global_batch_size(config: RunConfig, data: TrainingData, device: torch.device, ranks: Ranks) -> int:
    """The batch size of the run, over all ranks: train.batch_size (each rank trains an equal share of every batch,
    checked against its device's memory, with its shard of the table under catalog parallel), or with "auto" the
    largest share that fits rank 0 times the ranks."""
    batch = config.train.batch_size
    distributed.check_batch(batch, ranks.world)
    share = config if batch == "auto" else replace(config, train=replace(config.train,
                                                                          batch_size=int(batch) // ranks.world))
    items = data.split.num_items
    if catalog_parallel.active(config, ranks):  # each rank holds about N / ranks rows of the table and its Adam state
        items = -(-items // ranks.world)
    fits = checked_batch_size(share, items, data.train_lengths, device)
    return int(batch) if batch != "auto" else distributed.broadcast(fits, ranks) * ranks.world


def resume(folder: Path, file_values: dict[str, Any], overrides: list[str]) -> Path:
    """Continue the run in `folder` from its last.pt, with its own config (only RESUMABLE_KEYS may change)."""
    if not folder.is_dir():
        raise CutrecError(f"--resume {str(folder)!r} is not a folder; pass a run folder that `cutrec train` wrote")
    folder_format = run_format(folder)  # refuses a folder of a newer cutrec
    if not (folder / LAST_NAME).exists():
        raise CutrecError(
            f"run {str(folder)!r} has no last.pt (it stopped before its first checkpoint); "
            "start it again with `cutrec train`"
        )
    saved = load_checkpoint(folder / LAST_NAME)
    run_config = build_config(saved["config"])
    config = build_config(merged_values(saved["config"], file_values), overrides)
    if config.loss.name == "auto":  # what the run resolved "auto" to
        config = replace(config, loss=replace(config.loss, name=run_config.loss.name))
    if config.train.batch_size == "auto":
        config = replace(config, train=replace(config.train, batch_size=run_config.train.batch_size))
    refused = [key for key in differing_keys(run_config, config) if key not in RESUMABLE_KEYS]
    if refused:
        raise CutrecError(
            f"--resume keeps the run's own config, but {', '.join(refused)} differ from it; drop those options "
            f"(only {', '.join(RESUMABLE_KEYS)} may change)"
        )
    device, ranks = start_ranks(config)
    if config.train.catalog_parallel:
        catalog_parallel.check(config, ranks)
    removed = remove_leftovers(folder) if ranks.main else []
    if removed:
        note(f"removed {len(removed)} temporary file(s) left by an interrupted save")
    distributed.barrier(ranks)  # no rank reads the folder while rank 0 tidies it
    note(f"run folder: {folder} (resuming at step {saved['step']}, epoch {saved['epoch'] + 1})")
    sequences = run_sequences(folder, config)
    data = training_data(config, sequences)
    print_data(config, data)
    now = _data_shape(data)
    if now != saved["data_shape"]:
        raise CutrecError(
            f"the data now has {now['items']:,} items, {now['sequences']:,} training sequences and {now['events']:,} "
            f"training events, but run {str(folder)!r} was trained on {saved['data_shape']['items']:,}, "
            f"{saved['data_shape']['sequences']:,} and {saved['data_shape']['events']:,}; the data changed since "
            "training, so the run cannot continue"
        )
    if folder_format == 1 and ranks.main:  # the data checked against last.pt: from now on the folder has its copy
        atomic_write_bytes(folder / DATA_NAME, lambda file: write_npz(file, sequences))
        write_run_info(folder)
    global_batch_size(config, data, device, ranks)  # this GPU may have less free, or the ranks changed
    state = new_state(config, data.split.num_items, device, ranks)
    state.load_state_dict(catalog_parallel.take_shard(saved, state, ranks) if catalog_parallel.active(config, ranks)
                          else saved)
    restore_rank(state, saved, config, ranks)
    if ranks.main:
        write_json(folder / CONFIG_NAME, to_dict(config))
    return fit(config, folder, data, state, device, ranks)


def restore_rank(state: TrainState, saved: dict[str, Any], config: RunConfig, ranks: Ranks) -> None:
    """A resumed rank other than 0 takes its own torch generators from last.pt (every rank loaded rank 0's), or, when
    the run had fewer ranks, new ones from (seed, step, rank); its share of the epoch's summed loss starts at 0 (rank
    0 holds the whole sum)."""
    if not ranks.rank:
        return
    state.epoch_loss.zero_()
    others = saved.get("rank_generators", [])
    if ranks.rank <= len(others):
        state.set_torch_generators(others[ranks.rank - 1])
    else:
        torch.manual_seed(step_seed(config.train.seed, state.step, ranks.rank))


def new_state(config: RunConfig, num_items: int, device: torch.device, ranks: Ranks = SINGLE) -> TrainState:
    """A fresh state: the model initialised from torch's generator (under train.catalog_parallel, only this rank's
    catalog rows of the item table), the batch generator from the run seed."""
    sharded = catalog_parallel.active(config, ranks)
    model = build_model(config.model, num_items, materialize_items=not sharded)
    if sharded:
        catalog_parallel.shard_catalog(model, ranks)
    model = model.to(device)
    return TrainState(
        model=model,
        optimizer=make_optimizer(config, model, device),
        batch_rng=np.random.default_rng(config.train.seed),
        epoch_loss=torch.zeros((), device=device),
    )


def _data_shape(data: TrainingData) -> dict[str, int]:
    """What must not change under a resumed run: catalog size, training sequences and events."""
    train = data.split.train
    return {"items": data.split.num_items, "sequences": len(train.users), "events": int(train.offsets[-1])}


def save_last(folder: Path, state: TrainState, config: RunConfig, data: TrainingData, ranks: Ranks) -> None:
    """last.pt, written by rank 0 with every other rank's torch generators and, under catalog parallel, every rank's
    rows of the item table (a collective: every rank calls it)."""
    generators = distributed.gather_objects(state.torch_generators(), ranks)
    saved = catalog_parallel.full_state(state, ranks) if catalog_parallel.active(config, ranks) else state.state_dict()
    if ranks.main:
        save_checkpoint(folder / LAST_NAME, {**saved, "config": to_dict(config),
                                             "data_shape": _data_shape(data), "rank_generators": generators[1:]})


def settle_epoch_loss(state: TrainState, ranks: Ranks, config: RunConfig) -> None:
    """The epoch's summed loss so far, whole on rank 0 (and 0 on the others): every rank sums only its share, or,
    under catalog parallel, every rank the whole step's loss."""
    if catalog_parallel.active(config, ranks):
        if not ranks.main:
            state.epoch_loss.zero_()
    elif ranks.distributed:
        total = distributed.sum_all(state.epoch_loss, ranks)
        state.epoch_loss.copy_(total if ranks.main else torch.zeros_like(total))  # in place: a graph adds to it


def rank_part(inputs: torch.Tensor, targets: torch.Tensor, ranks: Ranks) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      tuple[int, int], int]:
    """This rank's rows of a batch (inputs [b, L], targets [b, L]), its share (M_r, M) of the batch's targets, and
    the most targets of any rank's rows (every rank builds the whole batch, so it knows them all without asking). A
    rank left without rows (a last batch smaller than the ranks) trains the first row with no targets (a share of
    0), so it adds nothing to the loss, also where the ranks' targets are pooled (catalog parallel)."""
    per_row = (targets != IGNORE_INDEX).sum(1)  # [b]
    parts = distributed.shards(len(inputs), ranks.world)
    most = max(int(per_row[start:stop].sum()) for start, stop in parts)
    start, stop = parts[ranks.rank]
    if stop == start:
        return inputs[:1], torch.full_like(targets[:1], IGNORE_INDEX), (0, int(per_row.sum())), most
    return inputs[start:stop], targets[start:stop], (int(per_row[start:stop].sum()), int(per_row.sum())), most


def ranked_top_items(model: SequenceModel, evalset: EvalSet, config: RunConfig, device: torch.device,
                     ranks: Ranks) -> torch.Tensor:
    """[U, max(ks)] top items of every user of the eval set (on the CPU); each rank ranks its share of the users, or,
    under catalog parallel, every user against its rows of the catalog."""
    if catalog_parallel.active(config, ranks):
        return catalog_parallel.sharded_model_top_items(model, evalset, config, device, ranks)
    start, stop = distributed.shard(len(evalset.targets), ranks)
    part = (model_top_items(model, evalset.rows(start, stop), config.eval, device, amp=config.train.amp)
            if stop > start else torch.empty((0, max(config.eval.ks)), dtype=torch.int64))  # [U_r, k]
    return distributed.gather_rows(part, len(evalset.targets), ranks)


def _data_parallel(model: SequenceModel, device: torch.device) -> torch.nn.Module:
    """The model in DistributedDataParallel, built on a side stream on CUDA (PyTorch's CUDA graphs notes: so that
    the step can be captured), ordered after the copies that made the weights and before the first step."""
    if device.type != "cuda":
        return torch.nn.parallel.DistributedDataParallel(model)
    side, current = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    current.wait_stream(side)
    return wrapped


def fit(
    config: RunConfig, folder: Path, data: TrainingData, state: TrainState, device: torch.device,
    ranks: Ranks = SINGLE,
) -> Path:
    """Train from `state` until a stop reason, checkpointing as it goes; then test the best epoch (eval.test).

    In a data-parallel run every rank builds each whole batch (the same generator everywhere) and trains its share
    of the rows through DistributedDataParallel; the ranks agree on stop signals and checkpoint times after every
    step, rank 0 alone writes, and validation ranks each rank's share of the users."""
    split, model, batch_size = data.split, state.model, int(config.train.batch_size)
    catalog = catalog_parallel.active(config, ranks)
    forward = model
    if catalog:
        forward = catalog_parallel.wrap(model, device)
    elif ranks.distributed:
        forward = _data_parallel(model, device)
    if config.train.compile:
        forward = torch.compile(forward)
    loss_fn = (catalog_parallel.CatalogParallelLoss(model, ranks, config.loss, data.item_counts) if catalog else
               build_loss(config.loss, split.num_items, data.item_counts.to(device)))
    share = batch_size // ranks.world
    drawn_items = model.item_table.shape[0]  # the rows the loss draws negatives from: this rank's shard, if sharded
    steps_per_epoch = num_batches(usable_rows(split.train, min_length=model.min_train_length), batch_size)
    step = TrainStep(state, forward, loss_fn, config, device, drawn_items,
                     rows=batch_positions(config, data.train_lengths, share), batch_size=share, ranks=ranks,
                     catalog_parallel=catalog, steps_per_epoch=steps_per_epoch)
    metric_names = [f"{m}@{k}" for m in ("NDCG", "HR") for k in config.eval.ks]
    columns = ["epoch", "step", "train_loss", *metric_names, "epoch_seconds", "train_seconds", "setup_seconds",
               "peak_train_gpu_mb"]
    log = EpochLog(folder / LOG_NAME, columns) if ranks.main else None
    if log is not None and state.last_row is not None:
        log.append(state.last_row)  # stopped between saving last.pt and appending its row
    scalars = tensorboard_writer(config, folder) if ranks.main else None
    session_start, seconds_before = time.perf_counter(), state.train_seconds
    every = 60 * config.train.checkpoint_every_minutes
    last_saved, saved_at = time.monotonic(), (state.step, state.epoch)

    def checkpoint() -> None:
        nonlocal last_saved, saved_at
        step.check()  # never save the state of a run that has gone non-finite
        state.train_seconds = seconds_before + time.perf_counter() - session_start
        settle_epoch_loss(state, ranks, config)
        save_last(folder, state, config, data, ranks)
        last_saved, saved_at = time.monotonic(), (state.step, state.epoch)

    def checkpoint_unless_saved() -> None:
        """last.pt of the state now, unless it holds it already (every rank agrees: they count the same steps and
        epochs; a timed save after an epoch's last step is not its end)."""
        if saved_at != (state.step, state.epoch):
            checkpoint()

    with StopSignals() as signals:
        try:
            while True:
                if state.epoch_order is None:  # between epochs: stop, or draw the next epoch's order
                    reason = distributed.broadcast(stop_reason(config, state), ranks)  # decided once
                    if reason is not None:
                        checkpoint_unless_saved()  # the run's end: the state a resume with more epochs continues
                        break
                    state.epoch_order = epoch_order(split.train, min_length=model.min_train_length,
                                                    rng=state.batch_rng)
                    state.batches_done = 0
                    state.epoch_loss.zero_()  # summed on the device, in place (a captured graph adds to it)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                epoch_started, setup_before = time.perf_counter(), step.setup_seconds
                total = num_batches(state.epoch_order, batch_size)
                model.train()
                bar = progress(range(state.batches_done, total), shown=config.train.progress and ranks.main,
                               desc=f"epoch {state.epoch + 1}", initial=state.batches_done, total=total)
                stopping = False
                for batch in bar:
                    rows = state.epoch_order[batch * batch_size : (batch + 1) * batch_size]  # [B]
                    inputs, targets = model.training_batch(split.train, rows, state.batch_rng)  # [B, L], [B, L]
                    with distributed.collective(ranks):  # the gradients' all-reduce
                        step.run(*rank_part(inputs, targets, ranks))
                    state.step += 1
                    state.batches_done += 1
                    mean_loss, not_finite = _poll(step, ranks)  # as of an earlier step: never waits for the device
                    if mean_loss is not None and bar.disable is False:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                    stopping, due, not_finite = distributed.agree(
                        [signals.received is not None, bool(every) and time.monotonic() - last_saved >= every,
                         not_finite], ranks)
                    if not_finite:  # seen by some rank: every rank stops at this step
                        step.check()
                        raise CutrecError("another rank's training step was not finite; see rank 0's message")
                    if stopping:
                        break
                    if due:
                        checkpoint()
                bar.close()
                if stopping and state.batches_done < total:
                    checkpoint()
                    raise RunStopped(_stopped_message(signals.name, folder, state, total), 128 + (signals.received
                                                                                                  or 15))
                step.check()
                setup_seconds = step.setup_seconds - setup_before
                train_seconds = time.perf_counter() - epoch_started - setup_seconds
                # a graph's memory is allocated at capture, so its peak counts in every epoch
                peak_mb = 0.0
                if device.type == "cuda":
                    peak_mb = max(torch.cuda.max_memory_allocated(device), step.graph_peak_bytes) / 2**20
                end_epoch(config, folder, data, state, device, columns, train_seconds, setup_seconds, peak_mb, ranks)
                if state.epoch % config.train.checkpoint_every_epochs == 0:
                    checkpoint()
                if log is not None and log.append(state.last_row) and scalars is not None:
                    for key, value in state.last_row.items():
                        if key not in ("epoch", "step"):
                            scalars.add_scalar(key, float(value), state.epoch)
                    scalars.flush()
                if distributed.agree([signals.received is not None], ranks)[0]:
                    checkpoint_unless_saved()
                    raise RunStopped(_stopped_message(signals.name, folder, state, total), 128 + (signals.received
                                                                                                  or 15))
        except NonFiniteStep as bad:
            raise CutrecError(_non_finite_message(bad, folder, state, config)) from None
        finally:
            if scalars is not None:
                scalars.close()
    if step.eager_steps:
        note(f"{step.eager_steps} step(s) had more than {step.rows} targets and ran outside the CUDA graph")
    note(reason)
    if ranks.main:  # the others end now: a barrier would time out during a long test
        results = test_run(folder, device, data, test=config.eval.test)
        if config.eval.test:
            print(format_table(results["test"], config.eval.ks))
        else:
            note(f"eval.test=false: not tested; best validation {config.eval.valid_metric} "
                 f"{results['valid_metric'][config.eval.valid_metric]:.4f} at epoch {results['best_epoch']}")
        note(f"run folder: {folder}")
    return folder


def _poll(step: TrainStep, ranks: Ranks) -> tuple[float | None, bool]:
    """(the step's readout of the epoch's mean loss or None, whether it showed a non-finite step); one process
    raises NonFiniteStep at once, a data-parallel rank reports it so that the ranks stop together."""
    try:
        return step.poll(), False
    except NonFiniteStep:
        if not ranks.distributed:
            raise
        return None, True


def tensorboard_writer(config: RunConfig, folder: Path) -> Any:
    """A SummaryWriter on RUN_DIR/tensorboard when train.tensorboard is set, else None."""
    if not config.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CutrecError(
            "train.tensorboard=true needs tensorboard: pip install 'cutrec[tensorboard]', or train.tensorboard=false"
        ) from None
    return SummaryWriter(str(folder / "tensorboard"))


def end_epoch(
    config: RunConfig, folder: Path, data: TrainingData, state: TrainState, device: torch.device, columns: list[str],
    train_seconds: float, setup_seconds: float, peak_mb: float, ranks: Ranks = SINGLE,
) -> None:
    """Validate the finished epoch, keep best.pt, and record the epoch's log row in the state (a collective in a
    data-parallel run: every rank validates its share, and all get the same metrics)."""
    valid_started = time.perf_counter()
    settle_epoch_loss(state, ranks, config)
    train_loss = state.epoch_loss.item() / max(state.batches_done, 1)  # rank 0's is the run's
    valid = score(
        ranked_top_items(state.model, data.split.valid, config, device, ranks),
        data.split.valid,
        config.eval,
        popularity=data.item_users,
        num_train_users=data.num_train_users,
    )
    state.epoch += 1
    state.epoch_order, state.batches_done = None, 0
    current = valid[config.eval.valid_metric]
    improved = current > state.best_metric
    if improved:
        state.best_metric, state.best_epoch = current, state.epoch
        model_state = (catalog_parallel.full_model_state(state.model, ranks) if catalog_parallel.active(config, ranks)
                       else state.model.state_dict())
    if improved and ranks.main:
        save_checkpoint(
            folder / BEST_NAME,
            {"model": model_state, "epoch": state.epoch, "step": state.step, "valid_metric": current,
             "num_items": data.split.num_items, "config": to_dict(config)},
        )
    seconds = setup_seconds + train_seconds + time.perf_counter() - valid_started  # this session's part
    state.last_row = {
        "epoch": str(state.epoch), "step": str(state.step), "train_loss": f"{train_loss:.6f}",
        **{k: f"{valid[k]:.6f}" for k in columns if k in valid},
        "epoch_seconds": f"{seconds:.3f}", "train_seconds": f"{train_seconds:.3f}",
        "setup_seconds": f"{setup_seconds:.3f}", "peak_train_gpu_mb": f"{peak_mb:.1f}",
    }
    note(
        f"epoch {state.epoch:3d}  loss {train_loss:.4f}  valid {config.eval.valid_metric} {current:.4f}"
        f"{' *' if improved else '  '}  {seconds:.1f}s" + (f"  peak {peak_mb:.0f} MB" if peak_mb else ""))


def _last_good(folder: Path) -> str:
    path = folder / LAST_NAME
    if not path.exists():
        return "none yet (no checkpoint written)"
    saved = load_checkpoint(path)
    return f"{path} (step {saved['step']})"


def _non_finite_message(bad: NonFiniteStep, folder: Path, state: TrainState, config: RunConfig) -> str:
    return (
        f"step {bad.step + 1} (epoch {state.epoch + 1}) has loss {bad.loss} and gradient norm {bad.grad_norm}; its "
        f"update was skipped and the run stopped at step {state.step}. Last good checkpoint: {_last_good(folder)}. "
        f"Start a new run with a lower train.lr (now {config.train.lr}) or with train.grad_clip (a resume keeps the "
        "run's settings)"
    )


def _stopped_message(signal_name: str, folder: Path, state: TrainState, total: int) -> str:
    signal_name = signal_name or "a signal to another rank"
    where = f"epoch {state.epoch + 1}, batch {state.batches_done} of {total}" if state.epoch_order is not None else (
        f"end of epoch {state.epoch}")
    return (
        f"stopped by {signal_name} at step {state.step} ({where}); last.pt saved in {folder}; "
        f"resume with: cutrec train --resume {folder}"
    )


def run_sequences(folder: Path, config: RunConfig) -> SequenceData:
    """The run's own copy of its data (data.npz); a folder from before it (format 1) reads config.data again."""
    if run_format(folder) == 1:
        return load_sequences(config.data)
    sequences = read_npz(folder / DATA_NAME)
    if sequences is None:
        raise CutrecError(
            f"{str(folder / DATA_NAME)!r} is missing or unreadable; restore it from a copy of the run folder"
        )
    return sequences


def load_best(folder: Path, device: torch.device) -> tuple[RunConfig, dict[str, Any]]:
    """The config and the best checkpoint of a run folder (refused if a newer cutrec wrote it)."""
    run_format(folder)
    checkpoint = load_checkpoint(folder / BEST_NAME, device)
    return build_config(checkpoint["config"]), checkpoint


def checkpoint_model(config: RunConfig, checkpoint: dict[str, Any], device: torch.device) -> SequenceModel:
    """The model of a checkpoint, with its weights, on `device`."""
    model = build_model(config.model, checkpoint["num_items"]).to(device)
    model.load_state_dict(checkpoint["model"])
    return model


def load_run_model(folder: Path, device: torch.device) -> tuple[RunConfig, SequenceModel, dict[str, Any]]:
    """The config, the best model and the checkpoint of a run folder (`load_best`)."""
    config, checkpoint = load_best(folder, device)
    return config, checkpoint_model(config, checkpoint, device), checkpoint


def test_run(folder: Path, device: torch.device, data: TrainingData | None = None, *, test: bool = True
             ) -> dict[str, Any]:
    """Score the best checkpoint and the most-popular baseline on the test set; write metrics.json (with
    test=False: the best epoch and its validation metric alone, the test split unread).

    `data` is the run's split when the caller has it (the trainer does); without it the split is built once here
    from the folder's own data.
    """
    config, checkpoint = load_best(folder, device)
    results: dict[str, Any] = {
        "best_epoch": checkpoint["epoch"],
        "steps": checkpoint["step"],
        "valid_metric": {config.eval.valid_metric: checkpoint["valid_metric"]},
    }
    if not test:  # nothing to score: no model is built
        write_json(folder / METRICS_NAME, results)
        return results
    model = checkpoint_model(config, checkpoint, device)
    if data is None:
        data = training_data(config, run_sequences(folder, config))
    if data.split.num_items != checkpoint["num_items"]:
        raise CutrecError(
            f"the data now has {data.split.num_items} items but run {str(folder)!r} was trained on "
            f"{checkpoint['num_items']}; the data changed since training"
        )
    split = data.split.test
    common = {"popularity": data.item_users, "num_train_users": data.num_train_users}
    results["test"] = {
        model.__class__.__name__: score(
            model_top_items(model, split, config.eval, device, amp=config.train.amp), split, config.eval, **common
        ),
        "MostPopular": score(
            popular_top_items(data.item_counts.to(device), split, config.eval), split, config.eval, **common
        ),
    }
    results["test_users"] = len(split.targets)
    write_json(folder / METRICS_NAME, results)
    return results
