"""Epoch time with fixed-size against expandable CUDA allocator segments, side by side in one run.

Each setting is one `cutrec train` process with PYTORCH_CUDA_ALLOC_CONF set explicitly; settings alternate, so the
machine's drift hits both. The table gives the median training seconds of the epochs after the first (the first
compiles kernels and fills the allocator's cache) and the peak training memory.

    python benchmarks/allocator_speed.py --beauty .data/amazon-beauty/sequences.txt --repeats 3 \
        --out benchmarks/results/allocator_speed
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

SETTINGS = ["expandable_segments:False", "expandable_segments:True"]
COMMON = ["--model.num_blocks=1", "--model.num_heads=1", "--model.dim=64", "--train.progress=false",
          "--train.batch_size=128", "--train.patience=100"]


def workloads(beauty: str | None) -> dict[str, list[str]]:
    listed = {"synthetic 1M items, CCE-": ["--loss=CCE-", "--data.synthetic.num_items=1000000",
                                          "--data.synthetic.num_users=20000", "--data.synthetic.num_clusters=2000"]}
    if beauty:
        listed = {"Beauty, CE": [f"--data={beauty}", "--data.format=sequences", "--loss=CE"], **listed}
    return listed


def run(arguments: list[str], setting: str, epochs: int, out: Path, name: str) -> dict:
    command = [sys.executable, "-m", "cutrec.cli", "train", *COMMON, *arguments, f"--epochs={epochs}",
               f"--out={out}", f"--name={name}"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ,
                                                                        "PYTORCH_CUDA_ALLOC_CONF": setting})
    if done.returncode != 0:
        raise SystemExit(f"{command} failed:\n{done.stderr[-2000:]}")
    with (out / name / "log.csv").open() as file:
        rows = list(csv.DictReader(file))
    return {"train_seconds": [float(r["train_seconds"]) for r in rows[1:]],
            "peak_mb": max(float(r["peak_train_gpu_mb"]) for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beauty", help="Amazon Beauty's sequences file (its workload is skipped without it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", default="benchmarks/results/allocator_speed")
    args = parser.parse_args()
    import torch

    results = []
    with tempfile.TemporaryDirectory() as runs:
        for workload, arguments in workloads(args.beauty).items():
            seconds = {s: [] for s in SETTINGS}
            peaks = {s: 0.0 for s in SETTINGS}
            for repeat in range(args.repeats):
                for setting in SETTINGS:
                    measured = run(arguments, setting, args.epochs, Path(runs), f"{len(results)}-{repeat}-{setting}")
                    seconds[setting] += measured["train_seconds"]
                    peaks[setting] = max(peaks[setting], measured["peak_mb"])
            for setting in SETTINGS:
                results.append({"workload": workload, "setting": setting, "epochs_timed": len(seconds[setting]),
                                "median_train_seconds": statistics.median(seconds[setting]),
                                "peak_train_gpu_mb": peaks[setting]})
                print(results[-1], flush=True)
    header = (f"# Epoch time by allocator setting\n\nCard: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; "
              f"date {date.today()}; commit {args.commit}; SASRec 1 block, dim 64, batch 128; {args.repeats} runs of "
              f"{args.epochs} epochs per setting, alternating; median of the epochs after the first.")
    lines = [header, "", "| workload | PYTORCH_CUDA_ALLOC_CONF | epochs timed | median train s | peak train GPU MB |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['workload']} | {r['setting']} | {r['epochs_timed']} | {r['median_train_seconds']:.3f} | "
              f"{r['peak_train_gpu_mb']:,.0f} |" for r in results]
    Path(f"{args.out}.json").write_text(json.dumps({"commit": args.commit, "results": results}, indent=2) + "\n")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
