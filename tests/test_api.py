"""The Python API and the commands built on it: fit on DataFrames, recommend in raw ids (against a float64
reference), save and load, run folders that travel, `cutrec recommend`, and one-line errors for bad input."""

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import cutrec
from cutrec.cli import main
from cutrec.config import SyntheticConfig, build_config, describe_keys
from cutrec.data.synthetic import synthetic_interactions
from cutrec.errors import CutrecError
from cutrec.recommend import CutrecWarning

SMALL = dict(dim=16, num_blocks=1, max_len=12, epochs=2, loss="CE", device="cpu", progress=False)


def _frame(seed=0, users=120, items=60):
    raw = synthetic_interactions(SyntheticConfig(num_users=users, num_items=items, num_clusters=4, mean_length=10,
                                                 seed=seed))
    return pd.DataFrame({"user": [f"u{u}" for u in raw.users], "item": [f"i{i}" for i in raw.items],
                         "ts": raw.timestamps})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One small SASRec fitted on a pandas frame with string ids, and its frame."""
    out = tmp_path_factory.mktemp("api")
    frame = _frame()
    data = cutrec.Interactions.from_pandas(frame, user="user", item="item", time="ts")
    model = cutrec.SASRec(**SMALL, out=str(out)).fit(data)
    return model, frame


def _history(frame, user):
    return frame[frame.user == user].sort_values("ts", kind="stable").item.tolist()


def _reference(model, histories, exclude_seen):
    """float64 scores [H, N] of every item for each history (the model's own user vectors)."""
    run = model.run
    dense = [run.items.dense(np.array(h, dtype=object)) for h in histories]
    net = run.model.eval()
    lengths = torch.tensor([min(len(d), net.max_len) for d in dense])
    inputs = torch.full((len(dense), net.max_len), net.padding_id)
    for row, d in enumerate(dense):
        kept = d[-net.max_len:]
        inputs[row, : len(kept)] = torch.from_numpy(kept)
    with torch.no_grad():
        users = net.user_vectors(inputs, lengths).double()  # [H, D]
        scores = (users @ net.item_table.double().T).numpy()  # [H, N]
    for row, d in enumerate(dense):
        if exclude_seen:
            scores[row, d] = -np.inf
    return scores  # [H, N] float64, excluded items -inf


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_matches_a_float64_reference_in_raw_ids(fitted, exclude_seen):
    model, frame = fitted
    rng = np.random.default_rng()
    users = [f"u{u}" for u in rng.choice(120, size=7, replace=False)]
    k = int(rng.integers(1, 20))
    recs = model.recommend(users, k=k, exclude_seen=exclude_seen)
    assert list(recs.columns) == ["user", "item", "score", "rank"]
    reference = _reference(model, [_history(frame, u) for u in users], exclude_seen)
    for user, scores in zip(users, reference, strict=True):
        mine = recs[recs.user == user]
        assert mine["rank"].tolist() == list(range(1, k + 1))
        assert len(set(mine["item"])) == k
        # the reference's k best scores, in order, belong to the items recommended (ties may swap equal items)
        picked = scores[model.run.items.dense(mine["item"].to_numpy(dtype=object))]  # [k]
        np.testing.assert_allclose(picked, -np.sort(-scores)[:k], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(mine["score"].to_numpy(), picked, rtol=1e-5, atol=1e-5)
        if exclude_seen:
            assert not set(mine["item"]) & set(_history(frame, user))


def test_recommend_histories_equals_recommend_for_a_known_history(fitted):
    model, frame = fitted
    by_user = model.recommend(["u3", "u7"], k=8)
    by_history = model.recommend_histories({"u3": _history(frame, "u3"), "u7": _history(frame, "u7")}, k=8)
    pd.testing.assert_frame_equal(by_user, by_history)
    as_list = model.recommend_histories([_history(frame, "u3")], k=8)
    assert as_list["user"].tolist() == [0] * 8 and as_list["item"].tolist() == by_user["item"][:8].tolist()


def test_a_user_with_fewer_unseen_items_than_k_gets_what_is_left(fitted):
    model, _ = fitted
    everything = [f"i{i}" for i in range(60) if i != 17]
    recs = model.recommend_histories([everything], k=10)
    assert recs["item"].tolist() == ["i17"]


def test_unknown_users_and_items_are_warned_once_and_skipped(fitted):
    model, frame = fitted
    with pytest.warns(CutrecWarning, match=r"skipped 2 of 3 users unknown to this run \('x1', 'x2'\)"):
        recs = model.recommend(["x1", "u1", "x2"], k=3)
    assert set(recs["user"]) == {"u1"}
    with pytest.warns(CutrecWarning, match=r"skipped 1 of \d+ history items unknown to this run \('nope'\)"):
        model.recommend_histories([["nope", *_history(frame, "u1")]], k=3)


def test_save_load_and_a_moved_folder_give_identical_recommendations(fitted, tmp_path):
    model, _ = fitted
    users = ["u1", "u5", "u9"]
    before = model.recommend(users, k=5)
    saved = model.save(tmp_path / "saved")
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(saved, moved)
    shutil.rmtree(saved)
    loaded = cutrec.load(moved, device="cpu")
    assert isinstance(loaded, cutrec.SASRec)
    pd.testing.assert_frame_equal(loaded.recommend(users, k=5), before)
    assert main(["evaluate", str(moved), "--device=cpu"]) == 0  # no original file anywhere
    assert json.loads((moved / "metrics.json").read_text())["test"] == model.metrics["test"]


def test_polars_round_trip_and_frames(tmp_path):
    pl = pytest.importorskip("polars")
    frame = pl.from_pandas(_frame(seed=1, users=80, items=70))
    data = cutrec.Interactions.from_polars(frame, user="user", item="item", time="ts")
    model = cutrec.BERT4Rec(**SMALL, num_heads=2, out=str(tmp_path)).fit(data)
    recs = model.recommend(["u2", "u4"], k=4, frame="polars")
    assert isinstance(recs, pl.DataFrame) and recs.columns == ["user", "item", "score", "rank"]
    assert all(item.startswith("i") for item in recs["item"])
    loaded = cutrec.load(model.save(tmp_path / "saved"), device="cpu")
    assert isinstance(loaded, cutrec.BERT4Rec)
    assert loaded.recommend(["u2", "u4"], k=4, frame="polars").equals(recs)
    assert loaded.recommend(["u2"], k=4, frame="arrow").column("item").to_pylist() == recs["item"].to_list()[:4]


def test_cli_and_api_give_the_same_metrics(tmp_path):
    frame = _frame(seed=2, users=90, items=50)
    path = tmp_path / "log.csv"
    frame.rename(columns={"user": "user_id", "item": "item_id", "ts": "timestamp"}).to_csv(path, index=False)
    keys = ["--model.dim=16", "--model.num_blocks=1", "--model.max_len=12", "--epochs=2", "--loss=CE",
            "--device=cpu", "--train.progress=false"]
    assert main(["train", "--data", str(path), f"--out={tmp_path}", "--name=cli",
                 f"--data.cache_dir={tmp_path / 'cache'}", *keys]) == 0
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    api = cutrec.SASRec(**SMALL, out=str(tmp_path), run_name="api").fit(cutrec.Interactions.from_file(path))
    assert api.metrics["test"] == cli["test"]
    # the saved config.json is accepted by --config and reproduces the run
    assert main(["train", "--config", str(tmp_path / "cli" / "config.json"), "--name=again"]) == 0
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["test"] == cli["test"]


def test_cli_recommend_all_users_and_histories(fitted, tmp_path, capsys):
    model, frame = fitted
    run = str(model.run_dir)
    assert main(["recommend", run, "--all", "--k", "3", "--out", str(tmp_path / "all.parquet"),
                 "--device=cpu"]) == 0
    table = pd.read_parquet(tmp_path / "all.parquet")
    assert len(table) == 3 * frame.user.nunique()
    expected = model.recommend(["u0", "u11"], k=3)
    got = table[table.user.isin(["u0", "u11"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(got.sort_values(["user", "rank"]).reset_index(drop=True),
                                  expected.sort_values(["user", "rank"]).reset_index(drop=True))
    (tmp_path / "users.txt").write_text("u0\nnobody\nu11\n")
    assert main(["recommend", run, "--users", str(tmp_path / "users.txt"), "--k=3", "--out",
                 str(tmp_path / "some.csv"), "--device=cpu"]) == 0
    assert "cutrec: warning: skipped 1 of 3 users unknown to this run ('nobody')" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "some.csv"), expected, check_dtype=False, rtol=1e-6)
    (tmp_path / "histories.txt").write_text(f"new {' '.join(_history(frame, 'u0'))} unknown-item\n")
    assert main(["recommend", run, "--histories", str(tmp_path / "histories.txt"), "--k=3", "--out",
                 str(tmp_path / "new.csv"), "--no-exclude-seen", "--device=cpu"]) == 0
    assert "skipped 1 of" in capsys.readouterr().err
    unseen = model.recommend(["u0"], k=3, exclude_seen=False)
    assert pd.read_csv(tmp_path / "new.csv")["item"].tolist() == unseen["item"].tolist()


def test_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    keys = [key for key, _, _, _ in describe_keys()]
    assert len(keys) > 60 and "train.tensorboard" in keys and "data.synthetic.seed" in keys
    for key, kind, default, _ in describe_keys():
        assert f"--{key}={default}  [{kind}]" in text
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"cutrec {cutrec.__version__}"


def test_the_library_merges_registry_presets():
    from cutrec.data import registry

    name, spec = next((n, s) for n, s in registry.DATASETS.items() if s.preprocessing.get("min_user_count"))
    config = build_config({"data": {"dataset": name}})
    assert config.data.min_user_count == spec.preprocessing["min_user_count"]
    assert build_config({"data": {"dataset": name, "min_user_count": 1}}).data.min_user_count == 1


TINY_RUN = ["--data.synthetic.num_users=60", "--data.synthetic.num_items=80", "--data.synthetic.mean_length=8",
            "--model.dim=8", "--device=cpu"]


def test_quiet_prints_only_results(tmp_path, capsys):
    assert main(["--quiet", "train", f"--out={tmp_path}", "--epochs=1", *TINY_RUN]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "MostPopular" in captured.out


def test_tensorboard_scalars(tmp_path):
    assert main(["train", f"--out={tmp_path}", "--name=tb", "--epochs=2", *TINY_RUN, "--train.tensorboard=true"]) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("NDCG@10")] == [1, 2]
    assert {"train_loss", "HR@10", "epoch_seconds"} <= set(events.Tags()["scalars"])


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda m: m.recommend([1, 2], k=3), "user id 1 is an integer, but this run's user ids are strings"),
        (lambda m: m.recommend(["u1"], k=0), "k=0 is out of range; use 1 <= k <= 60"),
        (lambda m: m.recommend(["u1"], k=61), "k=61 is out of range"),
        (lambda m: m.recommend(["x"], k=3), "none of the 1 users is in this run's data"),
        (lambda m: m.recommend_histories([["nope", "zip"]], k=3), "history 0 holds no item this run knows"),
        (lambda m: m.recommend_histories(["i1"], k=3), "history 0 is 'i1', not a list of item ids"),
        (lambda m: m.recommend_histories([], k=3), "histories is empty"),
        (lambda m: m.recommend(["u1"], frame="excel"), "frame='excel' is unknown"),
    ],
)
def test_bad_recommend_calls(fitted, call, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CutrecWarning)
        with pytest.raises(CutrecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            call(fitted[0])


@pytest.mark.parametrize(
    "frame,columns,message",
    [
        (pd.DataFrame({"user": [], "item": []}), {}, "the pandas DataFrame has no rows"),
        (pd.DataFrame({"u": [1], "item": [2]}), {}, "has no column for user='user' (columns: u, item)"),
        (pd.DataFrame({"user": [1, "a"], "item": [2, 3]}), {}, "column 'user' holds 'a' (str) in data row 2"),
        (pd.DataFrame({"user": [1, 2], "item": [2.5, 3]}), {}, "column 'item' holds 2.5 in data row 1, which is no id"),
        (pd.DataFrame({"user": [1, None], "item": [2, 3]}), {}, "column 'user' has a missing value in data row 2"),
        (pd.DataFrame({"user": [True], "item": [2]}), {}, "column 'user' has type bool"),
        (pd.DataFrame({"user": [1], "item": [2], "t": ["soon"]}), {"time": "t"}, "neither numbers nor ISO-8601"),
    ],
)
def test_bad_frames(frame, columns, message):
    with pytest.raises(CutrecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cutrec.Interactions.from_pandas(frame, user="user", item="item", **columns)


def test_frames_keep_types_and_read_times():
    pl = pytest.importorskip("polars")
    times = pd.to_datetime(["2020-01-01 01:00", "2020-01-01 00:00"]).tz_localize("Europe/Berlin")
    frame = pd.DataFrame({"user": ["007", "7"], "item": pd.Categorical(["b", "a"]), "t": times})
    for data in (cutrec.Interactions.from_pandas(frame, user="user", item="item", time="t"),
                 cutrec.Interactions.from_polars(pl.from_pandas(frame), user="user", item="item", time="t")):
        assert data.users.tolist() == ["007", "7"]  # strings stay strings, even when they look like numbers
        assert data.items.tolist() == ["b", "a"]
        assert data.timestamps.tolist() == [1577836800, 1577833200]  # UTC seconds
    import pyarrow as pa

    arrow = cutrec.Interactions.from_arrow(pa.table({"user": [3, 4], "item": [5, 6]}), user="user", item="item")
    assert arrow.users.dtype == np.int64 and arrow.timestamps.tolist() == [0, 1]
    sequences = cutrec.Interactions.from_sequences({"a": ["x", "y"], "b": ["z"]})
    assert sequences.users.tolist() == ["a", "a", "b"] and sequences.timestamps.tolist() == [0, 1, 0]
    with pytest.raises(CutrecError, match="pass a list of item lists"):
        cutrec.Interactions.from_sequences("abc")


def test_fit_and_parameters_are_checked():
    with pytest.raises(CutrecError, match="SASRec has no parameter 'dimm'"):
        cutrec.SASRec(dimm=3)
    with pytest.raises(CutrecError, match="fit got a DataFrame; pass cutrec.Interactions"):
        cutrec.SASRec().fit(pd.DataFrame({"a": [1]}))
    with pytest.raises(CutrecError, match="this SASRec is not fitted"):
        cutrec.SASRec().recommend(["u"])
    assert cutrec.SASRec(config={"eval": {"ks": [5, 10]}}, lr=0.01).config.train.lr == 0.01


def test_a_run_folder_of_a_newer_cutrec_is_refused(fitted, tmp_path, capsys):
    folder = fitted[0].save(tmp_path / "copy")
    (folder / "run.json").write_text(json.dumps({"format": 99, "cutrec": "9.0"}))
    with pytest.raises(CutrecError, match="was written by cutrec 9.0 .run format 99.; this cutrec"):
        cutrec.load(folder)
    assert main(["recommend", str(folder), "--all", "--out", str(tmp_path / "r.csv")]) == 2
    assert "upgrade with pip install -U cutrec" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_recommendations_on_the_gpu_equal_the_cpu(tmp_path):
    data = cutrec.Interactions.from_pandas(_frame(seed=3), user="user", item="item", time="ts")
    model = cutrec.SASRec(**{**SMALL, "device": "cuda", "loss": "CCE-", "amp": False}, out=str(tmp_path)).fit(data)
    folder = model.save(tmp_path / "saved")
    users = [f"u{u}" for u in range(0, 120, 3)]
    on_gpu = cutrec.load(folder, device="cuda").recommend(users, k=10)
    on_cpu = cutrec.load(folder, device="cpu").recommend(users, k=10)
    assert on_gpu["item"].tolist() == on_cpu["item"].tolist()
    np.testing.assert_allclose(on_gpu["score"], on_cpu["score"], rtol=1e-4, atol=1e-4)


def test_integer_ids_from_a_file_and_from_python(tmp_path, capsys):
    rng = np.random.default_rng()
    sequences = {int(user): [int(i) for i in rng.integers(100, 160, 12)] for user in range(500, 560)}
    model = cutrec.SASRec(**SMALL, out=str(tmp_path)).fit(cutrec.Interactions.from_sequences(sequences))
    with pytest.raises(CutrecError, match="user id '501' is a str, but this run's user ids are integers"):
        model.recommend(["501"])
    (tmp_path / "users.txt").write_text("501\nabc\n502\n")
    assert main(["recommend", str(model.run_dir), "--users", str(tmp_path / "users.txt"), "--k=4", "--out",
                 str(tmp_path / "r.csv"), "--device=cpu"]) == 0
    assert "skipped 1 of 3 users unknown to this run ('abc')" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "r.csv"), model.recommend([501, 502], k=4),
                                  check_dtype=False, rtol=1e-6)
