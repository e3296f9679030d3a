"""What cutrec prints besides its results: notes on stderr and progress bars. `set_quiet(True)` (the CLI's --quiet)
silences both; results (metric tables) and errors are always printed."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def note(message: str) -> None:
    """One line on stderr, unless quiet."""
    if not _quiet:
        print(message, file=sys.stderr)


def progress(iterable: Iterable | None = None, *, shown: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on stderr with rate and time left, drawn only on a terminal, never when quiet or not `shown`."""
    return tqdm(iterable, disable=True if _quiet or not shown else None, file=sys.stderr, leave=False, **options)
