"""Block-size sweep for the cut CE kernels: times each launch configuration of the forward and the item backward.

Prints one line per (kernel, D, config) with the median time; the fastest rows go into `_GPU_BLOCKS` of
src/cutrec/kernels/cut_cross_entropy.py.

    python benchmarks/tune_cut_cross_entropy.py --m 32768 --n 1000000 --d 64 256
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
from full_softmax_losses import time_ms

from cutrec.kernels import cut_cross_entropy as kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=32768)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    for d in args.d:
        sweep(args.m, args.n, d, args.reps)


def sweep(m: int, n: int, d: int, reps: int) -> None:
    """Time every launch configuration of both kernels at one shape; the table is restored afterwards."""
    device = torch.device("cuda")
    hidden = (torch.randn(m, d, device=device) * d**-0.25).bfloat16()
    items = (torch.randn(n, d, device=device) * d**-0.25).bfloat16()
    targets = torch.randint(0, n, (m,), device=device)
    _, lse, _ = kernels.forward(hidden, items, None, targets, -100, False)
    grad_loss = torch.full((m,), 1.0 / m, device=device)
    bucket = max(64, kernels.block_d(d))
    launches = {
        "forward": lambda: kernels.forward(hidden, items, None, targets, -100, True),
        "item_backward": lambda: kernels.item_backward(hidden, items, None, targets, lse, grad_loss, -100),
    }
    for kernel, launch in launches.items():
        default = kernels._GPU_BLOCKS[(kernel, bucket, 2)]
        for config in itertools.product((64, 128), (64, 128, 256), (4, 8), (2, 3)):
            kernels._GPU_BLOCKS[(kernel, bucket, 2)] = config
            try:
                ms, error = time_ms(launch, reps), ""
            except Exception as err:  # out of shared memory or registers for this config
                ms, error = float("nan"), type(err).__name__
            print(json.dumps({"kernel": kernel, "D": d, "M": m, "N": n, "config": config, "ms": ms, "error": error}),
                  flush=True)
        kernels._GPU_BLOCKS[(kernel, bucket, 2)] = default


if __name__ == "__main__":
    main()
