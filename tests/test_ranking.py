"""Tests for chunked full-catalog top-k: hand cases, brute force on random data, exclusion, ties, errors."""

import numpy as np
import pytest
import torch

from cutrec.errors import CutrecError
from cutrec.eval import most_popular_top_k, popularity_scores, top_k_items
from cutrec.eval.ranking import PopularityOrder, _rank_keys, keys_to_scores, top_k_keys


def brute_top_k(users, items, k, bias=None, exclude=None):
    """The whole [U, N] score matrix, excluded entries -inf, stable descending sort (ties: lower id first)."""
    scores = users.double() @ items.double().T  # [U, N]
    if bias is not None:
        scores += bias.double()
    if exclude is not None:
        offsets, excluded = exclude
        for u in range(len(offsets) - 1):
            scores[u, excluded[offsets[u] : offsets[u + 1]]] = float("-inf")
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # [U, k]


def random_exclusions(generator, num_users, num_items, max_per_user=6):
    """CSR exclusions with repeats, whose offsets start past junk entries that must be ignored."""
    lengths = torch.randint(0, max_per_user + 1, (num_users,), generator=generator)
    junk = 3
    offsets = junk + torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])  # [U + 1]
    items = torch.randint(0, num_items, (int(offsets[-1]) + junk,), generator=generator)  # [junk + E + junk]
    return offsets, items


def test_hand_example():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[3.0, 0.0], [1.0, 2.0], [3.0, 1.0], [0.0, 5.0]])
    # user 0 scores [3, 1, 3, 0]: items 0 and 2 tie at 3 -> 0 first, then 2, then 1 (score 1).
    # user 1 scores [0, 2, 1, 5]: 3, 1, 2.
    expected = torch.tensor([[0, 2, 1], [3, 1, 2]])
    for chunk in (1, 2, 3, 4, 100):
        result = top_k_items(users, items, 3, item_chunk=chunk)
        assert result.dtype == torch.int64
        assert torch.equal(result, expected)


def test_hand_example_bias_and_exclusion():
    users = torch.tensor([[1.0], [2.0]])
    items = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    bias = torch.tensor([10.0, 0.0, 0.0, -4.0])
    # user 0 scores [11, 2, 3, 0], excludes item 0 -> 2, 1, 3.
    # user 1 scores [12, 4, 6, 4], excludes items 2 and 2 again -> 0, then 1 and 3 tie at 4 -> 1, 3.
    exclude = (torch.tensor([0, 1, 3]), torch.tensor([0, 2, 2]))
    result = top_k_items(users, items, 3, item_bias=bias, exclude=exclude, item_chunk=3)
    assert result.tolist() == [[2, 1, 3], [0, 1, 3]]


@pytest.mark.parametrize(
    ("num_items", "item_chunk", "k"),
    [(53, 65536, 5), (53, 10, 13), (53, 1, 7), (53, 53, 20), (64, 16, 3), (97, 7, 1), (9, 2, 3)],
)
def test_matches_brute_force_with_ties(num_items, item_chunk, k):
    # Small integer-valued vectors: scores are exact in float32 and full of ties, so ids must match exactly.
    generator = torch.Generator().manual_seed(num_items * 1000 + item_chunk + k)
    num_users, dim = 11, 3
    users = torch.randint(-2, 3, (num_users, dim), generator=generator).float()
    items = torch.randint(-2, 3, (num_items, dim), generator=generator).float()
    bias = torch.randint(-2, 3, (num_items,), generator=generator).float()
    exclude = random_exclusions(generator, num_users, num_items, max_per_user=min(6, num_items - k))
    for item_bias in (None, bias):
        for excluded in (None, exclude):
            result = top_k_items(users, items, k, item_bias=item_bias, exclude=excluded, item_chunk=item_chunk)
            assert torch.equal(result, brute_top_k(users, items, k, item_bias, excluded))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_random_floats_match_brute_force(dtype):
    generator = torch.Generator().manual_seed(7)
    users = torch.randn(13, 8, generator=generator).to(dtype)
    items = torch.randn(301, 8, generator=generator).to(dtype)
    bias = torch.randn(301, generator=generator).to(dtype)
    exclude = random_exclusions(generator, 13, 301, max_per_user=40)
    result = top_k_items(users, items, 17, item_bias=bias, exclude=exclude, item_chunk=64)
    expected = brute_top_k(users.float(), items.float(), 17, bias.float(), exclude)
    assert torch.equal(result, expected)


def test_candidates_give_the_keys_of_every_score_and_flag_ties():
    """Fresh random inputs, odd shapes: the 2k candidates of each chunk give exactly the keys that keying every
    score gives; a tie between a chunk's k-th and 2k-th score is flagged (and top_k_items still matches the
    brute force)."""
    rng = np.random.default_rng()
    num_users, num_items, dim = int(rng.integers(1, 40)), int(rng.integers(30, 400)), int(rng.integers(1, 9))
    k, chunk = int(rng.integers(1, 12)), int(rng.integers(25, 120))
    users, items = torch.randn(num_users, dim), torch.randn(num_items, dim)
    exclude = random_exclusions(torch.Generator().manual_seed(int(rng.integers(1 << 30))), num_users, num_items)
    fast, exact = top_k_keys(users, items, k, exclude=exclude, item_chunk=chunk)
    every, _ = top_k_keys(users, items, k, exclude=exclude, item_chunk=chunk, every_key=True)
    assert bool(exact) and torch.equal(fast, every)
    scores = users.double() @ items.double().T  # [U, N]
    offsets, excluded = exclude
    for u in range(num_users):
        scores[u, excluded[offsets[u] : offsets[u + 1]]] = float("-inf")
    best = torch.sort(scores, dim=1, descending=True).values[:, :k]  # [U, k]
    torch.testing.assert_close(keys_to_scores(fast).double(), best, rtol=1e-5, atol=1e-5)
    assert torch.equal(top_k_items(users, items, k, exclude=exclude, item_chunk=chunk),
                       brute_top_k(users, items, k, exclude=exclude))
    tied = torch.ones(3, 1)  # every score 1.0: the candidates cannot tell which ids come first
    _, exact = top_k_keys(tied, torch.ones(50, 1), 4, item_chunk=20)
    assert not bool(exact)
    assert top_k_items(tied, torch.ones(50, 1), 4, item_chunk=20).tolist() == [[0, 1, 2, 3]] * 3


def test_keys_to_scores_gives_back_the_scores():
    scores = torch.cat([torch.randn(1, 300) * 10 ** torch.randint(-30, 30, (1, 300)),
                        torch.tensor([[0.0, -0.0, float("inf"), float("-inf"), 1e-45, -1e-45]])], dim=1)
    keys = _rank_keys(scores, torch.arange(scores.shape[1]))
    assert torch.equal(keys_to_scores(keys), scores + 0.0)  # -0.0 comes back as 0.0


def test_excluded_items_never_appear():
    generator = torch.Generator().manual_seed(3)
    num_users, num_items, k = 20, 40, 30
    users = torch.randn(num_users, 4, generator=generator)
    items = torch.randn(num_items, 4, generator=generator)
    offsets, excluded = random_exclusions(generator, num_users, num_items, max_per_user=10)
    result = top_k_items(users, items, k, exclude=(offsets, excluded), item_chunk=7)
    for u in range(num_users):
        banned = set(excluded[offsets[u] : offsets[u + 1]].tolist())
        assert not banned & set(result[u].tolist())
        assert len(set(result[u].tolist())) == k


def test_ties_lower_id_first_across_chunks():
    users = torch.zeros(2, 3)
    items = torch.zeros(10, 3)  # every score is 0
    exclude = (torch.tensor([0, 0, 3]), torch.tensor([0, 4, 1]))  # user 1 excludes 0, 4, 1
    for chunk in (1, 3, 4, 10):
        result = top_k_items(users, items, 5, exclude=exclude, item_chunk=chunk)
        assert result.tolist() == [[0, 1, 2, 3, 4], [2, 3, 5, 6, 7]]


def test_rank_keys_order_like_stable_descending_sort():
    special = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), 1e-45, -1e-45, 3.4e38, -3.4e38]
    generator = torch.Generator().manual_seed(0)
    values = torch.tensor(special + torch.randn(200, generator=generator).tolist()[:100] * 2)
    scores = values[torch.randperm(len(values), generator=generator)][None, :]  # [1, 220] with repeats
    keys = _rank_keys(scores.clone(), torch.arange(5, 5 + scores.shape[1]))
    by_key = torch.argsort(keys, dim=1, descending=True)
    by_score = torch.sort(scores, dim=1, descending=True, stable=True).indices  # -0.0 == 0.0 here too
    assert torch.equal(by_key, by_score)


def test_most_popular_top_k():
    popularity = torch.tensor([2.0, 5.0, 5.0, 0.0, 1.0])
    # order by count, ties by id: 1 (5), 2 (5), 0 (2), 4 (1), 3 (0). User 0 excludes item 1 and 3.
    exclude = (torch.tensor([0, 2, 2]), torch.tensor([1, 3]))
    result = most_popular_top_k(popularity, 2, 3, exclude=exclude)
    assert result.tolist() == [[2, 0, 4], [1, 2, 0]]
    assert most_popular_top_k(popularity, 1, 5).tolist() == [[1, 2, 0, 4, 3]]


@pytest.mark.parametrize("seed", range(5))
def test_most_popular_equals_ranking_the_whole_catalog(seed):
    generator = torch.Generator().manual_seed(seed)
    num_users, num_items = int(torch.randint(1, 40, (), generator=generator)), int(torch.randint(8, 60, (),
                                                                                                generator=generator))
    popularity = torch.randint(0, 5, (num_items,), generator=generator).float()  # many ties
    popularity[torch.randint(0, num_items, (2,), generator=generator)] = float("-inf")  # never recommended
    exclude = random_exclusions(generator, num_users, num_items)
    k = int(torch.randint(1, num_items - 8, (), generator=generator))
    expected = brute_top_k(torch.ones(num_users, 1), popularity[:, None], k, exclude=exclude)
    assert torch.equal(most_popular_top_k(popularity, num_users, k, exclude=exclude), expected)
    assert torch.equal(most_popular_top_k(popularity, num_users, k), brute_top_k(torch.ones(num_users, 1),
                                                                                 popularity[:, None], k))
    with pytest.raises(CutrecError, match="fewer than k="):
        most_popular_top_k(popularity, num_users, num_items - 1, exclude=exclude)


def test_popularity_scores():
    counts = popularity_scores(np.array([3, 0, 3, 3, 1], dtype=np.int32), 5)
    assert counts.dtype == torch.float32
    assert counts.tolist() == [1.0, 1.0, 0.0, 3.0, 0.0]
    assert torch.equal(popularity_scores(torch.tensor([3, 0, 3, 3, 1]), 5), counts)


@pytest.mark.parametrize(
    ("train_items", "num_items", "message"),
    [
        (torch.tensor([0, 5]), 5, "use item ids in [0, 4]"),
        (torch.tensor([-1, 2]), 5, "use item ids in [0, 4]"),
        (torch.tensor([0.0, 1.0]), 5, "1-D int64"),
        (torch.tensor([0, 1]), 0, "num_items=0"),
    ],
)
def test_popularity_scores_errors(train_items, num_items, message):
    with pytest.raises(CutrecError, match=message.replace("[", r"\[")):
        popularity_scores(train_items, num_items)


def test_errors():
    users, items = torch.randn(2, 4), torch.randn(6, 4)
    cases = [
        (dict(k=0), "k=0 is out of range"),
        (dict(k=7), "k=7 is out of range for a catalog of 6 items"),
        (dict(item_chunk=0), "item_chunk=0"),
        (dict(item_bias=torch.zeros(5)), "item_bias has shape (5,)"),
        (dict(exclude=(torch.tensor([0, 1]), torch.tensor([2]))), "pass num_users + 1 = 3 offsets"),
        (dict(exclude=(torch.tensor([0, 1, 2]), torch.tensor([2, 6]))), "use item ids in [0, 5]"),
        (dict(exclude=(torch.tensor([0, 2, 1]), torch.tensor([2, 3]))), "make them non-decreasing"),
        (dict(exclude=(torch.tensor([0, 1, 3]), torch.tensor([2, 3]))), "make them non-decreasing"),
        (dict(exclude=(torch.tensor([0, 0, 2]), torch.tensor([2.0, 3.0]))), "must be 1-D int64"),
        (dict(k=5, exclude=(torch.tensor([0, 0, 2]), torch.tensor([2, 3]))), "user 1 has fewer than k=5"),
    ]
    for kwargs, message in cases:
        kwargs = {"k": 2, **kwargs}
        with pytest.raises(CutrecError) as error:
            top_k_items(users, items, **kwargs)
        assert message in str(error.value), (kwargs, str(error.value))
    with pytest.raises(CutrecError, match="width 4 but item_vectors 3"):
        top_k_items(users, torch.randn(6, 3), 2)
    with pytest.raises(CutrecError, match="one device and dtype"):
        top_k_items(users, items.double(), 2)
    with pytest.raises(CutrecError, match="must be 2-D"):
        top_k_items(users[0], items, 2)
    with pytest.raises(CutrecError, match="shape \\[N\\]"):
        most_popular_top_k(torch.ones(3, 1), 2, 1)
    for k in (0, 4):  # the evaluator ranks through PopularityOrder.top_k directly: it checks k too
        with pytest.raises(CutrecError, match=f"k={k} is out of range"):
            PopularityOrder.of(torch.ones(3)).top_k(2, k)


def test_non_finite_vectors_are_refused():
    users, items = torch.randn(3, 4), torch.randn(10, 4)
    users[1, 2] = float("nan")
    with pytest.raises(CutrecError, match="NaN or inf"):
        top_k_items(users, items, 2)


def test_settled_keys_reranks_only_batches_whose_candidates_met_a_tie():
    from cutrec.train.evaluate import RankedBatch, settled_keys

    calls = []
    true, false = torch.tensor(True), torch.tensor(False)

    def batch(name, exact, finite=true):
        keys = torch.full((2, 3), 7)  # the candidates' keys; a rerun gives zeros
        return RankedBatch(np.arange(2), keys, finite, exact, lambda: (calls.append(name) or torch.zeros(2, 3), true))

    settled = settled_keys([batch("a", true), batch("b", false), batch("c", true)])
    assert calls == ["b"] and torch.equal(settled[1], torch.zeros(2, 3))
    assert torch.equal(settled[0], torch.full((2, 3), 7)) and torch.equal(settled[2], torch.full((2, 3), 7))
    with pytest.raises(CutrecError, match="NaN or inf"):
        settled_keys([batch("d", false, finite=false)])
    assert calls == ["b"]  # a non-finite evaluation is refused before any rerun
