"""Speed tools: sparse kernels compute the same thing, ideals count the right FLOPs, 2:4 fails clearly.

Correctness only: no timing is asserted (timings on a shared machine are noise).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from transformers.pytorch_utils import Conv1D

from course_lib.core import arch, metrics, models
from course_lib.runtime import speed, sparse
from course_lib.pruning.masks import magnitude_prune, topk_mask
from course_lib.pruning.mlp import remove_neurons


def _masked(out_f, in_f, sparsity, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    return w * topk_mask(w.abs(), sparsity, "row")


# ------------------------------------------------------------------ SparseLinear
@pytest.mark.parametrize("layout", ["csr", "bsr"])
@pytest.mark.parametrize("lead", [(7,), (2, 5)])
def test_sparse_linear_equals_dense_linear_on_the_masked_weight(layout, lead):
    w = _masked(64, 32, 0.7)
    bias = torch.randn(64)
    x = torch.randn(*lead, 32)
    layer = sparse.SparseLinear(w, bias, layout=layout, blocksize=16)
    out = layer(x)
    assert out.shape == (*lead, 64)
    torch.testing.assert_close(out, F.linear(x, w, bias), rtol=1e-5, atol=1e-5)
    assert layer.weight.layout == {"csr": torch.sparse_csr, "bsr": torch.sparse_bsr}[layout]


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 4), cols=st.integers(1, 4), tokens=st.integers(1, 9),
       sparsity=st.sampled_from([0.0, 0.5, 0.9, 0.99]), layout=st.sampled_from(["csr", "bsr"]),
       with_bias=st.booleans(), seed=st.integers(0, 1000))
def test_sparse_linear_property(rows, cols, tokens, sparsity, layout, with_bias, seed):
    w = _masked(8 * rows, 8 * cols, sparsity, seed)
    bias = torch.randn(8 * rows) if with_bias else None
    x = torch.randn(3, tokens, 8 * cols, generator=torch.Generator().manual_seed(seed))
    got = sparse.SparseLinear(w, bias, layout, blocksize=8)(x)
    torch.testing.assert_close(got, F.linear(x, w, bias), rtol=1e-5, atol=1e-5)


def test_sparse_linear_from_conv1d_reads_the_transposed_weight():
    conv = Conv1D(24, 16)  # GPT-2 style: weight stored (in, out)
    torch.nn.init.normal_(conv.weight)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(sparse.SparseLinear.from_module(conv)(x), conv(x), rtol=1e-5, atol=1e-5)


def test_csr_density_counts_nonzeros_and_block_mask_zeros_whole_blocks():
    w = _masked(64, 64, 0.75)
    assert sparse.SparseLinear(w, layout="csr").density() == pytest.approx(0.25)
    keep = sparse.block_magnitude_mask(torch.randn(64, 96), 0.5, blocksize=16)
    blocks = keep.reshape(4, 16, 6, 16).permute(0, 2, 1, 3).reshape(24, -1)
    assert ((blocks.all(1)) | (~blocks.any(1))).all()  # each block all kept or all pruned
    assert (~blocks.any(1)).sum() == 12
    stored = sparse.SparseLinear(torch.randn(64, 96) * keep, layout="bsr", blocksize=16)
    assert stored.density() == pytest.approx(0.5)


def test_bad_layout_and_blocks_are_refused():
    with pytest.raises(ValueError, match="layout='coo'"):
        sparse.SparseLinear(torch.randn(8, 8), layout="coo")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"blocksize={bad!r}: give a whole number"):
            sparse.SparseLinear(torch.randn(40, 32), layout="bsr", blocksize=bad)
    model, _ = models.load("tiny-llama")
    with pytest.raises(KeyError, match="not a prunable"):
        sparse.to_sparse_modules(model, names=["lm_head"])


@pytest.mark.parametrize("shape,block", [((688, 256), 16), ((112, 304), 16), ((40, 32), 8), ((300, 200), 32)])
def test_bsr_takes_any_shape_a_fitting_block_or_padding(shape, block):
    """A pruned model's widths are rarely multiples of 32 (a Llama-shaped MLP: 688 x 256)."""
    assert sparse.blocksize_for([shape]) == block  # the largest of 32, 16, 8 dividing both sides, else 32
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    keep = sparse.block_magnitude_mask(w, 0.5)
    assert keep.shape == shape and 0.3 < 1 - keep.float().mean() < 0.7
    x = torch.randn(2, 3, shape[1])
    layer = sparse.SparseLinear(w * keep, torch.randn(shape[0]), layout="bsr")
    assert layer.blocksize == block
    torch.testing.assert_close(layer(x), F.linear(x, w * keep, layer.bias), rtol=1e-5, atol=1e-5)
    padded = sparse.SparseLinear(w * keep, layout="bsr", blocksize=32)  # the block the lesson names
    torch.testing.assert_close(padded(x), F.linear(x, w * keep), rtol=1e-5, atol=1e-5)
    assert 0 < padded.density() <= 1


def test_padding_does_not_make_part_blocks_look_weak():
    """300 x 200 in 32 x 32 blocks: 16 of the 70 blocks are part blocks (the padding is not a weight)."""
    w = 1 + 0.01 * torch.randn(300, 200, generator=torch.Generator().manual_seed(0))  # every weight alike
    keep = sparse.block_magnitude_mask(w, 0.25, blocksize=32)
    part_blocks_kept = keep[288:].any() or keep[:, 192:].any()
    assert part_blocks_kept  # by summed squares they would all score lowest and all go first


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_bsr_on_a_model_with_odd_widths_keeps_its_logits(name):
    model, _ = models.load(name)
    remove_neurons(model, {0: [0, 3, 5], 1: [1]})  # MLP widths 189 and 191 (GPT-2: 253, 255)
    names = list(arch.prunable_linears(model))
    pruning = sparse.prune_for_sparse_kernels(model, 0.7, "bsr", names=names)
    ids = torch.randint(0, 258, (2, 9))
    with torch.no_grad():
        masked = model(ids).logits
    swap = sparse.to_sparse_modules(model, "bsr")
    assert swap.info["blocksize"] == pruning.info["blocksize"] == 32  # no block fits 189: padded
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, masked, rtol=1e-5, atol=1e-5)
    swap.restore()
    pruning.restore()
    curve = sparse.sparse_layer_ratios(arch.weight_matrix(model.get_submodule(names[-1])), [0.9], tokens=4,
                                      runs=1, warmup=0, threads=1)
    assert curve.blocksize == 32 and len(curve.speedups["bsr"]) == 1


# ------------------------------------------------------------------ swapping into a model
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-qwen2"])  # qwen2: q/k/v biases too
@pytest.mark.parametrize("layout", ["csr", "bsr"])
def test_swapping_sparse_modules_keeps_logits_and_restores_bit_exactly(name, layout):
    model, _ = models.load(name)
    ids = torch.randint(0, 258, (2, 12))
    pruning = sparse.prune_for_sparse_kernels(model, 0.7, layout, blocksize=32,
                                             names=list(arch.prunable_linears(model)))
    with torch.no_grad():
        masked_logits = model(ids).logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    originals = dict(arch.prunable_linears(model))
    swap = sparse.to_sparse_modules(model, layout, blocksize=32)
    assert not arch.prunable_linears(model)  # every decoder matrix is now a SparseLinear
    with torch.no_grad():
        sparse_logits = model(ids).logits
    torch.testing.assert_close(sparse_logits, masked_logits, rtol=1e-5, atol=1e-5)
    swap.restore()
    assert all(arch.prunable_linears(model)[n] is m for n, m in originals.items())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, masked_logits)
    pruning.restore()


def test_mlp_names_select_only_mlp_layers():
    model, _ = models.load("tiny-llama")
    names = sparse.mlp_linear_names(model)
    assert len(names) == 2 * 3 and all(".mlp." in n for n in names)
    handle = sparse.to_sparse_modules(model, "csr", names=names)
    assert set(handle.info["names"]) == set(names)
    assert all(isinstance(model.get_submodule(n), sparse.SparseLinear) for n in names)
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    handle.restore()


# ------------------------------------------------------------------ ideal speedups
def _tiny_llama_flops(width: int, context: int) -> int:
    """FLOPs per token of tiny-llama (hidden 96, 6 heads/2 KV of 16, vocab 258, 2 layers) by hand."""
    hidden, head_dim, heads, kv, vocab, layers = 96, 16, 6, 2, 258, 2
    attention = 2 * (hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2)  # q, o + k, v
    mlp = 2 * 3 * hidden * width  # gate, up, down
    scores = 2 * 2 * heads * head_dim * context
    return layers * (attention + mlp + scores) + 2 * vocab * hidden


def test_ideal_speedup_is_one_for_unstructured_zeros():
    model, _ = models.load("tiny-llama")
    dense = metrics.flops_per_token(model, 64)
    handle = magnitude_prune(model, 0.5)
    assert speed.ideal_speedup(dense, metrics.flops_per_token(model, 64)) == 1.0
    # a perfect sparse kernel would skip the zeros: then the ideal is > 1
    assert speed.ideal_speedup(dense, speed.nonzero_flops_per_token(model, 64)) > 1.3
    handle.restore()


@pytest.mark.parametrize("removed", [48, 96, 150])
def test_ideal_speedup_of_removed_neurons_is_the_flops_ratio(removed):
    model, _ = models.load("tiny-llama")
    dense = metrics.flops_per_token(model, 64)
    assert dense.total == _tiny_llama_flops(192, 64)
    handle = remove_neurons(model, {0: list(range(removed)), 1: list(range(removed))})
    ideal = speed.ideal_speedup(dense, metrics.flops_per_token(model, 64))
    expected = _tiny_llama_flops(192, 64) / _tiny_llama_flops(192 - removed, 64)
    assert ideal > 1 and ideal == pytest.approx(expected, rel=1e-12)
    handle.restore()


def test_nonzero_flops_count_sparse_modules_like_their_dense_weights():
    model, _ = models.load("tiny-llama")
    handle = sparse.prune_for_sparse_kernels(model, 0.9, "csr")
    before = speed.nonzero_flops_per_token(model, 32)
    swap = sparse.to_sparse_modules(model, "csr", names=sparse.mlp_linear_names(model))
    assert speed.nonzero_flops_per_token(model, 32) == before
    swap.restore()
    handle.restore()


def test_break_even_interpolates_the_crossing():
    assert sparse.break_even([0.5, 0.7, 0.9], [0.3, 0.8, 1.8]) == pytest.approx(0.7 + 0.2 * 0.2 / 1.0)
    assert sparse.break_even([0.5, 0.9], [0.3, 0.6]) is None
    assert sparse.break_even([0.5, 0.9], [1.2, 2.0]) == 0.5


def test_explain_gap_names_the_lm_head_share():
    model, _ = models.load("tiny-llama")
    dense = metrics.flops_per_token(model, 64)
    handle = remove_neurons(model, {0: list(range(96)), 1: list(range(96))})
    text = speed.explain_gap(dense, metrics.flops_per_token(model, 64), measured_speedup=1.1)
    handle.restore()
    share = f"{dense.lm_head / dense.total:.0%}"
    assert "lm_head" in text and share in text and "bandwidth" in text


# ------------------------------------------------------------------ measuring (smoke, no timing asserts)
def test_measure_speedup_reports_the_ideal_and_refuses_one_model():
    model, _ = models.load("tiny-llama")
    pruned = copy.deepcopy(model)
    remove_neurons(pruned, {0: list(range(96)), 1: list(range(96))})
    result = speed.measure_speedup(model, pruned, "mlp", tokens=8, runs=1, warmup=0, threads=1,
                                   decode_tokens=2, decode_context=4)
    expected = metrics.flops_per_token(model, 8).total / metrics.flops_per_token(pruned, 8).total
    assert result.ideal_speedup == pytest.approx(expected)
    assert result.prefill_speedup > 0 and result.decode_speedup > 0
    assert result.latency_ratio == pytest.approx(1 / result.prefill_speedup)
    sparse_twin = copy.deepcopy(model)
    sparse.prune_for_sparse_kernels(sparse_twin, 0.5, "csr")
    swap = sparse.to_sparse_modules(sparse_twin, "csr", names=sparse.mlp_linear_names(sparse_twin))
    on_csr = speed.measure_speedup(model, sparse_twin, "csr", tokens=8, runs=1, warmup=0, threads=1)
    expected = (metrics.flops_per_token(model, 8).total
                / speed.nonzero_flops_per_token(sparse_twin, 8).total)
    assert on_csr.ideal_speedup == pytest.approx(expected) and expected > 1.3
    swap.restore()
    with pytest.raises(ValueError, match="same object"):
        speed.measure_speedup(model, model)


def test_sparse_layer_ratios_returns_one_ratio_per_sparsity_and_layout():
    curve = sparse.sparse_layer_ratios(torch.randn(64, 32), [0.5, 0.9], tokens=4, blocksize=16,
                                      runs=1, warmup=0, threads=1)
    assert set(curve.speedups) == {"csr", "bsr"}
    assert all(len(v) == 2 and all(r > 0 for r in v) for v in curve.speedups.values())


# ------------------------------------------------------------------ 2:4
def test_n_m_check():
    w = _masked(8, 16, 0.0)
    assert not sparse.is_n_m_sparse(w)
    two_four = w.clone().reshape(8, 4, 4)
    two_four[..., 1:3] = 0
    assert sparse.is_n_m_sparse(two_four.reshape(8, 16))
    assert not sparse.is_n_m_sparse(torch.zeros(4, 6))  # 6 columns do not tile into groups of 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_semi_structured_on_cpu_raises_a_clear_error():
    model, _ = models.load("tiny-llama")
    magnitude_prune(model, pattern="2:4")
    with pytest.raises(RuntimeError, match="no CPU kernel") as err:
        sparse.to_semi_structured(model)
    assert "compute capability" in str(err.value) and "SparseLinear" in str(err.value)
    assert isinstance(model.model.layers[0].mlp.up_proj.weight, torch.nn.Parameter)  # untouched


def test_semi_structured_rejects_weights_that_are_not_2_4():
    model, _ = models.load("tiny-llama")
    magnitude_prune(model, 0.5)  # 50% zeros, but not 2 of every 4
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        sparse.to_semi_structured(model)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                    reason="2:4 sparse tensor cores need a CUDA GPU with compute capability >= 8.0")
def test_semi_structured_on_gpu_keeps_logits():
    model, _ = models.load("smollm2-135m", device="cuda", dtype=torch.float16)
    magnitude_prune(model, pattern="2:4")
    ids = torch.randint(0, 1000, (1, 64), device="cuda")
    with torch.no_grad():
        ref = model(ids).logits.float()
    handle = sparse.to_semi_structured(model)
    with torch.no_grad():
        got = model(ids).logits.float()
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert sparse.semi_structured_layer_ratio(runs=5, warmup=2) > 0
    handle.restore()


def _fake_prefill(speedups):
    """A stand-in for timing.compare_prefill whose pruned model is ``speedups[i]`` x faster on call i."""
    from course_lib.core import timing

    calls = []

    def compare(models, **kwargs):
        factor = speedups[min(len(calls), len(speedups) - 1)]
        calls.append(factor)
        label = [k for k in models if k != "dense"][0]
        dense = [0.100 + 0.001 * i for i in range(5)]
        return {"dense": timing.Measurement.from_times("dense", dense, "cpu", 2),
                label: timing.Measurement.from_times(label, [t / factor for t in dense], "cpu", 2)}
    return compare, calls


@pytest.mark.parametrize("speedups, remeasured, plausible", [
    ((3.0, 1.15), 1, True),          # an artifact, then a believable figure: the second one is kept
    ((3.0, 3.0, 3.0), 2, False),     # it stays beyond physics: reported as implausible
    ((1.15,), 0, True),              # believable at once: timed once
])
def test_a_speedup_far_above_its_ideal_is_remeasured_and_never_plausible(monkeypatch, speedups, remeasured,
                                                                       plausible):
    from course_lib.core import timing

    fake, calls = _fake_prefill(speedups)
    monkeypatch.setattr(timing, "compare_prefill", fake)
    model = models.load("tiny-llama")[0]
    pruned = copy.deepcopy(model)
    result = speed.measure_speedup(model, pruned, ideal=1.2, runs=5)
    assert result.remeasured == remeasured and len(calls) == remeasured + 1
    assert result.plausible is plausible
    assert result.prefill_speedup == pytest.approx(speedups[min(remeasured, len(speedups) - 1)])


def test_explain_gap_does_not_explain_a_shortfall_that_did_not_happen():
    model = models.load("tiny-llama")[0]
    pruned = copy.deepcopy(model)
    remove_neurons(pruned, {i: list(range(8)) for i in range(len(arch.decoder_layers(pruned)))})
    dense_f, pruned_f = metrics.flops_per_token(model), metrics.flops_per_token(pruned)
    ideal = speed.ideal_speedup(dense_f, pruned_f)
    assert "falls short" not in speed.explain_gap(dense_f, pruned_f, ideal * 1.0)
    assert "falls short" in speed.explain_gap(dense_f, pruned_f, ideal * 0.8)
