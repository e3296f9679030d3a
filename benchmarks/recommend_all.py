"""`cutrec recommend RUN --all --k 10` on a synthetic catalog of 1,000,000 items and 100,000 users: wall time, time
per phase and peak memory, beside a plain PyTorch baseline.

The run folder is written by the library's own writers (config.json, run.json, data.npz, best.pt) around a model as
initialised, not trained: the cost of ranking does not depend on the weights. Every item is in the catalog, also
those the synthetic users never touched (cold items). Three measurements, each in its own fresh process so that the
peak resident memory (ru_maxrss) is that of the measured work alone (it includes importing torch):

- `cli`: the command itself, `cutrec recommend RUN --all --k 10 --out recs.parquet` (its entry point `main`),
  end to end from before cutrec and torch are imported: loading the folder, ranking, writing;
- `phases`: the same work through cutrec.recommend, timed by phase: load the folder, rank (every batch's top-k
  decoded on the host), write the Parquet file;
- `every key`: the previous ranking (before the candidates of ranking.top_k_keys), every score keyed;
- `plain torch`: the obvious alternative per batch of the same users: scores = U @ W^T over the whole catalog, seen
  items set to -inf, torch.topk (a [B, N] float32 matrix per batch; the same user vectors).

Floor on the GPU: the scores are 2 * 1e5 * 1e6 * 64 = 1.28e13 flops (0.26 s at 50 TFLOP/s of fp32), and ranking
writes and reads each score and its int64 rank key (about 24 bytes a score, 2.4e12 bytes: 0.5 s at 4.8 TB/s).

    python benchmarks/recommend_all.py --device cuda --out benchmarks/results/recommend_all_h200
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from cutrec.experiment import git_commit, machine_name

NUM_ITEMS, NUM_USERS, K = 1_000_000, 100_000, 10


def build(folder: Path, num_items: int, num_users: int) -> None:
    """A run folder of an initialised SASRec (dim 64, 2 blocks, max_len 50) over a synthetic catalog."""
    import numpy as np
    import torch

    from cutrec.config import RunConfig, SyntheticConfig, to_dict
    from cutrec.data.cache import write_npz
    from cutrec.data.preprocess import SequenceData, preprocess
    from cutrec.data.synthetic import synthetic_interactions
    from cutrec.models import build_model
    from cutrec.train.checkpoint import (
        BEST_NAME,
        CONFIG_NAME,
        DATA_NAME,
        atomic_write_bytes,
        save_checkpoint,
        write_json,
        write_run_info,
    )

    synthetic = SyntheticConfig(num_users=num_users, num_items=num_items, num_clusters=1000, mean_length=30)
    touched = preprocess(synthetic_interactions(synthetic))
    data = SequenceData(  # the whole catalog: raw item ids 0..N-1, cold items included
        offsets=touched.offsets, items=touched.item_ids[touched.items].astype(np.int32),
        timestamps=touched.timestamps, item_ids=np.arange(num_items, dtype=np.int64), user_ids=touched.user_ids,
    )
    config = RunConfig()
    config.loss.name, config.train.batch_size = "CCE-", 128
    torch.manual_seed(0)
    model = build_model(config.model, num_items)
    folder.mkdir(parents=True)
    write_json(folder / CONFIG_NAME, to_dict(config))
    atomic_write_bytes(folder / DATA_NAME, lambda file: write_npz(file, data))
    write_run_info(folder)
    save_checkpoint(folder / BEST_NAME, {"model": model.state_dict(), "epoch": 0, "step": 0, "valid_metric": 0.0,
                                         "num_items": num_items, "config": to_dict(config)})


def _peaks(device: str) -> dict:
    import torch

    peaks = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        peaks["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def phases(folder: Path, device: str, out: Path) -> dict:
    import torch

    from cutrec.recommend import TrainedRun, write_recommendations
    from cutrec.train.loop import resolve_device

    started = time.perf_counter()
    run = TrainedRun.load(folder, resolve_device(device))
    keys, histories = run.all_histories()
    loaded = time.perf_counter()
    batches = list(run.batches(keys, histories, K, progress=False))  # every batch decoded on the host
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    ranked = time.perf_counter()
    rows = write_recommendations(iter(batches), out)
    written = time.perf_counter()
    return {"load_s": loaded - started, "rank_s": ranked - loaded, "write_s": written - ranked, "rows": rows,
            "users": len(keys), **_peaks(device)}


def baseline(folder: Path, device: str, how: str) -> dict:
    """The same users, vectors and batches ranked another way: `plain` (full [B, N] float32 scores, seen items
    -inf, torch.topk) or `every key` (cutrec's ranking before the candidates: every score gets an int64 rank key)."""
    import numpy as np
    import torch

    from cutrec.data.batches import eval_batches
    from cutrec.eval.ranking import top_k_keys
    from cutrec.recommend import TrainedRun
    from cutrec.train.evaluate import autocast_context
    from cutrec.train.loop import resolve_device

    run = TrainedRun.load(folder, resolve_device(device))
    _, histories = run.all_histories()
    model, dev = run.model.eval(), run.device
    items = model.item_table.float()
    started = time.perf_counter()
    tops = []
    with torch.no_grad():
        for inputs, lengths, rows in eval_batches(histories, max_len=model.max_len, batch_size=1024,
                                                  padding_id=model.padding_id):
            with autocast_context(dev, run.config.train.amp):
                users = model.user_vectors(inputs.to(dev), lengths.to(dev)).float()
            offsets = histories.offsets[rows[0] : rows[-1] + 2]
            seen = torch.from_numpy(histories.items[offsets[0] : offsets[-1]].astype(np.int64))
            if how == "every key":
                exclude = (torch.from_numpy(offsets - offsets[0]), seen)
                tops.append(top_k_keys(users, items, K, exclude=exclude, every_key=True)[0].cpu())
                continue
            scores = users @ items.T  # [B, N]
            owner = torch.from_numpy(np.repeat(np.arange(len(rows)), np.diff(offsets))).to(dev)
            scores[owner, seen.to(dev)] = float("-inf")
            tops.append(torch.topk(scores, K, dim=1).indices.cpu())
    return {"rank_s": time.perf_counter() - started, "users": int(sum(len(t) for t in tops)), **_peaks(device)}


def _child(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def cli(folder: Path, device: str, out: Path) -> dict:
    """The command's own entry point in this fresh process, timed from before cutrec (and torch) is imported."""
    started = time.perf_counter()
    from cutrec.cli import main

    code = main(["--quiet", "recommend", str(folder), "--all", "--k", str(K), "--out", str(out), f"--device={device}"])
    if code != 0:
        raise SystemExit(f"cutrec recommend exited with {code}")
    return {"wall_s": time.perf_counter() - started, **_peaks(device)}


def main() -> None:
    if sys.argv[1:2] == ["build"]:
        build(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        print("{}")
        return
    if sys.argv[1:2] in (["phases"], ["plain"], ["every"], ["cli"]):
        folder, device = Path(sys.argv[2]), sys.argv[3]
        measure = {"phases": lambda: phases(folder, device, folder / "recs-phases.parquet"),
                   "plain": lambda: baseline(folder, device, "plain"),
                   "every": lambda: baseline(folder, device, "every key"),
                   "cli": lambda: cli(folder, device, folder / "recs-cli.parquet")}[sys.argv[1]]
        print(json.dumps(measure()))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", default="/tmp/recommend_all", help="where the run folder is built")
    parser.add_argument("--items", type=int, default=NUM_ITEMS)
    parser.add_argument("--users", type=int, default=NUM_USERS)
    parser.add_argument("--skip", nargs="*", default=[], choices=["cli", "plain", "every"],
                        help="measurements to leave out")
    parser.add_argument("--commit", default=None, help="the measured commit (the device's tree has no .git)")
    parser.add_argument("--out", required=True, help="results path without suffix (.json and .md are written)")
    args = parser.parse_args()
    folder = Path(args.work) / f"run-{args.items}-{args.users}"
    if not folder.exists():
        started = time.perf_counter()
        _child("build", str(folder), str(args.items), str(args.users))
        print(f"built {folder} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    results = {"phases": _child("phases", str(folder), args.device)}
    print(results, file=sys.stderr)
    for name, label in (("every", "every key (previous ranking)"), ("plain", "plain torch")):
        if name not in args.skip:
            results[label] = _child(name, str(folder), args.device)
            print(results, file=sys.stderr)
    if "cli" not in args.skip:
        results["cli"] = _child("cli", str(folder), args.device)
    commit = args.commit or git_commit()
    import torch

    header = (f"Machine: {machine_name(args.device)}; torch {torch.__version__}; date {date.today()}; commit {commit}; "
              f"{args.items:,} items, {args.users:,} users, k={K}, SASRec dim 64 (as initialised), eval.batch_size "
              "1024, eval.item_chunk 65536, seen items excluded")
    lines = [f"# cutrec recommend --all\n\n{header}\n",
             "| measurement | wall s | load s | rank s | write s | peak RSS MB | peak GPU MB |",
             "|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        cells = [row.get(key) for key in ("wall_s", "load_s", "rank_s", "write_s", "peak_rss_mb", "peak_gpu_mb")]
        lines.append(f"| {name} | " + " | ".join("" if c is None else f"{c:,.1f}" for c in cells) + " |")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    Path(f"{args.out}.json").write_text(json.dumps({"commit": commit, "machine": machine_name(args.device),
                                                    "date": str(date.today()), "results": results}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
