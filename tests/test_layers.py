"""Depth pruning: removing a layer == skipping it, generate() agrees, undo is exact, saves as plain HF."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

from course_lib.core import arch, models
from course_lib.pruning import io
from course_lib.pruning import layers as L
from fresh_process import bare_env

TINY = list(models.BASE_TINY)
X = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
N_LAYERS = 4


def deep_tiny(name: str, impl: str):
    """A 4-layer version of a tiny model. Gemma3 gets a sliding window shorter than the
    inputs and mixed layer types, so a layer given the wrong type computes something else."""
    config = models._tiny_config(name)
    config.num_hidden_layers = N_LAYERS
    if name == "tiny-gemma3":
        config.sliding_window = 6
        config.layer_types = ["sliding_attention", "full_attention", "sliding_attention",
                              "full_attention"]
    if name == "tiny-qwen2":
        config.layer_types = ["full_attention"] * N_LAYERS
    config._attn_implementation = impl
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # larger weights: layers matter more, ties in argmax are rarer
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return model


def logits(model, ids=X):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def greedy_without_cache(model, prompt, new_tokens):
    ids = prompt
    for _ in range(new_tokens):
        nxt = logits(model, ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("removed", [[0], [1], [3], [1, 2]])
def test_removed_equals_skipped_and_restore_is_exact(name, impl, removed):
    model = deep_tiny(name, impl)
    dense = logits(model)
    with L.skipping(model, removed):
        skipped = logits(model)
    assert not torch.allclose(skipped, dense, atol=1e-3)  # the layer did something
    handle = L.remove_layers(model, removed)
    assert len(arch.decoder_layers(model)) == N_LAYERS - len(removed)
    assert model.config.num_hidden_layers == N_LAYERS - len(removed)
    torch.testing.assert_close(logits(model), skipped, atol=1e-5, rtol=0)
    handle.restore()
    assert model.config.num_hidden_layers == N_LAYERS
    assert torch.equal(logits(model), dense)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", TINY)
def test_generate_after_removal_matches_greedy_skipping(name, impl):
    model = deep_tiny(name, impl)
    prompt = X[:1, :10]
    removed = [0, 2]  # layer 0 gone: a stale layer_idx would leave cache slot 0 empty
    with L.skipping(model, removed):
        reference = greedy_without_cache(model, prompt, 12)
    L.remove_layers(model, removed)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True,
                             pad_token_id=257, eos_token_id=None)
    assert out.tolist() == reference.tolist()


def test_config_lists_follow_the_layers():
    model = deep_tiny("tiny-gemma3", "eager")
    handle = L.remove_layers(model, [0])
    assert model.config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    assert [arch.attention(layer).layer_idx for layer in arch.decoder_layers(model)] == [0, 1, 2]
    assert L.kept_layers(model) == [1, 2, 3]
    assert "layer_types" in handle.info["config_lists_sliced"]
    L.remove_layers(model, [1])  # indices as the model is now: original layer 2
    assert L.kept_layers(model) == [1, 3]


def test_bad_requests_are_refused():
    model = deep_tiny("tiny-llama", "eager")
    with pytest.raises(ValueError, match="do not exist"):
        L.remove_layers(model, [4])
    with pytest.raises(ValueError, match="at most 3"):
        L.remove_layers(model, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="remove between"):
        L.least_important_layers([1, 2, 3], 3)


def test_importance_scores_and_selection():
    model = deep_tiny("tiny-llama", "sdpa")
    windows = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    bi = L.block_influence(model, windows)
    assert bi.shape == (N_LAYERS,) and bool((bi >= 0).all()) and bool((bi <= 2).all())
    # block influence by hand for layer 1: cos between what enters and what leaves it
    with torch.no_grad():
        states = model(windows, output_hidden_states=True, use_cache=False).hidden_states
    cos = torch.nn.functional.cosine_similarity(states[1], states[2], dim=-1)
    torch.testing.assert_close(bi[1], (1 - cos).mean(), atol=1e-5, rtol=0)
    assert L.least_important_layers([0.5, 0.1, 0.3, 0.2], 2) == [1, 3]
    assert L.contiguous_block([0.5, 0.3, 0.1, 0.2], 2) == [2, 3]
    assert L.contiguous_block([0.5, 0.1, 0.3, 0.9], 2) == [1, 2]
    assert L.layers_for_fraction(model, 0.2) == 1 and L.layers_for_fraction(model, 0.0) == 0


FRESH = textwrap.dedent("""
    import sys, json, torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(int(sys.argv[4]))  # the parent's count: the same reduction order
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
    ids = torch.tensor(json.loads(sys.argv[2]))
    with torch.no_grad():
        out = model(ids, use_cache=False).logits
    torch.save(out, sys.argv[3])
    assert "course_lib" not in sys.modules
""")


def reload_in_fresh_process(folder, ids, tmp_path):
    target = tmp_path / "logits.pt"
    env = bare_env()
    subprocess.run([sys.executable, "-c", FRESH, str(folder), json.dumps(ids.tolist()), str(target),
                    str(torch.get_num_threads())],
                   check=True, env=env, cwd=tmp_path, timeout=300)
    return torch.load(target)


@pytest.mark.parametrize("name", TINY)
def test_saved_model_loads_with_plain_from_pretrained(name, tmp_path):
    model = deep_tiny(name, "sdpa")
    L.remove_layers(model, [1])
    io.export_pretrained(model, tmp_path / "m")
    # float noise is ~1e-5 here; a wrong or missing layer moves logits by O(1)
    torch.testing.assert_close(reload_in_fresh_process(tmp_path / "m", X, tmp_path), logits(model),
                               atol=1e-4, rtol=0)


@pytest.mark.embedded
def test_depth_pruned_smollm2_reloads_in_a_fresh_process(smollm2, smollm2_windows, tmp_path):
    import copy
    model = copy.deepcopy(smollm2[0])
    drop = L.layers_request(model, 0.2, smollm2_windows.calib[:2])
    L.remove_layers(model, drop).make_permanent()
    assert model.config.num_hidden_layers == 30 - 6
    io.export_pretrained(model, tmp_path / "m")
    ids = smollm2_windows.eval[:1, :32]
    torch.testing.assert_close(reload_in_fresh_process(tmp_path / "m", ids, tmp_path),
                               logits(model, ids), atol=1e-4, rtol=0)
