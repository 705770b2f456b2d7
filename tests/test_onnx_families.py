"""ONNX export on every family and every cut: ONNX Runtime computes PyTorch's logits, step by step.

Each model is exported (``export.export_onnx``) and both sides generate greedily from
the same prompts with their KV cache: PyTorch with the family's own cache (Gemma3's
sliding layers drop keys beyond the window), ONNX Runtime with the presents it
returns. Every step's logits must agree within ``export.LOGIT_TOLERANCE`` and the
tokens must be the same, over a generation longer than the sliding window. The
families differ where an export can go wrong: GPT-2 (Conv1D, fused ``c_attn``, no
``num_key_value_heads``), Llama (GQA), Qwen2 (q/k/v biases), Gemma3 (sliding and
global layers, head_dim != hidden/heads); and cut models keep per-layer KV shapes
that no single config field describes.
"""
import copy

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from course_lib.core import arch, models
from course_lib.pruning import heads as H
from course_lib.pruning import layers as L
from course_lib.runtime import export

pytest.importorskip("onnxruntime")

STEPS = 24  # new tokens; with the prompt, past tiny-gemma3's window of 8


@torch.no_grad()
def pytorch_steps(model, prompt, steps):
    """Greedy tokens and each step's last-position logits, with the family's own KV cache."""
    cache = DynamicCache(config=model.config)
    logits = model(prompt, cache=cache, use_cache=True).logits[:, -1]
    tokens, seen = [], [logits]
    for _ in range(steps):
        token = logits.argmax(-1, keepdim=True)
        tokens.append(token)
        logits = model(token, cache=cache, use_cache=True).logits[:, -1]
        seen.append(logits)
    return torch.cat(tokens, 1), seen


def ort_steps(session, prompt, steps):
    logits, past = session.step(prompt.numpy(), session.empty_past(prompt.shape[0]))
    tokens, seen = [], [torch.from_numpy(logits[:, -1])]
    for _ in range(steps):
        token = logits[:, -1].argmax(-1).reshape(-1, 1).astype(np.int64)
        tokens.append(torch.from_numpy(token))
        logits, past = session.step(token, past)
        seen.append(torch.from_numpy(logits[:, -1]))
    return torch.cat(tokens, 1), seen


def assert_runtime_generates_like_pytorch(model, folder, steps=STEPS, prompt_tokens=5):
    """Greedy generation of ``steps`` tokens (more where a sliding window needs it to be passed)."""
    if "sliding_attention" in (getattr(model.config, "layer_types", None) or []):
        steps = max(steps, model.config.sliding_window + 4 - prompt_tokens)
    session = export.OrtModel(export.export_onnx(model, folder / "model.onnx"))
    vocab = model.get_input_embeddings().num_embeddings
    prompt = torch.randint(0, vocab, (2, prompt_tokens), generator=torch.Generator().manual_seed(1))
    tokens, expected = pytorch_steps(model, prompt, steps)
    got_tokens, got = ort_steps(session, prompt, steps)
    for step, (want, have) in enumerate(zip(expected, got)):
        gap = float((have - want).abs().max() / want.abs().max())
        assert gap < export.LOGIT_TOLERANCE, f"step {step}: relative logit gap {gap:.1e}"
    assert torch.equal(got_tokens, tokens)
    return session


@pytest.mark.parametrize("name", [*models.BASE_TINY, "tiny-gemma3-270m"])
def test_every_family_generates_the_same_in_onnx_runtime(name, tmp_path):
    model, _ = models.load(name, device="cpu")
    assert_runtime_generates_like_pytorch(model, tmp_path)


CUTS = {  # name -> a cut whose layers end up with different KV shapes, or fewer layers
    "tiny-llama": lambda m: H.remove_heads(m, {0: [0, 1, 2]}),  # layer 0 keeps 1 KV head, layer 1 keeps 2
    "tiny-gpt2": lambda m: H.remove_heads(m, {0: [1], 1: [0, 2]}),  # 3 and 2 heads: no config says so
    "tiny-qwen2": lambda m: (L.remove_layers(m, [0]), H.remove_heads(m, {0: [3, 4, 5]})),
    "tiny-gemma3": lambda m: H.remove_heads(m, {1: [0, 1]}),  # the global layer loses a KV group
    "tiny-gemma3-270m": lambda m: L.remove_layers(m, [1]),  # sliding, global left
}


@pytest.mark.parametrize("name", list(CUTS))
def test_cut_models_export_with_their_own_kv_shapes(name, tmp_path):
    model, _ = models.load(name, device="cpu")
    CUTS[name](model)
    shapes = export.kv_shapes(model)
    assert shapes == [(arch.attention_shape(model, i).n_kv_heads, arch.attention_shape(model, i).head_dim)
                      for i in range(len(arch.decoder_layers(model)))]
    session = assert_runtime_generates_like_pytorch(model, tmp_path)
    assert list(session.past_shapes.values()) == [shape for shape in shapes for _ in ("key", "value")]


@pytest.mark.embedded
def test_smollm2_with_a_kv_group_and_a_fifth_of_its_layers_removed(smollm2, tmp_path):
    model = copy.deepcopy(smollm2[0]).cpu().float()
    H.remove_heads(model, {i: [0, 1, 2] for i in range(len(arch.decoder_layers(model)))})  # KV group 0
    L.remove_layers(model, list(range(18, 24)))  # 6 of 30 layers
    assert arch.attention_shape(model, 0).n_kv_heads == 2 and len(arch.decoder_layers(model)) == 24
    assert_runtime_generates_like_pytorch(model, tmp_path, steps=8)
