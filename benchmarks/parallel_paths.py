"""The parallel training paths against the plain one, each a `cutrec train` run in its own process tree, one after
the other, with the same global batch (so every run takes the same optimizer steps):

- `--suite cpu-data-parallel`: one small config on the CPU in one process (default threads, with seeds 0, 1 and 2
  for the seed spread of test NDCG@10, and one thread) and with `--devices 2`, `4` and `8` (gloo, seed 0; torchrun
  gives each rank one thread). On a machine with fewer cores than ranks the ranks share the cores; the table names
  the core count.
- `--suite gpu-catalog-overhead`: on one GPU, SASRec with CCE on the synthetic 1M-item catalog: the plain step
  (with its CUDA graph, and eagerly) against the catalog-parallel path on one rank (torchrun with one process,
  train.catalog_parallel=true, which runs eagerly). The overhead is the catalog-parallel epoch time over the eager
  plain one, minus 1 (target: at most 5%).
- `--suite gpu-data-parallel`: SASRec with CCE- on the synthetic 1M-item catalog, data parallel (`--devices G`,
  NCCL) on 1, 2, 4 and 8 GPUs at the same global batch of 1,024 (so every run takes the same optimizer steps); a
  run that needs more GPUs than the machine has is a row marked skipped. Throughput: training sequences per second,
  the steps of an epoch x the global batch over the median training seconds per epoch (an epoch's last, partial
  batch counted whole); scaling efficiency: throughput over G times that of one GPU.

Reported per run: the median over epochs of the training steps' seconds (log.csv train_seconds), of the whole epoch
with validation (epoch_seconds), the peak training GPU memory, and the test NDCG@10.

    python benchmarks/parallel_paths.py --suite cpu-data-parallel --commit C --out benchmarks/results/data_parallel_cpu
    python benchmarks/parallel_paths.py --suite gpu-catalog-overhead --commit C --out benchmarks/results/catalog_h200
    python benchmarks/parallel_paths.py --suite gpu-data-parallel --commit C --out benchmarks/results/data_parallel_h200
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

import torch

from cutrec.experiment import machine_name

TORCHRUN_ONE = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
SUITES = {
    "cpu-data-parallel": {
        "config": ["--data.synthetic.num_users=6000", "--data.synthetic.num_items=2000", "--model.dim=64",
                   "--model.num_blocks=2", "--model.max_len=50", "--loss=CE", "--batch-size=128", "--epochs=3",
                   "--train.patience=100", "--device=cpu", "--train.progress=false", "--quiet"],
        "runs": [("1 process, default threads", [], [], {}),
                 *((f"1 process, default threads, seed {seed}", [], [f"--seed={seed}"], {}) for seed in (1, 2)),
                 ("1 process, 1 thread", [], [], {"OMP_NUM_THREADS": "1"}),
                 *((f"{ranks} processes (gloo)", [], [f"--devices={ranks}"], {}) for ranks in (2, 4, 8))],
    },
    "gpu-catalog-overhead": {
        "config": ["--data.synthetic.num_items=1000000", "--data.synthetic.num_users=50000",
                   "--data.synthetic.num_clusters=1000", "--data.split=global_temporal", "--model.dim=64",
                   "--model.num_blocks=1", "--model.max_len=50", "--loss=CCE", "--batch-size=256", "--epochs=3",
                   "--train.patience=100", "--train.progress=false", "--quiet"],
        "runs": [("plain, CUDA graph", [], [], {}), ("plain, eager", [], ["--train.cuda_graph=false"], {}),
                 ("catalog parallel, 1 rank (eager)", TORCHRUN_ONE, ["--train.catalog_parallel=true"], {})],
    },
    "gpu-data-parallel": {
        "config": ["--data.synthetic.num_items=1000000", "--data.synthetic.num_users=50000",
                   "--data.synthetic.num_clusters=1000", "--data.split=global_temporal", "--model.dim=64",
                   "--model.num_blocks=2", "--model.max_len=200", "--loss=CCE-", "--loss.num_negatives=1023",
                   "--batch-size=1024", "--epochs=3", "--train.patience=100", "--train.progress=false", "--quiet"],
        "runs": [(f"{gpus} GPU{'s' * (gpus > 1)}", [], [f"--devices={gpus}"], {}) for gpus in (1, 2, 4, 8)],
    },
}
BATCH = {name: int(next(arg for arg in suite["config"] if arg.startswith("--batch-size=")).split("=")[1])
         for name, suite in SUITES.items()}  # the global batch of each suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    suite = SUITES[args.suite]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, launcher, extra, environment in suite["runs"]:
            if args.suite.startswith("gpu-") and _devices(extra) > _gpu_count():
                rows.append({"run": name, "status": f"skipped: the machine has {_gpu_count()} GPUs"})
                continue
            folder = Path(work) / f"run{len(rows)}"
            program = launcher + ["-m", "cutrec"] if launcher else [sys.executable, "-m", "cutrec"]
            command = [*program, "train", *suite["config"], *extra, f"--out={work}", f"--name={folder.name}"]
            subprocess.run(command, check=True, env={**os.environ, **environment}, stdout=subprocess.DEVNULL)
            with (folder / "log.csv").open(newline="") as file:
                log = list(csv.DictReader(file))
            metrics = json.loads((folder / "metrics.json").read_text())
            model = next(scores for key, scores in metrics["test"].items() if key != "MostPopular")
            seconds = statistics.median(float(r["train_seconds"]) for r in log)
            rows.append({
                "run": name, "status": "ok",
                "train_seconds_per_epoch": seconds,
                "sequences_per_second": int(log[0]["step"]) * BATCH[args.suite] / seconds,
                "epoch_seconds": statistics.median(float(r["epoch_seconds"]) for r in log),
                "peak_train_gpu_mb": max(float(r["peak_train_gpu_mb"] or 0) for r in log),
                "steps": int(log[-1]["step"]),
                "test_ndcg10": model["NDCG@10"],
            })
            print(rows[-1], file=sys.stderr)
    single = next((r["sequences_per_second"] for r in rows if r["status"] == "ok"), None)  # the first run's
    for row, (_, _, extra, _) in zip(rows, suite["runs"], strict=True):
        if row["status"] == "ok" and args.suite == "gpu-data-parallel":
            row["scaling_efficiency"] = row["sequences_per_second"] / (_devices(extra) * single)
    header = {"suite": args.suite, "machine": machine_name(), "date": str(date.today()), "commit": args.commit,
              "config": suite["config"]}
    Path(f"{args.out}.json").write_text(json.dumps({**header, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Parallel paths: {args.suite}", "",
        f"Machine: {header['machine']}; date: {header['date']}; commit: {args.commit}; torch {torch.__version__}.",
        f"Command: `python benchmarks/parallel_paths.py --suite {args.suite} --commit {args.commit} --out "
        f"{args.out}`; config: `{' '.join(suite['config'])}`, the same global batch in every run.", "",
        "| run | training s / epoch (median) | sequences / s | scaling efficiency | epoch s with validation (median) "
        "| peak training GPU MB | optimizer steps | test NDCG@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [_table_line(row) for row in rows]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")


def _table_line(r: dict) -> str:
    if r["status"] != "ok":
        return f"| {r['run']} | {r['status']} | | | | | | |"
    efficiency = f"{r['scaling_efficiency']:.2f}" if "scaling_efficiency" in r else ""
    return (f"| {r['run']} | {r['train_seconds_per_epoch']:.3f} | {r['sequences_per_second']:.0f} | {efficiency} | "
            f"{r['epoch_seconds']:.2f} | {r['peak_train_gpu_mb']:.0f} | {r['steps']} | {r['test_ndcg10']:.4f} |")


def _devices(extra: list[str]) -> int:
    """The --devices=G of a run's options, else 1."""
    return next((int(arg.split("=")[1]) for arg in extra if arg.startswith("--devices=")), 1)


def _gpu_count() -> int:
    return torch.cuda.device_count()


if __name__ == "__main__":
    main()
