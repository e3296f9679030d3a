"""Profile one SASRec training step per loss (CPU and GPU time per op) at a small-catalog shape like Beauty's.

The step here is a plain eager one written out (boolean-mask gather, no optimizer), to see each loss's own ops; the
trainer's step (static shapes, CUDA graph: cutrec.train.step) is timed end to end by benchmarks/quality.py.

    python benchmarks/profile_train_step.py --losses CE CCE --items 12101 --mean-length 9
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from cutrec.config import LossConfig
from cutrec.losses import build_loss
from cutrec.models.sasrec import SASRec


def batch(num_items: int, batch_size: int, max_len: int, mean_length: float, generator: torch.Generator):
    """Right-padded random inputs [B, L] and next-item targets [B, L] with geometric lengths."""
    lengths = torch.distributions.Geometric(probs=1 / mean_length).sample((batch_size,)).long().clamp(1, max_len)
    inputs = torch.randint(0, num_items, (batch_size, max_len), generator=generator)
    targets = torch.randint(0, num_items, (batch_size, max_len), generator=generator)
    pad = torch.arange(max_len)[None, :] >= lengths[:, None]  # [B, L]
    return inputs.masked_fill(pad, num_items), targets.masked_fill(pad, -100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", default=["CE", "CCE"])
    parser.add_argument("--items", type=int, default=12101)
    parser.add_argument("--mean-length", type=float, default=9.0)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(0)
    batches = [[t.to(device) for t in batch(args.items, 128, 50, args.mean_length, generator)] for _ in range(8)]
    for name in args.losses:
        profile_loss(name, args.items, args.steps, batches, device)


def profile_loss(name: str, num_items: int, steps: int, batches: list, device: torch.device) -> None:
    """Time `steps` training steps of one loss, then print the profiler's table of 10 more."""
    torch.manual_seed(0)
    model = SASRec(num_items, max_len=50, dim=64, num_blocks=1, num_heads=1, dropout=0.2).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = build_loss(LossConfig(name=name), num_items)

    def step(i: int) -> None:
        inputs, targets = batches[i % len(batches)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hidden = model(inputs)
            keep = targets.view(-1) != -100
            loss = loss_fn(hidden.view(-1, 64)[keep], model.item_table, targets.view(-1)[keep], seed=i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(20):
        step(i)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(steps):
        step(i)
    torch.cuda.synchronize()
    print(f"{name}: {(time.perf_counter() - started) / steps * 1e3:.2f} ms per step")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(10):
            step(i)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=50))


if __name__ == "__main__":
    main()
