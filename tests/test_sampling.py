"""Negative distributions: draws follow q (chi-square), and the test can tell a wrong q apart."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

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
