"""SmoothQuant (runtime.smooth) and the int8 ONNX file it is shipped in (export.quantize_onnx "int8").

The migration X W^T = (X diag(s)^-1)(W diag(s))^T is exact, so a smoothed copy must give the
float model's logits to float32 rounding (SAME: relative to max |logit|), on every layout it
accepts (GQA, q/k/v biases, heads removed unevenly); leaving out any one fold must break that.
The int8 file is judged on the trained tiny model, whose quality a bad quantizer loses.
"""
import pytest
import torch

from course_lib.core import data, metrics, models
from course_lib.pruning import heads as H
from course_lib.runtime import export, quantize, smooth

SAME = 1e-5  # max |smoothed - float logits| / max |float logits|: float32 rounding, measured ~1e-7 here
FOLDS = ("qkv", "mlp", "down", "o", "lm_head")
INT8_QUALITY = 1.02  # int8 perplexity / float32 on the trained tiny model (measured +0.2%), as test_runtime's
INT8_LOGIT_GAP = 0.03  # max |int8 - PyTorch logits| / max |PyTorch logits|, int8 GEMMs alone (measured 0.016-0.018;
# the 4-bit embedding alone takes it to ~0.07, as in the nbits file: judged by perplexity instead)


def _with_outlier_channels(model):
    """Norm gains with a few channels 30x the rest, as in trained LLMs: scales far from 1, so a
    missing fold shows (a random tiny model's inputs are too even for that)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("norm") and hasattr(module, "weight"):
                module.weight[::17] *= 30.0
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def _gap(a, b):
    return float((a - b).abs().max() / a.abs().max())


@pytest.fixture(scope="module")
def tiny_windows():
    _, tokenizer = models.load("tiny-llama", device="cpu")
    return data.windows_for(tokenizer, "tiny-llama", seq_len=32, n_eval=2, n_calib=4)


def _model(name):
    model, _ = models.load(name, device="cpu")
    return _with_outlier_channels(model.eval())


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-tinyllama"])
def test_smoothing_leaves_the_float_logits_unchanged(name, tiny_windows):
    model = _model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peaks = smooth.channel_peaks(model, tiny_windows.calib)
    smoothed = smooth.smoothed_copy(model, peaks, alpha=0.65)
    ids = tiny_windows.eval
    assert _gap(_logits(model, ids), _logits(smoothed, ids)) < SAME
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the float model changed"
    # the weights did change (else the test proves nothing), and the lm_head was untied to change
    norm = dict(smoothed.named_modules())["model.layers.0.input_layernorm"].weight
    assert not torch.allclose(norm, dict(model.named_modules())["model.layers.0.input_layernorm"].weight)
    assert smoothed.lm_head.weight is not smoothed.model.embed_tokens.weight
    assert torch.equal(smoothed.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert smoothed.config.tie_word_embeddings is False


def test_smoothing_a_model_with_heads_removed_unevenly(tiny_windows):
    """After head removal the layers differ in KV heads: the o_proj fold reads each layer's own."""
    model = _model("tiny-llama")
    H.remove_heads(model, {0: [0, 1, 2]})  # layer 0 loses one whole KV group (heads 0-2 of 6, 2 KV heads)
    peaks = smooth.channel_peaks(model, tiny_windows.calib)
    smoothed = smooth.smoothed_copy(model, peaks)
    assert _gap(_logits(model, tiny_windows.eval), _logits(smoothed, tiny_windows.eval)) < SAME


@pytest.mark.parametrize("fold", FOLDS)
def test_leaving_out_one_fold_changes_the_logits(fold, tiny_windows, monkeypatch):
    """Each fold is half of a pair: undo the activation side of one and the function changes."""
    model = _model("tiny-llama")
    peaks = smooth.channel_peaks(model, tiny_windows.calib)
    reference = _logits(smooth.smoothed_copy(model, peaks), tiny_windows.eval)
    # skipping a fold entirely is exact too (both halves skipped) ...
    skipped = smooth.smoothed_copy(model, peaks, skip=(fold,))
    assert _gap(reference, _logits(skipped, tiny_windows.eval)) < SAME
    # ... but dropping only the weight side of it (the activations still divided by s) is not
    real = smooth._fold_into_inputs

    def kind(readers):  # which fold a call serves, told by what reads the smoothed input
        if len(readers) > 1:
            return "qkv" if len(readers) == 3 else "mlp"
        (linear,) = readers
        if linear.out_features == model.config.vocab_size:
            return "lm_head"
        return "down" if linear.in_features == model.config.intermediate_size else "o"

    monkeypatch.setattr(smooth, "_fold_into_inputs", lambda s, readers: None if kind(readers) == fold
                        else real(s, readers))
    broken = smooth.smoothed_copy(model, peaks)
    assert _gap(reference, _logits(broken, tiny_windows.eval)) > 100 * SAME


def test_peaks_are_the_max_over_tokens_of_each_input_channel(tiny_windows):
    model = _model("tiny-llama")
    seen = []
    module = dict(model.named_modules())["model.layers.1.mlp.down_proj"]
    handle = module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().abs()))
    with torch.no_grad():
        model(tiny_windows.calib, use_cache=False)
    handle.remove()
    peaks = smooth.channel_peaks(model, tiny_windows.calib, batch_size=1)
    assert set(peaks) == set(quantize.decoder_linear_names(model)) | {"lm_head"}
    expected = torch.cat(seen).reshape(-1, seen[0].shape[-1]).amax(0)
    assert torch.allclose(peaks["model.layers.1.mlp.down_proj"], expected)


def test_bad_smoothing_options_are_clear_errors(tiny_windows):
    model = _model("tiny-llama")
    peaks = smooth.channel_peaks(model, tiny_windows.calib)
    for alpha in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="migration strength"):
            smooth.smoothed_copy(model, peaks, alpha=alpha)
    with pytest.raises(ValueError, match="the folds are"):
        smooth.smoothed_copy(model, peaks, skip=("gate",))
    with pytest.raises(ValueError, match="no activation peaks"):
        smooth.smoothed_copy(model, {k: v for k, v in peaks.items() if k != "lm_head"})
    for name in ("tiny-gpt2", "tiny-gemma3"):
        other, _ = models.load(name, device="cpu")
        with pytest.raises(ValueError, match="nbits"):
            smooth.channel_peaks(other, tiny_windows.calib)


# ------------------------------------------------------------------------ the int8 ONNX file
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model, tokenizer = models.load("tiny-llama-trained", device="cpu")
    windows = data.windows_for(tokenizer, "tiny-llama-trained", seq_len=32, n_eval=4, n_calib=4)
    smoothed = smooth.smoothed_copy(model.eval(), smooth.channel_peaks(model, windows.calib))
    folder = tmp_path_factory.mktemp("int8")
    fp32 = export.export_onnx(smoothed, folder / "smoothed.onnx")
    return model, windows, fp32, export.quantize_onnx(fp32, folder / "smoothed-int8.onnx", "int8")


def test_int8_file_runs_integer_gemms_and_stays_close_to_pytorch(trained):
    import onnx
    import onnx.numpy_helper

    model, windows, fp32, int8 = trained
    session = export.OrtModel(int8)
    ops = session.op_types()
    matmuls = len(quantize.decoder_linear_names(model)) + 1  # + the lm_head
    assert ops.get("MatMulInteger", 0) == matmuls and ops.get("GatherBlockQuantized") == 1, ops
    assert "MatMulNBits" not in ops
    graph = onnx.load(str(int8)).graph
    scales = [onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_scale")]
    assert any(s.ndim == 1 and s.size > 1 for s in scales), "weights have one scale per output channel"
    assert export.ort_perplexity(session, windows.eval) <= INT8_QUALITY * metrics.perplexity(model, windows.eval)
    assert metrics.file_bytes(int8) < metrics.file_bytes(fp32) / 2  # graph and scales weigh on a tiny model


def test_int8_gemms_give_logits_close_to_pytorch(trained, tmp_path):
    model, windows, fp32, _ = trained
    gemms_only = export.quantize_onnx(fp32, tmp_path / "float-embedding.onnx", "int8", embedding=False)
    session = export.OrtModel(gemms_only)
    assert "GatherBlockQuantized" not in session.op_types()
    assert export.max_logit_gap(model, session, windows.eval) < INT8_LOGIT_GAP


def test_blockwise_nodes_keep_matmul_nbits(trained, tmp_path):
    model, windows, fp32, _ = trained
    downs = [n for n in export.matmul_nodes(fp32) if "down_proj" in n]
    assert len(downs) == len(model.model.layers)
    target = export.quantize_onnx(fp32, tmp_path / "mixed.onnx", "int8", blockwise=tuple(downs))
    session = export.OrtModel(target)
    ops = session.op_types()
    assert ops.get("MatMulNBits") == len(downs)
    assert ops.get("MatMulInteger") == len(quantize.decoder_linear_names(model)) + 1 - len(downs)
    assert export.ort_perplexity(session, windows.eval) <= INT8_QUALITY * metrics.perplexity(model, windows.eval)


def test_bad_int8_options_are_clear_errors(trained, tmp_path):
    *_, fp32, _ = trained
    with pytest.raises(ValueError, match="int8 only"):
        export.quantize_onnx(fp32, tmp_path / "x.onnx", "int8", bits=4)
    with pytest.raises(ValueError, match="not MatMul nodes"):
        export.quantize_onnx(fp32, tmp_path / "x.onnx", "int8", blockwise=("model.layers.0.mlp.down_proj",))
    with pytest.raises(ValueError, match="blockwise is for the 'int8' method"):
        export.quantize_onnx(fp32, tmp_path / "x.onnx", "nbits", blockwise=("/lm_head/MatMul",))
