"""The `cutrec` command: one-line errors with exit status 2 for user mistakes, and a short end-to-end run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cutrec.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "columns.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "float_ids.csv").write_text("user_id,item_id,timestamp\n1,2,3\n1,2.5,4\n")
    (tmp_path / "missing.csv").write_text("user_id,item_id,timestamp\n1,2,3\n1,3,\n")
    (tmp_path / "tiny.csv").write_text("user_id,item_id,timestamp\n1,2,3\n1,3,4\n2,2,5\n")
    return tmp_path


@pytest.mark.parametrize(
    "args,message",
    [
        (["--data", "{tmp}/nothing.csv"], "nothing.csv' does not exist"),
        (["--data", "{tmp}/columns.csv"], "has no columns 'user_id', 'item_id', 'timestamp' (columns: a, b, c); "
         "set data.user_col, data.item_col, data.time_col to columns it has"),
        (["--data", "{tmp}/float_ids.csv"], "holds 2.5 in data row 2, which is no id"),
        (["--data", "{tmp}/missing.csv"], "has a missing value in data row 2"),
        (["--data", "{tmp}/tiny.csv", "--data.min_user_count=5"], "no events are left after the iterative k-core"),
        (["--model.max_len=0"], "model.max_len=0 is out of range: use a sequence length of 1 or more"),
        (["--model.max_len", "0"], "model.max_len=0 is out of range"),
        (["--model.dim"], "option '--model.dim' needs a value"),
        (["--negatives", "0"], "loss.num_negatives=0 is out of range: use 1 or more negatives"),
        (["--model.foo=1"], "unknown config key 'model.foo'"),
        (["--model", "gru4rec"], "config key 'model.name' is 'gru4rec'; choose one of 'sasrec', 'bert4rec'"),
        (["--model.mask_prob=1.5"], "model.mask_prob=1.5 is out of range: use a value in (0, 1]"),
        (["--loss.sce_buckets=0"], "loss.sce_buckets=0 is out of range: use 1 or more buckets"),
        (["--train.lr=fast"], "config key 'train.lr' needs a number, got 'fast'"),
        (["--dataset", "nope"], "data.dataset='nope' is not a known dataset"),
        (["--config", "{tmp}/none.toml"], "none.toml' does not exist"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_user_mistakes_give_one_line_errors(bad_files, capsys, args, message):
    args = [a.replace("{tmp}", str(bad_files)) for a in args]
    code = main(["train", *args, f"--out={bad_files}/runs", f"--data.cache_dir={bad_files / 'cache'}"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("cutrec: error: ") and message in error
    assert "\n" not in error and "Traceback" not in error


def test_console_script_exits_non_zero_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cutrec.cli", "train", "--data", str(tmp_path / "absent.tsv")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "absent.tsv' does not exist" in result.stderr and "Traceback" not in result.stderr


def test_evaluate_missing_run(capsys, tmp_path):
    assert main(["evaluate", str(tmp_path / "no-run")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_datasets_lists_the_registry(capsys):
    assert main(["datasets"]) == 0
    listing = capsys.readouterr().out
    for name in ("ml-1m", "amazon-beauty", "gowalla", "zvuk", "30music"):
        assert name in listing


@pytest.mark.parametrize(
    "model,settings",
    [
        ("SASRec", ["--epochs=6", "--train.patience=6", "--model.num_blocks=1", "--lr=0.003"]),
        ("BERT4Rec", ["--model=bert4rec", "--epochs=14", "--train.patience=14", "--model.num_blocks=2",
                      "--model.num_heads=2", "--model.dropout=0.1", "--lr=0.005"]),
    ],
)
def test_end_to_end_synthetic_beats_most_popular_twice(tmp_path, capsys, model, settings):
    """Train briefly on the built-in synthetic data, then re-score the saved run with `cutrec evaluate`."""
    args = [
        "train", f"--out={tmp_path}", "--name=e2e", "--seed=3", "--data.synthetic.num_users=1200",
        "--data.synthetic.num_items=400", "--model.dim=32", "--batch-size=64", "--train.progress=false", *settings,
    ]
    assert main(args) == 0
    run = tmp_path / "e2e"
    metrics = json.loads((run / "metrics.json").read_text())
    ndcg, popular = metrics["test"][model]["NDCG@10"], metrics["test"]["MostPopular"]["NDCG@10"]
    assert ndcg >= 2 * popular > 0, (ndcg, popular)
    epochs = next(int(s.split("=")[1]) for s in settings if s.startswith("--epochs="))
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,step,train_loss") and len(log) == epochs + 1
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 3
    capsys.readouterr()
    assert main(["evaluate", str(run), "--device=cpu"]) == 0
    assert f"{ndcg:.4f}" in capsys.readouterr().out
    assert main(args) == 2  # the same run folder is never overwritten
    assert "already exists" in capsys.readouterr().err


def test_cut_cross_entropy_trains_like_full_cross_entropy(tmp_path):
    """--loss CCE (the chunked fallback on the CPU) follows the same trajectory as --loss CE."""
    results = {}
    for loss in ("CE", "CCE"):
        args = [
            "train", f"--out={tmp_path}", f"--name={loss}", f"--loss={loss}", "--epochs=2", "--seed=1",
            "--data.synthetic.num_users=300", "--data.synthetic.num_items=200", "--model.dim=16",
            "--model.num_blocks=1", "--train.progress=false",
        ]
        assert main(args) == 0
        results[loss] = json.loads((tmp_path / loss / "metrics.json").read_text())["test"]["SASRec"]
    assert results["CCE"]["NDCG@10"] == pytest.approx(results["CE"]["NDCG@10"], abs=0.01)


@pytest.mark.parametrize("share", ["none", "block"])
def test_sampled_cut_cross_entropy_trains(tmp_path, share):
    args = [
        "train", f"--out={tmp_path}", "--name=run", "--loss=CCE-", "--negatives=32", f"--share={share}",
        "--loss.distribution=popularity", "--epochs=2", "--data.synthetic.num_users=300",
        "--data.synthetic.num_items=200", "--model.dim=16", "--model.num_blocks=1", "--train.progress=false",
    ]
    assert main(args) == 0
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    losses = [float(line.split(",")[2]) for line in log[1:]]
    assert len(losses) == 2 and losses[1] < losses[0]


@pytest.mark.skipif(not (SHARED / "ml-100k").is_dir(), reason="needs ../shared/data")
def test_real_log_with_global_temporal_split_runs(tmp_path):
    args = [
        "train", f"--data={SHARED / 'ml-100k' / 'ratings.tsv'}", f"--out={tmp_path}", "--name=ml",
        "--data.split=global_temporal", "--data.min_user_count=5", "--data.min_item_count=5", "--epochs=1",
        "--model.dim=16", "--model.num_blocks=1", "--train.progress=false", f"--data.cache_dir={tmp_path / 'cache'}",
    ]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "ml" / "metrics.json").read_text())
    assert metrics["test_users"] > 0 and 0.0 <= metrics["test"]["SASRec"]["HR@10"] <= 1.0


SMALL = ["--data.synthetic.num_users=200", "--data.synthetic.num_items=50", "--model.dim=8", "--model.num_blocks=1",
         "--train.progress=false"]


@pytest.mark.parametrize(
    "case,message",
    [
        ("a file", "is a file, not a folder; pass --out a folder"),
        ("under a file", "(Not a directory); pass --out a folder you can write to"),
        ("under /proc", "(No such file or directory); pass --out a folder you can write to"),
        ("under /sys", "(Operation not permitted); pass --out a folder you can write to"),
        ("read-only", "(Permission denied); pass --out a folder you can write to"),
        ("an existing run", "already exists; pick another --name or --out, or continue it with `cutrec train --resume"),
        ("a stopped start", "already exists and holds no last.pt (it stopped before its first checkpoint); delete it"),
    ],
)
def test_out_problems_are_one_line_errors_before_any_data_is_read(tmp_path, capsys, case, message):
    name = "run"
    if case == "a file":
        out = tmp_path / "file"
        out.write_text("")
    elif case == "under a file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "runs"
    elif case in ("under /proc", "under /sys"):
        if not Path(case.split()[1]).is_dir():
            pytest.skip(f"no {case.split()[1]} here")
        out = Path(case.split()[1]) / "cutrec-test-runs"
    elif case == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root ignores permission bits")
        out = tmp_path / "read-only"
        out.mkdir(mode=0o555)
    else:
        out = tmp_path / "runs"
        (out / name).mkdir(parents=True)
        if case == "an existing run":
            (out / name / "last.pt").write_bytes(b"")
    absent = tmp_path / "absent.csv"  # were any data read first, this would be the error
    code = main(["train", f"--out={out}", f"--name={name}", f"--data={absent}",
                 f"--data.cache_dir={tmp_path / 'cache'}"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("cutrec: error: ") and message in error, error
    assert "\n" not in error and "absent.csv" not in error
    assert not (tmp_path / "cache").exists()


def test_automatic_names_never_collide_and_a_failed_start_leaves_no_folder(tmp_path, capsys):
    for _ in range(2):  # the same second, the same settings
        assert main(["train", f"--out={tmp_path}", "--epochs=1", *SMALL]) == 0
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == 2 and all(n.startswith("synthetic-sasrec-auto-") for n in names)
    assert f"run folder: {tmp_path}" in capsys.readouterr().err
    assert main(["train", f"--out={tmp_path}", "--name=broken", f"--data={tmp_path / 'absent.csv'}"]) == 2
    assert not (tmp_path / "broken").exists()  # nothing was trained, so no empty run folder stays behind


def test_a_non_finite_step_stops_the_run_at_that_step(tmp_path, capsys):
    args = ["train", f"--out={tmp_path}", "--name=nan", "--lr=1e30", "--epochs=3", *SMALL]
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("cutrec: error: step 2 (epoch 1) has loss ")
    assert "has loss nan" in error or "has loss inf" in error
    assert "its update was skipped and the run stopped at step 2." in error  # the CPU's readout arrives at once
    assert "Last good checkpoint: none yet" in error and "lower train.lr (now 1e+30) or with train.grad_clip" in error
    assert not (tmp_path / "nan").exists()  # nothing to resume, so no run folder is left behind


def test_gradient_clipping_bounds_the_update(tmp_path):
    args = ["train", f"--out={tmp_path}", "--name=clip", "--lr=0.01", "--train.grad_clip=0.5", "--epochs=2", *SMALL]
    assert main(args) == 0
    assert (tmp_path / "clip" / "metrics.json").exists()
