"""Cut cross-entropy (impl="torch" and impl="triton") against the float64 reference CE, on CPU and on a GPU.

Acceptance (docs/losses.md, the pattern of Apple's CCE tests): for the loss and the gradients of hidden, items and
bias, max|impl - truth| <= max|plain PyTorch in the input dtype - truth| + tolerance * max|truth|, where truth is
`reference.cross_entropy` on float64 copies of the same inputs. NaN never passes. On a CPU the Triton kernels run
through the interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so the interpreted shapes stay small.
"""

import importlib

import pytest
import torch

from cutrec.errors import CutrecError
from cutrec.losses.cut_cross_entropy import CutCrossEntropy, cut_cross_entropy
from cutrec.losses.reference import cross_entropy

cce_module = importlib.import_module("cutrec.losses.cut_cross_entropy")  # the module, even if a package re-export
IMPLS = ["torch", "triton"]
# Relative to max|truth|: 1e-4 in fp32 (the kernels add N / BLOCK_N tile sums one after another: about 1600 tiles
# at N=100k, so up to ~1600 * 6e-8 = 1e-4; measured 2.2e-5 on an H200 where cuBLAS's tree sums gave 1e-5), one
# unit in the last place in bf16 (2**-8) and fp16 (2**-11), because G is rounded to the input dtype once before
# dloss * G is rounded again.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2**-8, torch.float16: 2**-11}
SHAPES = [(37, 1001, 24), (70, 333, 80), (5, 50, 16), (130, 2049, 33)]  # (M, N, D), none a multiple of a block
REDUCTIONS = ["mean", "sum", "none"]

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cpu_cases() -> list:
    """Every shape in fp32 and bf16; bias and reduction rotate so each appears with several shapes and dtypes."""
    cases = []
    for shape_index, shape in enumerate(SHAPES):
        for dtype_index, dtype in enumerate((torch.float32, torch.bfloat16)):
            has_bias = (shape_index + dtype_index) % 2 == 0
            reduction = REDUCTIONS[(2 * shape_index + dtype_index) % 3]
            case_id = f"{'x'.join(map(str, shape))}-{str(dtype)[6:]}-{'bias' if has_bias else 'nobias'}-{reduction}"
            cases.append(pytest.param(shape, dtype, has_bias, reduction, len(cases), id=case_id))
    return cases


def make_inputs(shape, dtype, has_bias, seed, device="cpu", ignore_index=-100, ignored_fraction=0.25):
    """hidden ~ N(0, 1), items scaled so logits have std ~2.5 (softmax neither flat nor one-hot), ~25% ignored."""
    num_rows, num_items, dim = shape
    generator = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(num_rows, dim, generator=generator, device=device).to(dtype)
    items = (torch.randn(num_items, dim, generator=generator, device=device) * 2.5 / dim**0.5).to(dtype)
    bias = (0.5 * torch.randn(num_items, generator=generator, device=device)).to(dtype) if has_bias else None
    targets = torch.randint(0, num_items, (num_rows,), generator=generator, device=device)
    ignored = torch.rand(num_rows, generator=generator, device=device) < ignored_fraction
    ignored[0] = False
    targets[ignored] = ignore_index
    upstream = torch.rand(num_rows, generator=generator, device=device) + 0.5  # d total / d loss_i for "none"
    upstream = upstream.to(torch.bfloat16).float()  # exact in every dtype, so all three runs get the same one
    return hidden, items, bias, targets, upstream


def loss_and_grads(loss_fn, hidden, items, bias, targets, upstream, reduction, dtype=None, **kwargs):
    """(loss, grad hidden, grad items, grad bias or None) of loss_fn on fresh leaves, optionally cast to `dtype`."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (hidden, items)]
    if bias is not None:
        leaves.append(bias.detach().to(dtype or bias.dtype).requires_grad_())
    loss = loss_fn(
        leaves[0], leaves[1], targets, bias=leaves[2] if bias is not None else None, reduction=reduction, **kwargs
    )
    loss.backward(upstream.to(loss.dtype) if reduction == "none" else None)
    grads = [leaf.grad for leaf in leaves] + ([] if bias is not None else [None])
    return [loss.detach(), *grads]


def assert_no_worse_than_pytorch(hidden, items, bias, targets, upstream, reduction, impl):
    """Apply the acceptance rule to the loss and every gradient."""
    dtype = hidden.dtype
    truth = loss_and_grads(cross_entropy, hidden, items, bias, targets, upstream, reduction, dtype=torch.float64)
    plain = loss_and_grads(cross_entropy, hidden, items, bias, targets, upstream, reduction)
    ours = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream, reduction, impl=impl)
    assert ours[0].dtype == torch.float32 and ours[0].shape == truth[0].shape
    for name, value, baseline, exact in zip(("loss", "hidden", "items", "bias"), ours, plain, truth, strict=True):
        if exact is None:
            assert value is None
            continue
        if name != "loss":
            assert value.dtype == dtype and value.shape == exact.shape, name
        assert torch.isfinite(value).all(), f"{name}: non-finite values"
        error = (value.double() - exact).abs().max().item()
        baseline_error = (baseline.double() - exact).abs().max().item()
        allowed = baseline_error + TOLERANCE[dtype] * exact.abs().max().item() + 1e-12
        assert error <= allowed, (
            f"{name}: error {error:.3g} > allowed {allowed:.3g} (plain PyTorch {baseline_error:.3g})"
        )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("shape", "dtype", "has_bias", "reduction", "seed"), _cpu_cases())
def test_matches_float64_reference(impl, shape, dtype, has_bias, reduction, seed):
    hidden, items, bias, targets, upstream = make_inputs(shape, dtype, has_bias, seed)
    assert_no_worse_than_pytorch(hidden, items, bias, targets, upstream, reduction, impl)


@pytest.mark.parametrize(("shape", "has_bias"), [((20, 3000, 16), True), ((37, 1001, 24), False)])
def test_catalog_split_across_programs_matches_reference(shape, has_bias):
    """Few positions: the forward splits the catalog across programs and combines the partial sums."""
    from cutrec.kernels import cut_cross_entropy as kernels

    block_m, block_n, _, _ = kernels._block_config("forward", shape[2], torch.float32, interpret=True)
    _, splits = kernels._grid(shape[0], shape[1], block_m, block_n, torch.device("cpu"), interpret=True)
    assert splits > 1
    hidden, items, bias, targets, upstream = make_inputs(shape, torch.float32, has_bias, seed=5)
    for reduction in ("mean", "none"):
        assert_no_worse_than_pytorch(hidden, items, bias, targets, upstream, reduction, "triton")


@pytest.mark.parametrize(
    ("shape", "device"),
    [((150, 333, 24), "cpu"), ((40, 3000, 16), "cpu"),
     pytest.param((9000, 50_000, 64), "cuda", marks=[gpu, pytest.mark.gpu])],
)
def test_a_padded_tail_of_ignored_rows_matches_reference(shape, device):
    """The trainer's static-shape batches end in ignored rows; the kernels skip whole blocks of them (no item scan,
    no draws), with and without the catalog split, and the loss and gradients stay those of the reference."""
    hidden, items, bias, targets, upstream = make_inputs(shape, torch.float32, True, seed=shape[0], device=device)
    targets[shape[0] // 3 :] = -100  # two thirds of the rows are padding, in whole blocks
    for reduction in ("mean", "none"):
        assert_no_worse_than_pytorch(hidden, items, bias, targets, upstream, reduction, "triton")


@pytest.mark.parametrize("impl", IMPLS)
def test_all_rows_ignored_gives_zero_loss_and_grads(impl):
    hidden, items, bias, targets, upstream = make_inputs((9, 100, 16), torch.float32, True, seed=1)
    targets = torch.full_like(targets, -100)
    for reduction in ("mean", "sum"):
        loss, *grads = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream, reduction, impl=impl)
        assert loss.item() == 0.0
        for grad in grads:
            assert torch.isfinite(grad).all() and not grad.any()


@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_upstream_on_ignored_rows_does_not_leak(impl):
    """reduction="none": an ignored row's upstream gradient (here nan and inf) must not reach any gradient."""
    hidden, items, bias, targets, upstream = make_inputs((9, 100, 16), torch.float32, True, seed=3)
    targets[::2] = -100
    upstream[0], upstream[2] = float("nan"), float("inf")
    _, grad_hidden, grad_items, grad_bias = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream,
                                                           "none", impl=impl)
    for grad in (grad_hidden, grad_items, grad_bias):
        assert torch.isfinite(grad).all()
    assert not grad_hidden[::2].any()


@pytest.mark.parametrize("impl", IMPLS)
def test_ignore_index_may_be_an_item_id(impl):
    hidden, items, bias, targets, upstream = make_inputs((20, 64, 16), torch.float32, True, seed=2, ignore_index=0)
    targets[1] = 3
    truth = loss_and_grads(cross_entropy, hidden, items, bias, targets, upstream, "none", ignore_index=0)
    ours = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream, "none", ignore_index=0, impl=impl)
    for value, expected in zip(ours, truth, strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_large_logits_stay_finite(impl):
    hidden, items, bias, targets, upstream = make_inputs((37, 300, 16), torch.float32, True, seed=14)
    bias[::7] += 120.0  # exp(120) overflows fp32: only a max-subtracted softmax survives
    assert_no_worse_than_pytorch(hidden, items, bias, targets, upstream, "mean", impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_int32_targets(impl):
    hidden, items, bias, targets, upstream = make_inputs((29, 120, 16), torch.float32, False, seed=15)
    expected = loss_and_grads(cut_cross_entropy, hidden, items, None, targets, upstream, "none", impl=impl)
    got = loss_and_grads(cut_cross_entropy, hidden, items, None, targets.int(), upstream, "none", impl=impl)
    for a, b in zip(got, expected, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("impl", IMPLS)
def test_deterministic(impl):
    hidden, items, bias, targets, upstream = make_inputs((70, 333, 24), torch.bfloat16, True, seed=3)
    first = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream, "mean", impl=impl)
    second = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream, "mean", impl=impl)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", IMPLS)
def test_without_hidden_grad_and_under_no_grad(impl):
    hidden, items, bias, targets, upstream = make_inputs((21, 150, 16), torch.float32, True, seed=4)
    full = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream, "sum", impl=impl)
    with torch.no_grad():
        no_grad_loss = cut_cross_entropy(hidden, items, targets, bias=bias, reduction="sum", impl=impl)
    torch.testing.assert_close(no_grad_loss, full[0])
    items_leaf = items.clone().requires_grad_()
    loss = cut_cross_entropy(hidden, items_leaf, targets, bias=bias, reduction="sum", impl=impl)
    loss.backward()
    torch.testing.assert_close(loss.detach(), full[0])
    torch.testing.assert_close(items_leaf.grad, full[2])


@pytest.mark.parametrize("impl", IMPLS)
def test_items_and_bias_are_cast_to_hidden_dtype(impl):
    hidden, items, bias, targets, upstream = make_inputs((19, 90, 16), torch.bfloat16, True, seed=5)
    wide = loss_and_grads(cut_cross_entropy, hidden, items.float(), bias.float(), targets, upstream, "mean", impl=impl)
    narrow = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream, "mean", impl=impl)
    assert wide[1].dtype == torch.bfloat16 and wide[2].dtype == torch.float32 and wide[3].dtype == torch.float32
    for a, b in zip(wide, narrow, strict=True):
        assert torch.equal(a, b.to(a.dtype))


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_inputs(impl):
    hidden, items, bias, targets, upstream = make_inputs((23, 77, 20), torch.float32, False, seed=6)
    hidden_t = hidden.T.contiguous().T  # same values, column-major
    items_strided = torch.cat([items, items], dim=1)[:, :20]  # row stride 40
    expected = loss_and_grads(cut_cross_entropy, hidden, items, None, targets, upstream, "none", impl=impl)
    got = loss_and_grads(cut_cross_entropy, hidden_t, items_strided, None, targets, upstream, "none", impl=impl)
    for a, b in zip(got[:3], expected[:3], strict=True):
        torch.testing.assert_close(a, b)


def test_torch_chunks_give_the_single_chunk_result(monkeypatch):
    hidden, items, bias, targets, upstream = make_inputs((50, 300, 16), torch.float32, True, seed=7)
    single = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream, "none", impl="torch")
    monkeypatch.setattr(cce_module, "TORCH_CHUNK_BUDGET_BYTES", 7 * 300 * 4)  # 7 rows a chunk
    chunked = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream, "none", impl="torch")
    for a, b in zip(chunked, single, strict=True):
        torch.testing.assert_close(a, b)


def test_module_matches_function():
    hidden, items, bias, targets, upstream = make_inputs((12, 40, 16), torch.float32, True, seed=8)
    module = CutCrossEntropy(reduction="sum", impl="torch")
    expected = cut_cross_entropy(hidden, items, targets, bias=bias, reduction="sum", impl="torch")
    assert torch.equal(module(hidden, items, targets, bias), expected)
    assert "reduction='sum'" in repr(module)


@pytest.mark.parametrize(("impl", "has_bias"), [("torch", True), ("triton", False), ("triton", True)])
def test_compile_fullgraph_matches_eager(impl, has_bias):
    torch._dynamo.reset()
    hidden, items, bias, targets, upstream = make_inputs((33, 200, 16), torch.float32, has_bias, seed=9)

    def loss_fn(hidden, items, targets, bias=None, reduction="mean"):
        return cut_cross_entropy(hidden, items, targets, bias=bias, reduction=reduction, impl=impl) * 2.0

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    eager = loss_and_grads(loss_fn, hidden, items, bias, targets, upstream, "mean")
    traced = loss_and_grads(compiled, hidden, items, bias, targets, upstream, "mean")
    for a, b in zip(traced, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_target_out_of_range_names_the_value(impl):
    hidden, items, _, targets, _ = make_inputs((8, 30, 16), torch.float32, False, seed=10)
    targets[3] = 30
    with pytest.raises(CutrecError, match="target 30 is not an item id in \\[0, 30\\)"):
        cut_cross_entropy(hidden, items, targets, impl=impl)
    targets[3] = -5
    with pytest.raises(CutrecError, match="target -5 is not an item id"):
        cut_cross_entropy(hidden, items, targets, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("num_rows", [9, 300])  # one row block (split path under the interpreter) and several
def test_unchecked_bad_target_gives_nan_not_a_wrong_loss(impl, num_rows):
    hidden, items, _, targets, _ = make_inputs((num_rows, 700, 16), torch.float32, False, seed=6, ignored_fraction=0)
    targets[3] = 700
    losses = cut_cross_entropy(hidden, items, targets, reduction="none", impl=impl, check_targets=False)
    assert torch.isnan(losses[3]) and torch.isfinite(losses[torch.arange(num_rows) != 3]).all()


def test_bad_arguments_raise():
    hidden, items, bias, targets, _ = make_inputs((8, 30, 16), torch.float32, True, seed=11)
    with pytest.raises(CutrecError, match="hidden must be \\[M, D\\]"):
        cut_cross_entropy(hidden[None], items, targets)
    with pytest.raises(CutrecError, match="items must be \\[N, D\\] with D=16"):
        cut_cross_entropy(hidden, items[:, :8], targets)
    with pytest.raises(CutrecError, match="targets must be \\[M\\]=8"):
        cut_cross_entropy(hidden, items, targets[:5])
    with pytest.raises(CutrecError, match="bias must be \\[N\\]=30"):
        cut_cross_entropy(hidden, items, targets, bias=bias[:4])
    with pytest.raises(CutrecError, match="items is empty"):
        cut_cross_entropy(hidden, items[:0], torch.full_like(targets, -100))
    with pytest.raises(CutrecError, match="impl='cuda' is unknown"):
        cut_cross_entropy(hidden, items, targets, impl="cuda")
    with pytest.raises(CutrecError, match="reduction='avg' is unknown"):
        cut_cross_entropy(hidden, items, targets, reduction="avg")
    wide_hidden, wide_items = torch.randn(8, 600), torch.randn(30, 600)
    with pytest.raises(CutrecError, match='impl="triton" supports D <= 512, got D=600'):
        cut_cross_entropy(wide_hidden, wide_items, targets, impl="triton")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    hidden, items, _, targets, _ = make_inputs((8, 30, 16), torch.float32, False, seed=12)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(CutrecError, match='use impl="torch", or set TRITON_INTERPRET=1'):
        cut_cross_entropy(hidden, items, targets, impl="triton")
    assert cut_cross_entropy(hidden, items, targets, impl="auto").isfinite()


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize(
    ("dim", "dtype", "has_bias", "impl"),
    [
        (64, torch.bfloat16, False, "triton"),
        (64, torch.float32, True, "triton"),
        (256, torch.bfloat16, True, "triton"),
        (256, torch.float32, False, "triton"),
        (100, torch.bfloat16, True, "triton"),
        (100, torch.float32, False, "triton"),
        (64, torch.float16, True, "triton"),
        (64, torch.bfloat16, True, "torch"),
    ],
)
def test_gpu_matches_float64_reference(dim, dtype, has_bias, impl):
    shape = (4096, 100_003, dim)  # few row blocks, many logits: the catalog is split across programs
    hidden, items, bias, targets, upstream = make_inputs(shape, dtype, has_bias, seed=dim, device="cuda")
    assert_no_worse_than_pytorch(hidden, items, bias, targets, upstream, "mean", impl)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_small_problem_matches_float64_reference(dtype):
    """A training step on a 12k-item catalog: few rows and few logits, so 16-row blocks and no split."""
    hidden, items, bias, targets, upstream = make_inputs((1150, 12_101, 64), dtype, False, seed=19, device="cuda")
    assert_no_worse_than_pytorch(hidden, items, bias, targets, upstream, "mean", "triton")


@gpu
@pytest.mark.gpu
def test_gpu_deterministic():
    hidden, items, bias, targets, upstream = make_inputs((4096, 100_003, 64), torch.bfloat16, True, 13, "cuda")
    first = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream, "mean", impl="triton")
    second = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream, "mean", impl="triton")
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@gpu
@pytest.mark.gpu
def test_gpu_compile_inductor_matches_eager():
    torch._dynamo.reset()
    hidden, items, bias, targets, upstream = make_inputs((1000, 5003, 64), torch.bfloat16, True, 14, "cuda")
    compiled = torch.compile(cut_cross_entropy, fullgraph=True)
    eager = loss_and_grads(cut_cross_entropy, hidden, items, bias, targets, upstream, "mean", impl="triton")
    traced = loss_and_grads(compiled, hidden, items, bias, targets, upstream, "mean", impl="triton")
    for a, b in zip(traced, eager, strict=True):
        torch.testing.assert_close(a, b)


@gpu
@pytest.mark.gpu
def test_gpu_extra_memory_is_linear_in_positions_and_items():
    num_rows, num_items, dim = 32768, 1_000_000, 64
    hidden, items, _, targets, _ = make_inputs((num_rows, num_items, dim), torch.bfloat16, False, 15, "cuda")
    hidden.requires_grad_()
    items.requires_grad_()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = cut_cross_entropy(hidden, items, targets, impl="triton")
    grad_hidden, grad_items = torch.autograd.grad(loss, (hidden, items))
    torch.cuda.synchronize()
    gradient_bytes = grad_hidden.nbytes + grad_items.nbytes
    extra = torch.cuda.max_memory_allocated() - before - gradient_bytes
    limit = 64 * 2**20 + (num_rows + num_items) * 16
    assert extra < limit, (
        f"extra memory {extra / 2**20:.1f} MiB >= {limit / 2**20:.1f} MiB (gradients {gradient_bytes})"
    )


def test_autocast_computes_in_the_autocast_dtype():
    hidden, items, _, targets, _ = make_inputs((33, 300, 16), torch.float32, False, seed=9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = cut_cross_entropy(hidden, items, targets, impl="torch")
    in_bf16 = cut_cross_entropy(hidden.bfloat16(), items.bfloat16(), targets, impl="torch")
    in_fp32 = cut_cross_entropy(hidden, items, targets, impl="torch")
    assert under_autocast.item() == in_bf16.item() != in_fp32.item()


@pytest.mark.parametrize("impl", IMPLS)
def test_second_backward_through_one_forward_is_refused(impl):
    """The hidden-gradient buffer is reused in place, so retain_graph=True cannot silently give a wrong gradient."""
    hidden, items, _, targets, _ = make_inputs((20, 200, 16), torch.float32, False, seed=4)
    hidden.requires_grad_()
    loss = cut_cross_entropy(hidden, items, targets, impl=impl)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
