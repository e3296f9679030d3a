"""Quality benchmark: train SASRec or BERT4Rec with several losses on real datasets and tabulate full-ranking test
metrics.

Each (dataset, model and loss, seed) is one `cutrec train` run in its own process (several at once on one GPU, each
with cores / parallel CPU threads, or one at a time with --parallel 1 for epoch times); dataset "synthetic" is the
built-in generator (set its size with --data.synthetic.num_items=...). A run spec is `[MODEL/]LOSS[:settings]`:
MODEL is sasrec (the default; 1 block, 1 head) or bert4rec (2 blocks, 2 heads), LOSS a loss name and settings
`key=value,key=value` of the loss section, or of any section with a dotted key (for example
`bert4rec/CCE-:share=block,distribution=popularity` or `CCE:train.cuda_graph=false`); the run is tagged with them.
Besides the metrics, each row has the run's time outside its training steps: the process's wall time minus the
steps of every epoch (data loading, warm-up and capture, validation, test, start-up). The script collects every
run's metrics.json and log.csv into one json and one markdown table naming the machine and the date.

    python benchmarks/quality.py --data-root ../shared/data --datasets amazon-beauty amazon-toys \
        --run-specs CE CE- BCE "CCE-:share=block" bert4rec/CE --seeds 0 1 2 --parallel 6 \
        --out benchmarks/results/quality

Settings follow the published runs on these files (emb 64, dropout 0.2, max_len 50, lr 1e-3, batch 128).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date
from pathlib import Path

from cutrec.experiment import git_commit, machine_name

MODEL_SETTINGS = {
    "sasrec": ["--model.name=sasrec", "--model.num_blocks=1", "--model.num_heads=1"],
    "bert4rec": ["--model.name=bert4rec", "--model.num_blocks=2", "--model.num_heads=2"],
}
SETTINGS = [
    "--model.dim=64",
    "--model.dropout=0.2",
    "--model.max_len=50",
    "--train.lr=0.001",
    "--train.batch_size=128",
    "--train.progress=false",
]


def parse_spec(spec: str) -> tuple[str, str, str, list[str]]:
    """"bert4rec/CCE-:share=block" -> ("bert4rec", "CCE-", "CCE- share=block", loss and model args)."""
    model, _, loss_spec = spec.rpartition("/")
    model = model or "sasrec"
    if model not in MODEL_SETTINGS:
        raise SystemExit(f"run spec {spec!r}: model {model!r} is unknown; use one of {', '.join(MODEL_SETTINGS)}")
    name, _, settings = loss_spec.partition(":")
    pairs = [pair.split("=", 1) for pair in settings.split(",") if pair]
    label = " ".join([name, *(f"{key}={value}" for key, value in pairs)])
    options = [f"--{key}={value}" if "." in key else f"--loss.{key}={value}" for key, value in pairs]
    return model, name, label, options + MODEL_SETTINGS[model]


def run_one(args: argparse.Namespace, index: int, dataset: str, spec: str, seed: int) -> dict:
    model, loss, label, loss_settings = parse_spec(spec)
    name = f"{dataset}-{model}-{label.replace(' ', '-').replace('=', '_')}-seed{seed}"
    folder = Path(args.runs) / name
    data = [] if dataset == "synthetic" else [
        f"--data={Path(args.data_root) / dataset / 'sequences.txt'}", "--data.format=sequences"
    ]
    command = [
        sys.executable, "-m", "cutrec.cli", "train", *data,
        f"--dataset={dataset}", f"--loss={loss}", f"--seed={seed}", f"--out={args.runs}", f"--name={name}",
        f"--epochs={args.epochs}", f"--train.patience={args.patience}", f"--loss.num_negatives={args.negatives}",
        *loss_settings, *SETTINGS, *args.extra,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.parallel))}
    if args.gpus > 1:
        environment["CUDA_VISIBLE_DEVICES"] = str(index % args.gpus)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    wall = time.perf_counter() - started
    (Path(args.runs) / f"{name}.stderr.txt").write_text(result.stderr[-20000:])
    if result.returncode != 0:
        return {"dataset": dataset, "model": model, "loss": label, "seed": seed,
                "error": result.stderr.strip().splitlines()[-1:]}
    metrics = json.loads((folder / "metrics.json").read_text())
    with (folder / "log.csv").open() as file:
        log = list(csv.DictReader(file))
    return {
        "dataset": dataset,
        "model": model,
        "loss": label,
        "seed": seed,
        "test": metrics["test"],
        "model_scores": next(v for k, v in metrics["test"].items() if k != "MostPopular"),
        "best_epoch": metrics["best_epoch"],
        "epochs_run": len(log),
        "median_epoch_seconds": statistics.median(float(r["epoch_seconds"]) for r in log),
        "median_train_seconds": statistics.median(float(r["train_seconds"]) for r in log),
        "first_train_seconds": float(log[0]["train_seconds"]),
        "setup_seconds": sum(float(r.get("setup_seconds") or 0.0) for r in log),
        "outside_steps_seconds": wall - sum(float(r["train_seconds"]) for r in log),
        "peak_train_gpu_mb": max(float(r["peak_train_gpu_mb"]) for r in log),
        "wall_seconds": wall,
    }


def markdown(results: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| dataset | model | loss | seed | NDCG@10 | HR@10 | MostPop NDCG@10 | best epoch | epochs run "
        "| median epoch s | median train s | epoch 1 train s | setup s | outside steps s | peak train GPU MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['model']} | {r['loss']} | {r['seed']} | failed: {r['error']} "
                         "|||||||||||")
            continue
        model = r["model_scores"]
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['loss']} | {r['seed']} | {model['NDCG@10']:.4f} | "
            f"{model['HR@10']:.4f} | "
            f"{r['test']['MostPopular']['NDCG@10']:.4f} | {r['best_epoch']} | {r['epochs_run']} | "
            f"{r['median_epoch_seconds']:.2f} | {r['median_train_seconds']:.3f} | {r['first_train_seconds']:.2f} | "
            f"{r['setup_seconds']:.2f} | {r['outside_steps_seconds']:.1f} | {r['peak_train_gpu_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def summary(results: list[dict]) -> str:
    """Mean and range over seeds of each (dataset, loss): the table the issues ask for."""
    lines = [
        "| dataset | model | loss | seeds | NDCG@10 mean (min..max) | HR@10 mean (min..max) | median epoch s | "
        "median train s | outside steps s | peak train GPU MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in results:
        if "error" not in r:
            groups.setdefault((r["dataset"], r["model"], r["loss"]), []).append(r)
    for (dataset, model, loss), runs in groups.items():
        cells = []
        for metric in ("NDCG@10", "HR@10"):
            values = [r["model_scores"][metric] for r in runs]
            cells.append(f"{statistics.mean(values):.4f} ({min(values):.4f}..{max(values):.4f})")
        epoch = statistics.median(r["median_epoch_seconds"] for r in runs)
        steps = statistics.median(r["median_train_seconds"] for r in runs)
        outside = statistics.median(r["outside_steps_seconds"] for r in runs)
        memory = max(r["peak_train_gpu_mb"] for r in runs)
        lines.append(f"| {dataset} | {model} | {loss} | {len(runs)} | {' | '.join(cells)} | {epoch:.2f} | "
                     f"{steps:.3f} | {outside:.1f} | {memory:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--datasets", nargs="+", default=["amazon-beauty", "amazon-toys"])
    parser.add_argument("--run-specs", nargs="+", default=["CE", "CE-", "BCE"], help="[MODEL/]LOSS[:settings]")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=50)
    parser.add_argument("--negatives", type=int, default=256)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--gpus", type=int, default=1, help="spread the runs round-robin over this many GPUs")
    parser.add_argument("--runs", default="runs/quality")
    parser.add_argument("--commit", default=None, help="the commit measured, where the tree has no .git")
    parser.add_argument("--out", default="benchmarks/results/quality")
    args, args.extra = parser.parse_known_args()  # unknown words: more --section.key=value settings for every run
    # Seed-major: with --parallel 1 the losses alternate (CE, CCE, CE, CCE, ...), so a slow drift of the machine does
    # not favour the loss that runs first; the tables list the runs grouped by dataset and loss.
    jobs = [(d, spec, s) for s in args.seeds for d in args.datasets for spec in args.run_specs]
    table_order = {(d, spec, s): i for i, (d, spec, s) in enumerate(
        (d, spec, s) for d in args.datasets for spec in args.run_specs for s in args.seeds)}
    header = (
        f"# Test metrics, full-catalog ranking, leave-one-out\n\nMachine: {machine_name()}; date: "
        f"{date.today()}; commit: {args.commit or git_commit()}; {args.parallel} runs at a time on {args.gpus} GPU(s) "
        "(epoch times include that sharing); "
        f"epochs <= {args.epochs}, patience {args.patience}, negatives {args.negatives}; settings: "
        f"{' '.join(SETTINGS)} {' '.join(args.extra)}; sasrec: {' '.join(MODEL_SETTINGS['sasrec'][1:])}; "
        f"bert4rec: {' '.join(MODEL_SETTINGS['bert4rec'][1:])}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    finished: dict[int, dict] = {}
    with ThreadPoolExecutor(args.parallel) as pool:
        # A run's index is its row in the tables; GPUs go round-robin over it, so one loss's seeds use every GPU.
        futures = {pool.submit(run_one, args, table_order[job], *job): table_order[job] for job in jobs}
        for future in as_completed(futures):  # rewrite the tables after every run, so a killed sweep keeps them
            finished[futures[future]] = future.result()
            results = [finished[index] for index in sorted(finished)]
            out.with_suffix(".json").write_text(json.dumps({"machine": machine_name(), "date": str(date.today()),
                                                            "args": vars(args), "runs": results}, indent=2))
            table = markdown(results, header) + "\n## Over seeds\n\n" + summary(results)
            out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
