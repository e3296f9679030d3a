"""Negative distributions: draws follow q (chi-square), and the test can tell a wrong q apart; the uniform mix."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from cutrec.config import build_config
from cutrec.errors import CutrecError
from cutrec.losses.sampling import NegativeDistribution, seeded_generator


def _draw_counts(distribution, draws, seed):
    ids = distribution.sample((draws,), seeded_generator(seed, torch.device("cpu")), torch.device("cpu"))
    return np.bincount(ids.numpy(), minlength=distribution.num_items)


def test_uniform_draws_pass_chi_square():
    distribution = NegativeDistribution.uniform(97)
    observed = _draw_counts(distribution, 200_000, seed=1)
    assert chisquare(observed).pvalue > 1e-3


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_popularity_draws_pass_chi_square_and_uniform_fails(alpha):
    counts = torch.from_numpy(np.random.default_rng(2).zipf(1.5, size=60).astype(np.float64).clip(max=500))
    distribution = NegativeDistribution.popularity(counts, alpha)
    q = counts.double().pow(alpha)
    q = (q / q.sum()).numpy()
    draws = 300_000
    observed = _draw_counts(distribution, draws, seed=3)
    assert chisquare(observed, q * draws).pvalue > 1e-3
    uniform = _draw_counts(NegativeDistribution.uniform(60), draws, seed=3)
    assert chisquare(uniform, q * draws).pvalue < 1e-9


def test_popularity_log_q_and_zero_counts():
    counts = torch.tensor([0.0, 1.0, 3.0])
    distribution = NegativeDistribution.popularity(counts, 1.0)
    assert distribution.log_q(torch.tensor([1, 2])).tolist() == pytest.approx(np.log([0.25, 0.75]).tolist())
    assert _draw_counts(distribution, 10_000, seed=0)[0] == 0
    assert NegativeDistribution.uniform(8).log_q(torch.tensor([3])).item() == pytest.approx(-np.log(8))


def test_bad_counts_are_refused():
    with pytest.raises(CutrecError, match="all zero"):
        NegativeDistribution.popularity(torch.zeros(4))
    with pytest.raises(CutrecError, match="non-negative"):
        NegativeDistribution.popularity(torch.tensor([1.0, -2.0]))


@pytest.mark.parametrize("mix", [0.3, 1.0])
def test_a_uniform_mix_draws_from_the_mixture_and_reaches_items_without_counts(mix):
    rng = np.random.default_rng()
    counts = torch.from_numpy(rng.zipf(1.6, size=int(rng.integers(40, 90))).astype(np.float64).clip(max=400))
    counts[:3] = 0  # never drawn by popularity alone
    distribution = NegativeDistribution.popularity(counts, 0.8, uniform_mix=mix)
    q = counts.double().pow(0.8)
    q = ((1 - mix) * q / q.sum() + mix / counts.numel()).numpy()
    torch.testing.assert_close(distribution.log_q(torch.arange(counts.numel())).double(), torch.from_numpy(np.log(q)),
                               rtol=1e-6, atol=1e-6)
    draws = 300_000
    observed = _draw_counts(distribution, draws, seed=int(rng.integers(1 << 30)))
    assert chisquare(observed, q * draws).pvalue > 1e-4
    assert observed[:3].min() > 0


def test_a_uniform_mix_is_refused_out_of_range_and_without_popularity():
    with pytest.raises(CutrecError, match=r"uniform_mix=1.5 must be in \[0, 1\]"):
        NegativeDistribution.popularity(torch.ones(4), 1.0, uniform_mix=1.5)
    with pytest.raises(CutrecError, match="loss.uniform_mix=0.2 is out of range: it mixes uniform draws into "
                                          "popularity sampling"):
        build_config(None, ["loss.name=CCE-", "loss.uniform_mix=0.2"])
    with pytest.raises(CutrecError, match=r"loss.uniform_mix=-0.1 is out of range"):
        build_config(None, ["loss.uniform_mix=-0.1"])
