"""Block-size sweep for the sampled cut CE kernels: times the forward and the backward launch of each configuration.

Row-wise kernels (share="none"): (BLOCK_M, BLOCK_K, num_warps), the same for the forward and the backward launch;
tiled kernels (share="block"): (BLOCK_K, num_warps). The candidate lists exist for D=64 and D=256 (other D print
nothing). Prints one json line per (kernel, D, config) with the median times; the fastest go into the per-D tables
ROWWISE_CONFIG and TILED_CONFIG of src/cutrec/kernels/sampled_cut_cross_entropy.py.

    python benchmarks/tune_sampled_kernels.py --m 32768 --k 1023 --n 1000000 --d 64 256
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
from full_softmax_losses import time_ms

from cutrec.kernels import sampled_cut_cross_entropy as kernels
from cutrec.losses.sampled_cut_cross_entropy import BLOCK_ROWS
from cutrec.losses.sampling import key_tensor

ROWWISE = {64: [(8, 16, 4), (16, 16, 4), (8, 32, 4), (4, 64, 4), (4, 32, 4), (16, 32, 8)],
           256: [(8, 16, 4), (8, 8, 4), (4, 32, 4), (4, 16, 4), (2, 32, 4), (2, 16, 4)]}
TILED = {64: [(32, 4), (64, 4), (128, 4), (64, 8), (128, 8)], 256: [(16, 4), (32, 4), (32, 8), (64, 8)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=32768)
    parser.add_argument("--k", type=int, default=1023)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    for d in args.d:
        sweep(args.m, args.k, args.n, d, args.reps)


def sweep(m: int, k: int, n: int, d: int, reps: int) -> None:
    device = torch.device("cuda")
    hidden = (torch.randn(m, d, device=device) * d**-0.25).bfloat16()
    items = (torch.randn(n, d, device=device) * d**-0.25).bfloat16()
    targets = torch.randint(0, n, (m,), device=device)
    grad_loss = torch.full((m,), 1.0 / m, device=device)
    common = {"ignore_index": -100, "key": key_tensor(1, n, device), "num_negatives": k, "negatives": None,
              "keep": None, "alias": None, "log_q": None, "logq_correction": True, "block_rows": BLOCK_ROWS,
              "shifted": False}
    width = kernels.block_d(d)
    sweeps = [("none", config) for config in ROWWISE.get(d, [])] + [("block", config) for config in TILED.get(d, [])]
    for share, config in sweeps:
        saved_rowwise = {step: dict(table) for step, table in kernels.ROWWISE_CONFIG.items()}
        saved_tiled = dict(kernels.TILED_CONFIG)
        try:
            if share == "none":  # the same blocks for both launches at this D
                for table in kernels.ROWWISE_CONFIG.values():
                    table[width] = config
            else:
                kernels.TILED_CONFIG[width] = config
            run_forward = partial(kernels.forward, hidden, items, targets, share=share, **common)
            lse = run_forward()[1]
            forward_ms = time_ms(run_forward, reps)
            backward_ms = time_ms(partial(kernels.backward, hidden, items, targets, lse, grad_loss, share=share,
                                          **common), reps)
            row = {"share": share, "D": d, "config": config, "forward_ms": round(forward_ms, 3),
                   "backward_ms": round(backward_ms, 3)}
        except Exception as err:  # a configuration that does not compile or fit is reported, not fatal
            row = {"share": share, "D": d, "config": config, "error": f"{type(err).__name__}: {str(err)[:100]}"}
        finally:
            kernels.ROWWISE_CONFIG.update(saved_rowwise)
            kernels.TILED_CONFIG.clear()
            kernels.TILED_CONFIG.update(saved_tiled)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
