"""Catalog parallel on the CPU with gloo (torchrun, 2 and 3 processes): the cut CE over a table split by rows
equals the float64 full-softmax CE on the whole table (loss, hidden and item gradients), through the PyTorch
fallback and the Triton interpreter, and the top-k merged across shards equals the single-device top-k, ties
included."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

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
def test_sharded_cut_cross_entropy_and_top_k_equal_the_whole_catalog(tmp_path, processes, impl):
    if impl == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("the Triton interpreter needs triton")
    script = tmp_path / "shards.py"
    script.write_text(textwrap.dedent(SCRIPT))
    seed = int(np.random.default_rng().integers(1 << 30))  # fresh inputs every run
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1" if impl == "triton" else "0"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={processes}", str(script), impl, str(seed), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=300, env=environment)
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
