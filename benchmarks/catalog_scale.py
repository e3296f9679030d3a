"""Catalog-parallel cut CE and CCE- on the largest catalogs: one loss step with the item table's Adam state, the
table split by rows over G ranks (torchrun; NCCL on GPUs, gloo on the CPU), against the plain single-device loss
where the whole table still fits one card.

A step of G ranks: each rank's hidden states [R, D] (R = rows / G, random, requiring a gradient as an encoder's
output would) gathered into [rows, D] and scored against every shard [N / G, D] by the trainer's own
`train.catalog_parallel.CatalogParallelLoss` (cut CE, or CCE- with each shard drawing its share of the K uniform
negatives), the backward, and the trainer's fused Adam step (`train.step.make_optimizer`) on the shard, under bf16
autocast on CUDA as in training. The plain path is the same step without torchrun: `losses.build_loss` on the whole
table. The encoder is left out: this measures what the catalog costs, which is all that grows with N.

Floor per card: the table, its gradient and Adam's two moments, fp32: 16 N D / G bytes (205 GB at 100M x 128, so
one 141 GB H200 holds about 60M items of dim 128 and two hold 100M); the step adds the gathered hidden states,
their gradient and the loss's per-row buffers, O(rows x D). A run whose floor alone exceeds the card's memory is a
skipped row; one that runs out of memory anyway is an OOM row. Reported per run: the median step time over
`--steps` timed steps (after 3 warm-up steps; each step synchronised), and the peak GPU memory of the rank that
peaked highest (`max_memory_allocated` over the whole process: table, Adam state and the steps) beside the floor.

    python benchmarks/catalog_scale.py --items 10M 25M 50M 60M 100M 200M --gpus 1 2 4 8 --commit C \\
        --out benchmarks/results/catalog_scale_h200
    python benchmarks/catalog_scale.py --device cpu --items 20000 --gpus 1 2 --dim 16 --rows 256 --out /tmp/cs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import torch

from cutrec.experiment import machine_name

RESULT = "RESULT "  # the line a worker prints (rank 0) with its measurement as JSON


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", nargs="+", default=["10M", "50M"], help="catalog sizes, e.g. 2000 10M 200M")
    parser.add_argument("--gpus", nargs="+", type=int, default=[1, 2, 4, 8], help="ranks of the catalog-parallel runs")
    parser.add_argument("--losses", nargs="+", default=["CCE", "CCE-"], choices=["CCE", "CCE-"])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rows", type=int, default=32768, help="the step's hidden rows over all ranks (batch x len)")
    parser.add_argument("--negatives", type=int, default=1023, help="CCE-: K over the whole catalog")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per run")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", help="writes OUT.json and OUT.md")
    parser.add_argument("--worker", choices=["plain", "parallel"], help=argparse.SUPPRESS)
    parser.add_argument("--num-items", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--loss", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not args.out:
        parser.error("--out is required")
    rows = [run(args, loss, parse_count(items), ranks, path)
            for loss in args.losses for items in args.items for ranks in args.gpus
            for path in (("plain", "parallel") if ranks == 1 else ("parallel",))]
    write(args, rows)


def parse_count(text: str) -> int:
    """'50M' -> 50_000_000, '20k' -> 20_000, '1234' -> 1234."""
    scale = {"k": 10**3, "M": 10**6}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def run(args: argparse.Namespace, loss: str, num_items: int, ranks: int, path: str) -> dict:
    """One measurement in its own process tree; a row with its status when it cannot run or fails."""
    row = {"loss": loss, "items": num_items, "ranks": ranks, "path": path,
           "floor_gb_per_card": 16 * num_items * args.dim / ranks / 1e9}
    if args.device == "cuda":
        if ranks > torch.cuda.device_count():
            return {**row, "status": f"skipped: the machine has {torch.cuda.device_count()} GPUs"}
        card = torch.cuda.get_device_properties(0).total_memory / 1e9
        if row["floor_gb_per_card"] > card:
            return {**row, "status": f"skipped: the table, its gradient and Adam state need "
                                     f"{row['floor_gb_per_card']:.0f} GB per card, the card has {card:.0f}"}
    own = [os.path.abspath(__file__), "--worker", path, "--num-items", str(num_items), "--loss", loss,
           "--dim", str(args.dim), "--rows", str(args.rows), "--negatives", str(args.negatives),
           "--steps", str(args.steps), "--device", args.device]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
                if path == "parallel" else [sys.executable])
    try:
        done = subprocess.run([*launcher, *own], capture_output=True, text=True, timeout=args.timeout_s,
                              env={**os.environ, "OMP_NUM_THREADS": "1"} if args.device == "cpu" else None)
    except subprocess.TimeoutExpired:
        return {**row, "status": f"timeout after {args.timeout_s:.0f} s"}
    found = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode == 0 and found:
        row = {**row, "status": "ok", **json.loads(found[-1][len(RESULT):])}
    elif "out of memory" in done.stderr:
        row = {**row, "status": "OOM"}
    else:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        row = {**row, "status": f"failed (exit {done.returncode}): {last}"}
    print(row, file=sys.stderr)
    return row


def worker(args: argparse.Namespace) -> None:
    """One run's step, timed (rank 0 prints the RESULT line with the largest rank's peak memory)."""
    from torch import nn

    from cutrec import distributed
    from cutrec.config import LossConfig, RunConfig
    from cutrec.losses import build_loss
    from cutrec.losses.catalog_parallel import shard_bounds
    from cutrec.train.catalog_parallel import CatalogParallelLoss
    from cutrec.train.step import make_optimizer

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())
    ranks = distributed.start(device, 10.0) if args.worker == "parallel" else distributed.SINGLE
    config = LossConfig(name=args.loss, num_negatives=args.negatives)
    generator = torch.Generator(device).manual_seed(ranks.rank)
    if args.worker == "parallel":
        start, stop = shard_bounds(args.num_items, ranks)
        model = SimpleNamespace(item_embedding=SimpleNamespace(start=start), num_items=args.num_items)
        loss_fn = CatalogParallelLoss(model, ranks, config, item_counts=None)
    else:
        start, stop = 0, args.num_items
        loss_fn = build_loss(config, args.num_items)
    table = nn.Parameter(torch.randn(stop - start, args.dim, device=device, generator=generator) * 0.02)  # [N_r, D]
    optimizer = make_optimizer(RunConfig(), nn.ParameterList([table]), device)
    rows = args.rows // ranks.world  # this rank's hidden rows R

    def step(index: int) -> float:
        hidden = torch.randn(rows, args.dim, device=device, generator=generator, requires_grad=True)  # [R, D]
        targets = torch.randint(0, args.num_items, (rows,), device=device, generator=generator)  # [R]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(hidden, table, targets, seed=index)
            loss = loss.mean()  # the plain losses and CatalogParallelLoss both give the step's mean
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss)

    first = step(0)  # the random table's loss, about log N: a check that the step scores the whole catalog
    for index in range(1, 3):  # warm-up: kernel compilation, Adam's state
        step(index)
    times = []
    for index in range(3, 3 + args.steps):
        distributed.barrier(ranks)
        begin = time.perf_counter()
        step(index)
        times.append(time.perf_counter() - begin)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
    peaks = distributed.gather_objects(peak, ranks)
    if ranks.main:
        print(RESULT + json.dumps({"step_ms": 1e3 * statistics.median(times), "peak_gb_per_card": max(peaks),
                                   "first_loss": first, "shard_rows": stop - start}), flush=True)
    distributed.finish()


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    header = {"machine": machine_name(), "date": str(date.today()), "commit": args.commit, "dim": args.dim,
              "rows": args.rows, "negatives": args.negatives, "steps": args.steps, "command": " ".join(sys.argv)}
    Path(f"{args.out}.json").write_text(json.dumps({**header, "results": rows}, indent=2) + "\n")
    lines = [
        "# Catalog-parallel cut CE and CCE- on large catalogs", "",
        f"Machine: {header['machine']}; date: {header['date']}; commit: {args.commit}; torch {torch.__version__}. "
        f"D {args.dim}, {args.rows:,} hidden rows a step over all ranks, CCE- with {args.negatives} uniform "
        f"negatives, share none; median of {args.steps} steps (forward, backward, fused Adam on the table)"
        + ("; on the CPU every rank runs one thread (OMP_NUM_THREADS=1)." if args.device == "cpu" else "."),
        f"Command: `python benchmarks/catalog_scale.py {' '.join(sys.argv[1:])}`", "",
        "| loss | items | ranks | path | step ms | peak GB per card | floor GB per card (table, grad, Adam) | "
        "first step's loss (log N) | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        step_ms = peak = loss = ""
        if r["status"] == "ok":
            step_ms, loss = f"{r['step_ms']:.1f}", f"{r['first_loss']:.3f}"
            peak = "" if math.isnan(r["peak_gb_per_card"]) else f"{r['peak_gb_per_card']:.1f}"  # NaN on the CPU
        lines.append(f"| {r['loss']} | {r['items']:,} | {r['ranks']} | {r['path']} | {step_ms} | {peak} | "
                     f"{r['floor_gb_per_card']:.1f} | {loss} ({math.log(r['items']):.3f}) | {r['status']} |")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
