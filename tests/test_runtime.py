"""Shipping a model: int8 in PyTorch, ONNX export and ONNX Runtime, files on disk, serving.

All on tiny-llama-trained (``models.TRAINED``: tiny-llama trained for seconds on the offline
text, perplexity ~11 on held-out windows, where a random model's is ~its vocabulary, 258), so a
quantization that loses what the model learnt fails. Tolerances are stated once, here:
- quantized perplexity within QUALITY_FACTOR of float32 (zeroing every decoder weight
  multiplies it by ~11: ``test_the_quality_bar_fails_a_model_that_lost_its_decoder``);
- ONNX Runtime logits within ``export.LOGIT_TOLERANCE`` of PyTorch's (relative to max |logit|).
"""
import os
import sys

import pytest
import torch

from course_lib.core import data, metrics, models
from course_lib.runtime import export, optional, quantize, serve, store

QUALITY_FACTOR = 1.02  # 8-bit and blockwise 4-bit on the trained tiny model: measured within +0.5% of float32


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = models.load("tiny-llama-trained")
    windows = data.windows_for(tokenizer, "tiny-llama-trained", seq_len=32, n_eval=4, n_calib=4)
    return model.eval(), tokenizer, windows


def test_the_quality_bar_fails_a_model_that_lost_its_decoder(tiny):
    """The fixture has learnt the text, so QUALITY_FACTOR separates right from wrong: with every
    decoder weight zeroed (what a broken quantizer could write) the perplexity is far above it."""
    import copy

    model, tokenizer, windows = tiny
    fp32 = metrics.perplexity(model, windows.eval)
    assert fp32 < tokenizer.vocab_size / 10  # a random model: ~the vocabulary size
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for name in quantize.decoder_linear_names(broken):
            dict(broken.named_modules())[name].weight.zero_()
    assert metrics.perplexity(broken, windows.eval) > 2 * QUALITY_FACTOR * fp32


@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_quantized_copy_keeps_quality_and_leaves_the_float_model_alone(tiny, scheme):
    model, _, windows = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fp32 = metrics.perplexity(model, windows.eval)
    q = quantize.quantized_copy(model, scheme)
    names = quantize.quantized_names(q)
    assert len(names) == len(quantize.decoder_linear_names(model)), names
    assert metrics.perplexity(q, windows.eval) <= QUALITY_FACTOR * fp32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_keep_float_leaves_the_named_projections_in_float(tiny):
    model, _, windows = tiny
    ratios = quantize.activation_outlier_ratio(model, windows.calib)
    keep = quantize.most_sensitive(ratios, 3)
    assert [ratios[k] for k in keep] == sorted(ratios.values(), reverse=True)[:3]
    q = quantize.quantized_copy(model, "dynamic", keep_float=keep)
    names = quantize.quantized_names(q)
    assert not set(keep) & set(names) and len(names) == len(ratios) - 3
    with pytest.raises(ValueError, match="not decoder projections"):
        quantize.quantized_copy(model, "dynamic", keep_float=["lm_head"])
    with pytest.raises(ValueError, match="unknown"):
        quantize.quantized_copy(model, "int3")


def test_outlier_ratio_is_max_over_mean_of_the_projection_input(tiny):
    model, _, windows = tiny
    name = quantize.decoder_linear_names(model)[0]
    seen = []
    handle = dict(model.named_modules())[name].register_forward_pre_hook(
        lambda m, a: seen.append(a[0].detach().abs().flatten()))
    with torch.no_grad():
        model(windows.calib, use_cache=False)
    handle.remove()
    x = torch.cat(seen)
    ratio = quantize.activation_outlier_ratio(model, windows.calib, batch_size=1)[name]  # sums over batches
    assert ratio == pytest.approx(float(x.max() / x.mean()), rel=1e-4)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    model, _, _ = tiny
    folder = tmp_path_factory.mktemp("onnx")
    return export.export_onnx(model, folder / "tiny.onnx")


def test_onnx_logits_equal_pytorch_within_tolerance_at_other_shapes(tiny, exported):
    model, _, windows = tiny
    session = export.OrtModel(exported)
    # a batch and a length the export never saw: the axes are dynamic
    gap = export.max_logit_gap(model, session, windows.eval[:3, :21])
    assert gap < export.LOGIT_TOLERANCE
    assert export.ort_perplexity(session, windows.eval) == pytest.approx(
        metrics.perplexity(model, windows.eval), rel=1e-4)


@pytest.mark.parametrize("method,bits,op", [("nbits", 8, "MatMulNBits"), ("nbits", 4, "MatMulNBits"),
                                            ("dynamic", 8, "MatMulInteger")])
def test_ort_quantization_rewrites_the_matmuls_and_keeps_quality(tiny, exported, method, bits, op):
    model, _, windows = tiny
    target = exported.with_name(f"tiny-{method}{bits}.onnx")
    export.quantize_onnx(exported, target, method, bits)
    session = export.OrtModel(target)
    ops = session.op_types()
    assert ops.get(op, 0) == len(quantize.decoder_linear_names(model)) + 1  # + the lm_head
    if method == "nbits":
        assert ops.get("GatherBlockQuantized") == 1  # the embedding, 4-bit
    assert metrics.file_bytes(target) < metrics.file_bytes(exported)
    assert export.ort_perplexity(session, windows.eval) <= QUALITY_FACTOR * metrics.perplexity(model, windows.eval)


@pytest.mark.parametrize("level", [4, None])
def test_nbits_kernel_choice_is_written_into_every_matmul(exported, tmp_path, level):
    """accuracy_level 4 (int8 kernels on per-block int8 activations) is the default; None keeps
    ONNX Runtime's float kernels. The choice must reach every MatMulNBits node, or the speed differs."""
    import onnx

    target = tmp_path / f"tiny-level{level}.onnx"
    if level is None:
        export.quantize_onnx(exported, target, "nbits", 8, accuracy_level=None)
    else:
        export.quantize_onnx(exported, target, "nbits", 8)  # the default
    nodes = [n for n in onnx.load(str(target)).graph.node if n.op_type == "MatMulNBits"]
    levels = {next((a.i for a in n.attribute if a.name == "accuracy_level"), 0) for n in nodes}
    assert nodes and levels == {level or 0}, levels


def test_bad_ort_settings_are_clear_errors(exported, tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        export.quantize_onnx(exported, tmp_path / "x.onnx", "gptq")
    with pytest.raises(ValueError, match="4 or 8"):
        export.quantize_onnx(exported, tmp_path / "x.onnx", "nbits", bits=3)


def test_a_missing_runtime_names_the_package_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(optional.MissingRuntimeError, match="pip install onnxruntime"):
        export.OrtModel(tmp_path / "missing.onnx")
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(optional.MissingRuntimeError, match="pip install torchao"):
        quantize.quantized_copy(torch.nn.Module(), "torchao-int8-weight")


def test_importing_a_runtime_leaves_the_process_logging_alone():
    """ONNX Runtime's MatMulNBits quantizer configures the root logger at INFO when imported;
    through ``require`` the process's logging stays as it was (nothing logged shows up)."""
    import subprocess

    code = ("import logging\nfrom course_lib.runtime.optional import require\n"
            "require('onnxruntime.quantization.matmul_nbits_quantizer', 'onnxruntime')\n"
            "print(len(logging.getLogger().handlers))\nlogging.getLogger('any.library').info('routine record')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stdout + done.stderr
    assert "routine record" not in done.stderr, done.stderr


def test_file_sizes_are_the_files_sizes(tiny, tmp_path):
    model, _, _ = tiny
    path = store.save_safetensors(model, tmp_path / "m" / "model.safetensors")
    assert metrics.file_bytes(path) == os.path.getsize(path) == len(path.read_bytes())
    packed = store.compress_file(path, "zstd")
    zipped = store.compress_file(path, "gzip")
    assert metrics.file_bytes(tmp_path / "m") == sum(len(p.read_bytes()) for p in (path, packed, zipped))
    with pytest.raises(FileNotFoundError):
        metrics.file_bytes(tmp_path / "nothing-here")


def test_bitmask_roundtrip_is_exact_and_sparse_files_shrink(tiny, tmp_path):
    import copy

    model, _, _ = tiny
    sparse = copy.deepcopy(model)
    with torch.no_grad():
        for name in quantize.decoder_linear_names(sparse):
            w = dict(sparse.named_modules())[name].weight
            w[torch.rand_like(w) < 0.5] = 0
    state = store.bitmask_state(sparse)
    back = store.unpack_bitmask(state)
    original = sparse.state_dict()
    assert set(back) <= set(original)
    assert all(torch.equal(back[k], original[k]) for k in back)
    dense_file = store.save_safetensors(sparse, tmp_path / "dense.safetensors")
    bitmask_file = store.save_bitmask(sparse, tmp_path / "bitmask.safetensors")
    assert metrics.file_bytes(bitmask_file) < 0.8 * metrics.file_bytes(dense_file)


def test_quantize_in_place_restores_bit_for_bit(tiny):
    model, _, windows = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = quantize.decoder_linear_names(model)[:3]
    handle = quantize.quantize_in_place(model, names)
    assert quantize.quantized_names(model) == names
    handle.restore()
    assert quantize.quantized_names(model) == []
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_generate_is_greedy_and_counts_its_tokens(tiny):
    model, tokenizer, _ = tiny
    first = serve.generate_text(model, tokenizer, "hello world", new_tokens=12)
    second = serve.generate_text(model, tokenizer, "hello world", new_tokens=12)
    assert first.new_tokens == 12 and first.text == second.text
    assert first.tokens_per_s > 0 and len(first.first_words(3).split()) <= 3
    with pytest.raises(ValueError, match="new_tokens"):
        serve.generate_text(model, tokenizer, "hi", new_tokens=0)


def test_onnx_runtime_decodes_with_its_cache_like_generate(tiny, exported):
    model, tokenizer, windows = tiny
    session = export.OrtModel(exported)
    prompt = windows.eval[:1, :10]
    with torch.no_grad():
        reference = model.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                   pad_token_id=0)[0, 10:].tolist()
    assert session.generate(prompt, 6) == reference
    # one decoding step on the cache = the last position of a full forward (positions, mask, cache)
    import numpy as np

    _, past = session.step(prompt.numpy(), session.empty_past(1))
    step, _ = session.step(np.array([[5, 7]], dtype=np.int64), past)
    with torch.no_grad():
        full = model(torch.cat([prompt, torch.tensor([[5, 7]])], 1), use_cache=False).logits[:, -2:]
    assert float((torch.from_numpy(step) - full).abs().max() / full.abs().max()) < export.LOGIT_TOLERANCE
    decode, prefill = session.decode_workload(context=8, new_tokens=3, vocab=model.config.vocab_size)
    prefill()
    decode()  # runs: the workload is well formed for timing.time_side_by_side


def test_int8_projections_still_count_as_parameters(tiny):
    """An int8 module keeps its weight packed (not an nn.Parameter): the counts must still see it,
    or the explorer's parameter label would drop as projections are quantized."""
    model, _, _ = tiny
    before = metrics.count_parameters(model)
    names = quantize.decoder_linear_names(model)
    handle = quantize.quantize_in_place(model, names)
    try:
        during = metrics.count_parameters(model)
        assert during["total"] == before["total"]
        assert 0 < during["nonzero"] <= during["total"]
        assert metrics.total_sparsity(model) == 0.0  # no float decoder weight left to count
    finally:
        handle.restore()
    assert metrics.count_parameters(model) == before


def test_greedy_counts_its_tokens_and_pytorch_and_onnx_runtime_agree(tiny, exported):
    """serve.greedy is one loop for both runtimes: (batch, new) tokens, generate()'s tokens."""
    model, _, _ = tiny
    prompts = torch.randint(0, model.config.vocab_size, (8, 6), generator=torch.Generator().manual_seed(2))
    tokens = serve.greedy(model, prompts, 5)
    assert tokens.shape == (8, 5)
    with torch.no_grad():
        reference = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=5,
                                   min_new_tokens=5, do_sample=False, pad_token_id=0)[:, 6:]
    assert torch.equal(tokens, reference)
    assert torch.equal(serve.greedy(export.OrtModel(exported), prompts, 5), tokens)
    assert torch.equal(serve.greedy(model, prompts[:1], 5), tokens[:1])  # batch 1: the same first row
    with pytest.raises(ValueError, match="new_tokens"):
        serve.greedy(model, prompts, 0)


def test_throughput_counts_what_each_batch_generated_from_paired_runs(tiny, exported):
    model, _, _ = tiny
    stages = {"dense": model, "onnx": export.OrtModel(exported)}
    served = serve.throughput(stages, model.config.vocab_size, batches=(1, 3), prompt_tokens=4, new_tokens=5,
                              runs=2, warmup=0, threads=1)
    assert list(served) == [1, 3]
    for batch, result in served.items():
        assert result.tokens == {"dense": batch * 5, "onnx": batch * 5}  # counted from the outputs
        assert all(m.runs == 2 for m in result.measurements.values())
        seconds = result.measurements["onnx"].median_ms / 1e3
        assert result.tokens_per_s("onnx") == pytest.approx(batch * 5 / seconds)
        assert result.speedup("onnx").runs == 2 and result.speedup("dense").median == 1.0
