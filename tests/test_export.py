"""`cutrec export --format onnx`: the exported encoder and item table, used by onnxruntime in a fresh process that
cannot import cutrec or torch, give cutrec's scores (relative error <= 1e-4) and its top-10 lists."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import cutrec
from cutrec.cli import main

SERVE = r"""
import json, sys
sys.modules["cutrec"] = None  # importing cutrec (or torch) now fails: the export must serve without them
sys.modules["torch"] = None
import numpy as np
import onnxruntime

folder, histories = sys.argv[1], json.loads(sys.argv[2])
meta = json.load(open(f"{folder}/metadata.json"))
items = np.load(f"{folder}/items.npy")
ids = np.load(f"{folder}/item_ids.npy").tolist()
row = {raw: i for i, raw in enumerate(ids)}
max_len, pad = meta["encoder"]["input"]["shape"][1], meta["encoder"]["input"]["padding_id"]
batch = np.full((len(histories), max_len), pad, dtype=np.int64)
for b, history in enumerate(histories):
    dense = [row[item] for item in history][-max_len:]
    batch[b, : len(dense)] = dense
session = onnxruntime.InferenceSession(f"{folder}/{meta['encoder']['file']}", providers=["CPUExecutionProvider"])
users = session.run(None, {meta["encoder"]["input"]["name"]: batch})[0]
scores = users.astype(np.float64) @ items.T.astype(np.float64)
out = []
for b, history in enumerate(histories):
    scores[b, [row[item] for item in history]] = -np.inf  # exclude seen, as the run does
    top = np.argsort(-scores[b], kind="stable")[:10]
    out.append({"items": [ids[i] for i in top], "scores": scores[b, top].tolist()})
print(json.dumps(out))
"""


@pytest.mark.parametrize("kind,extra", [(cutrec.SASRec, {}), (cutrec.BERT4Rec, {"num_heads": 2})])
def test_onnx_export_serves_without_cutrec(tmp_path, kind, extra):
    rng = np.random.default_rng()
    users, items = 70, int(rng.integers(40, 90))
    frame = pd.DataFrame({"user": rng.integers(0, users, 900),
                          "item": [f"item-{i}" for i in rng.integers(0, items, 900)]})
    model = kind(dim=int(rng.choice([8, 12, 24])), num_blocks=2, max_len=int(rng.integers(3, 15)), epochs=1,
                 loss="CE", device="cpu", progress=False, out=str(tmp_path), config={"eval": {"ks": [10]}},
                 **extra).fit(cutrec.Interactions.from_pandas(frame, user="user", item="item"))
    out = tmp_path / "export"
    assert main(["export", str(model.run_dir), "--format", "onnx", "--out", str(out)]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["encoder"]["output"]["shape"][1] == model.config.model.dim
    assert np.load(out / "items.npy").shape == (model.run.model.num_items, model.config.model.dim)
    histories = [list(dict.fromkeys(frame[frame.user == u]["item"]))[: int(rng.integers(1, 20))] for u in range(7)]
    served = subprocess.run([sys.executable, "-c", SERVE, str(out), json.dumps(histories)], capture_output=True,
                            text=True, timeout=120)
    assert served.returncode == 0, served.stderr
    result = json.loads(served.stdout)
    expected = model.recommend_histories(histories, k=10)
    for index, got in enumerate(result):
        mine = expected[expected.user == index]
        assert got["items"] == mine["item"].tolist()
        np.testing.assert_allclose(got["scores"], mine["score"].to_numpy(), rtol=1e-4, atol=1e-4 * np.abs(
            mine["score"]).max())


def test_export_refuses_a_used_folder(tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    assert main(["train", f"--out={tmp_path}", "--name=r", "--epochs=1", "--data.synthetic.num_users=40",
                 "--data.synthetic.num_items=60", "--data.synthetic.mean_length=6", "--model.dim=8",
                 "--device=cpu"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "r"), "--out", str(tmp_path / "used")]) == 2
    assert "already exists and is not an empty folder; pass a new folder" in capsys.readouterr().err
