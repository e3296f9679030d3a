"""Test setup: without a GPU, Triton kernels run through the Triton interpreter (set before any kernel compiles).
Fixtures for the multi-process tests: `torchrun` runs a program in several gloo processes, `script_function` imports
a function of a script file, so that a test runs the same code in one process too."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def torchrun():
    """run(processes, args, cwd, env=None): `args` (a script and its arguments, or "-m", a module, ...) under torchrun,
    each process with one thread; the CompletedProcess, output captured."""

    def run(processes: int, args: list[str], cwd, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   *args]
        environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=environment)

    return run


@pytest.fixture
def script_function():
    """load(path, name): the function `name` of the script file `path` (its `__main__` block does not run)."""

    def load(path, name: str):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, name)

    return load
