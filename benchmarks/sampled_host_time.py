"""Is the sampled cut CE's forward+backward host-bound or GPU-bound? M=32768, K=1023, N=1M, D=64, per share mode.

For bf16 and fp32 item tables (bf16 hidden), prints per share mode: the CUDA-event time of one step (as the
benchmarks measure it), the host time to issue one step (perf_counter without the final synchronisation; the queue
is drained before each), the time per step of 30 steps back to back, the GPU time from the profiler, and the
longest GPU kernels. A step whose host time exceeds its GPU time is host-bound.

    python benchmarks/sampled_host_time.py
"""

from __future__ import annotations

import statistics
import time

import torch
from full_softmax_losses import time_ms
from torch.profiler import ProfilerActivity, profile

from cutrec.losses import sampled_cut_cross_entropy

M, K, N, D = 32768, 1023, 1_000_000, 64


def main() -> None:
    device = torch.device("cuda")
    for item_dtype in (torch.bfloat16, torch.float32):
        hidden = (torch.randn(M, D, device=device) * D**-0.25).bfloat16().requires_grad_()
        items = (torch.randn(N, D, device=device) * D**-0.25).to(item_dtype).requires_grad_()
        targets = torch.randint(0, N, (M,), device=device)
        for share in ("block", "batch", "none"):
            report(hidden, items, targets, share)


def report(hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, share: str) -> None:
    """Print the event, host, back-to-back and profiled GPU times of one forward+backward, and its kernels."""

    def step() -> None:
        hidden.grad = items.grad = None
        sampled_cut_cross_entropy(hidden, items, targets, num_negatives=K, share=share, seed=1,
                                  check_targets=False).backward()

    for _ in range(3):
        step()
    event = time_ms(step, 20)
    hosts = []
    for _ in range(20):
        torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        hosts.append((time.perf_counter() - started) * 1e3)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(30):
        step()
    torch.cuda.synchronize()
    back_to_back = (time.perf_counter() - started) / 30 * 1e3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sorted(((e.key, e.device_time_total) for e in events if e.device_time_total > 0),
                     key=lambda pair: -pair[1])[:8]
    gpu = sum(e.self_device_time_total for e in events) / 1e3
    print(f"{items.dtype} share={share}: event {event:.3f} ms, host {statistics.median(hosts):.3f} ms, "
          f"back-to-back {back_to_back:.3f} ms, profiled GPU total {gpu:.3f} ms", flush=True)
    for name, microseconds in kernels:
        print(f"    {microseconds:9.1f} us  {name[:90]}")


if __name__ == "__main__":
    main()
