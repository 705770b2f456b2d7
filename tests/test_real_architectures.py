"""Head and neuron removal on architectures as they really are, not as the tiny table has them.

- Gemma3 whose ``head_dim`` (32) differs from ``hidden_size / num_heads`` (64 / 4), with a
  sliding-window layer (window 4) and a global layer, on inputs longer than the window;
- Llama with a left-padded batch and its attention mask: with a mask, sdpa no longer infers
  the grouped-query ratio itself but repeats the KV heads ``num_key_value_groups`` times,
  as eager does, so a stale ratio shows on both paths.

On each: removal gives the logits of zeroing, and ``generate()`` (KV cache, sliding cache)
after head removal and after neuron removal gives the tokens of the zeroed model.
"""
import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

from course_lib.core import arch
from course_lib.pruning import heads as H
from course_lib.pruning import mlp as M

COMMON = dict(vocab_size=258, bos_token_id=256, eos_token_id=257, pad_token_id=257,
              num_hidden_layers=2, max_position_embeddings=128, initializer_range=0.1)


def gemma3_wide_heads(impl):
    config = Gemma3TextConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=32, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"],
                              attn_implementation=impl, **COMMON)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def llama_gqa(impl):
    config = LlamaConfig(hidden_size=96, intermediate_size=192, num_attention_heads=6,
                         num_key_value_heads=2, head_dim=16, attn_implementation=impl, **COMMON)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def left_padded_batch():
    """Three prompts of 12, 9 and 5 tokens, left-padded to 12, with their attention mask."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    for row, pad in ((1, 3), (2, 7)):
        ids[row, :pad], mask[row, :pad] = 257, 0
    return ids, mask


def unpadded_batch():
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(4))
    return ids, torch.ones_like(ids)


ARCHITECTURES = {  # name: (build, batch, heads to remove (one per KV group, and a whole group))
    "gemma3-head_dim-32-window-4": (gemma3_wide_heads, unpadded_batch,
                                    [{0: [0, 2], 1: [1, 3]}, {1: [2, 3]}]),
    "llama-gqa-left-padded": (llama_gqa, left_padded_batch,
                              [{0: [0, 3], 1: [2, 5]}, {0: [3, 4, 5]}]),
}


def logits(model, ids, mask):
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=False).logits
    return out[mask.bool()]  # the real tokens' positions (padding's logits mean nothing)


def generated(model, ids, mask):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                              pad_token_id=257)


def check_removal_equals_zeroing(model, ids, mask, zero, remove, label):
    dense = logits(model, ids, mask)
    z = zero()
    zeroed, zeroed_tokens = logits(model, ids, mask), generated(model, ids, mask)
    z.restore()
    assert not torch.allclose(zeroed, dense, atol=1e-3), f"{label}: zeroing changed nothing"
    r = remove()
    torch.testing.assert_close(logits(model, ids, mask), zeroed, atol=1e-5, rtol=0, msg=label)
    assert torch.equal(generated(model, ids, mask), zeroed_tokens), label  # cache, sliding window
    r.restore()
    assert torch.equal(logits(model, ids, mask), dense)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_head_and_neuron_removal_equal_zeroing_and_generate_alike(name, impl):
    build, batch, head_requests = ARCHITECTURES[name]
    model = build(impl)
    ids, mask = batch()
    for request in head_requests:
        check_removal_equals_zeroing(model, ids, mask, lambda: H.zero_heads(model, request),
                                     lambda: H.remove_heads(model, request), f"heads {request}")
    width = arch.mlp_width(model, 0)
    neurons = {0: list(range(0, width, 3)), 1: [width - 1, 5]}
    check_removal_equals_zeroing(model, ids, mask, lambda: M.zero_neurons(model, neurons),
                                 lambda: M.remove_neurons(model, neurons), f"neurons {neurons}")


def test_the_gemma3_stand_in_is_what_it_claims():
    """head_dim is not hidden / heads, and the input is longer than the window, which matters."""
    model = gemma3_wide_heads("eager")
    ids, mask = unpadded_batch()
    shape = arch.attention_shape(model, 0)
    assert shape.head_dim == 32 and shape.n_heads * shape.head_dim != model.config.hidden_size
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    assert ids.shape[1] > model.config.sliding_window
    local = logits(model, ids, mask)
    model.config.sliding_window = 64
    for layer in arch.decoder_layers(model):
        layer.self_attn.sliding_window = 64 if layer.self_attn.sliding_window else None
    assert not torch.allclose(logits(model, ids, mask), local, atol=1e-4)
