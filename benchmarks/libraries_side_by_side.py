"""cutrec's SASRec side by side with what users would pick instead: RecBole 1.2.1 and RePlay, one run at a time.

For one data set given as a cutrec "sequences" file (one user per line, `user item item ...`, items in time order),
or `--dataset synthetic-1m` (the file written from cutrec's own generator, `cutrec.data.synthetic`), the script runs
each library in its own subprocess, one after the other, on the same device:

- `cutrec`: `cutrec train --loss CE` (its defaults otherwise: CUDA graph, bf16 autocast on CUDA); `cutrec-cce`: the
  same with `--loss CCE` (the same full softmax, fused: no logits in memory); `cutrec-cce-`: `--loss CCE-` with
  `--negatives` uniform negatives (the counterpart of RePlay's sampled CE).
- `recbole-ce`: RecBole 1.2.1 `SASRec` with `loss_type: CE`, its own `Trainer` (fit, early stopping, best-model
  reload) and its full-ranking evaluation, split `eval_args: {split: {LS: valid_and_test}, order: TO, mode: full}`.
- `replay-ce` and `replay-sce`: RePlay (`replay-rec` from PyPI) `SasRec` Lightning module (the
  `replay.models.nn.sequential.sasrec` API) with `loss_type="CE"`, full softmax, and with `loss_sample_count=K`, its
  sampled CE (K global-uniform negatives, a log-correction of the logits, negatives equal to the target rejected),
  trained by `lightning.Trainer` with RePlay's `ValidationMetricsCallback` and `RemoveSeenItems`.

Same settings for all: embedding and hidden size 64, 1 block, 1 head, dropout 0.2, max_len 50, batch 128, lr 1e-3,
Adam with betas (0.9, 0.999) (RePlay's default 0.98 is overridden), validation NDCG@10 after every epoch, early
stopping with patience 10, at most 200 epochs, the best epoch's weights tested. The feed-forward inner size is 64
in all three (cutrec: Linear-GELU-Linear at D; RecBole `inner_size: 64`, `hidden_act: gelu`; RePlay's fixed
Conv1d-ReLU-Conv1d at D). Leave-one-out everywhere: a user's last item is the test target, the second-last the
validation target, the rest trains (inputs for validation: the training items; for test: everything but the last).
The catalog is the items present in the file (RePlay's tokenizer is fitted on the whole file, so the validation and
test targets are in it).

`--time-limit-s` caps each library's training loop (training and validation epochs): a run stops after the epoch
that passes it (cutrec: `train.time_limit_minutes`, same rule), records `capped: true`, and tests its best epoch so
far. A subprocess also gets a hard wall timeout of time limit + `--grace-s` (data preparation, start-up and test).

Measured, per library:

- training seconds per epoch: mean over epochs of the training steps alone, validation excluded, including each
  library's own batch making and host-to-device copies. cutrec: log.csv's `train_seconds` (the epoch's step loop,
  less the one-off CUDA graph capture). RecBole: a `Trainer` subclass times `_train_epoch` (CUDA-synchronised before
  and after). RePlay: a Lightning callback times `on_train_epoch_start` to `on_validation_start` (synchronised).
  Epochs are not the same amount of work: cutrec and RePlay make one training row per user (a loss at every
  position); RecBole's sequential data set makes one row per training interaction (every prefix, a loss only at its
  last position), so its epoch has about (mean length - 2) times more rows. `steps_per_epoch` names each.
- peak GPU memory during training: `torch.cuda.reset_peak_memory_stats` before each epoch's training,
  `max_memory_allocated` after it, before validation (cutrec: log.csv's `peak_train_gpu_mb`, which includes a CUDA
  graph's memory allocated at capture); the max over epochs. No library's peak here includes validation.
- test NDCG@10 and HR@10 as each library computes them, full ranking over all items; every library here excludes
  the user's seen items (cutrec: `eval.exclude_seen` by default; RecBole: full-sort evaluation masks the items of
  the training and validation parts; RePlay: `RemoveSeenItems` on the test input sequences). RePlay's `recall@10`
  is HR@10 with one target per user.
- epochs run, best epoch (1-based), whether the time cap stopped the run.

A library that fails (OOM, an error, the hard timeout) gets a row with its status and the error's last line, and
the script goes on. Outputs: `--out PREFIX` writes PREFIX.json and PREFIX.md naming the card, date, commit
(`--commit`, since the GPU machine's copy has no .git), versions of torch, recbole and replay, and the command.

RecBole 1.2.1 on torch >= 2.6 and numpy 2 needs workarounds, applied here in the worker and never to its code:
numpy 2 removed `np.float_`, `np.complex_`, `np.unicode_`, which its `Config.compatibility_settings` reads (they are
set back as aliases), and its metrics use `np.float`/`np.bool` (which those settings then restore). RecBole's own
best-model checkpoint pickles its config, which `torch.load(weights_only=True)` refuses; the worker writes none and
keeps the best epoch's weights in memory instead (as for RePlay), so nothing is unpickled.

    python benchmarks/libraries_side_by_side.py --data .data/amazon-beauty/sequences.txt --dataset-name beauty \\
        --time-limit-s 100 --commit abc1234 --out benchmarks/results/libraries_beauty
    python benchmarks/libraries_side_by_side.py --dataset synthetic-1m --time-limit-s 100 --out /tmp/lib_1m
    python benchmarks/libraries_side_by_side.py --data seq.txt --max-users 2000 --epochs 2 --device cpu --out /tmp/t
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from cutrec.experiment import machine_name

LIBRARIES = ["cutrec", "cutrec-cce", "cutrec-cce-", "recbole-ce", "replay-ce", "replay-sce"]
CUTREC_LOSSES = {"cutrec": "CE", "cutrec-cce": "CCE", "cutrec-cce-": "CCE-"}  # library -> cutrec's --loss
DIM, BLOCKS, HEADS, DROPOUT, MAX_LEN, BATCH, LR, PATIENCE = 64, 1, 1, 0.2, 50, 128, 1e-3, 10


# ----------------------------------------------------------------------------------------------------------- data
def read_sequences(path: Path, max_users: int | None) -> list[list[int]]:
    """The file's item sequences (user ids dropped: the line order names the users), at most max_users of them."""
    sequences = []
    with path.open() as file:
        for line in file:
            words = line.split()
            if len(words) >= 2:
                sequences.append([int(word) for word in words[1:]])
            if max_users is not None and len(sequences) >= max_users:
                break
    return sequences


def write_synthetic(path: Path, num_users: int, num_items: int, num_clusters: int, mean_length: int) -> None:
    """cutrec's generator as a sequences file: each user's items in time order; only the touched items appear."""
    import numpy as np

    from cutrec.config import SyntheticConfig
    from cutrec.data.synthetic import synthetic_interactions

    log = synthetic_interactions(SyntheticConfig(
        num_users=num_users, num_items=num_items, num_clusters=num_clusters, mean_length=mean_length))
    order = np.lexsort((log.timestamps, log.users))  # [E] by user, then time
    users, items = log.users[order], log.items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])  # [U] first event of each user
    with path.open("w") as file:
        for user, chunk in zip(users[starts], np.split(items, starts[1:]), strict=True):
            file.write(f"{user} {' '.join(map(str, chunk.tolist()))}\n")


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, dict]:
    """The one sequences file every library reads (a user subset with --max-users), and its size."""
    work.mkdir(parents=True, exist_ok=True)
    if args.dataset == "synthetic-1m":
        source = work / "synthetic.txt"
        write_synthetic(source, args.synthetic_users, args.synthetic_items, args.synthetic_clusters,
                        args.synthetic_mean_length)
    else:
        source = Path(args.data)
    sequences = read_sequences(source, args.max_users)
    path = work / "sequences.txt"
    with path.open("w") as file:
        for user, items in enumerate(sequences):
            file.write(f"{user} {' '.join(map(str, items))}\n")
    info = {
        "users": len(sequences),
        "items": len({item for items in sequences for item in items}),
        "interactions": sum(map(len, sequences)),
    }
    return path, info


def events_frame(path: Path):
    """pandas frame [E, 3]: user_id, item_id, timestamp = the item's position in the user's sequence."""
    import pandas as pd

    users, items, positions = [], [], []
    for user, sequence in enumerate(read_sequences(path, None)):
        users += [user] * len(sequence)
        items += sequence
        positions += range(len(sequence))
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": positions})


# -------------------------------------------------------------------------------------------------------- workers
def cuda_sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_cutrec(args: argparse.Namespace, data: Path, work: Path, loss: str) -> dict:
    """`cutrec train --loss LOSS` in a further process; its log.csv and metrics.json give the numbers."""
    sampled = [f"--loss.num_negatives={args.negatives}", "--loss.distribution=uniform"] if loss == "CCE-" else []
    command = [
        sys.executable, "-m", "cutrec.cli", "train", f"--data={data}", "--data.format=sequences",
        f"--data.cache_dir={work / 'cache'}", "--dataset=side_by_side", f"--loss={loss}", *sampled, "--seed=0",
        f"--out={work}", "--name=cutrec", f"--epochs={args.epochs}", f"--train.patience={PATIENCE}",
        f"--train.time_limit_minutes={args.time_limit_s / 60}", "--model.name=sasrec", f"--model.dim={DIM}",
        f"--model.num_blocks={BLOCKS}", f"--model.num_heads={HEADS}", f"--model.dropout={DROPOUT}",
        f"--model.max_len={MAX_LEN}", f"--train.lr={LR}", f"--train.batch_size={BATCH}", "--train.progress=false",
        f"--device={args.device}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    (work / "cutrec.stderr.txt").write_text(result.stderr[-20000:])
    if result.returncode != 0:
        raise RuntimeError((result.stderr.strip().splitlines() or ["no stderr"])[-1])
    folder = work / "cutrec"
    metrics = json.loads((folder / "metrics.json").read_text())
    with (folder / "log.csv").open() as file:
        log = list(csv.DictReader(file))
    scores = next(value for key, value in metrics["test"].items() if key != "MostPopular")
    return {
        "train_seconds_per_epoch": statistics.mean(float(row["train_seconds"]) for row in log),
        "peak_train_gpu_mb": max(float(row["peak_train_gpu_mb"]) for row in log),
        "test_ndcg10": scores["NDCG@10"],
        "test_hr10": scores["HR@10"],
        "epochs_run": len(log),
        "best_epoch": metrics["best_epoch"],
        "capped": "train.time_limit_minutes=" in result.stderr,  # cutrec's stop reason, printed at the end
        "steps_per_epoch": -(-args.data_info["users"] // BATCH),
        "how_timed": "log.csv train_seconds (step loop, less CUDA graph capture)",
    }


def run_recbole(args: argparse.Namespace, data: Path, work: Path) -> dict:
    """RecBole 1.2.1 SASRec, CE, its Trainer and full-sort evaluation, on an atomic .inter file of the data."""
    import numpy as np

    # numpy 2 removed these aliases; RecBole's Config.compatibility_settings assigns np.float = np.float_ etc.
    for name, value in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if name not in np.__dict__:
            setattr(np, name, value)
    import recbole.trainer.trainer as trainer_module
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    folder = work / "recbole" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    frame = events_frame(data)
    frame.columns = ["user_id:token", "item_id:token", "timestamp:float"]
    frame.to_csv(folder / "data.inter", sep="\t", index=False)
    os.chdir(work)  # RecBole writes log/ and log_tensorboard/ into the working folder
    config = Config(model="SASRec", dataset="data", config_dict={
        "data_path": str(work / "recbole"), "checkpoint_dir": str(work / "recbole_saved"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": MAX_LEN, "n_layers": BLOCKS, "n_heads": HEADS, "hidden_size": DIM,
        "inner_size": DIM, "hidden_dropout_prob": DROPOUT, "attn_dropout_prob": DROPOUT, "hidden_act": "gelu",
        "loss_type": "CE", "train_neg_sample_args": None, "epochs": args.epochs, "train_batch_size": BATCH,
        "eval_batch_size": args.eval_batch_size, "learning_rate": LR, "learner": "adam", "stopping_step": PATIENCE,
        "valid_metric": "NDCG@10", "metrics": ["NDCG", "Hit"], "topk": [10], "eval_step": 1,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "seed": 0, "show_progress": False, "use_gpu": args.device != "cpu", "gpu_id": "0", "state": "WARNING",
        "save_dataset": False, "save_dataloaders": False,
    })
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    progress("data ready")
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    times, peaks, best = [], [], {"epoch": 0, "capped": False}
    started = time.perf_counter()
    steps = {"done": 0, "begin": started, "shown": started}  # the running epoch, for progress within a long one
    calculate_loss = model.calculate_loss

    def counted_loss(interaction):
        steps["done"] += 1
        now = time.perf_counter()
        if now - steps["shown"] >= 30:  # not synchronised: a timeout's row still shows the step rate
            elapsed = now - steps["begin"]
            progress(f"epoch {len(times) + 1}: {steps['done']} of {len(train_data)} steps in {elapsed:.1f} s")
            steps["shown"] = now
        return calculate_loss(interaction)

    model.calculate_loss = counted_loss

    class TimedTrainer(Trainer):
        def _train_epoch(self, *positional, **keywords):
            cuda_sync(torch)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            begin = time.perf_counter()
            steps.update(done=0, begin=begin, shown=begin)
            loss = super()._train_epoch(*positional, **keywords)
            cuda_sync(torch)
            times.append(time.perf_counter() - begin)
            peaks.append(torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0)
            progress(f"epoch {len(times)} trained in {times[-1]:.1f} s")
            return loss

    original_stopping = trainer_module.early_stopping

    def early_stopping(value, best_value, cur_step, max_step, bigger=True):
        """RecBole's patience rule, plus the time cap: stop after the epoch that passes --time-limit-s."""
        best_value, cur_step, stop, update = original_stopping(value, best_value, cur_step, max_step, bigger)
        if update:  # the best weights stay in memory: no checkpoint file, so nothing is unpickled
            best["epoch"] = len(times)
            best["state"] = {key: value.detach().clone() for key, value in model.state_dict().items()}
        if not stop and time.perf_counter() - started > args.time_limit_s:
            stop, best["capped"] = True, True
        return best_value, cur_step, stop, update

    trainer_module.early_stopping = early_stopping
    trainer = TimedTrainer(config, model)
    trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    model.load_state_dict(best["state"])
    result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    return {
        "train_seconds_per_epoch": statistics.mean(times),
        "peak_train_gpu_mb": max(peaks),
        "test_ndcg10": float(result["ndcg@10"]),
        "test_hr10": float(result["hit@10"]),
        "epochs_run": len(times),
        "best_epoch": best["epoch"],
        "capped": best["capped"],
        "steps_per_epoch": len(train_data),
        "how_timed": "Trainer._train_epoch (synchronised); one row per training interaction",
    }


def run_replay(args: argparse.Namespace, data: Path, work: Path, sampled: bool) -> dict:
    """RePlay SasRec (Lightning) with CE or its sampled CE, validation NDCG@10 each epoch, best weights tested."""
    import copy
    import warnings

    warnings.filterwarnings("ignore")  # the replay.models.nn API is deprecated in 0.22 (still shipped, still works)
    import lightning
    import torch
    from replay.data import Dataset, FeatureHint, FeatureInfo, FeatureSchema, FeatureSource, FeatureType
    from replay.data.nn import (
        SequenceTokenizer,
        SequentialDataset,
        TensorFeatureInfo,
        TensorFeatureSource,
        TensorSchema,
    )
    from replay.models.nn.optimizer_utils import FatOptimizerFactory
    from replay.models.nn.sequential.callbacks import ValidationMetricsCallback
    from replay.models.nn.sequential.postprocessors import RemoveSeenItems
    from replay.models.nn.sequential.sasrec import SasRec, SasRecTrainingDataset, SasRecValidationDataset

    events = events_frame(data)  # [E, 3]
    position_from_end = events.groupby("user_id").cumcount(ascending=False)  # [E] 0 = the user's last item
    train_events = events[position_from_end >= 2]
    valid_input, valid_target = train_events, events[position_from_end == 1]
    test_input, test_target = events[position_from_end >= 1], events[position_from_end == 0]

    tensor_schema = TensorSchema(TensorFeatureInfo(
        name="item_id_seq", is_seq=True, feature_type=FeatureType.CATEGORICAL,
        feature_sources=[TensorFeatureSource(FeatureSource.INTERACTIONS, "item_id")],
        feature_hint=FeatureHint.ITEM_ID, embedding_dim=DIM))
    feature_schema = FeatureSchema([
        FeatureInfo(column="user_id", feature_type=FeatureType.CATEGORICAL, feature_hint=FeatureHint.QUERY_ID),
        FeatureInfo(column="item_id", feature_type=FeatureType.CATEGORICAL, feature_hint=FeatureHint.ITEM_ID),
        FeatureInfo(column="timestamp", feature_type=FeatureType.NUMERICAL, feature_hint=FeatureHint.TIMESTAMP),
    ])

    def dataset(frame):
        return Dataset(feature_schema=feature_schema, interactions=frame.reset_index(drop=True),
                       check_consistency=True, categorical_encoded=False)

    tokenizer = SequenceTokenizer(tensor_schema, allow_collect_to_master=True)
    tokenizer.fit(dataset(events))  # the whole catalog, so validation and test targets have ids
    item_feature = tensor_schema.item_id_feature_name
    sequential_train = tokenizer.transform(dataset(train_events))

    def evaluation(inputs, targets):
        """A validation data set (inputs, one target each) and the seen-items filter of its inputs."""
        sequential = tokenizer.transform(dataset(inputs))
        truth = tokenizer.transform(dataset(targets), [item_feature])
        sequential, truth = SequentialDataset.keep_common_query_ids(sequential, truth)
        loader = torch.utils.data.DataLoader(
            SasRecValidationDataset(sequential, truth, sequential_train, max_sequence_length=MAX_LEN),
            batch_size=args.eval_batch_size, shuffle=False)
        return loader, RemoveSeenItems(sequential)

    valid_loader, valid_seen = evaluation(valid_input, valid_target)
    test_loader, test_seen = evaluation(test_input, test_target)
    train_loader = torch.utils.data.DataLoader(
        SasRecTrainingDataset(sequential_train, max_sequence_length=MAX_LEN), batch_size=BATCH, shuffle=True)
    progress("data ready")
    torch.manual_seed(0)
    model = SasRec(
        tensor_schema, block_count=BLOCKS, head_count=HEADS, hidden_size=DIM, max_seq_len=MAX_LEN,
        dropout_rate=DROPOUT, loss_type="CE", loss_sample_count=args.negatives if sampled else None,
        optimizer_factory=FatOptimizerFactory(learning_rate=LR, betas=(0.9, 0.999)))
    record = {"times": [], "peaks": [], "best": -1.0, "best_epoch": 0, "state": None, "capped": False, "bad": 0}
    started = time.perf_counter()

    class Measure(lightning.Callback):
        """Times each epoch's training part, keeps the best weights, early-stops on patience or the time cap."""

        def on_train_epoch_start(self, trainer, module):
            cuda_sync(torch)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            self.begin = time.perf_counter()

        def on_validation_start(self, trainer, module):
            if trainer.sanity_checking:
                return
            cuda_sync(torch)
            record["times"].append(time.perf_counter() - self.begin)
            record["peaks"].append(torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0)

        def on_validation_end(self, trainer, module):
            score = float(trainer.callback_metrics["ndcg@10"])
            progress(f"epoch {len(record['times'])} trained in {record['times'][-1]:.1f} s, valid NDCG@10 {score:.4f}")
            if score > record["best"]:
                record.update(best=score, best_epoch=len(record["times"]), bad=0,
                              state=copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()}))
            else:
                record["bad"] += 1
            if record["bad"] >= PATIENCE:
                trainer.should_stop = True
            elif time.perf_counter() - started > args.time_limit_s and len(record["times"]) < args.epochs:
                trainer.should_stop, record["capped"] = True, True

    accelerator = "cpu" if args.device == "cpu" else "gpu"
    common = {"accelerator": accelerator, "devices": 1, "logger": False, "enable_checkpointing": False,
              "enable_progress_bar": False, "enable_model_summary": False}
    trainer = lightning.Trainer(
        max_epochs=args.epochs, num_sanity_val_steps=0,
        callbacks=[ValidationMetricsCallback(metrics=["ndcg", "recall"], ks=[10], postprocessors=[valid_seen]),
                   Measure()], **common)
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=valid_loader)
    model.load_state_dict(record["state"])
    tester = lightning.Trainer(
        callbacks=[ValidationMetricsCallback(metrics=["ndcg", "recall"], ks=[10], postprocessors=[test_seen])],
        **common)
    with contextlib.redirect_stdout(sys.stderr):  # the callback prints its table
        result = tester.validate(model, dataloaders=test_loader)[0]
    return {
        "train_seconds_per_epoch": statistics.mean(record["times"]),
        "peak_train_gpu_mb": max(record["peaks"]),
        "test_ndcg10": float(result["ndcg@10"]),
        "test_hr10": float(result["recall@10"]),
        "epochs_run": len(record["times"]),
        "best_epoch": record["best_epoch"],
        "capped": record["capped"],
        "steps_per_epoch": len(train_loader),
        "how_timed": "Lightning on_train_epoch_start to on_validation_start (synchronised)",
    }


PROGRESS = "progress: "  # a worker's stderr lines that say how far it got (a timeout's row quotes the last)
WORKER_STARTED = time.perf_counter()


def progress(message: str) -> None:
    print(f"{PROGRESS}{time.perf_counter() - WORKER_STARTED:.0f} s: {message}", file=sys.stderr, flush=True)


def worker(args: argparse.Namespace) -> None:
    """One library, in this process; the row goes to --result as json."""
    work, data = Path(args.work), Path(args.worker_data)
    args.data_info = json.loads(args.data_info)
    runners = {
        **{library: (lambda loss=loss: run_cutrec(args, data, work, loss)) for library, loss in CUTREC_LOSSES.items()},
        "recbole-ce": lambda: run_recbole(args, data, work),
        "replay-ce": lambda: run_replay(args, data, work, sampled=False),
        "replay-sce": lambda: run_replay(args, data, work, sampled=True),
    }
    row = runners[args.worker]()
    Path(args.result).write_text(json.dumps(row))


# ------------------------------------------------------------------------------------------------------- driver
def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run_library(args: argparse.Namespace, library: str, data: Path, info: dict, root: Path) -> dict:
    work = root / library
    work.mkdir(parents=True, exist_ok=True)
    result = work / "result.json"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", library, "--worker-data", str(data),
        "--work", str(work), "--result", str(result), "--data-info", json.dumps(info),
        "--device", args.device, "--epochs", str(args.epochs), "--time-limit-s", str(args.time_limit_s),
        "--negatives", str(args.negatives), "--eval-batch-size", str(args.eval_batch_size),
    ]
    label = {"cutrec": "cutrec CE", "cutrec-cce": "cutrec CCE",
             "cutrec-cce-": f"cutrec CCE- ({args.negatives} negatives)", "recbole-ce": "RecBole CE",
             "replay-ce": "RePlay CE", "replay-sce": f"RePlay sampled CE ({args.negatives} negatives)"}[library]
    row = {"library": library, "label": label}
    started = time.perf_counter()
    try:
        process = subprocess.run(command, capture_output=True, text=True, timeout=args.time_limit_s + args.grace_s)
    except subprocess.TimeoutExpired as error:
        stderr = error.stderr.decode() if isinstance(error.stderr, bytes) else (error.stderr or "")
        (work / "stderr.txt").write_text(stderr[-50000:])
        reached = [line[len(PROGRESS):] for line in stderr.splitlines() if line.startswith(PROGRESS)]
        return {**row, "status": "timeout", "error": f"no result within {args.time_limit_s + args.grace_s} s "
                f"(last progress: {reached[-1] if reached else 'none'})", "wall_seconds": time.perf_counter() - started}
    (work / "stderr.txt").write_text(process.stderr[-50000:])
    row["wall_seconds"] = time.perf_counter() - started
    if process.returncode != 0 or not result.exists():
        lines = [line for line in process.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {process.returncode}"
        status = "OOM" if "out of memory" in process.stderr.lower() else "error"
        return {**row, "status": status, "error": last[:400]}
    return {**row, "status": "ok", **json.loads(result.read_text())}


def markdown(report: dict) -> str:
    info = report["data"]
    lines = [
        f"# SASRec side by side: cutrec, RecBole, RePlay on {report['dataset']}",
        "",
        f"Machine: {report['device_name']}; date: {report['date']}; commit: {report['commit']}; torch "
        f"{report['versions']['torch']}, recbole {report['versions']['recbole']}, replay-rec "
        f"{report['versions']['replay-rec']}, lightning {report['versions']['lightning']}, numpy "
        f"{report['versions']['numpy']}, pandas {report['versions']['pandas']}.",
        "",
        f"Data: {info['users']:,} users, {info['items']:,} items present, {info['interactions']:,} interactions; "
        "leave-one-out; full ranking, seen items excluded. Settings: dim 64, 1 block, 1 head, dropout 0.2, max_len "
        f"50, batch 128, lr 1e-3, Adam (0.9, 0.999); patience 10 on validation NDCG@10, <= {report['epochs']} "
        f"epochs, training loop capped at {report['time_limit_s']:.0f} s per library. Training s/epoch: the "
        "training steps only (validation excluded), mean over epochs; peak: max over epochs of the training part.",
        "",
        f"Command: `{report['command']}`",
        "",
        "| library | status | NDCG@10 | HR@10 | train s / epoch | steps / epoch | peak train GPU MB | epochs run "
        "| best epoch | capped | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | {r['status']}: {r['error']} | | | | | | | | | "
                         f"{r.get('wall_seconds', 0):.0f} |")
            continue
        lines.append(
            f"| {r['label']} | ok | {r['test_ndcg10']:.4f} | {r['test_hr10']:.4f} | "
            f"{r['train_seconds_per_epoch']:.2f} | {r['steps_per_epoch']:,} | {r['peak_train_gpu_mb']:.0f} | "
            f"{r['epochs_run']} | {r['best_epoch']} | {'yes' if r['capped'] else 'no'} | {r['wall_seconds']:.0f} |")
    lines += ["", "How each library's training time was taken:", ""]
    lines += [f"- {r['label']}: {r['how_timed']}" for r in report["rows"] if r["status"] == "ok"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=".data/amazon-beauty/sequences.txt", help="a cutrec sequences file")
    parser.add_argument("--dataset", default=None, help="synthetic-1m: generate the data with cutrec's generator")
    parser.add_argument("--dataset-name", default=None, help="the name in the report (default: from the path)")
    parser.add_argument("--libraries", nargs="+", default=LIBRARIES, choices=LIBRARIES)
    parser.add_argument("--max-users", type=int, default=None, help="the first N users only (tests)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--time-limit-s", type=float, default=100.0, help="per library: training loop cap")
    parser.add_argument("--grace-s", type=float, default=150.0, help="per library: hard timeout beyond the cap")
    parser.add_argument("--negatives", type=int, default=256,
                        help="RePlay sampled CE: loss_sample_count; cutrec CCE-: loss.num_negatives")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="users per evaluation batch")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--synthetic-users", type=int, default=50_000)
    parser.add_argument("--synthetic-items", type=int, default=1_000_000)
    parser.add_argument("--synthetic-clusters", type=int, default=2000)
    parser.add_argument("--synthetic-mean-length", type=int, default=30)
    parser.add_argument("--work-dir", default=None, help="a new or empty folder (default: a temporary one)")
    parser.add_argument("--commit", default="unknown (pass --commit)")
    parser.add_argument("--out", default="benchmarks/results/libraries_side_by_side")
    # the worker's own arguments (the driver starts one process per library with these)
    parser.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--worker-data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--data-info", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        worker(args)
        return
    if args.work_dir and Path(args.work_dir).is_dir() and any(Path(args.work_dir).iterdir()):
        sys.exit(f"--work-dir {args.work_dir!r} is not empty (an earlier run's folders would clash); pass a new folder")
    name = args.dataset_name or args.dataset or Path(args.data).parent.name
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as temporary:
        root = Path(args.work_dir or temporary)
        data, info = prepare(args, root / "data")
        print(f"{name}: {info['users']:,} users, {info['items']:,} items, {info['interactions']:,} interactions",
              flush=True)
        rows: list[dict] = []
        for library in args.libraries:
            rows.append(run_library(args, library, data, info, root))
            print(json.dumps(rows[-1]), flush=True)
            report = write_report(args, name, info, rows)  # after every library, so a cut run keeps its rows
    print(markdown(report))


def write_report(args: argparse.Namespace, name: str, info: dict, rows: list[dict]) -> dict:
    """PREFIX.json and PREFIX.md of the rows so far."""
    import torch

    report = {
        "dataset": name,
        "data": info,
        "device": args.device,
        "device_name": machine_name(args.device),
        "date": str(date.today()),
        "commit": args.commit,
        "epochs": args.epochs,
        "time_limit_s": args.time_limit_s,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            **{key: version(key) for key in ("recbole", "replay-rec", "lightning", "numpy", "pandas", "polars")},
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    Path(f"{args.out}.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
