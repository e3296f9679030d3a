"""Typed run configuration: dataclass defaults, a TOML or YAML file, then `key=value` overrides, all validated.

A key is dotted by section (`model.dim`, `train.lr`). Unknown keys and values of the wrong type are refused with a
`CutrecError` that names the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from cutrec.console import note
from cutrec.errors import CutrecError


@dataclass
class SyntheticConfig:
    """The built-in generator: users walk Markov chains over item clusters, items drawn by Zipf popularity."""

    num_users: int = 3000
    num_items: int = 1000
    num_clusters: int = 25
    mean_length: int = 30
    stay_probability: float = 0.7  # chance that the next item comes from the same cluster
    zipf_exponent: float = 1.1
    seed: int = 0
    cold_items: bool = True  # items no user touched stay in the catalog, so num_items is the catalog's size


@dataclass
class DataConfig:
    """Where the interactions come from and how they are cleaned and split."""

    dataset: str = "synthetic"  # a registry name (`cutrec datasets`) or "synthetic"
    path: str | None = None  # a local file; overrides the registry download
    format: Literal["csv", "tsv", "parquet", "sequences"] | None = None  # None: from the file suffix
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str | None = "timestamp"
    rating_col: str | None = None
    min_rating: float | None = None  # keep events whose rating is strictly above this
    dedupe: bool = False  # drop repeated (user, item, timestamp) events
    min_user_count: int = 0  # iterative k-core: users with fewer events are dropped
    min_item_count: int = 0  # iterative k-core: items with fewer events are dropped
    streaming: bool = False  # csv/tsv/parquet: preprocess with Polars' lazy, streaming scans (logs larger than memory)
    split: Literal["leave_one_out", "global_temporal"] = "leave_one_out"
    test_fraction: float = 0.1  # global_temporal: the last share of events (by time) that picks test users
    valid_fraction: float = 0.1  # global_temporal: share of the remaining users held out for validation
    split_seed: int = 0
    cache_dir: str = "~/.cache/cutrec"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    @property
    def label(self) -> str:
        """The data's name in run folders and messages: the file's stem for a local file given without a dataset
        name (the default "synthetic" would be wrong there), else data.dataset."""
        if self.path is not None and self.dataset == "synthetic":
            return Path(self.path).stem
        return self.dataset


@dataclass
class ModelConfig:
    """The sequence encoder."""

    name: Literal["sasrec", "bert4rec"] = "sasrec"  # causal next-item (SASRec) or bidirectional masked-item
    max_len: int = 50
    dim: int = 64
    num_blocks: int = 2
    num_heads: int = 1  # bert4rec: 2 (MODEL_DEFAULTS)
    dropout: float = 0.2  # the rate at each of dropout_places
    # where dropout acts: "embedding" (item + position embeddings), "attention" (the attention probabilities),
    # "feed_forward" (its hidden units), "residual" (each sublayer's output before it is added); [] for none
    dropout_places: list[Literal["embedding", "attention", "feed_forward", "residual"]] = field(
        default_factory=lambda: ["embedding", "attention", "feed_forward", "residual"])
    mask_prob: float = 0.2  # bert4rec: chance that a training position is masked (at least one per sequence)
    ffn_activation: Literal["gelu", "relu", "swiglu"] = "gelu"  # GELU; ReLU (SASRec 2018); gated SwiGLU (Shazeer 2020)
    ffn_mult: float = 1.0  # feed-forward width in multiples of dim (SASRec 2018: 1; BERT4Rec and most transformers: 4)
    norm_placement: Literal["pre", "post"] = "pre"  # LayerNorm before each sublayer (pre) or after its residual add
    residual_gate: bool = False  # each sublayer's output times sigmoid(linear(its input)) (LiGR, Gu et al. 2025)
    embedding_scale: bool = False  # input item embeddings times sqrt(dim) (SASRec 2018's code; Vaswani et al. 2017)
    init_std: float | None = None  # std of the initial item and position embeddings; none: dim ** -0.5


@dataclass
class LossConfig:
    """The training loss; every loss sees only (hidden [M, D], items [N, D], targets [M])."""

    # "auto": CE up to losses.LARGE_CATALOG_ITEMS items, the sampled cut CE (CCE-) above (resolved by the trainer)
    name: Literal["auto", "CE", "CCE", "CE-", "CCE-", "BCE", "BCE+", "gBCE", "SCE"] = "auto"
    num_negatives: int = 256  # CE-, CCE-, BCE+, gBCE (BCE always uses 1)
    share: Literal["none", "block", "batch", "offsets"] = "none"  # CCE-: who shares negatives (or their offsets)
    distribution: Literal["uniform", "popularity"] = "uniform"
    alpha: float = 1.0  # popularity sampling: q proportional to count ** alpha (1: the law of in-batch negatives)
    # popularity sampling: this share of q is uniform over the catalog, q = (1 - mix) q_pop + mix / N (mixed
    # negative sampling, Yang et al. 2020)
    uniform_mix: float = 0.0
    logq_correction: bool = True  # CE-: subtract log(K q(n)) from negative logits
    gbce_t: float = 0.75  # gBCE calibration parameter t in [0, 1]
    sce_buckets: int = 256  # SCE: buckets (random directions) per step
    sce_bucket_size_x: int = 256  # SCE: positions per bucket (the best-aligned with its direction)
    sce_bucket_size_y: int = 256  # SCE: items per bucket (the hard negatives of its positions)
    sce_mix: bool = True  # SCE: bucket directions are random mixes of the step's hidden states (else Gaussian)
    label_smoothing: float = 0.0  # CE, CCE: eps of the target spread uniformly over the catalog (Szegedy et al. 2016)
    temperature: float = 1.0  # every loss: training logits divided by this (the ranking is unchanged)


@dataclass
class TrainConfig:
    """The optimisation loop."""

    epochs: int = 200
    batch_size: int | Literal["auto"] = 128  # "auto": the largest batch whose estimated peak fits the free GPU memory
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    warmup_epochs: float = 0.0  # lr rises linearly from lr / steps to lr over this many epochs (Goyal et al. 2017)
    lr_decay: Literal["none", "linear", "cosine"] = "none"  # after warm-up, lr falls to 0 at train.epochs
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    time_limit_minutes: float | None = None  # stop after the epoch that passes this wall time; test the best
    grad_clip: float | None = None  # clip the global gradient norm to this; none: no clipping
    checkpoint_every_minutes: float = 10.0  # last.pt also between epoch ends, this often; 0: only at epoch ends
    # last.pt at every Nth epoch end (and always at the run's end and on a stop). Raise it where the write is slower
    # than an epoch: the state of a 1M x 64 table with its two Adam moments is 0.77 GB, a write of 0.6-2.5 s
    checkpoint_every_epochs: int = 1
    check_memory: bool = True  # on a GPU, refuse a batch whose estimated peak exceeds the free memory
    memory_limit_gb: float | None = None  # on a GPU, use at most this much of it (a budget on a shared card)
    seed: int = 0
    device: str = "auto"  # "auto" (cuda when present), "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # bf16 autocast on CUDA; ignored on the CPU
    compile: bool = False  # torch.compile the model (the step then runs eagerly, without a CUDA graph)
    cuda_graph: bool = True  # on CUDA, capture the whole training step once and replay it (cutrec.train.step)
    progress: bool = True  # a progress bar per epoch on the terminal
    tensorboard: bool = False  # write each epoch's loss, metrics and seconds to RUN_DIR/tensorboard (needs tensorboard)
    dist_timeout_minutes: float = 10.0  # data parallel: a collective waiting this long fails (a rank was lost)
    catalog_parallel: bool = False  # under torchrun: the item table split by rows across the ranks (CCE, CCE-)


@dataclass
class EvalConfig:
    """Full-catalog ranking evaluation."""

    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    exclude_seen: bool = True  # items in the user's input are never recommended
    batch_size: int = 1024  # users scored at a time
    item_chunk: int = 65536  # catalog items scored at a time
    valid_metric: str = "NDCG@10"
    # score the best checkpoint on the test split when training ends; false: validation only (a recipe study
    # chooses on validation, then reads the test split once per chosen configuration with `cutrec evaluate`)
    test: bool = True


@dataclass
class RunConfig:
    """Everything one `cutrec train` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str = "runs"  # the run folder is OUT/NAME
    name: str | None = None  # None: dataset-loss-timestamp


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists (for TOML/JSON)."""
    return dataclasses.asdict(config)


def describe_keys(section: Any = RunConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, comment) of every config key, from the dataclasses and their source."""
    comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(section), flags=re.M))
    hints = typing.get_type_hints(section)
    rows = []
    for spec in dataclasses.fields(section):
        kind = hints[spec.name]
        if dataclasses.is_dataclass(kind):
            rows.extend(describe_keys(kind, f"{prefix}{spec.name}."))
            continue
        default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
        rows.append((f"{prefix}{spec.name}", _type_name(kind), repr(default), comments.get(spec.name, "")))
    return rows


def _type_name(annotation: Any) -> str:
    """int, float | None, 'csv' | 'tsv', list[int], ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    return getattr(annotation, "__name__", str(annotation))


def merged_values(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge of config values: those of `top` win."""
    merged = dict(base)
    for key, value in top.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merged_values(merged[key], value) if both_sections else value
    return merged


def differing_keys(first: RunConfig, second: RunConfig) -> list[str]:
    """The dotted keys whose values differ between two configs."""

    def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    a, b = flat(to_dict(first)), flat(to_dict(second))
    return sorted(key for key in a if a[key] != b[key])


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (.toml), YAML (.yaml/.yml) or JSON (.json, e.g. a run's config.json) config file into nested
    dicts."""
    path = Path(path)
    if not path.is_file():
        raise CutrecError(f"config file {str(path)!r} does not exist; pass an existing .toml or .yaml file")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            return tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise CutrecError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError:
            raise CutrecError("YAML configs need PyYAML: pip install 'cutrec[yaml]', or use a .toml file") from None
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise CutrecError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise CutrecError(f"config file {str(path)!r} must hold a mapping of sections, not {type(loaded).__name__}")
        return loaded
    if suffix == ".json":
        try:
            loaded = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise CutrecError(f"config file {str(path)!r} is not valid JSON: {err}") from None
        if not isinstance(loaded, dict):
            raise CutrecError(f"config file {str(path)!r} must hold a mapping of sections, not {type(loaded).__name__}")
        return loaded
    raise CutrecError(f"config file {str(path)!r} has suffix {suffix!r}; use .toml, .yaml, .yml or .json")


# Each model's own defaults where they differ from the dataclass defaults above (which are SASRec's): the layer
# just over those defaults, chosen by the model.name that the file or the options give.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "sasrec": {},
    "bert4rec": {"model": {"num_heads": 2}},  # BERT4Rec's 2019 layout: 2 heads of dim / 2
}


def build_config(file_values: dict[str, Any] | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the model's own defaults (`MODEL_DEFAULTS`), then a named dataset's preprocessing presets
    (`cutrec datasets`), then the file's values, then `key=value` overrides (dotted keys, strings parsed by type). A
    local data.path gets no presets (a note says which were not applied)."""
    config = _layered(file_values or {}, overrides or [])
    presets = _dataset_presets(config)
    below = merged_values(MODEL_DEFAULTS.get(config.model.name, {}), {"data": presets} if presets else {})
    if below:
        config = _layered(merged_values(below, file_values or {}), overrides or [])
    validate(config)
    return config


def _layered(file_values: dict[str, Any], overrides: list[str]) -> RunConfig:
    config = RunConfig()
    _apply_mapping(config, file_values, prefix="")
    for item in overrides:
        if "=" not in item:
            raise CutrecError(f"override {item!r} has no '='; write it as key=value, e.g. train.lr=0.001")
        key, text = item.split("=", 1)
        set_value(config, key.strip().lstrip("-"), text)
    return config


def _dataset_presets(config: RunConfig) -> dict[str, Any]:
    """The registry's preprocessing of config.data.dataset when the data comes from the registry, else {}."""
    from cutrec.data import registry

    if config.data.dataset not in registry.DATASETS:
        return {}
    presets = dict(registry.DATASETS[config.data.dataset].preprocessing)
    if config.data.path is None:
        return presets
    missed = {key: value for key, value in presets.items() if getattr(config.data, key) != value}
    if missed:
        note(
            f"note: data.path is set, so the registry defaults of {config.data.dataset!r} ({missed}) are not "
            "applied; pass them as --data.KEY=VALUE if the file needs them")
    return {}


def set_value(config: Any, dotted_key: str, value: Any) -> None:
    """Set one dotted key; a string value is parsed into the field's type."""
    *parents, last = dotted_key.split(".")
    target = config
    for i, part in enumerate(parents):
        target = _child(target, part, ".".join(parents[: i + 1]))
    _set_local(target, last, value, dotted_key)


def _child(target: Any, part: str, key: str) -> Any:
    if not dataclasses.is_dataclass(target) or part not in _field_names(target):
        raise CutrecError(f"unknown config section {key!r}; known: {', '.join(_field_names(target))}")
    child = getattr(target, part)
    if not dataclasses.is_dataclass(child):
        raise CutrecError(f"config key {key!r} is a value, not a section")
    return child


def _field_names(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)] if dataclasses.is_dataclass(obj) else []


def _apply_mapping(target: Any, values: dict[str, Any], prefix: str) -> None:
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            _apply_mapping(_child_or_error(target, key, dotted), value, prefix=f"{dotted}.")
        else:
            _set_local(target, key, value, dotted)


def _child_or_error(target: Any, key: str, dotted: str) -> Any:
    if key not in _field_names(target) or not dataclasses.is_dataclass(getattr(target, key)):
        raise CutrecError(f"unknown config section {dotted!r}; known: {', '.join(_field_names(target))}")
    return getattr(target, key)


def _set_local(target: Any, key: str, value: Any, dotted: str) -> None:
    hints = typing.get_type_hints(type(target))
    if key not in hints:
        raise CutrecError(f"unknown config key {dotted!r}; known keys here: {', '.join(_field_names(target))}")
    if dataclasses.is_dataclass(getattr(target, key)):
        raise CutrecError(f"config key {dotted!r} is a section; set one of its keys, e.g. {dotted}.<key>=...")
    setattr(target, key, _coerce(value, hints[key], dotted))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Parse or check `value` against a field annotation; raise CutrecError naming `key` on mismatch."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except CutrecError as err:
                errors.append(str(err))
        raise CutrecError(errors[0] if errors else f"config key {key!r} cannot be {value!r}")
    if origin is Literal:
        text = value if not isinstance(value, str) else value.strip()
        if text not in args:
            choices = ", ".join(repr(a) for a in args)
            raise CutrecError(f"config key {key!r} is {value!r}; choose one of {choices}")
        return text
    if origin is list:
        (item_type,) = args
        if isinstance(value, str):
            parts = [p for p in value.strip("[]").split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            raise CutrecError(f"config key {key!r} needs a list, e.g. {key}=1,5,10; got {value!r}")
        return [_coerce(p, item_type, key) for p in parts]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise CutrecError(f"config key {key!r} needs true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or isinstance(value, float):
            raise CutrecError(f"config key {key!r} needs an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise CutrecError(f"config key {key!r} needs an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise CutrecError(f"config key {key!r} needs a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise CutrecError(f"config key {key!r} needs a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise CutrecError(f"config key {key!r} needs a string, got {value!r}")
        return str(value)
    raise CutrecError(f"config key {key!r} has an unsupported type {annotation!r}")


def validate(config: RunConfig) -> None:
    """Range checks that types alone cannot express."""
    checks = [
        (config.model.max_len >= 1, "model.max_len", config.model.max_len, "use a sequence length of 1 or more"),
        (config.model.dim >= 1, "model.dim", config.model.dim, "use a width of 1 or more"),
        (config.model.num_blocks >= 1, "model.num_blocks", config.model.num_blocks, "use 1 or more blocks"),
        (config.model.num_heads >= 1 and config.model.dim % max(config.model.num_heads, 1) == 0,
         "model.num_heads", config.model.num_heads,
         "use 1 or more heads that divide model.dim (bert4rec defaults to 2: config.MODEL_DEFAULTS)"),
        (0.0 <= config.model.dropout < 1.0, "model.dropout", config.model.dropout, "use a value in [0, 1)"),
        (0.0 < config.model.mask_prob <= 1.0, "model.mask_prob", config.model.mask_prob, "use a value in (0, 1]"),
        (0.0 < config.model.ffn_mult < math.inf and round(config.model.ffn_mult * config.model.dim) >= 1,
         "model.ffn_mult", config.model.ffn_mult, "use a positive width multiple (ffn_mult x dim >= 1)"),
        (config.model.init_std is None or 0.0 < config.model.init_std < math.inf, "model.init_std",
         config.model.init_std, "use a positive, finite std, or none (dim ** -0.5)"),
        (0.0 <= config.loss.label_smoothing < 1.0, "loss.label_smoothing", config.loss.label_smoothing,
         "use a value in [0, 1)"),
        (0.0 < config.loss.temperature < math.inf, "loss.temperature", config.loss.temperature,
         "use a positive, finite temperature"),
        (config.loss.num_negatives >= 1, "loss.num_negatives", config.loss.num_negatives,
         "use 1 or more negatives"),
        (config.loss.alpha >= 0.0, "loss.alpha", config.loss.alpha, "use a power of 0 or more"),
        (0.0 <= config.loss.uniform_mix <= 1.0, "loss.uniform_mix", config.loss.uniform_mix,
         "use a share in [0, 1]"),
        (config.loss.uniform_mix == 0.0 or config.loss.distribution == "popularity", "loss.uniform_mix",
         config.loss.uniform_mix, "it mixes uniform draws into popularity sampling; set "
         "loss.distribution=popularity, or loss.uniform_mix=0"),
        (0.0 <= config.loss.gbce_t <= 1.0, "loss.gbce_t", config.loss.gbce_t, "use a value in [0, 1]"),
        (config.loss.sce_buckets >= 1, "loss.sce_buckets", config.loss.sce_buckets, "use 1 or more buckets"),
        (config.loss.sce_bucket_size_x >= 1, "loss.sce_bucket_size_x", config.loss.sce_bucket_size_x,
         "use 1 or more positions per bucket"),
        (config.loss.sce_bucket_size_y >= 1, "loss.sce_bucket_size_y", config.loss.sce_bucket_size_y,
         "use 1 or more items per bucket"),
        (config.train.epochs >= 1, "train.epochs", config.train.epochs, "train for 1 or more epochs"),
        (config.train.batch_size == "auto" or config.train.batch_size >= 1, "train.batch_size",
         config.train.batch_size, "use a batch of 1 or more, or auto"),
        (0.0 < config.train.lr < math.inf, "train.lr", config.train.lr, "use a positive, finite learning rate"),
        (0.0 <= config.train.warmup_epochs < math.inf, "train.warmup_epochs", config.train.warmup_epochs,
         "use 0 (no warm-up) or a positive number of epochs"),
        (config.train.grad_clip is None or 0.0 < config.train.grad_clip < math.inf, "train.grad_clip",
         config.train.grad_clip, "use a positive, finite norm, or none"),
        (0.0 <= config.train.checkpoint_every_minutes < math.inf, "train.checkpoint_every_minutes",
         config.train.checkpoint_every_minutes, "use 0 (only at epoch ends) or a positive number of minutes"),
        (config.train.patience >= 1, "train.patience", config.train.patience, "use a patience of 1 or more"),
        (config.train.checkpoint_every_epochs >= 1, "train.checkpoint_every_epochs",
         config.train.checkpoint_every_epochs, "use 1 (every epoch end) or more"),
        (config.train.dist_timeout_minutes > 0, "train.dist_timeout_minutes", config.train.dist_timeout_minutes,
         "use a positive number of minutes"),
        (config.train.memory_limit_gb is None or 0 < config.train.memory_limit_gb < float("inf"),
         "train.memory_limit_gb", config.train.memory_limit_gb, "use a positive, finite number of GB, or none"),
        (config.train.time_limit_minutes is None or config.train.time_limit_minutes > 0, "train.time_limit_minutes",
         config.train.time_limit_minutes, "use a positive number of minutes, or none"),
        (len(config.eval.ks) >= 1 and all(k >= 1 for k in config.eval.ks), "eval.ks", config.eval.ks,
         "give cut-offs of 1 or more, e.g. eval.ks=1,5,10"),
        (config.eval.batch_size >= 1, "eval.batch_size", config.eval.batch_size, "use 1 or more"),
        (config.eval.item_chunk >= 1, "eval.item_chunk", config.eval.item_chunk, "use 1 or more"),
        (0.0 < config.data.test_fraction < 1.0, "data.test_fraction", config.data.test_fraction,
         "use a fraction in (0, 1)"),
        (0.0 <= config.data.valid_fraction < 1.0, "data.valid_fraction", config.data.valid_fraction,
         "use a fraction in [0, 1)"),
        (config.data.min_user_count >= 0, "data.min_user_count", config.data.min_user_count, "use 0 or more"),
        (config.data.min_item_count >= 0, "data.min_item_count", config.data.min_item_count, "use 0 or more"),
    ]
    for ok, key, value, fix in checks:
        if not ok:
            raise CutrecError(f"{key}={value!r} is out of range: {fix}")
    metric = config.eval.valid_metric
    name, _, k = metric.partition("@")
    if name not in ("NDCG", "HR", "MRR") or not k.isdigit() or int(k) not in config.eval.ks:
        raise CutrecError(
            f"eval.valid_metric={metric!r} is not computed; "
            f"use NDCG@k, HR@k or MRR@k with k in eval.ks={config.eval.ks}"
        )
