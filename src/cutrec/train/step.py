"""The training step: one batch in static shapes, no host sync, run eagerly or replayed as one CUDA graph.

The host packs each batch into one int64 buffer, copied to the device without waiting (from pinned memory):
inputs [B, L] (a last, smaller batch is filled with repeats of its own rows, which get no targets), the batch's
target positions [R] (flat indices into B * L) with their targets [R] (IGNORE_INDEX past the batch's M targets),
the loss's draw key [4] (`sampling.draw_key` of the step seed), this rank's share of the batch's targets (M_r and
the whole batch's M: in a data-parallel run each rank trains a slice of the batch) and the step number. The host
knows M before the step, so the device never gathers by a boolean mask (which needs a sync to size its output).

The step itself: forward under autocast, the loss over the R gathered hidden rows (ignored rows add nothing),
weighted by M_r / M so that the ranks' losses add up to the whole batch's mean (1 in a single process), the
backward (times the number of ranks, since DistributedDataParallel averages the ranks' gradients), the global
gradient norm (clipped when train.grad_clip is set), then the fused Adam/AdamW update, which the optimizer skips on
the device when the loss or the norm is not finite (`found_inf`). Non-finite steps are
counted on the device with the first one's (step, loss, norm); the host reads that count lazily (`Readout`, never
waiting) and at epoch ends, and stops the run with `NonFiniteStep`.

With a CUDA graph (train.cuda_graph, on CUDA without train.compile), R is fixed per run: `memory.batch_positions`
(the mean plus four standard deviations of a batch's targets, the bound that the memory check sizes) rounded up to
a multiple of 64, at most B * L. The step is captured once after two warm-up steps whose updates are skipped
(`found_inf` forced), with the random generators restored afterwards, and replayed for every batch; dropout draws
from torch's graph-safe default generator and the kernel losses from the key buffer, so a replay equals an eager
step with the same state. A rare batch with more than R targets runs eagerly (counted in `eager_steps`). Without a
graph, R is each batch's M rounded up to 64, so the Triton kernels, which specialise on a row count's divisibility
by 16, never compile again after the first step.

Data parallel (DistributedDataParallel over NCCL) is captured too, gradients' all-reduce included: the wrapper is
built on a side stream and runs 11 warm-up steps before the capture, as PyTorch's CUDA graphs notes require. A
captured collective must be replayed by every rank or by none, so a batch runs eagerly on every rank when any
rank's part has more than R targets (each rank knows every part: all of them build the whole batch).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from cutrec import distributed
from cutrec.console import note
from cutrec.data.batches import IGNORE_INDEX
from cutrec.distributed import SINGLE, Ranks
from cutrec.errors import CutrecError
from cutrec.losses.sampling import draw_key
from cutrec.train.evaluate import autocast_context
from cutrec.train.state import TrainState
from cutrec.transfer import to_device

ROW_MULTIPLE = 64  # R is rounded up to this
WARMUP_STEPS = 2  # skipped updates before a capture (allocates the optimizer state, compiles the kernels)
# DistributedDataParallel must run 11 eager iterations before its backward is captured (PyTorch's CUDA graphs notes:
# it settles its gradient buckets in the first ones)
DATA_PARALLEL_WARMUP_STEPS = 11


class NonFiniteStep(Exception):
    """A step's loss or gradient norm was NaN or infinite; its update was skipped on the device."""

    def __init__(self, step: int, loss: float, grad_norm: float) -> None:
        super().__init__(f"step {step}: loss {loss}, gradient norm {grad_norm}")
        self.step, self.loss, self.grad_norm = step, loss, grad_norm


def round_rows(count: int, limit: int) -> int:
    """`count` target rows rounded up to ROW_MULTIPLE, at most `limit` (B * L), at least 1."""
    return max(1, min(limit, -(-count // ROW_MULTIPLE) * ROW_MULTIPLE))


def make_optimizer(config: Any, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW, fused (it can skip a step on the device), capturable on CUDA."""
    kind = torch.optim.AdamW if config.train.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay, fused=True,
                capturable=device.type == "cuda")


class LearningRate:
    """train.lr over the steps: a linear warm-up over train.warmup_epochs (step s gets (s + 1) / W of lr), then lr,
    or a linear or cosine decay (Loshchilov and Hutter 2017) to 0 at the last step of train.epochs. It is computed on
    the device from the step number into the one tensor that every parameter group's lr is, so a replayed CUDA
    graph follows it, and a resumed run recomputes it from the step (nothing to save)."""

    def __init__(self, config: Any, steps_per_epoch: int, device: torch.device) -> None:
        self.base, self.decay = config.lr, config.lr_decay
        self.warmup = round(config.warmup_epochs * steps_per_epoch)  # W steps
        self.total = config.epochs * steps_per_epoch  # T steps
        self.value = torch.full((), config.lr, dtype=torch.float32, device=device)

    @staticmethod
    def wanted(config: Any) -> bool:
        return config.warmup_epochs > 0 or config.lr_decay != "none"

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Make every parameter group read this lr (after the optimizer's state dict is loaded, too)."""
        for group in optimizer.param_groups:
            group["lr"] = self.value

    def update(self, step: torch.Tensor) -> None:
        """Set the lr of step number `step` ([] int64 on the device), without a host sync."""
        step = step.double()
        factor = torch.ones((), dtype=torch.float64, device=step.device)
        if self.warmup:
            factor = torch.clamp((step + 1) / self.warmup, max=1.0)
        progress = torch.clamp((step - self.warmup) / max(self.total - self.warmup, 1), 0.0, 1.0)
        if self.decay == "linear":
            factor = factor * (1.0 - progress)
        elif self.decay == "cosine":
            factor = factor * 0.5 * (1.0 + torch.cos(math.pi * progress))
        self.value.copy_(self.base * factor)


class Readout:
    """A few device numbers copied to pinned host memory without waiting; `poll` returns them once they arrive."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host: torch.Tensor | None = None
        self.event: torch.cuda.Event | None = None
        self.tag: Any = None

    def poll(self, values: torch.Tensor, tag: Any) -> tuple[np.ndarray, Any] | None:
        """(values, tag) of an earlier request if they have arrived (then a request of `values`, tagged with `tag`,
        starts), else None; on the CPU, (`values`, `tag`) now."""
        if self.device.type != "cuda":
            return values.detach().double().numpy(), tag
        if self.event is not None and not self.event.query():
            return None
        arrived = None if self.host is None else (self.host.numpy().copy(), self.tag)
        self.host = torch.empty(values.shape, dtype=torch.float64, pin_memory=True)
        self.host.copy_(values.detach().double(), non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()
        self.tag = tag
        return arrived


class TrainStep:
    """Runs training steps on `state` (see the module docstring); `run` never waits for the device."""

    def __init__(
        self, state: TrainState, forward: Any, loss_fn: Any, config: Any, device: torch.device, drawn_items: int,
        rows: int, batch_size: int, ranks: Ranks = SINGLE, catalog_parallel: bool = False, steps_per_epoch: int = 1,
    ) -> None:
        self.state, self.forward, self.loss_fn, self.config, self.device = state, forward, loss_fn, config, device
        # the item rows that the loss's draw key covers: the catalog, or this rank's shard under catalog parallel
        self.drawn_items, self.ranks, self.catalog_parallel = drawn_items, ranks, catalog_parallel
        # data parallel: DistributedDataParallel averages the ranks' gradients of their shares, so the backward is
        # scaled by the ranks; catalog parallel: every rank's loss is the whole step's, and the gradients are summed
        self.backward_scale = 1 if catalog_parallel else ranks.world
        self.batch_size, self.max_len = batch_size, state.model.max_len  # this rank's rows B of each step
        self.rows = round_rows(rows, self.batch_size * self.max_len)  # R of the graph
        self.parameters = list(state.model.parameters())
        self.learning_rate = None  # train.lr throughout, or its schedule
        if LearningRate.wanted(config.train):
            self.learning_rate = LearningRate(config.train, steps_per_epoch, device)
            self.learning_rate.attach(state.optimizer)
        self.found_inf = torch.zeros((), device=device)  # 1.0: the fused optimizer skips the update
        state.optimizer.found_inf = self.found_inf
        self.skip = torch.zeros((), dtype=torch.bool, device=device)  # True during warm-up
        self.bad = torch.zeros(4, dtype=torch.float64, device=device)  # non-finite steps, first one's step/loss/norm
        self.readout = Readout(device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: torch.Tensor | None = None  # the graph's input buffer
        self.why_eager = self._why_eager(device, config, catalog_parallel)  # None: capture (until one fails)
        self.data_parallel = isinstance(forward, torch.nn.parallel.DistributedDataParallel)
        self.warmup_steps = DATA_PARALLEL_WARMUP_STEPS if self.data_parallel else WARMUP_STEPS
        self.prepared = False
        self.setup_seconds = 0.0  # warm-up and capture of this session
        self.eager_steps = 0  # steps that ran eagerly beside a graph (batches with more than R targets)
        self.graph_peak_bytes = 0  # peak allocated through warm-up and capture: a graph allocates only then

    @property
    def use_graph(self) -> bool:
        return self.why_eager is None

    @staticmethod
    def _why_eager(device: torch.device, config: Any, catalog_parallel: bool) -> str | None:
        if not config.train.cuda_graph:
            return "train.cuda_graph=false"
        if device.type != "cuda":
            return f"the device is {device.type}, not cuda"
        if config.train.compile:
            return "train.compile=true (the compiled model is not captured)"
        if catalog_parallel:
            return "catalog parallel (its collective embedding lookup is not captured)"
        return None

    def pack(
        self, inputs: torch.Tensor, targets: torch.Tensor, step: int, share: tuple[int, int] | None = None,
        rows: int | None = None,
    ) -> tuple[torch.Tensor, int]:
        """(host words [B * L + 2 R + 7] int64, R) of a batch: inputs [b, L] and targets [b, L] with b <= B, and
        `share` (M_r, M): this rank's and the whole batch's targets (None: this rank trains the whole batch). `rows`
        forces R (the capture's shapes), keeping the first R targets of a batch that has more."""
        batch = inputs.shape[0]
        inputs_np, flat_targets = inputs.numpy(), targets.numpy().reshape(-1)  # [b, L], [b * L]
        positions = np.flatnonzero(flat_targets != IGNORE_INDEX)  # [M]
        limit = self.batch_size * self.max_len
        if rows is None:
            rows = self.rows if self.use_graph and len(positions) <= self.rows else round_rows(len(positions), limit)
        positions = positions[:rows]
        count = len(positions)
        words = np.empty(limit + 2 * rows + 7, dtype=np.int64)
        filled = words[:limit].reshape(self.batch_size, self.max_len)
        filled[:] = inputs_np[np.arange(self.batch_size) % batch]  # repeats of the batch's own rows
        words[limit : limit + count] = positions
        words[limit + count : limit + rows] = 0  # a real row, with an ignored target
        words[limit + rows : limit + rows + count] = flat_targets[positions]
        words[limit + rows + count : limit + 2 * rows] = IGNORE_INDEX
        words[limit + 2 * rows : limit + 2 * rows + 4] = draw_key(
            step_seed(self.config.train.seed, step, self.ranks.rank), self.drawn_items)
        # catalog parallel: every rank's loss is the whole step's (share 1), a rank without rows adds no targets
        words[-3:-1] = (1, 1) if self.catalog_parallel else share if share is not None else (count, max(count, 1))
        words[-1] = step
        host = torch.from_numpy(words)
        return (host.pin_memory() if self.device.type == "cuda" else host), rows

    def _body(self, words: torch.Tensor, rows: int) -> None:
        """The step on device words (see `pack`); every shape is fixed by (B, L, R)."""
        limit = self.batch_size * self.max_len
        inputs = words[:limit].view(self.batch_size, self.max_len)  # [B, L]
        positions, targets = words[limit : limit + rows], words[limit + rows : limit + 2 * rows]  # [R], [R]
        key, step = words[limit + 2 * rows : limit + 2 * rows + 4], words[-1]
        share = words[-3].float() / words[-2].float()  # M_r / M; exactly 1.0 when this rank has the whole batch
        model = self.state.model
        with autocast_context(self.device, self.config.train.amp):
            hidden = self.forward(inputs)  # [B, L, D]
            picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)  # [R, D]
            loss = self.loss_fn(picked, model.item_table, targets, seed=key) * share
        (loss * self.backward_scale).backward()
        # the global norm, clipped when train.grad_clip is set (with an infinite bound the gradients are unchanged)
        norm = self._global_norm()
        torch.nn.utils.clip_grads_with_norm_(self.parameters, self.config.train.grad_clip or math.inf, norm)
        loss = loss.detach().float()
        bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
        self.found_inf.copy_((bad | self.skip).float())
        if self.learning_rate is not None:
            self.learning_rate.update(step)
        self.state.optimizer.step()
        first = bad & (self.bad[0] == 0)
        self.bad.copy_(torch.where(first, torch.stack([self.bad[0], step.double(), loss.double(), norm.double()]),
                                   self.bad))
        self.bad[0] += bad.double()
        self.state.epoch_loss += torch.where(bad, 0.0, loss)

    def _global_norm(self) -> torch.Tensor:
        """The norm of the whole gradient; under catalog parallel the replicated parameters' (the same on every
        rank) with every rank's rows of the table (an all-reduce), so every rank clips and skips alike."""
        if not self.catalog_parallel:
            return torch.nn.utils.get_total_norm([p.grad for p in self.parameters if p.grad is not None])
        shard = self.state.model.item_table
        replicated = [p.grad for p in self.parameters if p is not shard and p.grad is not None]
        squares = shard.grad.float().square().sum().reshape(1)  # [1] this rank's rows
        with distributed.collective(self.ranks):
            torch.distributed.all_reduce(squares)
        return (torch.nn.utils.get_total_norm(replicated).float().square() + squares[0]).sqrt()

    def _eager(self, host: torch.Tensor, rows: int) -> None:
        self.state.optimizer.zero_grad(set_to_none=True)
        self._body(to_device(host, self.device), rows)

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, share: tuple[int, int] | None = None,
            most: int | None = None) -> None:
        """One step on inputs [b, L] and targets [b, L] (CPU tensors), numbered state.step; `share` as in `pack`.
        `most`: the most targets of any rank's part of the batch (data parallel: the graph's collectives need every
        rank to replay it, or none; catalog parallel: the ranks' hidden rows are gathered, so R is the same on every
        rank; None: this rank's own)."""
        if (self.catalog_parallel or self.ranks.distributed) and most is None:
            raise ValueError("a step of several ranks needs `most`, the most targets of any rank's part")
        rows = round_rows(most, self.batch_size * self.max_len) if self.catalog_parallel else None
        host, rows = self.pack(inputs, targets, self.state.step, share, rows)
        if not self.prepared:
            self._prepare(inputs, targets, host, rows, share)
        if self.graph is not None and rows == self.rows and (most is None or most <= self.rows):
            self.static.copy_(host, non_blocking=True)
            self.graph.replay()
        else:
            self.eager_steps += self.graph is not None
            self._eager(host, rows)

    def _prepare(
        self, inputs: torch.Tensor, targets: torch.Tensor, host: torch.Tensor, rows: int, share: tuple[int, int] | None
    ) -> None:
        """Warm up on the first batch (updates skipped, generators restored); capture the graph where it applies
        (in R rows, the first batch cut to R targets if it has more)."""
        started = time.perf_counter()
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        loss_sum = self.state.epoch_loss.clone()
        self.skip.fill_(True)
        if self.use_graph:
            try:
                self._capture(host if rows == self.rows else
                              self.pack(inputs, targets, self.state.step, share, self.rows)[0])
            except RuntimeError as error:  # an op that syncs or is not capturable
                self.graph = None
                self.why_eager = f"capture failed ({str(error).splitlines()[0][:120]})"
            if self.data_parallel and distributed.agree([self.graph is None], self.ranks)[0]:
                # a captured collective must be replayed by every rank, and a failed capture may leave the
                # gradient all-reduce mid-way: every rank stops alike
                raise CutrecError(f"the CUDA-graph capture of the data-parallel step failed on a rank ("
                                  f"{self.why_eager or 'on another rank'}); set train.cuda_graph=false")
        if self.graph is None:
            self._eager(host, rows)  # compiles the kernels outside the timed steps
        self.skip.fill_(False)
        self.bad.zero_()
        self.state.epoch_loss.copy_(loss_sum)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self.device)
            torch.cuda.synchronize(self.device)
        if self.graph is not None:
            self.graph_peak_bytes = torch.cuda.max_memory_allocated(self.device)
        note(f"training step: {'one CUDA graph' if self.graph is not None else f'eager ({self.why_eager})'}")
        self.prepared = True
        self.setup_seconds = time.perf_counter() - started

    def _capture(self, host: torch.Tensor) -> None:
        self.static = host.to(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self.state.optimizer.zero_grad(set_to_none=True)
                self._body(self.static, self.rows)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.state.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body(self.static, self.rows)
        self.graph = graph

    def poll(self) -> float | None:
        """The epoch's mean loss as of some earlier step, when a readout has arrived; else None. Raises NonFiniteStep
        once a non-finite step is seen."""
        arrived = self.readout.poll(torch.cat([self.state.epoch_loss.double().view(1), self.bad]),
                                    self.state.batches_done)
        if arrived is None:
            return None
        values, batches = arrived  # the loss summed over `batches` batches of the epoch
        self._raise_if_bad(values[1:])
        return float(values[0]) / max(batches, 1)

    def check(self) -> None:
        """Wait for the device and raise NonFiniteStep if any step so far was not finite."""
        self._raise_if_bad(self.bad.cpu().numpy())

    @staticmethod
    def _raise_if_bad(bad: np.ndarray) -> None:
        if bad[0] > 0:
            raise NonFiniteStep(int(bad[1]), float(bad[2]), float(bad[3]))


def step_seed(run_seed: int, step: int, rank: int = 0) -> int:
    """The loss seed of one training step on one rank: a hash of (run seed, step), and of the rank after rank 0
    (so every rank draws its own negatives, reproducibly; rank 0's seeds are those of a single process), in
    [0, 2**31)."""
    entropy = [run_seed, step] if rank == 0 else [run_seed, step, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)
