"""The training step (cutrec.train.step): batch packing, the device-side skip of non-finite steps, and on a GPU the
CUDA graph against the eager step (same draws, same updates)."""

import numpy as np
import pytest
import torch

from cutrec.config import build_config, merged_values
from cutrec.data.batches import IGNORE_INDEX, epoch_order
from cutrec.data.splits import Sequences
from cutrec.losses import build_loss
from cutrec.train.loop import new_state
from cutrec.train.step import ROW_MULTIPLE, NonFiniteStep, TrainStep, round_rows

NUM_ITEMS = 300
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _sequences(seed: int) -> Sequences:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, 90)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(0, NUM_ITEMS, int(offsets[-1])).astype(np.int32)
    return Sequences(offsets=offsets, items=items, users=np.arange(90))


# the recipe's model and loss levers away from their defaults
LEVERS = {"model": {"ffn_activation": "swiglu", "ffn_mult": 2.0, "norm_placement": "post", "residual_gate": True,
                    "dropout_places": ["embedding", "residual"]},
          "loss": {"distribution": "popularity", "uniform_mix": 0.3}}


def _setup(device, loss="CCE-", model="sasrec", graph=True, share="none", batch_size=16, seed=0, rows=16 * 24,
           schedule=False, levers=False):
    train = {"batch_size": batch_size, "seed": seed, "cuda_graph": graph, "device": str(device)}
    if schedule:  # an lr that changes every step: a warm-up of 3 steps (of 2 per epoch), then a cosine decay
        train |= {"warmup_epochs": 1.5, "lr_decay": "cosine", "epochs": 5}
    config = build_config(merged_values({
        "model": {"name": model, "max_len": 24, "dim": 32, "num_heads": 2},
        "loss": {"name": loss, "num_negatives": 40, "share": share},
        "train": train,
    }, LEVERS if levers else {}))
    torch.manual_seed(seed)
    state = new_state(config, NUM_ITEMS, torch.device(device))
    loss_fn = build_loss(config.loss, NUM_ITEMS, torch.ones(NUM_ITEMS, device=device))
    step = TrainStep(state, state.model, loss_fn, config, torch.device(device), NUM_ITEMS, rows=rows,
                     batch_size=batch_size, steps_per_epoch=2)
    return config, state, step


def _batches(state, count, batch_size=16, seed=0):
    train = _sequences(seed)
    order = epoch_order(train, min_length=state.model.min_train_length, rng=np.random.default_rng(seed))
    for index in range(count):
        rows = order[(index * batch_size) % len(order):][:batch_size]  # [<= B]
        yield state.model.training_batch(train, rows, state.batch_rng)


def test_round_rows():
    assert round_rows(0, 1000) == 1
    assert round_rows(1, 1000) == ROW_MULTIPLE
    assert round_rows(ROW_MULTIPLE + 1, 1000) == 2 * ROW_MULTIPLE
    assert round_rows(999, 1000) == 1000


def test_pack_pads_a_partial_batch_with_its_own_rows_and_no_targets():
    config, state, step = _setup("cpu")
    inputs, targets = next(_batches(state, 1, batch_size=5))  # [5, L]: a last, smaller batch
    words, rows = step.pack(inputs, targets, step=3)
    limit = 16 * 24
    packed = words[:limit].view(16, 24)
    assert torch.equal(packed[:5], inputs) and torch.equal(packed[5:10], inputs)  # repeats of its own rows
    count = int((targets != IGNORE_INDEX).sum())
    assert rows == round_rows(count, limit)  # eager on the CPU: this batch's own R
    positions, picked = words[limit : limit + rows], words[limit + rows : limit + 2 * rows]
    assert torch.equal(picked[:count], targets.reshape(-1)[targets.reshape(-1) != IGNORE_INDEX])
    assert (picked[count:] == IGNORE_INDEX).all()
    assert torch.equal(targets.reshape(-1)[positions[:count]], picked[:count])  # positions index the flat batch
    assert words[-1] == 3


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
def test_a_non_finite_step_is_skipped_on_the_device_and_reported(device):
    config, state, step = _setup(device)
    scale = torch.ones((), device=device)
    plain = step.loss_fn
    step.loss_fn = lambda *args, **kwargs: plain(*args, **kwargs) * scale  # a NaN switch a graph also sees
    batches = _batches(state, 6)
    for _ in range(3):
        step.run(*next(batches))
        state.step += 1
    before = [p.detach().clone() for p in state.model.parameters()]
    adam_steps = [s["step"].clone() for s in state.optimizer.state.values()]
    scale.fill_(float("nan"))
    step.run(*next(batches))  # step 3: skipped
    state.step += 1
    for now, then in zip(state.model.parameters(), before, strict=True):
        assert torch.equal(now.detach(), then)
    assert all(torch.equal(s["step"], t) for s, t in zip(state.optimizer.state.values(), adam_steps, strict=True))
    scale.fill_(1.0)
    step.run(*next(batches))  # step 4 updates again
    assert any(not torch.equal(now.detach(), then) for now, then in zip(state.model.parameters(), before, strict=True))
    with pytest.raises(NonFiniteStep) as bad:
        step.check()
    assert bad.value.step == 3 and np.isnan(bad.value.loss)


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize(
    ("loss", "model", "share", "rows", "schedule", "levers"),
    [("CCE-", "sasrec", "none", 384, False, False), ("CCE-", "sasrec", "offsets", 384, False, False),
     ("CCE", "sasrec", "none", 384, False, False), ("CE", "bert4rec", "none", 384, False, False),
     ("CE-", "sasrec", "none", 384, False, False), ("CCE-", "bert4rec", "none", 64, False, False),
     ("CCE-", "sasrec", "none", 384, True, False), ("CCE-", "sasrec", "none", 384, False, True),
     ("CCE-", "bert4rec", "block", 384, False, True)],
)
def test_graph_replays_equal_eager_steps(loss, model, share, rows, schedule, levers):
    """The same run seed, the same batches: the graph's updates and summed loss equal the eager path's (dropout and
    negatives drawn alike), and each replay draws new negatives (the loss changes). With R = 64 most SASRec batches
    have more targets and run eagerly beside the graph; BERT4Rec's masked batches mostly fit. With an lr schedule,
    each replay reads the lr of its own step number. With the recipe's levers (SwiGLU, post-norm, gated residuals,
    dropout at two places, popularity negatives mixed with uniform) the graph is the same as the eager path too."""
    results = []
    for graph in (False, True):
        config, state, step = _setup("cuda", loss=loss, model=model, graph=graph, share=share, rows=rows,
                                     schedule=schedule, levers=levers)
        losses = []
        for inputs, targets in _batches(state, 8):
            step.run(inputs, targets)
            state.step += 1
            losses.append(state.epoch_loss.item())
        assert (step.graph is not None) == graph, step.why_eager
        assert step.eager_steps < 8
        results.append((losses, [p.detach().clone() for p in state.model.parameters()]))
    (eager_losses, eager_params), (graph_losses, graph_params) = results
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-4)
    for ours, expected in zip(graph_params, eager_params, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-4)
    assert len(set(np.diff(graph_losses).round(6))) > 1


def test_a_state_saved_by_an_unfused_optimizer_resumes_with_the_fused_one():
    """last.pt of a run that stepped a plain Adam (before the fused step existed) loads and steps again."""
    config, state, step = _setup("cpu")
    plain = torch.optim.Adam(state.model.parameters(), lr=config.train.lr)
    for parameter in state.model.parameters():
        parameter.grad = torch.randn_like(parameter)
    plain.step()
    saved = {**state.state_dict(), "optimizer": plain.state_dict()}
    config, resumed, step = _setup("cpu")
    resumed.load_state_dict(saved)
    assert all(group["fused"] for group in resumed.optimizer.param_groups)
    for inputs, targets in _batches(resumed, 2):
        step.run(inputs, targets)
        resumed.step += 1
    step.check()
    assert all(int(s["step"]) == 3 for s in resumed.optimizer.state.values())  # the saved step and two more


def test_a_log_from_an_earlier_version_is_rewritten_under_todays_columns(tmp_path):
    from cutrec.train.loop import EpochLog

    path = tmp_path / "log.csv"
    path.write_text("epoch,step,train_loss\n1,10,0.5\n")
    log = EpochLog(path, ["epoch", "step", "train_loss", "setup_seconds"])
    log.append({"epoch": "2", "step": "20", "train_loss": "0.4", "setup_seconds": "0.0"})
    assert path.read_text().splitlines() == ["epoch,step,train_loss,setup_seconds", "1,10,0.5,", "2,20,0.4,0.0"]
    assert log.epochs == {1, 2}
    assert not log.append({"epoch": "2", "step": "20", "train_loss": "0.3"})  # epoch 2 keeps its first row
    assert path.read_text().splitlines()[-1] == "2,20,0.4,0.0"
