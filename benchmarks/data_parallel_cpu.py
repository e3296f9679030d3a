"""Data parallel on the CPU with gloo: seconds per epoch of one small config trained by 1, 2 and 4 processes.

Every run is `cutrec train` in its own process tree, one after the other: one process with the machine's default
threads, one process with one thread, and `--devices 2` and `--devices 4` (torchrun gives each rank one thread).
The global batch is the same in all of them, so every run takes the same optimizer steps. Reported per run: the
median over epochs of the training steps' seconds (log.csv train_seconds) and of the whole epoch with validation
(epoch_seconds), and the test NDCG@10. On a machine with fewer cores than ranks the ranks share the cores; the table
names the core count.

    python benchmarks/data_parallel_cpu.py --commit abc1234 --out benchmarks/results/data_parallel_cpu
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

CONFIG = ["--data.synthetic.num_users=6000", "--data.synthetic.num_items=2000", "--model.dim=64",
          "--model.num_blocks=2", "--model.max_len=50", "--loss=CE", "--batch-size=128", "--epochs=3",
          "--train.patience=100", "--device=cpu", "--train.progress=false", "--quiet"]
RUNS = [("1 process, default threads", [], {}), ("1 process, 1 thread", [], {"OMP_NUM_THREADS": "1"}),
        ("2 processes (gloo)", ["--devices=2"], {}), ("4 processes (gloo)", ["--devices=4"], {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, extra, environment in RUNS:
            folder = Path(work) / f"run{len(rows)}"
            command = [sys.executable, "-m", "cutrec", "train", *CONFIG, *extra, f"--out={work}",
                       f"--name={folder.name}"]
            subprocess.run(command, check=True, env={**os.environ, **environment}, stdout=subprocess.DEVNULL)
            with (folder / "log.csv").open(newline="") as file:
                log = list(csv.DictReader(file))
            metrics = json.loads((folder / "metrics.json").read_text())
            rows.append({
                "run": name,
                "train_seconds_per_epoch": statistics.median(float(r["train_seconds"]) for r in log),
                "epoch_seconds": statistics.median(float(r["epoch_seconds"]) for r in log),
                "steps": int(log[-1]["step"]),
                "test_ndcg10": metrics["test"]["SASRec"]["NDCG@10"],
            })
            print(rows[-1], file=sys.stderr)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    header = {"machine": machine, "date": str(date.today()), "commit": args.commit, "config": CONFIG}
    Path(f"{args.out}.json").write_text(json.dumps({**header, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Data parallel on the CPU (gloo)", "",
        f"Machine: {machine}; date: {header['date']}; commit: {args.commit}; torch {_torch_version()}.",
        f"Command: `python benchmarks/data_parallel_cpu.py --commit {args.commit} --out {args.out}`; config: "
        f"`{' '.join(CONFIG)}`, the same global batch in every run.", "",
        "| run | training s / epoch (median) | epoch s with validation (median) | optimizer steps | test NDCG@10 |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['run']} | {r['train_seconds_per_epoch']:.2f} | {r['epoch_seconds']:.2f} | {r['steps']} | "
              f"{r['test_ndcg10']:.4f} |" for r in rows]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
