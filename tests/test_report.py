"""`cutrec report`: the budget's best configuration per loss, Spearman correlations against scipy on fresh random
results, the plots, and one-line errors."""

import csv

import numpy as np
import pytest
from scipy.stats import spearmanr

from cutrec.cli import main
from cutrec.errors import CutrecError
from cutrec.experiment import COLUMNS
from cutrec.report import (
    balance_section,
    balance_tables,
    best_within,
    correlations,
    over_seeds_section,
    recipes_section,
    spearman,
    write_report,
)


def _results(tmp_path, rng):
    rows = []
    for i, (loss, negatives, batch) in enumerate(
        (loss, n, b) for loss in ("CE-", "CCE-") for n in (15, 63, 255, 1023) for b in (64, 128, 256)
    ):
        memory = negatives * batch * (40.0 if loss == "CE-" else 2.0) / 1024
        rows.append({"run": f"r{i}", "status": "ok", "loss": loss, "negatives": str(negatives),
                     "batch_size": str(batch), "max_len": "50", "items": "1000",
                     "NDCG@10": f"{rng.uniform(0, 0.1):.6f}", "HR@10": "0.1",
                     "peak_train_gpu_mb": f"{memory:.1f}", "mean_train_seconds": f"{rng.uniform(1, 3):.3f}",
                     "machine": "test", "commit": "abc", "note": ""})
    rows.append({"run": "big", "status": "OOM", "loss": "CE", "note": "CUDA out of memory", "NDCG@10": "",
                 "machine": "test", "commit": "abc"})
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path, rows


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng()
    x = rng.integers(0, 5, int(rng.integers(5, 40))).astype(float)
    y = rng.normal(size=len(x))
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(4), y[:4]))


def test_report_budget_correlations_and_plots(tmp_path):
    path, rows = _results(tmp_path, np.random.default_rng())
    ok = [r for r in rows if r["status"] == "ok"]
    best = best_within(ok, budget_gb=1.0)
    for loss in ("CE-", "CCE-"):
        fitting = [r for r in ok if r["loss"] == loss and float(r["peak_train_gpu_mb"]) <= 1024]
        assert best[loss,]["NDCG@10"] == max((r["NDCG@10"] for r in fitting), key=float)
    table = {name: (rho, n) for name, rho, n in correlations(ok)}
    product = [float(r["negatives"]) * float(r["batch_size"]) for r in ok]
    assert table["negatives x batch_size"][0] == pytest.approx(
        spearmanr(product, [float(r["NDCG@10"]) for r in ok]).statistic)
    assert table["negatives"][1] == len(ok)
    assert main(["report", str(path), "--budget-gb", "1", "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "within 1 GB" in summary and "big: OOM" in summary
    assert f"| max_len | not varied | {len(ok)} |" in summary  # one max_len in the grid: no correlation to give
    for name in ("ndcg_vs_negatives", "memory_vs_negatives", "ndcg_vs_memory", "epoch_time_vs_catalog"):
        assert (tmp_path / "report" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"({name}.png)" in summary


def test_the_best_configuration_is_chosen_per_dataset_and_model_where_they_vary():
    """Scores of different datasets are not comparable: with two datasets, each gets its own best row per loss."""
    rng = np.random.default_rng()
    rows = [{"run": f"{d}{m}{i}", "dataset": d, "model": m, "loss": loss, "NDCG@10": f"{rng.uniform(0, 0.1):.6f}",
             "peak_train_gpu_mb": "10"} for d in ("beauty", "toys") for m in ("sasrec", "bert4rec")
            for loss in ("CE", "CCE-:share=none", "CCE-:share=block") for i in range(2)]
    best = best_within(rows, budget_gb=1.0)
    assert len(best) == 8  # 2 datasets x 2 models x 2 losses (CCE- settings are one loss)
    for (dataset, model, loss), row in best.items():
        mine = [r for r in rows if (r["dataset"], r["model"], r["loss"].split(":")[0]) == (dataset, model, loss)]
        assert row["NDCG@10"] == max((r["NDCG@10"] for r in mine), key=float)
    assert set(best_within([r for r in rows if r["model"] == "sasrec"], 1.0)) == {
        (d, loss) for d in ("beauty", "toys") for loss in ("CE", "CCE-")}  # one model: not in the key


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none.csv")]) == 2
    assert "do not exist" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text("a,b\n")
    assert main(["report", str(tmp_path / "empty.csv")]) == 2
    assert "holds no results rows" in capsys.readouterr().err
    with pytest.raises(CutrecError, match="no finished run"):
        path, _ = _results(tmp_path, np.random.default_rng())
        text = path.read_text().replace(",ok,", ",OOM,")
        path.write_text(text)
        write_report([path], tmp_path / "r", 40)


def _balance(ndcg):
    """Rows of a batch x negatives grid, two seeds a cell: ndcg(batch, negatives) -/+ 5e-5 (a seed spread of 1e-4)."""
    return [{"loss": "CCE-", "batch_size": str(b), "negatives": str(n), "NDCG@10": str(ndcg(b, n) + noise)}
            for b in (64, 128, 256, 512) for n in (16, 64, 256, 1024) for noise in (-5e-5, 5e-5)]


@pytest.mark.parametrize(
    "ndcg,answer",
    [
        (lambda b, n: 0.01 * np.log(b * n), "yes: the best cell raises both"),
        (lambda b, n: 0.01 * np.log(n) - 0.001 * np.log(b), "no: the best cell keeps one of them"),
        (lambda b, n: 0.01 * np.log(n) + 2e-5 * (b > 64), "not clearly: the best cell raises both"),
    ],
)
def test_the_balance_answer_follows_the_best_cell_and_the_seed_spread(ndcg, answer):
    tables = balance_tables(_balance(ndcg))
    assert list(tables) == ["CCE-"] and len(tables["CCE-"]) == 16
    text = "\n".join(balance_section("CCE-", tables["CCE-"]))
    assert f"Does scaling both beat maximising one? {answer}" in text
    assert "| 512 | " in text and "(2 per cell)" in text


def test_several_results_tables_are_read_as_one(tmp_path):
    rng = np.random.default_rng()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _ = _results(tmp_path / "a", rng)
    second, _ = _results(tmp_path / "b", rng)
    assert main(["report", str(first), str(second), "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "48 finished runs of 50" in summary and str(second) in summary


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]  # the signature, then the IHDR chunk: width and height, big-endian
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_each_dataset_and_model_gets_its_own_panel(tmp_path):
    """Three datasets and two models: six panels of the frontier plot, in a grid two wide; the catalog-size plot
    puts the datasets (its x axis) in one panel per model."""
    rng = np.random.default_rng()
    rows = [{"run": f"{d}{m}{loss}{s}", "status": "ok", "dataset": d, "model": m, "loss": loss,
             "items": str(1000 * (k + 1)), "NDCG@10": f"{rng.uniform(0, 0.1):.6f}", "HR@10": "0.1",
             "peak_train_gpu_mb": f"{rng.uniform(100, 500):.1f}", "mean_train_seconds": "1.0", "machine": "test",
             "commit": "abc", "note": ""}
            for k, d in enumerate(("beauty", "toys", "ml")) for m in ("sasrec", "bert4rec") for loss in ("CE", "CCE-")
            for s in range(2)]
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    write_report([path], tmp_path / "report", budget_gb=40)
    frontier = _png_size(tmp_path / "report" / "ndcg_vs_memory.png")
    catalog = _png_size(tmp_path / "report" / "epoch_time_vs_catalog.png")
    assert frontier == (2 * 720, 3 * 480)  # 6 x 4 inches a panel at 120 dpi: 2 columns, 3 rows
    assert catalog == (2 * 720, 480)  # sasrec and bert4rec side by side


def test_configurations_run_with_several_seeds_get_their_mean_and_range():
    rng = np.random.default_rng()
    scores = rng.uniform(0, 0.1, 5)
    rows = [{"dataset": "d", "model": "sasrec", "loss": "CE", "batch_size": "", "max_len": "", "negatives": "",
             "seed": str(seed), "NDCG@10": f"{value:.6f}", "HR@10": "0.2", "peak_train_gpu_mb": "10",
             "mean_train_seconds": "1.0"} for seed, value in enumerate(scores[:3])]
    rows.append({**rows[0], "loss": "BCE", "NDCG@10": f"{scores[3]:.6f}"})  # one seed: not a group
    text = "\n".join(over_seeds_section(rows))
    kept = [float(f"{value:.6f}") for value in scores[:3]]
    assert f"| d | sasrec | CE | 3 |  | {np.mean(kept):.4f} ({min(kept):.4f}..{max(kept):.4f}) |" in text
    assert "BCE" not in text and "| dataset | model | loss | seeds | valid NDCG@10" in text


def test_a_validation_only_grid_reports_its_validation_spread_alone(tmp_path):
    """Rows of eval.test=false runs (no test NDCG@10): the over-seeds table gives their validation mean and range
    per recipe; the sections that rank by test NDCG@10 are left out."""
    rng = np.random.default_rng()
    valid = rng.uniform(0.02, 0.08, (2, 3))
    rows = [{"run": f"{recipe}-{seed}", "status": "ok", "dataset": "d", "recipe": recipe, "seed": str(seed),
             "NDCG@10": "", "HR@10": "", "valid NDCG@10": f"{valid[i, seed]:.6f}", "peak_train_gpu_mb": "10",
             "mean_train_seconds": "1.0", "machine": "test", "commit": "abc", "note": ""}
            for i, recipe in enumerate(("plain", "swiglu")) for seed in range(3)]
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = write_report([path], tmp_path / "report", 40).read_text()
    assert "6 finished runs of 6 (6 validation only)" in summary
    assert "Best configuration" not in summary and "Spearman" not in summary
    for i, recipe in enumerate(("plain", "swiglu")):
        kept = [float(f"{value:.6f}") for value in valid[i]]
        assert f"| d | {recipe} | 3 | {np.mean(kept):.4f} ({min(kept):.4f}..{max(kept):.4f}) |  |  |" in summary
    assert "Recipes against base" not in summary  # no recipe named base


def test_the_ablation_gives_each_recipe_against_base_and_marks_gains_beyond_the_base_spread():
    rng = np.random.default_rng()
    base = rng.uniform(0.04, 0.05, 3)
    rows = [{"dataset": "d", "recipe": "base", "seed": str(s), "valid NDCG@10": f"{v:.6f}"} for s, v in enumerate(base)]
    spread = float(f"{base.max():.6f}") - float(f"{base.min():.6f}")
    big, small = np.mean(base) + 2 * spread + 0.001, np.mean(base) + spread / 4
    rows += [{"dataset": "d", "recipe": name, "seed": str(s), "valid NDCG@10": f"{value:.6f}"}
             for name, value in (("wide", big), ("deep", small)) for s in range(2)]
    rows.append({"dataset": "e", "recipe": "wide", "seed": "0", "valid NDCG@10": "0.1"})  # no base on e: no table
    text = "\n".join(recipes_section(rows))
    assert text.count("## Recipes against base") == 1 and "dataset d" in text
    lines = [line for line in text.splitlines() if line.startswith("| ") and "recipe |" not in line]
    assert [line.split(" | ")[0] for line in lines] == ["| wide", "| deep", "| base"]  # best first
    assert lines[0].endswith(f"{float(f'{big:.6f}') - np.mean([float(f'{v:.6f}') for v in base]):+.4f} * |")
    assert not lines[1].endswith("* |") and lines[2].endswith("+0.0000 |")


def test_two_seeds_of_base_that_agree_by_chance_do_not_make_every_recipe_a_gain():
    """Base's seeds 0.109263 and 0.109293 (as on MovieLens 100K) while the recipes' seeds differ by about 0.004: a
    difference of 0.001 is within the seed noise, one of 0.006 is not."""
    rng = np.random.default_rng()
    rows = [{"dataset": "d", "recipe": "base", "seed": str(s), "valid NDCG@10": v}
            for s, v in enumerate(("0.109263", "0.109293"))]
    for name, centre in (("near", 0.1103), ("far", 0.1153), ("other", 0.1083)):
        half = rng.uniform(0.0019, 0.0021)
        rows += [{"dataset": "d", "recipe": name, "seed": str(s), "valid NDCG@10": f"{centre + sign * half:.6f}"}
                 for s, sign in enumerate((-1, 1))]
    lines = {line.split(" | ")[0][2:]: line for line in recipes_section(rows) if line.startswith("| ")}
    assert lines["far"].endswith("* |") and not lines["near"].endswith("* |") and not lines["other"].endswith("* |")


def test_a_screening_pass_with_one_seed_of_base_stars_nothing():
    """One seed of base has no spread: the ablation gives the differences but marks none of them."""
    rng = np.random.default_rng()
    rows = [{"dataset": "d", "recipe": name, "seed": "0", "valid NDCG@10": f"{rng.uniform(0.01, 0.09):.6f}"}
            for name in ("base", "wide", "deep")]
    text = "\n".join(recipes_section(rows))
    assert "one seed of base" in text and "*" not in text.replace("* beyond", "")
    assert text.count("| 1 | ") == 3
