"""Model loading: tiny models, the trained tiny model, the embedded model and its cache, hub ids
offline."""
import dataclasses

import pytest
import torch

from course_lib.core import arch, models


@pytest.mark.parametrize("name", models.TINY)
def test_tiny_models_are_deterministic_and_run(name):
    a, tokenizer = models.load(name)
    b, _ = models.load(name)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), f"{name}: {ka} differs between two loads"
    ids = tokenizer("Pruning removes weights.", return_tensors="pt").input_ids
    assert a(ids).logits.shape == (1, ids.shape[1], models.TINY_VOCAB)
    assert not a.training


def test_the_trained_tiny_model_is_deterministic_cached_and_keyed_by_its_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    short = models.TrainedTiny("tiny-llama", steps=4, batch=2, seq_len=16)  # the real one, shorter
    monkeypatch.setitem(models.TRAINED, "tiny-llama-trained", short)
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    first, _ = models.load("tiny-llama-trained")
    assert torch.equal(torch.random.get_rng_state(), rng) and torch.get_num_threads() == threads
    again = models.train_tiny(short)  # the same settings: the same weights, bit for bit
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    untrained, _ = models.load("tiny-llama")
    assert not torch.equal(first.lm_head.weight, untrained.lm_head.weight)  # it did train
    monkeypatch.setattr(models, "train_tiny", lambda recipe: pytest.fail("trained twice"))
    cached, _ = models.load("tiny-llama-trained")  # read from the cache
    assert torch.equal(cached.lm_head.weight, first.lm_head.weight)
    other = dataclasses.replace(short, lr=short.lr / 2)
    assert other.key() != short.key()  # other settings, another cache entry
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == \
        [f"tiny-llama-trained-{short.key()}"]


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = models.byte_tokenizer()
    text = "Größe: 3·10⁹ params — «sparse» ✓\n\tend"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert max(ids) < 256 and len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_tiny_families_match_their_layouts():
    expected = {"tiny-gpt2": ("gpt2", 4, 4), "tiny-llama": ("llama", 6, 2),
                "tiny-qwen2": ("llama", 6, 2), "tiny-gemma3": ("llama", 4, 2)}
    for name, (fam, heads, kv) in expected.items():
        model, _ = models.load(name)
        shape = arch.attention_shape(model, 0)
        assert (arch.family(model), shape.n_heads, shape.n_kv_heads) == (fam, heads, kv), name
        names = list(arch.prunable_linears(model))
        assert names and not any("lm_head" in n or "embed" in n or "wte" in n for n in names)


def test_unknown_name_fails_fast_offline_and_says_what_to_do(monkeypatch, network_attempts):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotAvailableError) as info:
        models.load("smollm2")
    assert network_attempts == []  # fast: offline, nothing was even tried
    message = str(info.value)
    assert "smollm2-135m" in message and "Did you mean" in message and "gemma3-270m" in message


def test_hub_id_offline_fails_fast_and_names_the_embedded_models(monkeypatch, network_attempts):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotAvailableError, match="embedded model"):
        models.load("TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    assert network_attempts == []


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(models.ModelNotAvailableError, match="no CUDA"):
        models.load("tiny-llama", device="cuda")


@pytest.mark.embedded
def test_embedded_smollm2_matches_its_published_shape(smollm2):
    model, tokenizer = smollm2
    shape = arch.attention_shape(model, 0)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(arch.decoder_layers(model)) == 30
    assert (shape.n_heads, shape.n_kv_heads, shape.head_dim) == (9, 3, 64)
    assert arch.mlp_width(model, 0) == 1536 and model.config.hidden_size == 576
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    assert next(model.parameters()).dtype == torch.float32
    text = "The quick brown fox jumps over the lazy dog."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


@pytest.mark.embedded
def test_embedded_model_loads_from_its_cache_without_the_gguf(smollm2, monkeypatch, capsys):
    """Once cached, a load reads the safetensors copy: the GGUF is not even located (that is what
    makes it take a second instead of a minute; how long it takes is the benchmark's business)."""
    def no_gguf():
        raise AssertionError("the GGUF was looked for: the cache was not used")

    monkeypatch.setitem(models.EMBEDDED, "smollm2-135m",
                        dataclasses.replace(models.EMBEDDED["smollm2-135m"], locate_gguf=no_gguf))
    model, _ = models.load("smollm2-135m")  # the session fixture already built the cache
    assert "converting" not in capsys.readouterr().out
    reference, _ = smollm2
    assert torch.equal(model.model.layers[3].mlp.up_proj.weight, reference.model.layers[3].mlp.up_proj.weight)


@pytest.mark.embedded
def test_damaged_cache_is_rebuilt_not_half_loaded(tmp_path, monkeypatch, smollm2):
    import shutil

    source = models.cache_dir() / "smollm2-135m"
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    shutil.copytree(source, tmp_path / "smollm2-135m")
    weights = tmp_path / "smollm2-135m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1000])  # a truncated write
    with pytest.warns(UserWarning, match="rebuilding"):
        model, _ = models.load("smollm2-135m")
    reference, _ = smollm2
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight,
                       reference.model.layers[0].self_attn.q_proj.weight)


def test_stand_ins_mirror_the_geometry_of_their_originals():
    """The stand-ins exist to exercise every index a lesson derives on the original model."""
    want = {  # family, heads, KV heads, head_dim != hidden/heads, MLP / hidden, biases, tied, sliding
        "tiny-gpt2-124m": ("gpt2", 12, 12, False, 4.0, True, True, False),
        "tiny-tinyllama": ("llama", 32, 4, False, 2.75, False, False, False),
        "tiny-qwen2.5": ("llama", 14, 2, False, None, True, True, False),
        "tiny-gemma3-270m": ("llama", 4, 1, True, None, False, True, True),
    }
    assert set(want) == set(models.STAND_INS) and set(models.STAND_INS) <= set(models.TINY)
    for name, (fam, heads, kv, odd_head_dim, mlp_ratio, biases, tied, sliding) in want.items():
        model, _ = models.load(name)
        geo = arch.geometry(model)
        assert (geo.family, geo.n_heads, geo.n_kv_heads) == (fam, heads, kv), name
        assert (geo.head_dim * geo.n_heads != geo.hidden) == odd_head_dim, name
        assert mlp_ratio is None or geo.mlp_width / geo.hidden == mlp_ratio, name
        assert (geo.attn_biases, geo.tied_embeddings) == (biases, tied), name
        assert ("sliding_attention" in geo.layer_types and "full_attention" in geo.layer_types) == sliding, name
        for part in geo.attn_projections:  # every name the geometry gives exists in the model
            model.get_submodule(geo.attn_module(geo.n_layers - 1, part))
        for part in geo.mlp_projections:
            model.get_submodule(geo.mlp_module(geo.n_layers - 1, part))
        with pytest.raises(IndexError, match="layers 0.."):
            geo.attn_module(geo.n_layers)
    assert arch.geometry(models.load("tiny-gemma3-270m")[0]).head_dim == 256


def test_own_memory_copies_the_mapped_weights_once_and_keeps_ties(tmp_path):
    """An explorer's first prune must not pay copy-on-write faults: ``own_memory`` moves every
    weight off the checkpoint's mapped file (new storage, same values), keeps tied weights one
    Parameter, and a second call copies nothing."""
    import torch

    from course_lib.core import models

    tiny, _ = models.load("tiny-llama")
    tiny.save_pretrained(tmp_path)
    model = models.quiet_transformers().AutoModelForCausalLM.from_pretrained(tmp_path)
    before = {name: (p.data_ptr(), p.detach().clone()) for name, p in model.named_parameters()}
    models.own_memory(model)
    after = dict(model.named_parameters())
    assert all(after[name].data_ptr() != ptr and torch.equal(after[name], value)
               for name, (ptr, value) in before.items())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    pointers = [p.data_ptr() for p in model.parameters()]
    models.own_memory(model)
    assert [p.data_ptr() for p in model.parameters()] == pointers


def test_hash_code_follows_what_the_code_does_not_its_docstrings(tmp_path, monkeypatch):
    """A cache key over code: reworded docstrings and comments keep it, a changed line moves it."""
    import hashlib
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))
    base = '"""Module doc."""\n\ndef f(x):\n    """Doubles."""\n    return 2 * x  # twice\n'
    variants = {"same": base,
                "reworded": '"""Another module doc,\non two lines."""\n\ndef f(x):\n    """Twice x."""\n'
                            '    # a comment\n    return 2 * x\n',
                "changed": base.replace("2 * x", "3 * x"),
                "no docstring": base.replace('    """Doubles."""\n', "")}
    keys = {}
    for i, (label, source) in enumerate(variants.items()):
        (tmp_path / f"keyed_{i}.py").write_text(source)
        module = importlib.import_module(f"keyed_{i}")
        module.__name__ = "keyed"  # the same module name, edited
        digest = hashlib.sha256()
        models.hash_code(digest, module)
        keys[label] = digest.hexdigest()
    assert keys["reworded"] == keys["same"] == keys["no docstring"]
    assert keys["changed"] != keys["same"]
