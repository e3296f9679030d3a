"""`cutrec experiment GRID.toml`: train every configuration of a grid and collect one results row per run.

A grid file:

    name = "balance"                 # results go to OUT/NAME/results.{csv,md}, runs to OUT/NAME/runs/RUN_ID
    out = "experiments"
    gpus = [0, 1]                    # one run per GPU at a time; leave out for one run at a time (clean timings)
    runs_per_gpu = 1                 # runs sharing each GPU (or the CPU) at a time; 1 for clean timings
    preset = "sasrec-2018"           # optional: a named recipe (cutrec presets) that [base] and the axes start from
    [base]                           # config values every run shares, nested like a config file
    train = { epochs = 50 }
    eval = { test = false }          # a recipe study: rows carry validation only; `cutrec evaluate` tests later
    [recipes.adamw]                  # a named set of config values over [base], for the recipe axis (quote a
                                     # name with a dot: [recipes."wd-0.1"])
    train = { optimizer = "adamw", weight_decay = 0.1 }
    [recipes.base]                   # (an empty one: [base] alone)
    [datasets.beauty]                # a named data section (else: a registry name or "synthetic")
    path = "../shared/data/amazon-beauty/sequences.txt"
    format = "sequences"
    [axes]                           # every combination is one run
    dataset = ["beauty"]
    model = ["sasrec", "bert4rec:num_blocks=2,num_heads=2"]   # a model, optionally with model settings
    loss = ["CE", "CE-", "CCE-:share=block"]     # a loss, optionally with loss settings
    batch_size = [128, 256]
    max_len = [50]
    negatives = [255, 1023]          # applied to the losses that draw negatives only (CE and CCE run once)
    seed = [0, 1]
    recipe = ["base", "adamw"]

Every run is checked (types, ranges, loss settings that its loss does not use) before the first one starts. Each
runs as `cutrec train` in its own process; a finished row is written to results.csv at once (an atomic rewrite), so
an interrupted grid restarted with the same command skips its finished rows, resumes a run that has a last.pt and
restarts one that has none. Runs that share the machine get an equal share of its CPU cores (OMP_NUM_THREADS), and
every row says how the runs shared it, since shared runs time slower. A run that runs out of GPU memory (or whose
estimated peak does not fit) is a row with status OOM, and the grid goes on.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from cutrec import presets
from cutrec.config import ModelConfig, build_config, load_file, merged_values, to_dict
from cutrec.console import note
from cutrec.errors import CutrecError
from cutrec.losses import LOSS_KEYS
from cutrec.train.checkpoint import (
    CONFIG_NAME,
    DATA_NAME,
    LAST_NAME,
    LOG_NAME,
    METRICS_NAME,
    atomic_write_bytes,
    write_json,
)

AXES = ("dataset", "recipe", "model", "loss", "batch_size", "max_len", "negatives", "seed")
GRID_KEYS = ("name", "out", "gpus", "runs_per_gpu", "preset", "base", "recipes", "datasets", "axes")
COLUMNS = [
    "run", "status", "dataset", "recipe", "model", "loss", "batch_size", "max_len", "negatives", "seed", "items",
    "NDCG@10", "HR@10", "Coverage@10", "Surprisal@10", "MostPopular NDCG@10", "valid NDCG@10", "best_epoch",
    "peak_train_gpu_mb", "mean_train_seconds", "epochs_run", "sharing", "machine", "commit", "date", "note",
]
MODEL_KEYS = tuple(field.name for field in fields(ModelConfig) if field.name != "name")
SAMPLED = {loss for loss, keys in LOSS_KEYS.items() if "num_negatives" in keys}


@dataclass(frozen=True)
class Run:
    """One configuration of the grid: its axis values and the config values of `cutrec train`."""

    id: str
    axes: dict[str, Any]
    values: dict[str, Any]


def load_grid(path: str | Path) -> tuple[dict[str, Any], list[Run]]:
    """The grid file's settings and its runs, every one checked; a bad grid is a CutrecError naming the key."""
    grid = load_file(path)
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise CutrecError(f"grid {str(path)!r} has unknown key {unknown[0]!r}; use {', '.join(GRID_KEYS)}")
    axes = grid.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise CutrecError(f"grid {str(path)!r} has no [axes]; give at least one axis of {', '.join(AXES)}")
    for axis, values in axes.items():
        if axis not in AXES:
            raise CutrecError(f"grid axis {axis!r} is unknown; use {', '.join(AXES)} (others go in [base])")
        if not isinstance(values, list) or not values:
            raise CutrecError(f"grid axis {axis!r} is {values!r}; give a non-empty list, e.g. {axis} = [...]")
    base, datasets, recipes = grid.get("base", {}), grid.get("datasets", {}), grid.get("recipes", {})
    if not all(isinstance(table, dict) for table in (base, datasets, recipes)) or not all(
            isinstance(table, dict) for table in recipes.values()):
        raise CutrecError(f"grid {str(path)!r}: [base], [datasets] and each [recipes.NAME] must be tables of config "
                          "values")
    if recipes and "recipe" not in axes:
        raise CutrecError(f"grid {str(path)!r} has [recipes] but no recipe axis; add recipe = [...] to [axes] or "
                          "drop [recipes]")
    for name in axes.get("recipe", []):
        if not isinstance(name, str) or name not in recipes:
            raise CutrecError(f"grid recipe {name!r} has no [recipes.{name}] table; define it (empty for [base] "
                              "alone) or drop it from the recipe axis")
    if "preset" in grid:
        base = merged_values(presets.load(str(grid["preset"])), base)
    gpus = grid.get("gpus", [])
    if not isinstance(gpus, list) or not all(isinstance(g, int) and not isinstance(g, bool) for g in gpus):
        raise CutrecError(f"grid key 'gpus' is {gpus!r}; give a list of GPU indices, e.g. gpus = [0, 1]")
    runs_per_gpu = grid.get("runs_per_gpu", 1)
    if not isinstance(runs_per_gpu, int) or isinstance(runs_per_gpu, bool) or runs_per_gpu < 1:
        raise CutrecError(f"grid key 'runs_per_gpu' is {runs_per_gpu!r}; give 1 or more (1: clean timings)")
    runs, seen = [], set()
    names = list(axes)
    for combination in itertools.product(*(axes[name] for name in names)):
        run = _run(dict(zip(names, combination, strict=True)), base, datasets, recipes)
        if run.id not in seen:  # negatives collapse for losses that draw none
            seen.add(run.id)
            runs.append(run)
    return {"name": str(grid.get("name", Path(path).stem)), "out": str(grid.get("out", "experiments")),
            "gpus": gpus, "runs_per_gpu": runs_per_gpu}, runs


def _run(axes: dict[str, Any], base: dict[str, Any], datasets: dict[str, Any], recipes: dict[str, Any]) -> Run:
    values = _axis_values(axes, datasets)
    if "recipe" in axes:
        recipe = recipes[axes["recipe"]]
        set_by_axes = set(_dotted(values)) | ({"loss.num_negatives"} if "negatives" in axes else set())
        both = sorted(set(_dotted(recipe)) & set_by_axes)
        if both:
            raise CutrecError(f"grid recipe {axes['recipe']!r} sets {both[0]}, which an axis sets too; set it in "
                              "one place")
        base = merged_values(base, recipe)
    merged = merged_values(base, values)
    loss_name = merged.get("loss", {}).get("name", "auto")
    if "negatives" in axes and loss_name in SAMPLED:
        merged.setdefault("loss", {})["num_negatives"] = axes["negatives"]
        shown = dict(axes)
    else:
        shown = {key: value for key, value in axes.items() if key != "negatives"}
    run_id = "-".join(f"{key}={value}".replace("/", "_").replace(":", "_").replace(",", "_")
                      for key, value in shown.items())
    try:
        config = build_config({key: value for key, value in merged.items() if key not in ("out", "name")})  # checks
    except CutrecError as error:
        raise CutrecError(f"grid run {run_id}: {error}") from None
    return Run(run_id, shown, to_dict(config))


def _dotted(values: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of nested config values."""
    keys = []
    for key, value in values.items():
        keys += _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def _axis_values(axes: dict[str, Any], datasets: dict[str, Any]) -> dict[str, Any]:
    """The config values that a run's axes set (all but negatives, which apply to sampled losses alone)."""
    values: dict[str, Any] = {}
    if "dataset" in axes:
        name = axes["dataset"]
        values["data"] = dict(datasets[name]) if name in datasets else {"dataset": name}
        values["data"].setdefault("dataset", str(name))
    if "model" in axes:
        values["model"] = _spec("model", str(axes["model"]), MODEL_KEYS)
    if "max_len" in axes:
        values.setdefault("model", {})["max_len"] = axes["max_len"]
    train = {key: axes[key] for key in ("batch_size", "seed") if key in axes}
    if train:
        values["train"] = train
    if "loss" in axes:
        loss = str(axes["loss"]).partition(":")[0]
        values["loss"] = _spec("loss", str(axes["loss"]), LOSS_KEYS.get(loss, ()))
    return values


def _spec(axis: str, spec: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The config section of an axis value `NAME[:key=value,key=value]`: {"name": NAME, key: value, ...}, with every
    key checked against the keys that NAME uses."""
    name, _, settings = spec.partition(":")
    section: dict[str, Any] = {"name": name}
    for pair in filter(None, settings.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise CutrecError(f"grid {axis} {spec!r}: setting {pair!r} has no '='; write NAME:key=value,key=value")
        if key not in keys:
            raise CutrecError(
                f"grid {axis} {spec!r}: {axis}.{key} does not apply to {name} (it uses "
                f"{', '.join(keys) or 'no settings'}); drop it"
            )
        section[key] = value
    return section


def run_grid(path: str | Path, *, commit: str | None = None) -> Path:
    """Run every configuration of the grid that results.csv does not hold yet; returns the results folder."""
    settings, runs = load_grid(path)
    folder = Path(settings["out"]).expanduser() / settings["name"]
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    results = Results(folder)
    todo = [run for run in runs if run.id not in results.finished()]
    note(f"grid {settings['name']}: {len(runs)} runs, {len(runs) - len(todo)} already finished, in {folder}")
    free = [gpu for gpu in settings["gpus"] or [None] for _ in range(settings["runs_per_gpu"])]  # one slot per run
    context = {"sharing": _sharing(settings["gpus"], settings["runs_per_gpu"]), "machine": machine_name(),
               "commit": commit or git_commit(), "date": str(date.today())}
    slots = len(free)
    threads = max(1, (os.cpu_count() or 1) // slots) if slots > 1 else None
    lock = threading.Lock()

    def one(run: Run) -> None:
        with lock:
            gpu = free.pop()
        try:
            row = _train(run, folder / "runs", gpu, threads)
        finally:
            with lock:
                free.append(gpu)
        results.add({**row, **context})
        shown = f" NDCG@10 {row['NDCG@10']}" if row.get("NDCG@10") else f" valid NDCG@10 {row.get('valid NDCG@10')}"
        note(f"{run.id}: {row['status']}" + (shown if row["status"] == "ok" else ""))

    with ThreadPoolExecutor(max_workers=slots) as pool:
        for future in [pool.submit(one, run) for run in todo]:
            future.result()
    return folder


def _sharing(gpus: list[int], runs_per_gpu: int) -> str:
    """How the runs shared the machine, for the results table: timings of shared runs are slower."""
    if len(gpus) <= 1 and runs_per_gpu == 1:
        return "one run at a time"
    per = "one run each" if runs_per_gpu == 1 else f"{runs_per_gpu} runs each at a time"
    return f"{len(gpus)} GPUs, {per}" if len(gpus) > 1 else f"{runs_per_gpu} runs at a time on one device"


def _train(run: Run, runs: Path, gpu: int | None, threads: int | None) -> dict[str, Any]:
    """Train one run in its own process (resuming a half-finished one; `threads` CPU threads when runs share the
    machine) and read its row."""
    folder = runs / run.id
    if (folder / METRICS_NAME).exists():
        return _row(run, folder)
    if (folder / LAST_NAME).exists():
        command = ["train", "--resume", str(folder)]
    else:
        shutil.rmtree(folder, ignore_errors=True)
        write_json(runs / f"{run.id}.json", run.values)
        command = ["train", "--config", str(runs / f"{run.id}.json"), f"--out={runs}", f"--name={run.id}"]
    environment = dict(os.environ)
    if gpu is not None:
        environment["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if threads is not None:
        environment["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, "-m", "cutrec.cli", "--quiet", *command], capture_output=True, text=True,
                          env=environment)
    (runs / f"{run.id}.stderr.txt").write_text(done.stderr[-20000:])
    if done.returncode == 0:
        return _row(run, folder)
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return {"run": run.id, "model": run.values["model"]["name"], **run.axes, "status": failure(done.stderr),
            "note": last[-300:]}


def failure(stderr: str) -> str:
    """OOM for a run that ran out of GPU memory or whose estimated peak did not fit (train.check_memory), else
    failed."""
    out_of_memory = "out of memory" in stderr.lower() or "train.check_memory=false" in stderr
    return "OOM" if out_of_memory else "failed"


def _row(run: Run, folder: Path) -> dict[str, Any]:
    metrics = json.loads((folder / METRICS_NAME).read_text())
    with (folder / LOG_NAME).open(newline="") as file:
        log = list(csv.DictReader(file))
    tested = "test" in metrics  # eval.test=false: validation only
    model = next((scores for name, scores in metrics.get("test", {}).items() if name != "MostPopular"), {})
    best = next((row for row in log if int(row["epoch"]) == metrics["best_epoch"]), {})
    with np.load(folder / DATA_NAME, allow_pickle=False) as data:
        items = len(data["item_ids"])
    trained = json.loads((folder / CONFIG_NAME).read_text())["train"]["batch_size"]  # "auto" resolved
    return {
        **({"note": f"batch_size auto: {trained}"} if run.axes.get("batch_size") == "auto" else {}),
        "run": run.id, "model": run.values["model"]["name"], **run.axes, "status": "ok", "items": str(items),
        **{name: f"{model[name]:.6f}" if tested else "" for name in ("NDCG@10", "HR@10", "Coverage@10",
                                                                       "Surprisal@10")},
        "MostPopular NDCG@10": f"{metrics['test']['MostPopular']['NDCG@10']:.6f}" if tested else "",
        "valid NDCG@10": best.get("NDCG@10", ""), "best_epoch": str(metrics["best_epoch"]),
        "peak_train_gpu_mb": f"{max(float(row['peak_train_gpu_mb'] or 0) for row in log):.1f}",
        "mean_train_seconds": f"{statistics.mean(float(row['train_seconds']) for row in log):.3f}",
        "epochs_run": str(len(log)),
    }


class Results:
    """results.csv (one row per finished run, each addition an atomic rewrite) and results.md beside it."""

    def __init__(self, folder: Path) -> None:
        self.csv, self.md = folder / "results.csv", folder / "results.md"
        self.lock = threading.Lock()

    def rows(self) -> list[dict[str, str]]:
        if not self.csv.exists():
            return []
        with self.csv.open(newline="") as file:
            return list(csv.DictReader(file))

    def finished(self) -> set[str]:
        return {row["run"] for row in self.rows()}

    def add(self, row: dict[str, Any]) -> None:
        with self.lock:
            rows = [*self.rows(), {key: str(value) for key, value in row.items()}]
            text = io.StringIO()
            writer = csv.DictWriter(text, COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_bytes(self.csv, lambda file: file.write(text.getvalue().encode()))
            lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
            lines += ["| " + " | ".join(r.get(c, "") for c in COLUMNS) + " |" for r in rows]
            atomic_write_bytes(self.md, lambda file: file.write(("\n".join(lines) + "\n").encode()))


def machine_name(device: str = "cuda") -> str:
    """The machine a result was measured on, as results tables name it: the first CUDA card (when `device` is a CUDA
    one and a card is visible), else the CPU and its cores. The benchmarks share it."""
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_commit() -> str:
    """The short commit of the working folder's git checkout, or "unknown (pass --commit)" outside one (the GPU
    machine's copy of the tree has no .git)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except FileNotFoundError:  # no git installed
        return "unknown (pass --commit)"
    return done.stdout.strip() if done.returncode == 0 else "unknown (pass --commit)"
