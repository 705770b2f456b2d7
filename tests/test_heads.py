"""Head pruning: removal equals zeroing, shapes shrink, restore is exact, bad sets are refused."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_lib.core import arch, metrics, models
from course_lib.pruning import heads as H
from course_lib.pruning import mlp as M

TINY = list(models.BASE_TINY)
IMPLS = ["eager", "sdpa"]
X = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))


def logits(model, ids=X):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def valid_sets(model):
    """Named head sets that remove_heads must accept for this model's shape."""
    s = arch.attention_shape(model, 0)
    g, n = s.group_size, s.n_heads
    if g == 1:  # MHA: arbitrary sets, different per layer
        return {"arbitrary": {0: [1, 3], 1: [0, 1, 2]}, "single": {1: [n - 1]}}
    return {
        "whole group": {0: list(range(g)), 1: list(range(n - g, n))},
        "one per group": {0: [k * g for k in range(s.n_kv_heads)],
                          1: [k * g + g - 1 for k in range(s.n_kv_heads)]},
        "group + per group": {0: list(range(g)) + [g + 1]},  # kept counts [0, g-1]
    }


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: (type(m), id(m)) for n, m in model.named_modules()})


def assert_restored(model, snap, reference_logits):
    params, modules = snap
    now = model.state_dict()
    assert now.keys() == params.keys()
    for k, v in params.items():
        assert now[k].shape == v.shape and torch.equal(now[k], v), k
    assert {n: (type(m), id(m)) for n, m in model.named_modules()} == modules
    assert torch.equal(logits(model), reference_logits)


def greedy(model, n=6):
    ids = X[:1, :8]
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              do_sample=False, pad_token_id=257)


# ------------------------------------------------------------------ proofs --

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", TINY)
def test_remove_equals_zero_and_generate(name, impl):
    model, _ = models.load(name, attn_implementation=impl)
    dense = logits(model)
    for label, request in valid_sets(model).items():
        z = H.zero_heads(model, request)
        zeroed, zeroed_tokens = logits(model), greedy(model)
        z.restore()
        assert not torch.allclose(zeroed, dense, atol=1e-3), f"{label}: zeroing changed nothing"
        r = H.remove_heads(model, request)
        torch.testing.assert_close(logits(model), zeroed, atol=1e-4, rtol=0, msg=label)
        assert torch.equal(greedy(model), zeroed_tokens), label  # with the KV cache
        r.restore()
        assert torch.equal(logits(model), dense)


def _valid_request(draw, model):
    """A random request that keeps equal kept counts in surviving groups."""
    request = {}
    for layer in range(len(arch.decoder_layers(model))):
        s = arch.attention_shape(model, layer)
        g, groups = s.group_size, s.n_kv_heads
        if g == 1:
            k = draw(st.integers(0, s.n_heads - 1))
            request[layer] = draw(st.permutations(range(s.n_heads)))[:k]
            continue
        whole = draw(st.sets(st.integers(0, groups - 1), max_size=groups - 1))
        per_group = draw(st.integers(0, g - 1))
        heads = [h for k in whole for h in range(k * g, (k + 1) * g)]
        for k in set(range(groups)) - whole:
            heads += [k * g + j for j in draw(st.permutations(range(g)))[:per_group]]
        request[layer] = heads
    return request


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(TINY), impl=st.sampled_from(IMPLS))
def test_property_remove_equals_zero(data, name, impl):
    model, _ = models.load(name, attn_implementation=impl)
    n_heads = [arch.attention_shape(model, i).n_heads for i in range(2)]
    request = _valid_request(data.draw, model)
    z = H.zero_heads(model, request)
    zeroed = logits(model)
    z.restore()
    r = H.remove_heads(model, request)
    torch.testing.assert_close(logits(model), zeroed, atol=1e-4, rtol=0)
    for layer, removed in request.items():
        kept = H.kept_heads(model)[layer] or list(range(n_heads[layer]))
        assert kept == [h for h in range(n_heads[layer]) if h not in removed]
        assert arch.attention_shape(model, layer).n_heads == len(kept)
    r.restore()


def test_eager_needs_num_key_value_groups_updated():
    """One head per group out of 6/2 -> 4/2: the KV-repeat factor must go from 3 to 2."""
    request = {0: [0, 3]}
    zeroed = {}
    for impl in IMPLS:
        model, _ = models.load("tiny-llama", attn_implementation=impl)
        z = H.zero_heads(model, request)
        zeroed[impl] = logits(model)
        z.restore()
        H.remove_heads(model, request)
        attn = arch.attention(arch.decoder_layers(model)[0])
        assert attn.num_key_value_groups == 2
        torch.testing.assert_close(logits(model), zeroed[impl], atol=1e-4, rtol=0)
        attn.num_key_value_groups = 3  # what the model would have without our update
        if impl == "eager":  # repeat_kv makes 6 KV heads for 4 query heads
            with pytest.raises(RuntimeError):
                logits(model)
        else:  # sdpa's enable_gqa infers the ratio itself: a stale value hides here
            logits(model)


@pytest.mark.parametrize("name", TINY)
def test_shapes_and_parameter_count_shrink(name):
    model, _ = models.load(name)
    s = arch.attention_shape(model, 0)
    hidden, d, g = model.config.hidden_size, s.head_dim, s.group_size
    request = valid_sets(model)["arbitrary" if g == 1 else "whole group"]
    before = sum(p.numel() for p in model.parameters())
    H.remove_heads(model, request)
    expected_drop = 0
    for layer, removed in request.items():
        attn = arch.attention(arch.decoder_layers(model)[layer])
        kept = s.n_heads - len(removed)
        kept_kv = len({h // g for h in range(s.n_heads) if h not in removed})
        assert arch.attention_shape(model, layer) == arch.AttentionShape(kept, kept_kv, d)
        if name == "tiny-gpt2":
            assert attn.c_attn.weight.shape == (hidden, 3 * kept * d)
            assert attn.c_attn.bias.shape == (3 * kept * d,)
            assert attn.c_proj.weight.shape == (kept * d, hidden)
            assert attn.split_size == kept * d and attn.num_heads == kept
            expected_drop += len(removed) * d * (3 * (hidden + 1) + hidden)
        else:
            assert attn.q_proj.out_features == kept * d
            assert attn.k_proj.out_features == attn.v_proj.out_features == kept_kv * d
            assert attn.o_proj.in_features == kept * d
            assert attn.num_key_value_groups == kept // kept_kv
            qkv_bias = int(attn.q_proj.bias is not None)
            expected_drop += len(removed) * d * (2 * hidden + qkv_bias)
            expected_drop += (s.n_kv_heads - kept_kv) * d * 2 * (hidden + qkv_bias)
    assert before - sum(p.numel() for p in model.parameters()) == expected_drop


@pytest.mark.parametrize("name", TINY)
def test_restore_is_bit_exact(name):
    model, _ = models.load(name)
    dense = logits(model)
    snap = snapshot(model)
    attrs = [(a.__dict__.get("num_key_value_groups"), a.__dict__.get("split_size"))
             for a in map(arch.attention, arch.decoder_layers(model))]
    request = next(iter(valid_sets(model).values()))
    for prune in (H.zero_heads, lambda m, r: H.zero_heads(m, r, also_queries=True), H.remove_heads):
        handle = prune(model, request)
        assert not torch.equal(logits(model), dense)
        handle.restore()
        assert_restored(model, snap, dense)
        assert attrs == [(a.__dict__.get("num_key_value_groups"), a.__dict__.get("split_size"))
                         for a in map(arch.attention, arch.decoder_layers(model))]
        assert all(k is None for k in H.kept_heads(model).values())


@pytest.mark.parametrize("name", TINY)
def test_also_queries_zeroes_query_rows_and_changes_nothing_else(name):
    model, _ = models.load(name)
    request = {1: [1]}
    h = H.zero_heads(model, request)
    only_o = logits(model)
    h.restore()
    H.zero_heads(model, request, also_queries=True)
    torch.testing.assert_close(logits(model), only_o, atol=1e-5, rtol=0)
    attn = arch.attention(arch.decoder_layers(model)[1])
    d = arch.attention_shape(model, 1).head_dim
    q = attn.c_attn if name == "tiny-gpt2" else attn.q_proj
    assert torch.count_nonzero(arch.weight_matrix(q)[d:2 * d]) == 0
    assert torch.count_nonzero(arch.weight_matrix(q)[:d]) > 0


def test_successive_removals_compose():
    """Indices refer to the current model; kept_heads tracks the original ones."""
    model, _ = models.load("tiny-llama")
    z = H.zero_heads(model, {0: [0, 1, 2, 4]})
    zeroed = logits(model)
    z.restore()
    first = H.remove_heads(model, {0: [0, 1, 2]})  # whole group 0 -> heads 3,4,5 left
    H.remove_heads(model, {0: [1]})  # now head 1 is original head 4
    assert H.kept_heads(model)[0] == [3, 5]
    torch.testing.assert_close(logits(model), zeroed, atol=1e-4, rtol=0)
    assert first.info["kept_original_heads"] == {0: [3, 4, 5]}


# --------------------------------------------------------------- refusals --

def refused(model, request, *fragments, error=ValueError):
    dense = logits(model)
    with pytest.raises(error) as info:
        H.remove_heads(model, request)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert torch.equal(logits(model), dense)  # nothing was half-done
    return message


def test_gqa_breaking_set_is_refused_with_a_suggestion():
    model, _ = models.load("tiny-llama")  # 6 heads, groups of 3
    msg = refused(model, {1: [0, 1]}, "layer 1", "[0, 1]", "grouped-query", "groups of 3",
                  "same number of query heads", "remove heads [0, 3] (1 per group)",
                  "the whole group [0, 1, 2]")
    assert "[1, 3]" in msg  # what the request would keep, per group
    refused(model, {0: [0, 1, 3]}, "would keep [1, 2] heads")
    # the suggestion is itself accepted
    H.remove_heads(model, {1: [0, 3]}).restore()
    H.remove_heads(model, {1: [0, 1, 2]}).restore()


def test_gqa_suggestion_matches_the_course_example():
    # SmolLM2's shape: 9 heads in 3 groups of 3
    assert H._gqa_suggestion([0, 1], 9, 3) == \
        "remove heads [0, 3, 6] (1 per group) or the whole group [0, 1, 2]"


@pytest.mark.parametrize("name", TINY)
def test_all_heads_of_a_layer_refused_for_removal_but_zeroable(name):
    model, _ = models.load(name)
    n = arch.attention_shape(model, 0).n_heads
    refused(model, {0: list(range(n))}, f"all {n} heads", "at least one head")
    H.zero_heads(model, {0: list(range(n))}).restore()


@pytest.mark.parametrize("prune", [H.zero_heads, H.remove_heads])
def test_bad_indices_are_named(prune):
    model, _ = models.load("tiny-gpt2")
    cases = [({0: [4]}, ValueError, ["head index 4", "0..3"]),
             ({0: [-1]}, ValueError, ["head index -1", "negative"]),
             ({0: [1, 1]}, ValueError, ["head index 1", "twice"]),
             ({2: [0]}, ValueError, ["layer 2", "2 decoder layers"]),
             ({-1: [0]}, ValueError, ["layer -1"]),
             ({0: [1.0]}, TypeError, ["1.0"]),
             ({0: [True]}, TypeError, ["bool"]),
             ({"0": [1]}, TypeError, ["'0'"]),
             ([0, 1], TypeError, ["{layer_index"]),
             ({0: 1}, TypeError, ["list of head indices"])]
    for request, error, fragments in cases:
        with pytest.raises(error) as info:
            prune(model, request)
        for fragment in fragments:
            assert fragment in str(info.value), (request, str(info.value))


def test_numpy_and_tensor_indices_accepted():
    model, _ = models.load("tiny-gpt2")
    H.remove_heads(model, {np.int64(0): np.array([1, 2]), 1: torch.tensor([0])}).restore()


# -------------------------------------------------------------- importance --

@pytest.mark.parametrize("name", TINY)
def test_weight_norm_importance_tracks_the_output_slice(name):
    model, _ = models.load(name)
    scores = H.head_importance_weight_norm(model)
    s = arch.attention_shape(model, 0)
    assert scores.shape == (2, s.n_heads) and (scores > 0).all()
    handle = H.zero_heads(model, {1: [2]})
    zeroed = H.head_importance_weight_norm(model)
    handle.restore()
    assert zeroed[1, 2] == 0
    mask = np.ones_like(scores, dtype=bool)
    mask[1, 2] = False
    np.testing.assert_allclose(zeroed[mask], scores[mask], rtol=1e-6)
    # after removal, the surviving heads keep their scores and the table is NaN-padded
    request = next(iter(valid_sets(model).values()))
    H.remove_heads(model, request)
    after = H.head_importance_weight_norm(model)
    for layer in range(2):
        kept = H.kept_heads(model)[layer] or list(range(s.n_heads))
        np.testing.assert_allclose(after[layer, :len(kept)], scores[layer, kept], rtol=1e-6)
        assert np.isnan(after[layer, len(kept):]).all()


def test_ablation_importance_is_the_perplexity_increase():
    model, tokenizer = models.load("tiny-llama")
    windows = X[:, :16]
    dense = logits(model)
    scores = H.head_importance_ablation(model, windows, batch_size=2)
    assert scores.shape == (2, 6) and np.isfinite(scores).all()
    assert torch.equal(logits(model), dense)  # every head restored
    base = metrics.perplexity(model, windows)
    h = H.zero_heads(model, {1: [4]})
    assert scores[1, 4] == pytest.approx(metrics.perplexity(model, windows) - base, rel=1e-6)
    h.restore()
    with pytest.raises(TypeError, match="windows.calib"):
        from course_lib.core import data
        H.head_importance_ablation(model, data.windows_for(tokenizer, "tiny-llama", seq_len=16,
                                                           n_eval=1, n_calib=1))


def test_least_important_heads_mha_and_gqa():
    scores = np.array([[5., 1., 3., 2., 9., 0.5],
                       [1., 2., 3., 4., 5., 6.]])
    # MHA view: the lowest heads of each layer
    assert H.least_important_heads(scores, count=2, respect_gqa=False) == {0: [1, 5], 1: [0, 1]}
    # groups of 3: the same number from each group, the weakest of each
    assert H.least_important_heads(scores, count=2, group_size=3) == {0: [1, 5], 1: [0, 3]}
    # the per-layer amount is rounded to whole rounds (one head from every group)
    assert H.least_important_heads(scores, fraction=0.34, group_size=3) == {0: [1, 5], 1: [0, 3]}
    assert H.least_important_heads(scores, fraction=0.67, group_size=3) == \
        {0: [1, 2, 3, 5], 1: [0, 1, 3, 4]}
    # global: the cheapest units over the whole model
    assert H.least_important_heads(scores, count=3, per_layer=False, respect_gqa=False) == \
        {0: [1, 5], 1: [0]}
    with pytest.raises(ValueError, match="model=model"):
        H.least_important_heads(scores, count=1)
    with pytest.raises(ValueError, match="fraction=1"):
        H.least_important_heads(scores, fraction=1, respect_gqa=False)
    with pytest.raises(ValueError, match="every head of layer 0"):
        H.least_important_heads(scores, count=6, respect_gqa=False)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), name=st.sampled_from(TINY), per_layer=st.booleans())
def test_property_least_important_heads_are_removable(data, name, per_layer):
    model, _ = models.load(name)
    n = arch.attention_shape(model, 0).n_heads
    scores = np.array(data.draw(st.lists(st.lists(st.floats(0, 10), min_size=n, max_size=n),
                                         min_size=2, max_size=2)))
    fraction = data.draw(st.floats(0, 0.99))
    g = arch.attention_shape(model, 0).group_size
    request = H.least_important_heads(scores, fraction=fraction, per_layer=per_layer, model=model)
    handle = H.remove_heads(model, request)  # must not raise: GQA respected, a head kept
    for layer, removed in request.items():
        for k in range(n // g):  # within a group, nothing removed beats something kept
            group = range(k * g, (k + 1) * g)
            out = [scores[layer, h] for h in group if h in removed]
            kept = [scores[layer, h] for h in group if h not in removed]
            if out and kept:
                assert max(out) <= min(kept)
    handle.restore()


# ---------------------------------------------------------------- embedded --

@pytest.mark.embedded
def test_smollm2_group_removal_and_mlp_removal_equal_zeroing(smollm2, smollm2_windows):
    model, _ = smollm2
    window = smollm2_windows.eval[:1, :64]
    heads = {3: [3, 4, 5], 20: [0, 1, 2]}  # one KV group (3 query heads) in two layers
    handles = []
    try:
        handles.append(H.zero_heads(model, heads))
        zeroed = logits(model, window)
        handles.pop().restore()
        handles.append(H.remove_heads(model, heads))
        assert arch.attention_shape(model, 3) == arch.AttentionShape(6, 2, 64)
        torch.testing.assert_close(logits(model, window), zeroed, atol=1e-4, rtol=0)
        handles.pop().restore()

        scores = M.neuron_importance_weight_norm(model)
        neurons = M.least_important_neurons(scores, 0.25)
        assert all(len(ix) == 384 for ix in neurons.values())  # 25% of 1536
        handles.append(M.zero_neurons(model, neurons))
        zeroed = logits(model, window)
        handles.pop().restore()
        handles.append(M.remove_neurons(model, neurons))
        assert arch.mlp_width(model, 0) == 1152
        removed = logits(model, window)
        # float32 sums 1152 terms instead of 1536 (384 of them zero) in a different
        # order, in 30 layers: ~1e-3 apart on logits of size ~40 (exactly equal in float64).
        torch.testing.assert_close(removed, zeroed, atol=5e-3, rtol=0)
        assert torch.equal(removed.argmax(-1), zeroed.argmax(-1))
    finally:
        for handle in reversed(handles):
            handle.restore()
    assert arch.mlp_width(model, 0) == 1536 and arch.attention_shape(model, 3).n_heads == 9


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_contribution_score_is_the_norm_of_what_zeroing_removes(name):
    model, tok = models.load(name)
    windows = torch.randint(0, 256, (2, 12))
    scores = H.head_importance_contribution(model, windows)
    shape = arch.attention_shape(model, 1)
    assert scores.shape == (2, shape.n_heads) and (scores > 0).all()
    # the score of head h = mean over tokens of |attention output with only h| - checked via zeroing:
    # zeroing every other head leaves exactly head h's contribution at o_proj's output
    layer, head = 1, 2
    others = [h for h in range(shape.n_heads) if h != head]
    out_proj = H._out_proj(model, arch.attention(arch.decoder_layers(model)[layer]))
    seen = []
    hook = out_proj.register_forward_hook(lambda m, a, out: seen.append(out.reshape(-1, out.shape[-1])))
    handle = H.zero_heads(model, {layer: others})
    try:
        with torch.no_grad():
            model(windows)
    finally:
        handle.restore()
        hook.remove()
    contribution = seen[0]
    bias = getattr(out_proj, "bias", None)
    if bias is not None:
        contribution = contribution - bias
    assert scores[layer, head] == pytest.approx(contribution.norm(dim=-1).mean().item(), rel=1e-4)


def test_least_important_groups_takes_whole_groups_that_remove_heads_accepts():
    model, _ = models.load("tiny-llama")  # 6 heads in 2 groups of 3
    scores = np.array([[5, 5, 5, 1, 1, 1], [1, 0, 1, 9, 9, 9]], dtype=float)
    request = H.least_important_groups(scores, 1, model)
    assert request == {0: [3, 4, 5], 1: [0, 1, 2]}
    handle = H.remove_heads(model, request)
    assert arch.attention_shape(model, 0).n_kv_heads == 1
    handle.restore()
    with pytest.raises(ValueError, match="keeps one"):
        H.least_important_groups(scores, 2, model)
