"""An on-disk cache of preprocessed `SequenceData`, keyed by everything that went into building it.

One .npz file per key, named by the sha256 of the key's canonical JSON and written atomically (a temporary file
in the same folder, then os.replace), so an interrupted run never leaves a partial file behind. The same npz
layout (`write_npz`, `read_npz`) holds a run folder's own copy of its data.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cutrec.data.preprocess import SequenceData
from cutrec.errors import CutrecError

_FIELDS = ("offsets", "items", "timestamps", "item_ids", "user_ids")


def cached_sequences(key: dict, build: Callable[[], SequenceData], cache_dir: str | Path) -> SequenceData:
    """The SequenceData stored under `key` in `cache_dir`, or build() stored there first.

    `key` must be JSON-able (source path, its size and mtime, preprocessing parameters, a format version). A cache
    file that cannot be read back is rebuilt.
    """
    try:
        text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise CutrecError(
            f"cache key {key!r} is not JSON-able ({err}); use strings, numbers, lists and dicts"
        ) from None
    folder = Path(cache_dir).expanduser()
    path = folder / f"{hashlib.sha256(text.encode()).hexdigest()}.npz"
    cached = read_npz(path, text)
    if cached is not None:
        return cached
    data = build()
    _save(path, text, data)
    return data


def read_npz(path: Path, key_text: str | None = None) -> SequenceData | None:
    """The SequenceData stored by `write_npz`, or None when the file is absent, unreadable, inconsistent, or holds
    another key than `key_text` (None: any key)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if key_text is not None and str(stored["key"]) != key_text:
                return None
            arrays = {name: stored[name] for name in _FIELDS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    for name in ("item_ids", "user_ids"):
        if arrays[name].dtype.kind == "U":
            arrays[name] = arrays[name].astype(object)
    data = SequenceData(**arrays)
    consistent = (
        data.offsets.ndim == 1
        and len(data.offsets) == data.num_users + 1
        and data.offsets[-1] == len(data.items) == len(data.timestamps)
    )
    return data if consistent else None


def write_npz(file: BinaryIO, data: SequenceData, key_text: str = "") -> None:
    """Write `data` (and the key it was built from) as an npz that loads without pickle."""
    arrays = {name: getattr(data, name) for name in _FIELDS}
    for name in ("item_ids", "user_ids"):
        if arrays[name].dtype == object:
            arrays[name] = arrays[name].astype(str)  # [K] fixed-width unicode: no pickle needed to load it
    np.savez(file, key=np.array(key_text), **arrays)


def _save(path: Path, key_text: str, data: SequenceData) -> None:
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            write_npz(file, data, key_text)
        os.replace(temporary, path)
    except OSError as err:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
        raise CutrecError(
            f"cannot write the data cache in {str(path.parent)!r} ({err}); set data.cache_dir to a writable folder"
        ) from None
