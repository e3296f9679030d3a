"""SASRec and BERT4Rec: causality or bidirectionality, padding, user vectors, the mask token, and shapes."""

import numpy as np
import pytest
import torch

from cutrec.config import EvalConfig, ModelConfig
from cutrec.data.splits import EvalSet, Sequences
from cutrec.errors import CutrecError
from cutrec.models import BERT4Rec, SASRec, build_model
from cutrec.train.evaluate import model_top_items


def _model(seed=0, kind=SASRec, **kwargs):
    torch.manual_seed(seed)
    options = {"max_len": 12, "dim": 16, "num_blocks": 2, "num_heads": 2, "dropout": 0.3} | kwargs
    return kind(50, **options).eval()


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
    last = model.user_vectors(padded, torch.tensor([5]))
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


def test_bert4rec_is_bidirectional_and_ignores_padding():
    model = _model(kind=BERT4Rec)
    length = int(torch.randint(4, 10, ()))
    sequence = torch.randint(0, 50, (1, length))
    padded = torch.cat([sequence, torch.full((1, 12 - length), model.padding_id)], dim=1)  # [1, 12]
    with torch.no_grad():
        before = model(padded)
        for position in range(length):
            changed = padded.clone()
            changed[0, position] = (changed[0, position] + 1 + int(torch.randint(0, 48, ()))) % 50
            after = model(changed)
            others = [p for p in range(length) if p != position]
            change = (before[0, others] - after[0, others]).abs().amax(dim=1)  # [length - 1]
            assert (change > 1e-4).all(), (position, change)
        # the same items with less padding (a shorter batch) or beside another user: same hidden states
        short = model(sequence)
        beside = model(torch.cat([torch.randint(0, 50, (1, 12)), padded]))[1:]
    torch.testing.assert_close(before[:, :length], short, rtol=0, atol=1e-5)
    torch.testing.assert_close(before[:, :length], beside[:, :length], rtol=0, atol=1e-5)


def test_bert4rec_user_vector_is_the_appended_mask_token():
    model = _model(kind=BERT4Rec, seed=2)
    histories = torch.tensor([[3, 4, 5] + [model.padding_id] * 9, list(range(10, 22))])  # lengths 3 and 12
    users = model.user_vectors(histories, torch.tensor([3, 12]))
    with torch.no_grad():
        first = model(torch.tensor([[3, 4, 5, model.mask_id]]))[0, 3]
        second = model(torch.tensor([list(range(11, 22)) + [model.mask_id]]))[0, 11]  # oldest item dropped
    torch.testing.assert_close(users, torch.stack([first, second]), rtol=0, atol=1e-5)


def test_special_rows_are_never_scored_or_recommended():
    """Give the mask and padding rows the embedding that every user vector points to most: still never ranked."""
    model = _model(kind=BERT4Rec, seed=3)
    assert model.item_table.shape == (50, 16) and model.mask_id == 51
    histories = Sequences(offsets=np.array([0, 3, 4, 8]), items=np.array([1, 2, 3, 7, 9, 8, 7, 6], dtype=np.int32),
                          users=np.arange(3))
    evalset = EvalSet(inputs=histories, targets=np.array([4, 5, 6], dtype=np.int32))
    with torch.no_grad():
        users = model.user_vectors(torch.tensor([[1, 2, 3, 50]]), torch.tensor([3]))
        model.item_embedding.weight[50:] = 100 * users / users.norm()
    top = model_top_items(model, evalset, EvalConfig(ks=[50 - 4]), torch.device("cpu"))
    assert top.max() < 50 and top.min() >= 0


def test_build_model_dispatches_on_the_name():
    assert isinstance(build_model(ModelConfig(name="sasrec"), 10), SASRec)
    bert = build_model(ModelConfig(name="bert4rec", mask_prob=0.3, num_heads=2), 10)
    assert isinstance(bert, BERT4Rec) and bert.mask_prob == 0.3
    with pytest.raises(CutrecError, match="model.name='gru4rec' is unknown; choose one of sasrec, bert4rec"):
        build_model(ModelConfig(name="gru4rec"), 10)
    with pytest.raises(CutrecError, match="mask_prob=0"):
        BERT4Rec(10, mask_prob=0.0)


def test_item_rows_of_any_range_equal_that_range_of_the_whole_table(monkeypatch):
    """The initial item table is drawn in chunks with their own generators, so a catalog-parallel rank builds its rows
    alone; any range (across chunk boundaries too) equals that range of the whole table, with std D^-0.5."""
    from cutrec.models import transformer

    def rows(seed, start, stop, dim):
        out = torch.empty(stop - start, dim)
        transformer.fill_item_rows(out, seed, start, dim**-0.5)
        return out

    monkeypatch.setattr(transformer, "ITEM_INIT_ROWS", 7)
    whole = rows(11, 0, 60, 16)  # [60, 16]
    rng = np.random.default_rng()
    for _ in range(20):
        start = int(rng.integers(0, 60))
        stop = int(rng.integers(start, 61))
        assert torch.equal(rows(11, start, stop, 16), whole[start:stop])
    assert not torch.equal(rows(12, 0, 60, 16), whole)  # another seed, other rows
    monkeypatch.setattr(transformer, "ITEM_INIT_ROWS", 1 << 16)
    assert abs(float(rows(3, 0, 20000, 64).std()) - 64**-0.5) < 0.002


def test_counting_a_models_parameters_draws_nothing_from_the_generator():
    """`memory.parameter_count` builds the model on the meta device; the model built next has the same weights."""
    torch.manual_seed(5)
    first = build_model(ModelConfig(name="sasrec", dim=16), 50).state_dict()
    torch.manual_seed(5)
    with torch.device("meta"):
        build_model(ModelConfig(name="sasrec", dim=16), 50)
    second = build_model(ModelConfig(name="sasrec", dim=16), 50).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert torch.count_nonzero(first["item_embedding.weight"][50]) == 0  # the padding row
