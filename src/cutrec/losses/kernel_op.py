"""The glue that puts a kernel loss behind PyTorch: a forward and a backward torch.library custom op with fake
implementations and registered autograd (so torch.compile traces through them), and an eager autograd.Function that
runs the same functions without the dispatcher's Python wrappers (about 0.3 ms of host time a training step, which
decides the step time on small catalogs).

Both losses (cut CE and the sampled cut CE) are built by `kernel_loss`. Their `setup_context(ctx, inputs, output)`
saves what the backward needs, and their `backward(ctx, *grads)` calls `ctx.backward_op`: the backward custom op
when traced, the plain backward implementation when eager.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class KernelLoss:
    """A kernel loss's forward: `op` (the custom op, for torch.compile) and `eager` (autograd.Function.apply)."""

    op: Any
    eager: Callable[..., Any]

    def __call__(self, *inputs: Any) -> Any:
        return self.op(*inputs) if torch.compiler.is_compiling() else self.eager(*inputs)


def kernel_loss(
    name: str,
    *,
    forward_impl: Callable[..., Any],
    forward_fake: Callable[..., Any],
    backward_name: str,
    backward_impl: Callable[..., Any],
    backward_fake: Callable[..., Any],
    setup_context: Callable[[Any, tuple, Any], None],
    backward: Callable[..., Any],
) -> KernelLoss:
    """Register `cutrec::{name}` (forward) and `cutrec::{backward_name}` (the backward op that `backward` calls)."""
    forward_op = torch.library.custom_op(f"cutrec::{name}", forward_impl, mutates_args=())
    forward_op.register_fake(forward_fake)
    backward_op = torch.library.custom_op(f"cutrec::{backward_name}", backward_impl, mutates_args=())
    backward_op.register_fake(backward_fake)

    def traced_setup(ctx: Any, inputs: tuple, output: Any) -> None:
        setup_context(ctx, inputs, output)
        ctx.backward_op = backward_op

    forward_op.register_autograd(backward, setup_context=traced_setup)

    class Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, *inputs: Any) -> Any:
            output = forward_impl(*inputs)
            setup_context(ctx, inputs, output)
            ctx.backward_op = backward_impl
            ctx.set_materialize_grads(False)  # the backwards ignore the extra outputs' gradients: no zero tensors
            return output

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> Any:
            return backward(ctx, *grads)

    Eager.__name__ = Eager.__qualname__ = f"Eager_{name}"
    return KernelLoss(op=forward_op, eager=Eager.apply)
