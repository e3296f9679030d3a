"""The plain-PyTorch losses against the formulas of docs/losses.md, written out in float64 NumPy."""

import math

import numpy as np
import pytest
import torch

from cutrec.config import LossConfig
from cutrec.errors import CutrecError
from cutrec.losses import build_loss
from cutrec.losses.reference import (
    binary_cross_entropy,
    cross_entropy,
    gbce_beta,
    sampled_cross_entropy,
)
from cutrec.losses.sampling import NegativeDistribution


def _inputs(seed, m=23, n=37, d=11, ignored=0.25):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(m, d))
    items = rng.normal(size=(n, d))
    targets = rng.integers(0, n, size=m)
    targets[rng.random(m) < ignored] = -100
    return hidden, items, targets


def _torch(*arrays):
    return [torch.from_numpy(a) for a in arrays]


def _logsumexp(values):
    top = np.max(values)
    return top + math.log(np.sum(np.exp(values - top)))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("with_bias", [False, True])
def test_cross_entropy_matches_formula(seed, with_bias):
    hidden, items, targets = _inputs(seed)
    bias = np.random.default_rng(seed + 100).normal(size=items.shape[0]) if with_bias else None
    expected = []
    for i, y in enumerate(targets):
        if y == -100:
            continue
        logits = items @ hidden[i] + (bias if with_bias else 0.0)
        expected.append(_logsumexp(logits) - logits[y])
    h, w, t = _torch(hidden, items, targets)
    got = cross_entropy(h, w, t, bias=None if bias is None else torch.from_numpy(bias))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(np.mean(expected), rel=1e-12)
    per_position = cross_entropy(h, w, t, reduction="none", bias=None if bias is None else torch.from_numpy(bias))
    assert per_position[t == -100].abs().sum() == 0


def _sampled_formula(hidden, items, targets, negatives, log_q, logq_correction):
    """loss_i = logsumexp(s_i0, s_i1..s_iK) - s_i0 with logQ and accidental hits -> -inf (docs/losses.md)."""
    losses = []
    k = negatives.shape[-1]
    for i, y in enumerate(targets):
        if y == -100:
            continue
        row = negatives if negatives.ndim == 1 else negatives[i]
        scores = [hidden[i] @ items[y]]
        for n in row:
            if n == y:
                continue  # exp(-inf) adds nothing
            scores.append(hidden[i] @ items[n] - (math.log(k) + log_q[n] if logq_correction else 0.0))
        losses.append(_logsumexp(np.array(scores)) - scores[0])
    return np.mean(losses)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("logq_correction", [True, False])
@pytest.mark.parametrize("shared", [False, True])
def test_sampled_cross_entropy_matches_formula(seed, logq_correction, shared):
    hidden, items, targets = _inputs(seed)
    rng = np.random.default_rng(seed + 7)
    counts = rng.integers(1, 50, size=items.shape[0]).astype(np.float64)
    distribution = NegativeDistribution.popularity(torch.from_numpy(counts), alpha=0.7)
    shape = (9,) if shared else (len(targets), 9)
    negatives = rng.integers(0, items.shape[0], size=shape)
    negatives.flat[0] = max(targets[0], 0)  # force at least one accidental hit candidate
    log_q = distribution.probs.double().log().numpy()
    expected = _sampled_formula(hidden, items, targets, negatives, log_q, logq_correction)
    h, w, t, n = _torch(hidden, items, targets, negatives)
    got = sampled_cross_entropy(h, w, t, negatives=n, distribution=distribution, logq_correction=logq_correction)
    assert got.item() == pytest.approx(expected, rel=1e-5)  # log q is stored in float32


def test_sampled_equals_full_when_negatives_are_all_other_items():
    hidden, items, targets = _inputs(11, m=17, n=13)
    n = items.shape[0]
    safe = np.where(targets == -100, 0, targets)
    negatives = np.stack([np.array([j for j in range(n) if j != y]) for y in safe])  # [M, N - 1]
    h, w, t = _torch(hidden, items, targets)
    full = cross_entropy(h, w, t)
    sampled = sampled_cross_entropy(h, w, t, negatives=torch.from_numpy(negatives), logq_correction=False)
    shared = sampled_cross_entropy(h, w, t, negatives=torch.arange(n), logq_correction=False)
    assert sampled.item() == pytest.approx(full.item(), rel=1e-12)
    assert shared.item() == pytest.approx(full.item(), rel=1e-12)


def test_sampled_logq_approaches_full_softmax_with_many_negatives():
    hidden, items, targets = _inputs(5, m=8, n=50, d=4, ignored=0.0)
    h, w, t = _torch(hidden, items, targets)
    full = cross_entropy(h, w, t).item()
    estimate = sampled_cross_entropy(h, w, t, num_negatives=20000, seed=3).item()
    assert estimate == pytest.approx(full, rel=0.02)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("num_negatives,power", [(1, 1.0), (6, 1.0), (6, 0.37)])
def test_binary_cross_entropy_matches_formula(seed, num_negatives, power):
    hidden, items, targets = _inputs(seed)
    negatives = np.random.default_rng(seed).integers(0, items.shape[0], size=(len(targets), num_negatives))
    negatives[0, 0] = max(targets[0], 0)

    def log_sigmoid(x):
        return -np.logaddexp(0.0, -x)

    expected = []
    for i, y in enumerate(targets):
        if y == -100:
            continue
        value = -power * log_sigmoid(hidden[i] @ items[y])
        value -= sum(log_sigmoid(-(hidden[i] @ items[n])) for n in negatives[i] if n != y)
        expected.append(value)
    h, w, t, n = _torch(hidden, items, targets, negatives)
    got = binary_cross_entropy(h, w, t, negatives=n, positive_power=power)
    assert got.item() == pytest.approx(np.mean(expected), rel=1e-12)


def test_gbce_beta_formula():
    # gSASRec: alpha = K / (N - 1); beta = alpha * (t * (1 - 1/alpha) + 1/alpha)
    alpha = 256 / 999
    assert gbce_beta(256, 1000, 0.75) == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))
    assert gbce_beta(256, 1000, 0.0) == pytest.approx(1.0)  # t = 0 is plain BCE
    assert gbce_beta(999, 1000, 0.5) == pytest.approx(1.0)  # sampling everything: beta = 1


def test_padding_contributes_nothing_and_all_ignored_gives_zero():
    hidden, items, targets = _inputs(3, ignored=0.0)
    h, w, t = _torch(hidden, items, targets)
    for loss in (cross_entropy, sampled_cross_entropy, binary_cross_entropy):
        kwargs = {} if loss is cross_entropy else {"num_negatives": 4, "seed": 1}
        padded_h = torch.cat([h, torch.randn(5, h.shape[1], dtype=h.dtype)])
        padded_t = torch.cat([t, torch.full((5,), -100)])
        assert loss(padded_h, w, padded_t, **kwargs).item() == pytest.approx(loss(h, w, t, **kwargs).item(), rel=1e-12)
        none = torch.full_like(t, -100)
        h_grad = h.clone().requires_grad_()
        value = loss(h_grad, w, none, **kwargs)
        value.backward()
        assert value.item() == 0.0 and h_grad.grad.abs().sum() == 0


def test_same_seed_same_negatives_new_seed_new_negatives():
    hidden, items, targets = _inputs(4, m=30, n=500)
    h, w, t = _torch(hidden, items, targets)
    a = sampled_cross_entropy(h, w, t, num_negatives=8, seed=42)
    b = sampled_cross_entropy(h, w, t, num_negatives=8, seed=42)
    c = sampled_cross_entropy(h, w, t, num_negatives=8, seed=43)
    assert a.item() == b.item() and a.item() != c.item()


def test_build_loss_names_and_errors():
    counts = torch.arange(1, 21, dtype=torch.float32)
    h, w, t = torch.randn(6, 4), torch.randn(20, 4), torch.randint(0, 20, (6,))
    for name in ("CE", "CE-", "BCE", "BCE+", "gBCE"):
        loss = build_loss(LossConfig(name=name, num_negatives=5, distribution="popularity"), 20, counts)
        assert torch.isfinite(loss(h, w, t, seed=0))
    with pytest.raises(CutrecError, match="needs training item counts"):
        build_loss(LossConfig(distribution="popularity"), 20, None)


def test_bad_inputs_are_named():
    h, w = torch.randn(6, 4), torch.randn(20, 4)
    with pytest.raises(CutrecError, match="targets must be"):
        cross_entropy(h, w, torch.zeros(5, dtype=torch.long))
    with pytest.raises(CutrecError, match="items must be"):
        cross_entropy(h, torch.randn(20, 3), torch.zeros(6, dtype=torch.long))
    with pytest.raises(CutrecError, match="num_negatives=0"):
        sampled_cross_entropy(h, w, torch.zeros(6, dtype=torch.long), num_negatives=0)
    with pytest.raises(CutrecError, match="negatives must be item ids"):
        sampled_cross_entropy(h, w, torch.zeros(6, dtype=torch.long), negatives=torch.tensor([3, 25]))


@pytest.mark.parametrize("loss", [cross_entropy, sampled_cross_entropy, binary_cross_entropy])
@pytest.mark.parametrize("bad", [37, -5])
def test_target_outside_the_catalog_is_named(loss, bad):
    """A target that is neither an item id nor ignore_index is a user mistake: a CutrecError naming it, for every
    plain loss (the trainer, whose data pipeline checks ids once, passes check_targets=False)."""
    hidden, items, targets = _torch(*_inputs(4))
    targets[5] = bad
    with pytest.raises(CutrecError, match=f"target {bad} is not an item id in \\[0, 37\\)"):
        loss(hidden, items, targets, **({} if loss is cross_entropy else {"num_negatives": 3}))
