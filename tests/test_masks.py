"""Masks: top-k and N:M selection, magnitude/random pruning, checked against torch.nn.utils.prune."""
import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune
from transformers.pytorch_utils import Conv1D

from course_lib.core import arch, models
from course_lib.pruning import masks as masks_
from course_lib.pruning.masks import (apply_masks, check_sparsity, magnitude_prune, nm_mask,
                                      parse_pattern, random_prune, topk_mask)

TINY = list(models.BASE_TINY)
FAST = settings(max_examples=40, deadline=None)


def params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def expected_sparsity(model, sparsity, scope):
    """What rounding allows: round(sparsity * n) pruned per row, per matrix, or overall."""
    weights = [arch.weight_matrix(m) for m in arch.prunable_linears(model).values()]
    total = sum(w.numel() for w in weights)
    if scope == "global":
        return round(sparsity * total) / total
    if scope == "matrix":
        return sum(round(sparsity * w.numel()) for w in weights) / total
    return sum(w.shape[0] * round(sparsity * w.shape[1]) for w in weights) / total


def assert_same_params(model, saved):
    for name, p in model.named_parameters():
        assert torch.equal(p, saved[name]), f"{name} changed"


# ------------------------------------------------------------------ input checks
@pytest.mark.parametrize("text, expected", [("2:4", (2, 4)), ("4:8", (4, 8)), (" 1 : 3 ", (1, 3)),
                                            ((2, 4), (2, 4)), (None, None)])
def test_parse_pattern(text, expected):
    assert parse_pattern(text) == expected


@pytest.mark.parametrize("bad", ["4:4", "5:4", "0:4", "2:4:8", "a:b", "2.5:4", "2-4", (2.0, 4)])
def test_parse_pattern_rejects(bad):
    with pytest.raises(ValueError, match="pattern"):
        parse_pattern(bad)


def test_parse_pattern_type():
    with pytest.raises(TypeError, match="'2:4'"):
        parse_pattern(24)


@pytest.mark.parametrize("bad", [1.0, 1.2, -0.1, float("nan"), 5])
def test_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match=rf"sparsity={bad} is outside \[0, 1\)"):
        check_sparsity(bad)


@pytest.mark.parametrize("bad", ["0.5", None, True, [0.5]])
def test_sparsity_not_a_number(bad):
    with pytest.raises(TypeError, match="not a number"):
        check_sparsity(bad)


def test_unknown_scope_lists_choices():
    model, _ = models.load("tiny-llama")
    with pytest.raises(ValueError, match="'row', 'matrix', 'global'"):
        magnitude_prune(model, 0.5, scope="layer")
    assert float((arch.weight_matrix(model.model.layers[0].mlp.up_proj) == 0).float().mean()) == 0


def test_pattern_that_does_not_divide_names_the_layer():
    model, _ = models.load("tiny-llama")  # in_features 96 (attention, gate/up) and 192 (down)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj.*in_features=96.*M=5"):
        magnitude_prune(model, pattern="2:5")


def test_pattern_with_global_scope_is_refused():
    model, _ = models.load("tiny-llama")
    with pytest.raises(ValueError, match="within a row"):
        magnitude_prune(model, scope="global", pattern="2:4")


# ------------------------------------------------------------------ the two mask rules
def test_ties_prune_the_earlier_weight_first_within_a_row():
    scores = torch.tensor([[3.0, 1.0, 2.0, 1.0, 1.0, 5.0]])
    assert topk_mask(scores, 0.5, "row").tolist() == [[True, False, True, False, False, True]]
    assert topk_mask(scores, 2 / 6, "row").tolist() == [[True, False, True, False, True, True]]
    assert topk_mask(scores, 2 / 6, "matrix").tolist() == [[True, False, True, False, True, True]]


def test_nm_mask_with_ties_keeps_at_most_n_nonzeros():
    weight = torch.tensor([[0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]])
    keep = nm_mask(weight.abs(), 2, 4)
    pruned = weight * keep
    assert ((pruned.reshape(1, 2, 4) != 0).sum(-1) <= 2).all()
    assert keep.sum() == 4


@FAST
@given(out_f=st.integers(1, 12), in_f=st.integers(1, 30), sparsity=st.floats(0, 0.99))
def test_matrix_mask_equals_torch_l1_unstructured(out_f, in_f, sparsity):
    layer = nn.Linear(in_f, out_f)
    ours = topk_mask(layer.weight.detach().abs(), sparsity, "matrix")
    prune.l1_unstructured(layer, "weight", amount=sparsity)
    assert torch.equal(ours, layer.weight_mask.bool())


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_global_magnitude_equals_torch_global_unstructured(name, sparsity):
    model, _ = models.load(name)
    library = copy.deepcopy(model)
    handle = magnitude_prune(model, sparsity, scope="global")
    modules = arch.prunable_linears(library)
    prune.global_unstructured([(m, "weight") for m in modules.values()],
                              pruning_method=prune.L1Unstructured, amount=sparsity)
    for name_, module in modules.items():
        theirs = module.weight_mask.bool()
        if isinstance(module, Conv1D):  # stores (in, out); our masks are (out, in)
            theirs = theirs.t()
        assert torch.equal(handle.info["masks"][name_], theirs), name_
    total = sum(m.weight.numel() for m in modules.values())
    assert handle.info["sparsity"] == round(sparsity * total) / total  # exactly the rounded count


# ------------------------------------------------------------------ pruning whole models
@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("scope, pattern, sparsity", [("row", None, 0.5), ("matrix", None, 0.25),
                                                      ("global", None, 0.7), ("row", "2:4", 0.5),
                                                      ("row", "1:4", 0.75), ("row", "4:8", 0.5)])
def test_magnitude_prune_achieves_request_and_restores(name, scope, pattern, sparsity):
    model, _ = models.load(name)
    before = params(model)
    embedding = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings().weight.detach().clone()
    handle = magnitude_prune(model, sparsity, scope=scope, pattern=pattern)
    modules = arch.prunable_linears(model)
    assert handle.info["sparsity"] == pytest.approx(expected_sparsity(model, sparsity, scope), abs=1e-12)
    for module_name, module in modules.items():
        weight, keep = arch.weight_matrix(module), handle.info["masks"][module_name]
        assert torch.equal(weight == 0, ~keep), module_name  # zero exactly where pruned
        if pattern is not None:
            n, m = parse_pattern(pattern)
            assert ((weight != 0).reshape(weight.shape[0], -1, m).sum(-1) <= n).all()
        if scope == "row":
            assert ((weight == 0).sum(1) == round(sparsity * weight.shape[1])).all()
    # embeddings and the lm_head are never touched
    assert torch.equal(model.get_input_embeddings().weight, embedding)
    assert torch.equal(model.get_output_embeddings().weight, head)
    handle.restore()
    assert_same_params(model, before)


@pytest.mark.parametrize("name", TINY)
def test_random_prune_is_seeded_and_restores(name):
    model, _ = models.load(name)
    before = params(model)
    first = random_prune(model, 0.4, seed=3)
    masks = first.info["masks"]
    assert first.info["sparsity"] == pytest.approx(expected_sparsity(model, 0.4, "row"), abs=1e-12)
    first.restore()
    assert_same_params(model, before)
    again = random_prune(model, 0.4, seed=3)
    assert all(torch.equal(masks[k], again.info["masks"][k]) for k in masks)
    again.restore()
    other = random_prune(model, 0.4, seed=4)
    assert any(not torch.equal(masks[k], other.info["masks"][k]) for k in masks)
    other.restore()
    assert_same_params(model, before)


def test_random_prune_is_worse_than_magnitude_on_a_layer():
    torch.manual_seed(1)
    x = torch.randn(256, 96)
    model, _ = models.load("tiny-llama")
    module = model.model.layers[0].mlp.up_proj
    dense = module(x)
    errors = {}
    for prune_fn in (magnitude_prune, random_prune):
        handle = prune_fn(model, 0.5)
        errors[prune_fn.__name__] = (module(x) - dense).norm().item()
        handle.restore()
    assert errors["magnitude_prune"] < errors["random_prune"]


def test_apply_masks_checks_names_and_shapes():
    model, _ = models.load("tiny-llama")
    before = params(model)
    with pytest.raises(KeyError, match="lm_head"):
        apply_masks(model, {"lm_head": torch.ones(258, 96, dtype=torch.bool)})
    good = torch.zeros(96, 96, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\(96, 96\).*\(32, 96\)"):
        apply_masks(model, {"model.layers.0.self_attn.q_proj": good,
                            "model.layers.0.self_attn.k_proj": good})
    assert_same_params(model, before)  # the half-done prune was undone


def test_apply_masks_on_conv1d_uses_out_in_orientation():
    model, _ = models.load("tiny-gpt2")
    module = model.transformer.h[0].mlp.c_fc  # Conv1D: weight stored (64, 256)
    keep = torch.ones(256, 64, dtype=torch.bool)
    keep[3] = False  # prune output neuron 3 entirely
    handle = apply_masks(model, {"transformer.h.0.mlp.c_fc": keep})
    assert (module.weight[:, 3] == 0).all() and (module.weight[:, 4] != 0).all()
    handle.restore()


# ------------------------------------------------------------------ properties (hypothesis)
PROPERTIES = settings(max_examples=60, deadline=None)


@PROPERTIES
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), sparsity=st.floats(0, 0.999),
       scope=st.sampled_from(masks_.SCOPES), ties=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_property_topk_mask_prunes_exactly_the_lowest_scores(shape, sparsity, scope, ties, seed):
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if ties:  # few distinct values (quantized weights): the counts must still be exact
        scores = scores.round()
    keep = masks_.topk_mask(scores, sparsity, scope)
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    width = shape[-1] if scope == "row" else scores.numel()  # the set of scores compared together
    sets, kept = scores.reshape(-1, width), keep.reshape(-1, width)
    assert ((~kept).sum(-1) == round(sparsity * width)).all()
    kept_min = sets.masked_fill(~kept, float("inf")).amin(-1)
    pruned_max = sets.masked_fill(kept, float("-inf")).amax(-1)
    assert (kept_min >= pruned_max).all()
    # which of tied scores go: the earlier ones, exactly the first k of a stable sort
    k = round(sparsity * width)
    lowest = torch.sort(sets, dim=-1, stable=True).indices[:, :k]
    reference = torch.ones_like(sets, dtype=torch.bool).scatter_(-1, lowest, False)
    assert torch.equal(kept, reference)


@PROPERTIES
@given(rows=st.integers(1, 6), groups=st.integers(1, 6), m=st.integers(2, 8), data_=st.data(),
       zeros=st.floats(0, 0.8), ties=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_property_nm_mask_keeps_at_most_n_largest_of_every_m(rows, groups, m, data_, zeros, ties, seed):
    n = data_.draw(st.integers(1, m - 1), label="n")
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, groups * m, generator=g)
    if ties:
        weight = weight.round()
    weight[torch.rand(weight.shape, generator=g) < zeros] = 0  # already-zero weights count too
    keep = masks_.nm_mask(weight.abs(), n, m)
    assert ((weight * keep != 0).reshape(rows, groups, m).sum(-1) <= n).all()
    assert (keep.reshape(rows, groups, m).sum(-1) == n).all()  # exactly 1 - N/M pruned
    w, k = weight.abs().reshape(rows, groups, m), keep.reshape(rows, groups, m)
    assert (w.masked_fill(~k, float("inf")).amin(-1) >= w.masked_fill(k, float("-inf")).amax(-1)).all()
    misfit = groups * m + data_.draw(st.integers(1, m - 1), label="remainder")
    with pytest.raises(ValueError, match=f"in_features={misfit} is not a multiple of M={m}.*Choose"):
        masks_.nm_mask(torch.randn(rows, misfit), n, m)


_MODELS = {}


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(TINY), sparsity=st.floats(0, 0.95), scope=st.sampled_from(masks_.SCOPES),
       pattern=st.sampled_from([None, None, None, "1:2", "2:4", "1:4", "3:4", "4:8", "2:3"]))
def test_property_magnitude_prune_on_a_model(name, sparsity, scope, pattern):
    """Achieved sparsity exact to rounding, N:M respected, the largest |w| kept, restore exact."""
    model = _MODELS.setdefault(name, models.load(name)[0])
    modules = arch.prunable_linears(model)
    before = {k: arch.weight_matrix(mod).clone() for k, mod in modules.items()}
    if pattern is not None:
        n, m = masks_.parse_pattern(pattern)
        misfits = [w.shape[1] for w in before.values() if w.shape[1] % m]
        refusal = (f"in_features={misfits[0]} .*Choose an M" if misfits
                   else "leave scope='row'" if scope != "row" else None)
        if refusal:
            with pytest.raises(ValueError, match=refusal):
                masks_.magnitude_prune(model, sparsity, scope=scope, pattern=pattern)
            assert all(torch.equal(arch.weight_matrix(mod), before[k]) for k, mod in modules.items())
            return
    handle = masks_.magnitude_prune(model, sparsity, scope=scope, pattern=pattern)
    try:
        total = sum(w.numel() for w in before.values())
        pruned_total, kept_abs, pruned_abs = 0, [], []
        for k, module in modules.items():
            w, keep = arch.weight_matrix(module), handle.info["masks"][k]
            assert torch.equal(w, before[k] * keep)  # zero where pruned, untouched elsewhere
            pruned_total += int((~keep).sum())
            a = before[k].abs()
            if pattern is not None:
                groups, gk = (x.reshape(x.shape[0], -1, m) for x in (w, keep))
                assert ((groups != 0).sum(-1) <= n).all() and (gk.sum(-1) == n).all()
                ga = a.reshape(a.shape[0], -1, m)
                assert (ga.masked_fill(~gk, float("inf")).amin(-1) >=
                        ga.masked_fill(gk, float("-inf")).amax(-1)).all()
            elif scope == "row":
                assert ((~keep).sum(1) == round(sparsity * w.shape[1])).all()
                assert (a.masked_fill(~keep, float("inf")).amin(1) >=
                        a.masked_fill(keep, float("-inf")).amax(1)).all()
            elif scope == "matrix":
                assert int((~keep).sum()) == round(sparsity * w.numel())
                if keep.any() and (~keep).any():
                    assert a[keep].min() >= a[~keep].max()
            else:
                kept_abs.append(a[keep])
                pruned_abs.append(a[~keep])
        if scope == "global" and pattern is None:
            assert pruned_total == round(sparsity * total)
            kept_all, pruned_all = torch.cat(kept_abs), torch.cat(pruned_abs)
            if kept_all.numel() and pruned_all.numel():
                assert kept_all.min() >= pruned_all.max()
        expected = 1 - n / m if pattern is not None else pruned_total / total
        assert handle.info["sparsity"] == pytest.approx(expected, abs=1e-12)
    finally:
        handle.restore()
    assert all(torch.equal(arch.weight_matrix(mod), before[k]) for k, mod in modules.items())


@pytest.mark.parametrize("kind", ["normal", "squares", "ties", "sorted", "half zeros"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kth_smallest_of_a_long_vector_is_the_full_selections(kind, dtype):
    """The sampled band (``_kth_in_band``) gives exactly the value a selection over all gives."""
    import numpy as np
    g = torch.Generator().manual_seed(len(kind))
    for n in (masks_.BAND_MIN, 100_003):
        x = torch.randn(n, generator=g, dtype=dtype)
        x = {"squares": x.pow(2), "ties": x.round(), "sorted": x.sort().values,
             "half zeros": x.masked_fill(torch.arange(n) < n // 2, 0)}.get(kind, x)
        for k in (1, 2, n // 3, n // 2, n // 2 + 1, n - 1, n):
            assert masks_.kth_smallest(x, k).item() == np.partition(x.numpy(), k - 1)[k - 1].item()
            assert masks_.kth_smallest(x, k).shape == (1,)


def test_kth_smallest_falls_back_when_the_sample_misleads():
    """Every sampled value is huge: the band cannot hold the k-th, and the full selection answers."""
    n = 2 ** 16
    x = torch.arange(n, dtype=torch.float64)
    x[::32] = 1e9
    k = n // 2
    assert masks_._kth_in_band(x, k) is None
    assert masks_.kth_smallest(x, k).item() == torch.sort(x).values[k - 1].item()
