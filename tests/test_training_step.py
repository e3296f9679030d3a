"""One training step of every (model, loss) pair on the CPU, through the seam as the trainer takes it."""

import numpy as np
import pytest
import torch

from cutrec.config import LossConfig, ModelConfig
from cutrec.data.batches import IGNORE_INDEX, epoch_order
from cutrec.data.splits import Sequences
from cutrec.losses import build_loss
from cutrec.models import MODEL_NAMES, build_model

NUM_ITEMS = 97
LOSSES = [
    LossConfig(name="CE"),
    LossConfig(name="CCE"),
    LossConfig(name="CE-", num_negatives=16),
    LossConfig(name="CE-", num_negatives=16, distribution="popularity"),
    *(LossConfig(name="CCE-", num_negatives=16, share=share) for share in ("none", "block", "batch", "offsets")),
    LossConfig(name="CCE-", num_negatives=16, distribution="popularity"),
    LossConfig(name="BCE"),
    LossConfig(name="BCE+", num_negatives=16),
    LossConfig(name="gBCE", num_negatives=16),
    LossConfig(name="SCE", sce_buckets=8, sce_bucket_size_x=16, sce_bucket_size_y=24),
]


def _train_sequences(rng: np.random.Generator) -> Sequences:
    lengths = rng.integers(1, 30, 40)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(0, NUM_ITEMS, int(offsets[-1])).astype(np.int32)
    return Sequences(offsets=offsets, items=items, users=np.arange(40))


def _step(model_name: str, loss_config: LossConfig, seed: int):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name=model_name, max_len=20, dim=16, num_blocks=2, num_heads=2), NUM_ITEMS)
    model.train()
    train = _train_sequences(rng)
    counts = torch.bincount(torch.from_numpy(train.items).long(), minlength=NUM_ITEMS).float()
    loss_fn = build_loss(loss_config, NUM_ITEMS, counts)
    rows = epoch_order(train, min_length=model.min_train_length, rng=rng)[:16]
    inputs, targets = model.training_batch(train, rows, rng)  # [B, L], [B, L]
    hidden = model(inputs)  # [B, L, D]
    keep = targets.view(-1) != IGNORE_INDEX
    loss = loss_fn(hidden.view(-1, hidden.shape[-1])[keep], model.item_table, targets.view(-1)[keep], seed=seed)
    loss.backward()
    return model, loss


@pytest.mark.parametrize("loss_config", LOSSES, ids=lambda c: f"{c.name}-{c.share}-{c.distribution}")
@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_one_step_gives_a_finite_loss_and_gradients(model_name, loss_config):
    model, loss = _step(model_name, loss_config, seed=int(torch.randint(0, 1 << 30, ())))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(gradients) == len(list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in gradients)
    assert model.item_embedding.weight.grad[:NUM_ITEMS].abs().sum() > 0


@pytest.mark.parametrize("loss_config", LOSSES, ids=lambda c: f"{c.name}-{c.share}-{c.distribution}")
def test_special_rows_are_never_scored_nor_drawn_as_negatives(loss_config):
    """Through item_table alone (hidden detached), no loss reaches the padding or mask rows."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="bert4rec", dim=16, num_heads=2), NUM_ITEMS)
    counts = torch.rand(NUM_ITEMS) * 10 + 1
    loss_fn = build_loss(loss_config, NUM_ITEMS, counts)
    hidden = torch.randn(300, 16)
    targets = torch.randint(0, NUM_ITEMS, (300,))
    loss_fn(hidden, model.item_table, targets, seed=3).backward()
    weight = model.item_embedding.weight
    assert weight.shape[0] == NUM_ITEMS + 2
    assert weight.grad[NUM_ITEMS:].abs().sum() == 0 and weight.grad[:NUM_ITEMS].abs().sum() > 0
