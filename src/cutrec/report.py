"""`cutrec report RESULTS.csv`: a markdown summary and PNG plots of an experiment's results table.

The summary gives, for a memory budget, the best configuration of each loss (highest test NDCG@10 among the runs
whose peak training memory fits; per dataset and model where the tables hold several), the Spearman rank
correlation of NDCG@10 with negatives, batch size, their product and sequence length, each with the number of runs
behind it ("not varied" where the factor is constant), each configuration's mean and range over its seeds
(validation and test), a recipe study's ablation (each recipe's validation NDCG@10 against the recipe "base"),
and, for each loss run at several batch sizes and negatives, the table of mean NDCG@10 over seeds with the answer
to "does scaling both beat maximising one?".
Several results tables (grids run apart) are read as one. Plots (matplotlib, the optional `plots` extra, imported
only here): NDCG@10 against negatives per batch size, peak memory against negatives per loss, NDCG@10 against peak
memory per loss (with each one's frontier), and training seconds per epoch against catalog size per loss; one panel
per dataset and model where the rows hold several (per model alone for the catalog-size plot), a loss in one colour
throughout. Only rows with status ok count; OOM rows are listed. Runs of a validation-only grid (eval.test=false, a
recipe study) have no test NDCG@10: they appear in the over-seeds table alone.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cutrec.errors import CutrecError

FACTORS = ("negatives", "batch_size", "negatives x batch_size", "max_len")


def read_results(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise CutrecError(f"results {str(path)!r} do not exist; pass the results.csv that `cutrec experiment` wrote")
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows or "NDCG@10" not in rows[0]:
        raise CutrecError(f"{str(path)!r} holds no results rows; pass a results.csv of `cutrec experiment`")
    return rows


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # ties share their average rank
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _factor(row: dict[str, str], name: str) -> float | None:
    if name == "negatives x batch_size":
        a, b = _factor(row, "negatives"), _factor(row, "batch_size")
        return None if a is None or b is None else a * b
    try:
        return float(row.get(name) or "")
    except ValueError:  # unset, or batch_size "auto"
        return None


def correlations(rows: list[dict[str, str]]) -> list[tuple[str, float, int]]:
    """(factor, Spearman of NDCG@10 with it, runs) over the ok rows where the factor is set."""
    out = []
    for name in FACTORS:
        pairs = [(_factor(r, name), float(r["NDCG@10"])) for r in rows if _factor(r, name) is not None]
        if len(pairs) >= 2:
            x, y = np.array(pairs).T
            out.append((name, spearman(x, y), len(pairs)))
        else:
            out.append((name, float("nan"), len(pairs)))
    return out


def best_within(rows: list[dict[str, str]], budget_gb: float) -> dict[tuple[str, ...], dict[str, str]]:
    """Per (dataset, model, loss), the ok row of highest NDCG@10 whose peak training memory is within the budget;
    the key holds the dataset and the model only where the rows have several (scores of different datasets or
    models are not comparable), then the loss without its settings."""
    scopes = _scopes(rows)
    best: dict[tuple[str, ...], dict[str, str]] = {}
    for row in rows:
        if float(row["peak_train_gpu_mb"] or 0) > budget_gb * 1024:
            continue
        key = (*(row[name] for name in scopes), row["loss"].split(":")[0])
        if key not in best or float(row["NDCG@10"]) > float(best[key]["NDCG@10"]):
            best[key] = row
    return best


def _scopes(rows: list[dict[str, str]]) -> list[str]:
    """Of dataset and model, those that take several values in `rows`."""
    return [name for name in ("dataset", "model") if len({row.get(name, "") for row in rows}) > 1]


def write_report(results: list[Path], out: Path, budget_gb: float) -> Path:
    """summary.md and the plots in `out`, from one or more results tables; returns the summary's path."""
    rows = [row for path in results for row in read_results(path)]
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        raise CutrecError(f"{', '.join(map(str, results))} hold no finished run (status ok); run the grid first")
    out.mkdir(parents=True, exist_ok=True)
    tested = [r for r in ok if r["NDCG@10"]]  # validation-only runs have no test NDCG@10
    lines = [f"# Experiment report: {', '.join(map(str, results))}", "", f"{len(ok)} finished runs of {len(rows)} "
             f"({len(ok) - len(tested)} validation only); machine {', '.join(sorted({r['machine'] for r in ok}))}; "
             f"commits {', '.join(sorted({r['commit'] for r in ok}))}"]
    if tested:
        best = best_within(tested, budget_gb)
        scopes = _scopes(tested)
        lines += ["", f"## Best configuration per {', '.join([*scopes, 'loss'])} within {budget_gb:g} GB of peak "
                  "training memory", "", "| " + " | ".join(scopes) + (" | " if scopes else "") +
                  "loss | NDCG@10 | HR@10 | peak MB | train s / epoch | run |", "|---" * (len(scopes) + 6) + "|"]
        for key, row in sorted(best.items(), key=lambda item: _natural(" ".join(item[0]))):
            lines.append(f"| {' | '.join(key)} | {row['NDCG@10']} | {row['HR@10']} | {row['peak_train_gpu_mb']} | "
                         f"{row['mean_train_seconds']} | {row['run']} |")
        lines += ["", "## Spearman correlation of NDCG@10", "", "| factor | Spearman | runs |", "|---|---|---|"]
        lines += [f"| {name} | {'not varied' if np.isnan(rho) else f'{rho:.3f}'} | {n} |"
                  for name, rho, n in correlations(tested)]
    lines += over_seeds_section(ok)
    lines += recipes_section(ok)
    for loss, table in balance_tables(tested).items():
        lines += ["", *balance_section(loss, table)]
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "## Runs that did not finish", ""]
        lines += [f"- {r['run']}: {r['status']} ({r['note']})" for r in failed]
    lines += ["", *(f"![{name}]({name}.png)" for name in (_plots(tested, out) if tested else []))]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary


SETTINGS = ("dataset", "recipe", "model", "loss", "batch_size", "max_len", "negatives")  # all axes but the seed


def over_seeds(rows: list[dict[str, str]]) -> dict[tuple[str, ...], list[dict[str, str]]]:
    """The ok rows of each configuration (every axis but the seed) that ran with two or more seeds, ordered by
    each setting's first appearance in `rows` (dataset first, then recipe, model, loss, ...)."""
    groups: dict[tuple[str, ...], list[dict[str, str]]] = defaultdict(list)
    first: dict[tuple[str, str], int] = {}
    for row in rows:
        key = tuple(row.get(name, "") for name in SETTINGS)
        groups[key].append(row)
        for name, value in zip(SETTINGS, key, strict=True):
            first.setdefault((name, value), len(first))
    order = sorted(groups, key=lambda key: [first[name, value] for name, value in zip(SETTINGS, key, strict=True)])
    return {key: groups[key] for key in order if len(groups[key]) >= 2}


def over_seeds_section(rows: list[dict[str, str]]) -> list[str]:
    """A table of each configuration's mean (min..max) over its seeds of the best validation NDCG@10 and of test
    NDCG@10 and HR@10 (blank for validation-only runs); none without seeds."""
    groups = over_seeds(rows)
    if not groups:
        return []
    shown = [name for name in SETTINGS if any(key[SETTINGS.index(name)] for key in groups)]
    metrics = ("valid NDCG@10", "NDCG@10", "HR@10")
    lines = ["", "## Over seeds", "", "| " + " | ".join(shown) + " | seeds | valid NDCG@10 mean (min..max) | "
             "test NDCG@10 mean (min..max) | test HR@10 mean (min..max) | peak MB | train s / epoch |",
             "|" + "---|" * (len(shown) + 6)]
    for key, group in groups.items():
        cells = [key[SETTINGS.index(name)] for name in shown]
        spread = [_spread([float(r[m]) for r in group if r.get(m)]) for m in metrics]
        peak = max(float(r["peak_train_gpu_mb"] or 0) for r in group)
        seconds = np.mean([float(r["mean_train_seconds"] or 0) for r in group])
        lines.append(f"| {' | '.join(cells)} | {len(group)} | {' | '.join(spread)} | {peak:.0f} | {seconds:.3f} |")
    return lines


def recipes_section(rows: list[dict[str, str]]) -> list[str]:
    """The ablation of a recipe study: per configuration of the other axes that ran the recipe "base", each recipe's
    mean (min..max) best validation NDCG@10 over its seeds and its mean's difference from base's, marked * when
    that difference is larger than the seed noise: the larger of base's own spread (max - min over seeds) and the
    median spread of the recipes run with two or more seeds (two seeds of base can agree by chance). Nothing is
    marked when base ran with one seed; no table without a base recipe."""
    others = [name for name in SETTINGS if name != "recipe"]
    groups: dict[tuple[str, ...], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get("recipe") and row.get("valid NDCG@10"):
            groups[tuple(row.get(name, "") for name in others)][row["recipe"]].append(float(row["valid NDCG@10"]))
    lines = []
    for key, recipes in groups.items():
        if "base" not in recipes:
            continue
        base = recipes["base"]
        title = ", ".join(f"{name} {value}" for name, value in zip(others, key, strict=True) if value)
        spreads = [max(values) - min(values) for values in recipes.values() if len(values) >= 2]
        # one seed of base: its spread is unknown
        spread = max(max(base) - min(base), float(np.median(spreads))) if len(base) >= 2 else None
        marks = (f"* beyond the seed noise {spread:.4f}: the larger of base's spread and the median spread of "
                 f"{len(spreads)} recipes with two or more seeds" if spread is not None else
                 "one seed of base, so no spread to judge by: nothing starred")
        lines += ["", f"## Recipes against base: {title or 'all runs'} (validation NDCG@10; {marks})", "",
                  "| recipe | seeds | valid NDCG@10 mean (min..max) | against base |", "|---|---|---|---|"]
        for recipe, values in sorted(recipes.items(), key=lambda item: -np.mean(item[1])):
            gain = np.mean(values) - np.mean(base)
            mark = " *" if spread is not None and abs(gain) > spread else ""
            lines.append(f"| {recipe} | {len(values)} | {_spread(values)} | {gain:+.4f}{mark} |")
    return lines


def _spread(values: list[float]) -> str:
    """'mean (min..max)' of `values`, blank when there are none."""
    return f"{np.mean(values):.4f} ({min(values):.4f}..{max(values):.4f})" if values else ""


def balance_tables(rows: list[dict[str, str]]) -> dict[str, dict[tuple[float, float], list[float]]]:
    """Per loss run at two or more batch sizes and two or more negatives: (batch, negatives) -> NDCG@10 of each
    seed."""
    tables: dict[str, dict[tuple[float, float], list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        batch, negatives = _factor(row, "batch_size"), _factor(row, "negatives")
        if batch is not None and negatives is not None:
            tables[row["loss"]][batch, negatives].append(float(row["NDCG@10"]))
    return {loss: table for loss, table in tables.items()
            if len({b for b, _ in table}) >= 2 and len({n for _, n in table}) >= 2}


def balance_section(loss: str, table: dict[tuple[float, float], list[float]]) -> list[str]:
    """The mean NDCG@10 over seeds of each batch size x negatives, and whether the best cell scales both: it does
    when neither its batch size nor its negatives is the smallest of the grid."""
    batches, negatives = sorted({b for b, _ in table}), sorted({n for _, n in table})
    mean = {cell: float(np.mean(values)) for cell, values in table.items()}
    seeds = sorted({len(values) for values in table.values()})
    lines = [f"## {loss}: mean test NDCG@10 over seeds ({'/'.join(map(str, seeds))} per cell), batch size x negatives",
             "", "| batch \\ negatives | " + " | ".join(f"{n:g}" for n in negatives) + " |",
             "|---|" + "---|" * len(negatives)]
    for b in batches:
        lines.append(f"| {b:g} | " + " | ".join(f"{mean[b, n]:.4f}" if (b, n) in mean else "" for n in negatives)
                     + " |")
    (best_b, best_n), best = max(mean.items(), key=lambda item: item[1])
    one_negatives = max((value, cell) for cell, value in mean.items() if cell[0] == batches[0])  # smallest batch
    one_batch = max((value, cell) for cell, value in mean.items() if cell[1] == negatives[0])  # fewest negatives
    spreads = [max(values) - min(values) for values in table.values() if len(values) >= 2]
    spread = float(np.mean(spreads)) if spreads else float("nan")
    gain = best - max(one_negatives[0], one_batch[0])
    if best_b == batches[0] or best_n == negatives[0]:
        answer = "no: the best cell keeps one of them at the grid's smallest"
    elif not gain > spread:
        answer = (f"not clearly: the best cell raises both, but its gain over maximising one ({gain:.4f}) is within "
                  f"the seed spread ({spread:.4f}, the mean max - min of a cell over seeds)")
    else:
        answer = f"yes: the best cell raises both, {gain:.4f} above maximising one (seed spread {spread:.4f})"
    lines += ["", f"Best cell: batch {best_b:g} x {best_n:g} negatives, {best:.4f}. At the smallest batch "
              f"({batches[0]:g}) the best is {one_negatives[0]:.4f} ({one_negatives[1][1]:g} negatives); with the "
              f"fewest negatives ({negatives[0]:g}) the best is {one_batch[0]:.4f} (batch {one_batch[1][0]:g}).",
              "", f"Does scaling both beat maximising one? {answer}."]
    return lines


def _natural(label: str) -> list[Any]:
    """A sort key that orders "batch 64" before "batch 128"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label)]


def _plots(rows: list[dict[str, str]], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        raise CutrecError("plots need matplotlib: pip install 'cutrec[plots]'") from None
    made = []

    def plot(name: str, xlabel: str, ylabel: str, panels: dict[str, dict[str, list[tuple[float, float]]]], *,
             logx: bool, frontier: bool = False) -> None:
        """One panel per key of `panels` (a dataset and model, or "" for all rows), one line per label in each;
        a label keeps its colour in every panel."""
        panels = {title: {label: sorted(points) for label, points in series.items() if points}
                  for title, series in panels.items()}
        panels = {title: series for title, series in panels.items() if series}
        if not panels:
            return
        labels = sorted({label for series in panels.values() for label in series}, key=_natural)
        colours = dict(zip(labels, plt.get_cmap("tab20" if len(labels) > 10 else "tab10").colors, strict=False))
        columns = min(len(panels), 2)
        rows_of_panels = -(-len(panels) // columns)
        figure, grid = plt.subplots(rows_of_panels, columns, figsize=(6 * columns, 4 * rows_of_panels),
                                    squeeze=False, sharey=True)
        ordered = sorted(panels.items(), key=lambda item: _natural(item[0]))
        for axes, (title, series) in zip(grid.flat, ordered, strict=False):  # an odd count leaves a cell empty
            for label in labels:
                if label not in series:
                    continue
                x, y = np.array(series[label]).T
                if frontier:
                    axes.scatter(x, y, s=12, color=colours[label])
                    best = np.maximum.accumulate(y)  # the highest NDCG@10 reachable within each memory
                    axes.step(x, best, where="post", label=label, color=colours[label])
                else:
                    xs = np.unique(x)
                    axes.plot(xs, [y[x == value].mean() for value in xs], marker="o", label=label,  # mean over seeds
                              color=colours[label])
            if logx:
                axes.set_xscale("log")
                axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # labels at 1, 2, 5 x 10^k
                axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
                axes.xaxis.set_minor_formatter(NullFormatter())
            axes.set_title(title, fontsize=9)
            axes.set_xlabel(xlabel)
            axes.set_ylabel(ylabel)
            axes.legend(fontsize=7)
        for axes in list(grid.flat)[len(panels):]:
            axes.set_visible(False)
        figure.tight_layout()
        figure.savefig(out / f"{name}.png", dpi=120)
        plt.close(figure)
        made.append(name)

    scopes = _scopes(rows)

    def panels(key, x: str, y: str, by: list[str] = scopes) -> dict[str, dict[str, list[tuple[float, float]]]]:
        """Points (x, y) of the rows, by panel (the values of `by`: dataset and model, where they vary) and by
        key(row)."""
        groups: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
        for row in rows:
            if row.get(x) not in ("", None) and row.get(y) not in ("", None):
                title = ", ".join(row[scope] for scope in by)
                groups[title][key(row)].append((float(row[x]), float(row[y])))
        return groups

    plot("ndcg_vs_negatives", "negatives", "test NDCG@10",
         panels(lambda r: f"{r['loss']} batch {r['batch_size'] or 'base'}", "negatives", "NDCG@10"), logx=True)
    plot("memory_vs_negatives", "negatives", "peak training GPU MB",
         panels(lambda r: r["loss"], "negatives", "peak_train_gpu_mb"), logx=True)
    plot("ndcg_vs_memory", "peak training GPU MB", "test NDCG@10",
         panels(lambda r: r["loss"].split(":")[0], "peak_train_gpu_mb", "NDCG@10"), logx=True, frontier=True)
    plot("epoch_time_vs_catalog", "items", "training s / epoch",
         panels(lambda r: r["loss"], "items", "mean_train_seconds", by=[s for s in scopes if s != "dataset"]),
         logx=True)  # the catalogs are the datasets: one panel holds them all
    return made
