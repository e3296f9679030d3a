"""Tests for the ranking metrics, item user counts and the results table: hand-computed and brute-force values."""

import math

import pytest
import torch

from cutrec.errors import CutrecError
from cutrec.eval import format_table, item_user_counts, ranking_metrics

# Three users, lists of 4, catalog of 8 items; the targets sit at ranks 0, 1 and 2.
TOP = torch.tensor([[5, 2, 7, 0], [1, 5, 2, 3], [4, 0, 2, 6]])
TARGETS = torch.tensor([5, 5, 2])
# 4 training users, log2(4) = 2: pop 4 -> log2(4/4)/2 = 0, pop 2 -> log2(2)/2 = 0.5, pop 1 -> 1, pop 0 -> 1.
POPULARITY = torch.tensor([4, 2, 1, 0, 2, 4, 1, 2])  # surprisal per item: [0, .5, 1, 1, .5, 0, 1, .5]


def metrics(top=TOP, targets=TARGETS, ks=(1, 2, 3), num_items=8, popularity=POPULARITY, num_train_users=4):
    return ranking_metrics(
        top, targets, list(ks), num_items=num_items, item_popularity=popularity, num_train_users=num_train_users
    )


def test_accuracy_metrics_by_hand():
    result = metrics()
    # ranks 0, 1, 2. @1: only user 0 hits.
    assert result["NDCG@1"] == pytest.approx(1 / 3)
    assert result["HR@1"] == pytest.approx(1 / 3)
    assert result["MRR@1"] == pytest.approx(1 / 3)
    # @2: users 0 and 1 hit. NDCG = (1/log2(2) + 1/log2(3)) / 3, MRR = (1 + 1/2) / 3.
    assert result["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert result["HR@2"] == pytest.approx(2 / 3)
    assert result["MRR@2"] == pytest.approx(0.5)
    # @3: all hit. NDCG = (1 + 1/log2(3) + 1/log2(4)) / 3, MRR = (1 + 1/2 + 1/3) / 3 = 11/18.
    assert result["NDCG@3"] == pytest.approx((1.5 + 1 / math.log2(3)) / 3)
    assert result["HR@3"] == pytest.approx(1.0)
    assert result["MRR@3"] == pytest.approx(11 / 18)
    assert all(type(value) is float for value in result.values())


def test_coverage_and_surprisal_by_hand():
    result = metrics()
    # Coverage: @1 {5, 1, 4} -> 3/8; @2 adds 2, 0 -> 5/8; @3 adds 7 -> 6/8 (2 is already in).
    assert result["Coverage@1"] == pytest.approx(3 / 8)
    assert result["Coverage@2"] == pytest.approx(5 / 8)
    assert result["Coverage@3"] == pytest.approx(6 / 8)
    # Surprisal: @1 items 5, 1, 4 -> (0 + .5 + .5) / 3 = 1/3.
    # @2 per user: [5, 2] -> 0 + 1, [1, 5] -> .5 + 0, [4, 0] -> .5 + 0; (1 + .5 + .5) / 6 = 1/3.
    # @3 adds items 7, 2, 2 -> .5 + 1 + 1 = 2.5 -> (2 + 2.5) / 9 = 0.5.
    assert result["Surprisal@1"] == pytest.approx(1 / 3)
    assert result["Surprisal@2"] == pytest.approx(1 / 3)
    assert result["Surprisal@3"] == pytest.approx(0.5)


def test_misses_and_lists_longer_than_k():
    top = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    targets = torch.tensor([3, 1])  # user 0: rank 3, beyond k = 2; user 1: rank 2, beyond k = 2
    result = metrics(top, targets, ks=[2], num_items=4, popularity=torch.tensor([1, 1, 1, 1]), num_train_users=2)
    assert result["NDCG@2"] == 0.0 and result["HR@2"] == 0.0 and result["MRR@2"] == 0.0
    # every item seen by 1 of 2 training users: log2(2/1) / log2(2) = 1
    assert result["Surprisal@2"] == pytest.approx(1.0)
    assert result["Coverage@2"] == pytest.approx(1.0)
    absent = metrics(top[:, :2], torch.tensor([3, 0]), ks=[1, 2], num_items=4, popularity=torch.ones(4))
    assert absent["HR@2"] == 0.0 and absent["NDCG@2"] == 0.0


def reference_metrics(top, targets, ks, num_items, popularity, num_train_users):
    result = {}
    for k in ks:
        ndcg = hr = mrr = surprisal = 0.0
        seen = set()
        for items, target in zip(top.tolist(), targets.tolist(), strict=True):
            items = items[:k]
            seen.update(items)
            if target in items:
                rank = items.index(target)
                ndcg, hr, mrr = ndcg + 1 / math.log2(rank + 2), hr + 1, mrr + 1 / (rank + 1)
            for item in items:
                pop = max(int(popularity[item]), 1)
                surprisal += math.log2(num_train_users / pop) / math.log2(num_train_users)
        users = len(targets)
        result.update({f"NDCG@{k}": ndcg / users, f"HR@{k}": hr / users, f"MRR@{k}": mrr / users})
        result[f"Coverage@{k}"] = len(seen) / num_items
        result[f"Surprisal@{k}"] = surprisal / (users * k)
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_against_reference(seed):
    generator = torch.Generator().manual_seed(seed)
    num_users, num_items, kmax, num_train_users = 50, 30, 12, 9
    top = torch.stack([torch.randperm(num_items, generator=generator)[:kmax] for _ in range(num_users)])
    targets = torch.randint(0, num_items, (num_users,), generator=generator)
    popularity = torch.randint(0, num_train_users + 1, (num_items,), generator=generator)
    ks = [1, 3, 10, 12]
    result = metrics(top, targets, ks, num_items, popularity, num_train_users)
    expected = reference_metrics(top, targets, ks, num_items, popularity, num_train_users)
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-12), key


def test_item_user_counts():
    # user 0: items 1, 1, 2; user 1: 2, 0; user 2: nothing; user 3: 2. Junk at both ends is outside the offsets.
    items = torch.tensor([9, 1, 1, 2, 2, 0, 2, 9])
    offsets = torch.tensor([1, 4, 6, 6, 7])
    assert item_user_counts(offsets, items, 4).tolist() == [1, 1, 3, 0]
    assert item_user_counts(offsets.numpy().astype("int32"), items.numpy(), 4).tolist() == [1, 1, 3, 0]


def test_item_user_counts_random():
    generator = torch.Generator().manual_seed(5)
    lengths = torch.randint(0, 15, (40,), generator=generator)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    items = torch.randint(0, 25, (int(offsets[-1]),), generator=generator)
    expected = [0] * 25
    for u in range(40):
        for item in set(items[offsets[u] : offsets[u + 1]].tolist()):
            expected[item] += 1
    assert item_user_counts(offsets, items, 25).tolist() == expected


def test_format_table():
    ks = [1, 10]
    rows = {
        "SASRec-CE": metrics(ks=ks, top=torch.arange(10).repeat(3, 1), num_items=10, popularity=torch.ones(10)),
        "MostPop": {f"{name}@{k}": 0.5 for name in ("NDCG", "HR", "MRR", "Coverage", "Surprisal") for k in ks},
    }
    lines = format_table(rows, ks).splitlines()
    assert lines[0].split() == [
        "model", "NDCG@1", "NDCG@10", "HR@1", "HR@10", "MRR@1", "MRR@10",
        "Coverage@1", "Coverage@10", "Surprisal@1", "Surprisal@10",
    ]  # fmt: skip
    assert lines[2].split() == ["MostPop"] + ["0.5000"] * 10
    # targets 5, 5, 2 in the list 0..9: ranks 5, 5, 2, so @1 misses; HR@10 = 1; coverage@1 = 1/10
    assert lines[1].split()[:5] == ["SASRec-CE", "0.0000", f"{(2 / math.log2(7) + 1 / 2) / 3:.4f}", "0.0000", "1.0000"]
    assert lines[1].split()[7:9] == ["0.1000", "1.0000"]
    assert len({len(line) for line in lines}) == 1  # columns line up
    with pytest.raises(CutrecError, match="row 'SASRec-CE' lacks NDCG@5, HR@5"):
        format_table(rows, [1, 5])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(ks=[]), "ks=[] is out of range"),
        (dict(ks=[0, 1]), "ks=[0, 1] is out of range"),
        (dict(ks=[5]), "ks=[5] is out of range for top-4 lists"),
        (dict(targets=torch.tensor([1, 2])), "pass one int64 target per user, shape [3]"),
        (dict(targets=torch.tensor([1, 2, 8])), "targets hold ids from 1 to 8"),
        (dict(top=TOP + 1), "top_items hold ids from 1 to 8"),
        (dict(top=TOP.float()), "pass [U, Kmax] int64"),
        (dict(top=TOP[:0], targets=TARGETS[:0]), "evaluate at least one user"),
        (dict(popularity=POPULARITY[:7]), "pass one count per item, shape [8]"),
        (dict(popularity=POPULARITY * 2), "pass distinct-user counts"),
        (dict(num_train_users=1), "num_train_users=1 is too small"),
    ],
)
def test_metric_errors(changes, message):
    with pytest.raises(CutrecError) as error:
        metrics(**changes)
    assert message in str(error.value)


def test_item_user_counts_errors():
    with pytest.raises(CutrecError, match="training items hold ids from 0 to 4"):
        item_user_counts(torch.tensor([0, 2]), torch.tensor([0, 4]), 4)
    with pytest.raises(CutrecError, match="num_items=0"):
        item_user_counts(torch.tensor([0, 2]), torch.tensor([0, 1]), 0)
