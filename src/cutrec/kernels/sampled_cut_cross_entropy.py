"""Triton kernels of the sampled cut cross-entropy (CCE-): negatives drawn inside the kernels, never stored.

Per position i with target y_i: s_0 = z_iy, s_k = z_in_k - log(K q(n_k)) (logQ, optional), s_k = -inf when
n_k == y_i, loss_i = logsumexp_k s_ik - s_i0 (docs/losses.md). The ids n_k are the same pure function of
(seed, stream, k) as `cutrec.losses.sampling.counter_draws` (lowbias32 hash; alias table for popularity) and
`sampling.shifted_draws` (share="offsets"), so the kernels and the PyTorch implementation draw identical negatives,
and the backward regenerates them.

Forward kernels keep an online log-sum-exp seeded with s_0 and write lse and loss [M] fp32; backward kernels run the
same loop, g_k = softmax_k * dloss gives d hidden, accumulated in registers and stored once, and d items:

- row-wise, for share="none", share="offsets" and explicit [M, K] negatives: a program owns BLOCK_M positions, each
  with its own negatives, so every score is a row-by-row dot product over a gathered [BM, BK, D] tile (CUDA cores;
  the cost is the gather of M x K rows and, except for share="offsets", the M x K x D atomic adds of d items);
- tiled, for share="block", share="batch" and explicit [K] negatives: a program owns TILE_ROWS = BLOCK_ROWS
  consecutive positions that share their negatives, gathers [BK, D] rows once and scores the [TILE_ROWS, D] x
  [D, BK] tile on the tensor cores (fp32 accumulation); d items is one [BK, D] tile product per program, added
  with atomics;
- item-major, share="offsets"'s d items (`_shifted_item_backward_kernel`): a program owns a tile of items and
  accumulates their rows in registers from the runs of positions that drew them; each row is written once.

The d items atomics (relaxed: the default acq_rel ordering made the row-wise backward twice as slow) make its low bits
depend on the order of the adds, so the item gradient is not bit-deterministic on a GPU (loss and d hidden are),
except for share="offsets", which has no atomics. Memory beyond inputs and gradients: lse and loss (8 M bytes); for
a 16-bit item table in the atomic modes the fp32 buffer that d items accumulates in: N x D x 4 bytes, or at most
grad_buffer_bytes, one catalog chunk per backward pass; for share="offsets" index arrays, about 8 (M + N) bytes.
"""

import math

import torch
import triton
import triton.language as tl

from cutrec.kernels.common import LN2, LOG2E, block_d, dot, interpreting, mix32, online_lse

# (BLOCK_M, BLOCK_K, num_warps) of the row-wise kernels and (BLOCK_K, num_warps) of the tiled ones, by BLOCK_D <= key.
# D=64 and D=256: the fastest of benchmarks/tune_sampled_kernels.py's sweeps on an H200 (M=32768, K=1023, N=1M,
# bf16; results/tune_sampled_kernels.md). Row-wise at D=64: forward 1.26 ms, backward 7.66 ms; at D=256: forward
# 4.88 ms with (2, 16, 4), backward 30.1 ms with (2, 32, 4) (the D=64 blocks spill there: forward 8.6 ms, backward
# about 120 ms in the second sweep). D=128 and
# D=512 are unmeasured starting points that keep the gathered [BLOCK_M, BLOCK_K, BLOCK_D] tile at the size of the
# measured rows (8k values forward, 16k backward). Tiled at D=64: 0.11 and 0.23 ms; at D=256: 0.18 and 0.76 ms.
# "hidden_backward" (the d-hidden-only pass of share="offsets") and SHIFTED_CONFIG: the fastest share="offsets"
# forward+backward of the fourth sweep in results/tune_sampled_kernels.md (D=64 and 256; D=128 and 512 unmeasured).
ROWWISE_CONFIG = {
    "forward": {64: (8, 16, 4), 128: (4, 16, 4), 256: (2, 16, 4), 512: (2, 8, 4)},
    "backward": {64: (8, 32, 4), 128: (4, 32, 4), 256: (2, 32, 4), 512: (2, 16, 4)},
    "hidden_backward": {64: (16, 4, 4), 128: (8, 8, 4), 256: (4, 8, 4), 512: (2, 8, 4)},  # share="offsets"
}
TILED_CONFIG = {64: (64, 4), 128: (64, 4), 256: (16, 4), 512: (16, 8)}
# (slots (item rows) per program, num_warps) of the share="offsets" item backward, by BLOCK_D
SHIFTED_CONFIG = {64: (32, 4), 128: (32, 4), 256: (16, 2), 512: (16, 2)}


def _config(table: dict, width: int) -> tuple:
    """The entry of `table` for the smallest key >= width (a BLOCK_D)."""
    return next(config for key, config in sorted(table.items()) if width <= key)


@triton.jit
def _key(key_ptr):
    """(seed hash, a, b) from the draw key [4] int64 of `sampling.draw_key`, read on the device so that one captured
    launch draws new negatives whenever the key's buffer changes."""
    return tl.load(key_ptr), tl.load(key_ptr + 1), tl.load(key_ptr + 2)


@triton.jit
def _negatives_to_scan(valid, num_negatives):
    """K, or 0 for a block of positions without a target (the padding of a static-shape batch costs no draws)."""
    return tl.where(tl.max(valid.to(tl.int32), axis=0) > 0, num_negatives, 0)


@triton.jit
def _draw(streams, ks, mask, keep_ptr, alias_ptr, seed_hash, num_items, num_negatives, POPULARITY: tl.constexpr):
    """int64 ids of draws (stream, k), broadcast over the shapes of `streams` and `ks` (sampling.counter_draws)."""
    counters = streams.to(tl.int64) * num_negatives + ks.to(tl.int64)
    low = (counters & 0xFFFFFFFF).to(tl.uint32)
    high = (counters >> 32).to(tl.uint32)
    hashed = mix32(mix32(seed_hash.to(tl.uint32) ^ low) ^ high)  # uint32
    index = ((hashed.to(tl.uint64) * num_items.to(tl.uint64)) >> 32).to(tl.int64)
    if POPULARITY:
        coin = (mix32(hashed ^ 0x5BD1E995) >> 8).to(tl.float32) * 5.960464477539063e-08  # 2**-24
        keep = tl.load(keep_ptr + index, mask=mask, other=1.0)
        alias = tl.load(alias_ptr + index, mask=mask, other=0)
        index = tl.where(coin < keep, index, alias)
    return tl.where(mask, index, 0).to(tl.int64)


@triton.jit
def _correct(s, ids, mask, log_q_ptr, log_k, uniform_log_q, LOGQ: tl.constexpr, POPULARITY: tl.constexpr):
    """Scores minus log(K q(ids)) when LOGQ."""
    if LOGQ:
        if POPULARITY:
            s -= log_k + tl.load(log_q_ptr + ids, mask=mask, other=0.0)
        else:
            s -= log_k + uniform_log_q
    return s


@triton.jit
def _rows(hidden_ptr, items_ptr, targets_ptr, num_rows, num_items, ignore_index, BLOCK_M: tl.constexpr,
          DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's rows: (rows, row_mask, dims, h [BM, BD] input dtype, valid, safe targets (-1 where an unchecked
    target lies outside [0, N): no negative is its hit), w_target [BM, BD], positive scores [BM] fp32, -inf outside
    [0, N): such a row's lse and gradients hold its negatives alone and its loss is NaN)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    row_mask = rows < num_rows
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < DIM
    h = tl.load(hidden_ptr + rows.to(tl.int64)[:, None] * DIM + dims[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    target = tl.load(targets_ptr + rows, mask=row_mask, other=ignore_index)
    valid = row_mask & (target != ignore_index)
    bad = valid & ((target < 0) | (target >= num_items))
    safe = tl.where(valid & ~bad, target, tl.where(bad, -1, 0)).to(tl.int64)
    w_target = tl.load(items_ptr + tl.maximum(safe, 0)[:, None] * DIM + dims[None, :],
                       mask=(valid & ~bad)[:, None] & dim_mask[None, :], other=0.0)
    positive = tl.where(bad, float("-inf"), tl.sum(h.to(tl.float32) * w_target.to(tl.float32), axis=1))
    return rows, row_mask, dims, h, valid, safe, w_target, positive


@triton.jit
def _store_forward(lse_ptr, loss_ptr, rows, row_mask, valid, positive, max2, sum_exp):
    """Write lse [R] and loss [R] (0 on ignored rows, NaN on rows without a positive) from the online log-sum-exp."""
    lse = (max2 + tl.log2(sum_exp)) * LN2
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    loss = tl.where(positive == float("-inf"), float("nan"), lse - positive)
    tl.store(loss_ptr + rows, tl.where(valid, loss, 0.0), mask=row_mask)


@triton.jit
def _start_lse(positive):
    """The online log-sum-exp (max of s * log2(e), sum of exp2) seeded with s_0; with none (-inf) a finite floor and
    an empty sum, so that the first scores replace it."""
    absent = positive == float("-inf")
    return tl.where(absent, -1e30, positive * LOG2E), tl.where(absent, 0.0, 1.0)


@triton.jit
def _positive_backward(lse_ptr, grad_loss_ptr, grad_items_ptr, rows, row_mask, valid, safe, dims, h, w_target,
                       positive, grad_loss_stride, chunk_start, chunk_end, DIM: tl.constexpr,
                       ADD_ITEMS: tl.constexpr):
    """(lse [R], d loss [R] (0 on ignored rows), d hidden [R, BD] fp32 holding the positive's term); with ADD_ITEMS
    the positive's term of d items is added to the target rows that lie in the catalog chunk [chunk_start,
    chunk_end)."""
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    grad_loss = tl.where(valid, tl.load(grad_loss_ptr + rows * grad_loss_stride, mask=row_mask, other=0.0), 0.0)
    grad_positive = tl.where(safe >= 0, tl.exp(positive - lse) - 1.0, 0.0) * grad_loss  # d loss / d s_0
    if ADD_ITEMS:
        in_chunk = valid & (safe >= chunk_start) & (safe < chunk_end)
        tl.atomic_add(grad_items_ptr + (safe - chunk_start)[:, None] * DIM + dims[None, :],
                      grad_positive[:, None] * h.to(tl.float32), mask=in_chunk[:, None] & (dims < DIM)[None, :],
                      sem="relaxed")
    return lse, grad_loss, grad_positive[:, None] * w_target.to(tl.float32)


@triton.jit
def _store_grad_hidden(grad_hidden_ptr, rows, row_mask, dims, grad_h, DIM: tl.constexpr):
    """Write d hidden [R, D] in the output's dtype."""
    tl.store(grad_hidden_ptr + rows.to(tl.int64)[:, None] * DIM + dims[None, :],
             grad_h.to(grad_hidden_ptr.dtype.element_ty), mask=row_mask[:, None] & (dims < DIM)[None, :])


@triton.jit
def _rowwise_ids(rows, ks, mask, negatives_ptr, keep_ptr, alias_ptr, seed_hash, num_items, num_negatives, shift_a,
                 shift_b, EXPLICIT: tl.constexpr, POPULARITY: tl.constexpr, SHIFTED: tl.constexpr):
    """[BM, BK] ids: explicit [M, K] negatives; share="offsets" (SHIFTED: (start_m + o_k) mod N with
    start_m = (a (m mod N) + b) mod N and the offsets o_k drawn with stream = m div N; sampling.shifted_draws); or
    each position's own draws (stream = position)."""
    if EXPLICIT:
        ids = tl.load(negatives_ptr + rows.to(tl.int64)[:, None] * num_negatives + ks[None, :], mask=mask, other=0)
    elif SHIFTED:
        offsets = _draw(rows[:, None] // num_items, ks[None, :], mask, keep_ptr, alias_ptr, seed_hash, num_items,
                        num_negatives, False)  # [BM, BK] int64 in [0, N)
        starts = (shift_a * (rows % num_items).to(tl.int64) + shift_b) % num_items  # [BM]
        ids = starts[:, None] + offsets
        ids = tl.where(mask, tl.where(ids >= num_items, ids - num_items, ids), 0)
    else:
        ids = _draw(rows[:, None], ks[None, :], mask, keep_ptr, alias_ptr, seed_hash, num_items, num_negatives,
                    POPULARITY)
    return ids.to(tl.int64)


@triton.jit
def _rowwise_scores(h, items_ptr, ids, mask, safe, dims, log_q_ptr, log_k, uniform_log_q, DIM: tl.constexpr,
                    LOGQ: tl.constexpr, POPULARITY: tl.constexpr):
    """([BM, BK] corrected scores, -inf on hits and masked k; the gathered rows [BM, BK, BD] fp32)."""
    w = tl.load(items_ptr + ids[:, :, None] * DIM + dims[None, None, :],
                mask=mask[:, :, None] & (dims < DIM)[None, None, :], other=0.0).to(tl.float32)  # [BM, BK, BD]
    s = tl.sum(h[:, None, :] * w, axis=2)  # [BM, BK]
    s = _correct(s, ids, mask, log_q_ptr, log_k, uniform_log_q, LOGQ, POPULARITY)
    return tl.where(mask & (ids != safe[:, None]), s, float("-inf")), w


@triton.jit
def _rowwise_forward_kernel(
    hidden_ptr, items_ptr, targets_ptr, negatives_ptr, keep_ptr, alias_ptr, log_q_ptr, lse_ptr, loss_ptr,
    num_rows, num_items, num_negatives, ignore_index, key_ptr, log_k, uniform_log_q,
    EXPLICIT: tl.constexpr, POPULARITY: tl.constexpr, LOGQ: tl.constexpr, SHIFTED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows, row_mask, dims, h, valid, safe, w_target, positive = _rows(
        hidden_ptr, items_ptr, targets_ptr, num_rows, num_items, ignore_index, BLOCK_M, DIM, BLOCK_D)
    seed_hash, shift_a, shift_b = _key(key_ptr)
    h = h.to(tl.float32)
    max2, sum_exp = _start_lse(positive)  # the online log-sum-exp starts with s_0
    for start in range(0, _negatives_to_scan(valid, num_negatives), BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        mask = valid[:, None] & (ks < num_negatives)[None, :]
        ids = _rowwise_ids(rows, ks, mask, negatives_ptr, keep_ptr, alias_ptr, seed_hash, num_items, num_negatives,
                           shift_a, shift_b, EXPLICIT, POPULARITY, SHIFTED)
        s, w = _rowwise_scores(h, items_ptr, ids, mask, safe, dims, log_q_ptr, log_k, uniform_log_q, DIM, LOGQ,
                               POPULARITY)
        max2, sum_exp = online_lse(max2, sum_exp, s)
    _store_forward(lse_ptr, loss_ptr, rows, row_mask, valid, positive, max2, sum_exp)


@triton.jit
def _rowwise_backward_kernel(
    hidden_ptr, items_ptr, targets_ptr, negatives_ptr, keep_ptr, alias_ptr, log_q_ptr, lse_ptr, grad_loss_ptr,
    grad_hidden_ptr, grad_items_ptr,
    num_rows, num_items, num_negatives, ignore_index, key_ptr, log_k, uniform_log_q, grad_loss_stride,
    chunk_start, chunk_end,
    EXPLICIT: tl.constexpr, POPULARITY: tl.constexpr, LOGQ: tl.constexpr, SHIFTED: tl.constexpr,
    GRAD_HIDDEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """d hidden, and the atomic adds of d items (none when SHIFTED: `_shifted_item_backward_kernel` writes those)."""
    rows, row_mask, dims, h, valid, safe, w_target, positive = _rows(
        hidden_ptr, items_ptr, targets_ptr, num_rows, num_items, ignore_index, BLOCK_M, DIM, BLOCK_D)
    seed_hash, shift_a, shift_b = _key(key_ptr)
    h = h.to(tl.float32)
    dim_mask = dims < DIM
    lse, grad_loss, grad_h = _positive_backward(lse_ptr, grad_loss_ptr, grad_items_ptr, rows, row_mask, valid, safe,
                                                dims, h, w_target, positive, grad_loss_stride, chunk_start,
                                                chunk_end, DIM, not SHIFTED)  # grad_h [BM, BD]
    for start in range(0, _negatives_to_scan(valid, num_negatives), BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        mask = valid[:, None] & (ks < num_negatives)[None, :]
        ids = _rowwise_ids(rows, ks, mask, negatives_ptr, keep_ptr, alias_ptr, seed_hash, num_items, num_negatives,
                           shift_a, shift_b, EXPLICIT, POPULARITY, SHIFTED)
        in_chunk = mask & (ids >= chunk_start) & (ids < chunk_end)  # [BM, BK]
        if not GRAD_HIDDEN:  # only the chunk's rows are needed: gather nothing else
            mask = in_chunk
        s, w = _rowwise_scores(h, items_ptr, ids, mask, safe, dims, log_q_ptr, log_k, uniform_log_q, DIM, LOGQ,
                               POPULARITY)
        g = tl.exp(s - lse[:, None]) * grad_loss[:, None]  # [BM, BK]; 0 on hits and masked k
        if GRAD_HIDDEN:
            grad_h += tl.sum(g[:, :, None] * w, axis=1)
        if not SHIFTED:
            tl.atomic_add(grad_items_ptr + (ids - chunk_start)[:, :, None] * DIM + dims[None, None, :],
                          g[:, :, None] * h[:, None, :], mask=in_chunk[:, :, None] & dim_mask[None, None, :],
                          sem="relaxed")
    if GRAD_HIDDEN:
        _store_grad_hidden(grad_hidden_ptr, rows, row_mask, dims, grad_h, DIM)


@triton.jit
def _tiled_ids(ks, k_mask, negatives_ptr, keep_ptr, alias_ptr, seed_hash, num_items, num_negatives,
               SHARE_BATCH: tl.constexpr, EXPLICIT: tl.constexpr, POPULARITY: tl.constexpr):
    """[BK] ids shared by this program's rows: explicit [K], the batch's set (stream 0) or this block's (stream =
    program id, since a program owns exactly one block of BLOCK_ROWS positions)."""
    if EXPLICIT:
        ids = tl.load(negatives_ptr + ks, mask=k_mask, other=0)
    else:
        stream = tl.program_id(0)
        if SHARE_BATCH:
            stream = stream * 0
        ids = _draw(stream, ks, k_mask, keep_ptr, alias_ptr, seed_hash, num_items, num_negatives, POPULARITY)
    return ids.to(tl.int64)


@triton.jit
def _tiled_scores(h, items_ptr, ids, k_mask, safe, dims, log_q_ptr, log_k, uniform_log_q, DIM: tl.constexpr,
                  LOGQ: tl.constexpr, POPULARITY: tl.constexpr, FP32_DOT: tl.constexpr):
    """([TR, BK] corrected scores, -inf on each row's hits and on masked k; the gathered rows [BK, BD]).

    Without FP32_DOT the rows are rounded to hidden's dtype (an fp32 table with bf16 hidden, as autocast would do
    for a matrix product), so the tile products run on the tensor cores; the positive's score keeps the unrounded
    target row (a difference of one bf16 rounding in s_0)."""
    w = tl.load(items_ptr + ids[:, None] * DIM + dims[None, :], mask=k_mask[:, None] & (dims < DIM)[None, :],
                other=0.0)  # [BK, BD]
    if not FP32_DOT:
        w = w.to(h.dtype)
    s = dot(h, tl.trans(w), FP32_DOT)  # [TR, BK] fp32
    s = _correct(s, ids[None, :], k_mask[None, :], log_q_ptr, log_k, uniform_log_q, LOGQ, POPULARITY)
    return tl.where(k_mask[None, :] & (ids[None, :] != safe[:, None]), s, float("-inf")), w


@triton.jit
def _tiled_forward_kernel(
    hidden_ptr, items_ptr, targets_ptr, negatives_ptr, keep_ptr, alias_ptr, log_q_ptr, lse_ptr, loss_ptr,
    num_rows, num_items, num_negatives, ignore_index, key_ptr, log_k, uniform_log_q,
    SHARE_BATCH: tl.constexpr, EXPLICIT: tl.constexpr, POPULARITY: tl.constexpr, LOGQ: tl.constexpr,
    FP32_DOT: tl.constexpr, TILE_ROWS: tl.constexpr, BLOCK_K: tl.constexpr, DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows, row_mask, dims, h, valid, safe, w_target, positive = _rows(
        hidden_ptr, items_ptr, targets_ptr, num_rows, num_items, ignore_index, TILE_ROWS, DIM, BLOCK_D)
    seed_hash = tl.load(key_ptr)
    max2, sum_exp = _start_lse(positive)
    for start in range(0, _negatives_to_scan(valid, num_negatives), BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        k_mask = ks < num_negatives
        ids = _tiled_ids(ks, k_mask, negatives_ptr, keep_ptr, alias_ptr, seed_hash, num_items, num_negatives,
                         SHARE_BATCH, EXPLICIT, POPULARITY)
        s, w = _tiled_scores(h, items_ptr, ids, k_mask, safe, dims, log_q_ptr, log_k, uniform_log_q, DIM, LOGQ,
                             POPULARITY, FP32_DOT)
        max2, sum_exp = online_lse(max2, sum_exp, s)
    _store_forward(lse_ptr, loss_ptr, rows, row_mask, valid, positive, max2, sum_exp)


@triton.jit
def _tiled_backward_kernel(
    hidden_ptr, items_ptr, targets_ptr, negatives_ptr, keep_ptr, alias_ptr, log_q_ptr, lse_ptr, grad_loss_ptr,
    grad_hidden_ptr, grad_items_ptr,
    num_rows, num_items, num_negatives, ignore_index, key_ptr, log_k, uniform_log_q, grad_loss_stride,
    chunk_start, chunk_end,
    SHARE_BATCH: tl.constexpr, EXPLICIT: tl.constexpr, POPULARITY: tl.constexpr, LOGQ: tl.constexpr,
    GRAD_HIDDEN: tl.constexpr, FP32_DOT: tl.constexpr, TILE_ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
    DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows, row_mask, dims, h, valid, safe, w_target, positive = _rows(
        hidden_ptr, items_ptr, targets_ptr, num_rows, num_items, ignore_index, TILE_ROWS, DIM, BLOCK_D)
    seed_hash = tl.load(key_ptr)
    dim_mask = dims < DIM
    lse, grad_loss, grad_h = _positive_backward(lse_ptr, grad_loss_ptr, grad_items_ptr, rows, row_mask, valid, safe,
                                                dims, h, w_target, positive, grad_loss_stride, chunk_start,
                                                chunk_end, DIM, True)  # grad_h [TR, BD]
    for start in range(0, _negatives_to_scan(valid, num_negatives), BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        k_mask = ks < num_negatives
        ids = _tiled_ids(ks, k_mask, negatives_ptr, keep_ptr, alias_ptr, seed_hash, num_items, num_negatives,
                         SHARE_BATCH, EXPLICIT, POPULARITY)
        in_chunk = k_mask & (ids >= chunk_start) & (ids < chunk_end)  # [BK]
        if not GRAD_HIDDEN:  # only the chunk's rows are needed: gather nothing else
            k_mask = in_chunk
        s, w = _tiled_scores(h, items_ptr, ids, k_mask, safe, dims, log_q_ptr, log_k, uniform_log_q, DIM, LOGQ,
                             POPULARITY, FP32_DOT)
        g = tl.exp(s - lse[:, None]) * grad_loss[:, None]  # [TR, BK]; 0 on hits, masked k and ignored rows
        if GRAD_HIDDEN:
            grad_h += dot(g, w, FP32_DOT)  # [TR, BD]
        grad_w = dot(tl.trans(g), h, FP32_DOT)  # [BK, BD]
        tl.atomic_add(grad_items_ptr + (ids - chunk_start)[:, None] * DIM + dims[None, :], grad_w,
                      mask=in_chunk[:, None] & dim_mask[None, :], sem="relaxed")
    if GRAD_HIDDEN:
        _store_grad_hidden(grad_hidden_ptr, rows, row_mask, dims, grad_h, DIM)


@triton.jit
def _shift_table_kernel(shifts_ptr, key_ptr, num_items, num_negatives, BLOCK_K: tl.constexpr):
    """shifts [R, K]: the slot shift r_k = a^-1 o_k mod N of each offset o_k of round q = program id (unsorted)."""
    round_index = tl.program_id(0)
    seed_hash, inverse_a = tl.load(key_ptr), tl.load(key_ptr + 3)
    for start in range(0, num_negatives, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        mask = ks < num_negatives
        offsets = _draw(round_index + ks * 0, ks, mask, shifts_ptr, shifts_ptr, seed_hash, num_items, num_negatives,
                        False)  # [BK] int64
        tl.store(shifts_ptr + round_index * num_negatives + ks, offsets * inverse_a % num_items, mask=mask)


@triton.jit
def _shifted_item_backward_kernel(
    hidden_ptr, items_ptr, targets_ptr, loss_ptr, lse_ptr, grad_loss_ptr, order_ptr, first_ptr, shifts_ptr,
    begin_ptr, end_ptr, grad_items_ptr,
    num_rows, num_items, num_negatives, num_rounds, num_tiles, ignore_index, log_k, uniform_log_q, grad_loss_stride,
    key_ptr,
    LOGQ: tl.constexpr, BLOCK_T: tl.constexpr, DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """d items of share="offsets", with no atomics: a program owns BLOCK_T consecutive slots t (items (a t + b) mod
    N) and writes their rows once. The positives: the positions whose target is each item (order [M] sorted by
    target, first [N + 1]), with d loss / d s_0 = (exp(-loss) - 1) d loss. The negatives: for slot shift r_k of round
    q, slot t was drawn by position q N + (t - r_k) mod N, so a tile meets a run of consecutive positions; shifts
    [R, 2K] holds each round's sorted shifts r and r + N, and [begin, end) [R, T] the ones whose run meets the round's
    positions."""
    tile = tl.program_id(0)
    slots = tile * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT]
    slot_mask = slots < num_items
    _, shift_a, shift_b = _key(key_ptr)
    ids = tl.where(slot_mask, (shift_a * slots.to(tl.int64) + shift_b) % num_items, 0)  # [BT] int64
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < DIM
    w = tl.load(items_ptr + ids[:, None] * DIM + dims[None, :], mask=slot_mask[:, None] & dim_mask[None, :],
                other=0.0).to(tl.float32)  # [BT, BD]
    grad_w = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    first = tl.load(first_ptr + ids, mask=slot_mask, other=0)
    count = tl.load(first_ptr + ids + 1, mask=slot_mask, other=0) - first  # [BT] positions with this target
    for j in range(0, tl.max(count, axis=0)):
        taken = j < count
        rows = tl.load(order_ptr + first + j, mask=taken, other=0).to(tl.int64)
        grad_loss = tl.load(grad_loss_ptr + rows * grad_loss_stride, mask=taken, other=0.0)
        grad_positive = (tl.exp(-tl.load(loss_ptr + rows, mask=taken, other=0.0)) - 1.0) * grad_loss
        h = tl.load(hidden_ptr + rows[:, None] * DIM + dims[None, :], mask=taken[:, None] & dim_mask[None, :],
                    other=0.0).to(tl.float32)
        grad_w += tl.where(taken, grad_positive, 0.0)[:, None] * h
    for round_index in range(0, num_rounds):
        round_rows = tl.minimum(num_rows - round_index * num_items, num_items)  # positions of this round
        begin = tl.load(begin_ptr + round_index * num_tiles + tile)
        end = tl.load(end_ptr + round_index * num_tiles + tile)
        for index in range(begin, end):
            shift = tl.load(shifts_ptr + round_index * 2 * num_negatives + index)
            shift = tl.where(shift >= num_items, shift - num_items, shift)
            positions = slots - shift
            positions = tl.where(positions < 0, positions + num_items, positions)  # [BT]
            drawn = slot_mask & (positions < round_rows)
            rows = round_index * num_items + positions.to(tl.int64)
            target = tl.load(targets_ptr + rows, mask=drawn, other=ignore_index)
            drawn = drawn & (target != ignore_index) & (target != ids)  # ignored rows and accidental hits
            h = tl.load(hidden_ptr + rows[:, None] * DIM + dims[None, :], mask=drawn[:, None] & dim_mask[None, :],
                        other=0.0).to(tl.float32)  # [BT, BD]
            s = tl.sum(h * w, axis=1)
            if LOGQ:
                s -= log_k + uniform_log_q
            lse = tl.load(lse_ptr + rows, mask=drawn, other=0.0)
            grad_loss = tl.load(grad_loss_ptr + rows * grad_loss_stride, mask=drawn, other=0.0)
            g = tl.where(drawn, tl.exp(s - lse) * grad_loss, 0.0)  # [BT]
            grad_w += g[:, None] * h
    tl.store(grad_items_ptr + ids[:, None] * DIM + dims[None, :], grad_w.to(grad_items_ptr.dtype.element_ty),
             mask=slot_mask[:, None] & dim_mask[None, :])


def _launch(step, hidden, items, targets, negatives, keep, alias, log_q, outputs, scalars, share, logq_correction,
            block_rows):
    """Pick the row-wise or tiled kernel of `step` ("forward" or "backward") and launch it over the rows.

    `outputs` names the step's output (and saved) pointers: lse_ptr and loss_ptr forward; lse_ptr, grad_loss_ptr,
    grad_hidden_ptr and grad_items_ptr backward. `scalars` holds num_negatives, ignore_index, key and shifted,
    and backward grad_loss_stride, chunk_start and chunk_end.
    """
    hidden, items, targets = hidden.contiguous(), items.contiguous(), targets.contiguous()
    num_rows, dim = hidden.shape
    popularity = keep is not None
    num_k = negatives.shape[-1] if negatives is not None else scalars["num_negatives"]
    placeholder = targets  # any tensor for the pointers a mode does not read
    arguments = {
        "hidden_ptr": hidden,
        "items_ptr": items,
        "targets_ptr": targets,
        "negatives_ptr": negatives if negatives is not None else placeholder,
        "keep_ptr": keep if popularity else placeholder,
        "alias_ptr": alias if popularity else placeholder,
        "log_q_ptr": log_q if popularity else placeholder,
        **outputs,
        "num_rows": num_rows,
        "num_items": items.shape[0],
        "num_negatives": num_k,
        "ignore_index": scalars["ignore_index"],
        "key_ptr": scalars["key"],
        "log_k": math.log(num_k),
        "uniform_log_q": -math.log(items.shape[0]),
        "EXPLICIT": negatives is not None,
        "POPULARITY": popularity,
        "LOGQ": logq_correction,
        "DIM": dim,
        "BLOCK_D": block_d(dim),
    }
    if step == "backward":
        arguments.update(grad_loss_stride=scalars["grad_loss_stride"], chunk_start=scalars["chunk_start"],
                         chunk_end=scalars["chunk_end"], GRAD_HIDDEN=scalars["chunk_start"] == 0)
    shifted = scalars["shifted"]
    rowwise = (negatives is None and share in ("none", "offsets")) or (negatives is not None and negatives.ndim == 2)
    if rowwise:
        table = "hidden_backward" if shifted and step == "backward" else step
        block_m, block_k, num_warps = _config(ROWWISE_CONFIG[table], arguments["BLOCK_D"])
        kernel = _rowwise_forward_kernel if step == "forward" else _rowwise_backward_kernel
        kernel[(triton.cdiv(num_rows, block_m),)](
            **arguments, SHIFTED=shifted, BLOCK_M=block_m, BLOCK_K=block_k,
            num_warps=num_warps)
        return
    block_k, num_warps = _config(TILED_CONFIG, arguments["BLOCK_D"])
    kernel = _tiled_forward_kernel if step == "forward" else _tiled_backward_kernel
    # Tensor cores for bf16 hidden (any table: fp32 rows are rounded to bf16, whose range is fp32's) and for fp16
    # hidden with an fp16 table; otherwise IEEE fp32 dots (fp32 and fp64 hidden, and fp16 hidden with a wider table,
    # whose rows and small gradient terms fp16's range would flush).
    tensor_cores = hidden.dtype == torch.bfloat16 or hidden.dtype == items.dtype == torch.float16
    kernel[(triton.cdiv(num_rows, block_rows),)](
        **arguments, SHARE_BATCH=share == "batch", FP32_DOT=interpreting() or not tensor_cores,
        TILE_ROWS=block_rows, BLOCK_K=block_k, num_warps=num_warps)


def forward(hidden, items, targets, ignore_index, key, num_negatives, share, negatives, keep, alias, log_q,
            logq_correction, block_rows, shifted):
    """(loss [M] fp32, lse [M] fp32). `keep`, `alias`, `log_q` [N] are given for popularity sampling, else None;
    `key` is the draw key [4] int64 on the device (sampling.draw_key); `shifted`: share="offsets"'s draws."""
    loss = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    scalars = {"num_negatives": num_negatives, "ignore_index": ignore_index, "key": key, "shifted": shifted}
    _launch("forward", hidden, items, targets, negatives, keep, alias, log_q, {"lse_ptr": lse, "loss_ptr": loss},
            scalars, share, logq_correction, block_rows)
    return loss, lse


def grad_chunk_rows(items: torch.Tensor, grad_buffer_bytes: int | None) -> int:
    """Catalog rows per backward pass: all of them for an fp32 table (its gradient accumulates in place) or without
    a cap, else as many as an fp32 buffer of grad_buffer_bytes holds (at least one)."""
    num_items, dim = items.shape
    if items.dtype == torch.float32 or grad_buffer_bytes is None:
        return num_items
    return max(1, min(num_items, int(grad_buffer_bytes) // (dim * 4)))


def _shifted_item_backward(hidden, items, targets, loss, lse, grad_loss, ignore_index, key, num_negatives,
                           logq_correction):
    """d items [N, D] of share="offsets" (fp32 under the interpreter): one write per row, no atomics, no buffer;
    beyond it the sorted targets, each round's shifts and the tiles' ranges (about 8 (M + N) bytes at most).
    The relabelling (a, b) and a^-1 mod N come from the draw key [4]."""
    num_rows, dim = hidden.shape
    num_items = items.shape[0]
    device = items.device
    block_t, num_warps = _config(SHIFTED_CONFIG, block_d(dim))
    num_tiles, num_rounds = triton.cdiv(num_items, block_t), triton.cdiv(num_rows, num_items)
    keys = torch.where(targets != ignore_index, targets, num_items).to(torch.int32)  # [M]; ignored rows sort last
    sorted_keys, order = torch.sort(keys, stable=True)  # positions by target, then by position
    ids = torch.arange(num_items + 1, dtype=torch.int32, device=device)
    first = torch.searchsorted(sorted_keys, ids, out_int32=True)  # [N + 1]; bincount would wait for the GPU
    # Slot shifts r_k = a^-1 o_k mod N of each round, sorted, then again + N so a cyclic range is one slice.
    shifts = torch.empty(num_rounds, num_negatives, dtype=torch.int64, device=device)  # [R, K]
    _shift_table_kernel[(num_rounds,)](shifts_ptr=shifts, key_ptr=key, num_items=num_items,
                                       num_negatives=num_negatives, BLOCK_K=256)
    shifts = torch.sort(shifts, dim=1).values
    shifts = torch.cat([shifts, shifts + num_items], dim=1)  # [R, 2K]
    # Tile j meets the P_q positions of round q for shifts r in the cyclic range [jB - P_q + 1, jB + B - 1].
    round_rows = (num_rows - torch.arange(num_rounds, device=device) * num_items).clamp(max=num_items)  # [R]
    low = (torch.arange(num_tiles, device=device) * block_t - round_rows[:, None] + 1) % num_items  # [R, T]
    high = low + (round_rows[:, None] + block_t - 1).clamp(max=num_items)
    begin = torch.searchsorted(shifts, low, out_int32=True)  # [R, T]
    end = torch.searchsorted(shifts, high, out_int32=True)
    grad_items = torch.empty(items.shape, dtype=torch.float32 if interpreting() else items.dtype, device=device)
    _shifted_item_backward_kernel[(num_tiles,)](
        hidden_ptr=hidden.contiguous(), items_ptr=items.contiguous(), targets_ptr=targets.contiguous(), loss_ptr=loss,
        lse_ptr=lse, grad_loss_ptr=grad_loss, order_ptr=order, first_ptr=first, shifts_ptr=shifts, begin_ptr=begin,
        end_ptr=end, grad_items_ptr=grad_items, num_rows=num_rows, num_items=num_items, num_negatives=num_negatives,
        num_rounds=num_rounds, num_tiles=num_tiles, ignore_index=ignore_index, log_k=math.log(num_negatives),
        uniform_log_q=-math.log(num_items), grad_loss_stride=grad_loss.stride(0), key_ptr=key,
        LOGQ=logq_correction, BLOCK_T=block_t, DIM=dim, BLOCK_D=block_d(dim), num_warps=num_warps)
    return grad_items


def backward(hidden, items, targets, loss, lse, grad_loss, ignore_index, key, num_negatives, share, negatives,
             keep, alias, log_q, logq_correction, block_rows, shifted, grad_buffer_bytes):
    """(grad_hidden [M, D] in hidden's dtype, fp32 under the interpreter (whose casts truncate; the caller rounds),
    grad_items [N, D] in items' dtype, or fp32 under the interpreter for share="offsets"). `grad_loss` [M] may have
    any stride (the gradient of a mean is one value expanded).

    share="offsets" (`shifted`): the row-wise kernel writes only d hidden, `_shifted_item_backward_kernel` d
    items. Otherwise the item gradient accumulates in fp32 with atomics: in place for an fp32 table; otherwise in an
    fp32 buffer, [N, D] without a cap (grad_buffer_bytes=None), or of at most grad_buffer_bytes with one pass over
    the positions per catalog chunk of that many rows, each chunk cast into the gradient after its pass. The first
    pass also writes d hidden; the others regenerate every draw but gather and add only the rows of their chunk."""
    grad_dtype = torch.float32 if interpreting() else hidden.dtype
    grad_hidden = torch.empty(hidden.shape, dtype=grad_dtype, device=hidden.device)
    num_items, dim = items.shape
    grad_loss = grad_loss.float()
    lse = lse.contiguous()
    common = {"num_negatives": num_negatives, "ignore_index": ignore_index, "key": key, "shifted": shifted,
              "grad_loss_stride": grad_loss.stride(0)}
    if shifted:
        outputs = {"lse_ptr": lse, "grad_loss_ptr": grad_loss, "grad_hidden_ptr": grad_hidden,
                   "grad_items_ptr": grad_hidden}  # d items' pointer is unused when SHIFTED
        _launch("backward", hidden, items, targets, None, keep, alias, log_q, outputs,
                {**common, "chunk_start": 0, "chunk_end": num_items}, share, logq_correction, block_rows)
        return grad_hidden, _shifted_item_backward(hidden, items, targets, loss.contiguous(), lse, grad_loss,
                                                   ignore_index, key, num_negatives, logq_correction)
    chunk_rows = grad_chunk_rows(items, grad_buffer_bytes)
    if items.dtype == torch.float32:
        grad_items = buffer = torch.zeros(items.shape, dtype=torch.float32, device=items.device)
    else:
        grad_items = torch.empty_like(items)
        buffer = torch.empty(chunk_rows, dim, dtype=torch.float32, device=items.device)  # [chunk, D]
    for chunk_start in range(0, num_items, chunk_rows):
        chunk_end = min(chunk_start + chunk_rows, num_items)
        if buffer is not grad_items:
            buffer.zero_()
        outputs = {"lse_ptr": lse, "grad_loss_ptr": grad_loss, "grad_hidden_ptr": grad_hidden,
                   "grad_items_ptr": buffer}
        _launch("backward", hidden, items, targets, negatives, keep, alias, log_q, outputs,
                {**common, "chunk_start": chunk_start, "chunk_end": chunk_end}, share, logq_correction, block_rows)
        if buffer is not grad_items:
            grad_items[chunk_start:chunk_end].copy_(buffer[: chunk_end - chunk_start])
    return grad_hidden, grad_items
