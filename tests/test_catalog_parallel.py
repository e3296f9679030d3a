"""Catalog parallel on the CPU with gloo (torchrun, 2 and 3 processes): the cut CE over a table split by rows
equals the float64 full-softmax CE on the whole table (loss, hidden and item gradients), through the PyTorch
fallback and the Triton interpreter, the top-k merged across shards equals the single-device top-k, ties
included, and one catalog-parallel training step (a sharded input embedding, DistributedDataParallel summing the
replicated gradients) has the loss and the gradients of one process."""

import csv
import importlib.util
import json
import textwrap

import numpy as np
import pytest
import torch

from cutrec.cli import main
from cutrec.eval.ranking import items_of_keys, top_k_keys

SCRIPT = """
import sys
import numpy as np
import torch
import torch.distributed as dist
from cutrec import distributed
from cutrec.losses.catalog_parallel import shard_bounds, sharded_cut_cross_entropy, sharded_top_k_keys

ranks = distributed.start(torch.device("cpu"), 1.0)
impl, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(seed)  # the same draws on every rank
M, N, D = 29, 37, 12
hidden = torch.tensor(rng.normal(size=(M, D)), dtype=torch.float32)
table = torch.tensor(rng.normal(size=(N, D)) * 0.5, dtype=torch.float32)
targets = torch.tensor(rng.integers(0, N, M))
targets[rng.random(M) < 0.2] = -100
start, stop = shard_bounds(N, ranks)
hidden.requires_grad_(True)
items = table[start:stop].clone().requires_grad_(True)
loss = sharded_cut_cross_entropy(hidden, items, targets, start=start, ranks=ranks, impl=impl)  # [M]
valid = targets != -100
(loss.sum() / valid.sum()).backward()
grad_hidden = hidden.grad.clone()
dist.all_reduce(grad_hidden)  # the ranks' shares
grad_items = distributed.gather_rows(items.grad, N, ranks)  # [N, D] the shards' gradients, in order
users = torch.tensor(rng.integers(-2, 3, size=(17, D)), dtype=torch.float32)  # small integers: exact scores in any
scored = torch.tensor(rng.integers(-2, 3, size=(N, D)), dtype=torch.float32)  # summation order, and many ties
offsets = np.concatenate([[0], np.cumsum(rng.integers(0, 6, 17))])
seen = rng.integers(0, N, offsets[-1])
exclude = (torch.from_numpy(offsets), torch.from_numpy(seen))
keys, exact = sharded_top_k_keys(users, scored[start:stop], 7, start=start, ranks=ranks, exclude=exclude, item_chunk=5)
every, _ = sharded_top_k_keys(users, scored[start:stop], 7, start=start, ranks=ranks, exclude=exclude, every_key=True)
smooth, smooth_exact = sharded_top_k_keys(hidden.detach(), table[start:stop], 7, start=start, ranks=ranks, item_chunk=4)
if ranks.main:
    torch.save({"loss": loss.detach(), "grad_hidden": grad_hidden, "grad_items": grad_items,
                "keys": keys, "exact": exact, "every": every, "smooth": smooth, "smooth_exact": smooth_exact,
                "hidden": hidden.detach(), "table": table,
                "targets": targets, "users": users, "scored": scored, "offsets": exclude[0], "seen": exclude[1]}, out)
distributed.finish()
"""


@pytest.mark.parametrize("processes,impl", [(2, "torch"), (3, "torch"), (3, "triton")])
def test_sharded_cut_cross_entropy_and_top_k_equal_the_whole_catalog(tmp_path, torchrun, processes, impl):
    if impl == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("the Triton interpreter needs triton")
    script = tmp_path / "shards.py"
    script.write_text(textwrap.dedent(SCRIPT))
    seed = int(np.random.default_rng().integers(1 << 30))  # fresh inputs every run
    done = torchrun(processes, [str(script), impl, str(seed), str(tmp_path / "out.pt")], tmp_path,
                    env={"TRITON_INTERPRET": "1" if impl == "triton" else "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    hidden = out["hidden"].double().requires_grad_(True)
    table = out["table"].double().requires_grad_(True)
    targets = out["targets"]
    valid = targets != -100
    logits = hidden @ table.T  # [M, N] the float64 reference
    expected = torch.where(valid, torch.logsumexp(logits, 1) - logits.gather(1, targets.clamp(min=0)[:, None])[:, 0],
                           0.0)
    (expected.sum() / valid.sum()).backward()
    torch.testing.assert_close(out["loss"].double(), expected.detach(), rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(out["grad_hidden"].double(), hidden.grad, rtol=2e-4, atol=2e-6)
    torch.testing.assert_close(out["grad_items"].double(), table.grad, rtol=2e-4, atol=2e-6)
    exclude = (out["offsets"], out["seen"])
    single, _ = top_k_keys(out["users"], out["scored"], 7, exclude=exclude, every_key=True)
    assert torch.equal(out["every"], single)  # the same keys: global ids, ties ordered by item id
    if bool(out["exact"]):  # the candidates met no tie: the fast path's merge is exact too
        assert torch.equal(out["keys"], single)
    assert bool(out["smooth_exact"])  # continuous scores: no ties, the fast path is exact
    smooth, _ = top_k_keys(hidden.detach().float(), out["table"], 7)
    assert torch.equal(items_of_keys(out["smooth"]), items_of_keys(smooth))


SAMPLED_SCRIPT = """
import sys
import numpy as np
import torch
from cutrec import distributed
from cutrec.losses.catalog_parallel import shard_bounds, shard_distribution, sharded_sampled_cut_cross_entropy
from cutrec.losses.sampled_cut_cross_entropy import BLOCK_ROWS
from cutrec.losses.sampling import NegativeDistribution, counter_draws, key_tensor, shifted_draws

ranks = distributed.start(torch.device("cpu"), 1.0)
impl, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(seed)  # the same draws on every rank
M, N, D, K = 150, 47, 12, 13  # M > 2 BLOCK_ROWS: several blocks; M > N: several rounds of share="offsets"
hidden = torch.tensor(rng.normal(size=(M, D)), dtype=torch.float32)
table = torch.tensor(rng.normal(size=(N, D)) * 0.5, dtype=torch.float32)
targets = torch.tensor(rng.integers(0, N, M))
targets[rng.random(M) < 0.2] = -100
counts = torch.tensor(rng.integers(0, 9, N), dtype=torch.float32)
counts[31:] = 0  # popularity: the last shard of three (rows 31..46) has no mass, so it draws nothing
start, stop = shard_bounds(N, ranks)
results = []
cases = (("none", False, torch.float32), ("none", True, torch.float32), ("block", True, torch.float32),
         ("batch", False, torch.float32), ("offsets", False, torch.float32), ("none", True, torch.float64))
for share, popularity, dtype in cases:
    whole = NegativeDistribution.popularity(counts, 0.75) if popularity else NegativeDistribution.uniform(N)
    distribution, count = shard_distribution(whole, K, ranks)
    draw_seed = 100 + ranks.rank
    h = hidden.to(dtype, copy=True).requires_grad_(True)
    items = table[start:stop].to(dtype, copy=True).requires_grad_(True)
    loss = sharded_sampled_cut_cross_entropy(h, items, targets, start=start, ranks=ranks, num_negatives=count,
                                             distribution=distribution, share=share, seed=draw_seed, impl=impl)
    valid = targets != -100
    (loss.sum() / valid.sum()).backward()
    grad_hidden = distributed.sum_all(h.grad, ranks)  # the ranks' shares
    grad_items = distributed.gather_rows(items.grad, N, ranks)  # [N, D]
    rows, key = torch.arange(M), key_tensor(draw_seed, stop - start, torch.device("cpu"))  # this shard's draws
    if count == 0:
        ids = torch.zeros((M, 0), dtype=torch.int64)
    elif share == "offsets":
        ids = shifted_draws(stop - start, key, rows, count)
    else:
        streams = {"none": rows, "block": rows // BLOCK_ROWS, "batch": torch.zeros_like(rows)}[share]
        alias = None if distribution.probs is None else distribution.alias_table(torch.device("cpu"))
        ids = counter_draws(stop - start, key, streams, count, alias)
    log_q = (torch.full(ids.shape, -np.log(stop - start)) if distribution is None or distribution.probs is None
             else distribution.probs.double().log()[ids])
    drawn = distributed.gather_objects((ids + start, np.log(max(count, 1)) + log_q), ranks)
    results.append({"share": share, "popularity": popularity, "dtype": str(dtype), "loss": loss.detach(),
                    "grad_hidden": grad_hidden, "grad_items": grad_items, "ids": torch.cat([d[0] for d in drawn], 1),
                    "correction": torch.cat([d[1] for d in drawn], 1), "counts": [len(d[0][0]) for d in drawn]})
if ranks.main:
    torch.save({"results": results, "hidden": hidden, "table": table, "targets": targets, "counts": counts}, out)
distributed.finish()
"""


@pytest.mark.parametrize("processes,impl", [(1, "torch"), (3, "torch"), (1, "triton"), (3, "triton")])
def test_sharded_sampled_cut_cross_entropy_equals_ce_minus_on_the_shards_draws(tmp_path, torchrun, processes, impl):
    """Each shard draws its K_r negatives from its own rows; loss and gradients equal the float64 CE- given the same
    negatives and logQ corrections log(K_r q_r(n)); on one rank they equal the single-device CCE- (same draws)."""
    if impl == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("the Triton interpreter needs triton")
    script = tmp_path / "sampled_shards.py"
    script.write_text(textwrap.dedent(SAMPLED_SCRIPT))
    seed = int(np.random.default_rng().integers(1 << 30))
    done = torchrun(processes, [str(script), impl, str(seed), str(tmp_path / "out.pt")], tmp_path,
                    env={"TRITON_INTERPRET": "1" if impl == "triton" else "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    targets = out["targets"]
    valid = targets != -100
    for result in out["results"]:
        name = f"{result['share']}, popularity {result['popularity']}, {result['dtype']}"
        assert sum(result["counts"]) == 13, name  # the K_r sum to K
        if result["popularity"] and processes == 3:
            assert result["counts"][2] == 0, name  # the shard without mass draws nothing
        hidden = out["hidden"].double().requires_grad_(True)
        table = out["table"].double().requires_grad_(True)
        ids = result["ids"]  # [M, K] global ids
        safe = targets.clamp(min=0)
        positive = (hidden * table[safe]).sum(1, keepdim=True)  # [M, 1]
        negative = torch.bmm(table[ids], hidden[:, :, None])[:, :, 0] - result["correction"]  # [M, K]
        negative = negative.masked_fill(ids == safe[:, None], -torch.inf)
        scores = torch.cat([positive, negative], 1)
        expected = torch.where(valid, torch.logsumexp(scores, 1) - positive[:, 0], 0.0)
        (expected.sum() / valid.sum()).backward()
        torch.testing.assert_close(result["loss"].double(), expected.detach(), rtol=2e-5, atol=2e-6, msg=name)
        torch.testing.assert_close(result["grad_hidden"].double(), hidden.grad, rtol=2e-4, atol=2e-6, msg=name)
        torch.testing.assert_close(result["grad_items"].double(), table.grad, rtol=2e-4, atol=2e-6, msg=name)
        if processes == 1:  # the single-device CCE- with the same seed draws the same negatives
            from cutrec.losses import NegativeDistribution, sampled_cut_cross_entropy

            distribution = (NegativeDistribution.popularity(out["counts"], 0.75) if result["popularity"] else
                            "uniform")
            single = sampled_cut_cross_entropy(out["hidden"], out["table"], targets, num_negatives=13,
                                               distribution=distribution, share=result["share"], seed=100,
                                               reduction="none", impl="torch")
            torch.testing.assert_close(result["loss"].float(), single, rtol=1e-5, atol=1e-6, msg=name)


STEP_SCRIPT = """
import sys
import numpy as np
import torch
from cutrec import distributed
from cutrec.config import build_config
from cutrec.data.splits import Sequences
from cutrec.losses import build_loss
from cutrec.train.catalog_parallel import CatalogParallelLoss, shard_catalog, wrap
from cutrec.train.loop import new_state, rank_part
from cutrec.train.step import TrainStep, make_optimizer

def step(ranks, model_name, seed):
    config = build_config({"model": {"name": model_name, "max_len": 9, "dim": 16, "num_heads": 2, "dropout": 0.0},
                           "loss": {"name": "CCE"},
                           "train": {"batch_size": 12, "device": "cpu", "lr": 0.01, "grad_clip": 0.05}})  # clipped
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 20, 30)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    train = Sequences(offsets=offsets, items=rng.integers(0, 41, int(offsets[-1])).astype(np.int32),
                      users=np.arange(30))
    torch.manual_seed(0)
    state = new_state(config, 41, torch.device("cpu"))
    inputs, targets = state.model.training_batch(train, rng.permutation(30)[:12], np.random.default_rng(3))
    share = 12 // ranks.world
    if ranks.distributed:
        shard_catalog(state.model, ranks)
        state.optimizer = make_optimizer(config, state.model, torch.device("cpu"))  # over the shard
        forward, loss_fn = wrap(state.model, torch.device("cpu")), CatalogParallelLoss(state.model, ranks, config.loss,
                                                                                     torch.ones(41), "torch")
        part = rank_part(inputs, targets, ranks)
    else:
        forward, loss_fn, part = state.model, build_loss(config.loss, 41, torch.ones(41)), (inputs, targets)
    run = TrainStep(state, forward, loss_fn, config, torch.device("cpu"), 41, rows=share * 9, batch_size=share,
                    ranks=ranks, catalog_parallel=ranks.distributed)
    run.run(*part)
    grads = {name: p.grad.clone() for name, p in state.model.named_parameters()}
    return grads, state.epoch_loss.clone()

if __name__ == "__main__":
    ranks = distributed.start(torch.device("cpu"), 1.0)
    grads, loss = step(ranks, sys.argv[1], int(sys.argv[2]))
    table = distributed.gather_rows(grads.pop("item_embedding.weight"), 41, ranks)  # [N, D] the shards' rows
    if ranks.main:
        torch.save({"grads": grads, "table": table, "loss": loss}, sys.argv[3])
    distributed.finish()
"""


@pytest.mark.parametrize("processes,model", [(2, "sasrec"), (3, "bert4rec")])
def test_a_catalog_parallel_step_has_the_loss_and_gradients_of_one_process(tmp_path, torchrun, script_function,
                                                                           processes, model):
    script = tmp_path / "cp_step.py"
    script.write_text(textwrap.dedent(STEP_SCRIPT))
    seed = int(np.random.default_rng().integers(1 << 30))
    done = torchrun(processes, [str(script), model, str(seed), str(tmp_path / "cp.pt")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    step = script_function(script, "step")
    from cutrec.distributed import SINGLE

    single, loss = step(SINGLE, model, seed)
    parallel = torch.load(tmp_path / "cp.pt", weights_only=True)
    torch.testing.assert_close(parallel["loss"], loss, rtol=1e-5, atol=1e-6)
    full = single.pop("item_embedding.weight")  # [N + S, D]
    torch.testing.assert_close(parallel["table"], full[:41], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(parallel["grads"].pop("item_embedding.special"), full[41:], rtol=1e-4, atol=1e-6)
    assert parallel["grads"].keys() == single.keys()
    for name, grad in single.items():
        torch.testing.assert_close(parallel["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


TINY = ["--data.synthetic.num_users=200", "--data.synthetic.num_items=80", "--data.synthetic.mean_length=8",
        "--model.dim=16", "--model.num_blocks=1", "--model.max_len=10", "--model.dropout=0", "--device=cpu",
        "--train.progress=false", "--loss=CCE", "--batch-size=36", "--train.dist_timeout_minutes=1"]


def _log(folder):
    with (folder / "log.csv").open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("processes,model,batch,loss", [(1, "sasrec", 36, "CCE"), (2, "sasrec", 36, "CCE"),
                                                         (3, "bert4rec", 33, "CCE"), (1, "sasrec", 36, "CCE-")])
def test_a_catalog_parallel_run_equals_one_process_and_resumes(tmp_path, torchrun, processes, model, batch, loss):
    # 1 process: the code path alone (CCE-: the same draws as one device); batch 33 of 200 sequences: the last batch
    # of 2 rows leaves rank 2 without rows
    args = ["train", *TINY, f"--model={model}", f"--batch-size={batch}", f"--loss={loss}", "--loss.num_negatives=7",
            f"--out={tmp_path}"]
    assert main([*args, "--epochs=3", "--name=single"]) == 0
    for command in ([*args, "--epochs=3", "--name=whole", "--train.catalog_parallel=true"],
                    [*args, "--epochs=1", "--name=parts", "--train.catalog_parallel=true"],
                    ["train", "--resume", str(tmp_path / "parts"), "--epochs=3"]):
        done = torchrun(processes, ["-m", "cutrec", *command], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    single, whole, parts = (_log(tmp_path / name) for name in ("single", "whole", "parts"))
    assert [row["train_loss"] for row in parts] == [row["train_loss"] for row in whole]  # a resume loses nothing
    for one, many in zip(single, whole, strict=True):
        for key in ("train_loss", "NDCG@10", "HR@10"):
            assert float(many[key]) == pytest.approx(float(one[key]), rel=1e-4, abs=1e-6), key
    one, many = (json.loads((tmp_path / name / "metrics.json").read_text())["test"] for name in ("single", "whole"))
    assert many["MostPopular"] == one["MostPopular"]
    model_name = next(name for name in one if name != "MostPopular")
    assert many[model_name]["NDCG@10"] == pytest.approx(one[model_name]["NDCG@10"], rel=1e-4, abs=1e-6)
    assert main(["train", "--resume", str(tmp_path / "whole"), "--epochs=4"]) == 2  # one process cannot resume it
    assert main(["evaluate", str(tmp_path / "whole")]) == 0  # best.pt is one device's model


def test_a_sampled_catalog_parallel_run_resumes_exactly(tmp_path, torchrun):
    """CCE- over two shards (popularity draws, shared by blocks): each rank draws from its own rows, and a run stopped
    after one epoch and resumed trains exactly as one that ran through (the draws are a function of step and rank)."""
    args = ["train", *TINY, "--loss=CCE-", "--loss.num_negatives=9", "--loss.distribution=popularity",
            "--loss.share=block", "--train.catalog_parallel=true", f"--out={tmp_path}"]
    for command in ([*args, "--epochs=3", "--name=whole"], [*args, "--epochs=1", "--name=parts"],
                    ["train", "--resume", str(tmp_path / "parts"), "--epochs=3"]):
        done = torchrun(2, ["-m", "cutrec", *command], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    whole, parts = _log(tmp_path / "whole"), _log(tmp_path / "parts")
    assert [row["train_loss"] for row in parts] == [row["train_loss"] for row in whole]
    assert [row["NDCG@10"] for row in parts] == [row["NDCG@10"] for row in whole]
    losses = [float(row["train_loss"]) for row in whole]
    assert losses[-1] < losses[0]  # it learns


def test_catalog_parallel_is_refused_where_it_cannot_run(tmp_path, capsys):
    assert main(["train", *TINY, "--train.catalog_parallel=true", f"--out={tmp_path}"]) == 2
    assert "start them with cutrec train --devices G (or torchrun)" in capsys.readouterr().err


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_a_target_outside_the_table_gets_the_softmax_gradient_without_a_target_term(impl, monkeypatch):
    if impl == "triton":
        if importlib.util.find_spec("triton") is None:
            pytest.skip("the Triton interpreter needs triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    from cutrec.losses.cut_cross_entropy import _forward_impl, _item_backward_impl

    rng = np.random.default_rng()
    hidden = torch.tensor(rng.normal(size=(13, 16)), dtype=torch.float32)
    items = torch.tensor(rng.normal(size=(21, 16)), dtype=torch.float32)
    targets = torch.tensor(rng.integers(0, 21, 13))
    targets[::3] = -1  # outside the table, not the ignore index
    _, lse, factor = _forward_impl(hidden, items, None, targets, -100, True, False, impl)
    grad_loss = torch.tensor(rng.uniform(0.5, 1.5, 13), dtype=torch.float32)
    grad_items, _ = _item_backward_impl(hidden, items, None, targets, lse, grad_loss, -100, impl)
    probs = torch.softmax(hidden.double() @ items.double().T, dim=1)  # [M, N]
    inside = targets >= 0
    one_hot = torch.zeros_like(probs)
    one_hot[inside, targets[inside]] = 1.0
    torch.testing.assert_close(factor.double(), (probs - one_hot) @ items.double(), rtol=1e-4, atol=1e-5)
    expected = ((probs - one_hot) * grad_loss.double()[:, None]).T @ hidden.double()
    torch.testing.assert_close(grad_items.double(), expected, rtol=1e-4, atol=1e-5)
