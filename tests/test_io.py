"""Saving and loading pruned models: identical logits, atomic writes, clear refusals."""
import json
import os
import subprocess
import sys

import pytest
import torch

from course_lib.core import arch, models
from course_lib.pruning import heads as H
from course_lib.pruning import io
from course_lib.pruning import mlp as M
from course_lib.pruning.undo import PruneHandle

TINY = list(models.BASE_TINY)
X = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(3))


def logits(model, ids=X):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def unstructured(model):
    """Zero a random half of every decoder matrix (a stand-in for magnitude pruning)."""
    handle = PruneHandle("random unstructured")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in arch.prunable_linears(model).values():
            handle.save_tensor(module.weight.data)
            module.weight.data[torch.rand(module.weight.shape, generator=gen) < 0.5] = 0
    return handle


def structured(model):
    g = arch.attention_shape(model, 0).group_size
    heads = {0: [1, 2]} if g == 1 else {0: list(range(g)), 1: [0, g]}  # MHA / GQA-valid
    handle = H.remove_heads(model, heads)
    M.remove_neurons(model, {1: list(range(0, arch.mlp_width(model, 1), 4))})
    H.zero_heads(model, {1: [0]})  # a zeroed head on top of the removal
    return handle


@pytest.mark.parametrize("kind", ["dense", "unstructured", "structured"])
@pytest.mark.parametrize("name", TINY)
def test_round_trip_gives_identical_logits(tmp_path, name, kind):
    model, tokenizer = models.load(name)
    handle = {"dense": lambda m: None, "unstructured": unstructured, "structured": structured}[kind](model)
    saved = logits(model)
    io.save_pruned(model, tmp_path / "save", handle, tokenizer=tokenizer)
    manifest = io.read_manifest(tmp_path / "save")
    assert manifest["base_model"] == name and manifest["kind"] == kind
    assert (manifest["unstructured"]["sparsity"] > 0.45) == (kind == "unstructured")
    loaded, tok = io.load_pruned(tmp_path / "save")
    assert torch.equal(logits(loaded), saved)
    assert [arch.attention_shape(loaded, i) for i in range(2)] == \
        [arch.attention_shape(model, i) for i in range(2)]
    assert [arch.mlp_width(loaded, i) for i in range(2)] == [arch.mlp_width(model, i) for i in range(2)]
    assert tok("print('hi')")["input_ids"] == tokenizer("print('hi')")["input_ids"]
    if kind == "structured":
        assert manifest["kept_heads"] and manifest["kept_neurons"]
        assert manifest["prune"]["info"]["mode"] == "remove"
        # saving the reloaded model records the same structure
        io.save_pruned(loaded, tmp_path / "again")
        again = io.read_manifest(tmp_path / "again")
        assert (again["kept_heads"], again["kept_neurons"]) == \
            (manifest["kept_heads"], manifest["kept_neurons"])
        assert again["tokenizer"] is False


def test_round_trip_keeps_attention_implementation_and_generation(tmp_path):
    model, tokenizer = models.load("tiny-llama", attn_implementation="eager")
    H.remove_heads(model, {0: [0, 3]})  # one head per group: num_key_value_groups 3 -> 2
    ids = X[:1, :8]
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                  pad_token_id=257)
    expected = model.generate(ids, **kwargs)
    io.save_pruned(model, tmp_path / "m", tokenizer=tokenizer)
    loaded, _ = io.load_pruned(tmp_path / "m")
    assert loaded.config._attn_implementation == "eager"
    assert arch.attention(arch.decoder_layers(loaded)[0]).num_key_value_groups == 2
    assert torch.equal(loaded.generate(ids, **kwargs), expected)


def test_a_fresh_process_loads_the_same_model(tmp_path):
    model, tokenizer = models.load("tiny-qwen2")
    structured(model)
    unstructured(model)
    io.save_pruned(model, tmp_path / "m", tokenizer=tokenizer)
    code = (
        "import json, sys, torch\n"
        "torch.set_num_threads(2)\n"
        "from course_lib.pruning.io import load_pruned\n"
        "model, tok = load_pruned(sys.argv[1])\n"
        "ids = torch.tensor(json.loads(sys.argv[2]))\n"
        "with torch.no_grad():\n"
        "    print(json.dumps(model(ids, use_cache=False).logits.double().tolist()))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m"), json.dumps(X.tolist())],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    theirs = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]), dtype=torch.float64)
    torch.testing.assert_close(theirs, logits(model).double(), atol=1e-6, rtol=0)


def test_interrupted_save_keeps_the_previous_one(tmp_path, monkeypatch):
    model, tokenizer = models.load("tiny-gpt2")
    io.save_pruned(model, tmp_path / "m", tokenizer=tokenizer)
    dense = logits(model)
    H.remove_heads(model, {0: [0, 1]})

    class Boom(Exception):
        pass

    def crash(*args, **kwargs):  # the weights are written, then the process "dies"
        raise Boom

    monkeypatch.setattr(tokenizer, "save_pretrained", crash)
    with pytest.raises(Boom):
        io.save_pruned(model, tmp_path / "m", tokenizer=tokenizer)
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no half-written staging folder left
    loaded, _ = io.load_pruned(tmp_path / "m")
    assert torch.equal(logits(loaded), dense)
    # and a first save that fails leaves no folder at all
    with pytest.raises(Boom):
        io.save_pruned(model, tmp_path / "new", tokenizer=tokenizer)
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_refusals(tmp_path):
    model, _ = models.load("tiny-llama")
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "mine.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a saved pruned model"):
        io.save_pruned(model, keep)
    assert (keep / "mine.txt").read_text() == "precious"
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        io.load_pruned(keep)
    with pytest.raises(TypeError, match="PruneHandle"):
        io.save_pruned(model, tmp_path / "x", handle_or_manifest=3)
    del model.course_name
    with pytest.raises(ValueError, match="course_name"):
        io.save_pruned(model, tmp_path / "x")


def test_weights_that_do_not_fit_the_manifest_are_refused(tmp_path):
    pruned, _ = models.load("tiny-llama")
    H.remove_heads(pruned, {0: [0, 1, 2]})
    io.save_pruned(pruned, tmp_path / "pruned")
    dense, _ = models.load("tiny-llama")
    io.save_pruned(dense, tmp_path / "dense")
    os.replace(tmp_path / "dense" / io.WEIGHTS, tmp_path / "pruned" / io.WEIGHTS)
    with pytest.raises(ValueError, match="do not fit"):
        io.load_pruned(tmp_path / "pruned")


@pytest.mark.parametrize("kind", ["course recipe", "standard with manifest", "plain save_pretrained"])
def test_a_truncated_weights_file_is_a_clear_error_not_a_traceback(tmp_path, capsys, kind):
    """``eval DIR`` on a folder whose model.safetensors was cut short (an interrupted copy, a
    full disk): exit code 2 and one paragraph naming the file and what to do."""
    from course_lib.cli.main import main
    model, tokenizer = models.load("tiny-llama")
    folder = tmp_path / "saved"
    if kind == "course recipe":
        M.remove_neurons(model, {0: [1, 2]})
        io.save_pruned(model, folder, tokenizer=tokenizer)
    elif kind == "standard with manifest":
        io.export_pretrained(model, folder, tokenizer=tokenizer)
    else:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    weights = folder / io.WEIGHTS
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    assert main(["eval", str(folder), "--seq-len", "16", "--n-eval", "1", "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert str(weights) in err and "cut short" in err and "Save the model again" in err
    weights.unlink()  # gone altogether: the same kind of answer
    assert main(["eval", str(folder), "--seq-len", "16", "--n-eval", "1", "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_manifest_is_readable_json_with_notes(tmp_path):
    model, _ = models.load("tiny-gpt2")
    handle = M.remove_neurons(model, {0: [1, 2]})
    handle.info["mask"] = torch.ones(3, 4)  # tensors are described, not dumped
    io.save_pruned(model, tmp_path / "a", handle)
    info = io.read_manifest(tmp_path / "a")["prune"]["info"]
    assert info["mask"] == "<Tensor (3, 4)>" and info["kept_original_neurons"]["0"][:2] == [0, 3]
    io.save_pruned(model, tmp_path / "b", {"author": "me", "ppl": 13.7})
    assert io.read_manifest(tmp_path / "b")["notes"] == {"author": "me", "ppl": 13.7}
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["mlp_width_per_layer"] == [254, 256]
