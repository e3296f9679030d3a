"""The recipe's levers: label smoothing and a logit temperature on the seam (CE, and CCE through its CPU
implementation), against PyTorch's float64 cross-entropy with label smoothing on fresh random inputs of odd shapes;
the feed-forward variants (width, ReLU, GELU, gated SwiGLU) and their checkpoints; the learning-rate schedule;
presets; refusals."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cutrec.config import LossConfig, ModelConfig, build_config
from cutrec.errors import CutrecError
from cutrec.losses import build_loss
from cutrec.models import build_model


def _inputs(rng, rows, items, dim):
    hidden = torch.tensor(rng.normal(size=(rows, dim)), dtype=torch.float32)
    table = torch.tensor(rng.normal(size=(items, dim)) * 0.5, dtype=torch.float32)
    targets = torch.tensor(rng.integers(0, items, rows))
    targets[rng.random(rows) < 0.2] = -100
    return hidden, table, targets


def _loss_and_grads(loss, hidden, table, targets, dtype=None, **kwargs):
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (hidden, table)]
    value = loss(leaves[0], leaves[1], targets, **kwargs)
    value.backward()
    return [value.detach(), leaves[0].grad, leaves[1].grad]


@pytest.mark.parametrize("name", ["CE", "CCE"])
@pytest.mark.parametrize(("eps", "temperature"), [(0.1, 1.0), (0.0, 0.7), (0.3, 1.9)])
def test_label_smoothing_and_temperature_equal_torch_in_float64(name, eps, temperature):
    rng = np.random.default_rng()
    hidden, table, targets = _inputs(rng, int(rng.integers(30, 90)), int(rng.integers(40, 130)), 12)
    loss = build_loss(LossConfig(name=name, label_smoothing=eps, temperature=temperature), table.shape[0])

    def reference(h, w, t, seed=0):
        return F.cross_entropy(h @ w.T / temperature, t, ignore_index=-100, label_smoothing=eps)

    ours = _loss_and_grads(loss, hidden, table, targets, seed=0)
    exact = _loss_and_grads(reference, hidden, table, targets, torch.float64)
    for value, expected in zip(ours, exact, strict=True):
        torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=1e-6)


def test_temperature_scales_the_hidden_states_of_a_sampled_loss():
    rng = np.random.default_rng()
    hidden, table, targets = _inputs(rng, 41, 77, 8)
    options = {"name": "CCE-", "num_negatives": 9}
    hot = build_loss(LossConfig(**options, temperature=0.5), 77)(hidden, table, targets, seed=4)
    plain = build_loss(LossConfig(**options), 77)(hidden / 0.5, table, targets, seed=4)
    torch.testing.assert_close(hot, plain)


def test_label_smoothing_is_refused_for_sampled_losses_and_bad_values():
    with pytest.raises(CutrecError, match="loss.label_smoothing=0.1 applies to the full-softmax losses CE and CCE"):
        build_loss(LossConfig(name="CCE-", label_smoothing=0.1), 50)
    with pytest.raises(CutrecError, match="loss.label_smoothing"):
        build_config({"loss": {"label_smoothing": 1.0}})
    with pytest.raises(CutrecError, match="loss.temperature"):
        build_config({"loss": {"temperature": 0}})
    with pytest.raises(CutrecError, match="model.ffn_mult"):
        build_config({"model": {"ffn_mult": 0}})
    with pytest.raises(CutrecError, match="model.ffn_activation"):
        build_config({"model": {"ffn_activation": "tanh"}})


@pytest.mark.parametrize(("activation", "mult", "first_rows"), [("gelu", 1.0, 16), ("relu", 4.0, 64),
                                                                 ("swiglu", 2.5, 80)])
@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec"])
def test_feed_forward_variants_train_and_reload(tmp_path, activation, mult, first_rows, model_name):
    """The width is round(ffn_mult x dim) (SwiGLU's first layer holds gate and value: twice that); the default
    (GELU, width dim) keeps the parameter names of earlier checkpoints; a model reloads from its state dict."""
    config = ModelConfig(name=model_name, dim=16, num_blocks=1, num_heads=2, max_len=10, ffn_activation=activation,
                         ffn_mult=mult)
    model = build_model(config, 30)
    first = model.blocks[0].feed_forward[0]
    assert first.weight.shape == (first_rows, 16)
    assert model.blocks[0].feed_forward[3].weight.shape == (16, round(mult * 16))
    inputs = torch.randint(0, 30, (4, 10))
    model(inputs).sum().backward()
    assert all(p.grad is not None for p in model.blocks.parameters())
    again = build_model(config, 30)
    again.load_state_dict(model.state_dict())
    model.eval(), again.eval()
    torch.testing.assert_close(again(inputs), model(inputs))


def test_the_default_feed_forward_keeps_its_parameter_names():
    names = [name for name in build_model(ModelConfig(), 20).state_dict() if ".feed_forward." in name]
    assert names[:4] == ["blocks.0.feed_forward.0.weight", "blocks.0.feed_forward.0.bias",
                         "blocks.0.feed_forward.3.weight", "blocks.0.feed_forward.3.bias"]


def test_presets_list_load_and_yield_to_the_config_file_and_the_options(tmp_path, capsys):
    from cutrec import presets
    from cutrec.cli import main

    assert presets.names() == ["bert4rec-2019", "sasrec-2018"]
    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in presets.names())
    for name in presets.names():  # every preset is a valid config that spells out its model, loss and training
        values = presets.load(name)
        build_config(values)
        assert {"model", "loss", "train"} <= values.keys()
    bert = build_config(presets.load("bert4rec-2019"))
    assert (bert.model.name, bert.model.num_heads, bert.model.ffn_activation) == ("bert4rec", 2, "gelu")
    file = tmp_path / "run.toml"
    file.write_text('[model]\nnum_blocks = 3\n[train]\nlr = 0.002\n')
    args = ["train", "--preset", "bert4rec-2019", "--config", str(file), "--train.lr=0.003", "--epochs=1",
            "--data.synthetic.num_users=60", "--data.synthetic.num_items=80", "--model.max_len=8", "--model.dim=16",
            "--device=cpu", "--train.progress=false", f"--out={tmp_path}", "--name=run"]
    assert main(args) == 0
    saved = (tmp_path / "run" / "config.json").read_text()
    for expected in ('"name": "bert4rec"', '"num_blocks": 3', '"lr": 0.003', '"num_heads": 2'):
        assert expected in saved, expected


def test_a_bad_preset_or_a_preset_on_resume_is_one_line(tmp_path, capsys):
    from cutrec.cli import main

    assert main(["train", "--preset", "sasrec-1999"]) == 2
    error = capsys.readouterr().err
    assert "preset 'sasrec-1999' is unknown; choose one of bert4rec-2019, sasrec-2018" in error
    assert error.count("\n") == 1
    assert main(["train", "--resume", str(tmp_path), "--preset", "sasrec-2018"]) == 2
    assert "a resumed run keeps its recipe; leave --preset out with --resume" in capsys.readouterr().err


def test_the_learning_rate_schedule_follows_its_formula():
    """Warm-up over W = round(warmup_epochs x steps per epoch) steps, then linear or cosine decay to 0 at the last
    step of train.epochs, computed on the device from the step number."""
    import math

    from cutrec.config import TrainConfig
    from cutrec.train.step import LearningRate

    for decay in ("none", "linear", "cosine"):
        config = TrainConfig(lr=0.02, warmup_epochs=0.5, lr_decay=decay, epochs=4)
        schedule = LearningRate(config, 10, torch.device("cpu"))  # W = 5, T = 40
        for step in range(45):
            schedule.update(torch.tensor(step))
            warm = min(1.0, (step + 1) / 5)
            progress = min(max((step - 5) / 35, 0.0), 1.0)
            shape = {"none": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress))}
            assert float(schedule.value) == pytest.approx(0.02 * warm * shape[decay], rel=1e-6, abs=1e-9), step


def test_a_training_step_updates_with_the_scheduled_learning_rate():
    """Adam's first update moves every parameter with a gradient by lr: with a warm-up of 4 steps, by lr / 4."""
    from cutrec.data.splits import Sequences
    from cutrec.train.loop import new_state
    from cutrec.train.step import TrainStep

    config = build_config({"model": {"dim": 16, "max_len": 10, "dropout": 0.0}, "loss": {"name": "CE"},
                           "train": {"lr": 0.01, "warmup_epochs": 1.0, "device": "cpu", "batch_size": 8}})
    rng = np.random.default_rng(2)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(3, 12, 32))]).astype(np.int64)
    train = Sequences(offsets=offsets, items=rng.integers(0, 40, int(offsets[-1])).astype(np.int32),
                      users=np.arange(32))
    state = new_state(config, 40, torch.device("cpu"))
    step = TrainStep(state, state.model, build_loss(config.loss, 40), config, torch.device("cpu"), 40, rows=80,
                     batch_size=8, steps_per_epoch=4)
    before = [p.detach().clone() for p in state.model.parameters()]
    step.run(*state.model.training_batch(train, np.arange(8), state.batch_rng))
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(state.model.parameters(), before, strict=True))
    assert moved == pytest.approx(0.01 / 4, rel=1e-3)
    assert all(group["lr"] is step.learning_rate.value for group in state.optimizer.param_groups)


def test_embedding_scale_multiplies_the_input_items_by_sqrt_dim_and_init_std_sets_the_initial_spread():
    """model.embedding_scale: the encoder of a table W with the scale equals the encoder of sqrt(D) W without it
    (positions unscaled; the output table stays W); model.init_std: the initial item and position rows' std."""
    import math

    config = ModelConfig(dim=16, num_blocks=1, num_heads=2, max_len=10, dropout=0.0)
    torch.manual_seed(3)
    scaled = build_model(ModelConfig(**{**config.__dict__, "embedding_scale": True}), 30).eval()
    plain = build_model(config, 30).eval()
    state = scaled.state_dict()
    plain.load_state_dict({**state, "item_embedding.weight": state["item_embedding.weight"] * math.sqrt(16)})
    inputs = torch.randint(0, 31, (3, 10))  # 30: the padding id
    with torch.no_grad():
        torch.testing.assert_close(scaled(inputs), plain(inputs))
    wide = build_model(ModelConfig(dim=64, init_std=0.3), 20000)
    assert float(wide.item_table.detach().std()) == pytest.approx(0.3, rel=0.01)
    positions = build_model(ModelConfig(dim=64, max_len=2000, init_std=0.3), 10).position_embedding.weight
    assert float(positions.detach().std()) == pytest.approx(0.3, rel=0.03)
    assert float(build_model(ModelConfig(dim=64), 20000).item_table.detach().std()) == pytest.approx(64**-0.5, rel=0.01)
    with pytest.raises(CutrecError, match="model.init_std"):
        build_config({"model": {"init_std": -1.0}})


@pytest.mark.parametrize("places", [[], ["embedding"], ["attention"], ["feed_forward"], ["residual"]])
@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec"])
def test_dropout_acts_only_at_its_places(places, model_name):
    torch.manual_seed(int(np.random.default_rng().integers(1 << 30)))
    model = build_model(ModelConfig(name=model_name, dim=16, num_heads=2, max_len=9, dropout=0.5,
                                    dropout_places=places), 31)
    inputs = torch.randint(0, 31, (5, 9))
    inputs[0, 6:] = 31  # padding
    model.eval()
    plain = model(inputs)
    model.train()
    layers = {"embedding": [model.embedding_dropout], "feed_forward": [block.feed_forward[2] for block in model.blocks],
              "residual": [block.dropout for block in model.blocks]}
    for place, modules in layers.items():
        assert all(isinstance(module, torch.nn.Dropout) == (place in places) for module in modules), place
    assert all(block.attention.dropout == (0.5 if "attention" in places else 0.0) for block in model.blocks)
    assert torch.equal(model(inputs), plain) == (places == [])


def test_an_unknown_dropout_place_is_one_line():
    with pytest.raises(CutrecError, match="config key 'model.dropout_places' is 'ffn'; choose one of"):
        build_config(None, ["model.dropout_places=embedding,ffn"])
    assert build_config(None, ["model.dropout_places="]).model.dropout_places == []


@pytest.mark.parametrize(("placement", "gate"), [("pre", False), ("post", False), ("pre", True), ("post", True)])
@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec"])
def test_norm_placement_and_residual_gates_follow_their_formulas_in_float64(placement, gate, model_name):
    """Each block, in float64 without dropout, against the formula written out from its own weights: pre-norm
    x + g * f(norm(x)) then a final norm, post-norm norm(x + g * f(x)) and no final norm, g = sigmoid(W u + b) of
    the sublayer's input u (1 without gates); every parameter gets a gradient and a reload gives the same output."""
    rng = np.random.default_rng()
    torch.manual_seed(int(rng.integers(1 << 30)))
    dim, length = 12, int(rng.integers(5, 11))
    config = ModelConfig(name=model_name, dim=dim, num_blocks=2, num_heads=3, max_len=length, dropout=0.3,
                         norm_placement=placement, residual_gate=gate)
    model = build_model(config, 37).double()
    inputs = torch.randint(0, 37, (4, length))
    inputs[1, length - 2:] = 37  # padding
    model.train()
    model(inputs).sum().backward()
    assert all(p.grad is not None for name, p in model.named_parameters() if "item_embedding" not in name)
    model.eval()
    is_item = inputs != 37
    keep = is_item.unsqueeze(-1).double()
    x = model.embedding_dropout(model.item_embedding(inputs) + model.position_embedding(
        (length - is_item.sum(1, keepdim=True) + torch.arange(length)).clamp(0, length - 1))) * keep
    for block in model.blocks:
        for norm, layer, gate_layer in ((block.attention_norm, lambda u, b=block: b.attention(u, is_item),
                                         block.attention_gate),
                                        (block.feed_forward_norm, block.feed_forward, block.feed_forward_gate)):
            inner = x if placement == "post" else norm(x)
            out = layer(inner) * (torch.sigmoid(gate_layer(inner)) if gate else 1.0)
            x = norm(x + out) if placement == "post" else x + out
        x = x * keep
    expected = x if placement == "post" else model.final_norm(x)
    assert isinstance(model.final_norm, torch.nn.LayerNorm) == (placement == "pre")
    assert (model.blocks[0].attention_gate is not None) == gate
    torch.testing.assert_close(model(inputs), expected, rtol=1e-10, atol=1e-10)
    again = build_model(config, 37).double()
    again.load_state_dict(model.state_dict())
    again.eval()
    torch.testing.assert_close(again(inputs), expected, rtol=1e-10, atol=1e-10)
