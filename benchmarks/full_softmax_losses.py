"""Full-softmax loss benchmark: forward+backward time and extra memory of cut CE against the baselines, side by side.

Methods: cutrec's cut CE (Triton), PyTorch CE on materialised logits, Apple's `cut-cross-entropy` (25.1.1: its
default, which skips gradient tiles below a threshold, and exact with filter_eps=None), Liger's fused linear
cross-entropy (0.8.5), and
`torch.nn.functional.linear_cross_entropy` where the installed torch has it. Every method runs on the same fresh
random bf16 inputs in one process, one shape after another. Time: CUDA events around forward+backward, median of
`reps` runs after a warm-up. Extra memory (docs/losses.md): peak allocated during one forward+backward minus what
was allocated before, minus the bytes of the returned gradients (hidden's and items').
Floors beside each row: 4 GEMMs of 2*M*N*D flops at the measured bf16 GEMM rate, and 2 exponential passes over
the M x N logits at the measured exp rate (3.6e12/s on an H200, docs/losses.md).

    python benchmarks/full_softmax_losses.py --out benchmarks/results/full_softmax_losses
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

EXP_RATE = 3.6e12  # tl.exp per second, measured on an H200 (docs/losses.md)


def gemm_rate(device: torch.device) -> float:
    """Measured bf16 GEMM flop/s on a large square product (the ceiling for the flop floor)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    return 2 * 8192**3 / (time_ms(lambda: a @ b, reps=20) / 1e3)


def time_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def methods() -> dict[str, Callable]:
    """name -> loss(hidden, items, targets) for every method importable here."""
    import torch.nn.functional as F

    from cutrec.losses import cut_cross_entropy

    found: dict[str, Callable] = {
        "cutrec CCE": lambda h, w, t: cut_cross_entropy(h, w, t, impl="triton"),
        "torch CE": lambda h, w, t: F.cross_entropy((h @ w.T).float(), t),
    }
    try:
        from cut_cross_entropy import linear_cross_entropy

        found["Apple CCE (default: gradient filter on)"] = lambda h, w, t: linear_cross_entropy(h, w, t)
        found["Apple CCE (exact: filter_eps=None)"] = lambda h, w, t: linear_cross_entropy(h, w, t, filter_eps=None)
    except ImportError as err:
        print(f"Apple cut-cross-entropy not available: {err}", file=sys.stderr)
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        found["Liger FLCE"] = lambda h, w, t: liger(w, h, t)
    except ImportError as err:
        print(f"liger-kernel not available: {err}", file=sys.stderr)
    if hasattr(F, "linear_cross_entropy"):
        found["torch linear_cross_entropy"] = lambda h, w, t: F.linear_cross_entropy(h, w, t)
    return found


def measure(loss_fn: Callable, m: int, n: int, d: int, reps: int | None, device: torch.device,
            item_dtype: torch.dtype = torch.bfloat16, budget_ms: float = 1500.0) -> dict:
    """Time and extra memory of forward+backward on bf16 hidden and `item_dtype` items; 'OOM' when out of memory.

    reps=None: as many timed runs as fit in about `budget_ms` (from one timed run), at least 3 and at most 30.
    """
    generator = torch.Generator(device=device).manual_seed(m + n + d)
    hidden = (torch.randn(m, d, device=device, generator=generator) * d**-0.25).bfloat16().requires_grad_()
    items = (torch.randn(n, d, device=device, generator=generator) * d**-0.25).to(item_dtype).requires_grad_()
    targets = torch.randint(0, n, (m,), device=device, generator=generator)
    gradient_bytes = hidden.numel() * hidden.element_size() + items.numel() * items.element_size()

    def step() -> None:
        hidden.grad, items.grad = None, None
        loss_fn(hidden, items, targets).backward()

    try:
        step()  # warm-up: compilation and autotuning stay outside the timed region
        hidden.grad, items.grad = None, None
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before - gradient_bytes
        if reps is None:
            reps = int(max(3, min(30, budget_ms / max(time_ms(step, 1), 1e-3))))
        milliseconds = time_ms(step, reps)
    except torch.OutOfMemoryError:
        return {"status": "OOM"}
    except Exception as err:  # a baseline that rejects this shape; recorded, not fatal
        return {"status": f"error: {type(err).__name__}: {str(err)[:80]}"}
    finally:
        hidden.grad, items.grad = None, None
        torch.cuda.empty_cache()
    return {"status": "ok", "ms": milliseconds, "extra_mb": extra / 2**20, "gradient_mb": gradient_bytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--d", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--methods", nargs="*", help="substrings of method names to run (default: all)")
    parser.add_argument("--budget-ms", type=float, default=3000.0, help="timed time per method and shape")
    parser.add_argument("--max-step-ms", type=float, default=20000.0,
                        help="skip a method whose step, extrapolated linearly in N from its last size, exceeds this")
    parser.add_argument("--out", default="benchmarks/results/full_softmax_losses")
    args = parser.parse_args()

    device = torch.device("cuda")
    card = torch.cuda.get_device_name(device)
    rate = gemm_rate(device)
    memory = torch.cuda.get_device_properties(device).total_memory
    available = {k: v for k, v in methods().items() if not args.methods or any(s in k for s in args.methods)}
    rows = []
    for d in args.d:
        for m in args.m:
            last_ms: dict[str, tuple[int, float]] = {}  # method -> (N, ms) of its last measured size at this D, M
            for n in args.n:
                flop_floor = 4 * 2 * m * n * d / rate * 1e3
                exp_floor = 2 * m * n / EXP_RATE * 1e3
                for name, loss_fn in available.items():
                    logits_bytes = m * n * 4
                    predicted = last_ms[name][1] * n / last_ms[name][0] if name in last_ms else 0.0
                    if name.startswith("Apple") and n * d >= 2**31:
                        result = {"status": "skipped: N x D >= 2**31; on 2026-11-26 (H200) Apple's kernel hit an "
                                            "illegal memory access at N=10M, D=256 (32-bit offsets)"}
                    elif name.startswith("torch CE") and logits_bytes > memory:
                        result = {"status": f"skipped: fp32 logits alone need {logits_bytes / 2**30:.0f} GiB"}
                    elif predicted > args.max_step_ms:
                        result = {"status": f"skipped: ~{predicted / 1e3:.0f} s per step (linear in N from "
                                            f"N={last_ms[name][0]:,})"}
                    else:
                        estimate = max(flop_floor, exp_floor) * 3
                        reps = int(max(3, min(30, args.budget_ms / max(estimate, 1e-3))))
                        result = measure(loss_fn, m, n, d, reps, device)
                        if result["status"] == "ok":
                            last_ms[name] = (n, result["ms"])
                    row = {"method": name, "M": m, "N": n, "D": d, "flop_floor_ms": flop_floor,
                           "exp_floor_ms": exp_floor, **result}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    write(rows, card, rate, Path(args.out))


def write(rows: list[dict], card: str, rate: float, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"card": card, "date": str(date.today()), "torch": torch.__version__, "bf16_gemm_tflops": rate / 1e12,
            "exp_rate_per_s": EXP_RATE}
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    lines = [
        f"# Full-softmax loss, forward+backward, bf16 inputs\n\nCard: {card}; date: {meta['date']}; torch "
        f"{torch.__version__}; measured bf16 GEMM {rate / 1e12:.0f} TFLOP/s. Floors: 4 GEMMs of 2MND flop at that "
        f"rate; 2 exp passes of M*N at {EXP_RATE:.1e}/s. Extra memory excludes the returned gradients.\n",
        "| D | M | N | method | fwd+bwd ms | extra MB | flop floor ms | exp floor ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        timing = f"{r['ms']:.2f} | {r['extra_mb']:.0f}" if r["status"] == "ok" else f"{r['status']} | -"
        lines.append(f"| {r['D']} | {r['M']} | {r['N']:,} | {r['method']} | {timing} | {r['flop_floor_ms']:.2f} | "
                     f"{r['exp_floor_ms']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
