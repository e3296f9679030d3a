"""Export a trained run for serving without cutrec or torch: the sequence encoder as ONNX, the item table as a
NumPy array with its raw ids, and a JSON file that says how to feed and score them.

    OUT/encoder.onnx     item ids [B, max_len] int64 -> user vectors [B, D] float32 (the batch axis is dynamic;
                         weights over 1 GiB go to encoder.onnx.data beside it)
    OUT/items.npy        [N, D] float32 item vectors; row i is dense item i
    OUT/item_ids.npy     [N] the raw id of each row (int64, or fixed-width unicode)
    OUT/metadata.json    inputs, padding, scoring

A history is encoded as its dense item ids (rows of items.npy) oldest first, the last max_len of them, then
padding_id up to max_len. The score of an item is the dot product of the user vector and its row (no
normalisation, so an inner-product ANN index fits). The encoder is exported in float32 from the CPU with
`torch.onnx.export(dynamo=True)` (needs onnx and onnxscript: the `onnx` extra) and, when onnxruntime is installed,
checked against torch on random histories before the folder is moved into place.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cutrec import __version__
from cutrec.console import note
from cutrec.errors import CutrecError
from cutrec.models import SequenceModel
from cutrec.recommend import TrainedRun
from cutrec.train.checkpoint import staged_folder

EXPORT_FORMAT = 1
CHECKED_HISTORIES = 64  # random histories the exported encoder is compared on
EXTERNAL_DATA_BYTES = 2**30  # larger weights go to encoder.onnx.data beside encoder.onnx


class HistoryEncoder(nn.Module):
    """Right-padded item ids [B, L] -> user vectors [B, D]; the lengths are counted from the padding."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        lengths = (item_ids != self.model.padding_id).sum(dim=1)  # [B]
        return self.model.user_vectors(item_ids, lengths)  # [B, D]


def export_onnx(run: TrainedRun, out: Path) -> Path:
    """Write the export folder `out` (new, or empty) for the run; returns it."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CutrecError(f"--out {str(out)!r} already exists and is not an empty folder; pass a new folder")
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError:
        raise CutrecError("ONNX export needs onnx and onnxscript: pip install 'cutrec[onnx]'") from None
    model = copy.deepcopy(run.model).to("cpu").float().eval()  # the run keeps its own model on its device
    encoder = HistoryEncoder(model)
    example = _random_histories(model, 4, np.random.default_rng(0))  # [4, L]
    with staged_folder(out) as staging:  # complete and checked, then renamed into place
        with _quiet_exporter():
            torch.onnx.export(
                encoder, (example,), str(staging / "encoder.onnx"), dynamo=True, input_names=["item_ids"],
                output_names=["user_vectors"], dynamic_shapes={"item_ids": {0: torch.export.Dim("batch")}},
                external_data=_weight_bytes(model) > EXTERNAL_DATA_BYTES,  # protobuf caps one file at 2 GiB
            )
        items = model.item_table.detach().float().numpy()  # [N, D]
        np.save(staging / "items.npy", items)
        ids = run.sequences.item_ids
        np.save(staging / "item_ids.npy", ids.astype(str) if ids.dtype == object else ids, allow_pickle=False)
        (staging / "metadata.json").write_text(json.dumps(_metadata(run, model), indent=2) + "\n")
        _check_with_onnxruntime(encoder, staging / "encoder.onnx")
    return out


def _weight_bytes(model: SequenceModel) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _metadata(run: TrainedRun, model: SequenceModel) -> dict:
    dim = int(model.item_table.shape[1])
    return {
        "format": EXPORT_FORMAT,
        "cutrec": __version__,
        "model": run.config.model.name,
        "encoder": {
            "file": "encoder.onnx",
            "input": {
                "name": "item_ids", "dtype": "int64", "shape": ["batch", model.max_len],
                "padding_id": model.padding_id,
                "layout": "each row: the history's dense item ids (rows of items.npy) oldest first, at most the last "
                          "max_len of them, then padding_id; at least one item",
            },
            "output": {"name": "user_vectors", "dtype": "float32", "shape": ["batch", dim]},
        },
        "items": {"file": "items.npy", "ids_file": "item_ids.npy", "shape": [model.num_items, dim],
                  "dtype": "float32"},
        "score": "dot product of a user vector and an item row, no normalisation (an inner-product index)",
        "exclude_seen": run.config.eval.exclude_seen,
    }


def _random_histories(model: SequenceModel, count: int, rng: np.random.Generator) -> torch.Tensor:
    """[count, max_len] right-padded random histories of 1 to max_len items."""
    lengths = rng.integers(1, model.max_len + 1, count)  # [count]
    items = rng.integers(0, model.num_items, (count, model.max_len))  # [count, L]
    padded = np.where(np.arange(model.max_len) < lengths[:, None], items, model.padding_id)
    return torch.from_numpy(padded.astype(np.int64))


def _check_with_onnxruntime(encoder: HistoryEncoder, path: Path) -> None:
    """Compare the ONNX encoder with torch on random histories (skipped, with a note, without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        note("note: onnxruntime is not installed, so the exported encoder was not checked against torch")
        return
    histories = _random_histories(encoder.model, CHECKED_HISTORIES, np.random.default_rng(1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"item_ids": histories.numpy()})[0]  # [H, D]
    with torch.no_grad():
        expected = encoder(histories).numpy()  # [H, D]
    error = float(np.abs(exported - expected).max() / max(np.abs(expected).max(), 1e-30))
    if not error <= 1e-4:
        raise CutrecError(f"the exported encoder differs from torch by {error:.2e} (relative); please report it")
    note(f"export checked with onnxruntime on {CHECKED_HISTORIES} random histories: max relative error {error:.1e}")


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's warnings and log lines (it reports each optional op library it cannot find)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
