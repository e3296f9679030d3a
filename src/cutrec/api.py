"""The Python API: fit a model on interactions, recommend in raw ids, save and load. The CLI is built on the same
functions (`cutrec.train.loop.train`, `cutrec.recommend`, `cutrec.export`).

    data = cutrec.Interactions.from_pandas(df, user="user_id", item="item_id", time="timestamp")
    model = cutrec.SASRec(dim=64, loss="CCE-", num_negatives=1023, epochs=200).fit(data)
    model.recommend(["u1", "u2"], k=10)              # DataFrame: user, item, score, rank
    model.recommend_histories([["a", "b"], ["c"]])   # new users, by their item histories
    model.save("my-model"); model = cutrec.load("my-model")   # load also reads any `cutrec train` run folder

Keyword parameters are the keys of the model, loss and train config sections by their own names (`dim`,
`num_negatives`, `lr`, ...; `loss` is loss.name), plus `out` (the folder that holds run folders) and `run_name`.
Any other key goes through `config`, nested like a config file: `config={"eval": {"ks": [10, 20]},
"data": {"min_user_count": 5}}`.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from cutrec.config import LossConfig, ModelConfig, RunConfig, TrainConfig, build_config, merged_values
from cutrec.data.load import preprocess_options
from cutrec.data.preprocess import preprocess
from cutrec.data.readers import Interactions
from cutrec.errors import CutrecError
from cutrec.recommend import Recommendations, TrainedRun, shown
from cutrec.train.checkpoint import METRICS_NAME, staged_folder
from cutrec.train.loop import resolve_device, train

Frame = Literal["pandas", "polars", "arrow"]
IN_MEMORY = "interactions"  # data.dataset of a run fitted on in-memory Interactions


def _keyword_keys() -> dict[str, str]:
    """Keyword parameter -> dotted config key."""
    keys = {"loss": "loss.name", "out": "out", "run_name": "name"}
    for section, config in (("model", ModelConfig), ("loss", LossConfig), ("train", TrainConfig)):
        keys.update({f.name: f"{section}.{f.name}" for f in dataclasses.fields(config) if f.name != "name"})
    return keys


KEYWORDS = _keyword_keys()


class Recommender:
    """A sequential recommender: unfitted until `fit` (or `cutrec.load`), then backed by its run folder."""

    model_name: ClassVar[str]

    def __init__(self, config: dict[str, Any] | None = None, **params: Any) -> None:
        values: dict[str, Any] = {"model": {"name": self.model_name}}
        for name, value in params.items():
            if name not in KEYWORDS:
                raise CutrecError(
                    f"{type(self).__name__} has no parameter {name!r}; use one of {', '.join(KEYWORDS)}, or set other "
                    "config keys through config={'section': {'key': value}}"
                )
            *sections, key = KEYWORDS[name].split(".")
            target = values
            for section in sections:
                target = target.setdefault(section, {})
            target[key] = value
        if config is not None and not isinstance(config, dict):
            raise CutrecError(f"config is a {type(config).__name__}; pass a dict of sections like a config file")
        model = (config or {}).get("model", {})
        if isinstance(model, dict) and model.get("name", self.model_name) != self.model_name:
            raise CutrecError(f"config model.name={model['name']!r} contradicts {type(self).__name__}; drop it")
        self.config: RunConfig = build_config(merged_values(config or {}, values))
        self.run: TrainedRun | None = None

    @property
    def run_dir(self) -> Path:
        return self._fitted().folder

    @property
    def metrics(self) -> dict[str, Any]:
        """The run's metrics.json: best epoch, steps, its validation metric and (unless eval.test is false) the test
        metrics of the model and the most-popular baseline."""
        import json

        path = self._fitted().folder / METRICS_NAME
        if not path.is_file():
            raise CutrecError(f"{str(path)!r} does not exist; score the run with `cutrec evaluate {path.parent}`")
        return json.loads(path.read_text())

    def fit(self, data: Interactions) -> Recommender:
        """Preprocess and split `data` as the config says, train into a new run folder (out/run_name), test the
        best epoch (unless eval.test is false), and keep that model for recommending. Returns self."""
        if not isinstance(data, Interactions):
            raise CutrecError(
                f"fit got a {type(data).__name__}; pass cutrec.Interactions, e.g. "
                "Interactions.from_pandas(df, user='user_id', item='item_id')"
            )
        config = dataclasses.replace(self.config, data=dataclasses.replace(self.config.data, dataset=IN_MEMORY,
                                                                            path=None))
        folder = train(config, preprocess(data, **preprocess_options(config.data)))
        self.run = TrainedRun.load(folder, resolve_device(config.train.device))
        self.config = self.run.config
        return self

    def recommend(
        self, users: Any, k: int = 10, *, exclude_seen: bool = True, frame: Frame = "pandas"
    ) -> Any:
        """The k best items for each known user (raw ids, in the order given), from its whole history in the run's
        data; unknown users are warned about and skipped. A DataFrame with columns user, item, score, rank."""
        run = self._fitted()
        _check_frame(frame)
        keys, histories = run.user_histories(users)
        return _frame(run.batches(keys, histories, k, exclude_seen=exclude_seen, progress=True), frame)

    def recommend_histories(
        self, histories: list | dict, k: int = 10, *, exclude_seen: bool = True, frame: Frame = "pandas"
    ) -> Any:
        """The k best items after each history of raw item ids (oldest first): a list (users named 0, 1, ...) or
        a dict {name: items}. Unknown items are warned about and skipped."""
        run = self._fitted()
        _check_frame(frame)
        if isinstance(histories, dict):
            keys, lists = np.array(list(histories.keys()), dtype=object), list(histories.values())
        elif isinstance(histories, (list, tuple)):
            keys, lists = np.arange(len(histories)), list(histories)
        else:
            raise CutrecError(
                f"histories is a {type(histories).__name__}; pass a list of item lists or a dict {{name: items}}"
            )
        if not lists:
            raise CutrecError("histories is empty; pass at least one history of item ids")
        bad = next((i for i, h in enumerate(lists) if isinstance(h, (str, bytes)) or not hasattr(h, "__len__")), None)
        if bad is not None:
            raise CutrecError(
                f"history {shown(keys[bad])} is {lists[bad]!r}, not a list of item ids; wrap it in a list"
            )
        sequences = run.item_histories(keys, [list(h) for h in lists])
        return _frame(run.batches(keys, sequences, k, exclude_seen=exclude_seen, progress=True), frame)

    def save(self, path: str | Path) -> Path:
        """Copy the run folder to `path` (a new folder): `cutrec.load(path)` and every `cutrec` command read it."""
        source, target = self._fitted().folder, Path(path).expanduser()
        if target.exists():
            raise CutrecError(f"{str(target)!r} already exists; save to a new folder")
        with staged_folder(target) as staging:  # complete, then renamed into place
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns(".*.tmp"), dirs_exist_ok=True)
        return target

    def _fitted(self) -> TrainedRun:
        if self.run is None:
            raise CutrecError(f"this {type(self).__name__} is not fitted; call .fit(data) or cutrec.load(path)")
        return self.run

    def __repr__(self) -> str:
        where = f"run {str(self.run.folder)!r}" if self.run is not None else "unfitted"
        return f"{type(self).__name__}({where}, dim={self.config.model.dim}, loss={self.config.loss.name!r})"


class SASRec(Recommender):
    """SASRec: causal self-attention, next-item targets (cutrec.models.SASRec)."""

    model_name = "sasrec"


class BERT4Rec(Recommender):
    """BERT4Rec: bidirectional self-attention, masked-item targets (cutrec.models.BERT4Rec)."""

    model_name = "bert4rec"


def load(path: str | Path, *, device: str = "auto") -> Recommender:
    """A fitted SASRec or BERT4Rec from a folder that `save` or `cutrec train` wrote, on `device`."""
    run = TrainedRun.load(Path(path).expanduser(), resolve_device(device))
    kind = SASRec if run.config.model.name == "sasrec" else BERT4Rec
    recommender = kind.__new__(kind)
    recommender.config, recommender.run = run.config, run
    return recommender


def _check_frame(frame: Frame) -> None:
    if frame not in ("pandas", "polars", "arrow"):
        raise CutrecError(f"frame={frame!r} is unknown; choose 'pandas', 'polars' or 'arrow'")


def _frame(batches: Iterator[Recommendations], frame: Frame) -> Any:
    """All batches as one table of the library `frame` names."""
    parts = [batch.columns() for batch in batches]
    columns = {name: np.concatenate([part[name] for part in parts]) for name in ("user", "item", "score", "rank")}
    if frame == "pandas":
        try:
            import pandas as pd
        except ImportError:
            raise CutrecError("frame='pandas' needs pandas: pip install 'cutrec[pandas]'") from None
        return pd.DataFrame(columns)
    if frame == "polars":
        try:
            import polars as pl
        except ImportError:
            raise CutrecError("frame='polars' needs polars: pip install 'cutrec[polars]'") from None
        return pl.DataFrame({name: list(v) if v.dtype == object else v for name, v in columns.items()})
    try:
        import pyarrow as pa
    except ImportError:
        raise CutrecError("frame='arrow' needs pyarrow: pip install 'cutrec[parquet]'") from None
    return pa.table(columns)


__all__ = ["BERT4Rec", "Interactions", "Recommender", "SASRec", "load"]
