"""The Triton pieces both loss kernels share: base-2 constants, the fp32-accumulating dot, the online
log-sum-exp, the counter hash behind every negative draw, the width padding, and whether the interpreter runs.
"""

import os

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * LOG2E)
LN2 = tl.constexpr(0.6931471805599453)  # ln(2): ln(x) = log2(x) * LN2


def interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def block_d(dim: int) -> int:
    """The width tile of a row of D values: the next power of two, at least 16 (tl.dot's smallest)."""
    return max(16, triton.next_power_of_2(dim))


@triton.jit
def dot(a, b, FP32_DOT: tl.constexpr):
    """a @ b accumulated in fp32. FP32_DOT: fp32 operands, IEEE products (no TF32); else a is rounded to b's dtype."""
    if FP32_DOT:
        product = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        product = tl.dot(a.to(b.dtype), b)
    return product


@triton.jit
def online_lse(max2, sum_exp, s):
    """Fold scores s [R, BK] into each row's running max of s * log2(e) and sum of exp2(s * log2(e) - max)."""
    new_max2 = tl.maximum(max2, tl.max(s, axis=1) * LOG2E)
    sum_exp = sum_exp * tl.exp2(max2 - new_max2) + tl.sum(tl.exp2(s * LOG2E - new_max2[:, None]), axis=1)
    return new_max2, sum_exp


@triton.jit
def mix32(x):
    """lowbias32 on uint32 values (matches cutrec.losses.sampling.mix32): the hash of every counter-based draw."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)
