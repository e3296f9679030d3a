"""SASRec: causality, padding, shapes, and the tied item table."""

import pytest
import torch

from cutrec.errors import CutrecError
from cutrec.models.sasrec import SASRec


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    options = {"max_len": 12, "dim": 16, "num_blocks": 2, "num_heads": 2, "dropout": 0.3} | kwargs
    return SASRec(50, **options).eval()


def test_future_items_do_not_change_earlier_hidden_states():
    model = _model()
    inputs = torch.randint(0, 50, (4, 12))
    changed = inputs.clone()
    changed[:, 7:] = torch.randint(0, 50, (4, 5))
    with torch.no_grad():
        before, after = model(inputs), model(changed)
    torch.testing.assert_close(before[:, :7], after[:, :7], rtol=0, atol=1e-6)
    assert (before[:, 7:] - after[:, 7:]).abs().max() > 1e-3


def test_right_padding_is_never_attended_and_positions_count_from_the_end():
    model = _model(seed=1)
    sequence = torch.randint(0, 50, (1, 5))
    padded = torch.cat([sequence, torch.full((1, 7), model.padding_id)], dim=1)  # [1, 12]
    with torch.no_grad():
        short = model(padded)[:, :5]
        # the same 5 items in a batch row of another shape and beside another user: same hidden states
        other = torch.cat([torch.randint(0, 50, (1, 12)), padded])
        again = model(other)[1:, :5]
    torch.testing.assert_close(short, again, rtol=0, atol=1e-6)
    last = model.last_hidden(padded, torch.tensor([5]))
    torch.testing.assert_close(last, short[:, 4])


def test_item_table_is_tied_and_excludes_padding():
    model = _model()
    assert model.item_table.shape == (50, 16)
    assert model.item_table.data_ptr() == model.item_embedding.weight.data_ptr()


def test_dropout_only_in_training():
    model = _model()
    inputs = torch.randint(0, 50, (3, 12))
    with torch.no_grad():
        assert torch.equal(model(inputs), model(inputs))
        model.train()
        assert not torch.equal(model(inputs), model(inputs))


def test_bad_shapes_are_named():
    with pytest.raises(CutrecError, match="max_len=0"):
        SASRec(10, max_len=0)
    with pytest.raises(CutrecError, match="num_heads=3"):
        SASRec(10, dim=16, num_heads=3)
    with pytest.raises(CutrecError, match="max_len=12"):
        _model()(torch.zeros(2, 13, dtype=torch.long))
