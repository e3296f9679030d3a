"""Config: file plus overrides, unknown keys and wrong types refused with the key named."""

import pytest

from cutrec.config import build_config, load_file, to_dict
from cutrec.errors import CutrecError


def test_defaults_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\ndim = 32\n[train]\nlr = 0.01\n[eval]\nks = [5, 10]\n[data.synthetic]\nnum_items = 77\n')
    config = build_config(load_file(path), ["train.lr=0.5", "--model.num_blocks=3", "eval.valid_metric=HR@5"])
    assert config.model.dim == 32 and config.model.num_blocks == 3
    assert config.train.lr == 0.5 and config.eval.ks == [5, 10] and config.data.synthetic.num_items == 77
    assert build_config(to_dict(config)) == config


def test_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("loss:\n  name: CE-\n  num_negatives: 16\ndata:\n  path: null\n")
    config = build_config(load_file(path))
    assert config.loss.name == "CE-" and config.loss.num_negatives == 16 and config.data.path is None


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.dimm=3", "unknown config key 'model.dimm'"),
        ("modle.dim=3", "unknown config section 'modle'"),
        ("model.dim=abc", "config key 'model.dim' needs an integer"),
        ("train.lr=fast", "config key 'train.lr' needs a number"),
        ("train.amp=maybe", "config key 'train.amp' needs true or false"),
        ("loss.name=XE", "config key 'loss.name' is 'XE'; choose one of"),
        ("model.max_len=0", "model.max_len=0 is out of range"),
        ("loss.num_negatives=0", "loss.num_negatives=0 is out of range"),
        ("train.memory_limit_gb=0", "train.memory_limit_gb=0.0 is out of range"),
        ("train.checkpoint_every_epochs=0", "train.checkpoint_every_epochs=0 is out of range: use 1"),
        ("model=3", "is a section"),
        ("train.lr", "has no '='"),
        ("eval.valid_metric=NDCG@7", "eval.valid_metric='NDCG@7' is not computed"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(CutrecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config({}, [override])


def test_bad_files(tmp_path):
    with pytest.raises(CutrecError, match="does not exist"):
        load_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(CutrecError, match="not valid TOML"):
        load_file(bad)
    with pytest.raises(CutrecError, match="unknown config key 'model.width'"):
        build_config({"model": {"width": 3}})
    with pytest.raises(CutrecError, match="needs an integer"):
        build_config({"model": {"dim": 3.5}})


def test_each_model_starts_from_its_own_defaults_under_the_file_and_the_options():
    assert build_config(None, []).model.num_heads == 1  # SASRec's
    assert build_config(None, ["model.name=bert4rec"]).model.num_heads == 2  # MODEL_DEFAULTS
    assert build_config({"model": {"name": "bert4rec"}}).model.num_heads == 2
    assert build_config({"model": {"name": "bert4rec", "num_heads": 1}}).model.num_heads == 1
    assert build_config({"model": {"name": "bert4rec"}}, ["model.num_heads=4"]).model.num_heads == 4
    assert build_config({"model": {"name": "bert4rec", "dim": 32}}).model.dim == 32


def test_a_local_file_names_its_runs_after_itself_not_after_the_default_dataset(tmp_path):
    from cutrec.train.loop import create_run_folder

    local = build_config(overrides=[f"data.path={tmp_path / 'events.csv'}", f"out={tmp_path / 'runs'}"])
    assert local.data.label == "events" and create_run_folder(local).name.startswith("events-sasrec-")
    named = build_config(overrides=["data.dataset=amazon-beauty", f"data.path={tmp_path / 'events.csv'}"])
    assert named.data.label == "amazon-beauty"  # a dataset name given with the file is the user's own
    assert build_config().data.label == "synthetic"
