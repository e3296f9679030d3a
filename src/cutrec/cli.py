"""The `cutrec` command: train | evaluate | datasets.

Options are config keys: `--train.lr=0.001` (or `train.lr=0.001`) sets any key of cutrec.config; a few common ones
have short names (`--loss CE`, `--data PATH`, ...). A user mistake prints one line `cutrec: error: ...` and exits
with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cutrec.errors import CutrecError

SHORT_OPTIONS = {
    "--model": "model.name",
    "--dataset": "data.dataset",
    "--data": "data.path",
    "--loss": "loss.name",
    "--negatives": "loss.num_negatives",
    "--share": "loss.share",
    "--epochs": "train.epochs",
    "--batch-size": "train.batch_size",
    "--lr": "train.lr",
    "--seed": "train.seed",
    "--device": "train.device",
    "--out": "out",
    "--name": "name",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cutrec", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train a model and report full-catalog test metrics",
        description="Train, validate each epoch, keep the best checkpoint and test it. Pick the encoder with "
        "--model sasrec (causal, next-item targets; the default) or --model bert4rec (bidirectional, masked-item "
        "targets, --model.mask_prob=0.2), and the loss with --loss auto|CE|CCE|CE-|CCE-|BCE|BCE+|gBCE|SCE. Any "
        "config key can be set with --section.key=value (see cutrec/config.py).",
    )
    train.add_argument("--config", help="a .toml or .yaml file of config sections")
    for option, key in SHORT_OPTIONS.items():
        train.add_argument(option, dest=key, metavar=key.split(".")[-1].upper(), help=f"sets {key}")
    evaluate = commands.add_parser("evaluate", help="re-score a saved run on its test set")
    evaluate.add_argument("run_dir", help="a folder written by `cutrec train`")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    commands.add_parser("datasets", help="list the named datasets and their sources")
    return parser


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


def _train(args: argparse.Namespace, extra: list[str]) -> None:
    from cutrec.config import build_config, load_file
    from cutrec.data import registry
    from cutrec.train.loop import train

    file_values = load_file(args.config) if args.config else {}
    overrides = _overrides(args, extra)
    config = build_config(file_values, overrides)
    if config.data.path is not None and config.data.dataset in registry.DATASETS:
        presets = registry.DATASETS[config.data.dataset].preprocessing
        print(
            f"note: data.path is set, so the registry defaults of {config.data.dataset!r} ({presets}) are not "
            "applied; pass them as --data.KEY=VALUE if the file needs them",
            file=sys.stderr,
        )
    if config.data.path is None and config.data.dataset != "synthetic":
        if config.data.dataset not in registry.DATASETS:
            names = ", ".join(["synthetic", *registry.DATASETS])
            raise CutrecError(
                f"data.dataset={config.data.dataset!r} is not a known dataset ({names}); "
                "or pass a local file with --data PATH"
            )
        presets = {"data": dict(registry.DATASETS[config.data.dataset].preprocessing)}
        config = build_config(_merged(presets, file_values), overrides)
    train(config)


def _merged(base: dict, top: dict) -> dict:
    """Nested dict merge: values of `top` win."""
    merged = dict(base)
    for key, value in top.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both_sections else value
    return merged


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


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "train":
            _train(args, extra)
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        elif args.command == "evaluate":
            _evaluate(args)
        else:
            from cutrec.data import registry

            print(registry.dataset_table())
    except CutrecError as err:
        print(f"cutrec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cutrec: interrupted; the run folder keeps the last good checkpoint and the finished epochs' log",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
