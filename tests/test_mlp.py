"""MLP-neuron pruning: removal equals zeroing, shapes shrink, restore is exact, scores are right."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.core import arch, models
from course_lib.pruning import mlp as M

TINY = list(models.BASE_TINY)
X = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(2))


def logits(model, ids=X):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@settings(max_examples=25, deadline=None)
@given(data=st.data(), name=st.sampled_from(TINY), impl=st.sampled_from(["eager", "sdpa"]))
def test_property_remove_equals_zero(data, name, impl):
    model, _ = models.load(name, attn_implementation=impl)
    request, widths = {}, {}
    for layer in range(2):
        width = widths[layer] = arch.mlp_width(model, layer)
        k = data.draw(st.integers(0, width - 1))
        request[layer] = data.draw(st.permutations(range(width)))[:k]
    dense = logits(model)
    z = M.zero_neurons(model, request)
    zeroed = logits(model)
    z.restore()
    r = M.remove_neurons(model, request)
    torch.testing.assert_close(logits(model), zeroed, atol=1e-4, rtol=0)
    for layer, removed in request.items():
        assert arch.mlp_width(model, layer) == widths[layer] - len(removed)
    r.restore()
    assert torch.equal(logits(model), dense)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", TINY)
def test_remove_equals_zero_and_shapes_shrink(name, impl):
    model, _ = models.load(name, attn_implementation=impl)
    hidden, width = model.config.hidden_size, arch.mlp_width(model, 0)
    request = {0: list(range(0, width, 3)), 1: [width - 1]}
    z = M.zero_neurons(model, request)
    zeroed = logits(model)
    z.restore()
    before = sum(p.numel() for p in model.parameters())
    M.remove_neurons(model, request)
    torch.testing.assert_close(logits(model), zeroed, atol=1e-4, rtol=0)
    drop = 0
    for layer, removed in request.items():
        kept = width - len(removed)
        block = arch.mlp(arch.decoder_layers(model)[layer])
        assert arch.mlp_width(model, layer) == kept
        assert M.kept_neurons(model)[layer] == [j for j in range(width) if j not in removed]
        if name == "tiny-gpt2":  # Conv1D weights are (in, out)
            assert block.c_fc.weight.shape == (hidden, kept) and block.c_fc.bias.shape == (kept,)
            assert block.c_proj.weight.shape == (kept, hidden)
            drop += len(removed) * (2 * hidden + 1)
        else:
            assert block.gate_proj.out_features == block.up_proj.out_features == kept
            assert block.down_proj.in_features == kept and block.intermediate_size == kept
            drop += len(removed) * 3 * hidden
    assert before - sum(p.numel() for p in model.parameters()) == drop


@pytest.mark.parametrize("name", TINY)
def test_restore_is_bit_exact(name):
    model, _ = models.load(name)
    dense = logits(model)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    modules = {n: id(m) for n, m in model.named_modules()}
    for prune in (M.zero_neurons, M.remove_neurons):
        handle = prune(model, {0: [0, 5, 7], 1: list(range(10))})
        assert not torch.equal(logits(model), dense)
        handle.restore()
        now = model.state_dict()
        assert all(torch.equal(now[k], v) for k, v in params.items())
        assert {n: id(m) for n, m in model.named_modules()} == modules
        assert torch.equal(logits(model), dense)
        assert all(k is None for k in M.kept_neurons(model).values())


def test_zeroing_every_neuron_leaves_only_the_output_bias():
    model, _ = models.load("tiny-gpt2")
    block = arch.mlp(arch.decoder_layers(model)[0])
    width = arch.mlp_width(model, 0)
    M.zero_neurons(model, {0: list(range(width))})
    x = torch.randn(1, 3, model.config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.c_proj.bias.expand(1, 3, -1))


@pytest.mark.parametrize("prune", [M.zero_neurons, M.remove_neurons])
def test_bad_requests_are_named(prune):
    model, _ = models.load("tiny-llama")
    cases = [({0: [192]}, ValueError, ["neuron index 192", "0..191"]),
             ({0: [-3]}, ValueError, ["neuron index -3", "negative"]),
             ({1: [4, 4]}, ValueError, ["neuron index 4", "twice"]),
             ({5: [0]}, ValueError, ["layer 5"]),
             ({0: [0.5]}, TypeError, ["0.5"])]
    for request, error, fragments in cases:
        with pytest.raises(error) as info:
            prune(model, request)
        for fragment in fragments:
            assert fragment in str(info.value), str(info.value)


def test_all_neurons_refused_for_removal():
    model, _ = models.load("tiny-qwen2")
    dense = logits(model)
    with pytest.raises(ValueError, match="all 192 MLP neurons.*at least one neuron"):
        M.remove_neurons(model, {1: list(range(192))})
    assert torch.equal(logits(model), dense)


@pytest.mark.parametrize("name", TINY)
def test_weight_norm_importance(name):
    model, _ = models.load(name)
    scores = M.neuron_importance_weight_norm(model)
    width = arch.mlp_width(model, 0)
    assert [s.shape for s in scores] == [(width,), (width,)] and all((s > 0).all() for s in scores)
    handle = M.zero_neurons(model, {1: [3]})
    zeroed = M.neuron_importance_weight_norm(model)
    handle.restore()
    assert zeroed[1][3] == 0 and torch.equal(zeroed[0], scores[0])
    M.remove_neurons(model, {0: [0, 1, 2]})  # surviving neurons keep their scores
    torch.testing.assert_close(M.neuron_importance_weight_norm(model)[0], scores[0][3:])


def _mlp_hidden_by_hand(model, windows):
    """Mean |h| recomputed from the MLP block's *input* and its weights (a second route)."""
    layers = arch.decoder_layers(model)
    captured = [[] for _ in layers]
    hooks = [arch.mlp(block).register_forward_pre_hook(
        lambda mod, args, i=i: captured[i].append(args[0].detach())) for i, block in enumerate(layers)]
    with torch.no_grad():
        model(windows, use_cache=False)
    for h in hooks:
        h.remove()
    result = []
    for block, (x,) in zip(map(arch.mlp, layers), captured):
        with torch.no_grad():
            if hasattr(block, "c_fc"):
                hidden = block.act(block.c_fc(x))
            else:
                hidden = block.act_fn(block.gate_proj(x)) * block.up_proj(x)
        result.append(hidden.abs().reshape(-1, hidden.shape[-1]).mean(dim=0))
    return result


@pytest.mark.parametrize("name", TINY)
def test_activation_importance_matches_a_second_computation(name):
    model, _ = models.load(name)
    windows = X[:, :16]
    got = M.neuron_importance_activation(model, windows, batch_size=1)  # batches add up
    for a, b in zip(got, _mlp_hidden_by_hand(model, windows)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # a neuron whose input weights are zero never fires (GPT-2: its bias still does)
    block = arch.mlp(arch.decoder_layers(model)[0])
    first = block.c_fc if name == "tiny-gpt2" else block.up_proj
    with torch.no_grad():
        arch.weight_matrix(first)[4] = 0
        if first.bias is not None:
            first.bias[4] = 0
    assert M.neuron_importance_activation(model, windows)[0][4] == 0


@pytest.mark.parametrize("name", TINY)
def test_contribution_is_what_removing_the_neuron_takes_from_the_mlp_output(name):
    """The contribution score of neuron j, by its definition: the RMS over the calibration tokens of
    how far the MLP's output moves when j is zeroed (on the inputs the dense model gives the MLP).
    Computed here by zeroing, one neuron at a time; a score without the column norm, with the
    mean |h| instead of the RMS, or without the square root would not match."""
    model, _ = models.load(name)
    windows = X[:, :16]
    got = M.neuron_importance_contribution(model, windows, batch_size=1)
    blocks = [arch.mlp(layer) for layer in arch.decoder_layers(model)]
    inputs = {}
    hooks = [b.register_forward_pre_hook(lambda _m, args, i=i: inputs.setdefault(i, []).append(args[0].detach()))
             for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            for w in windows:
                model(w[None], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    checked = 0
    for i, block in enumerate(blocks):
        x = torch.cat(inputs[i], dim=1)
        with torch.no_grad():
            full = block(x)
            for j in (0, 3, arch.mlp_width(model, i) - 1):
                handle = M.zero_neurons(model, {i: [j]})
                moved = (full - block(x)).pow(2).sum(-1).mean().sqrt()
                handle.restore()
                torch.testing.assert_close(got[i][j], moved.float(), rtol=1e-4, atol=1e-7)
                checked += 1
    assert checked == 3 * len(blocks)
    activation = M.neuron_importance_activation(model, windows)
    assert any(not torch.equal(torch.argsort(a), torch.argsort(c)) for a, c in zip(activation, got))


def test_least_important_neurons():
    scores = [torch.tensor([3., 1., 2., 0.]), torch.tensor([10., 20., 30., 40.])]
    assert M.least_important_neurons(scores, 0.5) == {0: [1, 3], 1: [0, 1]}
    # global ranking: the smallest scores anywhere, but each layer keeps a neuron
    assert M.least_important_neurons(scores, 0.5, per_layer=False) == {0: [1, 2, 3], 1: [0]}
    assert M.least_important_neurons([np.array([1., 2.])], 0.9) == {0: [0]}  # keeps one
    with pytest.raises(ValueError, match="fraction=1"):
        M.least_important_neurons(scores, 1.0)
    model, _ = models.load("tiny-llama")
    request = M.least_important_neurons(M.neuron_importance_weight_norm(model), 0.25)
    assert {k: len(v) for k, v in request.items()} == {0: 48, 1: 48}
    M.remove_neurons(model, request)
    assert arch.mlp_width(model, 0) == 144


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_a_width_cut_can_remove_exactly_the_parameters_of_a_depth_cut(name):
    """Width against depth at an exactly equal budget: the neuron request removes the
    parameters of one whole layer (gated MLP: 3 x hidden per neuron; GPT-2: 2 x hidden + a bias)."""
    import copy

    from course_lib.core import arch, metrics, models
    from course_lib.pruning import layers, mlp

    model = models.load(name)[0]
    per_layer = sum(p.numel() for p in arch.decoder_layers(model)[0].parameters())
    per_neuron = mlp.parameters_per_neuron(model)
    scores = [torch.arange(arch.mlp_width(model, i), dtype=torch.float64).flip(0) + i
              for i in range(len(arch.decoder_layers(model)))]  # the last neurons score lowest
    request = mlp.neurons_for_parameters(model, scores, per_layer)
    width, depth = copy.deepcopy(model), copy.deepcopy(model)
    mlp.remove_neurons(width, request)
    layers.remove_layers(depth, [0])
    total = metrics.count_parameters(model)["total"]
    removed_width = total - metrics.count_parameters(width)["total"]
    removed_depth = total - metrics.count_parameters(depth)["total"]
    assert removed_depth - per_neuron < removed_width <= removed_depth  # whole neurons, never more
    counts = [len(v) for v in request.values()]
    assert max(counts) - min(counts) <= 1  # as even as whole neurons allow
    for layer, neurons in request.items():  # the lowest-scoring ones
        assert neurons == list(range(arch.mlp_width(model, layer) - len(neurons), arch.mlp_width(model, layer)))
    with pytest.raises(ValueError, match="ask for fewer"):
        mlp.neurons_for_parameters(model, scores, total)
