"""Top-k recommendations of a trained run, in the raw ids of its data, batch by batch.

A run folder holds everything this needs (config.json, best.pt, data.npz with the raw item and user ids), so it
works on a copy of the folder anywhere. A known user's history is all of its events in the run's data (train,
validation and test); a new user is given by a history of raw item ids. Ranking goes over the whole catalog chunk
by chunk (`eval.batch_size` users x `eval.item_chunk` items at a time, never a users x catalog matrix), and with
`exclude_seen` the history's items are never recommended; a user who has seen all but m < k items gets m.
Unknown users, and unknown items inside histories, are counted and named (the first few) in one warning, then
skipped. `write_recommendations` streams the batches into a Parquet or CSV file that appears only once complete.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from cutrec.config import RunConfig
from cutrec.data.preprocess import SequenceData
from cutrec.data.splits import Sequences, slices
from cutrec.errors import CutrecError
from cutrec.eval.ranking import items_of_keys, keys_to_scores
from cutrec.models import SequenceModel
from cutrec.train.checkpoint import atomic_write_bytes
from cutrec.train.evaluate import ranked_batches, settled_keys
from cutrec.train.loop import load_run_model, run_sequences

SHOWN_UNKNOWN = 5  # unknown ids named in a warning


class CutrecWarning(UserWarning):
    """Something was skipped (unknown users or items); the message says what and how many."""


@dataclass
class Recommendations:
    """One batch of recommendations: row r recommends items[r, :counts[r]] (raw ids, best first) to users[r]."""

    users: np.ndarray  # [B] the raw user id, or the key of the history
    items: np.ndarray  # [B, k] raw item ids (int64, or object str); entries past counts[r] are unused
    scores: np.ndarray  # [B, k] float32 scores u . w, best first
    counts: np.ndarray  # [B] int64 items recommended (k, or fewer when fewer unseen items are left)

    def columns(self) -> dict[str, np.ndarray]:
        """Long format, one row per recommended item: user, item, score, rank (1 = best)."""
        k = self.items.shape[1]
        keep = np.arange(k)[None, :] < self.counts[:, None]  # [B, k]
        ranks = np.broadcast_to(np.arange(1, k + 1), self.items.shape)  # [B, k]
        return {
            "user": np.repeat(self.users, self.counts),
            "item": self.items[keep],
            "score": self.scores[keep],
            "rank": ranks[keep].astype(np.int64),
        }


class IdMap:
    """Raw ids (sorted, as preprocessing orders them: dense id i is raw[i]) to dense ids and back."""

    def __init__(self, raw: np.ndarray, what: str) -> None:
        self.raw = raw  # [K] int64, or object array of str
        self.what = what  # "user" or "item"
        self.is_text = raw.dtype == object
        self._sorted = raw.astype(str) if self.is_text else raw  # [K] searchable

    def dense(self, queries: Any, *, strict: bool = True) -> np.ndarray:
        """[Q] int64 dense ids of raw ids `queries`, -1 for unknown ones. An id of the wrong type (an integer where
        the run's ids are strings, or the reverse) is refused when `strict`, else unknown (words of a text file)."""
        values = np.asarray(queries if not isinstance(queries, (str, int)) else [queries])
        if values.ndim != 1:
            raise CutrecError(f"{self.what} ids have shape {values.shape}; pass a flat list of ids")
        fits = self._fits(values)  # [Q] bool
        if strict and not fits.all():
            example = values[int(np.flatnonzero(~fits)[0])]
            wanted = f"strings (e.g. {str(self.raw[0])!r}); pass strings" if self.is_text else (
                f"integers (e.g. {int(self.raw[0])}); pass integers")
            raise CutrecError(f"{self.what} id {shown(example)} is {_kind(example)}, but this run's {self.what} ids "
                              f"are {wanted}")
        dense = np.full(len(values), -1, dtype=np.int64)  # [Q]
        if fits.any():
            typed = values[fits].astype(str if self.is_text else np.int64)  # [F]
            places = np.searchsorted(self._sorted, typed).clip(max=len(self._sorted) - 1)  # [F]
            dense[fits] = np.where(self._sorted[places] == typed, places, -1)
        return dense

    def _fits(self, values: np.ndarray) -> np.ndarray:
        """[Q] bool: which values are ids of this run's type."""
        kind = values.dtype.kind
        if kind in "Uiu":
            return np.full(len(values), (kind == "U") == self.is_text)
        if kind != "O":
            return np.zeros(len(values), dtype=bool)  # floats, booleans: never ids
        if self.is_text:
            return np.array([isinstance(v, str) for v in values], dtype=bool)
        return np.array([isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                         and -(2**63) <= v < 2**63 for v in values], dtype=bool)

    def parse(self, words: list[str]) -> np.ndarray:
        """Ids read from a text file, as this run's type: integers where the run's ids are integers (a word that is
        no integer stays text, which `dense(strict=False)` counts as unknown)."""
        if self.is_text:
            return np.array(words, dtype=str)
        return np.array([int(w) if _is_int(w) else w for w in words], dtype=object)


def shown(value: Any) -> str:
    """repr of an id for messages: numpy scalars as the Python value they hold."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _kind(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    return "an integer" if isinstance(value, int) and not isinstance(value, bool) else f"a {type(value).__name__}"


def _is_int(word: str) -> bool:
    try:
        int(word)
    except ValueError:
        return False
    return True


@dataclass
class TrainedRun:
    """A run folder loaded for recommending: its config, best model, data and id maps."""

    folder: Path
    config: RunConfig
    model: SequenceModel
    sequences: SequenceData
    device: torch.device
    users: IdMap
    items: IdMap

    @classmethod
    def load(cls, folder: str | Path, device: torch.device) -> TrainedRun:
        folder = Path(folder)
        config, model, _ = load_run_model(folder, device)
        sequences = run_sequences(folder, config)
        if sequences.num_items != model.num_items:
            raise CutrecError(
                f"{str(folder)!r} holds data of {sequences.num_items} items but a model of {model.num_items}; "
                "restore the folder from a copy"
            )
        return cls(folder, config, model, sequences, device, IdMap(sequences.user_ids, "user"),
                   IdMap(sequences.item_ids, "item"))

    def check_k(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.model.num_items:
            raise CutrecError(f"k={k!r} is out of range; use 1 <= k <= {self.model.num_items} (the catalog size)")

    def user_histories(self, users: Any, *, strict: bool = True) -> tuple[np.ndarray, Sequences]:
        """(raw ids [H] of the known users among `users`, their whole histories); unknown ones warned, skipped.
        `strict`: as in IdMap.dense."""
        raw = np.asarray(users if not isinstance(users, (str, int)) else [users])
        if raw.size == 0:
            raise CutrecError("users is empty; pass at least one user id")
        dense = self.users.dense(raw, strict=strict)  # [Q]
        known = dense >= 0
        _warn_unknown(raw[~known], len(raw), "user", "users")
        if not known.any():
            raise CutrecError(
                f"none of the {len(raw)} users is in this run's data (e.g. {shown(raw[0])}); pass users it was "
                "trained on, or ask by history with recommend_histories"
            )
        rows = dense[known]
        data = self.sequences
        return raw[known], slices(data, rows, data.offsets[rows], data.offsets[rows + 1])

    def all_histories(self) -> tuple[np.ndarray, Sequences]:
        data = self.sequences
        return data.user_ids, Sequences(data.offsets, data.items, np.arange(data.num_users))

    def item_histories(self, keys: np.ndarray, histories: list[list], *, strict: bool = True) -> Sequences:
        """Histories of raw item ids -> dense Sequences; unknown items are warned about and skipped, and a
        history with no known item is refused. `strict`: as in IdMap.dense."""
        lengths = np.array([len(h) for h in histories], dtype=np.int64)  # [H]
        flat = np.empty(int(lengths.sum()), dtype=object)
        flat[:] = [item for history in histories for item in history]
        dense = self.items.dense(flat, strict=strict)  # [E]
        known = dense >= 0
        _warn_unknown(flat[~known], len(flat), "item", "history items")
        owner = np.repeat(np.arange(len(histories)), lengths)  # [E]
        kept = np.bincount(owner[known], minlength=len(histories))  # [H]
        empty = np.flatnonzero(kept == 0)
        if len(empty):
            raise CutrecError(
                f"history {shown(keys[empty[0]])} holds no item this run knows ({len(empty)} such histories); drop "
                "it or give at least one item of the run's catalog"
            )
        offsets = np.zeros(len(histories) + 1, dtype=np.int64)
        np.cumsum(kept, out=offsets[1:])
        return Sequences(offsets, dense[known].astype(np.int32), np.arange(len(histories)))

    def batches(
        self, names: np.ndarray, histories: Sequences, k: int, *, exclude_seen: bool = True, progress: bool = True
    ) -> Iterator[Recommendations]:
        """Recommendations for each history (names [H]: the user ids, or the histories' names), one batch of
        eval.batch_size at a time."""
        self.check_k(k)
        config = replace(self.config.eval, exclude_seen=exclude_seen)
        for batch in ranked_batches(self.model, histories, k, config, self.device, amp=self.config.train.amp,
                                    progress="recommending" if progress else None):
            (keys,) = settled_keys([batch])  # [B, k]
            scores = keys_to_scores(keys).cpu().numpy()  # [B, k]
            counts = (scores > float("-inf")).sum(axis=1)  # [B] excluded items score -inf and come last
            dense = items_of_keys(keys).cpu().numpy()  # [B, k]
            yield Recommendations(names[batch.rows], self.items.raw[dense], scores, counts.astype(np.int64))


def _warn_unknown(unknown: np.ndarray, total: int, what: str, plural: str) -> None:
    if len(unknown) == 0:
        return
    names = ", ".join(map(shown, unknown[:SHOWN_UNKNOWN])) + (", ..." if len(unknown) > SHOWN_UNKNOWN else "")
    warnings.warn(
        f"skipped {len(unknown)} of {total} {plural} unknown to this run ({names}): no {what} by those ids was in its "
        "data",
        CutrecWarning,
        stacklevel=4,  # the caller of Recommender.recommend or recommend_histories
    )


def write_recommendations(batches: Iterable[Recommendations], path: Path) -> int:
    """Stream batches into `path` (.parquet or .csv: user, item, score, rank) through a temporary file that is
    fsynced and renamed into place when complete (checkpoint.atomic_write_bytes); returns the rows written."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise CutrecError(f"--out {str(path)!r} has suffix {suffix!r}; use .parquet or .csv")
    if path.is_dir() or not path.parent.is_dir():
        raise CutrecError(f"--out {str(path)!r} is a folder or lies in none; pass a file in an existing folder")
    if suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise CutrecError("writing parquet needs pyarrow: pip install 'cutrec[parquet]', or write a .csv") from None
    rows = 0

    def write(file: BinaryIO) -> None:
        nonlocal rows
        if suffix == ".csv":
            text = io.TextIOWrapper(file, newline="", write_through=True)
            writer = csv.writer(text)
            writer.writerow(["user", "item", "score", "rank"])
        for batch in batches:
            columns = batch.columns()
            if suffix == ".csv":
                writer.writerows(zip(columns["user"], columns["item"], columns["score"].tolist(), columns["rank"],
                                     strict=True))
            else:
                table = pa.table(columns)
                if rows == 0:
                    writer = pq.ParquetWriter(file, table.schema)
                writer.write_table(table)
            rows += len(columns["rank"])
        if suffix == ".csv":
            text.detach()  # leave the file open for atomic_write_bytes to fsync
        elif rows:
            writer.close()

    atomic_write_bytes(path, write)
    return rows
