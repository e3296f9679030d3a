"""Load the SequenceData a DataConfig describes: the synthetic generator, a local file, or a registry dataset.

Files are read and preprocessed once (with data.streaming, by Polars' lazy scans: cutrec.data.streaming), then
cached under data.cache_dir keyed by the file's path, size and mtime and by the reading and preprocessing settings.
"""

from __future__ import annotations

from pathlib import Path

from cutrec.config import DataConfig
from cutrec.data.cache import cached_sequences
from cutrec.data.preprocess import SequenceData, preprocess
from cutrec.data.readers import infer_format, read_interactions, read_sequences
from cutrec.data.synthetic import synthetic_interactions, with_cold_items
from cutrec.errors import CutrecError

CACHE_VERSION = 1  # bump when reading or preprocessing changes what a cached file holds


def load_sequences(config: DataConfig) -> SequenceData:
    """The preprocessed sequences of config.path if set, else of the synthetic generator or the named dataset.

    Registry datasets are fetched with `registry.fetch(name, cache_dir)` and read with the config's column names
    (their prepared TSV has the header user_id, item_id, timestamp[, rating]).
    """
    options = preprocess_options(config)
    if config.streaming and config.path is None and config.dataset == "synthetic":
        raise CutrecError(
            "data.streaming=true reads csv, tsv or parquet files, not the synthetic generator; set data.path "
            "or data.dataset, or data.streaming=false"
        )
    if config.path is None and config.dataset == "synthetic":
        data = preprocess(synthetic_interactions(config.synthetic), **options)
        if config.synthetic.cold_items and config.min_item_count <= 1:
            return with_cold_items(data, config.synthetic.num_items)
        return data
    cache_dir = Path(config.cache_dir).expanduser()
    if config.path is not None:
        path = Path(config.path).expanduser()
        if not path.is_file():
            raise CutrecError(
                f"data.path={config.path!r} does not exist; point it at a csv, tsv, parquet or sequences file"
            )
        fmt = infer_format(path, config.format)
    else:
        from cutrec.data import registry

        if config.dataset not in registry.DATASETS:
            names = ", ".join(["synthetic", *registry.DATASETS])
            raise CutrecError(
                f"data.dataset={config.dataset!r} is not a known dataset ({names}); or pass a local file with "
                "--data PATH"
            )
        path = Path(registry.fetch(config.dataset, cache_dir))
        fmt = registry.DATASETS[config.dataset].format
    columns = {
        "user_col": config.user_col,
        "item_col": config.item_col,
        "time_col": config.time_col,
        "rating_col": config.rating_col,
    }
    if fmt == "sequences":
        columns = {}  # a sequences file has no columns to name
    stat = path.stat()
    key = {
        "version": CACHE_VERSION,
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "format": fmt,
        "streaming": config.streaming,  # it reads some inputs differently (docs/datasets.md)
        **columns,
        **options,
    }

    def build() -> SequenceData:
        if config.streaming:
            from cutrec.data.streaming import preprocess_lazy

            return preprocess_lazy(path, format=fmt, **columns, **options)
        if fmt == "sequences":
            interactions = read_sequences(path)
        else:
            interactions = read_interactions(path, format=fmt, **columns)
        return preprocess(interactions, **options)

    return cached_sequences(key, build, cache_dir / "sequences")


def preprocess_options(config: DataConfig) -> dict:
    """The keyword arguments of `preprocess` that the config sets."""
    return {
        "dedupe": config.dedupe,
        "min_rating": config.min_rating,
        "min_user_count": config.min_user_count,
        "min_item_count": config.min_item_count,
    }
