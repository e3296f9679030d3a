"""`cutrec experiment`: a grid runs every configuration once, a restart skips finished rows and resumes a
half-finished run, an OOM is a row, and bad grids are refused before the first run."""

import csv
import json
from pathlib import Path

import pytest

from cutrec.cli import main
from cutrec.errors import CutrecError
from cutrec.experiment import load_grid, run_grid

BASE = """
name = "tiny"
out = "{out}"
[base]
train = {{ epochs = 1, device = "cpu", progress = false }}
model = {{ dim = 8, num_blocks = 1 }}
data = {{ synthetic = {{ num_users = 40, num_items = 60, mean_length = 6 }} }}
"""


def _grid(tmp_path, axes, base=BASE):
    path = tmp_path / "grid.toml"
    path.write_text(base.format(out=tmp_path / "experiments") + "[axes]\n" + axes)
    return path


def _rows(tmp_path):
    with (tmp_path / "experiments" / "tiny" / "results.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_a_grid_runs_each_configuration_once_and_a_restart_skips_finished_rows(tmp_path, capsys):
    grid = _grid(tmp_path, 'loss = ["CE", "CCE-:share=block"]\nnegatives = [3, 7]\nseed = [0]\n')
    _, runs = load_grid(grid)
    assert [run.id for run in runs] == ["loss=CE-seed=0", "loss=CCE-_share=block-negatives=3-seed=0",
                                        "loss=CCE-_share=block-negatives=7-seed=0"]  # CE draws no negatives
    assert main(["experiment", str(grid)]) == 0
    rows = _rows(tmp_path)
    assert [row["status"] for row in rows] == ["ok"] * 3
    assert all(0 <= float(row["NDCG@10"]) <= 1 and row["epochs_run"] == "1" for row in rows)
    assert rows[1]["negatives"] == "3" and rows[0]["negatives"] == ""
    assert rows[0]["sharing"] == "one run at a time" and rows[0]["commit"]
    assert rows[0]["model"] == "sasrec"  # no model axis: the model the run trained
    before = (tmp_path / "experiments" / "tiny" / "results.csv").read_text()
    assert main(["experiment", str(grid)]) == 0  # nothing left to run: nothing recomputed
    assert (tmp_path / "experiments" / "tiny" / "results.csv").read_text() == before
    assert "3 runs, 3 already finished" in capsys.readouterr().err


def test_a_half_finished_run_resumes_and_a_folder_without_last_pt_restarts(tmp_path):
    grid = _grid(tmp_path, 'seed = [0, 1]\n')
    run_grid(grid)
    runs = tmp_path / "experiments" / "tiny" / "runs"
    (runs / "seed=0" / "metrics.json").unlink()  # as if killed after its last checkpoint, before testing
    (runs / "seed=1" / "last.pt").unlink()  # as if killed before its first checkpoint
    (runs / "seed=1" / "metrics.json").unlink()
    (tmp_path / "experiments" / "tiny" / "results.csv").unlink()
    kept, replaced = (runs / "seed=0" / "best.pt").stat().st_mtime_ns, (runs / "seed=1" / "best.pt").stat().st_mtime_ns
    run_grid(grid)
    assert [row["status"] for row in _rows(tmp_path)] == ["ok", "ok"]
    assert (runs / "seed=0" / "best.pt").stat().st_mtime_ns == kept  # resumed at its end: tested, not retrained
    assert (runs / "seed=1" / "best.pt").stat().st_mtime_ns != replaced  # trained again from the start


def test_a_model_and_a_loss_carry_their_settings_into_the_run_config(tmp_path):
    _, runs = load_grid(_grid(tmp_path, 'model = ["sasrec", "bert4rec:num_blocks=2,mask_prob=0.3"]\n'
                                        'loss = ["CCE-:share=block"]\nnegatives = [5]\n'))
    assert [run.id for run in runs] == ["model=sasrec-loss=CCE-_share=block-negatives=5",
                                        "model=bert4rec_num_blocks=2_mask_prob=0.3-loss=CCE-_share=block-negatives=5"]
    sasrec, bert4rec = (run.values for run in runs)
    assert (sasrec["model"]["name"], sasrec["model"]["num_blocks"], sasrec["model"]["dim"]) == ("sasrec", 1, 8)
    assert (bert4rec["model"]["name"], bert4rec["model"]["num_blocks"], bert4rec["model"]["mask_prob"]) == (
        "bert4rec", 2, 0.3)
    assert bert4rec["loss"] == {**bert4rec["loss"], "name": "CCE-", "share": "block", "num_negatives": 5}


def test_runs_sharing_the_device_give_the_metrics_of_runs_one_at_a_time(tmp_path):
    serial = _grid(tmp_path, 'seed = [0, 1]\n')
    run_grid(serial)
    alone = _rows(tmp_path)
    shared = tmp_path / "shared.toml"
    shared.write_text(serial.read_text().replace('name = "tiny"', 'name = "tiny"\nruns_per_gpu = 2')
                      .replace("experiments", "shared"))
    rows = {row["run"]: row for row in csv.DictReader((run_grid(shared) / "results.csv").open(newline=""))}
    assert {row["sharing"] for row in rows.values()} == {"2 runs at a time on one device"}
    assert [rows[row["run"]]["NDCG@10"] for row in alone] == [row["NDCG@10"] for row in alone]


def test_values_are_checked_before_the_first_run_and_a_failing_run_is_a_row(tmp_path):
    with pytest.raises(CutrecError, match=r"train.batch_size=0 is out of range"):
        load_grid(_grid(tmp_path, 'batch_size = [0, 4]\n'))
    with pytest.raises(CutrecError, match="loss.sce_buckets=0 is out of range"):
        load_grid(_grid(tmp_path, 'loss = ["SCE:sce_buckets=0", "CE"]\n'))
    grid = _grid(tmp_path, 'dataset = ["gone", "synthetic"]\n', BASE + '[datasets.gone]\npath = "absent.csv"\n')
    run_grid(grid)
    rows = _rows(tmp_path)
    assert [row["status"] for row in rows] == ["failed", "ok"]
    assert "absent.csv' does not exist" in rows[0]["note"]


@pytest.mark.parametrize(
    "axes,message",
    [
        ('colour = ["red"]\n', "grid axis 'colour' is unknown"),
        ("seed = []\n", "grid axis 'seed' is []; give a non-empty list"),
        ('loss = ["CE:num_negatives=5"]\n', "grid loss 'CE:num_negatives=5': loss.num_negatives does not apply to CE"),
        ('loss = ["CE-:share=block"]\n', "loss.share does not apply to CE-"),
        ('loss = ["CE-:share"]\n', "setting 'share' has no '='"),
        ('model = ["gru4rec"]\n', "config key 'model.name' is 'gru4rec'"),
        ('model = ["sasrec:colour=red"]\n', "grid model 'sasrec:colour=red': model.colour does not apply to sasrec"),
    ],
)
def test_bad_grids_are_refused_with_the_key_named(tmp_path, capsys, axes, message):
    assert main(["experiment", str(_grid(tmp_path, axes))]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "experiments").exists()


def test_a_preset_is_the_start_of_base_and_the_axes(tmp_path, capsys):
    """preset = NAME: the recipe's values, then [base] and the axes over them; an unknown preset is one line."""
    grid = BASE.replace('out = "{out}"', 'out = "{out}"\npreset = "bert4rec-2019"')
    _, runs = load_grid(_grid(tmp_path, 'model = ["bert4rec:ffn_activation=swiglu"]\n', base=grid))
    model = runs[0].values["model"]
    assert (model["name"], model["num_heads"], model["dim"], model["ffn_activation"]) == ("bert4rec", 2, 8, "swiglu")
    assert main(["experiment", str(_grid(tmp_path, "seed = [0]\n", base=grid.replace("bert4rec-2019", "nope")))]) == 2
    assert "preset 'nope' is unknown; choose one of bert4rec-2019, sasrec-2018" in capsys.readouterr().err


def test_an_unknown_grid_key_is_refused(tmp_path, capsys):
    path = tmp_path / "grid.toml"
    path.write_text('runs = 3\n[axes]\nseed = [0]\n')
    assert main(["experiment", str(path)]) == 2
    assert "has unknown key 'runs'" in capsys.readouterr().err
    path.write_text('runs_per_gpu = 0\n[axes]\nseed = [0]\n')
    assert main(["experiment", str(path)]) == 2
    assert "grid key 'runs_per_gpu' is 0; give 1 or more" in capsys.readouterr().err


def test_out_of_memory_and_a_refused_estimate_are_oom_rows():
    from cutrec.experiment import failure

    assert failure("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB") == "OOM"
    assert failure("cutrec: error: predicted peak 208,459 MB exceeds the 142,629 MB free on cuda; use --batch-size "
                   "65 or auto (or set train.check_memory=false to try anyway: ...)") == "OOM"
    assert failure("cutrec: error: data.path='x.csv' does not exist") == "failed"


def test_a_validation_only_recipe_grid_reads_no_test_and_evaluate_tests_once_later(tmp_path, capsys):
    """recipe = [NAME] merges [recipes.NAME] over [base] (beside the other axes); eval.test=false rows carry the
    best validation NDCG@10 and no test metrics; `cutrec evaluate` then tests a chosen run."""
    grid = BASE.replace("[base]", '[recipes.plain]\n[recipes.wide]\nmodel = {{ ffn_mult = 4.0 }}\n'
                        "[base]\neval = {{ test = false }}")
    grid = grid.replace("epochs = 1", "epochs = 2")
    path = _grid(tmp_path, 'recipe = ["plain", "wide"]\nmodel = ["sasrec:dropout=0.1"]\n', base=grid)
    _, runs = load_grid(path)
    assert [run.values["model"]["ffn_mult"] for run in runs] == [1.0, 4.0]
    assert [run.values["model"]["dropout"] for run in runs] == [0.1, 0.1]  # the model axis, under both recipes
    assert main(["experiment", str(path)]) == 0
    rows = _rows(tmp_path)
    assert [row["recipe"] for row in rows] == ["plain", "wide"]
    for row in rows:
        assert row["status"] == "ok" and row["NDCG@10"] == row["HR@10"] == row["MostPopular NDCG@10"] == ""
        log = list(csv.DictReader((tmp_path / "experiments" / "tiny" / "runs" / row["run"] / "log.csv").open()))
        best = max(log, key=lambda line: float(line["NDCG@10"]))
        assert (row["valid NDCG@10"], row["best_epoch"]) == (best["NDCG@10"], best["epoch"])
    folder = tmp_path / "experiments" / "tiny" / "runs" / rows[1]["run"]
    assert "test" not in json.loads((folder / "metrics.json").read_text())
    assert main(["evaluate", str(folder)]) == 0
    assert "test" in json.loads((folder / "metrics.json").read_text())
    assert [row["model"] for row in rows] == ["sasrec:dropout=0.1"] * 2  # the model axis's value
    bad = _grid(tmp_path, 'recipe = ["plain", "deep"]\n', base=grid)
    assert main(["experiment", str(bad)]) == 2
    assert "grid recipe 'deep' has no [recipes.deep] table" in capsys.readouterr().err


@pytest.mark.parametrize(
    "recipes,axes,message",
    [
        ("[recipes.a]\nmodel = {{ dropout = 0.3 }}\n", 'recipe = ["a"]\nmodel = ["sasrec:dropout=0.1"]\n',
         "grid recipe 'a' sets model.dropout, which an axis sets too"),
        ("[recipes.a]\ntrain = {{ seed = 5 }}\n", 'recipe = ["a"]\nseed = [0]\n', "sets train.seed, which an axis"),
        ("[recipes.a]\nloss = {{ name = 'CE-', num_negatives = 9 }}\n", 'recipe = ["a"]\nnegatives = [3]\n',
         "sets loss.num_negatives, which an axis"),
        ("[recipes.a]\n", "seed = [0]\n", "has [recipes] but no recipe axis"),
        ("recipes = [1]\n", 'seed = [0]\n', "each [recipes.NAME] must be tables"),
        ("[recipes.a]\nmodel = {{ colour = 1 }}\n", 'recipe = ["a"]\n', "grid run recipe=a: unknown config key"),
    ],
)
def test_a_recipe_that_collides_with_an_axis_or_is_malformed_is_one_line(tmp_path, capsys, recipes, axes, message):
    grid = BASE.replace("[base]", recipes + "[base]")
    assert main(["experiment", str(_grid(tmp_path, axes, base=grid))]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_every_shipped_grid_is_valid_and_names_its_command():
    """The grids in benchmarks/grids load (every run's config checked, no data read), and each says in its header the
    command that runs it, as the results files that cite it expect."""
    grids = sorted((Path(__file__).parents[1] / "benchmarks" / "grids").glob("*.toml"))
    assert grids
    for path in grids:
        settings, runs = load_grid(path)
        assert runs and settings["name"] == path.stem
        assert f"cutrec experiment benchmarks/grids/{path.name}" in path.read_text(), path.name
