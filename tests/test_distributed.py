"""Data parallel on the CPU with gloo (torchrun, 2 and 3 processes): one step's gradients and whole runs equal a
single process with the same global batch, a resumed data-parallel run equals an uninterrupted one, a lost rank
stops every rank in bounded time with one line, and bad launches are refused before any process starts."""

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cutrec import distributed
from cutrec.cli import main
from cutrec.distributed import Ranks

TINY = ["--data.synthetic.num_users=200", "--data.synthetic.num_items=80", "--data.synthetic.mean_length=8",
        "--model.dim=16", "--model.num_blocks=1", "--model.max_len=10", "--device=cpu", "--train.progress=false",
        "--train.dist_timeout_minutes=1"]


def _log(folder: Path) -> list[dict[str, str]]:
    with (folder / "log.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_shards_cover_the_rows_once_in_rank_order():
    rng = np.random.default_rng()
    for _ in range(20):
        count, world = int(rng.integers(0, 50)), int(rng.integers(1, 6))
        bounds = [distributed.shard(count, Ranks(rank, world)) for rank in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1


STEP_SCRIPT = """
import sys
import numpy as np
import torch
from cutrec import distributed
from cutrec.config import build_config
from cutrec.data.splits import Sequences
from cutrec.losses import build_loss
from cutrec.train.loop import new_state, rank_part
from cutrec.train.step import TrainStep

def gradients(ranks, model_name, loss_name, rows):
    config = build_config({{"model": {{"name": model_name, "max_len": 12, "dim": 16, "num_heads": 2, "dropout": 0.0}},
                           "loss": {{"name": loss_name}},
                           "train": {{"batch_size": 24, "device": "cpu", "lr": 0.01}}}})
    rng = np.random.default_rng(7)
    lengths = rng.integers(2, 30, 40)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    train = Sequences(offsets=offsets, items=rng.integers(0, 50, int(offsets[-1])).astype(np.int32),
                      users=np.arange(40))
    torch.manual_seed(0)
    state = new_state(config, 50, torch.device("cpu"))
    forward = state.model
    if ranks.distributed:
        forward = torch.nn.parallel.DistributedDataParallel(state.model)
    loss_fn = build_loss(config.loss, 50, torch.ones(50))
    share = 24 // ranks.world
    step = TrainStep(state, forward, loss_fn, config, torch.device("cpu"), 50, rows=share * 12, batch_size=share,
                     ranks=ranks)
    inputs, targets = state.model.training_batch(train, np.arange(rows), np.random.default_rng(3))
    step.run(*rank_part(inputs, targets, ranks))
    return {{name: p.grad.clone() for name, p in state.model.named_parameters()}}, state.epoch_loss.clone()

if __name__ == "__main__":
    ranks = distributed.start(torch.device("cpu"), 1.0)
    grads, loss = gradients(ranks, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    loss = distributed.sum_all(loss, ranks)
    if ranks.main:
        torch.save({{"grads": grads, "loss": loss}}, sys.argv[4])
    distributed.finish()  # a process that exits inside its group can abort
"""


@pytest.mark.parametrize(
    "processes,model,loss,rows",
    [(2, "sasrec", "CE", 24), (3, "bert4rec", "CE", 24), (3, "sasrec", "CE", 2)],  # 2 rows: a rank without rows
)
def test_one_data_parallel_step_has_the_gradients_of_one_process(tmp_path, torchrun, script_function, processes,
                                                                  model, loss, rows):
    script = tmp_path / "step.py"
    script.write_text(textwrap.dedent(STEP_SCRIPT.format()))
    done = torchrun(processes, [str(script), model, loss, str(rows), str(tmp_path / "dp.pt")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    gradients = script_function(script, "gradients")  # the same function, in this single process
    single, single_loss = gradients(distributed.SINGLE, model, loss, rows)
    parallel = torch.load(tmp_path / "dp.pt", weights_only=True)
    assert torch.allclose(parallel["loss"], single_loss, rtol=1e-6, atol=1e-7)
    for name, grad in single.items():
        torch.testing.assert_close(parallel["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("model", ["sasrec", "bert4rec"])
def test_a_data_parallel_run_equals_one_process_with_the_same_global_batch(tmp_path, torchrun, model):
    args = [*TINY, f"--model={model}", "--model.dropout=0", "--loss=CE", "--epochs=2", "--batch-size=33",
            f"--out={tmp_path}"]  # 200 sequences: the last batch of 2 rows leaves rank 2 without rows
    assert main(["train", *args, "--name=single"]) == 0
    done = torchrun(3, ["-m", "cutrec", "train", *args, "--name=parallel"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    single, parallel = _log(tmp_path / "single"), _log(tmp_path / "parallel")
    assert len(single) == len(parallel) == 2
    for one, many in zip(single, parallel, strict=True):
        assert one["step"] == many["step"]
        for key in ("train_loss", "NDCG@10", "HR@10"):
            assert float(many[key]) == pytest.approx(float(one[key]), rel=1e-4, abs=1e-6), key
    assert not (tmp_path / "parallel" / "tensorboard").exists()
    assert sorted(p.name for p in (tmp_path / "parallel").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir())  # rank 0 alone wrote the same files


def test_a_resumed_data_parallel_run_equals_an_uninterrupted_one(tmp_path, torchrun):
    args = [*TINY, "--model.dropout=0.3", "--loss=CE-", "--negatives=8", "--batch-size=32", f"--out={tmp_path}"]
    whole = torchrun(2, ["-m", "cutrec", "train", *args, "--epochs=3", "--name=whole"], tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = torchrun(2, ["-m", "cutrec", "train", *args, "--epochs=1", "--name=parts"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    rest = torchrun(2, ["-m", "cutrec", "train", "--resume", str(tmp_path / "parts"), "--epochs=3"], tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert [row["train_loss"] for row in _log(tmp_path / "parts")] == [row["train_loss"] for row in
                                                                        _log(tmp_path / "whole")]


def test_ranks_draw_their_own_negatives():
    from cutrec.train.step import step_seed

    seeds = {step_seed(5, 11, rank) for rank in range(4)}
    assert len(seeds) == 4 and step_seed(5, 11, 0) == step_seed(5, 11)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_lost_rank_stops_every_rank_with_one_line(tmp_path):
    args = ["-m", "cutrec", "train", "--data.synthetic.num_users=3000", "--data.synthetic.num_items=300",
            "--model.dim=16", "--epochs=200", "--batch-size=16", "--device=cpu", "--train.progress=false",
            "--loss=CE", "--train.dist_timeout_minutes=0.5", f"--out={tmp_path}", "--name=lost"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args]
    run = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (tmp_path / "lost" / "last.pt").exists():  # one epoch done
        assert time.monotonic() < deadline and run.poll() is None, "the run did not reach its first epoch end"
        time.sleep(0.2)
    victim = next(pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if _is_rank(pid, run.pid, 1))
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    _, stderr = run.communicate(timeout=90)
    assert run.returncode != 0 and time.monotonic() - started < 60
    lines = [line for line in stderr.splitlines() if line.startswith("cutrec: error: rank 0 of 2 lost the other")]
    assert len(lines) == 1, stderr[-3000:]
    assert (tmp_path / "lost" / "last.pt").exists()  # the last good checkpoint is kept


def _is_rank(pid: int, launcher: int, rank: int) -> bool:
    """Whether `pid` is the worker of `rank` that torchrun (`launcher`) started."""
    try:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return False
    return parent == launcher and f"RANK={rank}".encode() in environ


def test_bad_launches_are_refused_before_any_process_starts(tmp_path, capsys):
    assert main(["train", *TINY, "--devices=2", "--batch-size=33", f"--out={tmp_path}"]) == 2
    error = capsys.readouterr().err
    assert "train.batch_size=33 does not split evenly over 2 ranks" in error and error.count("\n") == 1
    assert main(["train", *TINY, "--devices=0"]) == 2
    assert "--devices 0 is out of range" in capsys.readouterr().err
    assert main(["train", *TINY, "--devices=2", "--batch-size=32", f"--data={tmp_path / 'absent.csv'}"]) == 2
    assert "absent.csv' does not exist" in capsys.readouterr().err
    assert main(["train", *TINY, "--devices=2", "--batch-size=32", "--loss=CE-", "--train.catalog_parallel=true"]) == 2
    assert "trains with the loss CCE or CCE-, not CE-" in capsys.readouterr().err
    assert main(["train", *TINY, "--devices=2", "--batch-size=32", "--loss=CCE-", "--loss.share=offsets",
                 "--loss.distribution=popularity", "--train.catalog_parallel=true"]) == 2  # refused before any rank
    assert "loss.share='offsets' draws uniformly" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_non_finite_step_stops_every_rank_at_that_step(tmp_path, torchrun):
    done = torchrun(2, ["-m", "cutrec", "train", *TINY, "--loss=CE", "--lr=1e30", "--epochs=3", "--batch-size=32",
                        f"--out={tmp_path}", "--name=nan"], tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("cutrec: error: step 2 (epoch 1) has loss")]
    assert done.returncode != 0 and len(errors) == 2, done.stderr[-3000:]  # each rank's one line, the same step
    assert not (tmp_path / "nan").exists()  # nothing to resume: rank 0 removed the folder


GRAPH_SCRIPT = """
import sys
import numpy as np
import torch
from cutrec import distributed
from cutrec.config import build_config
from cutrec.data.batches import epoch_order
from cutrec.data.splits import Sequences
from cutrec.losses import build_loss
from cutrec.train.loop import new_state
from cutrec.train.step import TrainStep

ranks = distributed.start(torch.device("cuda"), 1.0)
device = torch.device("cuda", ranks.local)
rng = np.random.default_rng(0)
lengths = rng.integers(1, 40, 90)
offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
train = Sequences(offsets=offsets, items=rng.integers(0, 300, int(offsets[-1])).astype(np.int32),
                  users=np.arange(90))
results = {}
for graph in (False, True):
    config = build_config({"model": {"name": sys.argv[1], "max_len": 24, "dim": 32, "num_heads": 2},
                           "loss": {"name": "CCE-", "num_negatives": 40},
                           "train": {"batch_size": 16, "cuda_graph": graph, "device": "cuda"}})
    torch.manual_seed(0)
    state = new_state(config, 300, device)
    with torch.cuda.stream(torch.cuda.Stream(device)):  # as train.loop builds it
        forward = torch.nn.parallel.DistributedDataParallel(state.model, device_ids=[device.index])
    step = TrainStep(state, forward, build_loss(config.loss, 300), config, device, 300, rows=384, batch_size=16,
                     ranks=ranks)
    order = epoch_order(train, min_length=state.model.min_train_length, rng=np.random.default_rng(0))
    losses = []
    for index in range(8):
        rows = order[(index * 16) % len(order) :][:16]  # [<= 16]
        inputs, targets = state.model.training_batch(train, rows, state.batch_rng)
        step.run(inputs, targets, most=10**6 if index == 5 else None)  # step 5: another rank's part has too many
        state.step += 1
        losses.append(state.epoch_loss.item())
    results[graph] = {"losses": losses, "params": [p.detach().cpu() for p in state.model.parameters()],
                      "captured": step.graph is not None, "eager_steps": step.eager_steps, "why": step.why_eager}
torch.save(results, sys.argv[2])
distributed.finish()
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model", ["sasrec", "bert4rec"])
def test_a_data_parallel_step_is_captured_and_replays_as_the_eager_one(tmp_path, torchrun, model):
    """DistributedDataParallel over NCCL (one rank: this machine's one GPU), its gradient all-reduce captured in the
    step's CUDA graph: the replays give the eager steps' losses and updates, and a batch that another rank could
    not fit in the graph's rows runs eagerly."""
    script = tmp_path / "graph.py"
    script.write_text(textwrap.dedent(GRAPH_SCRIPT))
    done = torchrun(1, [str(script), model, str(tmp_path / "out.pt")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = torch.load(tmp_path / "out.pt", weights_only=True)
    eager, graph = results[False], results[True]
    assert graph["captured"], graph["why"]
    assert graph["eager_steps"] >= 1  # step 5 at least
    np.testing.assert_allclose(graph["losses"], eager["losses"], rtol=1e-4)
    for ours, expected in zip(graph["params"], eager["params"], strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-4)
