"""Standard checkpoints: a uniformly pruned model opens with plain from_pretrained.

The loading side runs in a fresh Python that never imports course_lib, as a user's
script would; it must give the logits the pruned model gave before saving.
"""
import subprocess
import sys

import pytest
import torch

from course_lib.core import arch, models
from course_lib.pruning import heads as H
from course_lib.pruning import io, recipes
from course_lib.pruning import mlp as M
from fresh_process import bare_env

X = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(3))

# Loads every folder given, writes its logits beside it; fails if course_lib got imported.
FRESH = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(int(sys.argv[1]))
X = torch.load(sys.argv[2])
for folder in sys.argv[3:]:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    AutoTokenizer.from_pretrained(folder)  # the tokenizer lies beside the weights
    with torch.no_grad():
        torch.save(model(X, use_cache=False).logits, folder + "/fresh_logits.pt")
assert not any(m.startswith("course_lib") for m in sys.modules), "course_lib was imported"
"""


def fresh_logits(tmp_path, folders):
    torch.save(X, tmp_path / "x.pt")
    env = bare_env(HOME=str(tmp_path))  # no PYTHONPATH; the same instruction set as this process
    done = subprocess.run([sys.executable, "-c", FRESH, str(torch.get_num_threads()), str(tmp_path / "x.pt"),
                           *map(str, folders)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(f"{f}/fresh_logits.pt") for f in folders]


def logits(model):
    with torch.no_grad():
        return model(X, use_cache=False).logits


def uniform_cut(model):
    """One KV group (GPT-2: no heads, its attention width is fixed) and 25% of neurons per layer."""
    if arch.family(model) != "gpt2":
        H.remove_heads(model, recipes.uniform_groups_request(model, 1, recipes.importance(model, "heads", "weight-norm")))
    M.remove_neurons(model, recipes.uniform_neurons_request(model, 0.25, recipes.importance(model, "mlp", "weight-norm")))


def test_tiny_models_round_trip_through_plain_from_pretrained(tmp_path):
    folders, expected = [], []
    for name in models.BASE_TINY:
        model, tokenizer = models.load(name, device="cpu")
        width = arch.mlp_width(model, 0)
        uniform_cut(model)
        assert arch.mlp_width(model, 1) == width - round(0.25 * width)  # really cut
        if name == "tiny-llama":  # one query head of every remaining group too
            H.remove_heads(model, recipes.uniform_heads_request(model, 1, recipes.importance(model, "heads", "weight-norm")))
            assert arch.attention_shape(model, 0).group_size == 2
        expected.append(logits(model))
        folders.append(io.export_pretrained(model, tmp_path / name, tokenizer=tokenizer))
    for name, got, want in zip(models.BASE_TINY, fresh_logits(tmp_path, folders), expected):
        assert torch.equal(got, want) or (got - want).abs().max() < 1e-6, name
    # the course opens it too, and knows which heads/neurons each layer kept
    reloaded, _ = io.load_pruned(folders[1])
    assert torch.equal(logits(reloaded), expected[1])
    assert io.structure(reloaded)["neurons"]


def test_smollm2_one_kv_group_and_quarter_of_neurons(tmp_path):
    model, tokenizer = models.load("smollm2-135m", device="cpu")
    uniform_cut(model)
    assert arch.attention_shape(model, 7).n_kv_heads == 2 and arch.mlp_width(model, 7) == 1152
    expected = logits(model)
    folder = io.save_pruned(model, tmp_path / "smol", tokenizer=tokenizer)  # chooses standard
    assert io.is_standard(folder) and io.read_manifest(folder)["standard"]
    (got,) = fresh_logits(tmp_path, [folder])
    assert torch.equal(got, expected) or (got - expected).abs().max() < 1e-6


def test_layers_cut_differently_keep_the_recipe_format_and_say_why(tmp_path):
    model, tokenizer = models.load("tiny-llama", device="cpu")
    M.remove_neurons(model, {0: [1, 2, 3]})
    with pytest.raises(ValueError, match="transformers builds every layer from one config") as info:
        io.export_pretrained(model, tmp_path / "x")
    assert "uniform" in str(info.value) and not (tmp_path / "x").exists()
    folder = io.save_pruned(model, tmp_path / "y", tokenizer=tokenizer)
    assert not io.is_standard(folder) and io.read_manifest(folder)["kind"] == "structured"


def test_gpt2_heads_removed_is_refused_with_the_reason(tmp_path):
    model, _ = models.load("tiny-gpt2", device="cpu")
    H.remove_heads(model, {0: [1], 1: [2]})
    with pytest.raises(ValueError, match="n_embd"):
        io.export_pretrained(model, tmp_path / "x")


def test_uniform_helpers_cut_the_same_count_each_layer_by_its_own_scores():
    model, _ = models.load("tiny-llama", device="cpu")
    scores = [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]]
    assert recipes.uniform_heads_request(model, 1, scores=scores) == {0: [0, 3], 1: [2, 5]}
    assert recipes.uniform_groups_request(model, 1, scores=scores) == {0: [0, 1, 2], 1: [3, 4, 5]}
    with pytest.raises(ValueError, match="0..2"):
        recipes.uniform_heads_request(model, 3)
