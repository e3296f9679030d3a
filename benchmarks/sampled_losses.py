"""Sampled-loss benchmark: forward+backward time and extra memory of CCE- against plain PyTorch CE- and cut CE.

Methods, side by side on the same fresh bf16 inputs in one process: cutrec's sampled cut CE (Triton kernels) in
each sharing mode, plain PyTorch CE- (negatives drawn, then their rows gathered into an [M, K, D] tensor), and
cutrec's full cut CE (once per M, N, D: it has no K).
Timing and memory as in full_softmax_losses.py (CUDA events, median; extra memory beyond the inputs and the
returned gradients). Floors beside each row: the gather (K negative rows of D bf16 values per position, read in the
forward and again in the backward) at the measured copy bandwidth, and 3 x 2 M K D flop.
After the bf16 grid, the --memory-shape rows repeat our kernels with an fp32 item table (bf16 hidden), the dtypes of
training under autocast: the table's gradient is then the fp32 buffer the kernels accumulate into. Last, the
atomic modes with a bf16 table and grad_buffer_bytes capped (--grad-buffer-mib) at M=32768 and the memory shape's M
(its K, N, D): the cost of bounding the fp32 item-gradient buffer.

    python benchmarks/sampled_losses.py --out benchmarks/results/sampled_losses
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import torch
from full_softmax_losses import gemm_rate, measure, time_ms

from cutrec.losses import cut_cross_entropy, sampled_cross_entropy, sampled_cut_cross_entropy


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read plus written per second by a large device-to-device copy."""
    source = torch.empty(2**30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * source.numel() / (time_ms(lambda: target.copy_(source), reps=20) / 1e3)


def sampled_methods(num_negatives: int, grad_buffer_bytes: int | None = None) -> dict:
    """name -> loss(hidden, items, targets) of the methods whose work depends on K; like the trainer, none of them
    checks the target range (a host sync)."""

    def ours(share: str):
        return lambda h, w, t: sampled_cut_cross_entropy(h, w, t, num_negatives=num_negatives, share=share, seed=1,
                                                         impl="triton", grad_buffer_bytes=grad_buffer_bytes,
                                                         check_targets=False)

    found = {f"cutrec CCE- share={share}": ours(share) for share in ("none", "offsets", "block", "batch")}
    found["torch CE- (gathered)"] = lambda h, w, t: sampled_cross_entropy(h, w, t, num_negatives=num_negatives, seed=1,
                                                                          check_targets=False)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--k", type=int, nargs="+", default=[255, 1023, 4095])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--d", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--budget-ms", type=float, default=1500.0, help="timed time per method and shape")
    parser.add_argument("--methods", nargs="*", help="substrings of method names to run (default: all)")
    parser.add_argument("--memory-shape", type=int, nargs=4, default=[131072, 1023, 1_000_000, 64],
                        metavar=("M", "K", "N", "D"), help="shape of the fp32-item-table rows")
    parser.add_argument("--grad-buffer-mib", type=int, default=48,
                        help="grad_buffer_bytes of the capped rows (bf16 table, M=32768 and M=131072, K=1023, N=1M)")
    parser.add_argument("--out", default="benchmarks/results/sampled_losses")
    args = parser.parse_args()
    device = torch.device("cuda")
    card = torch.cuda.get_device_name(device)
    rate, bandwidth = gemm_rate(device), copy_bandwidth(device)
    rows = []

    def record(name, loss_fn, m, k, n, d, item_dtype=torch.bfloat16):
        if args.methods and not any(part in name for part in args.methods):
            return
        value_bytes = 2 if item_dtype == torch.bfloat16 else 4
        floors = {"gather_floor_ms": 2 * m * (k or 0) * d * value_bytes / bandwidth * 1e3,
                  "flop_floor_ms": 3 * 2 * m * (k or 0) * d / rate * 1e3}
        result = measure(loss_fn, m, n, d, None, device, item_dtype=item_dtype, budget_ms=args.budget_ms)
        rows.append({"method": name, "M": m, "K": k, "N": n, "D": d, **floors, **result})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    for d in args.d:
        for m in args.m:
            for n in args.n:
                record("cutrec CCE (full softmax, no K)", lambda h, w, t: cut_cross_entropy(h, w, t, impl="triton"),
                       m, None, n, d)
                for k in args.k:
                    for name, loss_fn in sampled_methods(k).items():
                        record(name, loss_fn, m, k, n, d)
    m, k, n, d = args.memory_shape
    for name, loss_fn in sampled_methods(k).items():
        if name.startswith("cutrec CCE- "):
            record(f"{name}, fp32 item table", loss_fn, m, k, n, d, item_dtype=torch.float32)
    for m in (32768, args.memory_shape[0]):
        for name, loss_fn in sampled_methods(k, args.grad_buffer_mib * 2**20).items():
            if name.startswith("cutrec CCE- ") and "offsets" not in name:  # share="offsets" has no buffer
                record(f"{name}, grad buffer capped at {args.grad_buffer_mib} MiB", loss_fn, m, k, n, d)
    write(rows, card, rate, bandwidth, Path(args.out))


def write(rows: list[dict], card: str, rate: float, bandwidth: float, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"card": card, "date": str(date.today()), "torch": torch.__version__, "bf16_gemm_tflops": rate / 1e12,
            "copy_tb_per_s": bandwidth / 1e12}
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    lines = [
        f"# Sampled losses, forward+backward, bf16 inputs\n\nCard: {card}; date: {meta['date']}; torch "
        f"{torch.__version__}; measured bf16 GEMM {rate / 1e12:.0f} TFLOP/s, copy {bandwidth / 1e12:.2f} TB/s. "
        "Floors: the K-row gather read twice; 3 x 2MKD flop. Extra memory excludes the returned gradients. "
        "Inputs are bf16 except in rows marked 'fp32 item table' (bf16 hidden, fp32 items, whose rows are then "
        "gathered at 4 bytes a value, as their gather floor counts).\n",
        "| D | M | K | N | method | fwd+bwd ms | extra MB | gather floor ms | flop floor ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        timing = f"{r['ms']:.2f} | {r['extra_mb']:.0f}" if r["status"] == "ok" else f"{r['status']} | -"
        lines.append(f"| {r['D']} | {r['M']} | {r['K'] or '-'} | {r['N']:,} | {r['method']} | {timing} | "
                     f"{r['gather_floor_ms']:.2f} | {r['flop_floor_ms']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
