"""The `cutrec` command: train | estimate | evaluate | recommend | export | experiment | report | datasets.

Options are config keys: `--train.lr=0.001` (or `train.lr=0.001`) sets any key of cutrec.config; a few common ones
have short names (`--loss CE`, `--data PATH`, ...). A user mistake prints one line `cutrec: error: ...` and exits
with status 2, never a traceback. A run stopped by SIGTERM or Ctrl-C exits with 143 or 130 after saving last.pt
and printing the command that resumes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from cutrec.console import note, set_quiet
from cutrec.errors import CutrecError
from cutrec.train.interrupt import RunStopped

SHORT_OPTIONS = {
    "--model": "model.name",
    "--dataset": "data.dataset",
    "--data": "data.path",
    "--loss": "loss.name",
    "--negatives": "loss.num_negatives",
    "--share": "loss.share",
    "--epochs": "train.epochs",
    "--batch-size": "train.batch_size",
    "--memory-gb": "train.memory_limit_gb",
    "--lr": "train.lr",
    "--seed": "train.seed",
    "--device": "train.device",
    "--out": "out",
    "--name": "name",
}


def _parser() -> argparse.ArgumentParser:
    from cutrec import __version__

    parser = argparse.ArgumentParser(prog="cutrec", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cutrec {__version__}")
    parser.add_argument("--quiet", action="store_true", help="print only results, warnings and errors")
    commands = parser.add_subparsers(dest="command", required=True)
    # --quiet also after the command; SUPPRESS keeps a subcommand from resetting the flag given before it
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    train = commands.add_parser(
        "train",
        parents=[quiet],
        help="train a model and report full-catalog test metrics",
        description="Train, validate each epoch, keep the best checkpoint and test it. Pick the encoder with "
        "--model sasrec (causal, next-item targets; the default) or --model bert4rec (bidirectional, masked-item "
        "targets, --model.mask_prob=0.2), and the loss with --loss auto|CE|CCE|CE-|CCE-|BCE|BCE+|gBCE|SCE. Any "
        "config key below can be set with --section.key=value.",
        epilog=_config_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_options(train)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    train.add_argument("--devices", type=int, default=1, metavar="G",
                       help="data parallel over G GPUs of this machine (G processes on the CPU): starts torchrun")
    estimate = commands.add_parser(
        "estimate",
        parents=[quiet],
        help="print the predicted peak GPU memory of training, and the largest batch that fits",
        description="Read the data and predict the peak GPU memory of a training step for the same options as "
        "`cutrec train` (parameters, gradients, optimizer state, activations, the loss's buffers), without "
        "training. With a GPU visible, or --memory-gb (train.memory_limit_gb), also print the largest batch size that "
        "fits.",
    )
    _add_run_options(estimate)
    evaluate = commands.add_parser("evaluate", parents=[quiet], help="re-score a saved run on its test set")
    evaluate.add_argument("run_dir", help="a folder written by `cutrec train`")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    recommend = commands.add_parser(
        "recommend",
        parents=[quiet],
        help="write the top-k items of users (or of item histories) in the data's own ids",
        description="Rank the whole catalog for each user of a run folder (its whole history in the run's data) or "
        "for each history of a file, and write one row per item: user, item, score, rank. Unknown users and items "
        "are counted and named in one warning, then skipped.",
    )
    recommend.add_argument("run_dir", help="a folder written by `cutrec train` (or saved by the Python API)")
    whom = recommend.add_mutually_exclusive_group(required=True)
    whom.add_argument("--all", action="store_true", help="every user of the run's data")
    whom.add_argument("--users", metavar="FILE", help="a text file of user ids, one per line")
    whom.add_argument("--histories", metavar="FILE",
                      help="a sequences file: one 'name item item ...' line per history, oldest item first")
    recommend.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    recommend.add_argument("--no-exclude-seen", action="store_true",
                           help="also recommend items of the user's own history")
    recommend.add_argument("--out", required=True, help="the output file: .parquet or .csv")
    recommend.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    export = commands.add_parser(
        "export",
        parents=[quiet],
        help="write the encoder as ONNX and the item vectors for serving without cutrec",
        description="Write DIR/encoder.onnx (item ids [B, max_len] -> user vectors [B, D], dynamic batch), "
        "DIR/items.npy ([N, D] float32), DIR/item_ids.npy (the raw id of each row) and DIR/metadata.json.",
    )
    export.add_argument("run_dir", help="a folder written by `cutrec train` (or saved by the Python API)")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="onnx (the only format)")
    export.add_argument("--out", required=True, help="a new (or empty) folder")
    experiment = commands.add_parser(
        "experiment",
        parents=[quiet],
        help="train every configuration of a grid file and collect a results table",
        description="Run a grid (a TOML/YAML/JSON file with [axes] dataset, model, loss, batch_size, max_len, "
        "negatives, seed, a [base] of config values and optional named [datasets]; see cutrec/experiment.py) and "
        "write OUT/NAME/results.csv and results.md, one row per run. Rerunning the same command skips finished rows.",
    )
    experiment.add_argument("grid", help="the grid file")
    experiment.add_argument("--commit", help="the commit to name in the table (default: git rev-parse here)")
    report = commands.add_parser(
        "report", parents=[quiet], help="summarise an experiment's results.csv in markdown and PNG plots",
        description="Write OUT/summary.md (the best configuration per loss within --budget-gb, Spearman "
        "correlations of NDCG@10 with negatives, batch size, their product and max_len) and PNG plots.",
    )
    report.add_argument("results", nargs="+", help="results.csv files written by `cutrec experiment`, read as one")
    report.add_argument("--budget-gb", type=float, default=40.0, help="the memory budget (default 40)")
    report.add_argument("--out", help="the report folder (default: report/ beside the results)")
    commands.add_parser("datasets", parents=[quiet], help="list the named datasets and their sources")
    commands.add_parser("presets", parents=[quiet], help="list the named recipes that --preset starts from")
    return parser


def _config_keys_help() -> str:
    """Every config key with its type and default, from the dataclasses (cutrec.config.describe_keys)."""
    from cutrec.config import describe_keys

    lines = [f"  --{key}={default}  [{kind}]" + (f"  {comment}" if comment else "")
             for key, kind, default, comment in describe_keys()]
    return "config keys, with their defaults and types (set as --KEY=VALUE or in a .toml, .yaml or .json --config " \
           "file):\n" + "\n".join(lines)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="start from a named recipe (cutrec presets), before --config and the options")
    parser.add_argument("--config", help="a .toml or .yaml file of config sections")
    for option, key in SHORT_OPTIONS.items():
        parser.add_argument(option, dest=key, metavar=key.split(".")[-1].upper(), help=f"sets {key}")


def _overrides(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """Short options, then free `key=value`, `--key=value` or `--key value` words, in that order."""
    overrides = [f"{key}={getattr(args, key)}" for key in SHORT_OPTIONS.values() if getattr(args, key) is not None]
    words = iter(extra)
    for word in words:
        if word.startswith("--") and "=" not in word:
            value = next(words, None)
            if value is None or value.startswith("--"):
                raise CutrecError(f"option {word!r} needs a value: write it as {word}=VALUE")
            word = f"{word}={value}"
        if "=" not in word:
            raise CutrecError(f"unexpected argument {word!r}; set config keys as --section.key=value")
        overrides.append(word.removeprefix("--"))
    return overrides


def _run_config(args: argparse.Namespace, extra: list[str]):
    """The RunConfig of `train` and `estimate`: defaults, a named dataset's presets, the recipe preset, the file, the
    options."""
    from cutrec import presets
    from cutrec.config import build_config, load_file, merged_values

    values = presets.load(args.preset) if args.preset else {}
    return build_config(merged_values(values, load_file(args.config) if args.config else {}), _overrides(args, extra))


def _train(args: argparse.Namespace, extra: list[str]) -> None:
    from cutrec.config import load_file
    from cutrec.distributed import finish
    from cutrec.train.loop import resume, train

    if args.resume:
        if args.preset:
            raise CutrecError("a resumed run keeps its recipe; leave --preset out with --resume")
        resume(Path(args.resume), load_file(args.config) if args.config else {}, _overrides(args, extra))
    else:
        train(_run_config(args, extra))
    finish()  # a data-parallel run leaves its process group


def _estimate(args: argparse.Namespace, extra: list[str]) -> None:
    from dataclasses import replace

    from cutrec.data.load import load_sequences
    from cutrec.losses import resolve_loss_name
    from cutrec.train import memory
    from cutrec.train.loop import resolve_device, training_data

    config = _run_config(args, extra)
    data = training_data(config, load_sequences(config.data))
    num_items, lengths = data.split.num_items, data.train_lengths
    config = replace(config, loss=replace(config.loss, name=resolve_loss_name(config.loss.name, num_items)))
    device = resolve_device(config.train.device)
    limit = config.train.memory_limit_gb
    if limit is not None:  # a budget needs no GPU here: plan for another machine
        budget, where = int(limit * 2**30), f"train.memory_limit_gb={limit:g}"
    elif device.type == "cuda":
        budget, where = memory.available_memory(config, device)
    else:
        budget, where = None, ""
    fits = None if budget is None else memory.largest_batch(config, num_items, lengths, int(memory.HEADROOM * budget))
    batch = config.train.batch_size
    if batch == "auto":
        if budget is None:
            raise CutrecError("--batch-size auto needs a GPU or --memory-gb to fit into; or give a number")
        batch = memory.auto_batch_size(config, num_items, lengths, budget, where)
    source = config.data.path or config.data.dataset
    print(f"{config.model.name} with {config.loss.name} on {source}: {num_items:,} items, "
          f"max_len {config.model.max_len}, dim {config.model.dim}, {config.model.num_blocks} blocks")
    print(memory.estimate(config, num_items, lengths, int(batch)).describe())
    if fits is not None:
        print(f"largest batch within {memory.HEADROOM:.0%} of {where} ({budget / 2**20:,.0f} MB): {fits}")


def _recommend(args: argparse.Namespace) -> None:
    import numpy as np

    from cutrec.recommend import TrainedRun, write_recommendations
    from cutrec.train.loop import resolve_device

    run = TrainedRun.load(Path(args.run_dir), resolve_device(args.device))
    run.check_k(args.k)
    if args.all:
        keys, histories = run.all_histories()
    elif args.users:
        keys, histories = run.user_histories(run.users.parse(_words(args.users, "--users")), strict=False)
    else:
        names, lists = _histories_file(args.histories)
        keys = np.array(names, dtype=object)
        histories = run.item_histories(keys, [run.items.parse(items) for items in lists], strict=False)
    batches = run.batches(keys, histories, args.k, exclude_seen=not args.no_exclude_seen)
    rows = write_recommendations(batches, Path(args.out))
    note(f"wrote {rows:,} recommendations for {len(keys):,} users to {args.out}")


def _words(path: str, option: str) -> list[str]:
    """The whitespace-separated words of a text file."""
    try:
        words = Path(path).read_text().split()
    except (OSError, UnicodeDecodeError) as err:
        raise CutrecError(f"{option} {path!r} cannot be read ({err}); pass a text file of ids") from None
    if not words:
        raise CutrecError(f"{option} {path!r} is empty; write one id per line")
    return words


def _histories_file(path: str) -> tuple[list[str], list[list[str]]]:
    """(names, item words) of a sequences file: one 'name item item ...' line per history."""
    try:
        lines = [line.split() for line in Path(path).read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise CutrecError(f"--histories {path!r} cannot be read ({err}); pass a sequences text file") from None
    lines = [words for words in lines if words]
    short = next((i for i, words in enumerate(lines) if len(words) < 2), None)
    if short is not None:
        raise CutrecError(f"--histories {path!r}: history {lines[short][0]!r} has no items; write 'name item ...'")
    if not lines:
        raise CutrecError(f"--histories {path!r} is empty; write one 'name item item ...' line per history")
    return [words[0] for words in lines], [words[1:] for words in lines]


def _export(args: argparse.Namespace) -> None:
    import torch

    from cutrec.export import export_onnx
    from cutrec.recommend import TrainedRun

    out = export_onnx(TrainedRun.load(Path(args.run_dir), torch.device("cpu")), Path(args.out))
    note(f"exported {args.run_dir} to {out}")


def _evaluate(args: argparse.Namespace) -> None:
    from cutrec.eval.metrics import format_table
    from cutrec.train.loop import resolve_device, test_run

    folder = Path(args.run_dir)
    if not folder.is_dir():
        raise CutrecError(f"run folder {args.run_dir!r} does not exist; pass a folder written by `cutrec train`")
    results = test_run(folder, resolve_device(args.device))
    print(format_table(results["test"], sorted(_cutoffs(results["test"]))))


def _cutoffs(table: dict[str, dict[str, float]]) -> set[int]:
    return {int(name.split("@")[1]) for row in table.values() for name in row}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, without the source location that means nothing to a command-line user."""
    print(f"cutrec: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    # Batches have a different number of target positions each step, so the loss's large buffers change size every
    # step; with fixed-size segments the allocator fragments (a 1M-item CE run at batch 512 failed with 44 GiB
    # reserved but unused). Growable segments avoid it. Set before torch touches CUDA; a user's own setting wins.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    set_quiet(args.quiet)
    if args.command == "train" and args.devices != 1:
        return _launch(args, extra, sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(parser, args, extra)


def _launch(args: argparse.Namespace, extra: list[str], argv: list[str]) -> int:
    """`cutrec train --devices G ...` as `torchrun --standalone --nproc-per-node=G -m cutrec train ...` (one
    machine; for several, run torchrun yourself, see docs/training.md). The config is checked here first, so a
    mistake is one line, not one per process."""
    from cutrec.distributed import check_batch, world_size

    devices = args.devices
    try:
        if devices < 1:
            raise CutrecError(f"--devices {devices} is out of range; give 1 or more")
        if world_size() > 1:
            raise CutrecError("--devices starts torchrun itself; under torchrun leave --devices out")
        if args.resume is None:
            config = _run_config(args, extra)
            check_batch(config.train.batch_size, devices)
            if config.train.catalog_parallel:
                from cutrec.train.catalog_parallel import check_config

                check_config(config)
            if config.data.path is not None and not Path(config.data.path).expanduser().exists():
                raise CutrecError(f"data.path={config.data.path!r} does not exist; pass an existing file")
    except CutrecError as err:
        print(f"cutrec: error: {err}", file=sys.stderr)
        return 2
    rest = [arg for i, arg in enumerate(argv) if not arg.startswith("--devices")
            and not (i > 0 and argv[i - 1] == "--devices")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
               "-m", "cutrec", *rest]
    os.execv(sys.executable, command)  # torchrun takes this process's place, and its signals


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> int:
    try:
        if args.command == "train":
            _train(args, extra)
        elif args.command == "estimate":
            _estimate(args, extra)
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "recommend":
            _recommend(args)
        elif args.command == "export":
            _export(args)
        elif args.command == "report":
            from cutrec.report import write_report

            results = [Path(path) for path in args.results]
            out = Path(args.out or results[0].parent / "report")
            print(f"report: {write_report(results, out, args.budget_gb)}")
        elif args.command == "experiment":
            from cutrec.experiment import run_grid

            print(f"results: {run_grid(args.grid, commit=args.commit) / 'results.md'}")
        elif args.command == "presets":
            from cutrec import presets

            print(presets.describe())
        else:
            from cutrec.data import registry

            print(registry.dataset_table())
    except CutrecError as err:
        print(f"cutrec: error: {err}", file=sys.stderr)
        return 2
    except RunStopped as stopped:
        print(f"cutrec: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print("cutrec: interrupted; the run folder keeps the last good checkpoint and the finished epochs' log",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
