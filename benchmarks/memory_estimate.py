"""Memory estimate against measured peak training memory, side by side, for CE, CE-, CCE and CCE- at several sizes.

Each case runs in its own process, as `cutrec train` would: it builds the model, optimizer and loss of the config
with the trainer's own functions (`new_state`, `build_loss`, `TrainStep`), trains up to --max-steps steps of one
epoch's batches, and reads torch.cuda.max_memory_allocated (everything the process allocated through PyTorch,
including the CUDA libraries' workspaces; the CUDA context itself is not in it). The estimate is
cutrec.train.memory.estimate for the same config and the same sequence lengths, computed before the first step.
A case that runs out of memory is reported as such, next to its estimate and the card's memory. Cases run with
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, which the `cutrec` command sets unless the user set it.

Sizes: Amazon Beauty and Toys (--beauty/--toys PATH to their sequences files; 12,101 and 11,924 items), and a
1,000,000-item catalog whose sequence lengths are those of the built-in synthetic generator (20,000 users) and
whose items are uniform ids. The first twelve cases are the grid; the rest check settings (width, heads, blocks,
negatives, BERT4Rec, fp32) that the estimator's constants were not read from.

    python benchmarks/memory_estimate.py --beauty .data/amazon-beauty/sequences.txt \
        --toys .data/amazon-toys/sequences.txt --out benchmarks/results/memory_estimate
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np

from cutrec.experiment import git_commit

LOSSES = ["CE", "CE-", "CCE", "CCE-"]
MODEL = ["model.dim=64", "model.num_blocks=2", "model.num_heads=1", "model.max_len=50", "loss.num_negatives=256"]


def cases(args: argparse.Namespace) -> list[dict]:
    """The issue's grid (4 losses x 3 sizes), then checks at settings that the constants were not read from."""
    def case(data: str, batch: int, loss: str, *extra: str) -> dict:
        return {"data": data, "batch": batch, "loss": loss, "extra": list(extra)}

    listed = [case(data, batch, loss) for data, batch in [("beauty", 128), ("1M items", 128), ("1M items", 512)]
              for loss in LOSSES]
    listed += [
        case("1M items", 256, "CE"),
        case("1M items", 128, "CE-", "loss.num_negatives=1024"),
        case("1M items", 256, "CCE-", "model.name=bert4rec"),
        case("toys", 256, "CE", "model.dim=128", "model.num_heads=2"),
        case("toys", 256, "CE-", "model.dim=128", "model.num_heads=2"),
        case("toys", 256, "CCE-", "model.dim=128", "model.num_heads=2", "model.num_blocks=3"),
        case("beauty", 512, "CE", "model.name=bert4rec"),
        case("beauty", 128, "CE-", "train.amp=false"),
    ]
    files = {"beauty": args.beauty, "toys": args.toys}
    return [c for c in listed if c["data"] not in files or files[c["data"]]]


def sequences(data: str, files: dict[str, str | None]):
    """(num_items, train Sequences) of a size."""
    from cutrec.config import SyntheticConfig
    from cutrec.data.preprocess import preprocess
    from cutrec.data.readers import read_sequences
    from cutrec.data.splits import Sequences, leave_one_out
    from cutrec.data.synthetic import synthetic_interactions

    if data in files:
        split = leave_one_out(preprocess(read_sequences(files[data])))
        return split.num_items, split.train
    num_items = 1_000_000
    lengths = np.diff(leave_one_out(preprocess(synthetic_interactions(SyntheticConfig(num_users=20000)))).train.offsets)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.random.default_rng(0).integers(0, num_items, int(offsets[-1])).astype(np.int32)
    return num_items, Sequences(offsets=offsets, items=items, users=np.arange(len(lengths)))


def measure(case: dict, files: dict[str, str | None], max_steps: int) -> dict:
    """Train one case in this process; the estimate, the measured peak and the largest M seen."""
    import torch

    from cutrec.config import build_config
    from cutrec.data.batches import IGNORE_INDEX, epoch_order, num_batches
    from cutrec.losses import build_loss
    from cutrec.train.loop import new_state
    from cutrec.train.memory import batch_positions, estimate
    from cutrec.train.step import TrainStep

    device = torch.device("cuda")
    num_items, train = sequences(case["data"], files)
    config = build_config(None, [*MODEL, f"loss.name={case['loss']}", f"train.batch_size={case['batch']}",
                                 *case["extra"]])
    lengths = np.diff(train.offsets)
    predicted = estimate(config, num_items, lengths, case["batch"])
    result = {**case, "num_items": num_items, "estimate_mb": predicted.total / 2**20,
              "estimate_parts_mb": {k: v / 2**20 for k, v in predicted.parts.items()},
              "estimate_positions": predicted.positions,
              "card_mb": torch.cuda.get_device_properties(device).total_memory / 2**20}
    torch.manual_seed(0)
    state = new_state(config, num_items, device)
    loss_fn = build_loss(config.loss, num_items, torch.ones(num_items, device=device))
    step = TrainStep(state, state.model, loss_fn, config, device, num_items,
                     rows=batch_positions(config, lengths, case["batch"]), batch_size=case["batch"])
    order = epoch_order(train, min_length=state.model.min_train_length, rng=state.batch_rng)
    steps = min(num_batches(order, case["batch"]), max_steps)
    largest_m = 0
    torch.cuda.reset_peak_memory_stats(device)
    try:
        for batch in range(steps):
            rows = order[batch * case["batch"] : (batch + 1) * case["batch"]]
            inputs, targets = state.model.training_batch(train, rows, state.batch_rng)
            largest_m = max(largest_m, int((targets != IGNORE_INDEX).sum()))
            step.run(inputs, targets)
            state.step += 1
        torch.cuda.synchronize()
        # a CUDA graph allocates at capture only: its peak counts too
        result["measured_mb"] = max(torch.cuda.max_memory_allocated(device), step.graph_peak_bytes) / 2**20
        result["after_steps_mb"] = torch.cuda.memory_allocated(device) / 2**20  # weights, moments, gradients
    except torch.cuda.OutOfMemoryError as err:
        result["measured_mb"] = None
        result["out_of_memory"] = str(err).splitlines()[0]  # what was allocated when it failed
    result.update(steps=steps, largest_positions=largest_m, device=torch.cuda.get_device_name(device),
                  torch=torch.__version__)
    return result


def markdown(results: list[dict], header: str) -> str:
    lines = [header, "", "| data | items | model | batch | loss | M est. / max seen | estimate MB | measured MB | "
             "estimate / measured |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        model = " ".join(r["extra"]) or "sasrec"
        if r["measured_mb"] is None:  # r["out_of_memory"] holds the allocator's message
            measured, ratio = f"out of memory (card {r['card_mb']:,.0f})", (
                "estimate > card" if r["estimate_mb"] > r["card_mb"] else "estimate fits the card: WRONG")
        else:
            measured, ratio = f"{r['measured_mb']:,.0f}", f"{r['estimate_mb'] / r['measured_mb']:.2f}"
        lines.append(f"| {r['data']} | {r['num_items']:,} | {model} | {r['batch']} | {r['loss']} | "
                     f"{r['estimate_positions']:,} / {r['largest_positions']:,} | {r['estimate_mb']:,.0f} | "
                     f"{measured} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beauty", help="Amazon Beauty's sequences file (its cases are skipped without it)")
    parser.add_argument("--toys", help="Amazon Toys' sequences file (its cases are skipped without it)")
    parser.add_argument("--max-steps", type=int, default=200, help="steps per case (at most one epoch)")
    parser.add_argument("--out", default="benchmarks/results/memory_estimate")
    parser.add_argument("--commit", default=None, help="the measured commit (the device's tree has no .git)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print its json
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(json.loads(args.case), {"beauty": args.beauty, "toys": args.toys}, args.max_steps)))
        return
    results = []
    for case in cases(args):
        command = [sys.executable, __file__, "--case", json.dumps(case), "--max-steps", str(args.max_steps)]
        command += [f"--{name}={path}" for name, path in (("beauty", args.beauty), ("toys", args.toys)) if path]
        allocator = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", **os.environ}  # as `cutrec` sets it
        done = subprocess.run(command, capture_output=True, text=True, env=allocator)
        if done.returncode != 0:
            raise SystemExit(f"case {case} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(markdown(results[-1:], "").splitlines()[-1], flush=True)
    commit = args.commit or git_commit()
    header = (f"# Estimated against measured peak training memory\n\nCard: {results[0]['device']}; torch "
              f"{results[0]['torch']}; date {date.today()}; commit {commit}; SASRec unless named, 2 blocks, dim 64, "
              f"max_len 50, 256 negatives, bf16 autocast unless train.amp=false; up to {args.max_steps} steps of one "
              "epoch per case, each in a fresh process. M: target positions per batch (the estimate's bound, and "
              "the largest seen).")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"commit": commit, "results": results}, indent=2) + "\n")
    Path(f"{args.out}.md").write_text(markdown(results, header))
    print(Path(f"{args.out}.md").read_text())


if __name__ == "__main__":
    main()
