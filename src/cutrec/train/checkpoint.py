"""Run-folder files, always written atomically and durably, and checkpoints that can never run code.

A write goes to a temporary file in the run folder, is flushed and fsynced, renamed onto its name, and then the
folder itself is fsynced, so a crash, a kill or a power cut leaves either the previous file or the new one, never a
torn one. A kill in the middle of a write can leave a `.NAME.*.tmp` file behind; `remove_leftovers` deletes them
when a run or its resume starts. Checkpoints hold only tensors, numbers, strings and plain containers and are
loaded with `weights_only=True`; a file holding anything else is refused before any of it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cutrec import __version__
from cutrec.errors import CutrecError

LAST_NAME = "last.pt"  # the whole training state: see train.checkpoint_every_epochs and checkpoint_every_minutes
BEST_NAME = "best.pt"  # the model of the best validation epoch: the one tested, recommended and exported
CONFIG_NAME = "config.json"
LOG_NAME = "log.csv"
METRICS_NAME = "metrics.json"
DATA_NAME = "data.npz"  # the preprocessed sequences with the raw item and user ids (cutrec.data.cache's npz layout)
RUN_NAME = "run.json"  # the run folder's format and the cutrec that wrote it
# 1: before data.npz and run.json (evaluation re-read the original file); 2: the folder holds its own data
RUN_FORMAT = 2
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (os.umask can only read it by setting it)


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, rename it onto `path`, fsync the folder."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise CutrecError(f"cannot write {str(path)!r} ({err.strerror}); make its folder writable") from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # the permissions of a plain open(), not mkstemp's owner-only 0o600
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power cut
        finally:
            os.close(folder)
    except OSError as err:
        Path(temporary).unlink(missing_ok=True)
        raise CutrecError(
            f"cannot write {str(path)!r} ({err.strerror}); free space or fix the folder, the previous file is intact"
        ) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A new temporary folder beside `target` to fill; renamed onto `target` (which may be an empty folder) when
    the block completes, removed when it fails, so `target` ends complete or as it was."""
    staging = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as err:
        raise CutrecError(f"cannot write {str(target)!r} ({err.strerror}); pass a path in a writable folder") from None
    try:
        yield staging
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except OSError as err:
        raise CutrecError(f"cannot write {str(target)!r} ({err}); free space or pass a writable path") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporary files that a killed write left in `folder`; returns what was removed."""
    leftovers = sorted(folder.glob(".*.tmp"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, lambda file: file.write((json.dumps(value, indent=2) + "\n").encode()))


def write_run_info(folder: Path) -> None:
    """run.json: the folder's format, so a later cutrec knows how to read it and an older one refuses it."""
    write_json(folder / RUN_NAME, {"format": RUN_FORMAT, "cutrec": __version__})


def run_format(folder: Path) -> int:
    """The format of a run folder (1 for folders from before run.json); a missing folder, an unreadable run.json or
    a newer format than this cutrec reads is a CutrecError."""
    if not folder.is_dir():
        raise CutrecError(f"run folder {str(folder)!r} does not exist; pass a folder written by `cutrec train`")
    path = folder / RUN_NAME
    if not path.exists():
        return 1
    try:
        info = json.loads(path.read_text())
        found = int(info["format"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CutrecError(f"{str(path)!r} is not readable; restore it from a copy of the run folder") from None
    if found > RUN_FORMAT:
        raise CutrecError(
            f"run folder {str(folder)!r} was written by cutrec {info.get('cutrec', '?')} (run format {found}); this "
            f"cutrec {__version__} reads formats up to {RUN_FORMAT}: upgrade with pip install -U cutrec"
        )
    return found


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    try:
        atomic_write_bytes(path, lambda file: torch.save(state, file))
    except RuntimeError as err:  # torch.save reports a failed write (a full disk, a file size limit) as RuntimeError
        raise CutrecError(
            f"cannot write {str(path)!r} ({str(err).splitlines()[0]}); free space or fix the folder, the previous "
            "file is intact"
        ) from None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`: tensors, numbers, strings and plain containers only, so a checkpoint from
    elsewhere can never run code; one holding anything else is refused, unexecuted."""
    if not path.is_file():
        raise CutrecError(f"no checkpoint at {str(path)!r}; pass a run folder that `cutrec train` wrote")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # a truncated or foreign file, not a refused object
            raise CutrecError(f"checkpoint {str(path)!r} cannot be read ({err}); retrain or pass another run") from None
        raise CutrecError(
            f"checkpoint {str(path)!r} holds objects other than tensors, numbers, strings and plain containers; "
            "it was not loaded (nothing in it ran); use a checkpoint that `cutrec train` wrote"
        ) from None
    except Exception as err:  # a truncated or foreign file
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CutrecError(f"checkpoint {str(path)!r} cannot be read ({message}); retrain or pass another run") from None
