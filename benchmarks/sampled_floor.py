"""The memory floor of share="none": how fast can the unavoidable gathers and fp32 atomic adds alone run?

share="none" gives every position its own K draws, so its forward gathers M x K item rows, and its backward gathers
them again (the scores are not stored: O(M K) memory is ruled out) and adds M x K fp32 rows of d items into an
[N, D] fp32 buffer with atomics (independent draws have no order to exploit). This script times stripped-down
Triton kernels that do only that memory work, with the same counter-based draws as the loss and no softmax:

- gather: per (position, k) load the bf16 row and dot it with h (the forward's memory work);
- scatter: per (position, k) atomically add a D-wide fp32 row into the [N, D] buffer (no gather);
- gather+scatter: both (the backward's memory work);

each over a few block shapes, keeping the fastest, at N=1M (buffer 256 MB, beyond the L2 cache) and N=100k (25.6 MB,
inside it), next to a large copy's bandwidth and the full loss (share="none", forward and forward+backward).
forward floor + backward floor is a lower bound for any share="none" kernel pair of this design.

    python benchmarks/sampled_floor.py [--out benchmarks/results/sampled_floor]
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import torch
import triton
import triton.language as tl
from full_softmax_losses import time_ms
from sampled_losses import copy_bandwidth

from cutrec.kernels.sampled_cut_cross_entropy import _draw
from cutrec.losses import sampled_cut_cross_entropy
from cutrec.losses.sampling import seed_hash

M, K, D = 32768, 1023, 64
CONFIGS = [(8, 32, 4), (8, 16, 4), (16, 16, 4), (4, 64, 4), (16, 32, 8), (32, 16, 8)]  # (BLOCK_M, BLOCK_K, warps)


@triton.jit
def _memory_kernel(hidden_ptr, items_ptr, out_ptr, grad_ptr, num_rows, num_items, num_negatives, seed_hash,
                   DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GATHER: tl.constexpr,
                   SCATTER: tl.constexpr):
    """Per (position, k) draw: gather the item row and dot it with h (GATHER), add a D-wide row into grad (SCATTER)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    row_mask = rows < num_rows
    dims = tl.arange(0, DIM)
    h = tl.load(hidden_ptr + rows.to(tl.int64)[:, None] * DIM + dims[None, :], mask=row_mask[:, None],
                other=0.0).to(tl.float32)  # [BM, D]
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(0, num_negatives, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        mask = row_mask[:, None] & (ks < num_negatives)[None, :]  # [BM, BK]
        ids = _draw(rows[:, None], ks[None, :], mask, out_ptr, out_ptr, seed_hash, num_items, num_negatives,
                    POPULARITY=False)  # [BM, BK] int64
        offsets = ids[:, :, None] * DIM + dims[None, None, :]  # [BM, BK, D]
        if GATHER:
            rows_k = tl.load(items_ptr + offsets, mask=mask[:, :, None], other=0.0).to(tl.float32)
            scores = tl.sum(rows_k * h[:, None, :], axis=2)  # [BM, BK]
        else:
            scores = ids.to(tl.float32) * 1e-9  # [BM, BK], something that depends on the draw
        total += tl.sum(scores, axis=1)
        if SCATTER:
            tl.atomic_add(grad_ptr + offsets, scores[:, :, None] * h[:, None, :], mask=mask[:, :, None],
                          sem="relaxed")
    tl.store(out_ptr + rows, total, mask=row_mask)


def memory_ms(num_items: int, gather: bool, scatter: bool, device: torch.device) -> tuple[float, tuple]:
    """The fastest time over CONFIGS of one memory kernel launch, and its block shape."""
    hidden = torch.randn(M, D, device=device).bfloat16()
    items = torch.randn(num_items, D, device=device).bfloat16()
    out = torch.empty(M, device=device)
    grad = torch.zeros(num_items, D, device=device)
    best = (float("inf"), None)
    for block_m, block_k, warps in CONFIGS:
        def launch(block_m=block_m, block_k=block_k, warps=warps):
            _memory_kernel[(triton.cdiv(M, block_m),)](
                hidden, items, out, grad, M, num_items, K, seed_hash(1), DIM=D, BLOCK_M=block_m, BLOCK_K=block_k,
                GATHER=gather, SCATTER=scatter, num_warps=warps)
        best = min(best, (time_ms(launch, 10), (block_m, block_k, warps)))
    return best


def loss_ms(num_items: int, device: torch.device) -> tuple[float, float]:
    """(forward ms, forward+backward ms) of the sampled cut CE, share="none", bf16."""
    hidden = torch.randn(M, D, device=device).bfloat16().requires_grad_()
    items = (torch.randn(num_items, D, device=device) * D**-0.5).bfloat16().requires_grad_()
    targets = torch.randint(0, num_items, (M,), device=device)

    def forward():
        return sampled_cut_cross_entropy(hidden, items, targets, num_negatives=K, share="none", seed=1,
                                         check_targets=False)

    def step():
        hidden.grad = items.grad = None
        forward().backward()

    with torch.no_grad():
        forward_ms = time_ms(forward, 10)
    return forward_ms, time_ms(step, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sampled_floor"))
    args = parser.parse_args()
    device = torch.device("cuda")
    bandwidth = copy_bandwidth(device)
    rows = []
    for num_items in (1_000_000, 100_000):
        for name, gather, scatter in (("gather", True, False), ("scatter", False, True),
                                      ("gather+scatter", True, True)):
            ms, config = memory_ms(num_items, gather, scatter, device)
            moved = M * K * D * ((2 if gather else 0) + (8 if scatter else 0))  # bf16 row read, fp32 row read+write
            rows.append({"N": num_items, "kernel": name, "ms": ms, "config": config,
                         "tb_per_s": moved / (ms / 1e3) / 1e12})
            print(rows[-1], flush=True)
        forward_ms, step_ms = loss_ms(num_items, device)
        rows.append({"N": num_items, "kernel": "loss forward", "ms": forward_ms})
        rows.append({"N": num_items, "kernel": "loss forward+backward", "ms": step_ms})
        print(rows[-2:], flush=True)
    write(rows, torch.cuda.get_device_name(device), bandwidth, args.out)


def write(rows: list[dict], card: str, bandwidth: float, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"card": card, "date": str(date.today()), "torch": torch.__version__, "triton": triton.__version__,
            "copy_tb_per_s": bandwidth / 1e12, "M": M, "K": K, "D": D}
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    lines = [
        f"# Memory floor of share=\"none\" (`benchmarks/sampled_floor.py`)\n\nCard: {card}; date: {meta['date']}; "
        f"torch {torch.__version__}, triton {triton.__version__}; M={M}, K={K}, D={D}, bf16 table, fp32 d-items "
        f"buffer; a 1 GiB copy moves {bandwidth / 1e12:.2f} TB/s (read + write). TB/s below counts the rows named "
        "(2 bytes a value gathered, 8 bytes a value added: the fp32 read and write), not what the caches absorb.\n",
        "| N | kernel | ms | TB/s | block (M, K, warps) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        rate = f"{r['tb_per_s']:.2f}" if "tb_per_s" in r else "-"
        config = str(tuple(r["config"])) if "config" in r else "-"
        lines.append(f"| {r['N']:,} | {r['kernel']} | {r['ms']:.2f} | {rate} | {config} |")
    for num_items in (1_000_000, 100_000):
        by = {r["kernel"]: r["ms"] for r in rows if r["N"] == num_items}
        floor = by["gather"] + by["gather+scatter"]
        lines.append(f"\nN={num_items:,}: forward floor (gather) + backward floor (gather+scatter) = {floor:.2f} ms; "
                     f"the loss takes {by['loss forward+backward']:.2f} ms.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
