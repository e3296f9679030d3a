"""The memory estimator against hand-computed values for small configs, batch_size=auto, and `cutrec estimate`."""

import numpy as np
import pytest
import torch

from cutrec.cli import main
from cutrec.config import build_config
from cutrec.errors import CutrecError
from cutrec.train import memory

# SASRec, N=10 items, D=4, L=3, one block. Parameters by hand: item embedding (N + 1 padding) x D = 44, positions
# L x D = 12, block: two norms 2 x 2D = 16, qkv D x 3D + 3D = 60, out D x D + D = 20, feed-forward 2 x (D x D + D)
# = 40, final norm 2D = 8: 200 in all.
TINY = ["model.dim=4", "model.max_len=3", "model.num_blocks=1", "model.num_heads=1"]
LENGTHS = np.array([5, 2, 3, 1])  # SASRec targets min(n - 1, L): 3, 1, 2 (the sequence of 1 item is left out)


def test_parameter_count_by_hand():
    assert memory.parameter_count(build_config(None, TINY), 10) == 200
    assert memory.parameter_count(build_config(None, [*TINY, "model.name=bert4rec"]), 10) == 204  # + mask row


def test_batch_positions_by_hand():
    config = build_config(None, TINY)
    assert memory.batch_positions(config, LENGTHS, 3) == 6  # every sequence: 3 + 1 + 2
    # batch 2 of counts (3, 1, 2): mean 4 + 4 * std 0.8165 * sqrt(2 * (3 - 2) / (3 - 1)) = 7.27, but the two
    # largest counts make only 5
    assert memory.batch_positions(config, LENGTHS, 2) == 5
    # BERT4Rec: n' = min(n, 3) = 3, 2, 3, 1; mean n'p + (1 - p)^n' and variance n'p(1 - p) at p = 0.5
    bert = build_config(None, [*TINY, "model.name=bert4rec", "model.mask_prob=0.5"])
    mean = 1.5 + 0.125 + 1.0 + 0.25 + 1.5 + 0.125 + 0.5 + 0.5
    variance = (3 + 2 + 3 + 1) * 0.25
    assert memory.batch_positions(bert, LENGTHS, 4) == int(np.ceil(mean + 4 * np.sqrt(variance)))


@pytest.mark.parametrize(
    "loss,num_items,part,part_bytes",
    [
        ("CE", 10, "loss buffers", 10 * 5 * 10),  # bf16 autocast: 10 bytes per logit of [M=5, N=10]
        ("CE-", 10, "loss buffers", 5 * 7 * (6 * 4 + 16)),  # [M, K=7, D] rows at 6 bytes, [M, K] scores at 16
        ("CCE", 10, "loss buffers", 5 * (8 * 4 + 16)),  # O(M): 240 bytes, more than the [N, D] fp32 gradient's 160
        ("CCE", 100, "item-table gradient", 4 * 100 * 4),  # 1,600 bytes, more than the loss's 240
    ],
)
def test_estimate_by_hand(loss, num_items, part, part_bytes):
    config = build_config(None, [*TINY, f"loss.name={loss}", "loss.num_negatives=7"])
    estimate = memory.estimate(config, num_items, LENGTHS, 2)
    params = 200 + 4 * (num_items - 10)
    tokens = 2 * 3
    expected = {
        "parameters": 4 * params,
        "gradients": 4 * params,
        "optimizer": 8 * params,
        "library workspaces": memory.LIBRARY_WORKSPACES,
        "activations": (18 + 26) * tokens * 4 + 8 * 5 * 4,  # per token and width, and the [M, D] hidden states
        part: part_bytes,
    }
    assert estimate.positions == 5
    assert estimate.parts == expected
    assert estimate.total == sum(expected.values())


def test_the_largest_batch_is_the_last_that_fits():
    config = build_config(None, [*TINY, "loss.name=CE"])
    budget = memory.estimate(config, 10, LENGTHS, 2).total
    assert memory.largest_batch(config, 10, LENGTHS, budget) == 2
    assert memory.largest_batch(config, 10, LENGTHS, budget - 1) == 1
    assert memory.largest_batch(config, 10, LENGTHS, 10**12) == 3  # never more than every sequence at once
    assert memory.largest_batch(config, 10, LENGTHS, 1000) == 0


def test_auto_batch_needs_a_gpu():
    config = build_config(None, [*TINY, "train.batch_size=auto"])
    with pytest.raises(CutrecError, match="on the CPU give a number"):
        memory.checked_batch_size(config, 10, LENGTHS, torch.device("cpu"))


def test_estimate_command(capsys, tmp_path):
    common = ["--data.synthetic.num_users=300", "--data.synthetic.num_items=80", f"--data.cache_dir={tmp_path}"]
    assert main(["estimate", "--loss=CE", "--batch-size=64", *common, "--memory-gb=1"]) == 0
    out = capsys.readouterr().out
    assert "estimated peak training memory" in out and "at batch 64" in out
    assert "largest batch within 90% of train.memory_limit_gb=1" in out
    assert main(["estimate", "--batch-size=auto", *common]) in (0, 2)  # 2 without a GPU: nothing to fit into
