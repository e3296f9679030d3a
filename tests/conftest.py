"""Test setup: without a GPU, Triton kernels run through the Triton interpreter (set before any kernel compiles)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
