"""Cut cross-entropy: the exact full-softmax CE over the catalog, computed without storing the [M, N] logits.

`cut_cross_entropy(hidden, items, targets)` has the semantics of `reference.cross_entropy` (docs/losses.md):
loss_i = logsumexp_j z_ij - z_iy_i with z_ij = h_i . w_j (+ b_j); rows whose target equals `ignore_index`
contribute 0 and "mean" divides by the number of the other rows. Two implementations with identical semantics:
"triton" (kernels/cut_cross_entropy.py: two launches, deterministic) and "torch" (the CPU fallback: fp32, chunked
over positions so the logits take at most TORCH_CHUNK_BUDGET_BYTES, plus fp32 copies of the item table and of its
gradient). Both run behind torch.library custom ops with fake implementations and registered autograd, so
`torch.compile(fullgraph=True)` traces through them; eager calls run the same forward and backward through an
autograd.Function, which skips the dispatcher's Python wrappers (losses/kernel_op.py builds both).

The forward op also returns G = d loss_i / d h_i ([M, D], hidden's dtype); the backward scales it in place by dloss_i
into the hidden gradient. An unchecked target outside [0, N) gives a NaN loss, and both implementations then give
the softmax part of G and of the item gradient without a target term (the catalog-parallel loss uses this for rows
whose target another shard holds);
the item backward op recomputes the logits block by block for d items and d bias.
(No `from __future__ import annotations` here: custom_op reads the annotations to infer the op schemas.)
"""

import importlib.util
import os
from typing import Literal

import torch
from torch import nn

from cutrec.errors import CutrecError
from cutrec.losses.kernel_op import kernel_loss
from cutrec.losses.reference import Reduction, check_seam, check_target_range, reduce_loss

Impl = Literal["auto", "triton", "torch"]

TORCH_CHUNK_BUDGET_BYTES = 256 * 2**20  # the torch fallback keeps at most this many bytes of fp32 logits per chunk
TRITON_MAX_DIM = 512  # the widest D in the Triton kernels' block table (kernels/cut_cross_entropy.py MAX_DIM)
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def resolve_impl(impl: str, device: torch.device, dim: int) -> str:
    """Resolve "auto" (triton on CUDA when it can run D, else torch) and check that the named impl can run here."""
    if impl == "auto":
        return "triton" if device.type == "cuda" and _TRITON_INSTALLED and dim <= TRITON_MAX_DIM else "torch"
    if impl == "torch":
        return impl
    if impl == "triton":
        if not _TRITON_INSTALLED:
            raise CutrecError('impl="triton" needs the triton package: pip install triton, or use impl="torch"')
        if dim > TRITON_MAX_DIM:
            raise CutrecError(f'impl="triton" supports D <= {TRITON_MAX_DIM}, got D={dim}; use impl="torch"')
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise CutrecError(
                f'impl="triton" on {device.type} tensors runs only through the Triton interpreter: '
                'use impl="torch", or set TRITON_INTERPRET=1 in the environment'
            )
        return impl
    raise CutrecError(f"impl={impl!r} is unknown; use 'auto', 'triton' or 'torch'")


def _chunk_rows(num_items: int) -> int:
    return max(1, TORCH_CHUNK_BUDGET_BYTES // (num_items * 4))


def _torch_forward(
    hidden: torch.Tensor,
    items: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    ignore_index: int,
    compute_grad_factor: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chunked PyTorch forward: (loss [M] fp32, lse [M] fp32, G [M, D] or [0, D]) like the Triton kernel.

    Computes in fp32 like the kernel's accumulators, so a 16-bit item table is copied to fp32 once (N x D x 4 bytes).
    """
    num_rows, dim = hidden.shape
    items_f32 = items.float()  # [N, D]
    bias_f32 = bias.float() if bias is not None else None
    loss = hidden.new_empty(num_rows, dtype=torch.float32)
    lse = hidden.new_empty(num_rows, dtype=torch.float32)
    grad_factor = hidden.new_empty((num_rows if compute_grad_factor else 0, dim))
    valid = targets != ignore_index  # [M]
    in_range = (targets >= 0) & (targets < items.shape[0])  # an unchecked bad target gives a NaN loss
    safe_targets = torch.where(valid & in_range, targets, torch.zeros_like(targets)).long()
    chunk = _chunk_rows(items.shape[0])
    for start in range(0, num_rows, chunk):
        rows = slice(start, start + chunk)
        logits = hidden[rows].float() @ items_f32.T  # [C, N]
        if bias_f32 is not None:
            logits += bias_f32
        chunk_lse = torch.logsumexp(logits, dim=1)  # [C]
        target_logit = logits.gather(1, safe_targets[rows, None]).squeeze(1)  # [C]
        lse[rows] = chunk_lse
        chunk_loss = torch.where(in_range[rows], chunk_lse - target_logit, torch.full_like(chunk_lse, float("nan")))
        loss[rows] = torch.where(valid[rows], chunk_loss, torch.zeros_like(chunk_lse))
        if compute_grad_factor:
            probs = logits.sub_(chunk_lse[:, None]).exp_()  # [C, N] softmax, in place of the logits
            w_target = items_f32[safe_targets[rows]] * in_range[rows, None]  # [C, D]; none for an id outside [0, N)
            chunk_factor = probs @ items_f32 - w_target  # [C, D], as the kernel: no target term for a bad id
            grad_factor[rows] = torch.where(valid[rows, None], chunk_factor, torch.zeros_like(chunk_factor))
    return loss, lse, grad_factor


def _torch_item_backward(
    hidden: torch.Tensor,
    items: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    grad_loss: torch.Tensor,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked PyTorch item backward: recompute the softmax per chunk in fp32, accumulate dW and db in fp32."""
    num_rows, dim = hidden.shape
    num_items = items.shape[0]
    items_f32 = items.float()  # [N, D]
    bias_f32 = bias.float() if bias is not None else None
    valid = targets != ignore_index
    in_range = valid & (targets >= 0) & (targets < num_items)  # an id outside [0, N) has a softmax, no target term
    safe_targets = torch.where(in_range, targets, torch.zeros_like(targets)).long()
    grad_loss = torch.where(valid, grad_loss.float(), torch.zeros_like(lse))  # [M]
    grad_items = hidden.new_zeros((num_items, dim), dtype=torch.float32)
    grad_bias = hidden.new_zeros(num_items, dtype=torch.float32) if bias is not None else None
    chunk = _chunk_rows(num_items)
    for start in range(0, num_rows, chunk):
        rows = slice(start, start + chunk)
        hidden_rows = hidden[rows].float()  # [C, D]
        logits = hidden_rows @ items_f32.T  # [C, N]
        if bias_f32 is not None:
            logits += bias_f32
        grad_logits = logits.sub_(lse[rows, None]).exp_()  # [C, N] softmax
        chunk_rows = torch.arange(grad_logits.shape[0], device=hidden.device)  # [C]
        grad_logits[chunk_rows, safe_targets[rows]] -= in_range[rows].float()
        grad_logits *= grad_loss[rows, None]
        grad_items.addmm_(grad_logits.T, hidden_rows)  # [N, C] x [C, D]
        if grad_bias is not None:
            grad_bias += grad_logits.sum(0)
    return grad_items.to(items.dtype), grad_bias.to(bias.dtype) if grad_bias is not None else None


def _forward_impl(
    hidden: torch.Tensor,
    items: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    ignore_index: int,
    compute_grad_factor: bool,
    check_targets: bool,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss [M] fp32, lse [M] fp32, G [M, D] or [0, D] in hidden's dtype); items and bias have hidden's dtype."""
    if check_targets:
        check_target_range(targets, items.shape[0], ignore_index)
    if impl == "triton":
        from cutrec.kernels import cut_cross_entropy as kernels

        return kernels.forward(hidden, items, bias, targets, ignore_index, compute_grad_factor)
    with torch.autocast(hidden.device.type, enabled=False):  # the fallback computes in fp32 whatever the context
        return _torch_forward(hidden, items, bias, targets, ignore_index, compute_grad_factor)


def _item_backward_impl(
    hidden: torch.Tensor,
    items: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    grad_loss: torch.Tensor,
    ignore_index: int,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_items [N, D], grad_bias [N], or [0] without bias); rows equal to ignore_index contribute nothing."""
    if impl == "triton":
        from cutrec.kernels import cut_cross_entropy as kernels

        grad_items, grad_bias = kernels.item_backward(hidden, items, bias, targets, lse, grad_loss, ignore_index)
    else:
        with torch.autocast(hidden.device.type, enabled=False):
            grad_items, grad_bias = _torch_item_backward(hidden, items, bias, targets, lse, grad_loss, ignore_index)
    return grad_items, grad_bias if grad_bias is not None else items.new_empty(0)


def _forward_fake(hidden, items, bias, targets, ignore_index, compute_grad_factor, check_targets, impl):
    num_rows, dim = hidden.shape
    loss = hidden.new_empty(num_rows, dtype=torch.float32)
    lse = hidden.new_empty(num_rows, dtype=torch.float32)
    grad_factor = hidden.new_empty((num_rows if compute_grad_factor else 0, dim))
    return loss, lse, grad_factor


def _item_backward_fake(hidden, items, bias, targets, lse, grad_loss, ignore_index, impl):
    return items.new_empty(items.shape), bias.new_empty(bias.shape) if bias is not None else items.new_empty(0)


def _setup_context(ctx, inputs, output) -> None:
    hidden, items, bias, targets, ignore_index, _, _, impl = inputs
    _, lse, grad_factor = output
    ctx.save_for_backward(hidden, items, bias, targets, lse, grad_factor)
    ctx.ignore_index = ignore_index
    ctx.impl = impl
    ctx.mark_non_differentiable(lse, grad_factor)


def _backward(ctx, grad_loss, grad_lse, grad_grad_factor):
    hidden, items, bias, targets, lse, grad_factor = ctx.saved_tensors
    grad_hidden = grad_items = grad_bias = None
    if ctx.needs_input_grad[0]:
        # G becomes the hidden gradient in place, so it costs no memory beyond the returned gradient. A second
        # backward through the same forward (retain_graph=True) is refused by autograd's saved-tensor version check.
        grad_hidden = grad_factor.mul_(grad_loss[:, None])  # [M, D]
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        grad_items, grad_bias = ctx.backward_op(
            hidden, items, bias, targets, lse, grad_loss, ctx.ignore_index, ctx.impl
        )
        grad_items = grad_items if ctx.needs_input_grad[1] else None
        grad_bias = grad_bias if ctx.needs_input_grad[2] else None
    return grad_hidden, grad_items, grad_bias, None, None, None, None, None


_cut_cross_entropy = kernel_loss(
    "cut_cross_entropy_forward",
    forward_impl=_forward_impl,
    forward_fake=_forward_fake,
    backward_name="cut_cross_entropy_item_backward",
    backward_impl=_item_backward_impl,
    backward_fake=_item_backward_fake,
    setup_context=_setup_context,
    backward=_backward,
)


def cut_cross_entropy(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    impl: Impl = "auto",
    check_targets: bool = True,
) -> torch.Tensor:
    """Full-softmax CE of `hidden` [M, D] against every row of `items` [N, D] (+ `bias` [N]), targets [M].

    Returns a float32 scalar ("mean", "sum") or [M] ("none"). Gradients flow to hidden, items and bias.
    Under autocast, hidden is first cast to the autocast dtype. `items` and `bias` are then cast to hidden's dtype
    when they differ (as autocast does for a linear layer), so with bf16 hidden and an fp32 item table the logits
    use bf16 operands with fp32 accumulation, and the gradients come back in each input's own dtype.
    `impl`: "triton" (CUDA, or CPU under TRITON_INTERPRET=1), "torch" (chunked fallback), or "auto" (triton on CUDA
    when installed and D <= 512, else torch). The forward checks the target range with one min/max reduction and a
    device-to-host copy of its two numbers; `check_targets=False` skips that copy (which stalls the CPU's queueing
    of kernels), and a target outside [0, N) then gives a NaN loss instead of an error.
    """
    check_seam(hidden, items, targets, bias)
    if reduction not in ("mean", "sum", "none"):
        raise CutrecError(f"reduction={reduction!r} is unknown; use 'mean', 'sum' or 'none'")
    if items.shape[0] == 0:
        raise CutrecError("items is empty: the catalog needs at least one item")
    if bias is not None and bias.device != hidden.device:
        raise CutrecError(f"bias must be on hidden's device {hidden.device}, got {bias.device}")
    resolved = resolve_impl(impl, hidden.device, hidden.shape[1])
    if torch.is_autocast_enabled(hidden.device.type):  # compute in the autocast dtype, as a linear layer would
        hidden = hidden.to(torch.get_autocast_dtype(hidden.device.type))
    items = items.to(hidden.dtype)
    bias = bias.to(hidden.dtype) if bias is not None else None
    compute_grad_factor = torch.is_grad_enabled() and hidden.requires_grad
    with torch.autocast(hidden.device.type, enabled=False):  # every op inside computes as documented
        per_position, _, _ = _cut_cross_entropy(hidden, items, bias, targets, ignore_index, compute_grad_factor,
                                                check_targets, resolved)
    # The kernels write 0 on ignored rows; with reduction="none" the where() stays, so that a non-finite upstream
    # gradient on an ignored row cannot reach d hidden through the zero row of G (0 * nan).
    return reduce_loss(per_position, targets != ignore_index, reduction, zeroed=reduction != "none")


class CutCrossEntropy(nn.Module):
    """`cut_cross_entropy` as a module: options fixed at construction, forward(hidden, items, targets, bias=None)."""

    def __init__(self, *, ignore_index: int = -100, reduction: Reduction = "mean", impl: Impl = "auto") -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.impl = impl

    def forward(
        self, hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return cut_cross_entropy(
            hidden,
            items,
            targets,
            bias=bias,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, impl={self.impl!r}"
