"""Sampled cut CE: equal to the plain CE- on the same negatives (torch and Triton), regenerated draws, hits, GPU."""

import importlib

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from cutrec.config import LossConfig
from cutrec.errors import CutrecError
from cutrec.losses import (
    LARGE_CATALOG_ITEMS,
    SampledCutCrossEntropy,
    build_loss,
    resolve_loss_name,
    sampled_cut_cross_entropy,
)
from cutrec.losses.reference import sampled_cross_entropy
from cutrec.losses.sampled_cut_cross_entropy import BLOCK_ROWS
from cutrec.losses.sampling import NegativeDistribution, counter_draws, key_tensor, shifted_draws, shifted_relabelling

sampled_module = importlib.import_module("cutrec.losses.sampled_cut_cross_entropy")  # the module, not the function
SHAPES = [(37, 101, 24), (130, 333, 17), (5, 7, 16)]  # (M, N, D), odd sizes; N=7 makes accidental hits common


def make_inputs(shape, dtype, seed, ignored=0.25):
    num_rows, num_items, dim = shape
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_rows, dim, generator=generator).to(dtype)
    items = (torch.randn(num_items, dim, generator=generator) * 2.0 / dim**0.5).to(dtype)
    targets = torch.randint(0, num_items, (num_rows,), generator=generator)
    targets[torch.rand(num_rows, generator=generator) < ignored] = -100
    targets[0] = 1
    return hidden, items, targets


def loss_and_grads(fn, hidden, items, targets, dtype=None, upstream=None, **kwargs):
    """[loss, d hidden, d items]; `upstream` [M] weights the per-position losses of reduction="none"."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (hidden, items)]
    loss = fn(leaves[0], leaves[1], targets, **kwargs)
    loss.backward(None if upstream is None else upstream.to(loss.dtype))
    return [loss.detach(), leaves[0].grad, leaves[1].grad]


def drawn(distribution, seed, num_rows, num_negatives, share):
    """The negatives the loss draws: [M, K] ids from counter_draws with the share mode's streams (shifted_draws for
    share="offsets")."""
    rows = torch.arange(num_rows)
    key = key_tensor(seed, distribution.num_items, "cpu")
    if share == "offsets":
        return shifted_draws(distribution.num_items, key, rows, num_negatives)
    streams = {"none": rows, "block": rows // BLOCK_ROWS, "batch": torch.zeros_like(rows)}[share]
    return counter_draws(distribution.num_items, key, streams, num_negatives, _alias_table(distribution))


def _alias_table(distribution):
    return None if distribution.probs is None else distribution.alias_table(torch.device("cpu"))


SHARE_AND_POPULARITY = [(share, popularity) for share in ("none", "block", "batch") for popularity in (False, True)]
SHARE_AND_POPULARITY.append(("offsets", False))  # share="offsets" draws uniformly only


@pytest.mark.parametrize("shape", SHAPES + [(300, 97, 16)])  # M > N: share="offsets" has several rounds
@pytest.mark.parametrize(("share", "popularity"), SHARE_AND_POPULARITY)
def test_equals_plain_sampled_ce_on_the_drawn_negatives(shape, share, popularity):
    """float64: loss and both gradients equal reference CE- given the very negatives the loss regenerates."""
    hidden, items, targets = make_inputs(shape, torch.float64, seed=sum(shape))
    counts = torch.from_numpy(np.random.default_rng(1).integers(1, 30, shape[1]).astype(np.float64))
    uniform = NegativeDistribution.uniform(shape[1])
    distribution = NegativeDistribution.popularity(counts, 0.8) if popularity else uniform
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, num_negatives=9,
                          distribution=distribution, share=share, seed=11)
    negatives = drawn(distribution, 11, shape[0], 9, share)
    truth = loss_and_grads(sampled_cross_entropy, hidden, items, targets, negatives=negatives,
                           distribution=distribution)
    for value, expected in zip(ours, truth, strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("explicit_shape", ["per_position", "shared"])
def test_explicit_negatives(explicit_shape):
    hidden, items, targets = make_inputs((40, 90, 12), torch.float64, seed=3)
    shape = (40, 6) if explicit_shape == "per_position" else (6,)
    negatives = torch.randint(0, 90, shape, generator=torch.Generator().manual_seed(4))
    for logq in (True, False):
        ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, num_negatives=1,
                              negatives=negatives, logq_correction=logq)
        truth = loss_and_grads(sampled_cross_entropy, hidden, items, targets, negatives=negatives,
                               logq_correction=logq)
        for value, expected in zip(ours, truth, strict=True):
            torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-12)


def test_bf16_no_worse_than_plain_bf16():
    """Acceptance rule of docs/losses.md on bf16 inputs (max-abs error, tolerance one bf16 ulp of max|truth|)."""
    hidden, items, targets = make_inputs((64, 500, 32), torch.bfloat16, seed=8)
    negatives = drawn(NegativeDistribution.uniform(500), 2, 64, 31, "none")
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, num_negatives=31, seed=2)
    truth = loss_and_grads(sampled_cross_entropy, hidden, items, targets, torch.float64, negatives=negatives)
    plain = loss_and_grads(sampled_cross_entropy, hidden, items, targets, negatives=negatives)
    for value, exact, baseline in zip(ours, truth, plain, strict=True):
        assert torch.isfinite(value).all()
        error = (value.double() - exact).abs().max().item()
        allowed = (baseline.double() - exact).abs().max().item() + 2**-8 * exact.abs().max().item()
        assert error <= allowed


def test_same_seed_same_loss_new_seed_new_negatives():
    hidden, items, targets = make_inputs((50, 1000, 16), torch.float32, seed=5)
    a = sampled_cut_cross_entropy(hidden, items, targets, num_negatives=16, seed=7)
    b = sampled_cut_cross_entropy(hidden, items, targets, num_negatives=16, seed=7)
    c = sampled_cut_cross_entropy(hidden, items, targets, num_negatives=16, seed=8)
    assert a.item() == b.item() != c.item()


def test_accidental_hits_are_never_counted():
    """N=2: about half of the negatives hit the target; the loss must equal the formula that drops them."""
    hidden, items, targets = make_inputs((30, 2, 8), torch.float64, seed=6, ignored=0.0)
    negatives = drawn(NegativeDistribution.uniform(2), 1, 30, 8, "none")
    hits = negatives == targets[:, None]
    assert hits.any() and (~hits).any()
    logits = hidden @ items.T  # [M, 2]
    other = logits.gather(1, (1 - targets)[:, None]).squeeze(1)  # the only non-target item
    positive = logits.gather(1, targets[:, None]).squeeze(1)
    non_hits = (~hits).sum(1)  # how many times the other item was drawn
    corrected = other - np.log(8) - np.log(0.5)  # logQ: log(K q) with q = 1/2
    scores = torch.stack([positive, corrected], 1)
    expected = torch.logsumexp(scores + torch.stack([torch.zeros(30), torch.log(non_hits.double())], 1), 1) - positive
    ours = sampled_cut_cross_entropy(hidden, items, targets, num_negatives=8, seed=1, reduction="none")
    torch.testing.assert_close(ours, expected)


def test_chunks_give_the_unchunked_result(monkeypatch):
    hidden, items, targets = make_inputs((70, 300, 16), torch.float64, seed=9)
    whole = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, num_negatives=20, seed=3)
    monkeypatch.setattr(sampled_module, "TORCH_CHUNK_BUDGET_BYTES", 20 * 16 * 4 * 7)  # chunks of 7 rows
    chunked = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, num_negatives=20, seed=3)
    for value, expected in zip(chunked, whole, strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)


def test_sharing_modes_share_exactly_as_documented():
    distribution = NegativeDistribution.uniform(10_000)
    block = drawn(distribution, 4, 3 * BLOCK_ROWS, 5, "block")
    assert (block[:BLOCK_ROWS] == block[0]).all() and not torch.equal(block[0], block[BLOCK_ROWS])
    batch = drawn(distribution, 4, 100, 5, "batch")
    assert (batch == batch[0]).all()
    none = drawn(distribution, 4, 100, 5, "none")
    assert not torch.equal(none[0], none[1])


@pytest.mark.parametrize("num_items", [97, 100, 7])  # prime, composite (a must be coprime to N), tiny
def test_offsets_are_translates_in_slot_space_and_uniform(num_items):
    """share="offsets": within a round of N positions, position m's k-th id is slot (m + r_k) mod N relabelled by
    (a t + b) mod N; rounds draw new offsets; the draws pooled over positions, and one position's over seeds, are
    uniform (chi-square)."""
    num_rows, num_negatives = 3 * num_items + 5, 40
    ids = shifted_draws(num_items, key_tensor(11, num_items, "cpu"), torch.arange(num_rows), num_negatives)  # [M, K]
    a, b = shifted_relabelling(num_items, 11)
    assert 1 <= a < max(num_items, 2) and np.gcd(a, num_items) == 1 and 0 <= b < num_items
    slots = (ids - b) * pow(a, -1, num_items) % num_items  # the inverse relabelling
    shifts = (slots - slots[0]) % num_items
    assert (shifts[:num_items] == torch.arange(num_items)[:, None]).all()  # round 0: translates of position 0
    assert not torch.equal(shifts[num_items], torch.zeros(num_negatives, dtype=torch.long))  # round 1: new offsets
    assert chisquare(np.bincount(ids.flatten().numpy(), minlength=num_items)).pvalue > 1e-3
    one_position = torch.cat([shifted_draws(num_items, key_tensor(seed, num_items, "cpu"), torch.tensor([5]),
                                            num_negatives)[0]
                              for seed in range(200)])
    assert chisquare(np.bincount(one_position.numpy(), minlength=num_items)).pvalue > 1e-3


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_counter_draws_follow_q(alpha):
    counts = torch.from_numpy(np.random.default_rng(2).zipf(1.5, 80).clip(max=400).astype(np.float64))
    q = (counts**alpha / (counts**alpha).sum()).numpy()
    popularity = NegativeDistribution.popularity(counts, alpha)
    ids = counter_draws(80, key_tensor(5, 80, "cpu"), torch.arange(3000), 100, _alias_table(popularity)).flatten()
    assert chisquare(np.bincount(ids.numpy(), minlength=80), q * ids.numel()).pvalue > 1e-3
    uniform = counter_draws(80, key_tensor(5, 80, "cpu"), torch.arange(3000), 100).flatten()
    assert chisquare(np.bincount(uniform.numpy(), minlength=80)).pvalue > 1e-3
    assert chisquare(np.bincount(uniform.numpy(), minlength=80), q * ids.numel()).pvalue < 1e-9


def test_auto_loss_is_ce_for_small_and_sampled_cut_ce_for_large_catalogs():
    assert LossConfig().name == "auto"
    assert resolve_loss_name("auto", LARGE_CATALOG_ITEMS) == "CE"
    assert resolve_loss_name("auto", LARGE_CATALOG_ITEMS + 1) == "CCE-"
    assert resolve_loss_name("BCE", 10**7) == "BCE"
    hidden, items, targets = make_inputs((20, 50, 8), torch.float32, seed=2)
    auto = build_loss(LossConfig(), 50)(hidden, items, targets, seed=1)
    torch.testing.assert_close(auto, build_loss(LossConfig(name="CE"), 50)(hidden, items, targets, seed=1))
    num_items = LARGE_CATALOG_ITEMS + 1
    large = torch.randn(num_items, 8) / 8**0.5
    config = LossConfig(num_negatives=16)
    expected = sampled_cut_cross_entropy(hidden, large, targets, num_negatives=16, seed=4)
    torch.testing.assert_close(build_loss(config, num_items)(hidden, large, targets, seed=4), expected)


def test_build_loss_and_errors():
    hidden, items, targets = make_inputs((20, 50, 8), torch.float32, seed=1)
    loss = build_loss(LossConfig(name="CCE-", num_negatives=5, share="block", distribution="popularity"), 50,
                      torch.arange(1, 51, dtype=torch.float32))
    assert torch.isfinite(loss(hidden, items, targets, seed=3))
    with pytest.raises(CutrecError, match="num_negatives=0"):
        sampled_cut_cross_entropy(hidden, items, targets, num_negatives=0)
    with pytest.raises(CutrecError, match="share='rows'"):
        sampled_cut_cross_entropy(hidden, items, targets, num_negatives=3, share="rows")
    with pytest.raises(CutrecError, match="needs item_counts"):
        sampled_cut_cross_entropy(hidden, items, targets, num_negatives=3, distribution="popularity")
    with pytest.raises(CutrecError, match="item ids in"):
        sampled_cut_cross_entropy(hidden, items, targets, num_negatives=3, negatives=torch.tensor([1, 60]))
    with pytest.raises(CutrecError, match="impl='cuda' is unknown"):
        sampled_cut_cross_entropy(hidden, items, targets, num_negatives=3, impl="cuda")
    with pytest.raises(CutrecError, match="share=\"offsets\" draws uniformly"):
        sampled_cut_cross_entropy(hidden, items, targets, num_negatives=3, share="offsets", distribution="popularity",
                                  item_counts=torch.ones(50))
    with pytest.raises(CutrecError, match="loss.share='offsets' draws uniformly"):
        build_loss(LossConfig(name="CCE-", share="offsets", distribution="popularity"), 50, torch.ones(50))
    with pytest.raises(CutrecError, match="grad_buffer_bytes=100.5 must be an int"):
        sampled_cut_cross_entropy(hidden, items, targets, num_negatives=3, grad_buffer_bytes=100.5)
    with pytest.raises(CutrecError, match="grad_buffer_bytes=31 holds no fp32 row of D=8"):
        sampled_cut_cross_entropy(hidden, items, targets, num_negatives=3, grad_buffer_bytes=31)


def test_module_builds_the_popularity_distribution_once():
    hidden, items, targets = make_inputs((20, 50, 8), torch.float32, seed=2)
    counts = torch.arange(1, 51, dtype=torch.float32)
    module = SampledCutCrossEntropy(num_negatives=5, distribution="popularity", item_counts=counts, alpha=0.5)
    assert isinstance(module.options["distribution"], NegativeDistribution)
    assert "item_counts" not in module.options and "alpha" not in module.options
    expected = sampled_cut_cross_entropy(hidden, items, targets, num_negatives=5, distribution="popularity",
                                         item_counts=counts, alpha=0.5, seed=4)
    torch.testing.assert_close(module(hidden, items, targets, seed=4), expected, rtol=0, atol=0)
    with pytest.raises(CutrecError, match="needs item_counts"):
        SampledCutCrossEntropy(num_negatives=5, distribution="popularity")
    with pytest.raises(CutrecError, match="draws uniformly"):
        SampledCutCrossEntropy(num_negatives=5, distribution="popularity", item_counts=counts, share="offsets")


@pytest.mark.parametrize(("share", "popularity"), SHARE_AND_POPULARITY)
@pytest.mark.parametrize("shape", [(70, 211, 24), (300, 97, 24)])
def test_triton_kernels_match_the_torch_implementation(share, popularity, shape):
    """Same seed, same drawn negatives: the interpreted kernels give the PyTorch implementation's loss and grads.
    Odd sizes; several row-wise blocks of 8 rows and tiled blocks of 64 rows; M > N for share="offsets"'s rounds."""
    hidden, items, targets = make_inputs(shape, torch.float32, seed=13)
    counts = torch.from_numpy(np.random.default_rng(3).integers(1, 40, shape[1]).astype(np.float64))
    uniform = NegativeDistribution.uniform(shape[1])
    distribution = NegativeDistribution.popularity(counts, 0.7) if popularity else uniform
    options = {"num_negatives": 21, "distribution": distribution, "share": share, "seed": 5}
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, impl="triton", **options)
    torch_impl = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, impl="torch", **options)
    for value, expected in zip(ours, torch_impl, strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("num_rows", "num_items", "num_negatives", "ignore_index"),
    [(5, 1, 3, -100), (40, 2, 5, -100), (50, 3, 4, 0), (1, 50, 4, -100), (33, 33, 1, -100), (65, 64, 2, 3),
     (2000, 37, 3, -100), (30, 20, 6, "all")],
)
def test_offsets_kernels_on_edge_shapes(num_rows, num_items, num_negatives, ignore_index):
    """share="offsets": the item-major kernel against float64 CE- on the drawn ids with N below one tile, N = 1 or 2,
    one position, one negative, M a tile more than N, many rounds, ignore_index equal to an item id, and every row
    ignored."""
    hidden, items, targets = make_inputs((num_rows, num_items, 16), torch.float32, seed=num_rows + num_items)
    targets[targets >= num_items] = num_items - 1  # make_inputs sets target 1 in row 0
    if ignore_index == "all":
        targets, ignore_index = torch.full_like(targets, -100), -100
    targets[targets == -100] = ignore_index  # item ignore_index's rows and make_inputs' padding are both ignored
    options = {"num_negatives": num_negatives, "share": "offsets", "seed": 9, "ignore_index": ignore_index}
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, impl="triton", **options)
    negatives = shifted_draws(num_items, key_tensor(9, num_items, "cpu"), torch.arange(num_rows), num_negatives)
    truth = loss_and_grads(sampled_cross_entropy, hidden, items, targets, torch.float64, negatives=negatives,
                           ignore_index=ignore_index)
    for value, exact in zip(ours, truth, strict=True):
        torch.testing.assert_close(value.double(), exact, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("share", ["none", "block", "offsets"])
def test_target_outside_the_catalog(impl, share):
    """Checked (the default): a CutrecError naming the id. Unchecked: that row's loss is NaN, the others are the
    checked loss's, nothing is read outside the item table, and the backward runs with every row's d hidden finite
    (the row without a target gets its negatives' part: tests/test_catalog_parallel.py checks its values)."""
    hidden, items, targets = make_inputs((70, 211, 24), torch.float32, seed=31)
    targets[7], targets[8] = 211, 5
    options = {"num_negatives": 9, "share": share, "seed": 2, "impl": impl, "reduction": "none"}
    with pytest.raises(CutrecError, match="target 211 is not an item id in \\[0, 211\\)"):
        sampled_cut_cross_entropy(hidden, items, targets, **options)
    unchecked = sampled_cut_cross_entropy(hidden, items, targets, check_targets=False, **options)
    targets[7] = -100
    expected = sampled_cut_cross_entropy(hidden, items, targets, **options)
    others = torch.arange(70) != 7
    assert torch.isnan(unchecked[7])
    torch.testing.assert_close(unchecked[others], expected[others], rtol=1e-5, atol=1e-6)
    targets[7] = 211
    hidden.requires_grad_()
    sampled_cut_cross_entropy(hidden, items.requires_grad_(), targets, check_targets=False, **options).sum().backward()
    assert torch.isfinite(hidden.grad).all()


@pytest.mark.parametrize("share", ["none", "block", "offsets"])
def test_triton_kernels_with_per_position_upstream_gradients(share):
    """reduction="none" and a random upstream gradient per position (the kernels read it at stride 1, the expanded
    gradient of a mean at stride 0)."""
    hidden, items, targets = make_inputs((70, 211, 24), torch.float32, seed=19)
    upstream = torch.rand(70, generator=torch.Generator().manual_seed(4))
    options = {"num_negatives": 21, "share": share, "seed": 6, "reduction": "none", "upstream": upstream}
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, impl="triton", **options)
    torch_impl = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, impl="torch", **options)
    for value, expected in zip(ours, torch_impl, strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("share", ["none", "block", "offsets"])
def test_non_finite_upstream_on_ignored_rows_does_not_leak(impl, share):
    """reduction="none": an ignored row's upstream gradient (here nan and inf) must not reach any gradient."""
    hidden, items, targets = make_inputs((70, 211, 24), torch.float32, seed=29)
    targets[1::2] = -100
    upstream = torch.rand(70, generator=torch.Generator().manual_seed(5))
    upstream[1], upstream[3] = float("nan"), float("inf")
    _, grad_hidden, grad_items = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, impl=impl,
                                                num_negatives=21, share=share, seed=2, reduction="none",
                                                upstream=upstream)
    assert torch.isfinite(grad_hidden).all() and torch.isfinite(grad_items).all()
    assert not grad_hidden[1::2].any()


@pytest.mark.parametrize(("share", "popularity"), [("none", False), ("block", True), ("batch", False)])
def test_triton_item_gradient_in_catalog_chunks(share, popularity):
    """grad_buffer_bytes: a bf16 item table's gradient accumulates in fp32 chunks, one pass per chunk: here 6
    chunks of 37 rows (the last one 26), against one buffer for the whole catalog, and against float64."""
    kernels = importlib.import_module("cutrec.kernels.sampled_cut_cross_entropy")
    hidden, items, targets = make_inputs((70, 211, 24), torch.bfloat16, seed=31)
    counts = torch.from_numpy(np.random.default_rng(7).integers(1, 40, 211).astype(np.float64))
    distribution = NegativeDistribution.popularity(counts, 0.7) if popularity else NegativeDistribution.uniform(211)
    options = {"num_negatives": 21, "distribution": distribution, "share": share, "seed": 8}
    whole = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, impl="triton", **options)
    assert kernels.grad_chunk_rows(items, 37 * 24 * 4 + 5) == 37
    chunked = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, impl="triton",
                             grad_buffer_bytes=37 * 24 * 4 + 5, **options)
    for value, expected in zip(chunked, whole, strict=True):
        torch.testing.assert_close(value, expected, rtol=0, atol=0)  # the same adds in the same order per row
    negatives = drawn(distribution, 8, 70, 21, share)
    truth = loss_and_grads(sampled_cross_entropy, hidden, items, targets, torch.float64, negatives=negatives,
                           distribution=distribution)
    for value, exact in zip(chunked, truth, strict=True):
        torch.testing.assert_close(value.double(), exact, rtol=2**-7, atol=2**-8 * exact.abs().max().item())


@pytest.mark.parametrize("explicit_shape", [(70, 9), (9,)])
def test_triton_kernels_with_explicit_negatives(explicit_shape):
    hidden, items, targets = make_inputs((70, 100, 16), torch.float32, seed=14)
    negatives = torch.randint(0, 100, explicit_shape, generator=torch.Generator().manual_seed(2))
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, num_negatives=1, negatives=negatives,
                          impl="triton")
    truth = loss_and_grads(sampled_cross_entropy, hidden, items, targets, torch.float64, negatives=negatives)
    for value, expected in zip(ours, truth, strict=True):
        torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_non_contiguous_explicit_negatives(impl):
    hidden, items, targets = make_inputs((70, 100, 16), torch.float32, seed=15)
    negatives = torch.randint(0, 100, (9, 70), generator=torch.Generator().manual_seed(3)).T  # [M, K], transposed
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, num_negatives=1, negatives=negatives,
                          impl=impl)
    truth = loss_and_grads(sampled_cross_entropy, hidden, items, targets, torch.float64, negatives=negatives)
    for value, expected in zip(ours, truth, strict=True):
        torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=1e-5)


def test_implementation_choice():
    """auto: Triton on CUDA, torch for float64 and, for the modes with atomics, in deterministic mode, where
    impl="triton" is refused; share="offsets" (no atomics) keeps Triton there."""
    cuda = torch.device("cuda")  # only the choice is computed here: no CUDA needed
    assert sampled_module._resolve_impl("auto", cuda, 64, torch.bfloat16) == "triton"
    assert sampled_module._resolve_impl("auto", cuda, 64, torch.float64) == "torch"
    assert sampled_module._resolve_impl("auto", torch.device("cpu"), 64, torch.float32) == "torch"
    torch.use_deterministic_algorithms(True)
    try:
        assert sampled_module._resolve_impl("auto", cuda, 64, torch.bfloat16) == "torch"
        with pytest.raises(CutrecError, match="use_deterministic_algorithms"):
            sampled_module._resolve_impl("triton", cuda, 64, torch.bfloat16)
        assert sampled_module._resolve_impl("auto", cuda, 64, torch.bfloat16, atomic=False) == "triton"
        assert sampled_module._resolve_impl("triton", cuda, 64, torch.bfloat16, atomic=False) == "triton"
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("share", ["block", "offsets"])
def test_compile_fullgraph_matches_eager(impl, share):
    """The custom ops trace under torch.compile(fullgraph=True); a new seed each step reuses the graph."""
    hidden, items, targets = make_inputs((40, 120, 16), torch.float32, seed=21)
    distribution = NegativeDistribution.popularity(torch.arange(1, 121, dtype=torch.float64), 0.5)
    distribution = distribution if share == "block" else NegativeDistribution.uniform(120)

    def loss(h, w, t, seed):
        return sampled_cut_cross_entropy(h, w, t, num_negatives=7, distribution=distribution, share=share,
                                         seed=seed, impl=impl)

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    for seed in (3, 4):
        expected = loss_and_grads(loss, hidden, items, targets, seed=seed)
        ours = loss_and_grads(compiled, hidden, items, targets, seed=seed)
        for value, reference in zip(ours, expected, strict=True):
            torch.testing.assert_close(value, reference)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _gpu_distribution(popularity: bool, num_items: int):
    counts = torch.from_numpy(np.random.default_rng(num_items).zipf(1.3, num_items).clip(max=10**5).astype(np.float64))
    return NegativeDistribution.popularity(counts, 0.75) if popularity else NegativeDistribution.uniform(num_items)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize(
    ("share", "popularity", "dim", "dtype"),
    [
        ("none", False, 64, torch.bfloat16),
        ("none", True, 100, torch.float32),
        ("block", False, 64, torch.bfloat16),
        ("block", True, 256, torch.bfloat16),
        ("batch", False, 100, torch.float32),
        ("batch", True, 64, torch.bfloat16),
        ("offsets", False, 64, torch.bfloat16),
        ("offsets", False, 100, torch.float32),
    ],
)
def test_gpu_kernels_match_float64_reference(share, popularity, dim, dtype):
    """Realistic shapes: the acceptance rule of docs/losses.md against float64 CE- on the very negatives drawn."""
    num_rows, num_items, num_negatives = 4099, 100_003, 255
    hidden, items, targets = (t.cuda() for t in make_inputs((num_rows, num_items, dim), dtype, seed=dim))
    distribution = _gpu_distribution(popularity, num_items)
    options = {"num_negatives": num_negatives, "distribution": distribution, "share": share, "seed": 17}
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, impl="triton", **options)
    negatives = drawn(distribution, 17, num_rows, num_negatives, share).cuda()
    truth = loss_and_grads(sampled_cross_entropy, hidden, items, targets, torch.float64, negatives=negatives,
                           distribution=distribution)
    plain = loss_and_grads(sampled_cross_entropy, hidden, items, targets, negatives=negatives,
                           distribution=distribution)
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 2**-8}[dtype]
    for name, value, exact, baseline in zip(("loss", "hidden", "items"), ours, truth, plain, strict=True):
        assert torch.isfinite(value).all(), name
        error = (value.double() - exact).abs().max().item()
        allowed = (baseline.double() - exact).abs().max().item() + tolerance * exact.abs().max().item()
        assert error <= allowed, f"{name}: error {error:.3g} > allowed {allowed:.3g}"


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("share", ["block", "batch"])
def test_gpu_tiled_kernels_round_an_fp32_table_like_autocast(share):
    """bf16 hidden with an fp32 item table (mixed-precision training): the tiled kernels score the rows rounded to
    bf16 on the tensor cores, so the truth is float64 CE- on the rounded table; the fp32 item gradient is the
    gradient with respect to the rounded rows, as autocast gives for a matrix product."""
    num_rows, num_items, dim, num_negatives = 4099, 100_003, 64, 255
    hidden, items, targets = (t.cuda() for t in make_inputs((num_rows, num_items, dim), torch.float32, seed=23))
    hidden = hidden.bfloat16()
    distribution = NegativeDistribution.uniform(num_items)
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, impl="triton", num_negatives=num_negatives,
                          share=share, seed=5)
    assert ours[2].dtype == torch.float32
    negatives = drawn(distribution, 5, num_rows, num_negatives, share).cuda()
    rounded = items.bfloat16()
    truth = loss_and_grads(sampled_cross_entropy, hidden, rounded, targets, torch.float64, negatives=negatives)
    plain = loss_and_grads(sampled_cross_entropy, hidden, rounded, targets, negatives=negatives)
    for name, value, exact, baseline in zip(("loss", "hidden", "items"), ours, truth, plain, strict=True):
        assert torch.isfinite(value).all(), name
        error = (value.double() - exact).abs().max().item()
        allowed = (baseline.double() - exact).abs().max().item() + 2**-8 * exact.abs().max().item()
        assert error <= allowed, f"{name}: error {error:.3g} > allowed {allowed:.3g}"


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("hidden_dtype", [torch.float16, torch.float64])
def test_gpu_tiled_kernels_with_fp16_or_fp64_hidden_and_an_fp32_table(hidden_dtype):
    """These pairs take IEEE fp32 dots (no tensor cores): the kernels agree with the torch implementation, which
    computes in fp32 (fp16 hidden) or fp64."""
    hidden, items, targets = (t.cuda() for t in make_inputs((4099, 20_011, 64), torch.float32, seed=37))
    hidden = hidden.to(hidden_dtype)
    options = {"num_negatives": 255, "share": "block", "seed": 4}
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, impl="triton", **options)
    torch_impl = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, impl="torch", **options)
    for value, expected in zip(ours, torch_impl, strict=True):
        assert value.dtype == expected.dtype and torch.isfinite(value).all()
        torch.testing.assert_close(value.double(), expected.double(), rtol=2e-3, atol=1e-7)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("explicit_shape", [(3001, 77), (77,)])
def test_gpu_kernels_with_explicit_negatives(explicit_shape):
    hidden, items, targets = (t.cuda() for t in make_inputs((3001, 20_011, 48), torch.float32, seed=31))
    negatives = torch.randint(0, 20_011, explicit_shape, device="cuda")
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, num_negatives=1, negatives=negatives,
                          impl="triton")
    truth = loss_and_grads(sampled_cross_entropy, hidden, items, targets, torch.float64, negatives=negatives)
    for value, expected in zip(ours, truth, strict=True):
        torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=1e-6)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize(("share", "popularity"), [("none", False), ("block", True), ("batch", False),
                                                   ("offsets", False)])
def test_gpu_a_target_outside_the_table_scores_the_negatives_alone(share, popularity):
    """The catalog-parallel loss's rows whose target another shard holds (id -1 here): on the GPU the kernels give
    them a NaN loss and, like the float64 PyTorch implementation, the gradients of their negatives alone."""
    hidden, items, targets = (t.cuda() for t in make_inputs((1031, 5003, 64), torch.float32, seed=5))
    targets[::3] = -1
    options = {"num_negatives": 63, "distribution": _gpu_distribution(popularity, 5003), "share": share, "seed": 8,
               "reduction": "none", "check_targets": False}
    upstream = torch.ones(1031, device="cuda")
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, upstream=upstream, impl="triton",
                          **options)
    exact = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, torch.float64, upstream, impl="torch",
                           **options)
    outside = targets == -1
    assert torch.isnan(ours[0][outside]).all() and torch.isnan(exact[0][outside]).all()
    torch.testing.assert_close(ours[0][~outside].double(), exact[0][~outside], rtol=1e-4, atol=1e-5)
    for value, reference in zip(ours[1:], exact[1:], strict=True):
        torch.testing.assert_close(value.double(), reference, rtol=1e-4, atol=1e-5)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("share", ["none", "block", "batch", "offsets"])
def test_gpu_loss_and_hidden_gradient_are_bit_deterministic(share):
    """Loss and hidden gradient are bit-identical per seed; the item gradient too for share="offsets" (written once
    per row), while the other modes add it with atomics (documented)."""
    hidden, items, targets = (t.cuda() for t in make_inputs((5000, 50_000, 64), torch.bfloat16, seed=41))
    runs = [loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, num_negatives=511, share=share,
                           seed=3, impl="triton") for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    if share == "offsets":
        assert torch.equal(runs[0][2], runs[1][2])
    torch.testing.assert_close(runs[0][2], runs[1][2])


@gpu
@pytest.mark.gpu
def test_gpu_deterministic_mode_picks_the_torch_implementation():
    hidden, items, targets = (t.cuda() for t in make_inputs((3000, 20_000, 64), torch.float32, seed=43))
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        assert sampled_module._resolve_impl("auto", hidden.device, 64, hidden.dtype) == "torch"
        with pytest.raises(CutrecError, match="use_deterministic_algorithms"):
            sampled_cut_cross_entropy(hidden, items, targets, num_negatives=63, impl="triton")
        runs = [loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, num_negatives=63, seed=2)
                for _ in range(2)]
        offsets = [loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, num_negatives=63, seed=2,
                                  share="offsets", impl="triton") for _ in range(2)]  # no atomics: allowed
    finally:
        torch.use_deterministic_algorithms(False)
    for first, second in zip(*runs, strict=True):
        assert torch.equal(first, second)
    for first, second in zip(*offsets, strict=True):
        assert torch.equal(first, second)


@gpu
@pytest.mark.gpu
def test_gpu_build_loss_with_item_counts_on_the_gpu():
    """The trainer passes training counts on its device; the alias table is built on the CPU, then copied once."""
    hidden, items, targets = (t.cuda() for t in make_inputs((300, 1000, 16), torch.float32, seed=45))
    counts = torch.arange(1, 1001, dtype=torch.float32, device="cuda")
    loss = build_loss(LossConfig(name="CCE-", num_negatives=31, share="none", distribution="popularity"), 1000, counts)
    assert torch.isfinite(loss(hidden, items, targets, seed=1))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("share", ["block", "offsets"])
def test_gpu_compile_inductor_matches_eager(share):
    hidden, items, targets = (t.cuda() for t in make_inputs((1000, 5003, 64), torch.float32, seed=44))

    def loss(h, w, t, seed):
        return sampled_cut_cross_entropy(h, w, t, num_negatives=127, share=share, seed=seed)

    compiled = torch.compile(loss, fullgraph=True)
    for seed in (1, 2):
        expected = loss_and_grads(loss, hidden, items, targets, seed=seed)
        ours = loss_and_grads(compiled, hidden, items, targets, seed=seed)
        for value, reference in zip(ours, expected, strict=True):
            torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-6)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("share", ["none", "block", "batch", "offsets"])
@pytest.mark.parametrize("item_dtype", [torch.float32, torch.bfloat16])
def test_gpu_extra_memory_of_a_training_step(share, item_dtype):
    """M=131072, K=1023, N=1M, D=64, bf16 hidden with an fp32 item table (as in training), or a bf16 one whose fp32
    gradient buffer is capped at 48 MiB (share="offsets" has none): below 64 MB."""
    num_rows, num_items, dim = 131072, 1_000_000, 64
    hidden = torch.randn(num_rows, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    items = (torch.randn(num_items, dim, device="cuda") / dim**0.5).to(item_dtype).requires_grad_()
    targets = torch.randint(0, num_items, (num_rows,), device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = sampled_cut_cross_entropy(hidden, items, targets, num_negatives=1023, share=share, seed=1,
                                     grad_buffer_bytes=None if share == "offsets" else 48 * 2**20)
    grads = torch.autograd.grad(loss, (hidden, items))
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before - sum(g.nbytes for g in grads)
    assert extra < 64 * 2**20, f"extra memory {extra / 2**20:.1f} MiB"


@pytest.mark.parametrize(("share", "popularity"), SHARE_AND_POPULARITY)
def test_triton_padded_tail_of_ignored_rows(share, popularity):
    """The trainer's static-shape batches end in ignored rows, which the kernels skip in whole blocks (no draws);
    loss and gradients stay those of float64 CE- on the drawn negatives."""
    hidden, items, targets = make_inputs((200, 150, 16), torch.float32, seed=41)
    targets[70:] = -100  # the padding: every block past the first 70 rows
    counts = torch.from_numpy(np.random.default_rng(2).integers(1, 30, 150).astype(np.float64))
    distribution = NegativeDistribution.popularity(counts, 0.8) if popularity else NegativeDistribution.uniform(150)
    ours = loss_and_grads(sampled_cut_cross_entropy, hidden, items, targets, num_negatives=13,
                          distribution=distribution, share=share, seed=5, impl="triton")
    truth = loss_and_grads(sampled_cross_entropy, hidden, items, targets, torch.float64,
                           negatives=drawn(distribution, 5, 200, 13, share), distribution=distribution)
    for value, expected in zip(ours, truth, strict=True):
        torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=1e-5)
