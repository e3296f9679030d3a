"""Host time of the losses at a small-catalog training shape (Beauty's: about 1,150 positions, 12,101 items, D=64).

On a small catalog a training step is bound by the CPU's work of launching kernels, not by the GPU, so this script
times the Python and launch path: each case runs 300 times back to back; "host" is the wall time per call before the
final synchronisation, "with sync" after it (larger only when the GPU is the bottleneck). Cases: the bare Triton
launches of cut CE, the same through the custom ops, the whole loss forward and forward+backward under bf16
autocast, reference CE, and the sampled cut CE (share none, block, offsets). Ends with a cProfile of cut CE
forward+backward.

    python benchmarks/host_overhead.py
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable

import torch

from cutrec.kernels import cut_cross_entropy as kernels
from cutrec.losses import cross_entropy, cut_cross_entropy, sampled_cut_cross_entropy

M, N, D = 1150, 12101, 64


def host_us(fn: Callable[[], object], calls: int = 300) -> tuple[float, float]:
    """(host microseconds per call, microseconds per call including the final synchronisation)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    launched = (time.perf_counter() - started) / calls * 1e6
    torch.cuda.synchronize()
    return launched, (time.perf_counter() - started) / calls * 1e6


def under_autocast(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return fn()

    return run


def main() -> None:
    device = torch.device("cuda")
    hidden = torch.randn(M, D, device=device, requires_grad=True)  # fp32 like SASRec's LayerNorm output
    items = torch.randn(N, D, device=device, requires_grad=True)  # the fp32 item table
    targets = torch.randint(0, N, (M,), device=device)
    hidden_bf16, items_bf16 = hidden.detach().bfloat16(), items.detach().bfloat16()
    lse, grad_loss = torch.zeros(M, device=device), torch.full((M,), 1.0 / M, device=device)
    cases = {
        "kernels.forward": lambda: kernels.forward(hidden_bf16, items_bf16, None, targets, -100, True),
        "kernels.item_backward": lambda: kernels.item_backward(hidden_bf16, items_bf16, None, targets, lse, grad_loss,
                                                               -100),
        "op forward": lambda: torch.ops.cutrec.cut_cross_entropy_forward(hidden_bf16, items_bf16, None, targets, -100,
                                                                         True, False, "triton"),
        "op item_backward": lambda: torch.ops.cutrec.cut_cross_entropy_item_backward(
            hidden_bf16, items_bf16, None, targets, lse, grad_loss, -100, "triton"),
        "CCE fwd": under_autocast(lambda: cut_cross_entropy(hidden, items, targets, check_targets=False)),
        "CCE fwd+bwd": under_autocast(
            lambda: cut_cross_entropy(hidden, items, targets, check_targets=False).backward()),
        "CE fwd+bwd": under_autocast(lambda: cross_entropy(hidden, items, targets, check_targets=False).backward()),
        "CCE- none fwd+bwd": under_autocast(
            lambda: sampled_cut_cross_entropy(hidden, items, targets, num_negatives=256,
                                      check_targets=False).backward()),
        "CCE- block fwd+bwd": under_autocast(
            lambda: sampled_cut_cross_entropy(hidden, items, targets, num_negatives=256, share="block",
                                      check_targets=False).backward()),
        "CCE- offsets fwd+bwd": under_autocast(
            lambda: sampled_cut_cross_entropy(hidden, items, targets, num_negatives=256, share="offsets",
                                      check_targets=False).backward()),
    }
    for name, fn in cases.items():
        launched, synced = host_us(fn)
        print(f"{name:32s} host {launched:8.1f} us   with sync {synced:8.1f} us", flush=True)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(200):
        cases["CCE fwd+bwd"]()
    torch.cuda.synchronize()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumtime").print_stats(35)


if __name__ == "__main__":
    main()
