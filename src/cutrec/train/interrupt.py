"""Stopping on request: SIGTERM and SIGINT (Ctrl-C) ask the training loop to finish its step and save last.pt.

While `StopSignals` is active, the first SIGTERM or SIGINT only sets `received`; the loop checks it after every step,
writes last.pt and raises `RunStopped`, which the CLI turns into one line (the run folder and the exact resume
command) and exit status 143 or 130. A second signal exits at once, without saving.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class RunStopped(Exception):
    """Training stopped on a signal after saving last.pt; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """A context in which SIGTERM and SIGINT request a clean stop instead of killing the process."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def _handle(self, number: int, frame: FrameType | None) -> None:
        # os.write, not print: the handler may interrupt a write to stderr (tqdm's), which print would re-enter
        if self.received is not None:
            os.write(2, f"cutrec: second {signal.Signals(number).name}: exiting now without saving\n".encode())
            os._exit(128 + number)
        self.received = number
        os.write(2, f"cutrec: {signal.Signals(number).name} received: finishing this step and saving last.pt "
                    "(send it again to exit at once)\n".encode())
