"""SCE against a float64 loop over buckets and positions (fixed bucket directions), loss and both gradients."""

import math

import pytest
import torch

from cutrec.errors import CutrecError
from cutrec.losses import scalable_cross_entropy
from cutrec.losses.scalable_cross_entropy import bucket_centers


def _reference(hidden, items, targets, centers, size_x, size_y):
    """The definition, one bucket and one position at a time, in float64."""
    valid = targets != -100
    best: dict[int, torch.Tensor] = {}
    for center in centers.double():
        position_scores = (hidden @ center).masked_fill(~valid, -math.inf)
        positions = torch.argsort(position_scores, descending=True)[: min(size_x, len(hidden))]
        bucket_items = torch.argsort(items @ center, descending=True)[: min(size_y, len(items))].tolist()
        for i in positions.tolist():
            if not valid[i]:
                continue
            target = int(targets[i])
            logits = torch.stack([hidden[i] @ items[target], *(hidden[i] @ items[j] for j in bucket_items
                                                               if j != target)])
            loss = torch.logsumexp(logits, 0) - logits[0]
            best[i] = torch.maximum(best[i], loss) if i in best else loss
    return torch.stack(list(best.values())).mean()


def _problem(m, n, d, buckets, ignored):
    hidden = torch.randn(m, d, dtype=torch.float64)
    items = torch.randn(n, d, dtype=torch.float64)
    targets = torch.randint(0, n, (m,))
    targets[torch.randperm(m)[:ignored]] = -100
    return hidden, items, targets, torch.randn(buckets, d, dtype=torch.float64)


@pytest.mark.parametrize(
    "m,n,d,buckets,size_x,size_y,ignored",
    [(37, 53, 7, 5, 9, 11, 0), (61, 29, 12, 9, 70, 40, 13), (45, 101, 5, 3, 45, 1, 4), (23, 17, 9, 16, 4, 17, 5)],
)
def test_matches_the_float64_definition_with_fixed_directions(m, n, d, buckets, size_x, size_y, ignored):
    hidden, items, targets, centers = _problem(m, n, d, buckets, ignored)
    ours_h, ours_w = hidden.clone().requires_grad_(), items.clone().requires_grad_()
    ours = scalable_cross_entropy(ours_h, ours_w, targets, centers=centers, bucket_size_x=size_x,
                                  bucket_size_y=size_y, item_chunk=10)
    ours.backward()
    ref_h, ref_w = hidden.clone().requires_grad_(), items.clone().requires_grad_()
    reference = _reference(ref_h, ref_w, targets, centers, size_x, size_y)
    reference.backward()
    assert torch.isfinite(ours) and ours.dtype == torch.float64
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours_h.grad, ref_h.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours_w.grad, ref_w.grad, rtol=1e-9, atol=1e-12)


def test_float32_and_bfloat16_follow_the_reference():
    hidden, items, targets, centers = _problem(50, 80, 16, 6, 3)
    reference = _reference(hidden, items, targets, centers, 20, 30)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        ours = scalable_cross_entropy(hidden.to(dtype), items.to(dtype), targets, centers=centers,
                                      bucket_size_x=20, bucket_size_y=30)
        assert ours.dtype == torch.float32
        assert abs(float(ours) - float(reference)) <= tolerance * float(reference), dtype


def test_drawn_directions_follow_the_seed_and_mix_stays_in_the_span_of_hidden():
    hidden = torch.randn(30, 8)
    valid = torch.rand(30) < 0.7
    a = bucket_centers(hidden, valid, 4, mix=True, seed=5)
    assert torch.equal(a, bucket_centers(hidden, valid, 4, mix=True, seed=5))
    assert not torch.equal(a, bucket_centers(hidden, valid, 4, mix=True, seed=6))
    basis = hidden[valid]  # [V, 8]: a mix uses only the positions with a target
    coefficients = torch.linalg.lstsq(basis.T, a.T).solution  # [V, 4]
    torch.testing.assert_close(basis.T @ coefficients, a.T, rtol=1e-4, atol=1e-4)
    assert bucket_centers(hidden, valid, 4, mix=False, seed=5).shape == (4, 8)
    targets = torch.where(valid, torch.randint(0, 40, (30,)), -100)
    items = torch.randn(40, 8)
    losses = [scalable_cross_entropy(hidden, items, targets, num_buckets=4, bucket_size_x=8, bucket_size_y=8,
                                     seed=s) for s in (1, 1, 2)]
    assert losses[0] == losses[1] != losses[2]


def test_reductions_and_untaken_positions():
    hidden, items, targets, centers = _problem(40, 30, 6, 2, 5)
    per_position = scalable_cross_entropy(hidden, items, targets, centers=centers, bucket_size_x=6,
                                          bucket_size_y=10, reduction="none")
    taken = per_position > 0
    assert per_position.shape == (40,) and 1 <= int(taken.sum()) <= 12 and (per_position[targets == -100] == 0).all()
    mean = scalable_cross_entropy(hidden, items, targets, centers=centers, bucket_size_x=6, bucket_size_y=10)
    total = scalable_cross_entropy(hidden, items, targets, centers=centers, bucket_size_x=6, bucket_size_y=10,
                                   reduction="sum")
    torch.testing.assert_close(mean, per_position[taken].mean())
    torch.testing.assert_close(total, per_position.sum())


def test_bad_arguments_are_named():
    hidden, items, targets = torch.randn(4, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 9])
    with pytest.raises(CutrecError, match="target 9 is not an item id"):
        scalable_cross_entropy(hidden, items, targets)
    with pytest.raises(CutrecError, match="bucket_size_y=0 is out of range"):
        scalable_cross_entropy(hidden, items, targets.clamp(max=5), bucket_size_y=0)
    with pytest.raises(CutrecError, match="centers must be"):
        scalable_cross_entropy(hidden, items, targets.clamp(max=5), centers=torch.randn(2, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_the_float64_definition_in_float32_and_under_autocast():
    hidden, items, targets, centers = _problem(300, 2000, 32, 12, 40)
    reference_h, reference_w = hidden.clone().requires_grad_(), items.clone().requires_grad_()
    reference = _reference(reference_h, reference_w, targets, centers, 64, 96)
    reference.backward()
    for autocast, tolerance in ((False, 1e-5), (True, 3e-2)):
        cuda_h = hidden.float().cuda().requires_grad_()
        cuda_w = items.float().cuda().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = scalable_cross_entropy(cuda_h, cuda_w, targets.cuda(), centers=centers.cuda(), bucket_size_x=64,
                                          bucket_size_y=96, item_chunk=700)
        loss.backward()
        assert abs(float(loss) - float(reference)) <= tolerance * float(reference), autocast
        assert torch.isfinite(cuda_h.grad).all() and torch.isfinite(cuda_w.grad).all()
        if not autocast:  # under autocast the bucket search runs in bf16 and may pick other near-tied members
            for ours, truth in ((cuda_h.grad, reference_h.grad), (cuda_w.grad, reference_w.grad)):
                error = (ours.double().cpu() - truth).abs().max()
                assert error <= tolerance * truth.abs().max(), float(error)
